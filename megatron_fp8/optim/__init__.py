"""Gradient buffers, the FP8-aware AdamW, gradient clipping and the learning-rate schedule."""
