"""Find the Triton attention fault: replay SA1.0's attention calls through the kernel, one factor at
a time, each group of cases in a subprocess so that one fault does not end the run.

    python benchmarks/attention_fault_probe.py record --preset stable-audio-1.0 --seconds 10 --out calls.json
    CUDA_LAUNCH_BLOCKING=1 python benchmarks/attention_fault_probe.py replay calls.json
    python benchmarks/attention_fault_probe.py matrix --calls calls.json [--budget 150] [--out rows.jsonl]

Why: the first H100 run (2026-11-22) stopped SA1.0 generation on an illegal memory access with the
Triton attention in the U-Net, while the interpreter finds the kernel's indexing right at every GPU
block size (tests/test_attention.py). ``record`` runs one sampling step on the SDPA path and notes
each distinct call's shapes, strides, storage offsets, dtype and mask; ``replay`` rebuilds those
exact views on fresh random storage and runs the Triton kernel on them alone, so the sanitizer
sees attention and nothing else. On a CPU both run (replay needs TRITON_INTERPRET=1).

``matrix`` varies one factor at a time over every recorded call, forward pass, each case checked
against the fp32 reference:
  * ``autotuned``             the production path (the autotuner times its configs on the call's
                              live tensors, then runs the winner);
  * ``head80-padded``         head dim 80 padded to 128 instead of split 64 + 16 (the 16-wide
                              tail dots are a suspect);
  * ``mask-none`` / ``mask-neg_inf``  the recorded masks dropped, or applied with −inf logits;
  * ``cfg M,N,W,S`` and ``cfg M,N,W,1`` each autotune candidate of this GPU forced alone, with its
                              configured num_stages and with 1 (software pipelining over the 1-2
                              iterations of a 79-key loop is a suspect);
  * ``generate``              SA1.0 generation itself with FASTAUDIO_ATTENTION=triton (graph mode,
                              2 steps), cuDNN convs: rules misattribution in or out (the Triton
                              conv was the default in the faulting run).
Cases run with CUDA_LAUNCH_BLOCKING=1 and a synchronise after every call, so a fault is charged
to the right case; a subprocess that dies is restarted after its faulting case. Then the first
faulting case runs again under ``compute-sanitizer --tool memcheck`` when it is installed. One
JSON row per case goes to ``--out`` (and the results folder's attention_probe.jsonl) as it ends.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

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


# ------------------------------------------------------------------------------------------------
# The matrix
# ------------------------------------------------------------------------------------------------
def cases_for(major: int, interpret: bool) -> list:
    """The matrix's cases, most suspected first (a time budget cuts the tail)."""
    from fastaudio.kernels.attention import forward_candidates
    cases = [{"name": "autotuned"}, {"name": "head80-padded", "head80": "padded"},
             {"name": "mask-none", "mask": "none"}, {"name": "mask-neg_inf", "mask": "neg_inf"}]
    configs = [(32, 32, 4, 1)] if interpret else forward_candidates(major)
    for m, n, w, st in configs:
        cases.append({"name": f"cfg {m},{n},{w},{st}", "config": [m, n, w, st]})
        if st != 1:
            cases.append({"name": f"cfg {m},{n},{w},1", "config": [m, n, w, 1]})
    return cases


def run_case(case: dict, calls: list, device: str) -> dict:
    """Every recorded call through the kernel under one case's settings; the first failure."""
    from fastaudio.kernels.attention import _fwd_launch, attention_ref, head_dim_split
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for i, c in enumerate(calls):
        dtype = getattr(torch, c["dtype"].replace("torch.", ""))
        q, k, v = (_rebuild(c[n], dtype, device, gen) for n in ("q", "k", "v"))
        mask = None if c["mask"] is None else torch.tensor(c["mask"], dtype=torch.bool, device=device)
        mode = c["mask_mode"]
        if case.get("mask") == "none":
            mask = None
        elif case.get("mask") == "neg_inf":
            mode = "neg_inf"
        D = q.shape[-1]
        split = None
        if case.get("head80") == "padded" and head_dim_split(D)[1]:
            split = (max(16, 1 << (D - 1).bit_length()), 0)
        config = tuple(case["config"]) if "config" in case else None
        out, _ = _fwd_launch(q, k, v, mask, mode if mask is not None else "zero",
                             D ** -0.5, config=config, head_split=split)
        if device == "cuda":
            torch.cuda.synchronize()
        ref = attention_ref(q, k, v, mask, mode if mask is not None else "zero")
        err = (out.float() - ref.float()).abs().max().item()
        tol = (1e-4 if dtype == torch.float32 else 3e-2) * max(1.0, ref.float().abs().max().item())
        if not err <= tol:
            return {"status": "wrong", "call": i, "err": err, "tol": tol,
                    "q": c["q"]["shape"], "k": c["k"]["shape"]}
        worst = max(worst, err)
    return {"status": "ok", "calls": len(calls), "max_err": worst}


