"""Run folders: the start/resume/overwrite rules, atomic writes, checkpoints and their readers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from fit_tiny import model, run, state_of

from fastalign.train import FitState, Hook, RunFolder, load_checkpoint


def test_another_config_is_refused_and_overwrite_replaces_the_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run(out, epochs=2, keep_checkpoints=None)
    (out / "notes.txt").write_text("from the old run")
    with pytest.raises(ValueError, match=r"different config \(config.task: 'tiny regression' -> 'other'\)"):
        run(out, epochs=2, config={"task": "other"})
    with pytest.raises(ValueError, match=r"fit.epochs: 2 -> 1"):  # more epochs extend a run; fewer do not
        run(out, epochs=1, resume=True)
    long_value = r"config.task: 'tiny regression' -> '(x){27}\.\.\.(x){28}'\)"  # cut in the middle
    with pytest.raises(ValueError, match=long_value) as long:
        run(out, epochs=2, config={"task": "x" * 500})  # a long value is cut, not printed whole
    assert len(str(long.value)) < 400
    run(out, epochs=1, config={"task": "other"}, overwrite=True)
    folder = RunFolder(out)
    assert folder.read_config()["config"] == {"task": "other"}
    assert not (out / "notes.txt").exists()  # replaced as a unit: nothing of the old run is left
    assert [RunFolder.checkpoint_epoch(p) for p in folder.checkpoints()] == [1]
    assert {r["epoch"] for r in folder.read_metrics()} == {1}
    assert [n for n in os.listdir(tmp_path) if n != "run"] == []  # no staging folder left beside it


def test_same_config_needs_resume_or_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run(out, epochs=1)
    with pytest.raises(
        ValueError, match=r"already holds a run with this config \(finished\); pass resume=True \(--resume\)"
    ):
        run(out, epochs=1)
    again = run(out, epochs=1, overwrite=True)
    assert again.summary["resumed_at"] == []


def test_folders_that_hold_no_run_are_not_touched(tmp_path: Path) -> None:
    other = tmp_path / "mine"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(ValueError, match=r"holds files but no config\.json, so it is not a run folder"):
            run(other, overwrite=overwrite)
    assert (other / "thesis.tex").read_text() == "precious"
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(ValueError, match=r"out=.*file' is a file; expected a folder"):
        run(afile)


def test_overwrite_replaces_only_a_run_and_never_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a config.json alone made a folder a "run": --overwrite deleted a project holding one
    project = tmp_path / "proj"
    (project / "src").mkdir(parents=True)
    (project / "config.json").write_text('{"name": "my web app"}')
    (project / "src" / "main.py").write_text("precious")
    with pytest.raises(FileExistsError, match=r"holds a config\.json that is not a run's"):
        run(project, overwrite=True)
    assert (project / "src" / "main.py").read_text() == "precious"
    # a real run, but the current folder (or one above it): not replaced either
    run(tmp_path / "r", epochs=1)
    for cwd in (tmp_path / "r", tmp_path / "r" / "checkpoints"):
        monkeypatch.chdir(cwd)
        with pytest.raises(FileExistsError, match="is the current folder, one above it or the home folder"):
            run(tmp_path / "r", epochs=1, overwrite=True)
    monkeypatch.chdir(tmp_path)
    assert run(tmp_path / "r", epochs=1, overwrite=True).summary["resumed_at"] == []


def test_new_empty_and_resumed_empty_folders_start_a_run(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for name, resume in (("empty", False), ("new/deeper", True)):
        result = run(tmp_path / name, epochs=1, resume=resume)
        assert result.epochs_run == 1 and RunFolder(tmp_path / name).is_run()


def test_keep_checkpoints(tmp_path: Path) -> None:
    for keep, expected in ((None, [1, 2, 3]), (2, [2, 3]), (1, [3]), (0, [])):
        folder = run(tmp_path / str(keep), keep_checkpoints=keep).run
        assert [RunFolder.checkpoint_epoch(p) for p in folder.checkpoints()] == expected
    assert not os.path.exists(RunFolder(tmp_path / "0").checkpoints_dir)  # not even its folder
    with pytest.raises(ValueError, match=r"fit: keep_checkpoints=-1; expected an int >= 0 or None"):
        run(tmp_path / "bad", keep_checkpoints=-1)


class _Stop(Exception):
    pass


class _StopAt(Hook):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, state: FitState) -> None:
        if state.step == self.step:
            raise _Stop


def test_a_run_resumed_without_checkpoints_ends_as_an_uninterrupted_one(tmp_path: Path) -> None:
    """keep_checkpoints=0 on resume: the run continues from its checkpoint, then removes it (it would be
    stale); the weights are the uninterrupted run's."""
    whole = run(tmp_path / "whole")
    out = tmp_path / "run"
    with pytest.raises(_Stop):
        run(out, hooks=[_StopAt(8)])  # in epoch 2 of 3 (6 steps an epoch)
    assert [RunFolder.checkpoint_epoch(p) for p in RunFolder(out).checkpoints()] == [1]
    resumed = run(out, resume=True, keep_checkpoints=0)
    assert resumed.summary["resumed_at"] == [1] and RunFolder(out).checkpoints() == []
    for (key, a), b in zip(state_of(resumed.model).items(), state_of(whole.model).values(), strict=True):
        assert torch.equal(a, b), key


