"""Does aligning CORnet-S to each subject's EEG raise its RSA with that subject's EEG significantly, at the
latencies the synthetic brain planted, and does the unpaired control not?

The run docs/evaluation.md reports ("What is shown"): a synthetic brain of 6 subjects (160 training
images, 40 test images, 32 px, 2 EEG sessions; responses planted from 80 to 400 ms), one start (a random
CORnet-S whose BatchNorm statistics are set from the training images: fastalign never downloads), a
ReAlnet aligned to each subject (``align(subject="all")``) and the unpaired control for each, then
``evaluate`` of CORnet-S, the ReAlnets and the controls with the cluster-based sign-flip test of each
model against CORnet-S across the 6 subjects (all 63 flips enumerated: the smallest p is 1/64).

This is a study, not a speed benchmark: its JSON (settings, the clusters, the gains per layer, the
alignment summaries, the time taken) goes to ``benchmarks/results/studies/``, which render.py does not
render.

    python benchmarks/study_evaluate.py                    # ~8 minutes on a quiet 2-core CPU
    python benchmarks/study_evaluate.py --quick --no-save  # a smoke run at toy sizes
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import numpy as np
import study

from fastalign.eval import evaluate

LAYERS = ("V1", "V2", "V4", "IT")

FULL = {
    "data": dict(n_train_concepts=40, images_per_concept=4, n_test=40, n_subjects=6, n_sessions=2,
                 test_repetitions=10, image_size=32),
    "align": dict(epochs=5, batch_size=16, lr=3e-4, image_size=32, amp="fp32"),
    "evaluate": dict(permutations=10000, image_size=32),
}  # fmt: skip
QUICK = {
    "data": dict(n_train_concepts=8, images_per_concept=2, n_test=12, n_subjects=3, n_sessions=1,
                 test_repetitions=4, image_size=32),
    "align": dict(epochs=1, batch_size=8, lr=3e-4, image_size=32, amp="fp32"),
    "evaluate": dict(permutations=100, image_size=32),
}  # fmt: skip


def gains(rows: list[dict[str, Any]], model: str, layer: str, t_max: float) -> dict[str, float]:
    """Each subject's mean within-subject RSA gain of ``model`` over CORnet-S in [0, t_max] s at
    ``layer``: their mean and SEM across subjects."""
    curves: dict[tuple[str, str], dict[float, float]] = {}
    for r in rows:
        if r["modality"] == "eeg" and r["layer"] == layer and 0 <= r["time"] <= t_max:
            if (r["model"], r["comparison"]) in ((model, "within"), ("cornet_s", "none")):
                curves.setdefault((r["model"], r["subject"]), {})[r["time"]] = r["similarity"]
    subjects = sorted({s for m, s in curves if m == model})
    per = [
        float(np.mean([v - curves["cornet_s", s][t] for t, v in curves[model, s].items()])) for s in subjects
    ]
    sem = float(np.std(per, ddof=1) / math.sqrt(len(per))) if len(per) > 1 else math.nan
    return {"mean": float(np.mean(per)), "sem": sem, "per_subject": per}


def run(settings: dict[str, Any], root: str) -> dict[str, Any]:
    """The study into ``root``: data, start, the alignments, the evaluation; its results."""
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    data, weights = study.synthetic_start(root, settings["data"])
    seconds["data and start"] = time.perf_counter() - start

    start = time.perf_counter()
    runs = study.align_pair(data.root, "all", root, weights, settings["align"])
    aligned = {
        name: {f"sub-{r.subject:02d}": study.numbers(r.summary) for r in results}
        for name, results in runs.items()
    }
    seconds["align"] = time.perf_counter() - start

    start = time.perf_counter()
    # one run folder per subject, out/sub-XX: evaluate names each family by its parent folder
    models = ["cornet_s"] + [
        os.path.join(root, name, f"sub-{s:02d}")
        for name in ("realnet", "control")
        for s in range(1, settings["data"]["n_subjects"] + 1)
    ]
    result = evaluate(data.root, models, out=os.path.join(root, "evaluation"), weights=weights, seed=0,
                      progress=False, **settings["evaluate"])  # fmt: skip
    seconds["evaluate"] = time.perf_counter() - start

    t_max = 0.4  # the last planted latency
    out: dict[str, Any] = {"align": aligned, "seconds": seconds, "gains": {}, "clusters": {}}
    for model in ("realnet", "control"):
        for layer in LAYERS:
            key = f"{model} {layer}"
            out["gains"][key] = gains(result.rows, model, layer, t_max)
            out["clusters"][key] = [
                {k: c[k] for k in ("t_start", "t_stop", "p", "significant", "mass")}
                for c in result.stats["clusters"]
                if c.get("model") == model and c.get("layer") == layer and c.get("modality") == "eeg"
                and c.get("comparison") == "within" and c.get("test") == "vs:cornet_s"
            ]  # fmt: skip
    return out


def table(results: dict[str, Any], settings: dict[str, Any]) -> str:
    """The markdown table docs/evaluation.md shows."""
    rows = [
        "| model, layer | RSA gain over CORnet-S, 0-400 ms (mean +- SEM over subjects) "
        "| significant clusters (else the best) |",
        "|---|---|---|",
    ]
    for key, g in results["gains"].items():
        ranked = sorted(results["clusters"][key], key=lambda c: c["p"])
        shown = [c for c in ranked if c["significant"]] or ranked[:1]  # the significant ones, or the best
        text = ", ".join(
            f"{1000 * c['t_start']:.0f}-{1000 * c['t_stop']:.0f} ms (p = {c['p']:.3f})" for c in shown
        )
        if len(ranked) > len(shown):
            text += f"; {len(ranked) - len(shown)} more, p >= {ranked[len(shown)]['p']:.3f}"
        rows.append(f"| {key} | {g['mean']:+.4f} +- {g['sem']:.4f} | {text or 'none'} |")
    return "\n".join(rows)


if __name__ == "__main__":
    study.main("evaluate", __doc__, FULL, QUICK, run, table)
