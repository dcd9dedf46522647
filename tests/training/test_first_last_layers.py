"""--first-last-layers-bf16 (Megatron's flags): the first N and last M transformer layers stay out of FP8.

Their linears run ``F.linear`` in the compute dtype (FP32 here; BF16 with --bf16, which stands in for
Megatron's BF16 on CPUs) and their weights keep `off`'s states: compute-dtype weight, FP32 gradient and
moments, an FP32 master when the compute dtype is not FP32. Checked here: the dtypes per layer at O1/O2/O3,
their bytes against the policy and the planner, that such a layer computes exactly what the `off` model's
layer computes, a short training run, validation messages, resume, and conversion between settings.
(TP2xPP2 against the single process: tests/parallel/test_layouts.py; the planner's categories against
the trainer's, also under TP2xPP2: tests/test_memory_plan.py.)
"""

import pytest
import torch
import torch.nn.functional as F

from megatron_fp8.arguments import parse_config
from megatron_fp8.checkpoint.universal import read_universal
from megatron_fp8.config import PrecisionConfig
from megatron_fp8.finetune import finetune_from, load_checkpoint
from megatron_fp8.fp8.formats import E4M3
from megatron_fp8.fp8.reference import load as load_stored
from megatron_fp8.fp8.tensor import Fp8Tensor
from megatron_fp8.layers.weights import param_info, stored_copy
from megatron_fp8.memory import plan_memory
from megatron_fp8.training import Trainer

from ..helpers import load_script, run_steps, tiny_config

convert_checkpoint = load_script("tools/convert_checkpoint.py")

LINEARS = ("self_attention.linear_qkv", "self_attention.linear_proj", "mlp.linear_fc1", "mlp.linear_fc2")
FP8_STATES = {  # (weight, grad, master, exp_avg, exp_avg_sq) of the FP8 layers (docs/design.md §1)
    "O1": (torch.float16, E4M3, None, torch.float32, torch.float32),
    "O2": (torch.float16, E4M3, None, E4M3, torch.float16),
    "O3": (E4M3, E4M3, torch.float16, E4M3, torch.float16),
}


def flagged(level="O2", layers=4, start=1, end=1, bf16=False, flag=True):
    """The tiny GPT with ``layers`` layers, the first ``start`` and last ``end`` kept out of FP8 (without the
    flag at ``off`` or with ``flag=False``)."""
    config = tiny_config(level)
    config.model.num_layers = layers
    config.precision.bf16 = bf16
    if level != "off" and flag:
        config.precision.first_last_layers_bf16 = True
        config.precision.num_layers_at_start_in_bf16, config.precision.num_layers_at_end_in_bf16 = start, end
    return config


def states(trainer, name, p):
    st = trainer.optimizer.state[name]
    g = p.main_grad.data if isinstance(p.main_grad, Fp8Tensor) else p.main_grad
    master = st.master.dtype if st.master is not None else None
    return (p.dtype, g.dtype, master, st.exp_avg.dtype, st.exp_avg_sq.dtype), [p, g, st.exp_avg, st.exp_avg_sq] + (
        [st.master] if st.master is not None else [])


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("level", ["O1", "O2", "O3"])
def test_dtypes_and_bytes_per_layer(level, bf16):
    """Layers 0 and 3 of 4 keep `off`'s states, layers 1 and 2 the level's; bytes per parameter of both kinds
    equal the policy's figures and the planner's."""
    trainer = Trainer(flagged(level, bf16=bf16))
    policy = trainer.policy
    compute = torch.bfloat16 if bf16 else torch.float32
    off_states = (compute, torch.float32, torch.float32 if bf16 else None, torch.float32, torch.float32)
    nbytes = {True: [0, 0], False: [0, 0]}  # high precision? -> [bytes, parameters]
    for i, layer in enumerate(trainer.model.decoder.layers):
        high = i in (0, 3)
        assert layer.fp8 is not high
        for linear in LINEARS:
            name = f"decoder.layers.{i}.{linear}.weight"
            module = trainer.model.get_submodule(f"decoder.layers.{i}.{linear}")
            p = module.weight
            info = param_info(p)
            assert (info.fp8_eligible, info.high_precision_layer) == (not high, high), name
            assert (module.fp8_state is None) == high, name
            assert (info.scale_inv is None) == high, name
            dtypes, tensors = states(trainer, name, p)
            want = off_states if high else FP8_STATES[level]
            assert dtypes == want, f"{name}: {dtypes} != {want}"
            nbytes[high][0] += sum(t.numel() * t.element_size() for t in tensors)
            nbytes[high][1] += p.numel()
    assert nbytes[True][0] / nbytes[True][1] == policy.other_bytes_per_param() == (18 if bf16 else 16)
    assert nbytes[False][0] / nbytes[False][1] == policy.eligible_bytes_per_param()
    plan = plan_memory(trainer.config, 1, device="cpu")
    assert plan.high_precision_params == nbytes[True][1] and plan.eligible_params == nbytes[False][1]
    assert plan.high_precision_state_bytes == nbytes[True][0]  # compute-dtype/FP32 storage: no scales
    assert plan.design_high_precision_bytes_per_param == policy.other_bytes_per_param()
    want_linear = (nbytes[True][0] + nbytes[False][0]) / (nbytes[True][1] + nbytes[False][1])
    assert abs(plan.planned_linear_bytes_per_param - want_linear) < 1e-3  # the FP8 side adds its scales


