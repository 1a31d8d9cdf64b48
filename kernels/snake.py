"""Snake activations, forward and backward, in Triton.

    Snake (descript-audio-codec's Snake1d):  y = x + 1/(α + 1e-9) · sin²(α·x)
    SnakeBeta (Oobleck, BigVGAN):            y = x + inv_β · sin²(α·x)
                                             α, inv_β per channel, x (B, C, N)

SnakeBeta's kernels take the frequency α and the divisor inv_β = 1/(β + 1e-9) already in linear
scale: the log-scale exponentials and the reciprocal act on C values, not B·C·N, so the caller
computes them with torch (whose autograd then carries dα, dinv_β back to the log-scale
parameters). Both variants share the kernels below through one constexpr, SEPARATE_INV, so the
Snake path compiles to exactly the code it had before SnakeBeta was added.

Design trade-off: Snake is purely memory-bound (the VAE decoder runs it over ~5 G elements for
95 s of audio), so each pass reads and writes every element exactly once: the forward reads x
and writes y; the backward reads x and dy and writes dx while accumulating dα. dα is a sum over
B and N; instead of atomics (non-deterministic, contended: one α per channel) each program owns
a fixed CHUNK of one row and writes one fp32 partial sum, and the host sums the (B·C, N/CHUNK)
partials with torch — deterministic, and the partial buffer is ~1/16 000 of x. The CHUNK is
fixed so the partial buffer's shape does not depend on which BLOCK the autotuner picks.

Numerics: sin² is computed as sin·sin, not 0.5·(1 − cos 2αx): for small α·x the cosine form
cancels (absolute error ~1e-7 divided by α), while sin·sin keeps full relative precision, as the
reference does. 1/(α + 1e-9) is kept exactly as in the reference. On GPUs the sine and cosine
are libdevice's (correctly range-reduced); tl.sin may lower to the approximate SFU instruction,
whose error grows with |α·x|. The grid is (B·C rows, tiles of a row): offsets are int64, since
B·C·N passes 2^31 at 95 s (96 channels × 4.2 M samples × batch ≥ 6).
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from ._common import INTERPRET, device_reason, dtype_reason, first_reason

Tensor = torch.Tensor

_MAX_TILES_PER_ROW = 65535          # CUDA's limit on grid axis 1
_MIN_FWD_BLOCK = 1024               # smallest forward BLOCK among the configs below
_BWD_CHUNK = 4096 if INTERPRET else 16384  # elements of one row per backward program


# ------------------------------------------------------------------------------------------------
# Reference
# ------------------------------------------------------------------------------------------------
def snake_ref(x: Tensor, alpha: Tensor, upcast: bool = True) -> Tensor:
    """``x + 1/(alpha + 1e-9) · sin(alpha·x)²``; x (B, C, N), alpha (1, C, 1) or (C,).

    With ``upcast`` the arithmetic is fp32 (fp64 for fp64 inputs) and the result is x.dtype;
    without it every op runs in x.dtype (the low-precision baseline of the tests).
    """
    dt = torch.promote_types(x.dtype, torch.float32) if upcast else x.dtype
    a = alpha.to(dt).reshape(1, -1, 1)
    xf = x.to(dt)
    return (xf + (a + 1e-9).reciprocal() * torch.sin(a * xf).pow(2)).to(x.dtype)


def snake_beta_ref(x: Tensor, alpha: Tensor, inv_beta: Tensor, upcast: bool = True) -> Tensor:
    """``x + inv_beta · sin(alpha·x)²``; alpha and inv_beta (1, C, 1) or (C,), linear scale.

    ``upcast`` as in :func:`snake_ref`.
    """
    dt = torch.promote_types(x.dtype, torch.float32) if upcast else x.dtype
    a = alpha.to(dt).reshape(1, -1, 1)
    inv = inv_beta.to(dt).reshape(1, -1, 1)
    xf = x.to(dt)
    return (xf + inv * torch.sin(a * xf).pow(2)).to(x.dtype)


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
def _sin_cos(t, PRECISE: tl.constexpr):
    if PRECISE:
        return libdevice.sin(t), libdevice.cos(t)
    else:
        return tl.sin(t), tl.cos(t)


def _configs(blocks, warps):
    if INTERPRET:  # autotuning needs a GPU; one large block keeps the program count low
        return [triton.Config({"BLOCK": 2048}, num_warps=4)]
    return [triton.Config({"BLOCK": b}, num_warps=w) for b in blocks for w in warps]


# sm80 and sm90 alike: a streaming kernel wants 16-byte accesses (8 bf16 / 4 fp32 per thread)
# and enough bytes in flight per SM; BLOCK 1024…8192 with 4 or 8 warps spans that.
# Keyed on N's power-of-two bucket, not N: every clip length gives a new N, and re-running the
# autotuner (tens of launches) for each would stall generation on the first call at that length.
# Snake and SnakeBeta (SEPARATE_INV) are tuned apart: they are different compiled kernels.
@triton.autotune(configs=_configs((1024, 2048, 4096, 8192), (4, 8)), key=["N_LOG2", "SEPARATE_INV"])
@triton.jit
def _snake_fwd_kernel(
    X_ptr,      # (B, C, N) contiguous, fp32/fp16/bf16
    Alpha_ptr,  # (C,) contiguous
    Inv_ptr,    # (C,) contiguous: SnakeBeta's inv_β (unread when not SEPARATE_INV)
    Y_ptr,      # (B, C, N) contiguous out, x.dtype
    C, N,
    N_LOG2,     # autotune key only: ceil(log2 N)
    SEPARATE_INV: tl.constexpr, PRECISE_SIN: tl.constexpr, ROUND_BF16: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # b·C + c
    col = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)  # int32: N < 2^31
    mask = col < N
    a = tl.load(Alpha_ptr + row % C).to(tl.float32)
    if SEPARATE_INV:
        inv = tl.load(Inv_ptr + row % C).to(tl.float32)
    else:
        inv = tl.math.div_rn(1.0, a + 1e-9)
    offs = row * N + col
    x = tl.load(X_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if PRECISE_SIN:
        s = libdevice.sin(a * x)
    else:
        s = tl.sin(a * x)
    y = x + inv * (s * s)
    if ROUND_BF16:
        y = _round_for_bf16(y)
    tl.store(Y_ptr + offs, y.to(Y_ptr.dtype.element_ty), mask=mask)


@triton.autotune(configs=_configs((1024, 2048, 4096), (4, 8)), key=["N_LOG2", "SEPARATE_INV"])
@triton.jit
def _snake_bwd_kernel(
    X_ptr,        # (B, C, N) contiguous
    Alpha_ptr,    # (C,) contiguous
    Inv_ptr,      # (C,) contiguous: SnakeBeta's inv_β (unread when not SEPARATE_INV)
    DY_ptr,       # (B, C, N) contiguous
    DX_ptr,       # (B, C, N) contiguous out, x.dtype (dummy when not NEED_DX)
    DAlpha_ptr,   # (B·C, n_chunks) fp32 out: this program's share of dL/dα
    DInv_ptr,     # (B·C, n_chunks) fp32 out: its share of dL/dinv_β (unwritten when not SEPARATE_INV)
    C, N, n_chunks,
    N_LOG2,       # autotune key only: ceil(log2 N)
    NEED_DX: tl.constexpr, SEPARATE_INV: tl.constexpr, PRECISE_SIN: tl.constexpr,
    ROUND_BF16: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    a = tl.load(Alpha_ptr + row % C).to(tl.float32)
    if SEPARATE_INV:
        inv = tl.load(Inv_ptr + row % C).to(tl.float32)
    else:
        inv = tl.math.div_rn(1.0, a + 1e-9)
    a_inv = a * inv  # dy/dx = 1 + α·inv · sin(2αx)
    start = chunk * CHUNK
    end = tl.minimum(start + CHUNK, N)
    acc = tl.zeros([BLOCK], tl.float32)
    acc_inv = tl.zeros([BLOCK], tl.float32)
    for lo in range(start, end, BLOCK):
        col = lo + tl.arange(0, BLOCK)
        mask = col < end
        offs = row * N + col
        x = tl.load(X_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY_ptr + offs, mask=mask, other=0.0).to(tl.float32)  # 0 outside: drops out
        s, c = _sin_cos(a * x, PRECISE_SIN)
        if SEPARATE_INV:
            # ∂y/∂α = 2·inv·sin·cos·x;  ∂y/∂inv = sin²
            acc += dy * inv * s * (2.0 * c * x)
            acc_inv += dy * (s * s)
        else:
            # ∂y/∂α = −sin²/(α+1e-9)² + 2·sin·cos·x/(α+1e-9)
            acc += dy * inv * s * (2.0 * c * x - inv * s)
        if NEED_DX:
            dx = dy * (1.0 + a_inv * (2.0 * s * c))
            if ROUND_BF16:
                dx = _round_for_bf16(dx)
            tl.store(DX_ptr + offs, dx.to(DX_ptr.dtype.element_ty), mask=mask)
    tl.store(DAlpha_ptr + row * n_chunks + chunk, tl.sum(acc))
    if SEPARATE_INV:
        tl.store(DInv_ptr + row * n_chunks + chunk, tl.sum(acc_inv))


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


def snake_unsupported_reason(x: Tensor, alpha: Tensor) -> Optional[str]:
    """Why the Triton Snake cannot serve these inputs, or None when it can."""
    reason = first_reason(device_reason(x, alpha), dtype_reason(x, alpha))
    if reason is not None:
        return reason
    if x.device != alpha.device:
        return f"x on {x.device} but alpha on {alpha.device}"
    if x.dim() != 3:
        return f"x must be (B, C, N), got {x.dim()} dims {tuple(x.shape)}"
    B, C, N = x.shape
    if tuple(alpha.shape) not in ((C,), (1, C, 1)):
        return f"alpha must be ({C},) or (1, {C}, 1), got {tuple(alpha.shape)}"
    if x.numel() == 0:
        return f"empty input {tuple(x.shape)}"
    if triton.cdiv(N, _MIN_FWD_BLOCK) > _MAX_TILES_PER_ROW:
        return f"N={N} needs more than {_MAX_TILES_PER_ROW} tiles of {_MIN_FWD_BLOCK} (grid limit)"
    return None


def _check(x: Tensor, alpha: Tensor, what: str) -> None:
    reason = snake_unsupported_reason(x, alpha)
    if reason is not None:
        raise ValueError(f"{what}: {reason}")


def _log2_bucket(n: int) -> int:
    return max(int(n) - 1, 1).bit_length()


def snake_forward(x: Tensor, alpha: Tensor) -> Tensor:
    """Run the forward kernel: y in x.dtype."""
    _check(x, alpha, "snake")
    x = x.contiguous()
    B, C, N = x.shape
    y = _alloc((B, C, N), x.dtype, x.device)
    grid = lambda meta: (B * C, triton.cdiv(N, meta["BLOCK"]))  # noqa: E731
    a = alpha.reshape(C).contiguous()
    _snake_fwd_kernel[grid](x, a, a, y, C, N, _log2_bucket(N), SEPARATE_INV=False,
                            PRECISE_SIN=not INTERPRET,
                            ROUND_BF16=INTERPRET and x.dtype == torch.bfloat16)
    return y


def snake_backward(dy: Tensor, x: Tensor, alpha: Tensor, need_dx: bool = True,
                   need_dalpha: bool = True) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """(dx in x.dtype, dalpha in alpha's shape and dtype); None where not asked for."""
    _check(x, alpha, "snake backward")
    if dy.shape != x.shape:
        raise ValueError(f"snake backward: dy {tuple(dy.shape)} != x {tuple(x.shape)}")
    x, dy = x.contiguous(), dy.contiguous()
    B, C, N = x.shape
    n_chunks = triton.cdiv(N, _BWD_CHUNK)
    dx = _alloc((B, C, N), x.dtype, x.device) if need_dx else None
    partial = _alloc((B * C, n_chunks), torch.float32, x.device)
    a = alpha.reshape(C).contiguous()
    _snake_bwd_kernel[(B * C, n_chunks)](
        x, a, a, dy, x if dx is None else dx, partial, partial, C, N, n_chunks, _log2_bucket(N),
        NEED_DX=need_dx, SEPARATE_INV=False, PRECISE_SIN=not INTERPRET,
        ROUND_BF16=INTERPRET and x.dtype == torch.bfloat16, CHUNK=_BWD_CHUNK)
    dalpha = None
    if need_dalpha:
        dalpha = partial.view(B, C, n_chunks).sum((0, 2)).reshape(alpha.shape).to(alpha.dtype)
    return dx, dalpha


# ------------------------------------------------------------------------------------------------
# torch.library ops (opaque to torch.compile, with shape-only fake implementations)
# ------------------------------------------------------------------------------------------------
@torch.library.custom_op("fastaudio::snake_fwd", mutates_args=())
def _snake_fwd_op(x: Tensor, alpha: Tensor) -> Tensor:
    return snake_forward(x, alpha)


@_snake_fwd_op.register_fake
def _(x, alpha):
    return x.new_empty(x.shape)


# Absent gradients come back as empty tensors: custom ops cannot return None.
@torch.library.custom_op("fastaudio::snake_bwd", mutates_args=())
def _snake_bwd_op(dy: Tensor, x: Tensor, alpha: Tensor, need_dx: bool,
                  need_dalpha: bool) -> Tuple[Tensor, Tensor]:
    dx, dalpha = snake_backward(dy, x, alpha, need_dx, need_dalpha)
    return (x.new_empty(0) if dx is None else dx,
            alpha.new_empty(0) if dalpha is None else dalpha)


@_snake_bwd_op.register_fake
def _(dy, x, alpha, need_dx, need_dalpha):
    return (x.new_empty(x.shape if need_dx else (0,)),
            alpha.new_empty(alpha.shape if need_dalpha else (0,)))


class SnakeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, alpha):
        ctx.save_for_backward(x, alpha)
        return torch.ops.fastaudio.snake_fwd(x, alpha)

    @staticmethod
    def backward(ctx, dy):
        x, alpha = ctx.saved_tensors
        need_dx, need_dalpha = ctx.needs_input_grad[:2]
        dx, dalpha = torch.ops.fastaudio.snake_bwd(dy, x, alpha, need_dx, need_dalpha)
        return (dx if need_dx else None), (dalpha if need_dalpha else None)


