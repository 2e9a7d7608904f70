"""The correlation-contrastive loss with ``group=`` on 2 gloo processes vs one process on the whole batch.

One group of two forked processes computes every case of this module (starting processes is the slow
part; forked children skip importing torch again). Each case returns numpy arrays: torch would share
tensor storage through file descriptors that vanish when the child exits before the parent reads them.
"""

from __future__ import annotations

import os
import tempfile
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
from forked import run_ranks
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from fastalign.contrastive import correlation_contrastive_loss

pytestmark = pytest.mark.distributed

WORLD = 2
D = 11
# uneven shards, a single row per rank, and a rank without rows; rank r's objective is WEIGHTS[r] * C
SIZES = {"uneven": (5, 3), "one_each": (1, 1), "empty_rank": (4, 0)}
WEIGHTS = (1.0, 3.0)
DDP_SIZES = (4, 4)  # DDP averages the ranks' gradients: equal shares, as DistributedSampler gives
CASES = [  # (sizes, backend, dtype)
    ("uneven", "torch", torch.float64),
    ("uneven", "reference", torch.float64),
    ("uneven", "torch", torch.bfloat16),  # gathered in the compute dtype, float32
    ("one_each", "torch", torch.float64),
    ("empty_rank", "reference", torch.float64),
]


