#!/usr/bin/env bash
# One call on a lent GPU machine (the workplace's `device` tool): set up, then one stage.
#
#   FASTAUDIO_COMMIT=$(git rev-parse --short HEAD) bash benchmarks/gpu_session.sh STAGE
#
# Stages (each sized to end inside one 10-minute call; the machine's start costs ~1 min more):
#   tests      the kernel and attention tests on the GPU, file by file, with the failure reasons
#   fault      the Triton attention fault in SA1.0 generation, synchronous launches + sanitizer
#   profile    the top kernels of SA1.0 sampling at 10 s (table + Chrome trace)
#   generate   SA1.0 generation 10-95 s, graph mode (rows saved as they are measured)
#   reference  against stable-audio-tools at 95 s
#   musicgen   against MusicGen-large at 95 s
#   kernels    kernel and attention micro-benchmarks (full, not --quick)
#
# Before the first call, on the development machine (.whl/ is git-ignored and travels as `carry`):
#   echo /.whl/ >> .git/info/exclude
#   for p in soundfile==0.14.0 cffi pycparser soxr==1.1.0 einops-exts==0.0.4 auraloss==0.4.0 \
#            torchsde==0.2.6 trampoline==0.1.2 k-diffusion==0.1.1 stable-audio-tools==0.0.19 \
#            descript-audio-codec==1.0.0; do
#     pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl $p
#   done
#   pip download -q --no-deps --no-binary=:all: -d /tmp/sd encodec==0.1.1 && pip wheel -q --no-deps -w .whl /tmp/sd/encodec-0.1.1.tar.gz
#
# What the first calls (H100, 2026-11-22) taught: the image has torch 2.11 + triton 3.6 but none
# of the reference packages (hence the wheels); `pip install -e .` fails there (its build wants to fetch setuptools); the whole
# test suite did not finish in 300 s with 8 workers; building the SA1.0 model and capturing its
# graphs takes minutes, so one benchmark per call. Results come back packed in $OUT.
set -uo pipefail
stage=${1:?stage: tests, fault, profile, generate, reference, musicgen or kernels}
OUT=${OUT:-/tmp/fastaudio-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 1; }
# in this throwaway copy, kernels/ becomes fastaudio/kernels as setup.py maps it
[ -e fastaudio/kernels ] || ln -s ../kernels fastaudio/kernels
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv
python3 -c "import torch, triton, fastaudio, fastaudio.kernels; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| triton', triton.__version__, '|', torch.cuda.get_device_name(0))"

pack() { tar czf "$OUT/results.tgz" benchmarks/results bench.md 2>/dev/null; }

case "$stage" in
tests)
  for f in test_kernel_snake test_kernel_group_norm test_kernel_conv1d test_attention test_nn_dispatch \
           test_unet test_vae test_pipeline; do
    timeout 100 python3 -m pytest -q -n 8 -p no:cacheprovider -p no:benchmark --timeout=90 --tb=line \
        -rfE "tests/$f.py" >"$OUT/$f.log" 2>&1
    echo "== $f: exit $? | $(grep -E '^[0-9]+ (passed|failed)|passed|failed' "$OUT/$f.log" | tail -1)"
    grep -E "^(FAILED|ERROR)" "$OUT/$f.log" | cut -c1-220 | head -6
  done
  tar czf "$OUT/test-logs.tgz" -C "$OUT" $(cd "$OUT" && ls *.log) ;;
fault)
  export FASTAUDIO_ATTENTION=triton CUDA_LAUNCH_BLOCKING=1
  timeout 200 python3 benchmarks/bench_generate.py --windows 10 --modes eager --steps 2 --repeats 1 \
      >"$OUT/fault.log" 2>&1
  echo "synchronous run: exit $?"; grep -B2 -A3 -E "Error|error" "$OUT/fault.log" | grep -v "^\s*$" | tail -25
  timeout 300 compute-sanitizer --tool memcheck --print-limit 5 python3 benchmarks/bench_attention.py \
      --quick --backends triton --no-write >"$OUT/sanitizer.log" 2>&1
  echo "sanitizer: exit $?"; tail -25 "$OUT/sanitizer.log" ;;
profile)
  # where SA1.0's 21.5 ms guided step at 10 s went (2.5 % of the matmul peak on the first H100 run)
  timeout 400 python3 -m fastaudio.cli profile --preset stable-audio-1.0 --seconds 10 --steps 5 --dtype bf16 \
      --trace "$OUT/trace.json" --top 40 >"$OUT/profile.log" 2>&1
  echo "exit $?"; tail -50 "$OUT/profile.log"; gzip -f "$OUT/trace.json" ;;
generate)
  timeout 560 python3 benchmarks/bench_generate.py --windows 10,30,95.1 --modes graph,eager --repeats 2 \
      >"$OUT/generate.log" 2>&1
  echo "exit $?"; grep -E "RTF|Error" "$OUT/generate.log" | tail -20; python3 benchmarks/report.py; pack ;;
reference)
  timeout 560 python3 benchmarks/bench_vs_reference.py --repeats 2 >"$OUT/reference.log" 2>&1
  echo "exit $?"; grep -E "x \(|Error" "$OUT/reference.log" | tail -20; python3 benchmarks/report.py; pack ;;
musicgen)
  timeout 560 python3 benchmarks/bench_vs_autoregressive.py --seconds 95 >"$OUT/musicgen.log" 2>&1
  echo "exit $?"; grep -E "x$|Error" "$OUT/musicgen.log" | tail -20; python3 benchmarks/report.py; pack ;;
kernels)
  ( timeout 250 python3 benchmarks/bench_kernels.py; timeout 250 python3 benchmarks/bench_attention.py ) \
      >"$OUT/kernels.log" 2>&1
  echo "exit $?"; grep -E "ms |Error" "$OUT/kernels.log" | tail -40; python3 benchmarks/report.py; pack ;;
*)
  echo "unknown stage $stage"; exit 2 ;;
esac
