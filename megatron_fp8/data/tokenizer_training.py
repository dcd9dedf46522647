"""Offline tokenizer training from text or JSONL files: SentencePiece BPE and GPT-2 byte-level BPE.

The SentencePiece settings keep text exact (identity normalisation, no whitespace folding, no dummy
prefix, byte fallback, newline and tab as their own pieces), so decode(encode(text)) == text for
source code, which the default corpus relies on.
"""

import io
import json
import os

from megatron_fp8.data.bpe_trainer import train_byte_level_bpe, write_vocab_and_merges
from megatron_fp8.fsutil import atomic_write_bytes
from megatron_fp8.data.preprocess import open_binary

MAX_SENTENCE_BYTES = 1 << 14


def iter_texts(paths, json_key: str = "text"):
    """Documents from files: each JSONL line's `json_key` for .jsonl/.json(.gz), else the whole file."""
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: input file not found")
        name = path[:-3] if path.endswith(".gz") else path
        with open_binary(path) as handle:
            if not name.endswith((".jsonl", ".json")):
                yield _decode(handle.read(), path, None)
                continue
            for lineno, raw in enumerate(handle, 1):
                if not raw.strip():
                    continue
                try:
                    record = json.loads(_decode(raw, path, lineno))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{lineno}: malformed JSON ({err.msg})") from None
                if not isinstance(record, dict) or not isinstance(record.get(json_key), str):
                    raise ValueError(f"{path}:{lineno}: no string under key {json_key!r}")
                yield record[json_key]


def _decode(raw: bytes, path: str, lineno) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        where = f"{path}:{lineno}" if lineno else path
        raise ValueError(f"{where}: invalid UTF-8 at byte offset {err.start}") from None


def _sentences(texts, max_sentences: int | None):
    """Non-empty lines (SentencePiece trains on lines), thinned by a fixed stride when over the cap."""
    lines = [line for text in texts for line in text.split("\n")
             if line.strip() and len(line.encode("utf-8")) <= MAX_SENTENCE_BYTES]
    if max_sentences and len(lines) > max_sentences:
        stride = len(lines) / max_sentences
        lines = [lines[int(i * stride)] for i in range(max_sentences)]
    return lines


def train_sentencepiece(texts, model_file: str, vocab_size: int = 8192, model_type: str = "bpe",
                        num_threads: int = 2, max_sentences: int | None = 2_000_000) -> str:
    """Train and atomically write a SentencePiece model that round-trips text exactly; returns its path."""
    import sentencepiece

    sentences = _sentences(texts, max_sentences)
    if not sentences:
        raise ValueError("no text to train the tokenizer on")
    buffer = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=buffer, model_type=model_type,
            vocab_size=vocab_size, byte_fallback=True, normalization_rule_name="identity",
            remove_extra_whitespaces=False, add_dummy_prefix=False, allow_whitespace_only_pieces=True,
            user_defined_symbols=["\n", "\t"], character_coverage=0.9999, split_digits=False,
            max_sentence_length=MAX_SENTENCE_BYTES, input_sentence_size=0, num_threads=num_threads,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1, hard_vocab_limit=False, minloglevel=2)
    except RuntimeError as err:
        raise ValueError(f"SentencePiece training failed: {err}") from None
    os.makedirs(os.path.dirname(os.path.abspath(model_file)), exist_ok=True)
    atomic_write_bytes(model_file, buffer.getvalue())
    return model_file


def train_gpt2_bpe(texts, vocab_file: str, merge_file: str, vocab_size: int = 8192, min_frequency: int = 2):
    """Train a byte-level BPE and write GPT-2's vocab.json + merges.txt; returns the vocabulary size."""
    vocab, merges = train_byte_level_bpe(texts, vocab_size, min_frequency)
    for path in (vocab_file, merge_file):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_vocab_and_merges(vocab, merges, vocab_file, merge_file)
    return len(vocab)
