"""Pretrain a GPT with FP8 (Megatron-LM's entry point and flags).

    python pretrain_gpt.py                       # small FP8 (O2) GPT on the built-in default corpus
    torchrun --nproc-per-node N pretrain_gpt.py  # the same with tensor/pipeline/data parallelism
"""

import sys

from megatron_fp8.arguments import parse_config
from megatron_fp8.training import pretrain


# `python pretrain_gpt.py` with no flags: a short FP8 (O2) run on the built-in default corpus that
# learns visibly, evaluates and saves a checkpoint within a few minutes on two CPU cores.
QUICKSTART = ["--seq-length", "128", "--train-iters", "150", "--lr", "2e-3", "--min-lr", "2e-4", "--lr-warmup-iters", "15",
              "--log-interval", "10", "--eval-interval", "75", "--eval-iters", "4",
              "--hidden-dropout", "0", "--attention-dropout", "0", "--save", "checkpoints/gpt_quickstart"]


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(" > no flags given: quick-start run " + " ".join(QUICKSTART))
        argv = QUICKSTART
    pretrain(parse_config(argv))


if __name__ == "__main__":
    main()
