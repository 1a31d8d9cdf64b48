"""Snake activations, forward and backward, in Triton: one launch each.

    Snake (descript-audio-codec's Snake1d):  y = x + 1/(α + 1e-9) · sin²(α·x)
    SnakeBeta (Oobleck, BigVGAN):            y = x + inv_β · sin²(α·x)
                                             α, inv_β per channel, x (B, C, N)

Both variants share the kernels below through one constexpr, PARAM, which says what the two
per-channel parameter vectors p1, p2 hold:

    PARAM 0  Snake          p1 = α                  (inv = 1/(α + 1e-9))
    PARAM 1  SnakeBeta      p1 = α,     p2 = inv_β  (the divisor given)
    PARAM 2  SnakeBeta      p1 = α,     p2 = β      (inv = 1/(β + 1e-9))
    PARAM 3  SnakeBeta      p1 = log α, p2 = log β  (stable-audio-tools' alpha_logscale)

The exponentials and the reciprocal act on C values per program, not on B·C·N elements, and the
backward's final per-channel reduction applies their chain rule, so a SnakeBeta layer costs one
launch forward and one backward whatever its parametrisation (no torch ops around the kernel).

Design trade-offs. Snake is purely memory-bound (the VAE decoder runs it over ~5 G elements for
95 s of audio), so each pass reads and writes every element exactly once.
* Forward: grid (B·C rows, tiles of a fixed BLOCK); no autotuner (it was keyed on the length, so
  every new clip length re-ran its tens of timing launches, and its key lookup cost host time on
  every call). BLOCK 4096 with 4 warps: 32 elements a thread, four 16-byte accesses in flight.
* Backward: grid (B·C rows, fixed CHUNKs of a row); each program writes dx for its chunk and one
  fp32 partial of dα (and dinv_β). The partials of one channel are summed by whichever program
  of that channel finishes last (a per-channel arrival counter, atomically incremented after the
  partial is stored): it adds them in a fixed order, so dα is deterministic, and no second launch
  or torch reduction is needed. The last program also resets its counter to 0, so the counters
  (one persistent int32 buffer per device and stream, zeroed once) are ready for the next launch
  and for CUDA-graph replays; a kernel killed mid-flight would leave them dirty.
* Sine: fp32 keeps libdevice's correctly range-reduced sinf/cosf. For bf16/fp16 inputs
  (FAST_SIN) the argument is reduced by π with a four-part Cody-Waite split (exact products for
  |α·x| < 2^16·π) and short Taylor polynomials on [−π/2, π/2] give sin and cos to ~6e-8, far below a
  bf16 ulp; sin² and sin·cos need no quadrant sign, since (−1)^k cancels in both. Its accuracy
  as compiled for a GPU is checked on a GPU (tests/test_kernel_snake.py, marked gpu).

Numerics: sin² is computed as sin·sin, not 0.5·(1 − cos 2αx): for small α·x the cosine form
cancels (absolute error ~1e-7 divided by α), while sin·sin keeps full relative precision, as the
reference does. 1/(α + 1e-9) is kept exactly as in the reference. Offsets are int64: B·C·N
passes 2^31 at 95 s (96 channels × 4.2 M samples × batch ≥ 6).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from ._common import INTERPRET, KernelInputError, SUPPORTED_DTYPES, alloc, device_ok
from ._store import _cast_out

Tensor = torch.Tensor

_FWD_BLOCK = 2048 if INTERPRET else 4096   # elements of a row per forward program
_BWD_CHUNK = 4096 if INTERPRET else 16384  # elements of a row per backward program
_BWD_BLOCK = 2048                          # the backward's step through its chunk
_MAX_TILES_PER_ROW = 65535                 # CUDA's limit on grid axis 1
# Sine implementation per dtype (the SIN constexpr): 0 numpy's (the interpreter's tl.sin),
# 1 libdevice, 2 the range-reduced polynomial. Module-level so a benchmark can compare them.
FAST_SIN_LOWP = True


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
def _reduce_by_pi(t):
    """r = t − k·π with k = round(t/π), |r| ≤ π/2 (+ an ulp): Cody-Waite with π split in four.
    The first three parts have 8 significant bits each, so for |k| < 2^16 (|t| < 2e5) every
    product k·part is exact in fp32 and each subtraction nearly so (Sterbenz); the fourth,
    ~2e-9, only adds a correction of ~1e-4 at most. A two-part split (a 16-bit second part) left
    errors of 2e-6 at |t| ~ 2e5 (its k·part rounded)."""
    k = tl.floor(t * 0.3183098861837907 + 0.5)
    r = t - k * 3.140625
    r = r - k * 0.00096893310546875
    r = r - k * -1.2814998626708984e-06
    r = r - k * 1.984187258941006e-09
    return r


@triton.jit
def _sin_poly(r):
    """sin r for |r| ≤ π/2: Taylor to r^11 (truncation < 6e-8)."""
    r2 = r * r
    p = -2.505210838544172e-08
    p = p * r2 + 2.755731922398589e-06
    p = p * r2 - 1.984126984126984e-04
    p = p * r2 + 8.333333333333333e-03
    p = p * r2 - 1.666666666666667e-01
    return r + r * r2 * p


@triton.jit
def _cos_poly(r):
    """cos r for |r| ≤ π/2: Taylor to r^12 (truncation < 7e-9)."""
    r2 = r * r
    p = 2.08767569878681e-09
    p = p * r2 - 2.755731922398589e-07
    p = p * r2 + 2.48015873015873e-05
    p = p * r2 - 1.388888888888889e-03
    p = p * r2 + 4.166666666666666e-02
    p = p * r2 - 0.5
    return 1.0 + r2 * p


@triton.jit
def _sin(t, SIN: tl.constexpr):
    """sin t up to its sign (callers square it) for SIN 0/1; exactly sin t otherwise."""
    if SIN == 2:
        return _sin_poly(_reduce_by_pi(t))  # = ±sin t: only sin² is used
    elif SIN == 1:
        return libdevice.sin(t)
    else:
        return tl.sin(t)


@triton.jit
def _sin_cos(t, SIN: tl.constexpr):
    """(s, c) with s·s = sin² t and s·c = sin t·cos t (the signs cancel in both products)."""
    if SIN == 2:
        r = _reduce_by_pi(t)
        return _sin_poly(r), _cos_poly(r)
    elif SIN == 1:
        return libdevice.sin(t), libdevice.cos(t)
    else:
        return tl.sin(t), tl.cos(t)


@triton.jit
def _channel_params(P1_ptr, P2_ptr, c, stride_1, stride_2, PARAM: tl.constexpr):
    """(α, inv, aux) of channel c in linear scale; aux = β' (PARAM 2, 3) or α' (unused else)."""
    p1 = tl.load(P1_ptr + c * stride_1).to(tl.float32)
    if PARAM == 0:
        return p1, tl.math.div_rn(1.0, p1 + 1e-9), p1
    p2 = tl.load(P2_ptr + c * stride_2).to(tl.float32)
    if PARAM == 1:
        return p1, p2, p2
    elif PARAM == 2:
        return p1, tl.math.div_rn(1.0, p2 + 1e-9), p2
    else:
        beta = tl.exp(p2)
        return tl.exp(p1), tl.math.div_rn(1.0, beta + 1e-9), beta


@triton.jit
def _snake_fwd_kernel(
    X_ptr,   # (B, C, N) contiguous, fp32/fp16/bf16
    P1_ptr,  # (C,) with stride stride_1 (a (1, C, 1) parameter read in place): α or log α
    P2_ptr,  # (C,) with stride stride_2: inv_β, β or log β (unread when PARAM == 0)
    Y_ptr,   # (B, C, N) contiguous out, x.dtype
    stride_1, stride_2, C, N,
    PARAM: tl.constexpr, SIN: tl.constexpr, ROUND_BF16: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # b·C + c; int64: row · N passes 2^31
    c = row % C
    col = tl.max_contiguous(tl.multiple_of(tl.program_id(1) * BLOCK + tl.arange(0, BLOCK), BLOCK),
                            BLOCK)
    mask = col < N
    a, inv, _ = _channel_params(P1_ptr, P2_ptr, c, stride_1, stride_2, PARAM)
    offs = row * N + col
    x = tl.load(X_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    s = _sin(a * x, SIN)
    y = x + inv * (s * s)
    tl.store(Y_ptr + offs, _cast_out(y, Y_ptr, ROUND_BF16), mask=mask)


@triton.jit
def _snake_bwd_kernel(
    X_ptr,      # (B, C, N) contiguous
    P1_ptr,     # (C,) with stride stride_1: α or log α
    P2_ptr,     # (C,) with stride stride_2: inv_β, β or log β (unread when PARAM == 0)
    DY_ptr,     # (B, C, N) contiguous
    DX_ptr,     # (B, C, N) contiguous out, x.dtype (unwritten when not NEED_DX)
    Part_ptr,   # (2, B·C·n_chunks) fp32 workspace: partial Σ dy·∂y/∂α, then Σ dy·∂y/∂inv
    Count_ptr,  # (≥ C,) int32, all 0 on entry and on exit: arrivals per channel
    DP1_ptr,    # (C,) contiguous out, p1.dtype (unwritten when not NEED_DP1)
    DP2_ptr,    # (C,) contiguous out, p2.dtype (unwritten when not NEED_DP2)
    stride_1, stride_2, C, N, n_chunks, per_channel,  # per_channel = B·n_chunks programs
    PARAM: tl.constexpr, NEED_DX: tl.constexpr, NEED_DP1: tl.constexpr, NEED_DP2: tl.constexpr,
    SIN: tl.constexpr, ROUND_BF16: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    c = row % C
    a, inv, aux = _channel_params(P1_ptr, P2_ptr, c, stride_1, stride_2, PARAM)
    a_inv = a * inv  # dy/dx = 1 + α·inv · sin(2αx)
    start = chunk * CHUNK
    end = tl.minimum(start + CHUNK, N)
    acc = tl.zeros([BLOCK], tl.float32)
    acc_inv = tl.zeros([BLOCK], tl.float32)
    for lo in range(start, end, BLOCK):
        col = tl.max_contiguous(tl.multiple_of(lo + tl.arange(0, BLOCK), BLOCK), BLOCK)
        mask = col < end
        offs = row * N + col
        x = tl.load(X_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY_ptr + offs, mask=mask, other=0.0).to(tl.float32)  # 0 outside: drops out
        s, cs = _sin_cos(a * x, SIN)
        if PARAM == 0:
            if NEED_DP1:  # ∂y/∂α = −sin²/(α+1e-9)² + 2·sin·cos·x/(α+1e-9)
                acc += dy * inv * s * (2.0 * cs * x - inv * s)
        else:
            if NEED_DP1:  # ∂y/∂α = 2·inv·sin·cos·x
                acc += dy * inv * s * (2.0 * cs * x)
            if NEED_DP2:  # ∂y/∂inv = sin²
                acc_inv += dy * (s * s)
        if NEED_DX:
            dx = dy * (1.0 + a_inv * (2.0 * s * cs))
            tl.store(DX_ptr + offs, _cast_out(dx, DX_ptr, ROUND_BF16), mask=mask)
    if NEED_DP1 or NEED_DP2:
        total = C * per_channel  # partials of one kind
        slot = row * n_chunks + chunk
        tl.store(Part_ptr + slot, tl.sum(acc))
        tl.store(Part_ptr + total + slot, tl.sum(acc_inv))
        # Every thread's store is done before the arrival is counted (release, GPU scope) ...
        tl.debug_barrier()
        ticket = tl.atomic_add(Count_ptr + c, 1, sem="acq_rel")
        if ticket == per_channel - 1:
            # ... so the last program of channel c sees all its partials (acquire; .cg reads
            # L2, never a stale L1 line) and adds them in one fixed order: deterministic.
            acc_a = tl.zeros([BLOCK_P], tl.float32)
            acc_i = tl.zeros([BLOCK_P], tl.float32)
            for p0 in range(0, per_channel, BLOCK_P):
                i = p0 + tl.arange(0, BLOCK_P)
                ok = i < per_channel
                b = (i // n_chunks).to(tl.int64)
                at = (b * C + c) * n_chunks + i % n_chunks
                acc_a += tl.load(Part_ptr + at, mask=ok, other=0.0, cache_modifier=".cg")
                acc_i += tl.load(Part_ptr + total + at, mask=ok, other=0.0, cache_modifier=".cg")
            d_alpha = tl.sum(acc_a)  # dL/dα' (linear frequency)
            d_inv = tl.sum(acc_i)    # dL/dinv
            if PARAM == 3:
                d_alpha = d_alpha * a               # dα'/dlog α = α'
                d_inv = d_inv * (-(inv * inv) * aux)  # dinv/dlog β = −inv²·β'
            elif PARAM == 2:
                d_inv = d_inv * (-(inv * inv))      # dinv/dβ = −inv²
            if NEED_DP1:
                tl.store(DP1_ptr + c, _cast_out(d_alpha, DP1_ptr, ROUND_BF16))
            if NEED_DP2:
                tl.store(DP2_ptr + c, _cast_out(d_inv, DP2_ptr, ROUND_BF16))
            tl.store(Count_ptr + c, 0)  # ready for the next launch (and graph replay)


# ------------------------------------------------------------------------------------------------
# Launchers (they trust their inputs: the unsupported-reason functions have been asked, once, by
# the dispatcher or by the entry points below)
# ------------------------------------------------------------------------------------------------
PARAM_SNAKE, PARAM_INV_BETA, PARAM_BETA, PARAM_LOG = 0, 1, 2, 3
_counters: Dict[Tuple[str, int, int], Tensor] = {}


def _arrival_counters(device: torch.device, channels: int) -> Tensor:
    """The zeroed per-channel arrival counters of this device and stream (allocated once; the
    kernels leave them zeroed)."""
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (device.type, device.index or 0, stream)
    buf = _counters.get(key)
    if buf is None or buf.numel() < channels:
        buf = torch.zeros(max(channels, 4096), dtype=torch.int32, device=device)
        _counters[key] = buf
    return buf


def _sin_mode(dtype: torch.dtype) -> int:
    if dtype != torch.float32 and FAST_SIN_LOWP:
        return 2
    return 0 if INTERPRET else 1


def _channel_stride(p: Tensor) -> int:
    return p.stride(1) if p.dim() == 3 else p.stride(0)


def _forward(x: Tensor, p1: Tensor, p2: Optional[Tensor], param: int) -> Tensor:
    if not x.is_contiguous():
        x = x.contiguous()
    B, C, N = x.shape
    y = alloc((B, C, N), x.dtype, x.device)
    _snake_fwd_kernel[(B * C, -(-N // _FWD_BLOCK))](  # (no triton.cdiv: ~2 us on the host)
        x, p1, p1 if p2 is None else p2, y, _channel_stride(p1),
        0 if p2 is None else _channel_stride(p2), C, N, PARAM=param, SIN=_sin_mode(x.dtype),
        ROUND_BF16=INTERPRET, BLOCK=_FWD_BLOCK, num_warps=4)
    return y


def _backward(dy: Tensor, x: Tensor, p1: Tensor, p2: Optional[Tensor], param: int,
              need_dx: bool, need_dp1: bool, need_dp2: bool):
    """(dx, dp1, dp2), one launch; None where not asked for."""
    if dy.shape != x.shape:
        raise KernelInputError(f"snake backward: dy {tuple(dy.shape)} != x {tuple(x.shape)}")
    need_dp2 = need_dp2 and p2 is not None
    if not (need_dx or need_dp1 or need_dp2):
        return None, None, None
    if not x.is_contiguous():
        x = x.contiguous()
    if not dy.is_contiguous():
        dy = dy.contiguous()
    B, C, N = x.shape
    n_chunks = -(-N // _BWD_CHUNK)
    per_channel = B * n_chunks
    dev = x.device
    dx = alloc((B, C, N), x.dtype, dev) if need_dx else None
    dp1 = alloc(p1.shape, p1.dtype, dev) if need_dp1 else None
    dp2 = alloc(p2.shape, p2.dtype, dev) if need_dp2 else None
    if need_dp1 or need_dp2:
        part = alloc((2, B * C * n_chunks), torch.float32, dev)  # the call's one workspace
        counters = _arrival_counters(dev, C)
    else:
        part = counters = x  # never dereferenced
    _snake_bwd_kernel[(B * C, n_chunks)](
        x, p1, p1 if p2 is None else p2, dy, x if dx is None else dx, part, counters,
        x if dp1 is None else dp1, x if dp2 is None else dp2,
        _channel_stride(p1), 0 if p2 is None else _channel_stride(p2), C, N, n_chunks,
        per_channel, PARAM=param, NEED_DX=need_dx, NEED_DP1=need_dp1, NEED_DP2=need_dp2,
        SIN=_sin_mode(x.dtype), ROUND_BF16=INTERPRET,
        CHUNK=_BWD_CHUNK, BLOCK=_BWD_BLOCK,
        BLOCK_P=min(1 << (per_channel - 1).bit_length(), 1024), num_warps=4)
    return dx, dp1, dp2


def snake_forward(x: Tensor, alpha: Tensor) -> Tensor:
    """One launch: y in x.dtype. Inputs already checked."""
    return _forward(x, alpha, None, PARAM_SNAKE)


def snake_backward(dy: Tensor, x: Tensor, alpha: Tensor, need_dx: bool = True,
                   need_dalpha: bool = True) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """One launch: (dx in x.dtype, dalpha in alpha's shape and dtype); None where not asked."""
    dx, dalpha, _ = _backward(dy, x, alpha, None, PARAM_SNAKE, need_dx, need_dalpha, False)
    return dx, dalpha


def snake_beta_forward(x: Tensor, alpha: Tensor, p2: Tensor, param: int = PARAM_INV_BETA
                       ) -> Tensor:
    """One launch: y in x.dtype; ``param`` says what (alpha, p2) hold (module docstring)."""
    return _forward(x, alpha, p2, param)


def snake_beta_backward(dy: Tensor, x: Tensor, alpha: Tensor, p2: Tensor, need_dx: bool = True,
                        need_dalpha: bool = True, need_dp2: bool = True,
                        param: int = PARAM_INV_BETA
                        ) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """One launch: (dx in x.dtype, dalpha and dp2 in their inputs' shapes and dtypes, gradients
    of the parameters as given, log scale included); None where not asked for."""
    return _backward(dy, x, alpha, p2, param, need_dx, need_dalpha, need_dp2)


# ------------------------------------------------------------------------------------------------
# Input checks (once per call: the dispatcher asks them, or the entry points below)
# ------------------------------------------------------------------------------------------------
def _param_reason(name: str, p: Tensor, x: Tensor, C: int) -> Optional[str]:
    if p.device != x.device:
        if not device_ok(p.device):
            return (f"tensor on {p.device.type}: Triton kernels need CUDA tensors "
                    "(or TRITON_INTERPRET=1 for CPU tensors)")
        return f"x on {x.device} but {name} on {p.device}"
    if p.dtype not in SUPPORTED_DTYPES:
        return f"dtype {p.dtype} is not supported (fp32, fp16, bf16 only)"
    if p.shape != (C,) and p.shape != (1, C, 1):
        return f"{name} must be ({C},) or (1, {C}, 1), got {tuple(p.shape)}"
    return None


def snake_unsupported_reason(x: Tensor, alpha: Tensor) -> Optional[str]:
    """Why the Triton Snake cannot serve these inputs, or None when it can (a few attribute
    reads in the common case: it runs on every eager call)."""
    if not device_ok(x.device):
        return (f"tensor on {x.device.type}: Triton kernels need CUDA tensors "
                "(or TRITON_INTERPRET=1 for CPU tensors)")
    if x.dtype not in SUPPORTED_DTYPES:
        return f"dtype {x.dtype} is not supported (fp32, fp16, bf16 only)"
    if x.dim() != 3:
        return f"x must be (B, C, N), got {x.dim()} dims {tuple(x.shape)}"
    B, C, N = x.shape
    reason = _param_reason("alpha", alpha, x, C)
    if reason is not None:
        return reason
    if B * C * N == 0:
        return f"empty input {tuple(x.shape)}"
    if N > _MAX_TILES_PER_ROW * _FWD_BLOCK:
        return f"N={N} needs more than {_MAX_TILES_PER_ROW} tiles of {_FWD_BLOCK} (grid limit)"
    return None


def snake_beta_unsupported_reason(x: Tensor, alpha: Tensor, p2: Tensor,
                                  name: str = "inv_beta") -> Optional[str]:
    """Why the Triton SnakeBeta cannot serve these inputs, or None when it can."""
    reason = snake_unsupported_reason(x, alpha)
    if reason is None:
        reason = _param_reason(name, p2, x, x.shape[1])
    return reason


# ------------------------------------------------------------------------------------------------
# autograd.Function (eager training: the launchers, no custom-op dispatch)
# ------------------------------------------------------------------------------------------------
class SnakeFunction(torch.autograd.Function):
    """Snake (p2 None) and every SnakeBeta parametrisation."""

    @staticmethod
    def forward(ctx, x, p1, p2, param):
        ctx.save_for_backward(x, p1, p2)
        ctx.param = param
        return _forward(x, p1, p2, param)

    @staticmethod
    def backward(ctx, dy):
        x, p1, p2 = ctx.saved_tensors
        need = ctx.needs_input_grad
        return (*_backward(dy, x, p1, p2, ctx.param, need[0], need[1], need[2]), None)


# ------------------------------------------------------------------------------------------------
# torch.library ops (what torch.compile sees: opaque, with shape-only fake implementations)
# ------------------------------------------------------------------------------------------------
@torch.library.custom_op("fastaudio::snake_fwd", mutates_args=())
def _snake_fwd_op(x: Tensor, alpha: Tensor) -> Tensor:
    return _forward(x, alpha, None, PARAM_SNAKE)


@_snake_fwd_op.register_fake
def _(x, alpha):
    return x.new_empty(x.shape)


# Absent gradients come back as empty tensors: custom ops cannot return None.
@torch.library.custom_op("fastaudio::snake_bwd", mutates_args=())
def _snake_bwd_op(dy: Tensor, x: Tensor, alpha: Tensor, need_dx: bool,
                  need_dalpha: bool) -> Tuple[Tensor, Tensor]:
    dx, dalpha, _ = _backward(dy, x, alpha, None, PARAM_SNAKE, need_dx, need_dalpha, False)
    return (x.new_empty(0) if dx is None else dx,
            alpha.new_empty(0) if dalpha is None else dalpha)


@_snake_bwd_op.register_fake
def _(dy, x, alpha, need_dx, need_dalpha):
    return (x.new_empty(x.shape if need_dx else (0,)),
            alpha.new_empty(alpha.shape if need_dalpha else (0,)))


def _snake_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:3])
    ctx.param = inputs[3] if len(inputs) > 3 else PARAM_SNAKE


