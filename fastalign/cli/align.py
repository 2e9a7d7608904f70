"""``fastalign align``: :func:`fastalign.train.align` (ReAlnet, ReAlnet-fMRI)."""

from __future__ import annotations

import argparse
from typing import Any

from fastalign.cli.common import (
    CLI_ONLY,
    Command,
    TimeWindow,
    add_device,
    add_image_size,
    add_progress,
    add_resume_overwrite,
    add_seed,
    add_subjects,
    count_or_none,
    folder_path,
    int_or_none,
    nonnegative_int,
    nonnegative_real,
    number,
    positive_int,
    positive_real,
    rank0,
    share,
)


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset folder (image_set/, preprocessed_data/, fmri/)")
    add_subjects(p, "subject number(s), or 'all': one run folder OUT/sub-XX each (default 1)")
    p.add_argument("--modality", choices=("eeg", "fmri"), default="eeg", help="default eeg (ReAlnet)")
    p.add_argument(
        "--out", type=folder_path, required=True, help="run folder (for several subjects: their parent)"
    )
    p.add_argument(
        "--weights",
        help="starting CORnet-S checkpoint (cornet_s-1d3f7974.pth) or a ReAlnet; "
        "default: a randomly initialised CORnet-S",
    )
    p.add_argument("--epochs", type=positive_int, default=25, help="default 25")
    p.add_argument("--lr", type=positive_real, default=2e-5, help="Adam's learning rate (default 2e-5)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="global batch size (default 16)")
    p.add_argument(
        "--beta",
        type=nonnegative_real,
        default=100.0,
        help="weight of the brain terms (default 100; 0: fine-tuning without the brain)",
    )
    add_image_size(p)
    add_seed(p)
    p.add_argument("--control", choices=("unpaired",), help="pair images with other images' responses")
    p.add_argument("--val-fraction", type=share, default=0.1, help="validation share (default 0.1)")
    p.add_argument("--target", choices=("hard", "soft"), default="hard", help="teacher target (default hard)")
    p.add_argument(
        "--contrast",
        choices=("differentiable", "published"),
        default="differentiable",
        help="C with gradient (default) or without, as published",
    )
    p.add_argument(
        "--channels",
        nargs="+",
        default=["occipito-parietal"],
        metavar="NAME",
        help="EEG channels: occipito-parietal (default), all, or names",
    )
    p.add_argument(
        "--time-window",
        nargs=2,
        type=float,
        action=TimeWindow,
        default=(0.0, 0.2),
        metavar=("TMIN", "TMAX"),
        help="EEG samples in [TMIN, TMAX) seconds (default 0 0.2)",
    )
    p.add_argument("--rois", nargs="+", metavar="ROI", help="fMRI ROIs to keep (default: all voxels)")
    p.add_argument("--pca", type=int_or_none, default=1024, help="fMRI components, or none (default 1024)")
    p.add_argument(
        "--clip-grad-norm",
        type=positive_real,
        metavar="MAX",
        help="clip the gradients' total 2-norm to MAX before each step (default: no clipping, as published)",
    )
    p.add_argument(
        "--keep-checkpoints",
        type=count_or_none,
        default=1,
        metavar="N",
        help="the newest epoch checkpoints to keep for --resume (default 1; 0: none; none: all)",
    )
    p.add_argument(
        "--amp",
        choices=("auto", "bf16", "fp16", "fp32"),
        default="fp32",
        help="default fp32, as published (auto: bf16 autocast where the device computes it natively)",
    )
    p.add_argument("--num-workers", type=nonnegative_int, default=0, help="DataLoader workers (default 0)")
    add_device(p)
    add_progress(p)
    add_resume_overwrite(p)


def _run(args: argparse.Namespace) -> int:
    from fastalign.train import align

    kwargs = {k: v for k, v in vars(args).items() if k not in (*CLI_ONLY, "data", "subject")}
    channels = args.channels
    kwargs["channels"] = channels[0] if channels in (["occipito-parietal"], ["all"]) else channels
    kwargs["time_window"] = tuple(args.time_window)
    results = align(args.data, args.subject, **kwargs)
    if rank0():
        for r in results if isinstance(results, list) else [results]:
            print(describe(r.subject, r.run.path, r.summary))
        if args.weights is None and args.control is None:  # a control run is the comparison it names
            print(RANDOM_START_NOTE)
    return 0


#: Printed after a run from a random CORnet-S: its "unaligned" numbers are not a trained network's.
RANDOM_START_NOTE = (
    "note: this run started from a random CORnet-S (no --weights), whose BatchNorm statistics fit no "
    "images, so its unaligned test RSA is no trained network's and training can move it either way; the "
    "gain due to the brain is the gain over the same run with --control unpaired or --beta 0 (or start "
    "from weights: docs/training.md)"
)


def describe(subject: int, path: str, summary: dict[str, Any]) -> str:
    """One line per aligned subject: the best epoch and the test RSA before and after."""
    return (
        f"sub-{subject:02d} {path}: best epoch {summary['best_epoch']} of {summary['epochs_run']}, "
        f"val loss {number(summary['best_val_loss'])}; test RSA IT {number(summary.get('test_rsa_it'))} "
        f"(unaligned {number(summary.get('unaligned_test_rsa_it'))}), predicted response "
        f"{number(summary.get('test_rsa_response'))} "
        f"(unaligned {number(summary.get('unaligned_test_rsa_response'))})"
    )


COMMAND = Command(
    "align",
    "train ReAlnet / ReAlnet-fMRI: CORnet-S aligned to one person's brain",
    (
        "fastalign align --data data/synth --subject 1 --out runs/sub01 --epochs 5 --image-size 64",
        "fastalign align --data things --subject all --out runs/realnet --weights cornet_s-1d3f7974.pth",
        "torchrun --nproc-per-node 2 -m fastalign align --data data/synth --subject 1 --out runs/ddp",
    ),
    _arguments,
    _run,
)
