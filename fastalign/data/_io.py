"""File helpers shared by the data loaders: reading ``.npy`` files without running code, and writes that
replace a file, a folder or a set of files as a unit.

Reading. THINGS-EEG2 stores every file as ``np.save`` of a Python dict, which numpy pickles, and a pickle
can call any function it names: ``np.load(..., allow_pickle=True)`` of a file from elsewhere runs whatever
its author put there. :func:`load_npy` reads the header with ``numpy.lib.format``, reads plain arrays with
``allow_pickle=False`` and unpickles object arrays with :class:`_NumpyUnpickler`, which rebuilds numpy
arrays, dtypes and scalars plus the dicts, lists, tuples, strings and numbers that pickle builds without
naming a function, and refuses every other global with an error naming the file and the global. The
writers (:func:`save_npy`, :func:`save_many_npy`) pickle dicts only, as the published files are, and refuse
content that :func:`load_npy` would refuse to read.

Writing. One file is written to a temp file beside it and renamed over it (:func:`atomic_write`), a folder
is built beside it and swapped in (:func:`replacing_dir`), and several files of one folder are committed
by one folder rename (:func:`save_many_npy`). Temp files and folders are named
``.<target>.<pid>-<token>.<tmp|old|commit>``, pid being the writer's process, so that the next write of the
same target finishes or removes what a writer that no longer runs (a killed one) left. They are created
with mode 0o666 / 0o777 less the umask, as ``open`` and ``os.mkdir`` create files, so outputs get the
permissions any other file would. Concurrent writers of one target are not supported (the last rename
wins); the process check is local, so a writer on another machine that shares the folder counts as gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import glob
import hashlib
import json
import math
import os
import pickle
import re
import secrets
import shutil
import stat
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, BinaryIO

import numpy as np
import torch
from numpy.lib import format as npy_format

from fastalign import _checks
from fastalign._checks import OUTPUT_MANIFEST


def require_file(path: str | os.PathLike[str], what: str) -> str:
    """``path`` as a str; FileNotFoundError naming ``what`` it should hold when it is not a file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: expected a file at {path!r}, found none")
    return path