def _snake_op_backward(ctx, dy):
    x, alpha = ctx.saved_tensors
    need_dx, need_dalpha = ctx.needs_input_grad[:2]
    dx, dalpha = torch.ops.fastaudio.snake_bwd(dy, x, alpha, need_dx, need_dalpha)
    return (dx if need_dx else None), (dalpha if need_dalpha else None)


torch.library.register_autograd("fastaudio::snake_fwd", _snake_op_backward,
                                setup_context=_snake_setup)


@torch.library.custom_op("fastaudio::snake_beta_fwd", mutates_args=())
def _snake_beta_fwd_op(x: Tensor, alpha: Tensor, p2: Tensor, param: int) -> Tensor:
    return _forward(x, alpha, p2, param)


@_snake_beta_fwd_op.register_fake
def _(x, alpha, p2, param):
    return x.new_empty(x.shape)


@torch.library.custom_op("fastaudio::snake_beta_bwd", mutates_args=())
def _snake_beta_bwd_op(dy: Tensor, x: Tensor, alpha: Tensor, p2: Tensor, param: int,
                       need_dx: bool, need_dalpha: bool,
                       need_dp2: bool) -> Tuple[Tensor, Tensor, Tensor]:
    dx, dalpha, dp2 = _backward(dy, x, alpha, p2, param, need_dx, need_dalpha, need_dp2)
    return (x.new_empty(0) if dx is None else dx,
            alpha.new_empty(0) if dalpha is None else dalpha,
            p2.new_empty(0) if dp2 is None else dp2)


