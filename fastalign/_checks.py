"""Argument checks shared by every public function, with one message format.

A failed check raises ``TypeError`` (the kind of value is wrong) or ``ValueError`` (its value is) with

    "<function>: <argument> must be <expected>, got <given>"

where <given> shows a scalar by its value and type (``1.5 (float)``, ``'7' (str)``, ``None``) and anything
else by its type (tensors and arrays with their shape and dtype). Shapes read "<argument> must have shape
<expected>, got <shape>". ``NotImplementedError`` is for backend refusals (fastalign._backend), not here.
Callers whose tests pin other words for what is expected pass them as ``expected``; a check too specific
to live here builds its message with :func:`message`, so it reads the same.

What it offers (``fn`` is the public function's name, ``name`` the argument's):

Messages and predicates
    message(fn, name, expected, value) -> str          the one format
    is_int(v) -> bool                                  Python or numpy int, not bool
    is_real(v) -> bool                                 Python or numpy int or float, not bool
Scalars (each returns the value as a plain Python object)
    check_int(fn, name, v, *, minimum=None, none=False, expected=None) -> int | None
    check_real(fn, name, v, *, positive=False, none=False, expected=None) -> float | None   (finite)
    check_seed(fn, seed, *, none=True) -> int | None   a torch.Generator seed, in [0, 2**63 - 1]
    check_bool(fn, name, v) -> bool                    Python or numpy bool
    check_choice(fn, name, v, choices) -> str
Tensors
    check_tensor(fn, name, v, *, shape=None, arrays=False) -> Tensor   (numpy arrays converted if arrays)
    check_shape(fn, name, t, shape, *, doc=None)       None in ``shape`` matches any size
    check_floating(fn, name, t, *, expected=None)      floating dtype (complex and integers refused)
    check_real_dtype(fn, name, t)                      complex refused
    exact_float(fn, name, t) -> Tensor                 integers and bools to float64, exactly or ValueError
    check_same_device(fn, **tensors)                   all on one device
Dtypes
    TRITON_DTYPES                                      what the Triton kernels take
    dtype_reasons(backend, dtypes, tensors) -> list[str]   a backend refusal per dtype it does not take
    compute_dtype(t_or_dtype) -> dtype                 float64 for float64, else float32
Exact power-of-two scaling (scale invariant statistics at any finite magnitude)
    pow2(k, dtype) -> Tensor                           2**k exactly
    magnitude_shift(max_abs, *, low, high, limit=None) exponents k bringing max_abs into [0.5, 1)
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar, overload

import numpy as np
import torch

_SCALARS = (bool, int, float, complex, str, bytes, np.generic)


def _given(value: Any) -> str:
    """How a message shows the value it refuses (see the module docstring)."""
    if value is None:
        return "None"
    kind = type(value).__name__
    if isinstance(value, _SCALARS):
        shown = repr(value) if isinstance(value, (str, bytes)) else str(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        return f"{shown} ({kind})"
    if isinstance(value, (torch.Tensor, np.ndarray)):
        dtype = str(value.dtype).removeprefix("torch.")
        return f"{kind} of shape {tuple(value.shape)} and dtype {dtype}"
    return kind


def message(fn: str, name: str, expected: str, value: Any) -> str:
    """``"<fn>: <name> must be <expected>, got <value>"``, the one format of every argument error."""
    return f"{fn}: {name} must be {expected}, got {_given(value)}"


def is_int(value: Any) -> bool:
    """Python and numpy integers; bools (Python's and numpy's) are neither counts nor indices."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_real(value: Any) -> bool:
    """Python and numpy integers and floats, bools excluded (``True`` as a temperature is a mistake)."""
    return is_int(value) or isinstance(value, (float, np.floating))


@overload
def check_int(
    fn: str, name: str, value: Any, *, minimum: int | None = None, expected: str | None = None
) -> int: ...
@overload
def check_int(
    fn: str, name: str, value: Any, *, minimum: int | None = None, none: bool, expected: str | None = None
) -> int | None: ...
def check_int(
    fn: str,
    name: str,
    value: Any,
    *,
    minimum: int | None = None,
    none: bool = False,
    expected: str | None = None,
) -> int | None:
    """``value`` as an int that is at least ``minimum``; None passes when ``none``.

    Raises:
        TypeError: not an int (bool and float are not).
        ValueError: below ``minimum``.
    """
    if value is None and none:
        return None
    if expected is None:
        expected = ("None or " if none else "") + "an int" + ("" if minimum is None else f" >= {minimum}")
    if not is_int(value):
        raise TypeError(message(fn, name, expected, value))
    if minimum is not None and value < minimum:
        raise ValueError(message(fn, name, expected, value))
    return int(value)


