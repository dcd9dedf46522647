"""Spawned workers for the distributed checkpoint tests (module level so fresh interpreters import them)."""

from megatron_fp8.parallel.groups import build_state
from megatron_fp8.training import Trainer

from ..helpers import PatternDataset, run_steps, tiny_config


def _trainer(rank: int, world: int, level: str, tp: int, pp: int, distopt: bool) -> Trainer:
    cfg = tiny_config(level, tp, pp)
    cfg.parallel.use_distributed_optimizer = distopt
    return Trainer(cfg, build_state(cfg, rank, world, world // (tp * pp)))


def train_save_continue(rank, world, level, tp, pp, distopt, root, before, after):
    """Train ``before`` steps, save to ``root``, train ``after`` more; the losses of both stretches."""
    trainer = _trainer(rank, world, level, tp, pp, distopt)
    data = PatternDataset()
    first = run_steps(trainer, data, before)
    trainer.save(root)
    return first, run_steps(trainer, data, after)


def load_and_train(rank, world, level, tp, pp, distopt, root, steps):
    trainer = _trainer(rank, world, level, tp, pp, distopt)
    assert trainer.load(root), f"no checkpoint under {root}"
    return trainer.progress.iteration, run_steps(trainer, PatternDataset(), steps)
