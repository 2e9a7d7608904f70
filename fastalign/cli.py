"""The ``fastalign`` command: a thin layer over public functions.

Each subcommand calls one public function with its flags as that function's arguments:

- ``fastalign synth``: :func:`fastalign.data.make_synthetic_things`
- ``fastalign align``: :func:`fastalign.train.align`
- ``fastalign info``: :func:`fastalign.info.report`

Errors are one line on standard error and exit status 1 (``--debug`` shows the traceback); usage errors
exit with status 2. A subcommand is a :class:`Command`: its flags, and how it runs; add one to
:data:`COMMANDS` to extend the tool.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

PROG = "fastalign"


@dataclass(frozen=True)
class Command:
    """One subcommand.

    Attributes:
        name: what follows ``fastalign``.
        help: one line for ``fastalign --help``.
        examples: command lines shown under the subcommand's ``--help``.
        add_arguments: adds the flags to the subcommand's parser.
        run: runs it with the parsed flags; returns the exit status.
    """

    name: str
    help: str
    examples: tuple[str, ...]
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _int_or_none(text: str) -> int | None:
    return None if text.lower() == "none" else _positive_int(text)


def _subject(text: str) -> int | str:
    return "all" if text == "all" else _positive_int(text)


class _Subjects(argparse.Action):
    """``--subject 1``, ``--subject 1 2 3`` or ``--subject all``: align's ``subject`` (an int, a list of
    ints or "all")."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: Any = None
    ) -> None:
        if "all" in values and len(values) > 1:
            parser.error("argument --subject: give subject numbers or 'all', not both")
        setattr(namespace, self.dest, values[0] if len(values) == 1 else list(values))


def _rank0() -> bool:
    """Whether this process prints results (rank 0 under torchrun, or the only process)."""
    return os.environ.get("RANK", "0") == "0"


# ----------------------------------------------------------------------------------------------- synth


def _synth_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("root", metavar="DATA", help="the folder to write (new or empty; see --overwrite)")
    p.add_argument(
        "--subjects", dest="n_subjects", type=_positive_int, default=1, help="subjects (default 1)"
    )
    p.add_argument("--seed", type=int, default=0, help="everything is a function of the seed (default 0)")
    p.add_argument("--image-size", type=_positive_int, default=64, help="image side in pixels (default 64)")
    p.add_argument(
        "--train-concepts",
        dest="n_train_concepts",
        type=_positive_int,
        default=8,
        help="training concepts (default 8)",
    )
    p.add_argument(
        "--images-per-concept", type=_positive_int, default=4, help="training images per concept (default 4)"
    )
    p.add_argument(
        "--test-images",
        dest="n_test",
        type=_positive_int,
        default=10,
        help="test images, one concept each (default 10)",
    )
    p.add_argument(
        "--sessions",
        dest="n_sessions",
        type=_positive_int,
        default=4,
        help="EEG sessions per subject (default 4)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace DATA if it holds files")


def _synth(args: argparse.Namespace) -> int:
    from fastalign.data import make_synthetic_things

    kwargs = {k: v for k, v in vars(args).items() if k not in ("command", "debug", "func")}
    made = make_synthetic_things(**kwargs)
    print(f"{made.root}: synthetic THINGS-EEG2 + fMRI, subjects {made.subjects}")
    return 0


# ----------------------------------------------------------------------------------------------- align


