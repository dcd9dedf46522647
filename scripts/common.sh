# Shared by pretrain_gpt_{7b,13b,175b}.sh (sourced, not run): argument parsing, the Megatron flags every
# size shares, and the launch -- torchrun across nodes, or with --dry-run the memory planner only.
#
# The sourcing script sets SCRIPT_NAME, MODEL_NAME, DEFAULT_NNODES, TP, PP, MODEL_ARGS (array), LR, MIN_LR,
# LR_DECAY_ITERS, LR_WARMUP_ITERS, and MICRO_BATCH_SIZE, GLOBAL_BATCH_SIZE, TRAIN_ITERS (environment first).

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"

usage() {
  cat <<EOF
usage: bash scripts/${SCRIPT_NAME} [--dry-run] [options] [DATA_PATH VOCAB_FILE MERGE_FILE CHECKPOINT_PATH] [-- flags]
       bash scripts/${SCRIPT_NAME} [--dry-run] [options] [DATA_PATH TOKENIZER_MODEL CHECKPOINT_PATH] [-- flags]

${MODEL_NAME} with FP8 (FP8-LM layout: TP${TP} PP${PP}, data parallel over the rest), sequence length 2048,
on $((GPUS_PER_NODE * NNODES)) GPUs (GPUS_PER_NODE x NNODES; data-parallel size = GPUs / (TP x PP)).

options (or the positional arguments above):
  --data-path PREFIX        tokenized dataset prefix (.bin/.idx), or a blend "0.7 A 0.3 B"
  --vocab-file FILE         GPT-2 vocab.json     } GPT2BPETokenizer
  --merge-file FILE         GPT-2 merges.txt     }
  --tokenizer-model FILE    SentencePiece .model or Hugging Face tokenizer.json / directory
  --checkpoint-path DIR     --save and --load directory (resumes from the newest checkpoint there)
  --fp8-level LEVEL         off | gemm | O1 | O2 | O3 (default: \$FP8_LEVEL or O2)
  --dry-run                 validate the configuration and print the planner's per-GPU memory; no training,
                            no GPU, no data needed
  -- flags                  anything after -- goes to pretrain_gpt.py (and the planner) as is

environment (defaults): GPUS_PER_NODE=8 NNODES=${DEFAULT_NNODES} NODE_RANK=0 MASTER_ADDR=localhost MASTER_PORT=6000
  FP8_LEVEL=O2 MICRO_BATCH_SIZE=${MICRO_BATCH_SIZE} GLOBAL_BATCH_SIZE=${GLOBAL_BATCH_SIZE} TRAIN_ITERS=${TRAIN_ITERS}
  TOKENIZER_TYPE (from the tokenizer files) VOCAB_SIZE=50257 (planner only) GPU_MEMORY_GB=80 (planner only)
  TENSORBOARD_DIR (optional) PYTHON=python
EOF
}

die() { echo "${SCRIPT_NAME}: error: $*" >&2; echo "(see: bash scripts/${SCRIPT_NAME} --help)" >&2; exit 2; }

GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
NNODES="${NNODES:-${DEFAULT_NNODES}}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-localhost}"
MASTER_PORT="${MASTER_PORT:-6000}"
FP8_LEVEL="${FP8_LEVEL:-O2}"
DATA_PATH="${DATA_PATH:-}" VOCAB_FILE="${VOCAB_FILE:-}" MERGE_FILE="${MERGE_FILE:-}"
TOKENIZER_MODEL="${TOKENIZER_MODEL:-}" CHECKPOINT_PATH="${CHECKPOINT_PATH:-}"
DRY_RUN=0
POSITIONAL=()
PASSTHROUGH=()

parse_args() {
  while (($#)); do
    case "$1" in
      -h|--help) usage; exit 0 ;;
      --dry-run) DRY_RUN=1 ;;
      --data-path|--vocab-file|--merge-file|--tokenizer-model|--checkpoint-path|--fp8-level)
        (($# >= 2)) || die "$1 needs a value"
        case "$1" in
          --data-path) DATA_PATH="$2" ;; --vocab-file) VOCAB_FILE="$2" ;; --merge-file) MERGE_FILE="$2" ;;
          --tokenizer-model) TOKENIZER_MODEL="$2" ;; --checkpoint-path) CHECKPOINT_PATH="$2" ;;
          --fp8-level) FP8_LEVEL="$2" ;;
        esac
        shift ;;
      --) shift; PASSTHROUGH=("$@"); break ;;
      -*) die "unknown option $1 (Megatron flags go after --)" ;;
      *) POSITIONAL+=("$1") ;;
    esac
    shift
  done
  case "${#POSITIONAL[@]}" in
    0) ;;
    3) DATA_PATH="${POSITIONAL[0]}" TOKENIZER_MODEL="${POSITIONAL[1]}" CHECKPOINT_PATH="${POSITIONAL[2]}" ;;
    4) DATA_PATH="${POSITIONAL[0]}" VOCAB_FILE="${POSITIONAL[1]}" MERGE_FILE="${POSITIONAL[2]}"
       CHECKPOINT_PATH="${POSITIONAL[3]}" ;;
    *) die "expected 3 or 4 positional arguments, got ${#POSITIONAL[@]}" ;;
  esac
}

