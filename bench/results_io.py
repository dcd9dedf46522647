"""Where every benchmark writes its figures: one JSON file per benchmark under bench/results/."""

import json
import os

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def save_results(path: str, config: dict, results: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"config": config, "results": results}, f, indent=1)
    print(f"wrote {path}")


def plot_curves(results: dict, path: str, ylabel: str, title: str, log_scale: bool = False) -> bool:
    """One loss curve per entry of ``results`` ({name: {"curve": [(iteration, loss)], "final_valid_loss"}})
    saved to ``path``; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in results.items():
        its, losses = zip(*r["curve"])
        ax.plot(its, losses, label=f"{name} (valid {r['final_valid_loss']:.4f})", linewidth=1)
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    if log_scale:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True
