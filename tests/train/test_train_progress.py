"""Progress output (a bar on a terminal, lines elsewhere, nothing when quiet) and TensorBoard events
(skipped with a note when tensorboard is missing; a mocked SummaryWriter stands in for the installed one)."""

from __future__ import annotations

import io
import sys
import types
from pathlib import Path
from typing import Any, ClassVar

import pytest
from fit_tiny import run

from fastalign.train import RunFolder


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_when_not_a_terminal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(tmp_path / "run", epochs=2, progress=True)
    err = capsys.readouterr().err.splitlines()
    assert "epoch 1/2 step 2/6 (total 2)" in err[0] and "loss " in err[0] and "img/s" in err[0]
    done = [line for line in err if " done " in line]
    assert len(done) == 2 and "val_loss" in done[0] and "best epoch 1" in done[0]
    assert not any("\r" in line or "it/s" in line for line in err)


def test_a_bar_on_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    run(tmp_path / "run", epochs=1, progress=True)
    text = terminal.getvalue()
    assert "\repoch 1/1:" in text and "/6 [" in text  # tqdm's bar, redrawn in place
    assert "epoch 1/1 done" in text


def test_quiet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(tmp_path / "run", epochs=1, progress=False)
    assert capsys.readouterr().err == ""


def _hide_tensorboard(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes `import torch.utils.tensorboard` raise ImportError, installed or not
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)


def test_without_tensorboard_events_are_skipped_with_a_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _hide_tensorboard(monkeypatch)
    result = run(tmp_path / "run", epochs=1)
    assert result.run.read_config()["environment"]["tensorboard"].startswith(
        "not written: tensorboard is not"
    )
    assert not Path(result.run.events_dir).exists()
    with pytest.raises(ImportError, match="tensorboard=True but TensorBoard cannot be imported"):
        run(tmp_path / "required", epochs=1, tensorboard=True)
    off = run(tmp_path / "off", epochs=1, tensorboard=False)
    assert off.run.read_config()["environment"]["tensorboard"] == "not written (tensorboard=False)"


class FakeWriter:
    instances: ClassVar[list[FakeWriter]] = []

    def __init__(self, log_dir: str, purge_step: int) -> None:
        self.log_dir, self.purge_step = log_dir, purge_step
        self.scalars: list[tuple[str, float, int]] = []
        self.closed = False
        FakeWriter.instances.append(self)

    def add_scalar(self, tag: str, value: float, global_step: int) -> None:
        self.scalars.append((tag, value, global_step))

    def close(self) -> None:
        self.closed = True


def test_events_go_to_the_summary_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeWriter  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    FakeWriter.instances.clear()
    result = run(tmp_path / "run", epochs=2)
    (writer,) = FakeWriter.instances
    assert (
        writer.log_dir == RunFolder(tmp_path / "run").events_dir and writer.purge_step == 0 and writer.closed
    )
    tags: dict[str, list[Any]] = {}
    for tag, value, step in writer.scalars:
        tags.setdefault(tag, []).append((step, value))
    assert [s for s, _ in tags["train/loss"]] == [2, 4, 6, 8, 10, 12]
    assert tags["epoch/val_loss"] == [(6, result.history[0]["val_loss"]), (12, result.history[1]["val_loss"])]
    assert "train/lr" in tags and "train/images_per_s" in tags
    assert result.run.read_config()["environment"]["tensorboard"] == "written to events/"

    FakeWriter.instances.clear()
    run(tmp_path / "run", epochs=2, resume=True)  # nothing left to train: the writer starts at step 12
    assert FakeWriter.instances[0].purge_step == 12
