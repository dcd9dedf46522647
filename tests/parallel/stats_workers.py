"""Workers for the FP8-statistics layout test: one iteration with --fp8-stats-interval 1 under TP2 and DP2
in one spawn of two gloo ranks (the groups are rebuilt per layout)."""

import torch.distributed as dist

from megatron_fp8.config import ModelConfig
from megatron_fp8.parallel.groups import build_state
from megatron_fp8.stats_collector import Fp8StatsCollector
from megatron_fp8.training import Trainer

from ..helpers import VOCAB, PatternDataset, tiny_config

STATS_SEQ = 8
LAYOUTS = {"TP2": 2, "DP2": 1}  # tensor-parallel size of each two-rank layout


def stats_config(level: str, tp: int = 1, margin: int = 0, interval: int = 1):
    """One layer, hidden 32: the FP8 GEMMs are small enough for the slow CPU ``_scaled_mm``."""
    config = tiny_config(level, tp, micro_batch_size=2, global_batch_size=4, fp8_stats_interval=interval)
    config.model = ModelConfig(num_layers=1, hidden_size=32, num_attention_heads=2, seq_length=STATS_SEQ,
                               vocab_size=VOCAB, make_vocab_size_divisible_by=64, hidden_dropout=0.0,
                               attention_dropout=0.0)
    config.precision.recipe.margin = margin
    return config


def train_with_stats(trainer: Trainer, steps: int = 1, printer=print) -> dict:
    """Train ``steps`` iterations as ``pretrain`` does; the statistics of the last statistics iteration."""
    collector = Fp8StatsCollector.for_trainer(trainer, printer)
    dataset = PatternDataset(seq=STATS_SEQ)
    for _ in range(steps):
        with collector.iteration(trainer.progress.iteration + 1):
            trainer.train_iteration(dataset)
    return collector.take().get("fp8_stats", {})


def stats_worker(rank: int, world: int, runs: list) -> dict:
    out = {}
    for layout, level in runs:
        config = stats_config(level, LAYOUTS[layout])
        pstate = build_state(config, rank, world, config.validate_layout(world))
        out[(layout, level)] = train_with_stats(Trainer(config, pstate))
        dist.barrier()
    return out
