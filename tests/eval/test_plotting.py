"""Figures are drawn with Agg and checked for what they show: the plotted data equal the tables'
means, the bars and bands sit where the tables and stats put them, axes carry labels with units."""

from __future__ import annotations

import csv
import json
import math
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection, PolyCollection
from matplotlib.colors import to_hex
from matplotlib.patches import Rectangle

from fastalign.plotting import (
    PALETTE,
    evaluation_figures,
    model_styles,
    plot_across_subject,
    plot_rdms,
    plot_robustness,
    plot_roi_bars,
    plot_rsa_time_courses,
    plot_variability,
    save_figure,
)

SUBJECTS = ("sub-01", "sub-02", "sub-03")
TIMES = (-0.1, 0.0, 0.1, 0.2)
GROUPS = {"realnet": "ReAlnet"}  # the family of models aligned to each subject, drawn as one curve
COLUMNS = (
    "model", "model_subject", "subject", "modality", "comparison", "layer", "time", "roi", "similarity",
    "noise_lower", "noise_upper",
)  # fmt: skip


def _sim(model: str, subject: int, layer: str, x: float) -> float:
    """Distinct, known values for every cell."""
    return 0.01 * (subject + 1) * (2 if model == "realnet" else 1) + x * (0.5 if layer == "IT" else 0.3)


def _row(*values: object) -> dict:
    return dict(zip(COLUMNS, values, strict=True))


def _results() -> list[dict]:
    rows = []
    for layer in ("V1", "IT"):
        for s, subject in enumerate(SUBJECTS):
            for t in TIMES:
                ceiling = (0.2 + t / 10, 0.3 + t / 10)
                sim = _sim("cornet_s", s, layer, t)
                rows.append(_row("cornet_s", "", subject, "eeg", "none", layer, t, "", sim, *ceiling))
                for m, ms in enumerate(SUBJECTS):  # the family's model aligned to subject m
                    comparison = "within" if m == s else "across-subject"
                    sim = _sim("realnet", s, layer, t) + (0 if m == s else 0.001 * (m + 1))
                    rows.append(_row("realnet", ms, subject, "eeg", comparison, layer, t, "", sim, *ceiling))
            for r, roi in enumerate(("V1", "LOC")):
                for model, ms, comparison in (("cornet_s", "", "none"), ("realnet", subject, "within")):
                    sim = _sim(model, s, layer, r)
                    ceiling = (0.4 + r, 0.6 + r)
                    rows.append(
                        _row(model, ms, subject, "fmri", comparison, layer, math.nan, roi, sim, *ceiling)
                    )
    return rows


STATS = {
    "clusters": [
        {"model": "ReAlnet", "layer": "V1", "modality": "eeg", "comparison": "within", "test": "vs0",
         "tail": 1, "t_start": 0.0, "t_stop": 0.2, "p": 0.001, "mass": 9.0},
        {"model": "ReAlnet", "layer": "V1", "modality": "eeg", "comparison": "within", "test": "vs:cornet_s",
         "tail": 1, "t_start": 0.1, "t_stop": 0.1, "p": 0.02, "mass": 3.0},
        {"model": "cornet_s", "layer": "IT", "modality": "eeg", "comparison": "none", "test": "vs0",
         "tail": 1, "t_start": 0.1, "t_stop": 0.2, "p": 0.04, "mass": 4.0},
        # not drawn: not significant, another comparison, another modality
        {"model": "ReAlnet", "layer": "IT", "modality": "eeg", "comparison": "within", "test": "vs:cornet_s",
         "tail": 1, "t_start": -0.1, "t_stop": 0.0, "p": 0.5, "mass": 1.0},
        {"model": "ReAlnet", "layer": "IT", "modality": "eeg", "comparison": "across-subject", "test": "vs0",
         "tail": 1, "t_start": -0.1, "t_stop": 0.2, "p": 0.001, "mass": 1.0},
        {"model": "ReAlnet", "layer": "V1", "modality": "fmri", "comparison": "within", "test": "vs0",
         "tail": 1, "t_start": 0.0, "t_stop": 0.1, "p": 0.001, "mass": 1.0},
    ],
    "roi_tests": [
        {"model": "ReAlnet", "layer": "IT", "roi": "LOC", "modality": "fmri", "comparison": "within",
         "test": "vs0", "statistic": 5.0, "p": 0.01},
        {"model": "ReAlnet", "layer": "IT", "roi": "LOC", "modality": "fmri", "comparison": "within",
         "test": "vs:cornet_s", "statistic": 3.0, "p": 0.03},
        {"model": "ReAlnet", "layer": "V1", "roi": "LOC", "modality": "fmri", "comparison": "across-subject",
         "test": "vs0", "statistic": 5.0, "p": 0.01},
        {"model": "cornet_s", "layer": "IT", "roi": "V1", "modality": "fmri", "comparison": "none",
         "test": "vs0", "statistic": 1.0, "p": 0.3},
        {"model": "cornet_s", "layer": "V1", "roi": "V1", "modality": "fmri", "comparison": "none",
         "test": "vs0", "statistic": 0.0, "p": None},
    ],
    "permutations": 1000,
    "exact": True,
    "threshold_p": 0.05,
    "alpha": 0.05,
}  # fmt: skip


