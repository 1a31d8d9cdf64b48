"""Fused GroupNorm + affine + FiLM (x·(1+scale)+shift) + SiLU, forward and backward, in Triton.

Shapes: x (B, C, L), G groups of Cg = C/G channels; weight, bias (C,); FiLM scale, shift (B, C),
read through their strides (the U-Net's come from ``chunk`` of one (B, 2C) tensor: no copies).

Work unit: a *slab* = R whole rows (channels) of one (batch, group) pair, all L positions. Every
kernel runs one program per slab, programs numbered pair-major so that consecutive programs walk
consecutive memory; R is chosen on the host so that there are several programs per SM (SA1.0's
(2, 1024, 4096)/16 groups: R = 2, 1 024 programs of 8 K elements).

  forward   1. _gn_fwd_stats_kernel : per slab (mean, M2), two-pass per block of the slab in
                                      registers, blocks folded with Chan's parallel update
            2. _gn_fwd_apply_kernel : every program first merges its pair's slab partials itself
                                      (Chan, in a fixed order, so all programs of a pair agree
                                      bit for bit), then normalises + affine + FiLM + SiLU its
                                      slab; it runs in the stats pass's order, so the slab it reads
                                      was read by the same-numbered program moments before and is
                                      likely still in L2. The slab-0 program stores mean and rstd.
  backward  1. _gn_bwd_sums_kernel  : per row (a slab holds whole rows, so these are complete):
                                      s1 = Σ_L dv, s2 = Σ_L dv·x̂ (dv = dL/d(FiLM output)); it
                                      also writes dshift = s1 and dscale = s2·w + s1·bias
            2. _gn_bwd_dx_kernel    : each program folds its pair's s1, s2 into the two group
                                      means of dx̂ and dx̂·x̂ itself, then writes dx for its slab
            3. _gn_bwd_param_kernel : dweight, dbias = Σ_B of s2, s1 times (1 + scale)
            No torch op runs between the launches; every buffer is allocated before the first.

The merge is repeated by every apply program instead of being a launch of its own: it costs
O(slabs per pair) loads (≤ Cg), against a launch and a dependency on the critical path. The
backward recomputes x̂, the FiLM output and the SiLU from x, mean and rstd instead of storing the
normalised tensor: it reads x twice more but saves a full activation per GroupNorm in training.

Statistics are fp32 (never E[x²] − E[x]²; data shifted by the slab's first element so that
|mean| ≫ std keeps its digits); global offsets are int64 (rows · L can pass 2^31).
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._common import INTERPRET, KernelInputError, SUPPORTED_DTYPES, alloc, device_ok
from ._store import _cast_out

Tensor = torch.Tensor

_MAX_MERGE_BLOCK = 1024  # slab partials (or channels) a program folds in per step


# ------------------------------------------------------------------------------------------------
# Reference
# ------------------------------------------------------------------------------------------------
def group_norm_ref(x: Tensor, num_groups: int, weight: Optional[Tensor], bias: Optional[Tensor],
                   eps: float = 1e-5, scale: Optional[Tensor] = None,
                   shift: Optional[Tensor] = None, silu: bool = False,
                   upcast: bool = True) -> Tensor:
    """GroupNorm → affine → FiLM ``y·(1+scale)+shift`` → SiLU in plain PyTorch.

    x: (B, C, L); weight, bias: (C,) or None; scale, shift: (B, C) or None. With ``upcast`` the
    arithmetic runs in fp32 (fp64 for fp64 inputs) and the result is cast back to x.dtype;
    without it, every op runs in x.dtype (the "what torch does in bf16" baseline of the tests).
    """
    dt = torch.promote_types(x.dtype, torch.float32) if upcast else x.dtype

    def cast(t):
        return None if t is None else t.to(dt)

    # F.group_norm's arithmetic, spelled out: it refuses groups of one element (B=1, C=G, L=1),
    # which the kernel serves.
    B, C, L = x.shape
    xg = x.to(dt).reshape(B, num_groups, -1)
    var, mean = torch.var_mean(xg, dim=-1, correction=0, keepdim=True)
    y = ((xg - mean) * torch.rsqrt(var + eps)).reshape(B, C, L)
    if weight is not None:
        y = y * cast(weight)[:, None]
    if bias is not None:
        y = y + cast(bias)[:, None]
    if scale is not None:
        y = y * (1 + cast(scale)[..., None])
    if shift is not None:
        y = y + cast(shift)[..., None]
    if silu:
        y = F.silu(y)
    return y.to(x.dtype)


# ------------------------------------------------------------------------------------------------
# Kernels
# ------------------------------------------------------------------------------------------------
@triton.jit
def _slab_of(pid, n_slabs, Cg, R):
    """(pair, first channel of the slab within its group, rows in the slab, first row of the
    (B·C, L) view). Row pair·Cg + c is channel g·Cg + c of item b, since b·C + g·Cg = (b·G+g)·Cg."""
    pair = pid // n_slabs
    r0 = (pid % n_slabs) * R
    n_rows = tl.minimum(R, Cg - r0)
    return pair, r0, n_rows, pair * Cg + r0


@triton.jit
def _channel_coeffs(b, ch, c_ok, W_ptr, Bias_ptr, Scale_ptr, Shift_ptr,
                    stride_w, stride_bias, stride_sb, stride_sc, stride_hb, stride_hc,
                    HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_SCALE: tl.constexpr,
                    HAS_SHIFT: tl.constexpr, BLOCK: tl.constexpr):
    """Per channel: wfac = w·(1+scale) and d = bias·(1+scale) + shift, so that the output before
    SiLU is x̂·wfac + d. Formed the same way in every kernel (the backward relies on it)."""
    wfac = tl.full([BLOCK], 1.0, tl.float32)
    d = tl.zeros([BLOCK], tl.float32)
    if HAS_W:
        wfac = tl.load(W_ptr + ch * stride_w, mask=c_ok, other=0.0).to(tl.float32)
    if HAS_B:
        d = tl.load(Bias_ptr + ch * stride_bias, mask=c_ok, other=0.0).to(tl.float32)
    if HAS_SCALE:
        sfac = 1.0 + tl.load(Scale_ptr + b * stride_sb + ch * stride_sc, mask=c_ok,
                             other=0.0).to(tl.float32)
        wfac = wfac * sfac
        d = d * sfac
    if HAS_SHIFT:
        d = d + tl.load(Shift_ptr + b * stride_hb + ch * stride_hc, mask=c_ok,
                        other=0.0).to(tl.float32)
    return wfac, d


@triton.jit
def _gn_fwd_stats_kernel(
    X_ptr,   # (B, C, L) contiguous, fp32/fp16/bf16
    WS_ptr,  # fp32 workspace: (2, B·G) mean, rstd, then (B·G·n_slabs, 2) slab (mean, M2) out
    BG, Cg, L, R, n_slabs,
    BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr,
):
    Part_ptr = WS_ptr + 2 * BG
    pid = tl.program_id(0).to(tl.int64)  # int64: row · L passes 2^31 on long inputs
    pair, r0, n_rows, row0 = _slab_of(pid, n_slabs, Cg, R)
    base = X_ptr + row0 * L
    # Shifted data: sums of x − x0 (x0 = the slab's first element) stay small when |mean| ≫ std,
    # where a plain fp32 sum of thousands of values near the mean would round the mean itself.
    x0 = tl.load(base).to(tl.float32)
    n = 0.0
    mean = 0.0
    m2 = 0.0
    for rb in range(0, n_rows, BLOCK_R):
        r = rb + tl.arange(0, BLOCK_R)
        r_ok = r < n_rows
        n_r = tl.minimum(n_rows - rb, BLOCK_R)
        for lb in range(0, L, BLOCK_L):
            col = tl.max_contiguous(tl.multiple_of(lb + tl.arange(0, BLOCK_L), BLOCK_L), BLOCK_L)
            mask = r_ok[:, None] & (col < L)[None, :]
            x = tl.load(base + r[:, None] * L + col[None, :], mask=mask, other=0.0)
            xs = tl.where(mask, x.to(tl.float32) - x0, 0.0)
            nb = (n_r * tl.minimum(L - lb, BLOCK_L)).to(tl.float32)
            # Two passes over registers: deviations from the block's own mean ...
            mb = tl.sum(xs) / nb
            dev = tl.where(mask, xs - mb, 0.0)
            qb = tl.sum(dev * dev)
            # ... folded into the slab's running statistics (Chan et al.)
            n_new = n + nb
            delta = mb - mean
            mean = mean + delta * (nb / n_new)
            m2 = m2 + qb + delta * delta * (n * nb / n_new)
            n = n_new
    tl.store(Part_ptr + 2 * pid, x0 + mean)
    tl.store(Part_ptr + 2 * pid + 1, m2)


@triton.jit
def _merge_pair(Part_ptr, pair, n_slabs, Cg, L, R, eps, BLOCK_S: tl.constexpr):
    """(mean, rstd) of a pair from its slab partials: Chan's merge, a block of slabs at a time,
    always in the same order (every program of the pair computes the same bits)."""
    first = pair * n_slabs
    ref = tl.load(Part_ptr + 2 * first)  # the first slab's mean keeps the weighted sums small
    n = 0.0
    mean = 0.0
    m2 = 0.0
    for start in range(0, n_slabs, BLOCK_S):
        s = start + tl.arange(0, BLOCK_S)
        ok = s < n_slabs
        cnt = tl.where(ok, tl.minimum(Cg - s * R, R).to(tl.float32) * L, 0.0)
        mu = tl.load(Part_ptr + 2 * (first + s), mask=ok, other=0.0)
        q = tl.load(Part_ptr + 2 * (first + s) + 1, mask=ok, other=0.0)
        n_b = tl.sum(cnt)
        mean_b = ref + tl.sum(cnt * (mu - ref)) / n_b
        dmu = tl.where(ok, mu - mean_b, 0.0)
        m2_b = tl.sum(q) + tl.sum(cnt * dmu * dmu)
        n_new = n + n_b
        delta = mean_b - mean
        mean = mean + delta * (n_b / n_new)
        m2 = m2 + m2_b + delta * delta * (n * n_b / n_new)
        n = n_new
    rstd = tl.math.div_rn(1.0, tl.sqrt_rn(m2 / n + eps))
    return mean, rstd


@triton.jit
def _gn_fwd_apply_kernel(
    X_ptr,      # (B, C, L) contiguous
    Y_ptr,      # (B, C, L) contiguous out, x.dtype
    WS_ptr,     # fp32 workspace: (2, B·G) mean, rstd out (each pair's slab-0 program writes
                # them), then the slab partials from _gn_fwd_stats_kernel
    W_ptr,      # (C,) strided, or any tensor when not HAS_W
    Bias_ptr,   # (C,) strided, or any tensor when not HAS_B
    Scale_ptr,  # (B, C) strided, or any tensor when not HAS_SCALE
    Shift_ptr,  # (B, C) strided, or any tensor when not HAS_SHIFT
    stride_w, stride_bias, stride_sb, stride_sc, stride_hb, stride_hc,
    BG, G, Cg, L, R, n_slabs, eps,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
    SILU: tl.constexpr, ROUND_BF16: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_S: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    pair, r0, n_rows, row0 = _slab_of(pid, n_slabs, Cg, R)
    mean, rstd = _merge_pair(WS_ptr + 2 * BG, pair, n_slabs, Cg, L, R, eps, BLOCK_S)
    first = r0 == 0
    tl.store(WS_ptr + pair, mean, mask=first)
    tl.store(WS_ptr + BG + pair, rstd, mask=first)
    b = pair // G
    ch0 = (pair % G) * Cg + r0
    for rb in range(0, n_rows, BLOCK_R):
        r = rb + tl.arange(0, BLOCK_R)
        r_ok = r < n_rows
        wfac, d = _channel_coeffs(b, ch0 + r, r_ok, W_ptr, Bias_ptr, Scale_ptr, Shift_ptr,
                                  stride_w, stride_bias, stride_sb, stride_sc, stride_hb,
                                  stride_hc, HAS_W, HAS_B, HAS_SCALE, HAS_SHIFT, BLOCK_R)
        a = rstd * wfac
        for lb in range(0, L, BLOCK_L):
            col = tl.max_contiguous(tl.multiple_of(lb + tl.arange(0, BLOCK_L), BLOCK_L), BLOCK_L)
            mask = r_ok[:, None] & (col < L)[None, :]
            offs = (row0 + r)[:, None] * L + col[None, :]
            x = tl.load(X_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            # Subtract the mean first: folding it into d would cancel when |mean| ≫ std.
            v = (x - mean) * a[:, None] + d[:, None]
            if SILU:
                v = v * tl.sigmoid(v)
            tl.store(Y_ptr + offs, _cast_out(v, Y_ptr, ROUND_BF16), mask=mask)


@triton.jit
def _recompute_dv(X_ptr, DY_ptr, offs, mask, mean, rstd, wfac, d, SILU: tl.constexpr):
    """x̂ and dL/dv (v = FiLM output before SiLU), recomputed from x: nothing else is stored."""
    x = tl.load(X_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(DY_ptr + offs, mask=mask, other=0.0).to(tl.float32)  # 0 outside: drops out
    xhat = (x - mean) * rstd
    dv = dy
    if SILU:
        v = (x - mean) * (rstd * wfac)[:, None] + d[:, None]
        sig = tl.sigmoid(v)
        dv = dy * sig * (1.0 + v * (1.0 - sig))
    return xhat, dv


@triton.jit
def _gn_bwd_sums_kernel(
    X_ptr,       # (B, C, L) contiguous
    DY_ptr,      # (B, C, L) contiguous
    Stats_ptr,   # (2, B·G) fp32: mean, rstd from the forward (the head of its workspace)
    Sums_ptr,    # (2, B·C) fp32 out: s1 = Σ_L dv, s2 = Σ_L dv·x̂ per row
    DScale_ptr,  # (B, C) contiguous out, scale.dtype (unwritten unless NEED_DSCALE)
    DShift_ptr,  # (B, C) contiguous out, shift.dtype (unwritten unless NEED_DSHIFT)
    W_ptr, Bias_ptr, Scale_ptr, Shift_ptr,  # as in _gn_fwd_apply_kernel
    stride_w, stride_bias, stride_sb, stride_sc, stride_hb, stride_hc,
    BG, BC, G, Cg, L, R, n_slabs,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
    SILU: tl.constexpr, NEED_DSCALE: tl.constexpr, NEED_DSHIFT: tl.constexpr,
    ROUND_BF16: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    pair, r0, n_rows, row0 = _slab_of(pid, n_slabs, Cg, R)
    mean = tl.load(Stats_ptr + pair)
    rstd = tl.load(Stats_ptr + BG + pair)
    b = pair // G
    ch0 = (pair % G) * Cg + r0
    for rb in range(0, n_rows, BLOCK_R):
        r = rb + tl.arange(0, BLOCK_R)
        r_ok = r < n_rows
        wfac, d = _channel_coeffs(b, ch0 + r, r_ok, W_ptr, Bias_ptr, Scale_ptr, Shift_ptr,
                                  stride_w, stride_bias, stride_sb, stride_sc, stride_hb,
                                  stride_hc, HAS_W, HAS_B, HAS_SCALE, HAS_SHIFT, BLOCK_R)
        s1 = tl.zeros([BLOCK_R], tl.float32)
        s2 = tl.zeros([BLOCK_R], tl.float32)
        for lb in range(0, L, BLOCK_L):
            col = tl.max_contiguous(tl.multiple_of(lb + tl.arange(0, BLOCK_L), BLOCK_L), BLOCK_L)
            mask = r_ok[:, None] & (col < L)[None, :]
            offs = (row0 + r)[:, None] * L + col[None, :]
            xhat, dv = _recompute_dv(X_ptr, DY_ptr, offs, mask, mean, rstd, wfac, d, SILU)
            s1 += tl.sum(dv, axis=1)
            s2 += tl.sum(dv * xhat, axis=1)
        rows = row0 + r
        tl.store(Sums_ptr + rows, s1, mask=r_ok)
        tl.store(Sums_ptr + BC + rows, s2, mask=r_ok)
        # Every other gradient is a per-channel multiple of these two sums: the FiLM ones are
        # per (b, c), i.e. per row, and complete here.
        if NEED_DSHIFT:
            tl.store(DShift_ptr + rows, _cast_out(s1, DShift_ptr, ROUND_BF16), mask=r_ok)
        if NEED_DSCALE:
            ds = s2  # Σ_L dv·u with u = x̂·w + bias
            if HAS_W:
                ds = ds * tl.load(W_ptr + (ch0 + r) * stride_w, mask=r_ok, other=0.0).to(tl.float32)
            if HAS_B:
                ds = ds + s1 * tl.load(Bias_ptr + (ch0 + r) * stride_bias, mask=r_ok,
                                       other=0.0).to(tl.float32)
            tl.store(DScale_ptr + rows, _cast_out(ds, DScale_ptr, ROUND_BF16), mask=r_ok)


@triton.jit
def _gn_bwd_dx_kernel(
    X_ptr,      # (B, C, L) contiguous
    DY_ptr,     # (B, C, L) contiguous
    DX_ptr,     # (B, C, L) contiguous out, x.dtype
    Stats_ptr,  # (2, B·G) fp32: mean, rstd (the head of the forward's workspace)
    Sums_ptr,   # (2, B·C) fp32: s1, s2 from _gn_bwd_sums_kernel
    W_ptr, Bias_ptr, Scale_ptr, Shift_ptr,  # as in _gn_fwd_apply_kernel
    stride_w, stride_bias, stride_sb, stride_sc, stride_hb, stride_hc,
    BG, BC, G, Cg, L, R, n_slabs,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
    SILU: tl.constexpr, ROUND_BF16: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_CG: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    pair, r0, n_rows, row0 = _slab_of(pid, n_slabs, Cg, R)
    mean = tl.load(Stats_ptr + pair)
    rstd = tl.load(Stats_ptr + BG + pair)
    b = pair // G
    g0 = (pair % G) * Cg
    # c1, c2: the group means of dx̂ = dv·wfac and of dx̂·x̂, over Cg·L elements, folded from the
    # pair's Cg row sums in the same order by every program of the pair.
    t1 = tl.zeros([BLOCK_CG], tl.float32)
    t2 = tl.zeros([BLOCK_CG], tl.float32)
    for cb in range(0, Cg, BLOCK_CG):
        cc = cb + tl.arange(0, BLOCK_CG)
        c_ok = cc < Cg
        wf, _ = _channel_coeffs(b, g0 + cc, c_ok, W_ptr, Bias_ptr, Scale_ptr, Shift_ptr,
                                stride_w, stride_bias, stride_sb, stride_sc, stride_hb, stride_hc,
                                HAS_W, HAS_B, HAS_SCALE, False, BLOCK_CG)
        t1 += tl.load(Sums_ptr + pair * Cg + cc, mask=c_ok, other=0.0) * wf
        t2 += tl.load(Sums_ptr + BC + pair * Cg + cc, mask=c_ok, other=0.0) * wf
    n = (Cg * 1.0) * L  # in fp32: Cg·L can pass 2^31
    c1 = tl.sum(t1) / n
    c2 = tl.sum(t2) / n
    for rb in range(0, n_rows, BLOCK_R):
        r = rb + tl.arange(0, BLOCK_R)
        r_ok = r < n_rows
        wfac, d = _channel_coeffs(b, g0 + r0 + r, r_ok, W_ptr, Bias_ptr, Scale_ptr, Shift_ptr,
                                  stride_w, stride_bias, stride_sb, stride_sc, stride_hb,
                                  stride_hc, HAS_W, HAS_B, HAS_SCALE, HAS_SHIFT, BLOCK_R)
        for lb in range(0, L, BLOCK_L):
            col = tl.max_contiguous(tl.multiple_of(lb + tl.arange(0, BLOCK_L), BLOCK_L), BLOCK_L)
            mask = r_ok[:, None] & (col < L)[None, :]
            offs = (row0 + r)[:, None] * L + col[None, :]
            xhat, dv = _recompute_dv(X_ptr, DY_ptr, offs, mask, mean, rstd, wfac, d, SILU)
            dx = rstd * (dv * wfac[:, None] - c1 - xhat * c2)
            tl.store(DX_ptr + offs, _cast_out(dx, DX_ptr, ROUND_BF16), mask=mask)


@triton.jit
def _gn_bwd_param_kernel(
    Sums_ptr,   # (2, B·C) fp32: s1, s2
    Scale_ptr,  # (B, C) strided, or any tensor when not HAS_SCALE
    DW_ptr,     # (C,) out, weight.dtype (unwritten unless NEED_DW)
    DB_ptr,     # (C,) out, bias.dtype (unwritten unless NEED_DB)
    stride_sb, stride_sc, B, C,
    HAS_SCALE: tl.constexpr, NEED_DW: tl.constexpr, NEED_DB: tl.constexpr,
    ROUND_BF16: tl.constexpr, BLOCK_C: tl.constexpr,
):
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    dw = tl.zeros([BLOCK_C], tl.float32)
    db = tl.zeros([BLOCK_C], tl.float32)
    BC = B * C
    for b in range(0, B):
        rows = b * C + c  # B·C is small: int32
        s1 = tl.load(Sums_ptr + rows, mask=c_ok, other=0.0)
        s2 = tl.load(Sums_ptr + BC + rows, mask=c_ok, other=0.0)
        if HAS_SCALE:  # Σ_L du and Σ_L du·x̂, u = affine output, du = dv·(1 + scale)
            sfac = 1.0 + tl.load(Scale_ptr + b * stride_sb + c * stride_sc, mask=c_ok,
                                 other=0.0).to(tl.float32)
            s1 = s1 * sfac
            s2 = s2 * sfac
        dw += s2
        db += s1
    if NEED_DW:
        tl.store(DW_ptr + c, _cast_out(dw, DW_ptr, ROUND_BF16), mask=c_ok)
    if NEED_DB:
        tl.store(DB_ptr + c, _cast_out(db, DB_ptr, ROUND_BF16), mask=c_ok)


# ------------------------------------------------------------------------------------------------
# Launchers (they trust their inputs: group_norm_unsupported_reason has been asked, once, by the
# dispatcher or by group_norm() below)
# ------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _pow2(n: int) -> int:
    # plain Python: triton.next_power_of_2 / triton.cdiv are constexpr functions costing ~2 us
    # each on the host, per call
    return 1 << max(0, n - 1).bit_length()


@functools.lru_cache(maxsize=256)
def _plan_for(B: int, C: int, G: int, L: int, n_sm: int
              ) -> Tuple[int, int, int, int, int, int, int]:
    """(R rows per slab, n_slabs per pair, BLOCK_R, BLOCK_L, num_warps, BLOCK_S, BLOCK_CG).

    GPU: slabs of ~8 K elements (a few loop trips of 4 K-element register tiles), halved while
    the grid has fewer than 4 programs per SM; SA1.0 (2, 1024, 4096)/16 → R 2, 1 024 programs;
    (2, 1280, 256)/16 → R 4, 640 programs. The interpreter pays milliseconds per program step,
    not per element, so there a slab is the whole pair (tests replace this to force several).
    BLOCK_S and BLOCK_CG: how many slab partials / row sums a program folds per step.
    """
    Cg = C // G
    block_l = min(_pow2(L), 2048)
    if INTERPRET:
        R, tile = Cg, 8192
    else:
        tile = 4096
        R = max(1, min(Cg, _cdiv(8192, L)))
        while R > 1 and B * G * _cdiv(Cg, R) < 4 * n_sm:
            R = _cdiv(R, 2)
    block_r = min(_pow2(R), max(1, tile // block_l))
    num_warps = 8 if block_r * block_l >= 4096 else 4
    n_slabs = _cdiv(Cg, R)
    return (R, n_slabs, block_r, block_l, num_warps, min(_pow2(n_slabs), _MAX_MERGE_BLOCK),
            min(_pow2(Cg), _MAX_MERGE_BLOCK))


def _plan(x: Tensor, G: int):
    B, C, L = x.shape
    n_sm = _sm_count(x.device.index or 0) if x.is_cuda else 1
    return _plan_for(B, C, G, L, n_sm)


def _strides(weight, bias, scale, shift):
    return (0 if weight is None else weight.stride(0), 0 if bias is None else bias.stride(0),
            0 if scale is None else scale.stride(0), 0 if scale is None else scale.stride(1),
            0 if shift is None else shift.stride(0), 0 if shift is None else shift.stride(1))


def group_norm_forward(x: Tensor, num_groups: int, weight: Optional[Tensor],
                       bias: Optional[Tensor], eps: float = 1e-5, scale: Optional[Tensor] = None,
                       shift: Optional[Tensor] = None,
                       silu: bool = False) -> Tuple[Tensor, Tensor]:
    """Two launches: (y in x.dtype, the fp32 workspace whose first 2·B·G entries are the
    (2, B, G) mean and rstd, what the backward takes as ``stats``). Inputs already checked."""
    if not x.is_contiguous():
        x = x.contiguous()
    B, C, L = x.shape
    G = num_groups
    R, n_slabs, block_r, block_l, num_warps, block_s, _ = _plan(x, G)
    BG = B * G
    # one workspace: the (mean, rstd) the backward keeps, then the slab partials (no views
    # are made of it: the kernels take offsets, and a view costs a microsecond per call)
    ws = alloc((2 * BG * (n_slabs + 1),), torch.float32, x.device)
    y = alloc((B, C, L), x.dtype, x.device)
    grid = (BG * n_slabs,)
    _gn_fwd_stats_kernel[grid](x, ws, BG, C // G, L, R, n_slabs,
                               BLOCK_R=block_r, BLOCK_L=block_l, num_warps=num_warps)
    _gn_fwd_apply_kernel[grid](
        x, y, ws, x if weight is None else weight, x if bias is None else bias,
        x if scale is None else scale, x if shift is None else shift,
        *_strides(weight, bias, scale, shift), BG, G, C // G, L, R, n_slabs, float(eps),
        HAS_W=weight is not None, HAS_B=bias is not None, HAS_SCALE=scale is not None,
        HAS_SHIFT=shift is not None, SILU=silu, ROUND_BF16=INTERPRET,
        BLOCK_R=block_r, BLOCK_L=block_l,
        BLOCK_S=block_s, num_warps=num_warps)
    return y, ws


def group_norm_backward(dy: Tensor, x: Tensor, stats: Tensor, num_groups: int,
                        weight: Optional[Tensor], bias: Optional[Tensor],
                        scale: Optional[Tensor], shift: Optional[Tensor], silu: bool,
                        need_dx: bool = True, need_dweight: bool = True, need_dbias: bool = True,
                        need_dscale: bool = True, need_dshift: bool = True
                        ) -> Tuple[Optional[Tensor], ...]:
    """(dx, dweight, dbias, dscale, dshift) in at most three launches; an entry is None when not
    asked for or absent. ``stats``: fp32 whose first 2·B·G entries are the forward's mean and
    rstd ((2, B, G) contiguous, or the forward's workspace)."""
    if dy.shape != x.shape:
        raise KernelInputError(f"group_norm backward: dy {tuple(dy.shape)} != x {tuple(x.shape)}")
    if not x.is_contiguous():
        x = x.contiguous()
    if not dy.is_contiguous():
        dy = dy.contiguous()
    B, C, L = x.shape
    G = num_groups
    R, n_slabs, block_r, block_l, num_warps, _, block_cg = _plan(x, G)
    need_dweight = need_dweight and weight is not None
    need_dbias = need_dbias and bias is not None
    need_dscale = need_dscale and scale is not None
    need_dshift = need_dshift and shift is not None
    if not (need_dx or need_dscale or need_dshift or need_dweight or need_dbias):
        return None, None, None, None, None
    dev = x.device
    # every buffer before the first launch: nothing but kernels runs between them
    sums = alloc((2 * B * C,), torch.float32, dev)
    dx = alloc((B, C, L), x.dtype, dev) if need_dx else None
    dscale = alloc((B, C), scale.dtype, dev) if need_dscale else None
    dshift = alloc((B, C), shift.dtype, dev) if need_dshift else None
    dweight = alloc((C,), weight.dtype, dev) if need_dweight else None
    dbias = alloc((C,), bias.dtype, dev) if need_dbias else None
    ptrs = (x if weight is None else weight, x if bias is None else bias,
            x if scale is None else scale, x if shift is None else shift)
    strides = _strides(weight, bias, scale, shift)
    flags = dict(HAS_W=weight is not None, HAS_B=bias is not None, HAS_SCALE=scale is not None,
                 HAS_SHIFT=shift is not None, SILU=silu)
    grid = (B * G * n_slabs,)
    _gn_bwd_sums_kernel[grid](
        x, dy, stats, sums, x if dscale is None else dscale, x if dshift is None else dshift,
        *ptrs, *strides, B * G, B * C, G, C // G, L, R, n_slabs, **flags,
        NEED_DSCALE=need_dscale, NEED_DSHIFT=need_dshift, ROUND_BF16=INTERPRET,
        BLOCK_R=block_r, BLOCK_L=block_l, num_warps=num_warps)
    if need_dx:
        _gn_bwd_dx_kernel[grid](
            x, dy, dx, stats, sums, *ptrs, *strides, B * G, B * C, G, C // G, L, R, n_slabs,
            **flags, ROUND_BF16=INTERPRET,
            BLOCK_R=block_r, BLOCK_L=block_l,
            BLOCK_CG=block_cg, num_warps=num_warps)
    if need_dweight or need_dbias:
        block_c = min(_pow2(C), 1024)
        _gn_bwd_param_kernel[(_cdiv(C, block_c),)](
            sums, ptrs[2], x if dweight is None else dweight, x if dbias is None else dbias,
            strides[2], strides[3], B, C, HAS_SCALE=scale is not None, NEED_DW=need_dweight,
            NEED_DB=need_dbias, ROUND_BF16=INTERPRET, BLOCK_C=block_c, num_warps=4)
    return dx, dweight, dbias, dscale, dshift


# ------------------------------------------------------------------------------------------------
# Input check (once per call: the dispatcher asks it, or group_norm() below)
# ------------------------------------------------------------------------------------------------
def group_norm_unsupported_reason(x: Tensor, num_groups: int, weight: Optional[Tensor] = None,
                                  bias: Optional[Tensor] = None, scale: Optional[Tensor] = None,
                                  shift: Optional[Tensor] = None) -> Optional[str]:
    """Why the Triton GroupNorm cannot serve these inputs, or None when it can.

    Written for the common case (everything fine) to cost a few attribute reads: it runs on
    every eager call."""
    dev = x.device
    if not device_ok(dev):
        return (f"tensor on {dev.type}: Triton kernels need CUDA tensors "
                "(or TRITON_INTERPRET=1 for CPU tensors)")
    if x.dtype not in SUPPORTED_DTYPES:
        return f"dtype {x.dtype} is not supported (fp32, fp16, bf16 only)"
    if x.dim() != 3:
        return f"x must be (B, C, L), got {x.dim()} dims {tuple(x.shape)}"
    B, C, L = x.shape
    if B * C * L == 0:
        return f"empty input {tuple(x.shape)}"
    if num_groups <= 0 or C % num_groups != 0:
        return f"C={C} is not divisible by num_groups={num_groups}"
    for name, t, shape in (("weight", weight, (C,)), ("bias", bias, (C,)),
                           ("scale", scale, (B, C)), ("shift", shift, (B, C))):
        if t is None:
            continue
        if t.device != dev:
            if not device_ok(t.device):
                return (f"tensor on {t.device.type}: Triton kernels need CUDA tensors "
                        "(or TRITON_INTERPRET=1 for CPU tensors)")
            return f"tensors on different devices: {dev} and {t.device} ({name})"
        if t.dtype not in SUPPORTED_DTYPES:
            return f"dtype {t.dtype} is not supported (fp32, fp16, bf16 only)"
        if t.shape != shape:
            return f"{name} must be {shape}, got {tuple(t.shape)}"
    return None


def _check(x, num_groups, weight, bias, scale, shift, what="group_norm"):
    reason = group_norm_unsupported_reason(x, num_groups, weight, bias, scale, shift)
    if reason is not None:
        raise KernelInputError(f"{what}: {reason}")


# ------------------------------------------------------------------------------------------------
# autograd.Function (eager training: the launchers, no custom-op dispatch)
# ------------------------------------------------------------------------------------------------
class GroupNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, scale, shift, num_groups, eps, silu):
        y, stats = group_norm_forward(x, num_groups, weight, bias, eps, scale, shift, silu)
        ctx.save_for_backward(x, stats, weight, bias, scale, shift)
        ctx.num_groups, ctx.silu = num_groups, silu
        return y

    @staticmethod
    def backward(ctx, dy):
        x, stats, weight, bias, scale, shift = ctx.saved_tensors
        need = ctx.needs_input_grad[:5]
        grads = group_norm_backward(dy, x, stats, ctx.num_groups, weight, bias, scale, shift,
                                    ctx.silu, *need)
        return (*grads, None, None, None)


