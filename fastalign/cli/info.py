"""``fastalign info``: :func:`fastalign.info.report`."""

from __future__ import annotations

import argparse

from fastalign.cli.common import Command


def _run(args: argparse.Namespace) -> int:
    from fastalign.info import report

    print(report())
    return 0


COMMAND = Command(
    "info",
    "versions, devices, and which backends work here and why not",
    ("fastalign info",),
    lambda p: None,
    _run,
)
