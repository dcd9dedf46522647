"""tools/preprocess_data.py and tools/merge_datasets.py end to end, and each bad-input path."""

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from megatron_fp8.data.indexed_dataset import IndexedDataset
from megatron_fp8.data.preprocess import PreprocessError, preprocess_jsonl
from megatron_fp8.data.tokenizer import build_tokenizer

from .conftest import REPO_ROOT, write_jsonl


def run_tool(name, *args):
    return subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", name), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO_ROOT)


def spm_flags(spm_cfg):
    return ["--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", spm_cfg.tokenizer_model]


def only_inputs_left(folder, inputs):
    """No output and no temporary file was left next to the inputs."""
    return sorted(os.listdir(folder)) == sorted(os.path.basename(p) for p in inputs)


@pytest.mark.parametrize("workers", [1, 2])
def test_tool_writes_megatron_dataset(tmp_path, spm_cfg, texts, workers):
    src = write_jsonl(tmp_path / "in.jsonl", texts)
    out = run_tool("preprocess_data.py", "--input", src, "--output-prefix", tmp_path / "out", *spm_flags(spm_cfg),
                   "--append-eod", "--workers", workers, "--log-interval", 20)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("documents (") == 4 and "docs/s" in out.stderr and "MB/s" in out.stderr
    ds = IndexedDataset(str(tmp_path / "out_text_document"))
    tok = build_tokenizer(spm_cfg)
    assert ds.dtype == np.uint16 and len(ds) == len(texts)
    for i, text in enumerate(texts):
        assert ds[i].tolist() == tok.encode(text) + [tok.eod]


def test_workers_give_identical_bytes_and_gzip_works(tmp_path, gpt2_cfg, texts):
    plain = write_jsonl(tmp_path / "in.jsonl", texts)
    packed = tmp_path / "in.jsonl.gz"
    packed.write_bytes(gzip.compress(open(plain, "rb").read()))
    results = []
    for workers, src in [(1, plain), (2, str(packed))]:
        prefix = tmp_path / f"w{workers}"
        preprocess_jsonl([src], str(prefix), gpt2_cfg, workers=workers, append_eod=True, log=lambda m: None)
        results.append([open(f"{prefix}_text_document{s}", "rb").read() for s in (".bin", ".idx")])
    assert results[0] == results[1]


def test_several_keys_and_inputs(tmp_path, spm_cfg):
    a = tmp_path / "a.jsonl"
    a.write_text(json.dumps({"text": "x = 1", "title": "one"}) + "\n\n" + json.dumps({"text": "", "title": "t"}) + "\n")
    b = write_jsonl(tmp_path / "b.jsonl", ["y = 2"])
    b_lines = open(b).read()
    open(b, "w").write(b_lines.replace('"}', '", "title": "two"}'))
    result = preprocess_jsonl([str(a), b], str(tmp_path / "o"), spm_cfg, json_keys=["text", "title"],
                              append_eod=True, log=lambda m: None)
    assert result.documents == 3
    text, title = IndexedDataset(str(tmp_path / "o_text_document")), IndexedDataset(str(tmp_path / "o_title_document"))
    assert len(text) == 2 and len(text.document_indices) == 4   # the empty text is an empty document, no eod
    assert len(title) == 3


def test_large_vocab_writes_int32(tmp_path):
    src = tmp_path / "ids.jsonl"
    src.write_text(json.dumps({"text": "70000 5 1"}) + "\n")
    out = run_tool("preprocess_data.py", "--input", src, "--output-prefix", tmp_path / "o",
                   "--tokenizer-type", "NullTokenizer", "--vocab-size", 70000, "--append-eod")
    assert out.returncode == 0, out.stderr
    ds = IndexedDataset(str(tmp_path / "o_text_document"))
    assert ds.dtype == np.int32 and ds[0].tolist() == [70000, 5, 1, 70000]


