"""The memory planner against what training measures, and the launch scripts' --dry-run.

Tiny models train one step with Trainer (single process, then TP/SP/DP/PP layouts in 4 gloo ranks); every
category of Trainer.memory() must be within 5% of megatron_fp8.memory's plan for that rank (the issue's
bound; on these shapes the plan is exact to the byte). ``activations_peak`` is the meter's view: one
micro-batch's saved tensors, including parameters that ops save.
"""

import os
import subprocess
import sys

import pytest
import torch

from megatron_fp8.fp8.linear import needs_transposes
from megatron_fp8.memory import plan_memory
from megatron_fp8.memory.search import GPT_SHAPES, largest_fitting
from megatron_fp8.config import Config, ModelConfig, ParallelConfig, PrecisionConfig, TrainingConfig
from megatron_fp8.training import Trainer

from .helpers import PatternDataset, run_steps, tiny_config
from .parallel.harness import spawn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 0.05

# name: (level, tp, pp, sp, distributed optimizer, model/precision changes)
CASES = {
    "O2 gpt": ("O2", 1, 1, False, False, {}),
    "off dropout": ("off", 1, 1, False, False, dict(hidden_dropout=0.1, attention_dropout=0.1)),
    "O3 bf16 llama-like dropout": ("O3", 1, 1, False, False, dict(
        bf16=True, position_embedding_type="rope", swiglu=True, normalization="RMSNorm",
        untie_embeddings_and_output_weights=True, hidden_dropout=0.1, attention_dropout=0.1)),
    "gemm blockwise wide": ("gemm", 1, 1, False, False, dict(hidden_size=128, num_attention_heads=2,
                                                             recipe="blockwise")),
    "O1 current no-bias": ("O1", 1, 1, False, False, dict(add_bias_linear=False, recipe="current")),
    # grouped-query attention (q is a reshaped copy), head size != hidden/heads, QKV-only bias, partial
    # Llama-3.1-scaled RoPE, zero-centred RMSNorm (the op saves 1 + w)
    "O2 gqa qwen-like": ("O2", 1, 1, False, False, dict(
        position_embedding_type="rope", swiglu=True, normalization="RMSNorm", group_query_attention=True,
        num_query_groups=2, kv_channels=24, add_qkv_bias=True, add_bias_linear=False, rotary_percent=0.5,
        use_rope_scaling=True, apply_layernorm_1p=True)),
    # multi-query attention on the CPU math path (dropout): K/V repeated per head, v a float32 copy
    "off mqa dropout layernorm-1p": ("off", 1, 1, False, False, dict(
        group_query_attention=True, num_query_groups=1, attention_dropout=0.1, apply_layernorm_1p=True)),
    "off fp16": ("off", 1, 1, False, False, dict(fp16=True, loss_scale=1024.0)),  # plain FP16 + FP32 masters
    # recomputation: what the first forward keeps and what one recomputed region rebuilds in backward
    "O2 recompute full uniform": ("O2", 1, 1, False, False, dict(
        num_layers=3, recompute_granularity="full", recompute_method="uniform", recompute_num_layers=2)),
    "off recompute full block dropout": ("off", 1, 1, False, False, dict(
        num_layers=3, hidden_dropout=0.1, attention_dropout=0.1, recompute_granularity="full",
        recompute_method="block", recompute_num_layers=2)),
    "O3 recompute selective rope dropout": ("O3", 1, 1, False, False, dict(
        position_embedding_type="rope", attention_dropout=0.1, recompute_granularity="selective")),
    "off recompute selective": ("off", 1, 1, False, False, dict(recompute_granularity="selective")),
    # --first-last-layers-bf16: the first and last layers' linears at off's bytes and activations
    "O2 first-last bf16": ("O2", 1, 1, False, False, dict(num_layers=4, first_last_layers_bf16=True)),
    "O3 bf16 first-last 2+0 recompute uniform": ("O3", 1, 1, False, False, dict(
        bf16=True, num_layers=4, first_last_layers_bf16=True, num_layers_at_start_in_bf16=2,
        num_layers_at_end_in_bf16=0, recompute_granularity="full", recompute_method="uniform",
        recompute_num_layers=3)),
    "O1 first-last bf16 recompute block dropout": ("O1", 1, 1, False, False, dict(
        num_layers=3, hidden_dropout=0.1, first_last_layers_bf16=True, recompute_granularity="full",
        recompute_method="block", recompute_num_layers=2)),
}
DIST_CASES = {
    "TP2xDP2+SP O2 distopt dropout": ("O2", 2, 1, True, True, dict(hidden_dropout=0.1, attention_dropout=0.1)),
    "TP2xPP2+SP O3 untied": ("O3", 2, 2, True, False, dict(untie_embeddings_and_output_weights=True)),
    # global layer numbers: stage 0 holds layers 0 and 1 (both high precision), stage 1 layers 2 (FP8) and 3
    "TP2xPP2+SP O2 first-last 2+1": ("O2", 2, 2, True, False, dict(
        num_layers=4, first_last_layers_bf16=True, num_layers_at_start_in_bf16=2)),
    # the kept layers' FP32 masters (BF16 compute) sharded by the distributed optimizer with the rest
    "DP4 O3 bf16 distopt first-last": ("O3", 1, 1, False, True, dict(bf16=True, num_layers=4,
                                                                      first_last_layers_bf16=True)),
    "TP2xDP2+SP O1 gqa": ("O1", 2, 1, True, False, dict(
        num_attention_heads=8, group_query_attention=True, num_query_groups=4, kv_channels=12, add_qkv_bias=True,
        position_embedding_type="rope", rotary_percent=0.5)),
}


