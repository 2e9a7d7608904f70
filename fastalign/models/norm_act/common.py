"""Argument checks shared by the public functions (api.py) and the backends' own op entry points."""

from __future__ import annotations

import math
from typing import Any


def _check_float(where: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{where}: {name} must be a float, got {type(value).__name__}")


def check_eps(where: str, eps: Any, name: str = "eps") -> None:
    """eps must be a finite float > 0: 0 divides by a zero variance, NaN and inf give NaN outputs."""
    _check_float(where, name, eps)
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"{where}: {name} must be positive and finite, got {eps}")


def check_momentum(where: str, momentum: Any, name: str = "momentum") -> None:
    """momentum must be a finite float in [0, 1], the weight of the new batch in the running statistics."""
    _check_float(where, name, momentum)
    if not (math.isfinite(momentum) and 0.0 <= momentum <= 1.0):
        raise ValueError(f"{where}: {name} must be in [0, 1], got {momentum}")
