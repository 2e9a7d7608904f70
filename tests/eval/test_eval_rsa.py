"""fastalign.eval.evaluate on the synthetic brain: the ground truth is recovered, clusters sit where the
responses were planted, comparisons, noise ceilings, statistics and the tables follow the contract."""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist
from scipy.stats import spearmanr

import fastalign as fa
import fastalign.eval as fe
from fastalign.data import SyntheticThings


def _subjects(things: SyntheticThings) -> list[str]:
    return [f"sub-{s:02d}" for s in things.subjects]


def _truth(things: SyntheticThings, name: str = "truth") -> fe.EvalModel:
    return fe.EvalModel(name, features={"features": things.ground_truth["test_features"]})


def test_ground_truth_features_recover_expected_rsa(eval_things: SyntheticThings) -> None:
    """The true features as a model against the noise-free responses: over the whole epoch (one window
    of every sample) the similarity is the expected_rsa saved with the data set; per time point it is
    Spearman between the feature RDM and the RDM of the responses at that time."""
    gt = eval_things.ground_truth
    measured = fe.load_brain(eval_things)
    clean = fe.BrainData(
        measured.images, eeg={s: gt[f"evoked_test_{s}"] for s in _subjects(eval_things)}, times=measured.times
    )
    n_times = len(measured.times)
    whole = fe.evaluate(clean, [_truth(eval_things)], out=None, window=n_times)
    assert len(whole.rows) == 5
    for row in whole.rows:
        assert row["similarity"] == pytest.approx(float(gt[f"expected_rsa_{row['subject']}"]), rel=1e-12)
        assert row["time"] == pytest.approx(float(measured.times.mean()))
    # Before onset the noise-free responses are zero (no RDM), and after 0.6 s one source is left: the
    # patterns are copies of one vector up to scale, so the distances are 0 or 2 up to rounding and their
    # ranks are rounding noise. In between the RDMs are well defined.
    per_time = fe.evaluate(clean, [_truth(eval_things)], out=None, time_window=(0.0, 0.6))
    model = pdist(gt["test_features"], "correlation")
    assert len(per_time.rows) == 5 * int(((measured.times >= 0) & (measured.times <= 0.6 + 1e-9)).sum())
    for row in per_time.rows:
        k = int(np.argmin(np.abs(measured.times - row["time"])))
        brain = pdist(gt[f"evoked_test_{row['subject']}"][:, :, k], "correlation")
        assert row["similarity"] == pytest.approx(spearmanr(model, brain).statistic, rel=1e-10)


def test_planted_responses_give_a_cluster_after_onset_only(eval_things: SyntheticThings, tmp_path) -> None:
    """On the recorded (noisy, preprocessed) EEG the true features give one significant cluster where the
    sources were planted (latencies 80-400 ms), none before image onset; 5 subjects: the exact null of
    2^5 flips, so the cluster's p-value is 1/32 (nothing beats the data)."""
    res = fe.evaluate(eval_things, [_truth(eval_things)], out=tmp_path / "out", permutations=10000)
    clusters = [c for c in res.stats["clusters"] if c["test"] == "vs0"]
    significant = [c for c in clusters if c["significant"]]
    assert len(significant) == 1
    (c,) = significant
    assert c["p"] == pytest.approx(1 / 32) and c["exact"] and c["n_subjects"] == 5
    latencies = np.concatenate([eval_things.ground_truth[f"latency_{s}"] for s in _subjects(eval_things)])
    assert 0 < c["t_start"] <= np.median(latencies) <= c["t_stop"] < 0.6
    assert all(x["t_stop"] >= 0 for x in clusters) and not any(
        x["significant"] and x["t_start"] < 0 for x in clusters
    )
    assert res.stats["exact"] and res.stats["permutations"] == 10000
    peak = res.summary["models"]["truth"]["eeg"]["none"]["features"]
    assert 0.08 <= peak["peak_time"] <= 0.45 and peak["peak_similarity"] > 0.3


def _read_csv(path: str) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _same(a: object, b: object) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def _family(things: SyntheticThings, name: str, features, modality: str = "eeg") -> list[fe.EvalModel]:
    return [
        fe.EvalModel(name, features={"IT": f}, subject=s, modality=modality)
        for s, f in zip(_subjects(things), features, strict=True)
    ]


