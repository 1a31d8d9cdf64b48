"""Stable Audio Open's ``model_config.json`` (a stable-audio-tools ``diffusion_cond`` model with a
``dit`` backbone), read strictly, and the two presets built from the published configs.

Every section the DiT family uses is checked here or by the module it configures (the DiT, the
Oobleck VAE and the conditioners refuse unknown or unsupported options by name); what this file
adds is the layout around them, the sampling defaults and the derived figures the pipeline reads
(``window_seconds``, ``latent_length``, ``latent_multiple``).

Presets (random weights; sizes and benchmarks, not listening):

* ``stable-audio-open-1.0`` – the config published with the Hugging Face checkpoint
  stabilityai/stable-audio-open-1.0 (T5-base, max_length 128; seconds_start and seconds_total;
  DiT 1536 x 24, 24 heads; v-objective; 47.55 s).
* ``stable-audio-open-small`` – stabilityai/stable-audio-open-small's config as quoted by public
  ports and the ARC paper's release (T5-base, max_length 64; seconds_total only; DiT 1024 x 16,
  8 heads, projected cond tokens; rectified flow, 8 pingpong steps, no guidance; 11.9 s).
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any, Dict, List

from .config import ConfigError, SamplingConfig

OBJECTIVES = {"v": "v", "rf_denoiser": "rf", "rectified_flow": "rf"}


# Sampler defaults, from each checkpoint's model card (the config file carries none).
V_SAMPLING = SamplingConfig(cfg_rescale=0.0, sigma_min=0.3, sigma_max=500.0)
RF_SAMPLING = SamplingConfig(sampler="pingpong", steps=8, cfg_scale=1.0, cfg_rescale=0.0,
                                 sigma_min=0.0, sigma_max=1.0, schedule="linear")


@dataclass
class OpenModelConfig:
    """A DiT-family model: the raw sections its modules are built from, plus what the pipeline
    reads. ``source`` is the stable-audio-tools JSON object it came from (saved unchanged)."""
    name: str
    sample_rate: int
    sample_size: int
    audio_channels: int
    autoencoder: Dict[str, Any]          # model.pretransform.config
    pretransform_scale: float
    conditioning: Dict[str, Any]         # model.conditioning
    cross_attention_ids: List[str]
    global_ids: List[str]
    diffusion_objective: str             # as in the file: v | rf_denoiser | rectified_flow
    dit: Dict[str, Any]                  # model.diffusion.config
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    source: Dict[str, Any] = field(default_factory=dict)

    @property
    def objective(self) -> str:
        return OBJECTIVES[self.diffusion_objective]

    @property
    def downsampling_ratio(self) -> int:
        return int(self.autoencoder.get("downsampling_ratio", 2048))

    @property
    def latent_dim(self) -> int:
        return int(self.autoencoder.get("latent_dim", 64))

    @property
    def window_seconds(self) -> float:
        return self.sample_size / self.sample_rate

    @property
    def latent_length(self) -> int:
        return self.sample_size // self.downsampling_ratio

    @property
    def latent_multiple(self) -> int:
        return int(self.dit.get("patch_size", 1))

    def to_json(self) -> str:
        return json.dumps(self.source, indent=2)


def _obj(value: Any, where: str) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a JSON object, got {type(value).__name__}")
    return value


def _keys(data: Dict[str, Any], allowed: set, where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"unknown config key {where + '.' if where else ''}{unknown[0]!r} "
                          f"(known: {', '.join(sorted(allowed))})")


def _need(data: Dict[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise ConfigError(f"{where}: missing key {key!r}")
    return data[key]


def _int(value: Any, where: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{where} must be an integer >= {low}, got {value!r}")
    return value


def _ids(value: Any, where: str) -> List[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a list of conditioning ids, got {value!r}")
    return list(value)


def open_config_from_reference(data: Dict[str, Any], source: str = "config") -> OpenModelConfig:
    """Read a stable-audio-tools ``diffusion_cond`` config whose diffusion type is ``dit``."""
    data = _obj(data, source)
    _keys(data, {"model_type", "sample_size", "sample_rate", "audio_channels", "model", "training"}, "")
    if data["model_type"] != "diffusion_cond":
        raise ConfigError(f"{source}: model_type {data['model_type']!r} is not supported for DiT "
                          "models (diffusion_cond)")
    model = _obj(_need(data, "model", source), "model")
    _keys(model, {"pretransform", "conditioning", "diffusion", "io_channels"}, "model")
    pre = _obj(_need(model, "pretransform", "model"), "model.pretransform")
    _keys(pre, {"type", "config", "iterate_batch", "scale", "model_half", "chunked", "enable_grad"},
          "model.pretransform")
    if pre.get("type") != "autoencoder":
        raise ConfigError(f"model.pretransform.type = {pre.get('type')!r} is not supported (autoencoder)")
    if pre.get("enable_grad"):
        raise ConfigError("model.pretransform.enable_grad is not supported (inference engine)")
    diff = _obj(_need(model, "diffusion", "model"), "model.diffusion")
    _keys(diff, {"type", "config", "cross_attention_cond_ids", "global_cond_ids",
                 "input_concat_ids", "prepend_cond_ids", "diffusion_objective"}, "model.diffusion")
    if diff.get("type") != "dit":
        raise ConfigError(f"model.diffusion.type = {diff.get('type')!r}: this reader takes 'dit'")
    for key in ("input_concat_ids", "prepend_cond_ids"):
        if diff.get(key):
            raise ConfigError(f"model.diffusion.{key} is not supported (no Stable Audio Open "
                              "checkpoint uses it)")
    objective = diff.get("diffusion_objective", "v")
    if objective not in OBJECTIVES:
        raise ConfigError(f"model.diffusion.diffusion_objective = {objective!r} is not supported "
                          f"({', '.join(OBJECTIVES)})")
    dit = dict(_obj(_need(diff, "config", "model.diffusion"), "model.diffusion.config"))
    if "diffusion_objective" in dit and dit["diffusion_objective"] != objective:
        raise ConfigError("model.diffusion.config.diffusion_objective disagrees with "
                          "model.diffusion.diffusion_objective")
    cond = _obj(_need(model, "conditioning", "model"), "model.conditioning")
    _keys(cond, {"configs", "cond_dim", "pre_encoded_keys"}, "model.conditioning")
    scale = pre.get("scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale:
        raise ConfigError(f"model.pretransform.scale must be a non-zero number, got {scale!r}")
    cfg = OpenModelConfig(
        name=str(source),
        sample_rate=_int(_need(data, "sample_rate", source), "sample_rate"),
        sample_size=_int(_need(data, "sample_size", source), "sample_size"),
        audio_channels=_int(data.get("audio_channels", 2), "audio_channels"),
        autoencoder=dict(_obj(_need(pre, "config", "model.pretransform"), "model.pretransform.config")),
        pretransform_scale=float(scale),
        conditioning=copy.deepcopy(cond),
        cross_attention_ids=_ids(diff.get("cross_attention_cond_ids"), "model.diffusion.cross_attention_cond_ids"),
        global_ids=_ids(diff.get("global_cond_ids"), "model.diffusion.global_cond_ids"),
        diffusion_objective=objective,
        dit=dit,
        sampling=copy.deepcopy(V_SAMPLING if OBJECTIVES[objective] == "v" else RF_SAMPLING),
        source=copy.deepcopy(data),
    )
    if cfg.audio_channels != 2:
        raise ConfigError(f"audio_channels = {cfg.audio_channels}: fastaudio renders stereo (2)")
    if cfg.sample_size % cfg.downsampling_ratio:
        raise ConfigError(f"sample_size {cfg.sample_size} is not a multiple of the autoencoder's "
                          f"downsampling_ratio {cfg.downsampling_ratio}")
    io = model.get("io_channels", cfg.latent_dim)
    if io != cfg.latent_dim or dit.get("io_channels", io) != cfg.latent_dim:
        raise ConfigError(f"model.io_channels / model.diffusion.config.io_channels must equal the "
                          f"autoencoder's latent_dim {cfg.latent_dim}")
    return cfg


# ---------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------

def _oobleck() -> Dict[str, Any]:
    common = {"channels": 128, "c_mults": [1, 2, 4, 8, 16], "strides": [2, 4, 4, 8, 8], "use_snake": True}
    return {
        "encoder": {"type": "oobleck", "requires_grad": False,
                    "config": dict(common, in_channels=2, latent_dim=128)},
        "decoder": {"type": "oobleck", "config": dict(common, out_channels=2, latent_dim=64, final_tanh=False)},
        "bottleneck": {"type": "vae"}, "latent_dim": 64, "downsampling_ratio": 2048, "io_channels": 2,
    }


def _number(cid: str, max_val: int) -> Dict[str, Any]:
    return {"id": cid, "type": "number", "config": {"min_val": 0, "max_val": max_val}}


def sao_1_0_source() -> Dict[str, Any]:
    return {
        "model_type": "diffusion_cond", "sample_size": 2097152, "sample_rate": 44100, "audio_channels": 2,
        "model": {
            "pretransform": {"type": "autoencoder", "iterate_batch": True, "config": _oobleck()},
            "conditioning": {"configs": [
                {"id": "prompt", "type": "t5", "config": {"t5_model_name": "t5-base", "max_length": 128}},
                _number("seconds_start", 512), _number("seconds_total", 512)], "cond_dim": 768},
            "diffusion": {
                "cross_attention_cond_ids": ["prompt", "seconds_start", "seconds_total"],
                "global_cond_ids": ["seconds_start", "seconds_total"], "type": "dit",
                "config": {"io_channels": 64, "embed_dim": 1536, "depth": 24, "num_heads": 24,
                           "cond_token_dim": 768, "global_cond_dim": 1536, "project_cond_tokens": False,
                           "transformer_type": "continuous_transformer"}},
            "io_channels": 64},
    }


def sao_small_source() -> Dict[str, Any]:
    return {
        "model_type": "diffusion_cond", "sample_size": 524288, "sample_rate": 44100, "audio_channels": 2,
        "model": {
            "pretransform": {"type": "autoencoder", "iterate_batch": True, "config": _oobleck()},
            "conditioning": {"configs": [
                {"id": "prompt", "type": "t5", "config": {"t5_model_name": "t5-base", "max_length": 64}},
                _number("seconds_total", 256)], "cond_dim": 768},
            "diffusion": {
                "cross_attention_cond_ids": ["prompt", "seconds_total"],
                "global_cond_ids": ["seconds_total"], "type": "dit",
                "diffusion_objective": "rf_denoiser",
                "config": {"io_channels": 64, "embed_dim": 1024, "depth": 16, "num_heads": 8,
                           "cond_token_dim": 768, "global_cond_dim": 768, "project_cond_tokens": True,
                           "transformer_type": "continuous_transformer",
                           # q/k LayerNorms: 16,384 parameters the real checkpoint carries
                           # (its q_norm/k_norm tensors, in public ports' converters)
                           "attn_kwargs": {"qk_norm": "ln"}}},
            "io_channels": 64},
    }


OPEN_PRESETS = {"stable-audio-open-1.0": sao_1_0_source, "stable-audio-open-small": sao_small_source}


def open_preset(name: str) -> OpenModelConfig:
    try:
        source = OPEN_PRESETS[name]()
    except KeyError:
        raise ConfigError(f"unknown Stable Audio Open preset {name!r} ({', '.join(OPEN_PRESETS)})") from None
    cfg = open_config_from_reference(source, name)
    cfg.name = name
    return cfg
