"""No load path runs code from a checkpoint (issue 17, item 1): training resume, the converter, generate and
HF export all refuse a shard carrying a planted pickle payload, naming the file; older files still load."""

import json
import os
import random
import shutil
import sys

import numpy as np
import pytest
import torch

from megatron_fp8.checkpoint.distributed import read_metadata
from megatron_fp8.checkpoint.safe_load import UnsafeCheckpointError
from megatron_fp8.checkpoint.tracker import METADATA, iteration_dir
from megatron_fp8.fsutil import file_sha256 as sha256
from megatron_fp8.training import Trainer

from ..helpers import tiny_config
from .poison import assert_payload_is_live, poison

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, ROOT)
import convert_checkpoint  # noqa: E402
import generate  # noqa: E402

MODEL, OPTIM, RNG = "model_tp00_pp000.pt", "optim_tp00_pp000_dp000.pt", "rng_rank00000.pt"


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("clean") / "ckpt")
    trainer = Trainer(tiny_config("O2"))
    trainer.progress.iteration = 1  # the files' contents matter here, not trained values
    trainer.save(root)
    return root


@pytest.fixture
def planted(clean, tmp_path):
    """(a copy of the checkpoint, marker path, poison(name) -> poisoned file path)."""
    root, marker = str(tmp_path / "ckpt"), str(tmp_path / "PLANTED_CODE_RAN")
    shutil.copytree(clean, root)

    def plant(name: str) -> str:
        path = poison(root, name, marker)
        assert_payload_is_live(path, marker)
        return path

    return root, marker, plant


@pytest.mark.parametrize("name", [MODEL, OPTIM, RNG])
def test_training_resume_refuses_planted_code(planted, name):
    root, marker, plant = planted
    plant(name)
    with pytest.raises(UnsafeCheckpointError, match=rf"{name}: refused to load.*posix.system"):
        Trainer(tiny_config("O2")).load(root)
    assert not os.path.exists(marker)


def test_pretrain_cli_resume_refuses_planted_code(tmp_path, capsys):
    import pretrain_gpt

    from ..training.test_pretrain_cli import TINY

    ckpt, marker = str(tmp_path / "ckpt"), str(tmp_path / "PLANTED_CODE_RAN")
    flags = TINY + ["--data-cache-path", str(tmp_path / "cache"), "--save", ckpt, "--load", ckpt]
    pretrain_gpt.main(flags + ["--train-iters", "1"])
    assert_payload_is_live(poison(ckpt, MODEL, marker), marker)
    with pytest.raises(SystemExit) as exit_:
        pretrain_gpt.main(flags + ["--train-iters", "2"])
    assert exit_.value.code == 1 and not os.path.exists(marker)
    assert f"{MODEL}: refused to load" in capsys.readouterr().err


def test_converter_refuses_planted_code(planted, tmp_path):
    root, marker, plant = planted
    plant(MODEL)
    with pytest.raises(UnsafeCheckpointError, match=f"{MODEL}: refused to load"):
        convert_checkpoint.main(["--load", root, "--save", str(tmp_path / "out"), "--target-tensor-parallel-size",
                                 "1", "--target-pipeline-parallel-size", "1"])
    assert not os.path.exists(marker) and not os.path.exists(tmp_path / "out" / "iter_0000001")


def test_generate_refuses_planted_code(planted):
    root, marker, plant = planted
    plant(OPTIM)
    with pytest.raises(UnsafeCheckpointError, match=f"{OPTIM}: refused to load"):
        generate.main(["--load", root, "--prompt", "1 2 3", "--max-new-tokens", "2"])
    assert not os.path.exists(marker)


def test_hf_export_refuses_planted_code(planted, tmp_path):
    pytest.importorskip("transformers")
    root, marker, plant = planted
    plant(MODEL)
    with pytest.raises(SystemExit, match=f"{MODEL}: refused to load"):
        convert_checkpoint.main(["--load", root, "--hf-export", str(tmp_path / "hf")])
    assert not os.path.exists(marker) and not os.path.exists(tmp_path / "hf")


def test_rng_state_is_stored_as_plain_data(clean):
    directory, _ = read_metadata(clean)
    state = torch.load(os.path.join(directory, RNG), weights_only=True)  # torch's own safe loader, no allow-list
    assert isinstance(state["numpy"]["words"], torch.Tensor) and state["numpy"]["key"] == "MT19937"


def test_older_checkpoint_with_numpy_rng_array_still_loads(clean, tmp_path):
    """Files written before the plain RNG form hold numpy's state as an ndarray: they load, safely, and
    restore numpy's stream."""
    root = str(tmp_path / "old")
    shutil.copytree(clean, root)
    directory = iteration_dir(root, 1)
    path = os.path.join(directory, RNG)
    state = torch.load(path, weights_only=True)
    np.random.seed(3)
    state["numpy"] = np.random.get_state()  # the old form: a tuple holding a uint32 ndarray
    expected = np.random.rand(4)
    torch.save(state, path)
    metadata = json.load(open(os.path.join(directory, METADATA)))
    metadata["files"][RNG] = {"sha256": sha256(path), "bytes": os.path.getsize(path)}
    json.dump(metadata, open(os.path.join(directory, METADATA), "w"))
    random.seed(0)
    np.random.seed(99)
    assert Trainer(tiny_config("O2")).load(root)
    assert np.array_equal(np.random.rand(4), expected)