@overload
def check_real(
    fn: str, name: str, value: Any, *, positive: bool = False, expected: str | None = None
) -> float: ...
@overload
def check_real(
    fn: str, name: str, value: Any, *, positive: bool = False, none: bool, expected: str | None = None
) -> float | None: ...
def check_real(
    fn: str,
    name: str,
    value: Any,
    *,
    positive: bool = False,
    none: bool = False,
    expected: str | None = None,
) -> float | None:
    """``value`` as a finite float (> 0 when ``positive``); None passes when ``none``.

    Raises:
        TypeError: not a real number (bool, complex, str and tensors are not).
        ValueError: NaN, infinite, or not positive when ``positive``.
    """
    if value is None and none:
        return None
    if expected is None:
        expected = ("None or " if none else "") + "a finite number" + (" > 0" if positive else "")
    if not is_real(value):
        raise TypeError(message(fn, name, expected, value))
    number = float(value)
    if not math.isfinite(number) or (positive and number <= 0):
        raise ValueError(message(fn, name, expected, value))
    return number


# torch.Generator.manual_seed takes 64-bit seeds; negative ones alias large ones, so both ends are cut
_MAX_SEED = 2**63 - 1


def check_seed(fn: str, seed: Any, *, none: bool = True) -> int | None:
    """``seed`` as an int that torch.Generator.manual_seed takes without aliasing, [0, 2**63 - 1]; None
    (fresh randomness) passes when ``none``. A seed of the wrong kind is named by its type only.

    Raises:
        TypeError: not an int.
        ValueError: outside [0, 2**63 - 1].
    """
    if seed is None and none:
        return None
    expected = "an int in [0, 2**63 - 1]" + (" or None" if none else "")
    if not is_int(seed):
        raise TypeError(f"{fn}: seed must be {expected}, got {type(seed).__name__}")
    if not 0 <= seed <= _MAX_SEED:
        raise ValueError(message(fn, "seed", expected, seed))
    return int(seed)


