"""The .bin/.idx format field by field, round trips, merging, and every corrupt-file path."""

import os
import pickle
import struct

import numpy as np
import pytest

from megatron_fp8.data.indexed_dataset import (DataFormatError, IndexedDataset, IndexedDatasetBuilder,
                                               token_dtype)

DOCS = [[5, 6, 7], [], [1], list(range(100, 140)), [65000, 0]]


def build(prefix, docs=DOCS, dtype=np.uint16):
    builder = IndexedDatasetBuilder(str(prefix), dtype)
    for doc in docs:
        builder.add_document(doc)
    builder.finalize()
    return str(prefix)


def test_idx_header_and_arrays_field_by_field(tmp_path):
    prefix = build(tmp_path / "d")
    raw = open(prefix + ".idx", "rb").read()
    assert raw[:9] == b"MMIDIDX\x00\x00"
    assert struct.unpack("<Q", raw[9:17]) == (1,)                     # version
    assert raw[17] == 8                                                # dtype code: uint16
    n_seq, n_doc = struct.unpack("<QQ", raw[18:34])
    assert n_seq == 4 and n_doc == 6                                   # empty doc adds no sequence
    at = 34
    lengths = np.frombuffer(raw, "<i4", n_seq, at)
    at += 4 * n_seq
    pointers = np.frombuffer(raw, "<i8", n_seq, at)
    at += 8 * n_seq
    documents = np.frombuffer(raw, "<i8", n_doc, at)
    at += 8 * n_doc
    assert at == len(raw)
    assert lengths.tolist() == [3, 1, 40, 2]
    assert pointers.tolist() == [0, 6, 8, 88]                          # byte offsets, 2 bytes a token
    assert documents.tolist() == [0, 1, 1, 2, 3, 4]
    data = np.fromfile(prefix + ".bin", dtype="<u2")
    assert data.tolist() == [t for doc in DOCS for t in doc]


def test_round_trip_and_pickle(tmp_path):
    ds = IndexedDataset(build(tmp_path / "d"))
    assert len(ds) == 4 and ds.dtype == np.uint16 and ds.num_tokens == 46
    assert [ds[i].tolist() for i in range(len(ds))] == [d for d in DOCS if d]
    assert ds.get(2, offset=5, length=3).tolist() == [105, 106, 107]
    clone = pickle.loads(pickle.dumps(ds))
    assert len(pickle.dumps(ds)) < 200 and clone[3].tolist() == [65000, 0]


@pytest.mark.parametrize("vocab,dtype,code", [(50257, np.uint16, 8), (65499, np.uint16, 8),
                                              (65500, np.int32, 4), (128256, np.int32, 4)])
def test_token_dtype_rule(tmp_path, vocab, dtype, code):
    assert token_dtype(vocab) == dtype
    prefix = build(tmp_path / "d", [[1, 2, vocab - 1]], token_dtype(vocab))
    assert open(prefix + ".idx", "rb").read()[17] == code
    assert IndexedDataset(prefix)[0].tolist() == [1, 2, vocab - 1]


def test_merge_concatenates(tmp_path):
    a, b = build(tmp_path / "a"), build(tmp_path / "b", [[9, 9], [8]])
    builder = IndexedDatasetBuilder(str(tmp_path / "ab"), np.uint16)
    builder.add_index(a)
    builder.add_index(b)
    builder.finalize()
    merged = IndexedDataset(str(tmp_path / "ab"))
    assert [merged[i].tolist() for i in range(len(merged))] == [d for d in DOCS if d] + [[9, 9], [8]]
    assert merged.document_indices.tolist() == [0, 1, 1, 2, 3, 4, 5, 6]


def test_merge_rejects_other_dtype(tmp_path):
    a = build(tmp_path / "a")
    c = build(tmp_path / "c", [[1]], np.int32)
    builder = IndexedDatasetBuilder(str(tmp_path / "ac"), np.uint16)
    builder.add_index(a)
    with pytest.raises(DataFormatError, match="c.idx"):
        builder.add_index(c)
    builder.abort()
    assert sorted(os.listdir(tmp_path)) == ["a.bin", "a.idx", "c.bin", "c.idx"]


def test_abort_leaves_nothing(tmp_path):
    builder = IndexedDatasetBuilder(str(tmp_path / "x"), np.uint16)
    builder.add_document([1, 2, 3])
    builder.abort()
    assert os.listdir(tmp_path) == []


def _corrupt(prefix, offset=None, payload=None, truncate=None):
    path = prefix + ".idx"
    raw = bytearray(open(path, "rb").read())
    if truncate is not None:
        raw = raw[:truncate]
    if payload is not None:
        raw[offset:offset + len(payload)] = payload
    open(path, "wb").write(bytes(raw))


@pytest.mark.parametrize("how,match", [
    (dict(truncate=-8), "truncated index"),
    (dict(truncate=20), "truncated index"),
    (dict(offset=0, payload=b"NOTANIDX!"), "not an MMIDIDX"),
    (dict(offset=9, payload=struct.pack("<Q", 2)), "version 2"),
    (dict(offset=17, payload=b"\x09"), "dtype code 9"),
    (dict(offset=34, payload=struct.pack("<i", 4)), "pointers"),
    (dict(offset=34 + 4 * 4 + 8 * 4, payload=struct.pack("<q", 1)), "document indices"),
])
def test_corrupt_index_names_file(tmp_path, how, match):
    prefix = build(tmp_path / "d")
    _corrupt(prefix, **how)
    with pytest.raises(DataFormatError, match=match) as err:
        IndexedDataset(prefix)
    assert "d.idx" in str(err.value)


def test_bin_that_does_not_match_idx(tmp_path):
    prefix = build(tmp_path / "d")
    with open(prefix + ".bin", "ab") as out:
        out.write(b"\x00\x00")
    with pytest.raises(DataFormatError, match=r"d\.bin.*d\.idx.*does not match"):
        IndexedDataset(prefix)


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.idx"):
        IndexedDataset(str(tmp_path / "nope"))
    prefix = build(tmp_path / "d")
    os.remove(prefix + ".bin")
    with pytest.raises(FileNotFoundError, match=r"d\.bin"):
        IndexedDataset(prefix)