def read_json_object(path: str | os.PathLike[str], what: str) -> dict[str, Any]:
    """The JSON object in the file at ``path`` (the one reader of fastalign's JSON files).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not valid JSON, or JSON that is not an object; the message starts with ``what``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: no file at {path!r}")
    with open(path, encoding="utf-8") as f:
        try:
            value = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{what}: {path!r} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what}: {path!r} must hold a JSON object, got {type(value).__name__}")
    return value


class _RefusedGlobal(ValueError):
    """A pickle in a data file names a function or class outside the allow-list."""


# The globals np.save's pickles of object arrays name: numpy.core in numpy 1.x, numpy._core in 2.x.
_RECONSTRUCT = np.empty(0).__reduce__()[0]
_SCALAR = np.float64(0).__reduce__()[0]
_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    **{(core, "_reconstruct"): _RECONSTRUCT for core in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(core, "scalar"): _SCALAR for core in ("numpy.core.multiarray", "numpy._core.multiarray")},
}
_HEADER_READERS = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}


class _NumpyUnpickler(pickle.Unpickler):
    """Unpickles what ``np.save`` writes for object arrays and refuses every other global.

    ``_reconstruct`` only builds empty ndarrays, and numpy's ``__setstate__`` of an object array takes its
    items as a list of already unpickled (hence checked) objects, so the allowed globals run no code that
    the file chooses.
    """

    def __init__(self, file: BinaryIO, source: str) -> None:
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise _RefusedGlobal(
                f"{self._source} pickles a reference to {module}.{name}, which is refused: unpickling it "
                "could run code. Only numpy arrays, dtypes and scalars, dicts, lists, tuples, strings and "
                "numbers are read from data files"
            ) from None


#: What to do with AlignVis's own preprocessed files (Preprocessed_data_250Hz: pickle.dump under .npy
#: names, their times 50 samples longer than their data).
ALIGNVIS_HINT = (
    "AlignVis's own preprocessed files (Preprocessed_data_250Hz) are such: make fastalign's from the raw "
    "THINGS-EEG2 files with `fastalign preprocess --recipe alignvis` (the same steps)"
)


def load_npy(path: str | os.PathLike[str], what: str, *, objects: bool = False) -> Any:
    """Reads an ``.npy`` file without running code from it (see the module doc).

    Args:
        path: The file. While a :func:`save_many_npy` commit that holds a newer copy of it is pending, that
            copy is read.
        what: What the file is, for error messages (e.g. "fMRI responses").
        objects: Also read object arrays (``np.save`` of a dict or list), through the restricted
            unpickler; else such a file is an error, since plain arrays never need pickling.

    Returns:
        The array; for an object file, the pickled array, or the object a 0-d one holds (the dict that
        ``np.save`` of a dict wrote).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a .npy file, a damaged or truncated one, an object array without ``objects``, or a
            pickle naming a global outside the allow-list; the message names the file.
    """
    path = os.fspath(path)
    source = f"{what}: {path!r}"
    with _open_current(path, what) as f:
        head = f.read(4)
        if head[:1] == b"\x80":  # a pickle's PROTO opcode: pickle.dump under a .npy name
            raise ValueError(
                f"{source} is a bare pickle (pickle.dump under a .npy name), not a .npy file: fastalign "
                f"does not unpickle files, which can run code; {ALIGNVIS_HINT}"
            )
        if head == b"PK\x03\x04":  # an .npz, or torch.save's format: say so, not "the magic string"
            raise ValueError(f"{source} is a zip archive (an .npz or a torch file), not a .npy array")
        f.seek(0)
        try:
            version = npy_format.read_magic(f)
        except ValueError as err:
            raise ValueError(f"{source} is not a .npy file ({err}); expected what np.save writes") from err
        if version not in _HEADER_READERS:
            raise ValueError(f"{source} is .npy format {version[0]}.{version[1]}; expected 1.0 or 2.0")
        try:
            shape, _, dtype = _HEADER_READERS[version](f)
        except ValueError as err:
            raise ValueError(f"{source} has a damaged .npy header ({err})") from err
        if not dtype.hasobject:
            need, have = math.prod(shape) * dtype.itemsize, os.fstat(f.fileno()).st_size - f.tell()
            if have < need:
                raise ValueError(
                    f"{source} is truncated: it holds {have} bytes of data, expected {need} for a {dtype} "
                    f"array of shape {shape}"
                )
            f.seek(0)
            return npy_format.read_array(f, allow_pickle=False)
        if not objects:
            raise ValueError(
                f"{source} holds a pickled object array; expected a plain numeric array (plain arrays "
                "need no pickling, and a pickle could run code)"
            )
        try:
            obj = _NumpyUnpickler(f, source).load()
        except (_RefusedGlobal, MemoryError):
            raise
        except Exception as err:  # which error a damaged pickle raises depends on its bytes
            raise ValueError(
                f"{source} holds damaged or truncated pickled data ({type(err).__name__}: {err})"
            ) from err
    if type(obj) is not np.ndarray or obj.shape != shape:
        raise ValueError(
            f"{source} pickles a {type(obj).__name__}; expected the object array of shape {shape} that "
            "np.save writes"
        )
    return obj.item() if obj.shape == () else obj


def load_pickled_dict(path: str | os.PathLike[str], keys: Iterable[str], what: str) -> dict[str, Any]:
    """Loads an ``np.save``'d dict with :func:`load_npy` (so no code runs) and checks that it holds ``keys``.

    Args:
        path: The ``.npy`` file.
        keys: Keys the dict must have.
        what: What the file is, for error messages (e.g. "THINGS-EEG2 preprocessed EEG").

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: the file is damaged, refused by :func:`load_npy`, not a dict, or lacks a key.
    """
    path = os.fspath(path)
    obj = load_npy(path, what, objects=True)
    if not isinstance(obj, dict):
        raise ValueError(
            f"{what}: {path!r} must hold a dict saved with np.save, got {type(obj).__name__}"
            + (f" of shape {obj.shape}" if isinstance(obj, np.ndarray) else "")
        )
    missing = [k for k in keys if k not in obj]
    if missing:
        raise ValueError(f"{what}: {path!r} lacks key(s) {missing}; it has {sorted(map(str, obj))}")
    return obj


_NUMPY_FLOATS = (torch.float16, torch.float32, torch.float64)
#: The magnitudes that the data statistics (MVNN, normalisation) leave unscaled: largest absolute values
#: in [SAFE_LOW, SAFE_HIGH) (frexp exponents -400..400). Squares of values up to 2**400 and sums of 2**200
#: of them stay finite, and squares down to 2**-401 stay normal; data beyond are brought into [0.5, 1) by
#: an exact power of two (:func:`fastalign._checks.magnitude_shift` with these bounds).
SAFE_LOW, SAFE_HIGH = 2.0**-401, 2.0**400


def check_array(
    value: Any, name: str, source: str, *, ndim: int | tuple[int, ...], finite: bool = True
) -> np.ndarray:
    """``value`` as a real ndarray with ``ndim`` dimensions and (if ``finite``) no NaN or inf.

    ``source`` names where the array came from (a file or an argument) for the error message. A torch
    tensor is detached and copied to the CPU; floating dtypes numpy lacks (bfloat16, float8) are widened
    to float32, which holds their values exactly.
    """
    if isinstance(value, torch.Tensor):
        if value.is_complex():  # complex32 has no numpy dtype either; complex is refused below anyway
            raise TypeError(f"{source}: {name} must be a real numeric array, got dtype {value.dtype}")
        value = value.detach().cpu()
        if value.is_floating_point() and value.dtype not in _NUMPY_FLOATS:
            value = value.float()
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


# ---- writing ---------------------------------------------------------------------------------------

#: Name under which save_many_npy stages and commits its sets: ``.fastalign-txn.<pid>-<token>.commit``.
_TXN = "fastalign-txn"
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _temp_name(path: str, kind: str) -> str:
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.{os.getpid()}-{secrets.token_hex(4)}.{kind}")


def _create_temp(path: str, *, directory: bool) -> str:
    """A new empty temp file or folder beside ``path``, mode 0o666 / 0o777 less the umask."""
    while True:
        tmp = _temp_name(path, "tmp")
        try:
            if directory:
                os.mkdir(tmp, 0o777)
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp


def _running(pid: int) -> bool:
    if os.name != "posix":  # no harmless probe: os.kill(pid, 0) sends CTRL_C_EVENT on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a live process of another user
        pass
    return True


def _leftovers(path: str) -> list[tuple[str, str]]:
    """(path, kind) of the temp files and folders beside ``path`` whose writer no longer runs, by name."""
    folder, name = os.path.split(os.path.abspath(path))
    pattern = re.compile(rf"\.{re.escape(name)}\.(\d{{1,9}})-[0-9a-f]{{8}}\.(tmp|old|commit)")
    try:
        entries = sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
    matches = [(entry, pattern.fullmatch(entry)) for entry in entries]
    return [(os.path.join(folder, e), m[2]) for e, m in matches if m and not _running(int(m[1]))]


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


def _recover(path: str) -> None:
    """Finishes or undoes what killed writers of ``path`` left beside it.

    A committed set is moved into place (see :func:`save_many_npy`); an old folder that a kill left moved
    aside while ``path`` is missing is put back (see :func:`_swap_in`); anything else is removed.
    """
    for entry, kind in _leftovers(path):
        if kind == "commit":
            _roll_forward(entry)
        elif kind == "old" and not os.path.lexists(path):
            os.rename(entry, path)
        else:
            _remove(entry)


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None]) -> str:
    """Runs ``write(tmp_path)`` on a temp file beside ``path``, then renames it onto ``path``.

    A crash or an exception leaves ``path`` as it was (absent or the old file), never half-written; the
    temp file a killed run left is removed by the next write of ``path``.
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    _recover(path)
    tmp = _create_temp(path, directory=False)
    mode = stat.S_IMODE(os.stat(tmp).st_mode)  # 0o666 less the umask, as open() would create it
    try:
        write(tmp)
        if stat.S_IMODE(os.stat(tmp).st_mode) != mode:  # a writer that made its own file (safetensors: 0o600)
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        full = _disk_full(exc, path)
        if full is not None:
            raise full from exc
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> str:
    """Writes ``text`` (UTF-8) to ``path`` with :func:`atomic_write`; returns the path."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, write)


def _disk_full(exc: BaseException, path: str) -> OSError | None:
    """An OSError naming ``path`` when ``exc`` came from a full disk, else None. The writers say so in
    their own words, naming no file: torch.save "[enforce fail at inline_container.cc] unexpected pos",
    safetensors "I/O error: No space left on device", Python an ENOSPC OSError."""
    text = str(exc)
    if not (
        (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT))
        or "No space left on device" in text
        or "Disk quota exceeded" in text
        or ("inline_container" in text and "unexpected pos" in text)
    ):
        return None
    folder = os.path.dirname(os.path.abspath(path))
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB free there now"
    except OSError:
        free = "its free space unknown"
    return OSError(
        errno.ENOSPC,
        f"could not write {path!r}: the disk (or quota) holding {folder!r} is full ({free}); the old file, "
        "if any, is unchanged",
    )


@functools.cache
def _renameat2() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)  # glibc >= 2.28
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        fn.restype = ctypes.c_int
    return fn


def _exchange(a: str, b: str) -> bool:
    """Swaps two existing paths in one atomic step (renameat2 RENAME_EXCHANGE); False where the system or
    the file system cannot."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), a, None, b)


