"""A second RNG stream for dropout inside tensor- or sequence-parallel regions (Megatron's RNG tracker).

Dropout on a tensor that is replicated across TP ranks uses the default stream (same seed on every TP
rank, so the replicas stay equal); dropout on tensors that are split across TP ranks (attention heads,
sequence shards) forks to a stream seeded by ``seed + 2718 + tp_rank`` so the shards differ.
"""

from contextlib import contextmanager

import torch


def stage_seed(seed: int, pstate) -> int:
    """The seed of this pipeline stage's random streams (Megatron's ``seed + 100 * pp_rank``): stages
    run their layers' dropouts in lockstep, so equal seeds would give every stage the same masks."""
    return seed + 100 * pstate.pp_rank


class TPRngTracker:
    def __init__(self, seed: int, tp_rank: int, device):
        self.device = torch.device(device)
        saved = self._get()
        torch.manual_seed(seed + 2718 + tp_rank)
        self.state = self._get()
        self._set(saved)

    def _get(self):
        return torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else torch.get_rng_state()

    def _set(self, state) -> None:
        if self.device.type == "cuda":
            torch.cuda.set_rng_state(state, self.device)
        else:
            torch.set_rng_state(state)

    @contextmanager
    def fork(self):
        """Run the body on the tracker's stream, then return to the default one."""
        default = self._get()
        self._set(self.state)
        try:
            yield
        finally:
            self.state = self._get()
            self._set(default)


def dropout(x: torch.Tensor, p: float, training: bool, pstate, split_across_tp: bool) -> torch.Tensor:
    """Dropout that draws from the TP-rank stream when ``x`` is split across TP ranks."""
    if not training or p == 0.0:
        return x
    if split_across_tp and pstate.tp_size > 1 and pstate.rng is not None:
        with pstate.rng.fork():
            return torch.nn.functional.dropout(x, p, True)
    return torch.nn.functional.dropout(x, p, True)
