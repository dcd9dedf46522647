"""What the layout tests measure on one model, identically in the single-process reference and in
every rank of a parallel run: logits, first losses, finalized gradients, a short loss curve.

Each rank reports only what it holds (its TP shards, its pipeline stage's layers) under layout-free
names; :mod:`.assemble` puts the pieces back together in the parent.
"""

import re
from contextlib import contextmanager

import torch

from megatron_fp8 import batches
from megatron_fp8.fp8.tensor import Fp8Tensor
from megatron_fp8.layers.weights import param_info
from megatron_fp8.optim.finalize_grads import finalize_model_grads
from megatron_fp8.parallel import comm
from megatron_fp8.parallel.state import ParallelState
from megatron_fp8.pipeline.p2p import StageLink
from megatron_fp8.training import Trainer

from ..helpers import PatternDataset, run_steps
from .bf16_boundary import emulate_pipeline_boundaries


@contextmanager
def recorded_gathers():
    """Log every all-gather (tag, bytes per element, local and gathered element counts, bytes counted)."""
    log, original = [], comm.all_gather

    def gather(t, group, tag, dim=0):
        before = comm.COUNTER.bytes[tag]
        out = original(t, group, tag, dim)
        log.append({"tag": tag, "itemsize": t.element_size(), "local": t.numel(), "gathered": out.numel(),
                    "bytes": comm.COUNTER.bytes[tag] - before})
        return out

    comm.all_gather = gather
    try:
        yield log
    finally:
        comm.all_gather = original


@torch.no_grad()
def forward_logits(trainer: Trainer, mb: dict) -> torch.Tensor | None:
    """Gathered logits [b, s, V] of one micro-batch on the last stage (None elsewhere). With a pipeline
    the stages are driven by hand: receive the previous stage's hidden states, run, send them on."""
    model, ps, m = trainer.model, trainer.pstate, trainer.config.model
    seq = m.seq_length // (ps.tp_size if model.sp else 1)
    link = StageLink(ps, (seq, mb["tokens"].shape[0], m.hidden_size), trainer.policy.compute, trainer.device)
    model.set_input_tensor(link.recv_forward())  # None on the first stage
    out = model(mb["tokens"], mb["position_ids"], None)
    if not model.post_process:
        link.send_forward(out)
        return None
    return out.clone()


def global_name(name: str, param, ps: ParallelState, num_layers: int) -> str:
    """The single-process name of a parameter: global layer numbers, and the head's copy of the tied
    embedding named after the embedding it mirrors."""
    per_stage = num_layers // ps.pp_size

    def renumber(match):
        return f"decoder.layers.{ps.pp_rank * per_stage + int(match.group(1))}."

    name = re.sub(r"^decoder\.layers\.(\d+)\.", renumber, name)
    if name == "output_weight" and param_info(param).shared_embedding:
        return "word_embeddings.weight"
    return name


def local_grads(trainer: Trainer) -> dict:
    """``{global name: (float32 main_grad, partition_dim, stacked)}`` for this rank's parameters."""
    out = {}
    for name, p in trainer.model.named_parameters():
        g = p.main_grad
        g = g.dequantize() if isinstance(g, Fp8Tensor) else g.float()
        key = global_name(name, p, trainer.pstate, trainer.config.model.num_layers)
        out[key] = (g.clone(), param_info(p).partition_dim, param_info(p).tp_stacked)
    return out


def train_curve(trainer: Trainer, data, steps: int) -> tuple[list[float], list[float]]:
    """Losses and gradient norms of ``steps`` training steps (helpers.run_steps, recording the norms)."""
    norms, step = [], trainer.train_step

    def recording_step(micro_batches, *lrs):
        result = step(micro_batches, *lrs)
        norms.append(result.grad_norm)
        return result

    trainer.train_step = recording_step
    return run_steps(trainer, data, steps), norms


def run_probe(config, pstate: ParallelState | None = None, steps: int = 10, emulate_pp: int = 1) -> dict:
    """Logits and forward communication of one micro-batch, the first global batch's per-micro-batch
    losses and finalized gradients, then the losses and gradient norms of ``steps`` training steps of
    a fresh trainer."""
    data = PatternDataset()
    trainer = Trainer(config, pstate)
    emulate_pipeline_boundaries(trainer, emulate_pp)
    ps, t = trainer.pstate, config.training
    mbs = batches.global_batch(data, 0, t.global_batch_size, t.micro_batch_size, ps.dp_rank, ps.dp_size,
                               trainer.device)
    comm.COUNTER.take()
    with recorded_gathers() as gathers:
        logits = forward_logits(trainer, mbs[0])
    forward_bytes = comm.COUNTER.take()
    trainer.grads.zero()
    trainer.model.train()
    losses = [float(x) for x in trainer.forward_backward(mbs)]
    finalize_model_grads(trainer.params, ps)
    grads = local_grads(trainer)
    curve, norms = train_curve(Trainer(config, pstate), data, steps)
    return {"logits": logits, "losses": losses, "grads": grads, "curve": curve, "grad_norms": norms,
            "forward_bytes": forward_bytes,
            "forward_gathers": gathers,
            "coords": (ps.tp_rank, ps.pp_rank, ps.dp_rank), "last_stage": ps.is_last_stage}