def test_comparisons_paired_tests_and_tables(eval_things: SyntheticThings, tmp_path) -> None:
    """A family aligned to each subject (true features + noise) beats a random baseline significantly at
    the planted latencies; an "unpaired control" family (the features of other images) does not. Rows
    say within / across-subject / across-modality / none, and the files follow the contract."""
    truth = eval_things.ground_truth["test_features"]
    rng = np.random.default_rng(0)
    aligned = [truth + 0.3 * rng.normal(size=truth.shape) for _ in range(5)]
    control = [truth[np.roll(np.arange(12), 1 + k)] + 0.3 * rng.normal(size=truth.shape) for k in range(5)]
    base = fe.EvalModel("base", features={"IT": rng.normal(size=truth.shape)})
    models = [base, *_family(eval_things, "aligned", aligned), *_family(eval_things, "control", control)]
    behaviour = squareform_rdm(truth)
    out = tmp_path / "report"
    res = fe.evaluate(eval_things, models, out=out, modality=("eeg", "fmri"), baseline="base",
                      behaviour_rdm=behaviour)  # fmt: skip

    for row in res.rows:
        want = (
            "none" if row["model"] == "base"
            else "across-modality" if row["modality"] != "eeg"
            else "within" if row["model_subject"] == row["subject"] else "across-subject"
        )  # fmt: skip
        assert row["comparison"] == want
        assert (row["roi"] != "") == (row["modality"] == "fmri")
        assert math.isnan(row["time"]) == (row["modality"] != "eeg")
    n_times, n_rois = len(fe.load_brain(eval_things).times), 8
    # 11 models, 5 brain subjects, per EEG time point and ROI; behaviour: one group RDM
    assert len(res.rows) == 11 * 5 * (n_times + n_rois) + 11
    assert {r["subject"] for r in res.rows if r["modality"] == "behaviour"} == {"group"}

    def significant(model: str, test: str) -> list[dict]:
        return [c for c in res.stats["clusters"] if c["model"] == model and c["test"] == test
                and c["comparison"] == "within" and c["significant"]]  # fmt: skip

    (win,) = significant("aligned", "vs:base")
    assert win["t_start"] <= 0.2 <= win["t_stop"] and win["t_start"] >= 0
    assert significant("control", "vs:base") == []
    gain = res.summary["models"]["aligned"]["eeg"]["within"]["IT"]
    assert gain["mean_gain"] > 0 and gain["max_gain"] > 0.2 and 0.08 <= gain["max_gain_time"] <= 0.45
    assert res.summary["models"]["control"]["eeg"]["within"]["IT"]["mean_gain"] < gain["mean_gain"]

    # across-subject effect of a brain subject: the mean over the other subjects' models
    curve = [r for r in res.rows if r["model"] == "aligned" and r["subject"] == "sub-03" and r["time"] == 0.2]
    mean_across = np.mean([r["similarity"] for r in curve if r["comparison"] == "across-subject"])
    across = [r for r in res.rows if r["model"] == "aligned" and r["comparison"] == "across-subject"
              and r["time"] == 0.2]  # fmt: skip
    assert len(across) == 20 and len(curve) == 5
    assert mean_across == pytest.approx(
        np.mean([r["similarity"] for r in curve if r["model_subject"] != "sub-03"])
    )

    # ROI t-tests per ROI of the fMRI comparisons, with the contract's fields
    roi = [t for t in res.stats["roi_tests"] if t["modality"] == "fmri"]
    assert {t["roi"] for t in roi} == set(fe.load_brain(eval_things, ("fmri",)).rois())
    assert {t["comparison"] for t in roi} == {"none", "across-modality"}
    for t in roi:
        assert {"model", "layer", "roi", "test", "statistic", "p"} <= set(t) and 0 < t["p"] <= 1

    header, rows = _read_csv(os.path.join(out, "results.csv"))
    assert header == list(fe.RESULT_COLUMNS)
    assert len(rows) == len(res.rows)
    for got, want in zip(rows, res.rows, strict=True):
        for k in ("time", "similarity", "noise_lower", "noise_upper"):
            assert _same(float(got[k]), want[k])
        assert all(got[k] == want[k] for k in ("model", "model_subject", "subject", "modality", "comparison",
                                               "layer", "roi"))  # fmt: skip
    with open(os.path.join(out, "stats.json")) as f:
        stats = json.load(f)  # strict JSON: no NaN
    assert {"clusters", "roi_tests", "permutations", "exact", "threshold_p"} <= set(stats)
    for c in stats["clusters"]:
        assert {"model", "layer", "modality", "test", "tail", "t_start", "t_stop", "p", "mass"} <= set(c)
        assert c["t_start"] <= c["t_stop"]
    header, var_rows = _read_csv(os.path.join(out, "variability.csv"))
    assert header == list(fe.VARIABILITY_COLUMNS) and len(var_rows) == 2 * 10  # 2 families x 10 pairs
    with open(os.path.join(out, "summary.json")) as f:
        assert json.load(f)["baseline"] == "base"
    assert os.path.isfile(os.path.join(out, "config.json"))


