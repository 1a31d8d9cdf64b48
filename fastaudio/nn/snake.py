"""Snake activation (descript-audio-codec's Snake1d), dispatched to Triton or PyTorch.

``y = x + 1/(α + 1e-9) · sin²(α·x)`` with one α per channel. At the VAE decoder's last stages
this runs over ~5 G elements for 95 s of audio, so it is memory-bound: the Triton kernel does the
forward and the backward (dx and dα) in one pass each.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .dispatch import autocast_dtype, use_triton


def _triton_reason(x, alpha) -> Optional[str]:
    try:
        from fastaudio.kernels.snake import snake_unsupported_reason
    except ImportError as e:
        return f"Triton kernels unavailable ({e})"
    return snake_unsupported_reason(x, alpha)


def snake_torch(x: Tensor, alpha: Tensor) -> Tensor:
    alpha = alpha.reshape(1, -1, 1)
    if torch.is_grad_enabled() and (x.requires_grad or alpha.requires_grad):
        return x + (alpha + 1e-9).reciprocal() * torch.sin(alpha * x).pow(2)
    # inference: the same ops in place on one temporary instead of four (on a CPU this chain is
    # memory-bound: ~20 % of the decoder's time at the top stages)
    y = torch.mul(alpha, x)
    return y.sin_().square_().mul_((alpha + 1e-9).reciprocal()).add_(x)


def snake(x: Tensor, alpha: Tensor) -> Tensor:
    if autocast_dtype(x.device.type) is not None:
        alpha = alpha.to(x.dtype)
    if use_triton("snake", x.is_cuda, lambda: _triton_reason(x, alpha)):
        from fastaudio.kernels.snake import snake as snake_triton
        return snake_triton(x, alpha)
    return snake_torch(x, alpha)


class Snake1d(nn.Module):
    """Parameter ``alpha`` of shape (1, C, 1), initialised to 1, as in descript-audio-codec."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return snake(x, self.alpha)
