"""The whole Stable Audio 1.0 model: VAE, U-Net and conditioner (CLAP + timing tables)."""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Union

import torch
from torch import nn

from ..config import ModelConfig, preset
from .conditioning import Conditioner
from .unet import UNet1d
from .unet_guidance import GuidedUNet, UNetConditioning
from .vae import AutoencoderVAE


class StableAudioModel(nn.Module):
    """``.vae``, ``.unet``, ``.conditioner`` and ``.config``; generation lives in
    :class:`fastaudio.StableAudio`, training in :mod:`fastaudio.train`.

    What the pipeline needs from any model family: ``family``, ``objective``, ``backbone`` (the
    module that runs at every step), ``vae``, ``conditioner``, ``encode_conditioning``,
    ``guided``, ``max_seconds_start``, ``default_decode_chunk_frames``,
    ``text_encoder_description`` and ``parameter_counts``.
    """

    family = "stable-audio-1.0 (U-Net)"
    objective = "v"

    def __init__(self, cfg: ModelConfig, tokenizer=None):
        super().__init__()
        self.config = cfg
        self.vae = AutoencoderVAE(cfg.vae)
        self.unet = UNet1d(cfg.unet)
        self.conditioner = Conditioner(cfg, tokenizer)

    @property
    def backbone(self) -> nn.Module:
        return self.unet

    @property
    def max_seconds_start(self) -> float:
        return float(self.config.conditioning.seconds_max)

    def default_decode_chunk_frames(self, device_type: str) -> int:
        # 1024 latent frames on a GPU (a 96 x 1 M-sample bf16 activation is ~200 MB; the 32-frame
        # overlap then costs 3 %); 256 on a CPU, where cache locality beats the overlap's cost
        # (measured: docs/benchmarking.md, "decoder chunk size").
        return 1024 if device_type == "cuda" else 256

    def encode_conditioning(self, prompts: Sequence[str], seconds_start, seconds_total,
                            negative_prompts: Optional[Sequence[str]] = None) -> UNetConditioning:
        context, mask = self.conditioner(list(prompts), seconds_start, seconds_total)
        neg_ctx = neg_mask = None
        if negative_prompts is not None:
            neg_ctx, neg_mask = self.conditioner(list(negative_prompts), seconds_start, seconds_total)
        return UNetConditioning(context, mask, neg_ctx, neg_mask)

    def guided(self, cond: UNetConditioning, cfg_scale: float, cfg_rescale: float = 0.0,
               forward=None) -> GuidedUNet:
        return GuidedUNet(self.unet, cond, cfg_scale, cfg_rescale, forward=forward)

    def text_encoder_description(self) -> str:
        c = self.conditioner
        if c.text_encoder_missing:
            return "MISSING: " + c.text_encoder_missing
        tok = c.clap.tokenizer
        return f"CLAP text tower ({type(tok).__name__ if tok is not None else 'no tokenizer'})"

    def parameter_counts(self) -> Dict[str, int]:
        def count(m: nn.Module) -> int:
            return sum(p.numel() for p in m.parameters())
        return {
            "vae": count(self.vae),
            "vae.encoder": count(self.vae.encoder),
            "vae.decoder": count(self.vae.decoder),
            "unet": count(self.unet),
            "clap.text": count(self.conditioner.clap.text_branch),
            "clap.audio": count(self.conditioner.clap.audio_branch),
            "conditioner": count(self.conditioner),
            "total": count(self),
        }


def build_model(preset_or_config: Union[str, ModelConfig] = "stable-audio-1.0",
                device: Optional[Union[str, torch.device]] = None,
                dtype: Optional[torch.dtype] = None, seed: Optional[int] = None) -> StableAudioModel:
    """A model with fresh weights (the U-Net scaled by 0.5 after init, as the reference does).

    ``device="meta"`` builds without allocating (parameter counts, FLOP estimates).
    """
    cfg = preset(preset_or_config) if isinstance(preset_or_config, str) else preset_or_config.validate()
    if seed is not None:
        torch.manual_seed(seed)
    with torch.device(device or "cpu"):
        model = StableAudioModel(cfg)
    model.unet.scale_initial_weights(0.5)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()
