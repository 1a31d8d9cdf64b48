"""Conv1d + bias + residual as a channels-last implicit GEMM (forward; backward via conv1d.py).

Why a second forward: the kernels in conv1d.py gather their tiles from (B, C, L) memory, where a
tap shift moves the start of every row by an arbitrary number of elements. Triton cannot prove
those loads aligned, so nothing vectorises, bf16 tiles cannot take cp.async, and the software
pipeliner leaves the loop synchronous (measured on an H100: 49 TFLOP/s, 0.19-0.72x cuDNN + add).
Here the activations are read channels-last, that is (B, L, C) in memory while the tensor stays a
logical (B, C, L) (``x.transpose(1, 2)`` of a contiguous (B, L, C) buffer, strides (L*C, 1, C)).
A row of the A tile is then C_in contiguous elements of one position, a tap shift moves whole
rows, and every row starts on a multiple of C_in: with C_in % 8 == 0 the loads are 16-byte
vectors that cp.async (sm80) and the wgmma pipeline (sm90) accept. The loop is the Triton
matmul tutorial's (grouped tile order for L2 reuse, large tiles, several stages):

    y[b, t, o] = sum_{k, c} x[b, t*s + k*d - pad_left, c] * wp[k, o, c] + bias[o] + res[b, t, o]

GEMM rows are output positions of one batch item (grid axis 1 is the item, so a tile never
straddles two items and needs no per-element division), columns are output channels, and the
reduction runs over (tap, C_in block). Weights are packed once per weight version as
(K, C_out, C_in) (``packed_weight``: cached on the weight tensor, keyed by its version counter),
so a B tile is C_in-contiguous too. The output is allocated channels-last, so a chain of these
convs never changes layout (the GroupNorm and Snake kernels still want (B, C, L) memory: running a
whole model channels-last needs their variants first; docs/benchmarking.md#convolutions).

Inputs in (B, C, L) memory are served too (through their strides), but slowly: the point of this
kernel is channels-last memory, and the nn layer only sends it such tensors. The gradient reuses
conv1d.py's stride-generic dgrad and wgrad kernels. Offsets: the batch offset is int64, in-item
offsets int32 unless an item spans >= 2**31 elements (OFF64, decided on the host).
"""
from __future__ import annotations

import weakref
from typing import Dict, Optional, Tuple

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, POISON
from .conv1d import (Conv1dFunction, Padding, _dot_modes, _needs_off64, _pad_pair, _raise_if,
                     conv1d_out_length, conv1d_unsupported_reason)


def _cfg(bm, bn, bk, warps, stages, group=8):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group},
                         num_warps=warps, num_stages=stages)


def _configs():
    """M = output positions (long), N = output channels, K = input channels per tap."""
    if INTERPRET:
        return [_cfg(64, 32, 32, 4, 1)]  # the interpreter pays per program step, not per element
    return [
        # the matmul tutorial's shapes: large tiles, 3-4 stages (sm80 and sm90 shared memory)
        _cfg(128, 128, 64, 8, 3), _cfg(128, 128, 32, 4, 4), _cfg(128, 256, 64, 8, 3),
        _cfg(256, 128, 64, 8, 3), _cfg(128, 64, 64, 4, 4), _cfg(64, 128, 64, 4, 4),
        # few output channels (the VAE's 96-channel stages and its 2-channel output conv)
        _cfg(128, 32, 64, 4, 4), _cfg(256, 16, 32, 4, 3),
    ]


def _prune(configs, named_args, **kwargs):
    """Drop tiles far wider than the channel counts they cover (all-masked work)."""
    def fits(c):
        n_max = max(16, triton.next_power_of_2(named_args["C_out"]))
        k_max = max(16, triton.next_power_of_2(named_args["C_in"]))
        return c.kwargs["BLOCK_N"] <= n_max and c.kwargs["BLOCK_K"] <= k_max
    kept = [c for c in configs if fits(c)]
    return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"])]


