"""The corpus used when no data flags are given: the running interpreter's standard library sources.

Real text that every machine has. Built once per Python version and corpus format into the cache
(`--data-cache-path`, else $MEGATRON_FP8_CACHE, else ~/.cache/megatron_fp8): a JSONL file (one source file
per line, key "text", sorted paths, test suites excluded, capped in size), a SentencePiece BPE tokenizer
trained on it, and its tokens as `corpus_text_document.bin/.idx`. The build happens in a temporary folder
that is renamed into place when complete, so a killed build is never mistaken for a cache.
"""

import dataclasses
import hashlib
import json
import os
import platform
import sys
import sysconfig
import time
import types

from megatron_fp8.data.builder import rank_zero_first
from megatron_fp8.fsutil import atomic_dir, remove_quietly
from megatron_fp8.data.preprocess import preprocess_jsonl
from megatron_fp8.data.tokenizer_training import train_sentencepiece

CORPUS_FORMAT_VERSION = 2
MAX_CORPUS_BYTES = 16 * 2 ** 20
VOCAB_SIZE = 8192
EXCLUDED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
STALE_PARTIAL_SECONDS = 3600
MANIFEST, CORPUS, MODEL, PREFIX = "manifest.json", "corpus.jsonl", "tokenizer.model", "corpus_text_document"


def cache_root(data_cache_path: str | None = None) -> str:
    return (data_cache_path or os.environ.get("MEGATRON_FP8_CACHE")
            or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "megatron_fp8"))


def stdlib_sources(root: str | None = None, max_bytes: int = MAX_CORPUS_BYTES):
    """(relative path, text) of the stdlib's non-empty UTF-8 .py files in sorted order, until max_bytes."""
    root = root or sysconfig.get_paths()["stdlib"]
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS)
        paths.extend(os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py"))
    out, total = [], 0
    for path in paths:
        with open(path, "rb") as handle:
            raw = handle.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if not text.strip():  # empty __init__.py files carry no text
            continue
        if total + len(raw) > max_bytes:
            break
        out.append((os.path.relpath(path, root), text))
        total += len(raw)
    return out


def corpus_dir(data_cache_path: str | None = None) -> str:
    """Cache folder keyed by Python version, corpus format version and the stdlib location."""
    version = ".".join(platform.python_version_tuple())
    key = f"{sysconfig.get_paths()['stdlib']}|{MAX_CORPUS_BYTES}|{VOCAB_SIZE}|{sys.version}"
    digest = hashlib.md5(key.encode("utf-8")).hexdigest()[:8]
    return os.path.join(cache_root(data_cache_path), f"stdlib-py{version}-v{CORPUS_FORMAT_VERSION}-{digest}")


def _drop_stale_partials(final_dir: str) -> None:
    parent, name = os.path.split(final_dir)
    if not os.path.isdir(parent):
        return
    for entry in os.listdir(parent):
        path = os.path.join(parent, entry)
        if entry.startswith(f".{name}.partial-") and time.time() - os.path.getmtime(path) > STALE_PARTIAL_SECONDS:
            remove_quietly(path)


def build_default_corpus(final_dir: str, log=print, sources=None) -> dict:
    """Write corpus, tokenizer and tokens into `final_dir` atomically; returns the manifest."""
    start = time.perf_counter()
    sources = stdlib_sources() if sources is None else sources
    if not sources:
        raise RuntimeError("default corpus: no readable .py files in the standard library; pass --data-path")
    log(f"> building the default corpus from {len(sources)} standard-library files into {final_dir} ...")
    _drop_stale_partials(final_dir)
    with atomic_dir(final_dir) as tmp:
        with open(os.path.join(tmp, CORPUS), "w", encoding="utf-8") as out:
            for _, text in sources:
                out.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
        train_sentencepiece((text for _, text in sources), os.path.join(tmp, MODEL), VOCAB_SIZE,
                            num_threads=min(2, os.cpu_count() or 1))
        tokenizer_cfg = types.SimpleNamespace(tokenizer_type="SentencePieceTokenizer", vocab_file=None,
                                              merge_file=None, tokenizer_model=os.path.join(tmp, MODEL),
                                              vocab_size=None)
        result = preprocess_jsonl([os.path.join(tmp, CORPUS)], os.path.join(tmp, "corpus"), tokenizer_cfg,
                                  append_eod=True, workers=1, log_interval=0, log=lambda msg: None)
        manifest = {"format_version": CORPUS_FORMAT_VERSION, "python": sys.version, "files": len(sources),
                    "bytes": result.input_bytes, "documents": result.documents, "tokens": result.tokens,
                    "vocab_size": VOCAB_SIZE, "build_seconds": round(time.perf_counter() - start, 2)}
        with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as out:
            json.dump(manifest, out, indent=1)
    log(f"> default corpus ready: {manifest['documents']} documents, {manifest['bytes'] / 1e6:.1f} MB, "
        f"{manifest['tokens']} tokens, built in {manifest['build_seconds']:.1f} s")
    return manifest


def ensure_default_corpus(data_cache_path: str | None = None, log=print) -> str:
    """The cached corpus folder, built first if absent."""
    final_dir = corpus_dir(data_cache_path)
    if not os.path.isfile(os.path.join(final_dir, MANIFEST)):
        build_default_corpus(final_dir, log)
    return final_dir


def resolve_default_corpus(cfg, rank: int = 0, barrier=None, log=print):
    """`cfg` unchanged if it names data or mock data; else a copy pointing at the default corpus."""
    if not cfg.uses_default_corpus:
        return cfg
    directory = rank_zero_first(lambda: ensure_default_corpus(cfg.data_cache_path, log if rank == 0 else
                                                              (lambda msg: None)), rank, barrier)
    return dataclasses.replace(cfg, data_path=[os.path.join(directory, PREFIX)],
                               tokenizer_type="SentencePieceTokenizer", tokenizer_model=os.path.join(directory, MODEL))