def _axes(fig) -> dict:
    return {ax.get_title(): ax for ax in fig.axes if ax.get_title()}


def _render(fig) -> None:
    assert isinstance(fig.canvas, FigureCanvasAgg)
    fig.canvas.draw()


def _mean_sem(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values)
    return float(a.mean()), float(a.std(ddof=1) / math.sqrt(a.size))


def _expected(rows: list[dict], layer: str, models: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    out = [
        _mean_sem([r["similarity"] for r in rows if r["layer"] == layer and r["model"] in models
                   and r["comparison"] in ("within", "none") and r["modality"] == "eeg" and r["time"] == t])
        for t in TIMES
    ]  # fmt: skip
    return np.array([o[0] for o in out]), np.array([o[1] for o in out])


def _legend_texts(fig) -> list[str]:
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def _band(ax, label: str) -> np.ndarray:
    (band,) = [c for c in ax.collections if isinstance(c, PolyCollection) and c.get_label() == label]
    return band.get_paths()[0].vertices


def _check_band(vertices: np.ndarray, x: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> None:
    for xi, lo, hi in zip(x, lower, upper, strict=True):
        ys = vertices[np.isclose(vertices[:, 0], xi), 1]
        assert np.isclose(ys, lo).any() and np.isclose(ys, hi).any(), (xi, ys, lo, hi)
        assert ys.min() >= lo - 1e-12 and ys.max() <= hi + 1e-12


def test_rsa_time_courses_show_the_means_sems_ceiling_and_clusters() -> None:
    rows = _results()
    fig = plot_rsa_time_courses(rows, STATS, groups=GROUPS)
    _render(fig)
    axes = _axes(fig)
    assert list(axes) == ["V1", "IT"]
    x = 1000 * np.array(TIMES)
    for layer, ax in axes.items():
        assert ax.get_xlabel() == "Time from stimulus onset (ms)"
        assert "Spearman" in ax.get_ylabel()
        lines = {line.get_label(): line for line in ax.get_lines()}
        for curve, models in (("ReAlnet", ("realnet",)), ("cornet_s", ("cornet_s",))):
            mean, sem = _expected(rows, layer, models)
            np.testing.assert_allclose(lines[curve].get_xdata(), x)
            np.testing.assert_allclose(lines[curve].get_ydata(), mean, rtol=1e-12)
            _check_band(_band(ax, f"_sem {curve}"), x, mean - sem, mean + sem)
        _check_band(_band(ax, "noise ceiling"), x, 0.2 + np.array(TIMES) / 10, 0.3 + np.array(TIMES) / 10)
        bars = {line.get_label(): line for line in ax.get_lines() if line.get_label().startswith("_sig")}
        # each bar covers its samples' bins (100 ms apart): the one-sample cluster at 100 ms is 100 ms wide
        want = {
            "V1": {"_sig ReAlnet vs0": (-50, 250), "_sig ReAlnet vs:cornet_s": (50, 150)},
            "IT": {"_sig cornet_s vs0": (50, 250)},
        }[layer]
        assert {k: tuple(v.get_xdata()) for k, v in bars.items()} == want
        lowest = min(
            line.get_ydata().min() for line in lines.values() if not line.get_label().startswith("_")
        )
        levels = [b.get_ydata()[0] for b in bars.values()]
        assert max(levels) < lowest and len(set(levels)) == len(levels)  # under the curves, one row each
        assert ax.get_ylim()[0] <= min(levels)
    # the baseline in black, ReAlnet in the first palette colour
    assert to_hex(lines["cornet_s"].get_color()) == "#000000"
    assert to_hex(lines["ReAlnet"].get_color()) == PALETTE[0].lower()
    texts = _legend_texts(fig)
    for text in (
        "cornet_s",
        "ReAlnet",
        "noise ceiling",
        "cluster p < 0.05 vs 0",
        "cluster p < 0.05 vs cornet_s",
        "mean ± SEM over subjects",
    ):
        assert text in texts
    one = [r for r in rows if r["subject"] == "sub-01"]  # no band without a spread, and no legend entry
    assert "mean ± SEM over subjects" not in _legend_texts(plot_rsa_time_courses(one, STATS, groups=GROUPS))


def test_legends_fit_their_figure_in_as_few_even_rows_as_possible() -> None:
    # a one-panel figure's legend ran past both edges; five entries on a wide figure were drawn in 4
    # columns, filled column by column ("noise ceiling, ReAlnet, ... / CORnet-S" in the demo's figure)
    rows = _results()
    for layers, ncols in ((["V1"], 1), (["V1", "IT"], 2)):
        fig = plot_rsa_time_courses(rows, STATS, layers=layers, ncols=ncols, groups=GROUPS)
        FigureCanvasAgg(fig).draw()
        box = fig.bbox
        (legend,) = fig.legends
        extent = legend.get_window_extent()
        assert box.x0 <= extent.x0 and extent.x1 <= box.x1, (layers, extent, box)
        n = len(legend.get_texts())
        columns = legend._ncols
        assert columns == math.ceil(n / math.ceil(n / columns))  # as many entries in each row as can be
    wide = plot_rsa_time_courses(rows, STATS, layers=["V1", "IT", "V1"], ncols=3, groups=GROUPS)
    (legend,) = wide.legends
    assert len(legend.get_texts()) == 6 and legend._ncols == 3  # two rows of 3 (4 fit), not 4 and 2


def test_groups_rename_models_with_their_clusters_baseline_and_tests() -> None:
    # stats.json names models as the results do ("cornet_s"); a label given by groups names them in the
    # figure, and their clusters, the baseline's colour and the "vs" of the tests follow the label
    groups = {**GROUPS, "cornet_s": "CORnet-S"}
    fig = plot_rsa_time_courses(_results(), STATS, groups=groups)
    _render(fig)
    axes = _axes(fig)
    lines = {line.get_label(): line for line in axes["IT"].get_lines()}
    assert "cornet_s" not in lines and to_hex(lines["CORnet-S"].get_color()) == "#000000"
    assert tuple(lines["_sig CORnet-S vs0"].get_xdata()) == (50, 250)
    sig = {line.get_label() for line in axes["V1"].get_lines() if line.get_label().startswith("_sig")}
    assert sig == {"_sig ReAlnet vs0", "_sig ReAlnet vs:cornet_s"}
    texts = _legend_texts(fig)
    assert "CORnet-S" in texts and "cluster p < 0.05 vs CORnet-S" in texts and "cornet_s" not in texts
    bars = plot_roi_bars(_results(), STATS, groups=groups)
    _render(bars)
    texts = _legend_texts(bars)
    assert "CORnet-S" in texts and "p < 0.05 vs CORnet-S (uncorrected)" in texts and "cornet_s" not in texts
    (it,) = [ax for ax in bars.axes if ax.get_title() == "layer IT"]
    assert sorted(a.get_text() for a in it.texts) == ["*†"]  # ReAlnet at LOC, matched through its label


def test_a_cluster_below_zero_or_the_baseline_is_dashed() -> None:
    # short dashes (a dotted thick bar read as several one-sample clusters)
    stats = json.loads(json.dumps(STATS))
    stats["clusters"][1]["mass"] = -3.0  # ReAlnet below cornet_s at 100 ms in V1 (a two-sided test)
    fig = plot_rsa_time_courses(_results(), stats, groups=GROUPS)
    _render(fig)
    bars = {
        line.get_label(): line for line in _axes(fig)["V1"].get_lines() if line.get_label().startswith("_sig")
    }
    assert (
        bars["_sig ReAlnet vs:cornet_s"].get_linestyle() == "--"
        and bars["_sig ReAlnet vs0"].get_linestyle() == "-"
    )
    assert "dashed: cluster below it" in _legend_texts(fig)
    assert "dashed: cluster below it" not in _legend_texts(
        plot_rsa_time_courses(_results(), STATS, groups=GROUPS)
    )


def test_legends_list_what_any_panel_draws() -> None:
    """The legend came from the first panel only: a model without that panel's layer (or ROI) and the
    noise ceiling where that panel had none were missing."""
    rows = [r for r in _results() if not (r["model"] == "cornet_s" and r["layer"] == "V1")]
    for r in rows:
        if r["layer"] == "V1":
            r["noise_lower"] = r["noise_upper"] = math.nan
    texts = _legend_texts(plot_rsa_time_courses(rows, None, groups=GROUPS))
    assert "cornet_s" in texts and "noise ceiling" in texts and texts.count("cornet_s") == 1
    bars = _legend_texts(plot_roi_bars([r for r in rows if r["modality"] == "fmri"], None, groups=GROUPS))
    assert bars.count("cornet_s") == 1 and bars.count("ReAlnet") == 1


def test_one_panel_with_many_curves_keeps_its_labels_inside() -> None:
    """Below a single panel, 8 legend entries squeezed the axes until the y label ran off the figure:
    the figure grows with the legend's rows instead."""
    rows = []
    for m in range(8):
        rows += [{**r, "model": f"model {m}"} for r in _results() if r["model"] == "cornet_s"]
    fig = plot_rsa_time_courses(rows, None, layers=["V1"], ncols=1, baseline="model 0")
    FigureCanvasAgg(fig).draw()
    box = fig.bbox
    (ax,) = fig.axes
    label = ax.yaxis.label.get_window_extent()
    assert box.y0 <= label.y0 and label.y1 <= box.y1 and box.x0 <= label.x0, (label, box)
    assert ax.get_window_extent().height > 0.4 * box.height  # the panel is not a strip


def test_names_are_drawn_as_given(tmp_path: os.PathLike) -> None:
    """A model named with "$" was parsed as math (and failed to save); one starting with "_" was left out
    of the legend."""
    rows = [{**r, "model": {"cornet_s": "_it", "realnet": "cost $5"}[r["model"]]} for r in _results()]
    fig = plot_rsa_time_courses(rows, None, baseline="_it")
    texts = _legend_texts(fig)
    assert "\u200b_it" in texts and "cost \\$5" in texts
    save_figure(fig, os.path.join(tmp_path, "names"))  # "$" drew as math, or failed to


def test_tables_are_read_from_csv_and_json_files(tmp_path: os.PathLike) -> None:
    rows = _results()
    path = os.path.join(tmp_path, "results.csv")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        w.writerows(rows)
    stats = os.path.join(tmp_path, "stats.json")
    with open(stats, "w") as f:
        json.dump(STATS, f)
    from_files = plot_rsa_time_courses(path, stats, groups=GROUPS, layers=["IT"])
    from_rows = plot_rsa_time_courses(rows, STATS, groups=GROUPS, layers=["IT"])
    for a, b in zip(from_files.axes[0].get_lines(), from_rows.axes[0].get_lines(), strict=True):
        assert a.get_label() == b.get_label()
        np.testing.assert_allclose(a.get_ydata(), b.get_ydata(), rtol=1e-15)
    assert len(from_files.axes) == 1 and from_files.axes[0].get_title() == "IT"


def test_roi_bars_show_subject_means_points_ceiling_and_marks() -> None:
    rows = _results()
    fig = plot_roi_bars(rows, STATS, groups=GROUPS)
    _render(fig)
    # titled "layer V1", not "V1" over ticks that name the ROI V1
    axes = {k.removeprefix("layer "): ax for k, ax in _axes(fig).items()}
    assert list(_axes(fig)) == ["layer V1", "layer IT"]
    for layer, ax in axes.items():
        assert [t.get_text() for t in ax.get_xticklabels()] == ["V1", "LOC"]
        assert ax.get_xlabel() == "Region of interest" and "Spearman" in ax.get_ylabel()
        bars = [p for c in ax.containers if hasattr(c, "patches") for p in c.patches]
        assert len(bars) == 4  # 2 models x 2 ROIs
        heights = sorted(round(b.get_height(), 12) for b in bars)
        want = []
        for roi in ("V1", "LOC"):
            for models in (("cornet_s",), ("realnet",)):
                sims = [x["similarity"] for x in rows if x["modality"] == "fmri" and x["layer"] == layer
                        and x["roi"] == roi and x["model"] in models]  # fmt: skip
                assert len(sims) == 3
                want.append(round(float(np.mean(sims)), 12))
        assert heights == sorted(want)
        points = [c for c in ax.collections if isinstance(c, PathCollection)]
        assert len(points) == 4 and all(len(c.get_offsets()) == 3 for c in points)
        ceilings = [
            p for p in ax.patches if isinstance(p, Rectangle) and (p.get_gid() or "").startswith("ceiling")
        ]
        assert sorted((round(p.get_y(), 12), round(p.get_height(), 12)) for p in ceilings) == [
            (0.4, 0.2),
            (1.4, 0.2),
        ]
        marks = [t.get_text() for t in ax.texts]
        assert marks == (["*†"] if layer == "IT" else [])
    texts = _legend_texts(fig)
    assert "p < 0.05 vs 0 (uncorrected)" in texts and "p < 0.05 vs cornet_s (uncorrected)" in texts
    assert "subjects" in texts and "below it (t < 0)" not in texts
    # a test significant below 0 or below the baseline (tail 0 or -1) carries an arrow, and the legend
    # says what it means; stats that name a correction drop "(uncorrected)"
    below = json.loads(json.dumps(STATS))
    for t in below["roi_tests"]:
        if t["layer"] == "IT" and t["roi"] == "LOC" and t["test"] == "vs:cornet_s":
            t["statistic"] = -3.0
    below["roi_correction"] = "holm"
    fig = plot_roi_bars(rows, below, groups=GROUPS)
    _render(fig)
    assert [t.get_text() for t in _axes(fig)["layer IT"].texts] == ["*†↓"]
    texts = _legend_texts(fig)
    assert "p < 0.05 vs cornet_s (Holm)" in texts and "below it (t < 0)" in texts


def test_behaviour_bars_say_behaviour() -> None:
    rows = [
        {**r, "modality": "behaviour", "roi": "", "time": math.nan}
        for r in _results()
        if r["modality"] == "fmri" and r["roi"] == "V1"
    ]
    ax = plot_roi_bars(rows, STATS, modality="behaviour").axes[0]
    assert ax.get_ylabel() == "Model-behaviour similarity (Spearman ρ)" and ax.get_xlabel() == ""
    assert [t.get_text() for t in ax.get_xticklabels()] == ["behavioural RDM"]


def test_rdm_heatmaps_share_one_scale_and_take_condensed_vectors() -> None:
    rng = np.random.default_rng(0)
    square = 1 - np.corrcoef(rng.normal(size=(5, 4)))
    np.fill_diagonal(square, 0.0)
    condensed = 2 * square[np.triu_indices(5, 1)]
    fig = plot_rdms({"a": square, "b<x>": condensed}, condition_labels=list("vwxyz"))
    _render(fig)
    axes = _axes(fig)
    np.testing.assert_allclose(axes["a"].images[0].get_array(), square)
    np.testing.assert_allclose(axes["b<x>"].images[0].get_array(), 2 * square)
    assert (
        axes["a"].images[0].get_clim() == axes["b<x>"].images[0].get_clim() == (0.0, float(condensed.max()))
    )
    assert [t.get_text() for t in axes["a"].get_xticklabels()] == list("vwxyz")
    assert any("Dissimilarity (1 − Pearson r)" in ax.get_ylabel() for ax in fig.axes)
    with pytest.raises(ValueError, match="plot_rdms: rdms must be over the same number of conditions"):
        plot_rdms({"a": square, "b": np.zeros(3)})
    with pytest.raises(ValueError, match=r"plot_rdms: rdms\['a'\] must be a square"):
        plot_rdms({"a": np.zeros(4)})


def test_across_subject_matrix_cells_are_mean_similarities() -> None:
    rows = _results()
    fig = plot_across_subject(rows, window=(0.0, 0.2))
    _render(fig)
    for layer, ax in _axes(fig).items():
        m = ax.images[0].get_array()
        assert m.shape == (3, 3)
        for i, ms in enumerate(SUBJECTS):
            for j, s in enumerate(SUBJECTS):
                cell = (layer, ms, s)
                sims = [r["similarity"] for r in rows if r["modality"] == "eeg" and 0 <= r["time"] <= 0.2
                        and (r["layer"], r["model_subject"], r["subject"]) == cell]  # fmt: skip
                assert len(sims) == 3 and m[i, j] == pytest.approx(np.mean(sims), rel=1e-12)
        assert [t.get_text() for t in ax.get_xticklabels()] == list(SUBJECTS)
    assert fig.get_supxlabel() == "Brain of subject" and fig.get_supylabel() == "Model aligned to subject"
    two = rows + [
        {**r, "model": "control", "similarity": -r["similarity"]} for r in rows if r["model"] == "realnet"
    ]
    panels = _axes(plot_across_subject(two, layers=["IT"]))
    assert list(panels) == ["realnet · IT", "control · IT"]
    renamed = plot_across_subject(two, layers=["IT"], groups={"realnet": "ReAlnet"})
    assert list(_axes(renamed)) == ["ReAlnet · IT", "control · IT"]  # named as in the other figures
    realnet, control = (panels[k].images[0].get_array() for k in ("realnet · IT", "control · IT"))
    np.testing.assert_allclose(control, -realnet, rtol=1e-15)
    # panels are sized by their matrices: one aligned model against 3 brains is a strip, in a figure
    # about as high as its rows of panels need (it was a 3.2-inch square per panel, mostly white)
    one = [r for r in two if r["model_subject"] == "sub-01"]
    fig = plot_across_subject(one)
    _render(fig)
    (layers,) = {len({r["layer"] for r in one})}
    assert len(_axes(fig)) == 2 * layers
    assert fig.get_size_inches()[1] < 2.0 * layers  # 2 families x layers panels in 2 columns
    for ax in _axes(fig).values():
        assert ax.images[0].get_array().shape == (1, 3)
    missing = [r for r in rows if not (r["model_subject"] == "sub-01" and r["subject"] == "sub-03")]
    m = plot_across_subject(missing).axes[0].images[0].get_array().filled(np.nan)
    assert np.isnan(m[0, 2]) and np.isfinite(np.delete(m.ravel(), 2)).all()


def test_similarity_axes_name_the_compare_method() -> None:
    # a Kendall tau-a evaluation was drawn as "Spearman ρ": the axis reads stats.json's compare method
    rows = _results()
    ylabel = lambda fig: {ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()}
    assert ylabel(plot_rsa_time_courses(rows, STATS)) == {"Model-brain similarity (Spearman ρ)"}
    kendall = {**STATS, "compare": "kendall_tau_a"}
    assert ylabel(plot_rsa_time_courses(rows, kendall)) == {"Model-brain similarity (Kendall τ-a)"}
    assert ylabel(plot_rsa_time_courses(rows, kendall, measure="pearson")) == {
        "Model-brain similarity (Pearson r)"
    }
    fmri = [{**r, "modality": "fmri", "time": math.nan, "roi": "LOC"} for r in rows if r["time"] == 0.1]
    assert ylabel(plot_roi_bars(fmri, kendall)) == {"Model-brain similarity (Kendall τ-a)"}
    figs = evaluation_figures(rows, {**STATS, "compare": "rho_a"})
    assert ylabel(figs["rsa_time_courses_eeg"]) == {"Model-brain similarity (Spearman ρ-a)"}
    # evaluation_figures averages the EEG from image onset, as summary.json does, and says so
    assert ylabel(figs["across_subject_eeg"]) >= {"Mean similarity (Spearman ρ-a, 0 to 200 ms)"}
    assert figs["across_subject_eeg"].get_suptitle() == "Models of realnet"
    assert "all time points" in "".join(ylabel(plot_across_subject(rows)))
    with pytest.raises(ValueError, match=r"plot_rsa_time_courses: measure must be one of .*got 'tau'"):
        plot_rsa_time_courses(rows, STATS, measure="tau")


def test_variability_shows_mean_over_pairs_by_layer() -> None:
    rows = [
        {"layer": layer, "model_a": a, "model_b": b, "dissimilarity": d * (k + 1) / 3}
        for layer, d in (("V1", 0.1), ("V4", 0.2), ("IT", 0.4))
        for k, (a, b) in enumerate((("s1", "s2"), ("s1", "s3"), ("s2", "s3")))
    ]
    fig = plot_variability(rows)
    _render(fig)
    (ax,) = fig.axes
    (line,) = [line for line in ax.get_lines() if line.get_label() == "mean ± jackknife SEM over subjects"]
    np.testing.assert_allclose(line.get_ydata(), [0.1 * 2 / 3, 0.2 * 2 / 3, 0.4 * 2 / 3], rtol=1e-12)
    # the pairs share subjects: leave-one-subject-out jackknife, not the SEM of the 3 pairs (half as wide)
    (bars,) = ax.containers
    half = [(seg[1][1] - seg[0][1]) / 2 for seg in bars.lines[2][0].get_segments()]
    loo = np.array([3, 2, 1]) / 3  # the mean over the pairs without s1, s2, s3 (per unit of d)
    jackknife = math.sqrt(2 / 3 * ((loo - loo.mean()) ** 2).sum())
    np.testing.assert_allclose(half, [d * jackknife for d in (0.1, 0.2, 0.4)], rtol=1e-9)
    assert jackknife == pytest.approx(2 * np.std([1, 2, 3], ddof=1) / math.sqrt(3) / 3)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["V1", "V4", "IT"]
    points = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert sum(len(c.get_offsets()) for c in points) == 9
    assert ax.get_xlabel() == "Layer" and "1 − Spearman ρ" in ax.get_ylabel()


def test_variability_draws_one_line_per_family() -> None:
    rows = [
        {"layer": layer, "model_a": "s1", "model_b": b, "dissimilarity": k + d + d2, "model": family}
        for k, family in enumerate(("realnet", "control"))
        for layer, d in (("V1", 0.1), ("IT", 0.3))
        for b, d2 in (("s2", 0.0), ("s3", 0.02))
    ]
    fig = plot_variability(rows)
    _render(fig)
    (ax,) = fig.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    # every pair holds s1: without it none is left, so there is no jackknife SEM, and the legend says so
    what = "mean over subject pairs"
    realnet, control = lines[f"realnet ({what})"], lines[f"control ({what})"]
    np.testing.assert_allclose(realnet.get_ydata(), [0.11, 0.31])
    np.testing.assert_allclose(control.get_ydata(), [1.11, 1.31])
    assert realnet.get_color() != control.get_color()


def test_robustness_curves_per_attack_with_groups() -> None:
    rows = [
        {"model": m, "attack": a, "eps": e / 255, "accuracy": acc, "relative_accuracy": acc / (0.8 - i * 0.1)}
        for i, m in enumerate(("cornet_s", "r1", "r2"))
        for a in ("fgsm", "pgd")
        for e, acc in zip((0, 2, 1), (0.8 - i * 0.1, 0.2 + i * 0.1, 0.5), strict=True)
    ]
    fig = plot_robustness(rows, groups={"r1": "ReAlnet", "r2": "ReAlnet"})
    _render(fig)
    axes = _axes(fig)
    assert list(axes) == ["FGSM", "PGD"]
    for ax in axes.values():
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert set(lines) == {"cornet_s", "ReAlnet"}
        np.testing.assert_allclose(lines["cornet_s"].get_xdata(), [0, 1, 2])
        np.testing.assert_allclose(lines["cornet_s"].get_ydata(), [1.0, 0.5 / 0.8, 0.2 / 0.8])
        np.testing.assert_allclose(
            lines["ReAlnet"].get_ydata(), [1.0, (0.5 / 0.7 + 0.5 / 0.6) / 2, (0.3 / 0.7 + 0.4 / 0.6) / 2]
        )
        assert "1/255" in ax.get_xlabel() and ax.get_ylabel() == "Accuracy relative to ε = 0"
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["cornet_s", "ReAlnet"]
    acc = plot_robustness(rows, metric="accuracy", models=["cornet_s"]).axes[0]
    np.testing.assert_allclose(acc.get_lines()[0].get_ydata(), [0.8, 0.5, 0.2])
    assert acc.get_ylabel() == "Top-1 accuracy"
    # no model right on a clean image: every relative accuracy undefined, so top-1 accuracy is drawn (and
    # said), not empty panels; one model right on some: relative accuracy, the other's line empty (warned)
    zero = [{**r, "accuracy": 0.0 if r["eps"] == 0 else r["accuracy"], "relative_accuracy": math.nan}
            for r in rows if r["model"] != "r2"]  # fmt: skip
    with pytest.warns(UserWarning, match=r"clean accuracy \(eps 0\) is 0 for every model \(cornet_s, r1\)"):
        ax = plot_robustness(zero).axes[0]
    assert ax.get_ylabel() == "Top-1 accuracy"
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), [0.0, 0.5, 0.2])
    some = zero + [r for r in rows if r["model"] == "r2"]
    with pytest.warns(UserWarning, match=r"is 0 for cornet_s, r1: their relative accuracy is NaN"):
        ax = plot_robustness(some).axes[0]
    assert ax.get_ylabel() == "Accuracy relative to ε = 0"


