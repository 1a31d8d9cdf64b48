"""Signal processing shared by the CLAP audio tower, the training losses and evaluation:
mel filterbanks, log-mel spectrograms and A-weighting, in plain PyTorch (torchaudio does not
load beside the CPU torch build these machines use)."""
from __future__ import annotations

import functools

import torch
from torch import Tensor


def hz_to_mel(f: Tensor) -> Tensor:
    """HTK mel scale."""
    return 2595.0 * torch.log10(1.0 + f / 700.0)


def mel_to_hz(m: Tensor) -> Tensor:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


@functools.lru_cache(maxsize=16)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0,
                   f_max: float | None = None) -> Tensor:
    """(n_mels, n_fft // 2 + 1) triangular filters on the HTK mel scale, unit peak."""
    f_max = f_max if f_max is not None else sample_rate / 2
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    mels = torch.linspace(float(hz_to_mel(torch.tensor(f_min))), float(hz_to_mel(torch.tensor(f_max))),
                          n_mels + 2, dtype=torch.float64)
    edges = mel_to_hz(mels)
    lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None] - lower) / (center - lower)
    down = (upper - freqs[None]) / (upper - center)
    return torch.clamp(torch.minimum(up, down), min=0.0).to(torch.float32)


def stft_magnitude(x: Tensor, n_fft: int, hop: int, win: int | None = None) -> Tensor:
    """|STFT| of (..., N) audio with a Hann window: (..., n_fft // 2 + 1, frames)."""
    win = win or n_fft
    shape = x.shape
    window = torch.hann_window(win, device=x.device, dtype=torch.float32)
    spec = torch.stft(x.reshape(-1, shape[-1]).float(), n_fft, hop, win, window=window,
                      center=True, return_complex=True)
    return spec.abs().reshape(*shape[:-1], spec.shape[-2], spec.shape[-1])


def log_mel_spectrogram(audio: Tensor, sample_rate: int, n_fft: int, hop: int, n_mels: int) -> Tensor:
    """(B, C, N) or (B, N) audio → (B, n_mels, frames) log-mel of the channel mean."""
    if audio.dim() == 3:
        audio = audio.mean(1)
    mag = stft_magnitude(audio, n_fft, hop)
    fb = mel_filterbank(sample_rate, n_fft, n_mels).to(mag.device)
    return torch.log(torch.einsum("mf,bft->bmt", fb, mag.pow(2)) + 1e-5)


@functools.lru_cache(maxsize=32)
def a_weighting(n_fft: int, sample_rate: int) -> Tensor:
    """A-weighting gains (linear amplitude) at the n_fft // 2 + 1 STFT bin frequencies
    (IEC 61672), normalised to 0 dB at 1 kHz."""
    f = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    f2 = f * f
    c1, c2, c3, c4 = 20.598997 ** 2, 107.65265 ** 2, 737.86223 ** 2, 12194.217 ** 2
    ra = (c4 * f2 * f2) / ((f2 + c1) * torch.sqrt((f2 + c2) * (f2 + c3)) * (f2 + c4))
    gain_db = 20 * torch.log10(ra.clamp_min(1e-20)) + 2.0
    return (10 ** (gain_db / 20)).to(torch.float32)


def seconds_to_samples(seconds: float, sample_rate: int) -> int:
    return int(round(seconds * sample_rate))


__all__ = ["mel_filterbank", "stft_magnitude", "log_mel_spectrogram", "a_weighting",
           "seconds_to_samples"]
