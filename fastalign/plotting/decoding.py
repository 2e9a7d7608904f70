"""Figures of brain-to-image decoding: saliency maps, retrieval examples and top-k accuracy.

Conventions as :mod:`fastalign.plotting.evaluation`: every function returns a
:class:`matplotlib.figure.Figure` on the Agg canvas without touching pyplot's state, colours come from
the Okabe-Ito palette (:data:`~fastalign.plotting.evaluation.PALETTE`), hatches tell bars apart in grey
scale, every axis says its unit; save with :func:`~fastalign.plotting.evaluation.save_figure`.

- :func:`plot_topomaps`: channel maps as MNE topomaps (``mne.viz.plot_topomap`` on the figure's axes),
  electrodes placed by a standard montage from the channel names.
- :func:`plot_saliency_topomaps`: a :class:`~fastalign.eval.saliency.Saliency`'s channel maps: Grad-CAM,
  integrated gradients, and integrated gradients per frequency band.
- :func:`plot_saliency_time_frequency`: the same saliency over time (both methods) and by frequency band
  (each band's share of the similarity, and band x time).
- :func:`plot_retrieval_grid`: EEG trials -> their top-k images, the correct image framed.
- :func:`plot_topk_bars`: top-k retrieval accuracy of several image models, with chance.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from fastalign.eval.saliency import Saliency
from fastalign.plotting.evaluation import PALETTE, _figure, _mean_sem, model_styles

__all__ = [
    "plot_retrieval_grid",
    "plot_saliency_time_frequency",
    "plot_saliency_topomaps",
    "plot_topk_bars",
    "plot_topomaps",
]

_CORRECT = PALETTE[2]  # bluish green: the correct image
_CHANCE = "0.35"
_DIVERGING, _SEQUENTIAL = "RdBu_r", "viridis"
_METHOD_LABELS = {"grad_cam": "Grad-CAM", "integrated_gradients": "Integrated gradients"}
# integrated gradients are in units of the explained cosine similarity
_IG_UNIT = "contribution to the similarity"
_IG_PER_SAMPLE = "Similarity per sample"


# ---------------------------------------------------------------------------------------------- topomaps


def _montage_name(name: str) -> str:
    """MNE 1.13 renamed ``standard_1020`` to ``colin27_1020`` (the same positions) and warns on the old
    name; the new one is used where it exists, the old name everywhere else."""
    import mne

    if name == "standard_1020" and "colin27_1020" in mne.channels.get_builtin_montages():
        return "colin27_1020"
    return name


def _info(fn: str, ch_names: Sequence[str], montage: str) -> Any:
    """An mne.Info of EEG channels placed by ``montage`` (a ValueError naming the channels it lacks)."""
    import mne

    if isinstance(ch_names, str) or not all(isinstance(c, str) for c in ch_names) or not ch_names:
        raise TypeError(f"{fn}: ch_names must be a non-empty sequence of channel names, got {ch_names!r}")
    if len(set(ch_names)) != len(ch_names):
        raise ValueError(f"{fn}: ch_names must be distinct, got {list(ch_names)}")
    if not isinstance(montage, str) or _montage_name(montage) not in mne.channels.get_builtin_montages():
        raise ValueError(f"{fn}: montage must be one of MNE's built-in montages, got {montage!r}")
    positions = mne.channels.make_standard_montage(_montage_name(montage))
    known = {c.lower() for c in positions.ch_names}
    missing = [c for c in ch_names if c.lower() not in known]
    if missing:
        raise ValueError(
            f"{fn}: montage {montage!r} has no position for channels {missing}; expected 10-20 names "
            "(e.g. 'Oz', 'PO7') or another montage"
        )
    info = mne.create_info(list(ch_names), 1000.0, "eeg")
    info.set_montage(positions, match_case=False)
    return info


def _channel_values(fn: str, name: str, values: Any, n: int) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    a = np.asarray(values, dtype=np.float64)
    if a.shape != (n,):
        raise ValueError(f"{fn}: maps[{name!r}] must have one value per channel, shape ({n},), got {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{fn}: maps[{name!r}] must be finite, got NaN or inf")
    return a


def plot_topomaps(
    maps: Mapping[str, Any],
    ch_names: Sequence[str],
    *,
    montage: str = "standard_1020",
    units: Mapping[str, str] | str = "a.u.",
    ncols: int = 4,
) -> Figure:
    """One MNE topomap per channel map, each with its colour bar.

    A map with negative values is drawn on a diverging scale symmetric about 0 (``RdBu_r``), a
    non-negative one on a sequential scale from 0 (``viridis``).

    Args:
        maps: title -> (C,) values, numpy or torch, in ``ch_names`` order.
        ch_names: the C channel names, placed by ``montage`` (case-insensitive).
        montage: an MNE built-in montage; ``standard_1020`` (MNE 1.13 calls it ``colin27_1020``).
        units: the colour bars' label, one for all or per title.
        ncols: panels per row.

    Raises:
        TypeError, ValueError: empty maps, values of another length, NaN, unknown channels or montage.
    """
    import mne

    fn = "plot_topomaps"
    if not isinstance(maps, Mapping) or not maps:
        raise TypeError(
            f"{fn}: maps must be a non-empty dict title -> channel values, got {type(maps).__name__}"
        )
    if not isinstance(ncols, int) or isinstance(ncols, bool) or ncols < 1:
        raise ValueError(f"{fn}: ncols must be an int >= 1, got {ncols!r}")
    info = _info(fn, ch_names, montage)
    values = {str(k): _channel_values(fn, str(k), v, len(ch_names)) for k, v in maps.items()}
    fig, axes = _figure(len(values), ncols, width=3.0, height=2.8)
    for ax, (title, v) in zip(axes, values.items(), strict=True):
        signed = bool((v < 0).any())
        top = float(np.abs(v).max()) or 1.0
        image, _ = mne.viz.plot_topomap(
            v, info, axes=ax, show=False, cmap=_DIVERGING if signed else _SEQUENTIAL,
            vlim=(-top, top) if signed else (0.0, top), contours=4, sensors=True,
        )  # fmt: skip
        ax.set_title(title)
        unit = units if isinstance(units, str) else units.get(title, "a.u.")
        fig.colorbar(image, ax=ax, shrink=0.8, label=unit)
    return fig


def _check_saliency(fn: str, saliency: Any) -> Saliency:
    if not isinstance(saliency, Saliency):
        raise TypeError(
            f"{fn}: saliency must be a fastalign.eval.saliency.Saliency (from saliency()), got "
            f"{type(saliency).__name__}"
        )
    return saliency


def plot_saliency_topomaps(
    saliency: Saliency, *, bands: bool = True, montage: str = "standard_1020", ncols: int = 4
) -> Figure:
    """Where on the scalp the similarity comes from: Grad-CAM (mean over trials and time), integrated
    gradients (each channel's contribution summed over time, mean over trials) and, with ``bands``, the
    integrated gradients of each frequency band."""
    fn = "plot_saliency_topomaps"
    s = _check_saliency(fn, saliency)
    maps = {"Grad-CAM": s.channel_map("grad_cam"), "Integrated gradients": s.channel_map()}
    units = {"Grad-CAM": "Grad-CAM (a.u.)", "Integrated gradients": _IG_UNIT}
    if bands:
        for name, lo, hi in s.bands:
            title = f"IG {name} ({_band_range(lo, hi)})"
            maps[title] = s.channel_map(name)
            units[title] = _IG_UNIT
    return plot_topomaps(maps, s.ch_names, montage=montage, units=units, ncols=ncols)


def _band_range(lo: float, hi: float) -> str:
    return f"{lo:g}+ Hz" if math.isinf(hi) else f"{lo:g}-{hi:g} Hz"


# ------------------------------------------------------------------------------------------- time and bands


def _band_line(ax: Axes, t: np.ndarray, per_trial: np.ndarray, label: str, color: str, style: str) -> None:
    """Mean over trials with a +- SEM band."""
    mean = per_trial.mean(axis=0)
    ax.plot(t, mean, color=color, linestyle=style, label=label)
    if len(per_trial) > 1:
        sem = per_trial.std(axis=0, ddof=1) / math.sqrt(len(per_trial))
        ax.fill_between(
            t, mean - sem, mean + sem, color=color, alpha=0.25, linewidth=0, label=f"_sem {label}"
        )


def plot_saliency_time_frequency(saliency: Saliency) -> Figure:
    """The saliency over time and frequency, four panels (mean +- SEM over trials):

    - integrated gradients over time, summed over channels (each sample's contribution to the
      similarity, whose sum over time and bands is the similarity's change from the baseline);
    - Grad-CAM over time, mean over channels;
    - each frequency band's share of the similarity change (bars with a point per trial);
    - band x time: the integrated gradients of each band over time, summed over channels.
    """
    fn = "plot_saliency_time_frequency"
    s = _check_saliency(fn, saliency)
    ms = 1000 * s.times
    fig, axes = _figure(4, 2, width=4.6, height=3.4)
    ig, cam, bars, tf = axes
    _band_line(ig, ms, s.time_course(), "integrated gradients", PALETTE[0], "-")
    ig.axhline(0.0, color="0.4", linewidth=0.6, label="_zero")
    ig.set_title("Integrated gradients over time")
    ig.set_ylabel(_IG_PER_SAMPLE)
    _band_line(cam, ms, s.time_course("grad_cam"), "Grad-CAM", PALETTE[1], "--")
    cam.set_title("Grad-CAM over time")
    cam.set_ylabel("Grad-CAM, mean over channels (a.u.)")
    for ax in (ig, cam):
        ax.set_xlabel("Time from stimulus onset (ms)")
        ax.legend(fontsize="small")

    contributions = s.band_contributions()
    names = [f"{n}\n{_band_range(lo, hi)}" for n, lo, hi in s.bands]
    styles = model_styles(list(s.band_names))
    for i, band in enumerate(s.band_names):
        mean, sem, n = _mean_sem(contributions[:, i].tolist())
        style = styles[band]
        bars.bar(i, mean, 0.7, color=style["color"], hatch=style["hatch"], edgecolor="black", linewidth=0.6,
                 label=band, gid=f"band {band}")  # fmt: skip
        if n > 1:
            bars.errorbar(i, mean, yerr=sem, fmt="none", ecolor="black", capsize=3, label="_sem")
        offsets = np.linspace(-0.2, 0.2, n) if n > 1 else np.zeros(1)
        bars.scatter(i + offsets, contributions[:, i], s=10, facecolor="white", edgecolor="black",
                     linewidth=0.5, zorder=3, label="_trials")  # fmt: skip
    bars.axhline(0.0, color="0.4", linewidth=0.6, label="_zero")
    bars.set_xticks(range(len(names)), names, fontsize="small")
    bars.set_xlabel("Frequency band")
    bars.set_ylabel("Similarity (sum over channels and time)")
    bars.set_title("By frequency band")

    grid = s.band_attributions.sum(axis=2).mean(axis=0)  # (bands, T)
    top = float(np.abs(grid).max()) or 1.0
    step = (ms[1] - ms[0]) if len(ms) > 1 else 1.0
    image = tf.imshow(
        grid, aspect="auto", cmap=_DIVERGING, vmin=-top, vmax=top, interpolation="nearest", origin="lower",
        extent=(ms[0] - step / 2, ms[-1] + step / 2, -0.5, len(names) - 0.5),
    )  # fmt: skip
    tf.set_yticks(range(len(names)), [n.replace("\n", " ") for n in names], fontsize="small")
    tf.set_xlabel("Time from stimulus onset (ms)")
    tf.set_ylabel("Frequency band")
    tf.set_title("Integrated gradients by band and time")
    fig.colorbar(image, ax=tf, label=_IG_PER_SAMPLE)
    return fig


# ---------------------------------------------------------------------------------------------- retrieval


def _matrix(fn: str, name: str, value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    a = np.asarray(value, dtype=np.float64)
    if a.ndim != 2 or 0 in a.shape:
        raise ValueError(f"{fn}: {name} must be a non-empty 2-d (n, d) array, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{fn}: {name} must be finite, got NaN or inf")
    return a


def _unit_rows(a: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (a zero row stays 0): the cosine that retrieval_topk ranks by. The
    grid centred them first, so for embeddings not centred already (decode centres its own) it ranked
    by another score than the rank it printed."""
    norm = np.linalg.norm(a, axis=1, keepdims=True)
    return a / np.where(norm > 0, norm, 1.0)


def _image(fn: str, images: Any, i: int) -> np.ndarray:
    """Gallery image i as an (H, W[, 3]) array for imshow: a path (read with PIL), or a row of an
    (n, H, W[, 3]) / (n, 3, H, W) array or tensor."""
    item = images[i]
    if isinstance(item, (str, os.PathLike)):
        from PIL import Image

        with Image.open(item) as im:
            return np.asarray(im.convert("RGB"))
    if hasattr(item, "detach"):
        item = item.detach().cpu().numpy()
    a = np.asarray(item)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] != 3):
        raise ValueError(
            f"{fn}: images[{i}] must be a path or an (H, W), (H, W, 3) or (3, H, W) image, got {a.shape}"
        )
    if a.dtype.kind == "f":
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return a


