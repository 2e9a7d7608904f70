"""Data parallelism: two gloo processes on the global batch train to the weights one process reaches, and
ReAlnet's training step gives the gradients of the global batch's loss (C included).

One start of two processes serves every assertion (starting processes is the slow part). They are forked
rather than spawned: a spawned child imports torch and fastalign again, which takes many seconds on a
busy CI machine. Each child sets the environment torchrun would (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT), so fit initialises and destroys the process group itself, as under torchrun.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fit_tiny import data, forked_child, model, run, state_of
from forked import free_port, run_ranks
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from fastalign.train import FitState, Hook, RunFolder
from fastalign.train.alignment import _step as realnet_step

pytestmark = pytest.mark.distributed
WORLD = 2
EPOCHS = 3


class Where(Hook):
    def on_fit_start(self, state: FitState) -> None:
        self.seen = (state.rank, state.world_size, state.is_main)


def _untimed(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in ("time", "epoch_time", "images_per_s")}


class TwoHeads(nn.Module):
    """A stand-in for ReAlnet in its training step: one forward gives logits and a predicted response."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.body, self.logits, self.pred = nn.Linear(5, 8), nn.Linear(8, 4), nn.Linear(8, 6)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))
        self.double()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(self.body(x))
        return self.logits(h), self.pred(h)


def _realnet_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x, brain = (
        torch.randn(8, 5, generator=gen, dtype=torch.float64),
        torch.randn(8, 6, generator=gen, dtype=torch.float64),
    )
    return x, brain, torch.randint(0, 4, (8,), generator=gen)


def _realnet_grads(batch: Any, net: nn.Module, grads_of: nn.Module) -> dict[str, np.ndarray]:
    loss, _ = realnet_step(net, batch, beta=100.0, contrast="differentiable")
    loss.backward()
    return {n: p.grad.numpy().copy() for n, p in grads_of.named_parameters()}


def _realnet_step_under_ddp(rank: int, port: int) -> dict[str, np.ndarray]:
    """This rank's half of the batch through ReAlnet's step with the model wrapped in DDP."""
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        net = TwoHeads()
        share = slice(4 * rank, 4 * rank + 4)
        return _realnet_grads([t[share] for t in _realnet_batch()], DistributedDataParallel(net), net)
    finally:
        torch.distributed.destroy_process_group()


def _rank(rank: int, port: int, port2: int, tmp: str, queue: Any) -> None:
    forked_child()
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    report: dict[str, Any] = {"rank": rank}
    try:
        try:  # refused before any collective, so both ranks raise and neither waits for the other
            run(os.path.join(tmp, "bad"), train=DataLoader(data()[0], batch_size=4), batch_size=None)
        except ValueError as e:
            report["refused"] = str(e)
        where = Where()
        result = run(os.path.join(tmp, "ddp"), net=model(dropout=0.0), epochs=EPOCHS, hooks=[where])
        report.update(
            where=where.seen,
            weights={k: v.numpy() for k, v in state_of(result.model).items()},
            history=result.history,
            initialised_after=torch.distributed.is_initialized(),
        )
        report["realnet_grads"] = _realnet_step_under_ddp(rank, port2)
    except BaseException as e:  # the parent shows it instead of waiting for a report that never comes
        report["error"] = repr(e)
    queue.put(report)


def test_two_processes_match_one(tmp_path: Path) -> None:
    reports = run_ranks(_rank, (free_port(), free_port(), str(tmp_path)), WORLD)
    for rank, report in reports.items():
        assert "DataLoader whose sampler is a SequentialSampler" in report["refused"]
        assert report["where"] == (rank, WORLD, rank == 0)
        assert report["initialised_after"] is False  # fit destroyed the group it created

    single = run(tmp_path / "single", net=model(dropout=0.0), epochs=EPOCHS)
    expected = state_of(single.model)
    for report in reports.values():
        for key, value in expected.items():
            np.testing.assert_allclose(
                report["weights"][key], value.numpy(), rtol=1e-6, atol=1e-6, err_msg=key
            )

    ddp = RunFolder(tmp_path / "ddp")
    one = RunFolder(tmp_path / "single")
    # rank 0 alone wrote: as many lines as one process writes, with all-reduced (global) numbers
    for kind, keys in (("train", ("loss", "mae")), ("epoch", ("train_loss", "val_loss", "val_mae"))):
        got, want = ddp.read_metrics(kind), one.read_metrics(kind)
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert (g["epoch"], g["step"]) == (w["epoch"], w["step"])
            np.testing.assert_allclose([g[k] for k in keys], [w[k] for k in keys], rtol=1e-5)
    untimed = [[_untimed(r) for r in reports[rank]["history"]] for rank in range(WORLD)]
    assert untimed[1] == untimed[0]  # every rank holds the reduced numbers
    config = ddp.read_config()
    assert config["fit"]["world_size"] == WORLD and len(set(config["environment"]["seed_per_rank"])) == WORLD
    assert ddp.read_summary()["best_epoch"] == one.read_summary()["best_epoch"]
    assert not RunFolder(tmp_path / "bad").is_run()

    # ReAlnet's step under DDP: C over the global batch (gathered with gradients), so the all-reduced
    # gradients are those of one process's loss on all 8 images ...
    one = TwoHeads()
    full = _realnet_grads(_realnet_batch(), one, one)
    for report in reports.values():
        for key, value in full.items():
            np.testing.assert_allclose(
                report["realnet_grads"][key], value, rtol=1e-10, atol=1e-12, err_msg=key
            )
    # ... which C over each process's share alone would not give (the pairs across processes are missing)
    halves = []
    for rank in range(WORLD):
        net = TwoHeads()
        halves.append(_realnet_grads([t[4 * rank : 4 * rank + 4] for t in _realnet_batch()], net, net))
    per_share = {k: (halves[0][k] + halves[1][k]) / 2 for k in full}
    assert not all(np.allclose(per_share[k], full[k], rtol=1e-6) for k in full)