def make_config(level, tp, pp, sp, distopt, changes, world: int = 1) -> Config:
    """Micro-batches of 2; one per data-parallel rank, four per step under pipelining (fills 1F1B)."""
    dp = world // (tp * pp)
    cfg = tiny_config(level, tp, pp, sp, micro_batch_size=2, global_batch_size=2 * dp * (4 if pp > 1 else 1))
    changes = dict(changes)
    cfg.precision.bf16 = changes.pop("bf16", False)
    cfg.precision.fp16 = changes.pop("fp16", False)
    cfg.precision.loss_scale = changes.pop("loss_scale", None)
    cfg.precision.recipe.recipe = changes.pop("recipe", "delayed")
    for key in ("first_last_layers_bf16", "num_layers_at_start_in_bf16", "num_layers_at_end_in_bf16"):
        if key in changes:
            setattr(cfg.precision, key, changes.pop(key))
    for key, value in changes.items():
        setattr(cfg.training if key.startswith("recompute_") else cfg.model, key, value)
    cfg.model.ffn_hidden_size = 4 * cfg.model.hidden_size
    cfg.model.num_layers = max(cfg.model.num_layers, 2 * pp)
    cfg.parallel.use_distributed_optimizer = distopt
    return cfg


def compare(measured: dict, planned: dict) -> dict:
    """Relative error of the plan per measured category."""
    return {k: (planned[k] - v) / v if v else float(planned[k] != 0) for k, v in measured.items()}


def measure(rank: int, world: int, cases: dict) -> dict:
    """One training step per case on this rank; (measured, planned) memory. Module level: spawn imports it."""
    from megatron_fp8.parallel.groups import build_state, grid_coordinates
    out = {}
    for name, case in cases.items():
        cfg = make_config(*case, world=world)
        tp, pp = cfg.parallel.tensor_model_parallel_size, cfg.parallel.pipeline_model_parallel_size
        dp = world // (tp * pp)
        trainer = Trainer(cfg, build_state(cfg, rank, world, dp) if world > 1 else None)
        run_steps(trainer, PatternDataset(), 1)
        _, dp_rank, pp_rank = grid_coordinates(rank, tp, dp)
        plan = plan_memory(cfg, world, device="cpu", pp_rank=pp_rank, dp_rank=dp_rank)
        out[name] = (trainer.memory(), plan.as_trainer_memory())
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_single_process_plan_matches_trainer(name):
    measured, planned = measure(0, 1, {name: CASES[name]})[name]
    errors = compare(measured, planned)
    recompute = {"activations_rebuilt"} if "recompute" in name else set()
    assert set(measured) == {"weights", "grads", "master", "exp_avg", "exp_avg_sq", "fp8_weight_cache",
                             "activations_peak", *recompute}
    level, blockwise = CASES[name][0], dict(CASES[name][5]).get("recipe") == "blockwise"
    # An O3 weight is its own FP8 operand: it caches something only where GEMMs need its transpose.
    cached = level != "off" and (level != "O3" or needs_transposes(torch.device("cpu"), blockwise))
    assert (measured["fp8_weight_cache"] > 0) == cached
    assert all(abs(e) <= TOLERANCE for e in errors.values()), (measured, planned)


