"""Every layout starts from the same numbers: full-size weights come from --seed and the parameter's name,
then are split. Assembling the TP shards (and the pipeline stages) gives the single-process weights bit
for bit. Model construction needs no process group, so each rank's model is built here in-process."""

import pytest
import torch

from megatron_fp8.layers.weights import param_info, real_value
from megatron_fp8.model import GPTModel
from megatron_fp8.parallel.state import ParallelState

from .assemble import assemble, join_shards
from .probe import global_name
from .variants import model_config


def weights(model: GPTModel, ps: ParallelState) -> dict:
    return {global_name(n, p, ps, model.config.model.num_layers):
            (real_value(p), param_info(p).partition_dim, param_info(p).tp_stacked)
            for n, p in model.named_parameters()}


def layout_weights(variant: str, level: str, tp: int, pp: int) -> dict:
    config = model_config(variant, level, tp, pp)
    per_rank = []
    for pp_rank in range(pp):
        for tp_rank in range(tp):
            ps = ParallelState(tp_size=tp, tp_rank=tp_rank, pp_size=pp, pp_rank=pp_rank)
            per_rank.append(((tp_rank, pp_rank), weights(GPTModel(config, ps), ps)))
    return assemble(per_rank)


# O3 is left out on purpose: its FP8 model weights take a current scale per shard, so a shard's values in
# the E4M3 subnormal range may round differently from the full tensor's (its FP16 master is exact).
@pytest.mark.parametrize("level", ["off", "O2"])
@pytest.mark.parametrize("variant", ["gpt", "llama"])
@pytest.mark.parametrize("tp,pp", [(2, 1), (4, 1), (2, 2)])
def test_assembled_shards_equal_single_process_weights(variant, level, tp, pp):
    single = {name: copies[0] for name, copies in layout_weights(variant, level, 1, 1).items()}
    parallel = layout_weights(variant, level, tp, pp)
    assert set(parallel) == set(single)
    for name, copies in parallel.items():
        for copy in copies:  # every TP replica and both copies of a tied embedding
            assert torch.equal(copy, single[name]), name


def test_swiglu_fc1_is_split_block_by_block():
    """TP rank r holds [gate_r; up_r]: its local chunk(2) gives its gate and up slices, weight and bias."""
    config = model_config("llama", "off", 2, 1)
    full = GPTModel(model_config("llama", "off"), ParallelState()).decoder.layers[0].mlp.linear_fc1
    gate, up = full.weight.detach().chunk(2)
    for r in range(2):
        local = GPTModel(config, ParallelState(tp_size=2, tp_rank=r)).decoder.layers[0].mlp.linear_fc1
        local_gate, local_up = local.weight.detach().chunk(2)
        assert torch.equal(local_gate, gate.chunk(2)[r]) and torch.equal(local_up, up.chunk(2)[r])
        assert param_info(local.weight).tp_stacked == 2 and param_info(local.bias).tp_stacked == 2
    shards = [GPTModel(config, ParallelState(tp_size=2, tp_rank=r)).decoder.layers[0].mlp.linear_fc1.weight.detach()
              for r in range(2)]
    assert torch.equal(join_shards(shards, 0, 2), full.weight.detach())
