"""The data pipeline's one config object, with fields named after Megatron's flags and validated once."""

import math
import os
from dataclasses import dataclass

from megatron_fp8.data.chat import PROMPT_FORMATS
from megatron_fp8.data.tokenizer import TOKENIZER_TYPES
from megatron_fp8.flagspec import NON_NEGATIVE, POSITIVE, flag

MOCK_DEFAULT_VOCAB_SIZE = 8192


def _as_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def parse_blend(entries: list[str]) -> tuple[list[str], list[float] | None]:
    """`--data-path a` / `a b` (weights by size) / `0.7 a 0.3 b` -> (prefixes, weights or None)."""
    if not entries:
        raise ValueError("--data-path: needs at least one dataset prefix")
    if _as_float(entries[0]) is None:
        numeric = [e for e in entries if _as_float(e) is not None and not os.path.exists(e + ".idx")]
        if numeric:
            raise ValueError(f"--data-path: weights and prefixes must alternate (found weight {numeric[0]} "
                             "after an unweighted prefix)")
        return list(entries), None
    if len(entries) % 2:
        raise ValueError("--data-path: weights and prefixes must alternate (odd number of entries)")
    weights, prefixes = [], []
    for weight, prefix in zip(entries[::2], entries[1::2]):
        value = _as_float(weight)
        if value is None:
            raise ValueError(f"--data-path: weights and prefixes must alternate ({weight!r} is not a weight)")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"--data-path: weight {weight} of {prefix} must be finite and non-negative")
        weights.append(value)
        prefixes.append(prefix)
    if sum(weights) <= 0:
        raise ValueError("--data-path: the weights sum to zero")
    return prefixes, weights


def parse_split(split: str) -> tuple[float, float, float]:
    """`949,50,1` or `98/2/0` (missing parts are 0) -> normalised train/valid/test fractions."""
    parts = split.strip("'\"").replace("/", ",").split(",")  # launch scripts sometimes pass '99,1,0' quoted
    values = [_as_float(p.strip()) for p in parts]
    if not 1 <= len(values) <= 3 or any(v is None or not math.isfinite(v) or v < 0 for v in values):
        raise ValueError(f"--split: expected up to three non-negative numbers like 949,50,1, got {split!r}")
    values += [0.0] * (3 - len(values))
    total = sum(values)
    if total <= 0:
        raise ValueError(f"--split: the parts of {split!r} sum to zero")
    return tuple(v / total for v in values)


def check_tokenizer_flags(cfg) -> None:
    """Check the tokenizer fields of any object that has them (DataConfig, the preprocessing tool's args)."""
    kind = cfg.tokenizer_type
    if kind not in TOKENIZER_TYPES:
        raise ValueError(f"--tokenizer-type: {kind!r} is not one of {', '.join(TOKENIZER_TYPES)}")
    needed = {"GPT2BPETokenizer": ("vocab_file", "merge_file"), "SentencePieceTokenizer": ("tokenizer_model",),
              "HuggingFaceTokenizer": ("tokenizer_model",), "SFTTokenizer": ("tokenizer_model",),
              "NullTokenizer": ("vocab_size",)}[kind]
    for field in needed:
        flag = "--" + field.replace("_", "-")
        value = getattr(cfg, field)
        if value is None:
            raise ValueError(f"{flag}: required by --tokenizer-type {kind}")
        if field == "vocab_size":
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{flag}: must be a positive integer, got {value!r}")
        elif not os.path.exists(value):
            raise ValueError(f"{flag}: no such file: {value}")


