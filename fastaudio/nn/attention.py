"""Scaled dot-product attention with a backend dispatcher that always says which path ran.

``attention(q, k, v, key_padding_mask=None, backend="auto", mask_mode="zero")``: q (B, H, Lq, D),
k/v (B, H, Lk, D), key_padding_mask (B, Lk) bool (True keeps), softmax scale 1/sqrt(D).

Mask modes: ``"zero"`` is stable-audio-tools' (masked keys and values are multiplied by 0: their
logits are 0, they keep softmax weight with a zero value) and is what SA1.0 checkpoints expect;
``"neg_inf"`` excludes masked keys (a row with every key masked outputs 0).

Backends
--------
* ``flash_attn`` – the flash-attn package (CUDA, sm80+, fp16/bf16, head dim a multiple of 8 up to
  256; (B, L, H, D) layout, so q/k/v are passed as transposed views). "zero" masks zero k and v and
  run the dense kernel; "neg_inf" masks go through its varlen API (which needs two host syncs).
* ``xformers`` – ``xformers.ops.memory_efficient_attention``; "neg_inf" masks as an additive bias.
* ``sdpa``     – ``F.scaled_dot_product_attention`` inside ``sdpa_kernel``: its FLASH backend on
  every GPU it supports (the reference enabled it on sm80 only) when there is no mask to pass
  ("zero" masks are applied to k and v first), EFFICIENT then CUDNN with a boolean mask.
* ``triton``   – fastaudio's FlashAttention-2 kernels (``fastaudio.kernels.attention``), which
  handle both mask modes in-kernel and split head dim 80 into 64 + 16 instead of padding it.
* ``math``     – the plain reference, materialising the (Lq, Lk) scores in fp32.

``"auto"`` order (:func:`auto_order`)
-------------------------------------
CPU: ``sdpa``, ``math``. CUDA: ``flash_attn``, ``sdpa``, ``triton``, ``math``, except that a
"neg_inf" mask puts ``triton`` first (it applies that mask in-kernel); ``xformers`` only when
forced (``backend="xformers"``, ``FASTAUDIO_ATTENTION=xformers`` or
``set_attention_backend("xformers")``). Why (H100 figures, the Triton kernel's fault in SA1.0
generation): docs/benchmarking.md#attention-backends.

Settings: ``backend=`` other than "auto" forces a backend; with "auto" the setting
``set_attention_backend(name)`` or else ``FASTAUDIO_ATTENTION`` (auto|flash_attn|xformers|sdpa|
triton|math) is read, and a named backend there is forced too. A forced backend that cannot serve
the input raises :class:`KernelUnavailableError` naming why. The path taken is logged once per
(backend, reason) via ``dispatch.record_path("attention", ...)``. With ``FASTAUDIO_STRICT=1`` an
automatic choice on CUDA that is not the preferred backend (the first in the order above that
this machine has, see :func:`available_backends`) raises instead of falling back.
"""
from __future__ import annotations

import functools
import os
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import dispatch
from .dispatch import KernelUnavailableError

BACKENDS = ("flash_attn", "xformers", "sdpa", "triton", "math")
SETTINGS = ("auto",) + BACKENDS
MASK_MODES = ("zero", "neg_inf")

_backend_override: Optional[str] = None


# ------------------------------------------------------------------------------------------------
# Settings
# ------------------------------------------------------------------------------------------------
def _validate_setting(name: str, source: str) -> str:
    if name not in SETTINGS:
        raise ValueError(f"{source}={name!r} is not one of {', '.join(SETTINGS)}")
    return name


def set_attention_backend(name: Optional[str]) -> None:
    """Override ``FASTAUDIO_ATTENTION`` for this process (None restores the env var)."""
    global _backend_override
    _backend_override = None if name is None else _validate_setting(name, "attention backend")


def attention_backend_setting() -> Tuple[str, str]:
    """(setting, where it came from): the override, else ``FASTAUDIO_ATTENTION``, else auto."""
    if _backend_override is not None:
        return _backend_override, "set_attention_backend"
    env = os.environ.get("FASTAUDIO_ATTENTION", "auto").strip().lower() or "auto"
    return _validate_setting(env, "FASTAUDIO_ATTENTION"), "FASTAUDIO_ATTENTION"


# ------------------------------------------------------------------------------------------------
# What this machine has (cached: imports and device queries are not free)
# ------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _import_reason(module: str) -> Optional[str]:
    try:
        __import__(module)
    except ImportError:
        return "not installed"
    except Exception as e:  # e.g. a wheel built for another CUDA/torch
        return f"import failed: {type(e).__name__}: {e}"
    return None


