"""Where the csrc sources live and how to compile them: the one place setup.py and the JIT loader
(:mod:`megatron_fp8.fp8.kernels`) take sources and flags from."""

import glob
import hashlib
import os
import shutil

# Strict IEEE order (no FMA contraction) keeps the C++ kernels bit-identical to the torch reference.
# -fno-math-errno lets gcc vectorise sqrtf (it changes no result). -march=native: the kernels are built
# on the machine that runs them (pip install or JIT), so they use its vector width.
CXX_FLAGS = ["-O3", "-fopenmp", "-march=native", "-ffp-contract=off", "-fno-math-errno"]
NVCC_FLAGS = ["-O3", "--fmad=false", "-std=c++17"]
LINK_FLAGS = ["-fopenmp"]

# What the JIT build is called (setup.py builds it as megatron_fp8._C).
JIT_NAME = "megatron_fp8_C"


def repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cpu_sources(root: str) -> list[str]:
    return sorted(glob.glob(os.path.join(root, "csrc", "cpu", "*.cpp"))) + [
        os.path.join(root, "csrc", "bindings.cpp")]


def cuda_sources(root: str) -> list[str]:
    return sorted(glob.glob(os.path.join(root, "csrc", "cuda", "*.cu")))


def all_source_files(root: str) -> list[str]:
    """Every file the build reads (sources and headers), for change detection."""
    files = []
    for pattern in ("*.cpp", "*.h", "*.cuh", "*.cu"):
        files += glob.glob(os.path.join(root, "csrc", "**", pattern), recursive=True)
    return sorted(files)


def source_hash(root: str) -> int | None:
    """A 60-bit digest of the csrc tree; compiled into the module so the loader can spot a stale build.
    None when the sources are not present (an installed package without its checkout)."""
    files = all_source_files(root)
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        digest.update(os.path.relpath(path, root).encode())
        with open(path, "rb") as f:
            digest.update(f.read())
    return int(digest.hexdigest()[:15], 16)


def cuda_buildable() -> bool:
    """True when the installed torch has CUDA and a CUDA toolkit is present."""
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    return torch.version.cuda is not None and (CUDA_HOME is not None or shutil.which("nvcc") is not None)


def _macros(root: str, use_cuda: bool) -> list[str]:
    macros = ["-DMFP8_WITH_CUDA"] if use_cuda else []
    digest = source_hash(root)
    if digest is not None:
        macros.append(f"-DMFP8_SOURCE_HASH={digest:#x}ULL")
    return macros


def _link_flags() -> list[str]:
    """LINK_FLAGS plus an rpath to torch's libraries, so ``import megatron_fp8._C`` works on its own."""
    from torch.utils.cpp_extension import library_paths

    return LINK_FLAGS + [f"-Wl,-rpath,{path}" for path in library_paths()]


def extension_kwargs(root: str, relative: bool = False) -> dict:
    """Sources, include dirs and flags for building ``megatron_fp8._C`` from a checkout at ``root``.
    ``relative``: source paths relative to ``root`` (setuptools refuses absolute ones)."""
    use_cuda = cuda_buildable()
    sources = cpu_sources(root) + (cuda_sources(root) if use_cuda else [])
    if relative:
        sources = [os.path.relpath(s, root) for s in sources]
    macros = _macros(root, use_cuda)
    extra = {"cxx": CXX_FLAGS + macros}
    if use_cuda:
        extra["nvcc"] = NVCC_FLAGS + macros
    return {
        "sources": sources,
        "include_dirs": [os.path.join(root, "csrc", "include")],
        "extra_compile_args": extra,
        "extra_link_args": _link_flags(),
        "use_cuda": use_cuda,
    }


def jit_kwargs(root: str) -> dict:
    """Keyword arguments of ``torch.utils.cpp_extension.load`` for the same build."""
    kw = extension_kwargs(root)
    return {
        "name": JIT_NAME,
        "sources": kw["sources"],
        "extra_include_paths": kw["include_dirs"],
        "extra_cflags": kw["extra_compile_args"]["cxx"],
        "extra_cuda_cflags": kw["extra_compile_args"].get("nvcc", []),
        "extra_ldflags": kw["extra_link_args"],
        "with_cuda": kw["use_cuda"],
    }


# Where JIT builds go instead of ~/.cache/megatron_fp8/torch_extensions (e.g. a folder inside a checkout on
# a machine whose home is not writable; scripts/gpu_check.sh sets it to build/jit).
BUILD_DIR_ENV = "MEGATRON_FP8_BUILD_DIR"


def jit_build_dir(root: str) -> str:
    """Cache folder of the JIT build, keyed by sources, flags, CUDA architectures, torch and Python versions."""
    import sys

    import torch

    kw = jit_kwargs(root)
    key = repr((source_hash(root), kw["extra_cflags"], kw["extra_cuda_cflags"], kw["extra_ldflags"],
                kw["with_cuda"], os.environ.get("TORCH_CUDA_ARCH_LIST", ""), torch.__version__,
                sys.version_info[:2]))
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    base = os.environ.get(BUILD_DIR_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "megatron_fp8",
                                                         "torch_extensions")
    return os.path.join(os.path.abspath(base), digest)