def test_styles_are_distinct_in_colour_and_in_grey() -> None:
    names = [f"m{i}" for i in range(9)] + ["cornet_s"]
    styles = model_styles(names, baseline="cornet_s")
    assert styles["cornet_s"]["color"] == "#000000"
    # Okabe-Ito without yellow and black
    assert set(PALETTE) == {"#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9"}
    looks = {(s["color"], s["marker"], s["linestyle"]) for s in styles.values()}
    grey = {(s["marker"], s["linestyle"]) for s in styles.values()}
    assert len(looks) == len(grey) == len(names)
    # line styles change from the first model on (the palette's greys are close: six solid lines were
    # six near-equal greys), none of the first three solid like the baseline
    assert [styles[f"m{i}"]["linestyle"] for i in range(3)] == ["--", "-.", ":"]


def test_evaluation_figures_builds_what_the_tables_support() -> None:
    figs = evaluation_figures(_results(), STATS, robustness=[
        {"model": "m", "attack": "fgsm", "eps": 0.0, "accuracy": 1.0, "relative_accuracy": 1.0}
    ], groups=GROUPS)  # fmt: skip
    assert list(figs) == ["rsa_time_courses_eeg", "across_subject_eeg", "roi_bars_fmri", "robustness"]
    crossed = [{**r, "comparison": "across-modality"} for r in _results() if r["model"] == "realnet"]
    figs = evaluation_figures([r for r in _results() if r["model"] == "cornet_s"] + crossed)
    # the baseline has no figure of its own: it is drawn beside the models aligned to another modality
    assert list(figs) == ["rsa_time_courses_eeg_across_modality", "roi_bars_fmri_across_modality"]


