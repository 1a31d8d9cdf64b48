"""The Oobleck VAE of Stable Audio Open (1.0 and Small): stable-audio-tools' OobleckEncoder and
OobleckDecoder with the VAE bottleneck (mean and scale, 64 channels each) in between.

Module and parameter names mirror stable-audio-tools 0.0.19 (``encoder.layers.N…``,
``decoder.layers.N…``, SnakeBeta's ``alpha``/``beta``, ``weight_g``/``weight_v``), so the
reference AudioAutoencoder's state dict loads into :class:`OobleckVAE` with ``strict=True``.
The public interface is :class:`~fastaudio.models.vae.AutoencoderVAE`'s, so the pipeline treats
both VAEs alike: any length is padded to a multiple of the 2048-sample frame (with silence, as
the reference's preprocessing does), and long inputs are encoded and decoded in overlapping
chunks (fastaudio/models/chunking.py) whose seams tests/test_oobleck.py measures.

Options the reference's configs may set and this module does not implement raise
:class:`OobleckConfigError` naming them: anti-aliased activations (they need alias_free_torch's
resampling filters) and odd decoder strides with transposed convs (the reference's decoder then
returns ``L·s − 1`` samples, which no frame-based chunking can stitch).
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..errors import FastAudioError
from ..nn.conv import WNConv1d, WNConvTranspose1d, conv1d, fold_weight_norm
from ..nn.snake import SnakeBeta1d, fold_snake_log_scale
from .chunking import decode_latents, map_in_chunks
from .vae import check_audio, check_latents, kl_divergence, vae_bottleneck


class OobleckConfigError(FastAudioError, ValueError):
    """An Oobleck autoencoder setting this implementation does not support, or inconsistent."""


# Stable Audio Open 1.0's and Small's autoencoder ("pretransform.config" in their model configs).
SAO_ENCODER = {"in_channels": 2, "channels": 128, "c_mults": [1, 2, 4, 8, 16],
               "strides": [2, 4, 4, 8, 8], "latent_dim": 128, "use_snake": True}
SAO_DECODER = {"out_channels": 2, "channels": 128, "c_mults": [1, 2, 4, 8, 16],
               "strides": [2, 4, 4, 8, 8], "latent_dim": 64, "use_snake": True, "final_tanh": False}

# Chunk sizes for decoding (and encoding), in latent frames of 2048 samples (21.5 frames/s).
# GPU: 1024 frames is SAO 1.0's whole 47.55 s window, decoded in one piece: its largest
# activation (128 channels × 2.1 M samples) is 0.5 GB in bf16. CPU: 256 frames bounds that
# activation to 270 MB in fp32 while the overlap's recomputation stays at 24 / 232 ≈ 10 %.
DEFAULT_CHUNK_FRAMES_GPU = 1024
DEFAULT_CHUNK_FRAMES_CPU = 256
# The SAO decoder's receptive field reaches 9.25 latent frames to either side, the encoder's 7.27
# (measured in tests/test_oobleck.py; they depend on strides and kernels, not on channels or
# weights): a 12-frame half-overlap covers both with margin, and chunked output then differs
# from unchunked by fp32 rounding only.
DEFAULT_OVERLAP_FRAMES = 24


def _activation(use_snake: bool, channels: int) -> nn.Module:
    return SnakeBeta1d(channels) if use_snake else nn.ELU()


def _reject_antialias(antialias_activation: bool, where: str) -> None:
    if antialias_activation:
        raise OobleckConfigError(
            f"{where}: antialias_activation=True is not supported (alias_free_torch's "
            "up/down-sampled activations are not implemented); Stable Audio Open does not use it")


class ResidualUnit(nn.Module):
    """Activation → conv k7 (dilated) → activation → conv k1, plus the input (passed to the
    last conv: added in its epilogue on the Triton path)."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int, use_snake: bool = False,
                 antialias_activation: bool = False):
        super().__init__()
        _reject_antialias(antialias_activation, "ResidualUnit")
        self.dilation = dilation
        self.layers = nn.Sequential(
            _activation(use_snake, out_channels),
            WNConv1d(in_channels, out_channels, kernel_size=7, dilation=dilation,
                     padding=3 * dilation),
            _activation(use_snake, out_channels),
            WNConv1d(out_channels, out_channels, kernel_size=1),
        )

    def _residual(self, x: Tensor) -> Tensor:
        act1, conv7, act2, conv1 = self.layers
        return conv1(act2(conv7(act1(x))), residual=x)

    def forward(self, x: Tensor) -> Tensor:
        if self.training and torch.is_grad_enabled():  # as the reference: recompute, keep less
            return checkpoint(self._residual, x, use_reentrant=False)
        return self._residual(x)


