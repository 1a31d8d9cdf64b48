"""Rectified flow as the sampler sees it: Stable Audio Open Small (``rf_denoiser``) and other
``rectified_flow`` models of stable-audio-tools 0.0.19.

Convention (training/diffusion.py; the same for both objective names):

    x_t = (1 − t)·x0 + t·ε,   t ∈ [0, 1],   the network predicts v = ε − x0,

so the denoised estimate is D(x_t, t) = x_t − t·v (:class:`RFDenoiser`), and every sampler below
is a linear update in (x, D, z), i.e. a plan of :class:`~fastaudio.diffusion.samplers.Step` rows
that :func:`~fastaudio.diffusion.samplers.run_plan` and the CUDA-graph
:class:`~fastaudio.diffusion.cuda_graph.StepRunner` replay, with Step.sigma holding t:

* Euler on the flow ODE, x ← x + (t' − t)·v, is x ← (t'/t)·x + (1 − t'/t)·D;
* ping-pong (for distilled models): x ← (1 − t')·D + t'·z, fresh z ~ N(0, I) at each step but
  the last (t' = 0, where the reference draws noise and multiplies it by zero).

Timesteps (inference/sampling.py ``sample_rf``, which ``generate_diffusion_cond`` calls for both
objectives) are *not* a linspace in t: they are uniform in log-SNR,

    logsnr = linspace(logsnr_max, 2, steps + 1),  t = sigmoid(−logsnr),  t[0] = σ_max, t[−1] = 0,

with logsnr_max = −6 for σ_max = 1 (the first step is then moved to exactly t = 1) and
log((1 − σ_max)/σ_max + 1e-6) below 1 (init-audio variations: x starts at
(1 − σ_max)·init + σ_max·noise, :func:`rf_start`). No time shift is applied: the model's
``DistributionShift`` is handed to the sampler but ``sample_rf`` always passes explicit sigmas,
which the Euler, DPM++ and ping-pong samplers use as given (only its rk4 sampler, which builds
its own linspace, would shift). So the schedule does not depend on the latent length.
:func:`rf_timesteps` computes it in float32 exactly as the reference does.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor

from .samplers import SamplerError, Step, run_plan

Timesteps = Union[Sequence[float], Tensor]

# The sampler each objective is meant for: stable-audio-tools' UI offers euler/rk4/dpmpp for
# rectified_flow and only pingpong for rf_denoiser (SAO Small: 8 steps, cfg 1). Note that
# generate_diffusion_cond itself defaults to euler for both unless sampler_type is passed.
DEFAULT_RF_SAMPLER = {"rectified_flow": "euler", "rf_denoiser": "pingpong"}

# Below this σ_max the reference's log-SNR grid (which always ends at logsnr 2) starts *below*
# its second point, so its timesteps would rise before they fall.
MIN_SIGMA_MAX = 1 / (1 + math.exp(2.0))


def _expand(t: Tensor, x: Tensor) -> Tensor:
    return t.reshape(t.shape + (1,) * (x.dim() - t.dim()))


class RFDenoiser:
    """Wraps a velocity model ``model(x, t, **kw)`` (v = ε − x0) into the denoiser
    ``D(x, t, **kw) = x − t·v`` that the plans expect (k-diffusion's contract, σ ≡ t)."""

    def __init__(self, model: Callable[..., Tensor]):
        self.model = model

    def __call__(self, x: Tensor, t: Tensor, **kwargs) -> Tensor:
        v = self.model(x, t, **kwargs)
        return x - _expand(t.to(x.dtype), x) * v.to(x.dtype)


def rf_timesteps(steps: int, sigma_max: float = 1.0) -> Tensor:
    """The reference's ``sample_rf`` timesteps, (steps + 1,) float32 on the CPU, from σ_max to 0."""
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise SamplerError(f"steps must be a positive integer, got {steps!r}")
    sigma_max = float(sigma_max)
    if not math.isfinite(sigma_max) or sigma_max <= 0:
        raise SamplerError(f"sigma_max must be a positive number, got {sigma_max}")
    sigma_max = min(sigma_max, 1.0)  # the reference caps it at 1 the same way
    if sigma_max < MIN_SIGMA_MAX:
        raise SamplerError(
            f"sigma_max {sigma_max:g} is below sigmoid(-2) = {MIN_SIGMA_MAX:.4f}, where the "
            "reference's log-SNR schedule is no longer decreasing; use a larger init noise level")
    logsnr_max = math.log((1 - sigma_max) / sigma_max + 1e-6) if sigma_max < 1 else -6
    t = torch.sigmoid(-torch.linspace(logsnr_max, 2, int(steps) + 1))
    t[0] = sigma_max
    t[-1] = 0
    return t


def rf_start(noise: Tensor, init_data: Optional[Tensor] = None, sigma_max: float = 1.0) -> Tensor:
    """The starting latents: the noise itself, or for a variation of ``init_data`` the point
    (1 − σ_max)·init + σ_max·noise on the straight path (as ``sample_rf``)."""
    sigma_max = min(float(sigma_max), 1.0)
    if init_data is None:
        return noise
    return init_data * (1 - sigma_max) + noise * sigma_max


def _timesteps(ts: Timesteps) -> List[float]:
    if isinstance(ts, Tensor):
        ts = ts.detach().double().cpu().reshape(-1).tolist()
    ts = [float(t) for t in ts]
    if len(ts) < 2:
        raise SamplerError("timesteps need at least two entries (a start and an end)")
    if any(not math.isfinite(t) or t < 0 or t > 1 for t in ts):
        raise SamplerError(f"rectified-flow timesteps must lie in [0, 1], got {ts}")
    if any(a <= b for a, b in zip(ts, ts[1:])):
        raise SamplerError(f"rectified-flow timesteps must be strictly decreasing, got {ts}")
    return ts


def plan_rf_euler(ts: Timesteps) -> List[Step]:
    """x ← x + (t' − t)·v, written as (t'/t)·x + (1 − t'/t)·D; the last step (t' = 0) is D."""
    t = _timesteps(ts)
    return [Step(t[i], t[i + 1] / t[i], 1 - t[i + 1] / t[i]) for i in range(len(t) - 1)]


def plan_pingpong(ts: Timesteps) -> List[Step]:
    """x ← (1 − t')·D + t'·z: jump to the clean estimate, then re-noise to the next level."""
    t = _timesteps(ts)
    return [Step(t[i], 0.0, 1 - t[i + 1], e=t[i + 1]) for i in range(len(t) - 1)]


RF_PLANS: Dict[str, Callable[[Timesteps], List[Step]]] = {
    "euler": plan_rf_euler,
    "pingpong": plan_pingpong,
}


def make_rf_plan(sampler: str, ts: Timesteps) -> List[Step]:
    try:
        fn = RF_PLANS[sampler]
    except KeyError:
        raise SamplerError(f"unknown rectified-flow sampler {sampler!r} "
                           f"(choose from {', '.join(RF_PLANS)})") from None
    return fn(ts)


@torch.no_grad()
def sample_rf_euler(model, x: Tensor, ts: Timesteps, extra_args=None, callback=None, disable=None,
                    generator: Optional[torch.Generator] = None) -> Tensor:
    """Euler on the flow ODE. ``model`` is the denoiser (e.g. ``RFDenoiser(velocity_model)``);
    ``generator`` is accepted for a uniform signature and unused (no noise is drawn)."""
    return run_plan(model, x, plan_rf_euler(ts), extra_args, callback, disable, generator)


@torch.no_grad()
def sample_pingpong(model, x: Tensor, ts: Timesteps, extra_args=None, callback=None, disable=None,
                    generator: Optional[torch.Generator] = None) -> Tensor:
    """Ping-pong sampling; the re-noising draws from ``generator`` (the global RNG when None)."""
    return run_plan(model, x, plan_pingpong(ts), extra_args, callback, disable, generator)
