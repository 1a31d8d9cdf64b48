"""End-to-end generation: seconds, real-time factor, ms per step, peak memory and MFU.

For each window (5, 10, 30, 47, 95 s on a GPU with the SA1.0 preset; the small preset's windows on a
CPU), and each execution mode (eager, torch.compile, CUDA graphs), one warm-up generation is run
(compilation, autotuning and graph capture excluded), then the timed ones. Stages: text encoding,
sampling (all steps), decoding. MFU = U-Net FLOPs of the sampling (counted exactly with
torch.utils.flop_counter on the meta device, ×2 for guidance) / sampling time / this device's
measured matmul peak. Random weights: the speed of a model does not depend on its weights.

    python benchmarks/bench_generate.py [--preset stable-audio-1.0] [--steps 100] [--quick]
"""
from __future__ import annotations

import argparse
import sys
from typing import List

import torch

from common import RowWriter, measured_peaks, peak_memory_mb, reset_peak_memory, time_ms


def unet_tflop(preset: str, frames: int, context_groups: int) -> float:
    """TFLOP of one guided U-Net call on one item as the sampler makes it (2 context groups
    under guidance: the context-free prefix runs once; cross-attention keys/values computed once
    per prompt), counted on the meta device."""
    from fastaudio.flops import unet_flops
    return unet_flops(preset, frames, 1, context_groups, cached_context_kv=True)["total"] / 1e12


def attention_share(preset: str, frames: int) -> float:
    """Fraction of the U-Net's FLOPs in the attention core (QKᵀ and PV) at this length."""
    from fastaudio.flops import unet_flops
    f = unet_flops(preset, frames, 1)
    return f["attention_core"] / f["total"]