@pytest.mark.parametrize("level,bf16", [("gemm", False), ("O2", False), ("O3", False), ("O2", True)])
def test_high_precision_layer_computes_as_off(level, bf16):
    """The same initialisation as `off`: a kept layer's output equals the `off` model's layer bit for bit,
    its linears are plain F.linear; an FP8 layer's output differs."""
    fp8, off = Trainer(flagged(level, bf16=bf16)), Trainer(flagged("off", bf16=bf16))
    compute = torch.bfloat16 if bf16 else torch.float32
    x = torch.randn(32, 2, 64, generator=torch.Generator().manual_seed(1)).to(compute)
    for model in (fp8.model, off.model):
        model.eval()
    with torch.no_grad():
        for i in (0, 3):
            assert torch.equal(fp8.model.decoder.layers[i](x), off.model.decoder.layers[i](x)), f"layer {i}"
            fc1 = fp8.model.decoder.layers[i].mlp.linear_fc1
            assert torch.equal(fc1(x), F.linear(x, fc1.weight, fc1.bias))
        assert not torch.equal(fp8.model.decoder.layers[1](x), off.model.decoder.layers[1](x))


def test_training_with_the_flag_learns(dataset):
    trainer = Trainer(flagged("O2"))
    before = trainer.model.decoder.layers[0].mlp.linear_fc1.weight.detach().clone()
    losses = run_steps(trainer, dataset, 12)
    assert all(torch.isfinite(torch.tensor(losses))) and sum(losses[-3:]) < 0.9 * sum(losses[:3])
    assert not torch.equal(trainer.model.decoder.layers[0].mlp.linear_fc1.weight, before)
    g = trainer.model.decoder.layers[0].mlp.linear_fc1.weight.main_grad
    assert g.dtype == torch.float32 and not isinstance(g, Fp8Tensor)


@pytest.mark.parametrize("change,message", [
    ({"fp8_level": "off", "first_last_layers_bf16": True}, "--first-last-layers-bf16 needs an FP8 level"),
    ({"num_layers_at_start_in_bf16": 2}, "--num-layers-at-start-in-bf16 2 needs --first-last-layers-bf16"),
    ({"num_layers_at_end_in_bf16": 0}, "--num-layers-at-end-in-bf16 0 needs --first-last-layers-bf16"),
    ({"first_last_layers_bf16": True, "num_layers_at_start_in_bf16": -1}, "--num-layers-at-start-in-bf16 must be"),
])
def test_precision_flags_are_validated(change, message):
    with pytest.raises(ValueError, match=message):
        PrecisionConfig(**change)


def test_layer_counts_are_checked_against_the_model_and_the_stages():
    with pytest.raises(ValueError, match=r"--num-layers-at-start-in-bf16 2 \+ --num-layers-at-end-in-bf16 1 exceed "
                                         r"--num-layers 2"):
        flagged(layers=2, start=2, end=1).validate_layout(1)
    flagged(layers=2, start=2, end=0).validate_layout(1)  # every layer kept: allowed, as in Megatron
    # Megatron's rule: each count at most the layers of one pipeline stage
    with pytest.raises(ValueError, match=r"--num-layers-at-end-in-bf16 3 must be between 0 and the layers per "
                                         r"pipeline stage \(2\)"):
        config = flagged(layers=4, start=0, end=3)
        config.parallel.pipeline_model_parallel_size = 2
        config.validate_layout(2)


