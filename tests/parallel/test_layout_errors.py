"""Bad layouts stop before any work (no process group, no data, no files) with a message naming the flags."""

import pytest
import torch.distributed as dist

from megatron_fp8.parallel.groups import init_distributed
from megatron_fp8.training import pretrain

from ..helpers import tiny_config

CASES = [  # (tp, pp, world, training overrides, message)
    (3, 1, 3, {}, "--num-attention-heads 4 is not divisible by --tensor-model-parallel-size 3"),
    (1, 3, 3, {}, "--num-layers 2 is not divisible by --pipeline-model-parallel-size 3"),
    (2, 2, 6, {}, "world size 6 is not divisible by --tensor-model-parallel-size 2 x "
                  "--pipeline-model-parallel-size 2"),
    (2, 1, 4, {"global_batch_size": 12}, "--global-batch-size 12 is not divisible by --micro-batch-size 4 x "
                                         "data-parallel size 2"),
]


@pytest.mark.parametrize("tp,pp,world,training,message", CASES)
def test_init_distributed_rejects_layout(monkeypatch, tp, pp, world, training, message):
    monkeypatch.setenv("WORLD_SIZE", str(world))
    with pytest.raises(ValueError) as err:
        init_distributed(tiny_config("O2", tp, pp, **training))
    assert message in str(err.value)
    assert not dist.is_initialized()


def test_pretrain_stops_before_any_work(monkeypatch, tmp_path):
    """The check runs first in ``pretrain``: no group is created, no data built, nothing saved."""
    monkeypatch.setenv("WORLD_SIZE", "3")
    config = tiny_config("O2", 3, 1, save=str(tmp_path / "ckpt"))
    config.model.vocab_size = None  # building data would have set it
    with pytest.raises(ValueError, match="--tensor-model-parallel-size 3"):
        pretrain(config)
    assert not dist.is_initialized() and config.model.vocab_size is None
    assert list(tmp_path.iterdir()) == []


def test_sequence_parallel_needs_tensor_parallelism():
    with pytest.raises(ValueError, match="--sequence-parallel needs --tensor-model-parallel-size > 1"):
        tiny_config("O2", 1, 1, sp=True)
