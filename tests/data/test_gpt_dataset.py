"""GPTDataset indices (determinism, epoch crossing, sample contents), caching, blending, splits, config."""

import os

import numpy as np
import pytest

from megatron_fp8.data import DataConfig, build_train_valid_test_datasets
from megatron_fp8.data.blended_dataset import BlendedDataset, build_blending_indices
from megatron_fp8.data.builder import split_ranges
from megatron_fp8.data.gpt_dataset import GPTDataset, build_gpt_indices
from megatron_fp8.data.indexed_dataset import IndexedDataset, IndexedDatasetBuilder
from megatron_fp8.data.tokenizer import NullTokenizer


def make_dataset(prefix, num_docs=40, seed=0, base=0):
    """Documents of random length whose tokens encode (document, position) so samples can be checked."""
    rng = np.random.RandomState(seed)
    builder = IndexedDatasetBuilder(str(prefix), np.int32)
    docs = []
    for d in range(num_docs):
        doc = base + d * 1000 + np.arange(rng.randint(1, 30))
        docs.append(doc)
        builder.add_document(doc)
    builder.finalize()
    return str(prefix), docs


def expected_stream(docs, document_index):
    return np.concatenate([docs[d] for d in document_index])


def test_samples_cross_documents_and_epochs(tmp_path):
    prefix, docs = make_dataset(tmp_path / "d")
    low = IndexedDataset(prefix)
    seq, tokens = 16, sum(len(d) for d in docs)
    num_samples = 3 * tokens // seq  # about three epochs
    ds = GPTDataset(low, (0, 40), num_samples, seq, seed=7, cache_dir=None)
    epochs = len(ds.document_index) // 40
    assert epochs >= 3 and len(ds) >= num_samples
    assert np.array_equal(np.bincount(ds.document_index, minlength=40), np.full(40, epochs))
    stream = expected_stream(docs, ds.document_index)
    for idx in range(len(ds)):
        i = int(ds.shuffle_index[idx])
        sample = ds[idx]["text"]
        assert sample.dtype == np.int64 and sample.shape == (seq + 1,)
        assert np.array_equal(sample, stream[i * seq:i * seq + seq + 1])
    assert sorted(ds.shuffle_index.tolist()) == list(range(len(ds)))


def test_separate_final_epoch_and_megatron_epoch_count(tmp_path):
    prefix, docs = make_dataset(tmp_path / "d")
    lengths = IndexedDataset(prefix).sequence_lengths
    tokens, seq = int(lengths.sum()), 8
    per_epoch = (tokens - 1) // seq
    arrays = build_gpt_indices(lengths, np.arange(40), per_epoch + 2, seq, seed=1)  # barely a second epoch
    doc_index, shuffle = arrays["document_index"], arrays["shuffle_index"]
    assert len(doc_index) == 80
    assert sorted(doc_index[:40].tolist()) == list(range(40)) == sorted(doc_index[40:].tolist())
    before_final = (tokens - 1) // seq
    assert sorted(shuffle[:before_final].tolist()) == list(range(before_final))  # final epoch kept apart


def test_indices_are_deterministic_and_seeded(tmp_path):
    prefix, _ = make_dataset(tmp_path / "d")
    lengths = IndexedDataset(prefix).sequence_lengths
    a = build_gpt_indices(lengths, np.arange(5, 35), 200, 16, seed=3)
    b = build_gpt_indices(lengths, np.arange(5, 35), 200, 16, seed=3)
    c = build_gpt_indices(lengths, np.arange(5, 35), 200, 16, seed=4)
    for key in a:
        assert np.array_equal(a[key], b[key])
    assert not np.array_equal(a["shuffle_index"], c["shuffle_index"])
    assert set(a["document_index"].tolist()) == set(range(5, 35))


