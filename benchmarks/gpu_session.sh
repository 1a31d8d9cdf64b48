#!/usr/bin/env bash
# One call on a lent GPU machine (the workplace's `device` tool): install, check, test, benchmark.
#
#   bash benchmarks/gpu_session.sh check   # versions, the whole test suite on the GPU, quick suite
#   bash benchmarks/gpu_session.sh full    # the full benchmark suite, results into benchmarks/results
#
# The machine has torch and triton but none of the reference packages: they travel as wheels in
# .whl/ (see the closing notes for the pip download line). FASTAUDIO_COMMIT names the commit the
# tree was sent from (the copy has no .git). Everything worth keeping is packed into $OUT.
set -uo pipefail
stage=${1:-check}
OUT=${OUT:-/tmp/fastaudio-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 1; }
# no pip install of fastaudio (pip wants to fetch setuptools for the build, and nothing can be
# fetched there): in this throwaway copy, kernels/ becomes fastaudio/kernels as setup.py maps it
[ -e fastaudio/kernels ] || ln -s ../kernels fastaudio/kernels
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv
python3 -c "import torch, triton, fastaudio, fastaudio.kernels; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| triton', triton.__version__, '|', torch.cuda.get_device_name(0))"

if [ "$stage" = check ]; then
  export FASTAUDIO_BENCH_RESULTS="$OUT/quick"
  timeout 300 python3 -m pytest -q -n 8 -p no:cacheprovider --junitxml="$OUT/junit.xml" tests \
      >"$OUT/tests.log" 2>&1
  echo "pytest exit $?"; grep -E "passed|failed|error" "$OUT/tests.log" | tail -3
  grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | head -40
  timeout 280 python3 benchmarks/run_all.py --quick >"$OUT/quick.log" 2>&1
  echo "quick suite exit $?"
  grep -E "Error|error:|failed|Traceback|=====" "$OUT/quick.log" | head -40
  tar czf "$OUT/quick.tgz" -C "$OUT" quick 2>/dev/null
fi

if [ "$stage" = diag ]; then
  ls /dev/nvidia* | head -3; echo "TRITON_INTERPRET=${TRITON_INTERPRET:-unset}"
  timeout 170 python3 -m pytest -q -n 16 -p no:cacheprovider -p no:benchmark --tb=short -rfE --maxfail=25 tests \
      >"$OUT/diag.log" 2>&1
  echo "pytest exit $?"; grep -E "^(FAILED|ERROR)|^E  " "$OUT/diag.log" | sort | uniq -c | sort -rn | head -30
  ( timeout 250 python3 benchmarks/bench_generate.py --windows 10,47,95.1 --modes eager,graph --repeats 2
    timeout 150 python3 benchmarks/bench_vs_reference.py --repeats 2 ) >"$OUT/gen.log" 2>&1
  grep -vE "^\s*$" "$OUT/gen.log" | grep -E "Error|error|RTF|x \||rows|speedup|step|Traceback" | tail -30
  tar czf "$OUT/results.tgz" benchmarks/results
fi

if [ "$stage" = last ]; then
  # the Triton attention kernel faulted (illegal address) at the SA1.0 shapes: time the sdpa path
  export FASTAUDIO_ATTENTION=sdpa
  ( timeout 210 python3 benchmarks/bench_generate.py --windows 10,95.1 --modes graph,eager --repeats 2
    timeout 130 python3 benchmarks/bench_vs_reference.py --repeats 1
    timeout 150 python3 benchmarks/bench_vs_autoregressive.py --seconds 95
    python3 benchmarks/report.py ) >"$OUT/last.log" 2>&1
  grep -E "Error|RTF|x \||rows appended|speedup" "$OUT/last.log" | tail -30
  tar czf "$OUT/results.tgz" benchmarks/results bench.md
fi

if [ "$stage" = full ]; then
  ( timeout 120 python3 benchmarks/bench_kernels.py
    timeout 60 python3 benchmarks/bench_attention.py
    timeout 200 python3 benchmarks/bench_generate.py --repeats 2
    timeout 90 python3 benchmarks/bench_vs_reference.py --repeats 2
    timeout 60 python3 benchmarks/bench_train.py --steps 3
    timeout 200 python3 benchmarks/bench_vs_autoregressive.py --seconds 30,95
    python3 benchmarks/report.py ) >"$OUT/full.log" 2>&1
  grep -E "Error|Traceback|rows appended|RTF|speedup" "$OUT/full.log" | tail -40
  tar czf "$OUT/results.tgz" benchmarks/results bench.md
fi
