"""Does generated audio follow its prompt? Measures independent of the generator.

* tempo: onset-strength autocorrelation (log-mel spectral flux), the peak between 50 and 200 BPM;
* key: chroma (80–1000 Hz, where the fundamentals are) correlated with major/minor templates
  fitted on the corpus's own training audio (:class:`KeyTemplates`); frame by frame, the same
  chroma tells how much pitch content a reconstruction keeps (:func:`chroma_agreement`);
* instrument family: a small logistic-regression classifier on log-mel statistics, trained on
  the corpus's own training audio (:class:`FamilyClassifier`). Its class probabilities also give
  the paper's KL metric.

None of these uses the diffusion model or its CLAP.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ..dsp import log_mel_spectrogram, stft_magnitude

PITCH_CLASSES = ["C", "Db", "D", "Eb", "E", "F", "Gb", "G", "Ab", "A", "Bb", "B"]
ENHARMONIC = {"C#": "Db", "D#": "Eb", "F#": "Gb", "G#": "Ab", "A#": "Bb", "Cb": "B", "Fb": "E",
              "E#": "F", "B#": "C"}


def _mono(audio: Tensor) -> Tensor:
    audio = audio.float()
    return audio.reshape(-1, audio.shape[-1]).mean(0)


# ---------------------------------------------------------------------------------------------
# Tempo
# ---------------------------------------------------------------------------------------------

def onset_envelope(audio: Tensor, sample_rate: int, hop: int = 441) -> np.ndarray:
    """Half-wave rectified log-mel spectral flux, mean over bands (100 frames/s at 44.1 kHz)."""
    mel = log_mel_spectrogram(_mono(audio)[None], sample_rate, 2048, hop, 64)[0]
    flux = torch.clamp(mel[:, 1:] - mel[:, :-1], min=0).mean(0)
    env = flux.numpy().astype(np.float64)
    return env - env.mean() if len(env) else env


def estimate_tempo(audio: Tensor, sample_rate: int, lo_bpm: float = 50, hi_bpm: float = 200) -> float:
    """The tempo (BPM) whose beat period maximises the onset envelope's autocorrelation,
    weighted mildly toward 120 BPM (a log-normal prior, as common tempo trackers do)."""
    hop = 441
    fps = sample_rate / hop
    env = onset_envelope(audio, sample_rate, hop)
    if len(env) < 8 or not np.any(env):
        return float("nan")
    n = len(env)
    spec = np.fft.rfft(env, 2 * n)
    ac = np.fft.irfft(spec * np.conj(spec))[:n]
    lags = np.arange(n)
    with np.errstate(divide="ignore"):
        bpm = 60.0 * fps / np.maximum(lags, 1)
    valid = (bpm >= lo_bpm) & (bpm <= hi_bpm) & (lags > 0)
    if not valid.any():
        return float("nan")
    prior = np.exp(-0.5 * (np.log2(bpm / 120.0) / 1.0) ** 2)
    score = np.where(valid, ac * prior, -np.inf)
    best = int(np.argmax(score))
    # refine with a parabola through the neighbouring lags
    if 1 <= best < n - 1:
        y0, y1, y2 = ac[best - 1], ac[best], ac[best + 1]
        denom = y0 - 2 * y1 + y2
        shift = 0.5 * (y0 - y2) / denom if denom else 0.0
        return float(60.0 * fps / (best + shift))
    return float(bpm[best])


def tempo_correct(estimate: float, truth: float, tolerance: float = 0.08, octaves: bool = False) -> bool:
    """Within ``tolerance`` of the truth; with ``octaves``, also at ×2, ×½, ×3, ×⅓ (the MIREX
    'accuracy 2' convention)."""
    if not math.isfinite(estimate):
        return False
    factors = (1, 2, 0.5, 3, 1 / 3) if octaves else (1,)
    return any(abs(estimate - truth * f) <= tolerance * truth * f for f in factors)


def tempo_class(bpm: float) -> str:
    """The corpus's classes: slow < 85, medium 85–120, fast > 120 BPM."""
    if not math.isfinite(bpm):
        return "unknown"
    return "slow" if bpm < 85 else ("medium" if bpm <= 120 else "fast")