def test_index_cache_is_written_once_and_reused(tmp_path):
    prefix, _ = make_dataset(tmp_path / "d")
    cache = tmp_path / "cache"
    first = GPTDataset(IndexedDataset(prefix), (0, 40), 100, 16, 1, str(cache))
    files = sorted(os.listdir(cache))
    assert len(files) == 4 and sum(f.endswith("-description.json") for f in files) == 1
    mtimes = [os.path.getmtime(cache / f) for f in files]
    second = GPTDataset(IndexedDataset(prefix), (0, 40), 100, 16, 1, str(cache))
    assert isinstance(second.shuffle_index, np.memmap)
    assert [os.path.getmtime(cache / f) for f in files] == mtimes
    assert all(np.array_equal(first[i]["text"], second[i]["text"]) for i in range(len(first)))
    GPTDataset(IndexedDataset(prefix), (0, 40), 100, 16, 2, str(cache))  # another seed: another entry
    assert len(os.listdir(cache)) == 8


def test_blending_indices_follow_weights():
    arrays = build_blending_indices([0.7, 0.2, 0.1], 10_000)
    counts = np.bincount(arrays["dataset_index"], minlength=3) / 10_000
    assert np.all(np.abs(counts - [0.7, 0.2, 0.1]) < 0.01)
    for d in range(3):  # each dataset's samples are used in order 0, 1, 2, ...
        used = arrays["dataset_sample_index"][arrays["dataset_index"] == d]
        assert np.array_equal(used, np.arange(used.size))
    again = build_blending_indices([0.7, 0.2, 0.1], 10_000)
    assert np.array_equal(arrays["dataset_index"], again["dataset_index"])


def test_blend_from_data_path_proportions(tmp_path):
    a, _ = make_dataset(tmp_path / "a", 60, seed=1, base=0)
    b, _ = make_dataset(tmp_path / "b", 60, seed=2, base=10 ** 6)
    cfg = DataConfig(data_path=["0.7", a, "0.3", b], split="90,10,0", seq_length=8, seed=5,
                     data_cache_path=str(tmp_path / "cache"), tokenizer_type="NullTokenizer", vocab_size=2 ** 21)
    train, valid, test = build_train_valid_test_datasets(cfg, NullTokenizer(2 ** 21), 10_000, 100, 0)
    assert isinstance(train, BlendedDataset) and len(train) == 10_000 and len(valid) == 100 and test is None
    from_b = np.bincount(train.dataset_index, minlength=2)[1] / 10_000
    assert abs(from_b - 0.3) < 0.01
    for i in range(0, 10_000, 997):  # samples really come from the dataset the index names
        assert (train[i]["text"][0] >= 10 ** 6) == bool(train.dataset_index[i])


def test_split_ranges_and_none_splits(tmp_path):
    assert split_ranges(1000, (0.949, 0.05, 0.001)) == [(0, 949), (949, 999), (999, 1000)]
    assert split_ranges(10, (1.0, 0.0, 0.0)) == [(0, 10), (10, 10), (10, 10)]
    prefix, docs = make_dataset(tmp_path / "d", 100)
    cfg = DataConfig(data_path=[prefix], split="80,20,0", seq_length=8, seed=1, tokenizer_type="NullTokenizer",
                     vocab_size=10 ** 6)
    train, valid, test = build_train_valid_test_datasets(cfg, NullTokenizer(10 ** 6), 50, 10, 5)
    assert test is None and len(train) >= 50 and len(valid) >= 10
    assert set(train.document_index.tolist()) == set(range(80))
    assert set(valid.document_index.tolist()) == set(range(80, 100))


def test_empty_split_names_the_flag(tmp_path):
    prefix, _ = make_dataset(tmp_path / "d", 10)
    cfg = DataConfig(data_path=[prefix], split="949,50,1", seq_length=8, tokenizer_type="NullTokenizer",
                     vocab_size=10 ** 6)
    with pytest.raises(ValueError, match="--split: the test split .* gets no documents"):
        build_train_valid_test_datasets(cfg, NullTokenizer(10 ** 6), 10, 10, 10)


