"""--finetune, --no-load-optim, --no-load-rng, --no-save-optim, --no-save-rng (Megatron's semantics), and a
checkpoint of another precision level or layout: converted on load with --finetune, refused otherwise."""

import math
import os

import pytest
import torch

from megatron_fp8.checkpoint.universal import read_universal, write_layout
from megatron_fp8.checkpoint.state import config_from_summary
from megatron_fp8.finetune import load_checkpoint
from megatron_fp8.layers.weights import real_value
from megatron_fp8.training import Trainer

from ..helpers import PatternDataset, run_steps, tiny_config


def _trained(tmp_path, level="O2", steps=2, **training):
    trainer = Trainer(tiny_config(level, **training))
    run_steps(trainer, PatternDataset(), steps)
    trainer.save(str(tmp_path / "ckpt"))
    return trainer, str(tmp_path / "ckpt")


def _weights(trainer):
    return {n: real_value(p).float().clone() for n, p in trainer.model.named_parameters()}


def _fresh(level="O2", **training):
    return Trainer(tiny_config(level, **training))


def test_finetune_loads_weights_only(tmp_path):
    source, ckpt = _trained(tmp_path)
    tuned = _fresh(finetune=True, load=ckpt)
    assert load_checkpoint(tuned, ckpt, printer=lambda *a: None)
    assert vars(tuned.progress) == {"iteration": 0, "consumed_samples": 0, "skipped_iterations": 0,
                                    "nan_iterations": 0, "scheduler_samples": 0}
    assert tuned.optimizer.step_count == 0
    assert all(torch.count_nonzero(st.exp_avg.view(torch.uint8)) == 0 for st in tuned.optimizer.state.values())
    want = _weights(source)
    for name, value in _weights(tuned).items():
        assert torch.equal(value, want[name]), name
    # the same model, FP8 scaling state included: the same validation loss
    assert tuned.evaluate(PatternDataset(seed=1), 1) == pytest.approx(source.evaluate(PatternDataset(seed=1), 1),
                                                                      rel=1e-6)


@pytest.mark.parametrize("level", ["O2", "O3"])
def test_finetune_an_off_checkpoint_at_an_fp8_level(tmp_path, level):
    """O2/O3 fine-tuning of an ``off`` checkpoint: its float32 weights are requantized into this level's
    storage; O3's FP16 master starts from the float32 values, not from the FP8 weight."""
    source, ckpt = _trained(tmp_path, level="off")
    want = _weights(source)
    tuned = _fresh(level, finetune=True, load=ckpt)
    load_checkpoint(tuned, ckpt, printer=lambda *a: None)
    fp8_rel = 2.0 ** -3 if level == "O3" else 2.0 ** -10  # E4M3 / FP16 relative spacing
    for name, p in tuned.model.named_parameters():
        err = (real_value(p).float() - want[name]).abs().max() / want[name].abs().max()
        assert err <= fp8_rel, (name, float(err))
    if level == "O3":
        name = "decoder.layers.0.mlp.linear_fc1.weight"
        st = tuned.optimizer.state[name]
        master = st.master.float() * (st.master_sinv if st.master_sinv is not None else 1.0)
        assert (master - want[name]).abs().max() <= 2.0 ** -10 * want[name].abs().max()
    assert math.isfinite(run_steps(tuned, PatternDataset(), 1)[0])  # and trains at this level


def test_finetune_reads_another_layout(tmp_path):
    """A TP2 checkpoint fine-tunes in one process: the universal form reshards it on load."""
    source, ckpt = _trained(tmp_path, level="off")
    universal = read_universal(ckpt)
    tp2 = str(tmp_path / "tp2")
    write_layout(universal, config_from_summary(universal["config"]), 2, 1, 1, tp2)
    tuned = _fresh("off", finetune=True, load=tp2)
    load_checkpoint(tuned, tp2, printer=lambda *a: None)
    want = _weights(source)
    for name, value in _weights(tuned).items():
        assert torch.equal(value, want[name]), name


def test_a_resume_at_another_level_names_the_converter(tmp_path):
    _, ckpt = _trained(tmp_path, level="off", steps=1)
    with pytest.raises(ValueError, match=r"--fp8-level='off', this run has --fp8-level='O2'.*--finetune.*"
                                         r"tools/convert_checkpoint.py --load .* --target-fp8-level O2"):
        load_checkpoint(_fresh("O2", load=ckpt), ckpt)


def test_finetune_errors(tmp_path):
    with pytest.raises(ValueError, match="--finetune: --load .* holds no checkpoint"):
        load_checkpoint(_fresh(finetune=True, load=str(tmp_path)), str(tmp_path))
    _, ckpt = _trained(tmp_path, level="off", steps=1)
    wider = tiny_config("off", finetune=True, load=ckpt)
    wider.model.num_layers = 4
    with pytest.raises(ValueError, match="checkpoint was saved with --num-layers=2, this run has 4"):
        load_checkpoint(Trainer(wider), ckpt)
    with pytest.raises(ValueError, match="--finetune needs --load"):
        tiny_config(finetune=True)


def test_no_save_and_no_load_flags(tmp_path):
    source, ckpt = _trained(tmp_path, level="O3", steps=2, no_save_optim=True, no_save_rng=True)
    files = os.listdir(os.path.join(ckpt, "iter_0000002"))
    assert not any(f.startswith(("optim_", "rng_")) for f in files) and any(f.startswith("model_") for f in files)
    with pytest.raises(ValueError, match="no optimizer state .*--no-save-optim.*--no-load-optim, or --finetune"):
        load_checkpoint(_fresh("O3", load=ckpt), ckpt)
    resumed = _fresh("O3", load=ckpt, no_load_optim=True, no_load_rng=True)
    assert load_checkpoint(resumed, ckpt)
    assert resumed.progress.iteration == 2 and resumed.optimizer.step_count == 0  # iteration kept, optimizer fresh
    want = _weights(source)
    for name, st in resumed.optimizer.state.items():  # O3's master restarts from the loaded (FP8) weights
        if st.master is not None:
            master = st.master.float() * (st.master_sinv if st.master_sinv is not None else 1.0)
            torch.testing.assert_close(master, want[name], rtol=2.0 ** -10, atol=0)

    _, with_rng = _trained(tmp_path / "rng", level="off", steps=1)
    for no_load_rng in (True, False):
        trainer = _fresh("off", load=with_rng, no_load_rng=no_load_rng)
        torch.manual_seed(99)
        state = torch.get_rng_state()
        load_checkpoint(trainer, with_rng)
        # --no-load-rng leaves this process's RNG alone; a plain resume restores the saved one
        assert torch.equal(torch.get_rng_state(), state) == no_load_rng


def test_flags_parse_with_megatron_names(tmp_path):
    from megatron_fp8.arguments import parse_config

    config = parse_config(["--finetune", "--load", str(tmp_path), "--no-load-optim", "--no-load-rng",
                           "--no-save-optim", "--no-save-rng", "--calculate-per-token-loss", "--mock-data"])
    t = config.training
    assert t.finetune and t.no_load_optim and t.no_load_rng and t.no_save_optim and t.no_save_rng
    assert any(note.startswith("--calculate-per-token-loss: accepted") for note in config.startup_notes)
    with pytest.raises(SystemExit):
        parse_config(["--finetune", "--mock-data"])  # --finetune needs --load
