#!/usr/bin/env bash
# The GPU check: one command on a CUDA machine, done in well under 8 minutes, that leaves a report.
#
#   bash scripts/gpu_check.sh
#
# Stages, each time-boxed and independent (a failed stage is reported and the next one still runs):
#   env      versions: torch, CUDA, device, nvcc, ninja, compiler
#   build    JIT-builds the kernels with CUDA for this GPU's architecture into build/jit (in this checkout)
#   kernels  python -m megatron_fp8.fp8.kernels --check: every kernel vs the reference, CPU and CUDA
#   pytest   the gpu-marked tests (GEMMs under cuBLASLt's rules, kernels on CUDA, NCCL steps vs CPU,
#            GPU checkpoint loaded on CPU)
#   bench    bench/gpu.py: step time and peak memory per level, FP8 vs BF16 GEMM TFLOP/s, _scaled_mm probe
# Files (in $OUT when set, else bench/results/gpu_check/, with the JSON at bench/results/gpu.json):
#   gpu.json (figures + every stage's outcome), report.txt, and one log per stage (<stage>.log).
# Environment: PYTHON (default python3), OUT, GPU_CHECK_BUDGET_S (whole check, default 420),
#   TORCH_CUDA_ARCH_LIST (default: this GPU's compute capability), MAX_JOBS (default: all cores).
# Installs nothing. Without a CUDA device it says "no CUDA device" and exits 0. Exit status: 0 when every
# stage passed, 1 otherwise.
set -uo pipefail  # deliberately no -e: a failing stage must not stop the others

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
PY="${PYTHON:-$(command -v python3 || command -v python || true)}"
if [ -z "$PY" ]; then
  echo "gpu_check: no python3 or python on PATH (set PYTHON)" >&2
  exit 1
fi
PY="$(command -v "$PY" || echo "$PY")"

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
  echo "no CUDA device (torch.cuda.is_available() is not True for $PY): nothing to check"
  exit 0
fi

if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT" && REPORT_DIR="$(cd "$OUT" && pwd)"
  JSON="$REPORT_DIR/gpu.json"
else
  REPORT_DIR="$ROOT/bench/results/gpu_check"
  JSON="$ROOT/bench/results/gpu.json"
fi
mkdir -p "$REPORT_DIR" || exit 1

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# ninja comes with pip next to the interpreter; nvcc usually under /usr/local/cuda
PY_DIR="$(dirname "$PY")"
export PATH="$PY_DIR:$PATH"
if [ -d /usr/local/cuda/bin ]; then export PATH="$PATH:/usr/local/cuda/bin"; fi
export MEGATRON_FP8_BUILD_DIR="$ROOT/build/jit"  # writes stay inside this checkout
export TORCH_EXTENSIONS_DIR="$ROOT/build/torch_extensions"
export MAX_JOBS="${MAX_JOBS:-$(nproc 2>/dev/null || echo 8)}"
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  TORCH_CUDA_ARCH_LIST="$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())' 2>/dev/null || echo 9.0)"
fi
export TORCH_CUDA_ARCH_LIST  # one architecture: a short compile
unset MEGATRON_FP8_KERNELS MEGATRON_FP8_REQUIRE_KERNELS

BUDGET_S="${GPU_CHECK_BUDGET_S:-420}"
START=$SECONDS
STAGE_ARGS=()
NOTES=()
FAILED=0
HAVE_TIMEOUT=1
command -v timeout >/dev/null 2>&1 || HAVE_TIMEOUT=0