@triton.autotune(configs=_configs(), key=["C_in", "C_out", "KSIZE", "stride", "L_LOG2"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _conv1d_cl_fwd_kernel(
    x_ptr,   # logical (B, C_in, L); fast when channels-last (sxc == 1)
    w_ptr,   # packed (KSIZE, C_out, C_in), contiguous
    b_ptr,   # (C_out,) or a dummy when not HAS_BIAS
    r_ptr,   # logical (B, C_out, L_out) or a dummy when not HAS_RES
    y_ptr,   # logical (B, C_out, L_out), channels-last memory
    C_in, L, C_out, L_out, KSIZE, stride, pad_left, dilation, L_LOG2,
    sxb, sxc, sxl, sb, srb, src, srl, syb, syc, syl,
    HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, UPCAST: tl.constexpr,
    PRECISION: tl.constexpr, OFF64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # Grouped order (matmul tutorial): GROUP_M position tiles share each weight column tile while
    # it is in L2, and neighbouring position tiles share most of their x rows (the tap halo).
    pid = tl.program_id(0)
    item = tl.program_id(1).to(tl.int64)
    num_m = tl.cdiv(L_out, BLOCK_M)
    num_n = tl.cdiv(C_out, BLOCK_N)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    group_size = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_size
    pid_n = (pid % per_group) // group_size

    offs_t = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)        # output positions
    offs_o = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)        # output channels
    offs_c = tl.arange(0, BLOCK_K)                          # input channels within a block
    mask_o = offs_o < C_out
    x_item = x_ptr + item * sxb
    pos0 = offs_t * stride - pad_left                       # input position of tap 0
    if OFF64:
        pos0 = pos0.to(tl.int64)
    w_cols = w_ptr + offs_o * C_in                          # row o of tap 0 (< 2**31 elements)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    n_cblk = tl.cdiv(C_in, BLOCK_K)
    for it in range(0, KSIZE * n_cblk):
        k = it // n_cblk
        c = (it - k * n_cblk) * BLOCK_K + offs_c
        mask_c = c < C_in
        pos = pos0 + k * dilation                           # a tap shift moves whole rows
        mask_a = ((pos >= 0) & (pos < L))[:, None] & mask_c[None, :]
        a = tl.load(x_item + pos[:, None] * sxl + c[None, :] * sxc, mask=mask_a, other=0.0)
        w = tl.load(w_cols[None, :] + k * C_out * C_in + c[:, None],
                    mask=mask_c[:, None] & mask_o[None, :], other=0.0)
        if UPCAST:
            acc = tl.dot(a.to(tl.float32), w.to(tl.float32), acc, input_precision=PRECISION)
        else:
            acc = tl.dot(a, w, acc, input_precision=PRECISION)

    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_o * sb, mask=mask_o, other=0.0).to(tl.float32)[None, :]
    t_idx = offs_t.to(tl.int64) if OFF64 else offs_t
    mask_y = (offs_t < L_out)[:, None] & mask_o[None, :]
    if HAS_RES:
        res = tl.load(r_ptr + item * srb + t_idx[:, None] * srl + offs_o[None, :] * src,
                      mask=mask_y, other=0.0)
        acc += res.to(tl.float32)
    tl.store(y_ptr + item * syb + t_idx[:, None] * syl + offs_o[None, :] * syc,
             acc.to(y_ptr.dtype.element_ty), mask=mask_y)


# --------------------------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------------------------

def is_channels_last(x: torch.Tensor) -> bool:
    """Whether a (B, C, L) tensor lies in memory as (B, L, C) (channel stride 1)."""
    return x.dim() == 3 and x.shape[1] > 1 and x.stride(1) == 1 and x.stride(2) >= x.shape[1]


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """The same logical (B, C, L) tensor with channels-last memory (a copy unless it already is)."""
    if is_channels_last(x):
        return x
    return x.transpose(1, 2).contiguous().transpose(1, 2)


# id(weight) -> (weak reference to it, its version key, the pack). Kept here, not on the tensor,
# so a pickled model does not carry the packs; an entry goes when its weight is freed.
_PACKS: Dict[int, Tuple[weakref.ref, tuple, torch.Tensor]] = {}


def packed_weight(weight: torch.Tensor) -> torch.Tensor:
    """(C_out, C_in, K) -> contiguous (K, C_out, C_in), packed once per weight version.

    Cached per weight tensor, keyed by its version counter, storage, shape, strides and dtype:
    parameters are packed once per optimiser step or load (in-place updates bump the version);
    a weight rebuilt per call (an unfolded weight norm) or made under ``torch.inference_mode``
    (no version counter) is packed per call. Not seen: writes through ``.data`` (they bump no
    version) and updates after a CUDA graph captured the pack - reload the weights instead.
    """
    if weight.is_inference():  # inference tensors keep no version counter: pack per call
        return weight.permute(2, 0, 1).contiguous()
    key = (weight._version, weight.data_ptr(), tuple(weight.shape), tuple(weight.stride()),
           weight.dtype)
    entry = _PACKS.get(id(weight))
    if entry is not None and entry[0]() is weight and entry[1] == key:
        return entry[2]
    packed = weight.detach().permute(2, 0, 1).contiguous()
    ident = id(weight)
    ref = weakref.ref(weight, lambda _r, i=ident: _PACKS.pop(i, None))
    _PACKS[ident] = (ref, key, packed)
    return packed


