"""Figures of a model-brain evaluation, drawn from its tables only.

Every function takes the tables :mod:`fastalign.eval` writes (rows as a list of dicts, or the path of the
CSV file; ``stats`` as a dict or the path of stats.json) and returns a :class:`matplotlib.figure.Figure`
rendered by the Agg backend. No pyplot state is touched, so the figures never open windows, never
accumulate in pyplot's figure list and do not change the backend of the calling program. Save them with
:func:`save_figure` (PNG and SVG, each written atomically).

Readable in print: the Okabe-Ito colour-blind-safe palette, with markers, line styles and hatches that
tell the models apart in grey scale too; every axis is labelled with its unit; every figure has a legend.

- :func:`plot_rsa_time_courses`: similarity over time per layer, mean +- SEM over subjects, the noise
  ceiling band, and significance bars under the curves from stats.json's clusters (each model vs 0 and
  vs the baseline, one row of bars each).
- :func:`plot_roi_bars`: similarity per ROI and layer, bars (mean +- SEM) with a point per subject.
- :func:`plot_rdms`: RDM heatmaps.
- :func:`plot_across_subject`: model subject x brain subject matrices of mean similarity.
- :func:`plot_variability`: between-subject model dissimilarity by layer.
- :func:`plot_robustness`: accuracy against perturbation size per attack.
- :func:`evaluation_figures`: all of the above that the given tables support, by name.

``groups`` (model name -> label) draws several models as one curve: the models aligned to each subject
(run folders ``sub01``, ``sub02``, ...) become one "ReAlnet" curve averaged over subjects. It also
renames: ``{"cornet_s": "CORnet-S"}`` draws and names the model so. Clusters and ROI tests in stats.json
are matched to a curve by their model's label (a name that is no key of ``groups`` is its own label), and
``baseline`` and the "vs" of the tests are named by their labels too.
"""

from __future__ import annotations

import csv
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from fastalign.data import roi_order
from fastalign.eval.report import save_figure as save_figure

#: Okabe & Ito's colour-blind-safe palette without yellow (too light on white paper) and black (kept
#: for the baseline).
PALETTE: tuple[str, ...] = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")
_BASELINE_COLOR = "#000000"
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
_LINESTYLES = ("-", "--", "-.", ":")
_HATCHES = ("", "//", "..", "xx", "\\\\", "++")
_CEILING = "0.85"

_RESULT_COLUMNS = ("model", "model_subject", "subject", "modality", "comparison", "layer", "time", "roi")
_RESULT_NUMBERS = ("time", "similarity", "noise_lower", "noise_upper")
# How each compare method (fastalign.compare_rdms) is named on an axis.
_MEASURES = {
    "spearman": "Spearman ρ",
    "pearson": "Pearson r",
    "kendall_tau_a": "Kendall τ-a",
    "rho_a": "Spearman ρ-a",
    "cosine": "cosine similarity",
}


def _text(name: str) -> str:
    """A model, layer or file name as matplotlib text that shows it as it is: "$" escaped (a "$" pair
    was parsed as math, an odd one failed to draw), a leading "_" behind a zero-width space (matplotlib
    leaves labels starting with "_" out of legends)."""
    name = str(name).replace("$", r"\$")
    return "\u200b" + name if name.startswith("_") else name


def _panel_handles(axes: Sequence[Axes]) -> tuple[list[Any], list[str]]:
    """The legend entries of every panel, each label once in the order first seen: the first panel alone
    missed a model it lacks (a layer or ROI that model has not) and the noise ceiling where it had none."""
    handles: list[Any] = []
    names: list[str] = []
    for ax in axes:
        for h, n in zip(*ax.get_legend_handles_labels(), strict=True):
            if n not in names:
                handles.append(h)
                names.append(n)
    return handles, names


def _legend_below(fig: Figure, handles: list[Any], names: list[str]) -> None:
    """The figure legend under the panels, the figure made taller by its rows: below a single panel (the
    figure as wide as one) many entries took one column each and squeezed the axes until the y label ran
    off the figure."""
    ncols = _legend_columns(fig, names)
    rows = math.ceil(len(names) / ncols)
    width, height = fig.get_size_inches()
    fig.set_size_inches(width, height + 0.22 * rows)
    fig.legend(handles, names, loc="outside lower center", ncols=ncols, fontsize="small")


