"""Distributed InfoNCE on 2 gloo processes vs the single-process loss on the concatenated batch."""

from __future__ import annotations

import os
import tempfile
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fastalign

pytestmark = pytest.mark.distributed

SIZES = (5, 3)  # uneven shards on purpose
D = 7


def _data(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    n = sum(SIZES)
    return (
        torch.randn(n, D, generator=g, dtype=dtype),
        torch.randn(n, D, generator=g, dtype=dtype),
        torch.tensor(0.3, dtype=dtype),
    )


_CASES = [  # (backend, symmetric, reduction)
    ("torch", True, "mean"),
    ("torch", False, "sum"),
    ("torch", True, "none"),
    ("reference", True, "mean"),
    ("reference", True, "none"),
    pytest.param("triton", True, "mean", marks=pytest.mark.triton),
]
_MATCH_TEST = "test_distributed_matches_single_process"
_OVERFLOW_TEST = "test_overflow_is_an_error_on_every_rank"


def _case(rank: int, backend: str, symmetric: bool, reduction: str) -> tuple[np.ndarray, ...]:
    """This rank's loss and the gradients of its x, y and of the temperature (summed over ranks)."""
    dtype = torch.float64 if backend != "triton" else torch.float32
    x, y, t = _data(dtype)
    lo = sum(SIZES[:rank])
    sl = slice(lo, lo + SIZES[rank])
    xl = x[sl].clone().requires_grad_()
    yl = y[sl].clone().requires_grad_()
    tl = t.clone().requires_grad_()
    out = fastalign.infonce_loss(
        xl, yl, tl, symmetric=symmetric, reduction=reduction, backend=backend, group=dist.group.WORLD
    )
    # a per-rank objective that is not symmetric across ranks, to exercise the coupling
    w = torch.arange(1, SIZES[rank] + 1, dtype=dtype) if reduction == "none" else None
    obj = (out * w).sum() if w is not None else out
    obj.backward()
    dscale = tl.grad.clone()
    dist.all_reduce(dscale)
    # numpy, not tensors: torch would share tensor storage through file descriptors that vanish
    # when this process exits before the parent reads the queue
    return tuple(v.detach().numpy() for v in (out, xl.grad, yl.grad, dscale))


def _overflow_outcomes(rank: int) -> list[str]:
    """Logits that overflow on rank 1 only, then also NaN input on rank 0: what each call did here."""
    x = torch.eye(SIZES[rank], D, dtype=torch.float64) * (1e200 if rank == 1 else 1.0)
    outcomes = []
    for nan_on_rank_0 in (False, True):
        xi = x.clone()
        if nan_on_rank_0 and rank == 0:
            xi[0, 0] = float("nan")
        try:
            loss = fastalign.infonce_loss(xi, xi, backend="torch", group=dist.group.WORLD)
            outcomes.append("nan" if torch.isnan(loss) else f"loss {float(loss)}")
        except ValueError as exc:
            outcomes.append(f"ValueError: {exc}")
    return outcomes


def _worker(rank: int, init_file: str, cases: list[tuple], overflow: bool, q: mp.Queue) -> None:
    if any(backend == "triton" for backend, *_ in cases):
        os.environ["TRITON_INTERPRET"] = "1"
    # a case that fails on one rank only leaves the other in a collective: time out instead of hanging
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=2, timeout=timedelta(seconds=60)
    )
    try:
        results: dict[Any, Any] = {}
        for case in cases:
            try:
                results[case] = _case(rank, *case)
            except Exception as exc:  # reported by that case's test, not as a crash of every case
                results[case] = f"{type(exc).__name__}: {exc}"
        if overflow:
            results[_OVERFLOW_TEST] = _overflow_outcomes(rank)
        q.put((rank, results))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(request: pytest.FixtureRequest) -> dict[int, dict[Any, Any]]:
    """What each of 2 gloo ranks returned for every case of this module that the session runs.

    Spawning the group costs two fresh interpreters that import torch (about 15 s on 2 cores), so one
    group runs every selected case in turn, instead of one group per case.
    """
    mine = [item for item in request.session.items if item.nodeid.startswith(request.node.nodeid + "::")]
    cases = [
        (
            item.callspec.params["backend"],
            item.callspec.params["symmetric"],
            item.callspec.params["reduction"],
        )
        for item in mine
        if item.originalname == _MATCH_TEST
    ]
    overflow = any(item.originalname == _OVERFLOW_TEST for item in mine)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        procs = [ctx.Process(target=_worker, args=(r, init_file, cases, overflow, q)) for r in range(2)]
        for p in procs:
            p.start()
        try:
            results = dict(q.get(timeout=600) for _ in procs)
        finally:
            for p in procs:
                p.join(timeout=60)
                if p.exitcode is None:
                    p.kill()
        assert [p.exitcode for p in procs] == [0, 0]
    return results


def _result(ranks: dict[int, dict[Any, Any]], rank: int, key: Any) -> Any:
    got = ranks[rank][key]
    assert not isinstance(got, str), f"rank {rank} raised {got}"
    return got


@pytest.mark.parametrize(("backend", "symmetric", "reduction"), _CASES)
def test_distributed_matches_single_process(
    ranks: dict[int, dict[Any, Any]], backend: str, symmetric: bool, reduction: str
) -> None:
    dtype = torch.float64 if backend != "triton" else torch.float32
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    x, y, t = _data(dtype)
    x.requires_grad_()
    y.requires_grad_()
    t.requires_grad_()
    full = fastalign.infonce_loss(x, y, t, symmetric=symmetric, reduction=reduction, backend="reference")
    if reduction == "none":
        w = torch.cat([torch.arange(1, n + 1, dtype=dtype) for n in SIZES])
        (full * w).sum().backward()
    else:
        full.backward()
    for rank in range(2):
        out, gx, gy, gscale = (
            torch.from_numpy(a) for a in _result(ranks, rank, (backend, symmetric, reduction))
        )
        lo = sum(SIZES[:rank])
        sl = slice(lo, lo + SIZES[rank])
        expected = full.detach()[sl] if reduction == "none" else full.detach()
        torch.testing.assert_close(out, expected, rtol=tol, atol=tol)
        torch.testing.assert_close(gx, x.grad[sl], rtol=tol, atol=tol)
        torch.testing.assert_close(gy, y.grad[sl], rtol=tol, atol=tol)
        torch.testing.assert_close(gscale, t.grad, rtol=tol, atol=tol)


def test_group_without_init_process_group_is_a_clear_error() -> None:
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="not initialised"):
        fastalign.infonce_loss(x, x, group=object())


def test_overflow_is_an_error_on_every_rank(ranks: dict[int, dict[Any, Any]]) -> None:
    """Logits that overflow on one rank only: every rank raises the ValueError (none waits forever in a
    collective); NaN input on one rank instead propagates on every rank, without an error."""
    for rank in range(2):
        overflow, nan = _result(ranks, rank, _OVERFLOW_TEST)
        assert overflow.startswith("ValueError: infonce_loss: the logits") and "largest |x| 1" in overflow
        assert nan == "nan"
