"""CPU options for Stable Audio Open generation: time and quality of each against fp32.

One model (random weights, the zero-initialised output projections filled as in
bench_open_vs_reference.py), one prompt, one initial noise and one seed; each option renders the
same clip on a fresh copy of the weights (``StableAudio`` converts its model in place):

* time: a first generation untimed (warm-up, compilation), then the median of ``--repeats``
  generations: total, sampling, decoding, per sampler step;
* quality against the fp32 eager output of the same weights and noise: the SNR of the decoded
  audio in dB (10·log10(Σ ref² / Σ (x − ref)²)), the relative error of the latents, and the SNR of
  the option's decoder alone on the fp32 latents (which separates the decoder's error from the
  sampler's);
* peak RSS during the timed generations (VmHWM reset before each, /proc/self/clear_refs).

Options are given as in bench_open_vs_reference.py (``EXEC[+bf16][+dec-fp32|+dec-bf16][+int8]
[+chunkN]``) plus ``+threadsN`` and ``+t5fp16`` (T5 in fp16, stable-audio-tools' own precision
for it: the yardstick of how far the reference's own choice moves the output). The first option
is the quality reference and must be plain fp32 (``eager``).

    python benchmarks/bench_open_cpu_options.py --repeats 3
"""
from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
from typing import Dict, List, Optional

import torch

from bench_open_vs_reference import MEM, fill_zero_inits, parse_variant
from common import RowWriter

PROMPT = "a benchmark prompt"
DEFAULT_OPTIONS = ["eager", "eager+t5fp16", "compile", "eager+int8", "eager+bf16+dec-fp32",
                   "eager+dec-bf16", "eager+bf16", "eager+bf16+threads1", "eager+bf16+chunk128",
                   "compile+bf16", "compile+bf16+chunk128", "compile+int8+dec-bf16"]


def snr_db(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.double(), ref.double()
    noise = (x - ref).pow(2).sum()
    if noise == 0:
        return float("inf")
    return float(10 * torch.log10(ref.pow(2).sum() / noise))


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.double() - ref.double()).norm() / ref.double().norm())


def parse_option(spec: str) -> Dict:
    parts = spec.split("+")
    extra = {"threads": None, "t5fp16": False}
    keep = []
    for p in parts:
        if p.startswith("threads"):
            extra["threads"] = int(p[7:])
        elif p == "t5fp16":
            extra["t5fp16"] = True
        else:
            keep.append(p)
    v = parse_variant("+".join(keep))
    v.update(extra, name=spec)
    return v


