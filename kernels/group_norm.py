"""Fused GroupNorm + affine + FiLM (x·(1+scale)+shift) + SiLU, forward and backward, in Triton.

Design trade-off: SA1.0's U-Net normalises (B=2, C=1024…1280, L=4096) with 16 groups, i.e. only
32 (batch, group) pairs of 64·4096 elements. One program per pair would leave most SMs idle, so
every pass here is tiled over (pair, channel tile, L tile) — about 2 000 programs at that shape —
and the per-pair statistics are SPLIT reductions:

  forward   1. _gn_fwd_stats_kernel : per tile (count, mean, M2), a two-pass over registers
            2. _gn_fwd_merge_kernel : per pair, Chan's parallel merge of the tiles → mean, rstd
            3. _gn_fwd_apply_kernel : per tile, normalise + affine + FiLM + SiLU
  backward  1. _gn_bwd_sums_kernel  : per (b, c, L tile) partial sums of dv and dv·x̂
            (host)                  : tiny (B, C) torch reductions → dweight, dbias, dscale,
                                      dshift and the two per-pair terms of dx
            2. _gn_bwd_dx_kernel    : per tile, dx

The merge is a separate, tiny launch (B·G programs) instead of being redone by every apply
program: its cost stays O(number of tiles) for any L, and mean/rstd are written in one place.
The price is one extra launch (a few µs, nothing under CUDA graphs). The backward recomputes
x̂, the FiLM output and the SiLU from x, mean and rstd instead of storing the normalised tensor:
it reads x twice more but saves a full activation of memory per GroupNorm during training.

Statistics are fp32 (never E[x²] − E[x]²); global offsets are int64 (rows · L can pass 2^31).
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._common import INTERPRET, device_reason, dtype_reason, first_reason

Tensor = torch.Tensor

_MAX_L_TILES = 65535  # CUDA's limit on grid axis 1, which walks the L tiles
_MAX_MERGE_BLOCK = 1024  # tiles the merge kernel folds in per step


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
def _round_for_bf16(v):
    """fp32 → fp32 whose top 16 bits are v rounded to nearest even.

    Only used in the interpreter, whose fp32 → bf16 cast truncates (GPUs round to nearest).
    """
    bits = v.to(tl.uint32, bitcast=True)
    bits = bits + (0x7FFF + ((bits >> 16) & 1))
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _tile(Cg, L, n_c_tiles, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    """This program's tile: pair index, channels within the group, L positions, mask, offsets."""
    pid = tl.program_id(0).to(tl.int64)  # int64: pair · Cg · L passes 2^31 on long inputs
    pid_l = tl.program_id(1)
    pair = pid // n_c_tiles
    c = (pid % n_c_tiles) * BLOCK_C + tl.arange(0, BLOCK_C)  # channel within the group
    pos = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    c_mask = c < Cg
    mask = c_mask[:, None] & (pos < L)[None, :]
    # (b, g·Cg + c) is row pair·Cg + c of the (B·C, L) view, since b·C + g·Cg = (b·G + g)·Cg.
    rows = pair * Cg + c
    offs = rows[:, None] * L + pos[None, :]
    return pair, c, c_mask, rows, mask, offs


@triton.jit
def _film_coeffs(pair, c, c_mask, rows, Rstd_ptr, W_ptr, Bias_ptr, Scale_ptr, Shift_ptr, G, Cg,
                 HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_SCALE: tl.constexpr,
                 HAS_SHIFT: tl.constexpr, BLOCK_C: tl.constexpr):
    """Per-channel (a, d) with v = (x − mean)·a + d, and wfac = w·(1+scale) for the backward."""
    ch = (pair % G) * Cg + c  # channel index into weight/bias
    rstd = tl.load(Rstd_ptr + pair)
    wfac = tl.full([BLOCK_C], 1.0, tl.float32)
    d = tl.zeros([BLOCK_C], tl.float32)
    if HAS_W:
        wfac = tl.load(W_ptr + ch, mask=c_mask, other=0.0).to(tl.float32)
    if HAS_B:
        d = tl.load(Bias_ptr + ch, mask=c_mask, other=0.0).to(tl.float32)
    if HAS_SCALE:
        # scale/shift are (B, C): their flat index b·C + ch is the row index.
        sfac = 1.0 + tl.load(Scale_ptr + rows, mask=c_mask, other=0.0).to(tl.float32)
        wfac = wfac * sfac
        d = d * sfac
    if HAS_SHIFT:
        d = d + tl.load(Shift_ptr + rows, mask=c_mask, other=0.0).to(tl.float32)
    return rstd * wfac, d, wfac


