"""Micro-batches from a map-style dataset, resumable from a count of consumed samples.

Like Megatron's pretraining sampler, samples are read in dataset order (the dataset's shuffle index
already randomises them): global batch ``k`` covers samples ``[k*G, (k+1)*G)`` and data-parallel rank
``r`` takes its ``G/dp`` of them as consecutive micro-batches. Resuming at ``consumed_samples`` gives
exactly the batches an uninterrupted run would have seen.
"""

import numpy as np
import torch


def micro_batch_indices(consumed_samples: int, global_batch: int, micro_batch: int, dp_rank: int, dp_size: int):
    """Sample indices of each micro-batch of this rank in the global batch starting at ``consumed_samples``."""
    per_rank = global_batch // dp_size
    start = consumed_samples + dp_rank * per_rank
    return [list(range(start + i, start + i + micro_batch)) for i in range(0, per_rank, micro_batch)]


def make_batch(samples: list[dict], device) -> dict:
    """Megatron's get_batch. Plain pretraining samples (``{"text"}``): inputs/labels shifted by one, every
    token counted in the loss. Samples that carry their own rows (``tokens``, ``labels``, ``loss_mask``,
    ``position_ids`` and, where documents are packed, ``document_ids``: data/ltor.py, data/sft_dataset.py)
    are stacked as they are."""
    if "text" not in samples[0]:
        return {key: torch.from_numpy(np.stack([s[key] for s in samples])).to(device) for key in samples[0]}
    text = torch.from_numpy(np.stack([s["text"] for s in samples]).astype(np.int64)).to(device)
    tokens, labels = text[:, :-1].contiguous(), text[:, 1:].contiguous()
    seq = tokens.shape[1]
    return {"tokens": tokens, "labels": labels,
            "loss_mask": torch.ones(tokens.shape, dtype=torch.float32, device=device),
            "position_ids": torch.arange(seq, device=device).unsqueeze(0).expand_as(tokens)}


def global_batch(dataset, consumed_samples: int, global_batch_size: int, micro_batch_size: int,
                 dp_rank: int, dp_size: int, device) -> list[dict]:
    """This rank's micro-batches of the global batch that starts at ``consumed_samples``."""
    n = len(dataset)
    return [make_batch([dataset[i % n] for i in idx], device)
            for idx in micro_batch_indices(consumed_samples, global_batch_size, micro_batch_size, dp_rank, dp_size)]
