"""Tests on several processes: forked ranks that each put one report on a queue, collected without hanging.

The ranks are forked rather than spawned: a spawned child imports torch and fastalign again, which takes
many seconds on a busy CI machine. A rank's target is ``target(rank, *args, queue)``; it puts a dict with
its ``"rank"`` and, when it fails, an ``"error"`` (the parent shows it instead of waiting for a report
that never comes).
"""

from __future__ import annotations

import multiprocessing as mp
import socket
from collections.abc import Callable, Sequence
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a process group's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_ranks(
    target: Callable[..., None], args: Sequence[Any], world: int = 2, timeout: float = 120
) -> dict[int, dict[str, Any]]:
    """Runs ``world`` forked ranks of ``target`` and returns their reports by rank; fails the test when a
    rank reported an error or exited with a non-zero status."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=target, args=(r, *args, queue)) for r in range(world)]
    for p in procs:
        p.start()
    try:
        reports = {r["rank"]: r for r in (queue.get(timeout=timeout) for _ in procs)}
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.exitcode is None:
                p.kill()
    errors = [r["error"] for r in reports.values() if "error" in r]
    assert not errors, errors
    assert [p.exitcode for p in procs] == [0] * world
    return reports
