"""Hugging Face import/export on random small GPT-2, Llama(-3, -3.1), Mistral and Qwen2 models built here
(nothing downloaded).

Import must reproduce the HF model's logits (FP32, eval) through our own model at any TP size, and
export must give back the very tensors it was imported from.
"""

import json
import os
import re
import sys
from types import SimpleNamespace

import pytest
import torch

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file  # noqa: E402  (a dependency of transformers)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import convert_checkpoint  # noqa: E402
import generate  # noqa: E402

from megatron_fp8.checkpoint import hf  # noqa: E402
from megatron_fp8.checkpoint.names import global_name  # noqa: E402
from megatron_fp8.checkpoint.state import config_summary  # noqa: E402
from megatron_fp8.checkpoint.universal import read_universal, write_layout  # noqa: E402
from megatron_fp8.config import Config, ModelConfig, PrecisionConfig  # noqa: E402
from megatron_fp8.layers.embedding import padded_vocab_size  # noqa: E402
from megatron_fp8.model import GPTModel  # noqa: E402
from megatron_fp8.parallel.state import ParallelState  # noqa: E402

from . import hf_models  # noqa: E402
from .hf_models import VOCAB, build  # noqa: E402

VARIANTS = ("gpt2", "gpt2_untied_exact_gelu", "llama", "llama_tied_bias", *hf_models.FAMILY)
CONFIG_FIELDS = {"gpt2": ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "activation_function",
                          "layer_norm_epsilon", "tie_word_embeddings", "bos_token_id", "eos_token_id"),
                 "llama": ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                           "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
                           "rope_parameters", "attention_bias", "mlp_bias", "tie_word_embeddings", "bos_token_id",
                           "eos_token_id")}
CONFIG_FIELDS["mistral"] = tuple(f for f in CONFIG_FIELDS["llama"] if "bias" not in f) + ("sliding_window",)
CONFIG_FIELDS["qwen2"] = tuple(f for f in CONFIG_FIELDS["mistral"] if f != "head_dim") + (
    "use_sliding_window", "max_window_layers", "layer_types")


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """name -> (HF directory, HF model in eval mode)."""
    return {name: build(name, str(tmp_path_factory.mktemp(name))) for name in VARIANTS}


def _import(src: str, save: str, *flags: str) -> str:
    convert_checkpoint.main(["--hf-import", src, "--save", save, *flags])
    return save


@torch.no_grad()
def _assert_same_logits(hf_model, ckpt: str) -> None:
    model, tokenizer, config = generate.load_for_inference(ckpt)
    assert config.precision.fp8_level == "off" and config.precision.policy.compute == torch.float32
    tokens = torch.randint(0, VOCAB, (2, 48), generator=torch.Generator().manual_seed(0))
    ours = model(tokens, torch.arange(tokens.shape[1]).expand_as(tokens))
    assert ours.shape[-1] >= VOCAB and ours.shape[-1] % 128 == 0  # padded rows are dummies
    theirs = hf_model(tokens).logits
    torch.testing.assert_close(ours[..., :VOCAB], theirs, rtol=0, atol=1e-4)
    assert tokenizer.vocab_size == VOCAB and tokenizer.decode(tokenizer.encode("def f(x):")) == "def f(x):"


@pytest.mark.parametrize("name", VARIANTS)
def test_import_matches_logits_and_export_round_trips(hf_dirs, tmp_path, capsys, name):
    src, hf_model = hf_dirs[name]
    ckpt = _import(src, str(tmp_path / "ckpt"), "--verify")
    verified = re.search(r"max \|logit difference\| vs transformers: (\S+)", capsys.readouterr().out)
    assert verified and float(verified.group(1)) < 1e-4
    _assert_same_logits(hf_model, ckpt)

    out = tmp_path / "exported"
    convert_checkpoint.main(["--load", ckpt, "--hf-export", str(out)])
    original, exported = load_file(os.path.join(src, "model.safetensors")), load_file(out / "model.safetensors")
    assert sorted(exported) == sorted(original)
    for key, tensor in original.items():
        assert torch.equal(exported[key], tensor), key
    before, after = (json.load(open(os.path.join(d, "config.json"))) for d in (src, out))
    for field in CONFIG_FIELDS[before["model_type"]]:
        assert after.get(field) == before.get(field), field
    assert after["architectures"] == before["architectures"]
    for tok_file in ("tokenizer.json", "tokenizer_config.json"):
        assert open(out / tok_file).read() == open(os.path.join(src, tok_file)).read()
    reloaded = type(hf_model).from_pretrained(out).eval()
    tokens = torch.randint(0, VOCAB, (1, 16))
    with torch.no_grad():
        assert torch.equal(reloaded(tokens).logits, hf_model(tokens).logits)


