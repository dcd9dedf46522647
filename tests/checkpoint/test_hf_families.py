"""Today's open families beyond the round trips of test_hf.py: transformers 4 config names, what --verify
catches, layouts and precision levels on the way, architecture choice on export, and training an imported
model with --use-checkpoint-args."""

import os
import re
import sys
from types import SimpleNamespace

import pytest
import torch

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, ROOT)

import convert_checkpoint  # noqa: E402
import generate  # noqa: E402
import pretrain_gpt  # noqa: E402

from megatron_fp8.arguments import parse_config  # noqa: E402
from megatron_fp8.checkpoint import hf, hf_llama  # noqa: E402
from megatron_fp8.model.rope import rope_tables  # noqa: E402

from .hf_models import LLAMA3_SCALING, VOCAB, build  # noqa: E402
from .test_hf import _assert_same_logits, _import, _native_checkpoint  # noqa: E402

FAMILIES = ("llama3_gqa", "llama31_rope_scaling", "mistral")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return {name: build(name, str(tmp_path_factory.mktemp(name))) for name in FAMILIES}


def _tensors(directory) -> dict:
    return load_file(os.path.join(directory, "model.safetensors"))


def test_transformers_4_config_names():
    """transformers 4 keeps rope_theta and rope_scaling apart (5 merges them into rope_parameters)."""
    v4 = SimpleNamespace(num_attention_heads=8, num_key_value_heads=2, hidden_size=128, head_dim=None,
                         num_hidden_layers=2, intermediate_size=256, max_position_embeddings=128, hidden_act="silu",
                         rms_norm_eps=1e-5, tie_word_embeddings=False, initializer_range=0.02, rope_theta=500000.0,
                         rope_scaling={**LLAMA3_SCALING, "factor": 32.0}, attention_bias=False, mlp_bias=False)
    fields = hf_llama.LLAMA.model_fields(v4, "config.json")
    assert (fields["group_query_attention"], fields["num_query_groups"], fields["kv_channels"]) == (True, 2, None)
    assert (fields["rotary_base"], fields["use_rope_scaling"], fields["rope_scaling_factor"]) == (500000, True, 32.0)
    with pytest.raises(ValueError, match=r"rope_scaling\['original_max_position_embeddings'\]=4096"):
        hf_llama.LLAMA.model_fields(SimpleNamespace(**{**vars(v4), "rope_scaling": {
            **LLAMA3_SCALING, "original_max_position_embeddings": 4096}}), "config.json")

    class ConfigV4:  # a transformers 4 config class: RoPE fields are __init__ arguments, not rope_parameters
        def __init__(self, rope_theta=10000.0, rope_scaling=None, **kwargs):
            pass

    m = {"rotary_base": 500000, "use_rope_scaling": True, "rope_scaling_factor": 8.0}
    assert hf_llama._rope_kwargs(ConfigV4, m) == {"rope_theta": 500000.0, "rope_scaling": LLAMA3_SCALING}
    assert hf_llama._rope_kwargs(transformers.LlamaConfig, m) == {
        "rope_parameters": {**LLAMA3_SCALING, "rope_theta": 500000.0}}


def test_verify_stops_a_wrong_mapping_before_writing(dirs, tmp_path, monkeypatch, capsys):
    """K and V swapped inside each group: --verify sees it in the logits and nothing is written."""
    src, _ = dirs["llama3_gqa"]
    right = hf_llama.qkv_per_group
    monkeypatch.setattr(hf_llama, "qkv_per_group", lambda q, k, v, groups: right(q, v, k, groups))
    with pytest.raises(SystemExit, match=r"--verify: .*max \|logit difference\| vs transformers is .* above 0.001"):
        _import(src, str(tmp_path / "ckpt"), "--verify")
    assert "max |logit difference| vs transformers" in capsys.readouterr().out
    assert not os.path.exists(tmp_path / "ckpt")
    with pytest.raises(SystemExit, match="--verify applies to --hf-import"):
        convert_checkpoint.main(["--load", str(tmp_path), "--save", str(tmp_path / "x"), "--verify"])


