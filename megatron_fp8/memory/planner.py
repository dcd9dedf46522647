"""Per-GPU memory of a training run: model states of the rank, its FP8 caches and its activations.

Every pipeline stage and data-parallel rank is planned (stages hold different layers, embeddings and
head; ranks own different optimizer state under the distributed optimizer) and the fullest one is
reported, since that is the GPU that runs out first. Activations follow the 1F1B schedule: stage ``r``
of ``pp`` holds up to ``pp - r`` micro-batches in flight. Beyond the categories, ``process`` adds what the
process peak holds besides (``process.py``: the import baseline, the step's transient tensors and, on CPU,
the allocator's slack), so ``process_peak`` is the predicted peak RSS on CPU (``max_memory_allocated`` on
a GPU). Not modelled: communication buckets.
"""

from dataclasses import asdict, dataclass, field

import torch

from ..config import Config
from ..fp8.linear import needs_transposes
from ..layers.weights import param_info
from . import activations as act
from .inventory import stage_params, total_params
from .process import process_extras
from .states import STATE_KEYS, fp8_scaling_state, fp8_weight_cache, model_states

GIB = 1 << 30
CATEGORIES = STATE_KEYS + ("fp8_weight_cache", "fp8_scaling_state", "activations")


@dataclass
class MemoryPlan:
    """Bytes per category on the fullest GPU, and what produced them."""

    bytes: dict  # CATEGORIES -> bytes (activations as chosen: with or without recomputation)
    pp_rank: int
    dp_rank: int
    layout: dict  # tp, pp, dp, sp, distributed_optimizer, world_size
    level: str
    device: str
    recompute: bool
    in_flight: int  # micro-batches whose activations this stage holds at once
    activations_full: int  # no recomputation, all micro-batches in flight
    activations_recompute: int  # full-layer recomputation: layer inputs kept, one layer live
    activations_per_micro_batch: int  # one forward, no recomputation (what ActivationMeter measures)
    activations_configured: int  # as the --recompute-* flags say (= activations_full without them)
    activations_kept_per_micro_batch: int  # one forward under the --recompute-* flags (the meter's peak)
    activations_rebuilt: int  # the largest region recomputation rebuilds in backward (0 without)
    saved_params: int  # parameters/buffers ops save for backward: counted by the meter, no extra memory
    saved_params_configured: int  # the same under the --recompute-* flags (recomputed layers save none)
    saved_params_rebuilt: int  # those a rebuilt region saves
    params_total: int  # the whole model
    eligible_params: int  # FP8-eligible parameters on this GPU
    eligible_state_bytes: int  # weights + grads + master + moments of those parameters on this GPU
    design_bytes_per_param: float  # docs/design.md §1 for this level and layout
    # linear weights --first-last-layers-bf16 keeps out of FP8 on this GPU, their bytes, and `off`'s bytes
    high_precision_params: int = 0
    high_precision_state_bytes: int = 0
    design_high_precision_bytes_per_param: float = 0.0
    stage_totals: list = field(default_factory=list)  # fullest rank of each stage, bytes
    process: dict = field(default_factory=dict)  # beyond the categories: baseline, step_transients, allocator_slack

    @property
    def total(self) -> int:
        return sum(self.bytes.values())

    @property
    def process_peak(self) -> int:
        """The predicted process peak: the categories plus what the process holds besides."""
        return self.total + sum(self.process.values())

    @property
    def planned_bytes_per_param(self) -> float:
        return self.eligible_state_bytes / max(1, self.eligible_params)

    @property
    def planned_linear_bytes_per_param(self) -> float:
        """Per linear weight, the FP8 layers' and the high-precision first/last layers' together."""
        return (self.eligible_state_bytes + self.high_precision_state_bytes) / \
            max(1, self.eligible_params + self.high_precision_params)

    def as_trainer_memory(self) -> dict:
        """The figures in Trainer.memory()'s keys and meaning (activations_peak: one micro-batch, meter view)."""
        out = {k: self.bytes[k] for k in STATE_KEYS + ("fp8_weight_cache",)}
        out["activations_peak"] = self.activations_kept_per_micro_batch + self.saved_params_configured
        if self.activations_rebuilt:
            out["activations_rebuilt"] = self.activations_rebuilt + self.saved_params_rebuilt
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(total=self.total, process_peak=self.process_peak, planned_bytes_per_param=self.planned_bytes_per_param,
                 planned_linear_bytes_per_param=self.planned_linear_bytes_per_param)
        return d


