"""The GPU benchmark's tables as text, from its JSON results (no torch import: the report step of
scripts/gpu_check.sh uses this even when torch is what failed)."""

BASELINE = "off"
NAN = float("nan")


def level_table(levels: dict) -> str:
    base = levels.get(BASELINE, {})
    rows = [f"{'level (--bf16)':15s} {'s/step':>8s} {'tokens/s':>10s} {'vs off':>7s} {'peak GiB':>9s} {'vs off':>7s} "
            f"{'state GiB':>9s} {'fallbacks':>9s}"]
    for level, r in levels.items():
        if "step_time_s" not in r:
            rows.append(f"{level:15s} {r.get('error') or r.get('skipped')}")
            continue
        peak, base_peak = r.get("max_memory_allocated"), base.get("max_memory_allocated")
        rows.append(f"{level:15s} {r['step_time_s']:8.3f} {r['tokens_per_sec']:10.0f} "
                    f"{(r['step_time_s'] / base['step_time_s'] if 'step_time_s' in base else NAN):7.2f} "
                    f"{(peak / 2**30 if peak else NAN):9.2f} {(peak / base_peak if peak and base_peak else NAN):7.2f} "
                    f"{r['model_state_bytes'] / 2**30:9.3f} {sum(r['gemm_fallbacks'].values()):9d}")
    return "\n".join(rows)


def gemm_table(gemms: list) -> str:
    rows = [f"{'GEMM':10s} {'M':>6s} {'K':>6s} {'N':>6s} {'A':>5s} {'FP8 TFLOP/s':>12s} {'BF16 TFLOP/s':>13s} "
            f"{'FP8/BF16':>9s}"]
    rows += [f"{g['gemm']:10s} {g['M']:6d} {g['K']:6d} {g['N']:6d} {g['a']:>5s} {g['fp8_tflops']:12.1f} "
             f"{g['bf16_tflops']:13.1f} {g['fp8_vs_bf16']:9.2f}" for g in gemms]
    return "\n".join(rows)


def tables(results: dict) -> str:
    parts = []
    if results.get("levels"):
        parts.append(level_table(results["levels"]))
    if results.get("gemm"):
        parts.append(gemm_table(results["gemm"]))
    if results.get("scaled_mm_rules"):
        parts.append("raw torch._scaled_mm on this device:\n" + "\n".join(
            f"  {case:40s} {verdict}" for case, verdict in results["scaled_mm_rules"].items()))
    return "\n\n".join(parts)
