"""Data pipeline: tokenizers, Megatron's .bin/.idx datasets, GPT/blended datasets, the default corpus.

Typical use by the training loop:

    cfg = data_config_from_args(args, seq_length, seed)
    cfg = resolve_default_corpus(cfg, rank=rank, barrier=barrier)   # no-op when data flags are given
    tokenizer = build_tokenizer(cfg)
    train, valid, test = build_train_valid_test_datasets(cfg, tokenizer, n_train, n_valid, n_test,
                                                         rank=rank, barrier=barrier)
"""

from megatron_fp8.data.arguments import add_data_args, data_config_from_args
from megatron_fp8.data.blended_dataset import BlendedDataset
from megatron_fp8.data.builder import build_train_valid_test_datasets
from megatron_fp8.data.data_config import DataConfig
from megatron_fp8.data.default_corpus import resolve_default_corpus
from megatron_fp8.data.gpt_dataset import GPTDataset
from megatron_fp8.data.indexed_dataset import DataFormatError, IndexedDataset, IndexedDatasetBuilder
from megatron_fp8.data.tokenizer import Tokenizer, build_tokenizer

__all__ = [
    "BlendedDataset", "DataConfig", "DataFormatError", "GPTDataset", "IndexedDataset", "IndexedDatasetBuilder",
    "Tokenizer", "add_data_args", "build_tokenizer", "build_train_valid_test_datasets", "data_config_from_args",
    "resolve_default_corpus",
]