# ------------------------------------------------------------------------------------------------
# torch.library ops (what torch.compile sees: opaque, with shape-only fake implementations)
# ------------------------------------------------------------------------------------------------
@torch.library.custom_op("fastaudio::group_norm_fwd", mutates_args=())
def _group_norm_fwd_op(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                       scale: Optional[Tensor], shift: Optional[Tensor], num_groups: int,
                       eps: float, silu: bool) -> Tuple[Tensor, Tensor]:
    y, ws = group_norm_forward(x, num_groups, weight, bias, eps, scale, shift, silu)
    # its fake implementation must know the shape: (2, B, G), copied out of the workspace
    return y, ws[:2 * x.shape[0] * num_groups].view(2, x.shape[0], num_groups).clone()


@_group_norm_fwd_op.register_fake
def _(x, weight, bias, scale, shift, num_groups, eps, silu):
    return x.new_empty(x.shape), x.new_empty((2, x.shape[0], num_groups), dtype=torch.float32)


# Absent gradients come back as empty tensors: custom ops cannot return None.
@torch.library.custom_op("fastaudio::group_norm_bwd", mutates_args=())
def _group_norm_bwd_op(dy: Tensor, x: Tensor, stats: Tensor, weight: Optional[Tensor],
                       bias: Optional[Tensor], scale: Optional[Tensor], shift: Optional[Tensor],
                       num_groups: int, silu: bool, need_dx: bool, need_dweight: bool,
                       need_dbias: bool, need_dscale: bool,
                       need_dshift: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    grads = group_norm_backward(dy, x, stats, num_groups, weight, bias, scale, shift, silu,
                                need_dx, need_dweight, need_dbias, need_dscale, need_dshift)
    return tuple(x.new_empty(0) if g is None else g for g in grads)


@_group_norm_bwd_op.register_fake
def _(dy, x, stats, weight, bias, scale, shift, num_groups, silu, need_dx, need_dweight,
      need_dbias, need_dscale, need_dshift):
    def like(t, need):
        return t.new_empty(t.shape) if need and t is not None else x.new_empty(0)
    return (like(x, need_dx), like(weight, need_dweight), like(bias, need_dbias),
            like(scale, need_dscale), like(shift, need_dshift))


def _op_setup_context(ctx, inputs, output):
    x, weight, bias, scale, shift, num_groups, _eps, silu = inputs
    ctx.save_for_backward(x, output[1], weight, bias, scale, shift)
    ctx.num_groups, ctx.silu = num_groups, silu


def _op_backward(ctx, dy, _dstats):
    x, stats, weight, bias, scale, shift = ctx.saved_tensors
    need = ctx.needs_input_grad[:5]
    grads = torch.ops.fastaudio.group_norm_bwd(
        dy, x, stats, weight, bias, scale, shift, ctx.num_groups, ctx.silu, need[0],
        need[1] and weight is not None, need[2] and bias is not None,
        need[3] and scale is not None, need[4] and shift is not None)
    return (*[g if n else None for g, n in zip(grads, need)], None, None, None)


torch.library.register_autograd("fastaudio::group_norm_fwd", _op_backward,
                                setup_context=_op_setup_context)


# ------------------------------------------------------------------------------------------------
# Entry point
# ------------------------------------------------------------------------------------------------
def group_norm(x: Tensor, num_groups: int, weight: Optional[Tensor], bias: Optional[Tensor],
               eps: float = 1e-5, scale: Optional[Tensor] = None, shift: Optional[Tensor] = None,
               silu: bool = False, *, checked: bool = False) -> Tensor:
    """Differentiable fused GroupNorm (Triton); same contract as :func:`group_norm_ref`.

    The cheapest path that serves the call: the launchers alone in eager inference, the
    ``autograd.Function`` when a gradient is needed, the custom op under torch.compile.
    ``checked=True``: the caller (the dispatcher) has already asked
    :func:`group_norm_unsupported_reason`; otherwise it is asked here and an input the kernel
    cannot serve raises KernelInputError.
    """
    if not checked:
        _check(x, num_groups, weight, bias, scale, shift)
    if torch.compiler.is_compiling():
        return torch.ops.fastaudio.group_norm_fwd(x, weight, bias, scale, shift, num_groups,
                                                  float(eps), bool(silu))[0]
    if torch.is_grad_enabled() and (
            x.requires_grad or any(t is not None and t.requires_grad
                                   for t in (weight, bias, scale, shift))):
        return GroupNormFunction.apply(x, weight, bias, scale, shift, num_groups, float(eps),
                                       bool(silu))
    return group_norm_forward(x, num_groups, weight, bias, eps, scale, shift, silu)[0]
