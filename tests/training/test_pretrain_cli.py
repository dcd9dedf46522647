"""pretrain_gpt.py end to end on mock data: log lines, JSON metrics, checkpoint, resume, flag errors."""

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import pretrain_gpt  # noqa: E402
from megatron_fp8.arguments import parse_config  # noqa: E402

TINY = ["--mock-data", "--tokenizer-type", "NullTokenizer", "--vocab-size", "200", "--num-layers", "2",
        "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", "32", "--micro-batch-size", "2",
        "--global-batch-size", "4", "--log-interval", "2", "--eval-interval", "4", "--eval-iters", "1",
        "--lr-warmup-iters", "2"]


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
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "4"

    pretrain_gpt.main(TINY + ["--train-iters", "6", "--load", str(ckpt), "--save", str(ckpt),
                              "--data-cache-path", str(tmp_path / "cache")])
    out = capsys.readouterr().out
    assert "loaded checkpoint" in out and "iteration        6/       6 |" in out
    assert "iteration        2/" not in out
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "6"


@pytest.mark.parametrize("flags,message", [
    (["--hidden-size", "65"], "--hidden-size 65 must be divisible by --num-attention-heads 4"),
    (["--fp8-level", "O4"], "--fp8-level must be one of"),
    (["--fp8-recipe", "magic"], "--fp8-recipe"),
    (["--sequence-parallel"], "--sequence-parallel needs --tensor-model-parallel-size > 1"),
    (["--exp-avg-dtype", "int8"], "--exp-avg-dtype"),
    (["--fp8-level", "off", "--grad-reduce-dtype", "fp8"], "--grad-reduce-dtype fp8 needs"),
    (["--fp8-level", "O3", "--main-params-dtype", "fp16", "--exp-avg-dtype", "fp8"], None),
    (["--min-lr", "1", "--lr", "0.1"], "--min-lr"),
    (["--save-interval", "5"], "--save-interval needs --save"),
    (["--seq-length", "64", "--max-position-embeddings", "32"], "--seq-length 64 exceeds"),
])
def test_bad_flags_name_the_flag(flags, message, capsys):
    argv = TINY + flags
    if message is None:
        parse_config(argv)  # a valid explicit combination
        return
    with pytest.raises(SystemExit):
        parse_config(argv)
    assert message in capsys.readouterr().err


def test_world_layout_errors():
    config = parse_config(TINY + ["--global-batch-size", "6", "--micro-batch-size", "4"])
    with pytest.raises(ValueError, match="--global-batch-size 6 is not divisible by --micro-batch-size 4"):
        config.check_world(1)
    config = parse_config(TINY + ["--tensor-model-parallel-size", "3"])
    with pytest.raises(ValueError, match="--num-attention-heads 4 is not divisible by --tensor-model-parallel-size 3"):
        config.check_world(3)
    with pytest.raises(ValueError, match="world size 4 is not divisible"):
        config.check_world(4)


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
