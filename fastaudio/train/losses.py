"""Training losses: the VAE's multi-resolution STFT reconstruction loss and the diffusion v-loss.

Spectral losses reproduce auraloss 0.4.0 (what stable-audio-tools used when SA1.0's VAE was
trained): per resolution, spectral convergence ``‖|Y|−|X|‖_F / ‖|Y|‖_F`` plus the L1 distance of
log-magnitudes, magnitudes ``sqrt(max(re²+im², eps))`` of a centred, reflect-padded Hann STFT;
multi-resolution = mean over resolutions; sum-and-difference = mean of the losses on (L+R) and
(L−R). Perceptual weighting is auraloss's "aw" pre-emphasis: a 101-tap least-squares FIR fit of
the A-weighting curve, applied by zero-padded convolution in the time domain before the STFT.

Two details decide the numbers and are easy to get wrong:

* auraloss 0.4.0 takes the spectral-convergence norms over the whole batch at once; the copy
  vendored into stable-audio-tools ≥ 0.0.17 takes them per item and averages
  (``per_item_sc=True``, convention ``"sat-0.0.19"``).
* stable-audio-tools calls the loss as ``loss(reals, decoded)`` — reals in the *input* slot —
  in every version (≤ 0.0.16 by key order, ≥ 0.0.17 explicitly, "wrong order" comment and all),
  so spectral convergence is normalised by the *decoded* magnitudes. :class:`VAEReconstructionLoss`
  does the same.

``diffusion_loss`` is the v-objective of ``fastaudio.diffusion.schedule`` (the preconditioning
training and sampling share), with classifier-free-guidance dropout to the U-Net's learned null
context, as stable-audio-tools' ``DiffusionCondTrainingWrapper`` trains SA1.0.
"""
from __future__ import annotations

import functools
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..diffusion.schedule import v_diffusion_inputs
from ..errors import FastAudioError


class LossInputError(FastAudioError, ValueError):
    """A loss got tensors (or settings) it cannot use; the message says which."""


# ---------------------------------------------------------------------------------------------
# A-weighting pre-emphasis (auraloss FIRFilter(filter_type="aw"))
# ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def _a_weighting_taps(sample_rate: float, ntaps: int) -> Tuple[float, ...]:
    try:
        import numpy as np
        import scipy.signal as sig
    except ImportError as e:  # scipy is in the train extra, not the base install
        raise LossInputError(f"perceptual weighting needs scipy ({e}); pip install fastaudio[train]") from None
    # The analog A-weighting curve (IEC 61672 pole frequencies, +1.9997 dB gain so that it is
    # 0 dB at 1 kHz) as auraloss defines it: s⁴·k / ((s+ω4)²(s+ω1)²(s+ω3)(s+ω2)).
    f1, f2, f3, f4, a1000 = 20.598997, 107.65265, 737.86223, 12194.217, 1.9997
    num = [(2 * np.pi * f4) ** 2 * (10 ** (a1000 / 20)), 0, 0, 0, 0]
    den = np.polymul([1, 4 * np.pi * f4, (2 * np.pi * f4) ** 2], [1, 4 * np.pi * f1, (2 * np.pi * f1) ** 2])
    den = np.polymul(np.polymul(den, [1, 2 * np.pi * f3]), [1, 2 * np.pi * f2])
    b, a = sig.bilinear(num, den, fs=sample_rate)
    # auraloss samples the digital IIR response at 512 points and least-squares fits a linear-
    # phase FIR to its magnitude (consecutive point pairs are the bands). Rounded to float32 as
    # auraloss stores them, so filtered signals agree to the last bit of the taps.
    w, h = sig.freqz(b, a, worN=512, fs=sample_rate)
    taps = sig.firls(ntaps, w, np.abs(h), fs=sample_rate)
    return tuple(float(v) for v in taps.astype(np.float32))


def a_weighting_fir(sample_rate: float, ntaps: int = 101) -> Tensor:
    """The FIR taps (float32, ``ntaps``) auraloss uses for A-weighting at ``sample_rate``."""
    if ntaps % 2 == 0:
        raise LossInputError(f"ntaps must be odd (got {ntaps}) so the filter is centred")
    return torch.tensor(_a_weighting_taps(float(sample_rate), int(ntaps)), dtype=torch.float32)