BAD_LINES = [
    (b'{"text": "fine"}\n{"text": "broken\n', "in.jsonl:2: malformed JSON"),
    (b'{"text": "fine"}\n{"other": "x"}\n', "in.jsonl:2: missing key 'text'"),
    (b'{"text": "fine"}\n{"text": "caf\xe9"}\n', "in.jsonl:2: invalid UTF-8 at byte offset 13"),
    (b'{"text": "fine"}\n{"text": 5}\n', "in.jsonl:2: key 'text' holds int"),
    (b'{"text": "fine"}\n[1, 2]\n', "in.jsonl:2: expected a JSON object"),
    (b'{"text": "fine"}\n{"text": "\\ud800"}\n', "in.jsonl:2: key 'text' is not valid Unicode"),
]


@pytest.mark.parametrize("payload,message", BAD_LINES)
def test_bad_line_stops_with_file_and_line_and_leaves_nothing(tmp_path, spm_cfg, payload, message):
    src = tmp_path / "in.jsonl"
    src.write_bytes(payload * 1 + b'{"text": "after"}\n')
    out = run_tool("preprocess_data.py", "--input", src, "--output-prefix", tmp_path / "out", *spm_flags(spm_cfg),
                   "--workers", 2)
    assert out.returncode == 1 and message in out.stderr, out.stderr
    assert only_inputs_left(tmp_path, [src])


def test_bad_line_keeps_earlier_output(tmp_path, spm_cfg):
    good = write_jsonl(tmp_path / "good.jsonl", ["a = 1"])
    preprocess_jsonl([good], str(tmp_path / "out"), spm_cfg, log=lambda m: None)
    before = open(tmp_path / "out_text_document.bin", "rb").read()
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"not json\n")
    with pytest.raises(PreprocessError, match="bad.jsonl:1"):
        preprocess_jsonl([str(bad)], str(tmp_path / "out"), spm_cfg, log=lambda m: None)
    assert open(tmp_path / "out_text_document.bin", "rb").read() == before
    assert only_inputs_left(tmp_path, [good, bad, "out_text_document.bin", "out_text_document.idx"])


def test_skip_bad_lines_counts_and_reports(tmp_path, spm_cfg):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(p for p, _ in BAD_LINES))
    out = run_tool("preprocess_data.py", "--input", src, "--output-prefix", tmp_path / "out", *spm_flags(spm_cfg),
                   "--skip-bad-lines")
    assert out.returncode == 0, out.stderr
    assert "Skipped 6 bad lines" in out.stderr and "in.jsonl:2: malformed JSON" in out.stderr
    assert "6 lines skipped" in out.stdout
    assert len(IndexedDataset(str(tmp_path / "out_text_document"))) == len(BAD_LINES)


def test_missing_input_and_missing_tokenizer_file(tmp_path, spm_cfg):
    out = run_tool("preprocess_data.py", "--input", tmp_path / "nope.jsonl", "--output-prefix", tmp_path / "o",
                   *spm_flags(spm_cfg))
    assert out.returncode == 1 and "nope.jsonl: input file not found" in out.stderr
    src = write_jsonl(tmp_path / "in.jsonl", ["x"])
    out = run_tool("preprocess_data.py", "--input", src, "--output-prefix", tmp_path / "o",
                   "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", tmp_path / "none.model")
    assert out.returncode == 2 and "--tokenizer-model: no such file" in out.stderr
    out = run_tool("preprocess_data.py", "--input", src, "--output-prefix", tmp_path / "o",
                   "--tokenizer-type", "GPT2BPETokenizer")
    assert out.returncode == 2 and "--vocab-file: required by --tokenizer-type GPT2BPETokenizer" in out.stderr
    assert only_inputs_left(tmp_path, [src])


