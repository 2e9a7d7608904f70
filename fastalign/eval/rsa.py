"""Model-brain RSA of ReAlnet-style models: over time (EEG), per ROI (fMRI) and against behaviour, within
and across subjects and modalities, with cluster statistics, noise ceilings and individual variability.

:func:`evaluate` is the one entry point (``fastalign evaluate`` calls it). What it computes, for every
model, layer, subject and modality:

- model RDMs of the test images per layer (``rdm_method``, 1 - Pearson by default);
- EEG: each subject's RDM at each time point (or window) of the repetition-averaged test EEG, compared
  with each model RDM (``compare``, Spearman by default; with two or more subjects each brain RDM is
  ranked once for the similarities and the noise ceiling, else the fused
  :func:`fastalign.time_resolved_rsa`);
  fMRI: each subject's RDM per ROI; behaviour: the given RDM(s), compared like a brain RDM;
- comparisons: "within" (the model aligned to subject s against s's brain), "across-subject" (against
  every other subject's brain), "across-modality" (EEG-aligned models against fMRI or behaviour, and the
  reverse), "none" (unaligned models such as CORnet-S);
- statistics (stats.json): per model, layer and comparison, the effect of each brain subject (the mean
  over the family's models in that comparison) is tested against 0 ("vs0") and against the baseline
  model ("vs:cornet_s", paired by brain subject): over time with the cluster-based sign-flip
  permutation test (:func:`fastalign.cluster_permutation_test`, exact when the 2^n flips fit in
  ``permutations``), per ROI and for behaviour with a one-sample t-test;
- the noise ceiling per time point and ROI (:func:`fastalign.noise_ceiling` over the subjects' RDMs);
- individual variability (variability.csv): 1 - Spearman between the RDMs of one family's models of
  different subjects, per layer, on the test images of the modality the family was aligned to (the
  first modality for unaligned families; the ``modality`` column).

The tables follow the contract in docs/evaluation.md.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import hashlib
import itertools
import json
import math
import os
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fastalign import _checks
from fastalign.data import SyntheticThings, model_key
from fastalign.data._io import atomic_write, digest_files
from fastalign.data.embeddings import model_keys_cached
from fastalign.eval import attacks as _attacks
from fastalign.eval import individual as _variability
from fastalign.eval.brain import BrainData, eeg_tensor, fmri_rdms, load_brain
from fastalign.eval.features import (
    EvalModel,
    as_models,
    check_image_set,
    check_image_size,
    given_features,
    layer_features,
    on_device,
    subject_name,
)
from fastalign.eval.progress import Stage
from fastalign.eval.report import write_json
from fastalign.rsa import (
    cluster_permutation_test,
    compare_rdms,
    noise_ceiling,
    rdm,
    time_resolved_rdms,
    time_resolved_rsa,
)
from fastalign.rsa.stats import time_resolved_spearman_and_noise_ceiling

__all__ = ["RESULT_COLUMNS", "VARIABILITY_COLUMNS", "EvalResult", "evaluate", "write_csv"]

_FN = "evaluate"
#: results.csv's columns, in order.
RESULT_COLUMNS = (
    "model", "model_subject", "subject", "modality", "comparison", "layer", "time", "roi", "similarity",
    "noise_lower", "noise_upper",
)  # fmt: skip
#: variability.csv's columns, in order.
VARIABILITY_COLUMNS = ("layer", "model_a", "model_b", "dissimilarity", "model", "modality")
_FILES = ("results.csv", "stats.json", "summary.json", "variability.csv", "robustness.csv", "config.json")
_COMPARISONS = ("within", "across-subject", "across-modality", "none")
_RDM_METHODS = ("correlation", "cosine", "euclidean")  # crossnobis needs folds and a noise model
_COMPARE_METHODS = ("spearman", "pearson", "kendall_tau_a", "rho_a", "cosine")
_TIME_DECIMALS = 9  # times in the tables to the nanosecond: 0.06 rather than 0.060000000000000026


@dataclass
class EvalResult:
    """What :func:`evaluate` computed (and wrote to ``out``).

    Attributes:
        rows: results.csv as dicts with the keys of :data:`RESULT_COLUMNS`.
        stats: stats.json (clusters, ROI tests, the tests run and those skipped).
        summary: summary.json (peak similarity and latency, gains over the baseline, variability).
        variability: variability.csv as dicts with the keys of :data:`VARIABILITY_COLUMNS`.
        out: The folder written, or None.
        robustness: robustness.csv as dicts with the keys of
            :data:`~fastalign.eval.attacks.ROBUSTNESS_COLUMNS` (empty unless asked for).
    """

    rows: list[dict[str, Any]]
    stats: dict[str, Any]
    summary: dict[str, Any]
    variability: list[dict[str, Any]]
    out: str | None = None
    robustness: list[dict[str, Any]] = field(default_factory=list)

    def select(self, **where: Any) -> list[dict[str, Any]]:
        """The rows whose columns equal the given values, e.g. ``select(model="cornet_s", layer="IT")``."""
        unknown = [k for k in where if k not in RESULT_COLUMNS]
        if unknown:
            raise ValueError(f"EvalResult.select: unknown column(s) {unknown}; columns are {RESULT_COLUMNS}")
        return [r for r in self.rows if all(r[k] == v for k, v in where.items())]

    def write(self, out: str | os.PathLike[str]) -> None:
        """Writes results.csv, stats.json, summary.json, variability.csv and (when computed)
        robustness.csv into ``out``. What an earlier evaluation left there that this one does not
        replace is removed: its robustness.csv, its report.html and its figures (made from the earlier
        tables; :func:`fastalign.plotting.evaluation_figures` and
        :func:`fastalign.eval.report.write_report` make new ones); other files stay."""
        folder = os.fspath(out)
        os.makedirs(folder, exist_ok=True)
        write_csv(os.path.join(folder, "results.csv"), self.rows, RESULT_COLUMNS)
        write_csv(os.path.join(folder, "variability.csv"), self.variability, VARIABILITY_COLUMNS)
        if self.robustness:
            write_csv(os.path.join(folder, "robustness.csv"), self.robustness, _attacks.ROBUSTNESS_COLUMNS)
        for stale in ([] if self.robustness else ["robustness.csv"]) + ["report.html"]:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(folder, stale))
        # the earlier report's figures, drawn from the earlier tables (files of other names stay)
        figures = os.path.join(folder, "figures")
        if os.path.isdir(figures):
            for name in os.listdir(figures):
                if _REPORT_FIGURE.fullmatch(name):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(os.path.join(figures, name))
            with contextlib.suppress(OSError):
                os.rmdir(figures)  # only where nothing else is left in it
        for name, obj in (("stats.json", self.stats), ("summary.json", self.summary)):
            write_json(os.path.join(folder, name), obj, fn="EvalResult.write", what=name)
        self.out = os.path.abspath(folder)


def write_csv(path: str | os.PathLike[str], rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """Rows as CSV with a header, atomically; floats in full precision, NaN as "nan"."""

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="raise")
            w.writeheader()
            w.writerows(rows)

    atomic_write(path, write)


#: The figures an evaluation's report holds (fastalign.plotting.evaluation_figures, saved by
#: fastalign.eval.report.write_report as figures/<name>.png and .svg).
_REPORT_FIGURE = re.compile(
    r"(?:(?:rsa_time_courses|roi_bars)_(?:eeg|fmri|behaviour)(?:_across_modality)?"
    r"|across_subject_(?:eeg|fmri|behaviour)|variability|robustness)\.(?:png|svg)"
)
#: What a report folder of ``fastalign evaluate`` holds: its tables, config, report page, figures and cache.
_REPORT_ENTRIES = ("results.csv", "stats.json", "summary.json", "variability.csv", "robustness.csv",
                   "config.json", "report.html", "figures", "cache")  # fmt: skip


def report_file(path: str) -> bool:
    """Whether a file of a report folder (a '/'-separated relative path) is one evaluate writes: its
    tables, config and report page, its figures in ``figures/``, anything in its ``cache/``."""
    top, _, rest = path.partition("/")
    if not rest:
        return top in _REPORT_ENTRIES and top not in ("figures", "cache")
    if top == "figures":
        return _REPORT_FIGURE.fullmatch(rest) is not None
    return top == "cache"


# ------------------------------------------------------------------------------------------------ slots


@dataclass(frozen=True)
class _Slot:
    """One model RDM: a family's member (its subject, "" if unaligned) at one layer."""

    model: str
    subject: str
    modality: str
    layer: str

    def comparison(self, modality: str, subject: str) -> str:
        if not self.subject:
            return "none"
        if self.modality != modality:
            return "across-modality"
        return "within" if self.subject == subject else "across-subject"


