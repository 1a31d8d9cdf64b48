"""GroupNorm with the U-Net's FiLM and SiLU fused in, dispatched to Triton or PyTorch.

``GroupNorm`` keeps ``torch.nn.GroupNorm``'s parameter names (weight, bias) so checkpoints load
unchanged; its forward takes the optional FiLM ``scale``/``shift`` (B, C) and a ``silu`` flag,
which the Triton kernel applies in the same pass over memory.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dispatch import autocast_dtype, use_triton


_kernel = None  # fastaudio.kernels.group_norm once imported (a module lookup per call saved)


def _triton_reason(x, num_groups, weight, bias, scale, shift) -> Optional[str]:
    global _kernel
    if _kernel is None:
        try:
            from fastaudio.kernels import group_norm as module
        except ImportError as e:  # triton missing on this platform
            return f"Triton kernels unavailable ({e})"
        _kernel = module
    return _kernel.group_norm_unsupported_reason(x, num_groups, weight, bias, scale, shift)


def group_norm_torch(x: Tensor, num_groups: int, weight: Optional[Tensor], bias: Optional[Tensor],
                     eps: float = 1e-5, scale: Optional[Tensor] = None,
                     shift: Optional[Tensor] = None, silu: bool = False) -> Tensor:
    """The PyTorch path: the same math as the kernel, in the input's dtype."""
    y = F.group_norm(x, num_groups, weight, bias, eps)
    if scale is not None:
        y = y * (1 + scale.unsqueeze(-1))
    if shift is not None:
        y = y + shift.unsqueeze(-1)
    return F.silu(y) if silu else y


def group_norm(x: Tensor, num_groups: int, weight: Optional[Tensor], bias: Optional[Tensor],
               eps: float = 1e-5, scale: Optional[Tensor] = None, shift: Optional[Tensor] = None,
               silu: bool = False) -> Tensor:
    """GN(x)·weight + bias, then ·(1 + scale) + shift (FiLM), then SiLU; x is (B, C, L)."""
    if autocast_dtype(x.device.type) is not None:  # parameters follow the activations' dtype
        weight, bias, scale, shift = (None if p is None else p.to(x.dtype)
                                      for p in (weight, bias, scale, shift))
    if use_triton("group_norm", x.is_cuda,
                  lambda: _triton_reason(x, num_groups, weight, bias, scale, shift)):
        # checked: use_triton asked the kernel's unsupported-reason function just now, once
        return _kernel.group_norm(x, num_groups, weight, bias, eps, scale, shift, silu,
                                  checked=True)
    return group_norm_torch(x, num_groups, weight, bias, eps, scale, shift, silu)


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` whose forward can fuse FiLM (scale, shift) and SiLU."""

    def forward(self, x: Tensor, scale: Optional[Tensor] = None, shift: Optional[Tensor] = None,
                silu: bool = False) -> Tensor:
        if x.dim() != 3:
            raise ValueError(f"GroupNorm expects (B, C, L), got shape {tuple(x.shape)}")
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps, scale, shift, silu)
