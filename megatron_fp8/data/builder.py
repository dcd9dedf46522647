"""Train/valid/test datasets from a DataConfig: split each dataset by --split, blend by --data-path weights.

Rank 0 builds first (writing the index caches), everyone meets at `barrier`, then the other ranks build,
which only loads the caches. Every rank calls `barrier` exactly once.
"""

import math
import os

import numpy as np

from megatron_fp8.data.blended_dataset import BlendedDataset
from megatron_fp8.data.gpt_dataset import GPTDataset
from megatron_fp8.data.indexed_dataset import IndexedDataset
from megatron_fp8.data.ltor import with_ltor_masks
from megatron_fp8.data.mock_dataset import MockLowLevelDataset
from megatron_fp8.data.sft_dataset import SFTConversations, SFTDataset
from megatron_fp8.data.vocab_check import check_token_ids

SPLIT_NAMES = ("train", "valid", "test")
BLEND_MARGIN = 1.005  # each component gets 0.5% more samples than its share, as in Megatron


def split_ranges(num_documents: int, fractions) -> list[tuple[int, int]]:
    """Contiguous document ranges with bounds round(cumulative fraction * num_documents)."""
    bounds = [0]
    for fraction in np.cumsum(fractions):
        bounds.append(min(num_documents, int(round(float(fraction) * num_documents))))
    bounds[-1] = num_documents
    return list(zip(bounds[:-1], bounds[1:]))


def _cache_dir(cfg, prefix: str) -> str:
    """--data-cache-path, else Megatron's default: a cache folder next to the data."""
    return cfg.data_cache_path or os.path.join(os.path.dirname(os.path.abspath(prefix)), "cache",
                                               "SFTDataset_indices" if cfg.sft else "GPTDataset_indices")


def _split_datasets(cfg, low_level, cache_dir, samples, tokenizer):
    """One GPTDataset (SFTDataset with --sft) per split with a non-zero fraction and sample request, else None."""
    out = []
    ranges = split_ranges(len(low_level), cfg.split_fractions)
    for name, fraction, (start, end), num in zip(SPLIT_NAMES, cfg.split_fractions, ranges, samples):
        if fraction == 0 or num == 0:
            out.append(None)
            continue
        if start == end:
            raise ValueError(f"--split: the {name} split of {low_level.prefix} gets no documents "
                             f"({len(low_level)} documents, split {cfg.split})")
        if cfg.sft:
            out.append(SFTDataset(low_level, (start, end), num, cfg.seq_length, cfg.seed, cache_dir, name,
                                  tokenizer.pad))
        else:
            out.append(GPTDataset(low_level, (start, end), num, cfg.seq_length, cfg.seed, cache_dir, name))
    return out


def _build(cfg, tokenizer, samples):
    if cfg.mock_data:
        low_level = MockLowLevelDataset(tokenizer.vocab_size, cfg.seq_length, cfg.seed)
        return tuple(_split_datasets(cfg, low_level, None, samples, tokenizer))
    prefixes, weights = cfg.blend
    if cfg.sft:
        low_levels = [SFTConversations(p, tokenizer, _cache_dir(cfg, p)) for p in prefixes]
    else:
        low_levels = [IndexedDataset(p) for p in prefixes]
        for low_level, prefix in zip(low_levels, prefixes):
            if tokenizer is not None:  # (index-only callers pass none)
                check_token_ids(low_level, tokenizer.vocab_size, _cache_dir(cfg, prefix), cfg.tokenizer_type)
    if len(prefixes) == 1:
        return tuple(_split_datasets(cfg, low_levels[0], _cache_dir(cfg, prefixes[0]), samples, tokenizer))
    if weights is None:  # unweighted list: proportional to each dataset's tokens
        weights = [d.num_tokens for d in low_levels]
    total = float(sum(weights))
    weights = [w / total for w in weights]
    per_dataset = []
    for low_level, prefix, w in zip(low_levels, prefixes, weights):
        wanted = [None if n is None else int(math.ceil(n * w * BLEND_MARGIN)) for n in samples]
        per_dataset.append(_split_datasets(cfg, low_level, _cache_dir(cfg, prefix), wanted, tokenizer))
    blends = []
    for s, (name, num) in enumerate(zip(SPLIT_NAMES, samples)):
        parts = [(d[s], w) for d, w in zip(per_dataset, weights) if d[s] is not None]
        if not parts:
            blends.append(None)
            continue
        size = num if num is not None else sum(len(p) for p, _ in parts)
        blends.append(BlendedDataset([p for p, _ in parts], [w for _, w in parts], size,
                                     _cache_dir(cfg, prefixes[0]), name))
    return tuple(blends)


def build_train_valid_test_datasets(cfg, tokenizer, train_samples, valid_samples, test_samples, rank=0,
                                    barrier=None, log=None):
    """(train, valid, test) map-style datasets whose items are {"text": int64[seq_length + 1]}, or ready
    micro-batch rows (see data/ltor.py, data/sft_dataset.py) with --sft or Megatron's reset/eod-mask flags.

    A split is None when its --split part is 0 or its sample count is 0; a count of None means one epoch.
    ``log`` receives one line per SFT split (packing, truncated and skipped conversations).
    """
    samples = (train_samples, valid_samples, test_samples)
    datasets = rank_zero_first(lambda: _build(cfg, tokenizer, samples), rank, barrier)
    for dataset in datasets:
        for part in getattr(dataset, "datasets", [dataset]):
            if log is not None and getattr(part, "summary", None):
                log(f" > SFT data, {part.summary}")
    return datasets if cfg.sft else with_ltor_masks(datasets, cfg, tokenizer.eod)


def rank_zero_first(build, rank=0, barrier=None):
    """Run `build` on rank 0, then `barrier`, then on the other ranks (which then find the caches).

    If rank 0 fails it still reaches the barrier before raising, so the other ranks do not hang; they
    then run `build` themselves and normally meet the same error.
    """
    result, error = None, None
    if rank == 0:
        try:
            result = build()
        except Exception as err:  # noqa: BLE001 - re-raised after the barrier
            error = err
    if barrier is not None:
        barrier()
    if error is not None:
        raise error
    return result if rank == 0 else build()
