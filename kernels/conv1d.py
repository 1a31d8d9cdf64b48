"""1-D convolution (groups=1) as implicit GEMM, with bias and residual fused; transposed conv too.

Design trade-off: every conv is an implicit GEMM whose operand tiles are gathered straight from
the (B, C, L) tensors with masks for padding and boundaries. No im2col buffer is materialized
(at the VAE's last decoder stage one would be K=7 times 96 x 4.19 M per item) and no layout
change is needed around the op, at the price of gather loads whose addresses Triton cannot prove
aligned: they are not vectorized, bf16 tiles cannot take cp.async (so the loops prefetch the next
tiles into registers by hand), and each element costs its own address registers. A channels-last
layout (or TMA descriptors on sm90) would lift that; it is the known headroom of this design.
The bias and the residual are added in the epilogue, so a ResNet/ResidualUnit skip costs no pass.

Three kernels serve every direction:
* ``_conv1d_fwd_kernel``   y[b, o, t]  = sum_{c, k} w[o, c, k] x[b, c, t*s + k*d - pad_left]
  tile (C_out block) x (B*L_out block), reduction over taps x C_in blocks (tap-major).
* ``_conv1d_dgrad_kernel`` dx[b, c, l] = sum_{o, k} w[o, c, k] g[b, o, (l + pad_left - k*d)/s]
  (a transposed conv). Rather than scattering, or gathering with (s-1)/s of the tensor-core work
  masked off, the output positions are split by phase l = q*s + r (one phase per program): for a
  fixed r only the taps with k*d = r + pad_left (mod s) contribute, and each of them reads a
  contiguous run of g. So a stride-4 dgrad does no more MACs than the forward.
* ``_conv1d_wgrad_kernel`` dw[o, c, k] = sum_{b, t} g[b, o, t] x[b, c, t*s + k*d - pad_left]
  tile (C_out block) x (C_in block) per tap, reduction over B*L_out; the positions are split
  into chunks, each program reducing one chunk of every batch item into an fp32 partial slab
  (summed on the host, deterministic), when the tile grid alone cannot fill the GPU (the VAE's
  96-channel convs reduce over millions of samples but have only a handful of output tiles).
dbias is ``grad.sum((0, 2))`` in fp32 (one memory-bound pass; a Triton kernel would win nothing).

Transposed convs are served by the same kernels (no cuDNN): ConvTranspose1d(x, w, s, p) is the
dgrad of a conv with weight w (viewed as (C_out, C_in, K) = (Cin_t, Cout_t, K)) evaluated at
g = x; its input gradient is the forward kernel and its weight gradient the wgrad kernel with the
roles of its two operands swapped.

Accumulation is fp32 always. On the GPU fp16/bf16 tiles go to the tensor cores as they are; fp32
tiles use TF32 exactly when ``torch.backends.cudnn.allow_tf32`` says cuDNN would (the op replaces
cuDNN's conv). Under the Triton interpreter bf16 dot/arithmetic is wrong, so tiles are upcast to
fp32 first (the UPCAST constexpr). Offsets: program ids, batch offsets and channel bases are int64
(96 channels x 4.19 M samples x batch exceeds 2**31); offsets inside one item are int32 unless
an item spans >= 2**31 elements (OFF64), to save registers.
"""
from __future__ import annotations

import math
import os
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._common import INTERPRET, KernelInputError, device_reason, dtype_reason, first_reason

Padding = Union[int, Sequence[int]]

# Output buffers are filled with NaN before the kernels write them, so a tile a kernel skips
# shows up in the tests. On by default under the interpreter (the tests), off on GPUs unless asked.
POISON_OUTPUTS = INTERPRET or os.environ.get("FASTAUDIO_POISON", "0") == "1"


# --------------------------------------------------------------------------------------------
# Reference
# --------------------------------------------------------------------------------------------

def _pad_pair(padding: Padding) -> Tuple[int, int]:
    """(left, right) from an int (symmetric) or a (left, right) pair."""
    if isinstance(padding, bool):
        raise ValueError(f"padding must be an int or a (left, right) pair, got {padding!r}")
    if isinstance(padding, int):
        return padding, padding
    if isinstance(padding, (tuple, list)) and len(padding) == 2 and all(
            isinstance(p, int) and not isinstance(p, bool) for p in padding):
        return int(padding[0]), int(padding[1])
    raise ValueError(f"padding must be an int or a (left, right) pair, got {padding!r}")


def conv1d_ref(x, weight, bias=None, stride=1, padding: Padding = 0, dilation=1, residual=None):
    """``F.conv1d`` (+ residual) computed in fp32 (fp64 stays fp64), returned in x.dtype.

    ``padding`` is an int or a (left, right) pair; zeros outside the input either way.
    """
    ct = torch.promote_types(x.dtype, torch.float32)
    pl, pr = _pad_pair(padding)
    xf = F.pad(x.to(ct), (pl, pr))
    y = F.conv1d(xf, weight.to(ct), None if bias is None else bias.to(ct), stride, 0, dilation)
    if residual is not None:
        y = y + residual.to(ct)
    return y.to(x.dtype)


def conv_transpose1d_ref(x, weight, bias=None, stride=1, padding=0, output_padding=0, dilation=1):
    """``F.conv_transpose1d`` computed in fp32 (fp64 stays fp64), returned in x.dtype."""
    ct = torch.promote_types(x.dtype, torch.float32)
    y = F.conv_transpose1d(x.to(ct), weight.to(ct), None if bias is None else bias.to(ct),
                           stride, padding, output_padding, 1, dilation)
    return y.to(x.dtype)


