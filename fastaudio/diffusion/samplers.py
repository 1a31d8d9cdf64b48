"""Samplers with k-diffusion's contract: ``sample_x(model, x, sigmas, extra_args=None,
callback=None, disable=None)`` where ``model(x, sigma, **extra_args)`` returns the denoised
estimate.

Every sampler here is a linear multistep update, so each step is

    x ← a·x + b·D_i + c·D_{i−1} + d·D_{i−2} + e·z,   z ~ N(0, I)

with (a, b, c, d, e) depending only on the sigmas. They are computed on the host, in float64,
before the loop (:func:`make_plan`), so no step waits on the device and a step can be captured
once in a CUDA graph and replayed with a new coefficient row (:mod:`.cuda_graph`). The formulas
are k-diffusion's, step for step; the SDE noise comes from a seeded ``torch.Generator`` (no
torchsde) – independent Gaussians per step, which is what the Brownian-tree sampler yields for
non-overlapping intervals.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import trange

from ..errors import FastAudioError


class SamplerError(FastAudioError, ValueError):
    pass


@dataclass(frozen=True)
class Step:
    """One step: evaluate the denoiser at ``sigma``, then x ← a·x + b·D + c·D₁ + d·D₂ + e·z."""
    sigma: float
    a: float
    b: float
    c: float = 0.0
    d: float = 0.0
    e: float = 0.0

    def row(self) -> List[float]:
        return [self.sigma, self.a, self.b, self.c, self.d, self.e]


def _as_list(sigmas: Sequence[float] | Tensor) -> List[float]:
    if isinstance(sigmas, Tensor):
        sigmas = sigmas.detach().double().cpu().tolist()
    sigmas = [float(s) for s in sigmas]
    if len(sigmas) < 2:
        raise SamplerError("sigmas need at least two entries (a start and an end)")
    if any(s < 0 or not math.isfinite(s) for s in sigmas) or \
            any(a <= b for a, b in zip(sigmas, sigmas[1:])):
        raise SamplerError("sigmas must be finite, non-negative and strictly decreasing")
    return sigmas


def _final(sigma: float) -> Step:
    return Step(sigma, 0.0, 1.0)  # σ_next = 0: the denoised estimate is the sample


def plan_euler(sigmas) -> List[Step]:
    s = _as_list(sigmas)
    return [Step(s[i], s[i + 1] / s[i], 1 - s[i + 1] / s[i]) for i in range(len(s) - 1)]


def plan_dpmpp_2m(sigmas) -> List[Step]:
    s = _as_list(sigmas)
    steps = []
    for i in range(len(s) - 1):
        if s[i + 1] == 0:
            steps.append(_final(s[i]))
            continue
        h = math.log(s[i] / s[i + 1])
        ratio, phi = s[i + 1] / s[i], -math.expm1(-h)
        if i == 0:
            steps.append(Step(s[i], ratio, phi))
        else:
            r = math.log(s[i - 1] / s[i]) / h
            steps.append(Step(s[i], ratio, phi * (1 + 1 / (2 * r)), -phi / (2 * r)))
    return steps


def plan_dpmpp_2m_sde(sigmas, eta: float = 1.0, s_noise: float = 1.0) -> List[Step]:
    """Midpoint variant, as k-diffusion's default."""
    s = _as_list(sigmas)
    steps, h_last = [], None
    for i in range(len(s) - 1):
        if s[i + 1] == 0:
            steps.append(_final(s[i]))
            continue
        h = math.log(s[i] / s[i + 1])
        eta_h = eta * h
        a = s[i + 1] / s[i] * math.exp(-eta_h)
        phi = -math.expm1(-h - eta_h)
        b, c = phi, 0.0
        if h_last is not None:
            extra = 0.5 * phi / (h_last / h)
            b, c = b + extra, -extra
        e = s[i + 1] * math.sqrt(-math.expm1(-2 * eta_h)) * s_noise if eta else 0.0
        steps.append(Step(s[i], a, b, c, 0.0, e))
        h_last = h
    return steps