class EncoderBlock(nn.Module):
    """Three residual units (dilations 1, 3, 9), activation, strided conv (k = 2·stride)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, use_snake: bool = False):
        super().__init__()
        self.layers = nn.Sequential(
            ResidualUnit(in_channels, in_channels, 1, use_snake),
            ResidualUnit(in_channels, in_channels, 3, use_snake),
            ResidualUnit(in_channels, in_channels, 9, use_snake),
            _activation(use_snake, in_channels),
            WNConv1d(in_channels, out_channels, kernel_size=2 * stride, stride=stride,
                     padding=math.ceil(stride / 2)),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class SamePadWNConv1d(WNConv1d):
    """WNConv1d with torch's ``padding='same'`` (stride 1): ``total // 2`` zeros on the left,
    the rest on the right, for even kernels too."""

    def forward(self, x: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        total = self.dilation[0] * (self.kernel_size[0] - 1)
        return conv1d(x, self.current_weight(), self.bias, 1, (total // 2, total - total // 2),
                      self.dilation[0], residual)


class DecoderBlock(nn.Module):
    """Activation, upsampling (transposed conv, or nearest-neighbour repeat and a conv), three
    residual units (dilations 1, 3, 9)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, use_snake: bool = False,
                 use_nearest_upsample: bool = False):
        super().__init__()
        if use_nearest_upsample:
            upsample: nn.Module = nn.Sequential(
                nn.Upsample(scale_factor=stride, mode="nearest"),
                SamePadWNConv1d(in_channels, out_channels, kernel_size=2 * stride, stride=1,
                                bias=False, padding="same"),
            )
        else:
            if stride % 2:
                raise OobleckConfigError(
                    f"decoder stride {stride} is odd: the reference's transposed conv then "
                    f"returns {stride}·L − 1 samples, not {stride}·L (unsupported; even strides "
                    "or use_nearest_upsample=True are)")
            upsample = WNConvTranspose1d(in_channels, out_channels, kernel_size=2 * stride,
                                         stride=stride, padding=math.ceil(stride / 2))
        self.layers = nn.Sequential(
            _activation(use_snake, in_channels),
            upsample,
            ResidualUnit(out_channels, out_channels, 1, use_snake),
            ResidualUnit(out_channels, out_channels, 3, use_snake),
            ResidualUnit(out_channels, out_channels, 9, use_snake),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def _check_stack(c_mults: Sequence[int], strides: Sequence[int], where: str) -> None:
    if len(c_mults) == 0 or len(strides) != len(c_mults):
        raise OobleckConfigError(f"{where}: c_mults {list(c_mults)} and strides {list(strides)} "
                                 "must be non-empty and of equal length")
    if any(int(s) < 1 for s in strides) or any(int(c) < 1 for c in c_mults):
        raise OobleckConfigError(f"{where}: strides {list(strides)} and c_mults {list(c_mults)} "
                                 "must be positive")


class OobleckEncoder(nn.Module):
    """(B, in_channels, N) → (B, latent_dim, N / prod(strides)). Defaults are the reference's."""

    def __init__(self, in_channels: int = 2, channels: int = 128, latent_dim: int = 32,
                 c_mults: Sequence[int] = (1, 2, 4, 8), strides: Sequence[int] = (2, 4, 8, 8),
                 use_snake: bool = False, antialias_activation: bool = False):
        super().__init__()
        _check_stack(c_mults, strides, "OobleckEncoder")
        _reject_antialias(antialias_activation, "OobleckEncoder")
        self.in_channels = in_channels
        self.downsampling_ratio = math.prod(strides)
        dims = [channels * c for c in [1] + list(c_mults)]
        layers = [WNConv1d(in_channels, dims[0], kernel_size=7, padding=3)]
        layers += [EncoderBlock(dims[i], dims[i + 1], strides[i], use_snake)
                   for i in range(len(c_mults))]
        layers += [_activation(use_snake, dims[-1]),
                   WNConv1d(dims[-1], latent_dim, kernel_size=3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class OobleckDecoder(nn.Module):
    """(B, latent_dim, L) → (B, out_channels, L · prod(strides)). Defaults are the reference's."""

    def __init__(self, out_channels: int = 2, channels: int = 128, latent_dim: int = 32,
                 c_mults: Sequence[int] = (1, 2, 4, 8), strides: Sequence[int] = (2, 4, 8, 8),
                 use_snake: bool = False, antialias_activation: bool = False,
                 use_nearest_upsample: bool = False, final_tanh: bool = True):
        super().__init__()
        _check_stack(c_mults, strides, "OobleckDecoder")
        _reject_antialias(antialias_activation, "OobleckDecoder")
        self.out_channels = out_channels
        self.upsampling_ratio = math.prod(strides)
        dims = [channels * c for c in [1] + list(c_mults)]
        layers = [WNConv1d(latent_dim, dims[-1], kernel_size=7, padding=3)]
        layers += [DecoderBlock(dims[i], dims[i - 1], strides[i - 1], use_snake, use_nearest_upsample)
                   for i in range(len(c_mults), 0, -1)]
        layers += [_activation(use_snake, dims[0]),
                   WNConv1d(dims[0], out_channels, kernel_size=7, padding=3, bias=False),
                   nn.Tanh() if final_tanh else nn.Identity()]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def _entry(entry: Optional[Mapping[str, Any]], default: Mapping[str, Any], what: str,
           allowed: Tuple[str, ...]) -> Tuple[dict, bool, Mapping[str, Any]]:
    """(module kwargs, requires_grad, the entry) from a reference ``{"type": "oobleck",
    "config": {...}}`` entry; unknown keys and other types are errors, not ignored."""
    if entry is None:
        entry = {"type": "oobleck", "config": dict(default)}
    unknown = sorted(set(entry) - set(allowed))
    if unknown:
        raise OobleckConfigError(f"{what}: unsupported keys {unknown} (known: {list(allowed)})")
    if entry.get("type") != "oobleck":
        raise OobleckConfigError(f"{what}.type = {entry.get('type')!r}: only 'oobleck' is supported")
    return dict(entry.get("config", {})), bool(entry.get("requires_grad", True)), entry


def _build(cls, kwargs: dict, what: str) -> nn.Module:
    known = set(inspect.signature(cls).parameters)
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise OobleckConfigError(f"{what}.config: unsupported keys {unknown} (known: {sorted(known)})")
    return cls(**kwargs)


class OobleckVAE(nn.Module):
    """``encode(audio) -> latents`` and ``decode(latents) -> audio`` for any length.

    Keyword arguments are the reference autoencoder config's keys, so
    ``OobleckVAE(**model_config["model"]["pretransform"]["config"])`` builds that model;
    the defaults build Stable Audio Open's (156,112,514 parameters). ``scale`` is the
    AutoencoderPretransform's: latents are the bottleneck's mean (or sample) divided by it.
    ``chunk_frames`` (None: by device, :data:`DEFAULT_CHUNK_FRAMES_GPU` / ``_CPU``) and
    ``overlap_frames`` set the chunking. ``cpu_channels_last`` (default True): eager decoding on
    a CPU runs its convs on channels-last memory (``fastaudio.nn.conv.convs_channels_last``:
    2.2x in bf16, 1.3-1.6x in fp32, the same output); set it False for the (N, C, L) path.
    """

    def __init__(self, encoder: Optional[Mapping[str, Any]] = None,
                 decoder: Optional[Mapping[str, Any]] = None,
                 bottleneck: Optional[Mapping[str, Any]] = None, latent_dim: int = 64,
                 downsampling_ratio: int = 2048, io_channels: int = 2,
                 in_channels: Optional[int] = None, out_channels: Optional[int] = None,
                 pretransform: Optional[Mapping[str, Any]] = None, scale: float = 1.0,
                 chunk_frames: Optional[int] = None,
                 overlap_frames: int = DEFAULT_OVERLAP_FRAMES):
        super().__init__()
        enc_kw, enc_grad, _ = _entry(encoder, SAO_ENCODER, "encoder",
                                     ("type", "config", "requires_grad"))
        dec_kw, dec_grad, dec_entry = _entry(decoder, SAO_DECODER, "decoder",
                                             ("type", "config", "requires_grad", "soft_clip"))
        bottleneck = {"type": "vae"} if bottleneck is None else bottleneck
        if dict(bottleneck) != {"type": "vae"}:
            raise OobleckConfigError(f"bottleneck {dict(bottleneck)}: only {{'type': 'vae'}} is "
                                     "supported (Stable Audio Open's)")
        if pretransform is not None:
            raise OobleckConfigError("a pretransform inside the autoencoder is not supported")
        if not scale or not math.isfinite(scale):
            raise OobleckConfigError(f"scale must be finite and non-zero, got {scale}")
        if chunk_frames is not None and not 0 <= overlap_frames < chunk_frames:
            raise OobleckConfigError(f"overlap_frames {overlap_frames} must be >= 0 and smaller "
                                     f"than chunk_frames {chunk_frames}")
        if overlap_frames < 0:
            raise OobleckConfigError(f"overlap_frames must be >= 0, got {overlap_frames}")
        self.encoder = _build(OobleckEncoder, enc_kw, "encoder")
        self.decoder = _build(OobleckDecoder, dec_kw, "decoder")
        self.encoder.requires_grad_(enc_grad)
        self.decoder.requires_grad_(dec_grad)
        self.ratio = int(downsampling_ratio)
        self.latent_dim = int(latent_dim)
        self.io_channels = int(io_channels)
        self.scale = float(scale)
        self.soft_clip = bool(dec_entry.get("soft_clip", False))
        self.chunk_frames = chunk_frames
        self.overlap_frames = int(overlap_frames)
        self.cpu_channels_last = True
        self._check_consistent(enc_kw, dec_kw, in_channels, out_channels)

    def _check_consistent(self, enc_kw: dict, dec_kw: dict, in_channels, out_channels) -> None:
        problems = []
        for name, ratio in (("encoder", self.encoder.downsampling_ratio),
                            ("decoder", self.decoder.upsampling_ratio)):
            if ratio != self.ratio:
                problems.append(f"{name} strides multiply to {ratio}, downsampling_ratio is {self.ratio}")
        enc_latent = enc_kw.get("latent_dim", 32)
        dec_latent = dec_kw.get("latent_dim", 32)
        if enc_latent != 2 * self.latent_dim:
            problems.append(f"encoder latent_dim {enc_latent} must be 2 × latent_dim "
                            f"{self.latent_dim} (the VAE bottleneck's mean and scale)")
        if dec_latent != self.latent_dim:
            problems.append(f"decoder latent_dim {dec_latent} must equal latent_dim {self.latent_dim}")
        channels = {"io_channels": self.io_channels, "encoder in_channels": self.encoder.in_channels,
                    "decoder out_channels": self.decoder.out_channels,
                    "in_channels": in_channels, "out_channels": out_channels}
        if len({v for v in channels.values() if v is not None}) != 1:
            problems.append(f"audio channel counts differ: {channels}")
        if problems:
            raise OobleckConfigError("inconsistent Oobleck autoencoder: " + "; ".join(problems))

    @classmethod
    def from_pretransform_config(cls, pretransform: Mapping[str, Any], **overrides) -> "OobleckVAE":
        """From a diffusion model config's ``"pretransform"`` entry (``type`` "autoencoder").

        ``iterate_batch``, ``chunked``, ``model_half`` and ``enable_grad`` choose how the
        reference runs the model, not what it computes; fastaudio decides those itself (batched
        calls, automatic chunking, the pipeline's dtype, inference), so they are accepted and
        not applied."""
        allowed = {"type", "config", "scale", "iterate_batch", "chunked", "model_half", "enable_grad"}
        unknown = sorted(set(pretransform) - allowed)
        if unknown:
            raise OobleckConfigError(f"pretransform: unsupported keys {unknown}")
        if pretransform.get("type") != "autoencoder":
            raise OobleckConfigError(f"pretransform.type = {pretransform.get('type')!r}: only "
                                     "'autoencoder' is supported")
        kwargs = dict(pretransform.get("config", {}))
        kwargs.update(scale=float(pretransform.get("scale", 1.0)), **overrides)
        return cls(**kwargs)

    # -- validation ---------------------------------------------------------------------------
    def check_audio(self, audio: Tensor) -> None:
        check_audio(audio, self.io_channels)  # any length: shorter audio is padded, as the reference

    def check_latents(self, latents: Tensor) -> None:
        check_latents(latents, self.latent_dim)

    # -- chunking -------------------------------------------------------------------------------
    def default_chunk_frames(self, device: torch.device) -> int:
        """The constructor's ``chunk_frames``, else the default for ``device``'s type."""
        if self.chunk_frames is not None:
            return self.chunk_frames
        return DEFAULT_CHUNK_FRAMES_GPU if device.type == "cuda" else DEFAULT_CHUNK_FRAMES_CPU

    def _chunk(self, device: torch.device, chunk_frames: Optional[int]) -> int:
        return max(chunk_frames or self.default_chunk_frames(device), self.overlap_frames + 1)

    # -- encode ---------------------------------------------------------------------------------
    def _pad(self, audio: Tensor) -> Tensor:
        """Silence at the end up to whole frames, as the reference's preprocessing pads."""
        n = audio.shape[-1]
        target = math.ceil(n / self.ratio) * self.ratio
        return F.pad(audio, (0, target - n)) if target != n else audio

    def _encode_pre(self, audio: Tensor, chunked: Optional[bool]) -> Tensor:
        """Pre-bottleneck latents (B, 2·latent, frames) of padded audio."""
        frames = audio.shape[-1] // self.ratio
        chunk = self._chunk(audio.device, None)
        if chunked is None:
            chunked = frames > chunk
        if not chunked:
            return self.encoder(audio)
        return map_in_chunks(self.encoder, audio, frames, chunk, self.overlap_frames,
                             in_per_frame=self.ratio)

    def encode(self, audio: Tensor, sample: bool = False, generator: Optional[torch.Generator] = None,
               chunked: Optional[bool] = None) -> Tensor:
        """(B, 2, N) → (B, latent_dim, ceil(N / 2048)): the mean unless ``sample``, / scale."""
        self.check_audio(audio)
        z = vae_bottleneck(self._encode_pre(self._pad(audio), chunked), sample, generator)[0]
        return z / self.scale if self.scale != 1.0 else z

    def encode_with_kl(self, audio: Tensor, generator: Optional[torch.Generator] = None
                       ) -> Tuple[Tensor, Tensor]:
        """Training path: sampled latents (not divided by ``scale``, as the reference's
        autoencoder training sees them) and the KL term; unchunked, gradients kept."""
        self.check_audio(audio)
        z, mean, std = vae_bottleneck(self.encoder(self._pad(audio)), True, generator)
        return z, kl_divergence(mean, std)

    # -- decode ---------------------------------------------------------------------------------
    def decode(self, latents: Tensor, chunked: Optional[bool] = None,
               chunk_frames: Optional[int] = None, decoder: Optional[nn.Module] = None) -> Tensor:
        """(B, latent_dim, L) → (B, 2, 2048·L). Chunked when L exceeds ``chunk_frames`` (default:
        :meth:`default_chunk_frames`), so memory does not grow with the duration. ``decoder``
        replaces ``self.decoder`` for the call (e.g. its torch.compile'd form)."""
        run = decoder if decoder is not None else self.decoder
        self.check_latents(latents)
        if self.scale != 1.0:
            latents = latents * self.scale
        # a compiled decoder (``decoder``) has its layouts chosen by inductor
        audio = decode_latents(run, latents, self._chunk(latents.device, chunk_frames),
                               self.overlap_frames, self.ratio, chunked,
                               self.cpu_channels_last and decoder is None)
        return torch.tanh(audio) if self.soft_clip else audio

    def forward(self, audio: Tensor, generator: Optional[torch.Generator] = None
                ) -> Tuple[Tensor, Tensor, Tensor]:
        """Training: (reconstruction trimmed to the input length, KL, latents)."""
        z, kl = self.encode_with_kl(audio, generator)
        recon = self.decoder(z)
        if self.soft_clip:
            recon = torch.tanh(recon)
        return recon[..., : audio.shape[-1]], kl, z

    def fold_weight_norm(self) -> int:
        """Prepare for inference: fold weight norm into plain conv weights and SnakeBeta's
        log-scale parameters into linear ones; returns the count of modules folded."""
        return fold_weight_norm(self) + fold_snake_log_scale(self)
