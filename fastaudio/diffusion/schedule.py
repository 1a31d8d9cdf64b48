"""The v-objective on the cosine schedule, and its VDenoiser preconditioning, in one place.

Training and sampling both go through :func:`scalings`, so the two can never disagree.

Cosine schedule: α = cos(πt/2), σ = sin(πt/2) for t in [0, 1]. Samplers work in the
variance-exploding parameterisation σ_VE = σ/α = tan(πt/2); k-diffusion's VDenoiser turns the
v-prediction network into a denoiser with

    c_skip = 1/(σ²+1),  c_out = −σ/√(σ²+1),  c_in = 1/√(σ²+1),  t = atan(σ)·2/π,
    denoised = c_skip·x + c_out·v(c_in·x, t).

For training, x_t = α·x0 + σ·ε and the target is v = α·ε − σ·x0, which is exactly
(x0 − c_skip·x_VE)/c_out for x_VE = x0 + σ_VE·ε.
"""
from __future__ import annotations

import math
from typing import Callable, Tuple

import torch
from torch import Tensor


def t_to_alpha_sigma(t: Tensor) -> Tuple[Tensor, Tensor]:
    return torch.cos(t * math.pi / 2), torch.sin(t * math.pi / 2)


def sigma_to_t(sigma: Tensor) -> Tensor:
    """VE sigma → diffusion time t in [0, 1] (t = atan(σ)·2/π)."""
    return torch.atan(sigma) * (2 / math.pi)


def t_to_sigma(t: Tensor) -> Tensor:
    return torch.tan(t * math.pi / 2)


def scalings(sigma: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """(c_skip, c_out, c_in) of the VDenoiser for VE sigma (any shape)."""
    s2 = sigma * sigma + 1
    c_skip = 1 / s2
    c_out = -sigma * torch.rsqrt(s2)
    c_in = torch.rsqrt(s2)
    return c_skip, c_out, c_in


def _expand(c: Tensor, x: Tensor) -> Tensor:
    return c.reshape(c.shape + (1,) * (x.dim() - c.dim()))


class VDenoiser:
    """Wraps ``v_model(x, t, **kw)`` into ``denoiser(x, sigma, **kw)`` (k-diffusion's contract)."""

    def __init__(self, v_model: Callable[..., Tensor]):
        self.model = v_model

    def __call__(self, x: Tensor, sigma: Tensor, **kwargs) -> Tensor:
        # at least fp32 (bf16 sigmas would round the scalings), fp64 kept when given
        precision = torch.promote_types(sigma.dtype, torch.float32)
        c_skip, c_out, c_in = (_expand(c, x) for c in scalings(sigma.to(precision)))
        v = self.model((x * c_in).to(x.dtype), sigma_to_t(sigma), **kwargs)
        return (x * c_skip + v.to(x.dtype) * c_out).to(x.dtype)


def v_diffusion_inputs(x0: Tensor, t: Tensor, noise: Tensor) -> Tuple[Tensor, Tensor]:
    """Training pair (x_t, target v) for clean latents x0 at times t (B,) and noise ε."""
    alpha, sigma = (_expand(c, x0) for c in t_to_alpha_sigma(t.to(x0.dtype)))
    return alpha * x0 + sigma * noise, alpha * noise - sigma * x0