@torch.no_grad()
def test_llama31_rope_scaling_is_what_makes_the_logits_agree(dirs, tmp_path):
    """The same import with plain RoPE tables is far from transformers: the scaled tables are exercised."""
    src, hf_model = dirs["llama31_rope_scaling"]
    ckpt = _import(src, str(tmp_path / "ckpt"))
    _assert_same_logits(hf_model, ckpt)
    model, _, config = generate.load_for_inference(ckpt)
    m = config.model
    assert m.use_rope_scaling and m.rope_scaling_factor == 8.0
    model.rope_cos, model.rope_sin = rope_tables(m.seq_length, m.rotary_dim, m.rotary_base)
    tokens = torch.randint(0, VOCAB, (2, 48), generator=torch.Generator().manual_seed(0))
    ours = model(tokens, torch.arange(48).expand_as(tokens))[..., :VOCAB]
    assert (ours - hf_model(tokens).logits).abs().max() > 1e-3


def test_tensor_parallel_must_divide_the_query_groups(dirs, tmp_path):
    """4 query heads in 2 groups: TP4 would split a group; refused before anything is written."""
    with pytest.raises(SystemExit, match="--num-query-groups 2 is not divisible by --target-tensor-parallel-size 4"):
        _import(dirs["llama3_gqa"][0], str(tmp_path / "ckpt"), "--target-tensor-parallel-size", "4")
    assert not os.path.exists(tmp_path / "ckpt")


def test_tp2_pp2_at_o1_and_back(dirs, tmp_path):
    """Mistral (GQA, head dim 24 != 64/4) through TP2 x PP2 at O1 (FP16 weights), converted back to one
    process at off and exported: every tensor within FP16 rounding (2^-11 relative) of the original."""
    src, _ = dirs["mistral"]
    o1 = _import(src, str(tmp_path / "o1"), "--target-tensor-parallel-size", "2", "--target-pipeline-parallel-size",
                 "2", "--target-fp8-level", "O1")
    convert_checkpoint.main(["--load", o1, "--save", str(tmp_path / "off"), "--target-tensor-parallel-size", "1",
                             "--target-pipeline-parallel-size", "1", "--target-fp8-level", "off"])
    hf.export_hf(str(tmp_path / "off"), str(tmp_path / "out"))
    original, exported = _tensors(src), _tensors(tmp_path / "out")
    assert sorted(exported) == sorted(original)
    for key, tensor in original.items():
        assert (exported[key] - tensor).abs().max() <= 2 ** -11 * tensor.abs().max(), key


@pytest.mark.parametrize("fields,architecture", [
    (dict(add_bias_linear=False, add_qkv_bias=True, apply_layernorm_1p=True), "Qwen2ForCausalLM"),
    (dict(add_bias_linear=False, kv_channels=24), "LlamaForCausalLM"),
])
def test_native_gqa_model_exports_to_the_family_that_fits(tmp_path, fields, architecture):
    """A model trained here (not imported): QKV-only biases can only be Qwen2; zero-centred norm weights
    leave as 1 + w. transformers' logits on the export equal ours."""
    null = SimpleNamespace(tokenizer_type="NullTokenizer", vocab_size=VOCAB - 1, tokenizer_model=None,
                           vocab_file=None, merge_file=None)  # VOCAB - 1 ids and the end-of-document id
    ckpt = _native_checkpoint(str(tmp_path / "ckpt"), null, position_embedding_type="rope", normalization="RMSNorm",
                              swiglu=True, untie_embeddings_and_output_weights=True, group_query_attention=True,
                              num_query_groups=2, **fields)
    hf.export_hf(ckpt, str(tmp_path / "out"))
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(hf_model).__name__ == architecture and hf_model.config.num_key_value_heads == 2
    assert hf_model.config.vocab_size == VOCAB
    tokens = torch.randint(0, VOCAB, (2, 48), generator=torch.Generator().manual_seed(0))
    model, _, _ = generate.load_for_inference(ckpt)
    with torch.no_grad():
        ours = model(tokens, torch.arange(48).expand_as(tokens))[..., :VOCAB]
        torch.testing.assert_close(ours, hf_model(tokens).logits, rtol=0, atol=1e-4)