# ---------------------------------------------------------------------------------------------
# Key
# ---------------------------------------------------------------------------------------------

def _pitch_class_power(power: np.ndarray, sample_rate: int, n_fft: int, fmin: float,
                       fmax: float, per_bin: bool = False) -> np.ndarray:
    """Fold STFT power (bins, ...) into 12 pitch classes (0 = C) over [fmin, fmax]: summed, or
    with ``per_bin`` averaged over each class's bins (then white noise reads flat - the classes
    hold unequal numbers of linearly spaced bins)."""
    freqs = np.arange(power.shape[0]) * sample_rate / n_fft
    band = (freqs >= fmin) & (freqs <= fmax)
    pcs = (np.round(12 * np.log2(freqs[band] / 440.0)).astype(int) + 9) % 12  # 440 Hz = A = 9
    out = np.zeros((12,) + power.shape[1:])
    np.add.at(out, pcs, power[band])
    if per_bin:
        counts = np.bincount(pcs, minlength=12).reshape((12,) + (1,) * (power.ndim - 1))
        out = out / np.maximum(counts, 1)
    return out


def chroma(audio: Tensor, sample_rate: int, fmin: float = 80.0, fmax: float = 1000.0) -> np.ndarray:
    """12-bin power chroma over the band that holds the fundamentals, normalised to sum 1."""
    n_fft = 8192
    mag = stft_magnitude(_mono(audio)[None], n_fft, 2048)[0]  # (bins, frames)
    out = _pitch_class_power(mag.pow(2).sum(1).double().numpy(), sample_rate, n_fft, fmin, fmax)
    total = out.sum()
    return out / total if total > 0 else out


def frame_chroma(audio: Tensor, sample_rate: int, fmin: float = 80.0, fmax: float = 1000.0,
                 n_fft: int = 8192, hop: int = 2048, per_bin: bool = False) -> np.ndarray:
    """Power chroma per STFT frame, (frames, 12): which pitch classes sound at each moment."""
    mag = stft_magnitude(_mono(audio)[None], n_fft, hop)[0]
    return _pitch_class_power(mag.pow(2).double().numpy(), sample_rate, n_fft, fmin, fmax, per_bin).T


def chroma_agreement(estimate: Tensor, reference: Tensor, sample_rate: int,
                     floor_db: float = -40.0) -> Optional[float]:
    """How much of the reference's pitch content the estimate keeps, frame by frame: the mean
    Pearson correlation of the two frames' chroma (log-compressed), over the reference's frames
    within ``floor_db`` of its loudest. 1 = the same notes at the same moments; about 0 = pitch
    unrelated (noise scores ~0: the chroma is power per bin, so noise reads flat, and its shape,
    not its level, is compared). None when the reference has no such frame. Both clips are cut
    to the shorter."""
    n = min(estimate.shape[-1], reference.shape[-1])
    est = frame_chroma(estimate[..., :n], sample_rate, per_bin=True)
    ref = frame_chroma(reference[..., :n], sample_rate, per_bin=True)
    energy = ref.sum(1)
    if energy.max() <= 0:
        return None
    keep = energy >= energy.max() * 10 ** (floor_db / 10)
    scores = []
    for e, r in zip(est[keep], ref[keep]):
        e = np.log1p(12 * e / max(e.sum(), 1e-20))
        r = np.log1p(12 * r / max(r.sum(), 1e-20))
        if e.std() > 0 and r.std() > 0:
            scores.append(float(np.corrcoef(e, r)[0, 1]))
        else:
            scores.append(0.0)  # a silent or flat estimate keeps none of the notes
    return float(np.mean(scores))


def parse_key(key: str) -> tuple:
    """'D minor' → (2, 'minor'); flats and sharps accepted."""
    tonic, mode = key.split()
    tonic = ENHARMONIC.get(tonic, tonic)
    return PITCH_CLASSES.index(tonic), mode.lower()


