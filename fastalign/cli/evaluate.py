"""``fastalign evaluate``: :func:`fastalign.eval.evaluate`, then the figures
(:func:`fastalign.plotting.evaluation_figures`) and report.html (:func:`fastalign.eval.write_report`).

The report folder is replaced as a unit: everything is written into a new folder beside ``--out`` that
takes its place only when complete, so a failure or an interrupt leaves the old report as it was. The
feature cache of the old report (``OUT/cache``) is carried over by hard links, so a re-run with
``--overwrite`` does not run the models again for images and weights it has seen.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
from fractions import Fraction
from typing import Any

from fastalign import _checks
from fastalign.cli.common import (
    CLI_ONLY,
    Command,
    TimeWindow,
    add_device,
    add_image_size,
    add_progress,
    add_seed,
    add_subjects,
    folder_path,
    number,
    positive_int,
    probability,
)

_FN = "evaluate"  # main prefixes "fastalign evaluate: error: "
_TABLES = ("results", "variability", "robustness")
# The comparisons printed: each model against its own subject's brain, the unaligned baselines, and the
# models aligned to another modality (across-subject is in the report).
_PRINTED = ("within", "none", "across-modality")


def fraction(text: str) -> float:
    """An argparse type: a number, or a fraction such as ``1/255``."""
    try:
        return float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(
            f"expected a number or a fraction like 4/255, got {text!r}"
        ) from None


def eps_fraction(text: str) -> float:
    """An argparse type: a perturbation size in [0, 1] (pixels in [0, 1]), a fraction such as ``4/255``."""
    value = fraction(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a size in [0, 1] such as 4/255, got {text!r}")
    return value


def step_fraction(text: str) -> float:
    """An argparse type: a PGD step size > 0 (pixels in [0, 1]), a fraction such as ``1/255``."""
    value = fraction(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a step size > 0 such as 1/255, got {text!r}")
    return value


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset folder (image_set/, preprocessed_data/, fmri/)")
    p.add_argument(
        "--models",
        nargs="+",
        required=True,
        metavar="MODEL",
        help="cornet_s and/or run folders of fastalign align (the sub-XX folders of one run are one family) "
        "or weights files of a ReAlnet, whole or its CORnet-S alone (weights/ReAlnet/sub-XX/encoder.pt or "
        "realnet.pt: the subject from the sub-XX folder, the modality from the response size or the folder "
        "above it: ReAlnet EEG, ReAlnet-fMRI fMRI); NAME=FOLDER or NAME=FILE names one (models of one name "
        "are one family); NAME@sub-XX,eeg=FILE gives a file's subject and/or modality (eeg or fmri)",
    )
    p.add_argument(
        "--out",
        type=folder_path,
        required=True,
        help="the report folder (replaced as a unit; see --overwrite)",
    )
    p.add_argument("--modality", nargs="+", choices=("eeg", "fmri"), default=["eeg"], help="default eeg")
    p.add_argument(
        "--weights", help="CORnet-S's weights (cornet_s-1d3f7974.pth); default: random from --seed"
    )
    add_image_size(p)
    p.add_argument(
        "--permutations", type=positive_int, default=10000, help="sign flips per cluster test (default 10000)"
    )
    add_seed(p, "seeds the sign flips, PGD's starts and a random CORnet-S (default 0)")
    add_subjects(p, "subject number(s) to evaluate, or 'all' (default all)", default=None, dest="subjects")
    p.add_argument("--layers", nargs="+", metavar="LAYER", help="default V1 V2 V4 IT avgpool (+ response)")
    p.add_argument("--rois", nargs="+", metavar="ROI", help="fMRI ROIs (default all)")
    p.add_argument(
        "--rdm-method",
        choices=("correlation", "cosine", "euclidean"),
        default="correlation",
        help="model and brain RDMs (default correlation: 1 - Pearson)",
    )
    p.add_argument(
        "--compare",
        choices=("spearman", "pearson", "kendall_tau_a", "rho_a", "cosine"),
        default="spearman",
        help="RDM comparison (default spearman)",
    )
    p.add_argument(
        "--tail",
        type=int,
        choices=(1, -1, 0),
        default=1,
        help="1: greater, -1: less, 0: two-sided (default 1)",
    )
    p.add_argument(
        "--threshold-p", type=probability, default=0.05, help="cluster-forming threshold p (default 0.05)"
    )
    p.add_argument("--alpha", type=probability, default=0.05, help="significance level (default 0.05)")
    p.add_argument(
        "--roi-correction",
        choices=("none", "holm", "fdr_bh"),
        default="none",
        help="fMRI/behaviour t-tests over ROIs and layers: none (each its own p), holm (FWE), fdr_bh",
    )
    p.add_argument(
        "--baseline",
        default="auto",
        help="unaligned model the others are tested against, or none (default auto: cornet_s)",
    )
    p.add_argument(
        "--behaviour-rdm",
        metavar="FILE",
        help="behavioural RDM over the test images: .npy, .csv or .txt, square or condensed",
    )
    p.add_argument(
        "--time-window",
        nargs=2,
        type=float,
        action=TimeWindow,
        metavar=("TMIN", "TMAX"),
        help="EEG samples in [TMIN, TMAX] seconds, both ends included (default all)",
    )
    p.add_argument("--window", type=positive_int, default=1, help="EEG samples per window (default 1)")
    p.add_argument("--step", type=positive_int, default=1, help="EEG samples between windows (default 1)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per forward (default 32)")
    add_device(p, "cuda when available, else cpu")
    p.add_argument(
        "--cache-dir",
        type=folder_path,
        default="auto",
        help="feature cache folder, or none (default auto: OUT/cache, kept across --overwrite)",
    )
    # "--eps -1/255" should get eps_fraction's range message, not "expected at least one argument":
    # argparse reads a token that starts with "-" as an option unless its (private) matcher takes it for a
    # negative number, which knows no fractions
    if isinstance(getattr(p, "_negative_number_matcher", None), re.Pattern):
        p._negative_number_matcher = re.compile(r"^-(\d+|\d*\.\d+)(/\d+)?$")
    robust = p.add_argument_group("adversarial robustness (with --robustness)")
    robust.add_argument(
        "--robustness", metavar="IMAGE_FOLDER", help="labelled images, IMAGE_FOLDER/<class>/<image>"
    )
    robust.add_argument(
        "--eps",
        nargs="+",
        type=eps_fraction,
        metavar="EPS",
        help="L-infinity sizes in [0, 1] pixels, fractions allowed, 0 among them (default 0 1/255 2/255 "
        "4/255 8/255)",
    )
    robust.add_argument("--attacks", nargs="+", choices=("fgsm", "pgd"), help="default fgsm pgd")
    robust.add_argument("--pgd-steps", type=positive_int, help="default 10")
    robust.add_argument("--pgd-step-size", type=step_fraction, help="default 2.5 eps / steps")
    robust.add_argument(
        "--class-index",
        metavar="JSON",
        help="JSON file: class folder -> the models' class index (default: the folders' sorted order)",
    )
    add_progress(p)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the earlier report in --out (a folder holding its summary.json)",
    )


def _behaviour_rdm(path: str | None) -> Any:
    if path is None:
        return None
    import numpy as np

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{_FN}: --behaviour-rdm {path!r} is not a file")
    try:
        if path.lower().endswith(".npy"):
            return np.load(path, allow_pickle=False)
        return np.loadtxt(path, delimiter="," if path.lower().endswith(".csv") else None, ndmin=1)
    except ValueError as exc:
        raise ValueError(f"{_FN}: --behaviour-rdm {path!r} is not a numeric array ({exc})") from None


def _named_behaviour_errors(path: str | None, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """fn(*args, **kwargs), with the API's errors about ``behaviour_rdm`` naming the file it came from."""
    prefix = f"{_FN}: behaviour_rdm: "
    try:
        return fn(*args, **kwargs)
    except (TypeError, ValueError) as exc:
        if path is None or not str(exc).startswith(prefix):
            raise
        raise type(exc)(f"{_FN}: --behaviour-rdm {path!r}: {str(exc)[len(prefix) :]}") from None


