"""Every precision level learns, tracks the FP32 reference, and stores exactly the dtypes of docs/design.md §1."""

import pytest
import torch

from megatron_fp8.fp8.formats import E4M3
from megatron_fp8.fp8.tensor import Fp8Tensor
from megatron_fp8.layers.weights import param_info
from megatron_fp8.training import Trainer

from ..helpers import run_steps, tiny_config

LEVELS = ["off", "gemm", "O1", "O2", "O3"]


@pytest.fixture(scope="module")
def curves():
    from ..helpers import PatternDataset

    data = PatternDataset()
    return {level: run_steps(Trainer(tiny_config(level)), data, 50) for level in LEVELS}


@pytest.mark.parametrize("level", LEVELS)
def test_loss_falls(curves, level):
    losses = curves[level]
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


@pytest.mark.parametrize("level", ["gemm", "O1", "O2", "O3"])
def test_fp8_levels_track_off_within_2_percent(curves, level):
    """Same initialisation and data: at every logged step (every 5th) the FP8 loss is within 2% of off."""
    for step in range(4, 50, 5):
        off, fp8 = curves["off"][step], curves[level][step]
        assert abs(fp8 - off) / off < 0.02, f"step {step + 1}: {level} {fp8:.4f} vs off {off:.4f}"


EXPECTED = {  # (weight, grad, master, exp_avg, exp_avg_sq, bytes per FP8-eligible parameter)
    "off": (torch.float32, torch.float32, None, torch.float32, torch.float32, 16),
    "gemm": (torch.float32, torch.float32, None, torch.float32, torch.float32, 16),
    "O1": (torch.float16, E4M3, None, torch.float32, torch.float32, 11),
    "O2": (torch.float16, E4M3, None, E4M3, torch.float16, 6),
    "O3": (E4M3, E4M3, torch.float16, E4M3, torch.float16, 7),  # 2 + 5/d with d = 1
}


@pytest.mark.parametrize("level", LEVELS)
def test_state_dtypes_and_bytes_per_parameter(level):
    trainer = Trainer(tiny_config(level))
    eligible = [(n, p) for n, p in trainer.model.named_parameters() if param_info(p).fp8_eligible]
    assert len(eligible) == 8  # qkv, proj, fc1, fc2 in each of two layers
    weight, grad, master, exp_avg, exp_avg_sq, nbytes = EXPECTED[level]
    total_bytes = total_params = 0
    for name, p in eligible:
        st = trainer.optimizer.state[name]
        g = p.main_grad.data if isinstance(p.main_grad, Fp8Tensor) else p.main_grad
        assert (p.dtype, g.dtype, st.exp_avg.dtype, st.exp_avg_sq.dtype) == (weight, grad, exp_avg, exp_avg_sq)
        assert (st.master.dtype if st.master is not None else None) == master
        tensors = [p, g, st.exp_avg, st.exp_avg_sq] + ([st.master] if st.master is not None else [])
        total_bytes += sum(t.numel() * t.element_size() for t in tensors)
        total_params += p.numel()
    assert total_bytes / total_params == nbytes
    assert trainer.policy.eligible_bytes_per_param() == nbytes


def test_bf16_compute_keeps_fp32_master_and_grads():
    cfg = tiny_config("off")
    cfg.precision.bf16 = True
    trainer = Trainer(cfg)
    p = trainer.model.decoder.layers[0].mlp.linear_fc1.weight
    assert p.dtype == torch.bfloat16 and p.main_grad.dtype == torch.float32
    assert trainer.optimizer.state["decoder.layers.0.mlp.linear_fc1.weight"].master.dtype == torch.float32
    assert trainer.policy.eligible_bytes_per_param() == 18
