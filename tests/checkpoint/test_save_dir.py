"""One run per save directory, and no run overwrites checkpoints it did not load (issue 17, items 3, 4).

The refusals happen at start-up, before data or model are built, so these runs of pretrain_gpt.py are quick.
"""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from megatron_fp8.checkpoint.lock import LOCK_FILE, SaveDirLock, SaveDirLockedError
from megatron_fp8.checkpoint.paths import prepare
from megatron_fp8.checkpoint.tracker import TRACKER, iteration_dir
from megatron_fp8.training import Trainer

from ..helpers import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
import pretrain_gpt  # noqa: E402

from ..training.test_pretrain_cli import TINY  # noqa: E402


def run_cli(capsys, *flags) -> str:
    """pretrain_gpt.py with ``flags``, expected to stop at start-up; returns its error message."""
    with pytest.raises(SystemExit) as exit_:
        pretrain_gpt.main(TINY + list(flags))
    assert exit_.value.code == 1
    return capsys.readouterr().err


def checkpoint(root: str, iteration: int = 3) -> str:
    trainer = Trainer(tiny_config("O2"))
    trainer.progress.iteration = iteration
    trainer.save(root)
    return iteration_dir(root, iteration)


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock of tmp_path/run (stands for a run in progress)."""
    save = str(tmp_path / "run")
    code = ("import sys, time; from megatron_fp8.checkpoint.lock import SaveDirLock; "
            f"SaveDirLock({save!r}).acquire(); print('held', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.stdout.readline().strip() == b"held"
    yield save, proc.pid
    proc.kill()
    proc.wait()


def test_second_writer_fails_naming_the_running_one(holder, capsys):
    save, pid = holder
    err = run_cli(capsys, "--save", save, "--train-iters", "1")
    assert f"--save {save} is in use by another run (pid {pid} on host {socket.gethostname()}" in err
    assert json.load(open(os.path.join(save, LOCK_FILE)))["pid"] == pid  # the holder's lock is untouched


def test_stale_lock_is_taken_over_with_a_warning(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    save = tmp_path / "run"
    save.mkdir()
    (save / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "earlier",
                                              "argv": ["pretrain_gpt.py"]}))
    lines = []
    lock = SaveDirLock(str(save), lines.append).acquire()
    assert f"took over the stale lock {save / LOCK_FILE}" in lines[0] and f"pid {dead.pid}" in lines[0]
    assert json.load(open(save / LOCK_FILE))["pid"] == os.getpid()
    with pytest.raises(SaveDirLockedError, match=f"pid {os.getpid()}"):
        SaveDirLock(str(save)).acquire()  # a live holder (this process) is not taken over
    lock.release()
    assert not (save / LOCK_FILE).exists()


def test_load_of_a_missing_path_or_an_iteration_folder_is_an_error(tmp_path, capsys):
    missing = str(tmp_path / "chekpoints")
    assert f"--load {missing}: no checkpoint: the path does not exist" in run_cli(capsys, "--load", missing)
    folder = checkpoint(str(tmp_path / "ckpt"))
    err = run_cli(capsys, "--load", folder, "--save", str(tmp_path / "new"))
    assert "this is the folder of one saved iteration" in err and f"--load {tmp_path / 'ckpt'} " in err
    assert not (tmp_path / "new").exists() or not os.listdir(tmp_path / "new")


def test_save_holding_checkpoints_that_were_not_loaded_is_refused(tmp_path, capsys):
    save = str(tmp_path / "ckpt")
    checkpoint(save)
    err = run_cli(capsys, "--save", save, "--train-iters", "1")
    assert f"--save {save} already holds checkpoints (latest iteration 3) and this run starts from scratch" in err
    assert f"pass --load {save}" in err
    other = str(tmp_path / "other")
    checkpoint(other, 5)
    assert "this run loads" in run_cli(capsys, "--save", save, "--load", other)
    assert (tmp_path / "ckpt" / TRACKER).read_text().strip() == "3" and not (tmp_path / "ckpt" / LOCK_FILE).exists()


def test_first_run_with_save_and_load_the_same_empty_dir_starts_with_megatrons_warning(tmp_path):
    lines = []
    save = str(tmp_path / "fresh")
    loads, lock = prepare(save, save, lines.append)
    text = "\n".join(lines)
    assert loads is False and "could not find the metadata file" in text and "start from random" in text
    lock.release()


def test_quickstart_loads_its_own_directory_and_a_finished_run_is_not_saved_again(tmp_path, capsys):
    """The quick start passes --load and --save of one directory, so running it twice resumes; a run whose
    checkpoint already reached --train-iters says so and leaves the checkpoint as it is."""
    q = pretrain_gpt.QUICKSTART
    assert q[q.index("--load") + 1] == q[q.index("--save") + 1]
    ckpt = str(tmp_path / "ckpt")
    flags = TINY + ["--train-iters", "2", "--save", ckpt, "--load", ckpt, "--data-cache-path", str(tmp_path / "c")]
    pretrain_gpt.main(flags)
    metadata = os.path.join(iteration_dir(ckpt, 2), "metadata.json")
    before = os.stat(metadata).st_mtime_ns
    capsys.readouterr()
    time.sleep(0.01)
    pretrain_gpt.main(flags)
    out = capsys.readouterr().out
    assert "already reached --train-iters 2: nothing to train" in out and "saved checkpoint" not in out
    assert os.stat(metadata).st_mtime_ns == before and sorted(os.listdir(ckpt)) == ["iter_0000002", TRACKER]
