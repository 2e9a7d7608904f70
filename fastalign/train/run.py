"""Run folders: what one training run leaves on disk, and the rules for starting, resuming and replacing one.

Layout (every file but metrics.jsonl written to a temp file beside it and renamed into place, so each is
complete or absent)::

    config.json        {"config": the recipe's settings, "fit": the loop's settings,
                        "environment": versions, git commit, device, precision, processes}
    metrics.jsonl      one JSON object a line: "kind" "train" (an aggregate over log_every steps) or
                       "epoch" (train and validation aggregates, the recipe's metrics, lr, timing)
    checkpoints/       epoch-0001.pt, ...: the last keep_checkpoints epochs (see checkpoint.py); none
                       with keep_checkpoints=0
    model.safetensors  the selected (best) epoch's model weights
    summary.json       best_epoch, best_val_loss, epochs_run, ... (written when the run ends)
    events/            TensorBoard event files (when tensorboard is installed)

metrics.jsonl is a log, appended one line per ``write`` call (O_APPEND); a kill can at worst cut its last
line, which :meth:`RunFolder.read_metrics` skips, and a resumed run first cuts the file back to the length
its checkpoint recorded, so it holds exactly an uninterrupted run's lines.

Starting a run into a folder (:func:`prepare_run`): a missing or empty folder gets a new run; a folder
that holds a run with another config is refused unless ``overwrite=True``, which replaces the whole folder
in one rename (never a mix of two runs); the same config is refused unless ``resume=True`` (continue) or
``overwrite=True`` (start again); a non-empty folder without config.json is never touched. What does not
change the results is no other config for a resume: more epochs (the run goes on), another path for a
config entry that only says where an input is (``locations``: the recipe records what the input holds in
other entries, such as a digest), and another ``num_workers`` (with a warning, unless the recipe says its
Datasets draw no random numbers); config.json then records the new values.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import re
import subprocess
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch

from fastalign import _checks
from fastalign.data._io import atomic_write, atomic_write_text, read_json_object, replacing_dir

CONFIG = "config.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
MODEL = "model.safetensors"
#: What config.json holds in a run folder (a config.json without them is not a run's)
RUN_KEYS = ("config", "fit", "environment")
#: prepare_run's "checkpoint" for a finished run (summary.json) that kept no checkpoint: nothing to train
FINISHED = "finished"
CHECKPOINTS = "checkpoints"
EVENTS = "events"
_CHECKPOINT = re.compile(r"^epoch-(\d+)\.pt$")


def jsonable(value: Any, where: str) -> Any:
    """``value`` as JSON types: paths and dtypes become strings, tuples lists, numpy scalars numbers.

    Raises:
        TypeError: anything else that JSON cannot hold (named by ``where``, e.g. ``config['lr']``).
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return value.item()
    if isinstance(value, PurePath | torch.dtype | torch.device):
        return str(value)
    if isinstance(value, Mapping):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise TypeError(f"fit: {where} has non-string keys {bad[:3]}; JSON keys are strings")
        return {k: jsonable(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(
        f"fit: {where} is a {type(value).__module__}.{type(value).__qualname__}; config.json takes numbers, "
        "strings, bools, None, paths, dtypes, lists and dicts of them"
    )


def _plain(v: Any) -> Any:
    """A torch setting as JSON (its repr when JSON cannot hold it: these come from torch, not the recipe)."""
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return v.item()
    try:
        return jsonable(v, "")
    except TypeError:
        return repr(v)


def describe(obj: Any) -> dict[str, Any]:
    """An optimizer's class and each parameter group's settings, or a scheduler's class and settings,
    for config.json."""
    name = f"{type(obj).__module__}.{type(obj).__qualname__}"
    if isinstance(obj, torch.optim.Optimizer):
        groups = [{k: _plain(v) for k, v in group.items() if k != "params"} for group in obj.param_groups]
        return {"class": name, "param_groups": groups}
    settings = {k: v for k, v in obj.state_dict().items() if not k.startswith("_") and k != "last_epoch"}
    return {"class": name, **{k: _plain(v) for k, v in settings.items()}}


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():  # an installed wheel: a git repo around site-packages is not ours
        return None
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def environment() -> dict[str, Any]:
    """Versions of Python, torch, numpy and fastalign, the platform, and fastalign's git commit (None
    outside a git checkout; ``git_dirty`` says whether tracked files differ from it)."""
    try:
        version: str | None = importlib.metadata.version("fastalign")
    except importlib.metadata.PackageNotFoundError:
        version = None
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "fastalign": version,
        "git_commit": commit,
        "git_dirty": None if status is None else bool(status),
        "platform": platform.platform(),
    }


def digest_tensors(tensors: Mapping[str, torch.Tensor]) -> str:
    """A short hash of named tensors' bytes, in name order: what a run started from or trained against
    (config.json's ``start_fingerprint`` of align, ``image_fingerprint`` of decode), so that resuming
    with other inputs is refused."""
    h = hashlib.sha256()
    for key, value in sorted(tensors.items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().data)  # no copy
    return h.hexdigest()[:16]


def _write_json(path: str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


class RunFolder:
    """A run folder's paths, readers and (for the fit loop, on rank 0) writers.

    Args:
        path: the folder (need not exist yet).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self._lock: int | None = None

    def unlock(self) -> None:
        """Releases the folder's lock that :func:`prepare_run` took (the fit loop's, at its end)."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def __repr__(self) -> str:
        return f"RunFolder({self.path!r})"

    def __fspath__(self) -> str:
        return self.path

    def _file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def config_path(self) -> str:
        return self._file(CONFIG)

    @property
    def metrics_path(self) -> str:
        return self._file(METRICS)

    @property
    def summary_path(self) -> str:
        return self._file(SUMMARY)

    @property
    def model_path(self) -> str:
        """The selected epoch's weights (safetensors)."""
        return self._file(MODEL)

    @property
    def checkpoints_dir(self) -> str:
        return self._file(CHECKPOINTS)

    @property
    def events_dir(self) -> str:
        """TensorBoard event files."""
        return self._file(EVENTS)

    def is_run(self) -> bool:
        """Whether the folder holds a run (its config.json)."""
        return os.path.isfile(self.config_path)

    def _read_json(self, path: str, what: str) -> dict[str, Any]:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"RunFolder: {self.path!r} has no {what} ({os.path.basename(path)})")
        return read_json_object(path, "RunFolder")

    def read_config(self) -> dict[str, Any]:
        """config.json: ``{"config": ..., "fit": ..., "environment": ...}``."""
        return self._read_json(self.config_path, "config")

    def read_summary(self) -> dict[str, Any]:
        """summary.json (written when the run ends)."""
        return self._read_json(self.summary_path, "summary")

    def read_metrics(self, kind: str | None = None) -> list[dict[str, Any]]:
        """metrics.jsonl's records in order (only those of ``kind`` when given: "train" or "epoch"); an
        unterminated last line (a killed writer's) is skipped."""
        if not os.path.isfile(self.metrics_path):
            return []
        with open(self.metrics_path) as f:
            text = f.read()
        lines = text.split("\n")[:-1]  # the part after the last newline is unfinished or empty
        records = [json.loads(line) for line in lines if line]
        return [r for r in records if kind is None or r.get("kind") == kind]

    def checkpoints(self) -> list[str]:
        """Checkpoint files, oldest epoch first."""
        if not os.path.isdir(self.checkpoints_dir):
            return []
        found = [
            (int(m.group(1)), n) for n in os.listdir(self.checkpoints_dir) if (m := _CHECKPOINT.match(n))
        ]
        return [os.path.join(self.checkpoints_dir, n) for _, n in sorted(found)]

    def latest_checkpoint(self) -> str | None:
        """The newest complete checkpoint (every one on disk is complete: they are renamed into place)."""
        found = self.checkpoints()
        return found[-1] if found else None

    @staticmethod
    def checkpoint_epoch(path: str) -> int:
        """The epoch a checkpoint file's name records."""
        m = _CHECKPOINT.match(os.path.basename(path))
        if m is None:
            raise ValueError(f"RunFolder: {path!r} is not named epoch-NNNN.pt")
        return int(m.group(1))

    def checkpoint_path(self, epoch: int) -> str:
        return os.path.join(self.checkpoints_dir, f"epoch-{epoch:04d}.pt")

    def model_epoch(self) -> int | None:
        """The epoch model.safetensors holds (its metadata), or None without the file or the record."""
        if not os.path.isfile(self.model_path):
            return None
        from safetensors import safe_open

        try:
            with safe_open(self.model_path, "pt") as f:
                epoch = (f.metadata() or {}).get("epoch")
        except Exception:  # an unreadable file holds no epoch we can trust; the caller writes it again
            return None
        return int(epoch) if epoch is not None and epoch.isdigit() else None

    def load_model(self, model: torch.nn.Module, device: str | torch.device = "cpu") -> torch.nn.Module:
        """Loads model.safetensors into ``model`` (strict) and returns it."""
        from safetensors.torch import load_model

        if not os.path.isfile(self.model_path):
            raise FileNotFoundError(f"RunFolder: {self.path!r} has no {MODEL} (no epoch was selected yet)")
        load_model(model, self.model_path, strict=True, device=str(device))
        return model

    # Writers: the fit loop's, on rank 0.

    def write_config(self, config: Mapping[str, Any]) -> None:
        _write_json(self.config_path, config)

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        _write_json(self.summary_path, summary)

    def save_model(self, model: torch.nn.Module, metadata: Mapping[str, str]) -> None:
        """Writes ``model``'s weights to model.safetensors atomically (tied weights stored once)."""
        from safetensors.torch import save_model

        atomic_write(self.model_path, lambda tmp: save_model(model, tmp, metadata=dict(metadata)))

    def append_metrics(self, record: Mapping[str, Any]) -> None:
        """Appends ``record`` as one line in one write."""
        data = (json.dumps(record) + "\n").encode()
        fd = os.open(self.metrics_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def metrics_size(self) -> int:
        return os.path.getsize(self.metrics_path) if os.path.isfile(self.metrics_path) else 0

    def truncate_metrics(self, size: int) -> None:
        """Cuts metrics.jsonl back to its first ``size`` bytes (a checkpoint's record), atomically."""
        head = b""
        if os.path.isfile(self.metrics_path):
            with open(self.metrics_path, "rb") as f:
                head = f.read(size)
        if len(head) != size:
            raise ValueError(
                f"resume: {self.metrics_path!r} holds {len(head)} bytes; the checkpoint recorded {size}"
            )

        def write(tmp: str) -> None:
            with open(tmp, "wb") as out:
                out.write(head)

        atomic_write(self.metrics_path, write)

    def prune_checkpoints(self, keep: int | None) -> None:
        """Removes all but the newest ``keep`` checkpoints (None keeps all, 0 none)."""
        if keep is not None:
            found = self.checkpoints()
            for path in found[: max(len(found) - keep, 0)]:
                os.remove(path)

    def clear_outputs(self) -> None:
        """Removes everything but config.json (a resumed run that had no checkpoint starts over)."""
        for path in (self.metrics_path, self.summary_path, self.model_path):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        for path in self.checkpoints():
            os.remove(path)


def _short(value: Any, limit: int = 60) -> str:
    """repr(value), cut in the middle to ``limit`` characters (a config holds whole optimizer settings; two
    paths differ in their ends more often than in their beginnings)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    head = (limit - 3) // 2
    return text[:head] + "..." + text[len(text) - (limit - 3 - head) :]


def _differences(old: Any, new: Any, where: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new), key=str):
            sub = f"{where}.{k}" if where else str(k)
            if k not in old:
                out.append(f"{sub}: (absent) -> {_short(new[k])}")
            elif k not in new:
                out.append(f"{sub}: {_short(old[k])} -> (absent)")
            else:
                out += _differences(old[k], new[k], sub)
        return out
    same = old == new or (
        isinstance(old, float) and isinstance(new, float) and math.isnan(old) and math.isnan(new)
    )
    return [] if same else [f"{where}: {_short(old)} -> {_short(new)}"]


def holds_files(path: str) -> bool:
    """Whether the folder holds anything but hidden entries (a killed writer's temp files, .DS_Store)."""
    return any(not name.startswith(".") for name in os.listdir(path))


def prepare_run(
    out: str | os.PathLike[str],
    settings: Mapping[str, Any],
    environment: Mapping[str, Any],
    *,
    resume: bool,
    overwrite: bool,
    locations: Sequence[str] = (),
    data_draws_random: bool = True,
) -> tuple[RunFolder, str | None]:
    """Makes ``out`` ready for a run with ``settings`` (``{"config": ..., "fit": ...}``, JSON types).

    ``locations`` names entries of ``settings["config"]`` that say where an input is (a path), not what
    it holds: a resume accepts another path for them, and records it. ``data_draws_random=False`` says
    that the run's Datasets draw no random numbers, so that a resume with another ``num_workers`` gives
    the same samples and is not warned about.

    Returns:
        The run folder, holding the folder's lock (:meth:`RunFolder.unlock` releases it), and the
        checkpoint to resume from: None to start from the beginning, :data:`FINISHED` for a finished
        run that kept no checkpoint (nothing to train).

    Raises:
        ValueError: ``out`` is a file; a non-empty folder that holds no run; a run with other settings
            without ``overwrite``; a run with these settings without ``resume`` or ``overwrite``.
        FileExistsError: another process is training in ``out`` (its lock is held); ``overwrite`` of
            a folder whose config.json is not a run's, or of the current folder or one above it.
    """
    path = os.path.abspath(os.fspath(out))
    run = RunFolder(path)
    record = {**settings, "environment": dict(environment)}
    if os.path.lexists(path) and not os.path.isdir(path):
        raise ValueError(f"fit: out={path!r} is a file; expected a folder (new, empty or holding a run)")
    if not os.path.isdir(path) or not holds_files(path):
        run.write_config(record)
        run._lock = _lock(path)
        return run, None
    if not run.is_run():
        raise ValueError(
            f"fit: out={path!r} holds files but no {CONFIG}, so it is not a run folder; choose a new or "
            "empty folder (overwrite=True replaces run folders only)"
        )
    # before anything in it changes: two processes resuming one folder interleaved their epochs
    run._lock = _lock(path)
    try:
        return run, _prepare_existing(
            run, record, settings, resume=resume, overwrite=overwrite, locations=locations,
            data_draws_random=data_draws_random,
        )  # fmt: skip
    except BaseException:
        run.unlock()
        raise


LOCK = ".lock"


def _lock(folder: str) -> int | None:
    """An exclusive lock on ``folder/.lock``, held through the returned descriptor until it is closed
    (by the process's end at the latest); None where the file system or platform has no such locks.

    Raises:
        FileExistsError: another process holds it: a run is training in the folder.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX
        return None
    fd = os.open(os.path.join(folder, LOCK), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FileExistsError(
            f"fit: out={folder!r} is in use: another process is training in it (it holds the folder's "
            f"{LOCK}); wait for it to end, or choose another out"
        ) from None
    except OSError:  # a file system without flock (some network ones): no lock, as before
        os.close(fd)
        return None
    return fd


def _prepare_existing(
    run: RunFolder,
    record: dict[str, Any],
    settings: Mapping[str, Any],
    *,
    resume: bool,
    overwrite: bool,
    locations: Sequence[str] = (),
    data_draws_random: bool = True,
) -> str | None:
    """prepare_run for a folder holding a run, whose lock ``run`` holds."""
    path = run.path
    if overwrite:
        # a config.json alone does not make a run (a project's, an app's): replacing deletes the folder
        _checks.check_replaceable("fit", "out", path)
        if not _checks.holds_keys(run.config_path, RUN_KEYS):
            raise FileExistsError(
                f"fit: out={path!r} holds a {CONFIG} that is not a run's (no config, fit and environment "
                "entries), and overwrite=True replaces only run folders; choose a new or empty out"
            )
        new = RunFolder(path)
        try:
            with replacing_dir(path) as staging:
                RunFolder(staging).write_config(record)
                new._lock = _lock(staging)  # the new folder's, taken before it replaces the old one
        except BaseException:
            new.unlock()
            raise
        run.unlock()
        run._lock, new._lock = new._lock, None
        return None
    stored = run.read_config()
    old = {k: stored.get(k) for k in settings}
    extended = _extension(old, settings) if resume else None
    moved = _moved(old, settings, locations)
    workers = _workers(old, settings)
    # what a resume may change: more epochs (nothing else in fit depends on them), where an input is (its
    # content is in other entries), and the DataLoader workers (the same batches; a warning below)
    if _differences(_changed(old, moved, extended, workers), dict(settings)):
        # the paths too, which say which data differ (more epochs and other workers are no difference)
        diffs = _differences(_changed(old, {}, extended, workers), dict(settings))
        shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
        raise ValueError(
            f"fit: out={path!r} holds a run with a different config ({shown}); pass overwrite=True "
            "(--overwrite) to replace it, or choose another out"
        )
    latest = run.latest_checkpoint()
    if not resume:
        done = (
            "finished"
            if os.path.isfile(run.summary_path)
            else f"checkpointed at epoch {run.checkpoint_epoch(latest)}"
            if latest
            else "no checkpoint yet"
        )
        if moved:
            done += "; " + ", ".join(f"config.{k} moved from {a!r} to {b!r}" for k, (a, b) in moved.items())
        raise ValueError(
            f"fit: out={path!r} already holds a run with this config ({done}); "
            "pass resume=True (--resume) to continue it or overwrite=True (--overwrite) to replace it"
        )
    if extended is not None and latest is None and os.path.isfile(run.summary_path):
        raise ValueError(
            f"fit: out={path!r} holds a run finished after {extended[0]} epochs that kept no checkpoint "
            f"(keep_checkpoints=0), so it cannot go on to {extended[1]}; train it again with "
            "overwrite=True, or keep checkpoints next time"
        )
    trains = extended is not None or not os.path.isfile(run.summary_path)  # a finished run trains no more
    if workers is not None and not trains:
        workers = None  # its epochs all ran with the recorded workers
    if workers is not None and latest is not None and data_draws_random and _workers_matter(settings):
        warnings.warn(
            f"fit: resuming {path!r} after epoch {run.checkpoint_epoch(latest)} with num_workers="
            f"{workers[1]}, where config.json records {workers[0]}: the batches are the same, but DataLoader "
            "workers draw random numbers from per-worker seeds, so a Dataset (or collate_fn) that draws them "
            "(random augmentation) gives other samples than it would have, and the run is not bitwise an "
            f"uninterrupted one; config.json records num_workers={workers[1]} from now on",
            RuntimeWarning,
            stacklevel=3,
        )
    if extended is not None or moved or workers is not None:
        run.write_config({**stored, **_changed(stored, moved, extended, workers)})
    if extended is not None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(run.summary_path)  # not finished any more: its summary comes when the new epochs end
    if latest is None:
        if os.path.isfile(run.summary_path):
            # finished without a checkpoint (keep_checkpoints=0): done, as a finished run with one is;
            # starting over would delete its model (a resumed --subject all retrained every subject)
            return FINISHED
        if _holds_outputs(run):
            warnings.warn(
                f"fit: out={path!r} holds a run with no checkpoint to resume from (keep_checkpoints=0, or "
                "stopped before the first epoch ended): it starts again from epoch 1",
                RuntimeWarning,
                stacklevel=3,
            )
        run.clear_outputs()
    return latest


def _extension(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[int, int] | None:
    """(stored, new) epochs when ``new`` asks for more epochs than the stored run's fit settings, else
    None. A schedule over the epochs (a cosine's T_max) still differs, and is refused as a difference."""
    before, after = (c.get("fit", {}).get("epochs") if isinstance(c.get("fit"), Mapping) else None
                     for c in (old, new))  # fmt: skip
    if isinstance(before, int) and isinstance(after, int) and after > before:
        return before, after
    return None


def _moved(
    old: Mapping[str, Any], new: Mapping[str, Any], locations: Sequence[str]
) -> dict[str, tuple[str, str]]:
    """{key: (stored, new) path} of the ``locations`` whose path changed (a path for none, or the reverse,
    is another input, not a move)."""

    def config(c: Mapping[str, Any]) -> Mapping[str, Any]:
        v = c.get("config")
        return v if isinstance(v, Mapping) else {}

    before, after = config(old), config(new)
    return {
        k: (before[k], after[k])
        for k in locations
        if isinstance(before.get(k), str) and isinstance(after.get(k), str) and before[k] != after[k]
    }


def _changed(
    stored: Mapping[str, Any],
    moved: Mapping[str, tuple[str, str]],
    extended: tuple[int, int] | None,
    workers: tuple[int, int] | None,
) -> dict[str, Any]:
    """``stored`` (config.json, or its config and fit entries) with the new paths, epochs and workers."""
    out = dict(stored)
    if moved:
        out["config"] = {**stored["config"], **{k: new for k, (_, new) in moved.items()}}
    fit = {
        **({"epochs": extended[1]} if extended is not None else {}),
        **({"num_workers": workers[1]} if workers is not None else {}),
    }
    if fit:
        out["fit"] = {**stored["fit"], **fit}
    return out


def _workers(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[int, int] | None:
    """(stored, new) num_workers when they differ, else None."""
    before, after = (c.get("fit", {}).get("num_workers") if isinstance(c.get("fit"), Mapping) else None
                     for c in (old, new))  # fmt: skip
    if isinstance(before, int) and isinstance(after, int) and before != after:
        return before, after
    return None


def _workers_matter(settings: Mapping[str, Any]) -> bool:
    """Whether fit builds a DataLoader with ``num_workers`` (for a Dataset; a DataLoader has its own)."""
    fit = settings.get("fit", {})
    return any(isinstance(d, Mapping) and d.get("type") != "DataLoader"
               for d in (fit.get("train_data"), fit.get("val_data")))  # fmt: skip


def _holds_outputs(run: RunFolder) -> bool:
    return any(os.path.exists(p) for p in (run.metrics_path, run.model_path))
