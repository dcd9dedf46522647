"""Process groups, counted collectives and the tensor/sequence-parallel autograd mappings."""

from .state import ParallelState, single_process  # noqa: F401
