"""Run the whole benchmark suite on this machine, then regenerate bench.md.

    python benchmarks/run_all.py            # full suite (on an A100/H100: SA1.0 at 10–95 s;
                                            # Stable Audio Open's CPU comparisons run on the CPU)
    python benchmarks/run_all.py --quick    # smoke run of every benchmark

Each benchmark appends its rows to benchmarks/results/<subject>.jsonl; report.py then shows the
newest run per device and preset. A benchmark that fails is reported and the others still run.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import traceback

SUITE = ["bench_kernels", "bench_attention", "bench_generate", "bench_train", "bench_vs_reference",
         "bench_open_vs_reference", "bench_open_cpu_options", "bench_vs_autoregressive"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", help="comma-separated subset of " + ",".join(SUITE))
    a = p.parse_args(argv)
    chosen = a.only.split(",") if a.only else SUITE
    failed = []
    for name in chosen:
        print(f"\n===== {name} =====", flush=True)
        try:
            importlib.import_module(name).main(["--quick"] if a.quick else [])
        except Exception:  # keep going: one broken benchmark must not hide the others
            traceback.print_exc()
            failed.append(name)
    import report
    report.main([])
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
