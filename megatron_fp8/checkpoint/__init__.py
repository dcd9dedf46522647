"""Checkpoints: atomic save/load of model, optimizer, FP8 scaling state, RNG and data position."""
