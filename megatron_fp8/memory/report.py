"""Text tables of memory plans (tools/estimate_memory.py prints them; the JSON form is MemoryPlan.to_dict)."""

from ..config import Config
from .planner import CATEGORIES, GIB, MemoryPlan


def _gib(nbytes: float, unit: int = GIB) -> str:
    return f"{nbytes / unit:9.2f}"


def _params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def _layout(plan: MemoryPlan) -> str:
    lay = plan.layout
    return f"TP{lay['tp']} PP{lay['pp']} DP{lay['dp']}"


def describe(config: Config, plan: MemoryPlan, raw_vocab: int) -> str:
    m, t, p = config.model, config.training, config.parallel
    policy = config.precision.policy
    dp = plan.layout["dp"]
    micro = t.global_batch_size // (t.micro_batch_size * dp)
    return "\n".join([
        f"model: {_params(plan.params_total)} parameters | {m.num_layers} layers, hidden {m.hidden_size}, "
        f"{m.num_attention_heads} heads, ffn {m.ffn_hidden_size}{' (SwiGLU)' if m.swiglu else ''}, "
        f"seq {m.seq_length}, vocab {m.vocab_size} ({raw_vocab} padded)",
        f"layout: {plan.layout['world_size']} GPUs = {_layout(plan)} | sequence parallel "
        f"{'on' if p.sequence_parallel else 'off'} | distributed optimizer "
        f"{'on' if p.use_distributed_optimizer else 'off'} | micro-batch {t.micro_batch_size}, global batch "
        f"{t.global_batch_size} ({micro} micro-batches per rank and step)",
        f"precision: compute {str(policy.compute).replace('torch.', '')} | device kernels: {plan.device}"
        + (f" | {config.precision.first_last_note()}" if config.precision.first_last_layers_bf16 else "")])


def level_table(plans: dict, budget_gib: float | None) -> str:
    """Rows: categories; columns: one plan per level (the fullest GPU of each). MiB for small models."""
    levels = list(plans)
    unit, unit_name = (GIB, "GiB") if max(p.total for p in plans.values()) >= GIB else (1 << 20, "MiB")

    def row(label, values):
        return f"{label:26s}" + "".join(" " + _gib(v, unit) for v in values)

    head = f"{f'per GPU ({unit_name})':26s}" + "".join(f"{lvl:>10s}" for lvl in levels)
    rows = [head, "-" * len(head)]
    for key in CATEGORIES:
        label = key if key != "activations" else "activations (as chosen)"
        rows.append(row(label, [plans[x].bytes[key] for x in levels]))
    rows.append(row("  without recomputation", [plans[x].activations_full for x in levels]))
    rows.append(row("  with recomputation", [plans[x].activations_recompute for x in levels]))
    rows.append(row("  log's activations_peak", [plans[x].as_trainer_memory()["activations_peak"] for x in levels]))
    rows.append("-" * len(head))
    rows.append(row("total", [plans[x].total for x in levels]))
    for key, label in (("baseline", "+ import baseline"), ("step_transients", "+ step transients"),
                       ("allocator_slack", "+ allocator slack")):
        rows.append(row(label, [plans[x].process.get(key, 0) for x in levels]))
    rows.append(row("process peak", [plans[x].process_peak for x in levels]))
    if budget_gib:
        rows.append(f"{f'fits in {budget_gib:g} GiB':26s}"
                    + "".join(f"{'yes' if plans[x].total <= budget_gib * GIB else 'NO':>10s}" for x in levels))
    rows.append(f"{'GPU planned (stage, dp)':26s}"
                + "".join(f"{f'({plans[x].pp_rank},{plans[x].dp_rank})':>10s}" for x in levels))
    rows.append(f"{'B/eligible param: plan':26s}"
                + "".join(f"{plans[x].planned_bytes_per_param:10.2f}" for x in levels))
    rows.append(f"{'  docs/design.md §1 table':26s}"
                + "".join(f"{plans[x].design_bytes_per_param:10.2f}" for x in levels))
    if any(plans[x].high_precision_params for x in levels):  # --first-last-layers-bf16
        rows.append(f"{'B/first-last linear param':26s}"
                    + "".join(f"{plans[x].design_high_precision_bytes_per_param:10.2f}" for x in levels))
        rows.append(f"{'B/linear param (all)':26s}"
                    + "".join(f"{plans[x].planned_linear_bytes_per_param:10.2f}" for x in levels))
    return "\n".join(rows)


def fitting_table(found: dict, world_size: int, budget_gib: float, settings: str = "") -> str:
    """One row per level: the largest shape that fits, its layout and its fullest GPU."""
    cols = ("weights", "grads", "master", "exp_avg", "exp_avg_sq", "fp8_weight_cache", "activations")
    short = ("weights", "grads", "master", "exp_avg", "exp_avg_sq", "fp8_cache", "activ.")
    head = f"{'level':6s} {'largest that fits':18s} {'params':>8s} {'layout':>14s}" \
           + "".join(f"{c:>11s}" for c in short) + f"{'total':>10s}{'B/p plan':>9s}{'B/p §1':>8s}"
    rows = [f"largest GPT on {world_size} x {budget_gib:g} GiB (per-GPU GiB of the fullest GPU){settings}:", head,
            "-" * len(head)]
    for level, hit in found.items():
        if hit is None:
            rows.append(f"{level:6s} nothing in the table fits")
            continue
        shape, plan = hit
        rows.append(f"{level:6s} {shape.name:18s} {_params(plan.params_total):>8s} {_layout(plan):>14s}"
                    + "".join("  " + _gib(plan.bytes[c]) for c in cols) + " " + _gib(plan.total)
                    + f"{plan.planned_bytes_per_param:9.2f}{plan.design_bytes_per_param:8.2f}")
    return "\n".join(rows)
