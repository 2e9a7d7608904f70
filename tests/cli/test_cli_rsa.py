"""``fastalign rsa``: brain RDMs and time-resolved RSA from MNE epochs and .npy arrays, checked against the
library's own functions on the same data, and its refusals (pickles, shapes, missing times)."""

from __future__ import annotations

import csv
import json
import re
import shutil
import warnings
from pathlib import Path

import mne
import numpy as np
import pytest
import torch

import fastalign as fa
from fastalign.cli import main
from fastalign.cli.rsa import brain_rsa

N_COND, N_REP, N_CH, N_T, SFREQ, TMIN = 6, 3, 4, 12, 100.0, -0.02


def _epochs(rng: np.random.Generator, path: Path) -> np.ndarray:
    """An epochs file whose event codes come in a scrambled order; returns its condition means in ascending
    code order."""
    codes = np.array([5, 2, 9, 1, 7, 3])
    order = np.repeat(codes, N_REP)
    data = rng.normal(size=(len(order), N_CH, N_T))
    events = np.column_stack([np.arange(len(order)) * 100, np.zeros(len(order), int), order])
    info = mne.create_info([f"E{i}" for i in range(N_CH)], SFREQ, "eeg")
    epochs = mne.EpochsArray(
        data, info, events=events, tmin=TMIN, event_id={f"c{c}": int(c) for c in codes}, verbose="error"
    )
    epochs.save(path, overwrite=True, verbose="error")
    return np.stack([data[order == c].mean(axis=0) for c in sorted(codes)])


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("rsa_files")
    means = _epochs(rng, folder / "sub01-epo.fif")
    np.save(folder / "means.npy", means)
    np.save(folder / "sub02.npy", rng.normal(size=(N_COND, N_REP, N_CH, N_T)))
    np.save(folder / "model.npy", rng.random(N_COND * (N_COND - 1) // 2))
    np.save(folder / "feats.npy", rng.normal(size=(N_COND, 3, 2)))
    return {p.stem: p for p in folder.iterdir()}


def test_rsa_writes_what_the_library_computes(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rsa"
    argv = ["rsa", "--brain", files["sub01-epo"], files["sub02"], "--sfreq", SFREQ, "--tmin", TMIN]
    argv += ["--model-rdm", files["model"], "--model-features", files["feats"], "--out", out, "--window", 2]
    assert main([str(a) for a in argv]) == 0
    printed = capsys.readouterr().out
    assert "2 brain(s), 6 conditions, 11 windows" in printed and "model" in printed and "feats" in printed
    # the epochs' conditions in ascending event-code order, each the mean of its epochs
    brains = [np.load(files["means"]), np.load(files["sub02"]).mean(axis=1)]
    expected = np.stack(
        [fa.time_resolved_rdms(torch.from_numpy(b), "correlation", 2).numpy() for b in brains]
    )
    # the .fif holds float32 (MNE's default): its RDMs agree to float32 precision
    np.testing.assert_allclose(np.load(out / "brain_rdms.npy"), expected, rtol=1e-6)
    feats = fa.rdm(torch.from_numpy(np.load(files["feats"]).reshape(N_COND, -1))).numpy()
    models = np.stack([np.load(files["model"]), feats])
    np.testing.assert_allclose(np.load(out / "model_rdms.npy"), models, rtol=1e-12)
    rsa = np.load(out / "rsa.npy")
    for b, brain in enumerate(brains):
        direct = fa.time_resolved_rsa(torch.from_numpy(brain), torch.from_numpy(models), window=2).numpy()
        np.testing.assert_allclose(rsa[b], direct, rtol=1e-6, atol=1e-9)
    times = TMIN + np.arange(N_T) / SFREQ
    np.testing.assert_allclose(np.load(out / "times.npy"), (times[:-1] + times[1:]) / 2, atol=1e-12)
    with open(out / "rsa.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 2 * 11 and rows[0]["brain"] == "sub01" and rows[0]["model"] == "model"
    assert float(rows[0]["similarity"]) == pytest.approx(rsa[0, 0, 0], rel=1e-12)
    lower, _ = fa.noise_ceiling(torch.from_numpy(expected))
    assert float(rows[0]["noise_lower"]) == pytest.approx(float(lower[0]), rel=1e-12)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["brains"] == ["sub01", "sub02"] and summary["models"] == ["model", "feats"]
    assert summary["n_conditions"] == N_COND and summary["window"] == 2
    for m, model in enumerate(summary["models"]):  # the peak of the mean over brains, its time as in rsa.csv
        k = int(np.argmax(rsa[:, :, m].mean(axis=0)))
        assert summary["peaks"][model]["peak_similarity"] == pytest.approx(rsa[:, k, m].mean(), rel=1e-12)
        assert summary["peaks"][model]["peak_time"] == float(rows[m * rsa.shape[1] + k]["time"])
    assert (out / "figures" / "rsa.png").stat().st_size > 0 and (out / "noise_ceiling.csv").is_file()


def test_rdms_only_and_the_python_entry_point(files: dict[str, Path]) -> None:
    r = brain_rsa([files["sub01-epo"]], method="euclidean")
    assert r.out is None and r.models == [] and r.similarity.shape == (1, N_T, 0)
    assert r.noise_lower is None and r.rdms.shape == (1, N_T, N_COND * (N_COND - 1) // 2)
    np.testing.assert_allclose(r.times, TMIN + np.arange(N_T) / SFREQ, atol=1e-12)


def test_a_square_model_rdm_is_its_condensed_vector(files: dict[str, Path], tmp_path: Path) -> None:
    vec = np.load(files["model"])
    square = np.zeros((N_COND, N_COND))
    square[np.triu_indices(N_COND, 1)] = vec
    np.save(tmp_path / "square.npy", square + square.T)
    kw = dict(model_rdm=[tmp_path / "square.npy"], sfreq=SFREQ, tmin=TMIN)
    a = brain_rsa([files["sub02"]], **kw).similarity
    b = brain_rsa([files["sub02"]], model_rdm=[files["model"]], sfreq=SFREQ, tmin=TMIN).similarity
    np.testing.assert_array_equal(a, b)


def test_refusals(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "flat.npy", np.zeros((N_COND, N_T)))
    np.save(tmp_path / "fewer.npy", np.zeros((N_COND - 1, N_CH, N_T)))
    np.save(tmp_path / "wrong_rdm.npy", np.zeros(7))
    asym = np.ones((N_COND, N_COND)) - np.eye(N_COND)
    asym[0, 1] = 2.0
    np.save(tmp_path / "asym.npy", asym)
    (tmp_path / "text.txt").write_text("1 2 3")
    np.save(tmp_path / "model.npy", np.zeros((N_COND, 2)))
    cases = [
        (["--brain", tmp_path / "pickled.npy", "--sfreq", 1, "--tmin", 0], "pickled object array"),
        (["--brain", tmp_path / "flat.npy", "--sfreq", 1, "--tmin", 0], "expected real numbers of shape"),
        (["--brain", files["sub02"]], "give sfreq"),
        (["--brain", files["sub01-epo"], tmp_path / "fewer.npy", "--sfreq", SFREQ, "--tmin", TMIN], "same"),
        (["--brain", files["sub01-epo"], "--model-rdm", tmp_path / "wrong_rdm.npy"], "condensed (15,)"),
        (["--brain", files["sub01-epo"], "--model-rdm", tmp_path / "asym.npy"], "symmetric"),
        (["--brain", tmp_path / "text.txt"], "must be MNE epochs (.fif) or a numpy array (.npy)"),
        (["--brain", tmp_path / "missing.fif"], "is not a file"),
        (["--brain", files["sub01-epo"], files["sub01-epo"]], "the name 'sub01'"),
        (
            [
                "--brain",
                files["sub01-epo"],
                "--model-rdm",
                files["model"],
                "--model-features",
                tmp_path / "model.npy",
            ],
            "two model files have the name 'model'",
        ),
    ]
    for argv, message in cases:
        assert main(["rsa", *map(str, argv), "--out", str(tmp_path / "out")]) == 1, message
        err = capsys.readouterr().err
        assert err.startswith("fastalign rsa: error: brain_rsa: ") and message in err, err
        assert len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert main(["rsa", "--brain", str(files["sub01-epo"]), "--out", str(tmp_path / "full")]) == 1
    assert "not empty" in capsys.readouterr().err and (tmp_path / "full" / "x").exists()


def test_overwrite_never_deletes_the_inputs_or_the_working_folder(
    files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    work = tmp_path / "work"  # a folder of data: an unset $OUT (--out "") or --out . named it
    (work / "data").mkdir(parents=True)
    shutil.copy(files["sub02"], work / "data" / "sub02.npy")
    shutil.copy(files["model"], work / "model.npy")
    (work / "thesis.txt").write_text("important")
    before = sorted(p.relative_to(work) for p in work.rglob("*"))
    monkeypatch.chdir(work)
    flags = ["--brain", "data/sub02.npy", "--sfreq", SFREQ, "--tmin", TMIN, "--model-rdm", "model.npy"]
    for out, words in (
        (".", "holds the input 'data/sub02.npy'"),
        ("data", "holds the input 'data/sub02.npy'"),
        (tmp_path, "holds the input 'data/sub02.npy'"),
    ):
        assert main(["rsa", *map(str, flags), "--out", str(out), "--overwrite"]) == 1
        err = capsys.readouterr().err
        assert words in err and len(err.splitlines()) == 1, err
    with pytest.raises(ValueError, match="out must name a folder, got ''"):  # --out '' is a usage error
        brain_rsa(["data/sub02.npy"], "", sfreq=SFREQ, tmin=TMIN, overwrite=True)
    # a folder of other files that the inputs are not in: refused too (it holds no summary.json)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "n.txt").write_text("x")
    assert main(["rsa", *map(str, flags), "--out", str(tmp_path / "notes"), "--overwrite"]) == 1
    assert "holds no summary.json" in capsys.readouterr().err
    assert sorted(p.relative_to(work) for p in work.rglob("*")) == before
    assert (tmp_path / "notes" / "n.txt").read_text() == "x"
    # another command's output (an evaluation report: its summary.json) is not replaced either
    (tmp_path / "report_eval").mkdir()
    (tmp_path / "report_eval" / "summary.json").write_text(
        '{"baseline": "cornet_s", "n_subjects": {}, "models": {}}'
    )
    assert main(["rsa", *map(str, flags), "--out", str(tmp_path / "report_eval"), "--overwrite"]) == 1
    assert "holds another command's output" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "report_eval").iterdir()] == ["summary.json"]
    # an earlier output is replaced; from inside it, it is not
    assert main(["rsa", *map(str, flags), "--out", str(tmp_path / "report")]) == 0
    assert main(["rsa", *map(str, flags), "--out", str(tmp_path / "report"), "--overwrite"]) == 0
    monkeypatch.chdir(tmp_path / "report")
    flags = [str(work / "data" / "sub02.npy") if f == "data/sub02.npy" else f for f in map(str, flags)]
    flags = [str(work / "model.npy") if f == "model.npy" else f for f in flags]
    assert main(["rsa", *flags, "--out", ".", "--overwrite"]) == 1
    assert "is the current folder" in capsys.readouterr().err


def test_sfreq_and_tmin_that_contradict_an_epochs_file_warn(files: dict[str, Path]) -> None:
    fif = [files["sub01-epo"]]
    only = r"--sfreq/--tmin \(50.0, 5.0\) apply to the .npy brains only"
    with pytest.warns(UserWarning, match=rf"{only}; .* \({SFREQ:g} Hz from"):
        r = brain_rsa(fif, sfreq=50.0, tmin=5.0)
    np.testing.assert_allclose(r.times, TMIN + np.arange(N_T) / SFREQ, atol=1e-12)  # the file's own
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the file's own values say nothing new: no warning
        brain_rsa(fif, sfreq=SFREQ, tmin=TMIN)


def test_bad_arguments_of_the_python_entry_point(files: dict[str, Path]) -> None:
    brain = [files["sub01-epo"]]
    cases = [
        ({"brain": str(brain[0])}, TypeError, "brain must be a list of files"),
        ({"brain": []}, ValueError, "brain must list at least one file"),
        ({"brain": brain, "method": "crossnobis"}, ValueError, "method must be one of"),
        ({"brain": brain, "compare": "corr"}, ValueError, "compare must be one of"),
        ({"brain": brain, "window": 0}, ValueError, "window must be an int >= 1"),
        ({"brain": brain, "sfreq": -1.0}, ValueError, "sfreq must be None or a finite number > 0"),
        ({"brain": brain, "tmin": float("nan")}, ValueError, "tmin must be None or a finite number"),
    ]
    for kwargs, kind, message in cases:
        with pytest.raises(kind, match=f"^brain_rsa: {re.escape(message)}"):
            brain_rsa(**kwargs)


def test_epochs_files_must_name_the_same_conditions(files: dict[str, Path], tmp_path: Path) -> None:
    # a second recording whose event code 9 is 10: its conditions in ascending code order are the same
    # count at the same times, but not the same conditions; they were compared position by position
    epochs = mne.read_epochs(files["sub01-epo"], verbose="error")
    events = epochs.events.copy()
    events[events[:, 2] == 9, 2] = 10
    renamed = mne.EpochsArray(
        epochs.get_data(), epochs.info, events=events, tmin=TMIN,
        event_id={f"c{c}": int(c) for c in (1, 2, 3, 5, 7, 10)}, verbose="error",
    )  # fmt: skip
    renamed.save(tmp_path / "sub03-epo.fif", verbose="error")
    codes = r"sub03-epo\.fif' has event codes \[7, 10\]\.\.\. where .*sub01-epo\.fif' has \[7, 9\]\.\.\. "
    with pytest.raises(ValueError, match=codes + r"\(condition 5 in ascending code order\)"):
        brain_rsa([files["sub01-epo"], tmp_path / "sub03-epo.fif"])
    out = tmp_path / "out"
    brain_rsa([files["sub01-epo"], files["sub02"]], out, sfreq=SFREQ, tmin=TMIN)  # an array names none
    assert json.loads((out / "summary.json").read_text())["event_codes"] == [1, 2, 3, 5, 7, 9]


def test_a_square_rdm_from_numpy_and_bad_values_are_named_by_file(
    files: dict[str, Path], tmp_path: Path
) -> None:
    feats = np.load(files["feats"]).reshape(N_COND, -1)
    corr = 1 - np.corrcoef(feats)
    corr[np.diag_indices(N_COND)] = 2.220446049250313e-16  # what 1 - corrcoef often leaves there
    np.save(tmp_path / "corr.npy", corr)
    got = brain_rsa([files["sub01-epo"]], model_rdm=[tmp_path / "corr.npy"]).model_rdms[0]
    np.testing.assert_array_equal(got, corr[np.triu_indices(N_COND, 1)])
    nan = np.load(files["sub02"])
    nan[1, 0, 2, 3] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    constant = feats.copy()
    constant[2] = 1.0
    np.save(tmp_path / "constant.npy", constant)
    np.save(tmp_path / "two.npy", np.zeros((2, N_CH, N_T)))
    timed = dict(sfreq=SFREQ, tmin=TMIN)
    cases = [
        (dict(brain=[tmp_path / "nan.npy"], **timed),
         r"brain file '.*nan\.npy' holds NaN or inf \(first at index \[1, 0, 2, 3\]\)"),
        (dict(brain=[tmp_path / "two.npy"], **timed),
         r"brain file '.*two\.npy' holds 2 condition\(s\); an RDM needs at least 3"),
        (dict(brain=[files["sub01-epo"]], model_features=[tmp_path / "constant.npy"]),
         r"model_features file '.*constant\.npy': rdm: x has a constant pattern at index \(2,\)"),
    ]  # fmt: skip
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=r"^brain_rsa: " + match):
            brain_rsa(**kwargs)


def test_brains_at_other_sample_times_are_refused_with_both_times(files: dict[str, Path]) -> None:
    """An epochs file and a .npy brain whose times differ only in their start (--tmin): the message says
    where each starts, not only that they differ."""
    step = f"every {1 / SFREQ:g} s"
    want = rf"{N_T} samples from 0 s {step}, .*sub01-epo.* {N_T} samples from {TMIN:g} s"
    with pytest.raises(ValueError, match=want):
        brain_rsa([files["sub01-epo"], files["sub02"]], sfreq=SFREQ, tmin=0.0)