@dataclass
class _Modality:
    """One modality's similarities: (n_subjects, n_points, n_slots), with the points' times or ROIs."""

    name: str
    subjects: list[str]
    sims: np.ndarray
    times: list[float]
    rois: list[str]
    lower: np.ndarray
    upper: np.ndarray


def _model_rdms(
    models: list[EvalModel],
    images: list[str],
    what: str,
    *,
    rdm_method: str,
    done: dict[tuple[int, tuple[str, ...]], dict[str, torch.Tensor]],
    extract: Any,
) -> tuple[list[_Slot], torch.Tensor]:
    """Each model's layer RDMs of ``images``: the slots and (n_slots, n_pairs) float64 RDMs.

    ``done`` keeps each model's RDMs per image set, so modalities of the same images share them; the
    features (hundreds of MB per model at 224 px) are dropped as soon as their RDMs exist.
    """
    slots, rdms = [], []
    fresh = any((i, tuple(images)) not in done for i in range(len(models)))
    for i, m in enumerate(models):
        key = (i, tuple(images))
        if key not in done:
            done[key] = {}
            for layer, feats in extract(m, images, what).items():
                x = torch.from_numpy(np.ascontiguousarray(feats))
                try:
                    done[key][layer] = rdm(x if x.dtype == torch.float32 else x.double(), rdm_method).double()
                except ValueError as exc:
                    raise ValueError(f"{_FN}: the RDM of model {m.name!r} layer {layer!r}: {exc}") from exc
        for layer, r in done[key].items():
            rdms.append(r)
            slots.append(_Slot(m.name, m.subject, m.modality, layer))
    if fresh:  # once per image set: modalities of the same images share the RDMs
        _warn_identical(models, [done[i, tuple(images)] for i in range(len(models))], what)
    return slots, torch.stack(rdms)


