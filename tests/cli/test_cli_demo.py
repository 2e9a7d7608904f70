"""``fastalign demo --quick`` end to end, in this process: what it prints, summary.json, report.html and its
figures, the same numbers from the same seed, and the output folder replaced only as a whole.

One quick demo (module fixture) serves the content tests; it is the suite's only run of every stage
together. Seed determinism is checked by re-running the stages that are cheap to repeat (data, the
calibrated start, a decoder) and comparing them with the demo's own files; the alignment's seeding has
its own tests (tests/train/test_align.py). The demo's calibrated start,
:func:`fastalign.models.calibrate_batchnorm`, has its own tests (tests/models/test_calibration.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import fastalign.cli.demo as demo_module
from fastalign.cli import main
from fastalign.cli.demo import QUICK, STAGES, DemoPaths, demo_data, format_summary, start_model
from fastalign.data import load_preprocessed_eeg
from fastalign.train import decode


@dataclass(frozen=True)
class Demo:
    status: int
    out: str
    err: str
    folder: Path
    summary: dict


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """CORnet-S's steps are memory-bound: a second thread costs on a busy 2-core CI machine. The demo's
    numbers are the same for the same seed and thread count (float sums in another order differ in the last
    bits), so the checks of its seeding re-run stages on one thread too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """One quick demo; its folder (650 MB: CORnet-S three times) goes when the module's tests are done."""
    parent = tmp_path_factory.mktemp("demo")
    folder = parent / "demo"
    stdout, stderr = io.StringIO(), io.StringIO()
    with one_thread(), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = main(["demo", "--out", str(folder), "--quick", "--seed", "0"])
    summary = json.loads((folder / "summary.json").read_text()) if status == 0 else {}
    yield Demo(status, stdout.getvalue(), stderr.getvalue(), folder, summary)
    shutil.rmtree(parent, ignore_errors=True)


def test_prints_the_summary_of_summary_json(quick: Demo) -> None:
    assert quick.status == 0, quick.err
    assert quick.out == format_summary(quick.summary) + f"\n\nreport: {quick.folder / 'report.html'}\n"
    lines = quick.out.splitlines()
    assert lines[0].startswith("fastalign demo --quick (seed 0): CORnet-S aligned to sub-01's EEG")
    rsa = quick.summary["rsa"]
    row = next(line.split() for line in lines if line.split()[:2] == ["ReAlnet", "IT"])
    own, other = rsa["IT"]["realnet"]["sub-01"], rsa["IT"]["realnet"]["sub-02"]
    expected = []
    for n in (own, other):
        expected += [f"{n['rsa']:.3f}", *(f"{n['gain'][b]['mean']:+.3f}" for b in ("cornet_s", "control"))]
    assert row[2:] == expected
    response = next(line.split() for line in lines if line.split()[:2] == ["ReAlnet", "response"])
    assert len(response) == 2 + 4  # no CORnet-S gain: CORnet-S has no encoding head
    assert any("cluster test of the gain over CORnet-S on sub-01" in line for line in lines)
    decoding = quick.summary["decoding"]
    for label, name in (
        ("CORnet-S IT", "cornet_s"),
        ("ReAlnet IT", "realnet"),
        ("true features", "features"),
    ):
        line = next(line for line in lines if line.strip().startswith(label))
        assert line.split()[-2:] == [f"{decoding['models'][name][k]:.3f}" for k in ("top1", "top5")]
    at_chance = [label for label, name in (("CORnet-S IT", "cornet_s"), ("ReAlnet IT", "realnet"),
                                           ("true features", "features"))
                 if decoding["models"][name] == decoding["chance"]]  # fmt: skip
    note = [line for line in lines if "exactly at chance in every top-k" in line]
    want = f"  ({', '.join(at_chance)}: exactly at chance in every top-k: a decoder trained this few steps "
    want += "ranks the gallery alike for every trial; docs/decoding.md)"
    assert note == ([want] if at_chance else [])
    assert next(line for line in lines if line.startswith("Time (s): data "))
    # progress: one line as each stage starts and ends, on standard error
    for i, stage in enumerate(STAGES, start=1):
        assert f"fastalign demo [{i}/{len(STAGES)}] {stage}: done in " in quick.err