@functools.lru_cache(maxsize=None)
def _capability(device_index: int) -> Tuple[int, int]:
    return torch.cuda.get_device_capability(device_index)


def _device_capability(device: torch.device) -> Tuple[int, int]:
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _capability(index)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _machine_reason(name: str, device: torch.device) -> Optional[str]:
    """Why ``name`` cannot run on this machine and device at all, or None."""
    cuda = device.type == "cuda"
    if name == "flash_attn":
        reason = _import_reason("flash_attn")
        if reason is not None:
            return f"flash-attn {reason}"
        if not cuda:
            return f"flash-attn needs CUDA tensors, got {device.type}"
        major, minor = _device_capability(device)
        if major < 8:
            return f"flash-attn 2 needs sm80 or newer, this GPU is sm{major}{minor}"
        return None
    if name == "xformers":
        reason = _import_reason("xformers.ops")
        if reason is not None:
            return f"xformers {reason}"
        if not cuda:
            return f"xformers needs CUDA tensors, got {device.type}"
        return None
    if name == "triton":
        reason = _import_reason("fastaudio.kernels.attention")
        if reason is not None:
            return f"Triton kernels {reason}"
        if not cuda and not (device.type == "cpu" and _interpreting()):
            return f"Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 on CPU), got {device.type}"
        return None
    if name == "sdpa":
        return None
    if name == "math":
        reason = _import_reason("fastaudio.kernels.attention")
        return None if reason is None else f"reference module {reason}"
    raise ValueError(f"unknown attention backend {name!r}")


def available_backends(device: Optional[torch.device | str] = None) -> Dict[str, Optional[str]]:
    """name -> None when usable on ``device`` (default: cuda if present, else cpu), else why not."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    return {name: _machine_reason(name, device) for name in BACKENDS}


# ------------------------------------------------------------------------------------------------
# Per-input checks
# ------------------------------------------------------------------------------------------------
def _validate(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor],
              mask_mode: str) -> Optional[Tensor]:
    """Raise ValueError for malformed inputs; returns the mask as bool (or None)."""
    if mask_mode not in MASK_MODES:
        raise ValueError(f"mask_mode={mask_mode!r} is not one of {', '.join(MASK_MODES)}")
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"attention expects 4-D (B, H, L, D) tensors, got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    B, H, _, D = q.shape
    if k.shape[:2] != (B, H) or v.shape[:3] != k.shape[:3] or k.shape[-1] != D:
        raise ValueError(f"attention shapes do not match: q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    if key_padding_mask is None:
        return None
    if tuple(key_padding_mask.shape) != (B, k.shape[2]):
        raise ValueError(f"key_padding_mask must be (B, Lk) = {(B, k.shape[2])}, "
                         f"got {tuple(key_padding_mask.shape)}")
    if key_padding_mask.dtype == torch.bool:
        return key_padding_mask
    if key_padding_mask.is_floating_point() or key_padding_mask.is_complex():
        raise ValueError(f"key_padding_mask must be bool (True keeps), got {key_padding_mask.dtype}")
    return key_padding_mask != 0  # integer 0/1 masks, as tokenizers produce them


def _flash_attn_reason(q, k, v, mask, mask_mode) -> Optional[str]:
    if q.dtype not in (torch.float16, torch.bfloat16) or len({q.dtype, k.dtype, v.dtype}) != 1:
        return f"flash-attn takes fp16/bf16 only, got {q.dtype}"
    D = q.shape[-1]
    if D % 8 != 0 or D > 256 or v.shape[-1] != D:
        return f"flash-attn needs one head dim, a multiple of 8 up to 256, got {D}"
    return None


def _xformers_reason(q, k, v, mask, mask_mode) -> Optional[str]:
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"xformers takes fp16/bf16/fp32, got {q.dtype}"
    if len({q.dtype, k.dtype, v.dtype}) != 1:
        return "xformers needs one dtype for q, k, v"
    return None


def _sdpa_backends(q: Tensor, masked: bool) -> list:
    from torch.nn.attention import SDPBackend
    if not q.is_cuda:
        return [SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]
    if not masked:
        return [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                SDPBackend.CUDNN_ATTENTION]
    # FLASH takes no attn_mask. cuDNN's masked path is newer and had correctness bugs, so second.
    return [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]


def _sdpa_reason(q, k, v, mask, mask_mode) -> Optional[str]:
    if not q.is_cuda:
        return None  # the CPU path includes MATH, which takes everything
    masked = mask is not None and mask_mode == "neg_inf"
    try:
        from torch.backends.cuda import (SDPAParams, can_use_cudnn_attention,
                                         can_use_efficient_attention, can_use_flash_attention)
        attn_mask = mask[:, None, None, :] if masked else None
        params = SDPAParams(q, k, v, attn_mask, 0.0, False, False)
        checks = {"FLASH_ATTENTION": can_use_flash_attention,
                  "EFFICIENT_ATTENTION": can_use_efficient_attention,
                  "CUDNN_ATTENTION": can_use_cudnn_attention}
        wanted = [b.name for b in _sdpa_backends(q, masked)]
        if any(checks[name](params, False) for name in wanted):
            return None
    except (ImportError, TypeError, AttributeError):
        return None  # this torch cannot tell in advance; SDPA itself will raise if it cannot
    return (f"none of SDPA's {', '.join(wanted)} kernels take {q.dtype} at head dim "
            f"{q.shape[-1]}{' with a mask' if masked else ''} on this GPU")


def _triton_reason(q, k, v, mask, mask_mode) -> Optional[str]:
    from fastaudio.kernels.attention import flash_attention_unsupported_reason
    return flash_attention_unsupported_reason(q, k, v, mask)


_INPUT_REASONS: Dict[str, Callable[..., Optional[str]]] = {
    "flash_attn": _flash_attn_reason,
    "xformers": _xformers_reason,
    "sdpa": _sdpa_reason,
    "triton": _triton_reason,
    "math": lambda q, k, v, mask, mask_mode: None,
}


def unsupported_reason(name: str, q: Tensor, k: Tensor, v: Tensor,
                       key_padding_mask: Optional[Tensor] = None,
                       mask_mode: str = "zero") -> Optional[str]:
    """Why backend ``name`` cannot serve these inputs here, or None when it can."""
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; one of {', '.join(BACKENDS)}")
    return _machine_reason(name, q.device) or _INPUT_REASONS[name](q, k, v, key_padding_mask,
                                                                   mask_mode)


def auto_order(q: Tensor, key_padding_mask: Optional[Tensor] = None,
               mask_mode: str = "zero") -> List[str]:
    """The backends "auto" tries, fastest first, for these inputs (see the module docstring)."""
    if not q.is_cuda:
        return ["sdpa", "math"]
    if key_padding_mask is not None and mask_mode == "neg_inf":
        return ["triton", "flash_attn", "sdpa", "math"]
    # sdpa before triton at every head dim: docs/benchmarking.md#attention-backends
    return ["flash_attn", "sdpa", "triton", "math"]


# ------------------------------------------------------------------------------------------------
# Backends
# ------------------------------------------------------------------------------------------------
def _zero_masked(k: Tensor, v: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor]:
    """stable-audio-tools' cross-attention mask: k * mask, v * mask."""
    keep = mask[:, None, :, None].to(k.dtype)
    return k * keep, v * keep