def _warn_identical(models: list[EvalModel], rdms: list[dict[str, torch.Tensor]], what: str) -> None:
    """Warns once per group of models whose RDMs are equal at every layer, bit for bit, on the images
    ``what`` names: the same weights given twice (a "ReAlnet" file that is the CORnet-S checkpoint, one
    subject's model given for all), whose comparisons with one another measure a model against itself."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, layers in enumerate(rdms):
        h = hashlib.sha256()
        for r in layers.values():
            h.update(r.contiguous().numpy().tobytes())
        groups.setdefault((tuple(layers), h.hexdigest()), []).append(i)
    for (layers, _), members in groups.items():
        if len(members) < 2:
            continue
        names = [
            f"{models[i].name!r}" + (f" ({models[i].subject})" if models[i].subject else "") for i in members
        ]
        warnings.warn(
            f"{_FN}: models {', '.join(names)} have the same RDMs, bit for bit, at every layer "
            f"({', '.join(layers)}) on the {what} images: the same weights given twice? Their comparisons "
            "with one another measure a model against itself (paired tests between them have no variance "
            "and are skipped)",
            UserWarning,
            stacklevel=4,
        )


def _nan_ceiling(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full(n, np.nan), np.full(n, np.nan)


def _ceiling(rdms: torch.Tensor, compare: str) -> tuple[np.ndarray, np.ndarray]:
    """Noise ceiling over dim 0 (subjects); NaN with fewer than 2 subjects."""
    if rdms.shape[0] < 2:
        return _nan_ceiling(int(np.prod(rdms.shape[1:-1])))
    lower, upper = noise_ceiling(rdms, compare)
    return lower.reshape(-1).numpy(), upper.reshape(-1).numpy()


def _check_time_window(time_window: Any) -> list[float] | None:
    if time_window is None:
        return None
    if (
        isinstance(time_window, (str, bytes))
        or not isinstance(time_window, Sequence)
        or len(time_window) != 2
    ):
        raise TypeError(_checks.message(_FN, "time_window", "(tmin, tmax) in seconds or None", time_window))
    tmin = _checks.check_real(_FN, "time_window[0]", time_window[0])
    tmax = _checks.check_real(_FN, "time_window[1]", time_window[1])
    if not tmin < tmax:
        raise ValueError(f"{_FN}: time_window must have tmin < tmax, got ({tmin}, {tmax})")
    return [tmin, tmax]


def _time_index(times: np.ndarray, time_window: list[float] | None) -> np.ndarray:
    if time_window is None:
        return np.arange(len(times))
    tmin, tmax = time_window
    idx = np.flatnonzero((times >= tmin - 1e-9) & (times <= tmax + 1e-9))
    if idx.size == 0:
        raise ValueError(
            f"{_FN}: time_window [{tmin}, {tmax}] s holds no EEG sample (times {times[0]:.3f} to "
            f"{times[-1]:.3f} s)"
        )
    _checks.warn_if_window_clipped(_FN, "time_window", tmin, tmax, times, "EEG")
    return idx


def _eeg(brain: BrainData, rdms: torch.Tensor, s: dict[str, Any]) -> _Modality:
    subjects = brain.subjects("eeg")
    assert brain.times is not None
    idx = _time_index(brain.times, s["time_window"])
    data = eeg_tensor(brain, subjects, idx)
    window, step = s["window"], s["step"]
    if window > len(idx):
        raise ValueError(f"{_FN}: window ({window}) is longer than the {len(idx)} EEG samples evaluated")
    try:
        if s["compare"] == "spearman" and len(subjects) >= 2:
            # the default: each brain RDM computed and ranked once for the similarities and the ceiling
            sims, lower_t, upper_t = time_resolved_spearman_and_noise_ceiling(
                data, rdms, s["rdm_method"], window, step
            )
            lower, upper = lower_t.reshape(-1).numpy(), upper_t.reshape(-1).numpy()
        else:
            sims = time_resolved_rsa(
                data, rdms, s["compare"], rdm_method=s["rdm_method"], window=window, step=step
            )
            lower, upper = _ceiling(time_resolved_rdms(data, s["rdm_method"], window, step), s["compare"])
    except ValueError as exc:
        raise ValueError(f"{_FN}: the EEG RSA of subjects {subjects}: {exc}") from exc
    t = brain.times[idx]
    times = [
        round(float(t[k : k + window].mean()), _TIME_DECIMALS) for k in range(0, len(t) - window + 1, step)
    ]
    return _Modality("eeg", subjects, sims.numpy(), times, [""] * len(times), lower, upper)


def _fmri(brain: BrainData, rdms: torch.Tensor, s: dict[str, Any]) -> _Modality:
    subjects = brain.subjects("fmri")
    brain_rdms = fmri_rdms(brain, subjects, s["rdm_method"])  # (S, R, K)
    sims = compare_rdms(brain_rdms[:, :, None, :], rdms[None, None], s["compare"])
    lower, upper = _ceiling(brain_rdms, s["compare"])
    rois = brain.rois()
    return _Modality("fmri", subjects, sims.numpy(), [math.nan] * len(rois), rois, lower, upper)


def _behaviour(brain: BrainData, rdms: torch.Tensor, s: dict[str, Any]) -> _Modality:
    subjects = brain.subjects("behaviour")
    b = torch.from_numpy(np.stack([brain.behaviour[k] for k in subjects]))
    try:
        sims = compare_rdms(b[:, None, None, :], rdms[None, None], s["compare"])
    except ValueError as exc:
        raise ValueError(f"{_FN}: behaviour_rdm: {exc}") from exc
    lower, upper = _ceiling(b[:, None, :], s["compare"])
    return _Modality("behaviour", subjects, sims.numpy(), [math.nan], [""], lower, upper)


def _rows(mod: _Modality, slots: list[_Slot]) -> list[dict[str, Any]]:
    # Python floats read once through tolist(): indexing numpy per row cost 3 us a value (44,000 rows of
    # the benchmark's evaluation: 128 -> 35 ms)
    sims = mod.sims.transpose(2, 0, 1).tolist()  # [slot][subject][point]
    points = list(zip(mod.times, mod.rois, np.asarray(mod.lower).tolist(), np.asarray(mod.upper).tolist(),
                      strict=True))  # fmt: skip
    rows = []
    for k, slot in enumerate(slots):
        for i, subject in enumerate(mod.subjects):
            comparison = slot.comparison(mod.name, subject)
            for sim, (time, roi, lower, upper) in zip(sims[k][i], points, strict=True):
                rows.append({
                    "model": slot.model, "model_subject": slot.subject, "subject": subject,
                    "modality": mod.name, "comparison": comparison, "layer": slot.layer, "time": time,
                    "roi": roi, "similarity": sim, "noise_lower": lower, "noise_upper": upper,
                })  # fmt: skip
    return rows


# ------------------------------------------------------------------------------------------------ stats


def _effect(
    mod: _Modality, slots: list[_Slot], model: str, layer: str, comparison: str
) -> dict[str, np.ndarray]:
    """Brain subject -> (n_points,) mean similarity of the family's models in that comparison."""
    out = {}
    for i, subject in enumerate(mod.subjects):
        ks = [
            k for k, sl in enumerate(slots)
            if sl.model == model and sl.layer == layer and sl.comparison(mod.name, subject) == comparison
        ]  # fmt: skip
        if ks:
            out[subject] = mod.sims[i][:, ks].mean(axis=1)
    return out


def _test_name(baseline: str | None) -> str:
    return "vs0" if baseline is None else f"vs:{baseline}"


def _cluster_tests(
    mod: _Modality, x: np.ndarray, key: dict[str, Any], s: dict[str, Any], stats: dict[str, Any]
) -> None:
    """Cluster test of (n_subjects, n_times) effects: its record, clusters and why it was skipped."""
    from scipy.stats import t as student_t

    n = x.shape[0]
    if n < 2:
        stats["skipped"].append({**key, "reason": f"needs at least 2 subjects, has {n}"})
        return
    tail = s["tail"]
    threshold = float(student_t.ppf(1 - s["threshold_p"] / (2 if tail == 0 else 1), n - 1))
    try:
        res = cluster_permutation_test(
            torch.from_numpy(x),
            threshold=threshold,
            n_permutations=s["permutations"],
            tail=tail,
            seed=s["seed"],
        )
    except ValueError as exc:
        reason = str(exc)
        at = re.search(r"at time index (\d+)", reason)
        if at is not None and int(at.group(1)) < len(
            mod.times
        ):  # the index in seconds, as the tables give time
            reason += f" (time index {at.group(1)} is {mod.times[int(at.group(1))]:+.3f} s from image onset)"
        stats["skipped"].append({**key, "reason": reason})
        return
    # the identity counts once: no cluster can have a p-value below 1 / (1 + flips), e.g. 1/4 with 2
    # subjects (1/2 two-sided), so a test with min_p >= alpha cannot find anything significant
    min_p = 1.0 / (1 + len(res.null))
    stats["cluster_tests"].append({
        **key, "n_subjects": n, "threshold_t": threshold, "exact": res.exact, "n_flips": len(res.null),
        "min_p": min_p, "can_reach_alpha": min_p < s["alpha"],
    })  # fmt: skip
    for c, mass, p in zip(res.clusters, res.masses.tolist(), res.pvalues.tolist(), strict=True):
        stats["clusters"].append({
            **key, "tail": tail, "t_start": mod.times[c.start], "t_stop": mod.times[c.stop - 1], "p": p,
            "mass": mass, "significant": p < s["alpha"], "exact": res.exact, "n_subjects": n,
        })  # fmt: skip


def _point_tests(
    mod: _Modality, x: np.ndarray, key: dict[str, Any], s: dict[str, Any], stats: dict[str, Any]
) -> None:
    """One-sample t-test per ROI (or of the behavioural similarity) across subjects."""
    from scipy.stats import ttest_1samp

    n = x.shape[0]
    alternative = {1: "greater", -1: "less", 0: "two-sided"}[s["tail"]]
    for p, roi in enumerate(mod.rois):
        entry = {**key, "roi": roi}
        if n < 2 or np.ptp(x[:, p]) == 0:
            reason = f"needs at least 2 subjects, has {n}" if n < 2 else "no variance across subjects"
            stats["skipped"].append({**entry, "reason": reason})
            continue
        res = ttest_1samp(x[:, p], 0.0, alternative=alternative)
        stats["roi_tests"].append({
            **entry, "statistic": float(res.statistic), "p": float(res.pvalue), "df": n - 1,
            "tail": s["tail"], "significant": float(res.pvalue) < s["alpha"], "n_subjects": n,
        })  # fmt: skip


