"""--fp16: FP16 compute with Megatron's loss scaling; dtypes of GEMM outputs, norms, softmax and masters."""

import json
import os
import sys

import pytest
import torch
import torch.nn.functional as F

from megatron_fp8.arguments import parse_config
from megatron_fp8.checkpoint.tracker import iteration_dir
from megatron_fp8.config import Config, ModelConfig, PrecisionConfig, TrainingConfig
from megatron_fp8.layers.weights import param_info
from megatron_fp8.optim.loss_scaler import ConstantLossScaler, DynamicLossScaler
from megatron_fp8.training import Trainer

from ..helpers import run_steps
from .test_schedule import TINY


def fp16_config(level="O2", bias=True, **precision) -> Config:
    """One layer, one micro-batch of 2 x 32 tokens: FP8 GEMMs on a CPU stay cheap."""
    model = ModelConfig(num_layers=1, hidden_size=32, num_attention_heads=2, seq_length=32, vocab_size=128,
                        make_vocab_size_divisible_by=64, hidden_dropout=0.0, attention_dropout=0.0,
                        add_bias_linear=bias)
    training = TrainingConfig(micro_batch_size=2, global_batch_size=2, train_iters=20, lr=3e-3, min_lr=3e-4,
                              lr_warmup_iters=2, seed=7)
    return Config(model=model, precision=PrecisionConfig(fp8_level=level, fp16=True, **precision), training=training)


def test_dynamic_loss_scaler_hysteresis_backoff_and_growth():
    s = DynamicLossScaler(2.0 ** 10, min_scale=2.0 ** 8, window=3, hysteresis=2)
    s.update(True)
    assert s.scale == 2 ** 10 and s.hysteresis_tracker == 1  # the first overflow is tolerated
    s.update(True)
    assert s.scale == 2 ** 9  # hysteresis spent: halve
    s.update(True)
    assert s.scale == 2 ** 8  # and on every further overflow, down to the minimum
    s.update(True)
    assert s.scale == 2 ** 8
    s.update(False)
    s.update(False)
    assert s.scale == 2 ** 8 and s.growth_tracker == 2
    s.update(False)
    assert s.scale == 2 ** 9 and s.growth_tracker == 0 and s.hysteresis_tracker == 2  # window: double, refill
    s.update(False)
    s.update(True)
    assert s.scale == 2 ** 9 and s.growth_tracker == 0  # an overflow restarts the window
    clone = DynamicLossScaler(1.0)
    clone.load_state_dict(json.loads(json.dumps(s.state_dict())))
    assert clone.state_dict() == s.state_dict() == {"scale": 512.0, "growth_tracker": 0, "hysteresis_tracker": 1}
    static = ConstantLossScaler(128.0)
    static.update(True)
    assert static.scale == 128.0


def test_fp16_flags():
    config = parse_config(TINY + ["--fp16"])
    assert config.precision.policy.compute == torch.float16
    t = Trainer(config_with_vocab(config))
    assert isinstance(t.loss_scaler, DynamicLossScaler) and t.loss_scaler.scale == 2.0 ** 32
    assert (t.loss_scaler.min_scale, t.loss_scaler.window, t.loss_scaler.hysteresis) == (1.0, 1000, 2)
    t = Trainer(config_with_vocab(parse_config(TINY + ["--fp16", "--loss-scale", "4096"])))
    assert isinstance(t.loss_scaler, ConstantLossScaler) and t.loss_scaler.scale == 4096
    assert Trainer(config_with_vocab(parse_config(TINY + ["--bf16"]))).loss_scaler is None


def config_with_vocab(config: Config) -> Config:
    config.model.vocab_size = 256  # what build_data sets from the tokenizer
    return config


@pytest.mark.parametrize("flags,message", [
    (["--fp16", "--bf16"], "--fp16 and --bf16: choose one compute dtype"),
    (["--fp16", "--fp8-level", "off", "--main-params-dtype", "fp16"], "without a master copy"),
    (["--fp16", "--loss-scale", "0"], "--loss-scale must be positive"),
    (["--fp16", "--hysteresis", "0"], "--hysteresis must be positive"),
    (["--fp16", "--loss-scale-window", "0"], "--loss-scale-window must be positive"),
])
def test_fp16_flag_errors(flags, message, capsys):
    with pytest.raises(SystemExit):
        parse_config(TINY + flags)
    assert message in capsys.readouterr().err


def _within_one_fp16_ulp(got: torch.Tensor, reference32: torch.Tensor) -> bool:
    """``got`` (FP16) is the FP32 reference rounded once, give or take one FP16 ulp (the kernels accumulate in
    float32 in their own order)."""
    ulp = torch.finfo(torch.float16).eps * reference32.abs().clamp(min=torch.finfo(torch.float16).tiny)
    return bool(((got.float() - reference32).abs() <= ulp).all())


