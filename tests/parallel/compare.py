"""Comparisons of a layout's per-rank results with a single-process reference (normwise relative)."""

import torch

from .assemble import assemble
from .tolerances import fp8_rerounding_bound


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    assert got.shape == want.shape, f"shape {tuple(got.shape)} vs {tuple(want.shape)}"
    return float((got.float() - want.float()).norm() / want.float().norm().clamp(min=1e-30))


def last_stage(results: list[dict], key: str) -> list[dict]:
    return [r[key] for r in results if r[key]["last_stage"]]


def assembled_grads(results: list[dict], key: str) -> dict:
    return assemble([(r[key]["coords"][:2], r[key]["grads"]) for r in results])


def check_logits(results, key, ref, tol: float):
    for run in last_stage(results, key):
        err = rel_err(run["logits"], ref["logits"])
        assert err <= tol, f"logits differ by {err:.2e} (tolerance {tol:.1e})"


def check_losses(results, key, ref, tol: float):
    for run in last_stage(results, key):
        got, want = torch.tensor(run["losses"]), torch.tensor(ref["losses"])
        assert len(got) == len(want) and rel_err(got, want) <= tol, f"first losses {got} vs {want} (tol {tol:.1e})"


def check_grads(results, key, ref, tol):
    """``tol``: one bound for every parameter, or a function of the parameter's name."""
    bound = tol if callable(tol) else (lambda name: tol)
    full = assembled_grads(results, key)
    want = {name: g for name, (g, _, _) in ref["grads"].items()}
    assert set(full) == set(want), f"parameters differ: {sorted(set(full) ^ set(want))}"
    beyond = sorted(((rel_err(copy, want[name]) / bound(name), name) for name, copies in full.items()
                     for copy in copies), reverse=True)
    assert beyond[0][0] <= 1, "gradients beyond tolerance: " + ", ".join(
        f"{n} {r:.1f}x its bound {bound(n):.1e}" for r, n in beyond[:5] if r > 1)


def pp_o2_bounds(runs) -> dict:
    """Pipelined O2 vs plain single process: twice the single process's own FP8 distance (O2 vs off)
    plus the boundary's ``off`` bound, per quantity and per parameter (tolerances.fp8_rerounding_bound)."""
    o2, off = runs.reference("gpt", "O2"), runs.reference("gpt", "off")
    loss_gap = rel_err(torch.tensor(o2["losses"]), torch.tensor(off["losses"]))
    grad_gap = {name: rel_err(g, off["grads"][name][0]) for name, (g, _, _) in o2["grads"].items()}
    return {"logits": fp8_rerounding_bound(rel_err(o2["logits"], off["logits"]), "logits"),
            "loss": fp8_rerounding_bound(loss_gap, "loss"),
            "grads": lambda name: fp8_rerounding_bound(grad_gap[name], "grads")}