def _tests(
    mod: _Modality, slots: list[_Slot], key: dict[str, str], x: dict[str, np.ndarray], baseline: str | None,
    s: dict[str, Any], stats: dict[str, Any],
) -> dict[str, np.ndarray] | None:  # fmt: skip
    """Runs the tests of one effect (vs 0, and paired vs the baseline); returns the baseline's effect."""
    run = _cluster_tests if mod.name == "eeg" else _point_tests
    run(mod, np.stack(list(x.values())), {**key, "test": _test_name(None)}, s, stats)
    if baseline is None:
        return None
    base = _effect(mod, slots, baseline, key["layer"], "none")
    paired = {k: x[k] - base[k] for k in x if k in base}
    if not paired:
        reason = f"{baseline} has no layer {key['layer']!r}" if not base else "no subject in common"
        stats["skipped"].append({**key, "test": _test_name(baseline), "reason": reason})
        return None
    run(mod, np.stack(list(paired.values())), {**key, "test": _test_name(baseline)}, s, stats)
    return base


def _statistics(
    mods: list[_Modality], slots: dict[str, list[_Slot]], families: list[str], baseline: str | None,
    s: dict[str, Any],
) -> tuple[dict[str, Any], dict[tuple[str, str, str, str], dict[str, Any]]]:  # fmt: skip
    """stats.json, and per (model, modality, comparison, layer) the effects that the summary reports."""
    stats: dict[str, Any] = {
        "clusters": [],
        "roi_tests": [],
        "cluster_tests": [],
        "skipped": [],
        "permutations": s["permutations"],
        "exact": False,
        "compare": s["compare"],
        "threshold_p": s["threshold_p"],
        "alpha": s["alpha"],
        "tail": s["tail"],
        "baseline": baseline,
        "methods": {
            "eeg": "cluster sign-flip permutation test over time",
            "fmri": f"one-sample t-test per ROI and layer, {_CORRECTIONS[s['roi_correction']]}",
            "behaviour": f"one-sample t-test per layer, {_CORRECTIONS[s['roi_correction']]}",
        },
        # "none": the ROI tests' p-values are each test's own, not corrected over ROIs and layers (the
        # EEG clusters' are corrected over time by the permutation test's maximum statistic)
        "roi_correction": s["roi_correction"],
    }
    todo = []
    for mod in mods:
        sl = slots[mod.name]
        for model in families:
            layers = list(dict.fromkeys(x.layer for x in sl if x.model == model))
            for comparison, layer in itertools.product(_COMPARISONS, layers):
                x = _effect(mod, sl, model, layer, comparison)
                if x:
                    todo.append((mod, {"model": model, "layer": layer, "modality": mod.name,
                                       "comparison": comparison}, x))  # fmt: skip
    effects: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    with Stage(s["progress"], "statistics", len(todo), "effects") as stage:
        for mod, key, x in todo:
            model = key["model"]
            base = _tests(mod, slots[mod.name], key, x, baseline if model != baseline else None, s, stats)
            effects[model, mod.name, key["comparison"], key["layer"]] = {"x": x, "base": base}
            stage.update()
    stats["exact"] = bool(stats["cluster_tests"]) and all(t["exact"] for t in stats["cluster_tests"])
    _correct_roi_tests(stats["roi_tests"], s["roi_correction"], s["alpha"], stats["skipped"])
    return stats, effects


#: ROI test corrections: over the ROIs and layers of one model, modality, comparison and test.
_CORRECTIONS = {
    "none": "uncorrected",
    "holm": "Holm-corrected over ROIs and layers",
    "fdr_bh": "Benjamini-Hochberg FDR over ROIs and layers",
}


def _correct_roi_tests(
    tests: list[dict[str, Any]],
    method: str,
    alpha: float,
    skipped: list[dict[str, Any]] = (),  # type: ignore[assignment]
) -> None:
    """Adjusts the ROI tests' p-values in place (``p``; the test's own in ``p_uncorrected``) within each
    family of one model, modality, comparison and test, over its ROIs and layers: Holm's step-down
    (family-wise error) or Benjamini-Hochberg's (false discovery rate, scipy's false_discovery_control).
    A test of the family skipped for no variance across subjects still counts, as p = 1: the family
    keeps every test it planned, so a skipped one does not make the others' correction milder."""
    if method == "none":
        return
    from scipy.stats import false_discovery_control

    def family_of(t: dict[str, Any]) -> tuple[str, ...]:
        return (t["model"], t["modality"], t["comparison"], t["test"])

    families: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for t in tests:
        families.setdefault(family_of(t), []).append(t)
    untested: dict[tuple[str, ...], int] = {}
    for t in skipped:
        if "roi" in t and t.get("reason") == "no variance across subjects":
            untested[family_of(t)] = untested.get(family_of(t), 0) + 1
    for key, family in families.items():
        p = np.array([t["p"] for t in family] + [1.0] * untested.get(key, 0))
        if method == "fdr_bh":
            adjusted = false_discovery_control(p, method="bh")
        else:  # Holm: the k-th smallest times (m - k), made non-decreasing, at most 1
            order = np.argsort(p, kind="stable")
            steps = np.maximum.accumulate(p[order] * (len(p) - np.arange(len(p))))
            adjusted = np.empty_like(p)
            adjusted[order] = np.minimum(steps, 1.0)
        for t, q in zip(family, adjusted.tolist()[: len(family)], strict=True):
            t["p_uncorrected"], t["p"], t["significant"] = t["p"], q, q < alpha


# ---------------------------------------------------------------------------------------------- summary


