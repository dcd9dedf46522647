"""Autograd-aware tensor- and sequence-parallel communication (Megatron's mappings), in compute dtype.

Each function's backward is the adjoint of its forward: a copy becomes an all-reduce, an all-gather a
reduce-scatter, and so on. With a TP group of one rank they are all identities. The FP8 form of the
sequence-parallel all-gather lives in :mod:`.fp8_comm`.
"""

import torch

from . import comm


class _CopyToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, g):
        return comm.all_reduce(g.contiguous(), ctx.group, "tp"), None


class _ReduceFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        return comm.all_reduce(x.contiguous(), group, "tp")

    @staticmethod
    def backward(ctx, g):
        return g, None


class _ScatterToSP(torch.autograd.Function):
    """Keep this rank's slice of the sequence (dim 0); backward all-gathers."""

    @staticmethod
    def forward(ctx, x, group, rank, size):
        ctx.group = group
        return x.chunk(size, dim=0)[rank].clone()  # not a view: saving it must not keep the full tensor

    @staticmethod
    def backward(ctx, g):
        return comm.all_gather(g, ctx.group, "sp"), None, None, None


class _GatherFromSP(torch.autograd.Function):
    """All-gather the sequence; backward reduce-scatters (the consumer is tensor-parallel)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return comm.all_gather(x, group, "sp")

    @staticmethod
    def backward(ctx, g):
        return comm.reduce_scatter(g, ctx.group, "sp"), None


class _ReduceScatterToSP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return comm.reduce_scatter(x, group, "sp")

    @staticmethod
    def backward(ctx, g):
        return comm.all_gather(g, ctx.group, "sp"), None


def copy_to_tp(x, pstate):
    return _CopyToTP.apply(x, pstate.tp_group) if pstate.tp_size > 1 else x


def reduce_from_tp(x, pstate):
    return _ReduceFromTP.apply(x, pstate.tp_group) if pstate.tp_size > 1 else x


def scatter_to_sp(x, pstate):
    return _ScatterToSP.apply(x, pstate.tp_group, pstate.tp_rank, pstate.tp_size) if pstate.tp_size > 1 else x


def gather_from_sp(x, pstate):
    return _GatherFromSP.apply(x, pstate.tp_group) if pstate.tp_size > 1 else x


def reduce_scatter_to_sp(x, pstate):
    return _ReduceScatterToSP.apply(x, pstate.tp_group) if pstate.tp_size > 1 else x
