"""Cross entropy over a vocabulary split across TP ranks, in float32 (Megatron's vocab-parallel loss).

Each rank holds logits for its vocabulary slice; three all-reduces (max, target logit, sum of exps)
give every rank the exact softmax denominator, and the backward pass needs no communication.
"""

import torch
import torch.distributed as dist

from ..parallel import comm
from ..parallel.state import ParallelState


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, pstate: ParallelState):
        logits = logits.float()
        vocab_local = logits.shape[-1]
        start = pstate.tp_rank * vocab_local
        logits_max = comm.all_reduce(logits.max(dim=-1).values, pstate.tp_group, "tp", dist.ReduceOp.MAX)
        shifted = logits - logits_max.unsqueeze(-1)
        in_range = (labels >= start) & (labels < start + vocab_local)
        local_labels = torch.where(in_range, labels - start, torch.zeros_like(labels))
        target = shifted.gather(-1, local_labels.unsqueeze(-1)).squeeze(-1) * in_range
        target = comm.all_reduce(target, pstate.tp_group, "tp")
        exp = shifted.exp()
        sum_exp = comm.all_reduce(exp.sum(dim=-1), pstate.tp_group, "tp")
        softmax = exp.div_(sum_exp.unsqueeze(-1))
        ctx.save_for_backward(softmax, local_labels, in_range)
        return sum_exp.log() - target

    @staticmethod
    def backward(ctx, grad_loss):
        softmax, local_labels, in_range = ctx.saved_tensors
        grad = softmax.clone()
        grad.scatter_add_(-1, local_labels.unsqueeze(-1), -in_range.unsqueeze(-1).to(grad.dtype))
        return grad * grad_loss.unsqueeze(-1), None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, pstate: ParallelState) -> torch.Tensor:
    """Per-token loss ``[s, b]`` from this rank's logits ``[s, b, V/tp]`` and the labels ``[s, b]``."""
    return _VocabParallelCrossEntropy.apply(logits, labels, pstate)
