"""Resume across layouts and precision levels through tools/convert_checkpoint.py (gloo, tiny models).

Same layout: bit-identical continuation (everything that determines the next step is in the
checkpoint). Another layout or level: the loss continues within 1% of the uninterrupted run, the
issue's bound; the only differences are requantization with fresh scales and FP8 vs FP32 arithmetic.
"""

import os
import sys

import pytest
import torch

from megatron_fp8.fp8.tensor import Fp8Tensor
from megatron_fp8.layers.weights import param_info
from megatron_fp8.training import Trainer

from ..helpers import PatternDataset, dequantized_gemms, run_steps, tiny_config
from ..parallel.harness import spawn
from .ckpt_workers import load_and_train, train_save_continue

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tools"))
import convert_checkpoint  # noqa: E402

STEPS = 5


def close(losses, ref, what):
    for step, (a, b) in enumerate(zip(losses, ref)):
        assert abs(a - b) / b < 0.01, f"{what}: step {step + 1} loss {a:.5f} vs uninterrupted {b:.5f}"


def convert(src, dst, tp, pp, level=None, dp=1, distopt=False):
    argv = ["--load", str(src), "--save", str(dst), "--target-tensor-parallel-size", str(tp),
            "--target-pipeline-parallel-size", str(pp), "--target-data-parallel-size", str(dp)]
    argv += ["--target-fp8-level", level] if level else []
    argv += ["--target-use-distributed-optimizer"] if distopt else []
    convert_checkpoint.main(argv)


def test_tp2_pp2_o3_to_other_layouts_and_levels(tmp_path):
    source = tmp_path / "tp2pp2"
    results = spawn(train_save_continue, 4, "O3", 2, 2, False, str(source), STEPS, STEPS)
    first, continued = results[-1]  # the last rank holds the loss
    # same layout: bit-identical continuation
    resumed = spawn(load_and_train, 4, "O3", 2, 2, False, str(source), STEPS)
    assert resumed[-1] == (STEPS, continued)
    # TP1 x PP1 x DP2 with the distributed optimizer at O3
    convert(source, tmp_path / "dp2", 1, 1, dp=2, distopt=True)
    iteration, losses = spawn(load_and_train, 2, "O3", 1, 1, True, str(tmp_path / "dp2"), STEPS)[-1]
    assert iteration == STEPS
    close(losses, continued, "TP1xDP2 O3")
    # one process at level off
    convert(source, tmp_path / "off", 1, 1, level="off")
    trainer = Trainer(tiny_config("off"))
    assert trainer.load(str(tmp_path / "off")) and trainer.progress.consumed_samples == STEPS * 8
    close(run_steps(trainer, PatternDataset(), STEPS), continued, "TP1 off")


def test_single_process_off_to_tp2_pp2_o3(tmp_path):
    trainer = Trainer(tiny_config("off"))
    data = PatternDataset()
    run_steps(trainer, data, STEPS)
    trainer.save(str(tmp_path / "off"))
    continued = run_steps(trainer, data, STEPS)
    convert(tmp_path / "off", tmp_path / "tp2pp2", 2, 2, level="O3")
    iteration, losses = spawn(load_and_train, 4, "O3", 2, 2, False, str(tmp_path / "tp2pp2"), STEPS)[-1]
    assert iteration == STEPS
    close(losses, continued, "TP2xPP2 O3 from off")


def test_off_to_o3_seeds_the_master_from_the_fp32_parameters(tmp_path, monkeypatch):
    """Issue 18: the converted O3 master holds the `off` FP32 values (quantized to FP16 with current
    scaling), not the FP8-rounded weight, and the O3 run continues where `off` left off."""
    dequantized_gemms(monkeypatch)  # O3 steps on CPU _scaled_mm would take most of a minute
    trainer = Trainer(tiny_config("off"))
    data = PatternDataset()
    run_steps(trainer, data, 1)
    trainer.save(str(tmp_path / "off"))
    values = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    continued = run_steps(trainer, data, 3)
    convert(tmp_path / "off", tmp_path / "o3", 1, 1, level="O3")
    o3 = Trainer(tiny_config("O3"))
    assert o3.load(str(tmp_path / "o3"))
    eligible = [(n, p) for n, p in o3.model.named_parameters() if param_info(p).fp8_eligible]
    assert eligible
    for name, p in eligible:
        st, expected = o3.optimizer.state[name], Fp8Tensor.quantize_current(values[name], torch.float16)
        assert torch.equal(st.master, expected.data) and torch.equal(st.master_sinv, expected.scale_inv), name
        assert torch.equal(p.detach(), Fp8Tensor.quantize_current(values[name], p.dtype).data), name
    close(run_steps(o3, data, 3), continued, "O3 converted from off")


def test_converter_rejects_impossible_layout(tmp_path):
    trainer = Trainer(tiny_config("O2"))
    trainer.save(str(tmp_path / "a"))
    with pytest.raises(SystemExit, match="--num-attention-heads 4 is not divisible by --target-tensor-parallel-size 3"):
        convert(tmp_path / "a", tmp_path / "b", 3, 1)
    with pytest.raises(SystemExit, match="holds no checkpoint"):
        convert(tmp_path / "missing", tmp_path / "c", 1, 1)