TOKENIZER_ARGS=()
set_tokenizer_args() {
  if [[ -n "$VOCAB_FILE" || -n "$MERGE_FILE" ]]; then
    [[ -n "$VOCAB_FILE" && -n "$MERGE_FILE" ]] || die "--vocab-file and --merge-file go together"
    TOKENIZER_ARGS=(--tokenizer-type "${TOKENIZER_TYPE:-GPT2BPETokenizer}" --vocab-file "$VOCAB_FILE"
      --merge-file "$MERGE_FILE")
  elif [[ -n "$TOKENIZER_MODEL" ]]; then
    local kind=HuggingFaceTokenizer
    [[ "$TOKENIZER_MODEL" == *.model ]] && kind=SentencePieceTokenizer
    TOKENIZER_ARGS=(--tokenizer-type "${TOKENIZER_TYPE:-$kind}" --tokenizer-model "$TOKENIZER_MODEL")
  else
    die "a tokenizer is required: --vocab-file + --merge-file, or --tokenizer-model"
  fi
}

launch() {
  parse_args "$@"
  local world=$((GPUS_PER_NODE * NNODES))
  local args=("${MODEL_ARGS[@]}"
    --seq-length 2048 --max-position-embeddings 2048
    --tensor-model-parallel-size "$TP" --pipeline-model-parallel-size "$PP"
    --micro-batch-size "$MICRO_BATCH_SIZE" --global-batch-size "${GLOBAL_BATCH_SIZE}"
    --train-iters "${TRAIN_ITERS}" --lr "$LR" --min-lr "$MIN_LR" --lr-decay-style cosine
    --lr-decay-iters "$LR_DECAY_ITERS" --lr-warmup-iters "$LR_WARMUP_ITERS"
    --weight-decay 0.1 --clip-grad 1.0 --adam-beta1 0.9 --adam-beta2 0.95 --adam-eps 1e-8
    --bf16 --fp8-level "$FP8_LEVEL" --use-distributed-optimizer --overlap-grad-reduce
    --log-interval 10 --eval-interval 1000 --eval-iters 10 --split 949,50,1)
  if ((TP > 1)); then args+=(--sequence-parallel); fi
  if ((DRY_RUN)); then
    echo "dry run: ${MODEL_NAME}, ${world} GPUs (${GPUS_PER_NODE} x ${NNODES} nodes), --fp8-level ${FP8_LEVEL}"
    exec "$PYTHON" "$ROOT/tools/estimate_memory.py" "${args[@]}" "${PASSTHROUGH[@]}" --world-size "$world" \
      --vocab-size "${VOCAB_SIZE:-50257}" --gpu-memory-gb "${GPU_MEMORY_GB:-80}"
  fi
  [[ -n "$DATA_PATH" ]] || die "DATA_PATH is required (--data-path or positional)"
  [[ -n "$CHECKPOINT_PATH" ]] || die "CHECKPOINT_PATH is required (--checkpoint-path or positional)"
  set_tokenizer_args
  local data_words
  read -r -a data_words <<< "$DATA_PATH"  # a single prefix, or a blend "w1 prefix1 w2 prefix2"
  args+=(--data-path "${data_words[@]}" "${TOKENIZER_ARGS[@]}" --save "$CHECKPOINT_PATH" --load "$CHECKPOINT_PATH"
    --save-interval 1000 --log-json "$CHECKPOINT_PATH/metrics.jsonl")
  if [[ -n "${TENSORBOARD_DIR:-}" ]]; then args+=(--tensorboard-dir "$TENSORBOARD_DIR"); fi
  exec torchrun --nproc-per-node "$GPUS_PER_NODE" --nnodes "$NNODES" --node-rank "$NODE_RANK" \
    --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" \
    "$ROOT/pretrain_gpt.py" "${args[@]}" "${PASSTHROUGH[@]}"
}