def test_save_figure_writes_png_and_svg_atomically(tmp_path: os.PathLike) -> None:
    fig = plot_variability([{"layer": "V1", "model_a": "a", "model_b": "b", "dissimilarity": 0.5}])
    stem = os.path.join(tmp_path, "figs", "var")
    paths = save_figure(fig, stem)
    assert paths == [stem + ".png", stem + ".svg"]
    with open(paths[0], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    root = ET.parse(paths[1]).getroot()
    assert root.tag.endswith("svg")
    # text stays text (editable in a journal's SVG), not glyph outlines
    texts = [e.text for e in root.iter() if e.tag.endswith("text")]
    assert any(t and "V1" in t for t in texts), texts
    first = open(paths[1], "rb").read()
    save_figure(fig, stem, formats=("svg",))
    assert open(paths[1], "rb").read() == first  # same figure, same bytes

    class Broken:
        def savefig(self, *args, **kwargs) -> None:
            with open(args[0], "w") as f:
                f.write("half")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_figure(Broken(), stem, formats=("svg",))
    assert open(paths[1], "rb").read() == first
    assert sorted(os.listdir(os.path.dirname(stem))) == ["var.png", "var.svg"]
    with pytest.raises(ValueError, match="save_figure: path must not have an extension"):
        save_figure(fig, stem + ".png")
    with pytest.raises(ValueError, match="save_figure: formats must be"):
        save_figure(fig, stem, formats=("jpg",))


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda r: plot_rsa_time_courses(r, modality="meg"), ValueError,
         "plot_rsa_time_courses: results has no rows with modality 'meg'"),
        (lambda r: plot_rsa_time_courses(r, layers=["V2"]), ValueError,
         r"plot_rsa_time_courses: layers \['V2'\] not in the table"),
        (lambda r: plot_roi_bars(r, models=["nope"]), ValueError, r"plot_roi_bars: models \['nope'\] not in"),
        (lambda r: plot_rsa_time_courses([{k: v for k, v in r[0].items() if k != "layer"}]), ValueError,
         "plot_rsa_time_courses: results row 0 has no column 'layer'"),
        (lambda r: plot_rsa_time_courses([{**r[0], "similarity": "high"}]), ValueError,
         "results row 0 column 'similarity' must be a number, got 'high'"),
        (lambda r: plot_rsa_time_courses(r, {"clusters": [{"model": "x"}]}), ValueError,
         r"stats\['clusters'\]\[0\] has no field 'layer'"),
        (lambda r: plot_rsa_time_courses(r, alpha=0), ValueError, r"alpha must be None or a number in \(0"),
        (lambda r: plot_robustness(r), ValueError, "plot_robustness: robustness row 0 has no column"),
        (lambda r: plot_rsa_time_courses(42), TypeError, "results must be a list of row dicts or a CSV path"),
        (lambda r: plot_rsa_time_courses([]), ValueError, "plot_rsa_time_courses: results has no rows"),
    ],
)  # fmt: skip
def test_bad_tables_are_refused(call, error: type, words: str) -> None:
    with pytest.raises(error, match=words):
        call(_results())


