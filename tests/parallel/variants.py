"""The tiny models the parallel tests compare, by name (picklable: workers rebuild them from the name)."""

from dataclasses import replace

from ..helpers import tiny_config


def model_config(variant: str, level: str, tp: int = 1, pp: int = 1, sp: bool = False):
    """``gpt``: tests/helpers' tiny GPT (LayerNorm, GeLU, learned positions, tied head).
    ``llama``: the other side of every model switch: RMSNorm, SwiGLU (fc1 holds two stacked blocks that
    TP splits block by block, biases included), RoPE, untied output layer.
    ``many-micro``: the tiny GPT with 8 micro-batches of 2 per step (1F1B runs longer than the pipeline).
    ``deep-many-micro``: the same with 4 layers, for a 4-stage pipeline.
    ``gqa``: the llama model with grouped-query attention (8 heads in 4 groups: under TP2 each rank holds two
    whole groups, and q is the strided copy), a head size other than hidden/heads, a QKV-only bias, partial
    RoPE with Llama-3.1 scaling and zero-centred RMSNorm weights.
    ``first-last``: the tiny GPT with 4 layers, the first and the last kept out of FP8
    (--first-last-layers-bf16): under PP2 each stage holds one FP8 layer and one kept layer, by global number."""
    if variant == "gpt":
        return tiny_config(level, tp, pp, sp)
    if variant == "many-micro":
        return tiny_config(level, tp, pp, sp, micro_batch_size=2, global_batch_size=16)
    if variant == "deep-many-micro":
        config = tiny_config(level, tp, pp, sp, micro_batch_size=2, global_batch_size=16)
        config.model = replace(config.model, num_layers=4)
        return config
    if variant == "llama":
        config = tiny_config(level, tp, pp, sp)
        config.model = replace(config.model, normalization="RMSNorm", swiglu=True, position_embedding_type="rope",
                               untie_embeddings_and_output_weights=True, ffn_hidden_size=128)
        return config
    if variant == "gqa":
        config = model_config("llama", level, tp, pp, sp)
        config.model = replace(config.model, num_attention_heads=8, group_query_attention=True, num_query_groups=4,
                               kv_channels=12, add_bias_linear=False, add_qkv_bias=True, rotary_percent=0.5,
                               use_rope_scaling=True, apply_layernorm_1p=True)
        return config
    if variant == "first-last":
        config = tiny_config(level, tp, pp, sp)
        config.model = replace(config.model, num_layers=4)
        config.precision = replace(config.precision, first_last_layers_bf16=True)
        return config
    raise ValueError(f"unknown test model variant {variant!r}")
