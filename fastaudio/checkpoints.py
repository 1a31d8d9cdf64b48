"""Saving and loading models: our model folders and stable-audio-tools checkpoints.

A fastaudio model folder holds ``model_config.json`` (our format), ``model.safetensors`` (every
tensor: vae.*, unet.*, conditioner.*) and, for RoBERTa BPE text towers, ``tokenizer/``.

``load_model`` reads the same folders and also stable-audio-tools ``diffusion_cond`` checkpoints
(its ``model_config.json`` and ``model.safetensors`` or ``model.ckpt``) with no manual conversion:
the U-Net is stored there under ``model.model.``, the VAE under ``pretransform.model.``, the
timing tables under ``conditioner.conditioners.seconds_*``; its CLAP lives in a separate
LAION-CLAP checkpoint (``clap_ckpt_path`` in the config, or ``clap_checkpoint=``).

Checkpoints are data: ``.ckpt`` files are only read with ``torch.load(weights_only=True)``.
Missing, unexpected and mis-shaped tensors are named in the error, and unreadable files give a
:class:`CheckpointError` saying which file and why.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor

from .atomic import atomic_path, atomic_write_text
from .config import ConfigError, ModelConfig, config_to_json
from .config_files import read_model_config
from .hub_cache import cache_snapshots, looks_like_repo_id, repo_cache_dir
from .models.clap import CLAP, load_laion_clap_text
from .models.stable_audio import StableAudioModel
from .state_dicts import (CheckpointError, check_state_dict, normalize_weight_norm,  # noqa: F401
                          read_state_dict, rename_prefixes)

log = logging.getLogger("fastaudio")

CONFIG_FILE = "model_config.json"
WEIGHTS_FILE = "model.safetensors"
CKPT_FILE = "model.ckpt"
TOKENIZER_DIR = "tokenizer"

# stable-audio-tools key prefix → ours
SAT_PREFIXES: List[Tuple[str, str]] = [
    ("model.model.", "unet."),
    ("pretransform.model.encoder.encoder.", "vae.encoder."),
    ("pretransform.model.encoder.proj_out.", "vae.encoder.proj_out."),
    ("pretransform.model.decoder.decoder.", "vae.decoder."),
    ("conditioner.conditioners.seconds_start.", "conditioner.seconds_start."),
    ("conditioner.conditioners.seconds_total.", "conditioner.seconds_total."),
]


# ---------------------------------------------------------------------------------------------
# Key layouts
# ---------------------------------------------------------------------------------------------

def sat_to_fastaudio(sd: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Rename a stable-audio-tools diffusion_cond state dict to our layout."""
    return rename_prefixes(sd, SAT_PREFIXES, "Stable Audio 1.0")


# ---------------------------------------------------------------------------------------------
# Save
# ---------------------------------------------------------------------------------------------

def save_model(model: StableAudioModel, folder: str, state_dict: Optional[Dict[str, Tensor]] = None,
               dtype: Optional[torch.dtype] = None) -> None:
    """Write ``folder/model_config.json`` and ``folder/model.safetensors`` atomically
    (``state_dict`` overrides the model's own tensors, e.g. gathered from FSDP shards; ``dtype``
    stores floating tensors in a smaller type, e.g. float16 for the shipped model)."""
    from safetensors.torch import save_file
    os.makedirs(folder, exist_ok=True)
    source = state_dict if state_dict is not None else model.state_dict()
    sd = {k: v.detach().contiguous().cpu() for k, v in source.items()}
    if dtype is not None:
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    with atomic_path(os.path.join(folder, WEIGHTS_FILE)) as tmp:
        save_file(sd, tmp, metadata={"format": "fastaudio", "config_name": model.config.name})
    tok = model.conditioner.clap.tokenizer
    if tok is not None and tok.kind == "roberta":
        tok.save(os.path.join(folder, TOKENIZER_DIR))
    atomic_write_text(os.path.join(folder, CONFIG_FILE), config_to_json(model.config))


# ---------------------------------------------------------------------------------------------
# Load
# ---------------------------------------------------------------------------------------------