class AWeighting(nn.Module):
    """Time-domain A-weighting: ``(N, T) → (N, T)``, zero-padded 'same' convolution."""

    def __init__(self, sample_rate: float, ntaps: int = 101):
        super().__init__()
        # Not persistent: derived from sample_rate, so it stays out of checkpoints.
        self.register_buffer("taps", a_weighting_fir(sample_rate, ntaps).view(1, 1, -1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        taps = self.taps.to(device=x.device, dtype=x.dtype)
        # Outside autocast: a bf16 conv would round the filtered signal before the log-spectra.
        with torch.autocast(device_type=x.device.type, enabled=False):
            return F.conv1d(x.unsqueeze(1), taps, padding=taps.shape[-1] // 2).squeeze(1)


# ---------------------------------------------------------------------------------------------
# STFT losses (auraloss.freq semantics)
# ---------------------------------------------------------------------------------------------

def _as_rows(input: Tensor, target: Tensor, name: str) -> Tuple[Tensor, Tensor]:
    """(B, C, T) pairs → (B·C, T) rows in fp32 (fp64 kept): log-magnitudes of half-precision
    spectra are too coarse for a loss that reaches 1e-3."""
    if input.dim() != 3 or input.shape != target.shape:
        raise LossInputError(f"{name} takes two (batch, channels, samples) tensors of one shape, got "
                             f"{tuple(input.shape)} and {tuple(target.shape)}")
    dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    return (input.reshape(-1, input.shape[-1]).to(dtype),
            target.reshape(-1, target.shape[-1]).to(dtype))


class STFTLoss(nn.Module):
    """auraloss.freq.STFTLoss: ``w_sc·SC + w_log_mag·L1(log|X|, log|Y|) + w_lin_mag·L1(|X|, |Y|)
    + w_phs·MSE(∠X, ∠Y)`` for ``input`` X and ``target`` Y of shape (batch, channels, samples).

    ``per_item_sc`` takes the spectral-convergence norms per (item, channel) and averages them,
    as the copy in stable-audio-tools ≥ 0.0.17 does; the default is auraloss 0.4.0's whole-batch
    norm. Mel/chroma scaling and scale invariance are not implemented (SA1.0 uses neither).
    """

    def __init__(self, fft_size: int = 1024, hop_size: int = 256, win_length: int = 1024,
                 window: str = "hann_window", w_sc: float = 1.0, w_log_mag: float = 1.0,
                 w_lin_mag: float = 0.0, w_phs: float = 0.0, sample_rate: Optional[float] = None,
                 perceptual_weighting: bool = False, eps: float = 1e-8, reduction: str = "mean",
                 mag_distance: str = "L1", per_item_sc: bool = False,
                 log_floor: Optional[float] = None):
        super().__init__()
        if win_length > fft_size:
            raise LossInputError(f"win_length {win_length} exceeds fft_size {fft_size}")
        if reduction not in ("mean", "sum"):
            raise LossInputError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        if mag_distance == "L1":
            self._distance = F.l1_loss
        elif mag_distance == "L2":
            self._distance = F.mse_loss
        else:
            raise LossInputError(f"mag_distance must be 'L1' or 'L2', got {mag_distance!r}")
        if per_item_sc and (reduction != "mean" or w_phs):
            raise LossInputError("per_item_sc reproduces stable-audio-tools' loss only with "
                                 "reduction='mean' and w_phs=0")
        window_fn = getattr(torch, window, None) if window.endswith("_window") else None
        if window_fn is None:
            raise LossInputError(f"window {window!r} is not a torch window function (e.g. 'hann_window')")
        if perceptual_weighting and sample_rate is None:
            raise LossInputError("sample_rate must be given when perceptual_weighting is on")
        self.fft_size, self.hop_size, self.win_length = int(fft_size), int(hop_size), int(win_length)
        self.w_sc, self.w_log_mag, self.w_lin_mag, self.w_phs = w_sc, w_log_mag, w_lin_mag, w_phs
        self.eps, self.reduction, self.per_item_sc = eps, reduction, per_item_sc
        self.register_buffer("window", window_fn(self.win_length), persistent=False)
        # log_floor (not in auraloss): the log term compares max(|X|, floor) instead of |X|, with
        # the floor at the peak magnitude a sinusoid of amplitude log_floor gets in this STFT
        # (amplitude · sum(window) / 2), so it means the same level at every resolution. Without
        # it the log term is mostly the floor: on the 4-clip overfit set the bins within 40 dB of
        # their frame's loudest are 4-10 % of a 4096-point STFT and ~10 % of its log term.
        if log_floor is not None and not (0.0 < float(log_floor) < 1.0):
            raise LossInputError(f"log_floor must be an amplitude in (0, 1), got {log_floor!r}")
        self.log_floor_magnitude = (None if log_floor is None
                                    else float(log_floor) * float(self.window.sum()) / 2)
        self.prefilter = AWeighting(sample_rate) if perceptual_weighting else None

    # The two halves of forward, public so the multi-resolution and stereo losses can filter a
    # signal once and reuse its spectra across resolutions and loss terms.
    def spectra(self, rows: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """(N, T) → magnitudes (N, fft/2+1, frames) and, when w_phs is used, phases."""
        if rows.shape[-1] <= self.fft_size // 2:
            raise LossInputError(f"signals of {rows.shape[-1]} samples are too short for an STFT of "
                                 f"{self.fft_size} (centre padding needs more than {self.fft_size // 2})")
        spec = torch.stft(rows, self.fft_size, self.hop_size, self.win_length,
                          self.window.to(device=rows.device, dtype=rows.dtype), center=True,
                          pad_mode="reflect", return_complex=True)
        mag = torch.sqrt(torch.clamp(spec.real ** 2 + spec.imag ** 2, min=self.eps))
        return mag, (torch.angle(spec) if self.w_phs else None)

    def distance(self, x_mag: Tensor, y_mag: Tensor, x_phs: Optional[Tensor] = None,
                 y_phs: Optional[Tensor] = None) -> Tensor:
        """The weighted loss between input spectra X and target spectra Y (one group of rows)."""
        loss = x_mag.new_zeros(())
        if self.w_sc:
            if self.per_item_sc:
                sc = (torch.linalg.vector_norm(y_mag - x_mag, dim=(-2, -1))
                      / torch.linalg.vector_norm(y_mag, dim=(-2, -1))).mean()
            else:
                sc = torch.linalg.vector_norm(y_mag - x_mag) / torch.linalg.vector_norm(y_mag)
            loss = loss + self.w_sc * sc
        if self.w_log_mag:
            floor = self.log_floor_magnitude
            x_log, y_log = ((torch.log(x_mag), torch.log(y_mag)) if floor is None else
                            (torch.log(x_mag.clamp_min(floor)), torch.log(y_mag.clamp_min(floor))))
            loss = loss + self.w_log_mag * self._distance(x_log, y_log, reduction=self.reduction)
        if self.w_lin_mag:
            loss = loss + self.w_lin_mag * self._distance(x_mag, y_mag, reduction=self.reduction)
        if self.w_phs:
            loss = loss + self.w_phs * F.mse_loss(x_phs, y_phs)  # auraloss: always a mean
        return loss

    def filtered_rows(self, input: Tensor, target: Tensor) -> Tuple[Tensor, Tensor]:
        x, y = _as_rows(input, target, type(self).__name__)
        if self.prefilter is not None:
            x, y = self.prefilter(x), self.prefilter(y)
        return x, y

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        x, y = self.filtered_rows(input, target)
        (xm, xp), (ym, yp) = self.spectra(x), self.spectra(y)
        return self.distance(xm, ym, xp, yp)


class MultiResolutionSTFTLoss(nn.Module):
    """auraloss.freq.MultiResolutionSTFTLoss: the mean of :class:`STFTLoss` over resolutions."""

    def __init__(self, fft_sizes: Sequence[int] = (1024, 2048, 512),
                 hop_sizes: Sequence[int] = (120, 240, 50),
                 win_lengths: Sequence[int] = (600, 1200, 240), **stft_kwargs):
        super().__init__()
        if not len(fft_sizes) == len(hop_sizes) == len(win_lengths) or not fft_sizes:
            raise LossInputError(f"fft_sizes, hop_sizes and win_lengths must be non-empty and of one "
                                 f"length, got {len(fft_sizes)}, {len(hop_sizes)}, {len(win_lengths)}")
        self.stft_losses = nn.ModuleList(STFTLoss(f, h, w, **stft_kwargs)
                                         for f, h, w in zip(fft_sizes, hop_sizes, win_lengths))

    def distance_rows(self, x: Tensor, y: Tensor, groups: int = 1) -> List[Tensor]:
        """Mean-over-resolutions loss of already filtered rows, for each of ``groups`` equal
        slices of the rows (one STFT per resolution serves every group)."""
        totals = [x.new_zeros(()) for _ in range(groups)]
        for f in self.stft_losses:
            (xm, xp), (ym, yp) = f.spectra(x), f.spectra(y)
            for g, (xm_g, ym_g) in enumerate(zip(xm.chunk(groups), ym.chunk(groups))):
                xp_g = xp.chunk(groups)[g] if xp is not None else None
                yp_g = yp.chunk(groups)[g] if yp is not None else None
                totals[g] = totals[g] + f.distance(xm_g, ym_g, xp_g, yp_g)
        return [t / len(self.stft_losses) for t in totals]

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        # The A-weighting filter is the same at every resolution: filter once, not once each.
        x, y = self.stft_losses[0].filtered_rows(input, target)
        return self.distance_rows(x, y)[0]


def sum_and_difference(x: Tensor) -> Tuple[Tensor, Tensor]:
    """(B, 2, T) → (L+R, L−R), each (B, 1, T)."""
    if x.dim() != 3 or x.shape[1] != 2:
        raise LossInputError(f"sum-and-difference needs stereo (batch, 2, samples), got {tuple(x.shape)}")
    return (x[:, 0] + x[:, 1]).unsqueeze(1), (x[:, 0] - x[:, 1]).unsqueeze(1)


class SumAndDifferenceSTFTLoss(nn.Module):
    """auraloss.freq.SumAndDifferenceSTFTLoss: ``(w_sum·MR(L+R) + w_diff·MR(L−R)) / 2``."""

    def __init__(self, fft_sizes: Sequence[int], hop_sizes: Sequence[int],
                 win_lengths: Sequence[int], w_sum: float = 1.0, w_diff: float = 1.0, **stft_kwargs):
        super().__init__()
        self.w_sum, self.w_diff = w_sum, w_diff
        self.mrstft = MultiResolutionSTFTLoss(fft_sizes, hop_sizes, win_lengths, **stft_kwargs)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        (xs, xd), (ys, yd) = sum_and_difference(input), sum_and_difference(target)
        return (self.w_sum * self.mrstft(xs, ys) + self.w_diff * self.mrstft(xd, yd)) / 2


# ---------------------------------------------------------------------------------------------
# The VAE's reconstruction loss, combined as stable-audio-tools' AutoencoderTrainingWrapper does
# ---------------------------------------------------------------------------------------------

# loss_configs["spectral"] of the SA1.0 VAE training config.
REFERENCE_SPECTRAL_CONFIG = {
    "type": "mrstft",
    "config": {
        "fft_sizes": [2048, 1024, 512, 256, 128, 64, 32],
        "hop_sizes": [512, 256, 128, 64, 32, 16, 8],
        "win_lengths": [2048, 1024, 512, 256, 128, 64, 32],
        "perceptual_weighting": True,
    },
    "weights": {"mrstft": 1.0},
}

CONVENTIONS = ("sa1.0", "sat-0.0.19")
_STFT_KEYS = {"fft_sizes", "hop_sizes", "win_lengths", "window", "w_sc", "w_log_mag", "w_lin_mag",
              "w_phs", "perceptual_weighting", "eps", "reduction", "mag_distance", "log_floor"}


class VAEReconstructionLoss(nn.Module):
    """Spectral reconstruction loss of the VAE: ``forward(decoded, reals) → (total, parts)``.

    ``config`` is a reference ``loss_configs["spectral"]`` entry (``type`` "mrstft", ``config``
    of STFT settings, ``weights.mrstft`` = w). Stereo: parts ``mrstft_loss`` = w·SumAndDifference,
    ``stft_loss_left`` / ``stft_loss_right`` = w/2·MultiResolution on each channel; mono:
    ``mrstft_loss`` = w·MultiResolution. Parts are weighted, and total is their sum.

    ``convention``: ``"sa1.0"`` (auraloss 0.4.0, whole-batch spectral convergence: what trained
    SA1.0's VAE) or ``"sat-0.0.19"`` (the per-item copy in today's stable-audio-tools).
    ``sc_over``: ``"decoded"`` (the reference's argument order, see the module docstring) or
    ``"reals"`` (spectral convergence normalised by the real audio, as auraloss intends; the other
    terms are symmetric, so only that normalisation changes).
    """

    def __init__(self, sample_rate: float, config: Optional[dict] = None, convention: str = "sa1.0",
                 sc_over: str = "decoded"):
        super().__init__()
        config = REFERENCE_SPECTRAL_CONFIG if config is None else config
        unknown = set(config) - {"type", "config", "weights", "decay"}
        if unknown:
            raise LossInputError(f"unknown spectral loss key(s) {sorted(unknown)} "
                                 "(known: type, config, weights, decay)")
        if config.get("type") != "mrstft":
            raise LossInputError(f"spectral loss type must be 'mrstft', got {config.get('type')!r}")
        if float(config.get("decay", 1.0)) != 1.0:
            raise LossInputError("spectral.decay != 1 (a weight that shrinks every call) is not supported")
        stft = dict(config.get("config", {}))
        unknown = set(stft) - _STFT_KEYS
        if unknown:
            raise LossInputError(f"unknown spectral.config key(s) {sorted(unknown)} "
                                 f"(known: {', '.join(sorted(_STFT_KEYS))})")
        weights = config.get("weights", {})
        if set(weights) != {"mrstft"}:
            raise LossInputError(f"spectral.weights must be exactly {{'mrstft': w}}, got {weights}")
        if convention not in CONVENTIONS:
            raise LossInputError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
        if sc_over not in ("decoded", "reals"):
            raise LossInputError(f"sc_over must be 'decoded' or 'reals', got {sc_over!r}")
        self.weight = float(weights["mrstft"])
        self.convention, self.sc_over = convention, sc_over
        self.mrstft = MultiResolutionSTFTLoss(sample_rate=sample_rate,
                                              per_item_sc=convention == "sat-0.0.19", **stft)

    def forward(self, decoded: Tensor, reals: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        if decoded.dim() != 3 or decoded.shape != reals.shape:
            raise LossInputError(f"decoded and reals must be (batch, channels, samples) of one shape, "
                                 f"got {tuple(decoded.shape)} and {tuple(reals.shape)}")
        w = self.weight
        # stable-audio-tools passes reals as the loss's *input* and decoded as its *target*
        # (see the module docstring): by default keep that, it decides the spectral-convergence
        # norm (the target's); sc_over="reals" swaps the slots.
        inp, tgt = (reals, decoded) if self.sc_over == "decoded" else (decoded, reals)
        if decoded.shape[1] == 1:
            parts = {"mrstft_loss": w * self.mrstft(inp, tgt)}
        elif decoded.shape[1] == 2:
            # Sum, difference, left, right: filter and transform all four in one batch per
            # resolution; each group's loss is still computed over its own rows only.
            first = self.mrstft.stft_losses[0]
            rows = []
            for sig in (inp, tgt):
                s, d = sum_and_difference(sig)
                rows.append(torch.cat([s, d, sig[:, 0:1], sig[:, 1:2]], dim=0))
            x, y = first.filtered_rows(rows[0], rows[1])
            l_sum, l_diff, l_left, l_right = self.mrstft.distance_rows(x, y, groups=4)
            parts = {"mrstft_loss": w * (l_sum + l_diff) / 2,
                     "stft_loss_left": (w / 2) * l_left,
                     "stft_loss_right": (w / 2) * l_right}
        else:
            raise LossInputError(f"the VAE loss handles mono or stereo audio, got {decoded.shape[1]} channels")
        return sum(parts.values()), parts


# ---------------------------------------------------------------------------------------------
# Latent diffusion: v-objective MSE with CFG dropout
# ---------------------------------------------------------------------------------------------

def diffusion_loss(unet: Callable[..., Tensor], latents: Tensor, context: Optional[Tensor],
                   context_mask: Optional[Tensor],
                   null_context_fn: Optional[Callable[[int, int], Tensor]] = None,
                   t: Optional[Tensor] = None, noise: Optional[Tensor] = None,
                   generator: Optional[torch.Generator] = None, cfg_dropout: float = 0.1,
                   padding_mask: Optional[Tensor] = None,
                   dropped: Optional[Tensor] = None) -> Tuple[Tensor, Dict[str, Tensor]]:
    """v-objective MSE of ``unet(x_t, t, context=, context_mask=)`` on clean ``latents`` (B, C, L).

    Draws, from ``generator`` and in this order: ``t ~ U[0, 1)`` per item (unless given),
    ``noise ~ N(0, I)`` (unless given), and one uniform per item that sends the item's context
    to the null context when below ``cfg_dropout``. ``null_context_fn(batch, tokens)`` defaults
    to ``unet.null_context``. The context mask is kept for dropped items, as the reference does
    (and as guidance does at sampling time). ``padding_mask`` (B, L), True on real frames,
    restricts the mean to them (the reference's ``mask_padding``, off for SA1.0).

    Returns ``(loss, info)`` with ``info``: ``t``, ``cfg_dropped`` (B,) bool, ``mse_per_item``
    (B,), all detached. ``dropped`` (B,) bool gives the dropout decisions instead of drawing them
    (the trainer derives them, like t and the noise, from each sample's own generator).
    """
    if latents.dim() != 3:
        raise LossInputError(f"latents must be (batch, channels, length), got {tuple(latents.shape)}")
    if not 0.0 <= cfg_dropout <= 1.0:
        raise LossInputError(f"cfg_dropout must be in [0, 1], got {cfg_dropout}")
    b, device = latents.shape[0], latents.device
    gen_device = generator.device if generator is not None else device

    if t is None:
        t = torch.rand(b, generator=generator, device=gen_device)
    t = torch.as_tensor(t).to(device=device, dtype=torch.float32)
    if t.shape != (b,):
        raise LossInputError(f"t must be ({b},), got {tuple(t.shape)}")
    if noise is None:
        noise = torch.randn(latents.shape, generator=generator, device=gen_device, dtype=latents.dtype)
    noise = noise.to(device=device, dtype=latents.dtype)
    if noise.shape != latents.shape:
        raise LossInputError(f"noise must match latents {tuple(latents.shape)}, got {tuple(noise.shape)}")
    if dropped is None:
        # Always drawn (even for cfg_dropout 0 or 1) so the generator's stream does not depend on it.
        dropped = (torch.rand(b, generator=generator, device=gen_device) < cfg_dropout).to(device)
    dropped = torch.as_tensor(dropped, device=device).bool()

    if context is not None:
        if context.dim() != 3 or context.shape[0] != b:
            raise LossInputError(f"context must be ({b}, tokens, features), got {tuple(context.shape)}")
        null_fn = null_context_fn if null_context_fn is not None else getattr(unet, "null_context", None)
        if null_fn is None:
            raise LossInputError("pass null_context_fn, or a model with a null_context(batch, tokens) method")
        null = null_fn(b, context.shape[1]).to(device=context.device, dtype=context.dtype)
        if null.shape != context.shape:
            raise LossInputError(f"null context {tuple(null.shape)} does not match context "
                                 f"{tuple(context.shape)}")
        context = torch.where(dropped.view(b, 1, 1), null, context)

    x_t, target = v_diffusion_inputs(latents, t, noise)
    v = unet(x_t, t, context=context, context_mask=context_mask)
    if v.shape != target.shape:
        raise LossInputError(f"the model returned {tuple(v.shape)}, expected {tuple(target.shape)}")
    err = (v.float() - target.float()) ** 2
    if padding_mask is None:
        per_item = err.mean(dim=(1, 2))
        loss = err.mean()
    else:
        if padding_mask.shape != (b, latents.shape[-1]):
            raise LossInputError(f"padding_mask must be ({b}, {latents.shape[-1]}), got "
                                 f"{tuple(padding_mask.shape)}")
        m = padding_mask.to(device=device, dtype=err.dtype).unsqueeze(1).expand_as(err)
        # The reference averages over the selected elements (mse[mask].mean()); clamping the
        # count keeps an all-padding batch at 0 instead of NaN without a host sync.
        loss = (err * m).sum() / m.sum().clamp_min(1)
        per_item = (err * m).sum(dim=(1, 2)) / m.sum(dim=(1, 2)).clamp_min(1)
    return loss, {"t": t.detach(), "cfg_dropped": dropped, "mse_per_item": per_item.detach()}
