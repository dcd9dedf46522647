"""The flag sets of Megatron-LM's example launch scripts (main, 2026-08), as test data.

``examples/gpt3/train_gpt3_175b_distributed.sh`` (current: --step-batch-size-schedule; before 2026-04:
--rampup-batch-size) and ``examples/llama/train_llama3_8b_h100_fp8.sh``: every flag name as the script
passes it, in its order, with sizes scaled down to run on a CPU in seconds (layers, hidden, heads, FFN,
vocabulary, sequence, batch sizes, iterations, samples, intervals, the token thresholds of the batch
schedule) and paths replaced by temporary ones. Parallel sizes are 1 (one CPU process); values that are not
sizes are the scripts' own. Bash passes ``"--split '99,1,0'"`` unquoted, i.e. with the quotes.
"""

# Llama-3 flags whose implementation is another issue's (architecture + HF conversion: GQA, kv channels,
# rotary percent, layernorm-1p; SFT: per-token loss). The tests drop them (with their values) and check that
# they are still unknown, so they fail — pointing here — once those flags land. The integrator then empties
# this list, and the Llama-3 test trains with the script's complete flag set.
def gpt3_175b(ckpt: str, tensorboard: str, vocab: str, merges: str, data_prefix: str,
              rampup: bool = False) -> list[str]:
    """train_gpt3_175b_distributed.sh: 96 layers, hidden 12288, 96 heads, seq 2048, global batch 1536
    ramped from 16 (sample thresholds 2.4B..12B tokens, or 16 16 5859375), 500000 iterations, TP8 x PP16."""
    batch_schedule = ["--rampup-batch-size", "1", "1", "6"] if rampup else \
        ["--step-batch-size-schedule", "0:1 0.032K:2 0.064K:3 0.096K:4"]  # tokens; samples 0, 2, 4, 6 at seq 16
    return [
        # GPT_MODEL_ARGS
        "--num-layers", "1", "--hidden-size", "32", "--num-attention-heads", "2", "--seq-length", "16",
        "--max-position-embeddings", "16", "--attention-backend", "auto",
        # TRAINING_ARGS
        "--micro-batch-size", "1", "--global-batch-size", "4", *batch_schedule, "--train-iters", "18",
        "--weight-decay", "0.1", "--adam-beta1", "0.9", "--adam-beta2", "0.95", "--init-method-std", "0.006",
        "--clip-grad", "1.0", "--fp16", "--lr", "6.0e-5", "--lr-decay-style", "cosine", "--min-lr", "6.0e-6",
        "--lr-warmup-fraction", ".001", "--lr-decay-iters", "16",
        # MODEL_PARALLEL_ARGS
        "--tensor-model-parallel-size", "1", "--pipeline-model-parallel-size", "1",
        # DATA_ARGS
        "--data-path", data_prefix, "--vocab-file", vocab, "--merge-file", merges, "--split", "949,50,1",
        # EVAL_AND_LOGGING_ARGS
        "--log-interval", "6", "--save-interval", "9", "--eval-interval", "9", "--save", ckpt, "--load", ckpt,
        "--eval-iters", "1", "--tensorboard-dir", tensorboard,
    ]


def llama3_8b_fp8(ckpt: str, tensorboard: str, cache: str) -> list[str]:
    """train_llama3_8b_h100_fp8.sh with its MOCK data branch: 32 layers, hidden 4096, FFN 14336, 32 heads
    in 8 query groups of 128 channels, seq 8192, vocabulary 128256, global batch 128, 1953125000 samples."""
    return [
        # MODEL_ARGS
        "--use-mcore-models", "--num-layers", "2", "--hidden-size", "64", "--ffn-hidden-size", "96",
        "--num-attention-heads", "4", "--group-query-attention", "--num-query-groups", "2", "--kv-channels", "16",
        "--seq-length", "16", "--max-position-embeddings", "16", "--position-embedding-type", "rope",
        "--rotary-base", "1000000", "--rotary-percent", "1.0", "--attention-dropout", "0.0", "--hidden-dropout", "0.0",
        "--swiglu", "--normalization", "RMSNorm", "--init-method-std", "0.0134", "--attention-backend", "fused",
        "--apply-layernorm-1p", "--untie-embeddings-and-output-weights", "--disable-bias-linear",
        # TRAINING_ARGS
        "--micro-batch-size", "1", "--global-batch-size", "2", "--train-samples", "8", "--lr-decay-samples", "7",
        "--lr-warmup-samples", "2", "--lr", "0.00015", "--min-lr", "0.00001", "--decoupled-lr", "5.0e-4",
        "--decoupled-min-lr", "4.5e-5", "--lr-decay-style", "cosine", "--clip-grad", "1.0", "--weight-decay", "0.1",
        "--adam-beta1", "0.9", "--adam-beta2", "0.95", "--bf16", "--grad-reduce-in-bf16", "--cross-entropy-loss-fusion",
        "--calculate-per-token-loss", "--manual-gc", "--empty-unused-memory-level", "1", "--exit-duration-in-mins", "235",
        # DDP_ARGS (appended to TRAINING_ARGS)
        "--use-distributed-optimizer", "--overlap-grad-reduce", "--overlap-param-gather",
        # DTYPE_ARGS
        "--fp8-format", "hybrid", "--fp8-amax-history-len", "1024", "--fp8-amax-compute-algo", "max",
        "--fp8-param-gather",
        # MODEL_PARALLEL_ARGS
        "--tensor-model-parallel-size", "1", "--context-parallel-size", "1", "--sequence-parallel",
        # DATA_ARGS_LIST (MOCK)
        "--mock-data", "--tokenizer-type", "NullTokenizer", "--vocab-size", "500", "--data-cache-path", cache,
        "--tiktoken-pattern", "v2", "--split", "'99,1,0'", "--no-create-attention-mask-in-dataloader",
        "--no-mmap-bin-files", "--num-workers", "1",
        # EVAL_AND_LOGGING_ARGS
        "--log-interval", "1", "--eval-iters", "1", "--eval-interval", "2", "--save-interval", "3",
        "--log-throughput", "--profile", "--profile-step-start", "4", "--profile-step-end", "6",
        "--ckpt-format", "torch_dist", "--distributed-timeout-minutes", "60", "--save", ckpt, "--load", ckpt,
        "--tensorboard-dir", tensorboard,
    ]
