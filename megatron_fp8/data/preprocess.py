"""JSONL (optionally gzipped) -> `{prefix}_{key}_document.bin/.idx`, tokenized in worker processes.

The main process reads raw lines and writes tokens in input order; workers decode UTF-8, parse JSON and
tokenize. A bad line stops the run with `file:line: reason` (or is counted with skip_bad_lines), and the
outputs appear under their final names only after every line was processed.
"""

import collections
import gzip
import json
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from megatron_fp8.data.indexed_dataset import IndexedDatasetBuilder, token_dtype
from megatron_fp8.data.tokenizer import build_tokenizer

CHUNK_BYTES = 1 << 18
CHUNK_LINES = 1024


class PreprocessError(ValueError):
    """Bad input; the message starts with `file:line:` or names the file."""


@dataclass
class PreprocessResult:
    documents: int = 0
    input_bytes: int = 0
    tokens: int = 0
    seconds: float = 0.0
    skipped: int = 0
    skipped_examples: list = field(default_factory=list)
    outputs: list = field(default_factory=list)


def output_prefix_for(output_prefix: str, key: str) -> str:
    return f"{output_prefix}_{key}_document"


def open_binary(path: str):
    """Raw bytes of a file, gunzipped when it starts with the gzip magic."""
    with open(path, "rb") as probe:
        gz = probe.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else open(path, "rb")


def _chunks(paths):
    """Lists of (file index, line number, raw line) of about CHUNK_BYTES each; blank lines are skipped."""
    chunk, size = [], 0
    for file_index, path in enumerate(paths):
        with open_binary(path) as handle:
            try:
                for lineno, raw in enumerate(handle, 1):
                    if raw.strip():
                        chunk.append((file_index, lineno, raw))
                        size += len(raw)
                        if size >= CHUNK_BYTES or len(chunk) >= CHUNK_LINES:
                            yield chunk
                            chunk, size = [], 0
            except (OSError, EOFError) as err:  # corrupt or truncated gzip stream
                raise PreprocessError(f"{path}: cannot read: {err}") from None
    if chunk:
        yield chunk


_STATE = {}


def _init_worker(tokenizer_cfg, keys, append_eod, dtype):
    tokenizer = build_tokenizer(tokenizer_cfg)
    _STATE.update(tokenizer=tokenizer, keys=tuple(keys), append_eod=append_eod, dtype=np.dtype(dtype))


def _encode_line(raw: bytes):
    """(None, [tokens per key]) or (reason, None)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return f"invalid UTF-8 at byte offset {err.start}", None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        return f"malformed JSON ({err.msg} at column {err.colno})", None
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}", None
    tokenizer, out = _STATE["tokenizer"], []
    for key in _STATE["keys"]:
        if key not in record:
            return f"missing key {key!r}", None
        value = record[key]
        if not isinstance(value, str):
            return f"key {key!r} holds {type(value).__name__}, not a string", None
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as err:  # a lone surrogate from a JSON escape such as \ud800
                return f"key {key!r} is not valid Unicode ({err.reason} at character {err.start})", None
        try:
            ids = tokenizer.encode(value)
        except ValueError as err:  # NullTokenizer: text that is not ids
            return f"key {key!r}: {err}", None
        if ids and _STATE["append_eod"]:
            ids.append(tokenizer.eod)
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= tokenizer.vocab_size):
            bad = int(ids[(ids < 0) | (ids >= tokenizer.vocab_size)][0])
            return (f"key {key!r}: token id {bad} is outside the tokenizer's vocabulary "
                    f"(0..{tokenizer.vocab_size - 1})"), None
        out.append(ids.astype(_STATE["dtype"]))
    return None, out


def _encode_chunk(chunk):
    return [(file_index, lineno, len(raw)) + _encode_line(raw) for file_index, lineno, raw in chunk]


def _ordered_results(chunks, workers, init_args):
    """Encode chunks in a pool (bounded in flight, so memory stays flat) or inline for one worker."""
    if workers <= 1:
        _init_worker(*init_args)
        yield from map(_encode_chunk, chunks)
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    pool = multiprocessing.get_context(method).Pool(workers, _init_worker, init_args)
    try:
        pending = collections.deque()
        for chunk in chunks:
            pending.append(pool.apply_async(_encode_chunk, (chunk,)))
            if len(pending) >= 4 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
    finally:
        pool.terminate()
        pool.join()


def _log_progress(log, result, start):
    elapsed = max(time.perf_counter() - start, 1e-9)
    log(f"Processed {result.documents} documents ({result.documents / elapsed:.1f} docs/s, "
        f"{result.input_bytes / elapsed / 1e6:.2f} MB/s).")


def preprocess_jsonl(inputs, output_prefix, tokenizer_cfg, json_keys=("text",), append_eod=False, workers=1,
                     log_interval=1000, skip_bad_lines=False, log=None) -> PreprocessResult:
    """Tokenize `json_keys` of every line of `inputs` into one dataset per key."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    for path in inputs:
        if not os.path.isfile(path):
            raise PreprocessError(f"{path}: input file not found")
    if not json_keys:
        raise PreprocessError("--json-keys: needs at least one key")
    dtype = token_dtype(build_tokenizer(tokenizer_cfg).vocab_size)
    out_dir = os.path.dirname(os.path.abspath(output_prefix))
    if not os.path.isdir(out_dir):
        raise PreprocessError(f"--output-prefix: folder {out_dir} does not exist")
    result = PreprocessResult(outputs=[output_prefix_for(output_prefix, k) for k in json_keys])
    builders = [IndexedDatasetBuilder(p, dtype) for p in result.outputs]
    start = time.perf_counter()
    try:
        init_args = (tokenizer_cfg, tuple(json_keys), append_eod, dtype.str)
        for encoded in _ordered_results(_chunks(inputs), workers, init_args):
            for file_index, lineno, nbytes, reason, arrays in encoded:
                if reason is not None:
                    where = f"{inputs[file_index]}:{lineno}: {reason}"
                    if not skip_bad_lines:
                        raise PreprocessError(where + " (pass --skip-bad-lines to skip such lines)")
                    result.skipped += 1
                    if len(result.skipped_examples) < 5:
                        result.skipped_examples.append(where)
                    continue
                for builder, arr in zip(builders, arrays):
                    builder.add_document(arr)
                    result.tokens += int(arr.size)
                result.documents += 1
                result.input_bytes += nbytes
                if log_interval and result.documents % log_interval == 0:
                    _log_progress(log, result, start)
        for builder in builders:
            builder.finalize()
    except BaseException:
        for builder in builders:
            builder.abort()
        raise
    result.seconds = time.perf_counter() - start
    _log_progress(log, result, start)
    if result.skipped:
        log(f"Skipped {result.skipped} bad lines; first ones: " + "; ".join(result.skipped_examples))
    return result
