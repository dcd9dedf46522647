"""Publishing never destroys the only copy (issue 17, item 2), and leftovers of interrupted saves are
explained, recovered or cleaned; a full disk is named as such and leaves no litter (item 10)."""

import builtins
import os

import pytest

from megatron_fp8 import fsutil
from megatron_fp8.checkpoint import distributed
from megatron_fp8.checkpoint.tracker import TRACKER, iteration_dir, repair
from megatron_fp8.fsutil import DiskFullError
from megatron_fp8.training import Trainer

from ..helpers import tiny_config


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (no cleanup either)."""


def trained(iteration: int) -> Trainer:
    """A trainer whose progress says ``iteration`` (the save mechanics do not need real steps)."""
    trainer = Trainer(tiny_config("O2"))
    trainer.progress.iteration = iteration
    return trainer


def killed_between_renames(monkeypatch, trainer: Trainer, root: str) -> None:
    """Re-save the same iteration and die after the old copy moved aside, before the new one moved in."""
    real_replace = os.replace

    def replace(src, dst):
        if str(src).endswith(".tmp"):
            raise Killed()
        return real_replace(src, dst)

    monkeypatch.setattr(fsutil.os, "replace", replace)
    monkeypatch.setattr(distributed, "remove_quietly", lambda path: None)  # a killed process cleans nothing
    with pytest.raises(Killed):
        trainer.save(root)
    monkeypatch.undo()


def test_kill_between_renames_of_a_resave_keeps_a_loadable_copy(tmp_path, monkeypatch, capsys):
    root = str(tmp_path)
    trainer = trained(2)
    trainer.save(root)
    killed_between_renames(monkeypatch, trainer, root)
    final = iteration_dir(root, 2)
    assert not os.path.exists(final) and os.path.isdir(final + ".old") and os.path.isdir(final + ".tmp")
    assert (tmp_path / TRACKER).read_text().strip() == "2"
    resumed = Trainer(tiny_config("O2"))
    assert resumed.load(root) and resumed.progress.iteration == 2  # reads the complete .old copy
    assert f"{final} is missing" in capsys.readouterr().out
    repair(root)  # what a run that writes here does first, under its lock
    assert os.path.isdir(final) and not os.path.exists(final + ".old") and not os.path.exists(final + ".tmp")
    again = Trainer(tiny_config("O2"))
    assert again.load(root) and again.progress.iteration == 2


def test_leftover_of_the_old_publish_is_recovered(tmp_path, capsys):
    """The state the old publish() left (only iter_N.tmp and a tracker naming N) loads and is repaired."""
    root = str(tmp_path)
    trained(2).save(root)
    os.rename(iteration_dir(root, 2), iteration_dir(root, 2) + ".tmp")
    assert Trainer(tiny_config("O2")).load(root)
    repair(root)
    assert os.path.isdir(iteration_dir(root, 2)) and "restored it from" in capsys.readouterr().out


def test_unfinished_save_is_ignored_then_removed(tmp_path, capsys):
    root = str(tmp_path)
    trained(2).save(root)
    partial = iteration_dir(root, 4) + ".tmp"
    os.makedirs(partial)
    open(os.path.join(partial, "model_tp00_pp000.pt"), "wb").write(b"\0" * 10)
    fresh = Trainer(tiny_config("O2"))
    assert fresh.load(root) and fresh.progress.iteration == 2
    repair(root)
    assert not os.path.exists(partial) and "left by an interrupted save" in capsys.readouterr().out


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_full_disk_names_the_file_and_leaves_no_litter(tmp_path, monkeypatch):
    """Writes of the optimizer shard go to /dev/full (the kernel's always-full device): the error says
    'no space left' naming the file, the staging folder is gone, the previous checkpoint is intact."""
    root = str(tmp_path)
    trained(2).save(root)
    trainer = trained(3)

    def full_open(path, mode="r", *args, **kwargs):
        if str(path).endswith("optim_tp00_pp000_dp000.pt") and "w" in mode:
            return builtins.open("/dev/full", mode, *args, **kwargs)
        return builtins.open(path, mode, *args, **kwargs)

    monkeypatch.setattr(distributed, "open", full_open, raising=False)
    with pytest.raises(DiskFullError, match=r"iter_0000003.tmp/optim_tp00_pp000_dp000.pt: no space left on device"):
        trainer.save(root)
    monkeypatch.undo()
    assert sorted(os.listdir(root)) == ["iter_0000002", TRACKER]
    fresh = Trainer(tiny_config("O2"))
    assert fresh.load(root) and fresh.progress.iteration == 2


def test_non_utf8_tracker_names_the_file(tmp_path):
    trained(1).save(str(tmp_path))
    (tmp_path / TRACKER).write_bytes(b"\xff\xfe5\n")
    with pytest.raises(ValueError, match=rf"{TRACKER}: expected an iteration number.*echo"):
        Trainer(tiny_config("O2")).load(str(tmp_path))