def _swap_in(staging: str, path: str) -> None:
    """Puts the folder ``staging`` at ``path``, replacing what is there.

    Where the system swaps two paths atomically (Linux: ext4, xfs, btrfs, tmpfs, ...), ``path`` is at every
    instant the complete old or the complete new folder. Elsewhere the old folder is first renamed to
    ``.<name>.<pid>-<token>.old``; a kill before the second rename leaves ``path`` missing until the next
    write of it puts the old folder back (:func:`_recover`).
    """
    if not os.path.lexists(path):
        try:
            os.rename(staging, path)
            return
        except OSError as exc:  # another writer put its folder there since: replace that one below
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
    if _exchange(staging, path):
        _remove(staging)  # now the old folder
    else:
        old = _temp_name(path, "old")
        os.rename(path, old)
        os.rename(staging, path)
        _remove(old)


@contextlib.contextmanager
def replacing_dir(path: str | os.PathLike[str], *, manifest: bool = False) -> Iterator[str]:
    """Builds a folder that replaces ``path`` as a unit.

    Yields a new empty folder beside ``path`` (mode 0o777 less the umask), after finishing or removing
    what killed writers of ``path`` left. When the block ends normally the folder takes ``path``'s place
    (see :func:`_swap_in`); when it raises, the folder is removed and ``path`` stays as it was. With
    ``manifest`` the folder gets :data:`~fastalign._checks.OUTPUT_MANIFEST`, the list of the files written
    into it, from which :func:`fastalign._checks.unlisted_files` later tells the files a user added (which
    replacing it again would delete).
    """
    path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _recover(path)
    staging = _create_temp(path, directory=True)
    try:
        yield staging
        if manifest:
            listed = _checks.files_under(staging)
            atomic_write_text(os.path.join(staging, OUTPUT_MANIFEST), json.dumps({"files": listed}) + "\n")
    except BaseException:
        _remove(staging)
        raise
    _swap_in(staging, path)


