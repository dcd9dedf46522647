"""--main-params-rounding stochastic (issue 18): the FP16/BF16 master of FP8 linears is stored with
stochastic rounding, so updates far below half an FP16 step survive in expectation; the flag reaches the
kernel for exactly those parameters, runs are deterministic for a seed, and levels without a narrow
master refuse it by name."""

import pytest
import torch

from megatron_fp8.arguments import parse_config
from megatron_fp8.fp8 import kernels
from megatron_fp8.fp8.kernels import AdamWHyper, AdamWTensors
from megatron_fp8.layers.weights import param_info
from megatron_fp8.training import Trainer

from ..helpers import PatternDataset, dequantized_gemms, run_steps, tiny_config


def _drift(seed: int | None, steps: int = 32, lr: float = 2e-6) -> tuple[float, float]:
    """A scaled FP16 master of values in [1, 1.9] under a constant gradient: Adam moves every element by
    lr per step (m / sqrt(v) = 1 after bias correction), 1/245 of half an FP16 step (2^-11 there).
    Returns (mean change, expected change)."""
    n = 1 << 14
    start = torch.linspace(1.0, 1.9, n)
    t = AdamWTensors(master=start.half(), grad=torch.full((n,), 1e-3), exp_avg=torch.zeros(n),
                     exp_avg_sq=torch.zeros(n), master_sinv=torch.ones(()))
    for step in range(1, steps + 1):
        t.master_sr_seed = None if seed is None else seed + step
        kernels.adamw_step([t], AdamWHyper(lr=lr, step=step))
    return float((t.master.float() * t.master_sinv - start.half().float()).mean()), -steps * lr


def test_stochastic_master_keeps_updates_below_half_a_step():
    nearest, expected = _drift(None)
    assert nearest == 0.0, "round to nearest should lose every one of these updates"
    stochastic, _ = _drift(seed=99)
    # each element's change is a sum of 32 roundings that go up with probability p = lr / 2^-10 ~ 0.002:
    # standard error of the mean over 16384 elements 2^-10 * sqrt(32 p) / 128 ~ 2e-6, 3% of the expected
    # 6.4e-5; float32's own rounding of master + lr (ulp 2^-23 near 1) biases each step by up to 3%
    assert abs(stochastic - expected) < 0.15 * abs(expected), (stochastic, expected)


def test_flag_reaches_exactly_the_narrow_masters(monkeypatch):
    trainer = Trainer(tiny_config("O2"))  # stochastic by default
    seen = {}

    def spy(tensors, hyper):
        for t in tensors:
            seen[t.master.data_ptr()] = t.master_sr_seed
        return step(tensors, hyper)

    step = kernels.adamw_step
    monkeypatch.setattr(kernels, "adamw_step", spy)
    dequantized_gemms(monkeypatch)
    run_steps(trainer, PatternDataset(), 1)
    for name, p in trainer.model.named_parameters():
        eligible = param_info(p).fp8_eligible
        assert p.dtype == (torch.float16 if eligible else torch.float32), name
        assert (seen[p.data_ptr()] is not None) == eligible, name


def test_runs_are_deterministic_and_differ_from_nearest(monkeypatch):
    dequantized_gemms(monkeypatch)

    def losses(rounding):
        config = tiny_config("O3", lr=1e-3, lr_warmup_iters=30)
        config.precision.main_params_rounding = rounding
        trainer = Trainer(config)
        out = run_steps(trainer, PatternDataset(max_step=1), 4)
        masters = [st.master.clone() for st in trainer.optimizer.state.values() if st.master is not None]
        return out, masters

    a, ma = losses("stochastic")
    b, mb = losses("stochastic")
    c, mc = losses("nearest")
    assert a == b and all(torch.equal(x, y) for x, y in zip(ma, mb))
    assert not all(torch.equal(x, y) for x, y in zip(ma, mc))


@pytest.mark.parametrize("argv,message", [
    (["--fp8-level", "off"], "--fp8-level off keeps them in float32"),
    (["--fp8-level", "gemm", "--bf16"], "--fp8-level gemm keeps them in float32"),
    (["--fp8-level", "O3", "--main-params-dtype", "fp32"], "--fp8-level O3 keeps them in float32"),
])
def test_levels_without_a_narrow_master_refuse_it(argv, message):
    with pytest.raises((ValueError, SystemExit)) as err:
        parse_config(argv + ["--main-params-rounding", "stochastic", "--mock-data"])
    if err.type is ValueError:
        assert message in str(err.value)


def test_default_is_stochastic_exactly_where_a_level_keeps_an_fp16_master():
    cases = {("O1",): "stochastic", ("O2",): "stochastic", ("O3",): "stochastic", ("O2", "--bf16"): "stochastic",
             ("O3", "--main-params-dtype", "fp32"): "nearest", ("gemm",): "nearest", ("off",): "nearest",
             ("off", "--bf16"): "nearest", ("O2", "--main-params-rounding", "nearest"): "nearest"}
    for (level, *flags), rounding in cases.items():
        config = parse_config(["--fp8-level", level, *flags, "--mock-data"])
        assert config.precision.policy.master_rounding == rounding, (level, flags)
