#!/usr/bin/env bash
# GPT-7B (GPT-3 6.7B shape: 32 layers, hidden 4096, 32 heads) with FP8 on FP8-LM's layout: TP1 PP1 DP32
# (4 nodes x 8 GPUs), sequence 2048. GPT-3's recipe: lr 1.2e-4 cosine to 10% over 260B tokens, 375M tokens of
# warm-up, batch 1024 x 2048 tokens (2M), 300B tokens. Init std sqrt(2 / 5h) ~ 0.01 (small init).
#   bash scripts/pretrain_gpt_7b.sh --dry-run            # per-GPU memory, on any machine
#   NODE_RANK=0 MASTER_ADDR=node0 bash scripts/pretrain_gpt_7b.sh DATA_PREFIX vocab.json merges.txt CKPT_DIR
set -euo pipefail

SCRIPT_NAME=pretrain_gpt_7b.sh
MODEL_NAME="GPT-7B"
DEFAULT_NNODES=4
TP=1
PP=1
MODEL_ARGS=(--num-layers 32 --hidden-size 4096 --num-attention-heads 32 --init-method-std 0.01)
LR=1.2e-4
MIN_LR=1.2e-5
MICRO_BATCH_SIZE="${MICRO_BATCH_SIZE:-2}"
GLOBAL_BATCH_SIZE="${GLOBAL_BATCH_SIZE:-1024}"
TRAIN_ITERS="${TRAIN_ITERS:-143051}"  # 300B tokens / (1024 x 2048)
LR_DECAY_ITERS=123978                 # 260B tokens
LR_WARMUP_ITERS=179                   # 375M tokens

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch "$@"
