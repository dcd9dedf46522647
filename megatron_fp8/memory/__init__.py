"""A memory planner: per-GPU bytes of a training run, computed from the Config alone (no tensors).

It follows the implementation, not a textbook formula: which parameters exist on which rank and in which
storage (``inventory``, ``states``), what autograd keeps for backward (``activations``), and how the
1F1B schedule and the distributed optimizer spread them (``planner``). ``search`` answers FP8-LM's
Figure 1 question: the largest GPT that fits on N GPUs of a given memory at each precision level.
tests/test_memory_plan.py checks the figures against what Trainer.memory() measures.
"""

from .planner import MemoryPlan, plan_memory
from .search import GPT_SHAPES, largest_fitting

__all__ = ["MemoryPlan", "plan_memory", "GPT_SHAPES", "largest_fitting"]
