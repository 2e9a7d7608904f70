"""File helpers shared by the data loaders: validated pickled-dict loading and atomic writes.

THINGS-EEG2 stores every array as ``np.save`` of a Python dict (a pickled object array), so loading one
needs ``allow_pickle=True``; only open files you trust. Every error here names the file and what was
expected, so a wrong download or a half-copied folder is diagnosed from the message alone.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np


def require_file(path: str | os.PathLike[str], what: str) -> str:
    """``path`` as a str; FileNotFoundError naming ``what`` it should hold when it is not a file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: expected a file at {path!r}, found none")
    return path


def load_pickled_dict(path: str | os.PathLike[str], keys: Iterable[str], what: str) -> dict[str, Any]:
    """Loads an ``np.save``'d dict and checks that it holds ``keys``.

    Args:
        path: The ``.npy`` file.
        keys: Keys the dict must have.
        what: What the file is, for error messages (e.g. "THINGS-EEG2 preprocessed EEG").

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: the file is not a pickled dict or lacks a key.
    """
    path = require_file(path, what)
    try:
        obj = np.load(path, allow_pickle=True)
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"{what}: {path!r} is not a readable .npy file ({err})") from err
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, dict):
        raise ValueError(
            f"{what}: {path!r} must hold a dict saved with np.save, got {type(obj).__name__}"
            + (f" of shape {obj.shape}" if isinstance(obj, np.ndarray) else "")
        )
    missing = [k for k in keys if k not in obj]
    if missing:
        raise ValueError(f"{what}: {path!r} lacks key(s) {missing}; it has {sorted(map(str, obj))}")
    return obj


def check_array(
    value: Any, name: str, source: str, *, ndim: int | tuple[int, ...], finite: bool = True
) -> np.ndarray:
    """``value`` as a float ndarray with ``ndim`` dimensions and (if ``finite``) no NaN or inf.

    ``source`` names where the array came from (a file or an argument) for the error message.
    """
    arr = np.asarray(value)
    dims = (ndim,) if isinstance(ndim, int) else ndim
    if arr.ndim not in dims:
        raise ValueError(
            f"{source}: {name} must have {' or '.join(map(str, dims))} dimensions, got shape {arr.shape}"
        )
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(f"{source}: {name} must be a real numeric array, got dtype {arr.dtype}")
    if finite and np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"{source}: {name} holds {bad} NaN/inf value(s); responses must be finite")
    return arr


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None]) -> str:
    """Runs ``write(tmp_path)`` on a temp file beside ``path``, then renames it onto ``path``.

    A crash or an exception leaves ``path`` as it was (absent or the old file), never half-written.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def save_npy(path: str | os.PathLike[str], obj: Any) -> str:
    """``np.save(path, obj)`` atomically; dicts are pickled as the published THINGS-EEG2 files are."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, obj, allow_pickle=isinstance(obj, dict))

    return atomic_write(path, write)


def save_many_npy(items: dict[str, Any]) -> list[str]:
    """Saves several ``.npy`` files so that either all of them are replaced or none is.

    Every file is first written to a temp file; the renames happen only once all writes succeeded
    (a rename does not fail halfway, so a failure can only leave the old files in place).
    """
    tmps: list[tuple[str, str]] = []
    try:
        for path, obj in items.items():
            folder = os.path.dirname(os.path.abspath(path))
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
            tmps.append((tmp, path))
            with os.fdopen(fd, "wb") as f:
                np.save(f, obj, allow_pickle=isinstance(obj, dict))
        for tmp, path in tmps:
            os.replace(tmp, path)
    finally:
        for tmp, _ in tmps:
            if os.path.exists(tmp):
                os.remove(tmp)
    return [path for _, path in tmps]
