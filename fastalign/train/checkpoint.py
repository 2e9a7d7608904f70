"""Epoch checkpoints: everything a resumed run needs, in a file that ``torch.load(weights_only=True)``
reads.

A checkpoint is a dict of tensors and plain Python values (no pickled classes), so loading one runs no
code from the file. RNG states are stored as tensors and numbers: torch's and the training CUDA device's
as the byte tensors torch returns, numpy's MT19937 and Python's Mersenne Twister as int64 tensors of
their words. Under data parallelism every rank's RNG state is kept (ranks draw different dropout masks),
in rank order.

Keys: ``format`` (1), ``epoch`` (epochs done), ``step`` (optimizer steps done), ``model``, ``optimizer``,
``scheduler`` and ``scaler`` (state dicts; None when absent), ``rng`` (list, one per rank), ``best``
(``epoch``, ``value``, ``val_loss`` of the selected epoch so far), ``bad_epochs`` (epochs since the best,
for patience), ``stopped`` (early stopping fired), ``history`` (the epoch records so far),
``metrics_bytes`` (the length of metrics.jsonl when it was written), ``resumed_at`` (epochs at which
the run was resumed) and ``elapsed`` (seconds of training so far).
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

from fastalign import _checks
from fastalign.data._io import atomic_write
from fastalign.train.run import RunFolder

FORMAT = 1
REQUIRED = (
    "format", "epoch", "step", "model", "optimizer", "scheduler", "scaler", "rng", "best", "bad_epochs",
    "stopped", "history", "metrics_bytes", "resumed_at", "elapsed",
)  # fmt: skip


def capture_rng(device: torch.device) -> dict[str, Any]:
    """This process's RNG states: torch's CPU generator, ``device``'s when it is a CUDA device (only that
    one, so that a rank touches no other GPU), numpy's global RNG and Python's ``random``."""
    # The legacy global RNG is what code that calls np.random.* draws from: that is the state to keep.
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()  # noqa: NPY002
    py_version, py_words, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "python": {
            "version": int(py_version),
            "words": torch.tensor(py_words, dtype=torch.int64),
            "gauss_next": py_gauss,
        },
    }


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    """Sets the RNGs to ``state`` (from :func:`capture_rng`; ``device`` is the training device).

    Raises:
        ValueError: the state was captured on a CUDA device and ``device`` is not one, or the reverse.
    """
    if (state["cuda"] is not None) != (device.type == "cuda"):
        saved = "a CUDA device" if state["cuda"] is not None else "no CUDA device"
        raise ValueError(
            f"resume: the checkpoint's RNG states come from {saved}; this run trains on {device}"
        )
    torch.set_rng_state(state["torch"].cpu())  # RNG states must be CPU byte tensors, wherever loaded
    if state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
    npy = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            npy["name"],
            npy["keys"].numpy().astype(np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached_gaussian"],
        )
    )
    py = state["python"]
    random.setstate((py["version"], tuple(int(w) for w in py["words"].tolist()), py["gauss_next"]))


def save_checkpoint(path: str | os.PathLike[str], checkpoint: dict[str, Any]) -> str:
    """Writes ``checkpoint`` to ``path`` atomically (a temp file beside it, then a rename)."""
    return atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


def _checkpoint_file(source: str | os.PathLike[str]) -> str:
    path = os.fspath(source)
    if os.path.isdir(path):
        latest = RunFolder(path).latest_checkpoint()
        if latest is None:
            raise FileNotFoundError(f"load_checkpoint: the run folder {path!r} holds no checkpoint")
        return latest
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_checkpoint: expected a checkpoint file or a run folder, got {path!r}")
    return path


def load_checkpoint(
    source: str | os.PathLike[str],
    *,
    model: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: torch.amp.GradScaler | None = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Reads a checkpoint with ``torch.load(weights_only=True)`` and loads it into what is given.

    Args:
        source: a checkpoint file, or a run folder (its latest checkpoint).
        model, optimizer, scheduler, scaler: each, when given, gets the checkpoint's state (strictly: the
            model's keys must match).
        map_location: where tensors are loaded.

    Returns:
        The checkpoint dict (keys in this module's docstring).

    Raises:
        FileNotFoundError: no checkpoint at ``source``.
        ValueError: the file is not a fastalign checkpoint, or lacks a state that was asked for.
    """
    path = _checkpoint_file(source)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a truncated or foreign file: torch's text alone names neither
        raise ValueError(
            f"load_checkpoint: could not read {path!r} as a checkpoint: "
            f"{_checks.torch_load_failure(exc, path)} (a damaged checkpoint: remove it to resume from the "
            "one before, or overwrite the run)"
        ) from exc
    missing = [k for k in REQUIRED if not isinstance(checkpoint, dict) or k not in checkpoint]
    if missing:
        raise ValueError(f"load_checkpoint: {path!r} is not a fastalign checkpoint (it lacks {missing})")
    if checkpoint["format"] != FORMAT:
        raise ValueError(f"load_checkpoint: {path!r} has format {checkpoint['format']}; expected {FORMAT}")
    for name, target in (
        ("model", model),
        ("optimizer", optimizer),
        ("scheduler", scheduler),
        ("scaler", scaler),
    ):
        if target is None:
            continue
        if checkpoint.get(name) is None:
            raise ValueError(f"load_checkpoint: {path!r} holds no {name} state, but a {name} was given")
        target.load_state_dict(checkpoint[name])
    return checkpoint
