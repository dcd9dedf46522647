"""``--use-checkpoint-args``: the model's shape, tokenizer, precision and layout from the checkpoint under
``--load`` (Megatron's ``load_args_from_checkpoint``), so an imported model trains without retyping them.

Megatron overrides command-line flags silently; here a flag given explicitly must agree with the checkpoint
wherever it changes the weights or what they compute (shape, norms, RoPE, biases, vocabulary padding,
tokenizer, precision level, TP/PP layout), and the error names it. Run settings that leave the weights
alone (``--seq-length``, dropout, ``--init-method-std``) come from the checkpoint unless given.
"""

import argparse
import os

from ..config import ModelConfig, PrecisionConfig
from ..data.default_corpus import MODEL as DEFAULT_TOKENIZER, corpus_dir
from ..flagspec import dest, flag_fields, flag_name, from_args
from . import hf_tokenizer
from .distributed import read_metadata
from .state import PRECISION_FIELDS, RESOLVED_FIELDS, TOKENIZER_FIELDS, model_config_of

RUN_FIELDS = ("seq_length", "hidden_dropout", "attention_dropout", "init_method_std")
# compared as resolved (an explicit --kv-channels 128 equals a checkpoint that left it to hidden/heads)
SPELLED_FIELDS = (*RESOLVED_FIELDS, "group_query_attention")
PATH_FIELDS = ("tokenizer_model", "vocab_file", "merge_file")
LAYOUT = (("tp", "tensor_model_parallel_size", "--tensor-model-parallel-size"),
          ("pp", "pipeline_model_parallel_size", "--pipeline-model-parallel-size"))


def explicit_dests(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The argparse destinations that ``argv`` sets explicitly (whatever the value)."""
    saved = [(action, action.default) for action in parser._actions]
    try:
        for action, _ in saved:
            action.default = argparse.SUPPRESS
        given, _ = parser.parse_known_args(argv)
    finally:
        for action, default in saved:
            action.default = default
    return set(vars(given))


def _same(given, saved, path: bool = False) -> bool:
    if path and isinstance(given, str) and isinstance(saved, str):
        return os.path.realpath(given) == os.path.realpath(saved)
    return given == saved


class _Taker:
    def __init__(self, args, given: set, load: str):
        self.args, self.given, self.load, self.taken = args, given, load, []

    def take(self, dest_name: str, flag: str, saved, must_agree: bool, path: bool = False) -> None:
        current = getattr(self.args, dest_name)
        if dest_name in self.given:
            if must_agree and not _same(current, saved, path):
                raise ValueError(f"{flag} {current} conflicts with the checkpoint under --load {self.load}, saved "
                                 f"with {saved!r} (--use-checkpoint-args takes it from there: drop the flag, or "
                                 "convert the checkpoint with tools/convert_checkpoint.py)")
            return
        if current != saved:
            setattr(self.args, dest_name, saved)
            self.taken.append(f"{flag} {saved}")


def apply_checkpoint_args(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str]) -> list[str]:
    """Fill ``args`` from the checkpoint under ``--load`` when ``--use-checkpoint-args`` is given; returns the
    start-up note (empty without the flag). Raises ValueError naming a conflicting flag."""
    if not getattr(args, "use_checkpoint_args", False):
        return []
    if not args.load:
        raise ValueError("--use-checkpoint-args needs --load DIR (the checkpoint to take the model from)")
    found = read_metadata(args.load)
    if found is None:
        raise ValueError(f"--use-checkpoint-args: --load {args.load} holds no checkpoint "
                         "(no latest_checkpointed_iteration.txt)")
    directory, metadata = found
    summary, taker = metadata["config"], _Taker(args, explicit_dests(parser, argv), args.load)
    for f in flag_fields(ModelConfig):
        if f.name in summary["model"] and f.name not in SPELLED_FIELDS:
            taker.take(dest(f), flag_name(f), summary["model"][f.name], f.name not in RUN_FIELDS)
    _take_attention_shape(taker, summary["model"])
    for f in flag_fields(PrecisionConfig):
        if f.name in PRECISION_FIELDS and f.name in summary["precision"]:
            taker.take(dest(f), flag_name(f), summary["precision"][f.name], True)
    for key, field, flag in LAYOUT:
        taker.take(field, flag, metadata["layout"][key], True)
    _take_tokenizer(taker, summary.get("tokenizer") or {})
    return [f"--use-checkpoint-args: from {directory}: " + (", ".join(taker.taken) or "the flags already agree")]


def _take_attention_shape(taker: _Taker, saved_model: dict) -> None:
    """--group-query-attention, --num-query-groups and --kv-channels: compared as the shape they resolve to."""
    args, saved = taker.args, model_config_of(saved_model)
    fields = {f.name: f for f in flag_fields(ModelConfig) if f.name in SPELLED_FIELDS}
    if not any(dest(f) in taker.given for f in fields.values()):
        for name, f in fields.items():
            taker.take(dest(f), flag_name(f), getattr(saved, name), False)
        return
    mine = ModelConfig(**{**from_args(ModelConfig, args), "vocab_size": None})
    for name, resolved in RESOLVED_FIELDS.items():
        if getattr(mine, resolved) != getattr(saved, resolved):
            flag = flag_name(fields[name])
            raise ValueError(f"{flag}: this command line gives {getattr(mine, resolved)} {resolved.replace('_', ' ')}"
                             f", the checkpoint under --load {taker.load} has {getattr(saved, resolved)} "
                             "(--use-checkpoint-args takes it from there: drop the flag)")


def _take_tokenizer(taker: _Taker, section: dict) -> None:
    section = hf_tokenizer.relocated(section, taker.load)
    if not section.get("tokenizer_type"):
        return
    args = taker.args
    if not args.data_path and not args.mock_data:
        default = os.path.join(corpus_dir(args.data_cache_path), DEFAULT_TOKENIZER)
        if _same(section.get("tokenizer_model"), default, path=True):
            return  # trained on the default corpus, whose tokenizer it brings again
        raise ValueError(f"--use-checkpoint-args: the checkpoint under --load {taker.load} uses --tokenizer-type "
                         f"{section['tokenizer_type']}, but without --data-path the default corpus brings its own "
                         "tokenizer: pass --data-path (data preprocessed with the checkpoint's tokenizer) or "
                         "--mock-data")
    for key in TOKENIZER_FIELDS:
        if section.get(key) is not None:
            taker.take(key, "--" + key.replace("_", "-"), section[key], True, path=key in PATH_FIELDS)
