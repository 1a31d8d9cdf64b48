"""fastaudio against stable-audio-tools' own generation path, in one process, same device and dtype.

The same SA1.0-shaped model and weights run through:
* the reference: stable-audio-tools' ``UNetCFG1d`` (batched CFG with rescale, as its
  ``generate_diffusion_cond`` calls it), k-diffusion's ``VDenoiser`` and ``sample_dpmpp_3m_sde``
  (with its Brownian-tree noise), and descript-audio-codec's ``Decoder`` on the whole window
  (stable-audio-tools decodes unchunked by default, weight norm unfolded);
* fastaudio: its pipeline (fused kernels, attention dispatcher, CUDA graphs on CUDA, folded weight
  norm, chunked decoding, the guided step's context-free prefix run once), in each execution mode
  asked for (``--execution``; on CPU eager and torch.compile, whose compile time is not timed).
Both use fastaudio's text conditioning (stable-audio-tools' CLAP conditioner needs laion_clap and
a checkpoint; text encoding is well under 1 % of the time), so the comparison is U-Net step,
sampling, decoding and end to end. Ratios are computed from timings of the same run: the ratio of
the medians, and the lowest and highest ratio of a single repetition (reference and fastaudio timed
back to back), which shows how much of a difference this machine's noise could explain.

The reference modules are loaded as tests/reference_impl.py loads them (stable-audio-tools,
descript-audio-codec and k-diffusion installed with --no-deps; see tests/reference-requirements.txt).

    python benchmarks/bench_vs_reference.py [--preset small] [--seconds 11.9] [--steps 50]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List

import torch

from common import ROOT, save_rows, sync

sys.path.insert(0, os.path.join(ROOT, "tests"))  # the reference loaders live with the tests
import reference_impl as R  # noqa: E402


def reference_modules(model, device, dtype):
    adp, dac = R.adp(), R.dac()
    cfg = model.config
    unet = adp.UNetCFG1d(**R.unet_kwargs(cfg.unet))
    unet.load_state_dict(model.unet.state_dict())
    d = cfg.vae.decoder
    decoder = dac.model.Decoder(d.latent_dim, d.channels, d.rates, d_out=d.out_channels)
    decoder.load_state_dict(model.vae.decoder.state_dict())
    return unet.to(device, dtype).eval(), decoder.to(device, dtype).eval()


def timed(fn, device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


@torch.no_grad()
def bench(preset: str, seconds: float, steps: int, cfg_scale: float, dtype_name: str, repeats: int,
          executions: List[str]) -> List[dict]:
    from fastaudio.pipeline import random_weights_model
    from fastaudio.diffusion.sigmas import polyexponential
    from fastaudio.pipeline import StableAudio
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    K = R.kdiffusion()
    model = random_weights_model(preset, seed=0)
    ref_unet, ref_decoder = reference_modules(model, device, dtype)
    pipes = {e: StableAudio(model, device=device, dtype=dtype, execution=e) for e in executions}
    pipe = next(iter(pipes.values()))
    cfg, s = pipe.config, pipe.config.sampling
    seconds = min(seconds, cfg.window_seconds)
    frames = cfg.latent_length  # both render the full window, as the paper does
    context, mask = pipe.model.conditioner(["a benchmark prompt"], 0, seconds)
    context = context.to(dtype)
    sigmas = torch.tensor(polyexponential(steps, s.sigma_min, s.sigma_max, s.rho), device=device)
    g = torch.Generator(device=device).manual_seed(0)
    noise = torch.randn(1, cfg.vae.latent_dim, frames, generator=g, device=device)

    def ref_v(x, t, **kw):
        return ref_unet(x.to(dtype), t.to(dtype), embedding=context, embedding_mask=mask,
                        embedding_scale=cfg_scale, batch_cfg=True, rescale_cfg=True, scale_phi=0.4).float()

    ref_denoiser = K.external.VDenoiser(ref_v)

    def ref_sample():
        return K.sampling.sample_dpmpp_3m_sde(ref_denoiser, noise * sigmas[0], sigmas, disable=True)

    def ref_decode(latents):
        return ref_decoder(latents.to(dtype))

    from fastaudio.models.unet_guidance import UNetConditioning
    ours_v = {e: p.model.guided(UNetConditioning(context, mask), cfg_scale, 0.4,
                                forward=p._backbone_forward())
              for e, p in pipes.items()}
    x1 = torch.randn(1, cfg.vae.latent_dim, frames, generator=g, device=device)
    t1 = torch.full((1,), 0.5, device=device)
    rows, times = [], {}
    for rep in range(repeats + 1):  # repetition 0 warms everything up (compilation, autotune, capture)
        r = {}
        _, r["unet_step_reference"] = timed(lambda: ref_v(x1, t1), device)
        lat, r["sampling_reference"] = timed(ref_sample, device)
        _, r["decode_reference"] = timed(lambda: ref_decode(lat), device)
        for e, p in pipes.items():  # each execution mode against the same reference repetition
            _, r[f"unet_step_{e}"] = timed(lambda: ours_v[e](x1, t1), device)
            t = p.generate("a benchmark prompt", seconds_total=seconds, steps=steps,
                           cfg_scale=cfg_scale, seed=0).timings
            r[f"sampling_{e}"], r[f"decode_{e}"], r[f"end_to_end_{e}"] = (
                t["sampling"], t["decoding"], t["total"])
        r["end_to_end_reference"] = r["sampling_reference"] + r["decode_reference"] + t["text_encoding"]
        for e in pipes:  # the ratio within each repetition: how much of it is noise on this machine
            for what in ("unet_step", "sampling", "decode", "end_to_end"):
                r[f"ratio_{what}_{e}"] = r[f"{what}_reference"] / r[f"{what}_{e}"]
        if rep:
            for k, v in r.items():
                times.setdefault(k, []).append(v)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    for e, p in pipes.items():
        for what in ("unet_step", "sampling", "decode", "end_to_end"):
            ref, ours = med[f"{what}_reference"], med[f"{what}_{e}"]
            ratios = times[f"ratio_{what}_{e}"]
            row = {"preset": preset, "what": what, "seconds_audio": round(seconds, 2), "frames": frames,
                   "steps": steps, "cfg_scale": cfg_scale, "dtype": dtype_name, "repeats": repeats,
                   "reference_s": round(ref, 4), "fastaudio_s": round(ours, 4),
                   "speedup": round(ref / ours, 3), "execution": p.execution,
                   "speedup_min": round(min(ratios), 3), "speedup_max": round(max(ratios), 3)}
            rows.append(row)
            print(f"{preset} {p.execution:7s} {what:11s} reference {ref:9.3f} s | "
                  f"fastaudio {ours:9.3f} s | {ref / ours:6.2f}x "
                  f"(repetitions {min(ratios):.2f}-{max(ratios):.2f}x)")
    return rows


def main(argv=None) -> List[dict]:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="stable-audio-1.0" if cuda else "small")
    p.add_argument("--seconds", type=float, default=95.1)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--cfg-scale", type=float, default=7.0)
    p.add_argument("--dtype", default="bf16" if cuda else "fp32")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--execution", nargs="+", default=None, choices=["auto", "eager", "graph", "compile"],
                   help="fastaudio execution modes to time against the same reference run "
                        "(default: auto, plus compile on CPU, where auto is eager)")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    steps = a.steps or (100 if cuda else 50)
    repeats = a.repeats or (1 if a.quick else 3)
    if a.quick:
        steps = min(steps, 10)
    if not cuda:
        print(f"no CUDA device: CPU figures at the {a.preset!r} preset")
    executions = a.execution or (["auto"] if cuda or a.quick else ["auto", "compile"])
    rows = bench(a.preset, a.seconds, steps, a.cfg_scale, a.dtype, repeats, executions)
    save_rows("vs_reference", rows, a.quick)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
