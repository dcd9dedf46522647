"""Cache of dataset index arrays as .npy files named by a hash of what determines them.

Each array is written atomically and the description file last, so a description on disk means every
array it lists is complete; loading memory-maps the arrays.
"""

import hashlib
import json
import logging
import os

import numpy as np

from megatron_fp8.fsutil import atomic_file, atomic_write_bytes

logger = logging.getLogger(__name__)


def describe(description: dict) -> tuple[str, str]:
    """(canonical JSON text, its md5) for a description dict."""
    text = json.dumps(description, sort_keys=True, indent=1)
    return text, hashlib.md5(text.encode("utf-8")).hexdigest()


def _paths(directory, digest, kind, names):
    base = os.path.join(directory, f"{digest}-{kind}")
    return base + "-description.json", {n: f"{base}-{n}.npy" for n in names}


def load_or_build(directory: str | None, kind: str, description: dict, names, build) -> dict:
    """Arrays `names` from the cache in `directory`, or from `build()` (then saved when possible)."""
    text, digest = describe(description)
    if directory:
        desc_path, paths = _paths(directory, digest, kind, names)
        if os.path.isfile(desc_path) and all(os.path.isfile(p) for p in paths.values()):
            try:
                return {n: np.load(p, mmap_mode="r", allow_pickle=False) for n, p in paths.items()}
            except (ValueError, OSError) as err:
                logger.warning("index cache %s unreadable (%s); rebuilding", desc_path, err)
    arrays = build()
    if directory:
        try:
            os.makedirs(directory, exist_ok=True)
            for name, path in paths.items():
                with atomic_file(path) as tmp:
                    with open(tmp, "wb") as handle:
                        np.save(handle, arrays[name], allow_pickle=False)
            atomic_write_bytes(desc_path, text.encode("utf-8"))
        except OSError as err:
            logger.warning("cannot cache %s indices in %s (%s); keeping them in memory", kind, directory, err)
    return arrays
