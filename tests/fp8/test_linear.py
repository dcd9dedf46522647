"""The FP8 linear against an FP32 linear, in every weight/gradient mode the precision levels use.

Tolerances: each FP8 operand carries a relative rounding error of at most 2^-4 (E4M3) or 2^-3 (E5M2),
so one product term is off by at most (1+u_a)(1+u_b)-1: 0.13 in forward (E4M3 x E4M3) and 0.20 in
backward (E5M2 x E4M3). For Gaussian data the errors are independent and the norm-wise relative error
of a whole GEMM sits near the RMS value (~0.04 forward, ~0.06 backward, measured), so the tests allow
0.065 forward and 0.10 backward: half the worst-case per-term bound, comfortably above the RMS.
"""

import pytest
import torch
import torch.nn.functional as F

from megatron_fp8.fp8 import cpu_gemm
from megatron_fp8.fp8 import quantizer as quantizer_mod
from megatron_fp8.fp8.formats import E4M3
from megatron_fp8.fp8.linear import Fp8Linear, Fp8LinearState, fp8_linear
from megatron_fp8.fp8.scaling import Fp8Recipe
from megatron_fp8.fp8.tensor import Fp8Tensor

FWD_TOL, BWD_TOL = 0.065, 0.10
RECIPES = ["delayed", "current", "blockwise"]


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def reference(x, w, b, g):
    x, w = x.detach().clone().requires_grad_(), w.detach().float().clone().requires_grad_()
    y = F.linear(x, w, b)
    y.backward(g)
    return y, x.grad, w.grad


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("fmt", ["hybrid", "e4m3"])
def test_forward_backward_against_fp32(recipe, fmt):
    torch.manual_seed(1)
    layer = Fp8Linear(256, 192, recipe=Fp8Recipe(format=fmt, recipe=recipe))
    x = torch.randn(3, 40, 256, requires_grad=True)
    for _ in range(2):  # delayed scaling needs one cast to learn its amax
        y = layer(x)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref, dx_ref, dw_ref = reference(x, layer.weight, layer.bias.detach(), g)
    assert y.shape == y_ref.shape and y.dtype == torch.float32
    assert rel(y, y_ref) < FWD_TOL
    assert rel(x.grad, dx_ref) < BWD_TOL
    assert rel(layer.weight.grad, dw_ref) < BWD_TOL
    assert torch.allclose(layer.bias.grad, g.sum((0, 1)), rtol=1e-5, atol=1e-4)


def test_forward_is_exact_gemm_of_quantized_operands():
    """Beyond the tolerance above: the output is exactly the FP32 product of the FP8 operands."""
    state = Fp8LinearState(Fp8Recipe(recipe="current"))
    x, w = torch.randn(32, 64), torch.randn(48, 64) * 0.1
    y = fp8_linear(x, w, None, state)
    xq, wq = Fp8Tensor.quantize_current(x, E4M3), Fp8Tensor.quantize_current(w, E4M3)
    assert rel(y, xq.dequantize() @ wq.dequantize().t()) < 1e-6


def test_bf16_compute_dtype():
    layer = Fp8Linear(128, 64, recipe=Fp8Recipe(recipe="current"), dtype=torch.bfloat16)
    x = torch.randn(16, 128, dtype=torch.bfloat16, requires_grad=True)
    y = layer(x)
    y.float().sum().backward()
    assert y.dtype == x.grad.dtype == layer.weight.grad.dtype == torch.bfloat16


def make_scaled_weight(w, storage_dtype):
    """The weight as the precision levels store it: FP16 + scale (O1/O2) or FP8 + scale (O3); returns
    the parameter, its scale_inv and its real value."""
    q = Fp8Tensor.quantize_current(w, storage_dtype)
    param = torch.nn.Parameter(q.data, requires_grad=True)
    param.main_grad = Fp8Tensor.zeros(w.shape, E4M3)
    return param, q.scale_inv, q.dequantize()


@pytest.mark.parametrize("storage", [torch.float16, E4M3])
@pytest.mark.parametrize("recipe", RECIPES)
def test_scaled_weight_with_fp8_grad_accumulation(storage, recipe):
    """O1-O3: the weight lives in FP16/FP8 with a scale; wgrad accumulates in FP8 across micro-batches."""
    torch.manual_seed(2)
    weight, sinv, w_real = make_scaled_weight(torch.randn(96, 256) * 0.05, storage)
    state = Fp8LinearState(Fp8Recipe(recipe=recipe))
    micro_batches = [torch.randn(64, 256) for _ in range(4)]
    grads = [torch.randn(64, 96) for _ in range(4)]
    for x, g in zip(micro_batches, grads):
        fp8_linear(x.requires_grad_(), weight, None, state, sinv).backward(g)
    assert weight.grad is None, "the gradient must go to main_grad only"
    expected = sum(g.t() @ x.detach() for x, g in zip(micro_batches, grads))
    # four FP8 wgrad GEMMs plus four requantizations of the running sum (2^-4 each, RMS ~0.02)
    assert rel(weight.main_grad.dequantize(), expected) < BWD_TOL
    assert weight.main_grad.data.dtype == E4M3 and torch.isfinite(weight.main_grad.amax)
    assert rel(fp8_linear(micro_batches[0], weight, None, state, sinv), micro_batches[0] @ w_real.t()) < FWD_TOL