def test_command_line_names_the_flag(capsys):
    with pytest.raises(SystemExit):
        parse_config(["--fp8-level", "off", "--first-last-layers-bf16", "--mock-data"])
    assert "--first-last-layers-bf16 needs an FP8 level" in capsys.readouterr().err
    config = parse_config(["--fp8-level", "O3", "--first-last-layers-bf16", "--num-layers-at-start-in-bf16", "2",
                           "--num-layers-at-end-in-bf16", "0", "--mock-data"])
    p = config.precision
    assert (p.first_last_layers_bf16, p.num_layers_at_start_in_bf16, p.num_layers_at_end_in_bf16) == (True, 2, 0)
    assert [p.high_precision_layer(i, 4) for i in range(4)] == [True, True, False, False]


@pytest.mark.parametrize("level,bf16", [("O2", False), ("O3", True)])
def test_resume_with_the_flag_is_bit_identical(tmp_path, dataset, level, bf16):
    reference = run_steps(Trainer(flagged(level, bf16=bf16)), dataset, 8)
    first = Trainer(flagged(level, bf16=bf16))
    run_steps(first, dataset, 4)
    first.save(str(tmp_path))
    resumed = Trainer(flagged(level, bf16=bf16))
    assert resumed.load(str(tmp_path)) and resumed.progress.iteration == 4
    assert run_steps(resumed, dataset, 4) == reference[4:]


def test_resume_with_another_setting_names_the_converter_flags(tmp_path, dataset):
    trainer = Trainer(flagged("O2"))
    run_steps(trainer, dataset, 1)
    trainer.save(str(tmp_path))
    plain = Trainer(flagged("O2", flag=False))
    with pytest.raises(ValueError, match="saved with --first-last-layers-bf16=True, this run has "
                                         "--first-last-layers-bf16=False.*--no-target-first-last-layers-bf16"):
        load_checkpoint(plain, str(tmp_path))
    with pytest.raises(ValueError, match="--first-last-layers-bf16"):
        plain.load(str(tmp_path))
    wider = Trainer(flagged("O2", start=2, end=1))
    with pytest.raises(ValueError, match="--target-num-layers-at-start-in-bf16 2"):
        load_checkpoint(wider, str(tmp_path))


def _convert(src, dst, *flags):
    convert_checkpoint.main(["--load", str(src), "--save", str(dst), *flags])


def _real_state(universal, name, key):
    return universal["params"][name] if key == "param" else universal["optim"][name][key]


def _requantized(values, dtype):
    return load_stored(*stored_copy(values, dtype))


