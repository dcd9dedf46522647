"""Tiny corpora and tokenizers trained inside the test session (no downloads, a few seconds in all)."""

import json
import os
import types

import pytest

from megatron_fp8.data.tokenizer_training import train_gpt2_bpe, train_sentencepiece

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_CODE = '''def fibonacci(n):
    """Return the n-th Fibonacci number."""
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


class Point:
\tdef __init__(self, x, y):
\t\tself.x, self.y = x, y

    def __repr__(self):
        return f"Point({self.x!r}, {self.y!r})"   # trailing spaces   
'''

_PROSE = ("The quick brown fox jumps over the lazy dog. It's a sentence we've all seen; they'll see it again. "
          "Numbers like 3.14159 and 2718 appear, as do cafés, naïve façades, 東京 and 😀 emoji.\n")


def corpus_texts(n=60):
    """Deterministic small documents mixing code and prose."""
    texts = []
    for i in range(n):
        body = _CODE.replace("fibonacci", f"fibonacci_{i % 7}") if i % 2 else _PROSE * (1 + i % 3)
        texts.append(f"# document {i}\n" + body)
    return texts


def write_jsonl(path, texts, key="text"):
    with open(path, "w", encoding="utf-8") as out:
        for text in texts:
            out.write(json.dumps({key: text}) + "\n")
    return str(path)


@pytest.fixture(scope="session")
def texts():
    return corpus_texts()


@pytest.fixture(scope="session")
def spm_model(tmp_path_factory, texts):
    path = tmp_path_factory.mktemp("spm") / "tokenizer.model"
    return train_sentencepiece(texts * 3, str(path), vocab_size=400, num_threads=1)


@pytest.fixture(scope="session")
def gpt2_files(tmp_path_factory, texts):
    folder = tmp_path_factory.mktemp("gpt2")
    vocab, merges = str(folder / "vocab.json"), str(folder / "merges.txt")
    train_gpt2_bpe(texts, vocab, merges, vocab_size=500)
    return vocab, merges


@pytest.fixture()
def spm_cfg(spm_model):
    return types.SimpleNamespace(tokenizer_type="SentencePieceTokenizer", tokenizer_model=spm_model,
                                 vocab_file=None, merge_file=None, vocab_size=None)


@pytest.fixture()
def gpt2_cfg(gpt2_files):
    return types.SimpleNamespace(tokenizer_type="GPT2BPETokenizer", vocab_file=gpt2_files[0],
                                 merge_file=gpt2_files[1], tokenizer_model=None, vocab_size=None)