def _resolve(path: str) -> Tuple[str, str]:
    """(config path, weights path) for a model folder or a weights file beside its config."""
    if os.path.isdir(path):
        cfg = os.path.join(path, CONFIG_FILE)
        if not os.path.isfile(cfg):
            raise CheckpointError(f"{path} has no {CONFIG_FILE}: not a model folder")
        for name in (WEIGHTS_FILE, CKPT_FILE):
            if os.path.isfile(os.path.join(path, name)):
                return cfg, os.path.join(path, name)
        raise CheckpointError(f"{path} has no {WEIGHTS_FILE} or {CKPT_FILE}")
    if os.path.isfile(path):
        cfg = os.path.join(os.path.dirname(os.path.abspath(path)), CONFIG_FILE)
        if not os.path.isfile(cfg):
            raise CheckpointError(f"no {CONFIG_FILE} beside {path}")
        return cfg, path
    raise CheckpointError(f"model path not found: {path}")


def _is_model_folder(folder: str) -> bool:
    if os.path.isfile(os.path.join(folder, "model_index.json")):
        return True
    return os.path.isfile(os.path.join(folder, CONFIG_FILE)) and any(
        os.path.isfile(os.path.join(folder, name)) for name in (WEIGHTS_FILE, CKPT_FILE))


def locate_model(path: str) -> str:
    """``path`` itself when it exists; a Hugging Face repository id (``owner/name``) that is not
    a path: its snapshot in the local hub cache (the one ``refs/main`` names first) that holds a
    loadable model. Nothing is downloaded; the error says where it looked and how to fetch."""
    path = os.path.expanduser(str(path))
    if os.path.exists(path) or not looks_like_repo_id(path):
        return path
    looked = []
    for snap in cache_snapshots(path):
        if _is_model_folder(snap):
            log.info("model %s from the Hugging Face cache: %s", path, snap)
            return snap
        looked.append(f"{snap} (no model_index.json, nor {CONFIG_FILE} with {WEIGHTS_FILE} or "
                      f"{CKPT_FILE}: an incomplete download?)")
    if not looked:
        looked.append(f"{repo_cache_dir(path)} (no snapshot)")
    raise CheckpointError(
        f"model path not found: {path}; nor is it in the local Hugging Face cache as a repository "
        f"id (looked at: {'; '.join(looked)}). fastaudio never downloads: fetch it first "
        f"(`huggingface-cli download {path}`; Stability AI's repositories are gated: accept the "
        f"licence on the model page and log in) or pass the model folder.")


def _tokenizer_folder(folder: str, tokenizer: Optional[str]) -> Optional[str]:
    if tokenizer is not None:
        return tokenizer
    for cand in (os.path.join(folder, TOKENIZER_DIR), folder):
        if any(os.path.isfile(os.path.join(cand, f)) for f in ("tokenizer.json", "vocab.json")):
            return cand
    return None