@torch.no_grad()
def bench(preset: str, options: List[str], repeats: int, seed: int, steps: Optional[int],
          writer: RowWriter, note: str, window: Optional[float] = None) -> List[Dict]:
    from fastaudio.models.open_audio import build_open_model
    from fastaudio.models.t5_text import random_t5_folder
    from fastaudio.open_config import open_preset
    from fastaudio.pipeline import StableAudio
    cfg = open_preset(preset)
    t5 = random_t5_folder(seed)
    base = build_open_model(cfg, text_encoder_dir=t5, tokenizer_dir=t5, seed=seed)
    fill_zero_inits(base, seed + 1)
    base.requires_grad_(False)
    seconds = cfg.window_seconds if window is None else min(window, cfg.window_seconds)
    steps = steps or cfg.sampling.steps
    frames = math.ceil(seconds * cfg.sample_rate / cfg.downsampling_ratio)
    torch.manual_seed(seed)
    z = torch.randn(1, cfg.latent_dim, frames)
    default_threads = torch.get_num_threads()
    rows, ref_out = [], None
    for spec in options:
        v = parse_option(spec)
        torch.set_num_threads(v["threads"] or default_threads)
        model = copy.deepcopy(base)
        if v["t5fp16"]:
            for c in model.conditioner.conditioners.values():
                if hasattr(c, "dtype_override"):
                    c.dtype_override = torch.float16
        pipe = StableAudio(model, device="cpu", dtype=v["dtype"], execution=v["execution"],
                           decode_chunk_frames=v["chunk"], decoder_dtype=v["decoder_dtype"],
                           quantize=v["quantize"])

        def run():
            return pipe.generate(PROMPT, seconds_total=seconds, steps=steps, seed=seed, latents=z,
                                 window=None if window is None else seconds)

        t0 = time.perf_counter()
        out = run()  # warm-up: compilation, first-touch allocation
        warm = time.perf_counter() - t0
        times, peak, growth = [], 0.0, 0.0
        for _ in range(repeats):
            rss0 = MEM.start()
            out = run()
            peak = max(peak, MEM.peak())
            growth = max(growth, MEM.peak() - rss0)
            times.append(out.timings)
        if ref_out is None:
            if v["dtype"] != "fp32" or v["quantize"] or v["decoder_dtype"] not in (None, "fp32") \
                    or v["t5fp16"]:
                raise SystemExit("the first option is the quality reference: give plain fp32 first")
            ref_out = out
        n = ref_out.audio.shape[-1]  # generate trims the window to seconds_total
        decoder_snr = (snr_db(pipe.decode(ref_out.latents)[..., :n], ref_out.audio)
                       if ref_out is not out else float("inf"))
        med = {k: statistics.median(t[k] for t in times) for k in times[0]}
        row = {"preset": preset, "option": spec, "execution": pipe.execution,
               "dtype": str(pipe.dtype).replace("torch.", ""),
               "decoder_dtype": str(pipe.decoder_dtype).replace("torch.", ""),
               "quantize": pipe.quantize, "decode_chunk_frames": pipe.decode_chunk_frames,
               "threads": torch.get_num_threads(), "t5_fp16": v["t5fp16"],
               "seconds_audio": round(seconds, 3), "frames": frames, "steps": steps,
               "sampler": cfg.sampling.sampler, "cfg_scale": cfg.sampling.cfg_scale, "repeats": repeats,
               "total_s": round(med["total"], 4), "text_s": round(med["text_encoding"], 4),
               "sampling_s": round(med["sampling"], 4), "decode_s": round(med["decoding"], 4),
               "ms_per_step": round(1e3 * med["sampling"] / steps, 2),
               "rtf": round(seconds / med["total"], 3), "warmup_s": round(warm, 2),
               "total_samples_s": [round(t["total"], 4) for t in times],
               "snr_db": round(snr_db(out.audio, ref_out.audio), 2) if out is not ref_out else None,
               "latent_rel_err": float(f"{rel_err(out.latents, ref_out.latents):.3e}")
               if out is not ref_out else 0.0,
               "decoder_snr_db": round(decoder_snr, 2) if math.isfinite(decoder_snr) else None,
               "peak_rss_mb": round(peak, 1), "rss_growth_mb": round(growth, 1),
               "memory_method": MEM.method + " (the process holds the fp32 weights and earlier "
                                             "options' leftovers too: compare rss_growth_mb)",
               "note": note}
        if out is ref_out:
            row["snr_db"] = None
        rows.append(row)
        writer(row)
        print(f"{spec:26s} total {row['total_s']:7.3f} s (sampling {row['sampling_s']:.3f}, decode "
              f"{row['decode_s']:.3f}, text {row['text_s']:.3f}) rtf {row['rtf']:.2f} | SNR "
              f"{row['snr_db']} dB, latents {row['latent_rel_err']:.2e}, decoder alone "
              f"{row['decoder_snr_db']} dB | peak RSS {row['peak_rss_mb']:.0f} MB | warm-up "
              f"{row['warmup_s']:.1f} s", flush=True)
        pipe = model = None  # free this option's weights before the next
        torch._dynamo.reset()  # and its compiled graphs (frozen weights live in them)
        try:  # hand freed pages back, so the next option's RSS starts from the weights alone
            import ctypes
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
    torch.set_num_threads(default_threads)
    return rows


def main(argv=None) -> List[Dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="stable-audio-open-small")
    p.add_argument("--options", nargs="+", default=None, help="default: " + " ".join(DEFAULT_OPTIONS))
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--window", type=float, default=None,
                   help="seconds to render (default: the model's window)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--note", default="")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    options = a.options or (["eager", "eager+bf16"] if a.quick else DEFAULT_OPTIONS)
    repeats = a.repeats or (1 if a.quick else 3)
    writer = RowWriter("cpu_options", a.quick)
    rows = bench(a.preset, options, repeats, a.seed, a.steps, writer, a.note, a.window)
    writer.report()
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
