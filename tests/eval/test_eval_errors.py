"""Bad input to fastalign.eval gets a clear error naming what was given and what was expected."""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from eval_helpers import Tiny

import fastalign.eval as fe
from fastalign.data import SyntheticThings

_TIMES = np.linspace(-0.1, 0.3, 6)


def _brain(n_subjects: int = 3, n_images: int = 6, seed: int = 0) -> fe.BrainData:
    rng = np.random.default_rng(seed)
    eeg = {s + 1: rng.normal(size=(n_images, 4, 6)) for s in range(n_subjects)}
    return fe.BrainData([f"img{i}.jpg" for i in range(n_images)], eeg=eeg, times=_TIMES)


def _features(n_images: int = 6, name: str = "m", **kw: Any) -> fe.EvalModel:
    return fe.EvalModel(name, features={"L": np.random.default_rng(1).normal(size=(n_images, 3))}, **kw)


@pytest.mark.parametrize(
    ("models", "kwargs", "exc", "match"),
    [
        ([_features(5)], {}, ValueError, "features must be .* for the data's 6 .* different image sets"),
        ([_features(images=[f"other{i}.jpg" for i in range(6)])], {}, ValueError,
         "has features of another image set than the data's eeg test images"),
        ([_features(subject=4, modality="eeg")], {}, ValueError,
         "aligned to sub-04, who is missing from the data's eeg"),
        ([_features()], {"subjects": [1, 7]}, ValueError,
         r"subject\(s\) \['sub-07'\] missing from the data's eeg"),
        ([_features()], {"layers": ["L"], "modality": "fmri"}, ValueError, "has no responses of modality"),
        ([fe.EvalModel("t", Tiny(), layers=["conv", "V9"])], {}, ValueError,
         "model 't' has no layer 'V9'; layers are conv, relu, pool, fc"),
        ([fe.EvalModel("t", Tiny())], {}, ValueError, "model 't' is a Tiny: name its layers"),
        ([_features(), _features()], {}, ValueError, "models\\[0\\] and models\\[1\\] are both model 'm'"),
        ([_features(name="cornet_s"), _features(name="x", subject=1, modality="eeg"),
          _features(name="x")], {}, ValueError, "models named 'x' must all be aligned"),
        ([_features()], {"baseline": "cornet_s"}, ValueError,
         "baseline='cornet_s' is not an unaligned model"),
        ([_features()], {"weights": "w.pth"}, ValueError, "no model is named 'cornet_s'"),
        (["nowhere"], {}, FileNotFoundError,
         r"models\[0\] = 'nowhere': no such file or folder; expected 'cornet_s', a run folder"),
        ([42], {}, TypeError, r"models\[0\] must be 'cornet_s', a run folder, a ReAlnet weights file or"),
        ("cornet_s", {}, TypeError, "models must be a non-empty list of models"),
        ([_features()], {"modality": "meg"}, ValueError, "modality must be one of"),
        ([_features()], {"modality": []}, ValueError, "modality must name at least one of 'eeg' and 'fmri'"),
        ([_features()], {"rois": []}, ValueError, r"rois must name at least one ROI \(None: all\), got \[\]"),
        ([_features(name="r", subject=3, modality="eeg")], {"subjects": [1, 2]}, ValueError,
         r"model 'r' was aligned to sub-03, whom subjects=\[1, 2\] leaves out of the eeg evaluated"),
        ([_features()], {"rois": ["V1"]}, ValueError,
         r"rois=\['V1'\] picks fMRI ROIs, but modality \['eeg'\] has no fMRI"),
        ([_features()], {"tail": 2}, ValueError, "tail must be 1, -1 or 0"),
        ([_features()], {"permutations": 0}, ValueError, "permutations must be"),
        ([_features()], {"threshold_p": 1.5}, ValueError, "threshold_p must be a probability in"),
        ([_features()], {"rdm_method": "crossnobis"}, ValueError, "rdm_method must be one of"),
        ([_features()], {"time_window": (2.0, 3.0)}, ValueError, "time_window .* holds no EEG sample"),
        ([_features()], {"time_window": (0.2, 0.1)}, ValueError, "time_window must have tmin < tmax"),
        ([_features()], {"time_window": 0.5}, TypeError, "time_window must be \\(tmin, tmax\\)"),
        ([_features()], {"window": 7}, ValueError, r"window \(7\) is longer than the 6 EEG samples"),
        ([_features()], {"behaviour_rdm": np.ones(14)}, ValueError,
         r"behaviour_rdm: .* RDM of the 6 images: .* \(15,\)"),
        ([_features()], {"behaviour_rdm": np.arange(36.0).reshape(6, 6)}, ValueError,
         "behaviour_rdm: .*symmetric"),
        ([_features()], {"behaviour_rdm": {1: np.ones(15)}}, ValueError,
         "behaviour_rdm: the RDM of 1 is constant; compare='spearman' is undefined for it"),
        ([_features()], {"behaviour_rdm": np.zeros(15), "compare": "cosine"}, ValueError,
         "behaviour_rdm: the RDM of 'group' is all zeros; compare='cosine' is undefined for it"),
        ([_features()], {"behaviour_rdm": {"group": np.arange(15.0), 1: np.arange(15.0)[::-1]}}, ValueError,
         r"behaviour_rdm: BrainData: behaviour holds a 'group' RDM and per-subject ones \(\['group', "
         r"'sub-01'\]\)"),
        ([_features()], {"behaviour_rdm": {1: np.arange(15.0), "sub-01": np.arange(15.0)[::-1]}}, ValueError,
         r"behaviour has two entries for sub-01 \(keys 1 and 'sub-01'\); give each subject once"),
        ([_features()], {"behaviour_rdm": {3: np.arange(15.0)}, "subjects": [1, 2]}, ValueError,
         r"the behavioural RDMs are of \['sub-03'\], none of the subjects selected "
         r"\(\['sub-01', 'sub-02'\]\)"),
        ([_features()], {"eps": [0.0]}, ValueError,
         r"eps \(--eps\) set the robustness evaluation, which runs only with "
         r"robustness=IMAGE_FOLDER \(--robustness"),
    ],
)  # fmt: skip
def test_bad_input(models: Any, kwargs: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=f"^evaluate: (.|\n)*{match}"):
        fe.evaluate(_brain(), models, out=None, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"eeg": {1: np.zeros((6, 4, 6)), 2: np.zeros((6, 4, 5))}},
            "every subject's EEG must have one shape",
        ),
        ({"eeg": {1: np.zeros((5, 4, 6))}}, "eeg responses are of 5 images but the image list has 6"),
        ({"eeg": {1: np.zeros((6, 4, 6))}, "times": None}, "EEG needs times"),
        (
            {"eeg": {1: np.zeros((6, 4, 6))}, "times": _TIMES[::-1]},
            "6 increasing sample times, got values that do not increase",
        ),
        ({"eeg": {1: np.full((6, 4, 6), np.nan)}}, r"eeg\[1\] has NaN or inf"),
        (
            {"eeg": {1: np.zeros((6, 4, 6)), "sub-1": np.ones((6, 4, 6))}},
            r"eeg has two entries for sub-01 \(keys 1 and 'sub-1'\)",
        ),
        (
            {"fmri": {"sub-02": {"V1": np.zeros((6, 3))}, 2: {"V1": np.ones((6, 3))}}},
            r"fmri has two entries for sub-02 \(keys 'sub-02' and 2\)",
        ),
        ({"fmri": {1: {"V1": np.zeros((6, 3))}, 2: {"V2": np.zeros((6, 3))}}}, "the same fMRI ROIs"),
        ({"fmri": {1: {"V1": np.zeros((4, 3))}}}, "fmri responses are of 4 images"),
        ({"behaviour": {"group": np.zeros(3)}}, "must be an RDM of the 6 images"),
        # a square RDM with a missing pair: NaN, not an asymmetry
        (
            {
                "behaviour": {
                    "group": np.where(
                        np.eye(6) == 1, 0.0, np.where(np.arange(36).reshape(6, 6) == 1, np.nan, 1.0)
                    )
                }
            },
            r"behaviour\['group'\] has NaN; every pair of images needs a finite dissimilarity",
        ),
    ],
)
def test_bad_brain_data(kwargs: dict, match: str) -> None:
    args = {"times": _TIMES, **kwargs}
    with pytest.raises(ValueError, match=f"^BrainData: .*{match}"):
        fe.BrainData([f"img{i}" for i in range(6)], **args)


