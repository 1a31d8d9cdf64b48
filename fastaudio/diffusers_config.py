"""Reading the configs of a diffusers ``StableAudioPipeline`` folder (Stable Audio Open 1.0)
strictly and translating them into the stable-audio-tools config fastaudio builds models from.

The folder holds ``model_index.json`` and one sub-folder per component::

    transformer/       StableAudioDiTModel         config.json + diffusion_pytorch_model.safetensors
    vae/               AutoencoderOobleck          config.json + diffusion_pytorch_model.safetensors
    projection_model/  StableAudioProjectionModel  config.json + diffusion_pytorch_model.safetensors
    text_encoder/      T5EncoderModel (transformers)
    tokenizer/         the T5 tokenizer; its ``model_max_length`` is the prompt length, since the
                       pipeline pads every prompt to it (128 for SAO 1.0: diffusers' conversion
                       script sets it from stable-audio-tools' ``max_length``)
    scheduler/         CosineDPMSolverMultistepScheduler (the sigma range and schedule)

Each config is read strictly – a key diffusers' class does not take, or a value fastaudio cannot
represent, is a :class:`CheckpointError` naming the file and the key – and translated into the
stable-audio-tools config :func:`fastaudio.open_config.open_config_from_reference` reads, so the
model is the same :class:`~fastaudio.models.open_audio.OpenAudioModel` a stable-audio-tools
folder gives. Keys missing from a config take diffusers' defaults, as diffusers does.
``text_encoder/`` and ``tokenizer/`` are transformers' own folders, left to transformers to read
(here only the tokenizer's ``model_max_length`` is taken, and T5's width checked against the
projection's ``text_encoder_dim``).

What diffusers' layout can express is SAO 1.0's structure, and only that: cross-attention on
prompt, seconds_start, seconds_total and global conditioning on seconds_start + seconds_total
(hard-wired in the pipeline), both number conditioners over one range, the v-objective. Refused
by name: heads narrower than 64 (the pipeline rotates ``head_dim // 2`` channels,
stable-audio-tools and fastaudio ``max(head_dim // 2, 32)``), ``time_proj_dim`` other than 256,
``cross_attention_dim`` other than the token width or the model width, key/value heads that do
not tile it, ``encoder_hidden_size`` other than 2 × ``decoder_input_channels`` (the encoder's
output is the VAE bottleneck's mean and scale), mono, schedulers other than
CosineDPMSolverMultistepScheduler, predictions other than v, ``sigma_data`` other than 1, and
weight variants (``diffusion_pytorch_model.fp16.safetensors`` alone). SAO Small has no diffusers
form (no seconds_start, q/k norms StableAudioDiTModel lacks).

Sampling. diffusers samples SAO 1.0 with CosineDPMSolverMultistepScheduler: DPM-Solver++(2M) SDE
(midpoint) with Brownian-tree noise, on log-linear sigmas from ``sigma_max`` 500 down to
``sigma_min`` 0.3 and then 0, 100 steps, guidance 7; the DiT sees c_in·x and t = atan(σ)·2/π
and its v output becomes the denoised estimate as in k-diffusion's VDenoiser, so the model is
the same function on both sides. fastaudio keeps its own default sampler for v-models,
stable-audio-tools' ``dpmpp-3m-sde``, and takes the noise levels from the scheduler config
(``sigma_min``, ``sigma_max``; "exponential" is fastaudio's polyexponential schedule with rho 1,
"karras" its karras schedule with the config's rho); ``sampler="dpmpp-2m-sde"`` is diffusers'
update with independent Gaussian step noise in place of the Brownian tree (the same
distribution, other draws). diffusers scales initial noise by √(σ_max² + 1) where k-diffusion
and fastaudio use σ_max (2·10⁻⁶ apart at 500). The scheduler's solver settings (order, solver
type, final-step options) are known keys that fastaudio's own samplers replace.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, List, Tuple

from .state_dicts import CheckpointError

PIPELINE_CLASS = "StableAudioPipeline"
# component → the classes fastaudio reads it as (model_index.json's second entry)
COMPONENT_CLASSES: Dict[str, Tuple[str, ...]] = {
    "transformer": ("StableAudioDiTModel",),
    "vae": ("AutoencoderOobleck",),
    "projection_model": ("StableAudioProjectionModel",),
    "text_encoder": ("T5EncoderModel",),
    "tokenizer": ("T5Tokenizer", "T5TokenizerFast"),
    "scheduler": ("CosineDPMSolverMultistepScheduler",),
}
METADATA_KEYS = {"_class_name", "_diffusers_version", "_name_or_path"}

# Every key each diffusers class takes, with its default (diffusers 0.42): a key not here is an
# error, a key missing from the file takes the default, as diffusers' from_pretrained does.
TRANSFORMER_DEFAULTS: Dict[str, Any] = {
    "sample_size": 1024, "in_channels": 64, "num_layers": 24, "attention_head_dim": 64,
    "num_attention_heads": 24, "num_key_value_attention_heads": 12, "out_channels": 64,
    "cross_attention_dim": 768, "time_proj_dim": 256, "global_states_input_dim": 1536,
    "cross_attention_input_dim": 768}
VAE_DEFAULTS: Dict[str, Any] = {
    "encoder_hidden_size": 128, "downsampling_ratios": [2, 4, 4, 8, 8],
    "channel_multiples": [1, 2, 4, 8, 16], "decoder_channels": 128, "decoder_input_channels": 64,
    "audio_channels": 2, "sampling_rate": 44100}
PROJECTION_KEYS = ("text_encoder_dim", "conditioning_dim", "min_value", "max_value")  # no defaults
SCHEDULER_DEFAULTS: Dict[str, Any] = {
    "sigma_min": 0.3, "sigma_max": 500, "sigma_data": 1.0, "sigma_schedule": "exponential",
    "num_train_timesteps": 1000, "solver_order": 2, "prediction_type": "v_prediction", "rho": 7.0,
    "solver_type": "midpoint", "lower_order_final": True, "euler_at_final": False,
    "final_sigmas_type": "zero"}

TIMESTEP_FEATURES = 256            # the DiT's Fourier feature width (fixed in fastaudio's DiT)
MIN_ROTARY_HEAD_DIM = 64           # below it the pipeline's rotary width differs from the DiT's
MAX_PROMPT_TOKENS = 100_000        # transformers' "no limit" sentinel (1e30) is not a length
WEIGHTS_NAME = "diffusion_pytorch_model"
PREFIXES = {"transformer": "dit.", "vae": "vae.", "projection_model": "conditioner.conditioners."}


# ---------------------------------------------------------------------------------------------
# Reading configs
# ---------------------------------------------------------------------------------------------

def read_json(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} is missing")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _class_config(path: str, classes: Tuple[str, ...], defaults: Dict[str, Any],
                  required: Tuple[str, ...] = ()) -> Dict[str, Any]:
    """A component config: its class checked, every key known, defaults filled in."""
    data = read_json(path)
    name = data.get("_class_name")
    if name not in classes:
        raise CheckpointError(f"{path}: _class_name {name!r} is not supported (fastaudio reads "
                              f"{' or '.join(classes)})")
    known = set(defaults) | set(required) | METADATA_KEYS
    unknown = sorted(set(data) - known)
    if unknown:
        raise CheckpointError(f"{path}: unknown key {unknown[0]!r} for {name} (fastaudio knows: "
                              f"{', '.join(sorted(set(defaults) | set(required)))})")
    missing = [k for k in required if k not in data]
    if missing:
        raise CheckpointError(f"{path}: missing key {missing[0]!r}")
    return {**defaults, **{k: v for k, v in data.items() if k not in METADATA_KEYS}}


def _int(cfg: Dict[str, Any], key: str, path: str, low: int = 1) -> int:
    """An integer setting; an integral float (1024.0, as diffusers' conversion script writes
    ``sample_size``) counts."""
    value = cfg[key]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise CheckpointError(f"{path}: {key} = {cfg[key]!r} must be an integer >= {low}")
    return value


def _ints(cfg: Dict[str, Any], key: str, path: str) -> List[int]:
    value = cfg[key]
    if not isinstance(value, list) or not value or \
            not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
        raise CheckpointError(f"{path}: {key} = {value!r} must be a non-empty list of positive "
                              "integers")
    return list(value)


def _number(cfg: Dict[str, Any], key: str, path: str) -> float:
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CheckpointError(f"{path}: {key} = {value!r} must be a finite number")
    return value


def _refuse(path: str, key: str, value: Any, why: str) -> CheckpointError:
    return CheckpointError(f"{path}: {key} = {value!r} is not supported: {why}")


def read_model_index(folder: str) -> Dict[str, str]:
    """model_index.json: a StableAudioPipeline whose components are the classes fastaudio reads;
    returns component → class name."""
    path = os.path.join(folder, "model_index.json")
    data = read_json(path)
    if data.get("_class_name") != PIPELINE_CLASS:
        raise CheckpointError(f"{path}: _class_name {data.get('_class_name')!r} is not "
                              f"{PIPELINE_CLASS!r} (the only diffusers pipeline fastaudio loads)")
    unknown = sorted(set(data) - set(COMPONENT_CLASSES) - METADATA_KEYS)
    if unknown:
        raise CheckpointError(f"{path}: unknown component {unknown[0]!r} (a {PIPELINE_CLASS} has "
                              f"{', '.join(COMPONENT_CLASSES)})")
    classes = {}
    for component, allowed in COMPONENT_CLASSES.items():
        entry = data.get(component)
        if not (isinstance(entry, list) and len(entry) == 2 and entry[1] is not None):
            raise CheckpointError(f"{path}: component {component!r} is missing or empty "
                                  f"(got {entry!r})")
        if entry[1] not in allowed:
            raise CheckpointError(f"{path}: {component} is a {entry[1]!r}; fastaudio reads "
                                  f"{' or '.join(allowed)}")
        classes[component] = entry[1]
    return classes


def prompt_max_length(folder: str) -> int:
    """The tokenizer's ``model_max_length``: the length diffusers' pipeline pads prompts to."""
    path = os.path.join(folder, "tokenizer", "tokenizer_config.json")
    data = read_json(path)
    if "model_max_length" not in data:
        raise CheckpointError(f"{path}: no model_max_length (the pipeline pads prompts to it)")
    value = data["model_max_length"]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= MAX_PROMPT_TOKENS:
        raise CheckpointError(f"{path}: model_max_length = {data['model_max_length']!r} is not a "
                              f"usable prompt length (an integer in 2..{MAX_PROMPT_TOKENS}; "
                              "SAO 1.0's is 128)")
    return value


# ---------------------------------------------------------------------------------------------
# diffusers configs → a stable-audio-tools config
# ---------------------------------------------------------------------------------------------

def _dit_section(t: Dict[str, Any], path: str, cond_dim: int, latent_dim: int) -> Dict[str, Any]:
    heads = _int(t, "num_attention_heads", path)
    head_dim = _int(t, "attention_head_dim", path)
    kv_heads = _int(t, "num_key_value_attention_heads", path)
    width = heads * head_dim
    cross_dim = _int(t, "cross_attention_dim", path)
    token_dim = _int(t, "cross_attention_input_dim", path)
    if head_dim < MIN_ROTARY_HEAD_DIM or head_dim % 4:
        raise _refuse(path, "attention_head_dim", head_dim,
                      f"the pipeline rotates head_dim // 2 channels, fastaudio's DiT (as "
                      f"stable-audio-tools') max(head_dim // 2, 32): they agree for multiples of "
                      f"4 from {MIN_ROTARY_HEAD_DIM} on")
    if _int(t, "time_proj_dim", path) != TIMESTEP_FEATURES:
        raise _refuse(path, "time_proj_dim", t["time_proj_dim"],
                      f"the DiT's timestep features are {TIMESTEP_FEATURES} wide")
    for key in ("in_channels", "out_channels"):
        if _int(t, key, path) != latent_dim:
            raise _refuse(path, key, t[key], f"must equal the VAE's latent channels "
                                             f"(decoder_input_channels = {latent_dim})")
    if token_dim != cond_dim:
        raise _refuse(path, "cross_attention_input_dim", token_dim,
                      f"the pipeline's tokens are projection_model's conditioning_dim "
                      f"({cond_dim}) wide")
    if _int(t, "global_states_input_dim", path) != 2 * cond_dim:
        raise _refuse(path, "global_states_input_dim", t["global_states_input_dim"],
                      f"the pipeline's global input is seconds_start and seconds_total side by "
                      f"side: 2 x conditioning_dim = {2 * cond_dim}")
    if cross_dim == token_dim:
        project_tokens = False     # SAO 1.0: the tokens keep their width
    elif cross_dim == width:
        project_tokens = True      # tokens projected to the model width
    else:
        raise _refuse(path, "cross_attention_dim", cross_dim,
                      f"must be the token width ({token_dim}) or the model width "
                      f"(heads x head_dim = {width})")
    if kv_heads * head_dim != cross_dim or heads % kv_heads:
        raise _refuse(path, "num_key_value_attention_heads", kv_heads,
                      f"key/value heads must tile cross_attention_dim ({cross_dim} / {head_dim} "
                      f"= {cross_dim / head_dim:g}) and divide the {heads} query heads")
    return {"io_channels": latent_dim, "embed_dim": width, "depth": _int(t, "num_layers", path),
            "num_heads": heads, "cond_token_dim": token_dim, "global_cond_dim": 2 * cond_dim,
            "project_cond_tokens": project_tokens, "transformer_type": "continuous_transformer"}


def _oobleck_section(v: Dict[str, Any], path: str) -> Dict[str, Any]:
    hidden = _int(v, "encoder_hidden_size", path)
    latent = _int(v, "decoder_input_channels", path)
    strides = _ints(v, "downsampling_ratios", path)
    mults = _ints(v, "channel_multiples", path)
    channels = _int(v, "audio_channels", path)
    if len(strides) != len(mults):
        raise _refuse(path, "channel_multiples", mults,
                      f"one per downsampling ratio ({len(strides)})")
    if hidden != 2 * latent:
        raise _refuse(path, "encoder_hidden_size", hidden,
                      f"the encoder's last conv outputs encoder_hidden_size channels, the VAE "
                      f"bottleneck's mean and scale: 2 x decoder_input_channels = {2 * latent}")
    if channels != 2:
        raise _refuse(path, "audio_channels", channels, "fastaudio renders stereo (2)")
    return {
        "encoder": {"type": "oobleck", "config": {
            "in_channels": channels, "channels": hidden, "c_mults": mults, "strides": strides,
            "latent_dim": hidden, "use_snake": True}},
        "decoder": {"type": "oobleck", "config": {
            "out_channels": channels, "channels": _int(v, "decoder_channels", path),
            "c_mults": mults, "strides": strides, "latent_dim": latent, "use_snake": True,
            "final_tanh": False}},
        "bottleneck": {"type": "vae"}, "latent_dim": latent,
        "downsampling_ratio": math.prod(strides), "io_channels": channels}


def _sampling(s: Dict[str, Any], path: str) -> Dict[str, Any]:
    """The scheduler settings fastaudio's sampling defaults take (the rest: see module doc)."""
    if s["prediction_type"] != "v_prediction":
        raise _refuse(path, "prediction_type", s["prediction_type"],
                      "Stable Audio Open 1.0 predicts v (v_prediction)")
    if _number(s, "sigma_data", path) != 1.0:
        raise _refuse(path, "sigma_data", s["sigma_data"],
                      "the v-objective's preconditioning has sigma_data 1")
    lo, hi = _number(s, "sigma_min", path), _number(s, "sigma_max", path)
    if not 0 < lo < hi:
        raise _refuse(path, "sigma_min", lo, f"need 0 < sigma_min < sigma_max ({hi})")
    if s["sigma_schedule"] == "exponential":
        schedule, rho = "polyexponential", 1.0
    elif s["sigma_schedule"] == "karras":
        schedule, rho = "karras", float(_number(s, "rho", path))
    else:
        raise _refuse(path, "sigma_schedule", s["sigma_schedule"], "exponential or karras")
    return {"sigma_min": float(lo), "sigma_max": float(hi), "schedule": schedule, "rho": rho}


