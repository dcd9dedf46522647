"""pretrain_gpt.py end to end on mock data: log lines, JSON metrics, checkpoint, resume, flag errors."""

import json
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import pretrain_gpt  # noqa: E402
from megatron_fp8.arguments import parse_config  # noqa: E402

TINY = ["--mock-data", "--tokenizer-type", "NullTokenizer", "--vocab-size", "200", "--num-layers", "2",
        "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", "32", "--micro-batch-size", "2",
        "--global-batch-size", "4", "--log-interval", "2", "--eval-interval", "4", "--eval-iters", "1",
        "--lr-warmup-iters", "2"]


def test_logged_process_peak_holds_the_baseline_and_the_categories(tmp_path):
    """In a fresh process (as users run) the logged peak RSS holds the RSS before the model (imports,
    data) and every category of the log's memory group on top of it."""
    import subprocess

    log = tmp_path / "metrics.jsonl"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, os.path.join(ROOT, "pretrain_gpt.py"), *TINY, "--train-iters", "2",
                           "--log-json", str(log), "--data-cache-path", str(tmp_path / "cache")],
                          env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    mem = next(json.loads(line) for line in log.read_text().splitlines() if "lm_loss" in line)["mem"]
    categories = sum(v for k, v in mem.items() if not k.startswith(("peak_", "rss_")))
    assert 0 < mem["rss_at_start"] < mem["peak_rss"]
    assert mem["peak_rss"] > categories + mem["rss_at_start"]


def test_train_log_save_and_resume(tmp_path, capsys):
    log, ckpt = tmp_path / "metrics.jsonl", tmp_path / "ckpt"
    pretrain_gpt.main(TINY + ["--train-iters", "4", "--log-json", str(log), "--save", str(ckpt),
                              "--data-cache-path", str(tmp_path / "cache")])
    out = capsys.readouterr().out
    assert "iteration        4/       4 |" in out and "lm loss:" in out and "validation loss at iteration 4" in out
    records = [json.loads(line) for line in log.read_text().splitlines()]
    train = [r for r in records if "lm_loss" in r]
    assert [r["iteration"] for r in train] == [2, 4]
    for key in ("lr", "grad_norm", "tokens_per_sec", "step_time_s", "comm"):
        assert key in train[0]
    assert set(train[0]["mem"]) >= {"weights", "grads", "master", "exp_avg", "exp_avg_sq", "activations_peak"}
    assert train[0]["mem"]["activations_peak"] > 0
    mem = train[0]["mem"]
    # the process peak (VmHWM) and the RSS before the model; in this long-lived pytest process earlier
    # tests set the peak and left freed pages behind, so how they add up is checked in a fresh process
    # (test_logged_process_peak_holds_the_baseline_and_the_categories)
    assert 0 < mem["rss_at_start"] <= mem["peak_rss"]
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "4"

    # resumed with full recomputation of every layer (Megatron's flags): the log shows what it rebuilds
    pretrain_gpt.main(TINY + ["--train-iters", "6", "--load", str(ckpt), "--save", str(ckpt),
                              "--data-cache-path", str(tmp_path / "cache"), "--recompute-granularity", "full",
                              "--recompute-method", "uniform", "--recompute-num-layers", "1"])
    out = capsys.readouterr().out
    assert " activations_rebuilt=" in out and " peak_rss=" in out
    assert "loaded checkpoint" in out and "iteration        6/       6 |" in out
    assert "iteration        2/" not in out
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "6"


