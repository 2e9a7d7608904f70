"""``fastalign synth``: :func:`fastalign.data.make_synthetic_things`."""

from __future__ import annotations

import argparse

from fastalign.cli.common import CLI_ONLY, Command, add_seed, folder_path, positive_int


def _test_images(text: str) -> int:
    """An argparse type: at least 3 test images (an RDM needs 3 conditions)."""
    value = positive_int(text)
    if value < 3:
        raise argparse.ArgumentTypeError(f"expected at least 3 test images (an RDM needs 3), got {text!r}")
    return value


def _sessions(text: str) -> int:
    """An argparse type: 1 session or an even number (each training image is shown in half of them)."""
    value = positive_int(text)
    if value > 1 and value % 2:
        raise argparse.ArgumentTypeError(
            f"expected 1 or an even number of sessions (each training image is shown in half), got {text!r}"
        )
    return value


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "root", metavar="DATA", type=folder_path, help="the folder to write (new or empty; see --overwrite)"
    )
    p.add_argument("--subjects", dest="n_subjects", type=positive_int, default=1, help="subjects (default 1)")
    add_seed(p, "everything is a function of the seed (default 0)")
    p.add_argument("--image-size", type=positive_int, default=64, help="image side in pixels (default 64)")
    p.add_argument(
        "--train-concepts",
        dest="n_train_concepts",
        type=positive_int,
        default=8,
        help="training concepts (default 8)",
    )
    p.add_argument(
        "--images-per-concept", type=positive_int, default=4, help="training images per concept (default 4)"
    )
    p.add_argument(
        "--test-images",
        dest="n_test",
        type=_test_images,
        default=10,
        help="test images, one concept each (default 10)",
    )
    p.add_argument(
        "--sessions",
        dest="n_sessions",
        type=_sessions,
        default=4,
        help="EEG sessions per subject, 1 or even (default 4)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a dataset synth wrote before in DATA (its ground_truth.npz)",
    )


def _run(args: argparse.Namespace) -> int:
    from fastalign.data import make_synthetic_things

    made = make_synthetic_things(**{k: v for k, v in vars(args).items() if k not in CLI_ONLY})
    print(f"{made.root}: synthetic THINGS-EEG2 + fMRI, subjects {made.subjects}")
    return 0


COMMAND = Command(
    "synth",
    "write a small synthetic THINGS-EEG2 + fMRI dataset from a known brain",
    ("fastalign synth data/synth --subjects 2 --seed 0 --image-size 64",),
    _arguments,
    _run,
)