def load_model(path: str, device: Optional[Union[str, torch.device]] = None,
               dtype: Optional[torch.dtype] = None, clap_checkpoint: Optional[str] = None,
               tokenizer: Optional[str] = None, text_encoder: Optional[str] = None):
    """Load a model folder of any supported layout:

    * fastaudio's own (``model_config.json`` in our format + ``model.safetensors``);
    * a stable-audio-tools ``diffusion_cond`` checkpoint (its ``model_config.json`` and
      ``model.safetensors`` or ``model.ckpt``): SA1.0-style (U-Net) or Stable Audio Open (DiT);
    * diffusers' StableAudioPipeline layout (``model_index.json``, ``transformer/``, ``vae/``,
      ``text_encoder/``, ``tokenizer/``, ``projection_model/``).

    ``clap_checkpoint``: a LAION-CLAP checkpoint for a SA1.0-style model's text tower (default:
    the config's ``clap_ckpt_path`` when that file exists). ``tokenizer``: a folder with
    RoBERTa's tokenizer files (default: ``tokenizer/`` in the model folder). ``text_encoder``: a
    T5 folder for Stable Audio Open models (default: ``text_encoder/`` beside the checkpoint,
    then the Hugging Face cache; nothing is downloaded).

    ``path`` may also be a Hugging Face repository id (``stabilityai/stable-audio-open-small``)
    already in the local hub cache (:func:`locate_model`).
    """
    path = locate_model(path)
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "model_index.json")):
        from .diffusers_checkpoints import load_diffusers_model
        model = load_diffusers_model(path, text_encoder=text_encoder)
        return model.to(device=device, dtype=dtype) if device is not None or dtype is not None else model
    cfg_path, weights_path = _resolve(path)
    folder = os.path.dirname(os.path.abspath(cfg_path))
    try:
        with open(cfg_path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {cfg_path}: {e}") from None
    try:
        cfg: ModelConfig = read_model_config(raw, cfg_path)
    except ConfigError as e:
        raise CheckpointError(f"{cfg_path}: {e}") from None
    is_reference = "model_type" in raw
    from .open_config import OpenModelConfig
    if isinstance(cfg, OpenModelConfig):
        from .open_checkpoints import load_open_model
        model = load_open_model(cfg, folder, weights_path, text_encoder)
        return model.to(device=device, dtype=dtype) if device is not None or dtype is not None else model

    # Stored precision is a storage choice (the shipped model is float16): compute starts in fp32,
    # and ``dtype`` converts afterwards.
    sd = {k: v.float() if v.is_floating_point() else v for k, v in read_state_dict(weights_path).items()}
    with torch.device("meta"):
        model = StableAudioModel(cfg)
    expected = model.state_dict()
    if is_reference:
        sd = sat_to_fastaudio(sd)
    sd = normalize_weight_norm(sd, expected)
    # A stable-audio-tools checkpoint carries no CLAP: it comes from a LAION-CLAP file.
    clap_prefix = ("conditioner.clap.", "conditioner.prompt_proj.") if is_reference else ()
    check_state_dict(sd, expected, weights_path, allow_missing_prefixes=clap_prefix)
    model.load_state_dict(sd, strict=not is_reference, assign=True)

    tok_folder = _tokenizer_folder(folder, tokenizer)
    if is_reference:
        _attach_reference_clap(model, raw, folder, clap_checkpoint, tok_folder)
    elif cfg.clap.text.tokenizer == "roberta":
        _set_tokenizer(model, tok_folder)
    _reject_meta(model)
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    return model.eval()


def _set_tokenizer(model: StableAudioModel, folder: Optional[str]) -> None:
    if folder is None:
        model.conditioner.text_encoder_missing = (
            "this model's text tower uses RoBERTa's BPE tokenizer but no tokenizer files were found: "
            "put vocab.json and merges.txt (or tokenizer.json) in the model folder's tokenizer/ "
            "directory, or pass tokenizer=FOLDER")
        return
    model.conditioner.clap.set_tokenizer_folder(folder)


def _attach_reference_clap(model: StableAudioModel, raw: dict, folder: str,
                           clap_checkpoint: Optional[str], tok_folder: Optional[str]) -> None:
    from .reference_config import reference_clap_checkpoint
    cfg = model.config
    # Real tensors for the CLAP (the meta ones had no source). The reference's text features
    # feed the U-Net directly (768 = cond_dim), so prompt_proj is the identity.
    model.conditioner.clap = CLAP(cfg.clap)
    path = clap_checkpoint or reference_clap_checkpoint(raw)
    if path and not os.path.isabs(path):
        path = os.path.join(folder, path)
    if not path or not os.path.isfile(path):
        model.conditioner.text_encoder_missing = (
            f"the CLAP text encoder of this stable-audio-tools model was not loaded (no file at "
            f"{path or 'clap_ckpt_path'}): pass clap_checkpoint= a LAION-CLAP checkpoint")
        return
    try:
        load_laion_clap_text(model.conditioner.clap, path)
    except (ValueError, FileNotFoundError) as e:
        raise CheckpointError(str(e)) from None
    _set_tokenizer(model, tok_folder)


def _reject_meta(model: StableAudioModel) -> None:
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"tensors not loaded from the checkpoint: {', '.join(left[:8])}")
