"""FP8 numerics: formats, scaling, scaled tensors, GEMMs and the FP8 linear (no torch.distributed here)."""