def squareform_rdm(features: np.ndarray) -> np.ndarray:
    from scipy.spatial.distance import squareform

    return squareform(pdist(features, "correlation"))


def test_noise_ceilings_and_behaviour(eval_things: SyntheticThings) -> None:
    """Each row's noise ceiling is fastalign.noise_ceiling over the subjects' RDMs at its time point /
    ROI; the behavioural RDM is compared like a brain RDM (Spearman with the model RDM)."""
    truth = eval_things.ground_truth["test_features"]
    rng = np.random.default_rng(5)
    behaviour = {f"sub-0{k}": pdist(truth + rng.normal(size=truth.shape), "euclidean") for k in (1, 2, 3)}
    res = fe.evaluate(eval_things, [_truth(eval_things)], out=None, modality=["eeg", "fmri"],
                      behaviour_rdm=behaviour, permutations=50)  # fmt: skip
    brain = fe.load_brain(eval_things, ("eeg", "fmri"))
    eeg = torch.from_numpy(np.stack([brain.eeg[s] for s in _subjects(eval_things)]))
    lower, upper = fa.noise_ceiling(fa.time_resolved_rdms(eeg), "spearman")
    rows = [r for r in res.rows if r["modality"] == "eeg" and r["subject"] == "sub-02"]
    np.testing.assert_allclose([r["noise_lower"] for r in rows], lower.numpy(), rtol=1e-12)
    np.testing.assert_allclose([r["noise_upper"] for r in rows], upper.numpy(), rtol=1e-12)
    for roi in brain.rois():
        rdms = fa.rdm(torch.from_numpy(np.stack([brain.fmri[s][roi] for s in _subjects(eval_things)])))
        lo, up = fa.noise_ceiling(rdms, "spearman")
        (row,) = [r for r in res.rows if r["roi"] == roi and r["subject"] == "sub-01"]
        assert row["noise_lower"] == pytest.approx(float(lo)) and row["noise_upper"] == pytest.approx(
            float(up)
        )
    b_rows = [r for r in res.rows if r["modality"] == "behaviour"]
    assert [r["subject"] for r in b_rows] == ["sub-01", "sub-02", "sub-03"]
    model = pdist(truth, "correlation")
    for r in b_rows:
        assert r["similarity"] == pytest.approx(
            spearmanr(model, behaviour[r["subject"]]).statistic, rel=1e-12
        )
    lo, up = fa.noise_ceiling(torch.from_numpy(np.stack(list(behaviour.values()))), "spearman")
    assert all(r["noise_lower"] == pytest.approx(float(lo)) and r["noise_upper"] == pytest.approx(float(up))
               for r in b_rows)  # fmt: skip
    assert {t["roi"] for t in res.stats["roi_tests"] if t["modality"] == "behaviour"} == {""}
    # one RDM, no ROIs: the summary's behaviour numbers are plain (it keyed them by an empty ROI name)
    (numbers,) = [c for entry in res.summary["models"].values() for c in entry["behaviour"].values()]
    (layer,) = numbers.values()
    assert layer["similarity"] == pytest.approx(np.mean([r["similarity"] for r in b_rows]), rel=1e-12)


