"""Builds fastalign._C and nothing else; all metadata lives in pyproject.toml.

Prerequisite: a C++ compiler with OpenMP, recent enough for torch's headers (C++20 for torch 2.13): $CXX,
else c++ (g++ when only that is on the PATH), as torch's build uses. On Debian/Ubuntu `apt install g++`,
on Fedora `dnf install gcc-c++`; on macOS the Xcode command line tools (built there without OpenMP).
Without one the build stops at once with a line that says so, instead of torch's traceback, and so does a
failed compilation; FASTALIGN_BUILD_EXT=0 installs fastalign without the extension (its ops then run on
the pure-torch backends, and `fastalign info` says why the others are unavailable).

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
import shlex
import shutil
import subprocess
import sys
import warnings
from collections.abc import Mapping

import torch
from setuptools import setup
from setuptools.errors import CCompilerError
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> str:
    """An environment switch: "", "0" or "1" (anything else stops the build with a message)."""
    flag = os.environ.get(name, "").strip()
    if flag not in ("", "0", "1"):
        raise SystemExit(f"{name} must be 0 or 1, got {flag!r}")
    return flag


# one line for every way the build can stop for want of a compiler: what to do about it
_REMEDY = (
    "install a C++ compiler with OpenMP (Debian/Ubuntu: apt install g++; Fedora: dnf install gcc-c++; "
    "macOS: xcode-select --install) or name yours in CXX, or set FASTALIGN_BUILD_EXT=0 to install "
    "fastalign without its compiled extension (the pure-torch backends still work)"
)


def _compiler(environ: Mapping[str, str]) -> str:
    """The C++ compiler the build will use: $CXX, else c++ or g++ from environ's PATH, checked by running
    it with --version (what torch's build does first). Stops the build with one line when there is none:
    torch's own error was a long traceback that buried "c++: not found"."""
    cxx = environ.get("CXX", "").strip()
    if cxx:
        # a launcher and its compiler ("ccache g++") are not one executable, and torch's build runs $CXX as
        # one: say so rather than that the compiler is missing
        if len(shlex.split(cxx)) > 1:
            raise SystemExit(
                f"fastalign: CXX={cxx} must name one executable (a wrapper script for a launcher)"
            )
        path, what = shutil.which(cxx, path=environ.get("PATH")), f"CXX={cxx}"
    else:
        found = [p for p in (shutil.which(n, path=environ.get("PATH")) for n in ("c++", "g++")) if p]
        if not found:
            raise SystemExit(
                f"fastalign: no C++ compiler found (CXX is unset; no c++ or g++ on the PATH): {_REMEDY}"
            )
        path, what = found[0], os.path.basename(found[0])
    if path is None:
        raise SystemExit(f"fastalign: {what}, the C++ compiler, was not found: {_REMEDY}")
    try:
        subprocess.run([path, "--version"], check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise SystemExit(f"fastalign: {what} does not run as a C++ compiler ({exc}): {_REMEDY}") from None
    return cxx or os.path.basename(path)


class _BuildExtension(cpp_extension.BuildExtension):
    """torch's build_ext, after a check that a compiler is there, and with its failures as one line."""

    def run(self) -> None:
        # MSVC has no --version (torch's own checks speak for it); FASTALIGN_BUILD_EXT=0: nothing to build
        if os.name != "nt" and self.extensions:
            os.environ["CXX"] = _compiler(os.environ)  # torch uses $CXX, else c++ (which may be missing)
        try:
            super().run()
        except (CCompilerError, subprocess.CalledProcessError, RuntimeError) as exc:
            raise SystemExit(
                f"fastalign: compiling the extension fastalign._C failed ({' '.join(str(exc).split())}); "
                "the compiler's messages are above. Check that it supports OpenMP and the C++ standard of "
                f"torch's headers: {_REMEDY}"
            ) from None


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


def _ext_modules() -> list[cpp_extension.CppExtension]:
    """fastalign._C, or nothing when FASTALIGN_BUILD_EXT=0 (no compiler here: the library runs without it)."""
    return [] if _flag("FASTALIGN_BUILD_EXT") == "0" else [_extension()]


# a script, also when setuptools' build backend runs it; importing it (the tests) only defines the helpers
if __name__ == "__main__":
    setup(ext_modules=_ext_modules(), cmdclass={"build_ext": _BuildExtension})
