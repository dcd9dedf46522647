"""How far a parallel layout may sit from the single-process run, and why (normwise relative errors).

Three mechanisms, and nothing else, separate a correct layout from the single process:

1. FP32 summation order. TP splits the GEMM reductions and adds the partial sums in another order. For
   a K-term reduction the worst case is K * 2^-24 (K <= 256 here: 1.5e-5); typical is sqrt(K) * 2^-24
   (1e-6). ``FP32_ORDER`` takes the worst case.
2. Re-rounding. Two values that differ by a relative ``delta`` and are then rounded to a grid of relative
   spacing ``s`` land on different grid points with probability ~delta/s, each time by ~s: afterwards
   they differ normwise by ~sqrt(delta * s) (:func:`reround`). Grids: BF16 (pipeline wire, 2^-8), and
   for FP8 the coarsest one a value meets: E5M2 gradients at the first backward, which the delayed
   recipe casts with its initial scale 1, so gradients of ~1e-5 sit among subnormals (step 2^-16,
   relative spacing ~1).
3. The pipeline's BF16 wire (docs/design.md §3): activations forward and their gradients backward are rounded to
   BF16 at each stage boundary, every element by at most ``U_BF16`` = 2^-9.

A bug (a shard in the wrong place, a missing TP or tied-embedding reduction, a lost or reordered
micro-batch) moves the affected tensors by tens of percent or more; mutating any of those in the code
makes these tests fail with errors near 1.
"""

import math

FP32_ORDER = 1e-5
U_BF16 = 2.0 ** -9
SPACING_BF16, SPACING_FP8_FIRST_BACKWARD = 2.0 ** -8, 1.0
CURVE = 0.01  # the bound: loss within 1% at every one of 10 steps


def reround(delta: float, spacing: float) -> float:
    return math.sqrt(delta * spacing)


def tolerance(level: str, quantity: str, pipelined: bool, emulated_boundary: bool = False) -> float:
    """Bound for ``quantity`` (``logits``, ``loss``, ``grads``) of a layout at ``level`` (``off`` | ``O2``).

    ``emulated_boundary``: the reference rounds its hidden states and their gradients to BF16 exactly
    where the pipeline does, so only TP's FP32 order, re-rounded, separates them.
    Pipelined O2 against the plain single process: :func:`fp8_rerounding_bound`, built on this one.
    """
    if level == "off":
        if not pipelined:
            return FP32_ORDER  # TP: summation order only
        if emulated_boundary:
            return reround(FP32_ORDER, SPACING_BF16)  # a TP stage's order differences flip BF16 roundings
        # One rounding of the hidden states for logits and loss, two (activations forward, gradients
        # backward) for weight gradients; a factor 2 for amplification through a stage's layers.
        return 2 * U_BF16 if quantity in ("logits", "loss") else 4 * U_BF16
    if not pipelined or emulated_boundary:
        # FP32 order differences re-rounded by FP8 casts. Per-shard weight scales add nothing: scales
        # are powers of two, so a shard's FP8 weight equals the matching rows of the full one (bar
        # subnormals; test_init checks equality of the stored weights).
        return reround(FP32_ORDER, SPACING_FP8_FIRST_BACKWARD)
    raise ValueError("pipelined O2 against the plain single process: use fp8_rerounding_bound")


def fp8_rerounding_bound(o2_vs_off: float, quantity: str) -> float:
    """Pipelined O2 against the plain single-process O2 run.

    The BF16 boundary perturbs what the FP8 casts of the next stage (forward) and the previous one
    (backward) see, and every cast re-rounds it, so the two runs are two different FP8 renditions of
    the same computation in the same formats. Each sits at FP8 distance from the exact (FP32) values,
    and that distance is measured in the single process as ``o2_vs_off`` (O2 against ``off``, same
    model, same batch); by the triangle inequality the two renditions differ by at most twice that,
    plus what the boundary does without FP8 (the ``off`` bound).
    """
    return 2 * o2_vs_off + tolerance("off", quantity, pipelined=True)
