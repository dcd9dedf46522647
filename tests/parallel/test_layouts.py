"""TP2, TP2+SP, PP2 and TP2xPP2(+SP) against the single-process run of the same model and seed, at
``off`` and ``O2``: logits, first losses and every finalized gradient after the first forward/backward,
then the loss curve over 10 steps. Tolerances and their reasons: tolerances.py."""

import pytest

from .compare import check_grads, check_logits, check_losses, last_stage, pp_o2_bounds
from .conftest import LAYOUTS
from .tolerances import CURVE, fp8_rerounding_bound, tolerance

LEVELS = ["off", "O2"]
PIPELINED = [name for name, (_, pp, _, _) in LAYOUTS.items() if pp > 1]


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_first_forward_and_backward_match_single_process(runs, layout, level):
    results, ref = runs.layout(layout), runs.reference("gpt", level)
    pipelined = layout in PIPELINED
    if pipelined and level == "O2":
        tol = pp_o2_bounds(runs)
    else:
        tol = {q: tolerance(level, q, pipelined) for q in ("logits", "loss", "grads")}
    check_logits(results, level, ref, tol["logits"])
    check_losses(results, level, ref, tol["loss"])
    check_grads(results, level, ref, tol["grads"])


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_first_step_grad_norm(runs, layout, level):
    """The clipping norm counts every parameter once: TP replicas and the tied embedding's second copy
    are left out, and the sum is reduced over TP and PP, so every rank holds the single-process norm."""
    results, ref = runs.layout(layout), runs.reference("gpt", level)
    norms = {r[level]["grad_norms"][0] for r in results}
    assert len(norms) == 1, f"ranks disagree on the norm: {norms}"
    if layout in PIPELINED and level == "O2":
        off = runs.reference("gpt", "off")["grad_norms"][0]
        tol = fp8_rerounding_bound(abs(ref["grad_norms"][0] - off) / off, "grads")
    else:
        tol = tolerance(level, "grads", layout in PIPELINED)
    got, want = norms.pop(), ref["grad_norms"][0]
    assert abs(got - want) <= tol * want, f"grad norm {got:.6f} vs single process {want:.6f}"


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("layout", PIPELINED)
def test_pipeline_matches_single_process_with_bf16_boundary(runs, layout, level):
    """The tight check of the pipeline: the reference rounds to BF16 exactly where the pipeline's wire
    does (hidden states forward, their gradients backward), so only TP's FP32 order separates them."""
    results, ref = runs.layout(layout), runs.reference("gpt", level, pp_boundaries=2)
    for quantity, check in (("logits", check_logits), ("loss", check_losses), ("grads", check_grads)):
        check(results, level, ref, tolerance(level, quantity, True, emulated_boundary=True))


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_loss_curve_within_one_percent(runs, layout, level):
    ref = runs.reference("gpt", level)["curve"]
    for run in last_stage(runs.layout(layout), level):
        assert len(run["curve"]) == len(ref) == 10
        for step, (got, want) in enumerate(zip(run["curve"], ref), 1):
            assert abs(got - want) <= CURVE * want, f"step {step}: {got:.5f} vs single process {want:.5f}"


@pytest.mark.parametrize("layout,key", [("TP2+SP", "llama-off"), ("TP2+SP", "llama-O2"), ("TP2xPP2+SP", "llama-O2"),
                                        ("TP2+SP", "gqa-off"), ("TP2+SP", "gqa-O2"), ("TP2xPP2+SP", "gqa-O3")])
def test_llama_variant_matches(runs, layout, key):
    """RMSNorm, RoPE, untied head and SwiGLU, whose fc1 weight and bias are split block by block; ``gqa``
    adds grouped-query attention (whole query groups per TP rank), --kv-channels, the QKV-only bias,
    partial Llama-3.1-scaled RoPE and zero-centred norms."""
    variant, level = key.split("-")
    _, pp, _, _ = LAYOUTS[layout]
    results, ref = runs.layout(layout), runs.reference(variant, level, pp_boundaries=pp)
    for quantity, check in (("logits", check_logits), ("loss", check_losses), ("grads", check_grads)):
        check(results, key, ref, tolerance(level, quantity, pp > 1, emulated_boundary=pp > 1))


@pytest.mark.parametrize("level", ["O2", "O3"])
def test_first_last_layers_bf16_match(runs, level):
    """--first-last-layers-bf16 under TP2xPP2+SP: each stage keeps the layers whose global number is first or
    last out of FP8 (a stage-local numbering would keep another layer, and its gradients would move by FP8's
    error, far beyond the bound)."""
    results, ref = runs.layout("TP2xPP2+SP"), runs.reference("first-last", level, pp_boundaries=2)
    for quantity, check in (("logits", check_logits), ("loss", check_losses), ("grads", check_grads)):
        check(results, f"first-last-{level}", ref, tolerance(level, quantity, True, emulated_boundary=True))


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("layout,key,variant,stages", [
    pytest.param("PP2", "many-micro", "many-micro", 2, id="2-stages"),
    pytest.param("TP2xPP2+SP", "pp4", "deep-many-micro", 4, id="4-stages")])
def test_1f1b_with_more_micro_batches_than_stages(runs, layout, key, variant, stages, level):
    """8 micro-batches through 2 or 4 stages (warm-up, steady 1F1B, cool-down; with 4 stages the middle
    ones receive and send both ways) against no pipelining: every micro-batch's loss, the logits, and
    gradients accumulated over all eight."""
    results, ref = runs.layout(layout), runs.reference(variant, level, pp_boundaries=stages)
    assert len(ref["losses"]) == 8
    for quantity, check in (("logits", check_logits), ("loss", check_losses), ("grads", check_grads)):
        check(results, f"{key}-{level}", ref, tolerance(level, quantity, True, emulated_boundary=True))
