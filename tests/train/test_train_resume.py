"""Resume: a run killed mid-epoch in another process, resumed here, ends bitwise where an uninterrupted
run ends (CPU, fp32, same seed), with the same metrics lines.

The killed run is a forked child (no second interpreter to start: importing torch alone takes seconds on
a busy CI machine) that a hook ends with ``os._exit`` inside an epoch, which leaves the files as a kill
would: no handler, no flush, no cleanup.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import pytest
import torch
from fit_tiny import BATCH, KILLED, N_TRAIN, ExitAt, forked_child, model, run, state_of
from safetensors.torch import load_file

from fastalign.train import RunFolder, load_checkpoint

STEPS_PER_EPOCH = N_TRAIN // BATCH

_TIMING = {"time", "images_per_s", "epoch_time"}


def _untimed(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in _TIMING} for r in records]


def _killed_run(out: str, kill_at: int) -> None:
    forked_child()
    run(out, hooks=[ExitAt(kill_at)])
    os._exit(0)  # ExitAt did not fire: the test sees exit status 0


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    run(out)
    return out


def test_killed_run_resumes_to_the_uninterrupted_weights(uninterrupted: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    kill_at = STEPS_PER_EPOCH + 3  # inside epoch 2, after epoch 1's checkpoint and a step-2 metrics line
    child = mp.get_context("fork").Process(target=_killed_run, args=(str(out), kill_at))
    child.start()
    child.join(timeout=120)
    assert child.exitcode == KILLED
    killed = RunFolder(out)
    assert [RunFolder.checkpoint_epoch(p) for p in killed.checkpoints()] == [1]
    assert not os.path.exists(killed.summary_path)
    # the killed attempt logged steps of epoch 2 that the resumed run must not keep
    assert any(r["epoch"] == 2 for r in killed.read_metrics("train"))

    result = run(out, resume=True)

    expected = load_checkpoint(uninterrupted)
    got = load_checkpoint(out)
    assert got["epoch"] == expected["epoch"] == 3 and got["step"] == expected["step"]
    for key, value in expected["model"].items():
        assert torch.equal(got["model"][key], value), key  # bitwise
    for a, b in zip(expected["optimizer"]["state"].values(), got["optimizer"]["state"].values(), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    best_expected = load_file(RunFolder(uninterrupted).model_path)
    best_got = load_file(killed.model_path)
    assert all(torch.equal(best_got[k], v) for k, v in best_expected.items())
    assert _untimed(killed.read_metrics()) == _untimed(RunFolder(uninterrupted).read_metrics())
    summary = killed.read_summary()
    assert summary["resumed_at"] == [1]
    assert {k: v for k, v in summary.items() if k not in ("time", "resumed_at")} == {
        k: v for k, v in RunFolder(uninterrupted).read_summary().items() if k not in ("time", "resumed_at")
    }
    assert result.best_epoch == summary["best_epoch"]


def test_resuming_a_finished_run_trains_no_more(uninterrupted: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = run(out)
    lines = len(RunFolder(out).read_metrics())
    again = run(out, resume=True, net=model(seed=5))  # other initial weights: all come from the run
    assert again.epochs_run == 3 and len(RunFolder(out).read_metrics()) == lines
    assert again.best_epoch == first.best_epoch and again.best_val_loss == first.best_val_loss
    assert all(
        torch.equal(a, b)
        for a, b in zip(state_of(again.model).values(), state_of(first.model).values(), strict=True)
    )


def test_resume_without_checkpoint_starts_over(tmp_path: Path) -> None:
    """A run killed before its first checkpoint: resume runs it from the start (seeded as new)."""
    out = tmp_path / "run"
    fresh = run(tmp_path / "fresh")
    run(out, epochs=3)
    folder = RunFolder(out)
    for path in folder.checkpoints():
        os.remove(path)
    folder.append_metrics({"kind": "train", "epoch": 9})  # a line the restart must drop
    resumed = run(out, resume=True)
    assert resumed.summary["resumed_at"] == []
    assert _untimed(folder.read_metrics()) == _untimed(RunFolder(tmp_path / "fresh").read_metrics())
    assert all(
        torch.equal(a, b)
        for a, b in zip(state_of(resumed.model).values(), state_of(fresh.model).values(), strict=True)
    )