def _t5_label(projection: Dict[str, Any]) -> str:
    """A name for the T5 (diffusers records none; it is read from text_encoder/, never fetched
    by name): t5-base at SAO 1.0's width, else one that claims no known model's width."""
    width = projection["text_encoder_dim"]
    return "t5-base" if width == 768 else f"t5 ({width} wide, from text_encoder/)"


def reference_config(folder: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(the stable-audio-tools config, sampling settings) that the folder's configs describe."""
    def path(component: str, name: str = "config.json") -> str:
        return os.path.join(folder, component, name)
    t = _class_config(path("transformer"), COMPONENT_CLASSES["transformer"], TRANSFORMER_DEFAULTS)
    v = _class_config(path("vae"), COMPONENT_CLASSES["vae"], VAE_DEFAULTS)
    p = _class_config(path("projection_model"), COMPONENT_CLASSES["projection_model"], {},
                      required=PROJECTION_KEYS)
    s = _class_config(path("scheduler", "scheduler_config.json"), COMPONENT_CLASSES["scheduler"],
                      SCHEDULER_DEFAULTS)
    cond_dim = _int(p, "conditioning_dim", path("projection_model"))
    _int(p, "text_encoder_dim", path("projection_model"))
    low = _number(p, "min_value", path("projection_model"))
    high = _number(p, "max_value", path("projection_model"))
    if not low < high:
        raise _refuse(path("projection_model"), "max_value", high, f"must exceed min_value ({low})")
    autoencoder = _oobleck_section(v, path("vae"))
    dit = _dit_section(t, path("transformer"), cond_dim, autoencoder["latent_dim"])
    frames = _int(t, "sample_size", path("transformer"))

    def number(cid: str) -> Dict[str, Any]:  # both conditioners share the projection's range
        return {"id": cid, "type": "number", "config": {"min_val": low, "max_val": high}}
    source = {
        "model_type": "diffusion_cond",
        "sample_size": frames * autoencoder["downsampling_ratio"],
        "sample_rate": _int(v, "sampling_rate", path("vae")),
        "audio_channels": autoencoder["io_channels"],
        "model": {
            "pretransform": {"type": "autoencoder", "config": autoencoder},
            "conditioning": {"configs": [
                {"id": "prompt", "type": "t5", "config": {
                    "t5_model_name": _t5_label(p), "max_length": prompt_max_length(folder)}},
                number("seconds_start"), number("seconds_total")], "cond_dim": cond_dim},
            "diffusion": {
                "cross_attention_cond_ids": ["prompt", "seconds_start", "seconds_total"],
                "global_cond_ids": ["seconds_start", "seconds_total"], "type": "dit",
                "diffusion_objective": "v", "config": dit},
            "io_channels": autoencoder["latent_dim"]},
    }
    return source, _sampling(s, path("scheduler", "scheduler_config.json"))
