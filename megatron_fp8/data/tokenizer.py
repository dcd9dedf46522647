"""Tokenizers selected by Megatron's --tokenizer-type, all with vocab_size, eod, encode and decode."""

import json
import os

from megatron_fp8.data.gpt2_bpe import EOT, ByteLevelBPE

TOKENIZER_TYPES = ("GPT2BPETokenizer", "SentencePieceTokenizer", "HuggingFaceTokenizer", "SFTTokenizer",
                   "NullTokenizer")


def as_int_list(ids) -> list[int]:
    """Python ints from a list or a numpy/torch array (decoders reject numpy integer scalars)."""
    return ids.tolist() if hasattr(ids, "tolist") else [int(i) for i in ids]


class Tokenizer:
    """Common surface; `tokenize`/`detokenize` and `eod_id` are the names Megatron code also uses."""

    vocab_size: int
    eod: int

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids) -> str:
        raise NotImplementedError

    def tokenize(self, text: str) -> list[int]:
        return self.encode(text)

    def detokenize(self, ids) -> str:
        return self.decode(ids)

    @property
    def eod_id(self) -> int:
        return self.eod


class GPT2BPETokenizer(Tokenizer):
    """GPT-2 byte-level BPE from vocab.json + merges.txt; eod is <|endoftext|>."""

    def __init__(self, vocab_file: str, merge_file: str):
        self.bpe = ByteLevelBPE.from_files(vocab_file, merge_file)
        if EOT not in self.bpe.encoder:
            raise ValueError(f"{vocab_file}: vocabulary has no {EOT} token to use as end of document")
        self.vocab_size = len(self.bpe.encoder)
        self.eod = self.bpe.encoder[EOT]

    def encode(self, text: str) -> list[int]:
        return self.bpe.encode(text)

    def decode(self, ids) -> str:
        return self.bpe.decode(ids)


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model; eod is its </s> (eos) piece."""

    def __init__(self, model_file: str):
        import sentencepiece

        if not os.path.isfile(model_file):
            raise FileNotFoundError(f"--tokenizer-model: no such file: {model_file}")
        try:
            self.sp = sentencepiece.SentencePieceProcessor(model_file=model_file)
        except (RuntimeError, OSError) as err:
            raise ValueError(f"{model_file}: not a SentencePiece model ({err})") from None
        self.vocab_size = int(self.sp.vocab_size())
        self.eod = int(self.sp.eos_id())
        if self.eod < 0:
            raise ValueError(f"{model_file}: model has no eos piece to use as end of document")

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids) -> str:
        return self.sp.decode(as_int_list(ids))


_EOD_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eot_id|>")


def _hf_eos_from_config(directory: str) -> str | None:
    """eos_token from a tokenizer_config.json next to tokenizer.json, if there is one."""
    path = os.path.join(directory, "tokenizer_config.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        eos = json.load(handle).get("eos_token")
    return eos.get("content") if isinstance(eos, dict) else eos


class HuggingFaceTokenizer(Tokenizer):
    """A local Hugging Face tokenizer: a tokenizer.json file (`tokenizers`) or a directory
    (`tokenizers` when it holds tokenizer.json, else `transformers`). Never downloads."""

    def __init__(self, path: str):
        if not os.path.exists(path):
            raise FileNotFoundError(f"--tokenizer-model: no such file or directory: {path}")
        directory = path if os.path.isdir(path) else os.path.dirname(path)
        json_file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        eos = _hf_eos_from_config(directory)
        try:
            import tokenizers
        except ImportError:
            tokenizers = None
        if tokenizers is not None and os.path.isfile(json_file):
            self._tok, self._fast = tokenizers.Tokenizer.from_file(json_file), True
            vocab = self._tok.get_vocab(with_added_tokens=True)
            self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        else:
            try:
                import transformers
            except ImportError:
                raise ImportError("HuggingFaceTokenizer needs the `tokenizers` or `transformers` package "
                                  "(pip install 'megatron_fp8[hf]')") from None
            self._tok, self._fast = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True), False
            vocab, eos = self._tok.get_vocab(), eos or self._tok.eos_token
            self.vocab_size = len(self._tok)
        names = ([eos] if eos else []) + list(_EOD_CANDIDATES)
        found = [vocab[n] for n in names if n in vocab]
        if not found:
            raise ValueError(f"{path}: no end-of-document token (tried {', '.join(names)})")
        self.eod = int(found[0])

    def encode(self, text: str) -> list[int]:
        if self._fast:
            return self._tok.encode(text, add_special_tokens=False).ids
        return self._tok.encode(text, add_special_tokens=False)

    def decode(self, ids) -> str:
        return self._tok.decode(as_int_list(ids), skip_special_tokens=False)


class NullTokenizer(Tokenizer):
    """Megatron's tokenizer for --mock-data: text is space-separated ids; vocab is --vocab-size ids
    plus one eod id (= --vocab-size)."""

    def __init__(self, vocab_size: int):
        self.vocab_size = int(vocab_size) + 1
        self.eod = int(vocab_size)

    def encode(self, text: str) -> list[int]:
        try:
            return [int(x) for x in text.split()]
        except ValueError:
            bad = next(x for x in text.split() if not x.lstrip("+-").isdigit())
            raise ValueError(f"{bad[:40]!r} is not a token id (NullTokenizer reads space-separated "
                             "integer ids)") from None

    def decode(self, ids) -> str:
        return " ".join(map(str, as_int_list(ids)))


def build_tokenizer(cfg) -> Tokenizer:
    """Build from any object with the DataConfig tokenizer fields."""
    kind = cfg.tokenizer_type
    if kind == "GPT2BPETokenizer":
        return GPT2BPETokenizer(cfg.vocab_file, cfg.merge_file)
    if kind == "SentencePieceTokenizer":
        return SentencePieceTokenizer(cfg.tokenizer_model)
    if kind == "HuggingFaceTokenizer":
        return HuggingFaceTokenizer(cfg.tokenizer_model)
    if kind == "SFTTokenizer":
        from megatron_fp8.data.chat import SFTTokenizer

        return SFTTokenizer(cfg.tokenizer_model, getattr(cfg, "sft_tokenizer_prompt_format", None) or "default")
    if kind == "NullTokenizer":
        return NullTokenizer(cfg.vocab_size)
    raise ValueError(f"--tokenizer-type: {kind!r} is not one of {', '.join(TOKENIZER_TYPES)}")
