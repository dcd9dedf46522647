"""Kernel entry points: the compiled csrc extension when available, else the pure-torch reference.

(Placeholder dispatch: the loader for ``megatron_fp8._C`` lands with the csrc kernels.)
"""

from .reference import (AdamWHyper, AdamWTensors, adamw_step, cast_transpose_amax, fp8_accumulate,  # noqa: F401
                        scale_cast_amax, sum_shards)

BACKEND = "reference"