TRAIN = ["--mock-data", "--use-checkpoint-args", "--seq-length", "32", "--micro-batch-size", "2",
         "--global-batch-size", "2", "--eval-iters", "0", "--log-interval", "1", "--lr-warmup-iters", "0"]


def test_use_checkpoint_args_trains_an_imported_model(dirs, tmp_path, capsys):
    """Shape (GQA, RoPE base, untied head), tokenizer and precision come from the imported checkpoint. At
    lr 0 two steps leave the weights as imported (export gives back the HF tensors bit for bit); at lr 1e-3
    they move."""
    src, _ = dirs["llama3_gqa"]
    ckpt = _import(src, str(tmp_path / "ckpt"))
    for lr, out in (("0", "still"), ("1e-3", "trained")):
        pretrain_gpt.main(TRAIN + ["--load", ckpt, "--save", str(tmp_path / out), "--train-iters", "2", "--lr", lr,
                                   "--min-lr", lr, "--data-cache-path", str(tmp_path / "cache")])
        log = capsys.readouterr().out
        assert "loaded checkpoint" in log and "iteration        2/       2 |" in log
        assert "--use-checkpoint-args: from" in log and "--num-query-groups 2" in log and "--rotary-base 500000" in log
        hf.export_hf(str(tmp_path / out), str(tmp_path / f"{out}_hf"))
    original = _tensors(src)
    still, trained = _tensors(tmp_path / "still_hf"), _tensors(tmp_path / "trained_hf")
    assert all(torch.equal(still[k], v) for k, v in original.items())
    assert not torch.equal(trained["model.layers.0.self_attn.k_proj.weight"],
                           original["model.layers.0.self_attn.k_proj.weight"])


@pytest.mark.parametrize("flags,message", [
    (["--num-layers", "3"], r"--num-layers 3 conflicts with the checkpoint under --load .*saved with 2"),
    (["--kv-channels", "8"], r"--kv-channels: this command line gives 8 head dim, the checkpoint .* has 16"),
    (["--fp8-level", "O2"], r"--fp8-level O2 conflicts with the checkpoint .*saved with 'off'"),
    (["--tensor-model-parallel-size", "2"], r"--tensor-model-parallel-size 2 conflicts .*convert the checkpoint"),
])
def test_use_checkpoint_args_refuses_conflicting_flags(dirs, tmp_path, capsys, flags, message):
    src, _ = dirs["llama3_gqa"]
    ckpt = _import(src, str(tmp_path / "ckpt"))
    with pytest.raises(SystemExit):
        pretrain_gpt.main(TRAIN + ["--load", ckpt, "--train-iters", "1"] + flags)
    assert re.search(message, capsys.readouterr().err)
    # agreeing flags, spelled out or resolved the same way, are fine
    config = parse_config(TRAIN + ["--load", ckpt, "--num-layers", "2", "--kv-channels", "16",
                                   "--group-query-attention", "--num-query-groups", "2", "--seq-length", "16"])
    assert config.model.seq_length == 16 and config.model.query_groups == 2 and config.data.tokenizer_type == \
        "HuggingFaceTokenizer"


def test_use_checkpoint_args_needs_load_and_data_for_its_tokenizer(dirs, tmp_path, capsys):
    with pytest.raises(SystemExit):
        pretrain_gpt.main(["--use-checkpoint-args"])
    assert "--use-checkpoint-args needs --load DIR" in capsys.readouterr().err
    ckpt = _import(dirs["llama3_gqa"][0], str(tmp_path / "ckpt"))
    with pytest.raises(SystemExit):
        pretrain_gpt.main(["--use-checkpoint-args", "--load", ckpt])
    assert "the default corpus brings its own tokenizer: pass --data-path" in capsys.readouterr().err