def snake(x: Tensor, alpha: Tensor) -> Tensor:
    """Differentiable Snake (Triton); same contract as :func:`snake_ref`.

    Raises ValueError when the kernel cannot serve the input (see
    :func:`snake_unsupported_reason`); choosing a fallback is the dispatcher's job.
    """
    _check(x, alpha, "snake")
    return SnakeFunction.apply(x, alpha)


# ------------------------------------------------------------------------------------------------
# SnakeBeta: y = x + inv_β · sin²(α·x), α and inv_β given in linear scale
# ------------------------------------------------------------------------------------------------
def snake_beta_unsupported_reason(x: Tensor, alpha: Tensor, inv_beta: Tensor) -> Optional[str]:
    """Why the Triton SnakeBeta cannot serve these inputs, or None when it can."""
    reason = snake_unsupported_reason(x, alpha)
    if reason is not None:
        return reason
    reason = first_reason(device_reason(inv_beta), dtype_reason(inv_beta))
    if reason is not None:
        return reason
    if inv_beta.device != x.device:
        return f"x on {x.device} but inv_beta on {inv_beta.device}"
    C = x.shape[1]
    if tuple(inv_beta.shape) not in ((C,), (1, C, 1)):
        return f"inv_beta must be ({C},) or (1, {C}, 1), got {tuple(inv_beta.shape)}"
    return None


