"""Token ids of a .bin checked against the tokenizer's vocabulary when a dataset is built.

Data tokenized with another tokenizer (or another ``--vocab-size``) would otherwise train silently on the
wrong embedding rows (a vocab-parallel embedding masks ids it does not own) or crash deep in the model.
The smallest and largest id are found with one blockwise scan of the memory map and cached beside the
dataset's index caches (keyed by the files' sizes and modification times), so later runs skip the scan.
"""

import os

import numpy as np

from megatron_fp8.data.index_cache import load_or_build
from megatron_fp8.data.indexed_dataset import DataFormatError, bin_path, idx_path

BLOCK = 1 << 24  # tokens per scanned block


class TokenIdError(DataFormatError):
    """A dataset holds token ids outside the vocabulary; the message names the file, document and id."""


def _token_range(tokens: np.ndarray) -> np.ndarray:
    blocks = [tokens[start:start + BLOCK] for start in range(0, tokens.size, BLOCK)]
    return np.array([min(int(b.min()) for b in blocks), max(int(b.max()) for b in blocks)], dtype=np.int64)


def _first_outside(dataset, vocab_size: int) -> tuple[int, int]:
    """(token position in .bin, id) of the first id outside [0, vocab_size)."""
    tokens = dataset.tokens
    for start in range(0, tokens.size, BLOCK):
        block = tokens[start:start + BLOCK].astype(np.int64)
        bad = np.flatnonzero((block < 0) | (block >= vocab_size))
        if bad.size:
            return start + int(bad[0]), int(block[bad[0]])
    raise AssertionError("no id outside the vocabulary")  # the cached range said there was one


def _where(dataset, position: int) -> str:
    starts = np.asarray(dataset.sequence_pointers) // dataset.dtype.itemsize
    sequence = int(np.searchsorted(starts, position, side="right")) - 1
    document = int(np.searchsorted(dataset.document_indices, sequence, side="right")) - 1
    return f"document {document}, token {position - int(starts[sequence])} of it"


def check_token_ids(dataset, vocab_size: int, cache_dir: str | None, tokenizer_name: str = "the tokenizer") -> None:
    """Raise :class:`TokenIdError` if an id of ``dataset`` (an IndexedDataset) is not in [0, vocab_size)."""
    if dataset.num_tokens == 0:
        return
    path = bin_path(dataset.prefix)
    stamps = {p: [os.path.getsize(p), os.stat(p).st_mtime_ns] for p in (path, idx_path(dataset.prefix))}
    description = {"class": "TokenRange", "version": 1, "dataset": dataset.identity, "files": stamps}
    low, high = load_or_build(cache_dir, "TokenRange", description, ("range",),
                              lambda: {"range": _token_range(dataset.tokens)})["range"].tolist()
    if low >= 0 and high < vocab_size:
        return
    position, token = _first_outside(dataset, vocab_size)
    raise TokenIdError(
        f"{path}: token id {token} ({_where(dataset, position)}) is outside the vocabulary of {tokenizer_name} "
        f"({vocab_size} ids, 0..{vocab_size - 1}); the ids of this file range over {low}..{high}: it was "
        f"tokenized with another tokenizer or --vocab-size. Train with the tokenizer the data was made with, "
        f"or re-run tools/preprocess_data.py with this one")
