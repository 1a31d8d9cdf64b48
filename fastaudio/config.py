"""Typed configuration for every component, named presets, and JSON in and out.

A model is described by one :class:`ModelConfig` tree of dataclasses. ``to_dict``/``from_dict``
round-trip it through JSON; ``from_dict`` rejects unknown keys and wrong types with a
:class:`ConfigError` naming the key path (``unet.multipliers[2]``), never a silent default.
This module reads fastaudio's own JSON format only; :func:`fastaudio.config_files.load_config`
also reads stable-audio-tools' ``model_config.json`` files.

Presets (``preset(name)``):

* ``stable-audio-1.0`` – exactly the reference configuration (../shared/reference).
* ``small`` – 64 latent channels and 1024x downsampling as SA1.0, everything else scaled down
  so each stage trains on a CPU in about an hour; the shipped default model uses it.
* ``tiny`` – the smallest model that keeps SA1.0's structure, for unit tests.
"""
from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List

from .errors import FastAudioError


class ConfigError(FastAudioError, ValueError):
    """A configuration value or key is invalid; the message names the key path."""


# --------------------------------------------------------------------------------------------
# Component configs
# --------------------------------------------------------------------------------------------

@dataclass
class VAEEncoderConfig:
    """DAC encoder (no quantizer): d_model doubles at each stride."""
    in_channels: int = 2
    d_model: int = 128
    strides: List[int] = field(default_factory=lambda: [4, 4, 8, 8])
    latent_dim: int = 128  # pre-bottleneck channels: mean and scale, 64 each


@dataclass
class VAEDecoderConfig:
    """DAC decoder: channels halve at each rate."""
    out_channels: int = 2
    latent_dim: int = 64
    channels: int = 1536
    rates: List[int] = field(default_factory=lambda: [8, 8, 4, 4])


@dataclass
class VAEConfig:
    encoder: VAEEncoderConfig = field(default_factory=VAEEncoderConfig)
    decoder: VAEDecoderConfig = field(default_factory=VAEDecoderConfig)
    bottleneck: str = "vae"
    latent_dim: int = 64
    downsampling_ratio: int = 1024
    io_channels: int = 2
    # Chunked encode/decode for long audio, in latent frames. The decoder's receptive field is
    # under 16 frames each side, so an overlap of 32 (16 per side) reproduces the unchunked
    # result to fp32 rounding (tests/test_vae.py measures it).
    chunk_frames: int = 128
    overlap_frames: int = 32


@dataclass
class UNetConfig:
    """audio-diffusion-pytorch UNetCFG1d as stable-audio-tools configures it."""
    in_channels: int = 64
    channels: int = 256
    multipliers: List[int] = field(default_factory=lambda: [4, 4, 4, 5, 5])
    factors: List[int] = field(default_factory=lambda: [1, 2, 2, 4])
    num_blocks: List[int] = field(default_factory=lambda: [2, 2, 2, 2])
    attentions: List[int] = field(default_factory=lambda: [1, 3, 3, 3, 3])
    attention_heads: int = 16
    attention_multiplier: int = 4
    resnet_groups: int = 16
    kernel_multiplier_downsample: int = 2
    use_nearest_upsample: bool = False
    use_skip_scale: bool = True
    use_context_time: bool = True
    context_embedding_features: int = 768
    context_embedding_max_length: int = 79
    # Not in SA1.0 (its U-Net sees the prompt only through cross-attention): also add the masked
    # mean of the context tokens to the FiLM mapping of every block, as audio-diffusion-pytorch's
    # `context_features` adds a global vector. Off in every preset: a 3200-step fine-tune of the
    # shipped model with it did not follow prompts better (docs/research/pooled-context.md).
    use_pooled_context: bool = False


@dataclass
class TextEncoderConfig:
    """CLAP text tower of RoBERTa shape; features from ``feature_layer`` (−2: second-to-last)."""
    vocab_size: int = 50265
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1
    max_length: int = 77
    feature_layer: int = -2
    # "roberta": byte-level BPE from tokenizer files shipped with the model (vocab.json +
    # merges.txt or tokenizer.json); "byte": UTF-8 bytes, needs no files (offline default).
    tokenizer: str = "roberta"