def test_fp16_compute_dtypes_and_fp32_masters(dataset, monkeypatch):
    trainer = Trainer(fp16_config("O2", initial_loss_scale=2.0 ** 10))
    for p in trainer.model.parameters():
        if param_info(p).fp8_eligible:  # O2: FP16 + scale is the master itself
            assert p.dtype == torch.float16 and param_info(p).scale_inv is not None
        else:  # embeddings, norms, biases: plain FP16 (no scale), FP32 master in the optimizer
            assert p.dtype == torch.float16 and param_info(p).scale_inv is None
    states = {n: trainer.optimizer.state[n] for n, p in trainer.model.named_parameters()
              if not param_info(p).fp8_eligible}
    assert states and all(s.master.dtype == torch.float32 for s in states.values())

    seen = {}

    def record(key, value) -> None:  # a forward hook that returns something would replace the output
        seen.setdefault(key, value)

    layer = trainer.model.decoder.layers[0]
    layer.mlp.linear_fc1.register_forward_hook(lambda m, i, o: record("fp8_gemm", o))
    layer.input_layernorm.register_forward_hook(
        lambda m, i, o: record("norm", (i[0], o, m.weight.detach().clone(), m.bias.detach().clone())))
    sdpa = F.scaled_dot_product_attention

    def recording_sdpa(q, k, v, **kw):
        out = sdpa(q, k, v, **kw)
        seen.setdefault("sdpa", (q, k, v, out, kw))
        return out

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording_sdpa)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    result = trainer.train_iteration(dataset)
    assert not result.skipped
    assert seen["fp8_gemm"].dtype == torch.float16  # the FP8 GEMM writes the compute dtype
    x, y, weight, bias = seen["norm"]
    reference = F.layer_norm(x.float(), (x.shape[-1],), weight.float(), bias.float(), layer.input_layernorm.eps)
    assert y.dtype == torch.float16 and _within_one_fp16_ulp(y, reference)
    # attention rows are convex combinations of value rows: within one FP16 ulp of the largest |value|
    q, k, v, out, kw = seen["sdpa"]
    reference = sdpa(q.float(), k.float(), v.float(), **kw)
    v_max = v.float().abs().amax(dim=(-2, -1), keepdim=True)
    assert out.dtype == torch.float16
    assert ((out.float() - reference).abs() <= torch.finfo(torch.float16).eps * v_max).all()

    # after a step every plain FP16 parameter is its (updated) FP32 master rounded
    for name, p in trainer.model.named_parameters():
        if name in states:
            assert not torch.equal(p.detach(), before[name]), f"{name} was not updated"
            assert torch.equal(p.detach(), states[name].master.half()), name


def test_fp16_off_level_keeps_fp32_master_of_fp16_linear_weights(dataset):
    trainer = Trainer(fp16_config("off", initial_loss_scale=2.0 ** 10))
    run = [trainer.train_iteration(dataset) for _ in range(2)]
    assert not any(r.skipped for r in run)
    for name, p in trainer.model.named_parameters():
        state = trainer.optimizer.state[name]
        assert p.dtype == torch.float16 and state.master.dtype == torch.float32
        assert torch.equal(p.detach(), state.master.half()), name


def _inject(trainer, bad=float("inf")):
    """inf in the output gradient of fc2, an FP8 linear inside the MLP: its FP8 cast saturates such values."""
    fc2 = trainer.model.decoder.layers[0].mlp.linear_fc2
    return fc2.register_full_backward_pre_hook(lambda mod, g: (torch.full_like(g[0], bad),))