def _nonempty_keep(mask: Tensor) -> Tuple[Tensor, Tensor]:
    """(keep, has_key): rows whose batch item keeps no key attend to every key instead, so no
    backend sees an all-masked row (NaN in forward or backward); their output is zeroed after."""
    has_key = mask.any(-1)  # (B,)
    return mask | ~has_key[:, None], has_key


def _run_flash_attn(q, k, v, mask, mask_mode, scale):
    from flash_attn import flash_attn_func, flash_attn_varlen_func
    if mask is not None and mask_mode == "zero":
        k, v = _zero_masked(k, v, mask)
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))  # (B, L, H, D) views, stride(-1) == 1
    if mask is None or mask_mode == "zero":
        return flash_attn_func(qt, kt, vt, softmax_scale=scale).transpose(1, 2)
    B, Lq, H, D = qt.shape
    Lk = kt.shape[1]
    keep, has_key = _nonempty_keep(mask)
    idx = keep.reshape(-1).nonzero().squeeze(1)  # host sync: varlen needs the packed lengths
    seqlens_k = keep.sum(-1, dtype=torch.int32)
    cu_k = F.pad(seqlens_k.cumsum(0, dtype=torch.int32), (1, 0))
    cu_q = torch.arange(0, B + 1, dtype=torch.int32, device=q.device) * Lq
    out = flash_attn_varlen_func(
        qt.reshape(B * Lq, H, D), kt.reshape(B * Lk, H, D).index_select(0, idx),
        vt.reshape(B * Lk, H, D).index_select(0, idx), cu_q, cu_k, Lq, int(seqlens_k.max()),
        softmax_scale=scale)
    out = out.view(B, Lq, H, D).transpose(1, 2)
    return torch.where(has_key[:, None, None, None], out, 0.0)


