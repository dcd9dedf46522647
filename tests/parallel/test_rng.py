"""Dropout streams: pipeline stages draw different masks (they run their layers in lockstep, so equal
seeds would repeat one stage's masks on the next); TP ranks differ only on the stream for split tensors."""

import torch

from megatron_fp8.parallel.state import ParallelState
from megatron_fp8.training import Trainer

from .variants import model_config


def masks(tp_rank: int, pp_rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(default-stream mask, TP-stream mask) a rank draws right after building its trainer."""
    ps = ParallelState(tp_size=2, tp_rank=tp_rank, pp_size=2, pp_rank=pp_rank)
    Trainer(model_config("gpt", "off", 2, 2), ps)
    default = torch.rand(64)
    with ps.rng.fork():
        split = torch.rand(64)
    return default, split


def test_stages_and_tp_ranks_get_their_own_streams():
    (d00, s00), (d10, s10), (d01, s01) = masks(0, 0), masks(1, 0), masks(0, 1)
    assert torch.equal(d00, d10), "replicated tensors need the same mask on every TP rank"
    assert not torch.equal(s00, s10), "tensors split across TP ranks need different masks per rank"
    assert not torch.equal(d00, d01) and not torch.equal(s00, s01), "pipeline stages must not repeat masks"