def _channels_last_output(B: int, C: int, L: int, dtype, device) -> torch.Tensor:
    """A (B, C, L) tensor with channels-last strides, made as such (not a transposed view: an
    autograd Function's output that is a view cannot be modified in place later, e.g. h += skip).
    NaN-filled when outputs are poisoned."""
    y = torch.empty_strided((B, C, L), (L * C, 1, C), dtype=dtype, device=device)
    return y.fill_(float("nan")) if POISON else y


def _launch(x, weight, bias, residual, stride, pad_left, dilation, L_out) -> torch.Tensor:
    B, C_in, L = x.shape
    C_out, _, K = weight.shape
    w = packed_weight(weight)
    y = _channels_last_output(B, C_out, L_out, x.dtype, x.device)
    upcast, precision = _dot_modes(x.dtype)
    r = residual if residual is not None else y
    # The item is grid axis 1 (at most 65535 items, far above any batch here).
    grid = lambda meta: (triton.cdiv(L_out, meta["BLOCK_M"]) * triton.cdiv(C_out, meta["BLOCK_N"]),  # noqa: E731
                         B)
    _conv1d_cl_fwd_kernel[grid](
        x, w, bias if bias is not None else y, r, y,
        C_in, L, C_out, L_out, K, stride, pad_left, dilation, max(0, int(L_out - 1).bit_length()),
        *x.stride(), bias.stride(0) if bias is not None else 0, *r.stride(), *y.stride(),
        HAS_BIAS=bias is not None, HAS_RES=residual is not None, UPCAST=upcast,
        PRECISION=precision, OFF64=_needs_off64(x, residual, y),
    )
    return y


def conv1d_cl_reason(x, weight, bias=None, stride=1, padding: Padding = 0, dilation=1,
                     residual=None) -> Optional[str]:
    """Why this kernel cannot serve the call (None when it can): conv1d.py's rules, and a batch
    that fits grid axis 1."""
    r = conv1d_unsupported_reason(x, weight, bias, stride, padding, dilation, residual)
    if r is None and x.shape[0] > 65535:
        r = f"batch {x.shape[0]} > 65535 (the batch is grid axis 1)"
    return r


class _Conv1dCLFunction(Conv1dFunction):
    """Forward here; the backward is Conv1dFunction's (conv1d.py's stride-generic dgrad / wgrad
    kernels, which read these channels-last tensors through their strides)."""

    @staticmethod
    def forward(ctx, x, weight, bias, residual, stride, pad_left, pad_right, dilation):
        L_out = conv1d_out_length(x.shape[2], weight.shape[2], stride, pad_left, pad_right,
                                  dilation)
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, pad_left, pad_right, dilation)
        ctx.has_bias = bias is not None
        return _launch(x, weight, bias, residual, stride, pad_left, dilation, L_out)


def conv1d_channels_last(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                         stride: int = 1, padding: Padding = 0, dilation: int = 1,
                         residual: Optional[torch.Tensor] = None, *,
                         checked: bool = False) -> torch.Tensor:
    """``conv1d(x, weight, bias) + residual`` (signature of conv1d.py's ``conv1d``), returned as
    a logical (B, C_out, L_out) tensor in channels-last memory. Differentiable.

    ``checked=True`` skips the input checks (the nn dispatcher has made them already).
    Raises KernelInputError naming the reason when the kernel cannot serve the input.
    """
    if not checked:
        _raise_if(conv1d_cl_reason(x, weight, bias, stride, padding, dilation, residual),
                  "conv1d (channels-last)")
    pl, pr = _pad_pair(padding)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias, residual))
    if not needs_grad:  # eager inference: the launcher directly, no autograd node
        L_out = conv1d_out_length(x.shape[2], weight.shape[2], stride, pl, pr, dilation)
        return _launch(x, weight, bias, residual, stride, pl, dilation, L_out)
    return _Conv1dCLFunction.apply(x, weight, bias, residual, stride, pl, pr, dilation)

