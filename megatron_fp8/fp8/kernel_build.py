"""Where the csrc sources live and how to compile them; shared by setup.py and the JIT loader."""

import glob
import os
import shutil

# Strict IEEE order (no FMA contraction) keeps the C++ kernels bit-identical to the torch reference.
CXX_FLAGS = ["-O3", "-fopenmp", "-march=native", "-ffp-contract=off", "-std=c++17"]
NVCC_FLAGS = ["-O3", "--fmad=false", "-std=c++17"]
LINK_FLAGS = ["-fopenmp"]


def repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cpu_sources(root: str) -> list[str]:
    return sorted(glob.glob(os.path.join(root, "csrc", "cpu", "*.cpp"))) + [
        os.path.join(root, "csrc", "bindings.cpp")]


def cuda_sources(root: str) -> list[str]:
    return sorted(glob.glob(os.path.join(root, "csrc", "cuda", "*.cu")))


def cuda_buildable() -> bool:
    """True when the installed torch has CUDA and a CUDA toolkit is present."""
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    return torch.version.cuda is not None and (CUDA_HOME is not None or shutil.which("nvcc") is not None)


def extension_kwargs(root: str) -> dict:
    """Sources, include dirs and flags for building ``megatron_fp8._C`` from a checkout at ``root``."""
    use_cuda = cuda_buildable()
    sources = cpu_sources(root) + (cuda_sources(root) if use_cuda else [])
    macros = ["-DMFP8_WITH_CUDA"] if use_cuda else []
    extra = {"cxx": CXX_FLAGS + macros}
    if use_cuda:
        extra["nvcc"] = NVCC_FLAGS + macros
    return {
        "sources": sources,
        "include_dirs": [os.path.join(root, "csrc", "include")],
        "extra_compile_args": extra,
        "extra_link_args": LINK_FLAGS,
        "use_cuda": use_cuda,
    }
