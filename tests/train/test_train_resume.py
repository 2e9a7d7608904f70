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
    """A run stopped before its first checkpoint (or with keep_checkpoints=0, before it finished):
    resume runs it from the start (seeded as new), and says so."""
    out = tmp_path / "run"
    fresh = run(tmp_path / "fresh")
    run(out, epochs=3)
    folder = RunFolder(out)
    for path in folder.checkpoints():
        os.remove(path)
    os.remove(folder.summary_path)  # not finished
    folder.append_metrics({"kind": "train", "epoch": 9})  # a line the restart must drop
    with pytest.warns(RuntimeWarning, match="no checkpoint to resume from .* starts again from epoch 1"):
        resumed = run(out, resume=True)
    assert resumed.summary["resumed_at"] == []
    assert _untimed(folder.read_metrics()) == _untimed(RunFolder(tmp_path / "fresh").read_metrics())
    assert all(
        torch.equal(a, b)
        for a, b in zip(state_of(resumed.model).values(), state_of(fresh.model).values(), strict=True)
    )


def test_resuming_a_finished_run_without_checkpoints_keeps_it(tmp_path: Path) -> None:
    """keep_checkpoints=0 and finished: resume trained it all again, deleting the finished model first (a
    resumed --subject all retrained every finished subject); now it is done, as with a checkpoint."""
    out = tmp_path / "run"
    first = run(out, keep_checkpoints=0)
    folder = RunFolder(out)
    assert not folder.checkpoints()
    before = {p: Path(p).read_bytes() for p in (folder.model_path, folder.summary_path, folder.metrics_path)}
    again = run(out, resume=True, keep_checkpoints=0, net=model(seed=5))
    assert {p: Path(p).read_bytes() for p in before} == before  # nothing rewritten
    assert again.best_epoch == first.best_epoch and again.summary == first.summary
    assert [r["epoch"] for r in again.history] == [r["epoch"] for r in first.history]
    assert all(
        torch.equal(a, b)
        for a, b in zip(state_of(again.model).values(), state_of(first.model).values(), strict=True)
    )


def test_a_stop_between_the_checkpoint_and_the_model_is_repaired_on_resume(tmp_path: Path) -> None:
    """The selected epoch's model is written after its checkpoint: stopped between the two, the folder
    holds the checkpoint (which selected the epoch) and the earlier epoch's model; resume writes the
    checkpoint's. (Written before it, a resume from the previous checkpoint kept the killed epoch's
    weights under a summary naming an earlier epoch.)"""
    out = tmp_path / "run"
    full = run(out, epochs=2, keep_checkpoints=None)
    folder = RunFolder(out)
    assert full.best_epoch == 2 and folder.model_epoch() == 2
    epoch1 = load_checkpoint(folder.checkpoint_path(1))["model"]
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in epoch1.items()}, folder.model_path, metadata={"epoch": "1"})
    os.remove(folder.summary_path)
    resumed = run(out, epochs=2, keep_checkpoints=None, resume=True)
    assert folder.model_epoch() == 2 and resumed.best_epoch == 2
    weights = load_file(folder.model_path)
    want = load_checkpoint(folder.checkpoint_path(2))["model"]
    assert all(torch.equal(weights[k], want[k]) for k in want)