def test_bad_subject_names() -> None:
    for bad in ("subject-1", 1.0, None):
        with pytest.raises(TypeError, match="subject must be a subject number or a name like 'sub-01'"):
            fe.EvalModel("m", features={"L": np.zeros((6, 2))}, subject=bad or "x", modality="eeg")
    with pytest.raises(ValueError, match="both a subject and a modality"):
        fe.EvalModel("m", features={"L": np.zeros((6, 2))}, subject=1)
    with pytest.raises(ValueError, match="exactly one of module and features"):
        fe.EvalModel("m")


def test_out_folder_holding_another_evaluation(tmp_path) -> None:
    """Re-running the same evaluation into its folder replaces the tables; another config is refused
    unless overwrite=True; a folder of tables without config.json is never silently replaced."""
    out = tmp_path / "out"
    fe.evaluate(_brain(), [_features()], out=out, permutations=5)
    fe.evaluate(_brain(), [_features()], out=out, permutations=5)
    with pytest.raises(FileExistsError, match="holds an evaluation with another config"):
        fe.evaluate(_brain(), [_features()], out=out, permutations=6)
    # an earlier evaluation's robustness table and the report made from its tables are not left beside
    # the new tables (this one has no robustness; write_report makes a new page)
    (out / "robustness.csv").write_text("model,attack,eps,accuracy,relative_accuracy\nm,fgsm,0,1,1\n")
    (out / "report.html").write_text("<html>the old evaluation</html>")
    # nor are its figures, drawn from its tables; what the user put there stays
    (out / "figures").mkdir()
    for name in ("rsa_time_courses_eeg.png", "rsa_time_courses_eeg.svg", "robustness.png", "mine.png"):
        (out / "figures" / name).write_text("old")
    (out / "notes.txt").write_text("mine")
    fe.evaluate(_brain(), [_features()], out=out, permutations=6, overwrite=True)
    with open(out / "config.json") as f:
        assert json.load(f)["permutations"] == 6
    assert not (out / "robustness.csv").exists() and not (out / "report.html").exists()
    assert os.listdir(out / "figures") == ["mine.png"] and (out / "notes.txt").read_text() == "mine"
    (out / "config.json").unlink()
    with pytest.raises(FileExistsError, match=r"tables without a config\.json"):
        fe.evaluate(_brain(), [_features()], out=out, permutations=6)