@_snake_beta_bwd_op.register_fake
def _(dy, x, alpha, p2, param, need_dx, need_dalpha, need_dp2):
    return (x.new_empty(x.shape if need_dx else (0,)),
            alpha.new_empty(alpha.shape if need_dalpha else (0,)),
            p2.new_empty(p2.shape if need_dp2 else (0,)))


def _snake_beta_op_backward(ctx, dy):
    x, alpha, p2 = ctx.saved_tensors
    need = ctx.needs_input_grad[:3]
    grads = torch.ops.fastaudio.snake_beta_bwd(dy, x, alpha, p2, ctx.param, *need)
    return (*[g if n else None for g, n in zip(grads, need)], None)


torch.library.register_autograd("fastaudio::snake_beta_fwd", _snake_beta_op_backward,
                                setup_context=_snake_setup)


# ------------------------------------------------------------------------------------------------
# Entry points
# ------------------------------------------------------------------------------------------------
def snake(x: Tensor, alpha: Tensor, *, checked: bool = False) -> Tensor:
    """Differentiable Snake (Triton); same contract as :func:`snake_ref`.

    The launcher alone in eager inference, the ``autograd.Function`` when a gradient is needed,
    the custom op under torch.compile. ``checked=True``: the dispatcher has already asked
    :func:`snake_unsupported_reason`; otherwise it is asked here and an input the kernel cannot
    serve raises KernelInputError.
    """
    if not checked:
        reason = snake_unsupported_reason(x, alpha)
        if reason is not None:
            raise KernelInputError(f"snake: {reason}")
    if torch.compiler.is_compiling():
        return torch.ops.fastaudio.snake_fwd(x, alpha)
    if torch.is_grad_enabled() and (x.requires_grad or alpha.requires_grad):
        return SnakeFunction.apply(x, alpha, None, PARAM_SNAKE)
    return _forward(x, alpha, None, PARAM_SNAKE)


