"""VAE training: reconstruction (MR-STFT on sum/difference and on L and R, A-weighted), KL, and
the EnCodec-style multi-scale STFT discriminator (hinge + feature matching), as the reference
VAE config sets them.

Two update groups each step: the autoencoder (generator) against the current discriminator, then
the discriminator on the step's reconstructions. (stable-audio-tools alternates the two on odd
and even steps; updating both every step uses each forward pass twice as well.) The paper's second
stage freezes the encoder and keeps training the decoder: ``vae.freeze_encoder_after``.
``vae.silence_tail_prob`` ends a share of the crops in digital silence, as every padded item the
diffusion stage learns from ends: without it the decoder never sees silence and renders the
latents of silence as a steady noise (the first shipped small VAE did, ~18 dB below the music).
"""
from __future__ import annotations

import os

import torch
from torch import nn

from ..models.vae import kl_divergence
from .stage_common import ModelStage
from .trainer import StepContext, UpdateGroup, ramp, sample_generator


def with_silent_tails(audio: torch.Tensor, prob: float, generators: list) -> torch.Tensor:
    """``audio`` (B, C, T) with, for each item drawn with probability ``prob`` from its own
    generator, the samples from a uniformly drawn point to the end set to zero (the point may be
    0: a wholly silent crop, which must decode to silence as well)."""
    if prob <= 0:
        return audio
    keep = torch.ones(audio.shape[0], 1, audio.shape[-1], dtype=audio.dtype)
    for row, g in enumerate(generators):
        if torch.rand((), generator=g).item() < prob:
            cut = int(torch.randint(0, audio.shape[-1], (), generator=g))
            keep[row, :, cut:] = 0
    return audio * keep.to(audio.device)