def test_inputs_without_a_figure_are_refused_or_named() -> None:
    """Time-course rows drawn as ROI bars (one bar averaged every time point, pre-stimulus included),
    similarities that are all NaN (an empty figure), a cluster time that is no number (a bare float()
    error), an asymmetric "RDM", an empty dict, and a robustness model never right on clean images."""
    rows = _results()
    with pytest.raises(ValueError, match=r"plot_roi_bars: the 'eeg' rows have times: they are time courses"):
        plot_roi_bars(rows, None, modality="eeg")
    nan = [{**r, "similarity": math.nan} for r in rows]
    with pytest.raises(ValueError, match=r"plot_rsa_time_courses: every similarity .* is NaN"):
        plot_rsa_time_courses(nan)
    bad = {"clusters": [{**STATS["clusters"][0], "t_start": "x"}]}
    with pytest.raises(
        ValueError,
        match=r"plot_rsa_time_courses: stats\['clusters'\] row 0 column 't_start' must be a number",
    ):
        plot_rsa_time_courses(rows, bad, groups=GROUPS)
    with pytest.raises(ValueError, match=r"plot_rdms: rdms\['a'\] is a square matrix that is not symmetric"):
        plot_rdms({"a": np.arange(9.0).reshape(3, 3)})
    with pytest.raises(
        TypeError, match="plot_rdms: rdms must be a non-empty dict name -> RDM, got an empty dict"
    ):
        plot_rdms({})
    zero = [
        {"model": "m", "attack": "fgsm", "eps": e, "accuracy": 0.0, "relative_accuracy": math.nan}
        for e in (0, 0.01)
    ]
    with pytest.warns(UserWarning, match=r"plot_robustness: clean accuracy \(eps 0\) is 0 for m: .* NaN"):
        plot_robustness(zero, metric="relative_accuracy")
    # by default, with no model right on a clean image, top-1 accuracy is drawn instead, and said
    with pytest.warns(UserWarning, match=r"is 0 for every model \(m\), so no relative accuracy is defined"):
        plot_robustness(zero)
    # every member of a family with clean accuracy 0 is named, with its family, whatever the metric
    family = [
        {
            "model": m,
            "attack": "fgsm",
            "eps": e,
            "accuracy": acc,
            "relative_accuracy": math.nan if acc == 0 else 1,
        }
        for m, acc in (("realnet/sub-01", 0.0), ("realnet/sub-02", 0.5), ("realnet/sub-03", 0.0))
        for e in (0, 0.01)
    ]
    groups = {m: "realnet" for m in ("realnet/sub-01", "realnet/sub-02", "realnet/sub-03")}
    for metric in ("relative_accuracy", "accuracy"):
        with pytest.warns(UserWarning, match=r"is 0 for realnet/sub-01 \(of realnet\), realnet/sub-03 \(of "):
            plot_robustness(family, groups=groups, metric=metric)