def check_bool(fn: str, name: str, value: Any) -> bool:
    """``value`` as a bool (Python's or numpy's); 0 and 1 are not bools.

    Raises:
        TypeError: not a bool.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(message(fn, name, "a bool", value))
    return bool(value)


_Choice = TypeVar("_Choice")


def check_choice(fn: str, name: str, value: Any, choices: Collection[_Choice]) -> _Choice:
    """``value`` if it is one of ``choices``.

    Raises:
        ValueError: anything else (a value of another type included, as ``==`` finds no match).
    """
    if not isinstance(value, (torch.Tensor, np.ndarray)) and value in choices:
        return value
    raise ValueError(message(fn, name, f"one of {tuple(choices)}", value))


def check_out_folder(
    fn: str,
    name: str,
    path: str | os.PathLike[str],
    overwrite: bool,
    *,
    marker: str,
    marker_keys: Collection[str] = (),
    inputs: Sequence[str | os.PathLike[str]] = (),
    known: Callable[[str], bool] | None = None,
) -> str:
    """An output folder that a call will write as a unit: new, empty, or (with ``overwrite``) replaced,
    which deletes everything in it. Replacing is refused where it could delete what the call did not
    write: a folder without ``marker`` (the file every output of the call holds, e.g. summary.json; with
    ``marker_keys`` a JSON object holding those keys, which tell the call's summary.json from another
    command's), the current folder or one above it, the home folder, a folder holding any of ``inputs``
    (files or folders the call reads), and one holding files the call did not write (a user's notes, an
    edited figure), which the replacement would delete: files its output manifest (:data:`OUTPUT_MANIFEST`,
    written by ``fastalign.data._io.replacing_dir``) does not list, and, with ``known`` (a predicate on
    '/'-separated paths relative to the folder), only those ``known`` does not accept (outputs written
    before manifests: those it does not accept).

    Returns:
        The folder's absolute path.

    Raises:
        ValueError: an empty ``path`` (it would name the current folder), or ``inputs`` inside it.
        PermissionError: the folder it would be made in is not writable.
        FileExistsError: ``path`` is a file or under one, a non-empty folder without ``overwrite`` (the
            message names the argument and its flag: ``overwrite=True (--overwrite)``), or a non-empty
            folder that overwrite must not replace.
    """
    if os.fspath(path) == "":
        raise ValueError(f"{fn}: {name} must name a folder, got '' (an empty path)")
    folder = os.path.abspath(os.fspath(path))
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise FileExistsError(f"{fn}: {name} {os.fspath(path)!r} is a file, not a folder")
    above = os.path.dirname(folder)  # the nearest existing folder above must be one, and writable
    while not os.path.exists(above) and os.path.dirname(above) != above:
        above = os.path.dirname(above)
    if not os.path.isdir(above):
        raise FileExistsError(f"{fn}: {name} {os.fspath(path)!r} is under {above!r}, which is a file")
    if not os.access(above, os.W_OK | os.X_OK):
        raise PermissionError(f"{fn}: {name} {os.fspath(path)!r}: no permission to write in {above!r}")
    check_inputs_outside(fn, name, path, inputs)
    entries = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    if not entries:
        return folder
    # what overwrite=True could not replace is said at once, not after the user has added the flag
    full = "is not empty, and " if not overwrite else ""
    if marker not in entries:
        raise FileExistsError(
            f"{fn}: {name} {os.fspath(path)!r} {full}holds no {marker}, so {fn} did not write it, and "
            f"overwrite=True replaces only such outputs (it holds {_shown(entries)}); choose a new or "
            f"empty {name}"
        )
    if marker_keys and not holds_keys(os.path.join(folder, marker), marker_keys):
        raise FileExistsError(
            f"{fn}: {name} {os.fspath(path)!r} {full}holds another command's output (its {marker} lacks "
            f"{', '.join(sorted(marker_keys))}), and overwrite=True replaces only an earlier output of {fn}; "
            f"choose a new or empty {name}"
        )
    if not overwrite:
        raise FileExistsError(
            f"{fn}: {name} {os.fspath(path)!r} is not empty; pass overwrite=True (--overwrite) to replace it"
        )
    check_replaceable(fn, name, path)
    extra = added_files(folder, known)
    if extra:
        raise FileExistsError(
            f"{fn}: {name} {os.fspath(path)!r} holds what {fn} did not write ({_shown(extra)}), which "
            f"overwrite=True would delete with the folder it replaces; move them out, or choose a new or "
            f"empty {name}"
        )
    return folder


#: The list of the files a command wrote into its output folder (replacing_dir's ``manifest``).
OUTPUT_MANIFEST = ".fastalign-written.json"


def files_under(folder: str) -> list[str]:
    """Every file under ``folder`` (links included, not followed), as sorted '/'-separated relative paths,
    the manifest itself left out."""
    out = []
    for dirpath, _, filenames in os.walk(folder):
        rel = os.path.relpath(dirpath, folder)
        for name in filenames:
            p = name if rel == "." else f"{rel.replace(os.sep, '/')}/{name}"
            if p != OUTPUT_MANIFEST:
                out.append(p)
    return sorted(out)


def unlisted_files(folder: str | os.PathLike[str]) -> list[str] | None:
    """The files under ``folder`` that its :data:`OUTPUT_MANIFEST` does not list (added after the command
    wrote the folder), or None where there is no readable manifest (a folder written before manifests, or
    by another writer)."""
    folder = os.fspath(folder)
    try:
        with open(os.path.join(folder, OUTPUT_MANIFEST), encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    listed = doc.get("files") if isinstance(doc, dict) else None
    if not isinstance(listed, list) or not all(isinstance(p, str) for p in listed):
        return None
    known = set(listed)
    return [p for p in files_under(folder) if p not in known]


def added_files(folder: str, known: Callable[[str], bool] | None = None) -> list[str]:
    """The files in an earlier output ``folder`` that the call did not write: not in its manifest (where
    it has one) and not accepted by ``known`` (where given); none where there is neither."""
    unlisted = unlisted_files(folder)
    if unlisted is None:
        return [] if known is None else [p for p in files_under(folder) if not known(p)]
    return unlisted if known is None else [p for p in unlisted if not known(p)]


def _shown(entries: Sequence[str]) -> str:
    """The first five of ``entries``, and how many more."""
    return ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")


def check_inputs_outside(
    fn: str, name: str, path: str | os.PathLike[str], inputs: Sequence[str | os.PathLike[str]]
) -> None:
    """ValueError when an output folder ``path`` is or holds one of ``inputs`` (files or folders the call
    reads): writing the output there, as a unit, would delete them."""
    real = os.path.realpath(os.path.abspath(os.fspath(path)))
    for given in inputs:
        inner = os.path.realpath(os.fspath(given))
        if inner == real or inner.startswith(real.rstrip(os.sep) + os.sep):
            raise ValueError(
                f"{fn}: {name} {os.fspath(path)!r} holds the input {os.fspath(given)!r}, which writing the "
                f"output there would delete; choose another {name}"
            )


def check_replaceable(fn: str, name: str, path: str | os.PathLike[str]) -> None:
    """FileExistsError when replacing the folder ``path`` as a unit could delete more than an output:
    it is the current folder, one above it, the home folder or a file system's root."""
    real = os.path.realpath(os.path.abspath(os.fspath(path)))
    cwd = os.path.realpath(os.getcwd())
    home = os.path.realpath(os.path.expanduser("~"))
    root = os.path.dirname(real) == real
    if root or real in (cwd, home) or cwd.startswith(real.rstrip(os.sep) + os.sep):
        raise FileExistsError(
            f"{fn}: {name} {os.fspath(path)!r} is the current folder, one above it or the home folder; "
            "overwrite=True does not replace such folders: choose a new or empty one"
        )


def holds_keys(path: str, keys: Collection[str]) -> bool:
    """Whether ``path`` is a JSON object with every one of ``keys``."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and all(k in doc for k in keys)


def warn_if_window_clipped(
    fn: str, name: str, tmin: float, tmax: float, times: np.ndarray, what: str
) -> None:
    """Warns when a (tmin, tmax) window in seconds reaches more than one sample interval beyond the first
    or last of ``times`` (sorted): the samples inside are used, but fewer than the window asked for."""
    if times.size == 0:
        return
    step = float(np.median(np.diff(times))) if times.size > 1 else 0.0
    tol = 1e-9 * max(1.0, float(np.abs(times).max()))
    if tmin < times[0] - step - tol or tmax > times[-1] + step + tol:
        warnings.warn(
            f"{fn}: {name} [{tmin:g}, {tmax:g}] s reaches beyond the {what} samples ({times[0]:.3f} to "
            f"{times[-1]:.3f} s); only the samples within both are used",
            UserWarning,
            stacklevel=3,
        )


def device_problem(device: Any) -> str | None:
    """Why ``device`` (a str or torch.device) cannot run work on this machine, or None when it can: not
    a device name, no CUDA device (or not that many), a backend that is not available, or "meta" (no data)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        return f"expected a torch device such as cpu, cuda or cuda:1, got {device!r}"
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            built = "" if torch.version.cuda else ", built without CUDA"
            return f"{str(device)!r}: no CUDA device here (torch {torch.__version__}{built})"
        if dev.index is not None and dev.index >= count:
            return f"{str(device)!r}: this machine has {count} CUDA device(s), 0 to {count - 1}"
    elif dev.type == "meta":
        return f"{str(device)!r}: the meta device holds no data to compute with"
    elif dev.type != "cpu":
        backend = getattr(torch, dev.type, None)
        available = getattr(backend, "is_available", None)
        if available is None or not available():
            return f"{str(device)!r}: no {dev.type} device here"
    return None


def check_device(fn: str, name: str, device: Any) -> torch.device:
    """``device`` as a torch.device this machine has; a ValueError naming the argument otherwise."""
    problem = device_problem(device)
    if problem is not None:
        raise ValueError(f"{fn}: {name}: {problem}")
    return torch.device(device)


def torch_load_failure(exc: BaseException, path: str | os.PathLike[str] | None = None) -> str:
    """Why ``torch.load(..., weights_only=True)`` failed, for an error message: the exception's type and
    torch's own text, and, given the file's ``path``, its size and what it is where that is plain (an empty
    file; neither torch's zip format nor a legacy pickle). A file that holds objects other than tensors
    and containers is said to be one, where torch's message advises loading it with
    ``weights_only=False``, which would run the code a data file can hold."""
    import pickle

    size, head = None, b""
    if path is not None:
        try:
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                head = f.read(16)
        except OSError:
            pass
    if size == 0:
        return "empty file (0 bytes)"
    if size is not None and not (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):
        return f"not a torch checkpoint (zip or legacy pickle): {size:,} bytes starting {head[:8]!r}"
    if isinstance(exc, pickle.UnpicklingError) or str(exc).startswith("Weights only load failed"):
        why = (
            "it is no torch file of tensors (it holds other objects, or is another format; fastalign "
            "never unpickles objects, which can run code)"
        )
    else:
        why = f"{type(exc).__name__}: {str(exc) or '(no message)'}"
    return why if size is None else f"{why} (a file of {size:,} bytes)"


def some_keys(keys: Sequence[str], limit: int = 10) -> str:
    """The first ``limit`` of ``keys`` and how many there are, for an error message (a checkpoint of
    another model has hundreds)."""
    more = f" ... ({len(keys)} in all)" if len(keys) > limit else ""
    return f"{list(keys[:limit])}{more}"


def nonfinite_keys(state: Mapping[str, torch.Tensor]) -> list[str]:
    """The keys of a state dict whose floating or complex tensors hold NaN or inf.

    float32 / float64 CPU tensors are read in one pass of the compiled rsa_row_stats (max and min, NaN
    where a value is NaN; no boolean copy), where the extension is built: with ``isfinite(v).all()``
    loading a 224 px ReAlnet (100 million weights, safetensors) took 0.35-0.46 s, now 0.20-0.22 s (2-core
    Xeon, medians of 5, alternating)."""
    from fastalign import _ext

    fast = _ext.why_ops_missing(["rsa_row_stats"]) is None
    bad = []
    for k, v in state.items():
        if not (v.is_floating_point() or v.is_complex()) or not v.numel():
            continue
        if fast and v.dtype in (torch.float32, torch.float64) and v.device.type == "cpu":
            stats = torch.ops.fastalign.rsa_row_stats(v.detach().reshape(1, -1))[0]
            finite = math.isfinite(float(stats[0])) and math.isfinite(float(stats[1]))
        else:
            finite = bool(torch.isfinite(v).all())
        if not finite:
            bad.append(k)
    return bad


def check_tensor(
    fn: str, name: str, value: Any, *, shape: str | None = None, arrays: bool = False
) -> torch.Tensor:
    """``value`` as a tensor; with ``arrays`` a numpy array is converted (sharing its memory).

    Args:
        shape: the expected shape in words, e.g. "(N, D)", for the message only.

    Raises:
        TypeError: neither a tensor nor (with ``arrays``) a numpy array.
    """
    if arrays and isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor):
        kinds = "a torch.Tensor or numpy array" if arrays else "a torch.Tensor"
        raise TypeError(message(fn, name, kinds + (f" of shape {shape}" if shape else ""), value))
    return value