def test_the_header_says_which_images_the_numbers_come_from(quick: Demo) -> None:
    # photographs with scikit-image installed, else drawn shapes: other images give other numbers
    truth = np.load(quick.folder / "data" / "ground_truth.npz")
    assert quick.summary["image_source"] == str(truth["image_source"]) in ("photos", "procedural")
    first = quick.out.splitlines()[0]
    assert first.endswith(
        "of 32 px, from photographs)"
        if quick.summary["image_source"] == "photos"
        else "drawn shapes: without scikit-image; the README's numbers are from photographs)"
    )
    for source, words in (("photos", "from photographs"), ("procedural", "drawn shapes")):
        assert words in format_summary({**quick.summary, "image_source": source}).splitlines()[0]


def test_summary_json(quick: Demo) -> None:
    s = quick.summary
    assert s["seed"] == 0 and s["quick"] is True and s["settings"] == dataclasses.asdict(QUICK)
    assert set(s["rsa"]) == {"V1", "V2", "V4", "IT", "avgpool", "response"}
    assert (
        set(s["rsa"]["IT"]) == {"cornet_s", "realnet", "control"} and "cornet_s" not in s["rsa"]["response"]
    )
    cluster = s["rsa"]["IT"]["realnet"]["cluster"]
    assert cluster == {"tested": False, "reason": "needs at least 2 subjects, has 1"}  # one aligned subject
    gain = s["rsa"]["V1"]["realnet"]["sub-02"]["gain"]["cornet_s"]
    assert gain["max"] >= gain["mean"] and 0 <= gain["max_time"] <= s["rsa_t_max"]
    d = s["decoding"]
    assert d["n_gallery"] == QUICK.n_test
    assert d["chance"] == pytest.approx(
        {"top1": 1 / QUICK.n_test, "top3": 3 / QUICK.n_test, "top5": 5 / QUICK.n_test}
    )
    for v in d["models"].values():
        assert set(v) == {"top1", "top3", "top5"} and 0 <= v["top1"] <= v["top3"] <= v["top5"] <= 1
    for key in ("seconds", "cpu_seconds"):
        assert set(s[key]) == {*STAGES, "total"} and all(v > 0 for v in s[key].values())
        assert s[key]["total"] >= sum(s[key][k] for k in STAGES) * 0.999
    runs = DemoPaths(str(quick.folder))
    for name in ("realnet", "control"):
        assert os.path.isfile(os.path.join(runs.run(name), "model.safetensors"))
        assert not list(Path(runs.run(name)).rglob("*.pt"))  # the models are kept, not resumable checkpoints
        assert s["align"][name]["epochs_run"] == QUICK.align_epochs
    assert (quick.folder / "evaluation" / "results.csv").is_file()


def test_the_decoders_epoch_is_chosen_on_a_validation_loss_that_varies(quick: Demo) -> None:
    # with 1 validation image (decode's default 0.1 of 16) InfoNCE has one candidate: 0 every epoch
    runs = DemoPaths(str(quick.folder))
    for name in ("cornet_s", "realnet", "features"):
        config = json.loads(Path(runs.decoding(name), "config.json").read_text())["config"]
        assert config["n_val"] >= 4, name
        lines = Path(runs.decoding(name), "metrics.jsonl").read_text().splitlines()
        losses = [r["val_loss"] for r in map(json.loads, lines) if "val_loss" in r]
        assert len(losses) >= QUICK.decode_epochs and max(losses) - min(losses) > 1e-3, (name, losses)


def test_report_shows_every_figure(quick: Demo) -> None:
    page = (quick.folder / "report.html").read_text()
    shown = re.findall(r'<img src="([^"]+)"', page)
    assert {"figures/rsa_time_courses_eeg.png", "figures/retrieval.png"} <= set(shown)
    for src in shown:
        assert (quick.folder / src).stat().st_size > 0
    figures = sorted(p.name for p in (quick.folder / "figures").glob("*.png"))
    assert figures == sorted(os.path.basename(s) for s in shown)
    assert 'href="evaluation/results.csv"' in page and "fastalign demo" in page
    assert not [p for p in quick.folder.parent.iterdir() if p.name.startswith(".demo.")]  # no staging left


