"""Data-parallel gradient reduction of one bucket, with stock gloo/NCCL collectives (docs/design.md §3).

FP8 gradients: every rank sends each tensor's FP8 bytes to the tensor's owner (an all-to-all) and the
scales beside them; the owner dequantizes the N contributions, sums them in float32 (rank order, so the
result does not depend on timing), divides by N and requantizes with a fresh scale. The same bytes as an
FP8 ring reduce-scatter, no overflow in the sum, no custom NCCL. Without the distributed optimizer the
owners then send the reduced FP8 tensors to everyone (an all-gather), completing the all-reduce.

Float gradients (embeddings, norms, biases; every weight at ``off``/``gemm``) use an all-reduce in their
wire dtype (FP32 or BF16), or the same owner reduction when only the owner needs the result.
"""

import torch

from ..fp8 import kernels
from ..fp8.formats import E4M3
from ..fp8.tensor import Fp8Tensor
from ..parallel import comm
from ..parallel.state import ParallelState


class BucketReduction:
    """One bucket's gradients, reduced across the DP group: ``start`` when final, ``finish`` before the step."""

    def __init__(self, grads: list, owners: list[int], pstate: ParallelState, wire_dtype: torch.dtype,
                 gather: bool, margin: int = 0):
        self.grads, self.owners, self.pstate = grads, owners, pstate
        self.wire_dtype, self.gather, self.margin = wire_dtype, gather, margin
        self.fp8 = isinstance(grads[0], Fp8Tensor)
        self.n, self.me = pstate.dp_size, pstate.dp_rank
        self.by_owner = [[k for k, o in enumerate(owners) if o == j] for j in range(self.n)]
        self._pending = None

    # ---- helpers ------------------------------------------------------------------------------
    def _numel(self, ks) -> int:
        return sum(self.grads[k].numel() for k in ks)

    def _flat(self, k) -> torch.Tensor:
        """The gradient's storage as a flat tensor (FP8 as its bytes, which is how it travels)."""
        g = self.grads[k]
        return g.data.view(torch.uint8).reshape(-1) if self.fp8 else g.reshape(-1)

    def _gather_meta(self, meta: torch.Tensor, async_op: bool):
        """Every rank's [scale_inv, amax] per tensor: ``[N, K, 2]`` (and the work handle)."""
        out, work = comm.all_gather(meta.unsqueeze(0), self.pstate.dp_group, "dp-grad", async_op=True)
        if not async_op:
            work.wait()
        return out, work

    # ---- the reduction ------------------------------------------------------------------------
    def start(self) -> None:
        if self._pending is not None:
            return
        if not self.fp8 and self.gather:
            self._pending = self._start_all_reduce()
            return
        send = torch.cat([self._flat(k).to(self.wire_dtype) if not self.fp8 else self._flat(k)
                          for j in range(self.n) for k in self.by_owner[j]])
        counts = [self._numel(ks) for ks in self.by_owner]
        recv, work = comm.all_to_all_v(send, counts, [counts[self.me]] * self.n, self.pstate.dp_group,
                                       "dp-grad", async_op=True)
        meta = None
        if self.fp8:
            local = torch.stack([torch.stack([g.scale_inv.reshape(()), g.amax.reshape(())]) for g in self.grads])
            meta = self._gather_meta(local, async_op=True)
        self._pending = ("owner", recv, work, meta)

    def _start_all_reduce(self):
        flat = torch.cat([self._flat(k) for k in range(len(self.grads))]).to(self.wire_dtype)
        work = comm.all_reduce(flat, self.pstate.dp_group, "dp-grad", async_op=True)
        return ("all_reduce", flat, work, None)

    def finish(self) -> None:
        self.start()
        kind, buf, work, meta = self._pending
        self._pending = None
        work.wait()
        if kind == "all_reduce":
            self._scatter_back(range(len(self.grads)), buf.float().mul_(1.0 / self.n))
            return
        if meta is not None:
            meta[1].wait()
        self._sum_owned(buf.view(self.n, -1), meta[0] if meta is not None else None)
        if self.gather:
            self._all_gather_owned()

    def _scatter_back(self, ks, flat: torch.Tensor) -> None:
        offset = 0
        for k in ks:
            n = self.grads[k].numel()
            self._flat(k).copy_(flat[offset: offset + n])
            offset += n

    def _sum_owned(self, contributions: torch.Tensor, meta_all: torch.Tensor | None) -> None:
        offset = 0
        for k in self.by_owner[self.me]:
            g, n = self.grads[k], self.grads[k].numel()
            shards = contributions[:, offset: offset + n]
            offset += n
            if not self.fp8:
                total = torch.zeros(n, dtype=torch.float32, device=shards.device)
                for i in range(self.n):  # rank order: deterministic
                    total += shards[i].float()
                self._flat(k).copy_(total.mul_(1.0 / self.n))
                continue
            out, scale_inv, amax = kernels.sum_shards(shards.contiguous().view(E4M3), meta_all[:, k, 0].contiguous(), E4M3,
                                                      1.0 / self.n, self.margin, g.scale_inv)
            finite = torch.isfinite(meta_all[:, k, 1]).all()
            g.data.copy_(out.reshape(g.data.shape))
            g.scale_inv.copy_(scale_inv)
            g.amax = torch.where(finite, amax, torch.full_like(amax, float("inf")))  # overflow stays visible

    def _all_gather_owned(self) -> None:
        mine = self.by_owner[self.me]
        send = torch.cat([self._flat(k) for k in mine]) if mine else self._flat(0)[:0]
        counts = [self._numel(ks) for ks in self.by_owner]
        recv = comm.all_gather_v(send, counts, self.pstate.dp_group, "dp-grad")
        meta, _ = self._gather_meta(torch.stack([torch.stack([g.scale_inv.reshape(()), g.amax.reshape(())])
                                                    for g in self.grads]), async_op=False)
        offset = 0
        for j in range(self.n):
            for k in self.by_owner[j]:
                g, n = self.grads[k], self.grads[k].numel()
                if j != self.me:
                    self._flat(k).copy_(recv[offset: offset + n])
                    g.scale_inv.copy_(meta[j, k, 0])
                    g.amax = meta[j, k, 1].clone()
                offset += n
