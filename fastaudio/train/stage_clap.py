"""CLAP training: the text and audio towers, contrastively (InfoNCE, learned temperature).

The paper's CLAP was trained from scratch on the same data as the diffusion model; this stage does
that for fastaudio's models. Audio crops of ``clap.sample_seconds`` are paired with prompts in both
prompt styles (natural-language captions and "key: value" metadata), so the text tower learns both.
"""
from __future__ import annotations

import torch
from torch import nn

from .stage_common import ModelStage
from .trainer import StepContext, UpdateGroup


class CLAPTrainModule(nn.Module):
    def __init__(self, clap):
        super().__init__()
        self.clap = clap

    def forward(self, batch: dict, ctx: StepContext):
        loss, acc = self.clap.contrastive_loss(batch["audio"], batch["prompt"])
        return loss, {"loss": loss.detach(), "retrieval_acc": acc.detach(),
                      "temperature": 1 / self.clap.logit_scale.detach().exp()}


class CLAPStage(ModelStage):
    name = "clap"

    def __init__(self, trainer, model, data, init):
        super().__init__(trainer, model, data, init)
        self.module = CLAPTrainModule(self.model.conditioner.clap)
        audio_max = self.model.config.clap.audio.max_seconds
        if trainer.cfg.clap.sample_seconds > audio_max:
            from .trainer import TrainingError
            raise TrainingError(f"clap.sample_seconds {trainer.cfg.clap.sample_seconds} exceeds the "
                                f"audio tower's {audio_max} s")

    def dataset(self):
        from ..data.dataset import AudioDataset
        cfg, mcfg = self.trainer.cfg.clap, self.model.config
        size = int(cfg.sample_seconds * mcfg.sample_rate)
        items = self.audio_items(min_seconds=0.5)
        return AudioDataset(items, size, mcfg.sample_rate, random_crop=True,
                            seed=self.trainer.cfg.seed, prompt_style=cfg.prompt_style)

    def collate(self, items: list) -> dict:
        audio = torch.stack([it["audio"] for it in items]).to(self.trainer.device)
        return {"audio": audio, "prompt": [it["prompt"] for it in items]}

    def groups(self):
        return [UpdateGroup("clap", self.module, self.trainer.cfg.optim, ema_target=self.module)]