def _class_index(path: str | None) -> dict[str, int] | None:
    if path is None:
        return None
    from fastalign.data._io import read_json_object

    return read_json_object(path, f"{_FN}: --class-index (an object: image folder -> class index)")


def _link_or_copy(src: str, dst: str) -> None:
    # the cache's files are only ever replaced by renames, never changed in place: links are safe
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _run(args: argparse.Namespace) -> int:
    from fastalign.data._io import replacing_dir
    from fastalign.eval import evaluate, write_report
    from fastalign.eval.rsa import report_file
    from fastalign.plotting import evaluation_figures

    # what evaluate reads, which replacing the report folder must not delete: the data, run folders,
    # weights, the behavioural RDM, the labelled images and their class index, a cache named by the user
    models = [m if os.path.exists(m) else m.split("=", 1)[-1] for m in args.models if m != "cornet_s"]
    read = [args.data, *models, args.weights, args.behaviour_rdm]
    read += [
        args.robustness,
        args.class_index,
        None if args.cache_dir.lower() in ("auto", "none") else args.cache_dir,
    ]
    out = _checks.check_out_folder(
        _FN, "out", args.out, args.overwrite, marker="summary.json", marker_keys=("baseline", "n_subjects"),
        inputs=[r for r in read if r is not None], known=report_file,
    )  # fmt: skip
    kwargs = {k: v for k, v in vars(args).items() if k not in (*CLI_ONLY, "data", "models", "out")}
    kwargs["behaviour_rdm"] = _behaviour_rdm(args.behaviour_rdm)
    kwargs["class_index"] = _class_index(args.class_index)
    kwargs["modality"] = list(args.modality)
    kwargs["subjects"] = None if args.subjects in (None, "all") else _as_list(args.subjects)
    kwargs["baseline"] = None if args.baseline.lower() == "none" else args.baseline
    kwargs["time_window"] = None if args.time_window is None else tuple(args.time_window)
    kwargs["cache_dir"] = None if args.cache_dir.lower() == "none" else args.cache_dir
    kwargs["overwrite"] = False  # the new report is written into an empty folder
    with replacing_dir(out, manifest=True) as staging:
        old_cache = os.path.join(out, "cache")
        if kwargs["cache_dir"] == "auto" and os.path.isdir(old_cache):
            shutil.copytree(old_cache, os.path.join(staging, "cache"), copy_function=_link_or_copy)
        result = _named_behaviour_errors(
            args.behaviour_rdm, evaluate, args.data, args.models, out=staging, **kwargs
        )
        groups = {label: entry["model"] for label, entry in result.summary.get("robustness", {}).items()}
        figures = evaluation_figures(
            result.rows,
            result.stats,
            variability=result.variability or None,
            robustness=result.robustness or None,
            groups=groups or None,
            baseline=result.stats["baseline"] or "cornet_s",
        )
        tables = {
            name: f"{name}.csv" for name in _TABLES if os.path.isfile(os.path.join(staging, f"{name}.csv"))
        }
        write_report(staging, tables, result.stats, "summary.json", figures)
    print(summary_table(result.summary, result.stats))
    print(f"report: {os.path.join(out, 'report.html')}")
    return 0


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _below(statistic: float) -> str:
    return "below, " if statistic < 0 else ""


