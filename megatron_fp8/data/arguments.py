"""Megatron-named data and tokenizer flags, and their conversion into a DataConfig."""

import argparse

from megatron_fp8.data.data_config import DataConfig
from megatron_fp8.data.tokenizer import TOKENIZER_TYPES


def add_tokenizer_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The tokenizer flags alone (shared with tools/preprocess_data.py)."""
    group = parser.add_argument_group("tokenizer")
    group.add_argument("--tokenizer-type", choices=TOKENIZER_TYPES, default=None)
    group.add_argument("--vocab-file", default=None, help="GPT-2 vocab.json")
    group.add_argument("--merge-file", default=None, help="GPT-2 merges.txt")
    group.add_argument("--tokenizer-model", default=None,
                       help="SentencePiece .model, or a local Hugging Face tokenizer.json / directory")
    group.add_argument("--vocab-size", type=int, default=None, help="ids of the NullTokenizer (--mock-data)")
    return parser


def add_data_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    group = parser.add_argument_group("data")
    group.add_argument("--data-path", nargs="*", default=None,
                       help="dataset prefixes, optionally weighted: 0.7 PREFIX_A 0.3 PREFIX_B. "
                            "Without data flags a corpus is built from the Python standard library.")
    group.add_argument("--split", default="949,50,1", help="train,valid,test proportions of each dataset")
    group.add_argument("--data-cache-path", default=None,
                       help="where index arrays and the default corpus are cached")
    group.add_argument("--mock-data", action="store_true", help="synthetic tokens, no files")
    group.add_argument("--num-workers", type=int, default=2, help="data loader worker processes")
    add_tokenizer_args(parser)
    return parser


def data_config_from_args(args: argparse.Namespace, seq_length: int, seed: int) -> DataConfig:
    return DataConfig(
        data_path=args.data_path, split=args.split, seq_length=seq_length, seed=seed,
        data_cache_path=args.data_cache_path, mock_data=args.mock_data, tokenizer_type=args.tokenizer_type,
        vocab_file=args.vocab_file, merge_file=args.merge_file, tokenizer_model=args.tokenizer_model,
        vocab_size=args.vocab_size, num_workers=args.num_workers)
