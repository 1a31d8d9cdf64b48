"""The whole Stable Audio Open model (1.0 or Small): DiT, Oobleck VAE and conditioners (T5 text,
number conditioners), with what the pipeline needs from any model family (see
:class:`fastaudio.models.stable_audio.StableAudioModel`).

Parameter names follow stable-audio-tools with its wrappers' prefixes replaced: ``dit.`` for
``model.model.``, ``vae.`` for ``pretransform.model.``, ``conditioner.`` unchanged. T5 is not a
registered module (it is not in any checkpoint; see :mod:`fastaudio.models.t5_text`).
"""
from __future__ import annotations

import logging
from typing import Dict, Optional, Sequence

import torch
from torch import nn

from ..open_config import OpenModelConfig
from .dit import DiffusionTransformer, DiTConditioning, GuidedDiT
from .oobleck import OobleckVAE
from .open_conditioning import OpenConditioner

log = logging.getLogger("fastaudio")


class OpenAudioModel(nn.Module):
    """``.dit``, ``.vae``, ``.conditioner``, ``.config`` (an :class:`OpenModelConfig`)."""

    family = "stable-audio-open (DiT)"

    def __init__(self, cfg: OpenModelConfig, conditioner: OpenConditioner):
        super().__init__()
        self.config = cfg
        dit_kwargs = dict(cfg.dit)
        dit_kwargs.setdefault("diffusion_objective", cfg.diffusion_objective)
        self.dit = DiffusionTransformer(**dit_kwargs)
        self.vae = OobleckVAE(**cfg.autoencoder, scale=cfg.pretransform_scale)
        self.conditioner = conditioner
        # set by the loader: where T5 came from (``fastaudio info`` names it)
        self.text_encoder_source: Optional[str] = None

    @property
    def objective(self) -> str:
        return self.config.objective

    @property
    def backbone(self) -> nn.Module:
        return self.dit

    @property
    def max_seconds_start(self) -> float:
        number = self.conditioner.conditioners["seconds_start"] \
            if "seconds_start" in self.conditioner.conditioners else None
        return float(number.max_val) if number is not None else 0.0

    def default_decode_chunk_frames(self, device_type: str) -> int:
        return self.vae.default_chunk_frames(torch.device(device_type))

    def _timing(self, seconds_start, seconds_total) -> dict:
        names = self.conditioner.conditioners
        return {"seconds_start": seconds_start if "seconds_start" in names else None,
                "seconds_total": seconds_total if "seconds_total" in names else None}

    def _device(self) -> torch.device:
        return next(self.dit.parameters()).device

    @torch.no_grad()
    def encode_conditioning(self, prompts: Sequence[str], seconds_start, seconds_total,
                            negative_prompts: Optional[Sequence[str]] = None) -> DiTConditioning:
        """The DiT's inputs as stable-audio-tools' ``get_conditioning_inputs`` builds them: the
        cross-attention ids' tokens concatenated, the global ids' vectors concatenated."""
        timing = self._timing(seconds_start, seconds_total)
        device = self._device()
        outputs = self.conditioner(list(prompts), device=device, **timing)
        cross, mask, glob = self.conditioner.assemble(outputs)
        neg = neg_mask = None
        if negative_prompts is not None:
            neg, neg_mask, _ = self.conditioner.assemble(
                self.conditioner(list(negative_prompts), device=device, **timing))
        return DiTConditioning(cross, mask, glob, neg, neg_mask)

    def guided(self, cond: DiTConditioning, cfg_scale: float, cfg_rescale: float = 0.0,
               forward=None) -> GuidedDiT:
        return GuidedDiT(self.dit, cond, cfg_scale, cfg_rescale, forward=forward)

    def text_encoder_description(self) -> str:
        t5 = [m for m in self.conditioner.conditioners.values() if hasattr(m, "encoder_dir")]
        if not t5:
            return "none (no text conditioner)"
        return "; ".join(f"T5 {m.dim} wide, max_length {m.max_length}, from "
                         f"{self.text_encoder_source or m.encoder_dir}" for m in t5)

    def parameter_counts(self) -> Dict[str, int]:
        def count(m: nn.Module) -> int:
            return sum(p.numel() for p in m.parameters())
        counts = {"dit": count(self.dit), "vae": count(self.vae), "vae.encoder": count(self.vae.encoder),
                  "vae.decoder": count(self.vae.decoder), "conditioners": count(self.conditioner)}
        t5 = [m.__dict__.get("encoder") for m in self.conditioner.conditioners.values()
              if m.__dict__.get("encoder") is not None]
        if t5:
            counts["t5 (not in the checkpoint)"] = sum(count(m) for m in t5)
        counts["total (checkpoint)"] = count(self)
        return counts


def build_open_model(cfg: OpenModelConfig, text_encoder_dir: Optional[str] = None,
                     tokenizer_dir: Optional[str] = None, seed: Optional[int] = None,
                     device=None) -> OpenAudioModel:
    """A model with fresh weights. Without a T5 folder, a random T5 of t5-base's shape and a
    byte-level tokenizer stand in (benchmarks and sizes only: the prompt means nothing)."""
    if seed is not None:
        torch.manual_seed(seed)
    if text_encoder_dir is None:
        from .t5_text import random_t5_folder
        text_encoder_dir = tokenizer_dir = random_t5_folder(seed or 0)
        log.warning("%s with random weights: a random t5-base-shaped text encoder and a byte "
                    "tokenizer stand in for T5 (benchmark use only)", cfg.name)
    conditioner = OpenConditioner.from_config(cfg.conditioning, cfg.cross_attention_ids, cfg.global_ids,
                                              text_encoder_dir=text_encoder_dir, tokenizer_dir=tokenizer_dir)
    with torch.device(device or "cpu"):
        model = OpenAudioModel(cfg, conditioner)
    return model.eval()
