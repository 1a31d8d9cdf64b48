#!/usr/bin/env bash
# One call on a lent GPU machine (the workplace's `device` tool): set up, then one stage.
#
#   FASTAUDIO_COMMIT=<hash> bash benchmarks/gpu_session.sh STAGE
#
# (the command runs on the device, whose copy has no .git: write the hash of the commit you sent,
# from `git rev-parse --short HEAD` here, into the command)
#
# Stages (each sized to end inside one 10-minute call; the machine's start costs ~1 min more):
#   tests      the kernel and attention tests on the GPU, file by file, with the failure reasons
#   tests2     the model, pipeline and dispatch tests on the GPU, likewise
#   fault      the Triton attention fault: SA1.0's attention calls replayed one by one (synchronous,
#              then under compute-sanitizer), benchmarks/attention_fault_probe.py
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
tests|tests2)
  # pytest-timeout is in the image (KINDS.md's package list): one hung test cannot eat the call
  files="test_kernel_snake test_kernel_group_norm test_kernel_conv1d test_attention"
  [ "$stage" = tests2 ] && files="test_nn_dispatch test_unet test_vae test_pipeline"
  for f in $files; do
    timeout 120 python3 -m pytest -q -n 8 -p no:cacheprovider -p no:benchmark --timeout=100 --tb=line \
        -rfE "tests/$f.py" >"$OUT/$f.log" 2>&1
    echo "== $f: exit $? | $(grep -E 'passed|failed' "$OUT/$f.log" | tail -1)"
    grep -E "^(FAILED|ERROR)" "$OUT/$f.log" | cut -c1-220 | head -6
  done
  tar czf "$OUT/test-logs.tgz" -C "$OUT" $(cd "$OUT" && ls *.log) ;;
fault)
  export FASTAUDIO_BENCH_RESULTS="$OUT/scratch"  # nothing from this stage goes into the results
  timeout 150 python3 benchmarks/attention_fault_probe.py record --preset stable-audio-1.0 --seconds 10 \
      --out "$OUT/calls.json" >"$OUT/probe.log" 2>&1
  echo "record (SDPA path): exit $?"; tail -2 "$OUT/probe.log"
  CUDA_LAUNCH_BLOCKING=1 timeout 120 python3 benchmarks/attention_fault_probe.py replay "$OUT/calls.json" \
      >>"$OUT/probe.log" 2>&1
  echo "replay through the Triton kernel, synchronous: exit $?"; tail -8 "$OUT/probe.log"
  timeout 250 compute-sanitizer --tool memcheck --print-limit 5 python3 benchmarks/attention_fault_probe.py \
      replay "$OUT/calls.json" >"$OUT/sanitizer.log" 2>&1
  echo "sanitizer: exit $?"; tail -25 "$OUT/sanitizer.log" ;;
profile)
  # where SA1.0's 21.5 ms guided step at 10 s went (2.5 % of the matmul peak on the first H100 run)
  timeout 400 python3 -m fastaudio.cli profile --preset stable-audio-1.0 --seconds 10 --steps 5 --dtype bf16 \
      --trace "$OUT/trace.json" --top 40 >"$OUT/profile.log" 2>&1
  echo "exit $?"; tail -50 "$OUT/profile.log"; gzip -f "$OUT/trace.json" ;;
generate)
  timeout 480 python3 benchmarks/bench_generate.py --windows 10,30,95.1 --modes graph,eager --repeats 2 \
      >"$OUT/generate.log" 2>&1
  echo "exit $?"; grep -E "RTF|Error" "$OUT/generate.log" | tail -20; python3 benchmarks/report.py; pack ;;
reference)
  timeout 480 python3 benchmarks/bench_vs_reference.py --repeats 2 >"$OUT/reference.log" 2>&1
  echo "exit $?"; grep -E "x \(|Error" "$OUT/reference.log" | tail -20; python3 benchmarks/report.py; pack ;;
musicgen)
  timeout 480 python3 benchmarks/bench_vs_autoregressive.py --seconds 95 >"$OUT/musicgen.log" 2>&1
  echo "exit $?"; grep -E "x$|Error" "$OUT/musicgen.log" | tail -20; python3 benchmarks/report.py; pack ;;
kernels)
  timeout 240 python3 benchmarks/bench_kernels.py >"$OUT/kernels.log" 2>&1; echo "kernels: exit $?"
  timeout 240 python3 benchmarks/bench_attention.py >>"$OUT/kernels.log" 2>&1; echo "attention: exit $?"
  grep -E "ms |Error" "$OUT/kernels.log" | tail -40; python3 benchmarks/report.py; pack ;;
*)
  echo "unknown stage $stage"; exit 2 ;;
esac
