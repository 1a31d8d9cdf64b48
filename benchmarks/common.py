"""What every benchmark shares: device metadata, timing, measured peaks, and the results files.

Rows are JSON lines in ``benchmarks/results/<subject>.jsonl``; each row carries the device name,
driver, torch and triton versions, git commit and date, so ``report.py`` can regenerate bench.md
from the files alone and no figure is ever typed by hand. On a machine without CUDA every row says
``device_kind: cpu``.

Timing: a first call (compilation, autotuning, graph capture) is never timed; then the median of
``repeats`` samples, each long enough (~1 ms+) that launch noise does not dominate. On CUDA the
samples are CUDA-event intervals (``time_ms``: what a caller waits for, host path included when
the GPU outruns it).

Kernels are timed twice over, apart (``device_time_ms`` and ``host_time_us``): the device time
of one call is a CUDA graph of 20-50 back-to-back calls replayed and divided by the call count,
so neither the Python path around a 10-25 us kernel nor a replay's own ~5 us submission is
counted; the host time is the wall time of many calls issued without synchronising (the GPU
runs behind, the queue never fills), i.e. what the Python path costs per call.
"""
from __future__ import annotations

import datetime
import functools
import json
import math
import os
import platform
import statistics
import subprocess
import time
import uuid
from typing import Callable, Dict, List, Optional

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# FASTAUDIO_BENCH_RESULTS: another folder (smoke runs that must not touch the committed results)
RESULTS_DIR = os.environ.get("FASTAUDIO_BENCH_RESULTS") or os.path.join(ROOT, "benchmarks", "results")
RUN_ID = uuid.uuid4().hex[:12]  # rows written by one process share it: ratios never cross runs

# Dense bf16 tensor-core peaks in TFLOP/s (vendor figures), for reference beside the measured peak.
VENDOR_BF16_TFLOPS = [("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0)]
VENDOR_HBM_GBS = [("H100 PCIe", 2000.0), ("H100", 3350.0), ("H200", 4800.0), ("A100-SXM4-80GB", 2039.0),
                  ("A100", 1555.0)]


def git_commit() -> str:
    # FASTAUDIO_COMMIT: set by benchmarks/gpu_session.sh, whose copy of the tree has no .git
    if os.environ.get("FASTAUDIO_COMMIT"):
        return os.environ["FASTAUDIO_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        # the benchmarks' own outputs (results files, bench.md, plots) do not make the code dirty:
        # without this, every run after the first in one suite read "+dirty"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)benchmarks/results", ":(exclude)bench.md"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return out + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def triton_version() -> Optional[str]:
    try:
        import triton
        return triton.__version__
    except ImportError:
        return None


@functools.lru_cache(maxsize=1)
def device_meta() -> Dict:
    cuda = torch.cuda.is_available()
    if cuda:
        p = torch.cuda.get_device_properties(0)
        name = torch.cuda.get_device_name(0)
        try:
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            driver = "unknown"
        extra = {"capability": f"sm{p.major}{p.minor}", "memory_gib": round(p.total_memory / 2 ** 30, 1),
                 "cuda": torch.version.cuda}
    else:
        name = f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
        driver, extra = "n/a", {}
    return {"device": name, "device_kind": "cuda" if cuda else "cpu", "driver": driver,
            "torch": torch.__version__, "triton": triton_version(), "commit": git_commit(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "run_id": RUN_ID, "torch_threads": torch.get_num_threads(), **extra}


def vendor_peak(table, name: str) -> Optional[float]:
    for key, value in table:
        if key in name:
            return value
    return None


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_ms(fn: Callable[[], object], device="cpu", repeats: int = 10, min_sample_s: float = 1e-3,
            statistic: Callable[[List[float]], float] = statistics.median) -> float:
    """Milliseconds per call of ``fn``: the median (or ``statistic``) of ``repeats`` samples (the
    first call is a warm-up, never timed)."""
    cuda = torch.device(device).type == "cuda"
    fn()
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    per_call = time.perf_counter() - t0
    inner = max(1, min(100, math.ceil(min_sample_s / max(per_call, 1e-7))))
    # A call of a second or more (SA1.0 on a CPU) came after the warm-up and is timed as well as
    # any: it is the first sample, not thrown away.
    samples = [per_call * 1e3] if per_call >= 1.0 else []
    for _ in range(repeats - len(samples)):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / inner)
        else:
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            samples.append((time.perf_counter() - t0) * 1e3 / inner)
    return statistic(samples)


def device_time_ms(fn: Callable[[], object], device="cuda", calls: Optional[int] = None,
                   replays: int = 10) -> float:
    """Device milliseconds per call of ``fn``: ``calls`` calls (20-50; fewer for long calls)
    captured back to back in one CUDA graph, the graph replayed ``replays`` times between CUDA
    events, the median replay divided by ``calls``. Warm-up calls on a side stream first
    (compilation, autotuning, lazily allocated buffers). Without CUDA: ``time_ms``."""
    if torch.device(device).type != "cuda":
        return time_ms(fn, device)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    if calls is None:  # 50 calls of a short kernel, 20 of one over ~0.5 ms
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        calls = 20 if start.elapsed_time(end) > 0.5 else 50
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()  # the first replay uploads the graph
    torch.cuda.synchronize()
    samples = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / calls)
    del graph
    return statistics.median(samples)


def host_time_us(fn: Callable[[], object], device="cuda", calls: int = 100,
                 repeats: int = 7) -> float:
    """Host microseconds per call: the wall time of ``calls`` calls issued without synchronising
    (median of ``repeats`` bursts, synchronised between bursts, outside the clock). With 100
    calls of a few launches each the launch queue (~1 000 entries) never fills, so the GPU
    running behind does not slow the host down: this is the Python path's cost alone."""
    cuda = torch.device(device).type == "cuda"
    fn()
    sync(device)
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - t0) * 1e6 / calls)
        if cuda:
            torch.cuda.synchronize()
    return statistics.median(samples)


