"""Helpers shared by the kernel files: interpreter detection, input checks, output allocation and
the launch census the tests (and the device script) use. Nothing here imports triton, so the
dispatcher can import this file (for KernelInputError) on a machine without Triton."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, List, Optional, Tuple

import torch

# The Triton interpreter (CPU) is chosen by the environment before triton is imported.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Under the interpreter (tests) every buffer a kernel must fill starts as NaN, so a kernel that
# skips an element fails the test that reads it. On GPUs that would cost a full extra write pass,
# so it is opt-in there (FASTAUDIO_POISON=1; tests/conftest.py sets it on a GPU machine).
POISON = INTERPRET or os.environ.get("FASTAUDIO_POISON", "0") == "1"


class KernelInputError(RuntimeError):
    """A kernel was called on inputs it cannot serve; the message says why. (fastaudio.nn's
    KernelUnavailableError, what the dispatcher raises, is a subclass.)"""


def alloc(shape, dtype, device) -> torch.Tensor:
    """An output or workspace buffer: uninitialised, or NaN-filled when POISON is on."""
    if POISON:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def device_ok(device: torch.device) -> bool:
    return device.type == "cuda" or (INTERPRET and device.type == "cpu")


def device_reason(*tensors: Optional[torch.Tensor]) -> Optional[str]:
    """Why a Triton kernel cannot run on these tensors' device, or None when it can."""
    for t in tensors:
        if t is None or device_ok(t.device):
            continue
        return (f"tensor on {t.device.type}: Triton kernels need CUDA tensors "
                "(or TRITON_INTERPRET=1 for CPU tensors)")
    return None


def dtype_reason(*tensors: Optional[torch.Tensor]) -> Optional[str]:
    """Why the dtypes are unsupported (not fp32/fp16/bf16), or None."""
    for t in tensors:
        if t is not None and t.dtype not in SUPPORTED_DTYPES:
            return f"dtype {t.dtype} is not supported (fp32, fp16, bf16 only)"
    return None


def first_reason(*reasons: Optional[str]) -> Optional[str]:
    for r in reasons:
        if r is not None:
            return r
    return None


# ------------------------------------------------------------------------------------------------
# Launch census: which kernels a call launches, and whether torch ops run between them
# ------------------------------------------------------------------------------------------------
class _CountingKernel:
    """Stands in for a kernel object (``kernel[grid](...)``): logs the launch, then runs it with
    any torch dispatch mode suspended (the interpreter's own tensor copies are not the op's)."""

    def __init__(self, name: str, kernel, log: List[Tuple[str, str]]):
        self._name, self._kernel, self._log = name, kernel, log

    def __getitem__(self, grid):
        launch = self._kernel[grid]

        def run(*args, **kwargs):
            from torch.utils._python_dispatch import _disable_current_modes
            self._log.append(("launch", self._name))
            with _disable_current_modes():
                return launch(*args, **kwargs)
        return run

    def __getattr__(self, item):  # .fn, .configs, ... of the wrapped kernel
        return getattr(self._kernel, item)


@contextlib.contextmanager
def launch_census(*modules) -> Iterator[List[Tuple[str, str]]]:
    """Within the block, every launch of a ``*_kernel`` in ``modules`` is appended to the yielded
    list as ("launch", name). Launch sites look their kernels up as module globals at call time,
    so replacing the globals catches every launch; ``@triton.jit`` helpers (called from inside
    kernels) must keep their names free of the ``_kernel`` suffix and are left alone."""
    log: List[Tuple[str, str]] = []
    saved = []
    try:
        for m in modules:
            for name, obj in list(vars(m).items()):
                if name.endswith("_kernel") and hasattr(obj, "__getitem__") and \
                        not isinstance(obj, _CountingKernel):
                    saved.append((m, name, obj))
                    setattr(m, name, _CountingKernel(name, obj, log))
        yield log
    finally:
        for m, name, obj in saved:
            setattr(m, name, obj)
