"""fMRI files as real data come to evaluate: NaN outside the brain or the ROIs, ROIs listed by name; the
results follow the visual hierarchy V1 ... HVC."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil

import h5py
import numpy as np
import pytest
from published_formats import write_bdata  # tests/published_formats.py

import fastalign.eval as fe
from fastalign.data import ROI_NAMES, SyntheticThings, load_fmri, load_image_metadata
from fastalign.plotting import plot_roi_bars

_PAD = (3, 7)  # NaN voxels before and after the synthetic ones


def _truth(things: SyntheticThings) -> fe.EvalModel:
    return fe.EvalModel("truth", features={"features": things.ground_truth["test_features"]})


def _masked_copy(
    things: SyntheticThings, root: str, nan_in_v1: str | None = None, indices: bool = False
) -> str:
    """``things`` with fMRI test files as real beta files come: 10 more voxels outside every ROI, NaN in
    every image (outside the brain), float32, the ROIs as uint8 masks in a group listed by name (with
    ``indices``: as voxel indices, each ROI's in descending order); with ``nan_in_v1`` (a subject), that
    subject's V1 has NaN in one voxel of stimulus rows 2 and 5."""
    shutil.copytree(os.path.join(things.root, "image_set"), os.path.join(root, "image_set"))
    for s in things.subjects:
        sub = f"sub-{s:02d}"
        src = load_fmri(os.path.join(things.fmri_dir, sub, "fmri_test.h5"))
        n, r, v = src.data.shape
        data = np.concatenate(
            [np.full((n, r, _PAD[0]), np.nan), src.data, np.full((n, r, _PAD[1]), np.nan)], axis=2
        )
        if sub == nan_in_v1:
            data[[2, 5], 0, _PAD[0] + src.rois["V1"][1]] = np.nan
        os.makedirs(os.path.join(root, "fmri", sub))
        with h5py.File(os.path.join(root, "fmri", sub, "fmri_test.h5"), "w") as f:
            f["responses"] = data.astype(np.float32)
            group = f.create_group("rois")
            for name, idx in src.rois.items():
                mask = np.isin(np.arange(v + sum(_PAD)), idx + _PAD[0])
                group[name] = np.flatnonzero(mask)[::-1] if indices else mask.astype(np.uint8)
    return root


def _bdata_copy(things: SyntheticThings, root: str, foreign: str | None = None) -> str:
    """``things`` with each subject's fMRI test file in BData, as the Kamitani lab publishes fMRI: one row
    per trial, run by run (each run every image once, in a shuffled order), labels numbered in another
    order than the image set's, ROI_hV4 for V4, the image names in stimulus_name's value map. With
    ``foreign`` (a subject), that subject's file names one image the image set lacks. ``root + "_plain"``
    gets the same float64 responses in the image set's order (BData holds float64)."""
    for folder in (root, root + "_plain"):
        shutil.copytree(os.path.join(things.root, "image_set"), os.path.join(folder, "image_set"))
    images = load_image_metadata(os.path.join(things.root, "image_set")).paths("test")
    rng = np.random.default_rng(0)
    for s in things.subjects:
        sub = f"sub-{s:02d}"
        src = load_fmri(os.path.join(things.fmri_dir, sub, "fmri_test.h5"))
        n, r, v = src.data.shape
        label_of = rng.permutation(n) + 1.0
        runs = [rng.permutation(n) for _ in range(r)]
        trials = np.concatenate([src.data[run, k] for k, run in enumerate(runs)])
        labels = np.concatenate([label_of[run] for run in runs])
        masks = {k: np.isin(np.arange(v), idx) for k, idx in src.rois.items()}
        rois = {("ROI_hV4" if k == "V4" else f"ROI_{k}"): m for k, m in masks.items()}
        names = {label_of[i]: os.path.splitext(os.path.basename(p))[0] for i, p in enumerate(images)}
        if sub == foreign:
            names[label_of[0]] = "not_in_the_image_set"
        os.makedirs(os.path.join(root, "fmri", sub))
        write_bdata(os.path.join(root, "fmri", sub, "fmri_test.h5"), trials, labels, rois, names=names)
        os.makedirs(os.path.join(root + "_plain", "fmri", sub))
        with h5py.File(os.path.join(root + "_plain", "fmri", sub, "fmri_test.h5"), "w") as f:
            f["responses"] = src.data.astype(np.float64)
            group = f.create_group("rois")
            for name, mask in masks.items():
                group[name] = mask
    return root


def test_bdata_files_evaluate_in_the_image_sets_order(eval_things: SyntheticThings, tmp_path) -> None:
    """fMRI test files in BData, trials in presentation order and images numbered otherwise than the image
    set, give evaluate the responses and results of the same data in the image set's order."""
    root = _bdata_copy(eval_things, str(tmp_path / "bdata"))
    got, want = fe.load_brain(root, ("fmri",)), fe.load_brain(root + "_plain", ("fmri",))
    assert got.rois() == want.rois() == list(ROI_NAMES)
    for s, rois in want.fmri.items():
        for roi, x in rois.items():
            np.testing.assert_array_equal(got.fmri[s][roi], x)
    rows = fe.evaluate(root, [_truth(eval_things)], out=None, modality="fmri").rows
    same = fe.evaluate(root + "_plain", [_truth(eval_things)], out=None, modality="fmri").rows
    keys = ("subject", "roi", "similarity", "noise_lower", "noise_upper")
    assert [[r[k] for k in keys] for r in rows] == [[r[k] for k in keys] for r in same]
    sub = f"sub-{eval_things.subjects[-1]:02d}"
    bad = _bdata_copy(eval_things, str(tmp_path / "foreign"), foreign=sub)
    with pytest.raises(
        ValueError, match=rf"^evaluate: .*{sub}.fmri_test.h5: its \d+ images are not the image set"
    ):
        fe.load_brain(bad, ("fmri",))


def test_nan_outside_the_rois_is_never_read(eval_things: SyntheticThings, tmp_path) -> None:
    """A data set whose fMRI files hold NaN outside every ROI evaluates to exactly the numbers of the same
    responses without them (similarities and noise ceilings); such files were refused as a whole."""
    root = _masked_copy(eval_things, str(tmp_path / "masked"))
    got, want = fe.load_brain(root, ("fmri",)), fe.load_brain(eval_things, ("fmri",))
    assert got.rois() == want.rois() == list(ROI_NAMES)
    for s, rois in want.fmri.items():
        for roi, x in rois.items():
            np.testing.assert_array_equal(got.fmri[s][roi], x)
    rows = fe.evaluate(root, [_truth(eval_things)], out=None, modality="fmri").rows
    same = fe.evaluate(eval_things, [_truth(eval_things)], out=None, modality="fmri").rows
    keys = ("subject", "roi", "similarity", "noise_lower", "noise_upper")
    assert [[r[k] for k in keys] for r in rows] == [[r[k] for k in keys] for r in same]


def test_each_roi_keeps_its_voxel_order(eval_things: SyntheticThings, tmp_path) -> None:
    """ROIs given as voxel indices keep their order (the columns of a subject's ROI responses), as before
    only the used voxels were read."""
    root = _masked_copy(eval_things, str(tmp_path / "masked"), indices=True)
    got, want = fe.load_brain(root, ("fmri",), rois=["V2", "HVC"]), fe.load_brain(eval_things, ("fmri",))
    for s, rois in got.fmri.items():
        for roi, x in rois.items():
            np.testing.assert_array_equal(x, want.fmri[s][roi][:, ::-1])


def test_nan_inside_a_used_roi_names_subject_file_roi_voxels_and_rows(
    eval_things: SyntheticThings, tmp_path
) -> None:
    """NaN in a voxel of an evaluated ROI is an error naming the subject, the file, the ROI, its voxels and
    the stimulus rows; leaving that ROI out evaluates the others."""
    root = _masked_copy(eval_things, str(tmp_path / "masked"), nan_in_v1="sub-03")
    file = os.path.join(root, "fmri", "sub-03", "fmri_test.h5")
    v1 = load_fmri(os.path.join(eval_things.fmri_dir, "sub-03", "fmri_test.h5")).rois["V1"]
    with pytest.raises(ValueError, match=(
        rf"^evaluate: subject sub-03: {re.escape(file)}: NaN or inf in ROI 'V1': 1 of its {len(v1)} voxels "
        rf"\(indices {_PAD[0] + v1[1]}\), in 2 of 12 stimulus rows \(2, 5\); the voxels of a used ROI must "
        "be finite in every image and repetition"
    )):  # fmt: skip
        fe.evaluate(root, [_truth(eval_things)], out=None, modality="fmri")
    res = fe.evaluate(root, [_truth(eval_things)], out=None, modality="fmri", rois=["HVC", "V2"])
    assert list(dict.fromkeys(r["roi"] for r in res.rows)) == ["V2", "HVC"]


def _read_rois(path: str) -> list[str]:
    with open(path, newline="") as f:
        return list(dict.fromkeys(r["roi"] for r in csv.DictReader(f)))


def test_rois_follow_the_visual_hierarchy(eval_things: SyntheticThings, tmp_path) -> None:
    """h5py lists the files' ROIs by name (FFA, HVC, LOC, PPA, V1, ...); results.csv, stats.json,
    summary.json and the ROI figure list them V1, V2, V3, V4, LOC, FFA, PPA, HVC."""
    hierarchy = list(ROI_NAMES)
    with h5py.File(os.path.join(eval_things.fmri_dir, "sub-01", "fmri_test.h5"), "r") as f:
        assert list(f["rois"]) == sorted(hierarchy)  # the file's order
    out = str(tmp_path / "out")
    res = fe.evaluate(eval_things, [_truth(eval_things)], out=out, modality="fmri")
    assert _read_rois(os.path.join(out, "results.csv")) == hierarchy
    with open(os.path.join(out, "stats.json")) as f:
        assert list(dict.fromkeys(t["roi"] for t in json.load(f)["roi_tests"])) == hierarchy
    with open(os.path.join(out, "summary.json")) as f:
        numbers = json.load(f)["models"]["truth"]["fmri"]["none"]["features"]
    assert list(numbers["similarity"]) == hierarchy and list(res.summary["models"]) == ["truth"]
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["rois"] == hierarchy
    # a table in another order (an older results.csv) is drawn in the hierarchy too, unless rois= says
    alphabetical = sorted(res.rows, key=lambda r: r["roi"])
    ticks = [t.get_text() for t in plot_roi_bars(alphabetical).axes[0].get_xticklabels()]
    assert ticks == hierarchy
    mine = plot_roi_bars(alphabetical, rois=["HVC", "V1"]).axes[0].get_xticklabels()
    assert [t.get_text() for t in mine] == ["HVC", "V1"]
    # selected or given from arrays in any order: the hierarchy, other names after it in the given order
    assert fe.load_brain(eval_things, ("fmri",), rois=["HVC", "V1", "LOC"]).rois() == ["V1", "LOC", "HVC"]
    x = np.random.default_rng(0).normal(size=(6, 4))
    given = {"b": x, "FFA": x, "a": x, "V2": x}
    brain = fe.BrainData([f"img{i}" for i in range(6)], fmri={1: given, 2: dict(reversed(given.items()))})
    assert brain.rois() == ["V2", "FFA", "b", "a"] and list(brain.fmri["sub-02"]) == brain.rois()


def test_other_roi_names_follow_rois_else_the_file(eval_things: SyntheticThings, tmp_path) -> None:
    """Names outside the visual hierarchy come after it: in the order rois= gives them, else the file's
    (as docs/evaluation.md says)."""
    root = tmp_path / "custom"
    shutil.copytree(os.path.join(eval_things.root, "image_set"), root / "image_set")
    for s in eval_things.subjects:
        src = load_fmri(os.path.join(eval_things.fmri_dir, f"sub-{s:02d}", "fmri_test.h5"))
        os.makedirs(root / "fmri" / f"sub-{s:02d}")
        with h5py.File(root / "fmri" / f"sub-{s:02d}" / "fmri_test.h5", "w") as f:
            f["responses"] = src.data
            group = f.create_group("rois")  # listed by name: V4, alpha, zeta
            group["zeta"], group["alpha"], group["V4"] = src.rois["V2"], src.rois["V1"], src.rois["V4"]
    assert fe.load_brain(str(root), ("fmri",)).rois() == ["V4", "alpha", "zeta"]
    assert fe.load_brain(str(root), ("fmri",), rois=["zeta", "V4", "alpha"]).rois() == ["V4", "zeta", "alpha"]
    with open(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "docs", "evaluation.md")) as f:
        text = " ".join(f.read().split())
    assert "then any other names in the order `rois=` gives them, else the first subject's file's" in text


