"""Training throughput of each stage: step time, samples/s and peak memory.

Runs the stages' own training modules (the code ``fastaudio train`` runs) with AdamW on synthetic
batches, so the figures measure compute, not disk: the VAE (spectral + KL, and with the
discriminator), CLAP, and the diffusion U-Net on latents of the full window. The small preset on a
CPU; SA1.0 on a GPU (bf16 autocast).

    python benchmarks/bench_train.py [--preset small] [--steps 5] [--quick]
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from typing import List

import torch

from common import append_rows, peak_memory_mb, reset_peak_memory, sync


def _steps(module, batch_fn, params, steps, device, autocast) -> float:
    from fastaudio.train.trainer import StepContext
    opt = torch.optim.AdamW(params, lr=1e-5)
    times = []
    for step in range(steps + 1):  # step 0 is a warm-up
        batch = batch_fn()
        sync(device)
        t0 = time.perf_counter()
        ctx = StepContext(step, 0, 0, list(range(len(next(iter(batch.values()))))), {}, 0)
        with autocast():
            loss, _ = module(batch, ctx)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if step:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def bench(preset: str, steps: int, batch: int, quick: bool) -> List[dict]:
    from fastaudio.pipeline import random_weights_model
    from fastaudio.train.config import VAETrainConfig
    from fastaudio.train.stage_clap import CLAPTrainModule
    from fastaudio.train.stage_diffusion import DiffusionTrainModule
    from fastaudio.train.stage_vae import AutoencoderTrainModule
    from fastaudio.train.losses import VAEReconstructionLoss
    from fastaudio.train.discriminator import EncodecDiscriminator
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
    model = random_weights_model(preset, seed=0).to(device).train()
    cfg = model.config
    sr = cfg.sample_rate
    g = torch.Generator(device=device).manual_seed(0)
    rows = []

    def record(stage, variant, seconds, n, sample_desc):
        row = {"preset": preset, "stage": stage, "variant": variant, "batch": n,
               "sample": sample_desc, "step_s": round(seconds, 4), "samples_per_s": round(n / seconds, 3),
               "peak_memory_mb": peak_memory_mb(device), "quick": quick}
        rows.append(row)
        print(f"{preset} {stage:9s} {variant:22s} batch {n}: {seconds:8.3f} s/step, "
              f"{row['samples_per_s']:8.2f} samples/s, peak {row['peak_memory_mb']} MB")

    # VAE: 65536-sample crops (the reference config), spectral + KL, then with the discriminator
    crop = 65536 if cuda else 32768
    for use_disc in (False, True):
        disc = EncodecDiscriminator(2, 32).to(device) if use_disc else None
        vcfg = VAETrainConfig(sample_size=crop, use_discriminator=use_disc)
        module = AutoencoderTrainModule(model.vae, disc, VAEReconstructionLoss(sr).to(device), vcfg)
        audio = lambda: {"audio": torch.randn(batch, 2, crop, generator=g, device=device) * 0.3}
        reset_peak_memory(device)
        s = _steps(module, audio, list(model.vae.parameters()), steps, device, autocast)
        record("vae", "spectral+kl+gan" if use_disc else "spectral+kl", s, batch, f"{crop} samples")
    # CLAP: 10 s crops (or the audio tower's window)
    seconds = min(10.0, cfg.clap.audio.max_seconds)
    module = CLAPTrainModule(model.conditioner.clap)
    clap_batch = max(batch, 8)
    data = lambda: {"audio": torch.randn(clap_batch, 2, int(seconds * sr), generator=g, device=device) * 0.3,
                    "prompt": [f"prompt number {i}" for i in range(clap_batch)]}
    reset_peak_memory(device)
    s = _steps(module, data, list(model.conditioner.clap.parameters()), steps, device, autocast)
    record("clap", "contrastive", s, clap_batch, f"{seconds:g} s audio")
    # diffusion: latents of the full window
    module = DiffusionTrainModule(model, 0.1)
    frames = cfg.latent_length
    data = lambda: {"latents": torch.randn(batch, cfg.vae.latent_dim, frames, generator=g, device=device),
                    "prompt": ["a prompt"] * batch, "seconds_start": [0] * batch,
                    "seconds_total": [int(cfg.window_seconds)] * batch}
    reset_peak_memory(device)
    s = _steps(module, data, list(module.parameters()), steps, device, autocast)
    record("diffusion", "v-objective", s, batch, f"{frames} latent frames")
    return rows


def main(argv=None) -> List[dict]:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="stable-audio-1.0" if cuda else "small")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    if not cuda:
        print(f"no CUDA device: CPU figures for the {a.preset!r} preset")
    rows = bench(a.preset, 1 if a.quick else a.steps, a.batch, a.quick)
    print(f"{len(rows)} rows appended to {append_rows('train', rows)}")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