def check_shape(
    fn: str, name: str, t: torch.Tensor, shape: Sequence[int | None], *, doc: str | None = None
) -> None:
    """``t.shape`` matches ``shape`` (None matches any size).

    Args:
        doc: the shape in words, e.g. "(N, D)" or "(3,) (x's channels)"; default ``tuple(shape)``.

    Raises:
        ValueError: another number of dimensions or another size.
    """
    if t.dim() == len(shape) and all(s is None or s == n for s, n in zip(shape, t.shape, strict=True)):
        return
    raise ValueError(f"{fn}: {name} must have shape {doc or tuple(shape)}, got {tuple(t.shape)}")


def check_floating(fn: str, name: str, t: torch.Tensor, *, expected: str | None = None) -> None:
    """``t`` has a floating dtype.

    Raises:
        TypeError: an integer, bool or complex dtype.
    """
    if not t.is_floating_point():
        raise TypeError(f"{fn}: {name} must be {expected or 'a floating-point tensor'}, got dtype {t.dtype}")


def check_real_dtype(fn: str, name: str, t: torch.Tensor) -> None:
    """``t`` is not complex.

    Raises:
        TypeError: a complex dtype.
    """
    if t.is_complex():
        raise TypeError(f"{fn}: {name} must be real, got dtype {t.dtype}")