def test_an_empty_cache_dir_or_layer_name_is_refused(tmp_path) -> None:
    """cache_dir='' would put the feature cache in the current folder (os.path reads '' so), and an empty
    layer name is no layer: both named."""
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3))
    with pytest.raises(ValueError, match=r"evaluate: cache_dir must name a folder, \"auto\" or None, got ''"):
        fe.evaluate(_brain(), [_features()], out=tmp_path / "out", permutations=5, cache_dir="")
    with pytest.raises(ValueError, match=r"layer_features: cache_dir must name a folder or be None, got ''"):
        fe.layer_features(fe.EvalModel("t", module, layers=["0"]), ["a.png"], image_size=8, cache_dir="",
                          fn="layer_features")  # fmt: skip
    with pytest.raises(ValueError, match=r"EvalModel: layers must be layer names, got an empty name in"):
        fe.EvalModel("t", module, layers=["0", ""])
    assert not os.listdir(tmp_path)


def test_out_folder_tells_evaluations_of_other_arrays_apart(tmp_path) -> None:
    """Features, brain data and behaviour given as arrays have no file to name in config.json: their
    digests do, so other arrays under the same names are another evaluation (refused without overwrite)."""
    out = tmp_path / "out"
    rng = np.random.default_rng(5)
    beh = np.abs(rng.normal(size=15))
    fe.evaluate(_brain(), [_features()], out=out, permutations=5, behaviour_rdm=beh)
    fe.evaluate(_brain(), [_features()], out=out, permutations=5, behaviour_rdm=beh)  # the same: replaced
    other = fe.EvalModel("m", features={"L": rng.normal(size=(6, 3))})
    for args, kwargs in [
        ((_brain(), [other]), {"behaviour_rdm": beh}),
        ((_brain(seed=1), [_features()]), {"behaviour_rdm": beh}),
        ((_brain(), [_features()]), {"behaviour_rdm": beh[::-1].copy()}),
    ]:
        with pytest.raises(FileExistsError, match="holds an evaluation with another config"):
            fe.evaluate(*args, out=out, permutations=5, **kwargs)
    with open(out / "config.json") as f:
        config = json.load(f)
    assert {"data_digest", "behaviour_digest"} <= set(config) and "digest" in config["models"][0]


