"""Megatron's left-to-right masks for pretraining samples that span documents (get_ltor_masks_and_position_ids).

A pretraining sample is ``seq_length + 1`` tokens that run across end-of-document (eod) tokens. As in
Megatron-LM, a document ends *after* its eod token: with ``--reset-position-ids`` positions restart at 0
on the token after each eod, with ``--reset-attention-mask`` no token attends across that boundary, and
with ``--eod-mask-loss`` predictions made from an eod token (of the next document's first token) carry no
loss. Samples come out in the same form as SFT samples, so both train through one code path.
"""

import numpy as np


def ltor_sample(text: np.ndarray, eod: int, reset_position_ids: bool, reset_attention_mask: bool,
                eod_mask_loss: bool) -> dict:
    """The micro-batch row of one pretraining sample ``text`` (``seq_length + 1`` tokens)."""
    tokens, labels = text[:-1].astype(np.int64), text[1:].astype(np.int64)
    is_eod = tokens == eod
    documents = np.cumsum(is_eod) - is_eod  # eod tokens before this one: the document it belongs to
    if reset_position_ids:
        starts = np.concatenate([[0], np.nonzero(is_eod)[0] + 1])
        positions = np.arange(tokens.size) - starts[documents]
    else:
        positions = np.arange(tokens.size)
    sample = {"tokens": tokens, "labels": labels, "position_ids": positions.astype(np.int64),
              "loss_mask": (~is_eod if eod_mask_loss else np.ones(tokens.size, bool)).astype(np.float32)}
    if reset_attention_mask:
        sample["document_ids"] = documents.astype(np.int64)
    return sample


class LtorDataset:
    """A pretraining dataset (items ``{"text"}``) whose items carry Megatron's masks and position ids."""

    def __init__(self, dataset, eod: int, reset_position_ids: bool, reset_attention_mask: bool,
                 eod_mask_loss: bool):
        self.dataset, self.eod = dataset, eod
        self.flags = (reset_position_ids, reset_attention_mask, eod_mask_loss)
        self.description = getattr(dataset, "description", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx: int) -> dict:
        return ltor_sample(self.dataset[idx]["text"], self.eod, *self.flags)


def with_ltor_masks(datasets, cfg, eod: int):
    """``datasets`` wrapped when any of --reset-position-ids, --reset-attention-mask, --eod-mask-loss is on."""
    flags = (cfg.reset_position_ids, cfg.reset_attention_mask, cfg.eod_mask_loss)
    if not any(flags):
        return datasets
    return tuple(None if d is None else LtorDataset(d, eod, *flags) for d in datasets)
