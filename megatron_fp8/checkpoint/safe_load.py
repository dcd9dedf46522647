"""The one way checkpoint files are read: ``torch.load(weights_only=True)``, which never runs code.

Our files hold only tensors, dtypes and plain containers of numbers and strings (RNG states are stored
as such too). Files written before that change kept numpy's RNG state as an ndarray: the three numpy
globals an ndarray needs (array reconstruction, ndarray, dtype) are allow-listed; they rebuild data and
call nothing else. Any other global in a file is refused with a message naming the file, before any
object of it is built.
"""

import pickle

import numpy as np
import torch

# numpy 2 pickles ndarrays through numpy._core; files written under numpy 1 name numpy.core
_NUMPY_ARRAY_GLOBALS = [np.ndarray, np.dtype, np._core.multiarray._reconstruct,
                        (np._core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct")]
_NUMPY_ARRAY_GLOBALS += [type(np.dtype(code)) for code in ("u4", "f8", "i8")]  # numpy 2 dtype classes


class UnsafeCheckpointError(ValueError):
    """A checkpoint file asks to build objects a checkpoint never contains (possibly planted code)."""


def load(path: str):
    """The object stored in ``path``; raises :class:`UnsafeCheckpointError` naming the file and the
    refused global instead of executing anything."""
    try:
        with torch.serialization.safe_globals(_NUMPY_ARRAY_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = next((line.strip() for line in str(err).splitlines() if "GLOBAL" in line), str(err)[:200])
        raise UnsafeCheckpointError(
            f"{path}: refused to load: the file asks to build objects that a megatron_fp8 checkpoint never "
            f"contains ({refused}); loading it could run code planted in it. Nothing was executed. If you "
            f"wrote this file yourself with another tool, re-save it as tensors and plain containers") from None
