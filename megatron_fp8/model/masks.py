"""Attention masks for packed samples: causal within each document, nothing across documents."""

import torch


def packed_causal_mask(document_ids: torch.Tensor) -> torch.Tensor:
    """Boolean mask ``[b, 1, s, s]`` for SDPA (True = may attend): token i sees token j when j <= i and both
    belong to the same document. Built only for batches that carry ``document_ids`` (--sft packing,
    --reset-attention-mask); every other batch keeps SDPA's ``is_causal`` path."""
    s = document_ids.shape[-1]
    causal = torch.ones(s, s, dtype=torch.bool, device=document_ids.device).tril_()
    same = document_ids.unsqueeze(-1) == document_ids.unsqueeze(-2)
    return (same & causal).unsqueeze(1)
