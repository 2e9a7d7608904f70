"""``fastalign evaluate`` end to end on the shared ReAlnet runs (tests/aligned_runs.py): the report folder's
files and their content, what the aligned model shows against CORnet-S, and the errors at command level.

One evaluation (module fixture) serves the content tests: three CORnet-S-sized models at 32 px on the 30
test images, 100 permutations, and the robustness table at eps = 0 only (the clean accuracy: one forward
per model; a CORnet-S pass costs about a second on a busy CPU whatever the image size, and the attacks
themselves are tested in tests/eval). The error cases stop before any model runs.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shutil
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fastalign.eval as fe
from fastalign._checks import OUTPUT_MANIFEST
from fastalign.cli import main, parser
from fastalign.data import load_image_metadata
from fastalign.data._io import digest_files

PERMUTATIONS = 100


@dataclass(frozen=True)
class Run:
    """One ``fastalign evaluate`` call: its exit status, standard output and error, and its folder."""

    status: int
    out: str
    err: str
    folder: Path


def _evaluate(argv: list[str], folder: Path) -> Run:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = main(["evaluate", *map(str, argv)])
    return Run(status, stdout.getvalue(), stderr.getvalue(), folder)


def _models(runs) -> list[str]:
    models = ["cornet_s", runs.paired, runs.control]
    return ["--data", runs.root, "--models", *models, "--weights", runs.cornet_s, "--image-size", "32"]


def _labelled(runs, folder: Path) -> Path:
    """Two of the test images as a labelled folder of two classes, named by their class indices (without
    a class index, folders named otherwise must be one per class of the models)."""
    images = load_image_metadata(runs.root / "image_set").paths("test")
    for name, path in zip(("7", "207"), images, strict=False):
        (folder / name).mkdir(parents=True)
        shutil.copy(path, folder / name)
    return folder


@pytest.fixture(scope="module")
def report(aligned_runs, tmp_path_factory: pytest.TempPathFactory) -> Run:
    tmp = tmp_path_factory.mktemp("evaluate")
    labelled = _labelled(aligned_runs, tmp / "labelled")
    argv = [*_models(aligned_runs), "--out", tmp / "report", "--permutations", PERMUTATIONS,
            "--robustness", labelled, "--eps", "0", "--attacks", "fgsm"]  # fmt: skip
    return _evaluate(argv, tmp / "report")


def _csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.links += [v for k, v in attrs if k in ("src", "href") and not v.startswith("#")]


def test_report_folder_holds_the_tables_figures_and_page(report: Run, aligned_runs) -> None:
    assert report.status == 0, report.err
    folder = report.folder
    assert {"config.json", "results.csv", "stats.json", "summary.json", "variability.csv", "robustness.csv",
            "report.html", "figures", "cache", OUTPUT_MANIFEST} == set(os.listdir(folder))  # fmt: skip
    assert not [p for p in os.listdir(folder.parent) if p.startswith(".report.")]  # no staging left

    # results.csv: a row per model, model subject, brain subject, layer and time point
    header, rows = _csv(folder / "results.csv")
    assert header == list(fe.RESULT_COLUMNS)
    times = fe.load_brain(aligned_runs.root).times
    areas = ("V1", "V2", "V4", "IT", "avgpool")
    want = {("cornet_s", "", s, "none", layer) for s in ("sub-01", "sub-02") for layer in areas}
    for run in ("paired", "control"):  # both aligned to sub-01; ReAlnet adds its encoding head
        for s, comparison in (("sub-01", "within"), ("sub-02", "across-subject")):
            want |= {(run, "sub-01", s, comparison, layer) for layer in (*areas, "response")}
    keys = [(r["model"], r["model_subject"], r["subject"], r["comparison"], r["layer"]) for r in rows]
    assert set(keys) == want and len(rows) == len(want) * len(times)
    for key in want:
        got = sorted(float(r["time"]) for r, k in zip(rows, keys, strict=True) if k == key)
        np.testing.assert_allclose(got, times, atol=1e-9)
    assert all(r["modality"] == "eeg" and r["roi"] == "" and -1 <= float(r["similarity"]) <= 1 for r in rows)

    # stats.json: the settings and, with 2 brain subjects, exact nulls of 2^2 sign flips
    stats = json.loads((folder / "stats.json").read_text())
    assert stats["permutations"] == PERMUTATIONS and stats["threshold_p"] == 0.05 and stats["alpha"] == 0.05
    assert stats["baseline"] == "cornet_s" and stats["exact"] is True and stats["tail"] == 1
    assert {(t["model"], t["layer"], t["test"]) for t in stats["cluster_tests"]} == {
        ("cornet_s", layer, "vs0") for layer in areas
    }
    assert all(t["n_flips"] == 3 and t["n_subjects"] == 2 for t in stats["cluster_tests"])
    # 2 subjects: 4 sign flips, the identity counted once, so no p-value can be below 1/4
    assert all(t["min_p"] == 0.25 and t["can_reach_alpha"] is False for t in stats["cluster_tests"])
    assert all(c["p"] >= 0.25 for c in stats["clusters"])
    for c in stats["clusters"]:
        assert {"model", "layer", "modality", "test", "tail", "t_start", "t_stop", "p", "mass", "comparison",
                "significant", "exact", "n_subjects"} <= set(c)  # fmt: skip
        assert c["t_start"] <= c["t_stop"] and c["p"] >= 1 / 4 and not c["significant"]
    skipped = {(x["model"], x["comparison"], x["layer"], x["test"]): x["reason"] for x in stats["skipped"]}
    assert skipped["paired", "within", "IT", "vs0"] == "needs at least 2 subjects, has 1"
    assert skipped["paired", "within", "response", "vs:cornet_s"] == "cornet_s has no layer 'response'"

    summary = json.loads((folder / "summary.json").read_text())
    assert summary["baseline"] == "cornet_s" and summary["n_subjects"] == {"eeg": 2}
    assert set(summary["models"]) == {"cornet_s", "paired", "control"}
    config = json.loads((folder / "config.json").read_text())
    assert config["robustness"]["eps"] == [0] and config["robustness"]["attacks"] == ["fgsm"]

    # robustness.csv: each model (a family's member by its subject) under each attack at each eps
    header, robust = _csv(folder / "robustness.csv")
    assert header == list(fe.ROBUSTNESS_COLUMNS)
    assert [(r["model"], r["attack"], float(r["eps"])) for r in robust] == [
        (m, "fgsm", 0.0) for m in ("cornet_s", "paired/sub-01", "control/sub-01")
    ]  # fmt: skip
    for r in robust:
        assert float(r["accuracy"]) in (0.0, 0.5, 1.0)
        assert r["relative_accuracy"] == ("nan" if float(r["accuracy"]) == 0 else "1.0")


def test_figures_are_drawn_and_linked_by_the_page(report: Run) -> None:
    assert report.status == 0, report.err
    figures = report.folder / "figures"
    names = {"rsa_time_courses_eeg", "across_subject_eeg", "robustness"}
    assert set(os.listdir(figures)) == {f"{n}.{ext}" for n in names for ext in ("png", "svg")}
    for name in names:
        png = figures / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(png) as im:
            pixels = np.asarray(im.convert("L"))
        # a drawn figure: hundreds of pixels a side, mostly white paper with dark lines and text on it
        assert min(pixels.shape) > 300 and (pixels > 250).mean() > 0.5 and (pixels < 100).sum() > 2000
        assert "<svg" in (figures / f"{name}.svg").read_text()[:1000]
    page = _Links()
    page.feed((report.folder / "report.html").read_text(encoding="utf-8"))
    linked = set(page.links)
    assert {f"figures/{n}.{ext}" for n in names for ext in ("png", "svg")} <= linked
    assert {"results.csv", "variability.csv", "robustness.csv"} <= linked
    assert all((report.folder / link).is_file() for link in linked)


def test_summary_table_and_progress_are_printed(report: Run) -> None:
    assert report.status == 0, report.err
    lines = report.out.splitlines()
    assert lines[0].split() == ["model", "modality", "comparison", "layer", "peak", "at", "significant"]
    paired_it = next(line for line in lines if line.split()[:4] == ["paired", "eeg", "within", "IT"])
    assert "not tested: needs at least 2 subjects, has 1" in paired_it
    assert next(line for line in lines if line.split()[:4] == ["cornet_s", "eeg", "none", "V1"]).endswith(
        "none possible: with 2 subjects no p is below 0.25 (alpha 0.05)"
    )
    assert any(line.strip().startswith("paired/sub-01: clean") for line in lines)
    assert lines[-1] == f"report: {report.folder / 'report.html'}"
    # standard error is no terminal here: one line per finished stage
    for stage in ("features cornet_s: 30/30 img", "features paired sub-01: 30/30 img", "statistics: ",
                  "robustness cornet_s: 2/2 img", "robustness paired/sub-01: 2/2 img",
                  "robustness: 3/3 models"):  # fmt: skip
        assert any(line.startswith(stage) for line in report.err.splitlines()), stage


def test_none_possible_names_what_limits_the_smallest_p() -> None:
    from fastalign.cli.evaluate import _significant

    key = {"model": "m", "layer": "IT", "modality": "eeg", "comparison": "within"}
    test = {**key, "test": "vs0", "can_reach_alpha": False, "n_subjects": 10, "exact": False, "n_flips": 10}
    stats = {"clusters": [], "roi_tests": [], "skipped": [], "alpha": 0.05, "cluster_tests": [test]}
    test["min_p"] = 1 / 11  # 10 subjects allow 1 / 1024: the 10 flips drawn are the limit
    assert _significant(stats, key) == (
        "none possible: with 10 sign flips drawn (--permutations; 10 subjects allow 1024) no p is below "
        "0.0909 (alpha 0.05)"
    )
    test.update(n_subjects=4, exact=True, n_flips=15, min_p=1 / 16)  # all 16 flips: the subjects are
    assert _significant(stats, key) == "none possible: with 4 subjects no p is below 0.0625 (alpha 0.05)"


def test_significant_results_below_zero_or_the_baseline_say_so() -> None:
    from fastalign.cli.evaluate import _significant

    key = {"model": "m", "layer": "IT", "modality": "fmri", "comparison": "within"}
    roi = {**key, "significant": True, "p": 0.01}
    stats = {"clusters": [], "skipped": [], "cluster_tests": [], "alpha": 0.05, "roi_tests": [
        {**roi, "test": "vs0", "roi": "V1", "statistic": 4.0},
        {**roi, "test": "vs:cornet_s", "roi": "V4", "statistic": -17.0},
    ]}  # fmt: skip
    assert _significant(stats, key) == "vs0 V1 (p 0.01); vs:cornet_s V4 (below, p 0.01)"
    cluster = {**key, "modality": "eeg", "test": "vs0", "significant": True, "p": 0.002, "t_start": 0.1}
    stats = {**stats, "roi_tests": [], "clusters": [{**cluster, "t_stop": 0.2, "mass": -30.0}]}
    assert _significant(stats, {**key, "modality": "eeg"}) == "vs0 100-200 ms (below, p 0.002)"


def test_flags_are_the_functions_arguments() -> None:
    """Fractions for eps, 'none' and 'all' for the optional ones, usage errors for what is no number."""
    argv = ["evaluate", "--data", "d", "--models", "cornet_s", "--out", "o"]
    flags = ["--eps", "0", "1/255", "0.5", "--pgd-step-size", "1/510", "--subject", "all", "--tail", "-1"]
    args = parser().parse_args([*argv, *flags, "--time-window", "-0.1", "0.5"])
    assert args.eps == [0.0, 1 / 255, 0.5] and args.pgd_step_size == 1 / 510
    assert (args.subjects, args.tail, args.time_window) == ("all", -1, (-0.1, 0.5))
    assert args.progress and args.cache_dir == "auto" and args.baseline == "auto" and args.device is None
    for bad in (["--eps", "1/0"], ["--eps", "x"], ["--eps", "-1/255"], ["--eps", "2"], ["--tail", "2"],
                ["--permutations", "0"], ["--eps", "0", "-1/255"], ["--eps", "-0.5"],
                ["--pgd-step-size", "-1"], ["--pgd-step-size", "0"], ["--cache-dir", ""]):  # fmt: skip
        with pytest.raises(SystemExit) as exit_, contextlib.redirect_stderr(io.StringIO()) as err:
            parser().parse_args([*argv, *bad])
        assert exit_.value.code == 2
        if bad[0] == "--eps" and bad[-1].startswith("-"):  # a negative size, not taken for an option
            assert f"expected a size in [0, 1] such as 4/255, got {bad[-1]!r}" in err.getvalue()
        if bad[0] == "--pgd-step-size":  # the flag named, not the function's argument
            assert f"argument --pgd-step-size: expected a step size > 0 such as 1/255, got {bad[-1]!r}" in (
                err.getvalue()
            )
        if bad[0] == "--cache-dir":  # an unset variable would fill the current folder with the cache
            assert "argument --cache-dir: expected a folder path, got '' (an empty path)" in err.getvalue()


def test_overwrite_keeps_what_the_user_put_in_the_report_folder(
    report: Run, aligned_runs, tmp_path: Path
) -> None:
    """A report folder holds only what evaluate writes (its manifest lists every file, and each is one
    report_file accepts); a note beside the tables or an edited figure would be deleted with the folder
    that --overwrite replaces, so the command refuses, names them and leaves the folder as it was, also
    for a report written before manifests (report_file alone decides there)."""
    from fastalign import _checks
    from fastalign._checks import files_under

    assert report.status == 0, report.err
    assert _checks.added_files(str(report.folder)) == []
    written = files_under(str(report.folder))
    assert all(fe.rsa.report_file(p) for p in written), written
    folder = tmp_path / "report"
    shutil.copytree(report.folder, folder, ignore=shutil.ignore_patterns("cache"))
    (folder / "notes.txt").write_text("my notes")
    (folder / "figures" / "edited.png").write_bytes(b"png")
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    argv = [*_models(aligned_runs), "--out", folder, "--permutations", PERMUTATIONS, "--overwrite"]
    for manifest in (True, False):
        if not manifest:
            (folder / OUTPUT_MANIFEST).unlink()
            before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        line = _error(_evaluate(argv, folder))
        assert (
            f"out {str(folder)!r} holds what evaluate did not write (figures/edited.png, notes.txt)" in line
        )
        assert "move them out, or choose a new or empty out" in line
        assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    # a folder that is no report: told at once that --overwrite would not replace it either
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.txt").write_text("x")
    line = _error(_evaluate([*_models(aligned_runs), "--out", other, "--permutations", PERMUTATIONS], other))
    assert f"out {str(other)!r} is not empty, and holds no summary.json, so evaluate did not write it" in line


def _planted(runs, subject: str) -> tuple[float, float]:
    latency = np.load(runs.root / "ground_truth.npz")[f"latency_{subject}"]
    return float(latency.min()), float(latency.max())


def test_the_aligned_head_is_above_cornet_s_at_the_planted_latencies(report: Run, aligned_runs) -> None:
    """Both runs are aligned to sub-01 only, so each "within" effect has one subject and cannot be tested
    (stats.json lists it as skipped), and with 2 brain subjects the exact sign-flip null of CORnet-S has
    2^2 = 4 patterns: no p-value can be below 1/4 (checked above). What holds is the direction, within
    sub-01 over the planted source latencies: the aligned model's encoding head ("response", the layer
    alignment fits) is above CORnet-S's IT, the layer the head reads; the unpaired control, trained the
    same way on mismatched image-response pairs, gains less (here it falls below CORnet-S). IT itself does
    not move measurably in 6 epochs on 64 images (its difference from CORnet-S is within the noise of a
    30-image RDM), so no direction is claimed there."""
    assert report.status == 0, report.err
    _, rows = _csv(report.folder / "results.csv")
    start, stop = _planted(aligned_runs, "sub-01")

    def mean(model: str, layer: str) -> float:
        return float(np.mean([
            float(r["similarity"]) for r in rows
            if r["model"] == model and r["layer"] == layer and r["subject"] == "sub-01"
            and start - 1e-9 <= float(r["time"]) <= stop + 1e-9
        ]))  # fmt: skip

    base = mean("cornet_s", "IT")
    paired, control = mean("paired", "response") - base, mean("control", "response") - base
    assert paired > 0.02
    assert control < paired / 2
    summary = json.loads((report.folder / "summary.json").read_text())["models"]
    assert summary["paired"]["eeg"]["within"]["response"]["n_subjects"] == 1


def _error(run: Run) -> str:
    lines = run.err.splitlines()
    assert run.status == 1 and len(lines) == 1, run.err
    assert lines[0].startswith("fastalign evaluate: error: ")
    return lines[0]


def _copied_run(runs, folder: Path, **recipe: object) -> Path:
    """A copy of the paired run whose config.json's recipe settings are changed as given (None: removed)."""
    run = folder / "other"
    run.mkdir(parents=True)
    os.symlink(runs.paired / "model.safetensors", run / "model.safetensors")
    os.symlink(runs.paired / "summary.json", run / "summary.json")  # a finished run
    config = json.loads((runs.paired / "config.json").read_text())
    for key, value in recipe.items():
        if value is None:
            del config["config"][key]
        else:
            config["config"][key] = value
    (run / "config.json").write_text(json.dumps(config))
    return run


