"""Decoding figures drawn with Agg and checked for what they show: topomaps place the named electrodes and
scale their colours from the values, the saliency panels plot the saliency's means, the retrieval grid
shows the ranked images with the correct one framed, the top-k bars have the summaries' heights."""

from __future__ import annotations

import json
import os

import matplotlib
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection
from matplotlib.colors import to_hex
from matplotlib.image import AxesImage
from matplotlib.patches import Rectangle

from fastalign.eval.saliency import EEG_BANDS, Saliency
from fastalign.plotting import PALETTE, save_figure
from fastalign.plotting.decoding import (
    plot_retrieval_grid,
    plot_saliency_time_frequency,
    plot_saliency_topomaps,
    plot_topk_bars,
    plot_topomaps,
)

CHANNELS = ("Fz", "C3", "Cz", "C4", "Pz", "O1", "Oz", "O2")


def _render(fig) -> None:
    assert isinstance(fig.canvas, FigureCanvasAgg)
    fig.canvas.draw()


def _axes(fig) -> dict:
    return {ax.get_title(): ax for ax in fig.axes if ax.get_title()}


def _colorbar_labels(fig) -> list[str]:
    return [ax.get_ylabel() for ax in fig.axes if not ax.get_title() and ax.get_ylabel()]


def _saliency(n: int = 3, n_times: int = 50, bands: tuple = EEG_BANDS) -> Saliency:
    rng = np.random.default_rng(0)
    return Saliency(
        grad_cam=rng.random((n, len(CHANNELS), n_times)),
        band_attributions=rng.standard_normal((n, len(bands), len(CHANNELS), n_times)) * 1e-3,
        bands=bands,
        times=np.arange(n_times) / 250.0,
        ch_names=CHANNELS,
        similarity=np.full(n, 0.5),
        baseline_similarity=np.zeros(n),
        convergence_delta=np.zeros(n),
    )


# ---------------------------------------------------------------------------------------------- topomaps


def test_topomaps_place_the_electrodes_and_scale_by_the_values() -> None:
    import matplotlib.pyplot as plt

    figures_before, backend = plt.get_fignums(), matplotlib.get_backend()
    signed = np.linspace(-2.0, 1.0, len(CHANNELS))
    positive = np.arange(1.0, len(CHANNELS) + 1)
    fig = plot_topomaps(
        {"signed": signed, "positive": positive}, CHANNELS, units={"signed": "a", "positive": "b"}
    )
    _render(fig)
    assert plt.get_fignums() == figures_before and matplotlib.get_backend() == backend  # no pyplot state
    axes = _axes(fig)
    assert set(axes) == {"signed", "positive"}
    cases = (("signed", "RdBu_r", (-2.0, 2.0)), ("positive", "viridis", (0.0, float(len(CHANNELS)))))
    for title, cmap, clim in cases:
        (image,) = [a for a in axes[title].get_children() if isinstance(a, AxesImage)]
        assert image.get_cmap().name == cmap
        np.testing.assert_allclose(image.get_clim(), clim)
        # one sensor per channel, placed by the 10-20 montage: Fz in front of Cz, Oz behind it, C3 left
        sensors = [c for c in axes[title].collections if isinstance(c, PathCollection)]
        xy = sensors[0].get_offsets()
        assert len(xy) == len(CHANNELS)
        pos = dict(zip(CHANNELS, np.asarray(xy), strict=True))
        assert pos["Fz"][1] > pos["Cz"][1] > pos["Oz"][1] and pos["C3"][0] < pos["Cz"][0] < pos["C4"][0]
    assert sorted(_colorbar_labels(fig)) == ["a", "b"]