class KeyTemplates:
    """Major and minor chroma templates averaged from labelled training audio (rotated to C)."""

    def __init__(self, major: np.ndarray, minor: np.ndarray):
        self.templates = {"major": major, "minor": minor}

    @classmethod
    def fit(cls, chromas: Sequence[np.ndarray], keys: Sequence[str]) -> "KeyTemplates":
        acc = {"major": np.zeros(12), "minor": np.zeros(12)}
        for c, k in zip(chromas, keys):
            pc, mode = parse_key(k)
            acc[mode] += np.roll(c, -pc)
        for mode in acc:
            if not acc[mode].any():
                raise ValueError(f"no {mode} examples to fit a key template")
        return cls(acc["major"] / acc["major"].sum(), acc["minor"] / acc["minor"].sum())

    def predict(self, c: np.ndarray) -> str:
        best, best_score = None, -np.inf
        for mode, tpl in self.templates.items():
            for pc in range(12):
                score = np.corrcoef(c, np.roll(tpl, pc))[0, 1]
                if score > best_score:
                    best, best_score = f"{PITCH_CLASSES[pc]} {mode}", score
        return best

    def state(self) -> Dict[str, List[float]]:
        return {k: v.tolist() for k, v in self.templates.items()}


# ---------------------------------------------------------------------------------------------
# Instrument family
# ---------------------------------------------------------------------------------------------

def timbre_features(audio: Tensor, sample_rate: int) -> np.ndarray:
    """Mean and std over time of a 64-band log-mel spectrogram, plus spectral flux statistics."""
    mel = log_mel_spectrogram(_mono(audio)[None], sample_rate, 2048, 512, 64)[0]
    loud = mel.max(0).values > mel.max() - 8.0  # frames within 80 dB-ish of the loudest
    m = mel[:, loud] if loud.sum() > 2 else mel
    flux = torch.clamp(m[:, 1:] - m[:, :-1], min=0).mean(0) if m.shape[1] > 1 else torch.zeros(1)
    feats = torch.cat([m.mean(1), m.std(1, unbiased=False), torch.stack([flux.mean(), flux.std(unbiased=False)])])
    return feats.double().numpy()


class FamilyClassifier:
    """Multinomial logistic regression on standardised timbre features (L2-regularised)."""

    def __init__(self, classes: List[str], mean: np.ndarray, std: np.ndarray, weight: np.ndarray,
                 bias: np.ndarray):
        self.classes, self.mean, self.std, self.weight, self.bias = classes, mean, std, weight, bias

    @classmethod
    def fit(cls, features: np.ndarray, labels: Sequence[str], steps: int = 500, l2: float = 1e-3,
            seed: int = 0) -> "FamilyClassifier":
        classes = sorted(set(labels))
        y = torch.tensor([classes.index(l) for l in labels])
        x = torch.tensor(features, dtype=torch.float64)
        mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
        xs = (x - mean) / std
        torch.manual_seed(seed)
        w = torch.zeros(x.shape[1], len(classes), dtype=torch.float64, requires_grad=True)
        b = torch.zeros(len(classes), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(xs @ w + b, y) + l2 * w.pow(2).sum()
            loss.backward()
            return loss
        opt.step(closure)
        return cls(classes, mean.numpy(), std.numpy(), w.detach().numpy(), b.detach().numpy())

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        z = ((np.atleast_2d(features) - self.mean) / self.std) @ self.weight + self.bias
        z = z - z.max(1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(1, keepdims=True)

    def predict(self, features: np.ndarray) -> List[str]:
        return [self.classes[i] for i in self.probabilities(features).argmax(1)]


def latent_features(latents: Tensor, frames: int) -> np.ndarray:
    """Per-channel mean, std and mean absolute frame-to-frame change over the first ``frames``
    latent frames (the part that holds the clip): the latent-space analogue of
    :func:`timbre_features`, for a :class:`FamilyClassifier` fitted on encoded training clips."""
    z = latents.detach().float().cpu().reshape(-1, latents.shape[-1])[:, : max(int(frames), 2)]
    steps = (z[:, 1:] - z[:, :-1]).abs().mean(1)
    return torch.cat([z.mean(1), z.std(1, unbiased=False), steps]).double().numpy()


def family_label(labels: Dict) -> Optional[str]:
    """The classifier's target: the instrument family for music, the sound for effects."""
    if labels.get("kind") == "music":
        return labels.get("family")
    return f"sfx:{labels.get('sound')}" if labels.get("sound") else None