# --------------------------------------------------------------------------------------------
# Autotune configs
# --------------------------------------------------------------------------------------------

def _cfg(bm, bn, bk, warps, stages, prefetch=True):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "PREFETCH": prefetch},
                         num_warps=warps, num_stages=stages)


def _cuda_major() -> int:
    if INTERPRET or not torch.cuda.is_available():
        return 8
    return torch.cuda.get_device_capability()[0]


# The lists below were chosen offline (no GPU at hand): every config compiles for sm_80 and
# sm_90 in bf16 and fp32, and ptxas reports no register spills in its main loop (128x128 tiles
# need 8 warps: one address register pair per gathered element). Their speed is unmeasured; the
# autotuner picks among them per (C_in, C_out, K, stride, length bucket, dtype).

def _gemm_configs():
    """fwd / dgrad: M = output channels, N = B*L positions (long), K = input channels per tap."""
    if INTERPRET:
        # Large blocks: the interpreter pays per program step, not per element.
        return [_cfg(32, 128, 32, 4, 1)]
    cfgs = [
        _cfg(128, 128, 32, 8, 3, True), _cfg(128, 128, 32, 8, 3, False),
        _cfg(64, 256, 32, 8, 3, True), _cfg(64, 256, 32, 8, 3, False),
        _cfg(64, 128, 32, 4, 3, False), _cfg(64, 64, 32, 4, 3, True),
        # Narrow M for the few-channel convs (VAE 96->2, 2->128); mma needs M >= 16.
        _cfg(32, 256, 32, 4, 3, False), _cfg(16, 256, 32, 4, 3, True),
    ]
    if _cuda_major() >= 9:
        # H100 has the shared memory for deeper K steps (fp32: 192 KB at 3 stages).
        cfgs += [_cfg(128, 128, 64, 8, 3, False), _cfg(64, 128, 64, 4, 3, False)]
    return cfgs


def _wgrad_configs():
    """wgrad: M = C_out, N = C_in (both short), K = B*L_out (long)."""
    if INTERPRET:
        return [_cfg(32, 32, 128, 4, 1)]
    return [
        _cfg(128, 128, 32, 8, 3, True), _cfg(128, 128, 32, 8, 3, False),
        _cfg(64, 128, 32, 4, 3, True), _cfg(64, 64, 32, 4, 3, True), _cfg(64, 64, 64, 4, 3, False),
        _cfg(32, 64, 32, 4, 3, True), _cfg(16, 64, 64, 4, 3, True),
    ]


def _prune_by(m_arg: str, n_arg: Optional[str] = None):
    """Drop configs whose M (and N) block is far larger than the channel count it tiles."""
    def prune(configs, named_args, **kwargs):
        def fits(c):
            ok = c.kwargs["BLOCK_M"] <= max(32, triton.next_power_of_2(named_args[m_arg]))
            if n_arg is not None:
                n_max = max(32, triton.next_power_of_2(named_args[n_arg]))
                ok = ok and c.kwargs["BLOCK_N"] <= n_max
            return ok
        kept = [c for c in configs if fits(c)]
        return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"])]
    return {"early_config_prune": prune}


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------

# Notes that hold for all three kernels:
# * The loads are gathers whose start addresses Triton cannot prove aligned (padding and tap
#   shifts are arbitrary), so bf16/fp16 tiles cannot use cp.async and Triton's pipeliner leaves
#   them synchronous (seen in the sm80/sm90 TTGIR). PREFETCH (an autotuned choice) pipelines by
#   hand instead: the tiles of step i+1 are loaded into registers before the dot of step i, so
#   global-memory latency overlaps the tensor-core work, at the cost of registers.
# * One address per element (no vectorization) makes registers the scarce resource, so the
#   int64 batch offset goes into per-row/column base pointers once, and in-item offsets are
#   int32 unless one item spans >= 2**31 elements (OFF64; the host decides).

@triton.jit
def _offsets(rows, s_rows, cols, s_cols, OFF64: tl.constexpr):
    """rows[:, None] * s_rows + cols[None, :] * s_cols in int64 (OFF64) or int32."""
    if OFF64:
        return rows.to(tl.int64)[:, None] * s_rows + cols.to(tl.int64)[None, :] * s_cols
    else:
        return rows.to(tl.int32)[:, None] * s_rows + cols.to(tl.int32)[None, :] * s_cols


@triton.jit
def _fwd_operands(x_cols, w_rows, it, live, n_cblk, mask_m, offs_k, pos0, mask_n, C_in, L,
                  dilation, sxc, sxl, swc, swk, BLOCK_K: tl.constexpr, OFF64: tl.constexpr):
    """(w tile (BLOCK_M, BLOCK_K), x tile (BLOCK_K, BLOCK_N)) of step `it` = (tap, C_in block)."""
    k = it // n_cblk
    ci = (it - k * n_cblk) * BLOCK_K + offs_k
    mask_c = (ci < C_in) & live
    pos = pos0 + k * dilation
    mask_x = mask_c[:, None] & (mask_n & (pos >= 0) & (pos < L))[None, :]
    xt = tl.load(x_cols[None, :] + _offsets(ci, sxc, pos, sxl, OFF64), mask=mask_x, other=0.0)
    wt = tl.load(w_rows[:, None] + (ci * swc + k * swk)[None, :],
                 mask=mask_m[:, None] & mask_c[None, :], other=0.0)
    return wt, xt


