"""Token ids outside the vocabulary are caught where they enter (issue 17, item 7): at preprocessing, and
when a dataset is built for training, with a message naming the file, the document and the id."""

import os

import numpy as np
import pytest

from megatron_fp8.data import DataConfig, build_train_valid_test_datasets
from megatron_fp8.data.indexed_dataset import IndexedDatasetBuilder
from megatron_fp8.data.preprocess import PreprocessError, preprocess_jsonl
from megatron_fp8.data.tokenizer import NullTokenizer
from megatron_fp8.data.vocab_check import TokenIdError

from .conftest import write_jsonl
from .test_preprocess import run_tool


def dataset_with_ids(prefix, largest: int) -> str:
    """40 documents of ids below 200, and document 17 holding ``largest`` at its position 3."""
    builder = IndexedDatasetBuilder(str(prefix), np.uint16)
    for d in range(40):
        doc = (np.arange(20) + d) % 200
        if d == 17:
            doc[3] = largest
        builder.add_document(doc)
    builder.finalize()
    return str(prefix)


def build(prefix, vocab_size: int, cache):
    cfg = DataConfig(data_path=[prefix], split="90,10,0", seq_length=8, tokenizer_type="NullTokenizer",
                     vocab_size=vocab_size, data_cache_path=str(cache))
    return build_train_valid_test_datasets(cfg, NullTokenizer(vocab_size), 20, 5, 0)


def test_dataset_with_ids_beyond_the_vocabulary_is_refused_at_build(tmp_path):
    """Data made with a 1000-id tokenizer, trained with --vocab-size 256 (NullTokenizer: 257 ids)."""
    prefix = dataset_with_ids(tmp_path / "d", 999)
    with pytest.raises(TokenIdError, match=r"d.bin: token id 999 \(document 17, token 3 of it\) is outside the "
                                           r"vocabulary of NullTokenizer \(257 ids, 0..256\).*range over 0..999"):
        build(prefix, 256, tmp_path / "cache")
    with pytest.raises(TokenIdError, match="token id 999"):  # the cached range gives the same answer
        build(prefix, 256, tmp_path / "cache")
    train, _, _ = build(prefix, 1000, tmp_path / "cache")  # the right vocabulary: fine
    assert len(train) >= 20


def test_cached_range_follows_a_rewritten_file(tmp_path):
    prefix = dataset_with_ids(tmp_path / "d", 100)
    build(prefix, 256, tmp_path / "cache")
    dataset_with_ids(tmp_path / "d", 300)  # same sizes and counts: only the modification time differs
    os.utime(prefix + ".bin", ns=(1, 1))  # distinct even on filesystems with coarse timestamps
    with pytest.raises(TokenIdError, match="token id 300"):
        build(prefix, 256, tmp_path / "cache")


def test_preprocess_refuses_ids_outside_the_tokenizer(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", ["1 2 3", "4 300 5"])
    out = run_tool("preprocess_data.py", "--input", src, "--output-prefix", tmp_path / "out",
                   "--tokenizer-type", "NullTokenizer", "--vocab-size", "256")
    assert out.returncode == 1
    assert f"{src}:2: key 'text': token id 300 is outside the tokenizer's vocabulary (0..256)" in out.stderr
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl"]  # nothing written


def test_null_tokenizer_errors_name_file_and_line(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", ["1 2", "3 four 5"])
    cfg = type("Cfg", (), dict(tokenizer_type="NullTokenizer", vocab_size=256, vocab_file=None, merge_file=None,
                               tokenizer_model=None))
    with pytest.raises(PreprocessError, match=r"in.jsonl:2: key 'text': 'four' is not a token id"):
        preprocess_jsonl([src], str(tmp_path / "out"), cfg)


def test_training_run_stops_before_the_first_step(tmp_path, capsys):
    """pretrain_gpt.py on such data: a message naming the file instead of an IndexError (TP1) or silently
    masked ids (TP2, whose vocab-parallel embedding zeroes ids it does not own)."""
    import sys

    from .conftest import REPO_ROOT

    sys.path.insert(0, REPO_ROOT)
    import pretrain_gpt

    prefix = dataset_with_ids(tmp_path / "d", 999)
    with pytest.raises(SystemExit) as exit_:
        pretrain_gpt.main(["--data-path", prefix, "--tokenizer-type", "NullTokenizer", "--vocab-size", "256",
                           "--num-layers", "1", "--hidden-size", "32", "--num-attention-heads", "2", "--seq-length",
                           "8", "--micro-batch-size", "2", "--train-iters", "2", "--split", "90,10,0"])
    assert exit_.value.code == 1 and "d.bin: token id 999 (document 17, token 3 of it)" in capsys.readouterr().err
