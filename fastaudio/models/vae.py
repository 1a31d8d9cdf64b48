"""The Stable Audio 1.0 VAE: descript-audio-codec's encoder and decoder without the quantizer,
with a VAE bottleneck (mean and scale, 64 channels each) in between.

Module and parameter names mirror descript-audio-codec and stable-audio-tools
(``encoder.block.N…``, ``encoder.proj_out``, ``decoder.model.N…``, ``alpha``, ``weight_g``,
``weight_v``) so their checkpoints map onto ours by a prefix rename. Long audio is encoded and
decoded in overlapping chunks so memory stays bounded; the chunk seams are measured against
the unchunked result in tests/test_vae.py.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import VAEConfig, VAEDecoderConfig, VAEEncoderConfig
from ..nn.conv import WNConv1d, WNConvTranspose1d, fold_weight_norm
from ..nn.snake import Snake1d
from ..errors import FastAudioError
from .chunking import decode_latents, map_in_chunks


class AudioInputError(FastAudioError, ValueError):
    """Audio given to the model has the wrong shape, dtype, length or values."""


def check_audio(audio: Tensor, channels: int, min_samples: int = 1, what: str = "one sample") -> None:
    """A clear error for audio a VAE cannot take: not a tensor, not (B, channels, N), not
    floating point, shorter than ``min_samples`` (``what``), or not finite."""
    if not isinstance(audio, Tensor):
        raise AudioInputError(f"audio must be a torch.Tensor, got {type(audio).__name__}")
    if audio.dim() != 3:
        raise AudioInputError(f"audio must be (batch, {channels}, samples), got shape "
                              f"{tuple(audio.shape)}")
    if audio.shape[1] != channels:
        raise AudioInputError(f"audio has {audio.shape[1]} channels, the VAE takes "
                              f"{channels} (shape {tuple(audio.shape)})")
    if not audio.is_floating_point():
        raise AudioInputError(f"audio must be floating point, got {audio.dtype}")
    if audio.shape[-1] < 1:
        raise AudioInputError("audio has no samples")
    if audio.shape[-1] < min_samples:
        raise AudioInputError(f"audio of {audio.shape[-1]} samples is shorter than {what} "
                              f"({min_samples} samples)")
    if not torch.isfinite(audio).all():
        raise AudioInputError("audio contains NaN or Inf samples")


def check_latents(latents: Tensor, latent_dim: int) -> None:
    """A clear error for latents a VAE cannot decode: not (B, latent_dim, frames ≥ 1) floats."""
    if not isinstance(latents, Tensor) or latents.dim() != 3 or latents.shape[1] != latent_dim:
        shape = tuple(latents.shape) if isinstance(latents, Tensor) else type(latents).__name__
        raise AudioInputError(f"latents must be (batch, {latent_dim}, frames), got {shape}")
    if latents.shape[-1] < 1:
        raise AudioInputError("latents have no frames")
    if not latents.is_floating_point():
        raise AudioInputError(f"latents must be floating point, got {latents.dtype}")


class ResidualUnit(nn.Module):
    """Snake → conv k7 (dilated) → Snake → conv k1, plus the input (passed to the conv: added in
    its epilogue on the Triton path)."""

    def __init__(self, dim: int, dilation: int):
        super().__init__()
        self.block = nn.Sequential(
            Snake1d(dim),
            WNConv1d(dim, dim, kernel_size=7, dilation=dilation, padding=3 * dilation),
            Snake1d(dim),
            WNConv1d(dim, dim, kernel_size=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        snake1, conv7, snake2, conv1 = self.block
        return conv1(snake2(conv7(snake1(x))), residual=x)


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, stride: int):
        super().__init__()
        half = dim // 2
        self.block = nn.Sequential(
            ResidualUnit(half, 1), ResidualUnit(half, 3), ResidualUnit(half, 9),
            Snake1d(half),
            WNConv1d(half, dim, kernel_size=2 * stride, stride=stride, padding=math.ceil(stride / 2)),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class DecoderBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, stride: int):
        super().__init__()
        self.block = nn.Sequential(
            Snake1d(in_dim),
            WNConvTranspose1d(in_dim, out_dim, kernel_size=2 * stride, stride=stride,
                              padding=math.ceil(stride / 2)),
            ResidualUnit(out_dim, 1), ResidualUnit(out_dim, 3), ResidualUnit(out_dim, 9),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class Encoder(nn.Module):
    """(B, 2, N) → (B, 2·latent, N / 1024): DAC encoder then a plain 1×1 projection."""

    def __init__(self, cfg: VAEEncoderConfig):
        super().__init__()
        d = cfg.d_model
        layers: List[nn.Module] = [WNConv1d(cfg.in_channels, d, kernel_size=7, padding=3)]
        for stride in cfg.strides:
            d *= 2
            layers.append(EncoderBlock(d, stride))
        layers += [Snake1d(d), WNConv1d(d, d, kernel_size=3, padding=1)]
        self.block = nn.Sequential(*layers)
        self.proj_out = nn.Conv1d(d, cfg.latent_dim, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj_out(self.block(x))


class Decoder(nn.Module):
    """(B, latent, L) → (B, 2, 1024·L), ending in tanh."""

    def __init__(self, cfg: VAEDecoderConfig):
        super().__init__()
        ch = cfg.channels
        layers: List[nn.Module] = [WNConv1d(cfg.latent_dim, ch, kernel_size=7, padding=3)]
        out_dim = ch
        for i, rate in enumerate(cfg.rates):
            in_dim, out_dim = ch // 2 ** i, ch // 2 ** (i + 1)
            layers.append(DecoderBlock(in_dim, out_dim, rate))
        layers += [Snake1d(out_dim), WNConv1d(out_dim, cfg.out_channels, kernel_size=7, padding=3),
                   nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.model(z)


def vae_bottleneck(pre: Tensor, sample: bool, generator: Optional[torch.Generator] = None
                   ) -> Tuple[Tensor, Tensor, Tensor]:
    """Split into mean and scale; returns (latents, mean, std). std = softplus(scale) + 1e-4."""
    mean, scale = pre.chunk(2, dim=1)
    std = F.softplus(scale) + 1e-4
    if not sample:
        return mean, mean, std
    noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + std * noise, mean, std


def kl_divergence(mean: Tensor, std: Tensor) -> Tensor:
    """KL to N(0, 1) as stable-audio-tools computes it: summed over channels, mean elsewhere."""
    var = std * std
    return (mean * mean + var - torch.log(var) - 1).sum(1).mean()


class AutoencoderVAE(nn.Module):
    """``encode(audio) -> latents`` and ``decode(latents) -> audio`` for any length."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg.encoder)
        self.decoder = Decoder(cfg.decoder)
        self.ratio = cfg.downsampling_ratio
        self.io_channels = cfg.io_channels
        self.latent_dim = cfg.latent_dim
        # eager CPU decoding on channels-last memory: measured 1.2-1.4x (small and SA1.0 presets,
        # the same output within fp32 rounding); False for the (N, C, L) path
        self.cpu_channels_last = True

    # -- validation ---------------------------------------------------------------------------
    def check_audio(self, audio: Tensor) -> None:
        check_audio(audio, self.io_channels, self.ratio, "one latent frame")

    def check_latents(self, latents: Tensor) -> None:
        check_latents(latents, self.latent_dim)

    # -- encode ---------------------------------------------------------------------------------
    def _pad(self, audio: Tensor) -> Tensor:
        n = audio.shape[-1]
        target = math.ceil(n / self.ratio) * self.ratio
        return F.pad(audio, (0, target - n)) if target != n else audio

    def _encode_pre(self, audio: Tensor, chunked: Optional[bool]) -> Tensor:
        """Pre-bottleneck latents (B, 2·latent, frames) of padded audio."""
        frames = audio.shape[-1] // self.ratio
        cfg = self.config
        if chunked is None:
            chunked = frames > cfg.chunk_frames
        if not chunked:
            return self.encoder(audio)
        return map_in_chunks(self.encoder, audio, frames, cfg.chunk_frames, cfg.overlap_frames,
                             in_per_frame=self.ratio)

    def encode(self, audio: Tensor, sample: bool = False, generator: Optional[torch.Generator] = None,
               chunked: Optional[bool] = None) -> Tensor:
        """(B, 2, N) → (B, latent_dim, ceil(N / 1024)); the mean unless ``sample``."""
        self.check_audio(audio)
        pre = self._encode_pre(self._pad(audio), chunked)
        return vae_bottleneck(pre, sample, generator)[0]

    def encode_with_kl(self, audio: Tensor, generator: Optional[torch.Generator] = None
                       ) -> Tuple[Tensor, Tensor]:
        """Training path: sampled latents and the KL term (unchunked, gradients kept)."""
        self.check_audio(audio)
        z, mean, std = vae_bottleneck(self.encoder(self._pad(audio)), True, generator)
        return z, kl_divergence(mean, std)

    # -- decode ---------------------------------------------------------------------------------
    def decode(self, latents: Tensor, chunked: Optional[bool] = None,
               chunk_frames: Optional[int] = None, decoder: Optional[nn.Module] = None) -> Tensor:
        """(B, latent_dim, L) → (B, 2, 1024·L). Chunked when L exceeds ``chunk_frames`` (default:
        the config's; a GPU can afford far larger chunks, which cuts the overlap's recomputation),
        so memory does not grow with the duration. ``decoder`` replaces ``self.decoder`` for the
        call (e.g. its torch.compile'd form)."""
        run = decoder if decoder is not None else self.decoder
        self.check_latents(latents)
        cfg = self.config
        chunk = max(chunk_frames or cfg.chunk_frames, cfg.overlap_frames + 1)
        return decode_latents(run, latents, chunk, cfg.overlap_frames, self.ratio, chunked,
                              self.cpu_channels_last and decoder is None)

    def forward(self, audio: Tensor, generator: Optional[torch.Generator] = None
                ) -> Tuple[Tensor, Tensor, Tensor]:
        """Training: (reconstruction trimmed to the input length, KL, latents)."""
        z, kl = self.encode_with_kl(audio, generator)
        return self.decoder(z)[..., : audio.shape[-1]], kl, z

    def fold_weight_norm(self) -> int:
        """Fold weight norm into plain conv weights (inference); returns the count folded."""
        return fold_weight_norm(self)
