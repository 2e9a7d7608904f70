"""Argument checks shared by the public functions (api.py) and the backends' own op entry points."""

from __future__ import annotations

from typing import Any

from fastalign import _checks


def check_eps(where: str, eps: Any, name: str = "eps") -> float:
    """eps must be a finite float > 0: 0 divides by a zero variance, NaN and inf give NaN outputs."""
    return _checks.check_real(where, name, eps, positive=True, expected="positive and finite")


def check_momentum(where: str, momentum: Any, name: str = "momentum") -> float:
    """momentum must be a finite float in [0, 1], the weight of the new batch in the running statistics."""
    if not _checks.is_real(momentum):
        raise TypeError(_checks.message(where, name, "a float in [0, 1]", momentum))
    if not 0.0 <= momentum <= 1.0:  # NaN included
        raise ValueError(_checks.message(where, name, "in [0, 1]", momentum))
    return float(momentum)