def _stage_activations(config: Config, pp_rank: int, in_flight: int, cuda: bool) -> dict:
    """One stage's activations: per micro-batch and over the schedule, without recomputation, with every
    layer recomputed, and as the config's --recompute-* flags say (kept in flight + one rebuilt region)."""
    pp = config.parallel.pipeline_model_parallel_size
    layers = act.stage_layers(config, pp_rank)  # FP8 or not, per layer (--first-last-layers-bf16)
    first, last = pp_rank == 0, pp_rank == pp - 1
    ends = (act.embedding_bytes(config, cuda) if first else 0) + (act.head_bytes(config, cuda) if last else 0)
    each = [act.layer_bytes(config, cuda, fp8=fp8) for fp8 in layers]
    per_micro = sum(each) + ends
    recompute = in_flight * (len(layers) * act.layer_input_bytes(config) + ends) + max(each)
    kept, rebuilt, saved_layers, rebuilt_layers = act.recompute_split(config, layers, cuda)
    rope = act.rope_bytes(config)
    return dict(activations_per_micro_batch=per_micro, activations_full=in_flight * per_micro,
                activations_recompute=recompute, activations_configured=in_flight * (kept + ends) + rebuilt,
                activations_kept_per_micro_batch=kept + ends, activations_rebuilt=rebuilt,
                saved_params=act.saved_param_bytes(config, layers, last, cuda) + rope,
                saved_params_configured=act.saved_param_bytes(config, saved_layers, last, cuda) + rope,
                saved_params_rebuilt=act.saved_param_bytes(config, rebuilt_layers, False, cuda))


def plan_memory(config: Config, world_size: int, device: str = "cuda", recompute: bool = False,
                pp_rank: int | None = None, dp_rank: int | None = None,
                fixed_mmap_threshold: bool = False, import_rss: int | None = None) -> MemoryPlan:
    """Plan one GPU: the fullest one unless ``pp_rank``/``dp_rank`` pick a rank. Activations follow the
    config's --recompute-* flags; ``recompute=True`` plans every layer recomputed whatever they say.
    ``fixed_mmap_threshold``: the CPU run fixes glibc's mmap threshold (less allocator slack, process.py).
    ``import_rss``: resident bytes after the imports measured on the training machine (``mem.rss_at_start``),
    the CPU baseline's variable part; a typical figure is taken without it.

    ``config.model.vocab_size`` must be the padded vocabulary (as GPTModel sees it). ``device`` selects
    the kernels whose saved tensors differ (fused dropout and attention on ``cuda``).
    """
    if config.model.vocab_size is None:
        raise ValueError("--vocab-size: the planner needs the vocabulary size")
    dp = config.validate_layout(world_size)
    p, policy, t = config.parallel, config.precision.policy, config.training
    pp, cuda = p.pipeline_model_parallel_size, device == "cuda"
    micro_batches = t.global_batch_size // (t.micro_batch_size * dp)
    blockwise = config.precision.recipe.recipe == "blockwise"
    transposes = needs_transposes(torch.device(device), blockwise)
    candidates, stage_totals = [], []
    for r in range(pp) if pp_rank is None else [pp_rank]:
        params = stage_params(config, r)
        in_flight = min(pp - r, micro_batches) if pp > 1 else 1
        stage = _stage_activations(config, r, in_flight, cuda)
        fixed = {"fp8_weight_cache": fp8_weight_cache(params, policy, blockwise, transposes),
                 "fp8_scaling_state": fp8_scaling_state(params, policy, config.precision.recipe.amax_history_len),
                 "activations": stage["activations_recompute" if recompute else "activations_configured"]}
        ranks = model_states(params, policy, dp, p.use_distributed_optimizer)
        eligible = model_states(params, policy, dp, p.use_distributed_optimizer, only="fp8_eligible")
        high = model_states(params, policy, dp, p.use_distributed_optimizer, only="high_precision_layer")
        for d in range(dp) if dp_rank is None else [dp_rank]:
            candidates.append(dict(
                bytes={**ranks[d], **fixed}, pp_rank=r, dp_rank=d, in_flight=in_flight, **stage,
                eligible_params=sum(q.numel() for q in params if param_info(q).fp8_eligible),
                eligible_state_bytes=sum(eligible[d].values()),
                high_precision_params=sum(q.numel() for q in params if param_info(q).high_precision_layer),
                high_precision_state_bytes=sum(high[d].values())))
        stage_totals.append(max(sum(c["bytes"].values()) for c in candidates if c["pp_rank"] == r))
    worst = max(candidates, key=lambda c: sum(c["bytes"].values()))
    worst["process"] = process_extras(config, worst["bytes"]["activations"], worst["pp_rank"] == pp - 1, device,
                                      fixed_mmap_threshold, import_rss)
    layout = dict(tp=p.tensor_model_parallel_size, pp=pp, dp=dp, sp=p.sequence_parallel,
                  distributed_optimizer=p.use_distributed_optimizer, world_size=world_size)
    design = policy.eligible_bytes_per_param(dp, p.use_distributed_optimizer)
    return MemoryPlan(layout=layout, level=config.precision.fp8_level, device=device, recompute=recompute,
                      params_total=total_params(config), design_bytes_per_param=design,
                      design_high_precision_bytes_per_param=policy.other_bytes_per_param(
                          dp, p.use_distributed_optimizer),
                      stage_totals=stage_totals, **worst)
