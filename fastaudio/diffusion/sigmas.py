"""Noise-level schedules (VE sigmas, descending, a final 0 appended), as k-diffusion builds them.

Computed in float64 on the host: samplers turn them into per-step coefficients before the loop.
"""
from __future__ import annotations

import math
from typing import List

import torch

from ..errors import FastAudioError


class ScheduleError(FastAudioError, ValueError):
    pass


def _check(n: int, sigma_min: float, sigma_max: float) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ScheduleError(f"steps must be a positive integer, got {n!r}")
    if not (0 < sigma_min < sigma_max) or not math.isfinite(sigma_max):
        raise ScheduleError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")


def polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> List[float]:
    """k-diffusion's get_sigmas_polyexponential; rho=1 is log-linear (the reference's default)."""
    _check(n, sigma_min, sigma_max)
    ramp = torch.linspace(1, 0, n, dtype=torch.float64) ** rho
    sigmas = torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min))
    return sigmas.tolist() + [0.0]


def log_linear(n: int, sigma_min: float, sigma_max: float) -> List[float]:
    return polyexponential(n, sigma_min, sigma_max, 1.0)


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> List[float]:
    """Karras et al. (2022): sigma_i = (max^(1/ρ) + i/(n−1)·(min^(1/ρ) − max^(1/ρ)))^ρ."""
    _check(n, sigma_min, sigma_max)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return ((hi + ramp * (lo - hi)) ** rho).tolist() + [0.0]


SCHEDULES = {"polyexponential": polyexponential, "log-linear": log_linear, "karras": karras}


def get_sigmas(schedule: str, n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> List[float]:
    if schedule == "polyexponential":
        return polyexponential(n, sigma_min, sigma_max, rho)
    if schedule == "log-linear":
        return log_linear(n, sigma_min, sigma_max)
    if schedule == "karras":
        return karras(n, sigma_min, sigma_max, rho)
    raise ScheduleError(f"unknown sigma schedule {schedule!r} ({', '.join(SCHEDULES)})")
