"""Loading Stable Audio Open checkpoints: a stable-audio-tools folder (``model_config.json`` +
``model.safetensors`` or ``model.ckpt``) whose diffusion type is ``dit``.

The state dict's prefixes map onto :class:`~fastaudio.models.open_audio.OpenAudioModel`:
``model.model.`` → ``dit.``, ``pretransform.model.`` → ``vae.``, ``conditioner.`` unchanged (a
training wrapper's ``diffusion.`` prefix is stripped and its EMA copy ignored, as for SA1.0).
T5 is never in the checkpoint: :func:`fastaudio.models.t5_text.locate_t5` finds it beside the
checkpoint, in the Hugging Face cache, or where ``text_encoder=`` points. Nothing is downloaded.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from .open_config import OpenModelConfig
from .state_dicts import (CheckpointError, check_state_dict, normalize_weight_norm, read_state_dict,
                          rename_prefixes)

log = logging.getLogger("fastaudio")

OPEN_PREFIXES: List[Tuple[str, str]] = [
    ("model.model.", "dit."),
    ("pretransform.model.", "vae."),
    ("conditioner.conditioners.", "conditioner.conditioners."),
]


def sat_open_to_fastaudio(sd: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Rename a stable-audio-tools DiT-family state dict to our layout; unknown keys are named."""
    return rename_prefixes(sd, OPEN_PREFIXES, "a Stable Audio Open model's DiT, VAE or conditioners")


def t5_model_name(cfg: OpenModelConfig) -> Optional[str]:
    for entry in cfg.conditioning.get("configs", []):
        if isinstance(entry, dict) and entry.get("type") == "t5":
            return str((entry.get("config") or {}).get("t5_model_name", "t5-base"))
    return None


def build_for_loading(cfg: OpenModelConfig, checkpoint_dir: str, text_encoder: Optional[str]):
    """The model with its DiT and VAE on the meta device (filled by ``load_state_dict(assign=True)``)
    and its conditioners real, T5 found on this machine."""
    from .models.open_audio import OpenAudioModel
    from .models.open_conditioning import OpenConditioner
    enc_dir = tok_dir = None
    name = t5_model_name(cfg)
    if name is not None:
        from .models.t5_text import locate_t5
        enc_dir, tok_dir = locate_t5(checkpoint_dir, text_encoder, model_name=name)
    conditioner = OpenConditioner.from_config(cfg.conditioning, cfg.cross_attention_ids, cfg.global_ids,
                                              text_encoder_dir=enc_dir, tokenizer_dir=tok_dir)
    with torch.device("meta"):
        model = OpenAudioModel(cfg, conditioner)
    model.text_encoder_source = enc_dir
    return model


def checkpoint_key(key: str) -> str:
    """Our key → the stable-audio-tools key it came from (for messages)."""
    for theirs, ours in OPEN_PREFIXES:
        if key.startswith(ours):
            return theirs + key[len(ours):]
    return key


def load_state_into(model, sd: Dict[str, Tensor], source: str, display=checkpoint_key) -> None:
    """Fit ``sd`` (our layout) to the model, naming every missing, unexpected or mis-shaped
    tensor (by the checkpoint's names, through ``display``), then assign it; meta tensors left
    over are an error."""
    expected = model.state_dict()
    sd = normalize_weight_norm({k: v.float() if v.is_floating_point() else v for k, v in sd.items()},
                               expected)
    check_state_dict(sd, expected, source, display=display)
    model.load_state_dict(sd, strict=True, assign=True)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"tensors not loaded from {source}: {', '.join(left[:8])}")


def load_open_model(cfg: OpenModelConfig, checkpoint_dir: str, weights_path: str,
                    text_encoder: Optional[str] = None):
    """A Stable Audio Open model from a stable-audio-tools folder (weights in fp32; the pipeline
    casts)."""
    model = build_for_loading(cfg, checkpoint_dir, text_encoder)
    load_state_into(model, sat_open_to_fastaudio(read_state_dict(weights_path)), weights_path)
    return model.eval()
