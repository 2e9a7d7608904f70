"""Does a CORnet-S aligned to a person's EEG make a better image model for decoding that person's EEG?

The larger run that docs/decoding.md reports ("What is shown"), on a synthetic brain bigger than the
test suite's: one subject, 256 training images (64 concepts x 4), 50 test images, 32 px, 2 EEG sessions.
From one start, a random CORnet-S whose BatchNorm statistics are set from the training images (the
stand-in for pretrained weights: fastalign never downloads), it aligns ReAlnet to the subject's EEG and
trains the unpaired control (the same training with each image paired with another image's EEG). Then an
encoder is trained to retrieve the test images from the subject's EEG against each image model's
embeddings, over several seeds: the true features of the synthetic brain (the ceiling), CORnet-S IT
(the start), ReAlnet IT and its EEG-predicting head ("response"), and the control's IT and head.

This is a study, not a speed benchmark: its JSON (settings, every run's summary, the means and SEMs, the
time taken) goes to ``benchmarks/results/studies/``, which render.py does not render.

    python benchmarks/study_decoding.py                    # ~7 minutes on a 2-core CPU
    python benchmarks/study_decoding.py --quick --no-save  # a smoke run at toy sizes
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import study

from fastalign.train import decode

FULL = {
    "data": dict(n_train_concepts=64, images_per_concept=4, n_test=50, n_subjects=1, n_sessions=2,
                 test_repetitions=10, image_size=32),
    "align": dict(epochs=5, batch_size=16, lr=3e-4, image_size=32, amp="fp32"),
    "decode": dict(encoder="mlp", encoder_options=dict(hidden=64, n_blocks=0, dropout=0.5), epochs=30,
                   batch_size=32, lr=1e-3, image_size=32, amp="fp32"),
    "seeds": [0, 1, 2, 3, 4],
}  # fmt: skip
QUICK = {
    "data": dict(n_train_concepts=8, images_per_concept=2, n_test=10, n_subjects=1, n_sessions=1,
                 test_repetitions=4, image_size=32),
    "align": dict(epochs=1, batch_size=8, lr=3e-4, image_size=32, amp="fp32"),
    "decode": dict(encoder="mlp", encoder_options=dict(hidden=16, n_blocks=0, dropout=0.5), epochs=2,
                   batch_size=8, lr=1e-3, image_size=32, amp="fp32"),
    "seeds": [0, 1],
}  # fmt: skip


def image_models(root: str, weights: str) -> dict[str, dict[str, Any]]:
    """Name -> decode()'s image-model arguments, for the runs under ``root``."""
    return {
        "true features (ceiling)": dict(image_model="features"),
        "CORnet-S IT (the start)": dict(image_model="cornet_s", weights=weights,
                                         layer="IT"),
        "ReAlnet IT": dict(image_model=os.path.join(root, "realnet"), layer="IT"),
        "ReAlnet response": dict(image_model=os.path.join(root, "realnet"), layer="response"),
        "control IT": dict(image_model=os.path.join(root, "control"), layer="IT"),
        "control response": dict(image_model=os.path.join(root, "control"), layer="response"),
    }  # fmt: skip


def run(settings: dict[str, Any], root: str) -> dict[str, Any]:
    """The study into ``root``: data, start, the two alignments, the decoders; its results."""
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    data, weights = study.synthetic_start(root, settings["data"])
    seconds["data and start"] = time.perf_counter() - start

    start = time.perf_counter()
    runs = study.align_pair(data.root, 1, root, weights, settings["align"])
    aligned = {name: study.numbers(result.summary) for name, result in runs.items()}
    seconds["align"] = time.perf_counter() - start

    start = time.perf_counter()
    decoded = {}
    for name, kw in image_models(root, weights).items():
        folder = os.path.join(root, "decode", name.split()[0] + "_" + name.split()[1])
        s = decode(
            data.root, 1, out=folder, seed=settings["seeds"], progress=False, **settings["decode"], **kw
        )
        decoded[name] = {
            k: s.summary[k] for k in ("top1", "top3", "top5", "top1_sem", "top3_sem", "top5_sem", "per_seed")
            if k in s.summary
        }  # fmt: skip
        chance, n_gallery = s.summary["chance"], s.summary["n_gallery"]
    seconds["decode"] = time.perf_counter() - start
    return {"align": aligned, "decode": decoded, "chance": chance, "n_gallery": n_gallery, "seconds": seconds}


def table(results: dict[str, Any], settings: dict[str, Any]) -> str:
    """The markdown table docs/decoding.md shows."""
    rows = [
        f"| image model (test means +- SEM over {len(settings['seeds'])} seeds) | top-1 | top-3 | top-5 |",
        "|---|---|---|---|",
    ]
    chance = results["chance"]
    rows.append(f"| chance ({results['n_gallery']} images) | "
                + " | ".join(f"{chance[k]:.3f}" for k in ("top1", "top3", "top5")) + " |")  # fmt: skip
    for name, d in results["decode"].items():
        cells = [f"{d[k]:.3f} +- {d.get(k + '_sem', math.nan):.3f}" for k in ("top1", "top3", "top5")]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    study.main("decoding", __doc__, FULL, QUICK, run, table)
