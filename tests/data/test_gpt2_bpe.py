"""Byte-level BPE: equal to a plain re-statement of the GPT-2 reference algorithm on hard Unicode input,
exact round trips, GPT-2 file layout, and (when installed) equal to Hugging Face `tokenizers`."""

import json
import random

import pytest
import regex

from megatron_fp8.data.gpt2_bpe import ByteLevelBPE
from megatron_fp8.data.tokenizer import GPT2BPETokenizer

# The reference pieces, restated independently of the implementation under test.
REF_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def ref_byte_table():
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    chars, n = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + n)
            n += 1
    return chars


def ref_encode(text, vocab, merges):
    table, ranks = ref_byte_table(), {tuple(m): r for r, m in enumerate(merges)}
    ids = []
    for token in regex.findall(REF_PATTERN, text):
        word = [table[b] for b in token.encode("utf-8")]
        while len(word) > 1:
            ranked = [(ranks[p], p) for p in zip(word, word[1:]) if p in ranks]
            if not ranked:
                break
            _, (a, b) = min(ranked)
            out, i = [], 0
            while i < len(word):
                if word[i] == a and i + 1 < len(word) and word[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            word = out
        ids.extend(vocab[w] for w in word)
    return ids


HARD_TEXTS = [
    "emoji 😀👍🏽👨‍👩‍👧‍👦 🇫🇷 flags and ZWJ sequences",
    "CJK 東京都 中文字符 日本語のテキスト 한국어 텍스트",
    "whitespace runs:    four, \t\ttabs,\n\n\nnewlines, \r\n CRLF,   trailing   ",
    "control \x00\x01\x07\x08\x1b[0m\x7f\x85\u200b\u2028\u3000 characters",
    "contractions it's they'll I'm we've 'S 'LL don't",
    "digits 1234567890 ٣٤٥ ½ Ⅻ and combining a\u0301 e\u0308 ﷽ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "", " ", "\n", "  \n  ", "<|endoftext|> is plain text here",
]


@pytest.fixture(scope="module")
def bpe(gpt2_files):
    return ByteLevelBPE.from_files(*gpt2_files)


@pytest.fixture(scope="module")
def vocab_merges(gpt2_files):
    vocab = json.load(open(gpt2_files[0], encoding="utf-8"))
    merges = [tuple(line.split()) for line in open(gpt2_files[1], encoding="utf-8").read().splitlines()[1:]]
    return vocab, merges


@pytest.mark.parametrize("text", HARD_TEXTS)
def test_matches_reference_and_round_trips(bpe, vocab_merges, text):
    ids = bpe.encode(text)
    assert ids == ref_encode(text, *vocab_merges)
    assert bpe.decode(ids) == text


def test_random_unicode_matches_reference(bpe, vocab_merges, texts):
    rng = random.Random(0)
    pool = "".join(texts) + "😀東京\t\n  \r\x00é"
    planes = [(0x20, 0x7F), (0x80, 0x800), (0x800, 0xD800), (0xE000, 0x10000), (0x10000, 0x20000)]
    for _ in range(200):
        parts = []
        for _ in range(rng.randint(1, 30)):
            if rng.random() < 0.5:
                lo, hi = rng.choice(planes)
                parts.append(chr(rng.randrange(lo, hi)))
            else:
                start = rng.randrange(len(pool))
                parts.append(pool[start:start + rng.randint(1, 12)])
        text = "".join(parts)
        assert bpe.encode(text) == ref_encode(text, *vocab_merges)
        assert bpe.decode(bpe.encode(text)) == text


def test_file_layout_is_gpt2s(gpt2_files, vocab_merges):
    vocab, merges = vocab_merges
    assert open(gpt2_files[1], encoding="utf-8").readline() == "#version: 0.2\n"
    assert list(vocab)[:3] == ["!", '"', "#"] and vocab["Ā"] == 188 and vocab["Ġ"] == 220  # GPT-2's byte ids
    assert sorted(vocab.values()) == list(range(len(vocab)))
    assert vocab["<|endoftext|>"] == len(vocab) - 1
    assert all(vocab["".join(m)] < vocab["<|endoftext|>"] for m in merges)
    assert len(vocab) <= 500


def test_tokenizer_wrapper(gpt2_files):
    tok = GPT2BPETokenizer(*gpt2_files)
    assert tok.eod == tok.eod_id == tok.vocab_size - 1
    assert tok.detokenize(tok.tokenize("def f(x):\n    return x")) == "def f(x):\n    return x"


def test_partial_utf8_decodes_with_replacement(bpe):
    ids = bpe.encode("🦀")  # absent from the training text: split into byte-level pieces
    assert len(ids) >= 2 and "\ufffd" in bpe.decode(ids[:1])


def test_same_ids_as_huggingface_tokenizers(bpe, gpt2_files, texts):
    tokenizers = pytest.importorskip("tokenizers")
    hf = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(*gpt2_files))
    hf.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    for text in HARD_TEXTS + texts[:10]:
        assert bpe.encode(text) == hf.encode(text, add_special_tokens=False).ids
