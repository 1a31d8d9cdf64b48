"""Our Triton kernels against torch eager and torch.compile at Stable Audio's real shapes.

* GroupNorm + FiLM + SiLU: the U-Net's ResNet blocks, B = 2 (guidance), C 1024/1280, L 4096…256
  (16 groups). Eager is the sequence group_norm → ·(1+scale)+shift → silu.
* Snake: the SA1.0 VAE decoder's stages for 95 s of audio (1536 ch × 4096 … 96 ch × 4.19 M);
  SnakeBeta (log-scale parameters): the Oobleck decoder's last stage at SAO 1.0's 47.55 s.
* conv1d + bias + residual: U-Net k3 convs and VAE k7 dilated convs; eager is cuDNN's conv then
  the add (``torch.backends.cudnn.benchmark = True``: cuDNN picks its fastest algorithm). Timed in
  (B, C, L) memory (our gather kernel, kernels/conv1d.py) and in channels-last memory (our
  channels-last implicit GEMM, kernels/conv1d_cl.py; cuDNN then takes its NHWC path).

Every contender is timed twice over (benchmarks/common.py): ``device_ms``, a CUDA graph of 20-50
calls replayed and divided (the GPU's work alone), and ``host_us``, the wall time per call of
calls issued without synchronising (the Python path alone). Memory-bound ops report GB/s (bytes
read + written once) and the fraction of the measured copy bandwidth, the conv TFLOP/s and the
fraction of the measured matmul peak, both from the device time. Contenders: ``eager``,
``torch.compile`` (of eager; the first ``--compile-shapes`` shapes), ``triton`` (our kernel
through the fastaudio.nn layer, dispatcher included, as the model calls it), ``triton+compile``
(that layer inside torch.compile: the custom op), ``triton-old`` (the kernels before issue 24,
from ``--old DIR``, see benchmarks/gpu_session.sh); forward rows, then forward+backward rows.

``--check``: each kernel against an fp64 reference at the real shapes, outputs poisoned (NaN)
before the kernels write them (set FASTAUDIO_POISON=1), three-way rule, forward and backward,
including a SnakeBeta over 6 × 96 × 4 194 304 elements (offsets past 2^31).

Without CUDA the kernels cannot be timed (the interpreter is not a timing): the benchmark then
times the PyTorch CPU paths at scaled-down shapes and every row says ``device_kind: cpu``.
``--tiny`` (with TRITON_INTERPRET=1): every code path on tiny shapes, for a smoke test.

    python benchmarks/bench_kernels.py [--quick] [--no-compile] [--check] [--tiny] [--old DIR]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from typing import List, Optional

import torch
import torch.nn.functional as F

from common import RowWriter, device_time_ms, host_time_us, measured_peaks

GN_SHAPES_GPU = [(2, 1024, 4096), (2, 1024, 2048), (2, 1280, 1024), (2, 1280, 256)]
GN_SHAPES_CPU = [(2, 256, 1024), (2, 320, 256)]
GN_SHAPES_TINY = [(2, 32, 64)]
SNAKE_SHAPES_GPU = [(1, 1536, 4096), (1, 768, 32768), (1, 384, 262144), (1, 192, 1048576),
                    (1, 96, 4194304)]
SNAKE_SHAPES_CPU = [(1, 96, 65536), (1, 24, 262144)]
SNAKE_SHAPES_TINY = [(1, 8, 3000)]
SNAKE_BETA_SHAPES_GPU = [(1, 128, 2097152)]
SNAKE_BETA_SHAPES_TINY = [(1, 8, 3000)]
# (B, Cin, Cout, L, k, dilation)
CONV_SHAPES_GPU = [(2, 1024, 1024, 4096, 3, 1), (2, 1280, 1280, 1024, 3, 1),
                   (1, 192, 192, 1048576, 7, 3), (1, 96, 96, 4194304, 7, 9)]
CONV_SHAPES_CPU = [(2, 128, 128, 1024, 3, 1), (1, 24, 24, 65536, 7, 3)]
CONV_SHAPES_TINY = [(1, 8, 8, 64, 3, 1)]


def gn_eager(x, w, b, scale, shift):
    y = F.group_norm(x, 16 if x.shape[1] >= 16 else 4, w, b, 1e-5)
    return F.silu(y * (1 + scale.unsqueeze(-1)) + shift.unsqueeze(-1))


def snake_eager(x, alpha):
    return x + (alpha + 1e-9).reciprocal() * torch.sin(alpha * x).pow(2)


def snake_beta_eager(x, alpha, beta):  # stable-audio-tools' SnakeBeta, log-scale parameters
    a, b = alpha.exp().reshape(1, -1, 1), beta.exp().reshape(1, -1, 1)
    return x + (b + 1e-9).reciprocal() * torch.sin(x * a).pow(2)


def conv_eager(x, w, b, residual, dilation):
    return F.conv1d(x, w, b, padding=dilation * (w.shape[-1] // 2), dilation=dilation) + residual


def load_old_kernels(folder: Optional[str]):
    """The kernels as they were before issue 24 (a package made by gpu_session.sh --prepare:
    their torch.library namespace renamed to fastaudio_v1), or None."""
    if not folder or not os.path.exists(os.path.join(folder, "__init__.py")):
        return None
    spec = importlib.util.spec_from_file_location("old_kernels", os.path.join(folder, "__init__.py"),
                                                  submodule_search_locations=[folder])
    pkg = importlib.util.module_from_spec(spec)
    sys.modules["old_kernels"] = pkg
    spec.loader.exec_module(pkg)
    import old_kernels.group_norm  # noqa: F401
    import old_kernels.snake  # noqa: F401
    return pkg  # .group_norm and .snake are its attributes now


def _triton_layers():
    """The new kernels as the model calls them: the fastaudio.nn layer, FASTAUDIO_KERNELS=triton."""
    from fastaudio.nn.norm import group_norm
    from fastaudio.nn.snake import snake, snake_beta

    def gn(x, w, b, sc, sh):
        return group_norm(x, 16 if x.shape[1] >= 16 else 4, w, b, 1e-5, sc, sh, silu=True)
    return {"gn": gn, "snake": snake, "snake_beta": lambda x, a, b: snake_beta(x, a, b, True)}


# ------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------
def run(device: str, dtype: torch.dtype, quick: bool, compile_ok: bool, emit=None,
        tiny: bool = False, old=None, compile_shapes: int = 1, ops=("gn", "snake", "conv"),
        backward: bool = True) -> List[dict]:
    cuda = device == "cuda"
    triton_ok = cuda or (tiny and os.environ.get("TRITON_INTERPRET") == "1")
    peaks = measured_peaks(device)
    rows: List[dict] = []
    size = lambda t: t.numel() * t.element_size()  # noqa: E731
    g = torch.Generator(device=device).manual_seed(0)
    rnd = lambda *s: torch.randn(*s, generator=g, device=device, dtype=dtype)  # noqa: E731
    limit = 2 if quick else None
    if cuda:
        torch.backends.cudnn.benchmark = True  # the cuDNN rows: its fastest algorithm
    from fastaudio.nn import dispatch
    dispatch.set_kernel_mode("triton")  # the layers run our kernels (the eager rows call torch)
    layers = _triton_layers() if triton_ok else {}

    def record(op, shape, name, fn, bytes_moved=None, flops=None, host=True):
        try:
            ms = device_time_ms(fn, device) if cuda else _cpu_ms(fn, device, quick or tiny)
            us = host_time_us(fn, device, calls=20 if tiny else 100, repeats=3 if tiny else 7) \
                if host and cuda else None
        except Exception as e:  # said, not hidden: the row is missing for this reason
            print(f"{op:16s} {str(shape):28s} {name:16s} FAILED: {type(e).__name__}: {e}"[:400])
            return
        row = {"op": op, "shape": list(shape), "variant": name,
               "dtype": str(dtype).replace("torch.", ""), "ms": round(ms, 5),
               "device_ms": round(ms, 5) if cuda else None, "host_us": None if us is None else round(us, 2),
               "timing": "cuda-graph" if cuda else "cpu-wall", "measured_peak": peaks}
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
        host_txt = f" host {us:7.1f} us" if us is not None else ""
        print(f"{op:16s} {str(shape):28s} {name:16s} {ms:9.4f} ms{host_txt}  {extra}", flush=True)

    def contenders(eager, ours, old_fn, args, i, compiled_too=True):
        out = {"eager": lambda: eager(*args)}
        if compile_ok and compiled_too and i < compile_shapes:
            compiled = torch.compile(eager)
            out["torch.compile"] = lambda: compiled(*args)
        if ours is not None:
            out["triton"] = lambda: ours(*args)
            if compile_ok and compiled_too and i < compile_shapes:
                ours_c = torch.compile(ours)
                out["triton+compile"] = lambda: ours_c(*args)
        if old_fn is not None:
            out["triton-old"] = lambda: old_fn(*args)
        return out

    def fwd_bwd(fn, args, n_grad):
        """fn's forward and backward (grads of its first n_grad inputs), one callable."""
        leaves = [a.detach().requires_grad_() if i < n_grad else a for i, a in enumerate(args)]
        dy = torch.randn_like(fn(*leaves).detach())

        def step():
            y = fn(*leaves)
            return torch.autograd.grad(y, leaves[:n_grad], dy)
        return step

    def time_op(op, shapes, make_args, eager, ours, old_fn, n_grad, amount, compiled_too=True):
        for i, shape in enumerate(shapes[:limit]):
            args = make_args(shape)
            with torch.no_grad():
                for name, fn in contenders(eager, ours, old_fn, args, i, compiled_too).items():
                    record(op, shape, name, fn, **amount(shape, args))
            if not backward or n_grad == 0:
                continue
            bwd = {"eager": eager}
            if ours is not None:
                bwd["triton"] = ours
            if old_fn is not None:
                bwd["triton-old"] = old_fn
            for name, fn in bwd.items():  # backward reads x, dy and writes dx: 1.5x the bytes
                am = amount(shape, args)
                if "bytes_moved" in am:
                    am = {"bytes_moved": am["bytes_moved"] * 2.5}
                record(op + " fwd+bwd", shape, name, fwd_bwd(fn, args, n_grad), host=False, **am)

    dev_shapes = lambda gpu, cpu, t: t if tiny else (gpu if cuda else cpu)  # noqa: E731
    if "gn" in ops:
        time_op("gn_film_silu", dev_shapes(GN_SHAPES_GPU, GN_SHAPES_CPU, GN_SHAPES_TINY),
                lambda s: (rnd(*s), rnd(s[1]), rnd(s[1]), rnd(s[0], s[1]) * 0.1,
                           rnd(s[0], s[1]) * 0.1),
                gn_eager, layers.get("gn"),
                None if old is None else
                (lambda x, w, b, sc, sh: old.group_norm.group_norm(x, 16 if x.shape[1] >= 16 else 4,
                                                                   w, b, 1e-5, sc, sh, silu=True)),
                n_grad=5, amount=lambda s, a: {"bytes_moved": 2 * size(a[0])})
    if "snake" in ops:
        time_op("snake", dev_shapes(SNAKE_SHAPES_GPU, SNAKE_SHAPES_CPU, SNAKE_SHAPES_TINY),
                lambda s: (rnd(*s), rnd(1, s[1], 1).abs() + 0.5), snake_eager,
                layers.get("snake"), None if old is None else old.snake.snake, n_grad=2,
                amount=lambda s, a: {"bytes_moved": 2 * size(a[0])})
        time_op("snake_beta", dev_shapes(SNAKE_BETA_SHAPES_GPU, [], SNAKE_BETA_SHAPES_TINY),
                lambda s: (rnd(*s), rnd(s[1]) * 0.3, rnd(s[1]) * 0.3), snake_beta_eager,
                layers.get("snake_beta"), None, n_grad=3,
                amount=lambda s, a: {"bytes_moved": 2 * size(a[0])})
    if "conv" in ops:
        ours = None
        if triton_ok:  # through the nn layer: channels-last inputs take kernels/conv1d_cl.py
            from fastaudio.nn.conv import conv1d
            ours = lambda x, w, b, res, dil: conv1d(x, w, b, 1, dil * (w.shape[-1] // 2), dil,  # noqa: E731
                                                    residual=res)
        # Twice: (B, C, L) memory (cuDNN's NCHW path, our gather kernel) and channels-last memory
        # (cuDNN's NHWC path, our channels-last implicit GEMM); forward only (inference).
        conv_args = lambda s: (rnd(s[0], s[1], s[3]), rnd(s[2], s[1], s[4]) * 0.05,  # noqa: E731
                               rnd(s[2]), rnd(s[0], s[2], s[3]), s[5])
        cl = lambda t: t.transpose(1, 2).contiguous().transpose(1, 2)  # noqa: E731
        flops = lambda s, a: {"flops": 2.0 * s[0] * s[2] * s[1] * s[4] * s[3]}  # noqa: E731
        shapes = dev_shapes(CONV_SHAPES_GPU, CONV_SHAPES_CPU, CONV_SHAPES_TINY)
        time_op("conv1d+res", shapes, conv_args, conv_eager, ours, None, n_grad=0, amount=flops)
        time_op("conv1d+res channels-last", shapes,
                lambda s: tuple(cl(a) if torch.is_tensor(a) and a.dim() == 3 and i != 1 else a
                                for i, a in enumerate(conv_args(s))),
                conv_eager, ours, None, n_grad=0, amount=flops,
                compiled_too=False)  # under torch.compile the layer runs conv1d.py's custom op
    dispatch.set_kernel_mode(None)
    return rows


def _cpu_ms(fn, device, quick):
    from common import time_ms
    return time_ms(fn, device, repeats=2 if quick else 10)


# ------------------------------------------------------------------------------------------------
# Correctness at the real shapes
# ------------------------------------------------------------------------------------------------
def _three_way(out, ref, lowp, dtype, name, tag) -> dict:
    """max|out − ref64| ≤ 2·max|torch_lowp − ref64| + atol, every element finite."""
    atol_rel = {torch.float32: 1e-6, torch.bfloat16: 2.0 ** -9, torch.float16: 2.0 ** -12}[dtype]
    finite = bool(torch.isfinite(out).all())
    err = (out.double() - ref).abs().max().item()
    base = (lowp.double() - ref).abs().max().item()
    atol = atol_rel * max(1.0, ref.abs().max().item())
    ok = finite and err <= 2 * base + atol
    print(f"check {tag:44s} {name:7s} {'ok  ' if ok else 'FAIL'} err {err:.3g} "
          f"(bound 2·{base:.3g} + {atol:.3g}){'' if finite else ' NON-FINITE'}", flush=True)
    return {"check": tag, "tensor": name, "ok": ok, "err": err, "lowp_err": base, "atol": atol,
            "finite": finite}


def check(device: str, tiny: bool, emit=None) -> bool:
    from fastaudio.kernels import _common
    from fastaudio.kernels.group_norm import group_norm, group_norm_ref
    from fastaudio.kernels.snake import PARAM_LOG, snake, snake_beta, snake_ref
    if not _common.POISON:
        print("note: FASTAUDIO_POISON=1 was not set: outputs are not poisoned")
    g = torch.Generator().manual_seed(0)
    results = []

    def rnd(*s, std=1.0, dtype=torch.float32):
        return (torch.randn(*s, generator=g) * std).to(device=device, dtype=dtype)

    def grads(fn, leaves, dy, cast=None):
        leaves = [(t if cast is None else t.to(cast)).detach().requires_grad_() for t in leaves]
        y = fn(*leaves)
        return [y.detach()] + list(torch.autograd.grad(y, leaves, dy.to(y.dtype)))

    gn_cases = [((2, 32, 64), 4)] if tiny else [((2, 1024, 4096), 16), ((2, 1280, 256), 16)]
    for (B, C, L), G in gn_cases:
        for dtype in (torch.bfloat16, torch.float32):
            inputs = [rnd(B, C, L, std=2.0, dtype=dtype), rnd(C, dtype=dtype) * 0.5 + 1,
                      rnd(C, dtype=dtype) * 0.5]
            both = rnd(B, 2 * C, std=0.5, dtype=dtype)
            inputs += list(both.chunk(2, dim=1))  # strided FiLM views, as the U-Net passes them
            dy = rnd(B, C, L, dtype=dtype)

            def ours(x, w, b, s, sh):
                return group_norm(x, G, w, b, 1e-5, s, sh, True)

            def ref(x, w, b, s, sh, upcast=True):
                return group_norm_ref(x, G, w, b, 1e-5, s, sh, True, upcast=upcast)

            out = grads(ours, inputs, dy)
            want = grads(ref, inputs, dy, cast=torch.float64)
            lowp = grads(lambda *t: ref(*t, upcast=False), inputs, dy)
            tag = f"gn_film_silu {(B, C, L)} G={G} {str(dtype)[6:]}"
            for name, o, r, lp in zip(("y", "dx", "dw", "db", "dscale", "dshift"), out, want, lowp):
                results.append(_three_way(o, r, lp, dtype, name, tag))
            del out, want, lowp
    snake_cases = [(1, 8, 3000)] if tiny else [(1, 1536, 4096), (1, 96, 4194304)]
    for shape in snake_cases:
        x, dy = rnd(*shape, std=3.0, dtype=torch.bfloat16), rnd(*shape, dtype=torch.bfloat16)
        alpha = (torch.rand(shape[1], generator=g) * 3 + 0.05).to(device, torch.bfloat16)
        out = grads(snake, [x, alpha], dy)
        want = grads(snake_ref, [x, alpha], dy, cast=torch.float64)
        lowp = grads(lambda a, b: snake_ref(a, b, upcast=False), [x, alpha], dy)
        for name, o, r, lp in zip(("y", "dx", "dalpha"), out, want, lowp):
            results.append(_three_way(o, r, lp, torch.bfloat16, name, f"snake {shape} bf16"))
        del out, want, lowp
    # Past 2^31 elements: SnakeBeta (log-scale parameters) on 6 × 96 × 4 194 304 bf16; judged on
    # the first and last items (the offsets past 2^31 are the last ones) and on the parameter
    # gradients, whose fp64 reference is summed item by item.
    big = (2, 8, 3000) if tiny else (6, 96, 4194304)
    x = rnd(*big, std=3.0, dtype=torch.bfloat16)
    dy = rnd(*big, dtype=torch.bfloat16)
    la = (torch.rand(big[1], generator=g) - 0.5).to(device)
    lb = (torch.rand(big[1], generator=g) - 0.5).to(device)
    leaves = [x.requires_grad_(), la.clone().requires_grad_(), lb.clone().requires_grad_()]
    y = snake_beta(*leaves, param=PARAM_LOG)
    dx, dla, dlb = torch.autograd.grad(y, leaves, dy)
    y, x = y.detach(), x.detach()

    def ref_item(xi, dyi, upcast=True):
        dt = torch.float64 if upcast else torch.bfloat16
        ts = [xi.to(dt).requires_grad_(), la.to(dt).requires_grad_(), lb.to(dt).requires_grad_()]
        a, b = ts[1].exp().reshape(1, -1, 1), ts[2].exp().reshape(1, -1, 1)
        yi = ts[0] + (b + 1e-9).reciprocal() * torch.sin(ts[0] * a).pow(2)
        return [yi.detach()] + list(torch.autograd.grad(yi, ts, dyi.to(dt)))

    sums = [0.0, 0.0]
    sums_lp = [0.0, 0.0]
    for i in range(big[0]):
        r = ref_item(x[i:i + 1], dy[i:i + 1])
        lp = ref_item(x[i:i + 1], dy[i:i + 1], upcast=False)
        if i in (0, big[0] - 1):
            tag = f"snake_beta(log) {big} item {i}"
            results.append(_three_way(y[i:i + 1], r[0], lp[0], torch.bfloat16, "y", tag))
            results.append(_three_way(dx[i:i + 1], r[1], lp[1], torch.bfloat16, "dx", tag))
        sums = [sums[0] + r[2], sums[1] + r[3]]
        sums_lp = [sums_lp[0] + lp[2].float(), sums_lp[1] + lp[3].float()]
        del r, lp
    results.append(_three_way(dla, sums[0], sums_lp[0], torch.float32, "dalpha", f"snake_beta(log) {big}"))
    results.append(_three_way(dlb, sums[1], sums_lp[1], torch.float32, "dbeta", f"snake_beta(log) {big}"))
    del x, y, dx, dy
    results += _check_convs(device, tiny, rnd)
    if emit is not None:
        for r in results:
            emit(r)
    bad = [r for r in results if not r["ok"]]
    print(f"checks: {len(results) - len(bad)}/{len(results)} ok")
    return not bad


def _check_convs(device, tiny, rnd) -> List[dict]:
    """Both Triton convs (the gather kernel on (B, C, L) memory, the channels-last implicit GEMM)
    through the nn layer in bf16 at a U-Net and a VAE shape, forward, against the fp64 conv."""
    from fastaudio.kernels.conv1d import conv1d_ref
    from fastaudio.kernels.conv1d_cl import to_channels_last
    from fastaudio.nn import dispatch
    from fastaudio.nn.conv import conv1d
    cases = [(1, 8, 8, 64, 3, 1)] if tiny else [(2, 1024, 1024, 4096, 3, 1), (1, 96, 96, 1048576, 7, 9)]
    results = []
    dispatch.set_kernel_mode("triton")
    try:
        for (B, Ci, Co, L, K, d) in cases:
            x, r = rnd(B, Ci, L, dtype=torch.bfloat16), rnd(B, Co, L, dtype=torch.bfloat16)
            w = rnd(Co, Ci, K, std=(Ci * K) ** -0.5, dtype=torch.bfloat16)
            b = rnd(Co, dtype=torch.bfloat16)
            pad = d * (K // 2)
            with torch.no_grad():
                ref = conv1d_ref(x.double(), w.double(), b.double(), 1, pad, d, r.double())
                lowp = F.conv1d(x, w, b, 1, pad, d) + r
                for layout, xi, ri in (("bcl", x, r), ("channels-last", to_channels_last(x),
                                                       to_channels_last(r))):
                    out = conv1d(xi, w, b, 1, pad, d, residual=ri)
                    tag = f"conv1d+res {(B, Ci, Co, L)} k{K} d{d} {layout} bf16"
                    results.append(_three_way(out, ref, lowp, torch.bfloat16, "y", tag))
                    del out
            del x, r, ref, lowp
    finally:
        dispatch.set_kernel_mode(None)
    return results


def main(argv=None) -> List[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to build on CPU)")
    p.add_argument("--compile-shapes", type=int, default=1,
                   help="the first N shapes of each op also run under torch.compile")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None)
    p.add_argument("--ops", default="gn,snake,conv")
    p.add_argument("--no-backward", action="store_true")
    p.add_argument("--old", default=None, help="folder of the pre-issue-24 kernels (gpu_session.sh --prepare)")
    p.add_argument("--check", action="store_true", help="correctness at the real shapes, then exit")
    p.add_argument("--tiny", action="store_true", help="tiny shapes (a smoke test; interpreter ok)")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if args.check:
        writer = RowWriter("kernel_checks", args.quick or args.tiny)
        ok = check(device, args.tiny, emit=writer)
        writer.report()
        if not ok:
            sys.exit(1)
        return []
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
        args.dtype or ("bf16" if cuda else "fp32")]
    if not cuda and not args.tiny:
        print("no CUDA device: timing the PyTorch CPU paths at scaled-down shapes (Triton kernels "
              "need a GPU; these rows are CPU figures)")
    old = load_old_kernels(args.old) if cuda or args.tiny else None
    writer = RowWriter("kernels", args.quick or args.tiny)  # rows written as measured
    rows = run(device, dtype, args.quick, compile_ok=not args.no_compile, emit=writer,
               tiny=args.tiny, old=old, compile_shapes=args.compile_shapes,
               ops=tuple(args.ops.split(",")), backward=not args.no_backward)
    writer.report()
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