def _align_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset folder (image_set/, preprocessed_data/, fmri/)")
    p.add_argument(
        "--subject",
        nargs="+",
        type=_subject,
        action=_Subjects,
        default=1,
        metavar="N",
        help="subject number(s), or 'all': one run folder OUT/sub-XX each (default 1)",
    )
    p.add_argument("--modality", choices=("eeg", "fmri"), default="eeg", help="default eeg (ReAlnet)")
    p.add_argument("--out", required=True, help="run folder (for several subjects: their parent)")
    p.add_argument(
        "--weights",
        help="starting CORnet-S checkpoint (cornet_s-1d3f7974.pth) or a ReAlnet; "
        "default: a randomly initialised CORnet-S",
    )
    p.add_argument("--epochs", type=_positive_int, default=25, help="default 25")
    p.add_argument("--lr", type=float, default=2e-5, help="Adam's learning rate (default 2e-5)")
    p.add_argument("--batch-size", type=_positive_int, default=16, help="global batch size (default 16)")
    p.add_argument(
        "--beta",
        type=float,
        default=100.0,
        help="weight of the brain terms (default 100; 0: fine-tuning without the brain)",
    )
    p.add_argument("--image-size", type=_positive_int, default=224, help="default 224")
    p.add_argument("--seed", type=int, default=0, help="default 0")
    p.add_argument("--control", choices=("unpaired",), help="pair images with other images' responses")
    p.add_argument("--val-fraction", type=float, default=0.1, help="validation share (default 0.1)")
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
        default=(0.0, 0.2),
        metavar=("TMIN", "TMAX"),
        help="EEG samples in [TMIN, TMAX) seconds (default 0 0.2)",
    )
    p.add_argument("--rois", nargs="+", metavar="ROI", help="fMRI ROIs to keep (default: all voxels)")
    p.add_argument("--pca", type=_int_or_none, default=1024, help="fMRI components, or none (default 1024)")
    p.add_argument("--amp", choices=("auto", "bf16", "fp16", "fp32"), default="auto", help="default auto")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (default 0)")
    p.add_argument("--device", help="default: cuda:LOCAL_RANK when available, else cpu")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress output")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue the run in --out")
    group.add_argument("--overwrite", action="store_true", help="replace the run in --out")


def _align(args: argparse.Namespace) -> int:
    from fastalign.train import align

    kwargs = {k: v for k, v in vars(args).items() if k not in ("command", "debug", "func", "data", "subject")}
    channels = args.channels
    kwargs["channels"] = channels[0] if channels in (["occipito-parietal"], ["all"]) else channels
    kwargs["time_window"] = tuple(args.time_window)
    results = align(args.data, args.subject, **kwargs)
    if _rank0():
        for r in results if isinstance(results, list) else [results]:
            print(_describe(r.subject, r.run.path, r.summary))
    return 0


def _number(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _describe(subject: int, path: str, summary: dict[str, Any]) -> str:
    return (
        f"sub-{subject:02d} {path}: best epoch {summary['best_epoch']} of {summary['epochs_run']}, "
        f"val loss {_number(summary['best_val_loss'])}; test RSA IT {_number(summary.get('test_rsa_it'))} "
        f"(unaligned {_number(summary.get('unaligned_test_rsa_it'))}), predicted response "
        f"{_number(summary.get('test_rsa_response'))} "
        f"(unaligned {_number(summary.get('unaligned_test_rsa_response'))})"
    )


# ------------------------------------------------------------------------------------------------ info


def _info(args: argparse.Namespace) -> int:
    from fastalign.info import report

    print(report())
    return 0


COMMANDS: tuple[Command, ...] = (
    Command(
        "synth",
        "write a small synthetic THINGS-EEG2 + fMRI dataset from a known brain",
        ("fastalign synth data/synth --subjects 2 --seed 0 --image-size 64",),
        _synth_arguments,
        _synth,
    ),
    Command(
        "align",
        "train ReAlnet / ReAlnet-fMRI: CORnet-S aligned to one person's brain",
        (
            "fastalign align --data data/synth --subject 1 --out runs/sub01 --epochs 5 --image-size 64",
            "fastalign align --data things --subject all --out runs/realnet --weights cornet_s-1d3f7974.pth",
            "torchrun --nproc-per-node 2 -m fastalign align --data data/synth --subject 1 --out runs/ddp",
        ),
        _align_arguments,
        _align,
    ),
    Command(
        "info",
        "versions, devices, and which backends work here and why not",
        ("fastalign info",),
        lambda p: None,
        _info,
    ),
)


def parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fastalign`` command."""
    top = argparse.ArgumentParser(
        prog=PROG,
        description="fastalign: brain-aligned vision models and brain decoding.",
        epilog="Run 'fastalign COMMAND --help' for a command's flags and examples.",
    )
    top.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = top.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS:
        examples = "\n".join(f"  {line}" for line in cmd.examples)
        p = sub.add_parser(
            cmd.name,
            help=cmd.help,
            description=cmd.help,
            epilog=f"example{'s' if len(cmd.examples) > 1 else ''}:\n{examples}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        cmd.add_arguments(p)
        p.set_defaults(func=cmd.run)
    return top


def _one_line(exc: BaseException) -> str:
    """The error as one line: its message with line breaks folded (or its type, when it has none)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    0: success; 1: the command failed (one line on standard error, or the traceback with ``--debug``);
    2: a usage error (argparse's message); 130: interrupted.
    """
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(f"{PROG} {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
