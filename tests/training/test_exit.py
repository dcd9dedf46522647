"""Early exits: --exit-signal-handler (SIGTERM: save, exit 0, every rank agrees), --exit-duration-in-mins."""

import os
import signal
import subprocess
import sys
import time
import types

from megatron_fp8.checkpoint.tracker import TRACKER
from megatron_fp8.exit_conditions import ExitConditions
from megatron_fp8.parallel.local_spawn import spawn
from megatron_fp8.training import Trainer

from ..helpers import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

MOCK = ["--mock-data", "--vocab-size", "100", "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
        "--seq-length", "32", "--micro-batch-size", "4", "--global-batch-size", "8", "--fp8-level", "off",
        "--lr-warmup-iters", "2", "--hidden-dropout", "0", "--attention-dropout", "0", "--eval-iters", "0"]


def _loads(ckpt) -> Trainer:
    config = tiny_config("off", lr_warmup_iters=2)
    config.model.vocab_size = 128  # NullTokenizer(100): 101 ids padded to a multiple of 128
    config.model.make_vocab_size_divisible_by = 128
    trainer = Trainer(config)
    assert trainer.load(str(ckpt))
    return trainer


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    ckpt = tmp_path / "ckpt"
    cmd = [sys.executable, "-u", os.path.join(ROOT, "pretrain_gpt.py"), *MOCK, "--train-iters", "100000",
           "--log-interval", "1", "--exit-signal-handler", "--save", str(ckpt), "--save-interval", "1000",
           "--data-cache-path", str(tmp_path / "cache")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:  # wait until it trains, then preempt it
        lines.append(line)
        if " iteration " in line and "consumed samples" in line:
            break
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    out = "".join(lines) + out
    assert proc.returncode == 0, out[-3000:]
    assert "exiting program after receiving SIGTERM (--exit-signal-handler)" in out
    saved = int((ckpt / TRACKER).read_text())
    assert f"saved checkpoint at iteration {saved}" in out and saved >= 1
    assert _loads(ckpt).progress.iteration == saved


def test_exit_duration_stops_after_the_iteration_that_exceeds_it(tmp_path, capsys):
    import pretrain_gpt

    ckpt = tmp_path / "ckpt"
    # a millionth of a minute (60 us) is over after the first iteration: no timing is asserted
    pretrain_gpt.main(MOCK + ["--train-iters", "50", "--exit-duration-in-mins", "1e-6", "--save", str(ckpt),
                              "--data-cache-path", str(tmp_path / "cache")])
    out = capsys.readouterr().out
    assert "(--exit-duration-in-mins)" in out and "exiting program after" in out
    assert (ckpt / TRACKER).read_text().strip() == "1" and _loads(ckpt).progress.iteration == 1


def test_exit_duration_uses_the_clock_it_is_given():
    now = [100.0]
    t = types.SimpleNamespace(exit_interval=None, exit_duration_in_mins=2.0, exit_signal_handler=False)
    exits = ExitConditions(t, start_time=100.0, clock=lambda: now[0])
    now[0] = 100.0 + 119.0
    assert exits.check(1) is None
    now[0] = 100.0 + 121.0
    assert "after 2.02 minutes" in exits.check(2)


def _signal_one_rank(rank: int, world: int):
    """Only rank 0 receives SIGTERM; both ranks must decide to stop after the same iteration."""
    t = types.SimpleNamespace(exit_interval=None, exit_duration_in_mins=None, exit_signal_handler=True)
    exits = ExitConditions(t, start_time=time.time(), world_size=world)
    try:
        before = exits.check(1)
        if rank == 0:
            os.kill(os.getpid(), signal.SIGTERM)  # recorded by the handler, the process lives on
        return before, exits.check(2)
    finally:
        exits.close()


def test_all_ranks_agree_to_stop_when_one_receives_sigterm():
    assert spawn(_signal_one_rank, 2) == [(None, "exiting program after receiving SIGTERM (--exit-signal-handler)")] * 2
