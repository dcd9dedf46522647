"""Training under cuBLASLt's GEMM rules, on CPU: a model whose GEMM dimensions are not multiples of 16
trains with every ``_scaled_mm`` call legal for cuBLASLt (padded, checked by a spy), no fallback, and
the same losses as without the rules.

Tolerance: padding adds exact zeros, so only float32 summation order differs between the two runs; an
activation that lands within that rounding of an FP8 rounding boundary can round the other way (one FP8
ulp on one element), which moves the loss by far less than 1e-3 relative over two steps.
"""

import pytest
import torch

from megatron_fp8.fp8 import gemm, gemm_rules
from megatron_fp8.training import Trainer

from ..fp8.test_gemm_rules import legal_under_cublaslt
from ..helpers import ODD_SEQ, PatternDataset, odd_shapes_config, run_steps


@pytest.mark.parametrize("level,recipe", [("O2", "delayed"), ("gemm", "blockwise")])
def test_odd_shapes_train_identically_under_cublaslt_rules(monkeypatch, level, recipe):
    data = PatternDataset(seq=ODD_SEQ)
    plain = run_steps(Trainer(odd_shapes_config(level, recipe)), data, 2)
    shapes = []

    def spy(a, b, **kw):
        shapes.append((tuple(a.shape), tuple(b.shape)))
        return legal_under_cublaslt(a, b, **kw)

    gemm.FALLBACKS.reset()
    monkeypatch.setattr(gemm_rules, "FORCED", gemm_rules.CUBLASLT)
    monkeypatch.setattr(torch, "_scaled_mm", spy)
    ruled = run_steps(Trainer(odd_shapes_config(level, recipe)), data, 2)
    assert gemm.FALLBACKS.total() == 0
    assert {k for (_, k), _ in shapes} >= {32, 48}, "K = 24 tokens and K = hidden 40 should have been padded"
    for step, (p, r) in enumerate(zip(plain, ruled)):
        assert abs(p - r) <= 1e-3 * abs(p), f"step {step + 1}: {r} under cuBLASLt rules vs {p}"
