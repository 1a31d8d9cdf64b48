"""Reading stable-audio-tools' ``model_config.json`` into a :class:`ModelConfig`.

Only what Stable Audio 1.0 is made of is accepted: a ``diffusion_cond`` model with an
``adp_cfg_1d`` U-Net, a DAC autoencoder pretransform with a VAE bottleneck, and the
``clap_text`` + two ``int`` conditioners. Anything else (another model type, a DiT, a T5
conditioner, an unknown key) is a :class:`ConfigError` that names it, never a silent default.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from .config import (CLAPConfig, ConditioningConfig, ConfigError, ModelConfig, TextEncoderConfig,
                     UNetConfig, VAEConfig, VAEDecoderConfig, VAEEncoderConfig, from_dict)

EXPECTED_CONTEXT_IDS = ["prompt", "seconds_start", "seconds_total"]


def _obj(data: Any, path: str) -> Dict[str, Any]:
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected an object, got {type(data).__name__}")
    return data


def _check_keys(data: Dict[str, Any], known: set, path: str) -> None:
    for key in data:
        if key not in known:
            raise ConfigError(f"unknown key {path}.{key!r} in the stable-audio-tools config "
                              f"(known here: {', '.join(sorted(known))})")


def _need(data: Dict[str, Any], key: str, path: str) -> Any:
    if key not in data:
        raise ConfigError(f"{path}: missing required key {key!r}")
    return data[key]


def _type(data: Dict[str, Any], path: str, allowed: str) -> None:
    got = _need(data, "type", path)
    if got != allowed:
        raise ConfigError(f"{path}.type = {got!r} is not supported by fastaudio (only {allowed!r}: "
                          "the Stable Audio 1.0 architecture)")


def _vae_from_reference(ae: Dict[str, Any], path: str) -> VAEConfig:
    _check_keys(ae, {"encoder", "decoder", "bottleneck", "latent_dim", "downsampling_ratio",
                     "io_channels", "in_channels", "out_channels", "pretransform"}, path)
    if ae.get("pretransform") is not None:
        raise ConfigError(f"{path}.pretransform: nested pretransforms are not supported")
    enc = _obj(_need(ae, "encoder", path), f"{path}.encoder")
    dec = _obj(_need(ae, "decoder", path), f"{path}.decoder")
    _check_keys(enc, {"type", "config", "requires_grad"}, f"{path}.encoder")
    _check_keys(dec, {"type", "config", "requires_grad"}, f"{path}.decoder")
    _type(enc, f"{path}.encoder", "dac")
    _type(dec, f"{path}.decoder", "dac")
    bottleneck = _obj(_need(ae, "bottleneck", path), f"{path}.bottleneck")
    _check_keys(bottleneck, {"type", "config", "requires_grad"}, f"{path}.bottleneck")
    _type(bottleneck, f"{path}.bottleneck", "vae")
    latent_dim = _need(ae, "latent_dim", path)
    io = _need(ae, "io_channels", path)
    for key in ("in_channels", "out_channels"):
        if ae.get(key) not in (None, io):
            raise ConfigError(f"{path}.{key}: differing from io_channels is not supported")
    return from_dict(VAEConfig, {
        "encoder": from_dict(VAEEncoderConfig, enc.get("config", {}), f"{path}.encoder.config").__dict__,
        "decoder": from_dict(VAEDecoderConfig, dec.get("config", {}), f"{path}.decoder.config").__dict__,
        "latent_dim": latent_dim,
        "downsampling_ratio": _need(ae, "downsampling_ratio", path),
        "io_channels": io,
    }, path)


def _conditioning_from_reference(cond: Dict[str, Any], path: str):
    _check_keys(cond, {"configs", "cond_dim", "default_keys", "pre_encoded_keys"}, path)
    if cond.get("pre_encoded_keys"):
        raise ConfigError(f"{path}.pre_encoded_keys is not supported")
    cond_dim = _need(cond, "cond_dim", path)
    text = TextEncoderConfig()
    seconds = {}
    clap_ckpt_path = None
    ids = []
    for i, entry in enumerate(_need(cond, "configs", path)):
        p = f"{path}.configs[{i}]"
        entry = _obj(entry, p)
        _check_keys(entry, {"id", "type", "config"}, p)
        cid, ctype, ccfg = _need(entry, "id", p), _need(entry, "type", p), entry.get("config", {})
        ids.append(cid)
        if ctype == "clap_text":
            _check_keys(ccfg, {"audio_model_type", "enable_fusion", "clap_ckpt_path",
                               "use_text_features", "feature_layer_ix", "project_out", "finetune"},
                        f"{p}.config")
            if not ccfg.get("use_text_features", False):
                raise ConfigError(f"{p}.config.use_text_features=false (pooled CLAP embedding) is "
                                  "not supported: Stable Audio 1.0 uses the token features")
            if ccfg.get("project_out", False):
                raise ConfigError(f"{p}.config.project_out is not supported")
            text.feature_layer = int(ccfg.get("feature_layer_ix", -1))
            clap_ckpt_path = ccfg.get("clap_ckpt_path")
        elif ctype == "int":
            _check_keys(ccfg, {"min_val", "max_val"}, f"{p}.config")
            seconds[cid] = (int(ccfg.get("min_val", 0)), int(ccfg.get("max_val", 512)))
        else:
            raise ConfigError(f"{p}.type = {ctype!r} is not supported by fastaudio "
                              "(Stable Audio 1.0 uses clap_text and int conditioners)")
    if sorted(ids) != sorted(EXPECTED_CONTEXT_IDS):
        raise ConfigError(f"{path}.configs: conditioner ids {ids} are not Stable Audio 1.0's "
                          f"{EXPECTED_CONTEXT_IDS}")
    for cid in ("seconds_start", "seconds_total"):
        if cid not in seconds:
            raise ConfigError(f"{path}.configs: {cid!r} must be an 'int' conditioner")
    if "prompt" in seconds:
        raise ConfigError(f"{path}.configs: 'prompt' must be the 'clap_text' conditioner")
    if seconds["seconds_start"] != seconds["seconds_total"]:
        raise ConfigError(f"{path}: seconds_start and seconds_total ranges must be equal")
    lo, hi = seconds["seconds_start"]
    return text, ConditioningConfig(cond_dim=cond_dim, seconds_min=lo, seconds_max=hi), clap_ckpt_path


def config_from_reference(data: Dict[str, Any], source: str = "config") -> ModelConfig:
    """Translate a stable-audio-tools model config (``diffusion_cond`` or ``autoencoder``)."""
    _check_keys(data, {"model_type", "sample_size", "sample_rate", "audio_channels", "model",
                       "training"}, "")
    mtype = data["model_type"]
    model = _obj(_need(data, "model", source), "model")
    cfg = ModelConfig(name=str(source))
    cfg.sample_rate = _need(data, "sample_rate", source)
    cfg.audio_channels = data.get("audio_channels", 2)
    if mtype == "autoencoder":
        cfg.vae = _vae_from_reference(model, "model")
        cfg.sample_size = _need(data, "sample_size", source)
        return cfg
    if mtype != "diffusion_cond":
        raise ConfigError(f"model_type {mtype!r} is not supported by fastaudio "
                          "(diffusion_cond or autoencoder)")
    cfg.sample_size = _need(data, "sample_size", source)
    _check_keys(model, {"pretransform", "conditioning", "diffusion", "io_channels"}, "model")
    pre = _obj(_need(model, "pretransform", "model"), "model.pretransform")
    _check_keys(pre, {"type", "config", "iterate_batch", "scale", "model_half", "chunked",
                      "enable_grad"}, "model.pretransform")
    _type(pre, "model.pretransform", "autoencoder")
    if float(pre.get("scale", 1.0)) != 1.0:
        raise ConfigError("model.pretransform.scale != 1 is not supported")
    cfg.vae = _vae_from_reference(_obj(_need(pre, "config", "model.pretransform"),
                                       "model.pretransform.config"), "model.pretransform.config")
    text, cond, _ = _conditioning_from_reference(
        _obj(_need(model, "conditioning", "model"), "model.conditioning"), "model.conditioning")
    cfg.clap = CLAPConfig(text=text)
    cfg.conditioning = cond
    diff = _obj(_need(model, "diffusion", "model"), "model.diffusion")
    _check_keys(diff, {"type", "config", "cross_attention_cond_ids", "diffusion_objective",
                       "global_cond_ids", "input_concat_ids", "prepend_cond_ids"}, "model.diffusion")
    _type(diff, "model.diffusion", "adp_cfg_1d")
    if diff.get("diffusion_objective", "v") != "v":
        raise ConfigError("model.diffusion.diffusion_objective: only 'v' is supported")
    for key in ("global_cond_ids", "input_concat_ids", "prepend_cond_ids"):
        if diff.get(key):
            raise ConfigError(f"model.diffusion.{key} is not supported")
    xattn = diff.get("cross_attention_cond_ids", [])
    if list(xattn) != EXPECTED_CONTEXT_IDS:
        raise ConfigError(f"model.diffusion.cross_attention_cond_ids {xattn} must be "
                          f"{EXPECTED_CONTEXT_IDS} (the 79-token context layout)")
    cfg.unet = from_dict(UNetConfig, _need(diff, "config", "model.diffusion"), "model.diffusion.config")
    io = model.get("io_channels", cfg.vae.latent_dim)
    if io != cfg.vae.latent_dim:
        raise ConfigError(f"model.io_channels {io} differs from the VAE latent_dim")
    return cfg.validate()


def reference_clap_checkpoint(data: Dict[str, Any]) -> Optional[str]:
    """The ``clap_ckpt_path`` a stable-audio-tools config names, if any."""
    try:
        for entry in data["model"]["conditioning"]["configs"]:
            if entry.get("type") == "clap_text":
                return entry.get("config", {}).get("clap_ckpt_path")
    except (KeyError, TypeError):
        pass
    return None
