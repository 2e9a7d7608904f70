"""Loads the compiled extension fastalign._C lazily and remembers why it could not."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import torch  # noqa: F401  (torch's shared libraries must be loaded before fastalign._C)

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
            _error = (
                f"fastalign._C could not be imported ({exc}); build it with "
                "`pip install --no-build-isolation -e .` (see README, Install)"
            )
    return _module


def why_unavailable() -> str | None:
    """None when the extension loaded, else the reason it did not."""
    load()
    return _error


def build_info() -> dict[str, Any]:
    """How the extension was built ({'cuda': bool, 'openmp': bool, ...}); empty if it is missing."""
    mod = load()
    return dict(mod.build_info()) if mod is not None else {}