@pytest.mark.parametrize("name,pp", [("gpt2", 1), ("llama", 1), ("llama3_gqa", 1), ("qwen2_untied", 2)])
def test_import_at_tp2_reshards_qkv_and_swiglu(hf_dirs, tmp_path, name, pp):
    """TP2 hands each rank whole query groups (GQA: one of the two); with PP2 each stage one layer."""
    src, hf_model = hf_dirs[name]
    ckpt = _import(src, str(tmp_path / "ckpt"), "--target-tensor-parallel-size", "2",
                   "--target-pipeline-parallel-size", str(pp))
    meta = json.load(open(tmp_path / "ckpt" / "iter_0000000" / "metadata.json"))
    assert meta["layout"]["tp"] == 2 and meta["layout"]["pp"] == pp and meta["config"]["model"]["vocab_size"] == 512
    _assert_same_logits(hf_model, ckpt)
    out = tmp_path / "exported"  # and back from the TP2 shards to the very same tensors
    convert_checkpoint.main(["--load", ckpt, "--hf-export", str(out)])
    original, exported = load_file(os.path.join(src, "model.safetensors")), load_file(out / "model.safetensors")
    assert sorted(exported) == sorted(original) and all(torch.equal(exported[k], v) for k, v in original.items())


def test_import_at_fp8_level_keeps_exact_master(hf_dirs, tmp_path):
    """An O3 import stores FP8 weights but its FP16 master comes from the exact values, not the FP8 copy."""
    src, _ = hf_dirs["llama"]
    ckpt = _import(src, str(tmp_path / "ckpt"), "--target-fp8-level", "O3")
    universal = read_universal(ckpt)
    assert universal["config"]["precision"]["fp8_level"] == "O3" and universal["step"] == 0
    name = "decoder.layers.0.self_attention.linear_qkv.weight"
    master, fp8 = universal["optim"][name]["master"], universal["params"][name]
    q = load_file(os.path.join(src, "model.safetensors"))["model.layers.0.self_attn.q_proj.weight"]
    assert (master[:16] - q[:16]).abs().max() < 1e-3 * q.abs().max()  # FP16 rounding only
    assert (fp8 - master).abs().max() > (master[:16] - q[:16]).abs().max()  # the weight itself is coarser
    assert torch.count_nonzero(universal["optim"][name]["exp_avg"]) == 0


