"""Build and install rmtkd_kernels (+ its native extension rmtkd_kernels._C) and the rmtkd method package.

RMTKD_BUILD_EXT chooses the native build:
  auto (default)  CUDA sources when torch has CUDA and nvcc is found, C++ CPU sources otherwise; if compiling
                  fails, install the pure-Python package (Triton + reference backends) and say so.
  cuda | cpu      build exactly that and fail loudly if it does not compile.
  0               build nothing: pure-Python package.
Install after torch with ``pip install --no-build-isolation .`` so the extension is built against the torch
you run (build isolation would fetch a second torch just to compile against).
Without a visible GPU, CUDA code is compiled for TORCH_CUDA_ARCH_LIST (default here: 8.0;9.0, A100 and H100).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
MODE = os.environ.get("RMTKD_BUILD_EXT", "auto").lower()
if MODE not in {"auto", "cuda", "cpu", "0"}:
    sys.exit(f"RMTKD_BUILD_EXT: expected one of auto, cuda, cpu, 0; got {MODE!r}")


def say(message: str) -> None:
    print(f"[rmtkd setup] {message}", file=sys.stderr, flush=True)


def _cuda_home_default() -> None:
    """torch finds /usr/local/bin/nvcc and guesses CUDA_HOME=/usr/local; point it at the real toolkit."""
    if "CUDA_HOME" not in os.environ and Path("/usr/local/cuda/bin/nvcc").exists():
        os.environ["CUDA_HOME"] = "/usr/local/cuda"


def native_extension():
    """Return (ext_modules, cmdclass) for the chosen build, or ([], {}) for the pure-Python package."""
    if MODE == "0":
        say("RMTKD_BUILD_EXT=0: installing the pure-Python package (reference + Triton backends).")
        return [], {}
    _cuda_home_default()
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        if MODE != "auto":
            sys.exit("RMTKD_BUILD_EXT asks for a native build, but torch is not importable: install torch first "
                     "and use pip install --no-build-isolation.")
        say("torch is not importable at build time: installing the pure-Python package.")
        return [], {}

    cuda_ok = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    use_cuda = MODE == "cuda" or (MODE == "auto" and cuda_ok)
    if use_cuda and not cuda_ok:
        sys.exit("RMTKD_BUILD_EXT=cuda, but torch has no CUDA or nvcc was not found (set CUDA_HOME).")
    sources = ["csrc/ops.cpp", "csrc/cpu/cov_accumulate_cpu.cpp"]
    extra = {"cxx": ["-O3"]}
    if use_cuda:
        sources += [str(p.relative_to(ROOT)) for p in sorted((ROOT / "csrc" / "cuda").glob("*.cu"))]
        extra["nvcc"] = ["-O3", "-lineinfo"]
        if not torch.cuda.is_available():
            os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        ext = cpp_extension.CUDAExtension(
            "rmtkd_kernels._C", sources, extra_compile_args=extra, define_macros=[("RMTKD_WITH_CUDA", None)]
        )
        say(f"building rmtkd_kernels._C with CUDA {torch.version.cuda} kernels "
            f"(archs {os.environ.get('TORCH_CUDA_ARCH_LIST', 'of the visible GPU')}) and C++ CPU kernels.")
    else:
        ext = cpp_extension.CppExtension("rmtkd_kernels._C", sources, extra_compile_args=extra)
        say("building rmtkd_kernels._C with C++ CPU kernels only (no CUDA torch or no nvcc).")

    base = cpp_extension.BuildExtension.with_options(use_ninja=True)

    class BuildNative(base):
        """In auto mode a failed compile leaves a working pure-Python install instead of no install."""

        def run(self):
            try:
                super().run()
            except Exception as error:  # noqa: BLE001 - any compiler failure
                if MODE != "auto":
                    raise
                say(f"native build failed ({error}); installed the pure-Python package instead. "
                    "Set RMTKD_BUILD_EXT=cpu or cuda to see the compiler error.")

    return [ext], {"build_ext": BuildNative}


ext_modules, cmdclass = native_extension()

setup(
    name="rmtkd",
    version="0.1.0",
    description="RMT-KD: random-matrix-theoretic compression of neural networks, with fused GPU kernels",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["rmtkd_kernels", "rmtkd_kernels.*"]) + find_packages("python"),
    package_dir={"rmtkd": "python/rmtkd"},
    entry_points={"console_scripts": ["rmtkd = rmtkd.app.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    install_requires=["torch>=2.4", "numpy", "matplotlib", "tqdm", "safetensors"],
    extras_require={
        "hf": ["transformers"],
        "vision": ["torchvision"],
        "test": ["pytest", "pytest-benchmark", "expecttest"],
        "bench": ["pytest-benchmark", "nvidia-ml-py"],
        "onnx": ["onnx", "onnxscript", "onnxruntime"],
    },
)