def test_truncated_gzip_is_reported(tmp_path, spm_cfg):
    src = tmp_path / "in.jsonl.gz"
    src.write_bytes(gzip.compress(b'{"text": "abc"}\n' * 1000)[:-30])
    with pytest.raises(PreprocessError, match="in.jsonl.gz: cannot read"):
        preprocess_jsonl([str(src)], str(tmp_path / "o"), spm_cfg, log=lambda m: None)
    assert only_inputs_left(tmp_path, [src])


def test_merge_tool(tmp_path, spm_cfg, texts):
    shards = tmp_path / "shards"
    shards.mkdir()
    for i in range(3):
        src = write_jsonl(tmp_path / f"s{i}.jsonl", texts[i * 5:(i + 1) * 5])
        preprocess_jsonl([src], str(shards / f"s{i}"), spm_cfg, append_eod=True, log=lambda m: None)
    whole = write_jsonl(tmp_path / "all.jsonl", texts[:15])
    preprocess_jsonl([whole], str(tmp_path / "ref"), spm_cfg, append_eod=True, log=lambda m: None)
    out = run_tool("merge_datasets.py", "--input", shards, "--output-prefix", tmp_path / "merged")
    assert out.returncode == 0, out.stderr
    for suffix in (".bin", ".idx"):
        assert open(tmp_path / f"merged{suffix}", "rb").read() == open(tmp_path / f"ref_text_document{suffix}", "rb").read()
    out = run_tool("merge_datasets.py", "--input", shards / "s0_text_document", tmp_path / "missing",
                   "--output-prefix", tmp_path / "m2")
    assert out.returncode == 1 and "missing.idx" in out.stderr and not os.path.exists(tmp_path / "m2.idx")


def test_missing_output_folder(tmp_path, spm_cfg):
    src = write_jsonl(tmp_path / "in.jsonl", ["x"])
    with pytest.raises(PreprocessError, match="--output-prefix: folder .*nowhere does not exist"):
        preprocess_jsonl([src], str(tmp_path / "nowhere" / "o"), spm_cfg, log=lambda m: None)
    assert only_inputs_left(tmp_path, [src])


@pytest.mark.parametrize("kind,outputs", [("SentencePieceTokenizer", ["tokenizer.model"]),
                                          ("GPT2BPETokenizer", ["merges.txt", "vocab.json"])])
def test_train_tokenizer_tool(tmp_path, texts, kind, outputs):
    src = write_jsonl(tmp_path / "in.jsonl", texts)
    out = run_tool("train_tokenizer.py", "--input", src, "--tokenizer-type", kind, "--vocab-size", 400,
                   "--output-dir", tmp_path / "tok", "--num-threads", 1)
    assert out.returncode == 0, out.stderr
    assert sorted(os.listdir(tmp_path / "tok")) == outputs
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{"txt": "b"}\n')
    out = run_tool("train_tokenizer.py", "--input", bad, "--tokenizer-type", kind, "--output-dir", tmp_path / "t2")
    assert out.returncode == 1 and "bad.jsonl:2: no string under key 'text'" in out.stderr
    assert not os.path.exists(tmp_path / "t2")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_full_disk_names_the_output_file(tmp_path, spm_cfg, texts, monkeypatch):
    """The tokens go to /dev/full (always full): the error says so and names the output, not 'Errno 28'."""
    import builtins

    from megatron_fp8.data import indexed_dataset
    from megatron_fp8.fsutil import DiskFullError

    def full_open(path, mode="r", *args, **kwargs):
        target = "/dev/full" if ".bin.partial-" in str(path) and "w" in mode else path
        return builtins.open(target, mode, *args, **kwargs)

    monkeypatch.setattr(indexed_dataset, "open", full_open, raising=False)
    src = write_jsonl(tmp_path / "in.jsonl", texts)
    with pytest.raises(DiskFullError, match=r"out_text_document.bin: no space left on device"):
        preprocess_jsonl([src], str(tmp_path / "out"), spm_cfg)
    assert only_inputs_left(tmp_path, [src])
