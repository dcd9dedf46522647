"""Make the gradients of every model-parallel replica complete before clipping and the optimizer.

- Parameters used on sequence shards (norms, row-parallel biases under ``--sequence-parallel``) got a
  partial gradient on each TP rank: all-reduce over TP.
- Tied word embeddings live on the first and the last pipeline stage: all-reduce their gradients over
  the embedding group, so both copies take the same step and stay equal.
Data-parallel reduction happens in the gradient buffers' own buckets.
"""

import torch.nn as nn

from ..layers.weights import param_info
from ..parallel import comm
from ..parallel.state import ParallelState


def finalize_model_grads(params: list[nn.Parameter], pstate: ParallelState) -> None:
    for p in params:
        info = param_info(p)
        if info.sequence_parallel and pstate.tp_size > 1:
            comm.all_reduce(p.main_grad, pstate.tp_group, "tp")
        if info.shared_embedding and pstate.embedding_group is not None:
            comm.all_reduce(p.main_grad, pstate.embedding_group, "embedding")


def counts_in_norm(p: nn.Parameter, pstate: ParallelState) -> bool:
    """Count each distinct parameter once across TP and PP: replicas only on TP rank 0, and the tied
    embedding only on the first stage."""
    info = param_info(p)
    if info.shared_embedding and not pstate.is_first_stage:
        return False
    return info.partition_dim is not None or pstate.tp_rank == 0