@triton.autotune(configs=_gemm_configs(), key=["C_in", "C_out", "KSIZE", "stride", "N_LOG2"],
                 prune_configs_by=_prune_by("C_out"))
@triton.jit
def _conv1d_fwd_kernel(
    x_ptr,  # (B, C_in, L)
    w_ptr,  # (C_out, C_in, KSIZE)
    b_ptr,  # (C_out,) or dummy when not HAS_BIAS
    r_ptr,  # (B, C_out, L_out) or dummy when not HAS_RES
    y_ptr,  # (B, C_out, L_out)
    B, C_in, L, C_out, L_out, KSIZE, stride, pad_left, dilation, N_LOG2,
    sxb, sxc, sxl, swo, swc, swk, sb, srb, src, srl, syb, syc, syl,
    HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, UPCAST: tl.constexpr,
    PRECISION: tl.constexpr, OFF64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    PREFETCH: tl.constexpr,
):
    # 1-D grid, C_out tiles fastest: programs that run together share one x tile (L2 reuse), and
    # a 1-D grid has no 65535 limit for the B*L_out tiles of the VAE's 4 M-sample stages.
    pid = tl.program_id(0).to(tl.int64)
    num_m = tl.cdiv(C_out, BLOCK_M)
    pid_m = pid % num_m
    pid_n = pid // num_m

    offs_m = (pid_m * BLOCK_M).to(tl.int32) + tl.arange(0, BLOCK_M)   # output channels
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)                  # flattened (b, t), int64
    offs_k = tl.arange(0, BLOCK_K)                                    # input channels in a block
    mask_m = offs_m < C_out
    mask_n = offs_n < B * L_out
    bb = offs_n // L_out
    tt = offs_n - bb * L_out                                          # output position
    x_cols = x_ptr + bb * sxb                                         # (BLOCK_N,) item bases
    w_rows = w_ptr + offs_m * swo                                     # weights: < 2**31 elements
    pos0 = tt * stride - pad_left                                     # input position of tap 0
    if not OFF64:
        pos0 = pos0.to(tl.int32)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    n_cblk = tl.cdiv(C_in, BLOCK_K)
    # One flat loop over (tap, C_in block) so the prefetch also covers the taps when C_in fits
    # a single block (the VAE's first conv has C_in = 2).
    n_iter = KSIZE * n_cblk
    if PREFETCH:
        wt, xt = _fwd_operands(x_cols, w_rows, 0, n_iter > 0, n_cblk, mask_m, offs_k, pos0, mask_n,
                               C_in, L, dilation, sxc, sxl, swc, swk, BLOCK_K, OFF64)
    for it in range(0, n_iter):
        if PREFETCH:
            wn, xn = _fwd_operands(x_cols, w_rows, it + 1, it + 1 < n_iter, n_cblk, mask_m, offs_k,
                                   pos0, mask_n, C_in, L, dilation, sxc, sxl, swc, swk, BLOCK_K,
                                   OFF64)
        else:
            wt, xt = _fwd_operands(x_cols, w_rows, it, True, n_cblk, mask_m, offs_k, pos0, mask_n,
                                   C_in, L, dilation, sxc, sxl, swc, swk, BLOCK_K, OFF64)
        if UPCAST:
            acc = tl.dot(wt.to(tl.float32), xt.to(tl.float32), acc, input_precision=PRECISION)
        else:
            acc = tl.dot(wt, xt, acc, input_precision=PRECISION)
        if PREFETCH:
            wt, xt = wn, xn

    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_m * sb, mask=mask_m, other=0.0).to(tl.float32)[:, None]
    mask_y = mask_m[:, None] & mask_n[None, :]
    if HAS_RES:
        res = tl.load((r_ptr + bb * srb)[None, :] + _offsets(offs_m, src, tt, srl, OFF64),
                      mask=mask_y, other=0.0)
        acc += res.to(tl.float32)
    tl.store((y_ptr + bb * syb)[None, :] + _offsets(offs_m, syc, tt, syl, OFF64),
             acc.to(y_ptr.dtype.element_ty), mask=mask_y)


@triton.jit
def _dgrad_operands(g_cols, w_rows, it, live, n_oblk, k0, r, mask_m, offs_k, qq, mask_n, C_out,
                    L_out, stride, pad_left, dilation, TAP_STEP, sgc, sgl, swo, swk,
                    BLOCK_K: tl.constexpr, OFF64: tl.constexpr):
    """(w^T tile (BLOCK_M, BLOCK_K), g tile (BLOCK_K, BLOCK_N)) of step `it` = (tap, C_out blk)."""
    j = it // n_oblk
    k = k0 + j * TAP_STEP
    o = (it - j * n_oblk) * BLOCK_K + offs_k
    mask_o = (o < C_out) & live
    # Exact division (k was chosen so), so C truncation and floor agree for negative values.
    tt = qq + (r + pad_left - k * dilation) // stride
    mask_g = mask_o[:, None] & (mask_n & (tt >= 0) & (tt < L_out))[None, :]
    gt = tl.load(g_cols[None, :] + _offsets(o, sgc, tt, sgl, OFF64), mask=mask_g, other=0.0)
    wt = tl.load(w_rows[:, None] + (o * swo + k * swk)[None, :],
                 mask=mask_m[:, None] & mask_o[None, :], other=0.0)
    return wt, gt


@triton.autotune(configs=_gemm_configs(), key=["C_in", "C_out", "KSIZE", "stride", "N_LOG2"],
                 prune_configs_by=_prune_by("C_in"))