def spectral_loss_config(cfg) -> dict:
    """The spectral loss entry (stable-audio-tools' ``loss_configs["spectral"]`` shape) of a
    VAETrainConfig: SA1.0's exactly with the defaults."""
    stft = {"fft_sizes": list(cfg.fft_sizes), "hop_sizes": [f // 4 for f in cfg.fft_sizes],
            "win_lengths": list(cfg.fft_sizes), "perceptual_weighting": bool(cfg.perceptual_weighting)}
    if cfg.log_magnitude_floor_db is not None:
        if not float(cfg.log_magnitude_floor_db) < 0:
            from .trainer import TrainingError
            raise TrainingError(f"vae.log_magnitude_floor_db must be a level under full scale "
                                f"(negative dBFS, e.g. -70), got {cfg.log_magnitude_floor_db}")
        stft["log_floor"] = 10.0 ** (float(cfg.log_magnitude_floor_db) / 20.0)
    return {"type": "mrstft", "weights": {"mrstft": 1.0}, "config": stft}


def dc_error(decoded: torch.Tensor, reals: torch.Tensor) -> torch.Tensor:
    """Mean over items and channels of |mean over time(decoded - reals)|: the DC error that the
    spectral loss cannot see the sign of (``VAETrainConfig.dc_weight``)."""
    return (decoded - reals).mean(-1).abs().mean()


def kl_weight_at(cfg, step: int) -> float:
    """The KL weight at ``step``: ramps over ``kl_warmup_steps``, then holds."""
    return cfg.kl_weight * ramp(step, cfg.kl_warmup_steps)


class AutoencoderTrainModule(nn.Module):
    def __init__(self, vae, discriminator, recon_loss, cfg):
        super().__init__()
        self.vae = vae
        self.recon_loss = recon_loss
        # The discriminator is trained by its own group; it is only *used* here, and registering
        # it would make DDP synchronise its gradients from this group too.
        self._critic = (discriminator,)
        self.cfg = cfg

    def forward(self, batch: dict, ctx: StepContext):
        cfg = self.cfg
        audio = batch["audio"]
        if cfg.silence_tail_prob > 0:
            tails = [sample_generator(ctx.seed, 3, i) for i in ctx.indices]
            audio = with_silent_tails(audio, cfg.silence_tail_prob, tails)
        frozen = 0 <= cfg.freeze_encoder_after <= ctx.step
        with torch.set_grad_enabled(not frozen and torch.is_grad_enabled()):
            pre = self.vae.encoder(audio)
        mean, scale = pre.chunk(2, dim=1)
        std = torch.nn.functional.softplus(scale) + 1e-4
        gens = [sample_generator(ctx.seed, 2, i) for i in ctx.indices]
        noise = torch.stack([torch.randn(mean.shape[1:], generator=g) for g in gens]).to(mean)
        z = mean + ramp(ctx.step, cfg.noise_warmup_steps) * std * noise  # ramp is 1 without warm-up
        kl = kl_divergence(mean, std)
        recon = self.vae.decoder(z)[..., : audio.shape[-1]]
        rec, parts = self.recon_loss(recon, audio)
        kl_weight = kl_weight_at(cfg, ctx.step)
        loss = cfg.mrstft_weight * rec + kl_weight * kl
        logs = {"mrstft": rec.detach(), "kl": kl.detach(), **{k: v.detach() for k, v in parts.items()}}
        if cfg.dc_weight:
            dc = dc_error(recon, audio)
            loss = loss + cfg.dc_weight * dc
            logs["dc_error"] = dc.detach()
        if cfg.kl_warmup_steps:
            logs["kl_weight"] = torch.tensor(kl_weight)
        ctx.cache[ctx.micro] = {"reals": audio, "fakes": recon.detach()}
        if cfg.use_discriminator and ctx.step >= cfg.discriminator_start:
            critic = self._critic[0]
            # The discriminator only judges here: no gradient for its weights in this group
            # (autograd records that at forward time, so it can be switched back at once).
            critic.requires_grad_(False)
            try:
                _, adv, fm = critic.loss(audio, recon)
            finally:
                critic.requires_grad_(True)
            loss = loss + cfg.adversarial_weight * adv + cfg.feature_matching_weight * fm
            logs.update(adversarial=adv.detach(), feature_matching=fm.detach())
        logs["loss"] = loss.detach()
        return loss, logs


class DiscriminatorTrainModule(nn.Module):
    def __init__(self, discriminator):
        super().__init__()
        self.discriminator = discriminator

    def forward(self, batch: dict, ctx: StepContext):
        pair = ctx.cache[ctx.micro]
        loss, _, _ = self.discriminator.loss(pair["reals"], pair["fakes"])
        return loss, {"discriminator_loss": loss.detach()}


class VAEStage(ModelStage):
    name = "vae"

    def __init__(self, trainer, model, data, init):
        super().__init__(trainer, model, data, init)
        from .discriminator import EncodecDiscriminator
        from .losses import VAEReconstructionLoss
        cfg = trainer.cfg.vae
        sr = self.model.config.sample_rate
        ratio = self.model.config.vae.downsampling_ratio
        if cfg.sample_size % ratio:
            from .trainer import TrainingError
            raise TrainingError(f"vae.sample_size {cfg.sample_size} must be a multiple of the VAE's "
                                f"downsampling ratio {ratio}")
        self.discriminator = EncodecDiscriminator(in_channels=self.model.config.audio_channels,
                                                  filters=cfg.discriminator_filters).to(trainer.device)
        self.recon_loss = VAEReconstructionLoss(sample_rate=sr, config=spectral_loss_config(cfg),
                                                sc_over=cfg.spectral_convergence_over).to(trainer.device)
        self.auto = AutoencoderTrainModule(self.model.vae, self.discriminator, self.recon_loss, cfg)
        self.critic = DiscriminatorTrainModule(self.discriminator)

    def dataset(self):
        from ..data.dataset import AudioDataset
        cfg, mcfg = self.trainer.cfg.vae, self.model.config
        items = self.audio_items(min_seconds=1024 / mcfg.sample_rate)
        return AudioDataset(items, cfg.sample_size, mcfg.sample_rate, random_crop=True,
                            seed=self.trainer.cfg.seed, prompt_style="caption")

    def collate(self, items: list) -> dict:
        return {"audio": torch.stack([it["audio"] for it in items]).to(self.trainer.device)}

    def groups(self):
        cfg = self.trainer.cfg
        # find_unused: the encoder receives no gradient once frozen (the paper's second stage)
        groups = [UpdateGroup("autoencoder", self.auto, cfg.optim, ema_target=self.model.vae,
                              params=[p for p in self.model.vae.parameters()],
                              find_unused=cfg.vae.freeze_encoder_after >= 0)]
        if cfg.vae.use_discriminator:
            start = cfg.vae.discriminator_start
            groups.append(UpdateGroup("discriminator", self.critic, cfg.vae.discriminator_optim,
                                      active=lambda step: step >= start))
        return groups

    def demo(self, step: int) -> None:
        from ..audio import write_audio
        item = self.trainer.data[0]
        folder = os.path.join(self.trainer.run_dir, "demos", f"step-{step:08d}")
        os.makedirs(folder, exist_ok=True)
        with self.trainer.ema_weights(), torch.no_grad():
            audio = item["audio"][None].to(self.trainer.device)
            recon = self.model.vae.decode(self.model.vae.encode(audio))[..., : audio.shape[-1]]
        sr = self.model.config.sample_rate
        write_audio(os.path.join(folder, "real.wav"), audio[0], sr, overwrite=True)
        write_audio(os.path.join(folder, "reconstruction.wav"), recon[0], sr, overwrite=True)
