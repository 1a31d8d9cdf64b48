"""The VAE's adversary: EnCodec's multi-scale STFT discriminator, with hinge and feature-matching
losses as stable-audio-tools' ``EncodecDiscriminator`` computes them.

Each scale takes the window-normalised complex STFT (``center=False``, Hann, divided by
``sqrt(Σ w²)``: torchaudio's ``Spectrogram(normalized=True, power=None)``) of every input
channel, stacks real and imaginary parts as 2·C image channels laid out (frames, bins), and runs

    conv (3, 9) → 3 × conv (3, 9) with time dilation 1, 2, 4 → conv (3, 3)   [LeakyReLU 0.2 after
    each; these five activations are the feature maps]  →  conv_post (3, 3) → logits (1 channel)

with ``filters`` channels throughout ('same' padding). Two variants exist, and they matter:

* ``"sa1.0"``: the ``encodec==0.1.1`` package that stable-audio-tools ≤ 0.0.16 imported, i.e. what
  trained SA1.0's VAE: the dilated convs stride 2 along frequency, the first conv has no weight
  norm, and the per-scale losses are **summed** over scales.
* ``"sat-0.0.19"``: the copy vendored into stable-audio-tools ≥ 0.0.17: stride 1, weight norm on
  every conv, per-scale losses **averaged** over scales (so the adversarial and feature-matching
  weights act 5× weaker than the same numbers under "sa1.0").

Parameter and buffer names are the reference's (``discriminators.discriminators.{i}.convs.{j}.conv.
weight_g`` …, ``spec_transform.window``), so a state dict of either reference module loads
strictly into the matching variant.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import FastAudioError
from ..nn.conv import _WeightNormMixin


class DiscriminatorInputError(FastAudioError, ValueError):
    """The discriminator got audio (or settings) it cannot use; the message says which."""


CONVENTIONS: Dict[str, dict] = {
    "sa1.0": {"stride": (1, 2), "weight_norm_first": False, "mean_over_scales": False},
    "sat-0.0.19": {"stride": (1, 1), "weight_norm_first": True, "mean_over_scales": True},
}


# ---------------------------------------------------------------------------------------------
# The losses, standalone
# ---------------------------------------------------------------------------------------------

def hinge_discriminator_loss(score_real: Tensor, score_fake: Tensor) -> Tensor:
    """``mean(relu(1 − D(real))) + mean(relu(1 + D(fake)))``."""
    return torch.relu(1 - score_real).mean() + torch.relu(1 + score_fake).mean()


def hinge_generator_loss(score_fake: Tensor) -> Tensor:
    """``−mean(D(fake))`` (the reference's generator side of the hinge GAN: not clipped)."""
    return -score_fake.mean()


def feature_matching_loss(features_real: Sequence[Tensor], features_fake: Sequence[Tensor]) -> Tensor:
    """Mean over layers of ``mean(|f_real − f_fake|)`` for one scale's feature maps.

    Neither side is detached, as in the reference; the per-layer means are unnormalised
    (the reference's default ``normalize_losses=False``)."""
    if len(features_real) != len(features_fake) or not features_real:
        raise DiscriminatorInputError(f"feature lists differ in length or are empty "
                                      f"({len(features_real)} vs {len(features_fake)})")
    return sum((r - f).abs().mean() for r, f in zip(features_real, features_fake)) / len(features_real)


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------

class WNConv2d(_WeightNormMixin, nn.Conv2d):
    """Weight-normalised Conv2d holding ``weight_g``/``weight_v`` like torch.nn.utils.weight_norm."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_weight_norm()

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.current_weight(), self.bias, self.stride, self.padding, self.dilation)


class NormConv2d(nn.Module):
    """Holds the conv as ``.conv`` so parameter names match the reference's wrapper."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Tuple[int, int],
                 stride: Tuple[int, int] = (1, 1), dilation: Tuple[int, int] = (1, 1),
                 weight_norm: bool = True):
        super().__init__()
        # 'same' padding along both axes for odd kernels, dilation included.
        padding = tuple((k - 1) * d // 2 for k, d in zip(kernel_size, dilation))
        conv = WNConv2d if weight_norm else nn.Conv2d
        self.conv = conv(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class NormalizedComplexSTFT(nn.Module):
    """(B, C, T) → (B, 2·C, frames, bins): [real parts; imaginary parts] of the window-normalised
    STFT without centre padding. The window is a persistent buffer named like torchaudio's."""

    def __init__(self, n_fft: int, hop_length: int, win_length: int):
        super().__init__()
        if win_length > n_fft:
            raise DiscriminatorInputError(f"win_length {win_length} exceeds n_fft {n_fft}")
        self.n_fft, self.hop_length, self.win_length = n_fft, hop_length, win_length
        self.register_buffer("window", torch.hann_window(win_length))

    def forward(self, x: Tensor) -> Tensor:
        b, c, n = x.shape
        if n < self.n_fft:
            raise DiscriminatorInputError(f"{n} samples are fewer than one STFT frame of {self.n_fft}")
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        window = self.window.to(dtype)
        spec = torch.stft(x.reshape(b * c, n).to(dtype), self.n_fft, self.hop_length,
                          self.win_length, window, center=False, return_complex=True)
        spec = spec / window.pow(2).sum().sqrt()
        spec = spec.reshape(b, c, spec.shape[-2], spec.shape[-1])
        return torch.cat([spec.real, spec.imag], dim=1).transpose(-1, -2)


class DiscriminatorSTFT(nn.Module):
    """One scale: STFT image → five LeakyReLU conv layers (the feature maps) → 1-channel logits."""

    def __init__(self, filters: int, in_channels: int = 1, out_channels: int = 1,
                 n_fft: int = 1024, hop_length: int = 256, win_length: int = 1024,
                 kernel_size: Tuple[int, int] = (3, 9), dilations: Sequence[int] = (1, 2, 4),
                 stride: Tuple[int, int] = (1, 1), weight_norm_first: bool = True,
                 negative_slope: float = 0.2):
        super().__init__()
        self.spec_transform = NormalizedComplexSTFT(n_fft, hop_length, win_length)
        k_sq = (kernel_size[0], kernel_size[0])
        self.convs = nn.ModuleList([NormConv2d(2 * in_channels, filters, kernel_size,
                                               weight_norm=weight_norm_first)])
        for d in dilations:
            # Dilation along frames (time), stride along bins (frequency).
            self.convs.append(NormConv2d(filters, filters, kernel_size, stride=stride, dilation=(d, 1)))
        self.convs.append(NormConv2d(filters, filters, k_sq))
        self.conv_post = NormConv2d(filters, out_channels, k_sq)
        self.negative_slope = negative_slope

    def forward(self, x: Tensor) -> Tuple[Tensor, List[Tensor]]:
        z = self.spec_transform(x)
        fmap = []
        for layer in self.convs:
            z = F.leaky_relu(layer(z), self.negative_slope)
            fmap.append(z)
        return self.conv_post(z), fmap


class MultiScaleSTFTDiscriminator(nn.Module):
    def __init__(self, filters: int, in_channels: int = 1, out_channels: int = 1,
                 n_ffts: Sequence[int] = (1024, 2048, 512), hop_lengths: Sequence[int] = (256, 512, 128),
                 win_lengths: Sequence[int] = (1024, 2048, 512), **scale_kwargs):
        super().__init__()
        if not len(n_ffts) == len(hop_lengths) == len(win_lengths) or not n_ffts:
            raise DiscriminatorInputError(
                f"n_ffts, hop_lengths and win_lengths must be non-empty and of one length, got "
                f"{len(n_ffts)}, {len(hop_lengths)}, {len(win_lengths)}")
        self.discriminators = nn.ModuleList(
            DiscriminatorSTFT(filters, in_channels, out_channels, n_fft=n, hop_length=h, win_length=w,
                              **scale_kwargs)
            for n, h, w in zip(n_ffts, hop_lengths, win_lengths))

    def forward(self, x: Tensor) -> Tuple[List[Tensor], List[List[Tensor]]]:
        logits, fmaps = [], []
        for disc in self.discriminators:
            logit, fmap = disc(x)
            logits.append(logit)
            fmaps.append(fmap)
        return logits, fmaps


class EncodecDiscriminator(nn.Module):
    """``EncodecDiscriminator(in_channels=2, filters=32, n_ffts=[2048…128], hop_lengths=[512…32],
    win_lengths=[2048…128])`` of the SA1.0 VAE config; ``convention`` picks the variant (module
    docstring). ``forward(x)`` → (logits per scale, feature maps per scale)."""

    def __init__(self, in_channels: int = 2, filters: int = 32,
                 n_ffts: Sequence[int] = (2048, 1024, 512, 256, 128),
                 hop_lengths: Sequence[int] = (512, 256, 128, 64, 32),
                 win_lengths: Sequence[int] = (2048, 1024, 512, 256, 128),
                 convention: str = "sa1.0"):
        super().__init__()
        if convention not in CONVENTIONS:
            raise DiscriminatorInputError(f"convention must be one of {tuple(CONVENTIONS)}, got {convention!r}")
        c = CONVENTIONS[convention]
        self.convention = convention
        self.in_channels = in_channels
        self.mean_over_scales = c["mean_over_scales"]
        self.discriminators = MultiScaleSTFTDiscriminator(
            filters, in_channels=in_channels, n_ffts=n_ffts, hop_lengths=hop_lengths,
            win_lengths=win_lengths, stride=c["stride"], weight_norm_first=c["weight_norm_first"])

    def forward(self, x: Tensor) -> Tuple[List[Tensor], List[List[Tensor]]]:
        if x.dim() != 3 or x.shape[1] != self.in_channels:
            raise DiscriminatorInputError(f"expected (batch, {self.in_channels}, samples), got {tuple(x.shape)}")
        return self.discriminators(x)

    def loss(self, reals: Tensor, fakes: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """(discriminator hinge loss, generator hinge loss, feature-matching distance).

        Nothing is detached: the caller decides which parameters each loss updates (the
        reference steps the discriminator on one step and the autoencoder on the next)."""
        logits_real, feats_real = self(reals)
        logits_fake, feats_fake = self(fakes)
        dis = adv = fm = reals.new_zeros((), dtype=torch.float32)
        for lr, lf, fr, ff in zip(logits_real, logits_fake, feats_real, feats_fake):
            dis = dis + hinge_discriminator_loss(lr, lf)
            adv = adv + hinge_generator_loss(lf)
            fm = fm + feature_matching_loss(fr, ff)
        if self.mean_over_scales:
            n = len(logits_real)
            dis, adv, fm = dis / n, adv / n, fm / n
        return dis, adv, fm