@dataclass
class DataConfig:
    """What to read and how to tokenize it. No data flags and no --mock-data means the default corpus."""

    data_path: list[str] | None = flag(None, "dataset prefixes, optionally weighted: 0.7 PREFIX_A 0.3 PREFIX_B. "
                                       "Without data flags a corpus is built from the Python standard library.",
                                       nargs="*", group="data")
    split: str = flag("949,50,1", "train,valid,test proportions of each dataset", group="data")
    seq_length: int = 1024  # the model's --seq-length
    seed: int = 1234  # the run's --seed
    data_cache_path: str | None = flag(None, "where index arrays and the default corpus are cached", group="data")
    mock_data: bool = flag(False, "synthetic tokens, no files", group="data")
    tokenizer_type: str | None = flag(None, choices=TOKENIZER_TYPES, group="tokenizer")
    vocab_file: str | None = flag(None, "GPT-2 vocab.json", group="tokenizer")
    merge_file: str | None = flag(None, "GPT-2 merges.txt", group="tokenizer")
    tokenizer_model: str | None = flag(None, "SentencePiece .model, or a local Hugging Face tokenizer.json / "
                                             "directory", group="tokenizer")
    vocab_size: int | None = flag(None, "ids of the NullTokenizer (--mock-data)", bounds=POSITIVE, group="tokenizer")
    num_workers: int = flag(2, "data loader worker processes", bounds=NON_NEGATIVE, group="data")
    sft: bool = flag(False, "supervised fine-tuning: --data-path names JSONL files of chat rows ({\"messages\": "
                            "[{\"role\", \"content\"}, ...]} or {\"input\", \"output\"}), packed into "
                            "--seq-length samples, loss on assistant tokens only", group="data")
    sft_tokenizer_prompt_format: str = flag("default", "default: the tokenizer's chat template; identity: the "
                                            "messages' contents concatenated", choices=PROMPT_FORMATS,
                                            group="tokenizer")
    reset_position_ids: bool = flag(False, "restart position ids after each end-of-document token", group="data")
    reset_attention_mask: bool = flag(False, "no attention across end-of-document tokens (block-diagonal causal "
                                             "mask)", group="data")
    eod_mask_loss: bool = flag(False, "no loss on predictions made from an end-of-document token", group="data")

    def __post_init__(self):
        if isinstance(self.data_path, str):
            self.data_path = self.data_path.split()
        if self.data_path is not None and len(self.data_path) == 0:
            self.data_path = None
        parse_split(self.split)
        if not isinstance(self.seq_length, int) or self.seq_length < 1:
            raise ValueError(f"--seq-length: must be a positive integer, got {self.seq_length!r}")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2 ** 32:
            raise ValueError(f"--seed: must be an integer in [0, 2**32), got {self.seed!r}")
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ValueError(f"--num-workers: must be a non-negative integer, got {self.num_workers!r}")
        if self.mock_data and self.data_path:
            raise ValueError("--mock-data: cannot be combined with --data-path")
        if self.sft:
            self._check_sft()
        if self.mock_data and self.tokenizer_type is None:
            self.tokenizer_type = "NullTokenizer"
            self.vocab_size = self.vocab_size or MOCK_DEFAULT_VOCAB_SIZE
        if self.data_path and self.tokenizer_type is None and self.vocab_file and self.merge_file:
            self.tokenizer_type = "GPT2BPETokenizer"  # Megatron's GPT examples pass only --vocab-file/--merge-file
        if self.data_path:
            self._check_prefixes()
            if self.tokenizer_type is None:
                raise ValueError("--tokenizer-type: required with --data-path")
        elif not self.mock_data and self.tokenizer_type is not None:
            raise ValueError("--tokenizer-type: given without --data-path; the default corpus brings its own "
                             "tokenizer (pass --data-path to use yours, or --mock-data)")
        if self.tokenizer_type is not None:
            check_tokenizer_flags(self)

    def _check_sft(self) -> None:
        if not self.data_path:
            raise ValueError("--sft: needs --data-path FILE.jsonl (chat rows; weights as for pretraining data)")
        if self.tokenizer_type != "SFTTokenizer":
            raise ValueError("--sft: needs --tokenizer-type SFTTokenizer --tokenizer-model DIR (a local Hugging Face "
                             f"tokenizer directory), got --tokenizer-type {self.tokenizer_type}")

    def _check_prefixes(self) -> None:
        if self.sft:
            for path in self.blend[0]:
                if not os.path.isfile(path):
                    raise ValueError(f"--data-path: no such JSONL file: {path}")
            return
        for prefix in self.blend[0]:
            for suffix in (".idx", ".bin"):
                if not os.path.isfile(prefix + suffix):
                    raise ValueError(f"--data-path: dataset {prefix} has no {prefix + suffix}")

    @property
    def blend(self) -> tuple[list[str], list[float] | None]:
        """(prefixes, weights or None) from --data-path."""
        return parse_blend(self.data_path)

    @property
    def split_fractions(self) -> tuple[float, float, float]:
        return parse_split(self.split)

    @property
    def uses_default_corpus(self) -> bool:
        return not self.data_path and not self.mock_data