def _significant(stats: dict[str, Any], key: dict[str, str]) -> str:
    """The significant clusters (EEG) or ROI tests of one model, layer, modality and comparison."""

    def match(record: dict[str, Any]) -> bool:
        return all(record.get(k) == v for k, v in key.items())

    # a test's direction where a two-sided or lower-tailed test can find either (an aligned model below
    # its baseline is significant too): "below" on such results, nothing on those above
    found = [
        f"{c['test']} {1000 * c['t_start']:.0f}-{1000 * c['t_stop']:.0f} ms "
        f"({_below(c['mass'])}p {c['p']:.3g})"
        for c in stats["clusters"]
        if match(c) and c["significant"]
    ] + [
        f"{t['test']} {t['roi'] or 'rdm'} ({_below(t['statistic'])}p {t['p']:.3g})"
        for t in stats["roi_tests"]
        if match(t) and t["significant"]
    ]
    if found:
        return "; ".join(found)
    skipped = [x["reason"] for x in stats["skipped"] if match(x) and x["test"] == "vs0"]
    if skipped:
        return f"not tested: {skipped[0]}"
    futile = [
        t for t in stats["cluster_tests"] if match(t) and t["test"] == "vs0" and not t["can_reach_alpha"]
    ]
    if futile:
        t = futile[0]
        # the floor 1 / (1 + flips): all 2^n sign flips when enumerated (the subjects limit it), else the
        # flips drawn (--permutations limits it)
        why = (
            f"with {t['n_subjects']} subjects"
            if t["exact"]
            else f"with {t['n_flips']} sign flips drawn (--permutations; {t['n_subjects']} subjects allow "
            f"{2 ** t['n_subjects']})"
        )
        return f"none possible: {why} no p is below {t['min_p']:.3g} (alpha {stats['alpha']:g})"
    return "none"