def test_conversion_between_settings_keeps_values(tmp_path, dataset):
    """Flag -> no flag -> flag again, and flag -> off: every value is the source's, requantized into the
    target's storage (exact where the target is FP32); training resumes from each."""
    trainer = Trainer(flagged("O2"))
    run_steps(trainer, dataset, 3)
    trainer.save(str(tmp_path / "flag"))
    src = read_universal(str(tmp_path / "flag"))
    _convert(tmp_path / "flag", tmp_path / "plain", "--no-target-first-last-layers-bf16")
    plain = read_universal(str(tmp_path / "plain"))
    assert plain["config"]["precision"]["first_last_layers_bf16"] is False
    kept = [f"decoder.layers.{i}.{lin}.weight" for i in (0, 3) for lin in LINEARS]
    middle = [f"decoder.layers.{i}.{lin}.weight" for i in (1, 2) for lin in LINEARS]
    for name in kept:  # FP32 -> O2's FP16 weight, FP8 exp_avg, FP16 exp_avg_sq, each with a fresh scale
        for key, dtype in (("param", torch.float16), ("exp_avg", E4M3), ("exp_avg_sq", torch.float16)):
            assert torch.equal(_real_state(plain, name, key), _requantized(_real_state(src, name, key), dtype))
    for name in middle:  # unchanged storage: unchanged values
        for key in ("param", "exp_avg", "exp_avg_sq"):
            assert torch.equal(_real_state(plain, name, key), _real_state(src, name, key)), (name, key)
    resumed = Trainer(flagged("O2", flag=False))
    assert resumed.load(str(tmp_path / "plain")) and resumed.progress.iteration == 3
    assert all(torch.isfinite(torch.tensor(run_steps(resumed, dataset, 2))))

    _convert(tmp_path / "plain", tmp_path / "again", "--target-first-last-layers-bf16")
    again = read_universal(str(tmp_path / "again"))
    for name in kept + middle:  # FP16 x scale and FP8 x scale are exact in FP32
        for key in ("param", "exp_avg", "exp_avg_sq"):
            assert torch.equal(_real_state(again, name, key), _real_state(plain, name, key)), (name, key)
    assert Trainer(flagged("O2")).load(str(tmp_path / "again"))

    _convert(tmp_path / "flag", tmp_path / "o3", "--target-fp8-level", "O3")  # the flag carries over
    o3 = read_universal(str(tmp_path / "o3"))
    assert o3["config"]["precision"]["first_last_layers_bf16"] is True
    for name in kept:  # FP32 in both
        for key in ("param", "exp_avg", "exp_avg_sq"):
            assert torch.equal(_real_state(o3, name, key), _real_state(src, name, key)), (name, key)
    for name in middle:  # O3: FP8 weight, its FP16 master from the source's FP16 value
        assert torch.equal(_real_state(o3, name, "param"), _requantized(src["params"][name], E4M3))
        assert torch.equal(_real_state(o3, name, "master"), _requantized(src["params"][name], torch.float16))
    assert Trainer(flagged("O3")).load(str(tmp_path / "o3"))

    _convert(tmp_path / "flag", tmp_path / "off", "--target-fp8-level", "off")
    off = read_universal(str(tmp_path / "off"))
    assert off["config"]["precision"]["first_last_layers_bf16"] is False
    for name in kept + middle:
        assert torch.equal(off["params"][name], src["params"][name]), name
    assert Trainer(flagged("off")).load(str(tmp_path / "off"))


def test_conversion_takes_the_full_precision_master(tmp_path, dataset):
    """With --bf16 a kept layer's weight is BF16 with an FP32 master: converting it to another level carries
    the master, and fine-tuning it in FP32 takes the master, not the BF16 rounding of it."""
    trainer = Trainer(flagged("O2", bf16=True))
    run_steps(trainer, dataset, 3)
    trainer.save(str(tmp_path / "src"))
    name = "decoder.layers.0.mlp.linear_fc1.weight"
    master = trainer.optimizer.state[name].master
    weight = trainer.model.get_parameter(name).detach().float()
    assert master.dtype == torch.float32 and not torch.equal(master, weight)
    config_off = flagged("off")
    _convert(tmp_path / "src", tmp_path / "off", "--target-fp8-level", "off")
    off = read_universal(str(tmp_path / "off"))  # `off --bf16`: BF16 weight, FP32 master
    assert torch.equal(off["optim"][name]["master"], master)
    assert torch.equal(off["params"][name], master.to(torch.bfloat16).float())
    # the same for --finetune: the values loaded into an FP32 `off` model are the masters
    tuned = Trainer(config_off)
    finetune_from(tuned, str(tmp_path / "src"))
    assert torch.equal(tuned.model.get_parameter(name).detach(), master)


def test_converter_names_its_own_flags(tmp_path, dataset):
    trainer = Trainer(flagged("O2"))
    run_steps(trainer, dataset, 1)
    trainer.save(str(tmp_path / "src"))
    with pytest.raises(SystemExit, match="--target-first-last-layers-bf16 needs an FP8 level"):
        _convert(tmp_path / "src", tmp_path / "bad", "--target-fp8-level", "off", "--target-first-last-layers-bf16")
    with pytest.raises(SystemExit, match=r"--target-num-layers-at-start-in-bf16 4 \+ --target-num-layers-at-end-in-"
                                         r"bf16 1 exceed --num-layers 4"):
        _convert(tmp_path / "src", tmp_path / "bad", "--target-num-layers-at-start-in-bf16", "4")
    with pytest.raises(SystemExit, match="--target-num-layers-at-end-in-bf16 convert megatron_fp8 checkpoints"):
        convert_checkpoint.main(["--hf-export", str(tmp_path / "hf"), "--load", str(tmp_path / "src"),
                                 "--target-num-layers-at-end-in-bf16", "0"])