def _roll_forward(commit: str) -> None:
    """Moves the files of a committed set onto their namesakes beside it (see :func:`save_many_npy`)."""
    folder = os.path.dirname(commit)
    for name in sorted(os.listdir(commit)):
        os.replace(os.path.join(commit, name), os.path.join(folder, name))
    os.rmdir(commit)


def _pending_copies(path: str) -> list[str]:
    """Copies of ``path`` in committed save_many_npy sets not yet moved into place, the winner last."""
    folder, name = os.path.split(os.path.abspath(path))
    return sorted(glob.glob(os.path.join(glob.escape(folder), f".{_TXN}.*.commit", glob.escape(name))))


def _open_current(path: str, what: str) -> BinaryIO:
    for copy in reversed(_pending_copies(path)):
        with contextlib.suppress(FileNotFoundError):  # moved into place meanwhile: path is that file now
            return open(copy, "rb")
    return open(require_file(path, what), "rb")


def _unreadable(obj: Any, where: str) -> str | None:
    """What in ``obj`` :class:`_NumpyUnpickler` would refuse, and where, else None."""
    if type(obj) in (str, bytes, int, float, bool, type(None)) or (
        isinstance(obj, np.generic) and not obj.dtype.hasobject
    ):
        return None
    if type(obj) is np.ndarray:
        children = [(f"{where}[{i}]", v) for i, v in enumerate(obj.flat)] if obj.dtype.hasobject else []
    elif type(obj) is dict:
        children = [(f"{where} (a key)", k) for k in obj] + [(f"{where}[{k!r}]", v) for k, v in obj.items()]
    elif type(obj) in (list, tuple):
        children = [(f"{where}[{i}]", v) for i, v in enumerate(obj)]
    else:
        return f"a {type(obj).__module__}.{type(obj).__qualname__} at {where or 'the top level'}"
    return next((bad for at, v in children if (bad := _unreadable(v, at)) is not None), None)


