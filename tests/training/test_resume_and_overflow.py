"""Checkpoint resume is bit-identical; an inf/NaN gradient skips exactly its step; bad checkpoints fail clearly."""

import os

import pytest
import torch

from megatron_fp8.checkpoint.tracker import TRACKER, iteration_dir
from megatron_fp8.training import Trainer

from ..helpers import run_steps, tiny_config


@pytest.mark.parametrize("level", ["off", "O2", "O3"])
def test_resume_gives_bit_identical_losses(tmp_path, dataset, level):
    straight = Trainer(tiny_config(level))
    reference = run_steps(straight, dataset, 12)

    first = Trainer(tiny_config(level))
    run_steps(first, dataset, 6)
    first.save(str(tmp_path))
    resumed = Trainer(tiny_config(level))
    assert resumed.load(str(tmp_path)) and resumed.progress.iteration == 6
    assert run_steps(resumed, dataset, 6) == reference[6:]


def test_resume_with_dropout_restores_rng(tmp_path, dataset):
    def make():
        config = tiny_config("O2")
        config.model.hidden_dropout = config.model.attention_dropout = 0.1
        return Trainer(config)

    reference = run_steps(make(), dataset, 8)
    first = make()
    run_steps(first, dataset, 4)
    first.save(str(tmp_path))
    torch.manual_seed(999)  # disturb the RNG: the checkpoint must restore it
    resumed = make()
    resumed.load(str(tmp_path))
    assert run_steps(resumed, dataset, 4) == reference[4:]


@pytest.mark.parametrize("level", ["off", "O2"])
@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_overflow_skips_exactly_that_step(dataset, level, bad):
    trainer = Trainer(tiny_config(level))
    run_steps(trainer, dataset, 2)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    hidden = trainer.model.decoder.layers[0].mlp.linear_fc2
    hook = hidden.register_full_backward_pre_hook(lambda mod, g: (torch.full_like(g[0], bad),))
    run_steps(trainer, dataset, 1)
    hook.remove()
    assert trainer.progress.skipped_iterations == 1
    assert trainer.progress.nan_iterations <= 1  # inf x 0 inside the backward may turn inf into NaN
    for n, p in trainer.model.named_parameters():
        assert torch.equal(p.detach(), before[n]), f"{n} changed on a skipped step"
    losses = run_steps(trainer, dataset, 3)
    assert trainer.progress.skipped_iterations == 1 and all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(p.detach(), before[n]) for n, p in trainer.model.named_parameters())


def test_async_save_is_identical_to_sync(tmp_path, dataset):
    sync, background = Trainer(tiny_config()), Trainer(tiny_config())
    run_steps(sync, dataset, 2)
    run_steps(background, dataset, 2)
    sync.save(str(tmp_path / "sync"))
    background.save(str(tmp_path / "async"), async_save=True)
    run_steps(background, dataset, 1)  # training goes on while the writer thread runs
    background.finish_saves()
    for t in (Trainer(tiny_config()), Trainer(tiny_config())):
        assert t.load(str(tmp_path / "async")) and t.progress.iteration == 2
    a, b = Trainer(tiny_config()), Trainer(tiny_config())
    a.load(str(tmp_path / "sync"))
    b.load(str(tmp_path / "async"))
    assert run_steps(a, dataset, 2) == run_steps(b, dataset, 2)


def test_load_from_empty_dir_starts_fresh(tmp_path):
    assert Trainer(tiny_config()).load(str(tmp_path)) is False


def saved(tmp_path, dataset, level="O2"):
    trainer = Trainer(tiny_config(level))
    run_steps(trainer, dataset, 2)
    trainer.save(str(tmp_path))
    return os.path.join(iteration_dir(str(tmp_path), 2), "model_tp00_pp000.pt")


