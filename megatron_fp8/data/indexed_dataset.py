"""Megatron-LM's memory-mapped indexed dataset (MMIDIDX version 1): reader and builder.

A prefix names two files. `{prefix}.bin` holds every sequence's tokens back to back in one dtype.
`{prefix}.idx` holds, little endian: the 9-byte magic, version (uint64 = 1), dtype code (uint8),
sequence count S (uint64), document count D (uint64), then int32 sequence_lengths[S], int64
sequence_pointers[S] (byte offsets into .bin) and int64 document_indices[D] (0, then the sequence count
after each document, so D = documents + 1). Files written here are byte-identical to Megatron-LM's.
"""

import array
import os
import shutil
import struct

import numpy as np

from megatron_fp8.fsutil import naming_write_errors, remove_quietly, temp_name

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, sequence count, document count
DTYPE_CODES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64,
               7: np.float32, 8: np.uint16}
CODE_OF_DTYPE = {np.dtype(v): k for k, v in DTYPE_CODES.items()}


class DataFormatError(ValueError):
    """A .bin/.idx pair that does not follow the format; the message names the file."""


def token_dtype(vocab_size: int) -> np.dtype:
    """Megatron's choice: uint16 below 65500 entries (leaving room for padding ids), else int32."""
    return np.dtype(np.uint16) if vocab_size is not None and vocab_size < 65500 else np.dtype(np.int32)


def idx_path(prefix: str) -> str:
    return prefix + ".idx"


def bin_path(prefix: str) -> str:
    return prefix + ".bin"