def summary_table(summary: dict[str, Any], stats: dict[str, Any]) -> str:
    """Per model, modality, comparison and layer: the peak similarity and where it is (time, or ROI), and
    the significant clusters or ROI tests; then each model's robustness."""
    head = ("model", "modality", "comparison", "layer", "peak", "at", "significant")
    lines: list[tuple[str, ...]] = [head]
    for model, entry in summary["models"].items():
        for modality in ("eeg", "fmri", "behaviour"):
            for comparison in _PRINTED:
                for layer, v in entry.get(modality, {}).get(comparison, {}).items():
                    if "peak_similarity" in v:
                        peak, at = number(v["peak_similarity"]), f"{1000 * v['peak_time']:.0f} ms"
                    elif not isinstance(v["similarity"], dict):  # behaviour: one RDM
                        peak, at = number(v["similarity"]), "-"
                    else:
                        rois = {k: x for k, x in v["similarity"].items() if x is not None}
                        best = max(rois, key=rois.__getitem__) if rois else None
                        peak, at = number(rois.get(best)), "n/a" if best is None else best
                    key = {"model": model, "modality": modality, "comparison": comparison, "layer": layer}
                    lines.append((model, modality, comparison, layer, peak, at, _significant(stats, key)))
    widths = [max(len(row[i]) for row in lines) for i in range(len(head) - 1)]
    text = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1] for row in lines
    ]
    robust = summary.get("robustness", {})
    if robust:
        attacks = list(dict.fromkeys(a for v in robust.values() for a in v["relative_accuracy"]))
        text.append("")
        top = 255 * max(v["eps"] for v in robust.values())
        text.append(f"robustness: clean accuracy; accuracy relative to it at eps {top:g}/255")
        for label, v in robust.items():
            rel = "  ".join(f"{a} {number(v['relative_accuracy'].get(a))}" for a in attacks)
            text.append(f"  {label}: clean {number(v['clean_accuracy'])}  {rel}")
    return "\n".join(line.rstrip() for line in text)


COMMAND = Command(
    "evaluate",
    "compare models with brains: RSA over time, ROIs and subjects, statistics, robustness, report",
    (
        "fastalign evaluate --data data/synth --models cornet_s runs/realnet/sub-01 runs/realnet/sub-02 "
        "--out report --image-size 64",
        "fastalign evaluate --data things --models cornet_s runs/realnet/sub-* --out report "
        "--modality eeg fmri --weights cornet_s-1d3f7974.pth --robustness imagenet_val --eps 0 1/255 4/255",
        "fastalign evaluate --data things --models cornet_s weights/ReAlnet/sub-*/realnet.pt "
        "mine@sub-01,fmri=backbone.pt --out report --modality eeg fmri --weights cornet_s-1d3f7974.pth",
    ),
    _arguments,
    _run,
)