def plan_dpmpp_3m_sde(sigmas, eta: float = 1.0, s_noise: float = 1.0) -> List[Step]:
    s = _as_list(sigmas)
    steps, h_1, h_2 = [], None, None
    for i in range(len(s) - 1):
        if s[i + 1] == 0:
            steps.append(_final(s[i]))
            continue
        h = math.log(s[i] / s[i + 1])
        h_eta = h * (eta + 1)
        a = math.exp(-h_eta)
        coef = np.array([-math.expm1(-h_eta), 0.0, 0.0])  # over (D, D1, D2)
        phi_2 = math.expm1(-h_eta) / h_eta + 1
        if h_2 is not None:
            r0, r1 = h_1 / h, h_2 / h
            d1_0 = np.array([1 / r0, -1 / r0, 0.0])
            d1_1 = np.array([0.0, 1 / r1, -1 / r1])
            d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi_3 = phi_2 / h_eta - 0.5
            coef = coef + phi_2 * d1 - phi_3 * d2
        elif h_1 is not None:
            r = h_1 / h
            coef = coef + phi_2 * np.array([1 / r, -1 / r, 0.0])
        e = s[i + 1] * math.sqrt(-math.expm1(-2 * h * eta)) * s_noise if eta else 0.0
        steps.append(Step(s[i], a, float(coef[0]), float(coef[1]), float(coef[2]), e))
        h_1, h_2 = h, h_1
    return steps


PLANS: Dict[str, Callable[..., List[Step]]] = {
    "euler": plan_euler,
    "dpmpp-2m": plan_dpmpp_2m,
    "dpmpp-2m-sde": plan_dpmpp_2m_sde,
    "dpmpp-3m-sde": plan_dpmpp_3m_sde,
}


def make_plan(sampler: str, sigmas, **kwargs) -> List[Step]:
    try:
        fn = PLANS[sampler]
    except KeyError:
        raise SamplerError(f"unknown sampler {sampler!r} (choose from {', '.join(PLANS)})") from None
    return fn(sigmas, **kwargs)


def apply_step(step: Step, x: Tensor, denoised: Tensor, d1: Optional[Tensor], d2: Optional[Tensor],
               noise: Optional[Tensor]) -> Tensor:
    """The linear update; terms with a zero coefficient are skipped."""
    out = denoised * step.b if step.a == 0 else torch.add(x * step.a, denoised, alpha=step.b)
    if step.c:
        out.add_(d1, alpha=step.c)
    if step.d:
        out.add_(d2, alpha=step.d)
    if step.e:
        out.add_(noise, alpha=step.e)
    return out


def run_plan(model, x: Tensor, plan: List[Step], extra_args=None, callback=None, disable=None,
             generator: Optional[torch.Generator] = None) -> Tensor:
    """The eager loop shared by every sampler."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    d1 = d2 = None
    for i in trange(len(plan), disable=disable, leave=False):
        step = plan[i]
        denoised = model(x, s_in * step.sigma, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": step.sigma, "sigma_hat": step.sigma,
                      "denoised": denoised})
        noise = None
        if step.e:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = apply_step(step, x, denoised, d1, d2, noise)
        d1, d2 = denoised, d1
    return x


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Euler (the first-order probability-flow ODE solver)."""
    return run_plan(model, x, plan_euler(sigmas), extra_args, callback, disable)


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++(2M)."""
    return run_plan(model, x, plan_dpmpp_2m(sigmas), extra_args, callback, disable)


@torch.no_grad()
def sample_dpmpp_2m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0,
                        s_noise=1.0, generator: Optional[torch.Generator] = None):
    """DPM-Solver++(2M) SDE."""
    return run_plan(model, x, plan_dpmpp_2m_sde(sigmas, eta, s_noise), extra_args, callback,
                    disable, generator)


@torch.no_grad()
def sample_dpmpp_3m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0,
                        s_noise=1.0, generator: Optional[torch.Generator] = None):
    """DPM-Solver++(3M) SDE."""
    return run_plan(model, x, plan_dpmpp_3m_sde(sigmas, eta, s_noise), extra_args, callback,
                    disable, generator)