@pytest.mark.parametrize("kind, overrides, field", [
    ("llama", {"num_key_value_heads": 3}, "num_key_value_heads=3"),
    ("llama", {"attention_bias": True}, "attention_bias=True"),
    ("llama", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_parameters"),
    ("llama", {"rope_scaling": {**hf_models.LLAMA3_SCALING, "low_freq_factor": 2.0}}, "low_freq_factor"),
    ("llama", {"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ("gpt2", {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx=True"),
    ("gpt2", {"activation_function": "relu"}, "activation_function='relu'"),
    ("mistral", {"sliding_window": 16, "max_position_embeddings": 64}, "sliding_window=16"),
    ("qwen2", {"use_sliding_window": True, "sliding_window": 32, "max_window_layers": 0,
               "max_position_embeddings": 64}, "sliding_window=32"),
    ("gemma", {}, "model_type='gemma'"),
])
def test_unsupported_configs_are_refused(tmp_path, kind, overrides, field):
    cls = {"llama": transformers.LlamaConfig, "gpt2": transformers.GPT2Config, "mistral": transformers.MistralConfig,
           "qwen2": transformers.Qwen2Config, "gemma": transformers.GemmaConfig}[kind]
    small = dict(num_hidden_layers=1, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB) \
        if kind != "gpt2" else dict(n_layer=1, n_embd=64, n_head=4, vocab_size=VOCAB)
    cls(**{**small, **overrides}).save_pretrained(tmp_path / "src")
    with pytest.raises(ValueError, match=field.replace("(", r"\(").replace("[", r"\[")):
        hf.import_hf(str(tmp_path / "src"), str(tmp_path / "ckpt"))
    with pytest.raises(SystemExit, match="convert_checkpoint.py: .*config.json"):
        _import(str(tmp_path / "src"), str(tmp_path / "ckpt"))
    assert not os.path.exists(tmp_path / "ckpt")  # refused before anything was written


def test_cli_refuses_overwrites_and_wrong_flags(hf_dirs, tmp_path):
    src, _ = hf_dirs["gpt2"]
    ckpt = _import(src, str(tmp_path / "ckpt"))
    with pytest.raises(SystemExit, match="already holds a checkpoint"):
        _import(src, ckpt)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit, match="is not empty"):
        convert_checkpoint.main(["--load", ckpt, "--hf-export", str(tmp_path / "full")])
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    with pytest.raises(SystemExit, match="--target-fp8-level do not apply to --hf-export"):
        convert_checkpoint.main(["--load", ckpt, "--hf-export", str(tmp_path / "x"), "--target-fp8-level", "O2"])
    with pytest.raises(SystemExit, match="--hf-import needs --save"):
        convert_checkpoint.main(["--hf-import", src])


def _native_checkpoint(root: str, data=None, **model_fields) -> str:
    """A checkpoint of a randomly initialised (perturbed) GPTModel, as if trained here, not imported."""
    model = ModelConfig(num_layers=2, hidden_size=64, num_attention_heads=4, seq_length=64, vocab_size=VOCAB,
                        hidden_dropout=0.0, attention_dropout=0.0, **model_fields)
    config = Config(model=model, precision=PrecisionConfig(fp8_level="off"))
    config.data = data
    summary = config_summary(config)  # records the unpadded vocab: write_layout pads it
    pstate, tied = ParallelState(), not model.untie_embeddings_and_output_weights
    model.vocab_size = padded_vocab_size(VOCAB, model.make_vocab_size_divisible_by, 1)
    gen = torch.Generator().manual_seed(1)
    params = {global_name(n, pstate, model.num_layers, tied): p.detach() + 0.2 * torch.randn(p.shape, generator=gen)
              for n, p in GPTModel(config, pstate).named_parameters()}
    universal = {"config": summary, "progress": dict(hf.PROGRESS), "iteration": 0, "params": params, "optim": {},
                 "step": 0, "fp8": {}}
    write_layout(universal, config, 1, 1, 1, root)
    return root


def test_export_of_a_native_checkpoint_with_gpt2_bpe_tokenizer(tmp_path):
    """No imported config to lean on: the vocabulary size and eos come from our GPT2BPETokenizer."""
    tok = hf_models.tokenizer(["<|endoftext|>"], "<|endoftext|>", "<|endoftext|>")
    vocab_file, merge_file = tok.backend_tokenizer.model.save(str(tmp_path))
    data = SimpleNamespace(tokenizer_type="GPT2BPETokenizer", vocab_file=vocab_file, merge_file=merge_file,
                           tokenizer_model=None, vocab_size=None)
    ckpt = _native_checkpoint(str(tmp_path / "ckpt"), data)
    out = tmp_path / "exported"
    hf.export_hf(ckpt, str(out))
    config = json.load(open(out / "config.json"))
    assert config["vocab_size"] == VOCAB and config["activation_function"] == "gelu" and config["eos_token_id"] == 0
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    _assert_same_logits(hf_model, ckpt)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok.encode("def f(x):\n    return x") == tok.encode("def f(x):\n    return x")


def test_export_refuses_a_model_without_hf_architecture(tmp_path):
    """rope + LayerNorm is neither GPT-2 nor Llama: say why for both."""
    ckpt = _native_checkpoint(str(tmp_path / "ckpt"), position_embedding_type="rope")
    with pytest.raises(ValueError, match=r"not GPT2LMHeadModel: --position-embedding-type rope.*"
                                         r"not LlamaForCausalLM: --normalization LayerNorm.*no --swiglu"):
        hf.export_hf(ckpt, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")


def test_import_reads_legacy_gpt2_pytorch_bin(hf_dirs, tmp_path):
    """The Hub's original gpt2 layout: pytorch_model.bin, keys without ``transformer.``, mask buffers."""
    src, hf_model = hf_dirs["gpt2"]
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    state = {k.removeprefix("transformer."): v for k, v in load_file(os.path.join(src, "model.safetensors")).items()}
    state.update({f"h.{i}.attn.bias": torch.ones(1, 1, 64, 64) for i in range(2)})
    torch.save(state, legacy / "pytorch_model.bin")
    for name in os.listdir(src):
        if name.endswith(".json"):
            (legacy / name).write_bytes(open(os.path.join(src, name), "rb").read())
    _assert_same_logits(hf_model, _import(str(legacy), str(tmp_path / "ckpt")))


def test_export_after_moving_an_imported_checkpoint(hf_dirs, tmp_path):
    """The tokenizer paths recorded at import are absolute; export finds the files under the moved root."""
    src, _ = hf_dirs["llama"]
    _import(src, str(tmp_path / "ckpt"))
    os.rename(tmp_path / "ckpt", tmp_path / "moved")
    hf.export_hf(str(tmp_path / "moved"), str(tmp_path / "out"))
    assert open(tmp_path / "out" / "tokenizer.json").read() == open(os.path.join(src, "tokenizer.json")).read()
    assert json.load(open(tmp_path / "out" / "config.json"))["vocab_size"] == VOCAB