def exact_float(fn: str, name: str, t: torch.Tensor) -> torch.Tensor:
    """``t`` with integer and bool dtypes converted to float64 (binary model RDMs, counts); float8 to
    float32 (exactly: torch has few CPU kernels for float8, e.g. no max or type promotion); other floating
    tensors as they are.

    Raises:
        ValueError: (u)int64 values beyond 2**53, which float64 cannot hold exactly (distinct values
            would silently tie).
    """
    if t.is_floating_point():
        return t.to(torch.float32) if t.element_size() == 1 else t
    if t.dtype in (torch.int64, torch.uint64) and t.numel():
        # uint64 has no comparisons on CPU; viewed as int64, its values of 2**63 and more are negative
        v = t.view(torch.int64)
        lo = 0 if t.dtype == torch.uint64 else -(2**53)
        if int(v.amax()) > 2**53 or int(v.amin()) < lo:
            raise ValueError(
                f"{fn}: {name} holds {str(t.dtype).removeprefix('torch.')} values beyond 2**53, which "
                "float64 cannot hold exactly; pass float64 values"
            )
    return t.to(torch.float64)


def check_same_device(fn: str, **tensors: torch.Tensor) -> None:
    """All ``tensors`` (keyword: argument name) are on one device.

    Raises:
        ValueError: two or more devices, naming each argument's.
    """
    if len({t.device for t in tensors.values()}) > 1:
        names = " and ".join(tensors)
        where = " and ".join(f"{n} on {t.device}" for n, t in tensors.items())
        raise ValueError(f"{fn}: {names} must be on one device, got {where}")


