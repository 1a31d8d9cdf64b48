"""Loading Stable Audio Open 1.0 saved in diffusers' ``StableAudioPipeline`` layout: each
component's tensors mapped onto fastaudio's names (configs: :mod:`fastaudio.diffusers_config`).

Tensor names (diffusers → fastaudio; the inverse of diffusers' scripts/convert_stable_audio.py):

* ``transformer.*`` → ``dit.*``: ``time_proj.weight`` (F,) → ``timestep_features.weight`` (F, 1);
  ``timestep_proj`` / ``global_proj`` / ``cross_attention_proj`` → ``to_timestep_embed`` /
  ``to_global_embed`` / ``to_cond_embed``; ``proj_in`` / ``proj_out`` →
  ``transformer.project_in`` / ``project_out``; ``transformer_blocks.N.`` →
  ``transformer.layers.N.`` with ``norm1/2/3`` (weight, bias) → ``pre_norm`` / ``cross_attend_norm``
  / ``ff_norm`` (gamma, beta), ``attn1.to_q|to_k|to_v`` concatenated in that order into
  ``self_attn.to_qkv``, ``attn2.to_k|to_v`` into ``cross_attn.to_kv`` (key/value heads stay
  grouped as both sides repeat them: SAO 1.0's 24 query heads share 12), ``to_out.0`` →
  ``to_out``, ``ff.net.0.proj`` / ``ff.net.2`` → ``ff.ff.0.proj`` / ``ff.ff.2``. diffusers keeps
  no ``rotary_pos_emb.inv_freq`` (its pipeline builds the rotary table per call, with the same
  frequencies); it is computed here.
* ``vae.*`` → ``vae.*``: ``encoder|decoder.conv1`` → ``layers.0``, ``block.N`` → ``layers.N+1``
  (encoder block: ``res_unit1..3``, ``snake1``, ``conv1`` → ``layers.0..4``; decoder block:
  ``snake1``, ``conv_t1``, ``res_unit1..3`` → ``layers.0..4``; residual unit: ``snake1``,
  ``conv1``, ``snake2``, ``conv2`` → ``layers.0..3``), then ``snake1`` and ``conv2`` → the last two
  layers. Snake ``alpha``/``beta`` (1, C, 1) → (C,); weight norm as ``weight_g``/``weight_v``,
  parametrizations or folded (:func:`~fastaudio.state_dicts.normalize_weight_norm`).
* ``projection_model.*`` → ``conditioner.conditioners.*``: ``start_number_conditioner`` /
  ``end_number_conditioner.time_positional_embedding`` → ``seconds_start`` /
  ``seconds_total.embedder.embedding``; ``text_projection`` (a Linear only when T5's width differs
  from ``conditioning_dim``, as stable-audio-tools' ``proj_out``) → ``prompt.proj_out``.

"""
from __future__ import annotations

import os
import re
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from .config import ConfigError
from .diffusers_config import (COMPONENT_CLASSES, PREFIXES, WEIGHTS_NAME, read_json, read_model_index,
                              reference_config)
from .open_config import open_config_from_reference
from .state_dicts import CheckpointError, check_state_dict, normalize_weight_norm, read_state_dict

# ---------------------------------------------------------------------------------------------
# Tensor names
# ---------------------------------------------------------------------------------------------

def _unknown(path: str, keys: List[str], what: str) -> CheckpointError:
    more = f" (+{len(keys) - 8} more)" if len(keys) > 8 else ""
    return CheckpointError(f"{path}: tensors that are not part of {what}: "
                           + ", ".join(keys[:8]) + more)


_DIT_TOP = {"time_proj.weight": "timestep_features.weight",
            "preprocess_conv.weight": "preprocess_conv.weight",
            "postprocess_conv.weight": "postprocess_conv.weight",
            "proj_in.weight": "transformer.project_in.weight",
            "proj_out.weight": "transformer.project_out.weight",
            # the three MLPs: Linear (0), SiLU, Linear (2) on both sides
            **{f"{theirs}.{i}.{p}": f"{ours}.{i}.{p}"
               for theirs, ours, params in (
                   ("timestep_proj", "to_timestep_embed", ("weight", "bias")),
                   ("global_proj", "to_global_embed", ("weight",)),
                   ("cross_attention_proj", "to_cond_embed", ("weight",)))
               for i in (0, 2) for p in params}}
