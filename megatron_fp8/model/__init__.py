"""The GPT model in Megatron's [sequence, batch, hidden] layout, stage-aware for pipelining."""

from .gpt import GPTModel  # noqa: F401
