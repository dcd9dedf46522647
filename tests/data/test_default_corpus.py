"""The default corpus: source selection, atomic cached build, reuse, resolution of the config, flags."""

import argparse
import os

import pytest

from megatron_fp8.data import (DataConfig, add_data_args, build_tokenizer, build_train_valid_test_datasets,
                               data_config_from_args, resolve_default_corpus)
from megatron_fp8.data import default_corpus as dc
from megatron_fp8.data.indexed_dataset import IndexedDataset


@pytest.fixture()
def small_sources(monkeypatch, texts):
    sources = [(f"pkg/m{i}.py", t) for i, t in enumerate(texts)]
    monkeypatch.setattr(dc, "stdlib_sources", lambda *a, **k: sources)
    return sources


def test_stdlib_sources_are_sorted_capped_and_skip_tests(tmp_path):
    for rel in ["b/z.py", "a/x.py", "a/test/t.py", "tests/y.py", "site-packages/s.py", "a/y.txt", "c/bad.py",
                "c/__init__.py"]:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        content = {"c/bad.py": b"\xff\xfe", "c/__init__.py": b"\n"}.get(rel, f"# {rel}\n".encode())
        path.write_bytes(content)
    got = dc.stdlib_sources(str(tmp_path))
    assert [p for p, _ in got] == ["a/x.py", "b/z.py"]
    assert [p for p, _ in dc.stdlib_sources(str(tmp_path), max_bytes=10)] == ["a/x.py"]


def test_real_stdlib_selection_is_deterministic():
    first = dc.stdlib_sources(max_bytes=2 ** 20)
    assert first == dc.stdlib_sources(max_bytes=2 ** 20) and len(first) > 10
    assert not any("/test/" in f"/{p}" or "site-packages" in p for p, _ in first)


def test_cache_key_has_python_and_format_version(tmp_path):
    path = dc.corpus_dir(str(tmp_path))
    assert os.path.dirname(path) == str(tmp_path)
    name = os.path.basename(path)
    assert name.startswith("stdlib-py3.") and f"-v{dc.CORPUS_FORMAT_VERSION}-" in name


def test_build_round_trips_every_document(tmp_path, small_sources):
    manifest = dc.build_default_corpus(str(tmp_path / "corpus"), log=lambda m: None, sources=small_sources)
    folder = tmp_path / "corpus"
    assert sorted(os.listdir(tmp_path)) == ["corpus"]
    ds = IndexedDataset(str(folder / dc.PREFIX))
    cfg = DataConfig(data_path=[str(folder / dc.PREFIX)], tokenizer_type="SentencePieceTokenizer",
                     tokenizer_model=str(folder / dc.MODEL))
    tok = build_tokenizer(cfg)
    assert len(ds) == manifest["documents"] == len(small_sources) and manifest["tokens"] == ds.num_tokens
    for i, (_, text) in enumerate(small_sources):
        ids = ds[i].tolist()
        assert ids[-1] == tok.eod and tok.decode(ids[:-1]) == text


def test_failed_build_leaves_no_cache(tmp_path, small_sources, monkeypatch):
    def explode(*args, **kwargs):
        raise KeyboardInterrupt  # as if the run was killed mid-build
    monkeypatch.setattr(dc, "preprocess_jsonl", explode)
    with pytest.raises(KeyboardInterrupt):
        dc.ensure_default_corpus(str(tmp_path), log=lambda m: None)
    assert os.listdir(tmp_path) == []


def test_resolve_builds_once_then_reuses(tmp_path, small_sources, monkeypatch):
    cfg = DataConfig(seq_length=32, data_cache_path=str(tmp_path), split="90,10,0")
    calls = []
    resolved = resolve_default_corpus(cfg, barrier=lambda: calls.append(1), log=lambda m: None)
    assert calls == [1] and resolved.tokenizer_type == "SentencePieceTokenizer" and not resolved.uses_default_corpus
    monkeypatch.setattr(dc, "build_default_corpus", lambda *a, **k: pytest.fail("rebuilt a cached corpus"))
    again = resolve_default_corpus(cfg, rank=1, log=lambda m: None)
    assert again == resolved
    tok = build_tokenizer(resolved)
    train, valid, test = build_train_valid_test_datasets(resolved, tok, 20, 4, 0)
    assert train[0]["text"].shape == (33,) and test is None
    assert tok.decode(train[0]["text"]) and len(valid) >= 4


def test_resolve_leaves_explicit_data_alone():
    mock = DataConfig(mock_data=True)
    assert resolve_default_corpus(mock) is mock


def test_flags_round_trip_into_config():
    parser = add_data_args(argparse.ArgumentParser())
    args = parser.parse_args(["--mock-data", "--split", "98,2,0", "--vocab-size", "512", "--num-workers", "0"])
    cfg = data_config_from_args(args, seq_length=128, seed=9)
    assert (cfg.mock_data, cfg.split, cfg.vocab_size, cfg.num_workers, cfg.seq_length, cfg.seed) == \
        (True, "98,2,0", 512, 0, 128, 9)
    assert cfg.tokenizer_type == "NullTokenizer"
    default = data_config_from_args(parser.parse_args([]), seq_length=64, seed=1)
    assert default.uses_default_corpus and default.split == "949,50,1"


@pytest.mark.slow
def test_full_default_corpus_build(tmp_path):
    """The real thing: the whole capped standard library, every document decoding back exactly."""
    manifest = dc.build_default_corpus(str(tmp_path / "c"), log=lambda m: None)
    assert manifest["bytes"] <= dc.MAX_CORPUS_BYTES * 1.1 and manifest["tokens"] > 0
    tok = build_tokenizer(DataConfig(data_path=[str(tmp_path / "c" / dc.PREFIX)],
                                     tokenizer_type="SentencePieceTokenizer",
                                     tokenizer_model=str(tmp_path / "c" / dc.MODEL)))
    ds = IndexedDataset(str(tmp_path / "c" / dc.PREFIX))
    for i, (_, text) in enumerate(dc.stdlib_sources()):
        assert tok.decode(ds[i][:-1]) == text
