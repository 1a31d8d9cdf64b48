"""Which implementation serves an op: our Triton kernel or the plain PyTorch reference.

The choice is made per call from one setting, ``FASTAUDIO_KERNELS`` (or ``set_kernel_mode``):

* ``auto``   – Triton on CUDA tensors the kernel can serve, PyTorch otherwise (CPU included);
  except ops whose PyTorch path was measured faster on a GPU (``auto_torch_reason``): the convs,
  where cuDNN ran 1.4-5.2x ahead of our Triton conv on an H100 (bench.md, 2026-11-22).
* ``triton`` – strict: every call must run the Triton kernel; an input it cannot serve raises
  :class:`KernelUnavailableError` naming why. With ``TRITON_INTERPRET=1`` CPU tensors run the
  kernels in the interpreter, which is how the tests exercise them.
* ``torch``  – always the PyTorch reference.

``FASTAUDIO_STRICT=1`` additionally turns an ``auto`` fallback on a CUDA tensor into an error,
for benchmarks that must not time PyTorch while claiming Triton.

Validation happens here, once per call: :func:`use_triton` asks the kernel's unsupported-reason
function (only when the answer matters) and a True answer lets the layer call the kernel's entry
point with ``checked=True``, which then goes straight to the launchers in eager inference, to the
``autograd.Function`` when a gradient is needed, and to the ``torch.library`` op under
torch.compile.

Every (op, path, reason) is logged once at INFO (``fastaudio -v``) and counted in
:data:`path_counts`, so users can see which path ran. Under CUDA graphs and torch.compile the
choice is made once, at capture/trace time, so the counters count that, not the replays.
"""
from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from typing import Callable, Optional
from ..errors import FastAudioError
from ..strict import strict  # noqa: F401  (re-exported: dispatch.strict())
from fastaudio.kernels._common import KernelInputError

log = logging.getLogger("fastaudio.kernels")

KERNEL_MODES = ("auto", "triton", "torch")

_mode_override: Optional[str] = None
_logged: set = set()
_lock = threading.Lock()
path_counts: Counter = Counter()


class KernelUnavailableError(FastAudioError, KernelInputError):
    """A strict setting asked for a fast path that cannot serve this input. Also what a kernel
    called directly raises (its base, ``KernelInputError``, lives with the kernels, which import
    nothing from fastaudio)."""


def _validate_mode(mode: str, source: str) -> str:
    if mode not in KERNEL_MODES:
        raise ValueError(f"{source}={mode!r} is not one of {', '.join(KERNEL_MODES)}")
    return mode


_env_mode = (None, "auto")  # (raw FASTAUDIO_KERNELS value, its parsed mode): parsed once per value


def kernel_mode() -> str:
    """The active kernel mode: the override from :func:`set_kernel_mode`, else the env var."""
    global _env_mode
    if _mode_override is not None:
        return _mode_override
    raw = os.environ.get("FASTAUDIO_KERNELS")
    if raw != _env_mode[0]:  # read on every call (tests change it), parsed when it changes
        mode = _validate_mode((raw or "auto").strip().lower(), "FASTAUDIO_KERNELS")
        _env_mode = (raw, mode)
    return _env_mode[1]


def set_kernel_mode(mode: Optional[str]) -> None:
    """Override ``FASTAUDIO_KERNELS`` for this process (None restores the env var)."""
    global _mode_override
    _mode_override = None if mode is None else _validate_mode(mode, "kernel mode")


def record_path(op: str, path: str, reason: Optional[str] = None) -> None:
    """Count a path taken and log it the first time this (op, path, reason) is seen.

    Under torch.compile the choice is made once, while tracing, and baked into the graph: nothing
    is counted or logged then (a lock and a log call have no place in a graph)."""
    if _compiling():
        return
    key = (op, path, reason)
    with _lock:  # ~0.2 us uncontended: this runs on every eager call of every op
        path_counts[(op, path)] += 1
        if key in _logged:
            return
        _logged.add(key)
    if reason:
        log.info("%s: %s path (%s)", op, path, reason)
    else:
        log.info("%s: %s path", op, path)


def _compiling() -> bool:
    return _torch().compiler.is_compiling()


def _torch():
    # torch is imported lazily (this module is read by tools that never touch a tensor); the
    # module object is cached after the first call, as the import statement would look it up
    global _torch_module
    if _torch_module is None:
        import torch
        _torch_module = torch
    return _torch_module


_torch_module = None


def autocast_dtype(device_type: str):
    """The autocast dtype when autocast is on for this device type, else None. Our custom ops are
    invisible to autocast, so the layers cast their operands themselves."""
    torch = _torch()
    if not torch.amp.is_autocast_available(device_type):  # meta tensors (FLOP counting, sizes)
        return None
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None



def reset_path_log() -> None:
    """Forget what was logged and counted (tests use this)."""
    with _lock:
        _logged.clear()
        path_counts.clear()


def use_triton(op: str, is_cuda: bool, reason_fn: Callable[[], Optional[str]],
               auto_torch_reason: Optional[str] = None) -> bool:
    """Decide whether ``op`` runs its Triton kernel for this call.

    ``reason_fn`` returns why the kernel cannot serve the input (None when it can); it is only
    evaluated when the answer matters, so the torch mode costs nothing. ``auto_torch_reason``:
    why ``auto`` takes the PyTorch path on CUDA even where the kernel could serve (a measurement);
    that is the preferred path, not a fallback, so strict mode lets it pass.
    """
    mode = kernel_mode()
    if mode == "torch":
        record_path(op, "torch", "FASTAUDIO_KERNELS=torch")
        return False
    if mode == "triton":
        reason = reason_fn()
        if reason is not None:
            raise KernelUnavailableError(
                f"{op}: FASTAUDIO_KERNELS=triton but the Triton kernel cannot serve this input: "
                f"{reason}")
        record_path(op, "triton")
        return True
    # auto
    if not is_cuda:
        record_path(op, "torch", "CPU tensors: Triton kernels run on CUDA")
        return False
    if auto_torch_reason is not None:
        record_path(op, "torch", auto_torch_reason)
        return False
    reason = reason_fn()
    if reason is not None:
        if strict():
            raise KernelUnavailableError(f"{op}: FASTAUDIO_STRICT=1 forbids the fallback: {reason}")
        record_path(op, "torch", reason)
        return False
    record_path(op, "triton")
    return True
