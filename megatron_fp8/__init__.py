"""megatron_fp8: Megatron-style GPT pretraining with FP8 weights, gradients, communication and optimizer states."""

__version__ = "0.1.0"