def test_fp16_overflow_backs_off_the_scale_and_skips_the_step(tmp_path, dataset):
    """No biases: the only way the inf reaches a checked gradient is through the FP8 GEMMs, whose saturating
    cast must keep it visible. Overflow -> step skipped, lr schedule held, hysteresis then back-off; growth
    after the window; the scaler's state is in the checkpoint."""
    trainer = Trainer(fp16_config("O2", bias=False, initial_loss_scale=2.0 ** 12, loss_scale_window=3))
    first = trainer.train_iteration(dataset)
    assert not first.skipped and trainer.loss_scaler.scale == 2 ** 12
    params = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    hook = _inject(trainer)
    skipped = [trainer.train_iteration(dataset) for _ in range(2)]
    hook.remove()
    assert all(r.skipped for r in skipped) and trainer.progress.skipped_iterations == 2
    assert trainer.progress.nan_iterations == 0  # overflows under loss scaling are the scaler's, not NaN iterations
    assert trainer.loss_scaler.scale == 2 ** 11  # hysteresis 2: the second overflow halves the scale
    for n, p in trainer.model.named_parameters():
        assert torch.equal(p.detach(), params[n]), f"{n} changed on a skipped step"
    assert trainer.progress.scheduler_samples == 2 and skipped[0].lr == skipped[1].lr  # lr did not advance
    ok = [trainer.train_iteration(dataset) for _ in range(3)]
    assert not any(r.skipped for r in ok) and ok[0].lr == skipped[0].lr
    assert trainer.loss_scaler.scale == 2 ** 12  # three good steps (the window): doubled
    trainer.save(str(tmp_path))
    metadata = json.load(open(os.path.join(iteration_dir(str(tmp_path), 6), "metadata.json")))
    assert metadata["progress"]["loss_scaler"] == {"scale": 4096.0, "growth_tracker": 0, "hysteresis_tracker": 2}
    resumed = Trainer(fp16_config("O2", bias=False, initial_loss_scale=2.0 ** 12, loss_scale_window=3))
    assert resumed.load(str(tmp_path)) and resumed.loss_scaler.state_dict() == trainer.loss_scaler.state_dict()
    assert resumed.train_iteration(dataset).loss == trainer.train_iteration(dataset).loss


def test_fp16_checkpoint_goes_through_the_converter(tmp_path, dataset):
    """tools/convert_checkpoint.py writes plain FP16 parameters (no scale) and their FP32 masters back."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tools"))
    import convert_checkpoint

    def make():
        return Trainer(fp16_config("off", initial_loss_scale=2.0 ** 10))

    trainer = make()
    run_steps(trainer, dataset, 2)
    trainer.save(str(tmp_path / "a"))
    continued = run_steps(trainer, dataset, 2)
    convert_checkpoint.main(["--load", str(tmp_path / "a"), "--save", str(tmp_path / "b"),
                             "--target-tensor-parallel-size", "1", "--target-pipeline-parallel-size", "1"])
    converted = make()
    assert converted.load(str(tmp_path / "b")) and converted.loss_scaler.scale == trainer.loss_scaler.scale
    assert run_steps(converted, dataset, 2) == continued


def _dp_fp16_runs(rank: int, world: int) -> dict:
    """Six iterations at --fp16 with a batch ramp 4 -> 8 and the distributed optimizer over ``world``
    data-parallel ranks (or one process): with a dynamic loss scale from 2**20 (the first steps overflow),
    and with a static one."""
    from megatron_fp8.parallel.groups import build_state

    from ..helpers import PatternDataset, tiny_config

    out = {}
    for name, precision in (("dynamic", dict(initial_loss_scale=2.0 ** 20)), ("static", dict(loss_scale=1024.0))):
        config = tiny_config("off", micro_batch_size=2, global_batch_size=8, rampup_batch_size=[4, 4, 16])
        config.precision = PrecisionConfig(fp8_level="off", fp16=True, **precision)
        config.parallel.use_distributed_optimizer = True
        trainer = Trainer(config, build_state(config, rank, world, world) if world > 1 else None)
        results = [trainer.train_iteration(PatternDataset()) for _ in range(6)]
        out[name] = ([(r.loss, r.skipped, r.global_batch_size) for r in results], trainer.loss_scaler.state_dict(),
                     {n: p.detach().clone() for n, p in trainer.model.named_parameters()})
    return out


def test_fp16_data_parallel_ranks_agree_and_follow_one_process():
    """Every rank skips the same steps, keeps the same scale and holds the same FP16 model. With a static
    scale the loss follows the single process within 1% (the runs differ only in the order FP32 gradients are
    summed); a dynamic scale may overflow at other steps than one process does, as in Megatron: each rank's
    micro-batch gradients are scaled by 1 / its own micro-batch count."""
    from megatron_fp8.parallel.local_spawn import spawn

    ranks = spawn(_dp_fp16_runs, 2)
    for name in ("dynamic", "static"):
        (steps, scaler, params), (steps1, scaler1, params1) = ranks[0][name], ranks[1][name]
        assert steps == steps1 and scaler == scaler1
        for pname, value in params.items():
            assert torch.equal(value, params1[pname]), f"{name}: {pname} differs between data-parallel ranks"
        assert [s[2] for s in steps] == [4, 4, 4, 4, 8, 8]
    skipped = [s[1] for s in ranks[0]["dynamic"][0]]
    assert skipped[0] and not skipped[-1]  # overflows, then steps, agreed by both ranks
    reference = _dp_fp16_runs(0, 1)["static"][0]
    for (loss, skip, _), (ref, ref_skip, _) in zip(ranks[0]["static"][0], reference):
        assert not skip and not ref_skip and abs(loss - ref) / ref < 0.01