def _check_beta(x: Tensor, alpha: Tensor, inv_beta: Tensor, what: str) -> None:
    reason = snake_beta_unsupported_reason(x, alpha, inv_beta)
    if reason is not None:
        raise ValueError(f"{what}: {reason}")


def snake_beta_forward(x: Tensor, alpha: Tensor, inv_beta: Tensor) -> Tensor:
    """Run the forward kernel with a separate divisor: y in x.dtype."""
    _check_beta(x, alpha, inv_beta, "snake_beta")
    x = x.contiguous()
    B, C, N = x.shape
    y = _alloc((B, C, N), x.dtype, x.device)
    grid = lambda meta: (B * C, triton.cdiv(N, meta["BLOCK"]))  # noqa: E731
    _snake_fwd_kernel[grid](x, alpha.reshape(C).contiguous(), inv_beta.reshape(C).contiguous(), y,
                            C, N, _log2_bucket(N), SEPARATE_INV=True, PRECISE_SIN=not INTERPRET,
                            ROUND_BF16=INTERPRET and x.dtype == torch.bfloat16)
    return y


def snake_beta_backward(dy: Tensor, x: Tensor, alpha: Tensor, inv_beta: Tensor,
                        need_dx: bool = True, need_dalpha: bool = True, need_dinv: bool = True
                        ) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """(dx in x.dtype, dalpha and dinv_beta in their inputs' shapes and dtypes), one launch;
    None where not asked for."""
    _check_beta(x, alpha, inv_beta, "snake_beta backward")
    if dy.shape != x.shape:
        raise ValueError(f"snake_beta backward: dy {tuple(dy.shape)} != x {tuple(x.shape)}")
    x, dy = x.contiguous(), dy.contiguous()
    B, C, N = x.shape
    n_chunks = triton.cdiv(N, _BWD_CHUNK)
    dx = _alloc((B, C, N), x.dtype, x.device) if need_dx else None
    partial_alpha = _alloc((B * C, n_chunks), torch.float32, x.device)
    partial_inv = _alloc((B * C, n_chunks), torch.float32, x.device)
    _snake_bwd_kernel[(B * C, n_chunks)](
        x, alpha.reshape(C).contiguous(), inv_beta.reshape(C).contiguous(), dy,
        x if dx is None else dx, partial_alpha, partial_inv, C, N, n_chunks, _log2_bucket(N),
        NEED_DX=need_dx, SEPARATE_INV=True, PRECISE_SIN=not INTERPRET,
        ROUND_BF16=INTERPRET and x.dtype == torch.bfloat16, CHUNK=_BWD_CHUNK)

    def reduce(partial: Tensor, like: Tensor) -> Tensor:
        return partial.view(B, C, n_chunks).sum((0, 2)).reshape(like.shape).to(like.dtype)

    return (dx, reduce(partial_alpha, alpha) if need_dalpha else None,
            reduce(partial_inv, inv_beta) if need_dinv else None)


