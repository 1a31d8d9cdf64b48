"""Attention backends at Stable Audio 1.0's U-Net shapes: ms, TFLOP/s and the fraction of peak.

Shapes (B = 2 for classifier-free guidance x 16 heads = 32 (batch, head) pairs):
  self-attention  L 4096 and 2048 at head dim 64 (1024 channels), L 1024 and 256 at 80 (1280)
  cross-attention the same query lengths to 79 context keys with a ragged padding mask ("zero" mode)
Every backend this machine has (see fastaudio.nn.attention.available_backends) is forced by name,
so a row never times a fallback; a backend that cannot serve a shape prints why and is skipped.
Each row first checks the forward against the fp32 math reference (max_abs_err in the row).

FLOPs count the attention core only: forward 4*B*H*Lq*Lk*D (QK^T and PV), forward+backward 3.5x
that (the backward's five products; our Triton backward recomputes two more, which it pays for in
time, not in credited FLOPs). Times are CUDA-event medians with warm-up (and autotuning) excluded.

On a machine without CUDA only sdpa and math run, on tiny shapes, and every row says device "cpu":
those are not GPU timings (the Triton interpreter is never timed).

    python benchmarks/bench_attention.py            # full run, rows appended to results/attention.jsonl
    python benchmarks/bench_attention.py --quick    # smoke run: one self and one cross shape
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

import torch

from common import append_rows, time_ms as _time_ms, vendor_peak, VENDOR_BF16_TFLOPS
from fastaudio.nn import attention as NA

# (kind, B, H, Lq, Lk, D)
GPU_SHAPES = [
    ("self", 2, 16, 4096, 4096, 64), ("self", 2, 16, 2048, 2048, 64),
    ("self", 2, 16, 1024, 1024, 80), ("self", 2, 16, 256, 256, 80),
    ("cross", 2, 16, 4096, 79, 64), ("cross", 2, 16, 2048, 79, 64),
    ("cross", 2, 16, 1024, 79, 80), ("cross", 2, 16, 256, 79, 80),
]
CPU_SHAPES = [("self", 1, 2, 256, 256, 64), ("self", 1, 2, 128, 128, 80),
              ("cross", 1, 2, 256, 79, 64), ("cross", 1, 2, 128, 79, 80)]


def peak_tflops(device_name: str) -> Optional[float]:
    return vendor_peak(VENDOR_BF16_TFLOPS, device_name)


def make_inputs(kind, B, H, Lq, Lk, D, dtype, device, requires_grad):
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(B, H, L, D, generator=g, device=device, dtype=dtype)
               for L in (Lq, Lk, Lk))
    mask = None
    if kind == "cross":
        # Conditional prompt of 40 tokens + 2 timing tokens; the CFG null context keeps all 79.
        mask = torch.ones(B, Lk, dtype=torch.bool, device=device)
        mask[0, 42:] = False
    if requires_grad:
        q, k, v = (t.requires_grad_() for t in (q, k, v))
    return q, k, v, mask


def time_ms(fn, cuda: bool, repeats: int) -> float:
    return _time_ms(fn, "cuda" if cuda else "cpu", repeats)


def bench_shape(shape, backend, dtype, device, repeats, meta, peak) -> List[dict]:
    kind, B, H, Lq, Lk, D = shape
    cuda = device == "cuda"
    q, k, v, mask = make_inputs(kind, B, H, Lq, Lk, D, dtype, device, requires_grad=True)
    reason = NA.unsupported_reason(backend, q, k, v, mask, "zero")
    label = f"{kind:5s} B{B} H{H} Lq{Lq:5d} Lk{Lk:5d} D{D:3d} {backend:10s}"
    if reason is not None:
        print(f"{label} skipped: {reason}")
        return []

    with torch.no_grad():
        out = NA.attention(q, k, v, mask, backend=backend, mask_mode="zero")
        ref = NA.attention(q.float(), k.float(), v.float(), mask, backend="math", mask_mode="zero")
        err = (out.float() - ref).abs().max().item()
        del ref
    do = torch.randn_like(out)

    def fwd():
        with torch.no_grad():
            NA.attention(q, k, v, mask, backend=backend, mask_mode="zero")

    def fwd_bwd():
        o = NA.attention(q, k, v, mask, backend=backend, mask_mode="zero")
        torch.autograd.grad(o, (q, k, v), do)

    rows = []
    flops_fwd = 4.0 * B * H * Lq * Lk * D
    for pass_name, fn, flops in (("fwd", fwd, flops_fwd), ("fwd+bwd", fwd_bwd, 3.5 * flops_fwd)):
        ms = time_ms(fn, cuda, repeats)
        tflops = flops / (ms * 1e-3) / 1e12
        frac = tflops / peak if peak else None
        row = dict(meta, backend=backend, kind=kind, B=B, H=H, Lq=Lq, Lk=Lk, D=D,
                   dtype=str(dtype).replace("torch.", ""), mask_mode="zero", **{"pass": pass_name},
                   ms=round(ms, 4), tflops=round(tflops, 3),
                   peak_fraction=None if frac is None else round(frac, 4),
                   max_abs_err=float(f"{err:.3g}"))
        rows.append(row)
        peak_txt = f"{100 * frac:5.1f}% of peak" if frac is not None else "peak unknown"
        print(f"{label} {pass_name:7s} {ms:9.3f} ms {tflops:8.2f} TFLOP/s  {peak_txt}  "
              f"err {err:.2e}")
    return rows


def main(argv: Optional[List[str]] = None) -> List[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: two shapes, few repeats")
    parser.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    parser.add_argument("--backends", default=",".join(NA.BACKENDS),
                        help="comma-separated subset of " + ",".join(NA.BACKENDS))
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--out", default=None, help="JSON-lines file the rows are appended to")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    shapes = GPU_SHAPES if cuda else CPU_SHAPES
    if args.quick:
        shapes = [s for s in shapes if s[0] == "self"][:1] + [s for s in shapes if s[0] == "cross"][:1]
    repeats = args.repeats or (5 if args.quick else 20)
    wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
    for b in wanted:
        if b not in NA.BACKENDS:
            parser.error(f"unknown backend {b!r}")

    if cuda:
        device_name = torch.cuda.get_device_name()
        backends = wanted
    else:
        device_name = "cpu"
        # The Triton interpreter is a correctness tool, not a timing; flash-attn/xformers need CUDA.
        backends = [b for b in wanted if b in ("sdpa", "math")]
        print("device: cpu -- tiny shapes, sdpa and math only; these are not GPU timings.")
    peak = peak_tflops(device_name) if cuda else None
    print(f"device: {device_name}; peak {'%.0f TFLOP/s bf16' % peak if peak else 'unknown'}")
    available = NA.available_backends(device)
    for b in backends:
        if available[b] is not None:
            print(f"backend {b}: unavailable ({available[b]})")
    backends = [b for b in backends if available[b] is None]

    meta = dict(quick=args.quick)
    rows: List[dict] = []
    path = None
    for shape in shapes:
        for backend in backends:
            new = bench_shape(shape, backend, dtype, device, repeats, meta, peak)
            rows += new
            if new and not args.no_write:  # written as measured: a time limit keeps what finished
                path = append_rows("attention", new, args.out)
            if cuda:
                torch.cuda.empty_cache()

    if path:
        print(f"{len(rows)} rows appended to {path}")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
