"""Megatron's BlendedDataset: draw samples from several datasets in fixed proportions, deterministically.

Sample i comes from the dataset whose realised count lags its target weight * i the most (ties: the
lower index), so every prefix of the blend matches the weights to within one sample per dataset.
"""

import numpy as np

from megatron_fp8.data.index_cache import load_or_build

BLEND_FORMAT_VERSION = 1


def build_blending_indices(weights, size: int) -> dict:
    """(dataset_index int16, dataset_sample_index int64) for `size` samples."""
    weights = [float(w) for w in np.asarray(weights, dtype=np.float64) / np.sum(weights)]
    counts = [0] * len(weights)
    choice = np.empty(size, dtype=np.int16)
    within = np.empty(size, dtype=np.int64)
    candidates = list(enumerate(weights))
    for i in range(size):
        scale = max(i, 1)
        best, best_err = 0, None
        for d, w in candidates:
            err = w * scale - counts[d]
            if best_err is None or err > best_err:
                best, best_err = d, err
        choice[i] = best
        within[i] = counts[best]
        counts[best] += 1
    return {"dataset_index": choice, "dataset_sample_index": within}


class BlendedDataset:
    """`size` samples mixed from `datasets` by `weights` (normalised here)."""

    def __init__(self, datasets, weights, size: int, cache_dir: str | None = None, split_name: str = "train"):
        if len(datasets) != len(weights) or not datasets:
            raise ValueError("--data-path: need one weight per dataset")
        if len(datasets) > np.iinfo(np.int16).max:
            raise ValueError("--data-path: at most 32767 datasets can be blended")
        self.datasets = list(datasets)
        self.weights = list(np.asarray(weights, dtype=np.float64) / np.sum(weights))
        self.size = int(size)
        descriptions = [getattr(d, "description", None) for d in self.datasets]
        self.description = {"class": "BlendedDataset", "version": BLEND_FORMAT_VERSION, "split": split_name,
                            "datasets": descriptions, "weights": self.weights, "size": self.size}
        cacheable = cache_dir if all(d and d.get("dataset") for d in descriptions) else None
        arrays = load_or_build(cacheable, f"BlendedDataset-{split_name}", self.description,
                               ("dataset_index", "dataset_sample_index"),
                               lambda: build_blending_indices(self.weights, self.size))
        self.dataset_index, self.dataset_sample_index = arrays["dataset_index"], arrays["dataset_sample_index"]
        for d, dataset in enumerate(self.datasets):
            used = self.dataset_sample_index[self.dataset_index == d]
            if used.size and int(used.max()) >= len(dataset):
                raise ValueError(f"blend needs {int(used.max()) + 1} samples of dataset {d}, which has "
                                 f"{len(dataset)}")

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, idx: int) -> dict:
        if not -self.size <= idx < self.size:
            raise IndexError(f"sample {idx} out of range for {self.size} samples")
        d = int(self.dataset_index[idx])
        return self.datasets[d][int(self.dataset_sample_index[idx])]
