"""Stable Audio Open (Small, 1.0) against stable-audio-tools' own generation path, in one process.

The same weights run through:

* the reference: stable-audio-tools 0.0.19's own model, built by its
  ``factory.create_model_from_config`` from the preset's config (``fastaudio/open_config.py``),
  its T5 conditioner pointed at a local random t5-base-shaped T5 (nothing downloaded; it runs T5
  in fp16 as it always does), generating through its real ``generate_diffusion_cond``
  (``sample_rf`` pingpong for Small, k-diffusion's dpmpp-3m-sde for 1.0, then
  ``pretransform.decode``, unchunked as the configs set it);
* fastaudio: ``StableAudio`` on a copy of those weights (loaded from the reference's state dict
  through ``fastaudio.open_checkpoints``), in each *variant* asked for (execution mode, dtypes,
  int8, decoder chunk).

Random weights: the zero-initialised tensors of the reference's init (attention and
feed-forward output projections, the DiT's 1x1 pre/post convs) are filled with PyTorch's default
init, so every branch computes something (timings do not care; quality figures do).

Per repetition, back to back: one DiT forward (the step: the reference's ``model.model`` with the
sampler's keyword arguments, ours ``GuidedDiT``, both on the reference's conditioning tensors,
which also gives a parity figure), then the end-to-end generation, whose sampling and decoding
stages are timed inside it (the reference's ``sample_rf``/``sample_k`` and ``pretransform.decode``
wrapped with timers). Repetition 0 warms everything up (compilation) and is not timed. Ratios:
the ratio of the medians, and the lowest and highest ratio of one repetition.

Peak memory: the process's peak RSS during each timed call, the kernel's high-water mark reset
before it (``/proc/self/clear_refs``); it includes both sides' weights, which live in the same
process, so each row also gives the growth over the RSS at the call's start. Where clear_refs is
not writable, ru_maxrss (never reset) is reported and the row says so. ``--windows`` runs each
window length in its own subprocess (fresh peaks, and a 1.0 compile's frozen weights freed).

On a GPU (``--device cuda``, the default when CUDA is present) both sides run there, timed
with a synchronise around each call and stage; rows add each call's CUDA memory (peak
allocated, its growth over the call's start, peak reserved: a graph replay's memory is its
pool's). The ``step`` rows time one DiT forward outside any graph (``step_execution``). ``graph+bf16`` (or ``auto+bf16``) is fastaudio with
CUDA graphs; ``--reference-dtype bf16`` puts the reference's DiT and VAE in bf16 (its
``generate_diffusion_cond`` casts the noise, the conditioning and the latents to their dtypes).
benchmarks/gpu_session.sh runs it in its ``open`` section when the reference is installed.

    python benchmarks/bench_open_vs_reference.py --preset stable-audio-open-small --repeats 5 \\
        --variants eager compile compile+bf16
    python benchmarks/bench_open_vs_reference.py --preset stable-audio-open-1.0 --steps 2 \\
        --windows 5,10,20,47.55 --what step --repeats 2
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from common import ROOT, RowWriter, sync

sys.path.insert(0, os.path.join(ROOT, "tests"))  # the reference loaders live with the tests
sys.path.insert(0, ROOT)

PROMPT = "a benchmark prompt"
WHATS = ("step", "sampling", "decode", "end_to_end")


# ---------------------------------------------------------------------------------------------
# Peak memory
# ---------------------------------------------------------------------------------------------

class PeakRSS:
    """Peak RSS of this process during a call: VmHWM after resetting it (Linux clear_refs)."""

    def __init__(self):
        self.resettable = self._reset()

    @staticmethod
    def _status(field: str) -> Optional[float]:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        return int(line.split()[1]) / 1024  # kB -> MB
        except OSError:
            return None
        return None

    @staticmethod
    def _reset() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def start(self) -> float:
        self._reset()
        return self._status("VmRSS") or 0.0

    def peak(self) -> float:
        if self.resettable:
            return self._status("VmHWM") or 0.0
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    @property
    def method(self) -> str:
        return ("VmHWM reset before each call (/proc/self/clear_refs)" if self.resettable
                else "ru_maxrss of the process, never reset")


MEM = PeakRSS()
DEVICE = "cpu"  # set by bench(): where both sides run


def timed(fn: Callable[[], object]) -> Tuple[object, float, float, float, Optional[Tuple]]:
    """(result, seconds, peak RSS MB, RSS at the start MB, CUDA memory or None). CUDA memory:
    (peak allocated, its growth over what was allocated at the start, peak reserved) in MB; a
    CUDA graph's replay allocates nothing (its memory is the graph pool's, reserved since its
    capture), hence the reserved figure beside the allocated ones."""
    cuda = torch.device(DEVICE).type == "cuda"
    if cuda:
        sync(DEVICE)
        torch.cuda.reset_peak_memory_stats()
        alloc0 = torch.cuda.memory_allocated()
    rss0 = MEM.start()
    t0 = time.perf_counter()
    out = fn()
    sync(DEVICE)
    dt = time.perf_counter() - t0
    gpu = None
    if cuda:
        mb = lambda b: round(b / 2 ** 20, 1)  # noqa: E731
        peak = torch.cuda.max_memory_allocated()
        gpu = (mb(peak), mb(peak - alloc0), mb(torch.cuda.max_memory_reserved()))
    return out, dt, MEM.peak(), rss0, gpu


# ---------------------------------------------------------------------------------------------
# The two models, with the same weights
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def reference_t5(folder: str):
    """stable-audio-tools' T5Conditioner loads T5 and its tokenizer from the hub by name: point
    the name at a local folder (and only that name; local paths pass through)."""
    import transformers
    load_model = transformers.T5EncoderModel.from_pretrained
    load_tok = transformers.AutoTokenizer.from_pretrained
    local = lambda name: folder if not os.path.isdir(str(name)) else name  # noqa: E731
    transformers.T5EncoderModel.from_pretrained = staticmethod(
        lambda name, **kw: load_model(local(name), **{"local_files_only": True, **kw}))
    transformers.AutoTokenizer.from_pretrained = staticmethod(
        lambda name, **kw: load_tok(local(name), **{"local_files_only": True, **kw}))
    try:
        yield
    finally:
        transformers.T5EncoderModel.from_pretrained = load_model
        transformers.AutoTokenizer.from_pretrained = load_tok


@torch.no_grad()
def fill_zero_inits(module: nn.Module, seed: int) -> int:
    """Give the tensors the init leaves at zero (output projections, 1x1 convs) PyTorch's default
    init, so a random-weight model computes through every branch; returns how many."""
    g = torch.Generator().manual_seed(seed)
    n = 0
    for name, p in module.named_parameters():
        if p.dim() >= 2 and not p.any():
            fan_in = p[0].numel()
            bound = 1 / math.sqrt(fan_in)
            p.copy_(torch.rand(p.shape, generator=g) * 2 * bound - bound)
            n += 1
    return n


def build_pair(preset: str, seed: int = 0):
    """(cfg, reference model, our fp32 model, t5 folder): the same weights in both."""
    import reference_impl as R
    from fastaudio.models.t5_text import random_t5_folder
    from fastaudio.models.open_audio import OpenAudioModel
    from fastaudio.models.open_conditioning import OpenConditioner
    from fastaudio.open_checkpoints import load_state_into, sat_open_to_fastaudio
    from fastaudio.open_config import open_preset
    cfg = open_preset(preset)
    t5 = random_t5_folder(seed)
    sat = R.sat()
    with reference_t5(t5):
        torch.manual_seed(seed)
        ref = sat.factory.create_model_from_config(copy.deepcopy(cfg.source)).eval().requires_grad_(False)
    filled = fill_zero_inits(ref, seed + 1)
    conditioner = OpenConditioner.from_config(cfg.conditioning, cfg.cross_attention_ids,
                                              cfg.global_ids, text_encoder_dir=t5, tokenizer_dir=t5)
    with torch.device("meta"):  # filled by load_state_dict(assign=True)
        ours = OpenAudioModel(cfg, conditioner)
    load_state_into(ours, sat_open_to_fastaudio({k: v.detach().clone()
                                                  for k, v in ref.state_dict().items()}), "reference")
    ours.text_encoder_source = t5
    print(f"{preset}: reference built ({filled} zero-initialised tensors filled), weights copied",
          flush=True)
    return cfg, sat, ref.eval(), ours.eval(), t5


# ---------------------------------------------------------------------------------------------
# Variants of fastaudio
# ---------------------------------------------------------------------------------------------

def parse_variant(spec: str) -> Dict:
    """``EXEC[+bf16][+dec-fp32|+dec-bf16][+int8][+chunkN]``: e.g. ``compile+bf16``,
    ``eager+int8``, ``eager+bf16+dec-fp32``, ``compile+bf16+chunk128``, ``graph+bf16`` (CUDA
    graphs), ``auto+bf16`` (the pipeline's choice: graphs on CUDA, eager on a CPU), ``default``
    (what ``dtype=None`` gives on this machine)."""
    parts = spec.split("+")
    v = {"name": spec, "execution": parts[0], "dtype": "fp32", "decoder_dtype": None,
         "quantize": None, "chunk": None}
    if parts[0] == "default":
        v.update(execution="eager", dtype=None)
    elif parts[0] not in ("eager", "compile", "graph", "auto"):
        raise SystemExit(f"variant {spec!r}: execution must be eager, compile, graph, auto or "
                         "default")
    for p in parts[1:]:
        if p in ("bf16", "fp32"):
            v["dtype"] = p
        elif p.startswith("dec-"):
            v["decoder_dtype"] = p[4:]
        elif p == "int8":
            v["quantize"] = "int8"
        elif p.startswith("chunk"):
            v["chunk"] = int(p[5:])
        else:
            raise SystemExit(f"variant {spec!r}: unknown part {p!r}")
    return v


def make_pipelines(base, variants: List[Dict]):
    """One StableAudio per variant; variants with the same precision share a model copy (the
    pipeline converts its model in place)."""
    from fastaudio.pipeline import StableAudio
    copies, pipes = {}, {}
    keys = []
    for v in variants:
        key = (v["dtype"], v["decoder_dtype"], v["quantize"])
        if key not in keys:
            keys.append(key)
    for v in variants:
        key = (v["dtype"], v["decoder_dtype"], v["quantize"])
        if key not in copies:  # the last precision converts the base weights themselves
            copies[key] = base if key == keys[-1] else copy.deepcopy(base)
        pipes[v["name"]] = StableAudio(copies[key], device=DEVICE, dtype=v["dtype"],
                                       execution=v["execution"], decode_chunk_frames=v["chunk"],
                                       decoder_dtype=v["decoder_dtype"], quantize=v["quantize"])
    return pipes


def open_flops(preset: str, frames: int, batch: int = 1) -> Dict[str, float]:
    """FLOPs of one DiT forward (batch items, precomputed cross-attention keys/values as the
    sampler passes them) and of one decoder pass over ``frames`` latent frames, counted by
    torch.utils.flop_counter on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    from fastaudio.models.dit import DiffusionTransformer
    from fastaudio.models.oobleck import OobleckVAE
    from fastaudio.nn import attention as NA
    from fastaudio.open_config import open_preset
    cfg = open_preset(preset)
    NA.set_attention_backend("sdpa")
    try:
        with torch.device("meta"):
            dit = DiffusionTransformer(**cfg.dit, diffusion_objective=cfg.diffusion_objective)
            vae = OobleckVAE(**cfg.autoencoder)
            x = torch.empty(batch, cfg.latent_dim, frames)
            t = torch.empty(batch)
            types = {c["id"]: c for c in cfg.conditioning["configs"]}
            n_tokens = sum(types[i]["config"].get("max_length", 128) if types[i]["type"] == "t5"
                           else 1 for i in cfg.cross_attention_ids)  # T5's tokens, one per number
            tokens = torch.empty(batch, n_tokens, cfg.dit["cond_token_dim"])
            glob = torch.empty(batch, cfg.dit["global_cond_dim"])
            kv = dit.context_keys_values(tokens)
            with FlopCounterMode(display=False) as c_dit:
                dit(x, t, global_embed=glob, context_kv=kv)
            z = torch.empty(1, cfg.latent_dim, frames)
            with FlopCounterMode(display=False) as c_dec:
                vae.decoder(z)
    finally:
        NA.set_attention_backend(None)
    return {"dit_forward_gflop": c_dit.get_total_flops() / 1e9,
            "decoder_gflop": c_dec.get_total_flops() / 1e9}


def bf16_matmul_peak_gflops(n: int = 2048) -> float:
    """The best of 5 bf16 n x n matmuls in GFLOP/s (oneDNN: AMX / AVX-512 BF16 where present),
    beside common.measured_peaks' fp32 figure."""
    from common import time_ms
    a = torch.randn(n, n, dtype=torch.bfloat16)
    b = torch.randn(n, n, dtype=torch.bfloat16)
    ms = time_ms(lambda: a @ b, "cpu", repeats=5, statistic=min)
    return round(2 * n ** 3 / (ms * 1e-3) / 1e9, 1)


def dtype_name(dt: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dt, str(dt))


def rel_err(a, b) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    n = min(a.numel(), b.numel())
    a, b = a[:n], b[:n]
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


# ---------------------------------------------------------------------------------------------
# One configuration: a preset at one window length
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def bench(preset: str, window: Optional[float], steps: Optional[int], cfg_scale: Optional[float],
          repeats: int, variant_specs: List[str], whats: List[str], ref_dtype: str, seed: int,
          note: str, writer: RowWriter, threads: Optional[int], device: str = "cpu") -> List[Dict]:
    global DEVICE
    DEVICE = device
    from fastaudio import cpu_fast
    from fastaudio.models.dit import DiTConditioning
    cpu_fast.set_threads(threads)
    # generate_diffusion_cond sets these process-wide flags at every call; dynamo guards on global
    # state, so graphs compiled before the reference's first generation would all be compiled
    # again after it (measured: a 35 s "step" in the first timed repetition). Set them first.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
    torch.backends.cudnn.benchmark = False
    cfg, sat, ref, base, t5 = build_pair(preset, seed)
    rdt = {"fp32": torch.float32, "bf16": torch.bfloat16}[ref_dtype]
    ref.model.to(rdt)
    ref.pretransform.to(rdt)
    ref.to(device)  # its T5 is not a registered module: T5Conditioner moves it on first use
    variants = [parse_variant(s) for s in variant_specs]
    pipes = make_pipelines(base, variants)
    any_pipe = next(iter(pipes.values()))
    s = cfg.sampling
    steps = steps or s.steps
    cfg_scale = s.cfg_scale if cfg_scale is None else cfg_scale
    full = cfg.window_seconds
    window = full if window is None or window >= full - 1e-6 else window
    frames = any_pipe.window_frames(None if window == full else window, window)
    sample_size = frames * cfg.downsampling_ratio
    seconds = min(window, sample_size / cfg.sample_rate)
    rf = cfg.objective == "rf"
    sampler_kw = {"sampler_type": s.sampler}
    if not rf:
        sampler_kw.update(sigma_min=s.sigma_min, sigma_max=s.sigma_max)
    conditioning = [{"prompt": PROMPT, "seconds_start": 0, "seconds_total": seconds}]

    # the reference's conditioning tensors, given to both sides' single DiT forward
    inputs = ref.get_conditioning_inputs(ref.conditioner(conditioning, device))
    inputs = {k: v.to(rdt) if torch.is_tensor(v) and v.is_floating_point() else v
              for k, v in inputs.items()}
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(1, cfg.latent_dim, frames, generator=g).to(device)
    t1 = torch.full((1,), 0.5, device=device)
    cond = DiTConditioning(inputs.get("cross_attn_cond").float(), inputs.get("cross_attn_mask"),
                           inputs["global_cond"].float() if inputs.get("global_cond") is not None else None)
    torch.manual_seed(seed)  # generate_diffusion_cond's own noise: manual_seed, then randn
    z = torch.randn(1, cfg.latent_dim, frames, device=device)

    def ref_step():
        return ref.model(x1.to(rdt), t1.to(rdt), **inputs, cfg_scale=cfg_scale, batch_cfg=True,
                         rescale_cfg=True)

    guided = {n: p.model.guided(cond, cfg_scale, s.cfg_rescale, forward=p._backbone_forward())
              for n, p in pipes.items()}

    stage: Dict[str, float] = {}
    captured: Dict[str, torch.Tensor] = {}

    def timing(name, fn):  # the reference's stages, synchronised like fastaudio's StageTimer
        def wrapper(*a, **kw):
            sync(device)
            t0 = time.perf_counter()
            out = fn(*a, **kw)
            sync(device)
            stage[name] = time.perf_counter() - t0
            captured[name] = out
            return out
        return wrapper

    gen = sat.generation
    gen.sample_rf = timing("sampling", sat.sampling.sample_rf)
    gen.sample_k = timing("sampling", sat.sampling.sample_k)
    ref_decode = ref.pretransform.decode
    ref.pretransform.decode = timing("decode", ref_decode)

    def ref_generate():
        with contextlib.redirect_stdout(open(os.devnull, "w")):  # it prints the seed
            return gen.generate_diffusion_cond(ref, steps=steps, cfg_scale=cfg_scale,
                                               conditioning=conditioning, sample_size=sample_size,
                                               seed=seed, device=device, **sampler_kw)

    def ours_generate(p):
        return p.generate(PROMPT, seconds_total=seconds, steps=steps, cfg_scale=cfg_scale,
                          seed=seed, latents=z, window=None if window == full else window)

    e2e = "end_to_end" in whats or "sampling" in whats
    samples: Dict[str, List[float]] = {}
    peaks: Dict[str, List[Tuple[float, float]]] = {}
    parity: Dict[str, float] = {}

    gpu_peaks: Dict[str, List[float]] = {}

    def record(key, dt, peak, rss0, gpu):
        samples.setdefault(key, []).append(dt)
        peaks.setdefault(key, []).append((peak, peak - rss0))
        if gpu is not None:
            gpu_peaks.setdefault(key, []).append(gpu)

    decode_latents = None
    for rep in range(repeats + 1):  # repetition 0 warms up (compilation) and is not timed
        r: Dict[str, Tuple] = {}
        if "step" in whats:
            out, *m = timed(ref_step)
            r["step/reference"] = m
            ref_step_out = out.float()
            for n, gd in guided.items():
                out, *m = timed(lambda: gd(x1, t1))
                r[f"step/{n}"] = m
                if rep == 0:
                    parity[f"step/{n}"] = rel_err(out.float(), ref_step_out)
        if e2e:
            stage.clear()
            audio, dt, peak, rss0, gpu = timed(ref_generate)
            r["end_to_end/reference"] = (dt, peak, rss0, gpu)
            r["sampling/reference"] = (stage["sampling"], peak, rss0, gpu)
            r["decode/reference"] = (stage["decode"], peak, rss0, gpu)
            if rep == 0:
                ref_latents, ref_audio = captured["sampling"].float(), audio.float()
            for n, p in pipes.items():
                out, dt, peak, rss0, gpu = timed(lambda: ours_generate(p))
                t = out.timings
                r[f"end_to_end/{n}"] = (t["total"], peak, rss0, gpu)
                r[f"sampling/{n}"] = (t["sampling"], peak, rss0, gpu)
                r[f"decode/{n}"] = (t["decoding"], peak, rss0, gpu)
                if rep == 0:  # our decoder on the reference's own latents: the decode parity
                    parity[f"decode/{n}"] = rel_err(p.decode(ref_latents), ref_audio)
        elif "decode" in whats:
            if decode_latents is None:
                decode_latents = torch.randn(1, cfg.latent_dim, frames, generator=g).to(device)
            out, *m = timed(lambda: ref.pretransform.decode(decode_latents.to(rdt)))
            r["decode/reference"] = m
            ref_audio = out.float()
            for n, p in pipes.items():
                out, *m = timed(lambda: p.decode(decode_latents))
                r[f"decode/{n}"] = m
                if rep == 0:
                    parity[f"decode/{n}"] = rel_err(out, ref_audio)
        if rep:
            for k, m in r.items():
                record(k, *m)
        print(f"  {'warm-up' if rep == 0 else f'repetition {rep}'}: " + ", ".join(
            f"{k} {m[0]:.3f} s" for k, m in r.items()), flush=True)

    measured = [w for w in WHATS if f"{w}/reference" in samples]
    from common import measured_peaks
    cuda = torch.device(device).type == "cuda"
    peaks_now = dict(measured_peaks(device))  # on CUDA its matmul figure is bf16
    peaks_now["matmul_bf16_gflops"] = (round(1e3 * peaks_now["matmul_tflops"], 1) if cuda
                                       else bf16_matmul_peak_gflops())
    guided_batch = 2 if cfg_scale != 1.0 else 1
    flops = open_flops(preset, frames, guided_batch)
    work = {"step": flops["dit_forward_gflop"], "decode": flops["decoder_gflop"]}
    def cuda_memory(key, side):
        got = gpu_peaks.get(key)
        if not got:
            return {}
        return {f"{side}_peak_cuda_mb": max(g[0] for g in got),
                f"{side}_cuda_growth_mb": max(g[1] for g in got),
                f"{side}_peak_cuda_reserved_mb": max(g[2] for g in got)}

    rows = []
    med = {k: statistics.median(v) for k, v in samples.items()}
    for v in variants:
        n, p = v["name"], pipes[v["name"]]
        for what in measured:
            ref_s, ours_s = samples[f"{what}/reference"], samples[f"{what}/{n}"]
            ratios = [a / b for a, b in zip(ref_s, ours_s)]
            row = {
                "preset": preset, "what": what, "variant": n, "execution": p.execution,
                "dtype": dtype_name(p.dtype), "decoder_dtype": dtype_name(p.decoder_dtype),
                "quantize": p.quantize, "decode_chunk_frames": p.decode_chunk_frames,
                # the single DiT forward runs the pipeline's compiled backbone in compile mode and
                # the plain module otherwise (no CUDA graph around one forward)
                "step_execution": (("compile" if p.execution == "compile" else "eager")
                                   if what == "step" else None),
                "reference_dtype": ref_dtype, "seconds_audio": round(seconds, 3),
                "window_s": round(window, 3), "frames": frames,
                "steps": steps if what in ("sampling", "end_to_end") else None,
                "cfg_scale": cfg_scale, "sampler": s.sampler, "repeats": repeats,
                "reference_s": round(med[f"{what}/reference"], 4),
                "fastaudio_s": round(med[f"{what}/{n}"], 4),
                "speedup": round(med[f"{what}/reference"] / med[f"{what}/{n}"], 3),
                "speedup_min": round(min(ratios), 3), "speedup_max": round(max(ratios), 3),
                "reference_samples_s": [round(x, 4) for x in ref_s],
                "fastaudio_samples_s": [round(x, 4) for x in ours_s],
                "reference_peak_rss_mb": round(max(a for a, _ in peaks[f"{what}/reference"]), 1),
                "fastaudio_peak_rss_mb": round(max(a for a, _ in peaks[f"{what}/{n}"]), 1),
                "reference_rss_growth_mb": round(max(b for _, b in peaks[f"{what}/reference"]), 1),
                "fastaudio_rss_growth_mb": round(max(b for _, b in peaks[f"{what}/{n}"]), 1),
                "memory_method": MEM.method + ("; sampling/decode rows: the whole generation's"
                                               if what in ("sampling", "decode") and e2e else ""),
                "parity_rel_err": (round(parity[f"{what}/{n}"], 8) if f"{what}/{n}" in parity else None),
                "threads": torch.get_num_threads(), "note": note,
                **cuda_memory(f"{what}/reference", "reference"),
                **cuda_memory(f"{what}/{n}", "fastaudio"),
                "dit_forward_gflop": round(flops["dit_forward_gflop"], 1),
                "decoder_gflop": round(flops["decoder_gflop"], 1),
                "matmul_fp32_gflops": None if cuda else round(1e3 * peaks_now["matmul_tflops"], 1),
                "matmul_bf16_gflops": peaks_now["matmul_bf16_gflops"],
                "copy_gbs": peaks_now["copy_gbs"],
            }
            if what in work:  # achieved rates, against this machine's measured peaks
                row["fastaudio_gflops"] = round(work[what] / row["fastaudio_s"], 1)
                row["reference_gflops"] = round(work[what] / row["reference_s"], 1)
            if cuda and preset == "stable-audio-open-small" and what == "end_to_end":
                row["anchor"] = "ARC post-training paper: about 75 ms for 8 steps on an H100"
            if not cuda and preset == "stable-audio-open-small" and what in ("end_to_end", "decode"):
                row["target_speedup"] = 3.0
                row["target_met"] = row["speedup"] >= 3.0
                if what == "end_to_end":
                    row["target_seconds"] = round(seconds, 3)
                    row["target_met"] = row["target_met"] and row["fastaudio_s"] <= seconds
            rows.append(row)
            writer(row)
            print(f"{preset} {window:g}s {n:24s} {what:10s} reference {row['reference_s']:8.3f} s | "
                  f"fastaudio {row['fastaudio_s']:8.3f} s | {row['speedup']:6.2f}x "
                  f"(repetitions {row['speedup_min']:.2f}-{row['speedup_max']:.2f}x) "
                  f"peak RSS {row['reference_peak_rss_mb']:.0f} / {row['fastaudio_peak_rss_mb']:.0f} MB"
                  + (f" CUDA {row.get('reference_peak_cuda_mb', 0):.0f} / "
                     f"{row.get('fastaudio_peak_cuda_mb', 0):.0f} MB" if cuda else "")
                  + (f" parity {row['parity_rel_err']:.2e}" if row["parity_rel_err"] is not None else ""),
                  flush=True)
    gen.sample_rf, gen.sample_k = sat.sampling.sample_rf, sat.sampling.sample_k
    return rows


def main(argv=None) -> List[Dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="stable-audio-open-small",
                   choices=["stable-audio-open-small", "stable-audio-open-1.0"])
    p.add_argument("--window", type=float, default=None,
                   help="window length in seconds, in this process (default: the model's full window)")
    p.add_argument("--windows", default=None,
                   help="comma-separated window lengths in seconds, each in its own subprocess")
    p.add_argument("--steps", type=int, default=None, help="default: the model's (8 / 100)")
    p.add_argument("--cfg-scale", type=float, default=None, help="default: the model's (1 / 7)")
    p.add_argument("--repeats", type=int, default=None, help="timed repetitions (default 5)")
    p.add_argument("--variants", nargs="+", default=None,
                   help="fastaudio variants: EXEC[+bf16][+dec-fp32][+int8][+chunkN] "
                        "(default: eager compile default)")
    p.add_argument("--what", default="step,end_to_end",
                   help="comma-separated: step, end_to_end (gives sampling and decode too), decode")
    p.add_argument("--reference-dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where both sides run (auto: CUDA when present)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--note", default="")
    p.add_argument("--quick", action="store_true", help="1 repetition, eager only")
    p.add_argument("--run-id", default=None, help=argparse.SUPPRESS)  # a parent run's id
    a = p.parse_args(argv)
    repeats = a.repeats or (1 if a.quick else 5)
    variants = a.variants or (["eager"] if a.quick else ["eager", "compile", "default"])
    whats = [w.strip() for w in a.what.split(",") if w.strip()]
    for w in whats:
        if w not in ("step", "end_to_end", "decode", "sampling"):
            raise SystemExit(f"--what: unknown {w!r}")
    if a.run_id:
        import common
        common.RUN_ID = a.run_id
        common.device_meta.cache_clear()
    if a.windows:
        import common
        for w in a.windows.split(","):
            child = [sys.executable, os.path.abspath(__file__), "--preset", a.preset,
                     "--window", w, "--repeats", str(repeats), "--what", a.what,
                     "--reference-dtype", a.reference_dtype, "--seed", str(a.seed),
                     "--note", a.note, "--run-id", common.RUN_ID, "--device", a.device,
                     "--variants", *variants]
            for flag, value in (("--steps", a.steps), ("--cfg-scale", a.cfg_scale),
                                ("--threads", a.threads)):
                if value is not None:
                    child += [flag, str(value)]
            if a.quick:
                child.append("--quick")
            print(f"===== {a.preset} window {w} s (subprocess) =====", flush=True)
            subprocess.run(child, check=True)
        return []
    return run_one(a, a.window, repeats, variants, whats)


def run_one(a, window, repeats, variants, whats):
    writer = RowWriter("vs_reference_open", a.quick)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    rows = bench(a.preset, window, a.steps, a.cfg_scale, repeats, variants, whats,
                 a.reference_dtype, a.seed, a.note, writer, a.threads, device)
    writer.report()
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