@triton.jit
def _conv1d_dgrad_kernel(
    g_ptr,   # (B, C_out, L_out)  gradient of the conv output (the input of a transposed conv)
    w_ptr,   # (C_out, C_in, KSIZE)
    b_ptr,   # (C_in,) or dummy when not HAS_BIAS (bias of a transposed conv)
    dx_ptr,  # (B, C_in, L)
    B, C_in, L, C_out, L_out, KSIZE, stride, pad_left, dilation, TAP_STEP, N_LOG2,
    sgb, sgc, sgl, swo, swc, swk, sb, sxb, sxc, sxl,
    HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr, OFF64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    PREFETCH: tl.constexpr,
):
    # Grid: (C_in tiles fastest, then phase r, then (b, q) tiles); output position l = q*s + r.
    pid = tl.program_id(0).to(tl.int64)
    num_m = tl.cdiv(C_in, BLOCK_M)
    pid_m = pid % num_m
    rest = pid // num_m
    r = (rest % stride).to(tl.int32)
    pid_n = rest // stride
    n_q = tl.cdiv(L, stride)

    offs_m = (pid_m * BLOCK_M).to(tl.int32) + tl.arange(0, BLOCK_M)   # input channels c
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)                  # flattened (b, q), int64
    offs_k = tl.arange(0, BLOCK_K)                                    # output channels in a block
    mask_m = offs_m < C_in
    bb = offs_n // n_q
    qq = offs_n - bb * n_q
    ll = qq * stride + r                                              # dx position
    mask_n = (offs_n < B * n_q) & (ll < L)
    g_cols = g_ptr + bb * sgb
    w_rows = w_ptr + offs_m * swc
    if not OFF64:
        qq = qq.to(tl.int32)
        ll = ll.to(tl.int32)

    # Taps serving phase r satisfy k*d = r + pad_left (mod s); they repeat every
    # TAP_STEP = s / gcd(s, d) taps. Find the first one (KSIZE when the phase gets none, e.g. the
    # positions of a dilated strided conv that no tap reads). (s - kk)*d keeps the operand of %
    # non-negative. k0 is a tensor so its loop-carried type stays fixed even when KSIZE is
    # specialised to the constexpr 1.
    k0 = tl.zeros((), dtype=tl.int32) + KSIZE
    for kk in range(0, TAP_STEP):
        hit = ((r + pad_left + (stride - kk) * dilation) % stride) == 0
        k0 = tl.where(hit & (kk < k0), kk, k0)
    n_taps = (KSIZE - k0 + TAP_STEP - 1) // TAP_STEP

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    n_oblk = tl.cdiv(C_out, BLOCK_K)
    n_iter = n_taps * n_oblk
    if PREFETCH:
        wt, gt = _dgrad_operands(g_cols, w_rows, 0, n_iter > 0, n_oblk, k0, r, mask_m, offs_k, qq,
                                 mask_n, C_out, L_out, stride, pad_left, dilation, TAP_STEP, sgc,
                                 sgl, swo, swk, BLOCK_K, OFF64)
    for it in range(0, n_iter):
        if PREFETCH:
            wn, gn = _dgrad_operands(g_cols, w_rows, it + 1, it + 1 < n_iter, n_oblk, k0, r,
                                     mask_m, offs_k, qq, mask_n, C_out, L_out, stride, pad_left,
                                     dilation, TAP_STEP, sgc, sgl, swo, swk, BLOCK_K, OFF64)
        else:
            wt, gt = _dgrad_operands(g_cols, w_rows, it, True, n_oblk, k0, r, mask_m, offs_k, qq,
                                     mask_n, C_out, L_out, stride, pad_left, dilation, TAP_STEP,
                                     sgc, sgl, swo, swk, BLOCK_K, OFF64)
        if UPCAST:
            acc = tl.dot(wt.to(tl.float32), gt.to(tl.float32), acc, input_precision=PRECISION)
        else:
            acc = tl.dot(wt, gt, acc, input_precision=PRECISION)
        if PREFETCH:
            wt, gt = wn, gn

    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_m * sb, mask=mask_m, other=0.0).to(tl.float32)[:, None]
    # Stores are strided by s along N (one phase per program); the s phase programs of a tile
    # run back to back (phase is the second-fastest grid axis), so L2 merges the sectors.
    tl.store((dx_ptr + bb * sxb)[None, :] + _offsets(offs_m, sxc, ll, sxl, OFF64),
             acc.to(dx_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _wgrad_operands(g_rows, x_cols, it, live, n_tblk, t_start, t_end, shift, mask_m, mask_n,
                    offs_k, L, stride, sgb, sgl, sxb, sxl, BLOCK_K: tl.constexpr,
                    OFF64: tl.constexpr):
    """(g tile (BLOCK_M, BLOCK_K), x^T tile (BLOCK_K, BLOCK_N)) of step `it` = (b, t block)."""
    b = it // n_tblk
    tt = t_start + (it - b * n_tblk) * BLOCK_K + offs_k               # output positions (int32)
    mask_t = (tt < t_end) & live
    pos = tt * stride + shift                                         # input positions of tap k
    mask_x = mask_t & (pos >= 0) & (pos < L)
    if OFF64:
        g_off = tt.to(tl.int64) * sgl
        x_off = pos.to(tl.int64) * sxl
    else:
        g_off = tt * sgl
        x_off = pos * sxl
    b64 = b.to(tl.int64)
    gt = tl.load(g_rows[:, None] + b64 * sgb + g_off[None, :],
                 mask=mask_m[:, None] & mask_t[None, :], other=0.0)
    xt = tl.load(x_cols[None, :] + b64 * sxb + x_off[:, None],
                 mask=mask_x[:, None] & mask_n[None, :], other=0.0)
    return gt, xt


@triton.autotune(configs=_wgrad_configs(), key=["C_in", "C_out", "KSIZE", "stride", "N_LOG2"],
                 prune_configs_by=_prune_by("C_out", "C_in"))
@triton.jit
def _conv1d_wgrad_kernel(
    g_ptr,   # (B, C_out, L_out)
    x_ptr,   # (B, C_in, L)
    dw_ptr,  # (SPLIT, C_out, C_in, KSIZE) fp32 partial sums, contiguous
    B, C_in, L, C_out, L_out, KSIZE, stride, pad_left, dilation, T_CHUNK, N_LOG2,
    sgb, sgc, sgl, sxb, sxc, sxl,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr, OFF64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    PREFETCH: tl.constexpr,
):
    # Grid: (C_out tiles fastest, C_in tiles, tap, split). Program `split` reduces output
    # positions [split*T_CHUNK, +T_CHUNK) of every batch item: the loop walks (b, t block) so the
    # positions inside a tile stay in one item (no per-element division, contiguous g reads).
    pid = tl.program_id(0).to(tl.int64)
    num_m = tl.cdiv(C_out, BLOCK_M)
    num_n = tl.cdiv(C_in, BLOCK_N)
    pid_m = pid % num_m
    rest = pid // num_m
    pid_n = rest % num_n
    rest = rest // num_n
    k = (rest % KSIZE).to(tl.int32)
    split = (rest // KSIZE).to(tl.int32)

    offs_m = (pid_m * BLOCK_M).to(tl.int32) + tl.arange(0, BLOCK_M)   # output channels o
    offs_n = (pid_n * BLOCK_N).to(tl.int32) + tl.arange(0, BLOCK_N)   # input channels c
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < C_out
    mask_n = offs_n < C_in
    g_rows = g_ptr + offs_m.to(tl.int64) * sgc
    x_cols = x_ptr + offs_n.to(tl.int64) * sxc
    t_start = split * T_CHUNK
    t_end = tl.minimum(t_start + T_CHUNK, L_out)
    n_tblk = tl.cdiv(t_end - t_start, BLOCK_K)
    shift = k * dilation - pad_left

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    n_iter = B * n_tblk
    if PREFETCH:
        gt, xt = _wgrad_operands(g_rows, x_cols, 0, n_iter > 0, n_tblk, t_start, t_end, shift,
                                 mask_m, mask_n, offs_k, L, stride, sgb, sgl, sxb, sxl, BLOCK_K,
                                 OFF64)
    for it in range(0, n_iter):
        if PREFETCH:
            gn, xn = _wgrad_operands(g_rows, x_cols, it + 1, it + 1 < n_iter, n_tblk, t_start,
                                     t_end, shift, mask_m, mask_n, offs_k, L, stride, sgb, sgl,
                                     sxb, sxl, BLOCK_K, OFF64)
        else:
            gt, xt = _wgrad_operands(g_rows, x_cols, it, True, n_tblk, t_start, t_end, shift,
                                     mask_m, mask_n, offs_k, L, stride, sgb, sgl, sxb, sxl,
                                     BLOCK_K, OFF64)
        if UPCAST:
            acc = tl.dot(gt.to(tl.float32), xt.to(tl.float32), acc, input_precision=PRECISION)
        else:
            acc = tl.dot(gt, xt, acc, input_precision=PRECISION)
        if PREFETCH:
            gt, xt = gn, xn

    # Partial slabs are small (C_out*C_in*K fp32 each): int64 offsets cost nothing here.
    out = dw_ptr + split.to(tl.int64) * C_out * C_in * KSIZE + (
        offs_m.to(tl.int64)[:, None] * C_in + offs_n[None, :]) * KSIZE + k
    tl.store(out, acc, mask=mask_m[:, None] & mask_n[None, :])


# --------------------------------------------------------------------------------------------
# Host launchers
# --------------------------------------------------------------------------------------------

def _new_output(shape, dtype, device) -> torch.Tensor:
    if POISON_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def _dot_modes(dtype: torch.dtype) -> Tuple[bool, str]:
    """(UPCAST, PRECISION) for tiles of this dtype; see the header comment."""
    if INTERPRET:
        return dtype != torch.float32, "ieee"
    if dtype == torch.float32:
        return False, "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"
    return False, "ieee"  # ignored for fp16/bf16 operands


# Tests set this to run the int64 in-item offset path on small tensors.
_FORCE_OFF64 = False


def _needs_off64(*tensors: Optional[torch.Tensor]) -> bool:
    """Whether an in-item offset (dims 1, 2) of any of these (B, C, L) tensors reaches 2**31."""
    if _FORCE_OFF64:
        return True
    for t in tensors:
        if t is None:
            continue
        if (t.shape[1] - 1) * t.stride(1) + (t.shape[2] - 1) * t.stride(2) >= 2**31:
            return True
    return False


def _n_log2(n: int) -> int:
    # Autotune key for the long (positions) dimension: its power-of-two bucket, so every new
    # chunk length of the VAE does not retune.
    return max(0, int(n - 1).bit_length())


_SM_COUNT = {}


def _sm_count(device: torch.device) -> int:
    if INTERPRET or device.type != "cuda":
        return 4  # small, so the tests exercise split-K
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]


def conv1d_out_length(L: int, K: int, stride: int, pad_left: int, pad_right: int,
                      dilation: int) -> int:
    return (L + pad_left + pad_right - dilation * (K - 1) - 1) // stride + 1


def _launch_fwd(x, w, bias, residual, stride, pad_left, dilation, L_out):
    """y (B, C_out, L_out) = conv(x, w) + bias + residual, in x.dtype."""
    B, C_in, L = x.shape
    C_out, _, K = w.shape
    y = _new_output((B, C_out, L_out), x.dtype, x.device)
    upcast, precision = _dot_modes(x.dtype)
    b_arg = bias if bias is not None else y
    r_arg = residual if residual is not None else y
    r_strides = residual.stride() if residual is not None else (0, 0, 0)
    def grid(meta):
        return (triton.cdiv(C_out, meta["BLOCK_M"]) * triton.cdiv(B * L_out, meta["BLOCK_N"]),)

    _conv1d_fwd_kernel[grid](
        x, w, b_arg, r_arg, y,
        B, C_in, L, C_out, L_out, K, stride, pad_left, dilation, _n_log2(B * L_out),
        *x.stride(), *w.stride(), bias.stride(0) if bias is not None else 0, *r_strides,
        *y.stride(),
        HAS_BIAS=bias is not None, HAS_RES=residual is not None, UPCAST=upcast, PRECISION=precision,
        OFF64=_needs_off64(x, residual, y),
    )
    return y


def _launch_dgrad(g, w, stride, pad_left, dilation, L, bias=None):
    """dx (B, C_in, L) of a conv with weight w (C_out, C_in, K) from g (B, C_out, L_out), + bias."""
    B, C_out, L_out = g.shape
    _, C_in, K = w.shape
    dx = _new_output((B, C_in, L), g.dtype, g.device)
    upcast, precision = _dot_modes(g.dtype)
    tap_step = stride // math.gcd(stride, dilation)
    n_q = triton.cdiv(L, stride)
    def grid(meta):
        n_m, n_n = triton.cdiv(C_in, meta["BLOCK_M"]), triton.cdiv(B * n_q, meta["BLOCK_N"])
        return (n_m * stride * n_n,)

    _conv1d_dgrad_kernel[grid](
        g, w, bias if bias is not None else dx, dx,
        B, C_in, L, C_out, L_out, K, stride, pad_left, dilation, tap_step, _n_log2(B * n_q),
        *g.stride(), *w.stride(), bias.stride(0) if bias is not None else 0, *dx.stride(),
        HAS_BIAS=bias is not None, UPCAST=upcast, PRECISION=precision, OFF64=_needs_off64(g, dx),
    )
    return dx


def _wgrad_split(B, C_out, C_in, K, L_out, device) -> Tuple[int, int]:
    """(number of partial slabs, output positions per slab) for the wgrad reduction.

    Split only as far as needed to fill the GPU with ~2 waves (nominal 128x128 tiles), keeping
    >= 1024 positions x B per program so each still runs a long loop. Under the interpreter:
    >= 128 positions and a pretend 4-SM device, so the tests split too.
    """
    min_chunk = 128 if INTERPRET else max(1, 1024 // B)
    tiles = triton.cdiv(C_out, 128) * triton.cdiv(C_in, 128) * K
    split = max(1, min(64, triton.cdiv(2 * _sm_count(device), tiles), L_out // min_chunk))
    chunk = triton.cdiv(triton.cdiv(L_out, split), 128) * 128   # whole BLOCK_K steps
    return triton.cdiv(L_out, chunk), chunk


def _launch_wgrad(g, x, K, stride, pad_left, dilation):
    """dw (C_out, C_in, K) in fp32 of a conv y = conv(x, w), from g = dL/dy (B, C_out, L_out)."""
    B, C_out, L_out = g.shape
    _, C_in, L = x.shape
    split, chunk = _wgrad_split(B, C_out, C_in, K, L_out, g.device)
    part = _new_output((split, C_out, C_in, K), torch.float32, g.device)
    upcast, precision = _dot_modes(g.dtype)
    def grid(meta):
        n_m, n_n = triton.cdiv(C_out, meta["BLOCK_M"]), triton.cdiv(C_in, meta["BLOCK_N"])
        return (n_m * n_n * K * split,)

    _conv1d_wgrad_kernel[grid](
        g, x, part,
        B, C_in, L, C_out, L_out, K, stride, pad_left, dilation, chunk, _n_log2(B * L_out),
        *g.stride(), *x.stride(),
        UPCAST=upcast, PRECISION=precision, OFF64=_needs_off64(g, x),
    )
    return part[0] if split == 1 else part.sum(0)


# --------------------------------------------------------------------------------------------
# What the kernels serve
# --------------------------------------------------------------------------------------------

def _common_reason(x, weight, bias, extra) -> Optional[str]:
    if not isinstance(x, torch.Tensor) or not isinstance(weight, torch.Tensor):
        return "x and weight must be tensors"
    tensors = (x, weight, bias) + tuple(extra)
    r = first_reason(device_reason(*tensors), dtype_reason(*tensors))
    if r is not None:
        return r
    devices = {t.device for t in tensors if t is not None}
    if len(devices) > 1:
        return f"tensors on different devices: {sorted(str(d) for d in devices)}"
    dtypes = {t.dtype for t in tensors if t is not None}
    if len(dtypes) > 1:
        return f"mixed dtypes {sorted(str(d) for d in dtypes)}: cast to one dtype first"
    if x.dim() != 3:
        return f"x must be (B, C, L), got rank {x.dim()}"
    if weight.dim() != 3:
        return f"weight must be (C_out, C_in, K), got rank {weight.dim()}"
    if x.numel() == 0 or weight.numel() == 0:
        return "empty tensor"
    if weight.numel() >= 2**31:
        return "weight with >= 2**31 elements (weight offsets are int32)"
    return None


def _int_reason(name, v, lo) -> Optional[str]:
    if isinstance(v, bool) or not isinstance(v, int):
        return f"{name} must be an int, got {v!r}"
    if v < lo:
        return f"{name} must be >= {lo}, got {v}"
    return None


def conv1d_unsupported_reason(x, weight, bias=None, stride=1, padding: Padding = 0, dilation=1,
                              residual=None) -> Optional[str]:
    """Why the Triton conv1d cannot serve this call (None when it can)."""
    r = _common_reason(x, weight, bias, (residual,))
    if r is not None:
        return r
    r = first_reason(_int_reason("stride", stride, 1), _int_reason("dilation", dilation, 1))
    if r is not None:
        return r
    try:
        pl, pr = _pad_pair(padding)
    except ValueError as e:
        return str(e)
    if pl < 0 or pr < 0:
        return f"negative padding {padding!r} is not supported"
    B, C_in, L = x.shape
    C_out, C_in_w, K = weight.shape
    if C_in_w != C_in:
        return (f"channel mismatch: x has {C_in} channels, weight expects {C_in_w} "
                "(groups > 1 is not supported)")
    if bias is not None and tuple(bias.shape) != (C_out,):
        return f"bias shape {tuple(bias.shape)} != ({C_out},)"
    L_out = conv1d_out_length(L, K, stride, pl, pr, dilation)
    if L_out < 1:
        return (f"output length {L_out} < 1 (L={L}, K={K}, dilation={dilation}, "
                f"padding=({pl}, {pr}))")
    if residual is not None and tuple(residual.shape) != (B, C_out, L_out):
        return f"residual shape {tuple(residual.shape)} != output shape {(B, C_out, L_out)}"
    return None


def conv_transpose1d_out_length(L: int, K: int, stride: int, padding: int, output_padding: int,
                                dilation: int) -> int:
    return (L - 1) * stride - 2 * padding + dilation * (K - 1) + output_padding + 1


def conv_transpose1d_unsupported_reason(x, weight, bias=None, stride=1, padding=0,
                                        output_padding=0, dilation=1) -> Optional[str]:
    """Why the Triton conv_transpose1d cannot serve this call (None when it can)."""
    r = _common_reason(x, weight, bias, ())
    if r is not None:
        return r
    r = first_reason(_int_reason("stride", stride, 1), _int_reason("dilation", dilation, 1),
                     _int_reason("padding", padding, 0),
                     _int_reason("output_padding", output_padding, 0))
    if r is not None:
        return r
    if output_padding >= max(stride, dilation):
        return f"output_padding {output_padding} must be < max(stride, dilation)"
    B, C_in, L = x.shape
    C_in_w, C_out, K = weight.shape
    if C_in_w != C_in:
        return (f"channel mismatch: x has {C_in} channels, weight (C_in, C_out, K) expects "
                f"{C_in_w} (groups > 1 is not supported)")
    if bias is not None and tuple(bias.shape) != (C_out,):
        return f"bias shape {tuple(bias.shape)} != ({C_out},)"
    L_out = conv_transpose1d_out_length(L, K, stride, padding, output_padding, dilation)
    if L_out < 1:
        return f"output length {L_out} < 1"
    return None


def _raise_if(reason: Optional[str], op: str) -> None:
    if reason is not None:
        raise KernelInputError(f"{op}: Triton kernel cannot serve this input: {reason}")


# --------------------------------------------------------------------------------------------
# torch.library custom ops (opaque to torch.compile, which sees only the fake impls)
# --------------------------------------------------------------------------------------------

_EMPTY = (0,)


@torch.library.custom_op("fastaudio::conv1d_fwd", mutates_args=())
def conv1d_fwd_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                  residual: Optional[torch.Tensor], stride: int, pad_left: int, pad_right: int,
                  dilation: int) -> torch.Tensor:
    _raise_if(conv1d_unsupported_reason(x, weight, bias, stride, (pad_left, pad_right), dilation,
                                        residual), "conv1d")
    L_out = conv1d_out_length(x.shape[2], weight.shape[2], stride, pad_left, pad_right, dilation)
    return _launch_fwd(x, weight, bias, residual, stride, pad_left, dilation, L_out)


@conv1d_fwd_op.register_fake
def _(x, weight, bias, residual, stride, pad_left, pad_right, dilation):
    L_out = conv1d_out_length(x.shape[2], weight.shape[2], stride, pad_left, pad_right, dilation)
    return x.new_empty((x.shape[0], weight.shape[0], L_out))


@torch.library.custom_op("fastaudio::conv1d_bwd", mutates_args=())
def conv1d_bwd_op(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: int,
                  pad_left: int, pad_right: int, dilation: int, need_dx: bool, need_dw: bool,
                  need_db: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dweight, dbias); a gradient not asked for comes back as an empty (0,) tensor."""
    K = weight.shape[2]
    dx = (_launch_dgrad(grad, weight, stride, pad_left, dilation, x.shape[2]) if need_dx
          else x.new_empty(_EMPTY))
    dw = (_launch_wgrad(grad, x, K, stride, pad_left, dilation).to(weight.dtype) if need_dw
          else weight.new_empty(_EMPTY))
    db = (grad.sum(dim=(0, 2), dtype=torch.float32).to(weight.dtype) if need_db
          else weight.new_empty(_EMPTY))
    return dx, dw, db


@conv1d_bwd_op.register_fake
def _(grad, x, weight, stride, pad_left, pad_right, dilation, need_dx, need_dw, need_db):
    dx = x.new_empty(x.shape if need_dx else _EMPTY)
    dw = weight.new_empty(weight.shape if need_dw else _EMPTY)
    db = weight.new_empty((weight.shape[0],) if need_db else _EMPTY)
    return dx, dw, db


@torch.library.custom_op("fastaudio::conv_transpose1d_fwd", mutates_args=())
def conv_transpose1d_fwd_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                            stride: int, padding: int, output_padding: int,
                            dilation: int) -> torch.Tensor:
    _raise_if(conv_transpose1d_unsupported_reason(x, weight, bias, stride, padding,
                                                  output_padding, dilation), "conv_transpose1d")
    L_out = conv_transpose1d_out_length(x.shape[2], weight.shape[2], stride, padding,
                                        output_padding, dilation)
    # The dgrad of conv(weight: (C_in_t, C_out_t, K)) evaluated at g = x.
    return _launch_dgrad(x, weight, stride, padding, dilation, L_out, bias)


@conv_transpose1d_fwd_op.register_fake
def _(x, weight, bias, stride, padding, output_padding, dilation):
    L_out = conv_transpose1d_out_length(x.shape[2], weight.shape[2], stride, padding,
                                        output_padding, dilation)
    return x.new_empty((x.shape[0], weight.shape[1], L_out))


@torch.library.custom_op("fastaudio::conv_transpose1d_bwd", mutates_args=())
def conv_transpose1d_bwd_op(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                            stride: int, padding: int, dilation: int, need_dx: bool,
                            need_dw: bool, need_db: bool
                            ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dweight, dbias) of conv_transpose1d; empty (0,) tensors for those not asked for."""
    K = weight.shape[2]
    # dx: the forward conv of grad with the same weight; dw: the wgrad with x as the "output
    # gradient" and grad as the "input" of that conv.
    dx = (_launch_fwd(grad, weight, None, None, stride, padding, dilation, x.shape[2]) if need_dx
          else x.new_empty(_EMPTY))
    dw = (_launch_wgrad(x, grad, K, stride, padding, dilation).to(weight.dtype) if need_dw
          else weight.new_empty(_EMPTY))
    db = (grad.sum(dim=(0, 2), dtype=torch.float32).to(weight.dtype) if need_db
          else weight.new_empty(_EMPTY))
    return dx, dw, db


@conv_transpose1d_bwd_op.register_fake
def _(grad, x, weight, stride, padding, dilation, need_dx, need_dw, need_db):
    dx = x.new_empty(x.shape if need_dx else _EMPTY)
    dw = weight.new_empty(weight.shape if need_dw else _EMPTY)
    db = weight.new_empty((weight.shape[1],) if need_db else _EMPTY)
    return dx, dw, db


# --------------------------------------------------------------------------------------------
# Autograd and the public functions
# --------------------------------------------------------------------------------------------

class Conv1dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, residual, stride, pad_left, pad_right, dilation):
        y = torch.ops.fastaudio.conv1d_fwd(x, weight, bias, residual, stride, pad_left, pad_right,
                                           dilation)
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, pad_left, pad_right, dilation)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_dx, need_dw, need_db, need_dr = ctx.needs_input_grad[:4]
        need_db = need_db and ctx.has_bias
        dx, dw, db = torch.ops.fastaudio.conv1d_bwd(grad, x, weight, *ctx.conf, need_dx, need_dw,
                                                    need_db)
        return (dx if need_dx else None, dw if need_dw else None, db if need_db else None,
                grad if need_dr else None, None, None, None, None)


class ConvTranspose1dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, output_padding, dilation):
        y = torch.ops.fastaudio.conv_transpose1d_fwd(x, weight, bias, stride, padding,
                                                     output_padding, dilation)
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, dilation)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_dx, need_dw, need_db = ctx.needs_input_grad[:3]
        need_db = need_db and ctx.has_bias
        dx, dw, db = torch.ops.fastaudio.conv_transpose1d_bwd(grad, x, weight, *ctx.conf, need_dx,
                                                              need_dw, need_db)
        return (dx if need_dx else None, dw if need_dw else None, db if need_db else None,
                None, None, None, None)


def conv1d(x, weight, bias=None, stride=1, padding: Padding = 0, dilation=1, residual=None):
    """Differentiable Triton ``conv1d(x, weight, bias) + residual``; signature of conv1d_ref.

    Raises ValueError naming the reason when the kernel cannot serve the input.
    """
    _raise_if(conv1d_unsupported_reason(x, weight, bias, stride, padding, dilation, residual),
              "conv1d")
    pl, pr = _pad_pair(padding)
    return Conv1dFunction.apply(x, weight, bias, residual, stride, pl, pr, dilation)


def conv_transpose1d(x, weight, bias=None, stride=1, padding=0, output_padding=0, dilation=1):
    """Differentiable Triton ``F.conv_transpose1d`` (groups=1); weight is (C_in, C_out, K).

    Raises ValueError naming the reason when the kernel cannot serve the input.
    """
    _raise_if(conv_transpose1d_unsupported_reason(x, weight, bias, stride, padding,
                                                  output_padding, dilation), "conv_transpose1d")
    return ConvTranspose1dFunction.apply(x, weight, bias, stride, padding, output_padding,
                                         dilation)
