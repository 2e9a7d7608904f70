"""``fastalign demo``: the library's main job in one command, on the embedded synthetic brain (:func:`demo`).

Stages, each timed, with progress on standard error:

1. ``data``: a synthetic THINGS-EEG2 with two subjects (:func:`fastalign.data.make_synthetic_things`):
   small images, raw EEG recordings and their preprocessed files, from a known brain.
2. ``start``: a randomly initialised CORnet-S whose BatchNorm statistics are calibrated on the training
   images (:func:`fastalign.models.calibrate_batchnorm`), the stand-in for pretrained weights
   (nothing is downloaded).
3. ``align``: ReAlnet, CORnet-S aligned to subject 1's EEG, and the unpaired control (the same training
   with each image paired with another image's EEG), from the same start (:func:`fastalign.train.align`).
4. ``evaluate``: RSA of CORnet-S, ReAlnet and the control with both subjects' test EEG at every time
   point and layer, with cluster statistics (:func:`fastalign.eval.evaluate`).
5. ``decode``: a NICE encoder trained to retrieve the test images from subject 1's EEG, against the
   embeddings of CORnet-S, of ReAlnet, and of the brain's true features, the ceilings
   (:func:`fastalign.train.decode`).
6. ``report``: figures (:mod:`fastalign.plotting`), ``report.html`` and ``summary.json``
   (:func:`fastalign.eval.write_report`).

``OUT`` then holds ``data/``, ``cornet_s.pth`` (the start), ``runs/realnet`` and ``runs/control`` (run
folders of align, without resumable checkpoints), ``evaluation/`` (results.csv, stats.json, ...),
``decoding/<image model>/`` (run folders of decode), ``figures/``, ``report.html`` and ``summary.json``.
Everything is built in a new folder beside ``OUT`` that takes its place only when complete (a failure or
an interrupt leaves ``OUT`` as it was); the configs inside record the paths where they were built.

Everything is a function of ``seed``: the same seed gives the same numbers on the same machine, versions
and number of threads (``torch.set_num_threads``; sums in another order differ in the last bits).
``--quick`` runs the same stages at sizes too small to show an effect, to check an installation in under
two minutes (docs/benchmarks.md has the measured times).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastalign.cli.common import Command, add_device, add_progress, add_seed, folder_path

_FN = "demo"


@dataclass(frozen=True)
class DemoSettings:
    """The sizes and training settings of a demo run.

    Attributes:
        n_train_concepts, images_per_concept, n_test, n_sessions, test_repetitions, raw_sfreq,
            image_size: the synthetic dataset (:func:`fastalign.data.make_synthetic_things`).
        align_epochs, align_batch_size, align_lr: ReAlnet's training (:func:`fastalign.train.align`).
        decode_epochs, decode_batch_size, decode_val_fraction: NICE's training and the share of its
            training images held out to select the epoch (:func:`fastalign.train.decode`).
        permutations: sign flips per cluster test (:func:`fastalign.eval.evaluate`).
    """

    n_train_concepts: int
    images_per_concept: int
    n_test: int
    n_sessions: int
    test_repetitions: int
    raw_sfreq: float
    image_size: int
    align_epochs: int
    align_batch_size: int
    align_lr: float
    decode_epochs: int
    decode_batch_size: int
    decode_val_fraction: float
    permutations: int


#: ``fastalign demo``: within 10 minutes on a 2-core CPU (docs/benchmarks.md has the measured times).
FULL = DemoSettings(
    n_train_concepts=16,
    images_per_concept=4,
    n_test=30,
    n_sessions=2,
    test_repetitions=10,
    raw_sfreq=1000.0,
    image_size=32,
    align_epochs=5,
    align_batch_size=16,
    align_lr=3e-4,
    decode_epochs=30,
    decode_batch_size=16,
    decode_val_fraction=0.1,  # 6 of the 64 training images
    permutations=10000,
)
#: ``fastalign demo --quick``: the same stages at sizes too small to show an effect.
QUICK = DemoSettings(
    n_train_concepts=8,
    images_per_concept=2,
    n_test=12,
    n_sessions=1,
    test_repetitions=4,
    raw_sfreq=250.0,
    image_size=32,
    align_epochs=1,
    align_batch_size=8,
    align_lr=1e-4,
    # 20 steps (12 training images in 2 full batches, 10 epochs): at 6 (3 epochs) NICE's BatchNorm running
    # statistics had not left their start, every test trial ranked the gallery alike and decode warned of
    # it (retrieval exactly at chance); batches of 8 were 1 step an epoch once the short one was dropped
    decode_epochs=10,
    decode_batch_size=6,
    # 4 of the 16 training images: decode's default 0.1 held out 1, whose InfoNCE (one candidate) is 0
    # every epoch, so the best epoch was chosen on a constant
    decode_val_fraction=0.25,
    permutations=1000,
)
N_SUBJECTS = 2
#: The subject the models are aligned to and decoded from.
SUBJECT = 1
#: The names the models have in the tables, and in the printed summary.
MODELS = {"cornet_s": "CORnet-S", "realnet": "ReAlnet", "control": "control"}
#: The image models of the decoding stage: their run folder name and label.
IMAGE_MODELS = {"cornet_s": "CORnet-S IT", "realnet": "ReAlnet IT", "features": "true features"}
#: What each model's gains are measured against: CORnet-S (the start) and, for ReAlnet, the control too
#: (the same training with images paired with other images' EEG: the only baseline of the "response" layer).
BASELINES = {"cornet_s": (), "realnet": ("cornet_s", "control"), "control": ("cornet_s",)}
#: The layers of the printed RSA table (summary.json has every layer).
PRINTED_LAYERS = ("V1", "IT", "response")
STAGES = ("data", "start", "align", "evaluate", "decode", "report")


@dataclass(frozen=True)
class DemoResult:
    """What :func:`demo` made.

    Attributes:
        out: the output folder.
        summary: summary.json: settings, RSA by layer and model, decoding, time per stage.
        table: the summary as :func:`format_summary` prints it.
    """

    out: str
    summary: dict[str, Any]
    table: str


class _Stages:
    """Times the stages (wall clock, and the CPU time of this process's threads) and shows their progress
    on standard error."""

    def __init__(self, progress: bool) -> None:
        self.progress = progress
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}
        self._start = time.perf_counter()
        self._cpu_start = time.process_time()

    def run(self, name: str, what: str, work: Callable[[], Any]) -> Any:
        i = STAGES.index(name) + 1
        self._say(f"[{i}/{len(STAGES)}] {name}: {what}")
        start, cpu = time.perf_counter(), time.process_time()
        result = work()
        self.seconds[name] = time.perf_counter() - start
        self.cpu_seconds[name] = time.process_time() - cpu
        self._say(f"[{i}/{len(STAGES)}] {name}: done in {self.seconds[name]:.1f} s")
        return result

    def totals(self) -> tuple[float, float]:
        """(wall, CPU) seconds since the first stage began."""
        return time.perf_counter() - self._start, time.process_time() - self._cpu_start

    def _say(self, text: str) -> None:
        if self.progress:
            print(f"fastalign demo {text}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ stages


def demo_data(root: str | os.PathLike[str], settings: DemoSettings, seed: int) -> Any:
    """Stage 1: the synthetic dataset at ``root`` (a :class:`~fastalign.data.SyntheticThings`)."""
    from fastalign.data import make_synthetic_things

    return make_synthetic_things(
        root,
        n_train_concepts=settings.n_train_concepts,
        images_per_concept=settings.images_per_concept,
        n_test=settings.n_test,
        n_subjects=N_SUBJECTS,
        n_sessions=settings.n_sessions,
        test_repetitions=settings.test_repetitions,
        raw_sfreq=settings.raw_sfreq,
        image_size=settings.image_size,
        seed=seed,
    )


def start_model(data_root: str, path: str, image_size: int, seed: int) -> str:
    """Stage 2: a random CORnet-S (seeded) calibrated on the training images, saved as a state dict."""
    import torch

    from fastalign.data import ImageTransform, load_image_metadata, load_images
    from fastalign.models import calibrate_batchnorm, cornet_s

    paths = load_image_metadata(os.path.join(data_root, "image_set")).paths("training")
    images = load_images(paths, ImageTransform(image_size, crop=False))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = cornet_s()
    calibrate_batchnorm(net, images)
    torch.save(net.state_dict(), path)
    return path


def _post_onset(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[float, float]]:
    """(model, layer, subject) -> time -> similarity, for the EEG rows at or after stimulus onset."""
    out: dict[tuple[str, str, str], dict[float, float]] = {}
    for r in rows:
        if r["modality"] == "eeg" and r["time"] >= 0:
            out.setdefault((r["model"], r["layer"], r["subject"]), {})[r["time"]] = r["similarity"]
    return out


def _gain(curve: dict[float, float], base: dict[float, float]) -> dict[str, float]:
    """The mean difference of two curves over time, and the largest one and its time."""
    diff = {t: v - base[t] for t, v in curve.items()}
    at = max(diff, key=diff.__getitem__)
    return {"mean": sum(diff.values()) / len(diff), "max": diff[at], "max_time": at}


def _cluster(stats: Mapping[str, Any], model: str, layer: str) -> dict[str, Any]:
    """The cluster test of ``model`` against CORnet-S at ``layer`` on the EEG of the subject it was aligned
    to: its most significant cluster, or why there is none."""
    key = {"model": model, "layer": layer, "modality": "eeg", "comparison": "within", "test": "vs:cornet_s"}

    def match(record: Mapping[str, Any]) -> bool:
        return all(record.get(k) == v for k, v in key.items())

    clusters = sorted((c for c in stats["clusters"] if match(c)), key=lambda c: c["p"])
    if clusters:
        c = clusters[0]
        return {"t_start": c["t_start"], "t_stop": c["t_stop"], "p": c["p"], "significant": c["significant"]}
    skipped = [s["reason"] for s in stats["skipped"] if match(s)]
    if skipped:
        return {"tested": False, "reason": skipped[0]}
    return {"tested": True, "reason": "no time point above the cluster-forming threshold"}


def rsa_summary(rows: list[dict[str, Any]], stats: Mapping[str, Any]) -> dict[str, Any]:
    """Layer -> model -> each subject's mean RSA after stimulus onset and the model's gains over the other
    models there (``gain`` -> baseline -> mean, largest and its time), and ``cluster``: the cluster test
    of the gain over CORnet-S on the aligned subject's EEG (from ``stats``)."""
    curves = _post_onset(rows)
    subjects = sorted({k[2] for k in curves})
    out: dict[str, Any] = {}
    for layer in dict.fromkeys(k[1] for k in curves):
        present = [m for m in MODELS if (m, layer, subjects[0]) in curves]  # CORnet-S has no "response"
        entry: dict[str, Any] = {}
        for model in present:
            numbers: dict[str, Any] = {}
            for subject in subjects:
                curve = curves[model, layer, subject]
                gains = {b: _gain(curve, curves[b, layer, subject]) for b in BASELINES[model] if b in present}
                numbers[subject] = {"rsa": sum(curve.values()) / len(curve), "gain": gains}
            if "cornet_s" in BASELINES[model] and "cornet_s" in present:
                numbers["cluster"] = _cluster(stats, model, layer)
            entry[model] = numbers
        out[layer] = entry
    return out


# ------------------------------------------------------------------------------------------------ table


def _fmt(value: Any, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _cluster_text(cluster: Mapping[str, Any]) -> str:
    if "p" in cluster:
        ms = f"{1000 * cluster['t_start']:.0f}-{1000 * cluster['t_stop']:.0f} ms"
        return f"{ms}, p = {cluster['p']:.3g}{'' if cluster['significant'] else ' (not significant)'}"
    return ("none: " if cluster.get("tested") else "not tested: ") + cluster["reason"]


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return [
        indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [head, *rows]
    ]


def _rsa_lines(summary: Mapping[str, Any]) -> list[str]:
    own, other = (f"sub-{s:02d}" for s in (SUBJECT, 3 - SUBJECT))
    rows, clusters = [], {}
    for layer in PRINTED_LAYERS:
        for model, numbers in summary["rsa"].get(layer, {}).items():
            cells = [MODELS[model], layer]
            for subject in (own, other):
                gain = numbers[subject]["gain"]
                cells += [_fmt(numbers[subject]["rsa"])]
                cells += [_fmt(gain[b]["mean"], True) if b in gain else "" for b in ("cornet_s", "control")]
            rows.append(cells)
            if "cluster" in numbers:
                clusters[f"{MODELS[model]} {layer}"] = _cluster_text(numbers["cluster"])
    head = ["model", "layer"] + [x for s in (own, other) for x in (s, "vs CORnet-S", "vs control")]
    lines = [
        f"RSA with the EEG: Spearman rho, mean over 0-{1000 * summary['rsa_t_max']:.0f} ms; gains: the model "
        f"minus CORnet-S / the control ({own}: the subject aligned to)",
        *_table(head, rows),
    ]
    reasons = set(clusters.values())
    if len(reasons) == 1 and next(iter(reasons)).startswith("not tested"):  # the same for every row
        reason = reasons.pop()
        lines.append(f"  cluster test of the gain over CORnet-S on {own}: {reason}")
        if "needs at least 2 subjects" in reason:  # one model per subject: the demo aligns one
            lines.append(
                "  (the test runs across subjects: align several with fastalign align --subject all, then "
                "fastalign evaluate them)"
            )
    else:
        lines += [f"  cluster test of the gain over CORnet-S on {own}, {k}: {v}" for k, v in clusters.items()]
    return lines


# how the header names the synthetic images (make_synthetic_things' image_source)
_IMAGE_SOURCES = {
    "photos": ", from photographs",
    "procedural": ", drawn shapes: without scikit-image; the README's numbers are from photographs",
}


def format_summary(summary: Mapping[str, Any]) -> str:
    """The printed summary of a demo run: RSA and its gains (with their cluster tests), decoding, and the
    time each stage took."""
    s = summary["settings"]
    own = f"sub-{SUBJECT:02d}"
    lines = [
        f"fastalign demo{' --quick' if summary['quick'] else ''} (seed {summary['seed']}): CORnet-S aligned "
        f"to {own}'s EEG in a synthetic brain of {N_SUBJECTS} subjects "
        f"({s['n_train_concepts'] * s['images_per_concept']} training, {s['n_test']} test images of "
        f"{s['image_size']} px{_IMAGE_SOURCES.get(summary.get('image_source', ''), '')})",
        "",
        *_rsa_lines(summary),
    ]
    d = summary["decoding"]
    lines += [
        "",
        f"Decoding: NICE on {own}'s EEG, retrieval among the {d['n_gallery']} test images",
        *_table(
            ("image model", "top-1", "top-5"),
            [
                *((IMAGE_MODELS[m], _fmt(v["top1"]), _fmt(v["top5"])) for m, v in d["models"].items()),
                ("chance", _fmt(d["chance"]["top1"]), _fmt(d["chance"]["top5"])),
            ],
        ),
    ]
    at_chance = [IMAGE_MODELS[m] for m, v in d["models"].items() if all(v[k] == d["chance"][k] for k in v)]
    if at_chance:
        lines.append(
            f"  ({', '.join(at_chance)}: exactly at chance in every top-k: a decoder trained this few steps "
            "ranks the gallery alike for every trial; docs/decoding.md)"
        )
    lines.append("")
    t = summary["seconds"]
    lines.append("Time (s): " + ", ".join(f"{k} {t[k]:.1f}" for k in STAGES) + f"; total {t['total']:.1f}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ demo


@dataclass(frozen=True)
class DemoPaths:
    """Where a demo run writes (see the module doc)."""

    root: str

    @property
    def data(self) -> str:
        return os.path.join(self.root, "data")

    @property
    def start(self) -> str:
        return os.path.join(self.root, "cornet_s.pth")

    def run(self, name: str) -> str:
        """The run folder of an aligned model ("realnet", "control")."""
        return os.path.join(self.root, "runs", name)

    @property
    def evaluation(self) -> str:
        return os.path.join(self.root, "evaluation")

    def decoding(self, image_model: str) -> str:
        return os.path.join(self.root, "decoding", image_model)


def align_stage(paths: DemoPaths, settings: DemoSettings, seed: int, **kw: Any) -> dict[str, dict[str, Any]]:
    """Stage 3: ReAlnet and the unpaired control on subject 1, from the calibrated start; their summaries."""
    from fastalign.train import AlignResult, align

    summaries = {}
    for name, control in (("realnet", None), ("control", "unpaired")):
        result = align(
            paths.data, SUBJECT, out=paths.run(name), control=control, weights=paths.start,
            epochs=settings.align_epochs, batch_size=settings.align_batch_size, lr=settings.align_lr,
            image_size=settings.image_size, seed=seed, keep_checkpoints=0, **kw,
        )  # fmt: skip
        assert isinstance(result, AlignResult)  # one subject: one result
        summaries[name] = result.summary
    return summaries


def evaluate_stage(paths: DemoPaths, settings: DemoSettings, seed: int, **kw: Any) -> Any:
    """Stage 4: :func:`fastalign.eval.evaluate` of CORnet-S (the start), ReAlnet and the control."""
    from fastalign.eval import evaluate

    models = ["cornet_s", paths.run("realnet"), paths.run("control")]
    return evaluate(
        paths.data, models, out=paths.evaluation, weights=paths.start, image_size=settings.image_size,
        permutations=settings.permutations, seed=seed, **kw,
    )  # fmt: skip


def decode_stage(paths: DemoPaths, settings: DemoSettings, seed: int, **kw: Any) -> dict[str, dict[str, Any]]:
    """Stage 5: NICE on subject 1's EEG against each image model's embeddings; their summaries."""
    from fastalign.train import decode

    image_models: dict[str, dict[str, Any]] = {
        "cornet_s": {"image_model": "cornet_s", "weights": paths.start},
        "realnet": {"image_model": paths.run("realnet")},
        "features": {"image_model": "features"},
    }
    return {
        name: decode(
            paths.data, SUBJECT, out=paths.decoding(name), epochs=settings.decode_epochs,
            batch_size=settings.decode_batch_size, val_fraction=settings.decode_val_fraction,
            image_size=settings.image_size, seed=seed, **given, **kw,
        ).summary
        for name, given in image_models.items()
    }  # fmt: skip


def figures_stage(folder: str, evaluation: Any, decoding: Mapping[str, Any]) -> dict[str, list[str]]:
    """Stage 6: the evaluation's figures and the retrieval bars, saved under ``folder/figures``."""
    from fastalign.plotting import evaluation_figures, plot_rsa_time_courses, save_figure
    from fastalign.plotting.decoding import plot_topk_bars

    # first the printed table's layers side by side: the figure of the README
    # models named as in the printed tables and the retrieval figure ("CORnet-S", not its run folder's name)
    overview = plot_rsa_time_courses(
        evaluation.rows, evaluation.stats, layers=PRINTED_LAYERS, ncols=3, groups=MODELS
    )
    drawn = {"overview": overview}
    drawn.update(
        evaluation_figures(
            evaluation.rows, evaluation.stats, variability=evaluation.variability or None, groups=MODELS
        )
    )
    labels = {IMAGE_MODELS[k]: v for k, v in decoding.items()}
    drawn["retrieval"] = plot_topk_bars(labels, ks=(1, 5), baseline=IMAGE_MODELS["cornet_s"])
    return {name: save_figure(fig, os.path.join(folder, "figures", name)) for name, fig in drawn.items()}


def demo(
    out: str | os.PathLike[str],
    *,
    quick: bool = False,
    seed: int = 0,
    overwrite: bool = False,
    device: str | None = None,
    progress: bool = True,
) -> DemoResult:
    """Runs the demo's stages into ``out`` (see the module doc) and returns its summary.

    Args:
        out: the output folder: new, empty, or (with ``overwrite``) replaced as a unit when complete.
        quick: the :data:`QUICK` sizes instead of :data:`FULL`.
        seed: seeds the data, the starting weights, the training runs and the statistics.
        overwrite: replace a non-empty ``out``.
        device: where the models run (default: CUDA when available, else the CPU).
        progress: show each stage's progress, and the training's, on standard error.

    Returns:
        A :class:`DemoResult`.

    Raises:
        FileExistsError: ``out`` is a file, not empty without ``overwrite``, or not an earlier demo's
            output (a summary.json) with it.
        TypeError, ValueError: a bad seed or option.
    """
    from fastalign import _checks
    from fastalign.data._io import replacing_dir
    from fastalign.eval import write_report

    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(_checks.message(_FN, "out", "a folder path", out))
    _checks.check_seed(_FN, seed, none=False)
    for name, value in (("quick", quick), ("overwrite", overwrite), ("progress", progress)):
        _checks.check_bool(_FN, name, value)
    final = _checks.check_out_folder(
        _FN, "out", out, overwrite, marker="summary.json", marker_keys=("quick", "settings", "decoding")
    )
    settings = QUICK if quick else FULL
    stages = _Stages(progress)
    n_train = settings.n_train_concepts * settings.images_per_concept
    with replacing_dir(final, manifest=True) as staging:
        paths = DemoPaths(staging)
        kw = {"device": device, "progress": progress}
        own = f"sub-{SUBJECT:02d}"
        things = stages.run(
            "data",
            f"{N_SUBJECTS} synthetic subjects, {n_train} training and {settings.n_test} test images",
            lambda: demo_data(paths.data, settings, seed),
        )
        stages.run(
            "start",
            "a random CORnet-S calibrated on the training images",
            lambda: start_model(paths.data, paths.start, settings.image_size, seed),
        )
        aligned = stages.run(
            "align",
            f"ReAlnet and the unpaired control on {own}'s EEG, {settings.align_epochs} epoch(s) each",
            lambda: align_stage(paths, settings, seed, **kw),
        )
        evaluation = stages.run(
            "evaluate",
            "RSA with both subjects' EEG, cluster statistics",
            lambda: evaluate_stage(paths, settings, seed, **kw),
        )
        decoding = stages.run(
            "decode",
            f"NICE on {own}'s EEG, {settings.decode_epochs} epochs per image model",
            lambda: decode_stage(paths, settings, seed, **kw),
        )
        figures = stages.run("report", "figures", lambda: figures_stage(staging, evaluation, decoding))
        first = decoding["cornet_s"]
        wall, cpu = stages.totals()
        summary = {
            "seed": seed,
            "quick": quick,
            "settings": dataclasses.asdict(settings),
            # photographs with scikit-image installed, else drawn shapes: other images, other numbers
            "image_source": str(things.ground_truth["image_source"]),
            "subject": SUBJECT,
            "rsa_t_max": max(r["time"] for r in evaluation.rows if r["modality"] == "eeg"),
            "rsa": rsa_summary(evaluation.rows, evaluation.stats),
            "align": {
                name: {k: v for k, v in s.items() if isinstance(v, (int, float))}
                for name, s in aligned.items()
            },
            "decoding": {
                "n_gallery": first["n_gallery"],
                "chance": first["chance"],
                "models": {k: {f"top{n}": v[f"top{n}"] for n in (1, 3, 5)} for k, v in decoding.items()},
            },
            "seconds": {**stages.seconds, "total": wall},
            "cpu_seconds": {**stages.cpu_seconds, "total": cpu},
        }
        tables = {"results": os.path.join("evaluation", "results.csv")}
        write_report(staging, tables, evaluation.stats, summary, figures, title="fastalign demo")
        _repoint_paths(staging, final)
    return DemoResult(final, summary, format_summary(summary))


def _repoint_paths(staging: str, final: str) -> None:
    """The run and report configs under ``staging`` name paths inside it (the data a run was aligned on,
    the weights it started from): they are made to name the same files under ``final``, where the folder
    will be (a run's recorded dataset must exist for the checks that read it)."""
    from fastalign.data._io import atomic_write_text

    pairs = [(json.dumps(staging)[1:-1], json.dumps(final)[1:-1])]
    pairs.append((json.dumps(staging, ensure_ascii=False)[1:-1], json.dumps(final, ensure_ascii=False)[1:-1]))
    for folder, _, names in os.walk(staging):
        for name in names:
            if not name.endswith(".json"):
                continue
            path = os.path.join(folder, name)
            with open(path, encoding="utf-8") as f:
                text = f.read()
            new = text
            for old, replacement in pairs:
                new = new.replace(old, replacement)
            if new != text:
                atomic_write_text(path, new)


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out",
        type=folder_path,
        required=True,
        help="the output folder (replaced as a unit; see --overwrite)",
    )
    p.add_argument(
        "--quick", action="store_true", help="toy sizes: checks an installation in under two minutes"
    )
    add_seed(p, "everything is a function of the seed (default 0)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier demo in --out (a folder holding its summary.json)",
    )
    add_device(p)
    add_progress(p)


def _run(args: argparse.Namespace) -> int:
    result = demo(
        args.out, quick=args.quick, seed=args.seed, overwrite=args.overwrite, device=args.device,
        progress=args.progress,
    )  # fmt: skip
    print(result.table)
    print(f"\nreport: {os.path.join(args.out, 'report.html')}")  # the folder as the user named it
    return 0


COMMAND = Command(
    "demo",
    "the whole story on a synthetic brain: align CORnet-S, evaluate with RSA, decode images, report",
    ("fastalign demo --out demo", "fastalign demo --out demo --quick --seed 1 --overwrite"),
    _arguments,
    _run,
)
