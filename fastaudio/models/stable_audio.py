"""The whole Stable Audio 1.0 model: VAE, U-Net and conditioner (CLAP + timing tables)."""
from __future__ import annotations

from typing import Dict, Optional, Union

import torch
from torch import nn

from ..config import ModelConfig, preset
from .conditioning import Conditioner
from .unet import UNet1d
from .vae import AutoencoderVAE


class StableAudioModel(nn.Module):
    """``.vae``, ``.unet``, ``.conditioner`` and ``.config``; generation lives in
    :class:`fastaudio.StableAudio`, training in :mod:`fastaudio.train`."""

    def __init__(self, cfg: ModelConfig, tokenizer=None):
        super().__init__()
        self.config = cfg
        self.vae = AutoencoderVAE(cfg.vae)
        self.unet = UNet1d(cfg.unet)
        self.conditioner = Conditioner(cfg, tokenizer)

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
