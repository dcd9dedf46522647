"""The distributed optimizer (ZeRO-1, ``--use-distributed-optimizer``) for every precision level.

Each data-parallel rank keeps optimizer state (master weights and moments) only for the tensors it owns
(whole tensors, balanced greedily) and receives only those tensors' reduced gradients. After its AdamW
step each owner sends the updated parameters to every rank in their storage dtype: at O3 the FP8
weights as bytes plus their scale_inv, so all ranks hold the same FP8 model.
"""

import torch
import torch.nn as nn

from ..config import PrecisionPolicy
from ..layers.weights import param_info
from ..parallel import comm
from ..parallel.state import ParallelState
from .adamw import AdamWSettings, Fp8AdamW


def _bytes(p: nn.Parameter) -> torch.Tensor:
    return p.detach().view(torch.uint8).reshape(-1) if p.element_size() == 1 else p.detach().reshape(-1)


class DistributedOptimizer:
    def __init__(self, named_params: list[tuple[str, nn.Parameter]], policy: PrecisionPolicy,
                 settings: AdamWSettings, owners: dict[int, int], pstate: ParallelState):
        self.named_params, self.owners, self.pstate = named_params, owners, pstate
        self.owned = [(n, p) for n, p in named_params if owners[id(p)] == pstate.dp_rank]
        self.inner = Fp8AdamW(self.owned, policy, settings)
        for _, p in named_params:  # another rank keeps the master of a tensor it owns: drop this copy
            param_info(p).take_initial_master()

    @property
    def step_count(self) -> int:
        return self.inner.step_count

    def step(self, lr: float, grad_scale: float = 1.0, decoupled_lr: float | None = None) -> None:
        self.inner.step(lr, grad_scale, decoupled_lr)
        self.gather_params()

    def gather_params(self) -> None:
        """Send every owner's updated parameters (and FP8/FP16 scales) to all data-parallel ranks."""
        by_dtype: dict[torch.dtype, list[nn.Parameter]] = {}
        for _, p in self.named_params:
            by_dtype.setdefault(p.dtype, []).append(p)
        n, me = self.pstate.dp_size, self.pstate.dp_rank
        for params in by_dtype.values():
            by_owner = [[p for p in params if self.owners[id(p)] == j] for j in range(n)]
            counts = [sum(p.numel() for p in ps) for ps in by_owner]
            mine = torch.cat([_bytes(p) for p in by_owner[me]]) if by_owner[me] else _bytes(params[0])[:0]
            received = comm.all_gather_v(mine, counts, self.pstate.dp_group, "dp-param")
            scaled = [p for p in params if param_info(p).scale_inv is not None]
            scale_index = {id(p): i for i, p in enumerate(scaled)}
            scales = self._gather_scales(scaled)
            offset = 0
            for j, ps in enumerate(by_owner):
                for p in ps:
                    if j != me:
                        _bytes(p).copy_(received[offset: offset + p.numel()])
                        if id(p) in scale_index:
                            param_info(p).scale_inv.copy_(scales[j, scale_index[id(p)]])
                        torch.autograd.graph.increment_version(p)
                    offset += p.numel()

    def _gather_scales(self, scaled: list[nn.Parameter]) -> torch.Tensor | None:
        if not scaled:
            return None
        local = torch.stack([param_info(p).scale_inv.reshape(()) for p in scaled])
        return comm.all_gather(local.unsqueeze(0), self.pstate.dp_group, "dp-param")

    def nbytes(self) -> dict:
        return self.inner.nbytes()

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)
