"""GPT-2 byte-level BPE: the byte-to-character table, the pre-tokenisation pattern, encode and decode.

Encoding follows the published GPT-2 algorithm exactly (split text with the pattern, map each UTF-8 byte
to a printable character, then repeatedly merge the adjacent pair with the lowest merge rank), so the
ids equal those of OpenAI's reference encoder for any text, with a per-word cache for speed.
"""

import json

import regex

# Contractions, letter runs, digit runs, other-symbol runs (each optionally led by one space), then
# whitespace that is not followed by a non-space, then any remaining whitespace.
GPT2_PATTERN = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
EOT = "<|endoftext|>"
_CACHE_LIMIT = 1 << 18


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> character table: printable Latin-1 bytes map to themselves, the other
    68 bytes to characters from U+0100 upward, so no token contains whitespace or control characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    # The reference lists printable bytes first, then the remapped ones; keep that order for vocab ids.
    return {b: table[b] for b in [*printable, *(b for b in range(256) if b not in printable)]}


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}
_BYTE_TRANSLATION = [BYTE_TO_CHAR[b] for b in range(256)]


def to_byte_chars(piece: str) -> str:
    """A pre-token as the string of its UTF-8 bytes mapped through the byte table."""
    return "".join([_BYTE_TRANSLATION[b] for b in piece.encode("utf-8")])


def pretokenize(text: str) -> list[str]:
    return GPT2_PATTERN.findall(text)


def read_merges(path: str) -> list[tuple[str, str]]:
    """merges.txt: an optional '#version' line, then one 'left right' pair per line in rank order."""
    merges = []
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            line = line.rstrip("\n")
            if not line or (lineno == 1 and line.startswith("#version")):
                continue
            parts = line.split(" ")
            if len(parts) != 2:
                raise ValueError(f"{path}:{lineno}: expected two space-separated symbols, got {line!r}")
            merges.append((parts[0], parts[1]))
    return merges


def read_vocab(path: str) -> dict[str, int]:
    with open(path, encoding="utf-8") as handle:
        try:
            vocab = json.load(handle)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not a JSON vocabulary: {err}") from None
    if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
        raise ValueError(f"{path}: expected a JSON object mapping tokens to integer ids")
    return vocab


class ByteLevelBPE:
    """Encoder/decoder for a GPT-2 style vocab.json + merges.txt pair."""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], source: str = "vocab"):
        self.encoder = vocab
        self.decoder = {i: t for t, i in vocab.items()}
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.source = source
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def from_files(cls, vocab_file: str, merge_file: str) -> "ByteLevelBPE":
        return cls(read_vocab(vocab_file), read_merges(merge_file), source=vocab_file)

    def _merge_word(self, word: str) -> list[str]:
        """Apply merges by rank until none applies (the reference's `bpe` function)."""
        symbols = list(word)
        ranks = self.ranks
        while len(symbols) > 1:
            best, best_rank = None, None
            for pair in zip(symbols, symbols[1:]):
                rank = ranks.get(pair)
                if rank is not None and (best_rank is None or rank < best_rank):
                    best, best_rank = pair, rank
            if best is None:
                break
            first, second = best
            merged, i, n = [], 0, len(symbols)
            while i < n:
                if i < n - 1 and symbols[i] == first and symbols[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return symbols

    def _word_ids(self, piece: str) -> list[int]:
        ids = self._cache.get(piece)
        if ids is None:
            try:
                ids = [self.encoder[s] for s in self._merge_word(to_byte_chars(piece))]
            except KeyError as err:
                raise ValueError(f"{self.source}: symbol {err.args[0]!r} produced by the merges is not "
                                 "in the vocabulary") from None
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[piece] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        out: list[int] = []
        for piece in GPT2_PATTERN.findall(text):
            out.extend(self._word_ids(piece))
        return out

    def decode(self, ids) -> str:
        """Invalid UTF-8 from a partial id sequence decodes to U+FFFD, as in the reference."""
        chars = "".join([self.decoder[i] for i in (ids.tolist() if hasattr(ids, "tolist") else ids)])
        return bytes(CHAR_TO_BYTE[c] for c in chars).decode("utf-8", errors="replace")