@torch.library.custom_op("fastaudio::snake_beta_fwd", mutates_args=())
def _snake_beta_fwd_op(x: Tensor, alpha: Tensor, inv_beta: Tensor) -> Tensor:
    return snake_beta_forward(x, alpha, inv_beta)


@_snake_beta_fwd_op.register_fake
def _(x, alpha, inv_beta):
    return x.new_empty(x.shape)


@torch.library.custom_op("fastaudio::snake_beta_bwd", mutates_args=())
def _snake_beta_bwd_op(dy: Tensor, x: Tensor, alpha: Tensor, inv_beta: Tensor, need_dx: bool,
                       need_dalpha: bool, need_dinv: bool) -> Tuple[Tensor, Tensor, Tensor]:
    dx, dalpha, dinv = snake_beta_backward(dy, x, alpha, inv_beta, need_dx, need_dalpha, need_dinv)
    return (x.new_empty(0) if dx is None else dx,
            alpha.new_empty(0) if dalpha is None else dalpha,
            inv_beta.new_empty(0) if dinv is None else dinv)


@_snake_beta_bwd_op.register_fake
def _(dy, x, alpha, inv_beta, need_dx, need_dalpha, need_dinv):
    return (x.new_empty(x.shape if need_dx else (0,)),
            alpha.new_empty(alpha.shape if need_dalpha else (0,)),
            inv_beta.new_empty(inv_beta.shape if need_dinv else (0,)))


class SnakeBetaFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, alpha, inv_beta):
        ctx.save_for_backward(x, alpha, inv_beta)
        return torch.ops.fastaudio.snake_beta_fwd(x, alpha, inv_beta)

    @staticmethod
    def backward(ctx, dy):
        x, alpha, inv_beta = ctx.saved_tensors
        need = ctx.needs_input_grad[:3]
        grads = torch.ops.fastaudio.snake_beta_bwd(dy, x, alpha, inv_beta, *need)
        return tuple(g if n else None for g, n in zip(grads, need))


def snake_beta(x: Tensor, alpha: Tensor, inv_beta: Tensor) -> Tensor:
    """Differentiable SnakeBeta (Triton); same contract as :func:`snake_beta_ref`.

    Raises ValueError when the kernel cannot serve the input (see
    :func:`snake_beta_unsupported_reason`); choosing a fallback is the dispatcher's job.
    """
    _check_beta(x, alpha, inv_beta, "snake_beta")
    return SnakeBetaFunction.apply(x, alpha, inv_beta)
