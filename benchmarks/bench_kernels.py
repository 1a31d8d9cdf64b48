"""Our Triton kernels against torch eager and torch.compile at Stable Audio 1.0's real shapes.

* GroupNorm + FiLM + SiLU: the U-Net's ResNet blocks, B = 2 (guidance), C 1024/1280, L 4096…256
  (16 groups). Eager is the sequence group_norm → ·(1+scale)+shift → silu.
* Snake: the VAE decoder's stages for 95 s of audio (1536 ch × 4096 … 96 ch × 4.19 M samples).
* conv1d + bias + residual: U-Net k3 convs and VAE k7 dilated convs; eager is cuDNN's conv then
  the add.

Memory-bound ops report GB/s (bytes read + written, counted once) and the fraction of this device's
measured copy bandwidth; the conv reports TFLOP/s and the fraction of the measured matmul peak.
Without CUDA the kernels cannot run (the interpreter is not a timing): the benchmark then times the
PyTorch CPU paths at scaled-down shapes and every row says ``device_kind: cpu``.

    python benchmarks/bench_kernels.py [--quick] [--no-compile]
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

from common import RowWriter, measured_peaks, time_ms

GN_SHAPES_GPU = [(2, 1024, 4096), (2, 1024, 2048), (2, 1280, 1024), (2, 1280, 256)]
GN_SHAPES_CPU = [(2, 256, 1024), (2, 320, 256)]
SNAKE_SHAPES_GPU = [(1, 1536, 4096), (1, 768, 32768), (1, 384, 262144), (1, 192, 1048576),
                    (1, 96, 4194304)]
SNAKE_SHAPES_CPU = [(1, 96, 65536), (1, 24, 262144)]
# (B, Cin, Cout, L, k, dilation)
CONV_SHAPES_GPU = [(2, 1024, 1024, 4096, 3, 1), (2, 1280, 1280, 1024, 3, 1),
                   (1, 192, 192, 1048576, 7, 3), (1, 96, 96, 4194304, 7, 9)]
CONV_SHAPES_CPU = [(2, 128, 128, 1024, 3, 1), (1, 24, 24, 65536, 7, 3)]


def gn_eager(x, w, b, scale, shift):
    y = F.group_norm(x, 16, w, b, 1e-5)
    return F.silu(y * (1 + scale.unsqueeze(-1)) + shift.unsqueeze(-1))


def snake_eager(x, alpha):
    return x + (alpha + 1e-9).reciprocal() * torch.sin(alpha * x).pow(2)


def conv_eager(x, w, b, residual, dilation):
    return F.conv1d(x, w, b, padding=dilation * (w.shape[-1] // 2), dilation=dilation) + residual


def variants(eager: Callable, ours: Optional[Callable], args: tuple, compile_ok: bool
             ) -> Dict[str, Callable[[], object]]:
    """The contenders for one shape, each a no-argument callable."""
    out = {"eager": lambda: eager(*args)}
    if compile_ok:
        compiled = torch.compile(eager)
        out["torch.compile"] = lambda: compiled(*args)
    if ours is not None:
        out["triton"] = lambda: ours(*args)
    return out


def captured(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` captured once in a CUDA graph; timing its replay measures the GPU work alone, without
    the host-side cost of a call (validation, custom-op and autograd dispatch, the autotuner's key
    lookup). On the first H100 run our Snake took about the same time at 6 M and 25 M elements
    (0.21 / 0.22 ms), as a fixed per-call cost would; GroupNorm was slower at the smaller shape
    (0.50 ms at 2x1024x2048 vs 0.22 at 2x1024x4096), which host cost cannot explain (a tile or
    autotune choice more likely). Generation replays CUDA graphs, so both figures matter. Never run
    on a GPU yet."""
    from fastaudio.diffusion.cuda_graph import capture_graph  # the sampler's own capture
    return capture_graph(fn).replay


