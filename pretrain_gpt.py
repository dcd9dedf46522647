"""Pretrain a GPT with FP8 (Megatron-LM's entry point and flags).

    python pretrain_gpt.py                       # small FP8 (O2) GPT on the built-in default corpus
    torchrun --nproc-per-node N pretrain_gpt.py  # the same with tensor/pipeline/data parallelism
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from megatron_fp8.arguments import parse_config  # noqa: E402
from megatron_fp8.training import pretrain  # noqa: E402


def main(argv=None) -> None:
    pretrain(parse_config(argv))


if __name__ == "__main__":
    main()
