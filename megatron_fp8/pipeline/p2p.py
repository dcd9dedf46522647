"""Point-to-point between adjacent pipeline stages: activations forward, their gradients backward.

Tensors travel in BF16 (docs/design.md §3) and are cast back to the compute dtype on arrival. Each exchange
posts its sends and receives together and then waits, so paired stages never deadlock (gloo and NCCL).
"""

import torch

from ..parallel import comm
from ..parallel.state import ParallelState

WIRE_DTYPE = torch.bfloat16


class StageLink:
    def __init__(self, pstate: ParallelState, shape, dtype: torch.dtype, device):
        self.pstate, self.shape, self.dtype, self.device = pstate, tuple(shape), dtype, device
        ranks, stage = pstate.pp_ranks, pstate.pp_rank
        self.prev = ranks[stage - 1] if stage > 0 else None
        self.next = ranks[stage + 1] if stage < len(ranks) - 1 else None

    def _exchange(self, send: torch.Tensor | None, dst, recv_from) -> torch.Tensor | None:
        ops, received = [], None
        if recv_from is not None:
            received, op = comm.recv(self.shape, WIRE_DTYPE, recv_from, self.pstate.pp_group, self.device)
            ops.append(op)
        if send is not None and dst is not None:
            ops.append(comm.send(send.detach().to(WIRE_DTYPE), dst, self.pstate.pp_group))
        for op in ops:
            op.wait()
        return received.to(self.dtype) if received is not None else None

    def recv_forward(self):
        return self._exchange(None, None, self.prev)

    def send_forward(self, y):
        self._exchange(y, self.next, None)

    def recv_backward(self):
        return self._exchange(None, None, self.next)

    def send_backward(self, dx):
        self._exchange(dx, self.prev, None)

    def send_forward_recv_backward(self, y):
        return self._exchange(y, self.next, self.next)

    def send_backward_recv_forward(self, dx):
        return self._exchange(dx, self.prev, self.prev)
