"""What a run shows while it trains: a tqdm bar on a terminal, plain lines elsewhere (logs, CI, notebooks
piped to files), nothing when quiet; and TensorBoard event files when tensorboard is installed.

Only rank 0 reports; the loop gives other ranks a quiet :class:`Progress` and no :class:`Events`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from tqdm import tqdm


def _isatty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except ValueError:  # a closed stream
        return False


def format_values(values: Mapping[str, Any]) -> str:
    """``name value`` pairs, numbers to 4 significant digits (images/s as ``img/s``)."""
    parts = []
    for name, v in values.items():
        text = f"{v:.4g}" if isinstance(v, float) else str(v)
        parts.append(f"{text} img/s" if name == "images_per_s" else f"{name} {text}")
    return "  ".join(parts)


class Progress:
    """Epoch progress on ``stream`` (standard error by default).

    Args:
        enabled: False prints nothing.
        epochs: the run's epoch count (for "epoch 3/25").
        stream: where to write; a terminal gets a tqdm bar, anything else one line per log point.
    """

    def __init__(self, enabled: bool, epochs: int, stream: TextIO | None = None) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.mode = "off" if not enabled else "bar" if _isatty(self.stream) else "lines"
        self.epochs = epochs
        self._bar: Any = None

    def message(self, text: str) -> None:
        """One line, above the bar when there is one."""
        if self.mode == "bar":
            tqdm.write(text, file=self.stream)
        elif self.mode == "lines":
            print(text, file=self.stream, flush=True)

    def start_epoch(self, epoch: int, steps: int) -> None:
        if self.mode == "bar":
            self._bar = tqdm(
                total=steps,
                desc=f"epoch {epoch}/{self.epochs}",
                file=self.stream,
                leave=False,
                dynamic_ncols=True,
            )

    def advance(self) -> None:
        """One optimizer step done."""
        if self._bar is not None:
            self._bar.update(1)

    def log(self, epoch: int, index: int, steps: int, step: int, values: Mapping[str, Any]) -> None:
        """The aggregate of the last steps: the bar's postfix, or a line."""
        if self._bar is not None:
            self._bar.set_postfix_str(format_values(values), refresh=False)
        elif self.mode == "lines":
            self.message(
                f"epoch {epoch}/{self.epochs} step {index}/{steps} (total {step})  {format_values(values)}"
            )

    def end_epoch(self, epoch: int, values: Mapping[str, Any]) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self.message(f"epoch {epoch}/{self.epochs} done  {format_values(values)}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def summary_writer(enabled: bool | None) -> tuple[Any, str]:
    """TensorBoard's SummaryWriter class when events are to be written and can be, and a note for
    config.json saying which.

    Args:
        enabled: True requires tensorboard; None uses it when installed; False writes none.

    Raises:
        ImportError: ``enabled=True`` and tensorboard is not installed.
    """
    if enabled is False:
        return None, "not written (tensorboard=False)"
    try:
        # torch.utils.tensorboard imports tensorboard itself: imported here, not with fastalign
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        if enabled:
            raise ImportError(
                f"fit: tensorboard=True but TensorBoard cannot be imported ({e}); pip install tensorboard, "
                "or pass tensorboard=None (use it when installed) or False"
            ) from e
        return None, f"not written: tensorboard is not installed ({e})"
    return SummaryWriter, "written to events/"


class Events:
    """TensorBoard scalars in ``log_dir``.

    Args:
        writer_class: from :func:`summary_writer`; None writes nothing.
        log_dir: the folder for event files.
        purge_step: events at or after this step from an earlier (killed) attempt are dropped by
            TensorBoard, so a resumed run's curves do not double back.
    """

    def __init__(self, writer_class: Any, log_dir: str, purge_step: int) -> None:
        self._writer = None if writer_class is None else writer_class(log_dir=log_dir, purge_step=purge_step)

    def scalars(self, prefix: str, values: Mapping[str, Any], step: int) -> None:
        """``prefix/name`` for every finite number in ``values``."""
        if self._writer is None:
            return
        for name, v in values.items():
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                self._writer.add_scalar(f"{prefix}/{name}", v, global_step=step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
