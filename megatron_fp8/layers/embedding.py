"""Word and position embeddings (compute dtype; embeddings are never FP8, docs/design.md §1)."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Config
from ..parallel import mappings
from ..parallel.state import ParallelState
from .weights import init_normal, make_parameter


def padded_vocab_size(vocab_size: int, divisible_by: int, tp_size: int) -> int:
    """Megatron pads the vocabulary to a multiple of ``--make-vocab-size-divisible-by`` x TP."""
    multiple = divisible_by * tp_size
    return ((vocab_size + multiple - 1) // multiple) * multiple


class VocabParallelEmbedding(nn.Module):
    """Embedding table split along the vocabulary across TP ranks ([V/tp, h] per rank)."""

    def __init__(self, vocab_size: int, hidden_size: int, config: Config, pstate: ParallelState, name: str,
                 device=None, shared_embedding: bool = False):
        super().__init__()
        self.vocab_size, self.pstate = vocab_size, pstate
        full = init_normal((vocab_size, hidden_size), config.model.init_method_std, config.training.seed, name)
        self.weight = make_parameter(full, policy=config.precision.policy, fp8_eligible=False, device=device,
                                     partition_dim=0, tp_rank=pstate.tp_rank, tp_size=pstate.tp_size,
                                     shared_embedding=shared_embedding, embedding_or_output=True)
        self.vocab_start = pstate.tp_rank * (vocab_size // pstate.tp_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.pstate.tp_size == 1:
            return F.embedding(tokens, self.weight)
        # each rank embeds the tokens of its vocabulary slice; the all-reduce fills in the rest
        local = tokens - self.vocab_start
        outside = (local < 0) | (local >= self.weight.shape[0])
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        out = out.masked_fill(outside.unsqueeze(-1), 0.0)
        return mappings.reduce_from_tp(out, self.pstate)


class PositionEmbedding(nn.Module):
    """Learned absolute positions, replicated on every TP rank."""

    def __init__(self, max_positions: int, hidden_size: int, config: Config, name: str, device=None):
        super().__init__()
        full = init_normal((max_positions, hidden_size), config.model.init_method_std, config.training.seed, name)
        self.weight = make_parameter(full, policy=config.precision.policy, fp8_eligible=False, device=device)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(position_ids, self.weight)