def _batch(n: int, dtype: torch.dtype = torch.float64, seed: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(n, D, generator=g, dtype=torch.float64)
    target = torch.randn(n, D, generator=g, dtype=torch.float64) + 0.5 * pred
    return pred.to(dtype), target.to(dtype)


def _rows(sizes: tuple[int, ...], rank: int) -> slice:
    lo = sum(sizes[:rank])
    return slice(lo, lo + sizes[rank])


def _numpy(*ts: torch.Tensor) -> tuple[np.ndarray, ...]:
    return tuple(t.detach().double().numpy() for t in ts)


def _case(rank: int, sizes: tuple[int, ...], backend: str, dtype: torch.dtype) -> tuple[np.ndarray, ...]:
    """This rank's C and the gradients of its rows under the objective WEIGHTS[rank] * C."""
    pred, target = (t[_rows(sizes, rank)].clone().requires_grad_() for t in _batch(sum(sizes), dtype))
    loss = correlation_contrastive_loss(pred, target, backend=backend, group=dist.group.WORLD)
    (WEIGHTS[rank] * loss).backward()
    return _numpy(loss, pred.grad, target.grad)


class _Net(nn.Module):
    """A linear encoder (float64), whose outputs are pred; the other term is a mean over samples."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(5, D, dtype=torch.float64)

    def forward(self, x: torch.Tensor, target: torch.Tensor, group: Any) -> torch.Tensor:
        pred = self.proj(x)
        c = correlation_contrastive_loss(pred, target, group=group)
        return nn.functional.mse_loss(pred, target) + 2.0 * c


def _net_and_data() -> tuple[_Net, torch.Tensor, torch.Tensor]:
    torch.manual_seed(3)
    net = _Net()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(sum(DDP_SIZES), 5, generator=g, dtype=torch.float64)
    target = torch.randn(sum(DDP_SIZES), D, generator=g, dtype=torch.float64)
    return net, x, target


def _ddp_step(rank: int) -> tuple[np.ndarray, ...]:
    """One backward of MSE + 2 C through DistributedDataParallel: the parameters' (averaged) gradients."""
    net, x, target = _net_and_data()
    ddp = DistributedDataParallel(net)
    rows = _rows(DDP_SIZES, rank)
    ddp(x[rows], target[rows], dist.group.WORLD).backward()
    return _numpy(net.proj.weight.grad, net.proj.bias.grad)


def _errors(rank: int) -> tuple[str, str, str]:
    """What each rank raised: NaN in rank 1's rows only, a constant row on rank 0 only, one row in all."""
    outcomes = []
    for bad in ("nan", "constant", "one_row"):
        pred, target = _batch(1 if bad == "one_row" else 3)
        if rank == 1 and bad == "one_row":
            pred, target = pred[:0], target[:0]
        if rank == 1 and bad == "nan":
            pred[2, 4] = float("nan")
        if rank == 0 and bad == "constant":
            target[1] = 0.5
        try:
            correlation_contrastive_loss(pred, target, group=dist.group.WORLD)
            outcomes.append("no error")
        except ValueError as exc:
            outcomes.append(str(exc))
    return outcomes[0], outcomes[1], outcomes[2]


def _worker(rank: int, init_file: str, queue: Any) -> None:
    torch.set_num_threads(1)  # a forked child must not use the parent's OpenMP pool
    report: dict[Any, Any] = {"rank": rank}
    try:
        # a case that fails on one rank only leaves the other in a collective: time out, do not hang
        dist.init_process_group(
            "gloo",
            init_method=f"file://{init_file}",
            rank=rank,
            world_size=WORLD,
            timeout=timedelta(seconds=60),
        )
        try:
            for sizes, backend, dtype in CASES:
                report[sizes, backend, dtype] = _case(rank, SIZES[sizes], backend, dtype)
            report["ddp"] = _ddp_step(rank)
            report["errors"] = _errors(rank)
        finally:
            dist.destroy_process_group()
    except BaseException as exc:  # the parent shows it instead of waiting for a report that never comes
        report["error"] = repr(exc)
    queue.put(report)


@pytest.fixture(scope="module")
def ranks() -> dict[int, dict[Any, Any]]:
    """What each of the 2 gloo ranks returned for every case."""
    with tempfile.TemporaryDirectory() as tmp:
        reports = run_ranks(_worker, (os.path.join(tmp, "init"),), WORLD, timeout=180)
    return reports


@pytest.mark.parametrize(
    ("sizes", "backend", "dtype"), CASES, ids=[f"{s}-{b}-{str(d)[6:]}" for s, b, d in CASES]
)
def test_group_gives_the_global_loss_and_summed_gradients(
    ranks: dict[int, dict[Any, Any]], sizes: str, backend: str, dtype: torch.dtype
) -> None:
    """Every rank returns C of the concatenated batch; each row's gradient is the single-process gradient
    times the sum of the ranks' weights on C (2 when every rank minimises C itself)."""
    shards = SIZES[sizes]
    pred, target = (t.requires_grad_() for t in _batch(sum(shards), dtype))
    full = correlation_contrastive_loss(pred, target, backend=backend)
    full.backward()
    # float64: rounding only; bfloat16: the same float32 arithmetic on the same rows gives the same C, and
    # gradients summed over ranks in float32 before their rounding to bfloat16 (one unit in the last place)
    loss_tol, grad_tol = (1e-12, 1e-12) if dtype == torch.float64 else (0.0, 2**-7)
    for rank in range(WORLD):
        loss, grad_pred, grad_target = ranks[rank][sizes, backend, dtype]
        rows = _rows(shards, rank)
        np.testing.assert_allclose(loss, full.detach().double().numpy(), rtol=loss_tol, atol=loss_tol)
        for got, want in ((grad_pred, pred.grad), (grad_target, target.grad)):
            assert got.shape == (shards[rank], D)
            want = sum(WEIGHTS) * want[rows].double().numpy()
            np.testing.assert_allclose(got, want, rtol=grad_tol, atol=1e-15)


def test_ddp_training_step_gets_the_single_process_gradients(ranks: dict[int, dict[Any, Any]]) -> None:
    net, x, target = _net_and_data()
    net(x, target, None).backward()
    for rank in range(WORLD):
        weight, bias = ranks[rank]["ddp"]
        np.testing.assert_allclose(weight, net.proj.weight.grad.numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(bias, net.proj.bias.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_bad_rows_on_one_rank_raise_on_every_rank(ranks: dict[int, dict[Any, Any]]) -> None:
    """No rank waits in a collective for one that raised: the rows and the loss are the same on all."""
    gathered = "(rows of the batch gathered over the group's ranks, in rank order)"
    for rank in range(WORLD):
        nan, constant, one_row = ranks[rank]["errors"]
        assert nan.startswith("correlation_contrastive_loss: pred must be finite, got NaN or inf in row 5 ")
        assert nan.endswith(gathered)
        assert "every row of target must vary" in constant and "got row 1 constant" in constant
        assert one_row.startswith("correlation_contrastive_loss: pred and target must have at least 2 rows")
        assert one_row.endswith("got [1, 0] rows per rank")


def test_group_without_init_process_group_is_a_clear_error() -> None:
    pred, target = _batch(3)
    with pytest.raises(
        ValueError, match=r"correlation_contrastive_loss: group was given but torch\.distributed is not init"
    ):
        correlation_contrastive_loss(pred, target, group=object())