def test_nan_in_a_file_without_rois_says_to_define_them(eval_things: SyntheticThings, tmp_path) -> None:
    """A file without ROIs is evaluated whole (ROI 'all'), which cannot be left out and whose voxels
    evaluate cannot be given by load_fmri(rois=): its NaN error says to define the ROIs in the file."""
    root = tmp_path / "whole"
    shutil.copytree(os.path.join(eval_things.root, "image_set"), root / "image_set")
    for s in eval_things.subjects:
        data = load_fmri(os.path.join(eval_things.fmri_dir, f"sub-{s:02d}", "fmri_test.h5")).data.copy()
        data[:, :, 0] = np.nan
        os.makedirs(root / "fmri" / f"sub-{s:02d}")
        with h5py.File(root / "fmri" / f"sub-{s:02d}" / "fmri_test.h5", "w") as f:
            f["responses"] = data
    with pytest.raises(ValueError) as exc:
        fe.load_brain(str(root), ("fmri",))
    message = str(exc.value)
    assert message.startswith("evaluate: subject sub-01: ") and "NaN or inf in ROI 'all': 1 of its" in message
    assert message.endswith(
        "the file defines no ROIs, so every voxel is evaluated (ROI 'all'): define the ROIs to evaluate in "
        "the file (an HDF5 group 'rois' or a dict key 'rois': name -> mask or voxel indices; in BData, ROI_* "
        "metadata keys)"
    )
    assert "leave the ROI out" not in message and "load_fmri(" not in message
