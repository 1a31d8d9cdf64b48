"""What a diffusion objective decides at sampling time, behind one small interface, so the
pipeline serves v-objective (SA1.0, Stable Audio Open 1.0) and rectified-flow (Stable Audio Open
Small) models with the same loop:

* ``plans`` – the samplers it offers (name → plan builder, see :mod:`.samplers`);
* ``schedule(steps, sampling, sigma_min, sigma_max, frames)`` – the noise levels visited
  (host floats, descending, ending at 0);
* ``start(noise, schedule)`` – the initial latents from standard-normal noise, scaled exactly as
  the reference implementation scales its noise;
* ``denoiser(guided)`` – ``denoiser(x, sigma)`` returning the denoised estimate, from the
  guided model's output.
"""
from __future__ import annotations

from typing import Dict, List, Optional

from torch import Tensor

from .rectified_flow import RF_PLANS, RFDenoiser, rf_start, rf_timesteps
from .samplers import PLANS
from .schedule import VDenoiser
from .sigmas import get_sigmas


class VObjective:
    """v-prediction on the cosine schedule, sampled in k-diffusion's VE parameterisation."""
    name = "v"
    plans = PLANS

    def schedule(self, steps: int, sampling, sigma_min: Optional[float], sigma_max: Optional[float],
                 frames: int) -> List[float]:
        lo = sampling.sigma_min if sigma_min is None else sigma_min
        hi = sampling.sigma_max if sigma_max is None else sigma_max
        return get_sigmas(sampling.schedule, steps, lo, hi, sampling.rho)

    def start(self, noise: Tensor, schedule: List[float]) -> Tensor:
        return noise * schedule[0]  # k-diffusion: x = noise · σ_max

    def denoiser(self, guided) -> VDenoiser:
        return VDenoiser(guided)


class RFObjective:
    """Rectified flow (``rf_denoiser``, ``rectified_flow``): t from σ_max (1) to 0 on the
    reference's log-SNR grid; the network predicts the velocity ε − x0."""
    name = "rf"
    plans = RF_PLANS

    def schedule(self, steps: int, sampling, sigma_min: Optional[float], sigma_max: Optional[float],
                 frames: int) -> List[float]:
        if sigma_min is not None:
            raise ValueError("sigma_min does not apply to rectified-flow models (their schedule "
                             "always ends at t = 0); set sigma_max (<= 1) to start lower")
        return rf_timesteps(steps, sampling.sigma_max if sigma_max is None else sigma_max).tolist()

    def start(self, noise: Tensor, schedule: List[float]) -> Tensor:
        return rf_start(noise, None, schedule[0])  # from pure noise: x = noise

    def denoiser(self, guided) -> RFDenoiser:
        return RFDenoiser(guided)


OBJECTIVES: Dict[str, object] = {"v": VObjective(), "rf": RFObjective()}


def objective(name: str):
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(f"unknown diffusion objective {name!r} ({', '.join(OBJECTIVES)})") from None
