"""Whole-tensor ownership across data-parallel ranks (docs/design.md §3).

Each tensor belongs to exactly one rank, so its FP8 scale, its reduced gradient and (with the
distributed optimizer) its optimizer state live in one place. The greedy rule gives the next-largest
tensor to the least-loaded rank, which balances bytes to within one tensor.
"""

from ..layers.weights import param_info


def assign_owners(sizes: list[int], num_ranks: int) -> list[int]:
    """Owner rank of each tensor; deterministic (ties go to the lower index and the lower rank)."""
    load = [0] * num_ranks
    owners = [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda k: (-sizes[k], k)):
        rank = min(range(num_ranks), key=lambda r: (load[r], r))
        owners[i] = rank
        load[rank] += sizes[i]
    return owners


def assign_param_owners(params, num_ranks: int) -> dict[int, int]:
    """Owner of each parameter (keyed by ``id``). FP8-eligible weights and the other parameters are
    balanced separately, so each rank holds its share of FP8 state as well as of bytes overall."""
    owners = {}
    for eligible in (True, False):
        group = [p for p in params if param_info(p).fp8_eligible == eligible]
        owners.update(zip(map(id, group), assign_owners([p.numel() for p in group], num_ranks)))
    return owners