def test_recorded_paths_name_the_demo_folder_not_its_build_folder(quick: Demo) -> None:
    # the runs were written in a staging folder beside --out: their configs named it, a folder gone after
    # the demo, and evaluate's check of the run's dataset found nothing to check
    texts = {p: p.read_text() for p in quick.folder.rglob("*.json")}
    assert [p for p, t in texts.items() if ".demo." in t] == []
    for run in ("realnet", "control"):
        config = json.loads((quick.folder / "runs" / run / "config.json").read_text())["config"]
        assert config["data"] == str(quick.folder / "data") and os.path.isdir(config["data"])


def test_same_seed_same_numbers(quick: Demo, tmp_path: Path) -> None:
    assert quick.status == 0, quick.err
    paths = DemoPaths(str(quick.folder))
    with one_thread():
        _repeat_and_compare(paths, tmp_path)


def _repeat_and_compare(paths: DemoPaths, tmp_path: Path) -> None:
    again = demo_data(tmp_path / "data", QUICK, seed=0)
    for subject in (1, 2):
        for split in ("training", "test"):
            a = load_preprocessed_eeg(os.path.join(paths.data, "preprocessed_data"), subject, split)
            b = load_preprocessed_eeg(again.preprocessed_dir, subject, split)
            np.testing.assert_array_equal(a.data, b.data)
    with np.load(os.path.join(paths.data, "ground_truth.npz")) as gt:
        np.testing.assert_array_equal(gt["test_features"], again.ground_truth["test_features"])
    start = start_model(again.root, str(tmp_path / "start.pth"), QUICK.image_size, seed=0)
    mine, theirs = torch.load(start, weights_only=True), torch.load(paths.start, weights_only=True)
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    result = decode(
        again.root, 1, out=tmp_path / "features", image_model="features", epochs=QUICK.decode_epochs,
        batch_size=QUICK.decode_batch_size, val_fraction=QUICK.decode_val_fraction,
        image_size=QUICK.image_size, seed=0, progress=False,
    )  # fmt: skip
    theirs = json.loads(Path(paths.decoding("features"), "summary.json").read_text())
    for key in ("top1", "top3", "top5", "temperature", "best_epoch"):
        assert result.summary[key] == theirs[key], key


def test_out_is_replaced_only_as_a_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    out.mkdir()
    (out / "old.txt").write_text("old")
    # not a demo's output (no summary.json): not replaced, even with --overwrite
    assert main(["demo", "--out", str(out), "--quick", "--overwrite"]) == 1
    assert "holds no summary.json, so demo did not write it" in capsys.readouterr().err
    (out / "summary.json").write_text('{"rsa": {}}')  # another command's: replacing it is refused too
    assert main(["demo", "--out", str(out), "--quick", "--overwrite"]) == 1
    assert "holds another command's output (its summary.json lacks decoding, quick, settings)" in (
        capsys.readouterr().err
    )
    (out / "summary.json").write_text('{"quick": true, "settings": {}, "decoding": {}}')  # an earlier demo's
    assert main(["demo", "--out", str(out), "--quick"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fastalign demo: error: demo: out ") and "--overwrite" in err
    assert len(err.splitlines()) == 1

    def fail(root: str, *args: object, **kwargs: object) -> None:
        Path(root).mkdir(parents=True)
        (Path(root) / "half.txt").write_text("half")
        raise RuntimeError("stopped halfway")

    monkeypatch.setattr(demo_module, "demo_data", fail)
    assert main(["demo", "--out", str(out), "--quick", "--overwrite", "--no-progress"]) == 1
    assert "stopped halfway" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # the staging folder is gone
    assert sorted(p.name for p in out.iterdir()) == ["old.txt", "summary.json"]
    assert (out / "old.txt").read_text() == "old"
    assert main(["demo", "--out", str(out / "old.txt"), "--quick"]) == 1
    assert "is a file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--quick"])  # --out is required
