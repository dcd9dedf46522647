"""Checkpoint files with planted code, made the way an attacker would: the payload's pickle runs a shell
command that writes a marker file, and the checksums in metadata.json are rewritten to match."""

import json
import os
import shutil

import torch

from megatron_fp8.checkpoint.tracker import METADATA, iteration_dir, read_tracker
from megatron_fp8.fsutil import file_sha256 as sha256


class PlantedCode:
    """Unpickling this runs ``touch marker`` (what an unsafe torch.load would do)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def poison(root: str, name: str, marker: str) -> str:
    """Add a PlantedCode object to file ``name`` of the newest checkpoint under ``root``; fix metadata."""
    directory = iteration_dir(root, read_tracker(root))
    path = os.path.join(directory, name)
    obj = torch.load(path, weights_only=True)
    obj["planted"] = PlantedCode(marker)
    torch.save(obj, path)
    meta_path = os.path.join(directory, METADATA)
    metadata = json.load(open(meta_path))
    metadata["files"][name] = {"sha256": sha256(path), "bytes": os.path.getsize(path)}
    json.dump(metadata, open(meta_path, "w"))
    return path


def assert_payload_is_live(path: str, marker: str) -> None:
    """The planted file really runs code when loaded unsafely (so a test of the safe path can fail)."""
    probe = path + ".probe"
    shutil.copy(path, probe)
    torch.load(probe, weights_only=False)
    assert os.path.exists(marker), "the planted payload did not run under an unsafe load"
    os.remove(marker)
    os.remove(probe)