def plot_retrieval_grid(
    brain_emb: Any,
    image_emb: Any,
    images: Sequence[Any] | Any,
    *,
    targets: Sequence[int] | None = None,
    trials: Sequence[int] | None = None,
    k: int = 5,
    labels: Sequence[str] | None = None,
) -> Figure:
    """EEG trials -> their top-k images: one row per trial, the gallery images ranked by cosine similarity
    of the embeddings as given (as :func:`fastalign.eval.retrieval_topk` scores them; ties after the
    correct image), the correct image framed in green; when it is not among the k best, one more column
    shows it with its rank.

    Args:
        brain_emb: (N, d) brain embeddings (e.g. a Decoder's outputs for the test trials).
        image_emb: (G, d) the gallery's image embeddings.
        images: G gallery images: paths, or an (G, H, W[, 3]) / (G, 3, H, W) array or tensor.
        targets: N correct gallery indices (default: trial i's image is image i).
        trials: the trials drawn (default the first min(N, 5)).
        k: images per row.
        labels: G names for the images (e.g. concepts), shown under each.

    Raises:
        TypeError, ValueError: embeddings of other sizes, NaN, out-of-range targets or trials, k too
            large for the gallery, a wrong number of images or labels.
    """
    fn = "plot_retrieval_grid"
    brain = _matrix(fn, "brain_emb", brain_emb)
    gallery = _matrix(fn, "image_emb", image_emb)
    if brain.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"{fn}: brain_emb and image_emb must have the same size d, got {brain.shape[1]} and "
            f"{gallery.shape[1]}"
        )
    n, g = len(brain), len(gallery)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= g:
        raise ValueError(f"{fn}: k must be an int in [1, {g}] (the gallery's size), got {k!r}")
    if len(images) != g:
        raise ValueError(f"{fn}: images must hold the {g} gallery images, got {len(images)}")
    if labels is not None and (isinstance(labels, str) or len(labels) != g):
        raise ValueError(f"{fn}: labels must hold {g} names (one per gallery image), got {labels!r}")
    if targets is None:
        if n > g:
            raise ValueError(
                f"{fn}: targets=None means trial i shows image i, but there are {n} trials for {g} images"
            )
        target = np.arange(n)
    else:
        target = np.asarray(targets)
        if target.shape != (n,) or target.dtype.kind not in "iu" or (target < 0).any() or (target >= g).any():
            raise ValueError(f"{fn}: targets must be {n} ints in [0, {g}), got {targets!r}")
    rows = np.arange(min(n, 5)) if trials is None else np.asarray(trials)
    if (
        rows.ndim != 1
        or rows.size == 0
        or rows.dtype.kind not in "iu"
        or (rows < 0).any()
        or (rows >= n).any()
    ):
        raise ValueError(f"{fn}: trials must be a non-empty list of ints in [0, {n}), got {trials!r}")

    scores = _unit_rows(brain[rows]) @ _unit_rows(gallery).T  # (rows, G)
    # the rank as retrieval_topk counts it: images scoring at least as high as the correct one
    correct_scores = scores[np.arange(len(rows)), target[rows]]
    ranks = (scores >= correct_scores[:, None]).sum(axis=1)
    # ties against the trial here too: the correct image after every image scoring as high, so it never
    # shows in the top-k columns as "correct" while its rank puts it past them
    is_correct = np.zeros_like(scores, dtype=bool)
    is_correct[np.arange(len(rows)), target[rows]] = True
    order = np.lexsort((is_correct, -scores), axis=1)
    extra = bool((ranks > k).any())
    ncols = k + int(extra)
    fig = Figure(figsize=(1.7 * ncols + 0.8, 1.9 * len(rows)), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.subplots(len(rows), ncols, squeeze=False)
    for r, trial in enumerate(rows):
        t = int(target[trial])
        shown = [int(i) for i in order[r, :k]]
        if ranks[r] > k:
            shown.append(t)
        for c, ax in enumerate(grid[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"top {c + 1}" if c < k else "correct image", fontsize="small")
            if c >= len(shown):
                ax.set_axis_off()
                continue
            idx = shown[c]
            picture = _image(fn, images, idx)
            ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None)
            name = f"#{idx}" if labels is None else str(labels[idx])
            score = f"{scores[r, idx]:.2f}"
            if idx == t:
                ax.add_patch(Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False, edgecolor=_CORRECT,
                                       linewidth=5, clip_on=False, gid="correct"))  # fmt: skip
                rank = "correct" if c < k else f"correct, rank {ranks[r]}"
                ax.set_xlabel(
                    f"{name}\n{score} ({rank})", color=_CORRECT, fontsize="small", fontweight="bold"
                )
            else:
                ax.set_xlabel(f"{name}\n{score}", fontsize="small")
        grid[r][0].set_ylabel(f"EEG trial {int(trial)}\n(rank {ranks[r]})", fontsize="small")
    fig.suptitle(f"Top-{k} retrieved images per EEG trial (cosine similarity; correct image framed)")
    return fig


