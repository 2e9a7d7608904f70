"""Distributed InfoNCE on 2 gloo processes vs the single-process loss on the concatenated batch."""

from __future__ import annotations

import os
import tempfile

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


def _worker(rank: int, init_file: str, backend: str, symmetric: bool, reduction: str, q: mp.Queue) -> None:
    if backend == "triton":
        os.environ["TRITON_INTERPRET"] = "1"
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
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
        q.put((rank, *(t.detach().numpy() for t in (out, xl.grad, yl.grad, dscale))))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    ("backend", "symmetric", "reduction"),
    [
        ("torch", True, "mean"),
        ("torch", False, "sum"),
        ("torch", True, "none"),
        ("reference", True, "mean"),
        ("reference", True, "none"),
        pytest.param("triton", True, "mean", marks=pytest.mark.triton),
    ],
)
def test_distributed_matches_single_process(backend: str, symmetric: bool, reduction: str) -> None:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        procs = [
            ctx.Process(target=_worker, args=(r, init_file, backend, symmetric, reduction, q))
            for r in range(2)
        ]
        for p in procs:
            p.start()
        results = dict((r, rest) for r, *rest in (q.get(timeout=180) for _ in procs))
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
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
        out, gx, gy, gscale = (torch.from_numpy(a) for a in results[rank])
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


def _overflow_worker(rank: int, init_file: str, q: mp.Queue) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
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
        q.put((rank, outcomes))
    finally:
        dist.destroy_process_group()


def test_overflow_is_an_error_on_every_rank() -> None:
    """Logits that overflow on one rank only: every rank raises the ValueError (none waits forever in a
    collective); NaN input on one rank instead propagates on every rank, without an error."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        procs = [ctx.Process(target=_overflow_worker, args=(r, init_file, q)) for r in range(2)]
        for p in procs:
            p.start()
        results = dict(q.get(timeout=180) for _ in procs)
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
    for rank in range(2):
        overflow, nan = results[rank]
        assert overflow.startswith("ValueError: infonce_loss: the logits") and "largest |x| 1" in overflow
        assert nan == "nan"