_PARAM_NAMES = {PARAM_INV_BETA: "inv_beta", PARAM_BETA: "beta", PARAM_LOG: "beta"}


def snake_beta(x: Tensor, alpha: Tensor, p2: Tensor, *, param: int = PARAM_INV_BETA,
               checked: bool = False) -> Tensor:
    """Differentiable SnakeBeta (Triton). With the default ``param`` (PARAM_INV_BETA) the same
    contract as :func:`snake_beta_ref` (alpha and the divisor inv_beta in linear scale);
    PARAM_BETA takes β (inv = 1/(β + 1e-9)), PARAM_LOG takes log α and log β (stable-audio-tools'
    ``alpha_logscale``), each differentiable in the parameters as given. Paths and ``checked`` as
    in :func:`snake`."""
    if not checked:
        reason = snake_beta_unsupported_reason(x, alpha, p2, _PARAM_NAMES.get(param, "p2"))
        if reason is None and param not in _PARAM_NAMES:
            reason = f"param={param!r} is not one of {sorted(_PARAM_NAMES)}"
        if reason is not None:
            raise KernelInputError(f"snake_beta: {reason}")
    if torch.compiler.is_compiling():
        return torch.ops.fastaudio.snake_beta_fwd(x, alpha, p2, param)
    if torch.is_grad_enabled() and (x.requires_grad or alpha.requires_grad or p2.requires_grad):
        return SnakeFunction.apply(x, alpha, p2, param)
    return _forward(x, alpha, p2, param)
