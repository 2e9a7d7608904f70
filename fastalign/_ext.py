"""Loads the compiled extension fastalign._C lazily, remembers why it could not, and names missing ops."""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from types import ModuleType
from typing import Any

import torch  # imported before fastalign._C, which links against its shared libraries

_BUILD = (
    "`pip install --no-build-isolation -e .` against the torch installed, with setuptools>=77 and a C++ "
    "compiler with OpenMP (add `-c constraints/cpu.txt` and PyTorch's CPU index, "
    "PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu, on a CPU-only machine, or pip may pull a "
    "CUDA torch; see README, Install)"
)

_module: ModuleType | None = None
_error: str | None = None
_tried = False


def load() -> ModuleType | None:
    """Returns fastalign._C, or None if it cannot be imported (see :func:`why_unavailable`)."""
    global _module, _error, _tried
    if not _tried:
        _tried = True
        try:
            _module = importlib.import_module("fastalign._C")
        except ImportError as exc:
            _error = f"fastalign._C could not be imported ({exc}); build it with {_BUILD}"
    return _module


def why_unavailable() -> str | None:
    """None when the extension loaded, else the reason it did not."""
    load()
    return _error


def build_info() -> dict[str, Any]:
    """How the extension was built ({'cuda': bool, 'openmp': bool, ...}); empty if it is missing."""
    mod = load()
    return dict(mod.build_info()) if mod is not None else {}


def why_ops_missing(ops: Iterable[str], *, cuda: bool = False) -> str | None:
    """None when fastalign._C is loaded (built with CUDA kernels, if ``cuda``) and registers every op of
    ``ops`` under ``torch.ops.fastalign``, else why not, naming the missing ops (an extension built from
    older sources lacks the newer ones).
    """
    why = why_unavailable()
    if why is not None:
        return why
    if cuda and not build_info().get("cuda", False):
        return "fastalign._C was built without CUDA kernels (torch without CUDA, or no nvcc)"
    missing = [op for op in ops if not hasattr(torch.ops.fastalign, op)]
    if missing:
        names = ", ".join(missing)
        return f"fastalign._C was built without the ops {names} (older sources); rebuild it with {_BUILD}"
    return None
