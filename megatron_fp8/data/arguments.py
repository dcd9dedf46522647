"""Megatron-named data and tokenizer flags (declared on DataConfig's fields), and the DataConfig they make."""

import argparse

from megatron_fp8.data.data_config import DataConfig
from megatron_fp8.flagspec import add_flags, from_args


def add_tokenizer_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The tokenizer flags alone (shared with tools/preprocess_data.py)."""
    add_flags(parser, DataConfig, "tokenizer", group="tokenizer")
    return parser


def add_data_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_flags(parser, DataConfig, "data", group="data")
    return add_tokenizer_args(parser)


def data_config_from_args(args: argparse.Namespace, seq_length: int, seed: int) -> DataConfig:
    return DataConfig(seq_length=seq_length, seed=seed, **from_args(DataConfig, args))
