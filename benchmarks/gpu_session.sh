#!/usr/bin/env bash
# The prepared device session: ONE call of at most 9 minutes on a lent GPU machine (the
# workplace's `run` tool; a session has 15 minutes of device time in all, start-up included).
#
#   bash benchmarks/gpu_session.sh --prepare [REV]   # here, first: .old_kernels/ (the kernels of
#                                                    # REV, default ab3c1b5, before issue 24) and,
#                                                    # if asked (WHEELS=1), .whl/; both git-ignored
#   bash benchmarks/gpu_session.sh --dry-run         # here, on the CPU: every Python part on tiny
#                                                    # shapes (kernels in the Triton interpreter)
#   FASTAUDIO_COMMIT=<hash> bash benchmarks/gpu_session.sh     # on the device: the whole session
#   FASTAUDIO_COMMIT=<hash> bash benchmarks/gpu_session.sh SECTION [SECTION...]   # some sections
#
# Device call: run(command="FASTAUDIO_COMMIT=$(git rev-parse --short HEAD) bash
# benchmarks/gpu_session.sh", carry=[".old_kernels", ".whl"], timeout_s=600) after WHEELS=1 --prepare.
# The device's copy has no .git, hence FASTAUDIO_COMMIT. Every row is appended to
# $OUT/results/*.jsonl the moment it is measured (FASTAUDIO_BENCH_RESULTS), and every section's
# log goes to $OUT/<section>.log, so a section cut by its time limit, or the whole call cut by
# the tool, loses nothing already measured. Copy $OUT/results/*.jsonl into benchmarks/results/
# and run benchmarks/report.py to bring the rows into bench.md.
#
# Sections, in order, each under its own time limit (seconds, cut to what is left of
# FASTAUDIO_SESSION_S, default 530):
#   env       (20)  nvidia-smi, versions, measured copy bandwidth and bf16 matmul peak
#   checks    (70)  every kernel against an fp64 reference at the real shapes, outputs poisoned,
#                   forward and backward, incl. SnakeBeta over 6×96×4 194 304 (offsets past 2^31);
#                   the GPU-only tests (compiled fast sine, concurrent dα reduction)
#   kernels   (110) device time (graph of 20-50 calls, replayed) and host time (calls without
#                   sync) of eager, torch.compile, our new kernels through the nn layers (eager
#                   and compiled) and the pre-issue-24 kernels; conv vs cuDNN (benchmark mode),
#                   in (B, C, L) memory (gather kernel) and channels-last (implicit GEMM, NHWC)
#   generate  (120) SA1.0 generation, CUDA graphs, bf16, 100 steps, cfg 7: 10 s and 95.1 s
#   open      (130) Stable Audio Open Small (11.9 s, 8 steps) and SAO 1.0 (47.55 s, 100 steps,
#                   cfg 7), bf16, CUDA graphs: against stable-audio-tools' generate_diffusion_cond
#                   on the same GPU and weights (benchmarks/bench_open_vs_reference.py) when the
#                   reference is installed (WHEELS=1 --prepare, carry .whl), else fastaudio alone
#                   (StableAudio.from_preset(...).generate(...).timings)
#   attention (rest) benchmarks/attention_fault_probe.py matrix (record, one factor at a time in
#                   subprocesses, CUDA_LAUNCH_BLOCKING=1, compute-sanitizer on the first fault,
#                   SA1.0 generation with the Triton attention)
# Sections only run when named: tests, tests2 (the test files on the GPU), fault (= attention),
# profile (SA1.0 sampling's top kernels), reference (vs stable-audio-tools at 95 s, needs the
# reference wheels: `pip download` them into .whl/ and carry it), musicgen.
#
# What the first calls (H100, 2026-11-22) taught: the image had torch 2.11 + triton 3.6 but none
# of the reference packages; `pip install -e .` fails there (its build wants to fetch
# setuptools), so kernels/ is linked as fastaudio/kernels and the tree put on PYTHONPATH; building
# SA1.0 and capturing its graphs takes minutes.
set -uo pipefail
cd "$(dirname "$0")/.."

