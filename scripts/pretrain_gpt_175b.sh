#!/usr/bin/env bash
# GPT-175B (GPT-3: 96 layers, hidden 12288, 96 heads) with FP8 on FP8-LM's layout: TP8 PP4 DP4 (16 nodes x
# 8 GPUs), sequence parallel, sequence 2048. GPT-3's recipe: lr 0.6e-4 cosine to 10% over 260B tokens,
# 375M tokens of warm-up, batch 1536 x 2048 tokens (3.2M), 300B tokens (no batch ramp-up). Init std 0.006
# (Megatron-LM's GPT-3 175B example).
#   bash scripts/pretrain_gpt_175b.sh --dry-run
#   NODE_RANK=0 MASTER_ADDR=node0 bash scripts/pretrain_gpt_175b.sh DATA_PREFIX vocab.json merges.txt CKPT_DIR
set -euo pipefail

SCRIPT_NAME=pretrain_gpt_175b.sh
MODEL_NAME="GPT-175B"
DEFAULT_NNODES=16
TP=8
PP=4
MODEL_ARGS=(--num-layers 96 --hidden-size 12288 --num-attention-heads 96 --init-method-std 0.006)
LR=0.6e-4
MIN_LR=0.6e-5
MICRO_BATCH_SIZE="${MICRO_BATCH_SIZE:-1}"
GLOBAL_BATCH_SIZE="${GLOBAL_BATCH_SIZE:-1536}"
TRAIN_ITERS="${TRAIN_ITERS:-95367}"  # 300B tokens / (1536 x 2048)
LR_DECAY_ITERS=82652                 # 260B tokens
LR_WARMUP_ITERS=119                  # 375M tokens

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch "$@"
