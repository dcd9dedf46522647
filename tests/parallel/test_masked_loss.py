"""The masked token mean over the global batch (DESIGN §7 "Loss") is the same under DP2, TP2 and PP2 as in
one process: packed rows whose unmasked-token counts differ by micro-batch and by data-parallel rank, so
normalising per micro-batch or per rank would move the loss and gradients by tens of percent.

Tolerances (tests/parallel/tolerances.py): at ``off`` DP and TP differ from the single process only in FP32
summation order; PP adds its BF16 wire. At O2 the first loss is a forward on identical FP8 weights, but each
data-parallel rank scales its activations by the amax of its own half of the batch: powers of two apart,
so only values near the bottom of the FP8 range round differently (the O2 bound of tolerances.py).
"""

import pytest

from megatron_fp8.training import Trainer

from .assemble import assemble
from .compare import rel_err
from .harness import spawn
from .masked_workers import first_batch, masked_config, masked_worker
from .tolerances import tolerance

RUNS = [("DP2", "off"), ("TP2", "off"), ("PP2", "off"), ("DP2", "O2")]


@pytest.fixture(scope="module")
def results():
    return spawn(masked_worker, 2, RUNS)


@pytest.fixture(scope="module")
def reference():
    return {level: first_batch(Trainer(masked_config(level))) for level in ("off", "O2")}


@pytest.mark.parametrize("layout, level", RUNS)
def test_masked_loss_matches_single_process(results, reference, layout, level):
    ref = reference[level]
    pipelined = layout == "PP2"
    ranks = [r[(layout, level)] for r in results]
    for run in ranks:
        if run["last_stage"]:
            bound = tolerance(level, "loss", pipelined)
            assert abs(run["loss"] - ref["loss"]) / ref["loss"] <= bound, (run["loss"], ref["loss"])
    if level != "off":
        return
    full = assemble([(run["coords"][:2], run["grads"]) for run in ranks])
    bound = tolerance("off", "grads", pipelined)
    for name, (want, _, _) in ref["grads"].items():
        for got in full[name]:
            assert rel_err(got, want) <= bound, f"{layout} {name}: {rel_err(got, want):.2e} > {bound:.1e}"
