"""Train a GPT-2 style byte-level BPE and write it as vocab.json + merges.txt, offline and deterministic.

Words come from the GPT-2 pre-tokenisation pattern, so the learned merges never cross the boundaries that
the encoder (`gpt2_bpe.ByteLevelBPE`) applies. Each step merges the most frequent adjacent pair (ties:
the lexicographically smallest pair); counts are updated incrementally for the words that contain it.
"""

import heapq
import json
from collections import Counter, defaultdict
from typing import Iterable

from megatron_fp8.fsutil import atomic_file
from megatron_fp8.data.gpt2_bpe import BYTE_TO_CHAR, EOT, pretokenize, to_byte_chars


def count_words(texts: Iterable[str]) -> Counter:
    """Frequency of every pre-token, already mapped to byte characters."""
    counts: Counter = Counter()
    for text in texts:
        counts.update(pretokenize(text))
    return Counter({to_byte_chars(w): c for w, c in counts.items()})


def _pairs(symbols):
    return zip(symbols, symbols[1:])


def _merge_symbols(symbols: list[str], first: str, second: str) -> list[str]:
    out, i, n = [], 0, len(symbols)
    while i < n:
        if i < n - 1 and symbols[i] == first and symbols[i + 1] == second:
            out.append(first + second)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def learn_merges(word_counts: Counter, num_merges: int, min_frequency: int = 2) -> list[tuple[str, str]]:
    """Greedy BPE merges over `word_counts` (byte-character words -> frequency)."""
    words = [list(w) for w in sorted(word_counts)]
    freqs = [word_counts[w] for w in sorted(word_counts)]
    pair_count: dict = defaultdict(int)
    where: dict = defaultdict(set)
    for idx, (symbols, freq) in enumerate(zip(words, freqs)):
        for pair in _pairs(symbols):
            pair_count[pair] += freq
            where[pair].add(idx)
    heap = [(-c, p) for p, c in pair_count.items()]
    heapq.heapify(heap)
    merges: list[tuple[str, str]] = []
    while heap and len(merges) < num_merges:
        neg, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -neg:
            continue  # stale entry: the pair's count changed and a fresh entry was pushed
        if -neg < min_frequency:
            break
        merges.append(pair)
        changed = set()
        for idx in sorted(where.pop(pair, ())):
            old, freq = words[idx], freqs[idx]
            new = _merge_symbols(old, *pair)
            if len(new) == len(old):
                continue
            for p in _pairs(old):
                pair_count[p] -= freq
                changed.add(p)
            for p in _pairs(new):
                pair_count[p] += freq
                where[p].add(idx)
                changed.add(p)
            words[idx] = new
        pair_count.pop(pair, None)
        for p in changed:
            count = pair_count.get(p, 0)
            if count > 0:
                heapq.heappush(heap, (-count, p))
            else:
                pair_count.pop(p, None)
    return merges


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """GPT-2's id order: the 256 byte characters, one id per merge, then <|endoftext|>."""
    vocab = {c: i for i, c in enumerate(BYTE_TO_CHAR.values())}
    for first, second in merges:
        vocab.setdefault(first + second, len(vocab))
    vocab[EOT] = len(vocab)
    return vocab


def train_byte_level_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2):
    """Return (vocab, merges) with at most `vocab_size` entries (256 bytes + merges + <|endoftext|>)."""
    if vocab_size < 257:
        raise ValueError(f"vocab_size {vocab_size} is below the 256 byte tokens + <|endoftext|>")
    return_merges = learn_merges(count_words(texts), vocab_size - 257, min_frequency)
    return build_vocab(return_merges), return_merges


def write_vocab_and_merges(vocab: dict[str, int], merges, vocab_file: str, merge_file: str) -> None:
    """Write both files atomically in the layout of GPT-2's encoder.json / vocab.bpe."""
    with atomic_file(vocab_file) as tmp:
        with open(tmp, "w", encoding="utf-8") as out:
            json.dump(vocab, out, ensure_ascii=False)
    with atomic_file(merge_file) as tmp:
        with open(tmp, "w", encoding="utf-8") as out:
            out.write("#version: 0.2\n")
            out.writelines(f"{a} {b}\n" for a, b in merges)