def test_topomaps_refuse_unknown_channels_and_bad_values() -> None:
    with pytest.raises(ValueError, match=r"no position for channels \['X9'\]"):
        plot_topomaps({"m": np.ones(2)}, ["Oz", "X9"])
    with pytest.raises(ValueError, match=r"maps\['m'\] must have one value per channel, shape \(8,\)"):
        plot_topomaps({"m": np.ones(7)}, CHANNELS)
    with pytest.raises(ValueError, match=r"must be finite"):
        plot_topomaps({"m": np.full(8, np.nan)}, CHANNELS)
    with pytest.raises(ValueError, match=r"montage must be one of"):
        plot_topomaps({"m": np.ones(8)}, CHANNELS, montage="nope")
    with pytest.raises(TypeError, match=r"maps must be a non-empty dict"):
        plot_topomaps({}, CHANNELS)


def test_saliency_topomaps_show_each_method_and_band() -> None:
    s = _saliency(bands=(("slow", 0.0, 10.0), ("fast", 10.0, np.inf)))
    fig = plot_saliency_topomaps(s)
    _render(fig)
    axes = _axes(fig)
    bands = [f"IG {name} ({lo:g}-{hi:g} Hz)" if hi < np.inf else f"IG {name} ({lo:g}+ Hz)" for name, lo, hi in
             s.bands]  # fmt: skip
    assert list(axes) == ["Grad-CAM", "Integrated gradients", *bands]
    for title, method in (("Grad-CAM", "grad_cam"), ("Integrated gradients", "integrated_gradients"),
                          (bands[1], "fast")):  # fmt: skip
        (image,) = [a for a in axes[title].get_children() if isinstance(a, AxesImage)]
        top = np.abs(s.channel_map(method)).max()
        np.testing.assert_allclose(image.get_clim(), (0.0, top) if method == "grad_cam" else (-top, top))


# ---------------------------------------------------------------------------------------------- time, bands


def test_saliency_time_frequency_plots_the_means() -> None:
    s = _saliency()
    fig = plot_saliency_time_frequency(s)
    _render(fig)
    axes = _axes(fig)
    ms = 1000 * s.times
    (ig,) = [
        line
        for line in axes["Integrated gradients over time"].lines
        if line.get_label() == "integrated gradients"
    ]
    np.testing.assert_allclose(ig.get_xdata(), ms)
    np.testing.assert_allclose(ig.get_ydata(), s.integrated_gradients.sum(1).mean(0))
    (cam,) = [line for line in axes["Grad-CAM over time"].lines if line.get_label() == "Grad-CAM"]
    np.testing.assert_allclose(cam.get_ydata(), s.grad_cam.mean(axis=(0, 1)))
    bars = {
        p.get_gid(): p for p in axes["By frequency band"].patches if isinstance(p, Rectangle) and p.get_gid()
    }
    assert sorted(bars) == sorted(f"band {b}" for b in s.band_names)
    for i, name in enumerate(s.band_names):
        np.testing.assert_allclose(bars[f"band {name}"].get_height(), s.band_contributions()[:, i].mean())
        assert to_hex(bars[f"band {name}"].get_facecolor()) == PALETTE[i].lower()
    (grid,) = axes["Integrated gradients by band and time"].images
    np.testing.assert_allclose(grid.get_array(), s.band_attributions.sum(axis=2).mean(axis=0))
    for ax in axes.values():
        assert ax.get_xlabel() and ax.get_ylabel()
    assert "Time from stimulus onset (ms)" in {ax.get_xlabel() for ax in axes.values()}


def test_saliency_figures_refuse_other_objects() -> None:
    with pytest.raises(TypeError, match=r"plot_saliency_time_frequency: saliency must be a .*Saliency"):
        plot_saliency_time_frequency({"grad_cam": np.ones((1, 8, 5))})


# ---------------------------------------------------------------------------------------------- retrieval


