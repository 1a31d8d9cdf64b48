"""fastaudio against an autoregressive music model of published size, same device, same run.

The baseline is MusicGen (Copet et al. 2023) built offline from its published configuration with
transformers' Musicgen classes and random weights (weights do not change its speed): a T5-base
text encoder, a decoder over 4 EnCodec codebooks at 50 Hz (delay pattern), classifier-free
guidance (batch doubled), sampling, and EnCodec decoding at 32 kHz. Sizes: large (3.3 B:
48 layers × 2048), medium (1.5 B), small (300 M); on a CPU a ``tiny`` configuration (labelled as
scaled down) keeps the run short. MusicGen renders 30 s windows; for longer durations the decoder's
sinusoidal positions are extended and the whole duration is generated in one pass (its cost
without the window-stitching overhead, so the baseline is favoured).

fastaudio renders the same durations with its defaults (full window, the preset's steps and
guidance) on the same device in the same process; the ratio is MusicGen's time / fastaudio's.

    python benchmarks/bench_vs_autoregressive.py [--musicgen large] [--seconds 10,30,95]
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import List

import torch

from common import RowWriter, sync

DECODERS = {  # published MusicGen decoder sizes
    "large": dict(hidden_size=2048, num_hidden_layers=48, num_attention_heads=32, ffn_dim=8192),
    "medium": dict(hidden_size=1536, num_hidden_layers=48, num_attention_heads=24, ffn_dim=6144),
    "small": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, ffn_dim=4096),
    "tiny": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, ffn_dim=1024),
}


def musicgen(size: str, max_seconds: float, device, dtype):
    from transformers import (EncodecConfig, MusicgenConfig, MusicgenDecoderConfig,
                              MusicgenForConditionalGeneration, T5Config)
    text = T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12)
    if size == "tiny":
        text = T5Config(vocab_size=32128, d_model=256, d_kv=32, d_ff=1024, num_layers=2, num_heads=4)
    audio = EncodecConfig(sampling_rate=32000, audio_channels=1, codebook_size=2048,
                          upsampling_ratios=[8, 5, 4, 4], num_filters=64, hidden_size=128,
                          target_bandwidths=[2.2], num_lstm_layers=2, use_causal_conv=False,
                          norm_type="weight_norm", pad_mode="reflect", compress=2,
                          residual_kernel_size=3, codebook_dim=128)
    decoder = MusicgenDecoderConfig(vocab_size=2048, num_codebooks=4, audio_channels=1,
                                    max_position_embeddings=int(max_seconds * 50) + 64, **DECODERS[size])
    cfg = MusicgenConfig(text_encoder=text.to_dict(), audio_encoder=audio.to_dict(),
                         decoder=decoder.to_dict())
    model = MusicgenForConditionalGeneration(cfg).to(device, dtype).eval()
    model.generation_config.pad_token_id = 2048
    model.generation_config.decoder_start_token_id = 2048
    return model


@torch.no_grad()
def bench(size: str, seconds: List[float], preset: str, steps, dtype_name: str,
          emit=None) -> List[dict]:
    from fastaudio.pipeline import StableAudio
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    model = musicgen(size, max(seconds), device, dtype)
    params = sum(p.numel() for p in model.parameters())
    ids = torch.randint(0, 32128, (1, 16), device=device)
    mask = torch.ones_like(ids)
    pipe = StableAudio.from_preset(preset, device=device, dtype=dtype)
    rows = []
    gen = lambda n: model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=True,
                                   guidance_scale=3.0)
    gen(8)  # warm-up
    for s in seconds:
        sync(device)
        t0 = time.perf_counter()
        out = gen(int(s * 50))
        sync(device)
        ar = time.perf_counter() - t0
        fs = min(s, pipe.config.window_seconds)
        pipe.generate("warm-up", seconds_total=fs, steps=steps, seed=0)
        fa = pipe.generate("a benchmark prompt", seconds_total=fs, steps=steps, seed=0).timings["total"]
        row = {"musicgen": size, "musicgen_params_m": round(params / 1e6, 1), "scaled_down": size == "tiny",
               "seconds": s, "musicgen_s": round(ar, 3), "musicgen_rtf": round(s / ar, 3),
               "musicgen_samples": int(out.shape[-1]), "fastaudio_preset": preset,
               "fastaudio_seconds": round(fs, 2), "fastaudio_s": round(fa, 3),
               "fastaudio_rtf": round(fs / fa, 3), "speedup": round(ar / fa, 2), "dtype": dtype_name,
               "fastaudio_steps": steps or pipe.config.sampling.steps}
        rows.append(row)
        if emit is not None:
            emit(row)
        print(f"{s:6.1f} s: MusicGen-{size} ({params / 1e6:.0f} M) {ar:8.2f} s (RTF {s / ar:.2f}) | "
              f"fastaudio {preset} {fa:7.2f} s (RTF {fs / fa:.2f}) | {ar / fa:6.1f}x")
    return rows


def main(argv=None) -> List[dict]:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--musicgen", choices=list(DECODERS), default="large" if cuda else "tiny")
    p.add_argument("--preset", default="stable-audio-1.0" if cuda else "small")
    p.add_argument("--seconds", default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--dtype", default="bf16" if cuda else "fp32")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    seconds = [float(x) for x in a.seconds.split(",")] if a.seconds else \
        ([10.0, 30.0, 47.0, 95.0] if cuda else [5.0, 10.0])
    if a.quick:
        seconds = seconds[:1]
    if not cuda:
        print(f"no CUDA device: CPU figures, MusicGen-{a.musicgen}"
              + (" (scaled down)" if a.musicgen == "tiny" else "") + f" vs fastaudio {a.preset}")
    writer = RowWriter("vs_autoregressive", a.quick)
    rows = bench(a.musicgen, seconds, a.preset, a.steps, a.dtype, emit=writer)
    writer.report()
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
