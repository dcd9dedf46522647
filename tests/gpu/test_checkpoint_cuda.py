"""A checkpoint saved on the GPU loads in a process that has no GPU at all (CUDA_VISIBLE_DEVICES=""):
every parameter, scale and optimizer state bit for bit, and the next step's loss matches the GPU's
within the CPU/GPU tolerance of test_training_cuda.py."""

import os
import subprocess
import sys

import pytest
import torch

from megatron_fp8.layers.weights import param_info
from megatron_fp8.training import Trainer

from ..helpers import tiny_config
from .test_training_cuda import train

pytestmark = pytest.mark.gpu
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def flat(obj, prefix=""):
    """Every tensor in a nested dict/list, by path."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    out = {}
    for k, v in items:
        out.update(flat(v, f"{prefix}/{k}"))
    return out


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    view = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return torch.equal(a.detach().cpu().contiguous().view(view), b.detach().cpu().contiguous().view(view))


@pytest.mark.parametrize("level", ["O2", "O3"])
def test_saved_on_gpu_loads_on_cpu(tmp_path, level):
    trainer = Trainer(tiny_config(level), device=torch.device("cuda", 0))
    train(trainer, 1)
    trainer.save(str(tmp_path / "ckpt"))
    trainer.finish_saves()
    out = tmp_path / "loaded.pt"
    # No GPU visible; the reference kernels (bit-identical to the compiled ones) so that the CPU-only
    # process never tries a JIT build of its own.
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", MEGATRON_FP8_KERNELS="reference", PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    env.pop("MEGATRON_FP8_REQUIRE_KERNELS", None)
    done = subprocess.run([sys.executable, "-m", "tests.gpu.load_on_cpu", str(tmp_path / "ckpt"), level, str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    loaded = torch.load(out, weights_only=True)
    assert loaded["iteration"] == 1
    for name, p in trainer.model.named_parameters():
        assert same_bits(loaded["params"][name], p), f"parameter {name} differs after GPU -> CPU"
        if param_info(p).scale_inv is not None:
            assert same_bits(loaded["scale_invs"][name], param_info(p).scale_inv), f"scale_inv of {name} differs"
    ours, theirs = flat(trainer.optimizer.state_dict()), flat(loaded["optim"])
    assert ours.keys() == theirs.keys() and ours
    for key in ours:
        assert same_bits(theirs[key], ours[key]), f"optimizer state {key} differs after GPU -> CPU"
    gpu_loss = train(trainer, 1)[0][0]
    cpu_loss = loaded["next"][0]
    assert abs(gpu_loss - cpu_loss) <= 2e-3 * abs(gpu_loss), f"next step: GPU {gpu_loss} vs CPU {cpu_loss}"
