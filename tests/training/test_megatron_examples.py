"""Megatron-LM's example launch scripts run with only the script name changed (issue 11): their flag sets
(tests/training/megatron_examples.py, sizes scaled down) parse and train on CPU."""

import os
import sys

import pytest

from megatron_fp8.arguments import build_parser, parse_config
from megatron_fp8.data.preprocess import preprocess_jsonl
from megatron_fp8.data.tokenizer_training import train_gpt2_bpe

from ..data.conftest import corpus_texts, write_jsonl
from .megatron_examples import gpt3_175b, llama3_8b_fp8

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import pretrain_gpt  # noqa: E402


@pytest.fixture(scope="module")
def gpt2_corpus(tmp_path_factory):
    """GPT-2 BPE vocab.json + merges.txt and a preprocessed ``*_text_document`` corpus, as the 175B script wants."""
    folder = tmp_path_factory.mktemp("gpt2_corpus")
    texts = corpus_texts(600)  # --split 949,50,1 gives the test split a document from 500 on
    vocab, merges = str(folder / "gpt2-vocab.json"), str(folder / "gpt2-merges.txt")
    train_gpt2_bpe(texts[:60], vocab, merges, vocab_size=400)
    tokenizer = dict(tokenizer_type="GPT2BPETokenizer", vocab_file=vocab, merge_file=merges, tokenizer_model=None,
                     vocab_size=None)
    result = preprocess_jsonl([write_jsonl(folder / "corpus.jsonl", texts)], str(folder / "corpus"),
                              type("Cfg", (), tokenizer)(), append_eod=True, log=lambda msg: None)
    return vocab, merges, result.outputs[0]


def _iteration_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if " iteration " in line and "consumed samples:" in line]


@pytest.mark.parametrize("rampup", [False, True], ids=["step-batch-size-schedule", "rampup-batch-size"])
def test_gpt3_175b_script_flags_train(tmp_path, gpt2_corpus, rampup, capsys):
    """FP16 with dynamic loss scaling from 2**32: the first steps overflow and are skipped, as in Megatron,
    then it trains; the global batch grows with the consumed samples; a checkpoint is saved and resumed."""
    vocab, merges, prefix = gpt2_corpus
    ckpt, tb = str(tmp_path / "ckpt"), str(tmp_path / "tb")
    argv = gpt3_175b(ckpt, tb, vocab, merges, prefix, rampup)
    assert not build_parser().parse_known_args(argv)[1]  # every flag known
    pretrain_gpt.main(argv)
    out = capsys.readouterr().out
    lines = _iteration_lines(out)
    assert [int(line.split("iteration")[1].split("/")[0]) for line in lines] == [6, 12, 18]
    assert all("loss scale:" in line and "global batch size:     4 |" in line for line in lines)
    scales = [float(line.split("loss scale:")[1].split("|")[0]) for line in lines]
    skipped = [int(line.split("number of skipped iterations:")[1].split("|")[0]) for line in lines]
    assert scales[0] < 2.0 ** 32 and skipped[0] > 0  # overflows backed the scale off
    assert skipped[-1] < 18  # and then steps were taken
    assert "validation loss at iteration 9" in out and "saved checkpoint at iteration 18" in out
    assert " > loaded checkpoint" not in out
    # resuming the finished run: loads iteration 18, nothing left to train
    pretrain_gpt.main(argv)
    assert "loaded checkpoint from" in capsys.readouterr().out


def test_llama3_8b_fp8_script_flags_train(tmp_path, capsys):
    ckpt, tb, cache = str(tmp_path / "ckpt"), str(tmp_path / "tb"), str(tmp_path / "cache")
    argv = llama3_8b_fp8(ckpt, tb, cache)
    assert not build_parser().parse_known_args(argv)[1]  # every flag of the script is known
    config = parse_config(argv)
    assert config.model.group_query_attention and config.model.query_groups < config.model.num_attention_heads
    assert config.training.train_samples == 8 and config.training.decoupled_lr == 5.0e-4
    assert not config.parallel.sequence_parallel  # TP 1: disabled with a note, as Megatron does
    pretrain_gpt.main(argv)
    out = capsys.readouterr().out
    lines = _iteration_lines(out)
    assert len(lines) == 4 and "iteration        4/       4 |" in lines[-1]  # 8 samples / global batch 2
    assert all("decoupled learning rate:" in line and "global batch size:     2 |" in line for line in lines)
    assert "--grad-reduce-in-bf16: accepted" in out and "--sequence-parallel: disabled" in out
    assert "exiting program" not in out  # --exit-duration-in-mins 235 is far away
    assert "saved checkpoint at iteration 4" in out