def run(device: str, dtype: torch.dtype, quick: bool, compile_ok: bool, emit=None) -> List[dict]:
    cuda = device == "cuda"
    peaks = measured_peaks(device)
    rows: List[dict] = []
    size = lambda t: t.numel() * t.element_size()
    g = torch.Generator(device=device).manual_seed(0)
    rnd = lambda *s: torch.randn(*s, generator=g, device=device, dtype=dtype)
    limit = 2 if quick else None

    def record(op, shape, name, fn, bytes_moved=None, flops=None):
        ms = time_ms(fn, device, repeats=5 if quick else 20)
        row = {"op": op, "shape": list(shape), "variant": name, "dtype": str(dtype).replace("torch.", ""),
               "ms": round(ms, 4), "measured_peak": peaks}
        if bytes_moved is not None:
            row["gbs"] = round(bytes_moved / (ms * 1e-3) / 1e9, 1)
            row["bandwidth_fraction"] = round(row["gbs"] / peaks["copy_gbs"], 3)
            extra = f"{row['gbs']:8.1f} GB/s ({100 * row['bandwidth_fraction']:.0f}% of copy)"
        else:
            row["tflops"] = round(flops / (ms * 1e-3) / 1e12, 3)
            row["peak_fraction"] = round(row["tflops"] / peaks["matmul_tflops"], 3)
            extra = f"{row['tflops']:7.2f} TFLOP/s ({100 * row['peak_fraction']:.0f}% of matmul)"
        rows.append(row)
        if emit is not None:
            emit(row)
        print(f"{op:13s} {str(shape):28s} {name:14s} {ms:9.3f} ms  {extra}")

    def record_all(op, shape, contenders, **amount):
        for name, fn in contenders.items():
            record(op, shape, name, fn, **amount)
        if not cuda:
            return
        for name in ("eager", "triton"):  # the same calls replayed from a CUDA graph
            try:
                replay = captured(contenders[name])
            except RuntimeError as e:  # said, not hidden: the row is missing for this reason
                print(f"{op:13s} {str(shape):28s} {name} (graph): capture failed: {e}")
                continue
            record(op, shape, f"{name} (graph)", replay, **amount)

    with torch.no_grad():
        for shape in (GN_SHAPES_GPU if cuda else GN_SHAPES_CPU)[:limit]:
            B, C, L = shape
            args = (rnd(B, C, L), rnd(C), rnd(C), rnd(B, C) * 0.1, rnd(B, C) * 0.1)
            ours = None
            if cuda:
                from fastaudio.kernels.group_norm import group_norm
                ours = lambda x, w, b, sc, sh: group_norm(x, 16, w, b, 1e-5, sc, sh, silu=True)
            record_all("gn_film_silu", shape, variants(gn_eager, ours, args, compile_ok),
                       bytes_moved=2 * size(args[0]))
        for shape in (SNAKE_SHAPES_GPU if cuda else SNAKE_SHAPES_CPU)[:limit]:
            args = (rnd(*shape), rnd(1, shape[1], 1).abs() + 0.5)
            ours = None
            if cuda:
                from fastaudio.kernels.snake import snake as ours
            record_all("snake", shape, variants(snake_eager, ours, args, compile_ok),
                       bytes_moved=2 * size(args[0]))
        for shape in (CONV_SHAPES_GPU if cuda else CONV_SHAPES_CPU)[:limit]:
            B, Ci, Co, L, k, d = shape
            args = (rnd(B, Ci, L), rnd(Co, Ci, k) * 0.05, rnd(Co), rnd(B, Co, L), d)
            ours = None
            if cuda:
                from fastaudio.kernels.conv1d import conv1d
                ours = lambda x, w, b, res, dil: conv1d(x, w, b, 1, dil * (w.shape[-1] // 2), dil,
                                                        residual=res)
            record_all("conv1d+res", shape, variants(conv_eager, ours, args, compile_ok),
                       flops=2.0 * B * Co * Ci * k * L)
    return rows


def main(argv=None) -> List[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to build on CPU)")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None)
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
        args.dtype or ("bf16" if cuda else "fp32")]
    if not cuda:
        print("no CUDA device: timing the PyTorch CPU paths at scaled-down shapes (Triton kernels "
              "need a GPU; these rows are CPU figures)")
    writer = RowWriter("kernels", args.quick)  # rows written as measured, each marked quick or not
    rows = run(device, dtype, args.quick, compile_ok=not args.no_compile, emit=writer)
    writer.report()
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