def _legend_columns(fig: Figure, names: Sequence[str]) -> int:
    """Legend columns that fit the figure's width (about 0.075 in per character of the longest entry, its
    swatch and spacing: a one-panel figure's legend of 4 columns ran past both edges), as few rows as
    that allows, the entries spread evenly over them (matplotlib fills a legend column by column: 5
    entries in 4 columns read "a, c, d, e / b")."""
    per_column = 0.075 * max(len(n) for n in names) + 0.7
    fit = max(1, int(fig.get_size_inches()[0] // per_column))
    rows = math.ceil(len(names) / fit)
    return math.ceil(len(names) / rows)


def _correction(stats: Mapping[str, Any]) -> str:
    """How the ROI tests' p-values were corrected, for the legend: stats.json's roi_correction ("none",
    and stats without the key: " (uncorrected)"; "holm": " (Holm)"; "fdr_bh": " (FDR)")."""
    method = stats.get("roi_correction", "none")
    return {"none": " (uncorrected)", "holm": " (Holm)", "fdr_bh": " (FDR)"}.get(method, f" ({method})")


def _measure(fn: str, measure: str | None, stats: Mapping[str, Any]) -> str:
    """The axis name of the similarities: ``measure``, else stats.json's ``compare``, else Spearman's."""
    name = measure if measure is not None else stats.get("compare", "spearman")
    if name not in _MEASURES:
        raise ValueError(f"{fn}: measure must be one of {sorted(_MEASURES)} (a compare method), got {name!r}")
    return _MEASURES[name]


Table = str | os.PathLike[str] | Iterable[Mapping[str, Any]]
Stats = str | os.PathLike[str] | Mapping[str, Any] | None


# ---------------------------------------------------------------------------------------------- tables


def _number(fn: str, name: str, column: str, i: int, value: Any) -> float:
    if value is None or value == "":
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{fn}: {name} row {i} column {column!r} must be a number, got {value!r}") from None


def _table(
    fn: str,
    name: str,
    table: Table,
    columns: Sequence[str],
    numbers: Sequence[str],
    optional: Sequence[str] = (),
) -> list[dict]:
    """Rows of a CSV file or an iterable of mappings, with ``numbers`` as floats (empty -> NaN) and the
    ``optional`` columns as "" where missing."""
    if isinstance(table, (str, os.PathLike)):
        path = os.fspath(table)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{fn}: {name} file {path!r} does not exist")
        with open(path, newline="", encoding="utf-8") as f:
            rows: list[Any] = list(csv.DictReader(f))
    elif isinstance(table, Iterable) and not isinstance(table, (bytes, Mapping)):
        rows = list(table)
    else:
        raise TypeError(f"{fn}: {name} must be a list of row dicts or a CSV path, got {type(table).__name__}")
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise TypeError(f"{fn}: {name} row {i} must be a dict, got {type(row).__name__}")
        missing = [c for c in (*columns, *numbers) if c not in row]
        if missing:
            raise ValueError(f"{fn}: {name} row {i} has no column {missing[0]!r} (columns: {list(row)})")
        clean: dict[str, Any] = {c: str(row[c]) for c in columns if c not in numbers}
        clean.update({c: _number(fn, name, c, i, row[c]) for c in numbers})
        clean.update({c: "" if row.get(c) is None else str(row[c]) for c in optional})
        out.append(clean)
    if not out:
        raise ValueError(f"{fn}: {name} has no rows")
    return out


def _stats(fn: str, stats: Stats) -> dict[str, Any]:
    if stats is None:
        return {}
    if isinstance(stats, (str, os.PathLike)):
        path = os.fspath(stats)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{fn}: stats file {path!r} does not exist")
        with open(path, encoding="utf-8") as f:
            stats = json.load(f)
    if not isinstance(stats, Mapping):
        raise TypeError(
            f"{fn}: stats must be None, a dict or the path of stats.json, got {type(stats).__name__}"
        )
    return dict(stats)


def _records(fn: str, stats: Mapping[str, Any], key: str, fields: Sequence[str]) -> list[dict]:
    records = stats.get(key, [])
    if not isinstance(records, list):
        raise TypeError(f"{fn}: stats[{key!r}] must be a list of dicts, got {type(records).__name__}")
    for i, rec in enumerate(records):
        missing = [f for f in fields if not isinstance(rec, Mapping) or f not in rec]
        if missing:
            raise ValueError(f"{fn}: stats[{key!r}][{i}] has no field {missing[0]!r}")
    return records


def _order(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _select(fn: str, what: str, present: list[str], wanted: Sequence[str] | None) -> list[str]:
    """``wanted`` (in its order) after checking each is present; all of ``present`` when None."""
    if wanted is None:
        return present
    if isinstance(wanted, str):
        raise TypeError(f"{fn}: {what} must be a sequence of names, got str {wanted!r}; wrap it in a list")
    unknown = [w for w in wanted if w not in present]
    if unknown:
        raise ValueError(f"{fn}: {what} {unknown!r} not in the table (it has {present!r})")
    return list(wanted)


def _check_groups(fn: str, groups: Mapping[str, str] | None) -> Callable[[str], str]:
    if groups is None:
        return lambda model: model
    if not isinstance(groups, Mapping) or not all(isinstance(v, str) for v in groups.values()):
        raise TypeError(f"{fn}: groups must be None or a dict model name -> curve label (str)")
    return lambda model: groups.get(model, model)


def _mean_sem(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean and standard error of the mean (ddof 1; NaN for one value)."""
    a = np.asarray(values, dtype=np.float64)
    sem = float(a.std(ddof=1) / math.sqrt(a.size)) if a.size > 1 else math.nan
    return float(a.mean()), sem, int(a.size)


def _per_unit(rows: Iterable[dict], x: str, unit: str, y: str) -> dict[Any, list[float]]:
    """x -> one value per unit (duplicates of a unit at one x averaged), x in order of appearance."""
    acc: dict[Any, dict[str, list[float]]] = {}
    for r in rows:
        acc.setdefault(r[x], {}).setdefault(r[unit], []).append(r[y])
    return {k: [float(np.mean(v)) for v in units.values()] for k, units in acc.items()}


# ---------------------------------------------------------------------------------------------- styles


def model_styles(names: Sequence[str], baseline: str | None = None) -> dict[str, dict[str, Any]]:
    """A print-safe style per name: colour (baseline black), marker, line style and hatch.

    Colours come from :data:`PALETTE` in order, and every name also gets the next line style, marker
    and hatch, so that names stay apart in grey scale (the palette's colours are close in brightness:
    with line styles changing only after it was used up, six models were six solid greys).
    """
    styles = {}
    others = [n for n in names if n != baseline]
    for i, name in enumerate(others):
        styles[name] = {
            "color": PALETTE[i % len(PALETTE)],
            "marker": _MARKERS[(i + 1) % len(_MARKERS)],
            # the baseline's solid line first comes back after the other three styles
            "linestyle": _LINESTYLES[(i + 1) % len(_LINESTYLES)],
            "hatch": _HATCHES[(i + 1) % len(_HATCHES)],
        }
    if baseline is not None and baseline in names:
        styles[baseline] = {"color": _BASELINE_COLOR, "marker": _MARKERS[0], "linestyle": "-", "hatch": ""}
    return {n: styles[n] for n in names}


def _curve_order(labels: list[str], baseline: str | None) -> list[str]:
    return sorted(labels, key=lambda n: n != baseline)  # stable: the baseline first, the rest as found


def _figure(n: int, ncols: int, width: float = 4.4, height: float = 3.4) -> tuple[Figure, list[Axes]]:
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.subplots(nrows, ncols, squeeze=False)
    axes = list(grid.flat)
    for ax in axes[n:]:
        fig.delaxes(ax)
    return fig, axes[:n]


def _check_ncols(fn: str, ncols: Any) -> int:
    if not isinstance(ncols, int) or isinstance(ncols, bool) or ncols < 1:
        raise ValueError(f"{fn}: ncols must be an int >= 1, got {ncols!r}")
    return ncols


def _significant(
    fn: str,
    stats: Stats,
    key: str,
    fields: Sequence[str],
    modality: str,
    comparisons: Sequence[str],
    alpha: float | None,
) -> tuple[list[dict], float]:
    """stats[key]'s records of this modality and these comparisons with ``p < alpha``, and alpha
    (default: stats.json's ``alpha``, else 0.05). Records without a modality or comparison field match."""
    loaded = _stats(fn, stats)
    if alpha is None:
        alpha = loaded.get("alpha", 0.05)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha <= 1:
        raise ValueError(f"{fn}: alpha must be None or a number in (0, 1], got {alpha!r}")
    records = _records(fn, loaded, key, (*fields, "p"))
    for i, r in enumerate(records):  # the numbers drawn from, named if they are none
        for field in ("p", "t_start", "t_stop", "mass", "statistic"):
            if field in r:
                _number(fn, f"stats[{key!r}]", field, i, r[field])
    kept = [
        dict(r)
        for r in records
        if r.get("modality", modality) == modality
        and r.get("comparison", comparisons[0]) in comparisons
        and r["p"] is not None
        and float(r["p"]) < alpha
    ]
    return kept, float(alpha)


def _results(fn: str, results: Table, modality: str, comparisons: Sequence[str], models: Any) -> list[dict]:
    rows = _table(fn, "results", results, (*_RESULT_COLUMNS, "similarity"), _RESULT_NUMBERS)
    if isinstance(comparisons, str):
        raise TypeError(f"{fn}: comparisons must be a sequence of names, got str {comparisons!r}")
    picked = [r for r in rows if r["modality"] == modality and r["comparison"] in comparisons]
    if picked and not any(math.isfinite(r["similarity"]) for r in picked):
        raise ValueError(
            f"{fn}: every similarity of modality {modality!r} and comparison in {list(comparisons)!r} is "
            "NaN; there is nothing to draw"
        )
    if not picked:
        raise ValueError(
            f"{fn}: results has no rows with modality {modality!r} and comparison in {list(comparisons)!r} "
            f"(it has modalities {_order(r['modality'] for r in rows)!r}, comparisons "
            f"{_order(r['comparison'] for r in rows)!r})"
        )
    keep = set(_select(fn, "models", _order(r["model"] for r in picked), models))
    return [r for r in picked if r["model"] in keep]


# ---------------------------------------------------------------------------------------------- RSA over time


def plot_rsa_time_courses(
    results: Table,
    stats: Stats = None,
    *,
    modality: str = "eeg",
    comparisons: Sequence[str] = ("within", "none"),
    layers: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    groups: Mapping[str, str] | None = None,
    baseline: str = "cornet_s",
    alpha: float | None = None,
    ncols: int = 2,
    measure: str | None = None,
) -> Figure:
    """Model-brain similarity over time, one panel per layer.

    Each curve is the mean over subjects, with a band of +- 1 SEM (a subject's duplicate rows at one
    time averaged first). The grey band is the noise ceiling (``noise_lower`` to ``noise_upper``, averaged
    over the rows at each time). Under the curves, one row of bars per curve and test: a thin bar over
    each cluster significant against 0 (``test == "vs0"``), a thick one over each cluster where the model
    differs from a baseline (``"vs:<baseline>"``), from ``t_start`` to ``t_stop``, for clusters with
    ``p < alpha``.

    Args:
        results: results.csv rows (or its path).
        stats: stats.json (dict or path) for the significance bars; None draws none.
        modality: rows of this modality with a time.
        comparisons: rows of these comparisons (default: each model against its own subject's brain,
            and unaligned models).
        layers, models: the panels and models to draw (default all, in table order).
        groups: model name -> curve label (see the module docstring).
        baseline: the reference model, drawn in black.
        alpha: clusters with ``p < alpha`` are drawn; default stats.json's ``alpha``, else 0.05.
        ncols: panels per row.
        measure: the compare method of the similarities ("spearman", "pearson", "kendall_tau_a",
            "rho_a", "cosine"), named on the axis; default stats.json's ``compare``, else "spearman".
    """
    fn = "plot_rsa_time_courses"
    ncols = _check_ncols(fn, ncols)
    label = _check_groups(fn, groups)
    rows = [r for r in _results(fn, results, modality, comparisons, models) if math.isfinite(r["time"])]
    if not rows:
        raise ValueError(f"{fn}: results has no {modality!r} rows with a finite time")
    fields = ("model", "layer", "test", "t_start", "t_stop")
    loaded = _stats(fn, stats)  # read once: for the significance marks and the measure's name
    clusters, alpha = _significant(fn, loaded, "clusters", fields, modality, comparisons, alpha)
    similarity = f"Model-brain similarity ({_measure(fn, measure, loaded)})"
    layer_list = _select(fn, "layers", _order(r["layer"] for r in rows), layers)
    curves = _curve_order(_order(label(r["model"]) for r in rows), label(baseline))
    styles = model_styles(curves, label(baseline))
    tests = sorted(_order(c["test"] for c in clusters), key=lambda t: t != "vs0")
    fig, axes = _figure(len(layer_list), ncols)
    any_below = False
    for ax, layer in zip(axes, layer_list, strict=True):
        here = [r for r in rows if r["layer"] == layer]
        # a cluster covers its samples' bins: t_start - dt/2 to t_stop + dt/2 (a one-sample cluster, whose
        # t_start equals t_stop, was a line of length 0 and did not show)
        steps = np.diff(sorted({r["time"] for r in here}))
        half = 500 * float(np.median(steps)) if steps.size else 0.0
        low, high = _draw_ceiling(ax, here)
        for curve in curves:
            lo, hi = _draw_time_course(
                ax, [r for r in here if label(r["model"]) == curve], curve, styles[curve]
            )
            low, high = min(low, lo), max(high, hi)
        if not math.isfinite(low):
            low, high = 0.0, 1.0
        gap = 0.06 * (high - low or 1.0)
        level = low - gap
        for curve in curves:
            for test in tests:
                found = [
                    c
                    for c in clusters
                    if label(c["model"]) == curve and c["layer"] == layer and c["test"] == test
                ]
                for c in found:
                    below = float(c.get("mass", 1.0)) < 0  # a negative cluster (tail 0 or -1): dashed
                    any_below = any_below or below
                    ax.plot(
                        [1000 * float(c["t_start"]) - half, 1000 * float(c["t_stop"]) + half],
                        [level, level],
                        color=styles[curve]["color"],
                        # short dashes: a dotted thick bar read as several one-sample clusters
                        linestyle=(0, (2.0, 0.6)) if below else "-",
                        linewidth=2.0 if test == "vs0" else 4.5,
                        solid_capstyle="butt",
                        dash_capstyle="butt",
                        label=f"_sig {curve} {test}",
                    )
                level -= gap if found else 0.0
        ax.set_ylim(level, high + gap)
        ax.axvline(0.0, color="0.4", linestyle=":", linewidth=0.8, label="_onset")
        ax.axhline(0.0, color="0.4", linewidth=0.6, label="_zero")
        ax.set_title(_text(layer))
        ax.set_xlabel("Time from stimulus onset (ms)")
        ax.set_ylabel(similarity)
    handles, names = _panel_handles(axes)
    if any(str(c.get_label()).startswith("_sem ") for ax in axes for c in ax.collections):
        # a line over its band (matplotlib draws a tuple's handles on top of each other): not one more
        # grey box beside the noise ceiling's
        band = Rectangle((0, 0), 1, 1, color="0.2", alpha=0.25, linewidth=0)
        handles.append((band, Line2D([], [], color="0.2", linewidth=1.2)))
        names.append("mean ± SEM over subjects")
    for test in tests:
        what = "0" if test == "vs0" else label(test.removeprefix("vs:"))
        handles.append(Line2D([], [], color="0.3", linewidth=2.0 if test == "vs0" else 4.5))
        names.append(f"cluster p < {alpha:g} vs {what}")
    if any_below:
        handles.append(Line2D([], [], color="0.3", linewidth=2.0, linestyle=(0, (2.0, 0.6))))
        names.append("dashed: cluster below it")
    _legend_below(fig, handles, names)
    return fig


def _draw_ceiling(ax: Axes, rows: list[dict]) -> tuple[float, float]:
    """The noise-ceiling band of these rows; returns its (min, max) (inf, -inf when absent)."""
    bounds = [r for r in rows if math.isfinite(r["noise_lower"]) and math.isfinite(r["noise_upper"])]
    if not bounds:
        return math.inf, -math.inf
    lower = _per_unit(bounds, "time", "subject", "noise_lower")
    upper = _per_unit(bounds, "time", "subject", "noise_upper")
    times = sorted(lower)
    lo = np.array([np.mean(lower[t]) for t in times])
    hi = np.array([np.mean(upper[t]) for t in times])
    # edged, so that a band of the baseline's (black at 25%, grey 0.75) is not read as part of it
    ax.fill_between(
        1000 * np.array(times), lo, hi, facecolor=_CEILING, edgecolor="0.55", linewidth=0.6,
        label="noise ceiling", zorder=0,
    )  # fmt: skip
    return float(lo.min()), float(hi.max())


def _draw_time_course(ax: Axes, rows: list[dict], curve: str, style: dict[str, Any]) -> tuple[float, float]:
    if not rows:
        return math.inf, -math.inf
    values = _per_unit(rows, "time", "subject", "similarity")
    times = sorted(values)
    stats = [_mean_sem(values[t]) for t in times]
    t = 1000 * np.array(times)
    mean = np.array([s[0] for s in stats])
    sem = np.array([s[1] for s in stats])
    ax.plot(
        t,
        mean,
        color=style["color"],
        linestyle=style["linestyle"],
        marker=style["marker"],
        markevery=max(1, len(t) // 8),
        markersize=4,
        label=_text(curve),
        zorder=3,
    )
    if np.isfinite(sem).any():
        ax.fill_between(
            t, mean - sem, mean + sem, color=style["color"], alpha=0.25, linewidth=0, label=f"_sem {curve}"
        )
    band = np.concatenate([mean, mean - np.nan_to_num(sem), mean + np.nan_to_num(sem)])
    band = band[np.isfinite(band)]
    return (float(band.min()), float(band.max())) if band.size else (math.inf, -math.inf)


# ---------------------------------------------------------------------------------------------- ROIs


def plot_roi_bars(
    results: Table,
    stats: Stats = None,
    *,
    modality: str = "fmri",
    comparisons: Sequence[str] = ("within", "none"),
    layers: Sequence[str] | None = None,
    rois: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    groups: Mapping[str, str] | None = None,
    baseline: str = "cornet_s",
    alpha: float | None = None,
    ncols: int = 2,
    measure: str | None = None,
) -> Figure:
    """Similarity per ROI, one panel per layer: a bar per model (mean over subjects, +- SEM) with a point
    per subject, the ROI's noise ceiling as a grey box behind its bars, and marks above the bars from
    stats.json's ``roi_tests`` with ``p < alpha``: ``*`` against 0, ``†`` against a baseline.

    Rows without an ROI (behaviour) form one group ("behavioural RDM"; other modalities: their name).
    ROIs are drawn in the visual hierarchy (:func:`fastalign.data.roi_order`: V1, V2, V3, V4, LOC, FFA,
    PPA, HVC, then others in the table's order), whatever order the table lists them in. Arguments as for
    :func:`plot_rsa_time_courses`; ``rois`` picks the groups and draws them in its order instead.
    """
    fn = "plot_roi_bars"
    ncols = _check_ncols(fn, ncols)
    label = _check_groups(fn, groups)
    rows = _results(fn, results, modality, comparisons, models)
    if any(math.isfinite(r["time"]) for r in rows):
        # one bar would average every time point, the pre-stimulus ones included
        raise ValueError(
            f"{fn}: the {modality!r} rows have times: they are time courses; draw them with "
            "plot_rsa_time_courses"
        )
    group = "behavioural RDM" if modality == "behaviour" else modality  # the bars of rows without an ROI
    for r in rows:
        r["roi"] = r["roi"] or group
    fields = ("model", "layer", "roi", "test")
    loaded = _stats(fn, stats)  # read once: for the significance marks and the measure's name
    tests, alpha = _significant(fn, loaded, "roi_tests", fields, modality, comparisons, alpha)
    what = "behaviour" if modality == "behaviour" else "brain"
    similarity = f"Model-{what} similarity ({_measure(fn, measure, loaded)})"
    for t in tests:
        t["roi"] = t["roi"] or group
    layer_list = _select(fn, "layers", _order(r["layer"] for r in rows), layers)
    roi_list = _select(fn, "rois", roi_order(r["roi"] for r in rows), rois)
    curves = _curve_order(_order(label(r["model"]) for r in rows), label(baseline))
    styles = model_styles(curves, label(baseline))
    width = 0.8 / len(curves)
    fig, axes = _figure(len(layer_list), ncols, width=max(4.4, 0.9 * len(roi_list) + 1.5))
    marks: set[str] = set()
    for ax, layer in zip(axes, layer_list, strict=True):
        for i, roi in enumerate(roi_list):
            here = [r for r in rows if r["layer"] == layer and r["roi"] == roi]
            _draw_roi_ceiling(ax, here, i, roi)
            for j, curve in enumerate(curves):
                mine = [r for r in here if label(r["model"]) == curve]
                values = _per_unit(mine, "roi", "subject", "similarity").get(roi, [])
                if not values:
                    continue
                x = i - 0.4 + width * (j + 0.5)
                top = _draw_bar(
                    ax, x, width, values, curve, styles[curve]
                )  # one legend entry: _panel_handles
                found = {
                    t["test"]: float(t.get("statistic", 0.0))
                    for t in tests
                    if (label(t["model"]), t["layer"], t["roi"]) == (curve, layer, roi)
                }
                # a test significant in the negative direction (tail 0 or -1) carries an arrow down
                vs0 = [v for k, v in found.items() if k == "vs0"]
                vs_base = [v for k, v in found.items() if k != "vs0"]
                text = "".join(
                    m + ("↓" if any(v < 0 for v in got) else "")
                    for m, got in (("*", vs0), ("†", vs_base))
                    if got
                )
                if text:
                    marks.update(text)
                    ax.annotate(
                        text, (x, top), xytext=(0, 2), textcoords="offset points", ha="center", va="bottom"
                    )
        ax.axhline(0.0, color="0.4", linewidth=0.6, label="_zero")
        ax.set_xticks(range(len(roi_list)), roi_list)
        ax.set_xlim(-0.5, len(roi_list) - 0.5)
        ax.set_title(f"layer {_text(layer)}")  # not "V1" over ticks that name the ROI V1
        ax.set_xlabel("Region of interest" if modality == "fmri" else "")
        ax.set_ylabel(similarity)
    handles, names = _panel_handles(axes)
    handles.append(
        Line2D([], [], linestyle="none", marker="o", markerfacecolor="white", markeredgecolor="black")
    )
    names.append("subjects")
    baselines = sorted({label(t["test"].removeprefix("vs:")) for t in tests if t["test"] != "vs0"})
    for mark, what in (("*", "0"), ("†", ", ".join(baselines))):
        if mark in marks:
            handles.append(Line2D([], [], linestyle="none", marker=f"${mark}$", color="black"))
            names.append(f"p < {alpha:g} vs {what}{_correction(loaded)}")
    if "↓" in marks:
        handles.append(Line2D([], [], linestyle="none", marker="$↓$", color="black"))
        names.append("below it (t < 0)")
    _legend_below(fig, handles, names)
    return fig


def _draw_roi_ceiling(ax: Axes, rows: list[dict], i: int, roi: str) -> None:
    bounds = [(r["noise_lower"], r["noise_upper"]) for r in rows]
    bounds = [b for b in bounds if math.isfinite(b[0]) and math.isfinite(b[1])]
    if bounds:
        lo, hi = np.mean(bounds, axis=0)
        label = (
            "noise ceiling" if not any(p.get_label() == "noise ceiling" for p in ax.patches) else "_ceiling"
        )
        ax.add_patch(
            Rectangle(
                (i - 0.45, lo),
                0.9,
                hi - lo,
                facecolor=_CEILING,
                edgecolor="none",
                zorder=0,
                label=label,
                gid=f"ceiling {roi}",
            )
        )


def _draw_bar(
    ax: Axes, x: float, width: float, values: list[float], label: str, style: dict[str, Any]
) -> float:
    """A bar at the mean, its SEM, and the points; returns the top of what was drawn."""
    mean, sem, n = _mean_sem(values)
    ax.bar(
        x,
        mean,
        width * 0.9,
        color=style["color"],
        hatch=style["hatch"],
        edgecolor="black",
        linewidth=0.6,
        label=_text(label),
        zorder=2,
    )
    if n > 1:
        ax.errorbar(x, mean, yerr=sem, fmt="none", ecolor="black", capsize=2, linewidth=0.8, zorder=3)
    # spread evenly (not at random) so that the figure is the same every time
    offsets = np.linspace(-0.25, 0.25, n) * width if n > 1 else np.zeros(1)
    ax.scatter(
        x + offsets,
        values,
        s=12,
        facecolor="white",
        edgecolor="black",
        linewidth=0.6,
        zorder=4,
        label="_subjects",
    )
    return float(np.nanmax([mean + (0.0 if math.isnan(sem) else sem), *values]))


# ---------------------------------------------------------------------------------------------- matrices


def plot_rdms(
    rdms: Mapping[str, Any],
    *,
    measure: str = "1 − Pearson r",
    condition_labels: Sequence[str] | None = None,
    ncols: int = 4,
) -> Figure:
    """RDM heatmaps on one colour scale, one panel per name.

    Args:
        rdms: name -> square (n, n) matrix or condensed (n*(n-1)/2,) vector (scipy's order), numpy or
            torch; every RDM over the same n conditions.
        measure: the dissimilarity's name, for the colour bar.
        condition_labels: n tick labels (only drawn up to 40 conditions).
        ncols: panels per row.
    """
    fn = "plot_rdms"
    ncols = _check_ncols(fn, ncols)
    if not isinstance(rdms, Mapping) or not rdms:
        got = "an empty dict" if isinstance(rdms, Mapping) else type(rdms).__name__
        raise TypeError(f"{fn}: rdms must be a non-empty dict name -> RDM, got {got}")
    mats = {str(name): _square(fn, name, value) for name, value in rdms.items()}
    sizes = {m.shape[0] for m in mats.values()}
    if len(sizes) != 1:
        raise ValueError(f"{fn}: rdms must be over the same number of conditions, got sizes {sorted(sizes)}")
    n = sizes.pop()
    if condition_labels is not None and len(condition_labels) != n:
        raise ValueError(f"{fn}: condition_labels must have {n} entries, got {len(condition_labels)}")
    finite = np.concatenate([m[np.isfinite(m)] for m in mats.values()])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    fig, axes = _figure(len(mats), ncols, width=3.4, height=3.2)
    for ax, (name, m) in zip(axes, mats.items(), strict=True):
        image = ax.imshow(m, cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(_text(name))
        if condition_labels is not None and n <= 40:
            ax.set_xticks(range(n), condition_labels, rotation=90, fontsize="x-small")
            ax.set_yticks(range(n), condition_labels, fontsize="x-small")
        ax.set_xlabel("Condition (image)")
        ax.set_ylabel("Condition (image)")
    fig.colorbar(image, ax=axes, label=f"Dissimilarity ({measure})", shrink=0.8)
    return fig


def _square(fn: str, name: Any, value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch here
        value = value.detach().cpu().numpy()
    a = np.asarray(value, dtype=np.float64)
    if a.ndim == 2 and a.shape[0] == a.shape[1] and a.shape[0] >= 2:
        if not np.allclose(a, a.T, equal_nan=True):
            raise ValueError(
                f"{fn}: rdms[{name!r}] is a square matrix that is not symmetric; an RDM is (the distance "
                "of conditions i and j is that of j and i)"
            )
        return a
    if a.ndim == 1:
        n = round((1 + math.sqrt(1 + 8 * a.size)) / 2)
        if n * (n - 1) // 2 == a.size and n >= 2:
            m = np.zeros((n, n))
            m[np.triu_indices(n, 1)] = a
            return m + m.T
    raise ValueError(
        f"{fn}: rdms[{name!r}] must be a square (n, n) matrix or a condensed vector, got shape {a.shape}"
    )


def plot_across_subject(
    results: Table,
    *,
    modality: str = "eeg",
    layers: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    window: tuple[float, float] | None = None,
    ncols: int = 2,
    measure: str = "spearman",
    groups: Mapping[str, str] | None = None,
) -> Figure:
    """Mean similarity of each subject's model (rows) with each subject's brain (columns), one panel per
    layer (and per model family when there are several, titled "family · layer"; ``groups`` renames a
    family as in :func:`plot_rsa_time_courses`).

    Uses the ``within`` (diagonal) and ``across-subject`` rows of models aligned to a subject
    (``model_subject`` set); a cell with no row is blank. Each cell averages over time points in
    ``window`` (seconds, inclusive; default all) or over ROIs.

    Args:
        results: results.csv rows (or its path); needs one row per model subject and brain subject.
        modality: the brain data compared against.
        layers, models: the panels and models used (default all).
        window: (start, stop) in seconds for EEG.
        ncols: panels per row.
        measure: the compare method of the similarities, named on the colour bar (as for
            :func:`plot_rsa_time_courses`).
    """
    fn = "plot_across_subject"
    ncols = _check_ncols(fn, ncols)
    name_of = _check_groups(fn, groups)
    measured = _measure(fn, measure, {})
    rows = [
        r for r in _results(fn, results, modality, ("within", "across-subject"), models) if r["model_subject"]
    ]
    if window is not None:
        if len(window) != 2 or not all(isinstance(w, (int, float)) for w in window) or window[0] > window[1]:
            raise ValueError(
                f"{fn}: window must be (start, stop) in seconds with start <= stop, got {window!r}"
            )
        rows = [r for r in rows if window[0] <= r["time"] <= window[1]]
    if not rows:
        raise ValueError(
            f"{fn}: results has no rows of subject-aligned models for {modality!r} in {window!r}"
        )
    layer_list = _select(fn, "layers", _order(r["layer"] for r in rows), layers)
    families = _order(r["model"] for r in rows)
    model_subjects = _order(r["model_subject"] for r in rows)
    brains = _order([*model_subjects, *(r["subject"] for r in rows)])
    cells: dict[tuple[str, str, str, str], list[float]] = {}
    for r in rows:
        cells.setdefault((r["model"], r["layer"], r["model_subject"], r["subject"]), []).append(
            r["similarity"]
        )
    mats = {}
    for family in families:
        for layer in layer_list:
            m = np.full((len(model_subjects), len(brains)), np.nan)
            for i, ms in enumerate(model_subjects):
                for j, s in enumerate(brains):
                    if (family, layer, ms, s) in cells:
                        m[i, j] = float(np.mean(cells[family, layer, ms, s]))
            if np.isfinite(m).any():
                mats[layer if len(families) == 1 else f"{name_of(family)} · {layer}"] = m
    finite = np.concatenate([m[np.isfinite(m)] for m in mats.values()])
    vmin, vmax = float(finite.min()), float(finite.max())
    # panels sized by their matrices (0.45 in per cell, plus tick labels and title), so that one aligned
    # model against a few brains is a strip, not a strip inside a 3-inch square of white; the axis names
    # once for the figure
    label = 0.09 * max(len(s) for s in [*brains, *model_subjects])
    title = 0.11 * max(len(t) for t in mats)  # the title's font is larger than the ticks'
    fig, axes = _figure(
        len(mats),
        ncols,
        width=max(0.45 * len(brains), title) + label + 0.4,
        height=0.45 * len(model_subjects) + label + 0.9,
    )
    for ax, (name, m) in zip(axes, mats.items(), strict=True):
        image = ax.imshow(m, cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_xticks(range(len(brains)), brains, rotation=90)
        ax.set_yticks(range(len(model_subjects)), model_subjects)
        ax.set_title(_text(name))
    fig.supxlabel("Brain of subject")
    fig.supylabel("Model aligned to subject")
    if len(families) == 1:  # the panels name the layer only: the figure names the family
        fig.suptitle(f"Models of {name_of(families[0])}")
    timed = any(math.isfinite(r["time"]) for r in rows)
    when = f", {1000 * window[0]:g} to {1000 * window[1]:g} ms" if window is not None else ""
    when = when or (", all time points" if timed else "")
    fig.colorbar(image, ax=axes, label=f"Mean similarity ({measured}{when})", shrink=0.8)
    return fig


# ---------------------------------------------------------------------------------------------- variability


def _jackknife_sem(pairs: Mapping[tuple[str, str], float]) -> float:
    """Leave-one-subject-out jackknife SEM of the mean over subject pairs (NaN under 3 subjects, or where
    leaving a subject out leaves no pair: every pair holds it).

    The n(n-1)/2 pairs share subjects, so they are not independent and their own SEM is too narrow. With
    ``m_i`` the mean over the pairs without subject i and ``m`` the mean of the ``m_i``:
    ``SEM = sqrt((n - 1) / n * sum_i (m_i - m)^2)``.
    """
    subjects = sorted({s for pair in pairs for s in pair})
    n = len(subjects)
    if n < 3:
        return math.nan
    rest = [[v for pair, v in pairs.items() if s not in pair] for s in subjects]
    if not all(rest):
        return math.nan
    loo = np.array([np.mean(r) for r in rest])
    return float(np.sqrt((n - 1) / n * ((loo - loo.mean()) ** 2).sum()))


def plot_variability(variability: Table, *, layers: Sequence[str] | None = None) -> Figure:
    """Dissimilarity between different subjects' models by layer: the mean over model pairs +- its
    leave-one-subject-out jackknife SEM (:func:`_jackknife_sem`; pairs share subjects, so an SEM over
    pairs would be too narrow), and a point per pair; one line per family when the table has a ``model``
    column (variability.csv: layer, model_a, model_b, dissimilarity[, model, modality])."""
    fn = "plot_variability"
    rows = _table(
        fn,
        "variability",
        variability,
        ("layer", "model_a", "model_b"),
        ("dissimilarity",),
        optional=("model",),
    )
    for r in rows:
        r["pair"] = f"{r['model_a']}|{r['model_b']}"
    layer_list = _select(fn, "layers", _order(r["layer"] for r in rows), layers)
    families = _order(r["model"] for r in rows)
    styles = model_styles(families)
    x = np.arange(len(layer_list), dtype=np.float64)
    fig, (ax,) = _figure(1, 1, width=max(4.4, 0.8 * len(layer_list) + 1.5))
    dodge = 0.3 / len(families)
    for k, family in enumerate(families):
        color = "black" if len(families) == 1 else styles[family]["color"]
        values = _per_unit([r for r in rows if r["model"] == family], "layer", "pair", "dissimilarity")
        at = [i for i, layer in enumerate(layer_list) if layer in values]
        xs = x[at] + (k - (len(families) - 1) / 2) * dodge
        for i, xi in zip(at, xs, strict=True):
            v = values[layer_list[i]]
            spread = np.linspace(-0.4, 0.4, len(v)) * dodge if len(v) > 1 else np.zeros(1)
            ax.scatter(xi + spread, v, s=10, color=color, alpha=0.35, linewidth=0, label="_pairs", zorder=2)
        mine = [r for r in rows if r["model"] == family]
        mean = [float(np.mean(values[layer_list[i]])) for i in at]
        sem = [_jackknife_sem(_pairs(mine, layer_list[i])) for i in at]
        ax.errorbar(xs, mean, yerr=sem, fmt="none", ecolor=color, capsize=3, zorder=3)
        # the legend says what is drawn: no SEM under 3 subjects (NaN), where only the mean is
        drawn_sem = any(math.isfinite(e) for e in sem)
        what = "mean ± jackknife SEM over subjects" if drawn_sem else "mean over subject pairs"
        name = what if not family else f"{family} ({what})"
        style = styles[family]
        ax.plot(
            xs,
            mean,
            color=color,
            marker=style["marker"],
            linestyle=style["linestyle"],
            label=_text(name),
            zorder=4,
        )
    ax.scatter([], [], s=10, color="0.5", alpha=0.5, linewidth=0, label="model pairs")
    ax.set_xticks(x, layer_list)
    ax.set_xlabel("Layer")
    ax.set_ylabel("Between-subject model dissimilarity\n(1 − Spearman ρ of the model RDMs)")
    ax.legend(fontsize="small")
    return fig


def _pairs(rows: Sequence[dict], layer: str) -> dict[tuple[str, str], float]:
    """(model_a, model_b) -> dissimilarity at ``layer`` (duplicates of a pair averaged)."""
    acc: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        if r["layer"] == layer:
            acc.setdefault((r["model_a"], r["model_b"]), []).append(r["dissimilarity"])
    return {pair: float(np.mean(v)) for pair, v in acc.items()}


# ---------------------------------------------------------------------------------------------- robustness


def plot_robustness(
    robustness: Table,
    *,
    metric: str | None = None,
    models: Sequence[str] | None = None,
    groups: Mapping[str, str] | None = None,
    baseline: str = "cornet_s",
) -> Figure:
    """Accuracy against the perturbation size, one panel per attack, one line per model (or group of
    models: mean +- SEM over its members). robustness.csv: model, attack, eps, accuracy,
    relative_accuracy.

    Args:
        metric: ``"relative_accuracy"`` (accuracy / accuracy at eps 0) or ``"accuracy"``; None (the
            default): relative accuracy, or accuracy where no model is right on any clean image (every
            relative accuracy undefined: the relative panels would be empty).
    """
    fn = "plot_robustness"
    if metric not in (None, "relative_accuracy", "accuracy"):
        raise ValueError(f"{fn}: metric must be 'relative_accuracy', 'accuracy' or None, got {metric!r}")
    label = _check_groups(fn, groups)
    rows = _table(fn, "robustness", robustness, ("model", "attack"), ("eps", "accuracy", "relative_accuracy"))
    keep = set(_select(fn, "models", _order(r["model"] for r in rows), models))
    rows = [r for r in rows if r["model"] in keep]
    # every model (each member of a group too) never right on clean images: its relative accuracy is
    # undefined, and a group's mean with it is NaN
    zero = _order(r["model"] for r in rows if r["eps"] == 0 and r["accuracy"] == 0)
    if metric is None:
        every = set(_order(r["model"] for r in rows if r["eps"] == 0))
        metric = "accuracy" if every and set(zero) == every else "relative_accuracy"
        if metric == "accuracy":
            warnings.warn(
                f"{fn}: clean accuracy (eps 0) is 0 for every model ({', '.join(zero)}), so no relative "
                "accuracy is defined: drawing top-1 accuracy; are the labels the models' class indices?",
                UserWarning,
                stacklevel=2,
            )
            zero = []  # said above
    if zero:
        named = [m if label(m) == m else f"{m} (of {label(m)})" for m in zero]
        effect = "their relative accuracy is NaN, so their lines (and their groups') are empty"
        warnings.warn(
            f"{fn}: clean accuracy (eps 0) is 0 for {', '.join(named)}: "
            + (effect if metric == "relative_accuracy" else "are their labels the models' class indices?"),
            UserWarning,
            stacklevel=2,
        )
    attacks = _order(r["attack"] for r in rows)
    curves = _curve_order(_order(label(r["model"]) for r in rows), label(baseline))
    styles = model_styles(curves, label(baseline))
    fig, axes = _figure(len(attacks), 2)
    for ax, attack in zip(axes, attacks, strict=True):
        for curve in curves:
            here = [r for r in rows if r["attack"] == attack and label(r["model"]) == curve]
            if not here:
                continue
            values = _per_unit(here, "eps", "model", metric)
            eps = sorted(values)
            stats = [_mean_sem(values[e]) for e in eps]
            x, mean, sem = (
                255 * np.array(eps),
                np.array([s[0] for s in stats]),
                np.array([s[1] for s in stats]),
            )
            style = styles[curve]
            ax.plot(
                x,
                mean,
                color=style["color"],
                linestyle=style["linestyle"],
                marker=style["marker"],
                label=_text(curve),
            )
            if np.isfinite(sem).any():
                ax.fill_between(
                    x,
                    mean - sem,
                    mean + sem,
                    color=style["color"],
                    alpha=0.25,
                    linewidth=0,
                    label=f"_sem {curve}",
                )
        ax.set_title(attack.upper())
        ax.set_xlabel("Perturbation size ε (L∞, in 1/255 of the pixel range)")
        ax.set_ylabel("Accuracy relative to ε = 0" if metric == "relative_accuracy" else "Top-1 accuracy")
        ax.set_ylim(bottom=0.0)
        ax.legend(fontsize="small")
    return fig


# ---------------------------------------------------------------------------------------------- all


def evaluation_figures(
    results: Table | None = None,
    stats: Stats = None,
    *,
    variability: Table | None = None,
    robustness: Table | None = None,
    groups: Mapping[str, str] | None = None,
    baseline: str = "cornet_s",
) -> dict[str, Figure]:
    """Every figure the given tables support, by file name (without extension).

    Per modality: ``rsa_time_courses_<modality>`` (rows with times) or ``roi_bars_<modality>`` (ROIs,
    behaviour), for the within-subject and unaligned rows, the same with ``_across_modality`` for models
    aligned to another modality, and ``across_subject_<modality>``; then ``variability`` and
    ``robustness``. Pass the result to :func:`fastalign.eval.report.write_report`.
    """
    fn = "evaluation_figures"
    figures: dict[str, Figure] = {}
    stats = _stats(fn, stats) if stats is not None else None  # stats.json read once, not per figure
    measure = (stats or {}).get("compare", "spearman")
    if results is not None:
        rows = _table(fn, "results", results, (*_RESULT_COLUMNS, "similarity"), _RESULT_NUMBERS)
        for modality in _order(r["modality"] for r in rows):
            here = [r for r in rows if r["modality"] == modality]
            timed = any(math.isfinite(r["time"]) for r in here)
            draw = plot_rsa_time_courses if timed else plot_roi_bars
            kind = "rsa_time_courses" if timed else "roi_bars"
            present = {r["comparison"] for r in here}
            for suffix, comparisons in (
                ("", ("within", "none")),
                ("_across_modality", ("across-modality", "none")),
            ):
                if present & (set(comparisons) - {"none"}) or (not suffix and present == {"none"}):
                    figures[f"{kind}_{modality}{suffix}"] = draw(
                        here,
                        stats,
                        modality=modality,
                        comparisons=comparisons,
                        groups=groups,
                        baseline=baseline,
                    )
            if "across-subject" in present:
                # EEG: the time points at or after image onset, as summary.json's means
                after = [r["time"] for r in here if math.isfinite(r["time"]) and r["time"] >= 0]
                figures[f"across_subject_{modality}"] = plot_across_subject(
                    here,
                    modality=modality,
                    measure=measure,
                    window=(0.0, max(after)) if timed and after else None,
                    groups=groups,
                )
    if variability is not None:
        figures["variability"] = plot_variability(variability)
    if robustness is not None:
        figures["robustness"] = plot_robustness(robustness, groups=groups, baseline=baseline)
    return figures


__all__ = [
    "PALETTE",
    "evaluation_figures",
    "model_styles",
    "plot_across_subject",
    "plot_rdms",
    "plot_robustness",
    "plot_roi_bars",
    "plot_rsa_time_courses",
    "plot_variability",
    "save_figure",
]
