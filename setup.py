"""Builds fastalign._C and nothing else; all metadata lives in pyproject.toml.

C++ host code in csrc/*.cpp is always compiled (with OpenMP). CUDA device code in kernels/*.cu and the
glue that launches it (csrc/cuda/*.cpp) is added when torch was built with CUDA and nvcc is found.
FASTALIGN_BUILD_CUDA=0 forces the CUDA part off, =1 forces it on (an error if torch has no CUDA; a
warning, and a C++-only build, if nvcc is missing). Host code is compiled without debug information
(-g0 after Python's own -g: torch's headers made rsa.cpp take 24-28 s with it, 19-23 s without);
FASTALIGN_BUILD_DEBUG=1 keeps it.
"""

from __future__ import annotations

import glob
import os
import sys
import warnings

import torch
from setuptools import setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> str:
    """An environment switch: "", "0" or "1" (anything else stops the build with a message)."""
    flag = os.environ.get(name, "").strip()
    if flag not in ("", "0", "1"):
        raise SystemExit(f"{name} must be 0 or 1, got {flag!r}")
    return flag


def _want_cuda() -> bool:
    flag = _flag("FASTALIGN_BUILD_CUDA")
    if flag == "0":
        return False
    if torch.version.cuda is None:
        if flag == "1":
            raise SystemExit(
                f"FASTALIGN_BUILD_CUDA=1 but torch {torch.__version__} was built without CUDA; "
                "install a CUDA build of torch or unset FASTALIGN_BUILD_CUDA"
            )
        return False
    if cpp_extension.CUDA_HOME is None:
        warnings.warn(
            "torch has CUDA but nvcc was not found (set CUDA_HOME): building fastalign._C without "
            "its CUDA kernels; the 'cuda' backend will be unavailable",
            stacklevel=1,
        )
        return False
    return True


def _extension() -> cpp_extension.CppExtension:
    rel = lambda paths: sorted(os.path.relpath(p, ROOT) for p in paths)
    sources = rel(glob.glob(os.path.join(ROOT, "csrc", "*.cpp")))
    openmp = [] if sys.platform == "darwin" else ["-fopenmp"]
    cxx = ["-O3", *openmp, *([] if _flag("FASTALIGN_BUILD_DEBUG") == "1" else ["-g0"])]
    if _want_cuda():
        glue = rel(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cpp")))
        kernels = rel(glob.glob(os.path.join(ROOT, "kernels", "*.cu")))
        if not glue or not kernels:
            # a build that defined FASTALIGN_WITH_CUDA without them would report the cuda backend as
            # available and fail at its first call
            raise SystemExit(
                "torch has CUDA and nvcc was found, but this source tree lacks the CUDA sources "
                f"(csrc/cuda/*.cpp: {len(glue)} files, kernels/*.cu: {len(kernels)}); use a complete "
                "checkout or sdist, or set FASTALIGN_BUILD_CUDA=0 for a C++-only build"
            )
        sources += glue + kernels
        # no --use_fast_math: it flushes float32 subnormals to zero in comparisons, so the rank kernel
        # would tie 1e-40 with 0 (exact ranks are the contract)
        nvcc = ["-O3", "-lineinfo"]
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            # + PTX for compute_90, which newer GPUs (sm_100, sm_120) JIT-compile at load
            nvcc += [
                "-gencode=arch=compute_80,code=sm_80",
                "-gencode=arch=compute_90,code=sm_90",
                "-gencode=arch=compute_90,code=compute_90",
            ]
        return cpp_extension.CUDAExtension(
            "fastalign._C",
            sources,
            include_dirs=[os.path.join(ROOT, "kernels")],
            define_macros=[("FASTALIGN_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
            extra_link_args=openmp,
        )
    return cpp_extension.CppExtension(
        "fastalign._C",
        sources,
        extra_compile_args={"cxx": cxx},
        extra_link_args=openmp,
    )


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
)