def test_fp32_main_grad_fused_accumulation():
    layer = Fp8Linear(64, 32, bias=False, recipe=Fp8Recipe(recipe="current"))
    layer.weight.main_grad = torch.zeros(32, 64)
    x, g = torch.randn(8, 64), torch.randn(8, 32)
    layer(x).backward(g)
    layer(x).backward(g)
    assert layer.weight.grad is None
    assert rel(layer.weight.main_grad, 2 * g.t() @ x) < BWD_TOL


def test_scaled_weight_without_main_grad_is_an_error():
    weight, sinv, _ = make_scaled_weight(torch.randn(16, 32), E4M3)
    del weight.main_grad
    y = fp8_linear(torch.randn(4, 32), weight, None, Fp8LinearState(Fp8Recipe(recipe="current")), sinv)
    with pytest.raises(RuntimeError, match="main_grad"):
        y.sum().backward()


def test_weight_cast_once_per_step(monkeypatch):
    """Micro-batches reuse the FP8 weight; an in-place optimizer update invalidates it."""
    calls = []
    real = quantizer_mod.weight_operands
    monkeypatch.setattr("megatron_fp8.fp8.linear.weight_operands",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    layer = Fp8Linear(32, 16, recipe=Fp8Recipe(recipe="current"))
    for _ in range(3):
        layer(torch.randn(4, 32)).sum().backward()
    assert len(calls) == 1
    with torch.no_grad():
        layer.weight.add_(0.01)
    layer(torch.randn(4, 32))
    assert len(calls) == 2


@pytest.mark.parametrize("path", ["decode", "scaled_mm"])
def test_only_fp8_activations_saved_for_backward(monkeypatch, path):
    """x in FP8 is all that is kept: as cast where the GEMM reads transposed operands as stored (the CPU's
    decoded GEMMs), else its FP8 transpose (cuBLASLt's layout, emulated by ``_scaled_mm`` on CPU)."""
    monkeypatch.setenv(cpu_gemm.ENV, path)
    layer = Fp8Linear(128, 96, recipe=Fp8Recipe(recipe="delayed"))
    x = torch.randn(64, 128, requires_grad=True)
    y = layer(x)
    saved = y.grad_fn.saved_tensors
    assert [t.dtype for t in saved] == [E4M3, torch.float32]  # payload and its scale_inv, nothing else
    assert saved[0].shape == ((64, 128) if path == "decode" else (128, 64))
    w, w_t = layer.fp8_state._weight  # the weight cache: one FP8 copy, or the copy and its transpose
    assert w.shape == (96, 128) and (w_t is None if path == "decode" else w_t.shape == (128, 96))
    g = torch.randn(64, 96)
    y.backward(g)
    dx, dw = x.grad.clone(), layer.weight.grad.clone()
    assert rel(dx, g @ layer.weight.detach()) < BWD_TOL and rel(dw, g.t() @ x.detach()) < BWD_TOL


def test_transpose_free_backward_matches_transposed_one(monkeypatch):
    """The CPU path (no FP8 transposes, GEMM flags instead) gives the same gradients as the transposed
    operands do through ``_scaled_mm``, up to float32 summation order."""
    grads = {}
    for path in ("decode", "scaled_mm"):
        monkeypatch.setenv(cpu_gemm.ENV, path)
        torch.manual_seed(0)
        layer = Fp8Linear(96, 80, recipe=Fp8Recipe(recipe="current"))
        x = torch.randn(40, 96, requires_grad=True)
        y = layer(x)
        y.backward(torch.randn(40, 80) * 1e-3)
        grads[path] = (y.detach(), x.grad, layer.weight.grad)
    # Same FP8 operands and exact products; K <= 96 terms, so two summation orders differ by at most
    # 2 K 2^-24 ~ 1.1e-5 of sum |terms|, which with random signs is ~sqrt(K) ~ 10x a typical result.
    for got, want in zip(grads["decode"], grads["scaled_mm"]):
        assert ((got - want).abs() <= 2e-4 * want.abs().max()).all()


def test_delayed_scaling_tracks_input_amax():
    layer = Fp8Linear(64, 64, recipe=Fp8Recipe(recipe="delayed", amax_history_len=4))
    for scale in (1.0, 1000.0):
        layer(torch.randn(8, 64) * scale)
    meta = layer.fp8_state.input_quantizer.meta
    assert meta.amax_history[0].item() > 1000.0
    assert meta.scale.item() * meta.amax_history.max().item() <= 448.0
