"""Latent-diffusion training: the U-Net (and the timing tables) on VAE latents.

The VAE and the CLAP text tower are frozen. Latents come from a latent cache
(:func:`fastaudio.data.latent_cache.build_latent_cache`) or are encoded on the fly from audio crops
of the model's full window. Each item gets t ~ U[0, 1], noise, and with probability
``cfg_dropout`` the learned null context instead of its own (for classifier-free guidance), all
drawn from that item's own generator; the loss is the v-objective MSE over the whole window
(silence after seconds_total included: that is what the timing conditioning learns).

Latents are the VAE posterior's mean (the latent cache stores means); stable-audio-tools samples
from the posterior instead. With the small KL weights used, the posterior std is small and the
difference is a mild augmentation, not a different target.
"""
from __future__ import annotations

import logging
import os
from typing import List

import torch
from torch import Tensor, nn

from ..models.conditioning import assemble_context
from .losses import diffusion_loss
from .trainer import StepContext, UpdateGroup, sample_generator
from .stage_common import ModelStage

log = logging.getLogger("fastaudio.train")


class DiffusionTrainModule(nn.Module):
    """Trainable: the U-Net, the timing tables and the prompt projection."""

    def __init__(self, model, cfg_dropout: float):
        super().__init__()
        self.unet = model.unet
        self.seconds_start = model.conditioner.seconds_start
        self.seconds_total = model.conditioner.seconds_total
        self.prompt_proj = model.conditioner.prompt_proj
        # The frozen CLAP is reached through the conditioner, not registered here: it is not
        # trained, and DDP must not track its parameters.
        self._frozen = (model.conditioner,)
        self.cfg_dropout = cfg_dropout

    def context(self, prompts: List[str], start: List[int], total: List[int]):
        cond = self._frozen[0]
        with torch.no_grad():
            text, text_mask = cond.clap.text_features(prompts)
        s_ids, t_ids = cond.timing_ids(start, total, len(prompts))
        return assemble_context(self.prompt_proj(text), text_mask, self.seconds_start(s_ids),
                                self.seconds_total(t_ids))

    def forward(self, batch: dict, ctx: StepContext):
        x0: Tensor = batch["latents"]
        context, mask = self.context(batch["prompt"], batch["seconds_start"], batch["seconds_total"])
        # Each sample's own generator (a function of seed and sample index): the same draws in any
        # process layout and after a resume. Dropout decisions stay host booleans (no sync).
        gens = [sample_generator(ctx.seed, 1, i) for i in ctx.indices]
        t = torch.stack([torch.rand((), generator=g) for g in gens])
        noise = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in gens])
        drop = [float(torch.rand((), generator=g)) < self.cfg_dropout for g in gens]
        loss, info = diffusion_loss(self.unet, x0, context, mask, t=t.to(x0.device),
                                    noise=noise.to(x0), dropped=torch.tensor(drop, device=x0.device))
        return loss, {"loss": loss.detach(), "dropped": sum(drop) / len(drop)}


class DiffusionStage(ModelStage):
    name = "diffusion"

    def __init__(self, trainer, model, data: str, init):
        super().__init__(trainer, model, data, init)
        self.model.vae.requires_grad_(False).eval()
        self.model.conditioner.clap.requires_grad_(False).eval()
        self.module = DiffusionTrainModule(self.model, trainer.cfg.diffusion.cfg_dropout)

    def dataset(self):
        cfg, mcfg = self.trainer.cfg.diffusion, self.model.config
        if cfg.latent_cache:
            from ..data.latent_cache import LatentDataset
            ds = LatentDataset(cfg.latent_cache, seed=self.trainer.cfg.seed, prompt_style=cfg.prompt_style)
            self.encode_audio = False
        else:
            from ..data.dataset import AudioDataset
            items = self.audio_items(min_seconds=1024 / mcfg.sample_rate)
            ds = AudioDataset(items, mcfg.sample_size, mcfg.sample_rate, random_crop=True,
                              seed=self.trainer.cfg.seed, prompt_style=cfg.prompt_style)
            self.encode_audio = True
        return ds

    def collate(self, items: list) -> dict:
        dev = self.trainer.device
        if self.encode_audio:
            audio = torch.stack([it["audio"] for it in items]).to(dev)
            with torch.no_grad():
                latents = self.model.vae.encode(audio)
        else:
            latents = torch.stack([it["latents"] for it in items]).to(dev).float()
        return {"latents": latents, "prompt": [it["prompt"] for it in items],
                "seconds_start": [int(it["seconds_start"]) for it in items],
                "seconds_total": [int(it["seconds_total"]) for it in items]}

    def groups(self):
        return [UpdateGroup("diffusion", self.module, self.trainer.cfg.optim, ema_target=self.module)]

    def demo(self, step: int) -> None:
        if self.trainer.cfg.strategy == "fsdp" and self.trainer.dist.enabled:
            log.warning("demos are skipped under FSDP (the sharded U-Net cannot run on rank 0 alone)")
            return
        import copy
        from ..audio import write_audio
        from ..pipeline import StableAudio
        cfg = self.trainer.cfg.diffusion
        folder = os.path.join(self.trainer.run_dir, "demos", f"step-{step:08d}")
        os.makedirs(folder, exist_ok=True)
        with self.trainer.ema_weights():
            pipe = StableAudio(copy.deepcopy(self.model).cpu(), device=self.trainer.device,
                               dtype="fp32", execution="eager")
        for k, (prompt, seconds) in enumerate(zip(cfg.demo_prompts, cfg.demo_seconds)):
            audio = pipe.generate(prompt, seconds_total=min(seconds, pipe.config.window_seconds),
                                  steps=cfg.demo_steps, cfg_scale=cfg.demo_cfg_scale, seed=k).audio
            write_audio(os.path.join(folder, f"demo-{k}.wav"), audio[0], pipe.sample_rate,
                        overwrite=True)
