"""Replay every attention call of a U-Net forward through the Triton kernel, one call at a time,
synchronised after each: which call (shape, strides, mask), if any, faults.

    python benchmarks/attention_fault_probe.py record --preset stable-audio-1.0 --seconds 10 --out calls.json
    CUDA_LAUNCH_BLOCKING=1 python benchmarks/attention_fault_probe.py replay calls.json
    compute-sanitizer --tool memcheck python benchmarks/attention_fault_probe.py replay calls.json

Why: the first H100 run (2026-11-22) stopped SA1.0 generation on an illegal memory access with the
Triton attention in the U-Net, while the interpreter finds the kernel's indexing right at every GPU
block size (tests/test_attention.py). ``record`` runs one sampling step on the SDPA path and notes
each distinct call's shapes, strides, storage offsets, dtype and mask; ``replay`` rebuilds those
exact views on fresh random storage and runs the Triton kernel on them alone, so the sanitizer
sees attention and nothing else. On a CPU both run (replay needs TRITON_INTERPRET=1).
"""
from __future__ import annotations

import argparse
import json
import sys

import torch


def _describe(t: torch.Tensor) -> dict:
    return {"shape": list(t.shape), "stride": list(t.stride()), "offset": t.storage_offset(),
            "storage": t.untyped_storage().nbytes() // t.element_size()}


def record(preset: str, seconds: float, out: str) -> int:
    import fastaudio.models.unet as unet_module
    from fastaudio.pipeline import StableAudio, random_weights_model
    cuda = torch.cuda.is_available()
    pipe = StableAudio(random_weights_model(preset, seed=0), device="cuda" if cuda else "cpu",
                       dtype="bf16" if cuda else "fp32", execution="eager")
    calls, seen = [], set()
    real = unet_module.attention

    def spy(q, k, v, key_padding_mask=None, mask_mode="zero", **kw):
        call = {"q": _describe(q), "k": _describe(k), "v": _describe(v), "dtype": str(q.dtype),
                "mask_mode": mask_mode,
                "mask": None if key_padding_mask is None else key_padding_mask.cpu().tolist()}
        key = json.dumps({**call, "mask": call["mask"] is not None})
        if key not in seen:
            seen.add(key)
            calls.append(call)
        return real(q, k, v, key_padding_mask=key_padding_mask, mask_mode=mask_mode, **kw)

    unet_module.attention = spy
    try:
        pipe.generate("a probe prompt", seconds_total=seconds, window=seconds, steps=1, seed=0)
    finally:
        unet_module.attention = real
    with open(out, "w", encoding="utf-8") as f:
        json.dump(calls, f, indent=1)
    print(f"{len(calls)} distinct attention calls of {preset} at {seconds} s written to {out}")
    return 0


def _rebuild(d: dict, dtype, device, gen) -> torch.Tensor:
    base = torch.randn(d["storage"], generator=gen).to(device=device, dtype=dtype)
    return base.as_strided(d["shape"], d["stride"], d["offset"])


def replay(path: str) -> int:
    from fastaudio.kernels.attention import attention_ref, flash_attention
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with open(path, encoding="utf-8") as f:
        calls = json.load(f)
    gen = torch.Generator().manual_seed(0)
    for i, c in enumerate(calls):
        label = (f"call {i}: q {tuple(c['q']['shape'])} stride {tuple(c['q']['stride'])}, k "
                 f"{tuple(c['k']['shape'])} stride {tuple(c['k']['stride'])}, {c['dtype']}, mask "
                 f"{'none' if c['mask'] is None else 'yes'}")
        try:
            dtype = getattr(torch, c["dtype"].replace("torch.", ""))
            q, k, v = (_rebuild(c[n], dtype, device, gen) for n in ("q", "k", "v"))
            mask = None if c["mask"] is None else torch.tensor(c["mask"], dtype=torch.bool, device=device)
            out = flash_attention(q, k, v, mask, mask_mode=c["mask_mode"])
            if device == "cuda":
                torch.cuda.synchronize()
            ref = attention_ref(q, k, v, mask, c["mask_mode"])
            err = (out.float() - ref.float()).abs().max().item()
            # fp32: a few ulps through two products; bf16/fp16: the operand rounding
            tol = (1e-4 if dtype == torch.float32 else 3e-2) * max(1.0, ref.float().abs().max().item())
            if not err <= tol:  # NaN (an unwritten output under poisoning) fails too
                print(f"{label}: WRONG, max err {err:.2e} > {tol:.1e}", flush=True)
                return 1
            print(f"{label}: ok, max err {err:.2e}", flush=True)
        except RuntimeError as e:  # a CUDA fault poisons the context: report it and stop
            # (also a recorded view that does not fit its storage: the file is wrong)
            print(f"{label}: FAILED: {e}", flush=True)
            return 1
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    r.add_argument("--preset", default="stable-audio-1.0")
    r.add_argument("--seconds", type=float, default=10.0)
    r.add_argument("--out", default="attention_calls.json")
    sub.add_parser("replay").add_argument("calls")
    a = p.parse_args(argv)
    return record(a.preset, a.seconds, a.out) if a.cmd == "record" else replay(a.calls)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