def test_config_mismatch_names_the_flag(tmp_path, dataset):
    saved(tmp_path, dataset)
    other = tiny_config()
    other.model.num_layers = 4
    with pytest.raises(ValueError, match="--num-layers=2.*--num-layers=4"):
        Trainer(other).load(str(tmp_path))
    with pytest.raises(ValueError, match="--fp8-level='O2'.*--fp8-level='O1'"):
        Trainer(tiny_config("O1")).load(str(tmp_path))


def test_truncated_corrupt_or_missing_shard_names_the_file(tmp_path, dataset):
    path = saved(tmp_path, dataset)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model_tp00_pp000.pt: truncated"):
        Trainer(tiny_config()).load(str(tmp_path))
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(flipped))
    with pytest.raises(ValueError, match="model_tp00_pp000.pt: checksum mismatch"):
        Trainer(tiny_config()).load(str(tmp_path))
    os.remove(path)
    with pytest.raises(FileNotFoundError, match="model_tp00_pp000.pt: missing"):
        Trainer(tiny_config()).load(str(tmp_path))


def test_layout_mismatch_points_to_the_converter(tmp_path, dataset):
    from megatron_fp8.checkpoint.distributed import check_layout

    saved(tmp_path, dataset)
    metadata = {"layout": {"tp": 2, "pp": 1, "dp": 1, "distributed_optimizer": False}}
    with pytest.raises(ValueError, match="tools/convert_checkpoint.py"):
        check_layout(metadata, tiny_config(), Trainer(tiny_config()).pstate, str(tmp_path / "metadata.json"))


def test_tracker_pointing_nowhere_and_garbage_tracker(tmp_path, dataset):
    saved(tmp_path, dataset)
    (tmp_path / TRACKER).write_text("7\n")
    with pytest.raises(FileNotFoundError, match="names iteration 7"):
        Trainer(tiny_config()).load(str(tmp_path))
    (tmp_path / TRACKER).write_text("latest\n")
    with pytest.raises(ValueError, match=TRACKER):
        Trainer(tiny_config()).load(str(tmp_path))


def test_crash_during_save_keeps_previous_checkpoint(tmp_path, dataset, monkeypatch):
    saved(tmp_path, dataset)
    trainer = Trainer(tiny_config())
    run_steps(trainer, dataset, 3)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("megatron_fp8.checkpoint.distributed.publish", crash)
    with pytest.raises(OSError):
        trainer.save(str(tmp_path))
    monkeypatch.undo()
    assert (tmp_path / TRACKER).read_text().strip() == "2"
    fresh = Trainer(tiny_config())
    assert fresh.load(str(tmp_path)) and fresh.progress.iteration == 2


def test_sigkill_during_training_with_saves_leaves_a_loadable_checkpoint(tmp_path):
    """Kill the training process at an arbitrary moment of a run that saves every iteration: whatever was
    being written, the tracker names a complete checkpoint that loads."""
    import signal
    import subprocess
    import sys
    import time

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ckpt = tmp_path / "ckpt"
    cmd = [sys.executable, os.path.join(root, "pretrain_gpt.py"), "--mock-data", "--vocab-size", "500",
           "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", "32",
           "--micro-batch-size", "2", "--train-iters", "100000", "--save", str(ckpt), "--save-interval", "1",
           "--log-interval", "50", "--eval-interval", "100000", "--data-cache-path", str(tmp_path / "cache")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (ckpt / TRACKER).exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1.5)  # let it run through more saves, then kill it wherever it is
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (ckpt / TRACKER).exists(), proc.stderr.read().decode()[-2000:]
    config = tiny_config("O2")
    config.model.vocab_size = 512  # NullTokenizer(500) has 501 tokens, padded to a multiple of 128
    config.model.make_vocab_size_divisible_by = 128
    config.model.max_position_embeddings = 32
    config.training.micro_batch_size = config.training.global_batch_size = 2
    trainer = Trainer(config)
    assert trainer.load(str(ckpt)) and trainer.progress.iteration >= 1