def _read_index(path: str):
    """Parse and validate an .idx file; return (dtype, lengths, pointers, document_indices)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: index file not found")
    size = os.path.getsize(path)
    if size < HEADER.size:
        raise DataFormatError(f"{path}: truncated index: {size} bytes, header alone needs {HEADER.size}")
    with open(path, "rb") as handle:
        magic, version, code, n_seq, n_doc = HEADER.unpack(handle.read(HEADER.size))
    if magic != MAGIC:
        raise DataFormatError(f"{path}: not an MMIDIDX index (magic {magic!r})")
    if version != VERSION:
        raise DataFormatError(f"{path}: unsupported index version {version} (expected {VERSION})")
    if code not in DTYPE_CODES:
        raise DataFormatError(f"{path}: unknown dtype code {code}")
    expected = HEADER.size + n_seq * (4 + 8) + n_doc * 8
    if size not in (expected, expected + n_seq):  # + n_seq: Megatron's multimodal int8 sequence modes
        kind = "truncated" if size < expected else "oversized"
        raise DataFormatError(f"{path}: {kind} index: {size} bytes, the header implies {expected}")
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    at = HEADER.size
    lengths = raw[at:at + 4 * n_seq].view(np.int32)
    at += 4 * n_seq
    pointers = raw[at:at + 8 * n_seq].view(np.int64)
    at += 8 * n_seq
    documents = raw[at:at + 8 * n_doc].view(np.int64)
    dtype = np.dtype(DTYPE_CODES[code])
    _check_arrays(path, dtype, lengths, pointers, documents)
    return dtype, lengths, pointers, documents


def _check_arrays(path, dtype, lengths, pointers, documents) -> None:
    """Reject indexes whose arrays contradict each other (a corrupt file would read garbage tokens)."""
    if lengths.size and lengths.min() < 0:
        raise DataFormatError(f"{path}: negative sequence length")
    offset, block = 0, 1 << 22  # blockwise, so a huge index needs no second full-size array
    for start in range(0, lengths.size, block):
        nbytes = lengths[start:start + block].astype(np.int64) * dtype.itemsize
        expected = offset + np.cumsum(nbytes) - nbytes
        if not np.array_equal(pointers[start:start + block], expected):
            raise DataFormatError(f"{path}: sequence pointers are not the running byte offsets of the lengths")
        offset += int(nbytes.sum())
    if documents.size == 0 or documents[0] != 0 or documents[-1] != lengths.size or (
            documents.size > 1 and np.any(np.diff(documents) < 0)):
        raise DataFormatError(f"{path}: document indices must rise from 0 to the sequence count")


class IndexedDataset:
    """Read-only view of a prefix; sequence i is `self[i]`, tokens come from a memory map of .bin."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.dtype, self.sequence_lengths, self.sequence_pointers, self.document_indices = \
            _read_index(idx_path(prefix))
        path = bin_path(prefix)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: data file not found (index {idx_path(prefix)} exists)")
        self.num_tokens = int(self.sequence_lengths.sum(dtype=np.int64))
        size, want = os.path.getsize(path), self.num_tokens * self.dtype.itemsize
        if size != want:
            raise DataFormatError(f"{path}: {size} bytes, but {idx_path(prefix)} describes {want} "
                                  f"({self.num_tokens} tokens of {self.dtype.name}); the pair does not match")
        self._bin = np.memmap(path, dtype=self.dtype, mode="r") if size else np.empty(0, self.dtype)

    @property
    def identity(self) -> dict:
        """What cached index arrays built on this dataset depend on (a rewrite changes the counts or size)."""
        return {"prefix": os.path.abspath(self.prefix), "sequences": len(self), "tokens": self.num_tokens,
                "idx_bytes": os.path.getsize(idx_path(self.prefix))}

    @property
    def tokens(self) -> np.ndarray:
        """Every token of the .bin, back to back (a memory map)."""
        return self._bin

    def __getstate__(self):  # reopen in DataLoader workers instead of pickling the whole memory map
        return {"prefix": self.prefix}

    def __setstate__(self, state):
        self.__init__(state["prefix"])

    def __len__(self) -> int:
        return int(self.sequence_lengths.size)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.get(i)

    def get(self, i: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens [offset, offset + length) of sequence i, as a view of the memory map."""
        seq_len = int(self.sequence_lengths[i])
        if length is None:
            length = seq_len - offset
        start = int(self.sequence_pointers[i]) // self.dtype.itemsize + offset
        return self._bin[start:start + length]


class IndexedDatasetBuilder:
    """Append documents, then `finalize()`; both files appear under their names only when complete."""

    def __init__(self, prefix: str, dtype):
        self.prefix, self.dtype = prefix, np.dtype(dtype)
        if self.dtype not in CODE_OF_DTYPE:
            raise ValueError(f"{prefix}: dtype {self.dtype} has no MMIDIDX code")
        self._tmp_bin, self._tmp_idx = temp_name(bin_path(prefix)), temp_name(idx_path(prefix))
        self._bin = open(self._tmp_bin, "wb")
        self._lengths = array.array("i")  # compact growable int32 / int64 lists
        self._doc_ends = array.array("q", [0])

    def add_document(self, tokens) -> None:
        """One document of one sequence (an empty one adds only a document boundary, as Megatron does)."""
        arr = np.asarray(tokens, dtype=self.dtype)
        if arr.size:
            with naming_write_errors(bin_path(self.prefix)):  # a full disk names the output
                self._bin.write(arr.tobytes(order="C"))
            self._lengths.append(arr.size)
        self._doc_ends.append(len(self._lengths))

    def add_index(self, prefix: str) -> None:
        """Append every document of another dataset with the same dtype (used to merge datasets)."""
        other = IndexedDataset(prefix)
        if other.dtype != self.dtype:
            raise DataFormatError(f"{idx_path(prefix)}: dtype {other.dtype.name} differs from "
                                  f"{self.dtype.name} of the datasets merged before it")
        with open(bin_path(prefix), "rb") as src:
            shutil.copyfileobj(src, self._bin, 16 << 20)
        offset = len(self._lengths)
        self._lengths.frombytes(np.ascontiguousarray(other.sequence_lengths, dtype=np.int32).tobytes())
        self._doc_ends.frombytes((other.document_indices[1:] + offset).astype(np.int64).tobytes())

    def finalize(self) -> None:
        """Write the index and rename both files into place (.bin first, so an .idx implies its .bin)."""
        try:
            with naming_write_errors(idx_path(self.prefix)):
                self._finalize()
        except BaseException:
            self.abort()
            raise

    def _finalize(self) -> None:
        with naming_write_errors(bin_path(self.prefix)):
            self._bin.close()  # flushes the last tokens
        lengths = np.frombuffer(self._lengths, dtype=np.int32) if self._lengths else np.zeros(0, np.int32)
        pointers = np.zeros(lengths.size, dtype=np.int64)
        np.cumsum(lengths[:-1].astype(np.int64) * self.dtype.itemsize, out=pointers[1:])
        documents = np.frombuffer(self._doc_ends, dtype=np.int64)
        with open(self._tmp_idx, "wb") as out:
            out.write(HEADER.pack(MAGIC, VERSION, CODE_OF_DTYPE[self.dtype], lengths.size, documents.size))
            out.write(lengths.astype("<i4").tobytes())
            out.write(pointers.astype("<i8").tobytes())
            out.write(documents.astype("<i8").tobytes())
        os.replace(self._tmp_bin, bin_path(self.prefix))
        os.replace(self._tmp_idx, idx_path(self.prefix))

    def abort(self) -> None:
        """Drop the temporary files; anything already at the final names is left untouched."""
        if not self._bin.closed:
            try:
                self._bin.close()
            except OSError:  # flushing onto a full disk fails again: the first error is the one raised
                pass
        remove_quietly(self._tmp_bin)
        remove_quietly(self._tmp_idx)