def test_rank_zero_builds_then_barrier_then_others_load(tmp_path):
    prefix, _ = make_dataset(tmp_path / "d", 50)
    cache = tmp_path / "cache"
    cfg = DataConfig(data_path=[prefix], split="1,0,0", seq_length=8, data_cache_path=str(cache),
                     tokenizer_type="NullTokenizer", vocab_size=10 ** 6)
    calls = []
    barrier = lambda: calls.append(os.path.isdir(cache))  # noqa: E731
    build_train_valid_test_datasets(cfg, None, 20, None, None, rank=0, barrier=barrier)
    assert calls == [True]  # rank 0 had written the cache when it reached the barrier
    calls.clear()
    train, valid, test = build_train_valid_test_datasets(cfg, None, 20, None, None, rank=1, barrier=barrier)
    assert calls == [True] and isinstance(train.shuffle_index, np.memmap) and valid is None and test is None


def test_rank_zero_failure_still_reaches_barrier(tmp_path):
    prefix, _ = make_dataset(tmp_path / "d", 3)
    cfg = DataConfig(data_path=[prefix], seq_length=8, tokenizer_type="NullTokenizer", vocab_size=10 ** 6)
    calls = []
    with pytest.raises(ValueError, match="--split"):
        build_train_valid_test_datasets(cfg, None, 5, 5, 5, rank=0, barrier=lambda: calls.append(1))
    assert calls == [1]


def test_mock_data():
    cfg = DataConfig(mock_data=True, seq_length=32, seed=3)
    assert cfg.tokenizer_type == "NullTokenizer"
    tok = NullTokenizer(cfg.vocab_size)
    train, valid, test = build_train_valid_test_datasets(cfg, tok, 100, 10, 10)
    sample = train[0]["text"]
    assert sample.shape == (33,) and sample.dtype == np.int64 and sample.max() < tok.vocab_size
    again = build_train_valid_test_datasets(cfg, tok, 100, 10, 10)[0]
    assert np.array_equal(again[5]["text"], train[5]["text"])


@pytest.mark.parametrize("kwargs,match", [
    (dict(data_path=["0.5", "a", "b"]), "--data-path: weights and prefixes must alternate"),
    (dict(data_path=["a", "0.5", "b"]), "--data-path: weights and prefixes must alternate"),
    (dict(data_path=["0.5", "a", "x", "b"]), "--data-path: weights and prefixes must alternate"),
    (dict(data_path=["-1", "a"]), "--data-path: weight -1"),
    (dict(data_path=["0", "a", "0", "b"]), "--data-path: the weights sum to zero"),
    (dict(data_path=["nope"], tokenizer_type="NullTokenizer", vocab_size=5), "--data-path: dataset nope has no"),
    (dict(split="1,x"), "--split"),
    (dict(split="0,0,0"), "--split"),
    (dict(split="1,2,3,4"), "--split"),
    (dict(mock_data=True, tokenizer_type="GPT2BPETokenizer"), "--vocab-file: required"),
    (dict(mock_data=True, tokenizer_type="NullTokenizer"), "--vocab-size: required"),
    (dict(tokenizer_type="GPT2BPETokenizer"), "--tokenizer-type: given without --data-path"),
    (dict(seq_length=0), "--seq-length"),
    (dict(num_workers=-1), "--num-workers"),
])
def test_config_errors_name_the_flag(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DataConfig(**kwargs)


def test_config_needs_tokenizer_and_checks_files(tmp_path):
    prefix, _ = make_dataset(tmp_path / "d", 3)
    with pytest.raises(ValueError, match="--tokenizer-type: required with --data-path"):
        DataConfig(data_path=[prefix])
    with pytest.raises(ValueError, match="--tokenizer-model: no such file"):
        DataConfig(data_path=[prefix], tokenizer_type="SentencePieceTokenizer", tokenizer_model="/no/such.model")
    os.remove(prefix + ".bin")
    with pytest.raises(ValueError, match=r"--data-path: dataset .* has no .*d\.bin"):
        DataConfig(data_path=[prefix], tokenizer_type="NullTokenizer", vocab_size=5)


def test_datasets_pickle_for_loader_workers(tmp_path):
    import pickle

    prefix, _ = make_dataset(tmp_path / "d")
    ds = GPTDataset(IndexedDataset(prefix), (0, 40), 50, 8, 1, str(tmp_path / "cache"))
    clone = pickle.loads(pickle.dumps(ds))
    assert all(np.array_equal(clone[i]["text"], ds[i]["text"]) for i in range(len(ds)))