def test_parallel_layouts_plan_matches_every_rank():
    results = spawn(measure, 4, DIST_CASES)
    for rank, per_case in enumerate(results):
        for name, (measured, planned) in per_case.items():
            errors = compare(measured, planned)
            assert all(abs(e) <= TOLERANCE for e in errors.values()), (name, rank, measured, planned)


def gpt_7b(level: str, dp: int) -> Config:
    return Config(model=ModelConfig(num_layers=32, hidden_size=4096, num_attention_heads=32, seq_length=2048,
                                    vocab_size=50304),
                  parallel=ParallelConfig(use_distributed_optimizer=True),
                  precision=PrecisionConfig(fp8_level=level, bf16=True),
                  training=TrainingConfig(micro_batch_size=1, global_batch_size=dp))


@pytest.mark.parametrize("level", ["off", "gemm", "O1", "O2", "O3"])
def test_model_states_per_param_match_design_table(level):
    """docs/design.md §1's bytes per FP8-eligible parameter, from the planner's tensors (scales add ~1e-8)."""
    for dp in (1, 8):
        plan = plan_memory(gpt_7b(level, dp), dp)
        assert plan.planned_bytes_per_param == pytest.approx(plan.design_bytes_per_param, rel=1e-3)


def test_recomputation_and_pipeline_in_flight():
    plan = plan_memory(gpt_7b("O2", 1), 1, recompute=True)
    assert plan.bytes["activations"] == plan.activations_recompute < plan.activations_full / 4
    cfg = gpt_7b("O2", 1)
    cfg.parallel.pipeline_model_parallel_size = 4
    cfg.training.global_batch_size = 8
    first, last = (plan_memory(cfg, 4, pp_rank=r, dp_rank=0) for r in (0, 3))
    assert (first.in_flight, last.in_flight) == (4, 1)
    assert first.activations_full == 4 * first.activations_per_micro_batch


def test_fp8_levels_fit_larger_models():
    small = [s for s in GPT_SHAPES if s.hidden_size <= 5120]
    found = largest_fitting(gpt_7b("off", 1), 8, 80, ("off", "O2"), shapes=small)
    off, o2 = (found[lvl] for lvl in ("off", "O2"))
    assert off is not None and o2 is not None
    assert o2[0].hidden_size * o2[0].num_layers >= off[0].hidden_size * off[0].num_layers
    assert all(plan.total <= 80 * 2 ** 30 for _, plan in found.values())


def run_script(*args, env=None):
    return subprocess.run(["bash", *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHON": sys.executable, **(env or {})})


def test_dry_run_prints_per_gpu_memory():
    out = run_script("scripts/pretrain_gpt_7b.sh", "--dry-run", "--fp8-level", "O3")
    assert out.returncode == 0, out.stderr
    assert "TP1 PP1 DP32" in out.stdout and "per GPU (GiB)" in out.stdout and "O3" in out.stdout
    assert "total" in out.stdout and "docs/design.md §1" in out.stdout


def test_dry_run_layout_error_names_the_flag():
    out = run_script("scripts/pretrain_gpt_13b.sh", "--dry-run", "--", "--num-attention-heads", "5")
    assert out.returncode != 0
    assert "--num-attention-heads 5 is not divisible by --tensor-model-parallel-size 2" in out.stderr
