"""Megatron-LM-compatible command-line flags, generated from the config dataclasses' field metadata.

Each flag is declared once, on the field it fills (``flagspec.flag``): name, type, default, choices, bounds
and help. This module only lists which dataclass forms which argparse group, adds the Megatron flags that
tune other implementations (``compat``), and builds the validated :class:`Config`.
"""

import argparse
import sys

from .checkpoint.checkpoint_args import apply_checkpoint_args
from .compat import add_compat_args, adjust_args, compat_notes
from .config import Config, ModelConfig, ParallelConfig, PrecisionConfig, TrainingConfig
from .data.arguments import add_data_args, data_config_from_args
from .flagspec import add_flags, from_args
from .fp8.scaling import Fp8Recipe

GROUPS = (("model", ModelConfig), ("parallelism", ParallelConfig), ("precision (docs/design.md §1, §2)", PrecisionConfig),
          ("FP8 recipe", Fp8Recipe), ("training", TrainingConfig))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="megatron_fp8 GPT pretraining", allow_abbrev=False)
    for title, cls in GROUPS:
        add_flags(parser, cls, title)
    add_data_args(parser)
    add_compat_args(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """The validated Config of parsed flags; a bad value raises ValueError naming the flag."""
    adjusted = adjust_args(args)
    model = ModelConfig(**from_args(ModelConfig, args))
    precision = PrecisionConfig(recipe=Fp8Recipe(**from_args(Fp8Recipe, args)), **from_args(PrecisionConfig, args))
    return Config(model=model, parallel=ParallelConfig(**from_args(ParallelConfig, args)), precision=precision,
                  training=TrainingConfig(**from_args(TrainingConfig, args)),
                  data=data_config_from_args(args, seq_length=model.seq_length, seed=args.seed),
                  startup_notes=compat_notes(args) + adjusted)


def parse_config(argv=None) -> Config:
    """Parse flags into a validated Config; bad values exit with the message naming the flag.
    ``--use-checkpoint-args`` first fills the model, tokenizer and precision flags from ``--load``."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    try:
        notes = apply_checkpoint_args(parser, args, argv)
        config = config_from_args(args)
    except ValueError as err:
        parser.error(str(err))
    config.startup_notes.extend(notes)
    return config
