"""Tensor-parallel building blocks of the model, carrying FP8 weights where the precision policy says."""