def test_a_finished_run_missing_its_model_and_a_stale_model_are_named(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run(out, keep_checkpoints=0)
    folder = RunFolder(out)
    os.remove(folder.model_path)
    with pytest.raises(
        FileNotFoundError, match=r"holds a finished run .* whose model.safetensors is missing"
    ):
        run(out, resume=True, keep_checkpoints=0)
    # a later checkpoint removed by hand: the model file is from an epoch the earlier checkpoint does not
    # know as its best (monitor train_loss, mode max: epoch 1 stays the best of a falling loss)
    other = tmp_path / "other"
    kw = dict(keep_checkpoints=None, epochs=3, monitor="train_loss", mode="max")
    full = run(other, **kw)
    folder = RunFolder(other)
    assert full.best_epoch == 1
    from safetensors.torch import load_file, save_file

    save_file(
        load_file(folder.model_path), folder.model_path, metadata={"epoch": "3"}
    )  # as if 3 was selected
    os.remove(folder.summary_path)
    os.remove(folder.checkpoint_path(3))
    with pytest.warns(
        RuntimeWarning, match=r"whose best epoch is 1, but model.safetensors holds epoch 3's weights"
    ):
        run(other, resume=True, **kw)


def test_a_finished_run_resumed_with_more_epochs_goes_on_as_one_run(tmp_path: Path) -> None:
    # "fit.epochs: 3 -> 5" was refused as another config: a run could not be extended
    whole = run(tmp_path / "whole", epochs=5)
    out = tmp_path / "run"
    run(out, epochs=3)
    longer = run(out, epochs=5, resume=True)
    assert longer.epochs_run == 5 and longer.summary["resumed_at"] == [3]
    assert RunFolder(out).read_config()["fit"]["epochs"] == 5
    assert _untimed(RunFolder(out).read_metrics()) == _untimed(RunFolder(tmp_path / "whole").read_metrics())
    assert all(
        torch.equal(a, b)
        for a, b in zip(state_of(longer.model).values(), state_of(whole.model).values(), strict=True)
    )
    # fewer epochs, or another setting with them, is still a different run
    with pytest.raises(ValueError, match=r"different config \(fit.epochs: 5 -> 4\)"):
        run(out, epochs=4, resume=True)
    with pytest.raises(ValueError, match=r"different config \(fit.seed: 0 -> 1\)"):
        run(out, epochs=6, seed=1, resume=True)
    # without a checkpoint there is nothing to go on from
    run(tmp_path / "nock", epochs=2, keep_checkpoints=0)
    with pytest.raises(
        ValueError, match=r"finished after 2 epochs that kept no checkpoint .* cannot go on to 3"
    ):
        run(tmp_path / "nock", epochs=3, keep_checkpoints=0, resume=True)


def test_a_resume_takes_an_input_at_a_new_path(uninterrupted: Path, tmp_path: Path) -> None:
    """A config entry named in ``locations`` says where an input is; the recipe identifies its content by
    other entries (here a digest). A resume with the input moved was refused as another config."""
    old, new = str(tmp_path / "data"), str(tmp_path / "moved" / "data")
    config = {"task": "tiny regression", "data": old, "data_digest": "0123"}
    moved = {**config, "data": new}
    out = tmp_path / "run"
    child = mp.get_context("fork").Process(
        target=_killed_run_with, args=(str(out), STEPS_PER_EPOCH + 3, config)
    )
    child.start()
    child.join(timeout=120)
    assert child.exitcode == KILLED
    # without locations a path is part of the config, as any entry
    with pytest.raises(ValueError, match=r"different config \(config.data: '.*/data' -> '.*/moved/data'\)"):
        run(out, config=moved, resume=True)
    # without resume the run is this config's: the move is named with what to pass
    with pytest.raises(
        ValueError,
        match=r"already holds a run with this config \(checkpointed at epoch 1; config.data moved from "
        r"'.*/data' to '.*/moved/data'\); pass resume=True",
    ):
        run(out, config=moved, locations=["data"])
    # another input (its digest differs), a path for none, or another setting: still another run, the
    # path shown with what differs
    for change, differs in (
        (
            {"config": {**moved, "data_digest": "4567"}},
            r"config.data: .*; config.data_digest: '0123' -> '4567'",
        ),
        ({"config": {**moved, "data": None}}, r"config.data: '.*/data' -> None\)"),
        ({"config": moved, "seed": 1}, r"config.data: .*; fit.seed: 0 -> 1\)"),
    ):
        with pytest.raises(ValueError, match=r"holds a run with a different config \(" + differs):
            run(out, **{"config": moved, "locations": ["data"], "resume": True, **change})
    assert RunFolder(out).read_config()["config"] == config  # refused: nothing recorded
    resumed = run(out, config=moved, locations=["data"], resume=True)
    assert RunFolder(out).read_config()["config"] == moved  # the new path recorded
    assert resumed.summary["resumed_at"] == [1]
    expected = load_checkpoint(uninterrupted)["model"]
    assert all(torch.equal(load_checkpoint(out)["model"][k], v) for k, v in expected.items())  # bitwise


def _killed_run_with(out: str, kill_at: int, config: dict) -> None:
    forked_child()
    run(out, config=config, locations=["data"], hooks=[ExitAt(kill_at)])
    os._exit(0)


def test_locations_must_name_config_entries(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"^fit: locations=\['data'\] names \['data'\], which config does not"
    ):
        run(tmp_path / "run", locations=["data"])
    with pytest.raises(TypeError, match=r"^fit: locations='task'; expected a list of names"):
        run(tmp_path / "run", locations="task")
    assert not (tmp_path / "run").exists()