def test_behaviour_follows_the_subject_selection() -> None:
    """subjects= selects the per-subject behavioural RDMs as it selects the brain data."""
    rng = np.random.default_rng(3)
    beh = {s: np.abs(rng.normal(size=15)) for s in (1, 2, 3)}
    res = fe.evaluate(_brain(), [_features()], out=None, permutations=5, subjects=[1, 2], behaviour_rdm=beh)
    assert res.summary["n_subjects"] == {"eeg": 2, "behaviour": 2}
    assert {r["subject"] for r in res.rows if r["modality"] == "behaviour"} == {"sub-01", "sub-02"}


def test_feature_models_are_checked_before_any_module_runs() -> None:
    """A precomputed-features model of another image count or without a layer is refused before the
    module models' features are computed (minutes at the published size)."""
    ran = []
    tiny = Tiny()
    tiny.register_forward_hook(lambda *_: ran.append(1))
    for bad, match in [(_features(5), "features must be .* for the data's 6"),
                       (_features(layers=["L", "X"]), "has no layer 'X'")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            fe.evaluate(_brain(), [fe.EvalModel("t", tiny, layers=["fc"]), bad], out=None, permutations=5)
    assert ran == []


def test_a_skipped_cluster_test_names_the_time_in_seconds() -> None:
    """A family equal to the baseline has no paired effect: the skip reason gives the time index and its
    time from onset, not only an index that reads like a time."""
    feats = _features().features
    models = [fe.EvalModel("cornet_s", features=feats),
              *(fe.EvalModel("r", features=feats, subject=s, modality="eeg") for s in (1, 2, 3))]  # fmt: skip
    with pytest.warns(
        UserWarning, match=r"'cornet_s', 'r' \(sub-01\), 'r' \(sub-02\), 'r' \(sub-03\) have the"
    ):
        res = fe.evaluate(_brain(), models, out=None, permutations=5)
    reasons = [k["reason"] for k in res.stats["skipped"] if k.get("test") == "vs:cornet_s"]
    assert reasons and all("time index 0 is -0.100 s from image onset" in r for r in reasons), reasons


def test_models_with_the_same_rdms_are_named_in_one_warning_per_group() -> None:
    """Models whose RDMs are equal at every layer (the same weights given twice: a "ReAlnet" that is the
    CORnet-S checkpoint) are named in one warning per group; models that differ in any
    layer are not, and the results are computed as before."""
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    models = [
        fe.EvalModel("cornet_s", features={"L": a, "M": b}),
        fe.EvalModel("r", features={"L": a, "M": b}, subject=1, modality="eeg"),
        fe.EvalModel(
            "r", features={"L": a, "M": b + 1e-3 * rng.normal(size=b.shape)}, subject=2, modality="eeg"
        ),
        fe.EvalModel("s", features={"L": b, "M": a}, subject=1, modality="eeg"),
        fe.EvalModel("t", features={"L": b, "M": a}, subject=2, modality="eeg"),
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = fe.evaluate(_brain(n_subjects=2), models, out=None, permutations=5)
    same = [str(w.message) for w in caught if "have the same RDMs" in str(w.message)]
    tail = (
        " have the same RDMs, bit for bit, at every layer (L, M) on the eeg test images: the same weights "
        "given twice? Their comparisons with one another measure a model against itself (paired tests "
        "between them have no variance and are skipped)"
    )
    assert same == [
        f"evaluate: models 'cornet_s', 'r' (sub-01){tail}",
        f"evaluate: models 's' (sub-01), 't' (sub-02){tail}",
    ]
    assert res.rows


def test_data_folder_errors(eval_things: SyntheticThings, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        fe.evaluate(tmp_path / "missing", ["cornet_s"], out=None)
    # the image_set folder given for the dataset above it: said so, with that folder's path
    image_set = os.path.join(eval_things.root, "image_set")
    want = r"^evaluate: data='.*image_set' is an image_set folder \(it holds image_metadata.npy\); expected "
    with pytest.raises(FileNotFoundError, match=want + "the dataset folder above it, '"):
        fe.evaluate(image_set, ["cornet_s"], out=None)
    with pytest.raises(ValueError, match=r"subject\(s\) \['sub-09'\] missing from the data"):
        fe.load_brain(eval_things, subjects=[1, 9])
    with pytest.raises(ValueError, match="rois names \\['XYZ'\\]"):
        fe.load_brain(eval_things, ("fmri",), rois=["V1", "XYZ"])
    brain = fe.load_brain(eval_things, ("eeg", "fmri"), subjects=["sub-02", 3], rois=["V1", "LOC"])
    assert brain.subjects("eeg") == brain.subjects("fmri") == ["sub-02", "sub-03"]
    assert brain.rois() == ["V1", "LOC"] and brain.eeg["sub-02"].ndim == 3


def test_rois_select_from_brain_data() -> None:
    rng = np.random.default_rng(2)
    fmri = {s: {r: rng.normal(size=(6, 5)) for r in ("V1", "LOC")} for s in (1, 2)}
    brain = fe.BrainData([f"img{i}" for i in range(6)], fmri=fmri)
    res = fe.evaluate(brain, [_features()], out=None, modality="fmri", rois=["LOC"])
    assert {r["roi"] for r in res.rows} == {"LOC"} and len(res.rows) == 2
    with pytest.raises(ValueError, match=r"evaluate: rois names \['X'\], which the data lacks"):
        fe.evaluate(brain, [_features()], out=None, modality="fmri", rois=["X"])


def test_a_time_window_beyond_the_epoch_warns_and_uses_the_samples_within() -> None:
    with pytest.warns(UserWarning, match=r"^evaluate: time_window \[0, 5\] s reaches beyond the EEG samples"):
        res = fe.evaluate(_brain(), [_features()], out=None, time_window=(0.0, 5.0), permutations=10)
    times = sorted({r["time"] for r in res.rows if r["modality"] == "eeg"})
    assert times == pytest.approx([t for t in _TIMES if t >= 0])


def test_layer_features_of_a_model_without_layers_says_so() -> None:
    model = fe.EvalModel("t", Tiny())  # from_run and EvalModel(module=...) leave layers to evaluate
    with pytest.raises(
        ValueError, match=r"^layer_features: model 't' names no layers \(EvalModel.layers is None\)"
    ):
        fe.layer_features(model, ["a.jpg"], image_size=8, fn="layer_features")


def test_fmri_rois_in_another_order_per_subject_are_the_same_rois() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 3)), rng.normal(size=(6, 4))
    brain = fe.BrainData([f"img{i}" for i in range(6)], fmri={1: {"V1": a, "V2": b}, 2: {"V2": b, "V1": a}})
    assert brain.rois() == ["V1", "V2"] and list(brain.fmri["sub-02"]) == ["V1", "V2"]
    with pytest.raises(ValueError, match=r"BrainData: fmri\['sub-02'\] holds no ROI"):
        fe.BrainData([f"img{i}" for i in range(6)], fmri={1: {"V1": a}, "sub-02": {}})


def test_eeg_settings_without_eeg_warn_that_they_change_nothing() -> None:
    rng = np.random.default_rng(0)
    brain = fe.BrainData(
        [f"img{i}" for i in range(6)], fmri={s: {"V1": rng.normal(size=(6, 3))} for s in (1, 2)}
    )
    with pytest.warns(
        UserWarning,
        match=r"^evaluate: window, permutations set the EEG's time course and cluster "
        r"tests, and modality \['fmri'\] has no EEG: they change nothing here",
    ):
        fe.evaluate(brain, [_features()], out=None, modality="fmri", window=3, permutations=50)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fe.evaluate(brain, [_features()], out=None, modality="fmri")


def test_the_parent_of_per_subject_runs_is_named_with_its_runs(tmp_path) -> None:
    for sub in ("sub-01", "sub-02"):
        (tmp_path / "runs" / sub).mkdir(parents=True)
        (tmp_path / "runs" / sub / "config.json").write_text("{}")
    with pytest.raises(
        FileNotFoundError,
        match=r"has no config.json \(from fastalign align\); it holds the run "
        r"folders sub-01, sub-02 of one align call: pass them \(.*runs/sub-\*\)",
    ):
        fe.EvalModel.from_run(tmp_path / "runs")


def test_a_model_built_in_python_is_not_warned_about_its_dataset() -> None:
    # EvalModel(..., subject, modality) without a run folder records no dataset: nothing to check, and no
    # warning that a run's dataset is gone (that is for run folders of older versions)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fe.evaluate(_brain(), [_features(name="r", subject=1, modality="eeg")], out=None, permutations=5)


@pytest.mark.parametrize("method", ["holm", "fdr_bh"])
def test_roi_tests_corrected_over_rois_and_layers(method: str) -> None:
    rng = np.random.default_rng(3)
    shared = rng.normal(size=(6, 5))  # what the images evoke, which the model's layer L holds
    weights = (("V1", 0.2), ("V4", 1.0), ("IT", 3.0))
    fmri = {s: {roi: shared * w + rng.normal(size=(6, 5)) for roi, w in weights} for s in range(1, 6)}
    brain = fe.BrainData([f"img{i}" for i in range(6)], fmri=fmri)
    model = fe.EvalModel("m", features={"L": shared, "M": rng.normal(size=(6, 4))})
    plain = fe.evaluate(brain, [model], out=None, modality="fmri").stats
    res = fe.evaluate(brain, [model], out=None, modality="fmri", roi_correction=method).stats
    assert plain["roi_correction"] == "none" and res["roi_correction"] == method
    tests = res["roi_tests"]
    p = np.array([t["p_uncorrected"] for t in tests])  # one family: model m, fmri, none, vs0 (6 tests)
    np.testing.assert_array_equal(p, [t["p"] for t in plain["roi_tests"]])
    m, order = len(p), np.argsort(p)
    if method == "holm":  # the k-th smallest times (m - k), non-decreasing, at most 1
        want = np.minimum(np.maximum.accumulate(p[order] * (m - np.arange(m))), 1.0)
    else:  # Benjamini-Hochberg: the k-th smallest times m / k, non-increasing from the largest
        want = np.minimum.accumulate((p[order] * m / np.arange(1, m + 1))[::-1])[::-1].clip(max=1.0)
    np.testing.assert_allclose(np.array([t["p"] for t in tests])[order], want, rtol=1e-12)
    assert [t["significant"] for t in tests] == [t["p"] < 0.05 for t in tests]
    assert "uncorrected" not in res["methods"]["fmri"]
    with pytest.raises(ValueError, match="roi_correction must be one of"):
        fe.evaluate(brain, [model], out=None, modality="fmri", roi_correction="bonferroni")


@pytest.mark.parametrize("method", ["holm", "fdr_bh"])
def test_a_roi_test_skipped_for_no_variance_still_counts_in_the_correction(method: str) -> None:
    """An ROI whose similarity is the same for every subject (here: the same responses) has no t-test;
    it still counts in its family's correction as p = 1, so skipping it makes no other test's correction
    milder: the adjusted p-values are those of the full family with a 1 in its place."""
    rng = np.random.default_rng(5)
    shared = rng.normal(size=(6, 5))
    same = shared + rng.normal(size=(6, 5))
    fmri = {s: {"A": shared + rng.normal(size=(6, 5)), "B": same} for s in range(1, 6)}
    brain = fe.BrainData([f"img{i}" for i in range(6)], fmri=fmri)
    model = fe.EvalModel("m", features={"L": shared})
    res = fe.evaluate(brain, [model], out=None, modality="fmri", roi_correction=method).stats
    assert [(t["roi"], t["reason"]) for t in res["skipped"]] == [("B", "no variance across subjects")]
    (test,) = res["roi_tests"]
    p = np.array([test["p_uncorrected"], 1.0])
    if method == "holm":
        want = min(1.0, p.min() * 2)
    else:
        want = float(np.minimum.accumulate((np.sort(p) * 2 / np.arange(1, 3))[::-1])[::-1].clip(max=1.0)[0])
    assert test["p"] == pytest.approx(want, rel=1e-12) and test["p"] > test["p_uncorrected"]


def test_digests_are_made_only_for_an_output_folder(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """Hashing every array given from Python costs 0.2-0.4 s at the benchmark's 44 layers; without a
    folder there is no config.json to tell apart."""
    import fastalign.eval.rsa as ev

    calls = []
    real = ev._digest
    monkeypatch.setattr(ev, "_digest", lambda arrays: calls.append(1) or real(arrays))
    fe.evaluate(_brain(), [_features()], out=None, permutations=5)
    assert calls == []
    fe.evaluate(_brain(), [_features()], out=tmp_path / "out", permutations=5)
    assert len(calls) == 2  # the brain data and the features