def _summary(
    mods: list[_Modality], effects: dict[tuple[str, str, str, str], dict[str, Any]], models: list[EvalModel],
    baseline: str | None, variability_summary: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    by_name = {m.name: m for m in mods}
    out: dict[str, Any] = {
        "baseline": baseline,
        "n_subjects": {m.name: len(m.subjects) for m in mods},
        "models": {},
    }
    for m in models:
        entry = out["models"].setdefault(
            m.name, {"model_subjects": [], "aligned_to": m.modality or None, "layers": list(m.layers or [])}
        )
        if m.subject:
            entry["model_subjects"].append(m.subject)
    for (model, modality, comparison, layer), e in effects.items():
        mod = by_name[modality]
        x = np.stack(list(e["x"].values()))  # (n_subjects, n_points)
        curve = x.mean(axis=0)
        if modality == "eeg":
            times = np.asarray(mod.times)
            # peak, mean and gains after stimulus onset: before it the curves are noise around 0, whose
            # maximum is no latency (all time points where the epoch has none after onset)
            post = times >= 0 if (times >= 0).any() else np.ones(len(times), bool)
            k = int(np.argmax(np.where(post, curve, -np.inf)))
            numbers: dict[str, Any] = {
                "peak_similarity": float(curve[k]), "peak_time": float(times[k]),
                "mean_similarity": float(curve[post].mean()), "n_subjects": len(x),
            }  # fmt: skip
        elif modality == "behaviour":  # one RDM, no ROIs: plain numbers
            post = np.ones(len(curve), bool)
            numbers = {"similarity": float(curve[0]), "n_subjects": len(x)}
        else:
            post = np.ones(len(curve), bool)
            numbers = {"similarity": dict(zip(mod.rois, curve.tolist(), strict=True)), "n_subjects": len(x)}
        if e["base"] is not None:
            common = [s for s in e["x"] if s in e["base"]]
            d = np.stack([e["x"][s] - e["base"][s] for s in common]).mean(axis=0)
            b = np.stack([e["base"][s] for s in common]).mean(axis=0)
            gain = float(d[post].mean())
            numbers["mean_gain"] = gain
            numbers["relative_gain"] = gain / float(b[post].mean()) if b[post].mean() > 0 else None
            if modality == "eeg":
                k = int(np.argmax(np.where(post, d, -np.inf)))
                numbers.update(max_gain=float(d[k]), max_gain_time=float(mod.times[k]))
            elif modality == "fmri":
                numbers["gain"] = dict(zip(mod.rois, d.tolist(), strict=True))
        out["models"][model].setdefault(modality, {}).setdefault(comparison, {})[layer] = numbers
    out["variability"] = variability_summary
    return out


# --------------------------------------------------------------------------------------------- evaluate


def _check_settings(a: dict[str, Any]) -> dict[str, Any]:
    mods = (a["modality"],) if isinstance(a["modality"], str) else a["modality"]
    if isinstance(mods, Sequence) and not mods:
        raise ValueError(f"{_FN}: modality must name at least one of 'eeg' and 'fmri', got {list(mods)!r}")
    if not isinstance(mods, Sequence) or not all(isinstance(m, str) for m in mods):
        raise TypeError(_checks.message(_FN, "modality", "'eeg', 'fmri' or a list of them", a["modality"]))
    rois = a["rois"]
    if rois is not None and isinstance(rois, Sequence) and not isinstance(rois, (str, bytes)) and not rois:
        raise ValueError(f"{_FN}: rois must name at least one ROI (None: all), got []")
    for m in mods:
        _checks.check_choice(_FN, "modality", m, ("eeg", "fmri"))
    if len(set(mods)) != len(mods):
        raise ValueError(f"{_FN}: modality lists a modality twice: {list(mods)}")
    tail = _checks.check_int(_FN, "tail", a["tail"], expected="1, -1 or 0")
    if tail not in (1, -1, 0):
        raise ValueError(_checks.message(_FN, "tail", "1, -1 or 0", tail))
    settings = {
        "modality": list(mods),
        "image_size": _checks.check_int(_FN, "image_size", a["image_size"], minimum=1),
        "permutations": _checks.check_int(_FN, "permutations", a["permutations"], minimum=1),
        "seed": _checks.check_seed(_FN, a["seed"], none=False),
        "rdm_method": _checks.check_choice(_FN, "rdm_method", a["rdm_method"], _RDM_METHODS),
        "compare": _checks.check_choice(_FN, "compare", a["compare"], _COMPARE_METHODS),
        "tail": tail,
        "window": _checks.check_int(_FN, "window", a["window"], minimum=1),
        "step": _checks.check_int(_FN, "step", a["step"], minimum=1),
        "batch_size": _checks.check_int(_FN, "batch_size", a["batch_size"], minimum=1),
        "time_window": _check_time_window(a["time_window"]),
    }
    settings["roi_correction"] = _checks.check_choice(
        _FN, "roi_correction", a["roi_correction"], tuple(_CORRECTIONS)
    )
    for name in ("threshold_p", "alpha"):
        value = _checks.check_real(_FN, name, a[name])
        if not 0 < value < 1:
            raise ValueError(_checks.message(_FN, name, "a probability in (0, 1)", a[name]))
        settings[name] = value
    _checks.check_bool(_FN, "overwrite", a["overwrite"])
    settings["progress"] = _checks.check_bool(_FN, "progress", a["progress"])
    if "eeg" not in mods:  # settings of the EEG's time course and its cluster tests: they change nothing
        eeg_only = {"time_window": None, "window": 1, "step": 1, "permutations": 10000, "threshold_p": 0.05}
        set_ = [k for k, default in eeg_only.items() if settings[k] != default]
        if set_:
            warnings.warn(
                f"{_FN}: {', '.join(set_)} set the EEG's time course and cluster tests, and modality "
                f"{list(mods)} has no EEG: they change nothing here",
                UserWarning,
                stacklevel=3,
            )
    if a["baseline"] is not None and not isinstance(a["baseline"], str):
        raise TypeError(_checks.message(_FN, "baseline", "a model name, 'auto' or None", a["baseline"]))
    if a["out"] is not None and not isinstance(a["out"], (str, os.PathLike)):
        raise TypeError(_checks.message(_FN, "out", "a folder path or None", a["out"]))
    return settings


def _robustness_settings(a: dict[str, Any]) -> dict[str, Any] | None:
    """The attack settings, checked before anything runs; None when robustness is not asked for."""
    given = [k for k in ("eps", "attacks", "pgd_steps", "pgd_step_size", "class_index") if a[k] is not None]
    folder = a["robustness"]
    if folder is None:
        if given:
            flags = ", ".join(f"{k} (--{k.replace('_', '-')})" for k in given)
            raise ValueError(
                f"{_FN}: {flags} set the robustness evaluation, which runs only with "
                "robustness=IMAGE_FOLDER (--robustness; a labelled image folder)"
            )
        return None
    if not isinstance(folder, (str, os.PathLike)):
        raise TypeError(_checks.message(_FN, "robustness", "a labelled image folder or None", folder))
    steps = 10 if a["pgd_steps"] is None else a["pgd_steps"]
    if a["class_index"] is not None and not isinstance(a["class_index"], Mapping):
        raise TypeError(_checks.message(_FN, "class_index", "None or a dict folder name -> class index",
                                        a["class_index"]))  # fmt: skip
    return {
        "folder": os.path.abspath(os.fspath(folder)),
        "eps": _attacks._check_eps_list(_FN, _attacks.DEFAULT_EPS if a["eps"] is None else a["eps"]),
        "attacks": _attacks._check_attacks(_FN, _attacks.ATTACKS if a["attacks"] is None else a["attacks"]),
        "pgd_steps": _checks.check_int(_FN, "pgd_steps", steps, minimum=1),
        "pgd_step_size": _checks.check_real(
            _FN, "pgd_step_size", a["pgd_step_size"], positive=True, none=True
        ),
        "class_index": None if a["class_index"] is None else dict(a["class_index"]),
    }


def _robustness_label(model: EvalModel) -> str:
    """A model's name in robustness.csv: the family's members apart (``realnet/sub-01``)."""
    return f"{model.name}/{model.subject}" if model.subject else model.name


def _robustness(
    models: list[EvalModel], images: _attacks.LabelledImages, r: dict[str, Any], s: dict[str, Any],
    device: str | torch.device,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:  # fmt: skip
    """robustness.csv's rows, and per model its family, subject, clean accuracy and relative accuracy at
    the largest eps (summary.json's "robustness")."""
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    top = max(r["eps"])
    with Stage(s["progress"], "robustness", len(models), "models") as stage:
        for m in models:
            assert m.module is not None
            label = _robustness_label(m)
            with on_device(m.module, device), warnings.catch_warnings():
                # evaluate has warned about eps beyond half the pixel range once, not once per model
                warnings.filterwarnings("ignore", r"robustness: eps .* exceed 0\.5", UserWarning)
                mine = _attacks.robustness(
                    {label: m.module}, images.images, images.labels, eps=r["eps"], attacks=r["attacks"],
                    steps=r["pgd_steps"], step_size=r["pgd_step_size"], batch_size=s["batch_size"],
                    seed=s["seed"], progress=s["progress"],
                )  # fmt: skip
            rows += mine
            summary[label] = {
                "model": m.name,
                "model_subject": m.subject,
                "clean_accuracy": next((x["accuracy"] for x in mine if x["eps"] == 0), None),
                "eps": top,
                "relative_accuracy": {x["attack"]: x["relative_accuracy"] for x in mine if x["eps"] == top},
            }
            stage.update()
    return rows, summary


def _baseline(baseline: str | None, models: list[EvalModel]) -> str | None:
    unaligned = [m.name for m in models if not m.subject]
    if baseline == "auto":
        return "cornet_s" if "cornet_s" in unaligned else None
    if baseline is not None and baseline not in unaligned:
        raise ValueError(
            f"{_FN}: baseline={baseline!r} is not an unaligned model of this evaluation; unaligned models: "
            f"{unaligned}"
        )
    return baseline


def _with_behaviour(
    brain: BrainData, behaviour_rdm: Any, compare: str, subjects: Sequence[int | str] | None = None
) -> BrainData:
    """``brain`` with the behavioural RDMs added, each checked before any model runs: a constant one has
    no similarity under ``compare`` (e.g. Spearman), which would otherwise surface after the features.
    Per-subject RDMs are restricted to ``subjects`` (validated by _subset), as the brain data are."""
    given: dict[Any, Any] = {}
    if behaviour_rdm is not None:
        given = behaviour_rdm if isinstance(behaviour_rdm, dict) else {"group": behaviour_rdm}
        try:
            brain = dataclasses.replace(brain, behaviour={**brain.behaviour, **given})
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{_FN}: behaviour_rdm: {exc}") from exc
    if subjects is not None and brain.behaviour and "group" not in brain.behaviour:
        wanted = [subject_name(x) for x in subjects]
        kept = {k: v for k, v in brain.behaviour.items() if k in wanted}
        if not kept:
            raise ValueError(
                f"{_FN}: the behavioural RDMs are of {list(brain.behaviour)}, none of the subjects selected "
                f"({wanted}); give the selected subjects' RDMs, or a group RDM"
            )
        brain = dataclasses.replace(brain, behaviour=kept)
        given = {k: v for k, v in given.items() if subject_name(k) in kept}
    for key in given:
        v = torch.from_numpy(brain.behaviour[key if key == "group" else subject_name(key)])
        try:
            compare_rdms(v, v, compare)
        except ValueError as exc:
            if "is constant" not in str(exc) and "is all zeros" not in str(exc):
                raise
            what = "all zeros" if compare == "cosine" else "constant"
            raise ValueError(
                f"{_FN}: behaviour_rdm: the RDM of {key!r} is {what}; compare={compare!r} is undefined for it"
            ) from None
    return brain


def _subset(brain: BrainData, subjects: Any, rois: Any, mods: list[str]) -> BrainData:
    """``brain`` restricted to ``subjects`` (each present in every modality evaluated) and fMRI ``rois``."""
    if subjects is not None:
        if isinstance(subjects, (str, bytes)) or not isinstance(subjects, Sequence) or not subjects:
            raise TypeError(_checks.message(_FN, "subjects", "a non-empty sequence of subjects", subjects))
        wanted = [subject_name(s, "subjects[i]") for s in subjects]
        for mod in mods:
            missing = [s for s in wanted if s not in brain.subjects(mod)]
            if missing:
                raise ValueError(
                    f"{_FN}: subject(s) {missing} missing from the data's {mod} ({brain.source}), which has "
                    f"{brain.subjects(mod)}"
                )
        brain = dataclasses.replace(
            brain,
            eeg={s: v for s, v in brain.eeg.items() if s in wanted},
            fmri={s: v for s, v in brain.fmri.items() if s in wanted},
        )
    if rois is not None:
        if isinstance(rois, (str, bytes)) or not isinstance(rois, Sequence) or not rois:
            raise TypeError(_checks.message(_FN, "rois", "a non-empty sequence of ROI names", rois))
        if "fmri" not in mods:  # it was ignored
            raise ValueError(f"{_FN}: rois={list(rois)!r} picks fMRI ROIs, but modality {mods} has no fMRI")
        unknown = [r for r in rois if r not in brain.rois()]
        if unknown:
            raise ValueError(f"{_FN}: rois names {unknown}, which the data lacks; it has {brain.rois()}")
        brain = dataclasses.replace(brain, fmri={s: {r: v[r] for r in rois} for s, v in brain.fmri.items()})
    return brain


def _digest(arrays: Iterable[tuple[str, Any]]) -> str:
    """A digest of named arrays (names, shapes, dtypes and bytes): what tells two evaluations of
    arrays given from Python apart in config.json, where files are named by their paths."""
    h = hashlib.blake2b(digest_size=16)
    for name, value in arrays:
        arr = np.ascontiguousarray(np.asarray(value))
        h.update(f"{name}|{arr.shape}|{arr.dtype}|".encode())
        h.update(arr.reshape(-1).view(np.uint8).data if arr.size else b"")
    return h.hexdigest()


def _model_config(m: EvalModel, digest: bool = True) -> dict[str, Any]:
    """A model's config.json entry: where it came from, and (``digest``) for precomputed features or a
    module given from Python (no file to name) a digest of what it holds."""
    entry = {k: getattr(m, k) for k in ("name", "subject", "modality", "source", "layers")}
    if not digest:
        return entry
    if m.features is not None:
        entry["digest"] = _digest((str(k), m.features[k]) for k in (m.layers or list(m.features)))
    elif not m.source and m.module is not None:
        entry["digest"] = model_key(m.module)
    return entry


def _data_digests(brain: BrainData) -> dict[str, str]:
    """Digests of the brain data given as arrays (not a data folder) and of the behavioural RDMs."""
    out = {}
    if not os.path.isdir(brain.source):
        out["data_digest"] = _digest([
            ("images", np.array(brain.images)), ("fmri_images", np.array(brain.fmri_images or [])),
            ("times", np.asarray(brain.times, dtype=np.float64)),
            *((f"eeg/{k}", v) for k, v in brain.eeg.items()),
            *((f"fmri/{k}/{r}", v) for k, rois in brain.fmri.items() for r, v in rois.items()),
        ])  # fmt: skip
    if brain.behaviour:
        out["behaviour_digest"] = _digest(brain.behaviour.items())
    return out


def _prepare_out(out: Any, config: dict[str, Any], overwrite: bool) -> str | None:
    """The output folder; refuses one that holds another evaluation's config unless ``overwrite``."""
    if out is None:
        return None
    folder = os.path.abspath(os.fspath(out))
    old_file = os.path.join(folder, "config.json")
    if os.path.isfile(old_file) and not overwrite:
        with open(old_file) as f:
            try:
                old = json.load(f)
            except json.JSONDecodeError:
                old = None
        if old != json.loads(json.dumps(config)):
            raise FileExistsError(
                f"{_FN}: {folder!r} holds an evaluation with another config (config.json); pass "
                "overwrite=True to replace its tables, or choose another out"
            )
    elif os.path.isdir(folder) and not overwrite and any(n in os.listdir(folder) for n in _FILES[:4]):
        raise FileExistsError(
            f"{_FN}: {folder!r} holds evaluation tables without a config.json; pass overwrite=True to "
            "replace them"
        )
    return folder


def _hashing_each_module_once(fn: Callable[..., EvalResult]) -> Callable[..., EvalResult]:
    """evaluate with model_keys_cached(): a module given from Python is hashed for its feature cache and for
    config.json, once for both (evaluate changes no module)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> EvalResult:
        with model_keys_cached():
            return fn(*args, **kwargs)

    return wrapper


@_hashing_each_module_once
def evaluate(
    data: str | os.PathLike[str] | SyntheticThings | BrainData,
    models: Sequence[str | os.PathLike[str] | EvalModel],
    *,
    out: str | os.PathLike[str] | None,
    modality: str | Sequence[str] = ("eeg",),
    weights: str | os.PathLike[str] | None = None,
    image_size: int = 224,
    permutations: int = 10000,
    seed: int = 0,
    layers: Sequence[str] | None = None,
    rdm_method: str = "correlation",
    compare: str = "spearman",
    tail: int = 1,
    threshold_p: float = 0.05,
    alpha: float = 0.05,
    roi_correction: str = "none",
    baseline: str | None = "auto",
    behaviour_rdm: Any = None,
    subjects: Sequence[int | str] | None = None,
    rois: Sequence[str] | None = None,
    time_window: tuple[float, float] | None = None,
    window: int = 1,
    step: int = 1,
    batch_size: int = 32,
    device: str | torch.device | None = "cpu",
    cache_dir: str | os.PathLike[str] | None = "auto",
    overwrite: bool = False,
    robustness: str | os.PathLike[str] | None = None,
    eps: Sequence[float] | None = None,
    attacks: Sequence[str] | None = None,
    pgd_steps: int | None = None,
    pgd_step_size: float | None = None,
    class_index: Mapping[str, int] | None = None,
    progress: bool = False,
) -> EvalResult:
    """Model-brain RSA with statistics, written as tables (see the module doc and docs/evaluation.md).

    Args:
        data: The dataset folder (layout of :func:`fastalign.eval.load_brain`), the SyntheticThings that
            wrote it, or a :class:`~fastalign.eval.BrainData`.
        models: "cornet_s", run folders of ``fastalign align`` (one family per parent folder of sub-XX
            runs), or :class:`~fastalign.eval.EvalModel` objects (any torch module and its layer names,
            or precomputed features).
        out: Folder for results.csv, stats.json, summary.json, variability.csv and config.json; None
            writes nothing.
        modality: "eeg" and/or "fmri" ("behaviour" is added when ``behaviour_rdm`` is given).
        weights: CORnet-S's weights for the model "cornet_s" (``cornet_s-1d3f7974.pth``); None: randomly
            initialised from ``seed``, as ``fastalign align`` starts with the same seed.
        image_size: Images are resized to image_size x image_size (not cropped: a non-square image is
            squeezed, as ReAlnet is trained) and ImageNet-normalised.
        permutations: Sign flips of each cluster test (all 2^n_subjects when that is no more).
        seed: Seeds the sign flips and a random CORnet-S.
        layers: Layers of the models that name none (default V1, V2, V4, IT, avgpool, and for a ReAlnet
            also "response", its encoding head's output).
        rdm_method: Model and brain RDMs: "correlation" (1 - Pearson), "cosine" or "euclidean".
        compare: RDM comparison: "spearman", "pearson", "kendall_tau_a", "rho_a" or "cosine".
        tail: 1 (greater than 0 / than the baseline), -1 (less) or 0 (two-sided).
        threshold_p: Cluster-forming threshold: the one-sample t quantile at this p (per side for tail 0).
        alpha: Significance level of the cluster and t-tests (the ``significant`` flags).
        roi_correction: The fMRI and behaviour t-tests' multiple comparisons, within each model, modality,
            comparison and test over its ROIs and layers: "none" (each test's own p), "holm" (family-wise
            error) or "fdr_bh" (Benjamini-Hochberg false discovery rate); ``p_uncorrected`` keeps each
            test's own.
        baseline: The unaligned model each other model is tested against (paired by brain subject);
            "auto": "cornet_s" when evaluated, else none; None: no paired tests.
        behaviour_rdm: A behavioural RDM over the test images, (n, n) or condensed, or a dict subject ->
            RDM; compared like a brain RDM (modality "behaviour", subject "group" for a single RDM).
        subjects: Subjects to evaluate (numbers or "sub-XX"); None: all of each modality.
        rois: fMRI ROIs to evaluate (None: all).
        time_window: (tmin, tmax) seconds of EEG to evaluate (inclusive); None: the whole epoch.
        window, step: EEG samples per window and between window starts (``time`` is a window's mean).
        batch_size, device: How models run (device None: CUDA when available, else the CPU).
        cache_dir: Feature cache; "auto": ``out/cache`` (none when out is None); None: no cache.
        overwrite: Replace the tables of an evaluation with another config in ``out``.
        robustness: A labelled image folder (``root/<class>/<image>``, see
            :func:`~fastalign.eval.attacks.load_labelled_images`, read at ``image_size``): each model's
            accuracy under FGSM and PGD is added as robustness.csv (``EvalResult.robustness``); the
            members of a family are rows of their own (``realnet/sub-01``). None: not computed.
        eps: Perturbation sizes, L-infinity in [0, 1] pixel units (default 0, 1, 2, 4, 8 / 255).
        attacks: Any of "fgsm", "pgd" (default both).
        pgd_steps, pgd_step_size: PGD's steps (default 10) and step size (default 2.5 eps / steps).
        class_index: Class folder name -> the models' class index (default: the folders' names when all
            are integers, else their sorted order, which must then give one folder per class of every
            model; checked with one forward pass per model before any RSA work).
        progress: Show progress on standard error (tqdm bars on a terminal, else a line per stage).

    Returns:
        An :class:`EvalResult`.

    Raises:
        FileNotFoundError: missing data, run folders or weights.
        FileExistsError: ``out`` holds another evaluation (without ``overwrite``).
        ValueError: a subject missing from the data, layers a model lacks, models of other image sets
            (features of other images, runs aligned on another dataset), bad settings (a negative eps,
            robustness settings without ``robustness``, robustness of a model given as features, labels
            that cannot be a model's class indices).
        TypeError: arguments of the wrong kind.
    """
    given = dict(locals())
    s = _check_settings(given)
    attack = _robustness_settings(given)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = str(_checks.check_device(_FN, "device", device))  # before any data is read
    mods = s["modality"]
    if isinstance(data, BrainData):
        absent = [m for m in mods if not data.subjects(m)]
        if absent:
            raise ValueError(f"{_FN}: the BrainData has no responses of modality {absent}")
        brain = data
    else:
        brain = load_brain(data, mods, subjects=subjects, rois=rois)
    brain = _with_behaviour(_subset(brain, subjects, rois, mods), behaviour_rdm, s["compare"], subjects)
    if brain.behaviour:
        mods = [*mods, "behaviour"]
    specs = as_models(models, weights=weights, seed=s["seed"], layers=layers)
    digest = functools.cache(digest_files)  # the evaluated images read once for all runs' checks
    for m in specs:
        if m.modality in mods and m.subject not in brain.subjects(m.modality):
            if subjects is not None:  # left out by the selection, maybe not by the data
                raise ValueError(
                    f"{_FN}: model {m.name!r} was aligned to {m.subject}, whom subjects={subjects!r} leaves "
                    f"out of the {m.modality} evaluated ({brain.subjects(m.modality)}); select that subject "
                    "too, or evaluate without this model"
                )
            raise ValueError(
                f"{_FN}: model {m.name!r} was aligned to {m.subject}, who is missing from the data's "
                f"{m.modality} (subjects {brain.subjects(m.modality)})"
            )
        if m.features is not None and m.layers is not None:
            # layers and image counts of precomputed features, before any module model runs (minutes at
            # the published size) only to fail on them
            for mod in mods:
                given_features(m, brain.images_of(mod), f"{mod} test")
        if m.modality:
            aligned_to = m.modality if m.modality in mods else mods[0]
            check_image_set(m, brain.images_of(aligned_to), f"{aligned_to} test", digest)
        check_image_size(m, s["image_size"])
    base = _baseline(baseline, specs)
    labelled = None
    if attack is not None:
        features_only = [m.name for m in specs if m.module is None]
        if features_only:
            raise ValueError(
                f"{_FN}: robustness attacks each model, but {features_only} are precomputed features, not "
                "modules; evaluate robustness without them"
            )
        labelled = _attacks.load_labelled_images(
            attack["folder"], class_index=attack["class_index"], size=s["image_size"]
        )
        for m in specs:  # the labels against each model's classes, before any RSA work
            assert m.module is not None
            with on_device(m.module, device):
                _attacks._check_labelled_classes(_FN, m.name, m.module, labelled, attack["class_index"])
    # the digests (hashes of every array given from Python: 0.2-0.4 s at 11 models x 4 layers x 200 x
    # 4,096) only where there is a folder whose config they tell apart
    digests = out is not None
    config = {
        "data": os.path.abspath(brain.source) if os.path.isdir(brain.source) else brain.source,
        **(_data_digests(brain) if digests else {}),
        "models": [_model_config(m, digests) for m in specs],
        "subjects": {m: brain.subjects(m) for m in mods},
        "rois": brain.rois() if "fmri" in mods else None,
        "baseline": base,
        "weights": None if weights is None else os.path.abspath(weights),
        **{k: v for k, v in s.items() if k != "progress"},
        "modality": mods,
        "robustness": attack,
    }
    if cache_dir is not None and cache_dir != "auto" and os.fspath(cache_dir) == "":
        # os.path takes '' for the current folder: an unset variable would fill it with cache files
        raise ValueError(f"{_FN}: cache_dir must name a folder, \"auto\" or None, got '' (an empty path)")
    folder = _prepare_out(out, config, overwrite)
    cache = (None if folder is None else os.path.join(folder, "cache")) if cache_dir == "auto" else cache_dir

    def extract(model: EvalModel, images: list[str], what: str) -> dict[str, np.ndarray]:
        return layer_features(
            model, images, image_size=s["image_size"], batch_size=s["batch_size"], device=device,
            cache_dir=cache, what=what, progress=s["progress"],
        )  # fmt: skip

    done: dict[tuple[int, tuple[str, ...]], dict[str, torch.Tensor]] = {}
    slots: dict[str, list[_Slot]] = {}
    computed: list[_Modality] = []
    run = {"eeg": _eeg, "fmri": _fmri, "behaviour": _behaviour}
    # a family's variability is measured on the test images of the modality it was aligned to (unaligned
    # families: the first modality), whatever the order of ``modality``
    own: dict[str, str] = {}
    for m in specs:
        own.setdefault(m.name, m.modality if m.modality in mods else mods[0])
    var_rows: list[dict[str, Any]] = []
    var_summary: dict[str, Any] = {}
    for mod in mods:
        images = brain.images_of(mod)
        slots[mod], rdms = _model_rdms(
            specs, images, f"{mod} test", rdm_method=s["rdm_method"], done=done, extract=extract
        )
        computed.append(run[mod](brain, rdms, s))
        mine = [k for k, slot in enumerate(slots[mod]) if own[slot.model] == mod]
        if mine:
            rows_here, summary_here = _variability.variability([slots[mod][k] for k in mine], rdms[mine])
            var_rows += [{**row, "modality": mod} for row in rows_here]
            var_summary.update({f: {**v, "modality": mod} for f, v in summary_here.items()})
    rows = [r for mod in computed for r in _rows(mod, slots[mod.name])]
    families = list(dict.fromkeys(m.name for m in specs))
    stats, effects = _statistics(computed, slots, families, base, s)
    summary = _summary(computed, effects, specs, base, var_summary)
    robust: list[dict[str, Any]] = []
    if attack is not None and labelled is not None:
        robust, summary["robustness"] = _robustness(specs, labelled, attack, s, device)
    result = EvalResult(rows, stats, summary, var_rows, robustness=robust)
    if folder is not None:
        result.write(folder)
        write_json(os.path.join(folder, "config.json"), config, fn=_FN, what="config")
    return result
