"""The ``fastalign`` command: a thin layer over public functions.

Each subcommand lives in its own module of this package and calls one public function with its flags as
that function's arguments:

- ``fastalign demo``: :func:`fastalign.cli.demo.demo`, the stages below on a synthetic brain
- ``fastalign synth``: :func:`fastalign.data.make_synthetic_things` (:mod:`fastalign.cli.synth`)
- ``fastalign preprocess``: :func:`fastalign.data.preprocess_things_eeg2` (:mod:`fastalign.cli.preprocess`)
- ``fastalign align``: :func:`fastalign.train.align` (:mod:`fastalign.cli.align`)
- ``fastalign evaluate``: :func:`fastalign.eval.evaluate` (:mod:`fastalign.cli.evaluate`)
- ``fastalign decode``: :func:`fastalign.train.decode` (:mod:`fastalign.cli.decode`)
- ``fastalign rsa``: :func:`fastalign.cli.rsa.brain_rsa` (time-resolved brain RDMs and their similarity
  with model RDMs, from MNE epochs or arrays)
- ``fastalign bench``: the fused ops timed here, or a checkout's benchmark scripts
  (:mod:`fastalign.cli.bench`)
- ``fastalign info``: :func:`fastalign.info.report` (:mod:`fastalign.cli.info`)

Errors are one line on standard error and exit status 1 (``--debug`` shows the traceback); usage errors
exit with status 2. Output into a pipe whose reader stopped early (``fastalign info | head -3``) ends the
command quietly with status 141, as a program killed by SIGPIPE does. A subcommand is a :class:`Command`
(its flags, and how it runs) that its module names ``COMMAND``; listing the module in
:data:`COMMAND_MODULES` adds it to the tool. Flags that mean the same thing in several commands come from
:mod:`fastalign.cli.common`, so they have one name and one meaning.
"""

from __future__ import annotations

import argparse
import importlib
import os
import select
import signal
import stat
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from fastalign._memory import keep_freed_memory
from fastalign.cli.common import Command

PROG = "fastalign"

# In the order ``fastalign --help`` lists them: the pipeline from data to results, then the tools.
COMMAND_MODULES: tuple[str, ...] = (
    "demo",
    "synth",
    "preprocess",
    "align",
    "evaluate",
    "decode",
    "rsa",
    "bench",
    "info",
)

COMMANDS: tuple[Command, ...] = tuple(
    importlib.import_module(f"fastalign.cli.{name}").COMMAND for name in COMMAND_MODULES
)


def _version() -> str:
    from fastalign import __version__

    return __version__


def parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fastalign`` command."""
    top = argparse.ArgumentParser(
        prog=PROG,
        description="fastalign: brain-aligned vision models and brain decoding.",
        epilog="Run 'fastalign COMMAND --help' for a command's flags and examples.",
    )
    top.add_argument("--debug", action="store_true", help="show the traceback of an error")
    top.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
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


def _warning_line(command: str) -> Callable[..., None]:
    """A warnings.showwarning that prints ``fastalign <command>: warning: <message>`` on standard error, as
    errors are printed, instead of Python's source file, line and code (``--debug`` keeps those)."""

    def show(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
        print(f"{PROG} {command}: warning: {message}", file=sys.stderr)

    return show


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    0: success; 1: the command failed (one line on standard error, or the traceback with ``--debug``);
    2: a usage error (argparse's message); 130: interrupted; 141: standard output was a pipe that its reader
    closed (``fastalign info | head -3``; nothing printed, as for a program killed by SIGPIPE); 143:
    terminated (SIGTERM; the program then ends by the signal).
    """
    args = parser().parse_args(argv)
    try:
        with warnings.catch_warnings():  # restores showwarning on the way out
            if not args.debug:
                warnings.showwarning = _warning_line(args.command)
            status = int(args.func(args))
            sys.stdout.flush()  # output still buffered meets a closed pipe here, not at exit
            return status
    except BrokenPipeError as exc:
        if not _stdout_closed():  # another pipe (a worker's, a subprocess's) broke: a failure like any other
            return _failed(args, exc)
        # the reader has what it wanted: not a failure, and not worth a message or a traceback
        _discard_stdout()
        return 141
    except KeyboardInterrupt as stop:
        how = "terminated (SIGTERM)" if isinstance(stop, _Terminated) else "interrupted"
        again = "; rerun it with --resume to continue" if hasattr(args, "resume") else ""
        print(f"{PROG} {args.command}: {how}{again}", file=sys.stderr)
        return 143 if isinstance(stop, _Terminated) else 130
    except Exception as exc:
        return _failed(args, exc)


def _failed(args: argparse.Namespace, exc: Exception) -> int:
    """A failed command: one line on standard error and status 1 (``--debug``: the traceback)."""
    if args.debug:
        raise exc
    print(f"{PROG} {args.command}: error: {_one_line(exc)}", file=sys.stderr)
    return 1


def _stdout_closed() -> bool:
    """Whether standard output is a pipe whose reader has closed it (poll reports an error on its write
    end), so that a BrokenPipeError was about our output and not about some other pipe."""
    try:
        fd = sys.stdout.fileno()
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return False
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        return any(event & select.POLLERR for _, event in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no file descriptor, or no poll on this platform
        return False


def _discard_stdout() -> None:
    """Points standard output at the null device, so that the interpreter's flush at exit of what is still
    buffered does not raise BrokenPipeError again (the recipe of Python's docs on SIGPIPE)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no file descriptor (output captured in Python): nothing to flush
        pass


class _Terminated(KeyboardInterrupt):
    """SIGTERM (what batch schedulers and container runtimes send) in the ``fastalign`` program."""


_TERMINATED: list[bool] = []


def _terminate(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the cleanup short
    _TERMINATED.append(True)
    raise _Terminated


def entry() -> int:
    """The ``fastalign`` program (console script and ``python -m fastalign``): :func:`main` of
    ``sys.argv``, in a process whose malloc keeps freed memory (:func:`fastalign.train.keep_freed_memory`:
    a CPU training step's large tensors are reused without page faults) and where SIGTERM stops a command
    as Ctrl-C does: its temporary files are removed, then it ends by the signal, as supervisors expect
    (by default the process died at once and left them). :func:`main` called from Python leaves the
    process's malloc and signals as they are."""
    keep_freed_memory()
    signal.signal(signal.SIGTERM, _terminate)
    status = main()
    if _TERMINATED:  # cleaned up: now end by the signal
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
    return status


__all__ = ["COMMANDS", "COMMAND_MODULES", "PROG", "Command", "entry", "main", "parser"]