def test_a_failed_checkpoint_write_keeps_the_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    save = torch.save
    calls = {"n": 0}

    def failing_save(obj: object, f: str) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # epoch 2's checkpoint: half written, then the disk fills up
            Path(f).write_bytes(b"PK\x03\x04 half")
            raise OSError(28, "No space left on device")
        save(obj, f)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match=r"could not write .*epoch-0002\.pt': the disk \(or quota\) .* is full"):
        run(out, keep_checkpoints=None)
    monkeypatch.setattr(torch, "save", save)
    folder = RunFolder(out)
    assert [RunFolder.checkpoint_epoch(p) for p in folder.checkpoints()] == [1]
    assert load_checkpoint(out)["epoch"] == 1
    assert sorted(os.listdir(folder.checkpoints_dir)) == ["epoch-0001.pt"]  # the temp file is gone
    assert run(out, resume=True).epochs_run == 3


def test_load_checkpoint(tmp_path: Path) -> None:
    result = run(tmp_path / "run", epochs=2)
    net = model(seed=9)
    opt = torch.optim.Adam(net.parameters())
    ckpt = load_checkpoint(tmp_path / "run", model=net, optimizer=opt)
    assert ckpt["epoch"] == 2 and opt.state_dict()["state"][0]["step"].item() == ckpt["step"]
    assert all(torch.equal(a, b) for a, b in zip(state_of(net).values(), ckpt["model"].values(), strict=True))
    with pytest.raises(ValueError, match="holds no scheduler state"):
        load_checkpoint(result.run, scheduler=torch.optim.lr_scheduler.StepLR(opt, 1))
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        load_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="expected a checkpoint file or a run folder"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"state": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"not a fastalign checkpoint \(it lacks \['format'"):
        load_checkpoint(tmp_path / "other.pt")
    # a truncated one (a full disk, a copy cut short) and a text file: named, with what to do
    latest = RunFolder(tmp_path / "run").latest_checkpoint()
    data = Path(latest).read_bytes()
    Path(latest).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"could not read .*epoch-0002\.pt' as a checkpoint: .* remove it"):
        load_checkpoint(latest)
    Path(latest).write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"could not read .*epoch-0002\.pt' as a checkpoint"):
        load_checkpoint(latest)


def test_run_folder_readers(tmp_path: Path) -> None:
    result = run(tmp_path / "run", epochs=1)
    folder = RunFolder(tmp_path / "run")
    assert os.fspath(folder) == str(tmp_path / "run") and result.run.path == folder.path
    net = folder.load_model(model(seed=4))
    assert all(
        torch.equal(a, b)
        for a, b in zip(state_of(net).values(), state_of(result.model).values(), strict=True)
    )
    lines = len(folder.read_metrics())
    with open(folder.metrics_path, "a") as f:
        f.write('{"kind": "train", "epo')  # a writer killed mid-line
    assert len(folder.read_metrics()) == lines
    with pytest.raises(FileNotFoundError, match="has no summary"):
        RunFolder(tmp_path / "nothing").read_summary()
    with pytest.raises(FileNotFoundError, match=r"has no model.safetensors"):
        RunFolder(tmp_path / "nothing").load_model(model())


def test_a_folder_a_run_is_training_in_is_refused_to_a_second_process(tmp_path: Path) -> None:
    # two processes resuming one folder (a requeued job beside the running one) interleaved their epochs
    # in metrics.jsonl and cut each other's files: the training process holds the folder's lock
    import fcntl
    import subprocess
    import sys

    out = tmp_path / "run"
    run(out, epochs=1)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         f"fd = os.open({str(out / '.lock')!r}, os.O_RDWR)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        before = Path(RunFolder(out).metrics_path).read_bytes()
        for kw in ({"resume": True}, {"overwrite": True}):
            with pytest.raises(FileExistsError, match=r"is in use: another process is training in it"):
                run(out, epochs=2, **kw)
        assert Path(RunFolder(out).metrics_path).read_bytes() == before
    finally:
        holder.kill()
        holder.wait()
    # released at the end of a run, by this process too: the next one proceeds
    assert run(out, epochs=2, overwrite=True).epochs_run == 2
    fd = os.open(out / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody holds it now
    finally:
        os.close(fd)