#: The dtypes the Triton kernels take (they accumulate in float32; float64 has no tensor-core path).
TRITON_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16)


def dtype_reasons(backend: str, dtypes: Sequence[torch.dtype], tensors: Sequence[torch.Tensor]) -> list[str]:
    """Why ``backend``, which takes only ``dtypes``, cannot take these tensors: one reason per other dtype."""
    words = [str(d).removeprefix("torch.") for d in dtypes]
    allowed = words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"
    others = dict.fromkeys(t.dtype for t in tensors if t.dtype not in dtypes)
    return [f"{backend} takes {allowed} inputs, got {dtype}" for dtype in others]


def compute_dtype(t: torch.Tensor | torch.dtype) -> torch.dtype:
    """The dtype the backends accumulate in: float64 for float64 inputs, else float32."""
    dtype = t if isinstance(t, torch.dtype) else t.dtype
    return torch.float64 if dtype == torch.float64 else torch.float32


def pow2(k: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """2**k exactly, built from float64 bits (exp2 and ldexp round on some devices); |k| <= 1022."""
    return ((k.to(torch.int64) + 1023) << 52).view(torch.float64).to(dtype)


def _frexp_exponent(m: torch.Tensor) -> torch.Tensor:
    """torch.frexp(m).exponent of float64 m as int64, read from its bits (subnormals scaled into the
    normal range first): frexp's int32 exponent, converted to int64, made torch.compile's CPU code fail
    to compile (inductor's vectorised int32 -> int64 convert) in the correlation loss's backward graph."""
    sub = ((m.view(torch.int64) >> 52) & 0x7FF) == 0
    normal = torch.where(sub, m * 2.0**54, m)
    e = ((normal.view(torch.int64) >> 52) & 0x7FF) - 1022 - torch.where(sub, 54, 0)
    return torch.where((m == 0) | ~torch.isfinite(m), 0, e)  # frexp's 0 for 0, inf and NaN


@overload
def magnitude_shift(
    max_abs: torch.Tensor, *, low: float, high: float, limit: int | None = None
) -> torch.Tensor: ...
@overload
def magnitude_shift(
    max_abs: np.ndarray | float, *, low: float, high: float, limit: int | None = None
) -> np.ndarray: ...
def magnitude_shift(
    max_abs: torch.Tensor | np.ndarray | float, *, low: float, high: float, limit: int | None = None
) -> torch.Tensor | np.ndarray:
    """Power-of-two exponents k (int64, a tensor for a tensor, else an ndarray) that bring each largest
    magnitude into [0.5, 1) (``max_abs * 2**k``) where it is finite, nonzero and outside [low, high); 0
    elsewhere, so data of ordinary magnitude are left bit for bit as they are.

    Multiplying by 2**k is exact, so sums of squares of the scaled data neither overflow nor underflow,
    and scale-invariant statistics computed from them are those of the data. ``limit`` bounds |k|
    (keep 2**k and 2**-k normal in the data's dtype: |k| up to -log2 of its smallest normal).
    """
    if isinstance(max_abs, torch.Tensor):
        m = max_abs.detach().to(torch.float64)
        exponent = _frexp_exponent(m)
        shift = ((m > 0) & (m < low)) | ((m >= high) & torch.isfinite(m))
        k = torch.where(shift, -exponent, torch.zeros_like(exponent))
        return k if limit is None else k.clamp(-limit, limit)
    m_np = np.asarray(max_abs, dtype=np.float64)
    _, exp_np = np.frexp(m_np)
    shift_np = ((m_np > 0) & (m_np < low)) | ((m_np >= high) & np.isfinite(m_np))
    k_np = np.where(shift_np, -exp_np, 0).astype(np.int64)
    return k_np if limit is None else np.clip(k_np, -limit, limit)