prepare() {
  local rev=${1:-ab3c1b5}
  mkdir -p .git/info
  for p in /.old_kernels/ /.whl/; do
    grep -qxF "$p" .git/info/exclude 2>/dev/null || echo "$p" >> .git/info/exclude
  done
  rm -rf .old_kernels && mkdir .old_kernels && : > .old_kernels/__init__.py
  git show "$rev:kernels/_common.py" > .old_kernels/_common.py || return 1
  for f in group_norm snake; do  # their own torch.library namespace: both sets load side by side
    git show "$rev:kernels/$f.py" | sed -e 's/fastaudio::/fastaudio_v1::/g' \
      -e 's/torch\.ops\.fastaudio\./torch.ops.fastaudio_v1./g' > ".old_kernels/$f.py" || return 1
  done
  echo "prepared .old_kernels/ from $rev"
  if [ "${WHEELS:-0}" = 1 ]; then
    # The open models need transformers (T5) with its dependencies; the `open` section's
    # comparison needs stable-audio-tools and k-diffusion's sampler (their own dependency lists
    # pull torchaudio, gradio and more: only what tests/reference_impl.py imports). numpy and
    # scipy stay out (the image has numpy under torch; scipy is stubbed by reference_impl), so
    # the folder stays under the 64 MiB that a call carries.
    local plat=(--only-binary=:all: --python-version 3.12 --implementation cp
                --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
                --platform manylinux2014_x86_64)
    rm -rf .whl && mkdir .whl
    pip download -q "${plat[@]}" -d .whl transformers==5.25.0 || echo "transformers download failed"
    pip download -q --no-deps "${plat[@]}" -d .whl stable-audio-tools==0.0.19 k-diffusion==0.1.1 \
      einops einops-exts torchsde trampoline torchdiffeq || echo "reference download failed"
    rm -f .whl/numpy-*.whl .whl/scipy-*.whl
    echo "prepared .whl/: $(ls .whl | wc -l) wheels, $(du -sm .whl | cut -f1) MB (carry: 64 MiB in all)"
  fi
}

mode=${1:-all}
if [ "$mode" = "--prepare" ]; then prepare "${2:-}"; exit $?; fi

DRY=0
if [ "$mode" = "--dry-run" ]; then
  DRY=1; shift
  export TRITON_INTERPRET=1
  OUT=${OUT:-$(mktemp -d /tmp/gpu-session-dry.XXXXXX)}
fi
OUT=${OUT:-/tmp/fastaudio-out}
mkdir -p "$OUT/results"
export FASTAUDIO_BENCH_RESULTS="$OUT/results" PYTHONUNBUFFERED=1 FASTAUDIO_POISON=1
TOTAL=${FASTAUDIO_SESSION_S:-530}
T0=$(date +%s)
left() { echo $(( TOTAL - ($(date +%s) - T0) )); }
budget() {  # min(wanted, what is left minus a margin), at least 1
  local want=$1 l; l=$(( $(left) - 5 ))
  [ "$l" -lt "$want" ] && want=$l
  [ "$want" -lt 1 ] && want=1
  echo "$want"
}
section() { echo "== $1 | t+$(( $(date +%s) - T0 )) s | $(left) s left"; }

