"""Helpers shared by the kernel files: interpreter detection and input checks."""
from __future__ import annotations

import os
from typing import Optional

import torch

# The Triton interpreter (CPU) is chosen by the environment before triton is imported.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class KernelInputError(RuntimeError):
    """A kernel was called on inputs it cannot serve; the message says why. (fastaudio.nn's
    KernelUnavailableError, what the dispatcher raises, is a subclass.)"""


def device_reason(*tensors: Optional[torch.Tensor]) -> Optional[str]:
    """Why a Triton kernel cannot run on these tensors' device, or None when it can."""
    for t in tensors:
        if t is None:
            continue
        if t.device.type == "cuda":
            continue
        if t.device.type == "cpu" and INTERPRET:
            continue
        return (f"tensor on {t.device.type}: Triton kernels need CUDA tensors "
                "(or TRITON_INTERPRET=1 for CPU tensors)")
    return None


def dtype_reason(*tensors: Optional[torch.Tensor]) -> Optional[str]:
    """Why the dtypes are unsupported (not fp32/fp16/bf16, or mixed), or None."""
    dtypes = {t.dtype for t in tensors if t is not None}
    for dt in dtypes:
        if dt not in SUPPORTED_DTYPES:
            return f"dtype {dt} is not supported (fp32, fp16, bf16 only)"
    return None


def first_reason(*reasons: Optional[str]) -> Optional[str]:
    for r in reasons:
        if r is not None:
            return r
    return None