def _run_xformers(q, k, v, mask, mask_mode, scale):
    import xformers.ops as xops
    bias = None
    has_key = None
    if mask is not None and mask_mode == "zero":
        k, v = _zero_masked(k, v, mask)
    elif mask is not None:
        keep, has_key = _nonempty_keep(mask)
        B, H, Lq, _ = q.shape
        Lk = k.shape[2]
        # xformers wants the bias row 16-byte aligned: slice it out of a wider buffer.
        wide = torch.zeros(B, 1, 1, (Lk + 7) // 8 * 8, dtype=q.dtype, device=q.device)
        bias = wide[..., :Lk].masked_fill(~keep[:, None, None, :], float("-inf"))
        bias = bias.expand(B, H, Lq, Lk)
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    out = xops.memory_efficient_attention(qt, kt, vt, attn_bias=bias, scale=scale).transpose(1, 2)
    if has_key is not None:
        out = torch.where(has_key[:, None, None, None], out, 0.0)
    return out


def _run_sdpa(q, k, v, mask, mask_mode, scale):
    from torch.nn.attention import sdpa_kernel
    attn_mask = None
    has_key = None
    if mask is not None and mask_mode == "zero":
        k, v = _zero_masked(k, v, mask)  # then no mask to pass: SDPA's FLASH kernel can run
    elif mask is not None:
        keep, has_key = _nonempty_keep(mask)
        attn_mask = keep[:, None, None, :]  # (B, 1, 1, Lk) broadcast over heads and queries
    with sdpa_kernel(_sdpa_backends(q, attn_mask is not None), set_priority=True):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
    if has_key is not None:
        out = torch.where(has_key[:, None, None, None], out, 0.0)
    return out


def _run_triton(q, k, v, mask, mask_mode, scale):
    from fastaudio.kernels.attention import flash_attention
    return flash_attention(q, k, v, mask, mask_mode=mask_mode, softmax_scale=scale)


def _run_math(q, k, v, mask, mask_mode, scale):
    from fastaudio.kernels.attention import attention_ref
    return attention_ref(q, k, v, mask, mask_mode=mask_mode, softmax_scale=scale, upcast=True)


_RUN = {"flash_attn": _run_flash_attn, "xformers": _run_xformers, "sdpa": _run_sdpa,
        "triton": _run_triton, "math": _run_math}


# ------------------------------------------------------------------------------------------------
# Dispatch
# ------------------------------------------------------------------------------------------------
def _record(backend: str, reason: str) -> None:
    # The choice is made while torch.compile traces; the log's lock would break the graph.
    if not torch.compiler.is_compiling():
        dispatch.record_path("attention", backend, reason)


def select_backend(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor] = None,
                   backend: str = "auto", mask_mode: str = "zero") -> Tuple[str, str]:
    """(backend that will run, why). Raises KernelUnavailableError for a forced backend that
    cannot serve the input, or for a non-preferred automatic choice under FASTAUDIO_STRICT=1."""
    source = "backend argument"
    if backend == "auto":
        backend, source = attention_backend_setting()
    else:
        _validate_setting(backend, "backend")
    if backend != "auto":
        reason = unsupported_reason(backend, q, k, v, key_padding_mask, mask_mode)
        if reason is not None:
            raise KernelUnavailableError(
                f"attention: backend {backend!r} (from {source}) cannot serve this input: {reason}")
        return backend, f"forced by {source}"

    skipped = []
    preferred = None
    for name in auto_order(q, key_padding_mask, mask_mode):
        machine = _machine_reason(name, q.device)
        if machine is not None:  # not on this machine at all (e.g. flash-attn not installed)
            skipped.append(f"{name}: {machine}")
            continue
        preferred = preferred or name
        reason = _INPUT_REASONS[name](q, k, v, key_padding_mask, mask_mode)
        if reason is None:
            if name != preferred and q.is_cuda and dispatch.strict():
                raise KernelUnavailableError(
                    f"attention: FASTAUDIO_STRICT=1 forbids falling back from {preferred} to "
                    f"{name}: {'; '.join(skipped)}")
            if not q.is_cuda:
                return name, "auto on CPU"
            return name, "auto" if not skipped else "auto; " + "; ".join(skipped)
        skipped.append(f"{name}: {reason}")
    raise KernelUnavailableError("attention: no backend can serve this input: " + "; ".join(skipped))


def attention(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor] = None,
              backend: str = "auto", mask_mode: str = "zero") -> Tensor:
    """softmax(q k^T / sqrt(D)) v on the fastest backend that can serve it; (B, H, Lq, D)."""
    key_padding_mask = _validate(q, k, v, key_padding_mask, mask_mode)
    name, why = select_backend(q, k, v, key_padding_mask, backend, mask_mode)
    _record(name, why)
    return _RUN[name](q, k, v, key_padding_mask, mask_mode, q.shape[-1] ** -0.5)
