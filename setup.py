"""Install megatron_fp8 and build its C++ (and, with a CUDA torch, CUDA) kernels.

The kernels are optional at install time: if the compiler fails, the package still installs and the
kernel loader retries a JIT build on first use, falling back to the pure-torch reference with one clear
warning. Install with ``pip install --no-build-isolation -e .`` so the build sees the installed torch.
With a CUDA torch and nvcc (CUDA 12 or 13) the CUDA kernels are built too; ``TORCH_CUDA_ARCH_LIST=9.0``
(H100/H200) limits the build to the GPU at hand, which keeps it short (scripts/gpu_check.sh does that).
"""

import os
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def _extension_build():
    """Return (ext_modules, cmdclass), or empty ones when torch is not importable yet."""
    try:
        from torch.utils import cpp_extension
    except ImportError:  # pragma: no cover - plain `pip install` without torch present
        print("megatron_fp8: torch not importable at build time; kernels will be JIT-built on first use")
        return [], {}
    from megatron_fp8.fp8.kernel_build import extension_kwargs

    kwargs = extension_kwargs(HERE, relative=True)  # setuptools wants relative sources
    use_cuda = kwargs.pop("use_cuda")
    ext_cls = cpp_extension.CUDAExtension if use_cuda else cpp_extension.CppExtension
    ext = ext_cls(name="megatron_fp8._C", **kwargs)

    class OptionalBuildExt(cpp_extension.BuildExtension):
        """Builds the kernels, but never fails the install: the loader can JIT-build or fall back."""

        def build_extension(self, extension):
            try:
                super().build_extension(extension)
            except Exception as err:  # noqa: BLE001 - any compiler failure must not block install
                print(f"megatron_fp8: WARNING: kernel build failed ({err}); "
                      "the loader will retry on first use, else use the pure-torch reference")

    return [ext], {"build_ext": OptionalBuildExt.with_options(use_ninja=True)}


def _readme() -> str:
    path = os.path.join(HERE, "README.md")
    return open(path, encoding="utf-8").read() if os.path.exists(path) else ""


ext_modules, cmdclass = _extension_build()

setup(
    name="megatron_fp8",
    version="0.1.0",
    description="Megatron-style GPT pretraining with FP8 weights, gradients, communication and optimizer states",
    long_description=_readme(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["megatron_fp8", "megatron_fp8.*"]),
    install_requires=["torch>=2.4", "numpy", "sentencepiece", "regex", "pybind11", "ninja"],
    extras_require={
        # transformers/tokenizers let the Hugging Face import/export tests run (offline, random models)
        "test": ["pytest>=7", "transformers", "tokenizers", "safetensors"],
        "hf": ["transformers", "tokenizers", "safetensors"],
        "tb": ["tensorboard"],
        "bench": ["torchao", "matplotlib"],
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
