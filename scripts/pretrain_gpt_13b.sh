#!/usr/bin/env bash
# GPT-13B (GPT-3 13B shape, width 5120 so that 40 heads divide it: 40 layers, hidden 5120, 40 heads) with
# FP8 on FP8-LM's layout: TP2 PP1 DP16 (4 nodes x 8 GPUs), sequence parallel, sequence 2048. GPT-3's
# recipe: lr 1.0e-4 cosine to 10% over 260B tokens, 375M tokens of warm-up, batch 1024 x 2048 tokens (2M),
# 300B tokens. Init std sqrt(2 / 5h) ~ 0.009.
#   bash scripts/pretrain_gpt_13b.sh --dry-run
#   NODE_RANK=0 MASTER_ADDR=node0 bash scripts/pretrain_gpt_13b.sh DATA_PREFIX vocab.json merges.txt CKPT_DIR
set -euo pipefail

SCRIPT_NAME=pretrain_gpt_13b.sh
MODEL_NAME="GPT-13B"
DEFAULT_NNODES=4
TP=2
PP=1
MODEL_ARGS=(--num-layers 40 --hidden-size 5120 --num-attention-heads 40 --init-method-std 0.009)
LR=1.0e-4
MIN_LR=1.0e-5
MICRO_BATCH_SIZE="${MICRO_BATCH_SIZE:-2}"
GLOBAL_BATCH_SIZE="${GLOBAL_BATCH_SIZE:-1024}"
TRAIN_ITERS="${TRAIN_ITERS:-143051}"  # 300B tokens / (1024 x 2048)
LR_DECAY_ITERS=123978                 # 260B tokens
LR_WARMUP_ITERS=179                   # 375M tokens

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch "$@"