@triton.jit
def _gn_fwd_stats_kernel(
    X_ptr,      # (B, C, L) contiguous, any float dtype
    Count_ptr,  # (B·G, n_c_tiles·n_l_tiles) fp32 out: elements in each tile
    Mean_ptr,   # (B·G, n_c_tiles·n_l_tiles) fp32 out: mean of each tile
    M2_ptr,     # (B·G, n_c_tiles·n_l_tiles) fp32 out: Σ (x − tile mean)² of each tile
    Cg, L, n_c_tiles,
    BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr,
):
    pair, c, c_mask, rows, mask, offs = _tile(Cg, L, n_c_tiles, BLOCK_C, BLOCK_L)
    x = tl.load(X_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    pid_c = tl.program_id(0) % n_c_tiles
    pid_l = tl.program_id(1)
    n_c = tl.minimum(Cg - pid_c * BLOCK_C, BLOCK_C)
    n_l = tl.minimum(L - pid_l * BLOCK_L, BLOCK_L)
    count = (n_c * n_l).to(tl.float32)
    # Shifted data: sums of x − x0 (x0 = the tile's first element) stay small when |mean| ≫ std,
    # where a plain fp32 sum of ~4 K values near the mean would round the mean itself.
    x0 = tl.load(X_ptr + (pair * Cg + pid_c * BLOCK_C) * L + pid_l * BLOCK_L).to(tl.float32)
    xs = tl.where(mask, x - x0, 0.0)
    mean_s = tl.sum(xs) / count
    # Two passes over registers: deviations from the tile's own mean, never E[x²] − E[x]².
    dev = tl.where(mask, xs - mean_s, 0.0)
    m2 = tl.sum(dev * dev)
    mean = x0 + mean_s
    slot = pair * (n_c_tiles * tl.num_programs(1)) + pid_c * tl.num_programs(1) + pid_l
    tl.store(Count_ptr + slot, count)
    tl.store(Mean_ptr + slot, mean)
    tl.store(M2_ptr + slot, m2)


@triton.jit
def _gn_fwd_merge_kernel(
    Count_ptr,    # (B·G, P) fp32: per-tile counts from _gn_fwd_stats_kernel
    Mean_ptr,     # (B·G, P) fp32: per-tile means
    M2_ptr,       # (B·G, P) fp32: per-tile M2
    MeanOut_ptr,  # (B·G,) fp32 out: group mean
    Rstd_ptr,     # (B·G,) fp32 out: 1 / sqrt(biased variance + eps)
    P, eps,
    BLOCK_P: tl.constexpr,
):
    pair = tl.program_id(0).to(tl.int64)
    base = pair * P
    ref = tl.load(Mean_ptr + base)  # the first tile's mean keeps the weighted sums small
    n = 0.0
    mean = 0.0
    m2 = 0.0
    for start in range(0, P, BLOCK_P):
        idx = start + tl.arange(0, BLOCK_P)
        m = idx < P
        cnt = tl.load(Count_ptr + base + idx, mask=m, other=0.0)
        mu = tl.load(Mean_ptr + base + idx, mask=m, other=0.0)
        q = tl.load(M2_ptr + base + idx, mask=m, other=0.0)
        # Merge a block of tiles at once (masked tiles have count 0 and drop out) ...
        n_b = tl.sum(cnt)
        mean_b = ref + tl.sum(cnt * (mu - ref)) / n_b
        dmu = mu - mean_b
        m2_b = tl.sum(q) + tl.sum(cnt * dmu * dmu)
        # ... then fold the block into the running statistics (Chan et al.).
        n_new = n + n_b
        delta = mean_b - mean
        mean = mean + delta * (n_b / n_new)
        m2 = m2 + m2_b + delta * delta * (n * n_b / n_new)
        n = n_new
    rstd = tl.math.div_rn(1.0, tl.sqrt_rn(m2 / n + eps))
    tl.store(MeanOut_ptr + pair, mean)
    tl.store(Rstd_ptr + pair, rstd)


@triton.jit
def _gn_fwd_apply_kernel(
    X_ptr,      # (B, C, L) contiguous
    Y_ptr,      # (B, C, L) contiguous out, x.dtype
    Mean_ptr,   # (B·G,) fp32
    Rstd_ptr,   # (B·G,) fp32
    W_ptr,      # (C,) or dummy when not HAS_W
    Bias_ptr,   # (C,) or dummy when not HAS_B
    Scale_ptr,  # (B, C) contiguous or dummy when not HAS_SCALE
    Shift_ptr,  # (B, C) contiguous or dummy when not HAS_SHIFT
    G, Cg, L, n_c_tiles,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
    SILU: tl.constexpr, ROUND_BF16: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr,
):
    pair, c, c_mask, rows, mask, offs = _tile(Cg, L, n_c_tiles, BLOCK_C, BLOCK_L)
    a, d, _ = _film_coeffs(pair, c, c_mask, rows, Rstd_ptr, W_ptr, Bias_ptr, Scale_ptr, Shift_ptr,
                           G, Cg, HAS_W, HAS_B, HAS_SCALE, HAS_SHIFT, BLOCK_C)
    mean = tl.load(Mean_ptr + pair)
    x = tl.load(X_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    # Subtract the mean first: folding it into d would cancel when |mean| ≫ std.
    v = (x - mean) * a[:, None] + d[:, None]
    if SILU:
        v = v * tl.sigmoid(v)
    if ROUND_BF16:
        v = _round_for_bf16(v)
    tl.store(Y_ptr + offs, v.to(Y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _recompute_dv(X_ptr, DY_ptr, offs, mask, mean, rstd, a, d, SILU: tl.constexpr):
    """x̂ and dL/dv (v = FiLM output before SiLU), recomputed from x: nothing else is stored."""
    x = tl.load(X_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(DY_ptr + offs, mask=mask, other=0.0).to(tl.float32)  # 0 outside: drops out
    xc = x - mean
    xhat = xc * rstd
    dv = dy
    if SILU:
        v = xc * a[:, None] + d[:, None]
        sig = tl.sigmoid(v)
        dv = dy * sig * (1.0 + v * (1.0 - sig))
    return xhat, dv


@triton.jit
def _gn_bwd_sums_kernel(
    X_ptr,      # (B, C, L) contiguous
    DY_ptr,     # (B, C, L) contiguous
    Mean_ptr,   # (B·G,) fp32
    Rstd_ptr,   # (B·G,) fp32
    W_ptr,      # (C,) or dummy
    Bias_ptr,   # (C,) or dummy
    Scale_ptr,  # (B, C) or dummy
    Shift_ptr,  # (B, C) or dummy
    S1_ptr,     # (B·C, n_l_tiles) fp32 out: Σ_L-tile dv
    S2_ptr,     # (B·C, n_l_tiles) fp32 out: Σ_L-tile dv·x̂
    G, Cg, L, n_c_tiles,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
    SILU: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr,
):
    pair, c, c_mask, rows, mask, offs = _tile(Cg, L, n_c_tiles, BLOCK_C, BLOCK_L)
    a, d, _ = _film_coeffs(pair, c, c_mask, rows, Rstd_ptr, W_ptr, Bias_ptr, Scale_ptr, Shift_ptr,
                           G, Cg, HAS_W, HAS_B, HAS_SCALE, HAS_SHIFT, BLOCK_C)
    mean = tl.load(Mean_ptr + pair)
    rstd = tl.load(Rstd_ptr + pair)
    xhat, dv = _recompute_dv(X_ptr, DY_ptr, offs, mask, mean, rstd, a, d, SILU)
    # Every other reduction of the backward is a per-channel multiple of these two sums.
    slot = rows * tl.num_programs(1) + tl.program_id(1)
    tl.store(S1_ptr + slot, tl.sum(dv, axis=1), mask=c_mask)
    tl.store(S2_ptr + slot, tl.sum(dv * xhat, axis=1), mask=c_mask)


@triton.jit
def _gn_bwd_dx_kernel(
    X_ptr,      # (B, C, L) contiguous
    DY_ptr,     # (B, C, L) contiguous
    DX_ptr,     # (B, C, L) contiguous out, x.dtype
    Mean_ptr,   # (B·G,) fp32
    Rstd_ptr,   # (B·G,) fp32
    C1_ptr,     # (B·G,) fp32: mean over the group of dx̂
    C2_ptr,     # (B·G,) fp32: mean over the group of dx̂·x̂
    W_ptr,      # (C,) or dummy
    Bias_ptr,   # (C,) or dummy
    Scale_ptr,  # (B, C) or dummy
    Shift_ptr,  # (B, C) or dummy
    G, Cg, L, n_c_tiles,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
    SILU: tl.constexpr, ROUND_BF16: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr,
):
    pair, c, c_mask, rows, mask, offs = _tile(Cg, L, n_c_tiles, BLOCK_C, BLOCK_L)
    a, d, wfac = _film_coeffs(pair, c, c_mask, rows, Rstd_ptr, W_ptr, Bias_ptr, Scale_ptr,
                              Shift_ptr, G, Cg, HAS_W, HAS_B, HAS_SCALE, HAS_SHIFT, BLOCK_C)
    mean = tl.load(Mean_ptr + pair)
    rstd = tl.load(Rstd_ptr + pair)
    c1 = tl.load(C1_ptr + pair)
    c2 = tl.load(C2_ptr + pair)
    xhat, dv = _recompute_dv(X_ptr, DY_ptr, offs, mask, mean, rstd, a, d, SILU)
    dxhat = dv * wfac[:, None]
    dx = rstd * (dxhat - c1 - xhat * c2)
    if ROUND_BF16:
        dx = _round_for_bf16(dx)
    tl.store(DX_ptr + offs, dx.to(DX_ptr.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------------------------------------
# Launchers
# ------------------------------------------------------------------------------------------------
# Under the interpreter (tests) every buffer a kernel must fill starts as NaN, so a kernel that
# skips an element fails the test that reads it. On GPUs that would cost a full extra write
# pass, so it is opt-in there (FASTAUDIO_POISON=1).
_POISON = INTERPRET or os.environ.get("FASTAUDIO_POISON", "0") == "1"


def _alloc(shape, dtype, device) -> Tensor:
    if _POISON:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def _tile_sizes(B: int, C: int, Cg: int, L: int) -> Tuple[int, int, int]:
    """(BLOCK_C, BLOCK_L, num_warps): ~4 K-element tiles; 1 K when the tensor is small.

    SA1.0 (2, 1024, 4096)/16 groups → 4 × 1024 tiles → 2 048 programs; the 256-frame levels
    (2, 1280, 256) → 4 × 256 tiles → 640 programs, several per SM either way. The interpreter
    pays milliseconds per program, so there a tile is as large as a test's (batch, group) pair
    (tests that need several tiles per pair replace this function).
    """
    if INTERPRET:
        max_l, tile = 2048, 8192
    else:
        max_l, tile = 1024, (4096 if B * C * L >= (1 << 22) else 1024)
    block_l = min(triton.next_power_of_2(L), max_l)
    block_c = min(triton.next_power_of_2(Cg), max(1, tile // block_l))
    num_warps = 8 if block_c * block_l >= 4096 else 4
    return block_c, block_l, num_warps


def group_norm_unsupported_reason(x: Tensor, num_groups: int, weight: Optional[Tensor] = None,
                                  bias: Optional[Tensor] = None, scale: Optional[Tensor] = None,
                                  shift: Optional[Tensor] = None) -> Optional[str]:
    """Why the Triton GroupNorm cannot serve these inputs, or None when it can."""
    reason = first_reason(device_reason(x, weight, bias, scale, shift),
                          dtype_reason(x, weight, bias, scale, shift))
    if reason is not None:
        return reason
    devices = {t.device for t in (x, weight, bias, scale, shift) if t is not None}
    if len(devices) > 1:
        return f"tensors on different devices: {sorted(str(d) for d in devices)}"
    if x.dim() != 3:
        return f"x must be (B, C, L), got {x.dim()} dims {tuple(x.shape)}"
    B, C, L = x.shape
    if x.numel() == 0:
        return f"empty input {tuple(x.shape)}"
    if num_groups <= 0 or C % num_groups != 0:
        return f"C={C} is not divisible by num_groups={num_groups}"
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (C,):
            return f"{name} must be ({C},), got {tuple(t.shape)}"
    for name, t in (("scale", scale), ("shift", shift)):
        if t is not None and tuple(t.shape) != (B, C):
            return f"{name} must be ({B}, {C}), got {tuple(t.shape)}"
    _, block_l, _ = _tile_sizes(B, C, C // num_groups, L)
    if triton.cdiv(L, block_l) > _MAX_L_TILES:
        return f"L={L} needs more than {_MAX_L_TILES} tiles of {block_l} (grid limit)"
    return None


def _flags(weight, bias, scale, shift, x):
    """Kernel pointer arguments (x stands in for the absent ones) and their HAS_* flags."""
    def ptr(t):
        return x if t is None else t.contiguous()
    return ((ptr(weight), ptr(bias), ptr(scale), ptr(shift)),
            dict(HAS_W=weight is not None, HAS_B=bias is not None,
                 HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None))


def group_norm_forward(x: Tensor, num_groups: int, weight: Optional[Tensor],
                       bias: Optional[Tensor], eps: float = 1e-5, scale: Optional[Tensor] = None,
                       shift: Optional[Tensor] = None,
                       silu: bool = False) -> Tuple[Tensor, Tensor, Tensor]:
    """Run the forward kernels: (y in x.dtype, mean (B, G) fp32, rstd (B, G) fp32)."""
    reason = group_norm_unsupported_reason(x, num_groups, weight, bias, scale, shift)
    if reason is not None:
        raise ValueError(f"group_norm: {reason}")
    x = x.contiguous()
    B, C, L = x.shape
    G = num_groups
    Cg = C // G
    block_c, block_l, num_warps = _tile_sizes(B, C, Cg, L)
    n_c, n_l = triton.cdiv(Cg, block_c), triton.cdiv(L, block_l)
    P = n_c * n_l
    dev = x.device
    count = _alloc((B * G, P), torch.float32, dev)
    tile_mean = _alloc((B * G, P), torch.float32, dev)
    tile_m2 = _alloc((B * G, P), torch.float32, dev)
    mean = _alloc((B, G), torch.float32, dev)
    rstd = _alloc((B, G), torch.float32, dev)
    y = _alloc((B, C, L), x.dtype, dev)
    grid = (B * G * n_c, n_l)
    _gn_fwd_stats_kernel[grid](x, count, tile_mean, tile_m2, Cg, L, n_c,
                               BLOCK_C=block_c, BLOCK_L=block_l, num_warps=num_warps)
    _gn_fwd_merge_kernel[(B * G,)](count, tile_mean, tile_m2, mean, rstd, P, float(eps),
                                   BLOCK_P=min(triton.next_power_of_2(P), _MAX_MERGE_BLOCK),
                                   num_warps=4)
    ptrs, flags = _flags(weight, bias, scale, shift, x)
    _gn_fwd_apply_kernel[grid](x, y, mean, rstd, *ptrs, G, Cg, L, n_c, **flags, SILU=silu,
                               ROUND_BF16=INTERPRET and x.dtype == torch.bfloat16,
                               BLOCK_C=block_c, BLOCK_L=block_l, num_warps=num_warps)
    return y, mean, rstd


def group_norm_backward(dy: Tensor, x: Tensor, mean: Tensor, rstd: Tensor, num_groups: int,
                        weight: Optional[Tensor], bias: Optional[Tensor],
                        scale: Optional[Tensor], shift: Optional[Tensor], silu: bool,
                        need_dx: bool = True, need_dweight: bool = True, need_dbias: bool = True,
                        need_dscale: bool = True, need_dshift: bool = True
                        ) -> Tuple[Optional[Tensor], ...]:
    """(dx, dweight, dbias, dscale, dshift); an entry is None when not asked for or absent."""
    reason = group_norm_unsupported_reason(x, num_groups, weight, bias, scale, shift)
    if reason is not None:
        raise ValueError(f"group_norm backward: {reason}")
    if dy.shape != x.shape:
        raise ValueError(f"group_norm backward: dy {tuple(dy.shape)} != x {tuple(x.shape)}")
    x, dy = x.contiguous(), dy.contiguous()
    mean, rstd = mean.contiguous(), rstd.contiguous()
    B, C, L = x.shape
    G = num_groups
    Cg = C // G
    block_c, block_l, num_warps = _tile_sizes(B, C, Cg, L)
    n_c, n_l = triton.cdiv(Cg, block_c), triton.cdiv(L, block_l)
    grid = (B * G * n_c, n_l)
    ptrs, flags = _flags(weight, bias, scale, shift, x)

    s1 = _alloc((B * C, n_l), torch.float32, x.device)
    s2 = _alloc((B * C, n_l), torch.float32, x.device)
    _gn_bwd_sums_kernel[grid](x, dy, mean, rstd, *ptrs, s1, s2, G, Cg, L, n_c, **flags,
                              SILU=silu, BLOCK_C=block_c, BLOCK_L=block_l, num_warps=num_warps)
    # (B, C) sums; everything below is O(B·C) work, done with torch on the same stream.
    s1 = s1.view(B, C, n_l).sum(-1)  # Σ_L dv
    s2 = s2.view(B, C, n_l).sum(-1)  # Σ_L dv·x̂
    sfac = None if scale is None else 1.0 + scale.float()
    t1 = s1 if sfac is None else s1 * sfac  # Σ_L du, u = affine output
    t2 = s2 if sfac is None else s2 * sfac  # Σ_L du·x̂
    # w·(1+scale) formed exactly as _film_coeffs forms it, so that for one-element groups the
    # kernel's dx̂ and the group mean c1 below are bitwise equal and dx is exactly 0.
    wfac = None if weight is None else weight.float().expand(B, C)
    if sfac is not None:
        wfac = sfac if wfac is None else wfac * sfac

    dweight = t2.sum(0).to(weight.dtype) if need_dweight and weight is not None else None
    dbias = t1.sum(0).to(bias.dtype) if need_dbias and bias is not None else None
    dshift = s1.to(shift.dtype) if need_dshift and shift is not None else None
    dscale = None
    if need_dscale and scale is not None:
        ds = s2 if weight is None else s2 * weight.float()  # Σ_L dv·u, u = x̂·w + b
        if bias is not None:
            ds = ds + s1 * bias.float()
        dscale = ds.to(scale.dtype)

    dx = None
    if need_dx:
        # c1, c2: group means of dx̂ = dv·w·(1+scale) and of dx̂·x̂, over Cg·L elements.
        c1 = (s1 if wfac is None else s1 * wfac).view(B * G, Cg).sum(-1) / (Cg * L)
        c2 = (s2 if wfac is None else s2 * wfac).view(B * G, Cg).sum(-1) / (Cg * L)
        dx = _alloc((B, C, L), x.dtype, x.device)
        _gn_bwd_dx_kernel[grid](x, dy, dx, mean, rstd, c1, c2, *ptrs, G, Cg, L, n_c, **flags,
                                SILU=silu, ROUND_BF16=INTERPRET and x.dtype == torch.bfloat16,
                                BLOCK_C=block_c, BLOCK_L=block_l, num_warps=num_warps)
    return dx, dweight, dbias, dscale, dshift


# ------------------------------------------------------------------------------------------------
# torch.library ops (opaque to torch.compile, with shape-only fake implementations)
# ------------------------------------------------------------------------------------------------
@torch.library.custom_op("fastaudio::group_norm_fwd", mutates_args=())
def _group_norm_fwd_op(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                       scale: Optional[Tensor], shift: Optional[Tensor], num_groups: int,
                       eps: float, silu: bool) -> Tuple[Tensor, Tensor, Tensor]:
    return group_norm_forward(x, num_groups, weight, bias, eps, scale, shift, silu)


@_group_norm_fwd_op.register_fake
def _(x, weight, bias, scale, shift, num_groups, eps, silu):
    B = x.shape[0]
    stats = x.new_empty((B, num_groups), dtype=torch.float32)
    return x.new_empty(x.shape), stats, torch.empty_like(stats)


# Absent gradients come back as empty tensors: custom ops cannot return None.
@torch.library.custom_op("fastaudio::group_norm_bwd", mutates_args=())
def _group_norm_bwd_op(dy: Tensor, x: Tensor, mean: Tensor, rstd: Tensor,
                       weight: Optional[Tensor], bias: Optional[Tensor], scale: Optional[Tensor],
                       shift: Optional[Tensor], num_groups: int, silu: bool, need_dx: bool,
                       need_dweight: bool, need_dbias: bool, need_dscale: bool,
                       need_dshift: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    grads = group_norm_backward(dy, x, mean, rstd, num_groups, weight, bias, scale, shift, silu,
                                need_dx, need_dweight, need_dbias, need_dscale, need_dshift)
    return tuple(x.new_empty(0) if g is None else g for g in grads)


@_group_norm_bwd_op.register_fake
def _(dy, x, mean, rstd, weight, bias, scale, shift, num_groups, silu, need_dx, need_dweight,
      need_dbias, need_dscale, need_dshift):
    def like(t, need):
        return t.new_empty(t.shape) if need and t is not None else x.new_empty(0)
    return (like(x, need_dx), like(weight, need_dweight), like(bias, need_dbias),
            like(scale, need_dscale), like(shift, need_dshift))


class GroupNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, scale, shift, num_groups, eps, silu):
        y, mean, rstd = torch.ops.fastaudio.group_norm_fwd(x, weight, bias, scale, shift,
                                                           num_groups, eps, silu)
        ctx.save_for_backward(x, mean, rstd, weight, bias, scale, shift)
        ctx.num_groups = num_groups
        ctx.silu = silu
        return y

    @staticmethod
    def backward(ctx, dy):
        x, mean, rstd, weight, bias, scale, shift = ctx.saved_tensors
        need = ctx.needs_input_grad[:5]
        grads = torch.ops.fastaudio.group_norm_bwd(
            dy, x, mean, rstd, weight, bias, scale, shift, ctx.num_groups, ctx.silu,
            need[0], need[1] and weight is not None, need[2] and bias is not None,
            need[3] and scale is not None, need[4] and shift is not None)
        grads = [g if n else None for g, n in zip(grads, need)]
        return (*grads, None, None, None)


def group_norm(x: Tensor, num_groups: int, weight: Optional[Tensor], bias: Optional[Tensor],
               eps: float = 1e-5, scale: Optional[Tensor] = None, shift: Optional[Tensor] = None,
               silu: bool = False) -> Tensor:
    """Differentiable fused GroupNorm (Triton); same contract as :func:`group_norm_ref`.

    Raises ValueError when the kernel cannot serve the input (see
    :func:`group_norm_unsupported_reason`); choosing a fallback is the dispatcher's job.
    """
    reason = group_norm_unsupported_reason(x, num_groups, weight, bias, scale, shift)
    if reason is not None:
        raise ValueError(f"group_norm: {reason}")
    return GroupNormFunction.apply(x, weight, bias, scale, shift, num_groups, float(eps),
                                   bool(silu))
