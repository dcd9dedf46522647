"""Random small GPT-2, Llama, Mistral and Qwen2 models with small trained tokenizers, saved like Hub models
(offline)."""

import inspect
import json

import torch

VOCAB = 300
SCALE = 0.2  # large enough that exact vs tanh GeLU moves the logits by >1e-3


def tokenizer(specials: list[str], eos: str, bos: str):
    """A byte-level BPE of VOCAB tokens trained on standard-library source, as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    text = inspect.getsource(json.decoder).splitlines() + inspect.getsource(json.encoder).splitlines()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=specials, show_progress=False,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    assert tok.get_vocab_size() == VOCAB
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, bos_token=bos)


# A chat template in the style of Zephyr/ChatML: role markers are special tokens, each turn ends with eos.
CHAT_SPECIALS = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + eos_token }}"
                 "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}")


def _perturb(model, seed: int) -> None:
    """Move every tensor off its default init (ones/zeros norms and biases would hide swapped tensors)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * SCALE)


def _small(**fields) -> dict:
    """Two layers, 4 query heads sharing 2 key/value heads (GQA), SwiGLU, 64 positions."""
    return dict(dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                     intermediate_size=176, vocab_size=VOCAB, max_position_embeddings=64, rms_norm_eps=1e-5,
                     bos_token_id=1, eos_token_id=2), **fields)


LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192}
# Today's open families at toy size: Llama-3 (GQA, theta 5e5), Llama-3.1 (+ llama3 RoPE scaling; at head
# dim 16 and base 5e5 the long wavelengths are divided by 8 and the band between smoothed), Mistral (GQA, a
# head dimension other than hidden/heads, the default 4096-token window: longer than the sequence), Qwen2
# (GQA, biases on q/k/v only) with tied and untied embeddings.
FAMILY = {
    "llama3_gqa": lambda t: t.LlamaConfig(**_small(rope_theta=500000.0, tie_word_embeddings=False)),
    "llama31_rope_scaling": lambda t: t.LlamaConfig(**_small(rope_theta=500000.0, rope_scaling=dict(LLAMA3_SCALING),
                                                             tie_word_embeddings=False)),
    "mistral": lambda t: t.MistralConfig(**_small(head_dim=24, rope_theta=1e6, tie_word_embeddings=False)),
    "qwen2_tied": lambda t: t.Qwen2Config(**_small(rope_theta=1e6, tie_word_embeddings=True)),
    "qwen2_untied": lambda t: t.Qwen2Config(**_small(rope_theta=1e6, tie_word_embeddings=False)),
}


def build(name: str, directory: str):
    """Save the variant ``name`` (model + tokenizer) into ``directory``; returns (directory, model.eval())."""
    import transformers

    torch.manual_seed(0)
    if name.startswith("gpt2"):
        untied = name == "gpt2_untied_exact_gelu"
        config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=64,
                                         bos_token_id=0, eos_token_id=0, tie_word_embeddings=not untied,
                                         activation_function="gelu" if untied else "gelu_new")
        model, tok = transformers.GPT2LMHeadModel(config), tokenizer(["<|endoftext|>"], "<|endoftext|>",
                                                                      "<|endoftext|>")
    elif name in FAMILY:
        config = FAMILY[name](transformers)
        model = transformers.AutoModelForCausalLM.from_config(config)
        tok = tokenizer(["<unk>", "<s>", "</s>"], "</s>", "<s>")
    elif name == "llama_chat":  # the Llama, with a chat template and role tokens in its tokenizer
        model, _ = build("llama", directory)
        tok = tokenizer(CHAT_SPECIALS, "</s>", "<s>")
        tok.chat_template = CHAT_TEMPLATE
        tok.save_pretrained(directory)
        return directory, model
    else:
        variant = name == "llama_tied_bias"
        config = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                          num_key_value_heads=4, intermediate_size=176, vocab_size=VOCAB,
                                          max_position_embeddings=64, rope_theta=50000.0, rms_norm_eps=1e-5,
                                          tie_word_embeddings=variant, attention_bias=variant, mlp_bias=variant,
                                          bos_token_id=1, eos_token_id=2)
        model, tok = transformers.LlamaForCausalLM(config), tokenizer(["<unk>", "<s>", "</s>"], "</s>", "<s>")
    _perturb(model, seed=len(name))
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory, model.eval()
