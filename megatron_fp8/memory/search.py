"""The largest GPT that fits on N GPUs at each precision level (FP8-LM's Figure 1 question).

Shapes are the GPT-3 family (Brown et al. 2020, heads rounded so that head_dim divides the width) and
the Megatron-LM scaling series (Narayanan et al. 2021). For each shape the layouts are tried from the
least model parallelism up (TP within a node, then PP over divisors of the layer count), the way one
would pick them by hand; the first layout whose fullest GPU fits is reported.
"""

from dataclasses import dataclass, replace

from ..config import Config
from ..layers.embedding import padded_vocab_size
from .inventory import total_params
from .planner import GIB, MemoryPlan, plan_memory


@dataclass(frozen=True)
class GptShape:
    name: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int


GPT_SHAPES = (
    GptShape("GPT-3 125M", 12, 768, 12), GptShape("GPT-3 350M", 24, 1024, 16),
    GptShape("GPT-3 760M", 24, 1536, 16), GptShape("GPT-3 1.3B", 24, 2048, 16),
    GptShape("Megatron 1.7B", 24, 2304, 24), GptShape("GPT-3 2.7B", 32, 2560, 32),
    GptShape("Megatron 3.6B", 30, 3072, 32), GptShape("GPT-3 6.7B", 32, 4096, 32),
    GptShape("Megatron 7.5B", 36, 4096, 32), GptShape("GPT-3 13B", 40, 5120, 40),
    GptShape("Megatron 18B", 40, 6144, 48), GptShape("Megatron 39B", 48, 8192, 64),
    GptShape("Megatron 76B", 60, 10240, 80), GptShape("Megatron 146B", 80, 12288, 96),
    GptShape("GPT-3 175B", 96, 12288, 96), GptShape("Megatron 310B", 96, 16384, 128),
    GptShape("Megatron 530B", 105, 20480, 128), GptShape("Megatron 1T", 128, 25600, 160),
)


def shaped(base: Config, shape: GptShape, level: str, tp: int, pp: int, dp: int, raw_vocab: int) -> Config:
    """``base`` with this shape, level and layout (SP whenever TP > 1; enough micro-batches to fill 1F1B)."""
    m = replace(base.model, num_layers=shape.num_layers, hidden_size=shape.hidden_size,
                num_attention_heads=shape.num_attention_heads, ffn_hidden_size=None,
                vocab_size=padded_vocab_size(raw_vocab, base.model.make_vocab_size_divisible_by, tp))
    precision = base.precision.at_level(level)
    parallel = replace(base.parallel, tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                       sequence_parallel=tp > 1)
    mbs = base.training.micro_batch_size
    training = replace(base.training, global_batch_size=mbs * dp * pp)
    return Config(model=m, parallel=parallel, precision=precision, training=training)


def layouts(shape: GptShape, world_size: int, gpus_per_node: int = 8):
    """(tp, pp, dp) candidates, least model parallelism first."""
    out = []
    tp = 1
    while tp <= min(gpus_per_node, world_size):
        if world_size % tp == 0 and shape.num_attention_heads % tp == 0:
            for pp in range(1, shape.num_layers + 1):
                if shape.num_layers % pp == 0 and world_size % (tp * pp) == 0:
                    out.append((tp, pp, world_size // (tp * pp)))
        tp *= 2
    return sorted(out, key=lambda t: (t[0] * t[1], t[1]))


def fitting_plan(base: Config, shape: GptShape, level: str, world_size: int, budget: int, raw_vocab: int,
                 device: str, recompute: bool, gpus_per_node: int = 8) -> MemoryPlan | None:
    """The plan of the first layout of ``shape`` whose fullest GPU needs at most ``budget`` bytes."""
    for tp, pp, dp in layouts(shape, world_size, gpus_per_node):
        config = shaped(base, shape, level, tp, pp, dp, raw_vocab)
        try:
            config.validate_layout(world_size)
        except ValueError:  # ruled out by the flags (--num-layers-at-start-in-bf16 above the layers per stage)
            continue
        plan = plan_memory(config, world_size, device, recompute)
        if plan.total <= budget:
            return plan
    return None


def largest_fitting(base: Config, world_size: int, gpu_memory_gib: float, levels=("off", "O1", "O2", "O3"),
                    raw_vocab: int = 50257, device: str = "cuda", recompute: bool = False,
                    gpus_per_node: int = 8, shapes=GPT_SHAPES) -> dict:
    """level -> (shape, plan) of the largest shape that fits, or None when not even the smallest does."""
    budget = int(gpu_memory_gib * GIB)
    by_size = sorted(shapes, key=lambda s: total_params(shaped(base, s, "off", 1, 1, 1, raw_vocab)))
    result = {}
    for level in levels:
        best = None
        for shape in by_size:
            plan = fitting_plan(base, shape, level, world_size, budget, raw_vocab, device, recompute, gpus_per_node)
            if plan is not None:
                best = (shape, plan)
        result[level] = best
    return result
