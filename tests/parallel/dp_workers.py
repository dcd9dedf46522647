"""Worker functions for the data-parallel tests (module level: spawned interpreters import them)."""

import torch

from megatron_fp8.layers.weights import param_info, real_value
from megatron_fp8.parallel import comm
from megatron_fp8.parallel.groups import build_state
from megatron_fp8.training import Trainer

from ..helpers import PatternDataset, run_steps, tiny_config


def make_config(level: str, tp: int = 1, pp: int = 1, distopt: bool = False, hidden: int = 64, **par):
    cfg = tiny_config(level, tp, pp, micro_batch_size=2, global_batch_size=8)
    cfg.model.hidden_size = hidden
    cfg.model.ffn_hidden_size = 4 * hidden
    cfg.parallel.use_distributed_optimizer = distopt
    for key, value in par.items():
        setattr(cfg.parallel, key, value)
    return cfg


def train(rank: int, world: int, runs: list[dict], steps: int) -> dict:
    """Train each run's config for ``steps`` steps; report losses, bytes moved and per-rank state bytes."""
    results = {}
    for run in runs:
        cfg = make_config(**run["config"])
        dp = world // (cfg.parallel.tensor_model_parallel_size * cfg.parallel.pipeline_model_parallel_size)
        pstate = build_state(cfg, rank, world, dp)
        trainer = Trainer(cfg, pstate)
        comm.COUNTER.take()
        hook = None
        if run.get("inject_inf_step") is not None and rank == 0:
            layer = trainer.model.decoder.layers[0].mlp.linear_fc2
            target = run["inject_inf_step"]
            hook = layer.register_full_backward_pre_hook(
                lambda mod, g: (torch.full_like(g[0], float("inf")),) if trainer.progress.iteration == target else g)
        losses = run_steps(trainer, PatternDataset(), steps)
        if hook is not None:
            hook.remove()
        results[run["name"]] = {
            "losses": losses, "comm": comm.COUNTER.take(), "optimizer_bytes": trainer.optimizer.nbytes(),
            "eligible_numel": sum(p.numel() for p in trainer.params if param_info(p).fp8_eligible),
            "numel": sum(p.numel() for p in trainer.params),
            "skipped": trainer.progress.skipped_iterations,
            "params": {n: real_value(p).clone() for n, p in trainer.model.named_parameters()},
        }
    return results