def test_exactness_is_recorded(eval_things: SyntheticThings) -> None:
    """5 subjects: 31 non-identity flips; permutations >= 31 enumerate them (exact), fewer draw them."""
    exact = fe.evaluate(eval_things, [_truth(eval_things)], out=None, permutations=31)
    drawn = fe.evaluate(eval_things, [_truth(eval_things)], out=None, permutations=20)
    assert exact.stats["exact"] and not drawn.stats["exact"]
    assert [t["n_flips"] for t in exact.stats["cluster_tests"]] == [31]
    assert [t["n_flips"] for t in drawn.stats["cluster_tests"]] == [20]
    # the smallest p-value each null allows: 1/32 exact (what the planted cluster gets), 1/21 drawn
    assert [(t["min_p"], t["can_reach_alpha"]) for t in exact.stats["cluster_tests"]] == [(1 / 32, True)]
    assert [(t["min_p"], t["can_reach_alpha"]) for t in drawn.stats["cluster_tests"]] == [(1 / 21, True)]
    assert min(c["p"] for c in exact.stats["clusters"]) == 1 / 32
    tight = fe.evaluate(eval_things, [_truth(eval_things)], out=None, permutations=31, alpha=0.01)
    assert [(t["min_p"], t["can_reach_alpha"]) for t in tight.stats["cluster_tests"]] == [(1 / 32, False)]
    assert all(c["exact"] is False for c in drawn.stats["clusters"])


def test_individual_variability(eval_things: SyntheticThings) -> None:
    """Per layer, 1 - Spearman between two subjects' models' RDMs, mean over pairs; rises from V1 to IT
    when the higher layer's models differ more."""
    rng = np.random.default_rng(3)
    base = rng.normal(size=(12, 6))
    models = [
        fe.EvalModel("fam", features={"V1": base + 0.05 * rng.normal(size=base.shape),
                                      "IT": base + 1.0 * rng.normal(size=base.shape)},
                     subject=s, modality="eeg")
        for s in _subjects(eval_things)
    ]  # fmt: skip
    res = fe.evaluate(eval_things, models, out=None, permutations=10)
    assert len(res.variability) == 2 * 10
    for row in res.variability:
        a, b = (next(m for m in models if m.subject == row[k]) for k in ("model_a", "model_b"))
        assert a.features is not None and b.features is not None and row["model"] == "fam"
        rho = spearmanr(
            pdist(a.features[row["layer"]], "correlation"), pdist(b.features[row["layer"]], "correlation")
        )
        assert row["dissimilarity"] == pytest.approx(1 - rho.statistic, rel=1e-12)
    summary = res.summary["variability"]["fam"]
    assert summary["rises_v1_to_it"] and summary["monotonic"] and set(summary["n_pairs"].values()) == {10}
    assert summary["mean"]["V1"] == pytest.approx(np.mean([r["dissimilarity"] for r in res.variability
                                                           if r["layer"] == "V1"]))  # fmt: skip


