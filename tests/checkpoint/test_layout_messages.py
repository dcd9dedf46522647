"""Messages that say what is wrong (issue 17, item 9): another layout is named before the vocabulary
padding it causes, the converter command it suggests works when pasted, and the FP8 recipe is checked."""

import shlex

import pytest

from megatron_fp8.checkpoint.distributed import check_layout, read_metadata
from megatron_fp8.parallel.state import ParallelState
from megatron_fp8.training import Trainer

from ..helpers import tiny_config
from .test_safe_load import convert_checkpoint

UNPADDED = 130  # pads to 192 at TP1 (multiple of 64) but to 256 at TP2 (multiple of 128)


def config(tp: int, **precision):
    c = tiny_config("O2", tp=tp)
    c.model.unpadded_vocab_size, c.model.vocab_size = UNPADDED, {1: 192, 2: 256}[tp]
    for key, value in precision.items():
        setattr(c.precision.recipe, key, value)
    return c


def tp1_checkpoint(root: str) -> str:
    trainer = Trainer(config(1))
    trainer.progress.iteration = 4
    trainer.save(root)
    return root


def converter_command_in(message: str) -> list[str]:
    command = message.split("Convert it first: ", 1)[1].split(", then resume with", 1)[0]
    argv = shlex.split(command)
    assert argv[:2] == ["python", "tools/convert_checkpoint.py"]
    return argv[2:]


def test_tp1_checkpoint_at_tp2_names_the_tp_size_and_a_working_converter_command(tmp_path):
    root = tp1_checkpoint(str(tmp_path / "ckpt"))
    with pytest.raises(ValueError) as err:
        Trainer(config(2), ParallelState(tp_size=2, tp_rank=0)).load(root)
    message = str(err.value)
    assert "saved with another parallel layout (TP 1 vs 2)" in message and "--vocab-size" not in message
    argv = converter_command_in(message)
    assert argv[argv.index("--load") + 1] == str(tmp_path / "ckpt")  # the checkpoint root, not iter_XXXXXXX
    assert "--target-use-distributed-optimizer" not in argv
    convert_checkpoint.main(argv)  # pasted as is
    target = message.rsplit("then resume with --load ", 1)[1].split()[0]
    _, metadata = read_metadata(target)
    assert metadata["layout"]["tp"] == 2 and metadata["config"]["model"]["vocab_size"] == 256
    resumed = Trainer(config(2), ParallelState(tp_size=2, tp_rank=0))
    assert resumed.load(target) and resumed.progress.iteration == 4


def test_distributed_optimizer_run_gets_the_flags_it_needs(tmp_path):
    root = tp1_checkpoint(str(tmp_path / "ckpt"))
    _, metadata = read_metadata(root)
    here = config(1)
    here.parallel.use_distributed_optimizer = True
    with pytest.raises(ValueError, match="distributed optimizer False vs True") as err:
        check_layout(metadata, here, ParallelState(dp_size=2), str(tmp_path / "ckpt/iter_0000004/metadata.json"))
    argv = converter_command_in(str(err.value))
    assert argv[argv.index("--target-data-parallel-size") + 1] == "2" and "--target-use-distributed-optimizer" in argv
    convert_checkpoint.main(argv)
    _, converted = read_metadata(str(err.value).rsplit("then resume with --load ", 1)[1].split()[0])
    assert converted["layout"] == {"tp": 1, "pp": 1, "dp": 2, "distributed_optimizer": True}


@pytest.mark.parametrize("field,value,flag", [("recipe", "current", "--fp8-recipe"),
                                              ("format", "e4m3", "--fp8-format"),
                                              ("amax_history_len", 4, "--fp8-amax-history-len")])
def test_fp8_recipe_and_format_are_checked_on_load(tmp_path, field, value, flag):
    root = tp1_checkpoint(str(tmp_path / "ckpt"))
    with pytest.raises(ValueError, match=rf"metadata.json: checkpoint was saved with {flag}=.*this run has {flag}="):
        Trainer(config(1, **{field: value})).load(root)
