"""SentencePiece exact round trip on code, NullTokenizer, Hugging Face loading, tokenizer selection errors."""

import types

import pytest

from megatron_fp8.data.tokenizer import (GPT2BPETokenizer, HuggingFaceTokenizer, NullTokenizer,
                                         SentencePieceTokenizer, build_tokenizer)
from megatron_fp8.data.tokenizer_training import iter_texts, train_sentencepiece

from .conftest import write_jsonl

TRICKY_CODE = [
    "def f(x):\n\tif x:\n        return  x  # two spaces\n\n\n",
    "    leading indentation and trailing spaces   \n",
    "\n\nstarts with newlines",
    "unicode: é 😀 中文 \u00a0nbsp \u3000ideographic space \r\n CRLF \x00\x07",
    "",
    "s = '''\n    multi\n\tline\n'''\n",
]


@pytest.mark.parametrize("text", TRICKY_CODE)
def test_sentencepiece_round_trips_code_exactly(spm_model, text):
    tok = SentencePieceTokenizer(spm_model)
    assert tok.decode(tok.encode(text)) == text


def test_sentencepiece_model_settings(spm_model, texts):
    tok = SentencePieceTokenizer(spm_model)
    assert tok.eod == 2 and tok.sp.id_to_piece(tok.eod) == "</s>"
    assert tok.vocab_size <= 400
    assert tok.sp.piece_to_id("\n") not in (tok.sp.unk_id(), -1)   # newline is its own piece
    for text in texts:
        assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode("    return a")) < len("    return a")    # merges were learned


def test_sentencepiece_training_is_deterministic(tmp_path, texts):
    a = train_sentencepiece(texts, str(tmp_path / "a.model"), vocab_size=400, num_threads=1)
    b = train_sentencepiece(texts, str(tmp_path / "b.model"), vocab_size=400, num_threads=1)
    assert open(a, "rb").read() == open(b, "rb").read()


def test_null_tokenizer_follows_megatron():
    tok = NullTokenizer(100)
    assert tok.vocab_size == 101 and tok.eod == 100
    assert tok.encode("3 1 4") == [3, 1, 4] and tok.decode([3, 1, 4]) == "3 1 4"


def test_build_tokenizer_dispatch_and_errors(spm_cfg, gpt2_cfg, tmp_path):
    assert isinstance(build_tokenizer(spm_cfg), SentencePieceTokenizer)
    assert isinstance(build_tokenizer(gpt2_cfg), GPT2BPETokenizer)
    assert build_tokenizer(types.SimpleNamespace(tokenizer_type="NullTokenizer", vocab_size=7)).vocab_size == 8
    with pytest.raises(ValueError, match="--tokenizer-type"):
        build_tokenizer(types.SimpleNamespace(tokenizer_type="BertWordPiece"))
    with pytest.raises(FileNotFoundError, match="missing.model"):
        SentencePieceTokenizer(str(tmp_path / "missing.model"))
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.model"):
        SentencePieceTokenizer(str(junk))
    bad_vocab = tmp_path / "vocab.json"
    bad_vocab.write_text('{"a": 0}')
    with pytest.raises(ValueError, match="endoftext"):
        GPT2BPETokenizer(str(bad_vocab), gpt2_cfg.merge_file)
    bad_vocab.write_text("[1, 2")
    with pytest.raises(ValueError, match="vocab.json"):
        GPT2BPETokenizer(str(bad_vocab), gpt2_cfg.merge_file)


def test_iter_texts_reads_jsonl_and_text(tmp_path, texts):
    jsonl = write_jsonl(tmp_path / "c.jsonl", texts[:3])
    plain = tmp_path / "c.txt"
    plain.write_text("plain file\n", encoding="utf-8")
    assert list(iter_texts([jsonl, str(plain)])) == texts[:3] + ["plain file\n"]
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "ok"}\n{"text": \xff}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: invalid UTF-8"):
        list(iter_texts([str(bad)]))


def test_huggingface_tokenizer_from_local_json(tmp_path, gpt2_files, texts):
    tokenizers = pytest.importorskip("tokenizers")
    hf = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(*gpt2_files))
    hf.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = tokenizers.decoders.ByteLevel()
    hf.add_special_tokens(["<|endoftext|>"])
    hf.save(str(tmp_path / "tokenizer.json"))
    ours, theirs = GPT2BPETokenizer(*gpt2_files), HuggingFaceTokenizer(str(tmp_path))
    assert theirs.vocab_size == ours.vocab_size and theirs.eod == ours.eod
    for text in texts[:5] + TRICKY_CODE:
        assert theirs.encode(text) == ours.encode(text)
        assert theirs.decode(theirs.encode(text)) == text


def test_huggingface_tokenizer_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="--tokenizer-model"):
        HuggingFaceTokenizer(str(tmp_path / "none"))
