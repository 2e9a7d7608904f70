"""``fastalign rsa``: brain RDMs and time-resolved RSA from files (:func:`brain_rsa`), for recordings of
your own: MNE epochs (``.fif``) or arrays (``.npy``).

Each ``--brain`` file is one recording (a subject, a session): its RDM at each time window
(:func:`fastalign.time_resolved_rdms`) and, for each model RDM, their similarity at each window
(:func:`fastalign.compare_rdms`). Conditions are MNE's event codes in ascending order for epochs
(every epoch of a code averaged), the first axis for arrays; model RDMs must list the same conditions in
the same order. Nothing is read through pickle: ``.npy`` files must hold plain numeric arrays.

The output folder holds ``brain_rdms.npy`` (n_brains, n_windows, n_pairs), ``times.npy`` (each window's
mean time in seconds), with model RDMs or features ``model_rdms.npy`` (n_models, n_pairs), ``rsa.npy``
(n_brains, n_windows, n_models), ``rsa.csv`` (one row per brain, model and time) and ``figures/rsa.png``
/ ``.svg``, with two or more brains ``noise_ceiling.csv``, and ``summary.json``; it is replaced as a
unit.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastalign import _checks
from fastalign.cli.common import Command, finite_real, folder_path, positive_int, positive_real

_FN = "brain_rsa"
_RDM_METHODS = ("correlation", "cosine", "euclidean")  # crossnobis needs folds: not from averaged data
_COMPARE_METHODS = ("spearman", "pearson", "kendall_tau_a", "rho_a", "cosine")
#: rsa.csv's columns, in order.
RSA_COLUMNS = ("brain", "model", "time", "similarity", "noise_lower", "noise_upper")


@dataclass(frozen=True)
class BrainRSA:
    """What :func:`brain_rsa` computed.

    Attributes:
        brains: each brain file's name (its file name without extension and ``-epo``).
        times: (n_windows,) each window's mean sample time in seconds.
        rdms: (n_brains, n_windows, n_pairs) float64 condensed brain RDMs (scipy's order).
        models: each model's name (its file name without extension).
        model_rdms: (n_models, n_pairs) float64 condensed model RDMs.
        similarity: (n_brains, n_windows, n_models) float64 model-brain similarity.
        noise_lower, noise_upper: (n_windows,) noise ceiling over the brains (None with one brain).
        out: the folder written, or None.
    """

    brains: list[str]
    times: np.ndarray
    rdms: np.ndarray
    models: list[str]
    model_rdms: np.ndarray
    similarity: np.ndarray
    noise_lower: np.ndarray | None
    noise_upper: np.ndarray | None
    out: str | None


def _name(path: str) -> str:
    base = os.path.splitext(os.path.basename(path))[0]
    return re.sub(r"[-_]epo$", "", base) or base


def _unique(names: list[str], what: str) -> list[str]:
    seen = [n for i, n in enumerate(names) if n in names[:i]]
    if seen:
        raise ValueError(f"{_FN}: two {what} files have the name {seen[0]!r}; rename one")
    return names


def _read_epochs(path: str) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(n_conditions, n_channels, n_times) condition means, the times and the event codes (ascending) of an
    MNE epochs file."""
    import mne

    from fastalign._mne import group_epochs

    with warnings.catch_warnings():  # MNE warns about file names that do not end in -epo.fif
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            epochs = mne.read_epochs(path, preload=True, verbose="error")
        except Exception as exc:  # MNE raises many kinds for a file that holds no epochs
            raise ValueError(
                f"{_FN}: brain file {path!r} could not be read as MNE epochs ({type(exc).__name__}: {exc})"
            ) from exc
    grouped = group_epochs(epochs, _FN)
    codes = [int(c) for c in grouped.conditions]
    return grouped.condition_means(), np.asarray(grouped.times, dtype=np.float64), codes


def _read_array(path: str, sfreq: float | None, tmin: float | None) -> tuple[np.ndarray, np.ndarray, None]:
    """(n_conditions, n_channels, n_times) responses (repetitions averaged), their times, and None (an
    array names no conditions: its rows are the conditions in order)."""
    from fastalign.data._io import load_npy

    data = np.asarray(load_npy(path, f"{_FN}: brain"))
    if data.ndim not in (3, 4) or not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
        raise ValueError(
            f"{_FN}: brain file {path!r} holds a {data.dtype} array of shape {data.shape}; expected real "
            "numbers of shape (conditions, channels, times) or (conditions, repetitions, channels, times)"
        )
    if sfreq is None or tmin is None:
        raise ValueError(
            f"{_FN}: brain file {path!r} is an array without sample times; give sfreq (Hz, --sfreq) and tmin "
            "(the time of its first sample in seconds, --tmin)"
        )
    data = _finite(data.astype(np.float64), path, "brain")
    if data.ndim == 4:
        data = data.mean(axis=1)
    return data, tmin + np.arange(data.shape[-1]) / sfreq, None


def _read_brain(
    path: str, sfreq: float | None, tmin: float | None
) -> tuple[np.ndarray, np.ndarray, list[int] | None]:
    """A brain file's (n_conditions, n_channels, n_times) responses, times and event codes (None: .npy)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{_FN}: brain file {path!r} is not a file")
    low = path.lower()
    read: tuple[np.ndarray, np.ndarray, list[int] | None]
    if low.endswith((".fif", ".fif.gz")):
        read = _read_epochs(path)
        times = read[1]
        sf = 1.0 / float(np.median(np.diff(times))) if times.size > 1 else None
        if (sfreq is not None and sf is not None and not math.isclose(sfreq, sf, rel_tol=1e-6)) or (
            tmin is not None and not math.isclose(tmin, float(times[0]), abs_tol=1e-9)
        ):
            warnings.warn(
                f"{_FN}: --sfreq/--tmin ({sfreq}, {tmin}) apply to the .npy brains only; epochs file "
                f"{path!r} holds its own times ({'one sample' if sf is None else f'{sf:g} Hz'} from "
                f"{float(times[0]):g} s), which are used for it",
                UserWarning,
                stacklevel=3,
            )
    elif low.endswith(".npy"):
        read = _read_array(path, sfreq, tmin)
    else:
        raise ValueError(f"{_FN}: brain file {path!r} must be MNE epochs (.fif) or a numpy array (.npy)")
    if read[0].shape[0] < 3:
        raise ValueError(
            f"{_FN}: brain file {path!r} holds {read[0].shape[0]} condition(s); an RDM needs at least 3"
        )
    return read


def _read_model(path: str, flag: str) -> np.ndarray:
    from fastalign.data._io import load_npy

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{_FN}: {flag} file {path!r} is not a file")
    if not path.lower().endswith(".npy"):
        raise ValueError(f"{_FN}: {flag} file {path!r} must be a numpy array (.npy)")
    data = np.asarray(load_npy(path, f"{_FN}: {flag}"))
    if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data) or data.size == 0:
        raise ValueError(f"{_FN}: {flag} file {path!r} holds a {data.dtype} array; expected real numbers")
    return _finite(data.astype(np.float64), path, flag)


def _finite(data: np.ndarray, path: str, what: str) -> np.ndarray:
    """data, refused naming the file and the first bad index where it holds NaN or inf."""
    if not np.isfinite(data).all():
        bad = np.argwhere(~np.isfinite(data))[0].tolist()
        raise ValueError(
            f"{_FN}: {what} file {path!r} holds NaN or inf (first at index {bad}); expected finite values"
        )
    return data


def _condensed(matrix: np.ndarray, n: int, path: str) -> np.ndarray:
    """A model RDM as a condensed vector over ``n`` conditions: given condensed, or square."""
    pairs = n * (n - 1) // 2
    if matrix.ndim == 1 and matrix.shape[0] == pairs:
        return matrix
    if matrix.ndim == 2 and matrix.shape == (n, n):
        from fastalign.eval.brain import is_dissimilarity_matrix  # the rule of evaluate's behaviour RDMs

        if not is_dissimilarity_matrix(matrix):
            raise ValueError(
                f"{_FN}: model_rdm file {path!r} is a square matrix that is not a dissimilarity matrix "
                "(symmetric with a zero diagonal, up to rounding)"
            )
        return matrix[np.triu_indices(n, 1)]
    raise ValueError(
        f"{_FN}: model_rdm file {path!r} has shape {matrix.shape}; the brain data has {n} conditions, so "
        f"expected a condensed ({pairs},) vector or a square ({n}, {n}) matrix"
    )


def brain_rsa(
    brain: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str] | None = None,
    *,
    model_rdm: Sequence[str | os.PathLike[str]] = (),
    model_features: Sequence[str | os.PathLike[str]] = (),
    method: str = "correlation",
    compare: str = "spearman",
    window: int = 1,
    step: int = 1,
    sfreq: float | None = None,
    tmin: float | None = None,
    overwrite: bool = False,
) -> BrainRSA:
    """Brain RDMs over time and their similarity with model RDMs, from files (see the module doc).

    Args:
        brain: one or more recordings: MNE epochs files (``.fif``; conditions are the event codes in
            ascending order, each condition's epochs averaged, good data channels only) or ``.npy`` arrays
            (conditions, channels, times) or (conditions, repetitions, channels, times), repetitions
            averaged. All over the same conditions and sample times: epochs files must have the same
            event codes (summary.json lists them as ``event_codes``); an array's rows are taken in order.
        out: the output folder (replaced as a unit), or None to write nothing.
        model_rdm: ``.npy`` model RDMs over the same conditions: condensed (scipy's order) or square
            (symmetric with a zero diagonal, up to rounding).
        model_features: ``.npy`` model features (conditions, ...), turned into RDMs with ``method``.
        method: the RDM of brains and model features: "correlation" (1 - Pearson), "cosine", "euclidean".
        compare: "spearman", "pearson", "kendall_tau_a", "rho_a" or "cosine".
        window, step: samples per time window and between window starts.
        sfreq, tmin: for ``.npy`` brains, the sampling rate (Hz) and the time of the first sample (s);
            epochs carry their own times.
        overwrite: replace an earlier output in ``out`` (a folder holding its summary.json and none of
            the input files; see :func:`fastalign._checks.check_out_folder`).

    Returns:
        A :class:`BrainRSA`.

    Raises:
        FileNotFoundError: a missing file.
        FileExistsError: ``out`` is not empty (without ``overwrite``), is not an earlier output, is the
            current folder or one above it, or is a file.
        ValueError: files of different conditions or times, an unreadable or pickled file, arrays of the
            wrong shape, a model RDM that is not one, times missing for arrays, bad settings.
    """
    import torch

    from fastalign.rsa import compare_rdms, noise_ceiling, rdm, time_resolved_rdms

    if isinstance(brain, (str, os.PathLike)) or not isinstance(brain, Sequence):
        raise TypeError(_checks.message(_FN, "brain", "a list of files", brain))
    if not brain:
        raise ValueError(f"{_FN}: brain must list at least one file, got none")
    _checks.check_choice(_FN, "method", method, _RDM_METHODS)
    _checks.check_choice(_FN, "compare", compare, _COMPARE_METHODS)
    _checks.check_int(_FN, "window", window, minimum=1)
    _checks.check_int(_FN, "step", step, minimum=1)
    _checks.check_real(_FN, "sfreq", sfreq, positive=True, none=True)
    _checks.check_real(_FN, "tmin", tmin, none=True)
    _checks.check_bool(_FN, "overwrite", overwrite)
    for name, given in (("model_rdm", model_rdm), ("model_features", model_features)):
        if isinstance(given, (str, bytes, os.PathLike)) or not isinstance(given, Sequence):
            raise TypeError(_checks.message(_FN, name, "a list of files", given))
    paths = [os.fspath(p) for p in brain]
    rdm_paths, feature_paths = [os.fspath(p) for p in model_rdm], [os.fspath(p) for p in model_features]
    folder = None
    if out is not None:
        inputs = [*paths, *rdm_paths, *feature_paths]
        folder = _checks.check_out_folder(
            _FN,
            "out",
            out,
            overwrite,
            marker="summary.json",
            marker_keys=("brains", "n_windows"),
            inputs=inputs,
        )
    names = _unique([_name(p) for p in paths], "brain")
    loaded = [_read_brain(p, sfreq, tmin) for p in paths]
    first, times, _ = loaded[0]
    for p, (data, t, _) in zip(paths[1:], loaded[1:], strict=True):
        if data.shape[0] != first.shape[0] or t.shape != times.shape or not np.allclose(t, times, atol=1e-9):

            def span(x: np.ndarray) -> str:
                step = f" every {float(np.median(np.diff(x))):g} s" if x.size > 1 else ""
                return f"{x.size} samples from {float(x[0]):g} s{step}" if x.size else "no samples"

            raise ValueError(
                f"{_FN}: brain file {p!r} has {data.shape[0]} conditions and {span(t)}, {paths[0]!r} "
                f"{first.shape[0]} conditions and {span(times)}; every brain needs the same conditions and "
                "sample times (.npy brains take theirs from --sfreq and --tmin)"
            )
    # Epochs files name their conditions (event codes, in ascending order): they must name the same ones,
    # or the files' RDMs would pair different conditions position by position. Arrays name none; their rows
    # are taken in order.
    named = [(p, c) for p, (_, _, c) in zip(paths, loaded, strict=True) if c is not None]
    codes = named[0][1] if named else None
    first_codes = codes or []
    for p, c in named[1:]:
        if c != first_codes:
            diff = next(i for i, (a, b) in enumerate(zip(first_codes, c, strict=True)) if a != b)
            raise ValueError(
                f"{_FN}: brain file {p!r} has event codes {c[max(0, diff - 1) : diff + 3]}... where "
                f"{named[0][0]!r} has {first_codes[max(0, diff - 1) : diff + 3]}... (condition {diff} in "
                "ascending code order); every .fif needs the same conditions"
            )
    n = first.shape[0]
    _unique([_name(p) for p in [*rdm_paths, *feature_paths]], "model")
    models: dict[str, np.ndarray] = {}
    for path in rdm_paths:
        models[_name(path)] = _condensed(_read_model(path, "model_rdm"), n, path)
    for path in feature_paths:
        x = _read_model(path, "model_features")
        if x.ndim < 2 or x.shape[0] != n:
            raise ValueError(
                f"{_FN}: model_features file {path!r} has shape {x.shape}; expected ({n}, features...), "
                "one row per condition of the brain data"
            )
        try:
            models[_name(path)] = rdm(torch.from_numpy(x.reshape(n, -1)), method).numpy()
        except ValueError as exc:  # a constant (correlation) or all-zero (cosine) row: name the file
            raise ValueError(f"{_FN}: model_features file {path!r}: {exc}") from exc
    # Channels may differ between recordings (bad channels dropped): one RDM per brain, then stacked.
    brain_rdms = []
    for p, (d, _, _) in zip(paths, loaded, strict=True):
        try:
            brain_rdms.append(time_resolved_rdms(torch.from_numpy(d), method, window, step).numpy())
        except ValueError as exc:  # a condition's channels all equal at a time point, for instance
            raise ValueError(f"{_FN}: brain file {p!r}: {exc}") from exc
    rdms = np.stack(brain_rdms)
    window_times = np.array([times[k : k + window].mean() for k in range(0, times.size - window + 1, step)])
    model_rdms = np.stack(list(models.values())) if models else np.zeros((0, rdms.shape[-1]))
    if models:
        pairs = torch.from_numpy(rdms)[..., None, :]  # (n_brains, n_windows, 1, n_pairs)
        try:
            similarity = compare_rdms(pairs, torch.from_numpy(model_rdms), compare).numpy()
        except ValueError as exc:  # a constant RDM: a is (brain, window, 1), b (model,)
            where = "a: the brain RDMs by (brain file, window); b: the models in the order given"
            raise ValueError(f"{_FN}: comparing brain and model RDMs ({where}): {exc}") from exc
    else:
        similarity = np.zeros((len(loaded), window_times.size, 0))
    lower = upper = None
    if len(loaded) >= 2:
        lo, hi = noise_ceiling(torch.from_numpy(rdms), compare)
        lower, upper = lo.numpy(), hi.numpy()
    result = BrainRSA(names, window_times, rdms, list(models), model_rdms, similarity, lower, upper, folder)
    if folder is not None:
        _write(result, folder, {"method": method, "compare": compare, "window": window, "step": step,
                                "brain_files": [os.path.abspath(p) for p in paths],
                                "event_codes": codes})  # fmt: skip
    return result


def _conditions(n_pairs: int) -> int:
    return round((1 + math.sqrt(1 + 8 * n_pairs)) / 2)


def _rows(r: BrainRSA) -> list[dict[str, Any]]:
    rows = []
    for b, brain in enumerate(r.brains):
        for m, model in enumerate(r.models):
            for k, t in enumerate(r.times):
                rows.append({
                    "brain": brain, "model": model, "time": round(float(t), 9),
                    "similarity": float(r.similarity[b, k, m]),
                    "noise_lower": math.nan if r.noise_lower is None else float(r.noise_lower[k]),
                    "noise_upper": math.nan if r.noise_upper is None else float(r.noise_upper[k]),
                })  # fmt: skip
    return rows


def _figure(r: BrainRSA, rows: list[dict[str, Any]], settings: dict[str, Any]) -> Any:
    """Each model's similarity over time (mean +- SEM over brains), with the noise ceiling."""
    from fastalign.plotting import plot_rsa_time_courses

    layer = f"brain RDM ({settings['method']}) vs model RDMs"
    table = [
        {"model": x["model"], "model_subject": "", "subject": x["brain"], "modality": "brain",
         "comparison": "none", "layer": layer, "roi": "", **{k: x[k] for k in RSA_COLUMNS[2:]}}
        for x in rows
    ]  # fmt: skip
    fig = plot_rsa_time_courses(
        table, None, modality="brain", comparisons=("none",), baseline="", measure=settings["compare"]
    )
    for ax in fig.axes:
        ax.set_xlabel("Time (ms)")
    return fig


def _peak(similarity: np.ndarray, times: np.ndarray) -> int:
    """The window of the largest similarity from time 0 on (as evaluate's peaks: a pre-stimulus window
    is no response to the images), over every window when none starts at or after 0."""
    after = np.flatnonzero(times >= -1e-9)
    if after.size == 0:
        return int(np.argmax(similarity))
    return int(after[np.argmax(similarity[after])])


def _write(r: BrainRSA, folder: str, settings: dict[str, Any]) -> None:
    from fastalign.data._io import replacing_dir, save_npy
    from fastalign.eval import save_figure, write_csv
    from fastalign.eval.report import write_json

    with replacing_dir(folder, manifest=True) as staging:
        save_npy(os.path.join(staging, "brain_rdms.npy"), r.rdms)
        save_npy(os.path.join(staging, "times.npy"), r.times)
        files = ["brain_rdms.npy", "times.npy"]
        if r.noise_lower is not None and r.noise_upper is not None:
            ceiling = [
                {"time": round(float(t), 9), "noise_lower": float(lo), "noise_upper": float(hi)}
                for t, lo, hi in zip(r.times, r.noise_lower, r.noise_upper, strict=True)
            ]
            write_csv(
                os.path.join(staging, "noise_ceiling.csv"), ceiling, ("time", "noise_lower", "noise_upper")
            )
            files.append("noise_ceiling.csv")
        peaks = {}
        if r.models:
            save_npy(os.path.join(staging, "model_rdms.npy"), r.model_rdms)
            save_npy(os.path.join(staging, "rsa.npy"), r.similarity)
            rows = _rows(r)
            write_csv(os.path.join(staging, "rsa.csv"), rows, RSA_COLUMNS)
            save_figure(_figure(r, rows, settings), os.path.join(staging, "figures", "rsa"))
            files += ["model_rdms.npy", "rsa.npy", "rsa.csv", "figures/rsa.png", "figures/rsa.svg"]
            mean = r.similarity.mean(axis=0)  # (n_windows, n_models): over brains
            for m, model in enumerate(r.models):
                k = _peak(mean[:, m], r.times)
                peaks[model] = {
                    "peak_similarity": float(mean[k, m]),
                    "peak_time": round(float(r.times[k]), 9),
                }
        summary = {
            **settings,
            "brains": r.brains,
            "models": r.models,
            "n_conditions": _conditions(r.rdms.shape[-1]),
            "n_windows": int(r.times.size),
            "peaks": peaks,
            "files": files,
        }
        write_json(os.path.join(staging, "summary.json"), summary, fn=_FN, what="summary")


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--brain",
        nargs="+",
        required=True,
        metavar="FILE",
        help="MNE epochs (.fif) or arrays (.npy: conditions x [repetitions x] channels x times), one per "
        "recording",
    )
    p.add_argument(
        "--model-rdm", nargs="+", default=[], metavar="FILE", help=".npy RDMs, condensed or square"
    )
    p.add_argument(
        "--model-features", nargs="+", default=[], metavar="FILE", help=".npy features, conditions x ..."
    )
    p.add_argument(
        "--out",
        type=folder_path,
        required=True,
        help="the output folder (replaced as a unit; see --overwrite)",
    )
    p.add_argument(
        "--method",
        choices=_RDM_METHODS,
        default="correlation",
        help="RDMs of brains and features (default correlation: 1 - Pearson)",
    )
    p.add_argument("--compare", choices=_COMPARE_METHODS, default="spearman", help="default spearman")
    p.add_argument("--window", type=positive_int, default=1, help="samples per time window (default 1)")
    p.add_argument("--step", type=positive_int, default=1, help="samples between windows (default 1)")
    p.add_argument(
        "--sfreq", type=positive_real, help="sampling rate in Hz: needed with .npy brains (a .fif holds it)"
    )
    p.add_argument(
        "--tmin",
        type=finite_real,
        help="time of the first sample in seconds: needed with .npy brains, as --sfreq",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier output of fastalign rsa in --out (its summary.json)",
    )


def _run(args: argparse.Namespace) -> int:
    r = brain_rsa(
        args.brain, args.out, model_rdm=args.model_rdm, model_features=args.model_features,
        method=args.method, compare=args.compare, window=args.window, step=args.step, sfreq=args.sfreq,
        tmin=args.tmin, overwrite=args.overwrite,
    )  # fmt: skip
    print(
        f"{len(r.brains)} brain(s), {_conditions(r.rdms.shape[-1])} conditions, "
        f"{r.times.size} windows ({1000 * r.times[0]:.0f} to {1000 * r.times[-1]:.0f} ms)"
    )
    if r.models:
        mean = r.similarity.mean(axis=0)
        width = max(len(m) for m in r.models)
        for m, model in enumerate(r.models):
            k = _peak(mean[:, m], r.times)
            print(
                f"  {model.ljust(width)}  peak {args.compare} {mean[k, m]:.4f} at {1000 * r.times[k]:.0f} ms"
            )
    print(f"written: {r.out}")
    return 0


COMMAND = Command(
    "rsa",
    "brain RDMs and time-resolved RSA from your own EEG/MEG (MNE epochs .fif or .npy arrays)",
    (
        "fastalign rsa --brain sub01-epo.fif sub02-epo.fif --model-rdm model.npy --out rsa",
        "fastalign rsa --brain eeg.npy --sfreq 100 --tmin -0.2 --model-features it.npy --out rsa --window 5",
    ),
    _arguments,
    _run,
)