def cases_main(calls_path: str, cases_json: str) -> int:
    """Run cases in this process, one JSON line each ("start" before, the result after)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with open(calls_path, encoding="utf-8") as f:
        calls = json.load(f)
    for case in json.loads(cases_json):
        print("START " + json.dumps(case["name"]), flush=True)
        t0 = time.time()
        try:
            res = run_case(case, calls, device)
        except Exception as e:  # a CUDA fault poisons the context: report it and stop
            print("RESULT " + json.dumps({"case": case["name"], "status": "error",
                                          "error": f"{type(e).__name__}: {e}"[:500],
                                          "s": round(time.time() - t0, 2)}), flush=True)
            return 1
        print("RESULT " + json.dumps({"case": case["name"], **res, "s": round(time.time() - t0, 2)}),
              flush=True)
    return 0


def generate_case(preset: str, seconds: float) -> int:
    """SA1.0 generation with the Triton attention (graph mode on CUDA, 2 steps), cuDNN convs."""
    from fastaudio.nn.attention import set_attention_backend
    from fastaudio.pipeline import StableAudio, random_weights_model
    set_attention_backend("triton")
    cuda = torch.cuda.is_available()
    pipe = StableAudio(random_weights_model(preset, seed=0), device="cuda" if cuda else "cpu",
                       dtype="bf16" if cuda else "fp32", execution="graph" if cuda else "eager")
    out = pipe.generate("a probe prompt", seconds_total=seconds, window=seconds, steps=2, seed=0)
    if cuda:
        torch.cuda.synchronize()
    ok = bool(torch.isfinite(out.audio).all())
    print("RESULT " + json.dumps({"case": "generate", "status": "ok" if ok else "wrong",
                                  "finite": ok}), flush=True)
    return 0 if ok else 1


def _emit(row: dict, out: str) -> None:
    row = {**row, "t": time.strftime("%H:%M:%S")}
    print(json.dumps(row), flush=True)
    if out:
        with open(out, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
    try:  # beside the benchmark rows too (device, versions, commit)
        if os.path.dirname(os.path.abspath(__file__)) not in sys.path:
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from common import append_rows
        append_rows("attention_probe", [row])
    except Exception:  # noqa: BLE001 - the probe's own file has the row
        pass


def matrix(calls_path: str, budget: float, out: str, preset: str, seconds: float,
           with_generate: bool, per_case_s: float) -> int:
    t_start = time.time()
    left = lambda: budget - (time.time() - t_start)  # noqa: E731
    env = {**os.environ, "CUDA_LAUNCH_BLOCKING": "1"}
    me = os.path.abspath(__file__)
    if not os.path.exists(calls_path):
        r = subprocess.run([sys.executable, me, "record", "--preset", preset, "--seconds", str(seconds),
                            "--out", calls_path], env=env, capture_output=True, text=True,
                           timeout=max(10, left()))
        print(r.stdout[-500:], r.stderr[-1500:])
        if r.returncode != 0:
            _emit({"case": "record", "status": "error", "error": r.stderr[-800:]}, out)
            return 1
    major = torch.cuda.get_device_capability()[0] if torch.cuda.is_available() else 8
    pending = cases_for(major, os.environ.get("TRITON_INTERPRET") == "1")
    first_fault = None
    while pending and left() > 5:
        names = [c["name"] for c in pending]
        cmd = [sys.executable, me, "cases", calls_path, json.dumps(pending)]
        started, results = None, {}
        try:
            r = subprocess.run(cmd, env=env, capture_output=True, text=True,
                               timeout=max(5, min(left(), per_case_s * len(pending))))
            stdout, stderr, rc = r.stdout, r.stderr, r.returncode
        except subprocess.TimeoutExpired as e:
            stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            stderr = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
            rc = "timeout"
        for line in stdout.splitlines():
            if line.startswith("START "):
                started = json.loads(line[6:])
            elif line.startswith("RESULT "):
                res = json.loads(line[7:])
                results[res["case"]] = res
                _emit(res, out)
                if res["status"] != "ok" and first_fault is None:
                    first_fault = res["case"]
        done = [n for n in names if n in results]
        if started is not None and started not in results:  # it died inside this case
            row = {"case": started, "status": "timeout" if rc == "timeout" else "crash",
                   "returncode": rc, "stderr": stderr[-1200:]}
            _emit(row, out)
            done.append(started)
            if first_fault is None:
                first_fault = started
        pending = [c for c in pending if c["name"] not in done]
        if rc == "timeout" or not done:
            break
    if with_generate and left() > 30:
        try:
            r = subprocess.run([sys.executable, me, "generate", "--preset", preset, "--seconds",
                                str(seconds)], env=env, capture_output=True, text=True,
                               timeout=left())
            status = "ok" if r.returncode == 0 else "fault"
            _emit({"case": "generate", "status": status, "returncode": r.returncode,
                   "stderr": "" if r.returncode == 0 else r.stderr[-1200:]}, out)
        except subprocess.TimeoutExpired:
            _emit({"case": "generate", "status": "timeout"}, out)
    if pending:
        _emit({"case": "not run (budget)", "status": "skipped", "cases": [c["name"] for c in pending]}, out)
    sanitizer = shutil.which("compute-sanitizer")
    if first_fault is not None and first_fault != "generate" and sanitizer and left() > 20:
        case = [c for c in cases_for(major, False) if c["name"] == first_fault]
        try:
            r = subprocess.run([sanitizer, "--tool", "memcheck", "--print-limit", "5", sys.executable,
                                me, "cases", calls_path, json.dumps(case)], env=env,
                               capture_output=True, text=True, timeout=left())
            log = (r.stdout + r.stderr)[-3000:]
        except subprocess.TimeoutExpired as e:
            log = f"timeout: {str(e.stdout)[-2500:]}"
        _emit({"case": first_fault, "status": "sanitizer", "log": log}, out)
    elif first_fault is not None and not sanitizer:
        _emit({"case": first_fault, "status": "sanitizer", "log": "compute-sanitizer not found"}, out)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    r.add_argument("--preset", default="stable-audio-1.0")
    r.add_argument("--seconds", type=float, default=10.0)
    r.add_argument("--out", default="attention_calls.json")
    sub.add_parser("replay").add_argument("calls")
    c = sub.add_parser("cases", help="(internal) run cases given as JSON in this process")
    c.add_argument("calls")
    c.add_argument("cases")
    gcmd = sub.add_parser("generate", help="(internal) generation with the Triton attention")
    gcmd.add_argument("--preset", default="stable-audio-1.0")
    gcmd.add_argument("--seconds", type=float, default=10.0)
    m = sub.add_parser("matrix")
    m.add_argument("--calls", default="attention_calls.json", help="recorded first if missing")
    m.add_argument("--preset", default="stable-audio-1.0")
    m.add_argument("--seconds", type=float, default=10.0)
    m.add_argument("--budget", type=float, default=150.0, help="seconds for the whole matrix")
    m.add_argument("--per-case", type=float, default=30.0, help="seconds allowed per case")
    m.add_argument("--out", default="", help="JSON lines file the rows are appended to")
    m.add_argument("--no-generate", action="store_true")
    a = p.parse_args(argv)
    if a.cmd == "record":
        return record(a.preset, a.seconds, a.out)
    if a.cmd == "replay":
        return replay(a.calls)
    if a.cmd == "cases":
        return cases_main(a.calls, a.cases)
    if a.cmd == "generate":
        return generate_case(a.preset, a.seconds)
    return matrix(a.calls, a.budget, a.out, a.preset, a.seconds, not a.no_generate, a.per_case)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
