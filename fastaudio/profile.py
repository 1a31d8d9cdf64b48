"""``fastaudio profile``: a few sampler steps under torch.profiler.

Prints the top kernels (CUDA) or operators (CPU) by self time as a table and writes a Chrome
trace (open it in chrome://tracing or Perfetto). A warm-up generation runs first, untraced, so the
trace shows steady-state steps, not compilation, autotuning or graph capture.
"""
from __future__ import annotations

from torch.profiler import ProfilerActivity, profile


def run_profile(pipe, seconds: float = 10.0, steps: int = 3, trace: str = "fastaudio-trace.json",
                top: int = 25) -> None:
    cuda = pipe.device.type == "cuda"
    window = min(seconds, pipe.config.window_seconds)
    kwargs = dict(seconds_total=window, steps=steps, seed=0, window=window)
    pipe.generate("profiling run", **kwargs)  # warm-up: allocator, autotune, graph capture
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, record_shapes=False) as prof:
        out = pipe.generate("profiling run", **kwargs)
    sort = "self_device_time_total" if cuda else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=top))
    t = out.timings
    print("stages: " + "  ".join(f"{k} {v * 1e3:.1f} ms" for k, v in t.items())
          + f"  ({steps} steps, {window:g} s window, {pipe.device.type}, "
          f"{str(pipe.dtype).replace('torch.', '')}, {pipe.execution})")
    prof.export_chrome_trace(trace)
    print(f"Chrome trace: {trace}")
