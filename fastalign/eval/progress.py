"""What an evaluation shows while it runs: a tqdm bar per stage on a terminal, one line per finished stage
elsewhere (logs, CI, files), nothing when quiet; always on standard error, so tables printed on standard
output stay clean."""

from __future__ import annotations

import sys
import time
from types import TracebackType

from tqdm import tqdm


class Stage:
    """Progress of one stage of ``total`` units (images of a model, cluster tests), as a context manager.

    Args:
        enabled: False shows nothing.
        desc: The stage's name ("features cornet_s").
        total: Units the stage will do.
        unit: What a unit is ("img", "test").
    """

    def __init__(self, enabled: bool, desc: str, total: int, unit: str) -> None:
        self.desc, self.total, self.unit = desc, total, unit
        self.done = 0
        self.enabled = enabled
        self._start = time.perf_counter()
        # disable=None: tqdm draws only when standard error is a terminal; elsewhere we print one line
        self._bar = tqdm(
            total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True,
            disable=None if enabled else True,
        )  # fmt: skip

    def update(self, n: int = 1) -> None:
        """``n`` more units done."""
        self.done += n
        self._bar.update(n)

    def __enter__(self) -> Stage:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._bar.close()
        if self.enabled and self._bar.disable and kind is None:
            seconds = time.perf_counter() - self._start
            print(
                f"{self.desc}: {self.done}/{self.total} {self.unit} in {seconds:.1f} s",
                file=sys.stderr,
                flush=True,
            )
