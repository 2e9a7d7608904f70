"""Every RSA backend module provides the protocol (fastalign.rsa.common) of each op it is registered for:
the functions by name, with the protocol's parameters (names, kinds, defaults) and annotations."""

from __future__ import annotations

import inspect
import types
from typing import Any, Protocol

import pytest
import torch

import fastalign  # noqa: F401  (registers every op)
from fastalign import _backend
from fastalign.rsa import common

RSA_OPS = sorted(common.OP_PROTOCOLS)
PAIRS = [(op, name) for op in RSA_OPS for name in _backend.REGISTRY[op].specs]


def _members(proto: type) -> dict[str, inspect.Signature]:
    """The functions a protocol asks for (its own and inherited), as module-level signatures (no self)."""
    out: dict[str, inspect.Signature] = {}
    for cls in reversed(proto.__mro__):
        if cls is Protocol or not getattr(cls, "_is_protocol", False):
            continue
        for name, fn in vars(cls).items():
            if inspect.isfunction(fn) and not name.startswith("_"):
                sig = inspect.signature(fn)
                out[name] = sig.replace(parameters=list(sig.parameters.values())[1:])
    return out


def _mismatches(module: Any, proto: type) -> list[str]:
    """What ``module`` lacks or declares differently from ``proto``."""
    problems = []
    for name, want in _members(proto).items():
        fn = getattr(module, name, None)
        if not callable(fn):
            problems.append(f"{name}: missing")
            continue
        got = inspect.signature(fn)
        if got != want:
            problems.append(f"{name}: {got} != {want}")
    return problems


@pytest.mark.parametrize(("op", "backend"), PAIRS)
def test_backend_module_provides_its_protocol(op: str, backend: str) -> None:
    proto = common.PROTOCOL_EXCEPTIONS.get((op, backend), common.OP_PROTOCOLS[op])
    module = _backend.REGISTRY[op].module(backend)
    assert _mismatches(module, proto) == [], f"{module.__name__} as the {backend!r} backend of {op}"


def test_every_rsa_op_and_exception_is_registered() -> None:
    rsa_ops = {
        op
        for op, disp in _backend.REGISTRY.items()
        if any((spec.module or "").startswith("fastalign.rsa.") for spec in disp.specs.values())
    }
    assert rsa_ops == set(common.OP_PROTOCOLS)
    assert set(common.PROTOCOL_EXCEPTIONS) <= set(PAIRS)


def test_the_check_sees_missing_functions_and_other_signatures() -> None:
    """The conformance test can fail: a missing function, a renamed parameter, a lost default, another
    annotation."""
    from fastalign.rsa import torch_chunked

    assert _mismatches(torch_chunked, common.StatisticsBackend) == []
    fake = types.ModuleType("fake")
    assert _mismatches(fake, common.RDMBackend) == ["rdm: missing"]

    def rdm(x: torch.Tensor, kind: str, noise: torch.Tensor | None = None) -> torch.Tensor: ...

    def rank(x: torch.Tensor, dim: int = -1) -> torch.Tensor: ...

    def compare(a: torch.Tensor, b: torch.Tensor, method: int) -> torch.Tensor: ...

    fake.rdm, fake.rank, fake.compare = rdm, rank, compare  # type: ignore[attr-defined]
    for proto, name in (
        (common.RDMBackend, "rdm"),
        (common.RankBackend, "rank"),
        (common.CompareBackend, "compare"),
    ):
        problems = _mismatches(fake, proto)
        assert len(problems) == 1 and problems[0].startswith(f"{name}: "), problems
    fake.rdm = lambda x, method, noise: None  # type: ignore[attr-defined]  (no default, no annotations)
    assert len(_mismatches(fake, common.RDMBackend)) == 1