def test_variability_counts_each_layers_pairs() -> None:
    """Layers can hold different subjects' models: V1 of 4 subjects (6 pairs), IT of 3 (3 pairs); the
    summary counts each layer's pairs, not the last layer's for all."""
    from types import SimpleNamespace

    from fastalign.eval.individual import variability

    slots = [SimpleNamespace(model="fam", subject=f"sub-0{s}", layer="V1") for s in range(1, 5)]
    slots += [SimpleNamespace(model="fam", subject=f"sub-0{s}", layer="IT") for s in range(1, 4)]
    rdms = torch.rand(len(slots), 15, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rows, summary = variability(slots, rdms)
    assert summary["fam"]["n_pairs"] == {"V1": 6, "IT": 3}
    assert len(rows) == 9


def test_summary_peaks_and_gains_are_after_onset() -> None:
    # a model that matches the brain only before onset (noise there, as every baseline period is): its
    # peak and its largest gain over the baseline model are the largest after onset, not before it
    rng = np.random.default_rng(0)
    n_img, n_ch = 12, 6
    times = np.array([-0.2, -0.1, 0.0, 0.1, 0.2])
    pattern = rng.normal(size=(n_img, n_ch))
    eeg = {}
    for s in (1, 2, 3):
        x = rng.normal(size=(n_img, n_ch, times.size)) * 0.3
        x[:, :, 0] += pattern  # the planted match, before onset
        x[:, :, 3] += 0.3 * pattern  # a weaker one after it
        eeg[s] = x
    brain = fe.BrainData(images=[f"i{k}.png" for k in range(n_img)], eeg=eeg, times=times)
    feats = pattern + 0.1 * rng.normal(size=pattern.shape)
    models = [fe.EvalModel("cornet_s", features={"L": rng.normal(size=(n_img, n_ch))}),
              fe.EvalModel("m", features={"L": feats})]  # fmt: skip
    res = fe.evaluate(brain, models, out=None, permutations=100)
    m = res.summary["models"]["m"]["eeg"]["none"]["L"]
    curve = {r["time"]: r["similarity"] for r in res.rows if r["model"] == "m" and r["subject"] == "sub-01"}
    assert max(curve, key=curve.get) == pytest.approx(-0.2)  # the whole curve's maximum is before onset
    assert m["peak_time"] == pytest.approx(0.1) and m["max_gain_time"] >= 0
    mean_after = np.mean([r["similarity"] for r in res.rows if r["model"] == "m" and r["time"] >= 0])
    assert m["mean_similarity"] == pytest.approx(mean_after, rel=1e-12)


def test_config_records_the_data_folder_absolute(
    eval_things: SyntheticThings, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a relative data path in config.json named no folder once the report was moved or read elsewhere
    monkeypatch.chdir(os.path.dirname(eval_things.root))
    out = tmp_path / "out"
    fe.evaluate(os.path.basename(eval_things.root), [_truth(eval_things)], out=out, permutations=10)
    with open(out / "config.json") as f:
        assert json.load(f)["data"] == os.path.abspath(eval_things.root)


def test_each_family_s_variability_is_of_its_own_modality_s_images(eval_things: SyntheticThings) -> None:
    """A family aligned to fMRI is measured on the fMRI test images, one aligned to EEG on the EEG ones,
    whatever the order of ``modality``: the first modality's images were used for every family."""
    import dataclasses

    from eval_helpers import Tiny

    full = fe.load_brain(eval_things, ["eeg", "fmri"])
    k = len(full.images) - 4  # the fMRI set: another image set than the EEG's
    brain = dataclasses.replace(
        full,
        fmri_images=full.images[:k],
        fmri={s: {r: v[:k] for r, v in rois.items()} for s, rois in full.fmri.items()},
    )
    models = [
        *(fe.EvalModel("e", Tiny(i), layers=["conv"], subject=s, modality="eeg")
          for i, s in enumerate(brain.subjects("eeg")[:2])),
        *(fe.EvalModel("f", Tiny(i), layers=["conv"], subject=s, modality="fmri")
          for i, s in enumerate(brain.subjects("fmri")[:2])),
    ]  # fmt: skip

    def variability(modality: list[str]) -> list[tuple]:
        res = fe.evaluate(brain, models, out=None, modality=modality, permutations=10, image_size=24)
        assert {f: v["modality"] for f, v in res.summary["variability"].items()} == {"e": "eeg", "f": "fmri"}
        return sorted(tuple(r[c] for c in fe.VARIABILITY_COLUMNS) for r in res.variability)

    rows = variability(["eeg", "fmri"])
    assert rows == variability(["fmri", "eeg"])
    assert {(r[4], r[5]) for r in rows} == {("e", "eeg"), ("f", "fmri")}
    a, b = (fe.layer_features(fe.EvalModel("t", Tiny(i), layers=["conv"]), brain.images_of("fmri"),
                              image_size=24, batch_size=8, device="cpu")["conv"] for i in (0, 1))  # fmt: skip
    rho = spearmanr(pdist(a.reshape(k, -1), "correlation"), pdist(b.reshape(k, -1), "correlation"))
    assert next(r[3] for r in rows if r[4] == "f") == pytest.approx(1 - rho.statistic, rel=1e-6)
