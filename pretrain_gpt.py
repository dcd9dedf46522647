"""Pretrain a GPT with FP8 (Megatron-LM's entry point and flags).

    python pretrain_gpt.py                       # small FP8 (O2) GPT on the built-in default corpus
    torchrun --nproc-per-node N pretrain_gpt.py  # the same with tensor/pipeline/data parallelism
"""

import os
import sys

from megatron_fp8.arguments import parse_config
from megatron_fp8.checkpoint.paths import CheckpointDirError
from megatron_fp8.checkpoint.safe_load import UnsafeCheckpointError
from megatron_fp8.data.indexed_dataset import DataFormatError
from megatron_fp8.divergence import TrainingDiverged
from megatron_fp8.fsutil import DiskFullError
from megatron_fp8.parallel.comm import CollectiveError
from megatron_fp8.training import pretrain

# Errors whose message says all: printed without a traceback, exit status 1.
STOPS = (CheckpointDirError, UnsafeCheckpointError, DataFormatError, TrainingDiverged, DiskFullError, CollectiveError)


# `python pretrain_gpt.py` with no flags: a short FP8 (O2) run on the built-in default corpus that
# learns visibly, evaluates and saves a checkpoint within a few minutes on two CPU cores. It also loads
# that directory (Megatron's `--save X --load X`): a second run resumes instead of overwriting it.
QUICKSTART = ["--seq-length", "128", "--train-iters", "150", "--lr", "2e-3", "--min-lr", "2e-4", "--lr-warmup-iters", "15",
              "--log-interval", "10", "--eval-interval", "75", "--eval-iters", "4",
              "--hidden-dropout", "0", "--attention-dropout", "0", "--save", "checkpoints/gpt_quickstart",
              "--load", "checkpoints/gpt_quickstart"]


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(" > no flags given: quick-start run " + " ".join(QUICKSTART))
        argv = QUICKSTART
    config = parse_config(argv)
    try:
        pretrain(config)
    except STOPS as err:
        print(f"pretrain_gpt.py: error: {err}", file=sys.stderr, flush=True)
        if isinstance(err, CollectiveError):
            os._exit(1)  # a hung peer may block the process group's teardown; the launcher ends the others
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