# ---------------------------------------------------------------------------------------------- top-k bars


def _load_summary(fn: str, name: str, value: Any) -> Mapping[str, Any]:
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        if os.path.isdir(path):
            path = os.path.join(path, "summary.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{fn}: results[{name!r}]: {path!r} does not exist")
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    if not isinstance(value, Mapping):
        raise TypeError(
            f"{fn}: results[{name!r}] must be a summary dict, a summary.json or a run folder, got "
            f"{type(value).__name__}"
        )
    return value


def _topk_rows(fn: str, results: Any) -> list[dict[str, Any]]:
    """(model, summary) rows from a dict label -> summary / path, or rows with a "model" key."""
    if isinstance(results, Mapping):
        return [{"model": str(k), **_load_summary(fn, str(k), v)} for k, v in results.items()]
    if isinstance(results, Iterable) and not isinstance(results, (str, bytes)):
        rows = [dict(r) if isinstance(r, Mapping) else r for r in results]
        for i, r in enumerate(rows):
            if not isinstance(r, dict) or "model" not in r:
                raise ValueError(f"{fn}: results row {i} must be a dict with a 'model' key, got {r!r}")
        return rows
    raise TypeError(f"{fn}: results must be a dict label -> summary or a list of row dicts, got {results!r}")


def plot_topk_bars(
    results: Mapping[str, Any] | Iterable[Mapping[str, Any]],
    *,
    ks: Sequence[int] = (1, 3, 5),
    baseline: str | None = None,
    concept: bool = False,
) -> Figure:
    """Top-k retrieval accuracy (%) of several image models, grouped by k, with chance.

    Args:
        results: label -> decode's summary (a dict, its summary.json or the run folder), or rows with
            ``model``, ``top{k}`` and ``chance`` (``{"top{k}": k / n_gallery}``, or ``n_gallery``); a
            ``top{k}_sem`` (several seeds) draws an error bar.
        ks: the k of each group.
        baseline: a label drawn in black (e.g. the unaligned model).
        concept: use the concept-level numbers (``concept_top{k}``, ``concept_chance``).

    Raises:
        TypeError, ValueError, FileNotFoundError: no rows, a row without ``top{k}`` or chance, bad ks.
    """
    fn = "plot_topk_bars"
    rows = _topk_rows(fn, results)
    if not rows:
        raise ValueError(f"{fn}: results has no rows")
    if isinstance(ks, (str, bytes)) or not ks or not all(isinstance(k, int) and k >= 1 for k in ks):
        raise ValueError(f"{fn}: ks must be a non-empty sequence of ints >= 1, got {ks!r}")
    prefix = "concept_top" if concept else "top"
    chance_key = "concept_chance" if concept else "chance"
    models = [str(r["model"]) for r in rows]
    if len(set(models)) != len(models):
        raise ValueError(f"{fn}: results has repeated model labels {models}")
    styles = model_styles(models, baseline)
    width = 0.8 / len(rows)
    fig, (ax,) = _figure(1, 1, width=max(4.6, 1.1 * len(ks) * max(1, len(rows)) ** 0.5 + 2.0), height=3.6)
    for j, row in enumerate(rows):
        for i, k in enumerate(ks):
            key = f"{prefix}{k}"
            if key not in row:
                raise ValueError(f"{fn}: results row {row['model']!r} has no {key!r} (it has {sorted(row)})")
            value = 100 * float(row[key])
            x = i - 0.4 + width * (j + 0.5)
            style = styles[row["model"]]
            ax.bar(x, value, width * 0.92, color=style["color"], hatch=style["hatch"], edgecolor="black",
                   linewidth=0.6, label=row["model"] if i == 0 else f"_{row['model']}",
                   gid=f"{row['model']} top{k}")  # fmt: skip
            sem = row.get(f"{key}_sem")
            if sem is not None and float(sem) > 0:
                ax.errorbar(
                    x, value, yerr=100 * float(sem), fmt="none", ecolor="black", capsize=3, label="_sem"
                )
    for i, k in enumerate(ks):
        level = 100 * _chance(fn, rows[0], chance_key, k, prefix)
        for row in rows[1:]:
            if not math.isclose(100 * _chance(fn, row, chance_key, k, prefix), level, rel_tol=1e-9):
                warnings.warn(
                    f"{fn}: the rows have different chance levels for top-{k} (gallery sizes)", stacklevel=2
                )
        ax.plot([i - 0.45, i + 0.45], [level, level], color=_CHANCE, linestyle="--", linewidth=1.4,
                label="chance" if i == 0 else "_chance", gid=f"chance top{k}")  # fmt: skip
    ax.set_xticks(range(len(ks)), [f"top-{k}" for k in ks])
    ax.set_xlabel("Retrieval criterion" + (" (concept level)" if concept else ""))
    ax.set_ylabel("Test trials retrieved (%)")
    ax.set_ylim(bottom=0.0)
    n_gallery = rows[0].get("n_gallery")
    ax.set_title(f"Zero-shot retrieval among {n_gallery} test images" if n_gallery else "Zero-shot retrieval")
    handles, names = ax.get_legend_handles_labels()
    last = [names.index("chance")]  # the models first, in the results' order
    order = [i for i in range(len(names)) if i not in last] + last
    ax.legend([handles[i] for i in order], [names[i] for i in order], fontsize="small")
    return fig


def _chance(fn: str, row: Mapping[str, Any], key: str, k: int, prefix: str) -> float:
    chance = row.get(key)
    if isinstance(chance, Mapping) and f"top{k}" in chance:
        return float(chance[f"top{k}"])
    if prefix == "top" and row.get("n_gallery"):
        return k / float(row["n_gallery"])
    raise ValueError(
        f"{fn}: results row {row.get('model')!r} has no chance level for top-{k} ({key!r} with 'top{k}', or "
        "'n_gallery')"
    )