# run_stage NAME MAX_SECONDS COMMAND...: run COMMAND with its output in NAME.log, for at most MAX_SECONDS
# and never past the check's budget; records ok / FAILED (rc N) / TIMEOUT / SKIPPED.
run_stage() {
  local name="$1" max="$2"
  shift 2
  local log="$REPORT_DIR/$name.log" left limit rc status t0
  left=$((BUDGET_S - (SECONDS - START)))
  limit=$((max < left ? max : left))
  t0=$SECONDS
  if [ "$limit" -lt 15 ]; then
    echo "skipped: the check's ${BUDGET_S} s budget is spent" > "$log"
    status="SKIPPED (budget spent)"
  else
    echo "[gpu_check] $(date +%T) $name: at most ${limit}s, log $log"
    echo "\$ $*" > "$log"
    if [ "$HAVE_TIMEOUT" = 1 ]; then
      timeout --kill-after=15 "$limit" "$@" >> "$log" 2>&1
    else
      "$@" >> "$log" 2>&1
    fi
    rc=$?
    case "$rc" in
      0) status="ok" ;;
      124|137) status="TIMEOUT after ${limit}s" ;;
      *) status="FAILED (rc $rc)" ;;
    esac
  fi
  [ "$status" = "ok" ] || FAILED=1
  echo "[gpu_check] $(date +%T) $name: $status ($((SECONDS - t0))s)"
  STAGE_ARGS+=(--stage "$name" "$status" "$((SECONDS - t0))" "$log")
  [ "$status" = "ok" ]
}

# shellcheck disable=SC2016  # expanded by the inner bash, with $0 = the interpreter
run_stage env 60 bash -c '
  "$0" -c "import sys, torch; print(\"python\", sys.version.split()[0]); print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda);
p = torch.cuda.get_device_properties(0); print(\"device\", p.name, \"sm\", p.major, p.minor, \"%.1f GiB\" % (p.total_memory / 2**30))
from torch.utils.cpp_extension import CUDA_HOME; print(\"CUDA_HOME\", CUDA_HOME)"
  echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS"
  nvidia-smi 2>&1 | head -20
  (nvcc --version 2>&1 || echo "nvcc: not found") | tail -2
  echo "ninja $(ninja --version 2>&1 || echo not found)"
  (c++ --version 2>&1 || echo "c++: not found") | head -1' "$PY"

# The build must give CUDA kernels; a CPU-only build (no nvcc) or none at all fails this stage.
# shellcheck disable=SC2016
if run_stage build 210 bash -c 'MEGATRON_FP8_VERBOSE=1 "$0" -m megatron_fp8.fp8.kernels --build &&
    "$0" -c "from megatron_fp8.fp8 import kernels; import sys; print(\"backend:\", kernels.BACKEND); sys.exit(kernels.BACKEND != \"csrc-cuda\")"' "$PY"; then
  export MEGATRON_FP8_REQUIRE_KERNELS=1  # from here on a fallback to the reference is an error
else
  # A killed build may leave torch's lock file behind; later loads would wait on it forever.
  find "$MEGATRON_FP8_BUILD_DIR" -name lock -delete 2>/dev/null
  # What the build gave, from its log (asking python again would start another, untimed, build).
  if grep -q "^backend: csrc-cpu" "$REPORT_DIR/build.log"; then
    NOTES+=(--note "build: no CUDA kernels; later stages used the compiled CPU kernels (CUDA calls ran the reference)")
  else
    export MEGATRON_FP8_KERNELS=reference  # do not retry the build in every later stage
    NOTES+=(--note "build: no compiled kernels; later stages ran the pure-torch reference (MEGATRON_FP8_KERNELS=reference)")
  fi
fi

run_stage kernels 90 "$PY" -m megatron_fp8.fp8.kernels --check
run_stage pytest 200 "$PY" -m pytest -q -m gpu -p no:cacheprovider --durations=15 tests/gpu tests/fp8/test_kernels.py
LEFT=$((BUDGET_S - (SECONDS - START)))
BENCH_BUDGET=$(((LEFT < 240 ? LEFT : 240) - 60))  # no level starts in the stage's last minute
run_stage bench 240 "$PY" bench/gpu.py --out "$JSON" --budget-s "$((BENCH_BUDGET > 10 ? BENCH_BUDGET : 10))"

NOTES+=(--note "total $((SECONDS - START)) s of a ${BUDGET_S} s budget; logs in $REPORT_DIR")
"$PY" "$ROOT/bench/gpu_report.py" --json "$JSON" --report "$REPORT_DIR/report.txt" "${STAGE_ARGS[@]}" "${NOTES[@]}" \
  || { echo "[gpu_check] the report step failed; the stage logs are in $REPORT_DIR"; FAILED=1; }
exit "$FAILED"
