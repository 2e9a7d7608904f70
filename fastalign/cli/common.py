"""What every subcommand shares: :class:`Command`, flag types, and the flags that several commands take,
each with one name, one default and one help text (``--seed``, ``--device``, ``--no-progress``,
``--image-size``, ``--weights``, ``--resume``/``--overwrite``)."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


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


# Parsed flags that are the command line's own, not the called function's arguments.
CLI_ONLY = ("command", "debug", "func")


def _integer(text: str, minimum: int, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    return _integer(text, 1, "a positive integer")


def nonnegative_int(text: str) -> int:
    """An argparse type: an integer >= 0 (a count of workers)."""
    return _integer(text, 0, "an integer >= 0")


def count_or_none(text: str) -> int | None:
    """An argparse type: an integer >= 0, or ``none``."""
    return None if text.lower() == "none" else _integer(text, 0, "an integer >= 0 or 'none'")


def int_or_none(text: str) -> int | None:
    """An argparse type: a positive integer, or ``none``."""
    return None if text.lower() == "none" else positive_int(text)


def _real(text: str, ok: Callable[[float], bool], expected: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and ok(value)):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


# The flags' number types check what the called function checks, at parse time: a bad value is a usage
# error (exit status 2, the flag named) before any data is read, as for the integer flags.
def positive_real(text: str) -> float:
    """An argparse type: a finite number > 0 (a learning rate, a temperature, a sampling rate)."""
    return _real(text, lambda v: v > 0, "a finite number > 0")


def nonnegative_real(text: str) -> float:
    """An argparse type: a finite number >= 0 (a loss weight, a weight decay)."""
    return _real(text, lambda v: v >= 0, "a finite number >= 0")


def probability(text: str) -> float:
    """An argparse type: a probability in (0, 1) (a significance level)."""
    return _real(text, lambda v: 0 < v < 1, "a probability in (0, 1)")


def share(text: str) -> float:
    """An argparse type: a share in [0, 1) (of training images held out for validation)."""
    return _real(text, lambda v: 0 <= v < 1, "a number in [0, 1)")


def finite_real(text: str) -> float:
    """An argparse type: a finite number (a time in seconds)."""
    return _real(text, math.isfinite, "a finite number")


def folder_path(text: str) -> str:
    """An argparse type: a folder path, not empty (to os.path an empty path is the current folder, which
    an unset shell variable, ``--out "$OUT"``, would otherwise name)."""
    if not text:
        raise argparse.ArgumentTypeError("expected a folder path, got '' (an empty path)")
    return text


class TimeWindow(argparse.Action):
    """``--time-window TMIN TMAX``: two finite numbers of seconds with TMIN < TMAX, checked when the flags
    are read (a usage error, as for the other number flags), stored as a tuple."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: Any = None
    ) -> None:
        tmin, tmax = values
        if not (math.isfinite(tmin) and math.isfinite(tmax) and tmin < tmax):
            parser.error(f"argument {option}: expected TMIN < TMAX in seconds, got {tmin:g} {tmax:g}")
        setattr(namespace, self.dest, (tmin, tmax))


def subject(text: str) -> int | str:
    """An argparse type: a subject number, as the outputs name it (``sub-02``) or not (``2``), or ``all``."""
    if text == "all":
        return "all"
    expected = "a positive integer (2 or sub-02) or 'all'"
    number = text[4:] if text.startswith("sub-") and text[4:].isdigit() else text
    try:
        return _integer(number, 1, expected)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


class Subjects(argparse.Action):
    """``--subject 1``, ``--subject 1 2 3`` or ``--subject all``: a pipeline's ``subject`` (an int, a list of
    ints or "all")."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: Any = None
    ) -> None:
        if "all" in values and len(values) > 1:
            parser.error("argument --subject: give subject numbers or 'all', not both")
        setattr(namespace, self.dest, values[0] if len(values) == 1 else list(values))


def add_subjects(p: argparse.ArgumentParser, help: str, *, default: Any = 1, dest: str = "subject") -> None:
    """``--subject N [N ...] | all`` (see :class:`Subjects`)."""
    p.add_argument(
        "--subject",
        dest=dest,
        nargs="+",
        type=subject,
        action=Subjects,
        default=default,
        metavar="N",
        help=help,
    )


def rank0() -> bool:
    """Whether this process prints results (rank 0 under torchrun, or the only process)."""
    return os.environ.get("RANK", "0") == "0"


def seed(text: str) -> int:
    """An argparse type: a seed, an integer in [0, 2**63 - 1] (what every seeded function takes)."""
    value = _integer(text, 0, "an integer in [0, 2**63 - 1]")
    if value > 2**63 - 1:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**63 - 1], got {text!r}")
    return value


def add_seed(p: argparse.ArgumentParser, what: str = "default 0") -> None:
    p.add_argument("--seed", type=seed, default=0, help=what)


def add_image_size(p: argparse.ArgumentParser, default: int = 224) -> None:
    p.add_argument(
        "--image-size", type=positive_int, default=default, help=f"image side in pixels (default {default})"
    )


def device(text: str) -> str:
    """An argparse type: a torch device that this machine has, checked before anything runs (torch's own
    errors came after minutes of work and named no flag)."""
    from fastalign._checks import device_problem

    problem = device_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def add_device(
    p: argparse.ArgumentParser, default: str = "cuda:LOCAL_RANK when available (torchrun), else cpu"
) -> None:
    """--device, its help saying what the command uses without it (``default``)."""
    p.add_argument("--device", type=device, help=f"default: {default}")


def add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress output")


def add_resume_overwrite(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue the run in --out")
    group.add_argument(
        "--overwrite", action="store_true", help="replace the run in --out (removed as the new run starts)"
    )


def number(value: Any) -> str:
    """A result for a printed summary: four decimals, or n/a."""
    return "n/a" if value is None else f"{value:.4f}"