if [ "$DRY" = 0 ]; then
  [ -e fastaudio/kernels ] || ln -s ../kernels fastaudio/kernels
  export PYTHONPATH=/tmp/site:$PWD
  if ls .whl/*.whl >/dev/null 2>&1; then  # reference packages (and transformers) if carried
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
      || echo "wheel install failed"
  fi
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
OLD=()
[ -f .old_kernels/__init__.py ] && OLD=(--old .old_kernels)

run_env() {
  section env
  command -v nvidia-smi >/dev/null && \
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv
  timeout -k 5 "$(budget 20)" python3 - <<'PY' 2>&1 | tee "$OUT/env.log"
import sys
sys.path.insert(0, "benchmarks")
import torch, triton
from common import RowWriter, device_meta, measured_peaks
dev = "cuda" if torch.cuda.is_available() else "cpu"
meta = device_meta()
print("torch", torch.__version__, "cuda", torch.version.cuda, "| triton", triton.__version__, "|",
      meta["device"], meta.get("capability", ""))
peaks = measured_peaks(dev)
print("measured peaks:", peaks)
RowWriter("session", False)({"what": "peaks", **peaks})
PY
}

run_checks() {
  section checks
  local tiny=(); [ "$DRY" = 1 ] && tiny=(--tiny)
  timeout -k 5 "$(budget 50)" python3 benchmarks/bench_kernels.py --check "${tiny[@]}" \
    >"$OUT/checks.log" 2>&1
  echo "checks: exit $?"; grep -E "FAIL|checks:|Error" "$OUT/checks.log" | tail -15
  if [ "$DRY" = 0 ]; then
    timeout -k 5 "$(budget 40)" python3 -m pytest -q -p no:cacheprovider -m gpu --tb=short \
      tests/test_kernel_snake.py -k "fast_sine or last_arriver" >"$OUT/gpu_tests.log" 2>&1
    echo "gpu tests: exit $? | $(grep -E 'passed|failed|error' "$OUT/gpu_tests.log" | tail -1)"
  fi
}

run_kernels() {
  section kernels
  local args=(--compile-shapes 1 "${OLD[@]}")
  [ "$DRY" = 1 ] && args=(--tiny --no-compile --ops gn,snake,conv "${OLD[@]}")
  timeout -k 5 "$(budget 110)" python3 benchmarks/bench_kernels.py "${args[@]}" \
    >"$OUT/kernels.log" 2>&1
  echo "kernels: exit $?"; grep -E " ms|FAILED|Error" "$OUT/kernels.log" | tail -60
}

run_generate() {
  section generate
  local args=(--preset stable-audio-1.0 --windows 10,95.1 --modes graph --steps 100
              --cfg-scale 7 --repeats 1 --decode-seconds none --dtype bf16)
  [ "$DRY" = 1 ] && args=(--preset tiny --windows 1 --modes eager --steps 2 --repeats 1
                          --decode-seconds none --quick)
  timeout -k 5 "$(budget 120)" python3 benchmarks/bench_generate.py "${args[@]}" \
    >"$OUT/generate.log" 2>&1
  echo "generate: exit $?"; grep -E "total|Error" "$OUT/generate.log" | tail -6
}

run_attention() {
  section attention
  local b; b=$(budget 130)
  local args=(matrix --calls "$OUT/attention_calls.json" --out "$OUT/attention_probe.jsonl"
              --budget $(( b - 5 > 1 ? b - 5 : 1 )) --preset stable-audio-1.0 --seconds 10)
  [ "$DRY" = 1 ] && args=(matrix --calls "$OUT/attention_calls.json" --out "$OUT/attention_probe.jsonl"
                          --budget 120 --preset tiny --seconds 1 --no-generate)
  timeout -k 5 "$b" python3 benchmarks/attention_fault_probe.py "${args[@]}" \
    >"$OUT/attention.log" 2>&1
  echo "attention: exit $?"
  python3 - "$OUT/attention_probe.jsonl" <<'PY'
import json, sys
try:
    rows = [json.loads(l) for l in open(sys.argv[1])]
except OSError:
    rows = []
for r in rows:
    extra = r.get("error") or r.get("stderr", "")[-200:] or r.get("log", "")[-300:] or ""
    err = r.get("max_err", r.get("err"))
    err = f"{err:.2e}" if isinstance(err, float) else ""
    print(f"  {r.get('case', '?'):22s} {r.get('status', '?'):9s} {err:9s} {extra}".rstrip())
PY
}

run_open() {
  section open
  if [ "$DRY" = 0 ] && python3 -c "import sys; sys.path.insert(0, 'tests'); import reference_impl as R; R.sat()" \
      >"$OUT/open_reference_import.log" 2>&1; then
    run_open_vs_reference; return
  fi
  [ "$DRY" = 0 ] && echo "stable-audio-tools not loadable here (see open_reference_import.log): fastaudio alone"
  local cases=("stable-audio-open-small 11.9 8 1" "stable-audio-open-1.0 47.55 100 7")
  [ "$DRY" = 1 ] && cases=("tiny 1 1 1")
  for c in "${cases[@]}"; do
    # shellcheck disable=SC2086
    timeout -k 5 "$(budget 60)" python3 - $c <<'PY' >>"$OUT/open.log" 2>&1
import sys, time
sys.path.insert(0, "benchmarks")
import torch
import fastaudio
from common import RowWriter, peak_memory_mb, reset_peak_memory
name, seconds, steps, cfg = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
cuda = torch.cuda.is_available()
device = "cuda" if cuda else "cpu"
t0 = time.time()
pipe = fastaudio.StableAudio.from_preset(name, device=device, dtype="bf16" if cuda else "fp32")
build_s = time.time() - t0
kw = dict(seconds_total=seconds, steps=steps, cfg_scale=cfg, seed=0)
t0 = time.time()
pipe.generate("warm-up", **kw)  # compilation, autotuning, graph capture
warm_s = time.time() - t0
reset_peak_memory(device)
out = pipe.generate("a benchmark prompt", **kw)
row = {"what": "generate_open", "preset": name, "seconds_audio": seconds, "steps": steps,
       "cfg_scale": cfg, "dtype": str(pipe.dtype).replace("torch.", ""),
       "execution": pipe.execution, "build_s": round(build_s, 2), "first_call_s": round(warm_s, 3),
       **{f"{k}_s": round(v, 4) for k, v in out.timings.items()},
       "peak_memory_mb": peak_memory_mb(device)}
RowWriter("session", False)(row)
print(row)
PY
    echo "open $c: exit $?"
  done
  grep -E "generate_open|Error" "$OUT/open.log" | tail -4
}

run_open_vs_reference() {  # both open models against stable-audio-tools, same GPU, same weights
  local args=(--device cuda --reference-dtype bf16 --variants graph+bf16 --what step,end_to_end)
  timeout -k 5 "$(budget 50)" python3 benchmarks/bench_open_vs_reference.py "${args[@]}" \
    --preset stable-audio-open-small --repeats 3 >>"$OUT/open.log" 2>&1
  echo "open small vs reference: exit $?"
  timeout -k 5 "$(budget 80)" python3 benchmarks/bench_open_vs_reference.py "${args[@]}" \
    --preset stable-audio-open-1.0 --repeats 1 >>"$OUT/open.log" 2>&1
  echo "open 1.0 vs reference: exit $?"
  grep -E "reference .* s \| fastaudio|Error" "$OUT/open.log" | tail -8
}

# --- sections outside the default session (one per call when asked for by name) ---
run_tests() {  # the kernel and attention tests on the GPU, file by file
  section tests
  for f in test_kernel_snake test_kernel_group_norm test_kernel_conv1d test_attention; do
    timeout -k 5 "$(budget 120)" python3 -m pytest -q -p no:cacheprovider --tb=line -rfE \
      "tests/$f.py" >"$OUT/$f.log" 2>&1
    echo "== $f: exit $? | $(grep -E 'passed|failed' "$OUT/$f.log" | tail -1)"
    grep -E "^(FAILED|ERROR)" "$OUT/$f.log" | cut -c1-220 | head -6
  done
}
run_tests2() {  # the model, pipeline and dispatch tests on the GPU
  section tests2
  for f in test_nn_dispatch test_unet test_vae test_pipeline; do
    timeout -k 5 "$(budget 120)" python3 -m pytest -q -p no:cacheprovider --tb=line -rfE \
      "tests/$f.py" >"$OUT/$f.log" 2>&1
    echo "== $f: exit $? | $(grep -E 'passed|failed' "$OUT/$f.log" | tail -1)"
  done
}
run_fault() { run_attention; }
run_profile() {  # the top kernels of SA1.0 sampling at 10 s (table + Chrome trace)
  section profile
  timeout -k 5 "$(budget 400)" python3 -m fastaudio.cli profile --preset stable-audio-1.0 --seconds 10 \
    --steps 5 --dtype bf16 --trace "$OUT/trace.json" --top 40 >"$OUT/profile.log" 2>&1
  echo "profile: exit $?"; tail -50 "$OUT/profile.log"; gzip -f "$OUT/trace.json" 2>/dev/null
}
run_reference() {  # against stable-audio-tools at 95 s (needs the reference wheels in .whl/)
  section reference
  timeout -k 5 "$(budget 480)" python3 benchmarks/bench_vs_reference.py --repeats 2 \
    >"$OUT/reference.log" 2>&1
  echo "reference: exit $?"; grep -E "x \(|Error" "$OUT/reference.log" | tail -20
}
run_musicgen() {  # against MusicGen-large at 95 s
  section musicgen
  timeout -k 5 "$(budget 480)" python3 benchmarks/bench_vs_autoregressive.py --seconds 95 \
    >"$OUT/musicgen.log" 2>&1
  echo "musicgen: exit $?"; grep -E "x$|Error" "$OUT/musicgen.log" | tail -20
}

sections=("$@")
[ "${#sections[@]}" -eq 0 ] || [ "${sections[0]}" = all ] && sections=(env checks kernels generate open attention)
for s in "${sections[@]}"; do
  if [ "$(left)" -lt 15 ]; then echo "== $s skipped: time is up"; continue; fi
  "run_$s"
done
section done
echo "rows in $OUT/results: $(cat "$OUT"/results/*.jsonl 2>/dev/null | wc -l)"
