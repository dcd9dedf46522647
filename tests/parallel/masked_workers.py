"""Workers for the masked-loss layout test: the first global batch of packed SFT-like rows under DP2, TP2
and PP2 in one spawn of two gloo ranks (the groups are rebuilt per layout)."""

import torch.distributed as dist

from megatron_fp8 import batches
from megatron_fp8.optim.finalize_grads import finalize_model_grads
from megatron_fp8.parallel.groups import build_state
from megatron_fp8.training import Trainer

from ..helpers import PackedPatternDataset, tiny_config
from .probe import local_grads

LAYOUTS = {"DP2": (1, 1), "TP2": (2, 1), "PP2": (1, 2)}


def masked_config(level: str, tp: int = 1, pp: int = 1):
    """Micro-batches of 2 packed rows, 8 per global batch; rope so that restarted positions matter too."""
    config = tiny_config(level, tp, pp, micro_batch_size=2, global_batch_size=8)
    config.model.position_embedding_type = "rope"
    return config


def first_batch(trainer: Trainer) -> dict:
    """Loss (global masked mean) and finalized, data-parallel-reduced gradients of the first global batch."""
    ps, t = trainer.pstate, trainer.config.training
    mbs = batches.global_batch(PackedPatternDataset(), 0, t.global_batch_size, t.micro_batch_size, ps.dp_rank,
                               ps.dp_size, trainer.device)
    trainer.model.train()
    trainer.grads.zero(len(mbs))
    tokens = trainer.loss_tokens(mbs)
    sums = trainer.forward_backward(mbs, loss_tokens=tokens)
    trainer.grads.reduce()
    finalize_model_grads(trainer.params, ps)
    return {"loss": trainer._global_loss(sums, tokens), "grads": local_grads(trainer),
            "coords": (ps.tp_rank, ps.pp_rank, ps.dp_rank), "last_stage": ps.is_last_stage}


def masked_worker(rank: int, world: int, runs: list) -> dict:
    out = {}
    for layout, level in runs:
        tp, pp = LAYOUTS[layout]
        config = masked_config(level, tp, pp)
        pstate = build_state(config, rank, world, config.validate_layout(world))
        out[(layout, level)] = first_batch(Trainer(config, pstate))
        dist.barrier()
    return out