_DIT_BLOCK = {"norm1.weight": "pre_norm.gamma", "norm1.bias": "pre_norm.beta",
              "norm2.weight": "cross_attend_norm.gamma", "norm2.bias": "cross_attend_norm.beta",
              "norm3.weight": "ff_norm.gamma", "norm3.bias": "ff_norm.beta",
              "attn1.to_out.0.weight": "self_attn.to_out.weight",
              "attn2.to_q.weight": "cross_attn.to_q.weight",
              "attn2.to_out.0.weight": "cross_attn.to_out.weight",
              "ff.net.0.proj.weight": "ff.ff.0.proj.weight",
              "ff.net.0.proj.bias": "ff.ff.0.proj.bias",
              "ff.net.2.weight": "ff.ff.2.weight", "ff.net.2.bias": "ff.ff.2.bias"}
# fused projections: fastaudio's name → diffusers' parts, in the order they are stacked
_DIT_FUSED = {
    "self_attn.to_qkv.weight": ("attn1.to_q.weight", "attn1.to_k.weight", "attn1.to_v.weight"),
    "cross_attn.to_kv.weight": ("attn2.to_k.weight", "attn2.to_v.weight")}
_DIT_PART = {part: (fused, i) for fused, parts in _DIT_FUSED.items()
             for i, part in enumerate(parts)}


