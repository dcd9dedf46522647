#!/usr/bin/env bash
# A tiny FP8 GPT trained for real on this machine's CPUs: torchrun with 4 gloo ranks as TP2 x DP2 (sequence
# parallel, distributed optimizer), --fp8-level O2, FP32 compute, on the default corpus (the Python standard
# library's sources, tokenized with a tokenizer trained on them and cached on first use). A few minutes.
#   bash scripts/pretrain_gpt_tiny_cpu.sh              # train; metrics in $LOG_DIR/metrics.jsonl
#   bash scripts/pretrain_gpt_tiny_cpu.sh --dry-run    # the planner's per-rank memory for the same flags
#   bash scripts/pretrain_gpt_tiny_cpu.sh -- --train-iters 100 --fp8-level O3   # extra flags, last wins
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
FP8_LEVEL="${FP8_LEVEL:-O2}"
LOG_DIR="${LOG_DIR:-${TMPDIR:-/tmp}/megatron_fp8_tiny_cpu}"
MASTER_PORT="${MASTER_PORT:-6000}"

usage() {
  cat <<EOF
usage: bash scripts/pretrain_gpt_tiny_cpu.sh [--dry-run] [-- pretrain_gpt.py flags]

Trains a 4-layer, 128-wide GPT on the default corpus with torchrun --nproc-per-node 4 (TP2 x DP2, gloo),
--fp8-level \$FP8_LEVEL, 60 iterations. --dry-run prints the planner's per-rank memory instead.
environment (defaults): FP8_LEVEL=O2 LOG_DIR=${LOG_DIR} MASTER_PORT=6000 PYTHON=python
EOF
}

DRY_RUN=0
PASSTHROUGH=()
while (($#)); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --) shift; PASSTHROUGH=("$@"); break ;;
    *) echo "pretrain_gpt_tiny_cpu.sh: error: unknown argument $1 (pretrain_gpt.py flags go after --)" >&2
       exit 2 ;;
  esac
  shift
done

ARGS=(--num-layers 4 --hidden-size 128 --num-attention-heads 4 --seq-length 128
  --tensor-model-parallel-size 2 --sequence-parallel --use-distributed-optimizer
  --fp8-level "$FP8_LEVEL" --micro-batch-size 4 --global-batch-size 16
  --train-iters 60 --lr 1e-3 --min-lr 1e-4 --lr-warmup-iters 5 --lr-decay-style cosine
  --log-interval 10 --eval-interval 30 --eval-iters 2)

if ((DRY_RUN)); then
  # the default corpus brings an 8192-token vocabulary; CPU kernels (math attention path under dropout)
  exec "$PYTHON" "$ROOT/tools/estimate_memory.py" "${ARGS[@]}" "${PASSTHROUGH[@]}" --world-size 4 \
    --vocab-size 8192 --device cpu --gpu-memory-gb "${GPU_MEMORY_GB:-8}"
fi

mkdir -p "$LOG_DIR"
rm -f "$LOG_DIR/metrics.jsonl"
# four ranks share the cores: one thread each
OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" exec torchrun --nproc-per-node 4 --master-port "$MASTER_PORT" \
  "$ROOT/pretrain_gpt.py" "${ARGS[@]}" --log-json "$LOG_DIR/metrics.jsonl" "${PASSTHROUGH[@]}"
