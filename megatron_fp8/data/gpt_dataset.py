"""Megatron's GPTDataset: fixed-length samples that run across document boundaries, in shuffled order.

Three index arrays, all determined by the seed, cached by `index_cache`:
- document index: the split's documents repeated for enough epochs and shuffled with
  RandomState(seed); when the last epoch would contribute under 80% of an epoch's samples it is shuffled
  separately, so the rare final-epoch documents are not spread over the whole run (as in Megatron-Core);
- sample index: (position in the document index, token offset) where each sample starts, one row more
  than there are samples; sample i covers seq_length + 1 tokens, the last shared with sample i + 1;
- shuffle index: a permutation of the samples (final-epoch samples again permuted separately).
"""

import numpy as np

from megatron_fp8.data.index_cache import load_or_build

INDEX_FORMAT_VERSION = 1
FINAL_EPOCH_THRESHOLD = 0.80


def num_epochs_needed(tokens_per_epoch: int, num_samples: int | None, seq_length: int) -> int:
    """Fewest epochs whose tokens cover num_samples samples (plus the one extra label token)."""
    if num_samples is None:
        return 1
    needed = num_samples * seq_length + 1
    return max(1, -(-needed // tokens_per_epoch))


def build_document_index(documents: np.ndarray, num_epochs: int, rng: np.random.RandomState,
                         separate_final_epoch: bool) -> np.ndarray:
    if separate_final_epoch and num_epochs > 1:
        head = build_document_index(documents, num_epochs - 1, rng, False)
        return np.concatenate([head, build_document_index(documents, 1, rng, False)])
    index = np.tile(np.asarray(documents, dtype=np.int32), num_epochs)
    rng.shuffle(index)
    return index


def build_sample_index(sequence_lengths: np.ndarray, document_index: np.ndarray, seq_length: int) -> np.ndarray:
    """Vectorised equivalent of Megatron's helper: sample i starts at global token i * seq_length."""
    ends = np.cumsum(sequence_lengths[document_index], dtype=np.int64)
    num_samples = (int(ends[-1]) - 1) // seq_length if ends.size else 0
    starts_at = np.arange(num_samples + 1, dtype=np.int64) * seq_length
    position = np.searchsorted(ends, starts_at, side="right")  # first document ending after the token
    offset = starts_at - (ends[position] - sequence_lengths[document_index[position]])
    dtype = np.int32 if max(document_index.size, int(sequence_lengths.max(initial=0))) < 2 ** 31 else np.int64
    return np.stack([position, offset], axis=1).astype(dtype)


def build_shuffle_index(first: int, total: int, rng: np.random.RandomState) -> np.ndarray:
    """Permute [0, first) and [first, total) separately."""
    dtype = np.uint32 if total < np.iinfo(np.uint32).max - 1 else np.int64
    head = np.arange(first, dtype=dtype)
    rng.shuffle(head)
    if first == total:
        return head
    tail = np.arange(first, total, dtype=dtype)
    rng.shuffle(tail)
    return np.concatenate([head, tail])


def build_gpt_indices(sequence_lengths, documents, num_samples, seq_length, seed) -> dict:
    """The three arrays for `documents` (sequence ids) of a dataset."""
    tokens_per_epoch = int(np.sum(sequence_lengths[documents], dtype=np.int64))
    num_epochs = num_epochs_needed(tokens_per_epoch, num_samples, seq_length)
    separate_final_epoch, samples_before_final = False, 0
    if num_epochs > 1:
        samples_before_final = ((num_epochs - 1) * tokens_per_epoch - 1) // seq_length
        samples_per_epoch = (tokens_per_epoch - 1) // seq_length
        separate_final_epoch = (num_samples - samples_before_final) < int(FINAL_EPOCH_THRESHOLD * samples_per_epoch)
    rng = np.random.RandomState(seed)
    document_index = build_document_index(documents, num_epochs, rng, separate_final_epoch)
    sample_index = build_sample_index(sequence_lengths, document_index, seq_length)
    total = sample_index.shape[0] - 1
    shuffle_index = build_shuffle_index(samples_before_final if separate_final_epoch else total, total, rng)
    return {"document_index": document_index, "sample_index": sample_index, "shuffle_index": shuffle_index}


class GPTDataset:
    """Map-style dataset over documents [start, end) of `low_level` (an IndexedDataset or the mock).

    `len()` counts every sample of the epochs built, so it is at least `num_samples`.
    """

    def __init__(self, low_level, doc_range: tuple[int, int], num_samples: int | None, seq_length: int,
                 seed: int, cache_dir: str | None = None, split_name: str = "train"):
        start, end = doc_range
        tokens = int(np.sum(low_level.sequence_lengths[start:end], dtype=np.int64))
        if tokens == 0 or (num_samples is None and tokens <= seq_length):
            raise ValueError(f"--split: the {split_name} split of {getattr(low_level, 'prefix', 'the data')} "
                             f"(documents {start}..{end}) has {tokens} tokens, too few for a sample of "
                             f"{seq_length + 1}")
        self.low_level, self.seq_length = low_level, seq_length
        self.description = {"class": "GPTDataset", "version": INDEX_FORMAT_VERSION, "split": split_name,
                            "dataset": getattr(low_level, "identity", None), "documents": [start, end],
                            "num_samples": num_samples, "seq_length": seq_length, "seed": seed}
        cache_dir = cache_dir if self.description["dataset"] is not None else None
        arrays = load_or_build(
            cache_dir, f"GPTDataset-{split_name}", self.description,
            ("document_index", "sample_index", "shuffle_index"),
            lambda: build_gpt_indices(low_level.sequence_lengths, np.arange(start, end), num_samples,
                                      seq_length, seed))
        self.document_index = arrays["document_index"]
        self.sample_index = arrays["sample_index"]
        self.shuffle_index = arrays["shuffle_index"]

    def __len__(self) -> int:
        return int(self.shuffle_index.shape[0])

    def __getitem__(self, idx: int) -> dict:
        if not -len(self) <= idx < len(self):
            raise IndexError(f"sample {idx} out of range for {len(self)} samples")
        i = int(self.shuffle_index[idx])
        (doc_beg, off_beg), (doc_end, off_end) = self.sample_index[i], self.sample_index[i + 1]
        doc_beg, off_beg, doc_end, off_end = int(doc_beg), int(off_beg), int(doc_end), int(off_end)
        get, docs = self.low_level.get, self.document_index
        if doc_beg == doc_end:
            parts = [get(int(docs[doc_beg]), off_beg, off_end - off_beg + 1)]
        else:
            parts = [get(int(docs[doc_beg]), off_beg)]
            parts += [get(int(docs[k])) for k in range(doc_beg + 1, doc_end)]
            parts.append(get(int(docs[doc_end]), 0, off_end + 1))
        text = np.concatenate(parts).astype(np.int64)
        assert text.size == self.seq_length + 1, (text.size, idx)
        return {"text": text}