def _check_storable(obj: Any, path: str) -> None:
    if isinstance(obj, dict):
        bad = _unreadable(obj, "")
    else:
        bad = "an object array" if np.asarray(obj).dtype.hasobject else None
    if bad is not None:
        raise TypeError(
            f"save_npy: {path!r} would hold {bad}; expected a dict (pickled, as the published THINGS-EEG2 "
            "files are) of arrays, numbers, strings, lists and dicts, or a plain numeric array (load_npy "
            "refuses anything else, since unpickling it could run code)"
        )


def _write_npy(file: str, obj: Any) -> None:
    with open(file, "wb") as f:
        np.save(f, obj, allow_pickle=isinstance(obj, dict))


def save_npy(path: str | os.PathLike[str], obj: Any) -> str:
    """``np.save(path, obj)`` atomically, in the published format: a dict is pickled (a 0-d object array),
    anything else must be a plain array and is written without pickling.

    Raises:
        TypeError: ``obj`` holds something :func:`load_npy` would refuse to read (any object other than
            arrays, numpy scalars, numbers, strings, bytes, None, lists, tuples and dicts).
    """
    path = os.fspath(path)
    _check_storable(obj, path)
    return atomic_write(path, lambda tmp: _write_npy(tmp, obj))


def save_many_npy(items: dict[str, Any]) -> list[str]:
    """Saves several ``.npy`` files of one folder (as :func:`save_npy`) so that they change as a unit.

    Protocol, in the files' folder F: every file is written into a staging folder
    ``F/.fastalign-txn.<pid>-<token>.tmp``; renaming that to ``....commit`` is the commit point; then each
    file is renamed onto its target and the emptied folder removed. Before the commit the old files are
    the current ones. From the commit on, :func:`load_npy` reads each file from the committed folder while
    it is there, so fastalign's readers see the complete new set even while the files move (or after a
    kill stopped them); other programs see the new set once the moves are done. The next save_many_npy
    into F finishes a committed set and removes an uncommitted one that a killed writer left. Files
    written this way should only be written this way: a pending commit takes precedence.

    Returns:
        The paths, in the order given.

    Raises:
        ValueError: the files are not distinct files of one folder.
        TypeError: a value holds something :func:`load_npy` would refuse to read.
    """
    paths = [os.fspath(p) for p in items]
    folders = {os.path.dirname(os.path.abspath(p)) for p in paths}
    names = [os.path.basename(p) for p in paths]
    if len(folders) > 1 or len(set(names)) != len(names):
        raise ValueError(
            "save_many_npy: expected distinct files of one folder (one folder rename commits them), "
            f"got {paths}"
        )
    for path, obj in zip(paths, items.values(), strict=True):
        _check_storable(obj, path)
    if not paths:
        return []
    folder = folders.pop()
    os.makedirs(folder, exist_ok=True)
    txn = os.path.join(folder, _TXN)
    _recover(txn)
    staging = _create_temp(txn, directory=True)
    try:
        for name, obj in zip(names, items.values(), strict=True):
            _write_npy(os.path.join(staging, name), obj)
        commit = staging.removesuffix(".tmp") + ".commit"
        os.rename(staging, commit)
    except BaseException:
        _remove(staging)
        raise
    _roll_forward(commit)
    return paths


def file_digest(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes (hex), read in blocks of 1 MiB."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def digest_files(paths: Sequence[str | os.PathLike[str]]) -> str:
    """A short hash of files' bytes, in order (not their names or places): the hash of their
    :func:`file_digest` values. align's config.json records its test images' (``test_images_digest``), so
    that evaluating the run on other images is refused wherever either dataset lives, also after its
    folder moved or is gone."""
    return hashlib.sha256("".join(file_digest(p) for p in paths).encode()).hexdigest()[:16]