@functools.lru_cache(maxsize=4)
def measured_peaks(device: str = "cpu") -> Dict[str, float]:
    """This device's achievable peaks, measured now: a large matmul (bf16 on CUDA, fp32 on CPU) in
    TFLOP/s and a large copy in GB/s (read + write). Benchmarks report fractions of these."""
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    # A peak is the fastest of several samples, not their median: on the 2-core dev machine the
    # median of a 1024 matmul read 136 GFLOP/s in one run, and SA1.0's large convs then showed
    # 107 % "MFU" against it. CPU: n = 2048 (161 / 174 / 178 / 176 GFLOP/s at 1024-4096, best of 3).
    n = 8192 if cuda else 2048
    dtype = torch.bfloat16 if cuda else torch.float32
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    if cuda:  # device time from a replayed graph of 20 calls, as the kernels are timed
        c = torch.empty(n, n, device=dev, dtype=dtype)
        ms = device_time_ms(lambda: torch.matmul(a, b, out=c), device, calls=20)
    else:
        ms = time_ms(lambda: a @ b, device, repeats=5, statistic=min)
    tflops = 2 * n ** 3 / (ms * 1e-3) / 1e12
    numel = (1 << 28) if cuda else (1 << 25)
    x = torch.empty(numel, device=dev, dtype=torch.float32)
    y = torch.empty_like(x)
    if cuda:
        ms_copy = device_time_ms(lambda: y.copy_(x), device, calls=20)
    else:
        ms_copy = time_ms(lambda: y.copy_(x), device, repeats=3)
    gbs = 2 * numel * 4 / (ms_copy * 1e-3) / 1e9
    return {"matmul_tflops": round(tflops, 3), "matmul_dtype": str(dtype).replace("torch.", ""),
            "matmul_n": n,
            "copy_gbs": round(gbs, 1)}


def save_rows(subject: str, rows: List[Dict], quick: bool) -> str:
    """Mark rows as a --quick smoke run or not, append them, and say where they went."""
    for r in rows:
        r["quick"] = quick
    path = append_rows(subject, rows)
    print(f"{len(rows)} rows appended to {path}")
    return path


class RowWriter:
    """Appends each row the moment it is measured, so a run stopped by a time limit keeps the rows
    it finished (on the first GPU run a timeout lost every finished generation row)."""

    def __init__(self, subject: str, quick: bool):
        self.subject, self.quick, self.count, self.path = subject, quick, 0, None

    def __call__(self, row: Dict) -> None:
        row["quick"] = self.quick
        self.path = append_rows(self.subject, [row])
        self.count += 1

    def report(self) -> None:
        print(f"{self.count} rows appended to {self.path}" if self.count else "no rows written")


def append_rows(subject: str, rows: List[Dict], out: Optional[str] = None) -> str:
    """Append rows (metadata added) to results/<subject>.jsonl; returns the path."""
    path = out or os.path.join(RESULTS_DIR, f"{subject}.jsonl")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    meta = device_meta()
    with open(path, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps({"subject": subject, **meta, **row}) + "\n")
    return path


def read_rows(subject: str) -> List[Dict]:
    path = os.path.join(RESULTS_DIR, f"{subject}.jsonl")
    if not os.path.exists(path):
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def peak_memory_mb(device) -> Optional[float]:
    if torch.device(device).type == "cuda":
        return round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    try:
        import resource
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # process peak RSS
    except (ImportError, AttributeError):
        return None


def reset_peak_memory(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
