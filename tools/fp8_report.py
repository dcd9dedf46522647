r"""The FP8 statistics of a run (``--fp8-stats-interval``), read back from its ``--log-json`` file.

    python tools/fp8_report.py metrics.jsonl                  # tables: the worst tensors per statistic
    python tools/fp8_report.py metrics.jsonl --out fp8.png    # and each role's curves (needs matplotlib,
                                                              #  pip install 'megatron_fp8[plot]')

The table ranks tensors by the worst value each reached over the run (underflow: fraction of nonzero values
that became 0; saturation: fraction clamped at the format's maximum; rel_error: ||x - dq(q(x))|| / ||x||),
with the iteration where it happened, the amax and the scale's power of two there. The plot has one panel
per statistic and one curve per role (input, weight, grad_output, wgrad, exp_avg, ...), each the worst
tensor of that role at every statistics iteration. The table needs nothing beyond the standard library.
"""

import argparse
import json
import math
import sys

STATISTICS = ("underflow", "saturation", "rel_error")


def read_stats(path: str) -> list[tuple[int, dict]]:
    """``[(iteration, {tensor: figures})]`` of every row of ``path`` that carries FP8 statistics."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not a JSON line ({err.msg})") from None
            if isinstance(row, dict) and row.get("fp8_stats"):
                rows.append((int(row.get("fp8_stats_iteration", row.get("iteration", 0))), row["fp8_stats"]))
    return rows


def worst_tensors(rows: list[tuple[int, dict]], statistic: str, top: int) -> list[tuple]:
    """``(value, tensor, iteration, amax, scale_exp)`` of the ``top`` tensors by their worst value."""
    worst: dict[str, tuple] = {}
    for iteration, figures in rows:
        for name, f in figures.items():
            value = f[statistic]
            if name not in worst or _key(value) > _key(worst[name][0]):
                worst[name] = (value, name, iteration, f["amax"], f["scale_exp"])
    return sorted(worst.values(), key=lambda w: (-_key(w[0]), w[1]))[:top]


def _key(value: float) -> float:
    return math.inf if math.isnan(value) else value  # a NaN error is the worst there is


def role_curves(rows: list[tuple[int, dict]], statistic: str) -> dict[str, tuple[list, list]]:
    """``{role: (iterations, worst value of the role)}``."""
    curves: dict[str, tuple[list, list]] = {}
    for iteration, figures in rows:
        by_role: dict[str, float] = {}
        for name, f in figures.items():
            role = name.rsplit(".", 1)[-1]
            by_role[role] = max(by_role.get(role, -math.inf), f[statistic], key=_key)
        for role, value in by_role.items():
            xs, ys = curves.setdefault(role, ([], []))
            xs.append(iteration)
            ys.append(value)
    return curves


def format_table(rows: list[tuple[int, dict]], top: int) -> str:
    lines = []
    for statistic in STATISTICS:
        lines.append(f"worst {statistic} ({len({n for _, f in rows for n in f})} tensors, "
                     f"{len(rows)} statistics iterations)")
        lines.append(f"  {'value':>10}  {'iteration':>9}  {'amax':>10}  {'scale':>6}  tensor")
        for value, name, iteration, amax, scale_exp in worst_tensors(rows, statistic, top):
            shown = f"{value:.4%}" if statistic != "rel_error" else f"{value:.3e}"
            lines.append(f"  {shown:>10}  {iteration:>9}  {amax:>10.3e}  {'2^' + str(scale_exp):>6}  {name}")
        lines.append("")
    return "\n".join(lines)


def plot(rows: list[tuple[int, dict]], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(STATISTICS), 1, figsize=(9, 3.2 * len(STATISTICS)), sharex=True)
    for ax, statistic in zip(axes, STATISTICS):
        for role, (xs, ys) in sorted(role_curves(rows, statistic).items()):
            ax.plot(xs, ys, marker="o", markersize=3, label=role)
        ax.set_ylabel(f"worst {statistic}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, ncol=4)
    axes[-1].set_xlabel("iteration")
    fig.suptitle("FP8 statistics per role (worst tensor)")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log", help="a --log-json file of a run with --fp8-stats-interval")
    parser.add_argument("--out", help="write the per-role curves to this PNG (needs matplotlib)")
    parser.add_argument("--top", type=int, default=10, help="tensors per table (default 10)")
    args = parser.parse_args(argv)
    try:
        rows = read_stats(args.log)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if not rows:
        print(f"error: {args.log} has no FP8 statistics (run with --fp8-stats-interval N and --log-json)",
              file=sys.stderr)
        return 1
    print(format_table(rows, args.top))
    if args.out:
        try:
            plot(rows, args.out)
        except ImportError:
            print(f"note: matplotlib is not installed (pip install 'megatron_fp8[plot]'); no plot written to "
                  f"{args.out}, the tables above are complete", file=sys.stderr)
            return 0
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
