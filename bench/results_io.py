"""Where every benchmark writes its figures: one JSON file per benchmark under bench/results/."""

import json
import os

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def save_results(path: str, config: dict, results: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"config": config, "results": results}, f, indent=1)
    print(f"wrote {path}")
