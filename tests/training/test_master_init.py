"""Issue 18: every separate master starts from the full-precision value (the one `off` starts from), not
from its rounding to the parameter's storage, and no copy of it stays behind in the parameter's record."""

import pytest
import torch

from megatron_fp8.fp8.tensor import Fp8Tensor
from megatron_fp8.layers.weights import param_info, real_value, stored_copy
from megatron_fp8.model import GPTModel
from megatron_fp8.optim.adamw import AdamWSettings, Fp8AdamW
from megatron_fp8.optim.distributed import DistributedOptimizer
from megatron_fp8.optim.ownership import assign_param_owners
from megatron_fp8.parallel.state import ParallelState
from megatron_fp8.training import Trainer

from ..helpers import PatternDataset, dequantized_gemms, run_steps, tiny_config


def fp32_init() -> dict:
    """The initial values every level starts from: `off` stores them as they are (FP32)."""
    return {n: p.detach().clone() for n, p in Trainer(tiny_config("off")).model.named_parameters()}


def test_o3_master_equals_the_fp32_init_quantized_to_fp16():
    init = fp32_init()
    trainer = Trainer(tiny_config("O3"))
    eligible = [(n, p) for n, p in trainer.model.named_parameters() if param_info(p).fp8_eligible]
    assert eligible
    for name, p in eligible:
        st = trainer.optimizer.state[name]
        expected = Fp8Tensor.quantize_current(init[name], torch.float16)  # FP16 with current scaling
        assert torch.equal(st.master, expected.data) and torch.equal(st.master_sinv, expected.scale_inv), name
        # the FP8 weight is derived from the same values, and is what the old master was built from
        assert torch.equal(p.detach(), Fp8Tensor.quantize_current(init[name], p.dtype).data), name
        from_weight = Fp8Tensor.quantize_current(real_value(p), torch.float16)
        assert not torch.equal(st.master, from_weight.data), f"{name}: master sits on the FP8 grid"
    assert all(param_info(p).initial_master is None for p in trainer.params), "the record kept a copy"


def test_bf16_fp32_master_equals_the_fp32_init():
    """`--bf16` at `off`: the FP32 master holds the initial values, not their BF16 rounding."""
    init = fp32_init()
    config = tiny_config("off")
    config.precision.bf16 = True
    trainer = Trainer(config)
    for name, p in trainer.model.named_parameters():
        master = trainer.optimizer.state[name].master
        assert p.dtype == torch.bfloat16 and master.dtype == torch.float32
        assert torch.equal(master, init[name]), name
    assert any(not torch.equal(init[n], p.float()) for n, p in trainer.model.named_parameters())


def test_distributed_optimizer_keeps_masters_only_for_owned_tensors():
    """Each data-parallel rank's share of the masters starts from the FP32 init; the initial values of the
    tensors other ranks own are dropped as soon as the optimizer is built (no resident copy)."""
    init = fp32_init()
    config = tiny_config("O3")
    named = list(GPTModel(config, ParallelState()).named_parameters())  # DP rank 1's model (built locally)
    owners = assign_param_owners([p for _, p in named], 2)
    opt = DistributedOptimizer(named, config.precision.policy, AdamWSettings(), owners,
                               ParallelState(dp_size=2, dp_rank=1))
    owned = {n for n, p in named if owners[id(p)] == 1}
    assert set(opt.inner.state) == owned and len(owned) < len(named)
    masters = [n for n in owned if opt.inner.state[n].master is not None]
    assert masters
    for name in masters:
        expected = Fp8Tensor.quantize_current(init[name], torch.float16)
        assert torch.equal(opt.inner.state[name].master, expected.data), name
    assert all(param_info(p).initial_master is None for _, p in named)


def test_a_second_optimizer_over_the_same_model_is_refused():
    trainer = Trainer(tiny_config("O3"))
    with pytest.raises(RuntimeError, match="initial value for its master"):
        Fp8AdamW(list(trainer.model.named_parameters()), trainer.policy, AdamWSettings())


def _warmup_losses(level: str, fp8_rounded_master: bool = False) -> list[float]:
    """Training losses of the first 10 steps of the issue's recipe (lr 1e-3, 30 warm-up iterations: the
    smallest updates of a run) on counting sequences, which even this tiny model starts learning at once."""
    trainer = Trainer(tiny_config(level, lr=1e-3, lr_warmup_iters=30, global_batch_size=4, micro_batch_size=4))
    if fp8_rounded_master:  # the master as it was built before the fix: from the FP8-rounded weight
        for name, p in trainer.model.named_parameters():
            st = trainer.optimizer.state[name]
            if st.master is not None:
                st.master, st.master_sinv = stored_copy(real_value(p), st.master.dtype)
    return run_steps(trainer, PatternDataset(max_step=1), 10)


def _largest_gap(losses: list[float], reference: list[float]) -> float:
    return max(abs(x - r) / r for x, r in zip(losses, reference))


def test_o3_tracks_off_over_the_first_warmup_steps(monkeypatch):
    """The issue's bound is 2% at step 10 on a 2-layer hidden-512 model, where the old master lagged 15%.
    On this tiny model the loss falls only a few percent in 10 steps, so 2% could not fail: measured, the
    old master lags `off` by up to ~0.4% and the fixed one by <= 0.05%. The bound is 0.1% at every step,
    and the old master (built here on purpose) must break it, so the check is shown to discriminate."""
    dequantized_gemms(monkeypatch)
    off = _warmup_losses("off")
    o3 = _warmup_losses("O3")
    assert _largest_gap(o3, off) < 1e-3, [f"{100 * (x - r) / r:+.3f}%" for x, r in zip(o3, off)]
    assert off[-1] < 0.98 * off[0], "the tiny model does not learn in 10 steps: the comparison shows nothing"
    assert _largest_gap(_warmup_losses("O3", fp8_rounded_master=True), off) > 1e-3


def test_o3_converted_from_off_tracks_off_over_the_warmup(tmp_path, monkeypatch):
    """The same after a level conversion: an `off` checkpoint taken at step 1 of the warm-up, converted to
    O3 (tools/convert_checkpoint.py), continues within the bound above of `off` continuing, and an O3
    master rebuilt from the converted FP8 weight (the defect) does not."""
    from ..helpers import load_script

    dequantized_gemms(monkeypatch)
    convert = load_script("tools/convert_checkpoint.py")
    config = dict(lr=1e-3, lr_warmup_iters=30, global_batch_size=4, micro_batch_size=4)
    data = PatternDataset(max_step=1)
    off = Trainer(tiny_config("off", **config))
    run_steps(off, data, 1)
    off.save(str(tmp_path / "off"))
    reference = run_steps(off, data, 9)
    convert.main(["--load", str(tmp_path / "off"), "--save", str(tmp_path / "o3"), "--target-fp8-level", "O3"])

    def o3_losses(fp8_rounded_master: bool) -> list[float]:
        o3 = Trainer(tiny_config("O3", **config))
        assert o3.load(str(tmp_path / "o3")) and o3.progress.iteration == 1
        if fp8_rounded_master:
            for name, p in o3.model.named_parameters():
                st = o3.optimizer.state[name]
                if st.master is not None:
                    st.master, st.master_sinv = stored_copy(real_value(p), st.master.dtype)
        return run_steps(o3, data, 9)

    losses = o3_losses(False)
    assert _largest_gap(losses, reference) < 1e-3, [f"{100 * (x - r) / r:+.3f}%" for x, r in zip(losses, reference)]
    assert _largest_gap(o3_losses(True), reference) > 1e-3
