"""SFT datasets: chat conversations tokenized once (cached), packed into ``--seq-length`` samples.

``SFTConversations`` tokenizes every conversation of a JSONL file with the SFTTokenizer and caches the
result (tokens, which of them are assistant targets, conversation offsets, source line numbers) with
``index_cache``, keyed by the file's and the tokenizer's content, so only rank 0 ever tokenizes.

``SFTDataset`` packs the conversations of one split: each epoch visits them in an order shuffled by the
seed and fills samples of ``seq_length + 1`` tokens greedily, starting a new sample when the next
conversation does not fit, then pads. A conversation longer than a whole sample is truncated to it when
the kept part still has an assistant target, and skipped otherwise (both counted in the start-up log).
Every packed conversation restarts positions at 0 and attends only to itself (``document_ids``); the
loss covers assistant tokens only, never a prediction across a boundary, never padding.
"""

import os

import numpy as np

from megatron_fp8.data.chat import read_jsonl
from megatron_fp8.data.index_cache import load_or_build

SFT_FORMAT_VERSION = 1


class SFTConversations:
    """The tokenized conversations of one JSONL file (the SFT counterpart of an IndexedDataset)."""

    def __init__(self, path: str, tokenizer, cache_dir: str | None):
        self.prefix = path
        self.identity = {"path": os.path.abspath(path), "bytes": os.path.getsize(path),
                         "mtime_ns": os.stat(path).st_mtime_ns, "tokenizer": tokenizer.identity}
        description = {"class": "SFTConversations", "version": SFT_FORMAT_VERSION, "dataset": self.identity}
        arrays = load_or_build(cache_dir, "SFTConversations", description, ("tokens", "targets", "offsets", "lines"),
                               lambda: self._tokenize(path, tokenizer))
        self.tokens, self.targets = arrays["tokens"], arrays["targets"]
        self.offsets, self.lines = arrays["offsets"], arrays["lines"]
        self.sequence_lengths = np.diff(self.offsets)
        self.num_tokens = int(self.offsets[-1])

    @staticmethod
    def _tokenize(path: str, tokenizer) -> dict:
        tokens, targets, lengths, lines = [], [], [], []
        for line, conversation in read_jsonl(path):
            ids, marks = tokenizer.tokenize_conversation(conversation, f"{path}:{line}")
            tokens.append(ids)
            targets.append(marks)
            lengths.append(ids.size)
            lines.append(line)
        if not tokens:
            raise ValueError(f"--data-path {path}: no conversations (empty file?)")
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return {"tokens": np.concatenate(tokens).astype(np.int32), "targets": np.concatenate(targets),
                "offsets": offsets, "lines": np.asarray(lines, dtype=np.int64)}

    def __len__(self) -> int:
        return int(self.sequence_lengths.size)

    def get(self, i: int, length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Tokens and target flags of conversation ``i`` (its first ``length`` tokens)."""
        start = int(self.offsets[i])
        end = int(self.offsets[i + 1]) if length is None else start + length
        return self.tokens[start:end], self.targets[start:end]


def kept_lengths(low_level: SFTConversations, conversations: np.ndarray, sample_tokens: int) -> np.ndarray:
    """Tokens each conversation contributes: all of it, ``sample_tokens`` when truncated, 0 when skipped
    (longer than a sample with no assistant target left to predict inside it)."""
    lengths = low_level.sequence_lengths[conversations].astype(np.int64)
    kept = lengths.copy()
    for k in np.nonzero(lengths > sample_tokens)[0]:
        _, targets = low_level.get(int(conversations[k]), sample_tokens)
        kept[k] = sample_tokens if targets[1:].any() else 0
    return kept


def pack(order: np.ndarray, kept: dict, sample_tokens: int) -> list[int]:
    """Start positions in ``order`` of each greedily packed sample (plus the end)."""
    starts, used = [], 0
    for k, conv in enumerate(order):
        length = kept[int(conv)]
        if length == 0:
            continue
        if not starts or used + length > sample_tokens:
            starts.append(k)
            used = 0
        used += length
    return starts


def build_packing(low_level: SFTConversations, conv_range, num_samples: int | None, seq_length: int,
                  seed: int) -> dict:
    """The packing index: conversation ``order`` over the epochs and each sample's ``bounds`` in it."""
    start, end = conv_range
    conversations = np.arange(start, end, dtype=np.int64)
    sample_tokens = seq_length + 1
    kept_arr = kept_lengths(low_level, conversations, sample_tokens)
    if not kept_arr.any():
        raise ValueError(f"--seq-length {seq_length}: every conversation of {low_level.prefix} (lines "
                         f"{int(low_level.lines[start])}..{int(low_level.lines[end - 1])}) is longer than a sample "
                         "and has no assistant token within it")
    kept = dict(zip(conversations.tolist(), kept_arr.tolist()))
    rng = np.random.RandomState(seed)
    orders, bounds, offset, per_epoch = [], [0], 0, None
    while True:
        order = conversations.copy()
        rng.shuffle(order)
        starts = pack(order, kept, sample_tokens)
        per_epoch = per_epoch or len(starts)
        bounds += [offset + s for s in starts[1:]] + [offset + len(order)]
        orders.append(order)
        offset += len(order)
        if num_samples is None or len(bounds) - 1 >= num_samples:
            break
    lengths = low_level.sequence_lengths[conversations]
    stats = np.array([len(conversations), int((kept_arr == 0).sum()),
                      int(((lengths > sample_tokens) & (kept_arr > 0)).sum()), per_epoch], dtype=np.int64)
    return {"order": np.concatenate(orders).astype(np.int64), "bounds": np.asarray(bounds, dtype=np.int64),
            "stats": stats}


class SFTDataset:
    """Packed samples over conversations [start, end) of ``low_level``; items are ready micro-batch rows:
    ``tokens``, ``labels``, ``loss_mask``, ``position_ids``, ``document_ids`` (each ``seq_length`` long)."""

    def __init__(self, low_level: SFTConversations, conv_range: tuple[int, int], num_samples: int | None,
                 seq_length: int, seed: int, cache_dir: str | None, split_name: str, pad: int):
        start, end = conv_range
        if end <= start:
            raise ValueError(f"--split: the {split_name} split of {low_level.prefix} gets no conversations")
        self.low_level, self.seq_length, self.pad = low_level, seq_length, pad
        self.description = {"class": "SFTDataset", "version": SFT_FORMAT_VERSION, "split": split_name,
                            "dataset": low_level.identity, "conversations": [start, end],
                            "num_samples": num_samples, "seq_length": seq_length, "seed": seed}
        arrays = load_or_build(cache_dir, f"SFTDataset-{split_name}", self.description, ("order", "bounds", "stats"),
                               lambda: build_packing(low_level, conv_range, num_samples, seq_length, seed))
        self.order, self.bounds = arrays["order"], arrays["bounds"]
        total, skipped, truncated, per_epoch = (int(x) for x in arrays["stats"])
        self.summary = (f"{split_name} split of {low_level.prefix}: {total} conversations packed into {per_epoch} "
                        f"samples of --seq-length {seq_length} per epoch; {truncated} truncated to one sample, "
                        f"{skipped} skipped (longer than a sample, no assistant token within it)")

    def __len__(self) -> int:
        return int(self.bounds.size - 1)

    def __getitem__(self, idx: int) -> dict:
        if not -len(self) <= idx < len(self):
            raise IndexError(f"sample {idx} out of range for {len(self)} samples")
        idx %= len(self)
        size = self.seq_length + 1
        tokens = np.full(size, self.pad, dtype=np.int64)
        targets = np.zeros(size, dtype=bool)
        documents = np.zeros(size, dtype=np.int64)
        positions = np.zeros(size, dtype=np.int64)
        at = 0
        for d, conv in enumerate(self.order[self.bounds[idx]:self.bounds[idx + 1]]):
            conv_tokens, conv_targets = self.low_level.get(int(conv))
            n = min(conv_tokens.size, size)
            if conv_tokens.size > size and not conv_targets[1:size].any():
                continue  # skipped when packing
            tokens[at:at + n], targets[at:at + n] = conv_tokens[:n], conv_targets[:n]
            documents[at:at + n], positions[at:at + n] = d, np.arange(n)
            at += n
        documents[at:] = documents[at - 1] + 1 if at else 0  # padding: a document of its own
        positions[at:] = np.arange(size - at)
        same = documents[1:] == documents[:-1]
        return {"tokens": tokens[:-1], "labels": tokens[1:],
                "loss_mask": (targets[1:] & same).astype(np.float32),
                "position_ids": positions[:-1], "document_ids": documents[:-1]}
