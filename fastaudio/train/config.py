"""Training configuration: one JSON file per run, strict like the model configs.

``default_train_config(stage, model_config)`` gives the reference's settings scaled to the
model: AdamW (VAE and discriminator: lr 1e-4, betas (0.8, 0.99), ExponentialLR γ 0.999996;
diffusion: lr 4e-5), EMA, 10 % context dropout for guidance. A JSON file overrides any field;
unknown keys and wrong types are errors naming the key.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import List, Optional

from ..config import ConfigError, ModelConfig, from_dict

STAGES = ("vae", "clap", "diffusion")


@dataclass
class OptimConfig:
    lr: float = 1e-4
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    eps: float = 1e-8
    schedule: str = "constant"  # constant | exponential | cosine
    gamma: float = 0.999996      # exponential decay per step
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1    # cosine floor


@dataclass
class VAETrainConfig:
    sample_size: int = 65536
    mrstft_weight: float = 1.0
    kl_weight: float = 1e-6
    # Steps over which the KL weight ramps linearly from 0 to kl_weight (0: none, as SA1.0): the
    # usual guard against posterior collapse. (On the small preset it did not prevent one: fresh
    # runs at lr 1e-3 collapse within 500 steps even with the KL term off; lr 3e-4 does not -
    # docs/research/learning-rate-collapse.md.)
    kl_warmup_steps: int = 0
    # Steps over which the posterior noise std·ε added to the mean ramps from 0 to full (0: none,
    # as SA1.0), so the decoder first sees the plain means: a fresh encoder's means are tiny
    # against its initial std (~0.7). Also did not prevent the small preset's collapse.
    noise_warmup_steps: int = 0
    adversarial_weight: float = 0.1
    feature_matching_weight: float = 5.0
    use_discriminator: bool = True
    discriminator_start: int = 0       # steps of spectral-only training before the GAN losses
    discriminator_filters: int = 32
    freeze_encoder_after: int = -1     # the paper's second stage: encoder frozen after N steps
    # Share of crops whose tail is zeroed from a random point on: the diffusion stage pads every
    # item with silence after its end, so the decoder must turn those latents into silence too
    # (crops of music alone never show it digital silence).
    silence_tail_prob: float = 0.0
    # The spectral loss: SA1.0's multi-resolution STFT (hops of a quarter window). Its A-weighting
    # pre-emphasis (perceptual_weighting) leaves errors below a few hundred Hz nearly unseen
    # (-19 dB at 100 Hz, -30 dB at 50 Hz) - SA1.0's discriminator covers that range, a run
    # without one does not; a larger FFT resolves low fundamentals (4096: 10.8 Hz bins).
    perceptual_weighting: bool = True
    # Weight of |mean(decoded) - mean(reals)| per item and channel (the DC error). The
    # magnitude-only spectral loss *rewards* a constant offset: an STFT of 32-256 samples cannot
    # tell it from low-frequency content (|bin 0| drops the sign), so unweighted runs learned one
    # offset for every clip (-0.024 on the small preset) in place of the bass and lower harmonics
    # (removing it raised their loss). SA1.0's A-weighting FIR does not remove the offset either
    # (tests/test_losses.py); its discriminator can see it. 0: off, as SA1.0.
    dc_weight: float = 0.0
    # Level in dBFS under which the spectral loss's log-magnitude term stops telling magnitudes
    # apart (the STFT loss's log_floor, as a sinusoid's amplitude). None: no floor, as SA1.0
    # (auraloss's eps, -80 dB below a 1.0 bin magnitude, whatever the window).
    log_magnitude_floor_db: Optional[float] = None
    fft_sizes: List[int] = field(default_factory=lambda: [2048, 1024, 512, 256, 128, 64, 32])
    # Whose magnitudes normalise the spectral convergence ‖|D|−|R|‖/‖·‖: "decoded" as
    # stable-audio-tools computes it (reals passed in the loss's input slot), or "reals". Over the
    # decoded audio the term cannot exceed ~1 however loud the output, so without SA1.0's
    # discriminator a decoder learns to add cheap energy: a DC offset of 13x the music's rms costs
    # less than replacing the music with noise (tests/test_losses.py).
    spectral_convergence_over: str = "decoded"
    discriminator_optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        lr=1e-4, betas=[0.8, 0.99], schedule="exponential"))


@dataclass
class CLAPTrainConfig:
    sample_seconds: float = 10.0       # audio crop length for the audio tower
    prompt_style: str = "mixed"


@dataclass
class DiffusionTrainConfig:
    cfg_dropout: float = 0.1
    prompt_style: str = "mixed"
    latent_cache: str = ""             # a folder from build_latent_cache; "" encodes on the fly
    demo_prompts: List[str] = field(default_factory=lambda: ["a slow solo piano melody in D minor, 70 BPM"])
    demo_seconds: List[float] = field(default_factory=lambda: [8.0])
    demo_steps: int = 50
    demo_cfg_scale: float = 5.0


@dataclass
class DataConfig:
    on_bad: str = "skip"               # skip | fail: what unusable files do to the run
    convert: bool = True               # resample / upmix files that differ from 44.1 kHz stereo
    num_workers: int = 0               # DataLoader worker processes that load steps ahead


@dataclass
class TrainConfig:
    stage: str = "diffusion"
    steps: int = 1000
    batch_size: int = 4                # global batch (split across processes)
    grad_accum: int = 1
    precision: str = "fp32"            # fp32 | bf16 (autocast)
    grad_clip: float = 1.0             # 0 disables
    ema_decay: float = 0.999           # 0 disables
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 500
    keep_last: int = 3
    demo_every: int = 0                # 0 disables
    strategy: str = "auto"             # auto | ddp | fsdp (under torchrun)
    optim: OptimConfig = field(default_factory=OptimConfig)
    vae: VAETrainConfig = field(default_factory=VAETrainConfig)
    clap: CLAPTrainConfig = field(default_factory=CLAPTrainConfig)
    diffusion: DiffusionTrainConfig = field(default_factory=DiffusionTrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def validate(self) -> "TrainConfig":
        def need(ok, key, why):
            if not ok:
                raise ConfigError(f"{key}: {why}")
        need(self.stage in STAGES, "stage", f"{self.stage!r} is not one of {', '.join(STAGES)}")
        need(self.steps > 0, "steps", "must be positive")
        need(self.batch_size > 0 and self.grad_accum > 0, "batch_size", "batch_size and grad_accum must be positive")
        need(self.precision in ("fp32", "bf16"), "precision", "fp32 or bf16")
        need(self.strategy in ("auto", "ddp", "fsdp"), "strategy", "auto, ddp or fsdp")
        need(0 <= self.ema_decay < 1, "ema_decay", "in [0, 1)")
        need(self.keep_last >= 1, "keep_last", "at least 1")
        need(self.log_every >= 1, "log_every", "at least 1")
        need(self.checkpoint_every >= 1, "checkpoint_every", "at least 1")
        need(self.demo_every >= 0, "demo_every", "0 (off) or more")
        need(self.data.num_workers >= 0, "data.num_workers", "0 or more")
        need(len(self.diffusion.demo_prompts) == len(self.diffusion.demo_seconds),
             "diffusion.demo_seconds", "needs one duration per demo prompt")
        need(self.vae.sample_size > 0, "vae.sample_size", "must be positive")
        need(0 <= self.vae.silence_tail_prob <= 1, "vae.silence_tail_prob", "in [0, 1]")
        need(self.vae.kl_warmup_steps >= 0, "vae.kl_warmup_steps", "0 (none) or more")
        need(self.vae.noise_warmup_steps >= 0, "vae.noise_warmup_steps", "0 (none) or more")
        if self.stage == "vae":  # the other stages never build the spectral loss
            need(bool(self.vae.fft_sizes) and all(isinstance(f, int) and 8 <= f <= self.vae.sample_size
                                                  and f % 4 == 0 for f in self.vae.fft_sizes),
                 "vae.fft_sizes", f"one or more window sizes, multiples of 4 (hops are a quarter) "
                 f"from 8 to vae.sample_size ({self.vae.sample_size}), got {self.vae.fft_sizes}")
            need(self.vae.spectral_convergence_over in ("decoded", "reals"),
                 "vae.spectral_convergence_over", f"'decoded' (SA1.0's) or 'reals', got "
                 f"{self.vae.spectral_convergence_over!r}")
        need(self.data.on_bad in ("skip", "fail"), "data.on_bad", "skip or fail")
        for key, o in (("optim", self.optim), ("vae.discriminator_optim", self.vae.discriminator_optim)):
            need(o.schedule in ("constant", "exponential", "cosine"), f"{key}.schedule",
                 "constant, exponential or cosine")
            need(o.lr > 0 and len(o.betas) == 2, f"{key}", "lr > 0 and two betas")
        need(0 <= self.diffusion.cfg_dropout <= 1, "diffusion.cfg_dropout", "in [0, 1]")
        return self


def default_train_config(stage: str, model: ModelConfig) -> TrainConfig:
    cfg = TrainConfig(stage=stage)
    if stage == "vae":
        cfg.optim = OptimConfig(lr=1e-4, betas=[0.8, 0.99], schedule="exponential")
    elif stage == "clap":
        cfg.optim = OptimConfig(lr=1e-4, betas=[0.9, 0.98], weight_decay=0.01, schedule="cosine",
                                warmup_steps=100)
        cfg.clap.sample_seconds = min(model.clap.audio.max_seconds, model.window_seconds)
    elif stage == "diffusion":
        cfg.optim = OptimConfig(lr=4e-5, betas=[0.9, 0.999], weight_decay=1e-3)
    else:
        raise ConfigError(f"stage {stage!r} is not one of {', '.join(STAGES)}")
    return cfg.validate()


def train_config_from_json(text: str, base: TrainConfig, source: str = "train config") -> TrainConfig:
    """Overlay a JSON object on ``base`` (nested objects merge); strict about keys and types."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{source}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a JSON object")
    merged = _merge(dataclasses.asdict(base), data, "")
    return from_dict(TrainConfig, merged).validate()


def _merge(base: dict, over: dict, path: str) -> dict:
    out = dict(base)
    for key, value in over.items():
        where = f"{path}.{key}" if path else key
        if key not in base:
            raise ConfigError(f"unknown training config key {where!r} "
                              f"(known: {', '.join(sorted(base))})")
        if isinstance(base[key], dict) and isinstance(value, dict):
            out[key] = _merge(base[key], value, where)
        else:
            out[key] = value
    return out


def train_config_to_json(cfg: TrainConfig) -> str:
    return json.dumps(dataclasses.asdict(cfg), indent=2) + "\n"