@dataclass
class AudioEncoderConfig:
    """CLAP audio tower: a log-mel spectrogram transformer (a simpler stand-in for HTSAT)."""
    sample_rate: int = 44100
    n_fft: int = 1024
    hop_length: int = 441
    n_mels: int = 64
    patch_frames: int = 4
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    max_seconds: float = 10.0


@dataclass
class CLAPConfig:
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    audio: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)
    projection_dim: int = 512


@dataclass
class ConditioningConfig:
    cond_dim: int = 768
    seconds_min: int = 0
    seconds_max: int = 512


@dataclass
class SamplingConfig:
    """Defaults of the sampler (the reference's demo settings)."""
    sampler: str = "dpmpp-3m-sde"
    steps: int = 100
    cfg_scale: float = 7.0
    cfg_rescale: float = 0.4
    sigma_min: float = 0.03
    sigma_max: float = 500.0
    schedule: str = "polyexponential"  # polyexponential (rho 1: log-linear, the reference) | karras
    rho: float = 1.0                    # karras schedules usually take rho = 7


@dataclass
class ModelConfig:
    name: str = "stable-audio-1.0"
    sample_rate: int = 44100
    sample_size: int = 4194304
    audio_channels: int = 2
    vae: VAEConfig = field(default_factory=VAEConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    clap: CLAPConfig = field(default_factory=CLAPConfig)
    conditioning: ConditioningConfig = field(default_factory=ConditioningConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    # Derived figures -----------------------------------------------------------------------
    @property
    def latent_length(self) -> int:
        """Latent frames of the full window (4096 for SA1.0)."""
        return self.sample_size // self.vae.downsampling_ratio

    @property
    def window_seconds(self) -> float:
        return self.sample_size / self.sample_rate

    @property
    def latent_multiple(self) -> int:
        """The U-Net needs latent lengths that are a multiple of this (product of factors)."""
        return math.prod(self.unet.factors)

    def validate(self) -> "ModelConfig":
        """Check the cross-component constraints; raise ConfigError naming the key."""
        _validate(self)
        return self


# --------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------

def _stable_audio_1_0() -> ModelConfig:
    return ModelConfig()


def _small() -> ModelConfig:
    """64 latent channels and 1024x downsampling as SA1.0; everything else scaled for CPUs."""
    return ModelConfig(
        name="small",
        sample_size=1024 * 512,  # 11.9 s window, 512 latent frames
        vae=VAEConfig(
            encoder=VAEEncoderConfig(d_model=16, strides=[4, 4, 8, 8], latent_dim=128),
            decoder=VAEDecoderConfig(latent_dim=64, channels=192, rates=[8, 8, 4, 4]),
        ),
        unet=UNetConfig(
            channels=64, multipliers=[2, 2, 4, 4, 4], factors=[1, 2, 2, 4],
            num_blocks=[1, 1, 1, 1], attentions=[0, 1, 1, 1, 1], attention_heads=4,
            resnet_groups=8, context_embedding_features=256, context_embedding_max_length=79,
        ),
        clap=CLAPConfig(
            text=TextEncoderConfig(vocab_size=260, hidden_size=256, num_layers=4, num_heads=4,
                                   intermediate_size=1024, max_position_embeddings=130,
                                   tokenizer="byte"),
            audio=AudioEncoderConfig(hidden_size=256, num_layers=4, num_heads=4, max_seconds=12.0),
            projection_dim=256,
        ),
        conditioning=ConditioningConfig(cond_dim=256),
        sampling=SamplingConfig(steps=50, cfg_scale=5.0, sigma_max=80.0),
    )


def _tiny() -> ModelConfig:
    """The smallest model with SA1.0's structure (1024x VAE, 4-level U-Net); unit tests."""
    return ModelConfig(
        name="tiny",
        sample_size=1024 * 64,
        vae=VAEConfig(
            encoder=VAEEncoderConfig(d_model=4, strides=[4, 4, 8, 8], latent_dim=16),
            decoder=VAEDecoderConfig(latent_dim=8, channels=32, rates=[8, 8, 4, 4]),
            latent_dim=8, chunk_frames=48, overlap_frames=32,
        ),
        unet=UNetConfig(
            in_channels=8, channels=32, multipliers=[1, 1, 2, 2, 2], factors=[1, 2, 2, 4],
            num_blocks=[1, 1, 1, 1], attentions=[1, 1, 1, 1, 1], attention_heads=2,
            attention_multiplier=2, resnet_groups=4, context_embedding_features=32,
            context_embedding_max_length=79,
        ),
        clap=CLAPConfig(
            text=TextEncoderConfig(vocab_size=260, hidden_size=32, num_layers=2, num_heads=2,
                                   intermediate_size=64, max_position_embeddings=130,
                                   tokenizer="byte"),
            audio=AudioEncoderConfig(hidden_size=32, num_layers=1, num_heads=2, max_seconds=2.0),
            projection_dim=16,
        ),
        conditioning=ConditioningConfig(cond_dim=32),
        sampling=SamplingConfig(steps=4, cfg_scale=3.0),
    )


PRESETS = {
    "stable-audio-1.0": _stable_audio_1_0,
    "small": _small,
    "tiny": _tiny,
}


def preset(name: str) -> ModelConfig:
    """A fresh copy of a named preset."""
    try:
        return PRESETS[name]().validate()
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}") from None


# --------------------------------------------------------------------------------------------
# JSON in and out
# --------------------------------------------------------------------------------------------

FORMAT_TAG = "fastaudio"
FORMAT_VERSION = 1


def to_dict(cfg: Any) -> Dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_to_json(cfg: ModelConfig) -> str:
    body = {"format": FORMAT_TAG, "format_version": FORMAT_VERSION, **to_dict(cfg)}
    return json.dumps(body, indent=2) + "\n"


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``, strictly: unknown keys and wrong types raise."""
    where = path or "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(f"unknown config key {_join(path, key)!r} "
                              f"(known: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _convert(hints[f.name], data[f.name], _join(path, f.name))
    return cls(**kwargs)


def config_from_json(text: str, source: str = "config") -> ModelConfig:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{source}: not valid JSON ({e})") from None
    return config_from_obj(data, source)


def config_from_obj(data: Any, source: str = "config") -> ModelConfig:
    """fastaudio's own format. (stable-audio-tools' files: :mod:`fastaudio.config_files`.)"""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a JSON object")
    if "model_type" in data:
        raise ConfigError(f"{source}: a stable-audio-tools model_config.json, not fastaudio's "
                          "format: read it with fastaudio.load_config (fastaudio.config_files)")
    data = dict(data)
    tag = data.pop("format", FORMAT_TAG)
    version = data.pop("format_version", FORMAT_VERSION)
    if tag != FORMAT_TAG:
        raise ConfigError(f"{source}: unknown format {tag!r}")
    if version != FORMAT_VERSION:
        raise ConfigError(f"{source}: format_version {version} is not supported "
                          f"(this fastaudio reads {FORMAT_VERSION})")
    return from_dict(ModelConfig, data).validate()


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, path)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin in (list, List):
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__}")
        return [_convert(item_tp, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected an object, got {type(value).__name__}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    if tp is Any:
        return value
    raise ConfigError(f"{path}: unsupported config type {tp!r}")


# --------------------------------------------------------------------------------------------
# Cross-component validation
# --------------------------------------------------------------------------------------------

def _require(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {why}")


def _validate(cfg: ModelConfig) -> None:
    v, u, t, a, c = cfg.vae, cfg.unet, cfg.clap.text, cfg.clap.audio, cfg.conditioning
    _require(cfg.sample_rate > 0, "sample_rate", "must be positive")
    _require(cfg.audio_channels == v.io_channels, "audio_channels",
             f"{cfg.audio_channels} differs from vae.io_channels {v.io_channels}")
    _require(v.bottleneck == "vae", "vae.bottleneck", f"only 'vae' is supported, got {v.bottleneck!r}")
    _require(math.prod(v.encoder.strides) == v.downsampling_ratio, "vae.encoder.strides",
             f"product {math.prod(v.encoder.strides)} != downsampling_ratio {v.downsampling_ratio}")
    _require(math.prod(v.decoder.rates) == v.downsampling_ratio, "vae.decoder.rates",
             f"product {math.prod(v.decoder.rates)} != downsampling_ratio {v.downsampling_ratio}")
    _require(v.encoder.latent_dim == 2 * v.latent_dim, "vae.encoder.latent_dim",
             f"must be 2 x vae.latent_dim (mean and scale) = {2 * v.latent_dim}")
    _require(v.decoder.latent_dim == v.latent_dim, "vae.decoder.latent_dim",
             f"must equal vae.latent_dim {v.latent_dim}")
    _require(v.encoder.in_channels == v.io_channels and v.decoder.out_channels == v.io_channels,
             "vae.io_channels", "encoder in_channels and decoder out_channels must match it")
    _require(v.decoder.channels % (2 ** len(v.decoder.rates)) == 0, "vae.decoder.channels",
             f"must be divisible by 2^{len(v.decoder.rates)}")
    _require(0 <= v.overlap_frames < v.chunk_frames, "vae.overlap_frames",
             "must be >= 0 and smaller than vae.chunk_frames")
    _require(cfg.sample_size % v.downsampling_ratio == 0, "sample_size",
             f"must be a multiple of vae.downsampling_ratio {v.downsampling_ratio}")
    _require(u.in_channels == v.latent_dim, "unet.in_channels",
             f"{u.in_channels} differs from vae.latent_dim {v.latent_dim}")
    n = len(u.multipliers) - 1
    for key, seq in (("factors", u.factors), ("num_blocks", u.num_blocks)):
        _require(len(seq) == n, f"unet.{key}", f"needs {n} entries (len(multipliers) - 1)")
    _require(len(u.attentions) == n + 1, "unet.attentions", f"needs {n + 1} entries")
    _require(cfg.latent_length % math.prod(u.factors) == 0, "sample_size",
             f"latent length {cfg.latent_length} must be a multiple of {math.prod(u.factors)}")
    for i, m in enumerate(u.multipliers):
        ch = u.channels * m
        _require(ch % u.resnet_groups == 0, f"unet.multipliers[{i}]",
                 f"{ch} channels not divisible by resnet_groups {u.resnet_groups}")
        if u.attentions[i]:
            _require(ch % 32 == 0, f"unet.multipliers[{i}]",
                     f"{ch} channels: transformer GroupNorm(32) needs a multiple of 32")
            _require(ch % u.attention_heads == 0, f"unet.multipliers[{i}]",
                     f"{ch} channels not divisible by attention_heads {u.attention_heads}")
    _require(not u.use_pooled_context or (u.use_context_time and u.context_embedding_features),
             "unet.use_pooled_context", "needs use_context_time and a context (the FiLM mapping "
             "it adds to)")
    _require(u.context_embedding_features == c.cond_dim, "unet.context_embedding_features",
             f"{u.context_embedding_features} differs from conditioning.cond_dim {c.cond_dim}")
    _require(u.context_embedding_max_length == t.max_length + 2, "unet.context_embedding_max_length",
             f"must be clap.text.max_length + 2 timing tokens = {t.max_length + 2}")
    _require(t.hidden_size % t.num_heads == 0, "clap.text.hidden_size", "not divisible by num_heads")
    _require(t.tokenizer in ("roberta", "byte"), "clap.text.tokenizer",
             f"unknown tokenizer {t.tokenizer!r} (roberta, byte)")
    _require(t.max_position_embeddings >= t.max_length + t.pad_token_id + 1,
             "clap.text.max_position_embeddings", "too small for max_length")
    # hidden states are [embeddings, layer 1, ..., layer N]: valid indices -(N+1) .. N
    _require(-(t.num_layers + 1) <= t.feature_layer <= t.num_layers, "clap.text.feature_layer",
             f"{t.feature_layer} is out of range for {t.num_layers} layers")
    if t.tokenizer == "byte":
        _require(t.vocab_size >= 260, "clap.text.vocab_size", "the byte tokenizer needs 260 ids")
    _require(a.hidden_size % a.num_heads == 0, "clap.audio.hidden_size", "not divisible by num_heads")
    _require(0 <= c.seconds_min < c.seconds_max, "conditioning.seconds_max",
             "must be greater than seconds_min")
    s = cfg.sampling
    _require(s.steps > 0, "sampling.steps", "must be positive")
    _require(0 < s.sigma_min < s.sigma_max, "sampling.sigma_min", "need 0 < sigma_min < sigma_max")
    _require(s.schedule in ("polyexponential", "log-linear", "karras"), "sampling.schedule",
             f"unknown schedule {s.schedule!r} (polyexponential, log-linear, karras)")