def _other_image_set(runs, folder: Path) -> Path:
    """A copy of the paired run, as an older fastalign wrote it (no test_images_digest), that says it was
    aligned on another dataset: the same image files but one test image's bytes changed."""
    data = folder / "other_data"
    shutil.copytree(runs.root / "image_set", data / "image_set")
    changed = load_image_metadata(data / "image_set").paths("test")[7]
    with open(changed, "ab") as f:
        f.write(b"\0")
    return _copied_run(runs, folder, data=str(data), test_images_digest=None)


def test_runs_are_checked_by_their_images_digest_wherever_their_data_is(aligned_runs, tmp_path: Path) -> None:
    data = ["--data", aligned_runs.root, "--image-size", "32", "--permutations", "10", "--layers", "V1"]
    config = json.loads((aligned_runs.paired / "config.json").read_text())["config"]
    images = load_image_metadata(aligned_runs.root / "image_set").paths("test")
    assert config["test_images_digest"] == digest_files(images)  # align records it
    # the digest decides, not the recorded folder (a demo's run records its build folder, gone later)
    moved = _copied_run(aligned_runs, tmp_path / "moved", data=str(tmp_path / "gone"))
    assert _evaluate([*data, "--models", moved, "--out", tmp_path / "r1"], tmp_path / "r1").status == 0
    other = _copied_run(aligned_runs, tmp_path / "digest", test_images_digest="0" * 16)
    line = _error(_evaluate([*data, "--models", other, "--out", tmp_path / "r2"], tmp_path / "r2"))
    assert "whose test images are not the evaluated data's 30 eeg test images" in line
    assert f"(digest of their bytes {'0' * 16}, of the evaluated {digest_files(images)})" in line
    # an older run without a digest whose dataset is gone: nothing to check, and it says so
    old = _copied_run(aligned_runs, tmp_path / "old", data=str(tmp_path / "gone"), test_images_digest=None)
    run = _evaluate([*data, "--models", old, "--out", tmp_path / "r3"], tmp_path / "r3")
    assert run.status == 0
    assert (
        "fastalign evaluate: warning: evaluate: cannot check that model 'other' was aligned on the "
        in run.err
    )


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("image_set", r"evaluate: model 'other' was aligned on '.*other_data', whose 30 test images are not "
                      r"the evaluated data's 30 eeg test images; models with different image sets cannot be "
                      r"compared"),
        ("subject", r"evaluate: subject\(s\) \['sub-03'\] missing from the data: .* holds "
                    r"\['sub-01', 'sub-02'\]"),
        ("layers", r"evaluate: model 'cornet_s' has no layer 'V9'; layers are V1, V2, V4, IT, avgpool, "
                   r"V1\.conv1, "),
        ("eps", r"evaluate: eps must include 0, the clean accuracy every relative accuracy is measured "
                r"against \(it costs no attack\), got \[0.5\]"),
        ("image_size", r"evaluate: model 'paired' was built for 32x32 images but image_size=48; every model "
                       r"sees the images at one size: pass image_size=32 \(--image-size 32\)"),
        ("behaviour_shape", r"evaluate: --behaviour-rdm '.*small\.npy': BrainData: behaviour\['group'\] "
                            r"must be an RDM of the 30 images: \(30, 30\) or condensed \(435,\), got shape "
                            r"\(5, 5\)"),
        ("behaviour_constant", r"evaluate: --behaviour-rdm '.*constant\.csv': the RDM of 'group' is "
                               r"constant; compare='spearman' is undefined for it$"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_1(case: str, words: str, aligned_runs, tmp_path: Path) -> None:
    data = ["--data", aligned_runs.root, "--image-size", "32", "--out", tmp_path / "report"]
    np.save(tmp_path / "small.npy", 1 - np.eye(5))
    np.savetxt(tmp_path / "constant.csv", np.ones((1, 435)), delimiter=",")
    argv = {
        "image_set": [*data, "--models", "cornet_s", _other_image_set(aligned_runs, tmp_path)],
        "subject": [*data, "--models", "cornet_s", "--subject", "1", "3"],
        "layers": [*data, "--models", "cornet_s", aligned_runs.paired, "--layers", "V1", "V9"],
        "eps": [*data, "--models", "cornet_s", "--robustness", tmp_path, "--eps", "0.5"],
        # after cornet_s, which ran first: refused before any model runs (one line: no progress)
        "image_size": [*data, "--models", "cornet_s", aligned_runs.paired, "--image-size", "48"],
        "behaviour_shape": [*data, "--models", "cornet_s", "--behaviour-rdm", tmp_path / "small.npy"],
        "behaviour_constant": [*data, "--models", "cornet_s", "--behaviour-rdm", tmp_path / "constant.csv"],
    }[case]
    line = _error(_evaluate(argv, tmp_path / "report"))
    assert re.search(words, line), line
    assert not (tmp_path / "report").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".report.")]


def test_an_existing_report_is_kept_unless_overwritten_and_a_failure_keeps_it(
    report: Run, aligned_runs, tmp_path: Path
) -> None:
    assert report.status == 0, report.err
    folder = tmp_path / "report"
    shutil.copytree(report.folder, folder)
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    argv = [*_models(aligned_runs), "--out", folder, "--permutations", PERMUTATIONS]
    line = _error(_evaluate(argv, folder))
    assert f"out {str(folder)!r} is not empty; pass overwrite=True (--overwrite) to replace it" in line
    assert line.startswith("fastalign evaluate: error: evaluate: out ")  # one prefix, not two
    line = _error(_evaluate([*argv, "--overwrite", "--subject", "1", "3"], folder))
    assert "missing from the data" in line
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    assert sorted(os.listdir(tmp_path)) == ["report"]
