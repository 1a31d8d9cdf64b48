"""Distribution and signal metrics: Fréchet distance, KL between classifier outputs, SI-SDR,
multi-resolution STFT distance, and the paper's timing accuracy (where does the audio end?)."""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np
import torch
from torch import Tensor

from ..dsp import stft_magnitude


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FD between Gaussians fitted to embeddings a (n, d) and b (m, d):
    |μa − μb|² + tr(Σa + Σb − 2 (Σa^½ Σb Σa^½)^½), with symmetric eigendecompositions only."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"embeddings must be (n, d) with equal d, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("need at least two embeddings on each side")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(cov_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root_a @ cov_b @ root_a
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)


def mean_kl(p_real: np.ndarray, p_gen: np.ndarray, eps: float = 1e-8) -> float:
    """Mean KL(real ‖ generated) between paired class distributions (n, classes), as the paper
    reports KL between a classifier's outputs on reference and generated audio."""
    p, q = np.clip(p_real, eps, 1), np.clip(p_gen, eps, 1)
    p, q = p / p.sum(1, keepdims=True), q / q.sum(1, keepdims=True)
    return float((p * (np.log(p) - np.log(q))).sum(1).mean())


def si_sdr(estimate: Tensor, reference: Tensor, eps: float = 1e-8) -> Tensor:
    """Scale-invariant SDR in dB over the last dim (per channel), averaged over channels."""
    est, ref = estimate.double(), reference.double()
    est, ref = est - est.mean(-1, keepdim=True), ref - ref.mean(-1, keepdim=True)
    alpha = (est * ref).sum(-1, keepdim=True) / (ref.pow(2).sum(-1, keepdim=True) + eps)
    target = alpha * ref
    noise = est - target
    ratio = target.pow(2).sum(-1) / (noise.pow(2).sum(-1) + eps)
    return (10 * torch.log10(ratio + eps)).mean(-1)


def mrstft_distance(estimate: Tensor, reference: Tensor,
                    fft_sizes: Sequence[int] = (2048, 1024, 512, 256, 128)) -> float:
    """Mean over resolutions of spectral convergence + mean |log magnitude difference|
    (no perceptual weighting: a plain reconstruction figure)."""
    total = 0.0
    for n in fft_sizes:
        a = stft_magnitude(estimate.float(), n, n // 4).clamp_min(1e-7)
        b = stft_magnitude(reference.float(), n, n // 4).clamp_min(1e-7)
        sc = torch.linalg.norm(b - a) / torch.linalg.norm(b)
        total += float(sc + (torch.log(a) - torch.log(b)).abs().mean())
    return total / len(fft_sizes)


def detect_end(audio: Tensor, sample_rate: int, frame_seconds: float = 0.05,
               threshold_db: float = -40.0) -> float:
    """Where the sound ends, in seconds: the end of the last frame whose RMS is within
    ``threshold_db`` of the clip's loudest frame (the paper's energy-threshold detector)."""
    mono = audio.double().reshape(-1, audio.shape[-1]).mean(0)
    hop = max(1, int(frame_seconds * sample_rate))
    frames = mono[: len(mono) // hop * hop].reshape(-1, hop)
    if frames.numel() == 0:
        return 0.0
    rms = frames.pow(2).mean(1).sqrt()
    peak = float(rms.max())
    if peak <= 0:
        return 0.0
    loud = torch.nonzero(20 * torch.log10(rms / peak + 1e-12) > threshold_db).flatten()
    return float((int(loud[-1]) + 1) * hop / sample_rate) if len(loud) else 0.0


def timing_table(requested: List[float], detected: List[float]) -> List[Dict[str, float]]:
    """Per requested duration: mean and std of the detected end, mean absolute error, and the
    fraction within 1 s (the paper's timing evaluation)."""
    rows = []
    req, det = np.asarray(requested, float), np.asarray(detected, float)
    for r in sorted(set(req.tolist())):
        d = det[req == r]
        rows.append({"requested_s": r, "detected_mean_s": float(d.mean()),
                     "detected_std_s": float(d.std()), "abs_error_s": float(np.abs(d - r).mean()),
                     "within_1s": float((np.abs(d - r) <= 1.0).mean()), "n": int(len(d))})
    return rows


__all__ = ["frechet_distance", "mean_kl", "si_sdr", "mrstft_distance", "detect_end", "timing_table"]