def _gallery(scores: np.ndarray, d: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal zero-mean image embeddings, and brain embeddings whose cosine similarity with image j
    is proportional to scores[i, j] (so the ranking is the scores')."""
    g = scores.shape[1]
    rng = np.random.default_rng(1)
    basis = rng.standard_normal((d, g))
    basis -= basis.mean(axis=0)
    q, _ = np.linalg.qr(basis)
    images = q.T  # (g, d), zero-mean rows (the columns of basis were centred)
    return scores @ images, images


def test_retrieval_grid_ranks_images_and_frames_the_correct_one() -> None:
    g = 8
    scores = np.array([
        [9, 8, 7, 6, 5, 4, 3, 2],  # trial 0: its image 0 first
        [9, 7, 8, 6, 5, 4, 3, 2],  # trial 1: its image 1 third
        [9, 8, 2, 7, 6, 5, 4, 3],  # trial 2: its image 2 last (rank 8): shown in an extra column
    ], dtype=float)  # fmt: skip
    brain, gallery = _gallery(scores)
    pictures = np.stack([np.full((4, 4, 3), 30 * j, dtype=np.uint8) for j in range(g)])  # image j: grey 30 j
    fig = plot_retrieval_grid(brain, gallery, pictures, k=5, labels=[f"img{j}" for j in range(g)])
    _render(fig)
    grid = np.array(fig.axes).reshape(3, 6)
    framed = [
        (r, c) for r in range(3) for c in range(6) for p in grid[r, c].patches if p.get_gid() == "correct"
    ]
    assert framed == [(0, 0), (1, 2), (2, 5)]
    for r in range(3):  # the images shown are the ranked ones: their grey levels
        order = np.argsort(-scores[r], kind="stable")
        for c in range(5):
            (image,) = grid[r, c].images
            np.testing.assert_array_equal(image.get_array(), 30 * order[c])
            assert grid[r, c].get_xlabel().startswith(f"img{order[c]}\n")
    assert grid[0, 0].get_title() == "top 1" and grid[0, 5].get_title() == "correct image"
    assert not grid[0, 5].axison and not grid[0, 5].images  # nothing beyond the top 5 where it was found
    assert grid[2, 5].get_xlabel().endswith("(correct, rank 8)")
    assert [grid[r, 0].get_ylabel() for r in range(3)] == ["EEG trial 0\n(rank 1)", "EEG trial 1\n(rank 3)",
                                                           "EEG trial 2\n(rank 8)"]  # fmt: skip
    frame = next(p for p in grid[1, 2].patches if p.get_gid() == "correct")
    assert to_hex(frame.get_edgecolor()) == PALETTE[2].lower()


def test_retrieval_grid_ranks_as_retrieval_topk_does_with_its_ties() -> None:
    # the grid centred the embeddings before its cosine, retrieval_topk does not: on embeddings not centred
    # already they ranked by different scores; and a tied correct image showed in the top-k columns
    # labelled "correct" and again, past them, with its rank
    import torch

    from fastalign.eval import retrieval_topk

    rng = np.random.default_rng(3)
    gallery = rng.standard_normal((12, 6)) + 3.0  # far from zero-mean rows
    brain = gallery + rng.standard_normal((12, 6))
    pictures = np.zeros((12, 4, 4, 3), dtype=np.uint8)
    fig = plot_retrieval_grid(brain, gallery, pictures, k=1, trials=list(range(12)))
    ranks = [
        int(fig.axes[r * len(fig.axes) // 12].get_ylabel().split("rank ")[1].rstrip(")")) for r in range(12)
    ]
    top1 = retrieval_topk(torch.from_numpy(brain), torch.from_numpy(gallery), ks=(1,))["top1"]
    assert sum(r == 1 for r in ranks) / 12 == pytest.approx(top1)
    # every score tied: the correct image is never among the top-k columns, only past them
    tied = plot_retrieval_grid(np.ones((4, 3)), np.ones((4, 3)), pictures[:4], k=2, trials=[0])
    labels = [ax.get_xlabel() for ax in tied.axes]
    assert not any("correct" in x for x in labels[:2]) and labels[2].endswith("(correct, rank 4)")


def test_retrieval_grid_reads_image_files(tmp_path) -> None:
    from PIL import Image

    paths = []
    for j in range(5):
        path = os.path.join(tmp_path, f"{j}.png")
        Image.fromarray(np.full((6, 6, 3), 40 * j, dtype=np.uint8)).save(path)
        paths.append(path)
    brain, gallery = _gallery(np.array([[5.0, 4, 3, 2, 1]]), d=8)
    fig = plot_retrieval_grid(brain, gallery, paths, k=3)
    (image,) = fig.axes[1].images
    np.testing.assert_array_equal(image.get_array()[..., 0], 40)  # the second best, image 1
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 5\]"):
        plot_retrieval_grid(brain, gallery, paths, k=6)
    with pytest.raises(ValueError, match=r"images must hold the 5 gallery images"):
        plot_retrieval_grid(brain, gallery, paths[:4])
    with pytest.raises(ValueError, match=r"targets must be 1 ints in \[0, 5\)"):
        plot_retrieval_grid(brain, gallery, paths, targets=[7])
    with pytest.raises(ValueError, match=r"the same size d"):
        plot_retrieval_grid(brain[:, :4], gallery, paths)


# ---------------------------------------------------------------------------------------------- top-k


def _summary(top1: float, top3: float, top5: float, sem: float | None = None) -> dict:
    s = {"top1": top1, "top3": top3, "top5": top5, "n_gallery": 200,
         "chance": {"top1": 1 / 200, "top3": 3 / 200, "top5": 5 / 200}}  # fmt: skip
    if sem is not None:
        s.update({"top1_sem": sem, "top3_sem": sem, "top5_sem": sem})
    return s


def test_topk_bars_have_the_summaries_heights_and_chance(tmp_path) -> None:
    run = os.path.join(tmp_path, "realnet")
    os.makedirs(run)
    with open(os.path.join(run, "summary.json"), "w") as f:
        json.dump(_summary(0.2, 0.4, 0.5), f)
    results = {"cornet_s": _summary(0.1, 0.25, 0.35, sem=0.01), "ReAlnet": run}
    fig = plot_topk_bars(results, baseline="cornet_s")
    _render(fig)
    (ax,) = fig.axes
    bars = {p.get_gid(): p for p in ax.patches if p.get_gid()}
    expected = {"cornet_s": (10.0, 25.0, 35.0), "ReAlnet": (20.0, 40.0, 50.0)}
    for model, heights in expected.items():
        for k, h in zip((1, 3, 5), heights, strict=True):
            np.testing.assert_allclose(bars[f"{model} top{k}"].get_height(), h)
    assert to_hex(bars["cornet_s top1"].get_facecolor()) == "#000000"  # the baseline in black
    assert bars["cornet_s top1"].get_x() < bars["ReAlnet top1"].get_x() < bars["cornet_s top3"].get_x()
    chance = {line.get_gid(): line for line in ax.lines if line.get_gid()}
    for i, k in enumerate((1, 3, 5)):
        np.testing.assert_allclose(chance[f"chance top{k}"].get_ydata(), [100 * k / 200] * 2)
        assert min(chance[f"chance top{k}"].get_xdata()) < i < max(chance[f"chance top{k}"].get_xdata())
    assert len([c for c in ax.containers if type(c).__name__ == "ErrorbarContainer"]) == 3  # cornet_s's SEMs
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["cornet_s", "ReAlnet", "chance"]
    assert ax.get_ylabel() == "Test trials retrieved (%)" and "200 test images" in ax.get_title()
    save_figure(fig, os.path.join(tmp_path, "topk"), formats=("png",))
    assert os.path.getsize(os.path.join(tmp_path, "topk.png")) > 0


def test_topk_bars_refuse_incomplete_rows() -> None:
    with pytest.raises(ValueError, match=r"row 'a' has no 'top3'"):
        plot_topk_bars({"a": {"top1": 0.1, "top5": 0.2, "chance": {"top1": 0.1}}})
    with pytest.raises(ValueError, match=r"no chance level for top-1"):
        plot_topk_bars([{"model": "a", "top1": 0.1, "top3": 0.2, "top5": 0.3}])
    with pytest.raises(FileNotFoundError, match=r"results\['a'\]"):
        plot_topk_bars({"a": "/nonexistent/run"})
    with pytest.raises(ValueError, match=r"ks must be"):
        plot_topk_bars({"a": _summary(0.1, 0.2, 0.3)}, ks=())
