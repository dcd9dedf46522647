"""What ``--load`` brings into a run, with Megatron-LM's semantics.

- plain ``--load``: resume everything (weights, optimizer, iteration, data position, RNG); the checkpoint
  must have this run's precision level and layout (a different one fails naming the converter command).
- ``--no-load-optim`` / ``--no-load-rng``: resume, but start the optimizer (from the loaded weights) or the
  RNG afresh.
- ``--finetune``: the weights only. Iteration, consumed samples, optimizer, learning-rate schedule and RNG
  start fresh. The weights are read through the universal form (checkpoint/universal.py), so a checkpoint
  of any layout and precision level fine-tunes at this run's: an ``off`` import fine-tunes at O2, its
  float32 values requantized into FP16-with-scale weights; where this level keeps a separate master (O3,
  --bf16) it starts from the most precise copy the checkpoint holds.
"""

import os

from .checkpoint.tracker import iteration_dir
from .checkpoint.distributed import METADATA, read_metadata
from .checkpoint.state import (MODEL_FIELDS, config_summary, precision_differs, saved_precision,
                               target_precision_flags)
from .checkpoint.universal import assign_model, read_universal


def _check_model(saved: dict, config, source: str) -> None:
    """The checkpoint must hold this run's model; only the vocabulary's padding may differ."""
    current = config_summary(config)["model"]
    for key in MODEL_FIELDS:
        if key == "vocab_size":
            old = saved.get("unpadded_vocab_size") or saved["vocab_size"]
            new = current["unpadded_vocab_size"] or current["vocab_size"]
        else:
            old, new = saved.get(key), current[key]
        if key in saved or key == "vocab_size":
            if old != new:
                flag = "--" + key.replace("_", "-") if key != "vocab_size" else "the tokenizer's vocabulary"
                raise ValueError(f"{source}: checkpoint was saved with {flag}={old!r}, this run has {new!r}")


def finetune_from(trainer, root: str) -> int:
    """Load the weights of the newest checkpoint under ``root`` into ``trainer`` for fine-tuning; every
    other state is fresh. Returns the iteration the checkpoint was saved at."""
    universal = read_universal(root)
    directory = iteration_dir(root, universal["iteration"])
    _check_model(universal["config"]["model"], trainer.config, os.path.join(directory, METADATA))
    assign_model(trainer.model, universal, trainer.config, trainer.pstate)
    trainer.build_optimizer()  # fresh moments and step; masters from the full-precision values just assigned
    return universal["iteration"]


def load_checkpoint(trainer, root: str, printer=print) -> bool:
    """Apply ``--load root`` with --finetune / --no-load-optim / --no-load-rng; False when there is nothing
    to resume from (a fresh run). Bad combinations fail before any weights change."""
    t = trainer.config.training
    found = read_metadata(root)
    if found is None:
        if t.finetune:
            raise ValueError(f"--finetune: --load {root} holds no checkpoint (no latest_checkpointed_iteration.txt)")
        return False
    directory, metadata = found
    saved = metadata["config"]["precision"]
    if t.finetune:
        iteration = finetune_from(trainer, root)
        printer(f" > fine-tuning from {directory} (saved at iteration {iteration}, --fp8-level "
                f"{saved['fp8_level']}, TP{metadata['layout']['tp']} PP{metadata['layout']['pp']}): weights loaded "
                f"into --fp8-level {trainer.config.precision.fp8_level}; iteration, optimizer, learning-rate "
                "schedule, RNG and data position start fresh")
        return True
    differs = precision_differs(saved, trainer.config)
    if differs:
        key = differs[0]
        old, new = saved_precision(saved, key), getattr(trainer.config.precision, key)
        level, flag = trainer.config.precision.fp8_level, "--" + key.replace("_", "-")
        raise ValueError(f"{os.path.join(directory, METADATA)}: checkpoint was saved with {flag}={old!r}, this run "
                         f"has {flag}={new!r}. Fine-tune from it with --finetune (converts on load), or convert it "
                         f"first: tools/convert_checkpoint.py --load {root} --save NEW_DIR"
                         f"{target_precision_flags(saved, trainer.config) or ' --target-fp8-level ' + level}")
    trainer.load(root, load_optim=not t.no_load_optim, load_rng=not t.no_load_rng)
    return True
