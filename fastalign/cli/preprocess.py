"""``fastalign preprocess``: :func:`fastalign.data.preprocess_things_eeg2`, the published THINGS-EEG2
preprocessing (raw session files -> ``preprocessed_eeg_{training,test}.npy``), for one or more subjects.

``--recipe eeg_encoding`` (default) is THINGS-EEG2's own pipeline (17 occipito-parietal channels, 100 Hz,
-0.2 to 0.8 s, MVNN over time per session); ``--recipe alignvis`` is the decoding papers' (63 channels,
250 Hz, 0 to 1 s, MVNN over epochs with the training partition's covariance). Every setting the recipes
choose can be given on its own (``--sfreq``, ``--channels``, ``--tmax``, ``--crop``, ``--mvnn-dim``,
``--mvnn-covariance``); what is not given follows the recipe. Files a subject already has in the output
folder are replaced only with ``--overwrite`` (as every command that writes; a second recipe into the
same folder would otherwise replace the first without a word): checked for every subject before any is
preprocessed.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any

from fastalign.cli.common import (
    Command,
    add_progress,
    add_seed,
    add_subjects,
    finite_real,
    folder_path,
    int_or_none,
    positive_real,
)
from fastalign.data import PUBLISHED_SEED

_SUBJECT_DIR = re.compile(r"^sub-(\d+)$")


def _float_or_none(text: str) -> float | None:
    """An argparse type: a number, or ``none``."""
    if text.lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def _rate_or_none(text: str) -> float | None:
    """An argparse type: a sampling rate in Hz (> 0), or ``none``."""
    return None if text.lower() == "none" else positive_real(text)


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset folder holding raw_data/sub-XX/ses-YY/")
    add_subjects(p, "subject number(s), or 'all' (every sub-XX of raw_data; default 1)")
    p.add_argument(
        "--out",
        type=folder_path,
        help="where sub-XX/preprocessed_eeg_*.npy go (default DATA/preprocessed_data)",
    )
    p.add_argument(
        "--recipe",
        choices=("eeg_encoding", "alignvis"),
        default="eeg_encoding",
        help="eeg_encoding (THINGS-EEG2's files, default) or alignvis (NICE, AlignVis)",
    )
    p.add_argument("--sessions", nargs="+", type=int, metavar="N", help="session numbers (default all)")
    p.add_argument(
        "--sfreq",
        type=_rate_or_none,
        default=argparse.SUPPRESS,  # absent: the recipe's; "none": no resampling
        help="resampling rate in Hz, or none (recipe: 100 / 250)",
    )
    p.add_argument(
        "--channels",
        nargs="+",
        metavar="CH",
        help="a regex, 'all' (63 channels) or channel names (recipe: '^O *|^P *' / all)",
    )
    p.add_argument("--tmin", type=finite_real, default=-0.2, help="epoch start in seconds (default -0.2)")
    p.add_argument("--tmax", type=finite_real, help="epoch end in seconds (recipe: 0.8 / 1.0)")
    base = p.add_mutually_exclusive_group()
    base.add_argument(
        "--baseline",
        nargs=2,
        type=_float_or_none,
        metavar=("START", "END"),
        help="baseline interval in seconds, none for the epoch's edge (default none 0)",
    )
    base.add_argument("--no-baseline", action="store_true", help="no baseline correction")
    crop = p.add_mutually_exclusive_group()
    crop.add_argument(
        "--crop", nargs=2, type=float, metavar=("START", "END"), help="keep [START, END) s (recipe: - / 0 1)"
    )
    crop.add_argument("--no-crop", action="store_true", help="keep the whole epoch")
    p.add_argument(
        "--mvnn-dim", choices=("time", "epochs"), help="MVNN covariance over (recipe: time / epochs)"
    )
    p.add_argument(
        "--mvnn-covariance",
        choices=("session", "training"),
        help="partitions the MVNN covariance comes from (recipe: session / training)",
    )
    p.add_argument(
        "--training-repetitions",
        type=int_or_none,
        default=2,
        help="repetitions kept per training image and session, or none (default 2)",
    )
    p.add_argument(
        "--test-repetitions",
        type=int_or_none,
        default=20,
        help="repetitions kept per test image and session, or none (default 20)",
    )
    add_seed(p, f"repetition selection and shuffling (default {PUBLISHED_SEED}, the published seed)")
    p.set_defaults(seed=PUBLISHED_SEED)
    p.add_argument(
        "--overwrite", action="store_true", help="replace the subjects' preprocessed files where they exist"
    )
    add_progress(p)


def _subjects(raw_dir: str, chosen: Any) -> list[int]:
    if not os.path.isdir(raw_dir):
        raise FileNotFoundError(f"--data: {raw_dir!r} is not a folder; expected DATA/raw_data/sub-XX/ses-YY/")
    found = sorted(int(m.group(1)) for n in os.listdir(raw_dir) if (m := _SUBJECT_DIR.match(n)))
    if chosen == "all":
        if not found:
            raise FileNotFoundError(f"--subject all: {raw_dir!r} holds no sub-XX folder")
        return found
    subjects = chosen if isinstance(chosen, list) else [chosen]
    missing = [f"sub-{s:02d}" for s in subjects if s not in found]
    if missing:  # before any subject is preprocessed
        held = ", ".join(f"sub-{s:02d}" for s in found) or "no sub-XX folder"
        raise FileNotFoundError(f"--subject: no {', '.join(missing)} in {raw_dir!r}, which holds {held}")
    return subjects


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """preprocess_things_eeg2's keyword arguments: the flags given (the rest follow the recipe)."""
    options: dict[str, Any] = {
        "recipe": args.recipe,
        "tmin": args.tmin,
        "training_repetitions": args.training_repetitions,
        "test_repetitions": args.test_repetitions,
        "seed": args.seed,
    }
    for name in ("sessions", "tmax", "mvnn_dim", "mvnn_covariance"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    if "sfreq" in args:
        options["sfreq"] = args.sfreq
    if args.channels is not None:
        options["channels"] = args.channels[0] if len(args.channels) == 1 else list(args.channels)
    if args.no_baseline:
        options["baseline"] = None
    elif args.baseline is not None:
        options["baseline"] = tuple(args.baseline)
    if args.no_crop:
        options["crop"] = None
    elif args.crop is not None:
        options["crop"] = tuple(args.crop)
    return options


def _existing(raw_dir: str, out: str | None, subjects: list[int]) -> list[str]:
    """The preprocessed files that preprocessing ``subjects`` would replace."""
    from fastalign.data import preprocessed_path
    from fastalign.data.preprocess import preprocessed_dir

    out_dir = preprocessed_dir(raw_dir, out)
    paths = (preprocessed_path(out_dir, s, split) for s in subjects for split in ("training", "test"))
    return [p for p in paths if os.path.lexists(p)]


def _run(args: argparse.Namespace) -> int:
    from fastalign.data import preprocess_things_eeg2

    raw_dir = os.path.join(os.path.abspath(args.data), "raw_data")
    subjects = _subjects(raw_dir, args.subject)
    options = _options(args)
    existing = [] if args.overwrite else _existing(raw_dir, args.out, subjects)
    if existing:
        more = f" and {len(existing) - 1} more already exist" if len(existing) > 1 else " already exists"
        raise FileExistsError(
            f"--out: {existing[0]!r}{more} (preprocessed before); pass --overwrite to replace them, or --out "
            "to write elsewhere"
        )
    done: list[int] = []
    try:
        for s in subjects:
            if args.progress:
                print(f"preprocessing sub-{s:02d} ({args.recipe})", file=sys.stderr, flush=True)
            result = preprocess_things_eeg2(raw_dir, s, args.out, **options)
            done.append(s)
            shapes = ", ".join(f"{k} {tuple(getattr(result, k).data.shape)}" for k in ("training", "test"))
            sfreq = result.settings["sfreq"]
            rate = "the raw rate" if sfreq is None else f"{sfreq:g} Hz"
            print(
                f"sub-{s:02d}: {shapes} (images, repetitions, channels, times) at {rate}; "
                f"{os.path.dirname(result.paths['test'])}"
            )
    except BaseException:  # an error, Ctrl-C or SIGTERM: which subjects hold the new files, which do not
        left = [s for s in subjects if s not in done]
        if len(subjects) > 1 and left:  # (after the last subject, as it printed: every subject written)
            written = ", ".join(f"sub-{s:02d}" for s in done) or "none"
            unwritten = ", ".join(f"sub-{s:02d}" for s in left)
            print(
                f"fastalign preprocess: stopped at sub-{left[0]:02d}; written with these settings: "
                f"{written}; not written: {unwritten} (each subject's files are replaced as a unit: those "
                "keep what they held before, if anything)",
                file=sys.stderr,
                flush=True,
            )
        raise
    return 0


COMMAND = Command(
    "preprocess",
    "THINGS-EEG2 raw files -> preprocessed files (the published recipes: eeg_encoding, alignvis)",
    (
        "fastalign preprocess --data things_eeg2 --subject all",
        "fastalign preprocess --data things_eeg2 --subject 1 2 --recipe alignvis --out things_eeg2/alignvis",
    ),
    _arguments,
    _run,
)