def transformer_state(sd: Dict[str, Tensor], path: str,
                      attention_head_dim: int) -> Dict[str, Tensor]:
    """StableAudioDiTModel's tensors under fastaudio's DiT names (no ``dit.`` prefix)."""
    from .models.transformer import RotaryEmbedding
    out: Dict[str, Tensor] = {}
    parts: Dict[Tuple[str, str], Dict[int, Tensor]] = {}
    unknown = []
    for key, value in sd.items():
        block = re.fullmatch(r"transformer_blocks\.(\d+)\.(.+)", key)
        if key == "time_proj.weight":  # diffusers' Gaussian projection keeps it flat
            out[_DIT_TOP[key]] = value.reshape(-1, 1)
        elif key in _DIT_TOP:
            out[_DIT_TOP[key]] = value
        elif block and block.group(2) in _DIT_BLOCK:
            out[f"transformer.layers.{block.group(1)}.{_DIT_BLOCK[block.group(2)]}"] = value
        elif block and block.group(2) in _DIT_PART:
            fused, i = _DIT_PART[block.group(2)]
            parts.setdefault((block.group(1), fused), {})[i] = value
        else:
            unknown.append(key)
    if unknown:
        raise _unknown(path, unknown, "a StableAudioDiTModel")
    for (layer, fused), got in sorted(parts.items()):
        names = _DIT_FUSED[fused]
        missing = [f"transformer_blocks.{layer}.{n}" for i, n in enumerate(names) if i not in got]
        if missing:
            raise CheckpointError(f"{path}: missing tensor {missing[0]} (fastaudio stacks "
                                  f"{' + '.join(names)} of layer {layer} into its {fused})")
        stacked = [got[i] for i in range(len(names))]
        if len({tuple(t.shape[1:]) for t in stacked}) != 1 or any(t.dim() != 2 for t in stacked):
            shapes = ", ".join(f"{n} {tuple(t.shape)}" for n, t in zip(names, stacked))
            raise CheckpointError(f"{path}: layer {layer}: projections of different input "
                                  f"widths cannot be stacked into {fused}: {shapes}")
        out[f"transformer.layers.{layer}.{fused}"] = torch.cat(stacked, dim=0)
    # the buffer stable-audio-tools saves and diffusers derives per call, from the same formula
    rotary = RotaryEmbedding(max(attention_head_dim // 2, 32))  # as ContinuousTransformer sizes it
    out["transformer.rotary_pos_emb.inv_freq"] = rotary.inv_freq
    return out


_PARAM = r"(weight_g|weight_v|weight|bias|alpha|beta|parametrizations\.weight\.original[01])"
_ENCODER_BLOCK = {"res_unit1": 0, "res_unit2": 1, "res_unit3": 2, "snake1": 3, "conv1": 4}
_DECODER_BLOCK = {"snake1": 0, "conv_t1": 1, "res_unit1": 2, "res_unit2": 3, "res_unit3": 4}
_RESIDUAL_UNIT = {"snake1": 0, "conv1": 1, "snake2": 2, "conv2": 3}


def _oobleck_module(module: str, blocks: int) -> Optional[str]:
    """fastaudio's (stable-audio-tools') path of one of AutoencoderOobleck's modules."""
    m = re.fullmatch(r"(encoder|decoder)\.(conv1|snake1|conv2)", module)
    if m:
        side, name = m.groups()
        return f"{side}.layers.{ {'conv1': 0, 'snake1': blocks + 1, 'conv2': blocks + 2}[name] }"
    m = re.fullmatch(r"(encoder|decoder)\.block\.(\d+)\.(\w+?)(?:\.(\w+))?", module)
    if not m or int(m.group(2)) >= blocks:
        return None
    side, index, part, inner = m.group(1), int(m.group(2)), m.group(3), m.group(4)
    slots = _ENCODER_BLOCK if side == "encoder" else _DECODER_BLOCK
    if part not in slots or (inner is not None) != part.startswith("res_unit"):
        return None
    path = f"{side}.layers.{index + 1}.layers.{slots[part]}"
    if inner is None:
        return path
    return f"{path}.layers.{_RESIDUAL_UNIT[inner]}" if inner in _RESIDUAL_UNIT else None


def vae_state(sd: Dict[str, Tensor], path: str, blocks: int) -> Dict[str, Tensor]:
    """AutoencoderOobleck's tensors under fastaudio's Oobleck names (no ``vae.`` prefix)."""
    out, unknown = {}, []
    for key, value in sd.items():
        m = re.fullmatch(rf"(.+?)\.{_PARAM}", key)
        module = _oobleck_module(m.group(1), blocks) if m else None
        if module is None:
            unknown.append(key)
            continue
        snake = m.group(2) in ("alpha", "beta")
        if snake and value.dim() == 3 and value.shape[0] == value.shape[2] == 1:
            value = value.reshape(-1)  # Snake1d's (1, C, 1) → SnakeBeta's (C,)
        out[f"{module}.{m.group(2)}"] = value
    if unknown:
        raise _unknown(path, unknown, f"an AutoencoderOobleck with {blocks} blocks")
    return out


def projection_state(sd: Dict[str, Tensor], path: str) -> Dict[str, Tensor]:
    """StableAudioProjectionModel's tensors under the conditioners' names (no
    ``conditioner.conditioners.`` prefix)."""
    out, unknown = {}, []
    for key, value in sd.items():
        number = re.fullmatch(r"(start|end)_number_conditioner\.time_positional_embedding\."
                              r"(0\.weights|1\.weight|1\.bias)", key)
        text = re.fullmatch(r"text_projection\.(weight|bias)", key)
        if number:
            cid = "seconds_start" if number.group(1) == "start" else "seconds_total"
            out[f"{cid}.embedder.embedding.{number.group(2)}"] = value
        elif text:
            out[f"prompt.proj_out.{text.group(1)}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise _unknown(path, unknown, "a StableAudioProjectionModel")
    return out


def read_component_weights(folder: str, component: str) -> Tuple[str, Dict[str, Tensor]]:
    """(file read, tensors) of one component: its safetensors file, a sharded one's index, or a
    .bin – never a variant (``.fp16.safetensors``) picked in their place."""
    base = os.path.join(folder, component, WEIGHTS_NAME)
    if os.path.isfile(base + ".safetensors"):
        return base + ".safetensors", read_state_dict(base + ".safetensors")
    index = base + ".safetensors.index.json"
    if os.path.isfile(index):
        shards = read_json(index).get("weight_map")
        if not isinstance(shards, dict) or not shards:
            raise CheckpointError(f"{index}: no weight_map")
        sd: Dict[str, Tensor] = {}
        for shard in sorted(set(shards.values())):
            sd.update(read_state_dict(os.path.join(folder, component, str(shard))))
        return index, sd
    if os.path.isfile(base + ".bin"):
        return base + ".bin", read_state_dict(base + ".bin")
    present = sorted(os.listdir(os.path.join(folder, component)))
    variants = [f for f in present if f.startswith(WEIGHTS_NAME + ".")]
    hint = (f"; only variants are present ({', '.join(variants)}): rename the one to use to "
            f"{WEIGHTS_NAME}.safetensors" if variants else "")
    raise CheckpointError(f"{os.path.join(folder, component)} has no {WEIGHTS_NAME}.safetensors "
                          f"(nor a sharded index or .bin){hint}")


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

def _check_components(folder: str, text_encoder: Optional[str]) -> None:
    """Every component folder model_index.json names is there (T5's weights may come from
    ``text_encoder=`` instead; the tokenizer's config is still read for the prompt length)."""
    read_model_index(folder)
    for component in COMPONENT_CLASSES:
        if component == "text_encoder" and text_encoder is not None:
            continue
        if not os.path.isdir(os.path.join(folder, component)):
            extra = " (or pass text_encoder= a T5 folder)" if component == "text_encoder" else ""
            raise CheckpointError(f"{folder}: component folder {component}/ is missing "
                                  f"(model_index.json names it){extra}")


def load_diffusers_model(folder: str, text_encoder: Optional[str] = None):
    """Stable Audio Open 1.0 from diffusers' StableAudioPipeline folder, as an
    :class:`~fastaudio.models.open_audio.OpenAudioModel` (weights in fp32; the pipeline casts).

    ``text_encoder``: a T5 folder to use instead of the folder's ``text_encoder/``, with its own
    tokenizer files or a ``tokenizer/`` beside it; the prompt length still comes from this
    folder's ``tokenizer/tokenizer_config.json``. Nothing is downloaded."""
    from .models.oobleck import OobleckConfigError
    from .models.dit import DiTConfigError
    from .models.open_conditioning import ConditioningConfigError
    from .open_checkpoints import build_for_loading, load_state_into
    folder = os.path.abspath(os.path.expanduser(str(folder)))
    if not os.path.isdir(folder):
        raise CheckpointError(f"model folder not found: {folder}")
    _check_components(folder, text_encoder)
    source, sampling = reference_config(folder)
    try:
        cfg = open_config_from_reference(source, folder)
        cfg.name = folder
        for key, value in sampling.items():
            setattr(cfg.sampling, key, value)
        # the folder's own T5 is named explicitly, so a broken text_encoder/ is an error here,
        # never passed over for another T5 found elsewhere
        model = build_for_loading(cfg, folder, text_encoder or os.path.join(folder, "text_encoder"))
    except (ConfigError, OobleckConfigError, DiTConfigError, ConditioningConfigError) as e:
        raise CheckpointError(f"{folder}: its diffusers configs describe a model fastaudio cannot "
                              f"build: {e}") from None
    t5 = model.conditioner.conditioners["prompt"]
    projection_cfg = os.path.join(folder, "projection_model", "config.json")
    expected_width = read_json(projection_cfg)["text_encoder_dim"]
    if t5.dim != expected_width:
        raise CheckpointError(f"{projection_cfg}: text_encoder_dim = {expected_width} but the "
                              f"T5 in {t5.encoder_dir} is {t5.dim} wide")

    expected = model.state_dict()
    head_dim = cfg.dit["embed_dim"] // cfg.dit["num_heads"]
    blocks = len(cfg.autoencoder["encoder"]["config"]["strides"])
    mappers = {"transformer": lambda sd, p: transformer_state(sd, p, head_dim),
               "vae": lambda sd, p: vae_state(sd, p, blocks),
               "projection_model": projection_state}
    state: Dict[str, Tensor] = {}
    for component, mapper in mappers.items():
        path, sd = read_component_weights(folder, component)
        prefix = PREFIXES[component]
        part = {prefix + k: v for k, v in mapper(sd, path).items()}
        want = {k: v for k, v in expected.items() if k.startswith(prefix)}
        part = normalize_weight_norm(part, want)
        check_state_dict(part, want, path)  # names the file whose tensors do not fit
        state.update(part)
    load_state_into(model, state, folder)
    return model.eval()