def decode_scaling(model, device: str, dtype: str, seconds: List[float], repeats: int,
                   emit=None) -> List[dict]:
    """VAE decoding alone, within and past the diffusion window: the chunked decoder keeps memory
    bounded, so time should grow linearly and peak memory stay flat."""
    from fastaudio.pipeline import StableAudio
    pipe = StableAudio(model, device=device, dtype=dtype)
    cfg = pipe.config
    rows = []
    for s in seconds:
        frames = -(-int(round(s * cfg.sample_rate)) // cfg.vae.downsampling_ratio)
        z = torch.randn(1, cfg.vae.latent_dim, frames, device=device, dtype=pipe.dtype)
        decode = lambda: pipe.model.vae.decode(z, chunk_frames=pipe.decode_chunk_frames)
        with torch.inference_mode():
            reset_peak_memory(device)
            ms = time_ms(decode, device, repeats=repeats)  # its first call warms up
        rows.append({"what": "decode", "preset": cfg.name, "seconds_audio": s, "frames": frames,
                     "dtype": str(pipe.dtype).replace("torch.", ""), "decode_s": round(ms / 1e3, 4),
                     "decode_rtf": round(s / (ms / 1e3), 2), "chunk_frames": pipe.decode_chunk_frames or cfg.vae.chunk_frames,
                     # a CPU process's peak RSS cannot be reset: only CUDA figures are per length
                     "peak_memory_mb": peak_memory_mb(device) if device == "cuda" else None})
        if emit is not None:
            emit(rows[-1])
        print(f"decode {s:7.1f} s of audio ({frames} frames): {ms / 1e3:.3f} s, RTF {s / (ms / 1e3):.1f}x, "
              f"peak {rows[-1]['peak_memory_mb']} MB")
    return rows


def bench(model, windows: List[float], modes: List[str], steps: int, cfg_scale: float,
          repeats: int, dtype: str, emit=None) -> List[dict]:
    from fastaudio.pipeline import StableAudio
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    peaks = measured_peaks(device)
    rows = []
    preset = model.config.name
    for mode in modes:
        pipe = StableAudio(model, device=device, dtype=dtype, execution=mode)
        for window in windows:
            window = min(window, pipe.config.window_seconds)
            frames = pipe.window_frames(window, window)
            kw = dict(seconds_total=window, window=window, steps=steps, cfg_scale=cfg_scale, seed=0)
            pipe.generate("benchmark prompt", **kw)  # warm-up: compile / autotune / capture
            reset_peak_memory(device)
            timings = []
            for _ in range(repeats):
                timings.append(pipe.generate("benchmark prompt", **kw).timings)
            t = {k: sorted(d[k] for d in timings)[len(timings) // 2] for k in timings[0]}
            groups = 2 if cfg_scale != 1.0 else 1
            tflop = unet_tflop(preset, frames, groups) * steps
            mfu = tflop / t["sampling"] / peaks["matmul_tflops"]
            row = {"what": "generate", "preset": preset, "mode": mode, "window_s": round(window, 2), "frames": frames,
                   "steps": steps, "cfg_scale": cfg_scale, "dtype": str(pipe.dtype).replace("torch.", ""),
                   "seconds": round(t["total"], 4), "text_s": round(t["text_encoding"], 4),
                   "sampling_s": round(t["sampling"], 4), "decode_s": round(t["decoding"], 4),
                   "ms_per_step": round(1e3 * t["sampling"] / steps, 3),
                   "rtf": round(window / t["total"], 3), "unet_tflop": round(tflop, 3),
                   "attention_share": round(attention_share(preset, frames), 4),
                   "mfu": round(mfu, 4), "peak_memory_mb": peak_memory_mb(device),
                   "measured_peak": peaks, "repeats": repeats}
            rows.append(row)
            if emit is not None:
                emit(row)
            print(f"{preset} {mode:8s} {window:6.1f} s: total {t['total']:7.3f} s (text {t['text_encoding']:.3f}, "
                  f"sampling {t['sampling']:.3f}, decode {t['decoding']:.3f}) | {row['ms_per_step']:.2f} ms/step "
                  f"| RTF {row['rtf']:.2f}x | MFU {100 * mfu:.1f}% | peak {row['peak_memory_mb']} MB")
        del pipe
        if cuda:
            torch.cuda.empty_cache()
    return rows


def main(argv=None) -> List[dict]:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="stable-audio-1.0" if cuda else "small")
    p.add_argument("--windows", default=None, help="comma-separated seconds ('none': decode rows only)")
    p.add_argument("--modes", default=None, help="eager,compile,graph")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--cfg-scale", type=float, default=7.0)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--decode-seconds", default=None,
                   help="comma-separated seconds of audio for the decode rows (default: 0.5, 1, 2 "
                        "and 4 times the window; 'none' skips them)")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    windows = [] if a.windows == "none" else [float(w) for w in a.windows.split(",")] if a.windows else \
        ([5, 10, 30, 47, 95.1] if cuda else [3.0, 6.0, 11.9])
    modes = a.modes.split(",") if a.modes else (["eager", "compile", "graph"] if cuda else ["eager", "compile"])
    steps = a.steps or (100 if cuda else 50)
    repeats = a.repeats or (1 if a.quick else 3)
    if a.quick:
        windows, steps = windows[:1], min(steps, 10)
    if not cuda:
        print(f"no CUDA device: CPU figures for the {a.preset!r} preset ({', '.join(modes)})")
    dtype = a.dtype or ("bf16" if cuda else "fp32")
    from fastaudio.pipeline import random_weights_model
    model = random_weights_model(a.preset, seed=0)  # one build serves every mode and the decode rows
    writer = RowWriter("generate", a.quick)
    rows = bench(model, windows, modes, steps, a.cfg_scale, repeats, dtype, emit=writer) if windows else []
    # past the window too: 1x, 2x and 4x the longest window (quick: 1x only)
    longest = model.config.window_seconds
    seconds = [longest] if a.quick else [longest / 2, longest, 2 * longest, 4 * longest]
    if a.decode_seconds:
        seconds = [] if a.decode_seconds == "none" else [float(s) for s in a.decode_seconds.split(",")]
    rows += decode_scaling(model, "cuda" if cuda else "cpu", dtype, seconds, repeats, emit=writer)
    writer.report()
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