@pytest.mark.parametrize("flags,message", [
    (["--hidden-size", "65"], "--hidden-size 65 must be divisible by --num-attention-heads 4"),
    (["--fp8-level", "O4"], "argument --fp8-level: invalid choice: 'O4'"),
    (["--fp8-recipe", "magic"], "--fp8-recipe"),
    (["--exp-avg-dtype", "int8"], "--exp-avg-dtype"),
    (["--fp8-level", "off", "--grad-reduce-dtype", "fp8"], "--grad-reduce-dtype fp8 needs"),
    (["--fp8-level", "O3", "--main-params-dtype", "fp16", "--exp-avg-dtype", "fp8"], None),
    (["--min-lr", "1", "--lr", "0.1"], "--min-lr"),
    (["--save-interval", "5"], "--save-interval needs --save"),
    (["--recompute-granularity", "full"], "--recompute-granularity full needs --recompute-method"),
    (["--recompute-method", "block"], "--recompute-method needs --recompute-granularity full"),
    (["--seq-length", "64", "--max-position-embeddings", "32"], "--seq-length 64 exceeds"),
    # every single-flag bound, checked before any work (issue 17 item 8)
    (["--global-batch-size", "-4"], "--global-batch-size must be positive, got -4"),
    (["--global-batch-size", "0"], "--global-batch-size must be positive, got 0"),
    (["--lr", "-1"], "--lr must be >= 0, got -1.0"),
    (["--lr", "nan"], "--lr must be a finite number"),
    (["--ffn-hidden-size", "0"], "--ffn-hidden-size must be positive, got 0"),
    (["--ffn-hidden-size", "-8"], "--ffn-hidden-size must be positive, got -8"),
    (["--make-vocab-size-divisible-by", "0"], "--make-vocab-size-divisible-by must be positive"),
    (["--adam-beta1", "2"], "--adam-beta1 must be in [0, 1), got 2.0"),
    (["--weight-decay", "-1"], "--weight-decay must be >= 0"),
    (["--hidden-dropout", "1"], "--hidden-dropout must be in [0, 1)"),
    (["--fp8-margin", "-1"], "--fp8-margin must be >= 0"),
    (["--fp8-amax-history-len", "0"], "--fp8-amax-history-len must be positive"),
    (["--fp8-recipe", "mxfp8"], "--fp8-recipe mxfp8 (MX block scaling on Blackwell GPUs) is not implemented"),
    (["--context-parallel-size", "2"], "--context-parallel-size 2: context parallelism is not implemented"),
    (["--num-experts", "8"], "--num-experts 8: mixture of experts is not implemented"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
])
def test_bad_flags_name_the_flag(flags, message, capsys):
    argv = TINY + flags
    if message is None:
        parse_config(argv)  # a valid explicit combination
        return
    with pytest.raises(SystemExit):
        parse_config(argv)
    assert message in capsys.readouterr().err


def test_megatron_flags_that_tune_other_implementations_are_reported():
    config = parse_config(TINY + ["--use-mcore-models", "--attention-backend", "auto", "--context-parallel-size", "1",
                                  "--ckpt-format", "torch_dist", "--fp8-recipe", "tensorwise", "--norm-epsilon", "1e-6",
                                  "--split", "'99,1,0'"])
    notes = "\n".join(config.startup_notes)
    assert "--use-mcore-models: accepted" in notes and "--attention-backend auto: accepted" in notes
    assert "--ckpt-format torch_dist: accepted" in notes and "context" not in notes  # size 1 asks for nothing
    assert config.precision.recipe.recipe == "current"  # Megatron's tensorwise is current scaling
    assert config.model.layernorm_epsilon == 1e-6 and config.data.split_fractions == (0.99, 0.01, 0.0)


def test_sequence_parallel_without_tensor_parallelism_is_disabled_as_megatron_does():
    """Megatron's Llama-3 script passes --sequence-parallel with TP 1: Megatron warns and turns it off."""
    config = parse_config(TINY + ["--sequence-parallel"])
    assert not config.parallel.sequence_parallel
    assert "--sequence-parallel: disabled, --tensor-model-parallel-size is 1" in "\n".join(config.startup_notes)
    assert parse_config(TINY + ["--sequence-parallel", "--tensor-model-parallel-size", "2"]).parallel.sequence_parallel


def test_grad_reduce_in_bf16_maps_to_the_wire_dtype_of_the_baselines():
    config = parse_config(TINY + ["--fp8-level", "off", "--grad-reduce-in-bf16"])
    assert config.precision.policy.grad_reduce == torch.bfloat16
    assert "--grad-reduce-in-bf16: data-parallel gradients travel in BF16" in "\n".join(config.startup_notes)
    config = parse_config(TINY + ["--fp8-level", "O2", "--grad-reduce-in-bf16"])
    assert config.precision.grad_reduce_dtype is None and config.precision.policy.grad_reduce == torch.float8_e4m3fn
    assert "weight gradients are FP8 and reduced in FP8" in "\n".join(config.startup_notes)
    with pytest.raises(SystemExit):
        parse_config(TINY + ["--fp8-level", "off", "--grad-reduce-in-bf16", "--grad-reduce-dtype", "fp32"])


def test_sequence_parallel_length_checked_before_any_work():
    config = parse_config(TINY + ["--tensor-model-parallel-size", "2", "--sequence-parallel", "--seq-length", "33"])
    with pytest.raises(ValueError, match="--seq-length 33 is not divisible by --tensor-model-parallel-size 2"):
        config.validate_layout(2)


def test_world_layout_errors():
    config = parse_config(TINY + ["--global-batch-size", "6", "--micro-batch-size", "4"])
    with pytest.raises(ValueError, match="--global-batch-size 6 is not divisible by --micro-batch-size 4"):
        config.validate_layout(1)
    config = parse_config(TINY + ["--tensor-model-parallel-size", "3"])
    with pytest.raises(ValueError, match="--num-attention-heads 4 is not divisible by --tensor-model-parallel-size 3"):
        config.validate_layout(3)
    with pytest.raises(ValueError, match="world size 4 is not divisible"):
        config.validate_layout(4)


def test_generate_from_checkpoint(tmp_path, capsys):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import generate

    ckpt = tmp_path / "ckpt"
    pretrain_gpt.main(TINY + ["--train-iters", "2", "--save", str(ckpt), "--data-cache-path", str(tmp_path / "c")])
    capsys.readouterr()
    model, tokenizer, config = generate.load_for_inference(str(ckpt))
    assert config.model.hidden_size == 64 and config.precision.fp8_level == "O2"
    greedy = [generate.generate(model, tokenizer, "5 6 7", 8, 0.0, 0, config.model.seq_length, seed) for seed in (1, 2)]
    assert greedy[0] == greedy[1]  # temperature 0 is greedy: the seed does not matter
    sampled = generate.generate(model, tokenizer, "5 6 7", 8, 1.0, 5, config.model.seq_length, 3)
    assert sampled.startswith("5 6 7") and len(sampled.split()) > 3
    generate.main(["--load", str(ckpt), "--prompt", "1 2", "--max-new-tokens", "4"])
    assert capsys.readouterr().out.startswith("1 2")
