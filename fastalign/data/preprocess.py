"""The published THINGS-EEG2 preprocessing, with MNE: raw session files -> preprocessed files.

Steps, per session and partition (as gifale95/eeg_encoding ``preprocessing_utils.py``): build an MNE
RawArray, find the events on the stim channel, keep the channels matching a regex (occipital and
parietal by default), drop target trials (event 99999), epoch -0.2..0.8 s with baseline (None, 0),
resample (100 Hz by default), sort the epochs by image condition keeping a fixed number of repetitions
per condition (sklearn.utils.shuffle with the seed), whiten each session with MVNN over its test and
training partitions, merge the sessions (test: repetitions concatenated; training: each image's
repetitions gathered from the sessions that showed it), shuffle the merged repetitions with the seed,
and write ``preprocessed_eeg_{training,test}.npy``. With the published arguments the files hold the
same numbers as the published script's output on the same input. Conditions are 0-based image indices
throughout (the raw files' 1-based event codes minus 1, converted in :func:`epoch_session`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, get_args

import numpy as np

from fastalign.data._io import save_many_npy
from fastalign.data.mvnn import MVNNDim, mvnn
from fastalign.data.responses import EEGResponses, _check_int, _check_real, _check_seed
from fastalign.data.things_eeg2 import (
    OCCIPITAL_PARIETAL,
    PUBLISHED_SEED,
    TARGET_EVENT,
    RawEEG,
    load_raw_eeg,
    preprocessed_path,
    raw_path,
    save_preprocessed_dict,
    subject_dir,
)


def _selection(count: int, n_repetitions: int, seed: int) -> np.ndarray:
    """Which of ``count`` repetitions to keep: ``sklearn.utils.shuffle(idx, random_state=seed,
    n_samples=n_repetitions)`` as published (the same seed for every condition)."""
    from sklearn.utils import shuffle

    return np.asarray(shuffle(np.arange(count), random_state=seed, n_samples=n_repetitions))


def _check_epoching(
    fn: str,
    *,
    sfreq: Any,
    channels: Any,
    tmin: Any,
    tmax: Any,
    baseline: Any,
    seed: Any,
) -> None:
    """Checks the epoching arguments shared by :func:`epoch_session` and :func:`preprocess_things_eeg2`
    before any file is read (MNE's own errors name neither the function nor the argument)."""
    _check_real(sfreq, "sfreq", fn, positive=True, none=True)
    if not isinstance(channels, str):
        raise TypeError(f"{fn}: channels must be a regex str (e.g. {OCCIPITAL_PARIETAL!r}), got {channels!r}")
    try:
        re.compile(channels)
    except re.error as err:
        raise ValueError(f"{fn}: channels={channels!r} is not a valid regex ({err})") from err
    lo, hi = _check_real(tmin, "tmin", fn), _check_real(tmax, "tmax", fn)
    if lo >= hi:
        raise ValueError(f"{fn}: tmin must be < tmax (seconds), got tmin={tmin!r}, tmax={tmax!r}")
    if baseline is not None:
        if isinstance(baseline, (str, bytes)) or not isinstance(baseline, Sequence) or len(baseline) != 2:
            raise TypeError(f"{fn}: baseline must be None or a (start, end) pair, got {baseline!r}")
        b_lo = _check_real(baseline[0], "baseline[0]", fn, none=True)
        b_hi = _check_real(baseline[1], "baseline[1]", fn, none=True)
        b_lo, b_hi = lo if b_lo is None else b_lo, hi if b_hi is None else b_hi
        if not lo <= b_lo <= b_hi <= hi:
            raise ValueError(
                f"{fn}: baseline {tuple(baseline)} must be an interval inside the epoch "
                f"[tmin, tmax] = [{lo}, {hi}] s, start <= end (None: the epoch's start or end)"
            )
    _check_seed(seed, fn)


def epoch_session(
    raw: RawEEG | str | os.PathLike[str],
    *,
    n_repetitions: int | None,
    seed: int = PUBLISHED_SEED,
    sfreq: float | None = 100.0,
    channels: str = OCCIPITAL_PARIETAL,
    tmin: float = -0.2,
    tmax: float = 0.8,
    baseline: tuple[float | None, float | None] | None = (None, 0),
    target_event: int | None = TARGET_EVENT,
    stim_channel: str = "stim",
) -> EEGResponses:
    """Epochs one raw session partition and sorts it by image condition.

    Args:
        raw: A RawEEG or the path of a ``raw_eeg_{training,test}.npy`` file.
        n_repetitions: Repetitions kept per condition (published: 2 training, 20 test); None keeps the
            smallest count over conditions.
        seed: Seed of the repetition selection.
        sfreq: Output sampling rate in Hz (None: no resampling).
        channels: Regex of the channels to keep (``mne.pick_channels_regexp``; stim channels never
            are); ``".*"`` keeps every EEG channel (the 63-channel variant).
        tmin, tmax: Epoch window in seconds around each event.
        baseline: Baseline interval passed to ``mne.Epochs``.
        target_event: Event code of trials to drop (None keeps all).
        stim_channel: Name of the stim channel.

    Returns:
        EEGResponses: data (n_conditions, n_repetitions, n_channels, n_times), the picked ch_names,
        times, and conditions = the 0-based image indices shown, ascending (raw event code - 1).

    The raw files mark image ``i`` of image_metadata with the published 1-based event code ``i + 1``;
    everything in fastalign numbers images from 0 (condition ``i`` of :func:`load_preprocessed_eeg` is
    row ``i`` of the image lists, as in the published preprocessed files), so the codes are converted
    here, where they are read.

    Raises:
        TypeError, ValueError: an argument of the wrong type or out of range (sfreq not > 0, tmin >= tmax,
            baseline outside the epoch, ...); no channel matches; an event code < 1; too few repetitions.
    """
    import mne

    fn = "epoch_session"
    _check_epoching(fn, sfreq=sfreq, channels=channels, tmin=tmin, tmax=tmax, baseline=baseline, seed=seed)
    _check_int(n_repetitions, "n_repetitions", fn, minimum=1, none=True)
    _check_int(target_event, "target_event", fn, none=True)
    if not isinstance(stim_channel, str):
        raise TypeError(f"{fn}: stim_channel must be a channel name (str), got {stim_channel!r}")
    if not isinstance(raw, (RawEEG, str, os.PathLike)):
        raise TypeError(
            f"{fn}: raw must be a RawEEG or the path of a raw_eeg_*.npy file, got {type(raw).__name__}"
        )
    if not isinstance(raw, RawEEG):
        raw = load_raw_eeg(raw, stim_channel)
    elif stim_channel not in raw.ch_names:
        raise ValueError(f"{fn}: {raw.source}: no stim channel {stim_channel!r} among {raw.ch_names}")
    src, raw_sfreq = raw.source, raw.sfreq
    info = mne.create_info(raw.ch_names, raw.sfreq, raw.ch_types)
    mraw = mne.io.RawArray(raw.data, info, verbose="error")  # shares raw.data (float64: no copy)
    # A file loaded here is freed once pick() copies out the kept channels (1.7 GB at published size).
    del raw
    events = mne.find_events(mraw, stim_channel=stim_channel, verbose="error")
    # The stim channel is never data, even when the regex matches it (e.g. ".*" for all 63 channels).
    types = mraw.get_channel_types()
    picks = [i for i in mne.pick_channels_regexp(mraw.ch_names, channels) if types[i] != "stim"]
    if len(picks) == 0:
        raise ValueError(f"{src}: no channel matches channels={channels!r}; channels are {mraw.ch_names}")
    mraw.pick([mraw.ch_names[i] for i in picks])
    if target_event is not None:
        events = events[events[:, 2] != target_event]
    if len(events) == 0:
        raise ValueError(f"{src}: no (non-target) events found on stim channel {stim_channel!r}")
    if events[:, 2].min() < 1:
        raise ValueError(
            f"{src}: event code {events[:, 2].min()} on {stim_channel!r}; THINGS-EEG2 codes are 1-based "
            "image numbers (>= 1)"
        )
    epochs = mne.Epochs(mraw, events, tmin=tmin, tmax=tmax, baseline=baseline, preload=True, verbose="error")
    del mraw
    if sfreq is not None and sfreq != raw_sfreq:
        epochs.resample(sfreq, verbose="error")
    data = epochs.get_data()
    codes = epochs.events[:, 2]
    conditions, counts = np.unique(codes, return_counts=True)
    if n_repetitions is None:
        n_repetitions = int(counts.min())
    if counts.min() < n_repetitions:
        short = conditions[counts < n_repetitions]
        raise ValueError(
            f"{src}: {len(short)} image condition(s) have fewer than n_repetitions={n_repetitions} "
            f"epochs (e.g. event {short[0]} has {counts[conditions == short[0]][0]}); expected at least "
            f"{n_repetitions} per condition"
        )
    # Epoch indices grouped by condition, each group in recording order (np.where order, as published).
    order = np.argsort(codes, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    keep = np.empty((len(conditions), n_repetitions), dtype=np.int64)
    selections: dict[int, np.ndarray] = {}
    for i, (start, count) in enumerate(zip(starts, counts, strict=True)):
        if count not in selections:
            selections[count] = _selection(int(count), n_repetitions, seed)
        keep[i] = order[start + selections[count]]
    return EEGResponses(data[keep], list(epochs.ch_names), np.asarray(epochs.times), conditions - 1, src)


def _check_same(sessions: Sequence[EEGResponses], what: str) -> None:
    ref = sessions[0]
    for s in sessions[1:]:
        if s.ch_names != ref.ch_names:
            raise ValueError(f"{s.source}: channels {s.ch_names} differ from {ref.source}'s {ref.ch_names}")
        if s.times.shape != ref.times.shape or not np.allclose(s.times, ref.times):
            raise ValueError(f"{s.source}: epoch times differ from {ref.source}'s ({what})")


def merge_sessions(
    test: Sequence[EEGResponses], training: Sequence[EEGResponses], seed: int = PUBLISHED_SEED
) -> tuple[EEGResponses, EEGResponses]:
    """Merges whitened sessions as published.

    Test: every session has the same conditions; repetitions are concatenated in session order.
    Training: sessions show different images; each condition's repetitions are gathered in session
    order (the published code requires, and this checks, that every condition ends with the same
    number). Both then shuffle their repetition axis with ``sklearn.utils.shuffle(..., random_state=seed)``.

    Returns:
        (test, training) EEGResponses; conditions are the sessions' conditions (0-based image
        indices from :func:`epoch_session`), ascending.
    """
    from sklearn.utils import shuffle

    for name, parts in (("test", test), ("training", training)):
        if isinstance(parts, EEGResponses) or not isinstance(parts, Sequence) or not parts:
            got = f"an empty {type(parts).__name__}" if isinstance(parts, Sequence) else type(parts).__name__
            raise TypeError(f"merge_sessions: {name} must be a non-empty sequence of EEGResponses, got {got}")
        bad = [type(p).__name__ for p in parts if not isinstance(p, EEGResponses)]
        if bad:
            raise TypeError(f"merge_sessions: {name} must hold EEGResponses, got {bad[0]}")
    _check_seed(seed, "merge_sessions")

    _check_same([*test, *training], "merging sessions")
    for s in test[1:]:
        if not np.array_equal(s.conditions, test[0].conditions):
            raise ValueError(
                f"{s.source}: test conditions differ from {test[0].source}'s; every session must show all "
                "test images"
            )
    merged_test = np.concatenate([s.data for s in test], axis=1)
    merged_test = merged_test[:, shuffle(np.arange(merged_test.shape[1]), random_state=seed)]

    codes = np.concatenate([s.conditions for s in training])
    data = np.concatenate([s.data for s in training], axis=0)
    conditions, counts = np.unique(codes, return_counts=True)
    if counts.min() != counts.max():
        few = conditions[counts == counts.min()][0]
        raise ValueError(
            f"training sessions show images unequally often: event {few} is in {counts.min()} session(s), "
            f"others in up to {counts.max()}; expected every image in the same number of sessions"
        )
    per_session = data.shape[1]
    order = np.argsort(codes, kind="stable")
    merged_train = data[order].reshape(len(conditions), counts[0] * per_session, *data.shape[2:])
    merged_train = merged_train[:, shuffle(np.arange(merged_train.shape[1]), random_state=seed)]
    ref = training[0]
    return (
        EEGResponses(merged_test, ref.ch_names, ref.times, test[0].conditions, "merged test sessions"),
        EEGResponses(merged_train, ref.ch_names, ref.times, conditions, "merged training sessions"),
    )


@dataclass
class PreprocessedSubject:
    """What :func:`preprocess_things_eeg2` returns: the merged data and the files written (if any)."""

    training: EEGResponses
    test: EEGResponses
    paths: dict[str, str]


def _sessions(raw_dir: str, subject: int) -> list[int]:
    folder = subject_dir(raw_dir, subject)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"no raw data folder {folder!r} (expected raw_dir/sub-XX/ses-YY/)")
    found = sorted(int(m.group(1)) for d in os.listdir(folder) if (m := re.fullmatch(r"ses-(\d+)", d)))
    if not found:
        raise FileNotFoundError(f"{folder!r} holds no ses-YY folders")
    return found


def preprocess_things_eeg2(
    raw_dir: str | os.PathLike[str],
    subject: int,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    sessions: Sequence[int] | None = None,
    sfreq: float | None = 100.0,
    mvnn_dim: MVNNDim = "time",
    channels: str = OCCIPITAL_PARIETAL,
    tmin: float = -0.2,
    tmax: float = 0.8,
    baseline: tuple[float | None, float | None] | None = (None, 0),
    training_repetitions: int | None = 2,
    test_repetitions: int | None = 20,
    seed: int = PUBLISHED_SEED,
    write: bool = True,
) -> PreprocessedSubject:
    """Preprocesses one THINGS-EEG2 subject from its raw session files.

    Args:
        raw_dir: Folder holding ``sub-XX/ses-YY/raw_eeg_{training,test}.npy``.
        subject: Subject number (1 for sub-01).
        out_dir: Where ``sub-XX/preprocessed_eeg_{training,test}.npy`` go; default: the folder
            ``preprocessed_data`` beside ``raw_dir``.
        sessions: Session numbers to use; default every ``ses-YY`` folder found.
        sfreq, channels, tmin, tmax, baseline: see :func:`epoch_session` (published: 100 Hz, O/P
            channels, -0.2..0.8 s, (None, 0)).
        mvnn_dim: "time" (published default) or "epochs".
        training_repetitions, test_repetitions: Repetitions kept per condition and session
            (published: 2 and 20).
        seed: Seed of repetition selection and shuffling (published: 20200220).
        write: Write the two files (both or neither, each atomically).

    Returns:
        PreprocessedSubject with training and test EEGResponses of shape (conditions, repetitions,
        channels, times) and the paths written. Their conditions are 0-based image indices, as
        :func:`load_preprocessed_eeg` gives for the written files (the raw 1-based event codes minus 1,
        see :func:`epoch_session`).

    Raises:
        TypeError, ValueError: an argument of the wrong type or out of range (checked before any file is
            read); with ``write``, a split whose images are not exactly 0..n-1 (e.g. a subset of the
            sessions that misses some training images): the file format has no condition labels, so
            row ``i`` must be image ``i``. Use ``write=False`` to get such data with its conditions.
        FileNotFoundError: a raw folder or file is missing.
    """
    fn = "preprocess_things_eeg2"
    if not isinstance(raw_dir, (str, os.PathLike)):
        raise TypeError(f"{fn}: raw_dir must be a path, got {type(raw_dir).__name__}")
    if out_dir is not None and not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"{fn}: out_dir must be None or a path, got {type(out_dir).__name__}")
    _check_epoching(fn, sfreq=sfreq, channels=channels, tmin=tmin, tmax=tmax, baseline=baseline, seed=seed)
    if mvnn_dim not in get_args(MVNNDim):
        raise ValueError(f"{fn}: mvnn_dim must be one of {get_args(MVNNDim)}, got {mvnn_dim!r}")
    _check_int(training_repetitions, "training_repetitions", fn, minimum=1, none=True)
    _check_int(test_repetitions, "test_repetitions", fn, minimum=1, none=True)
    if not isinstance(write, (bool, np.bool_)):
        raise TypeError(f"{fn}: write must be a bool, got {write!r}")
    raw_dir = os.fspath(raw_dir)
    if sessions is not None:
        if isinstance(sessions, (str, bytes)) or not isinstance(sessions, Sequence):
            raise TypeError(f"{fn}: sessions must be None or a sequence of session numbers, got {sessions!r}")
        sessions = [_check_int(s, f"sessions[{i}]", fn, minimum=1) for i, s in enumerate(sessions)]
        if not sessions or len(set(sessions)) != len(sessions):
            raise ValueError(f"{fn}: sessions must be distinct session numbers, at least one, got {sessions}")
    sessions = list(sessions) if sessions is not None else _sessions(raw_dir, subject)
    white: dict[str, list[EEGResponses]] = {"test": [], "training": []}
    reps: dict[str, int | None] = {"test": test_repetitions, "training": training_repetitions}
    for ses in sessions:
        parts = []
        for split in ("test", "training"):
            parts.append(
                epoch_session(
                    raw_path(raw_dir, subject, ses, split),
                    n_repetitions=reps[split],
                    seed=seed,
                    sfreq=sfreq,
                    channels=channels,
                    tmin=tmin,
                    tmax=tmax,
                    baseline=baseline,
                )
            )
        _check_same(parts, f"session {ses}")
        # One whitening matrix per session, from the mean of its partitions' covariances (published).
        whitened = mvnn([p.data for p in parts], mvnn_dim)
        for split, part, w in zip(("test", "training"), parts, whitened, strict=True):
            part.data = w
            white[split].append(part)
    test, training = merge_sessions(white["test"], white["training"], seed)
    paths: dict[str, str] = {}
    if write:
        for split, part in (("training", training), ("test", test)):
            n = len(part.conditions)
            if not np.array_equal(part.conditions, np.arange(n)):
                missing = np.setdiff1d(np.arange(part.conditions.max() + 1), part.conditions)
                raise ValueError(
                    f"{fn}: the {split} data of sessions {sessions} lacks image(s) {missing[:5].tolist()} "
                    f"(it has {n} of 0..{part.conditions.max()}); a preprocessed file stores no condition "
                    "labels (row i is image i), so every image 0..n-1 must be present. Use all sessions, "
                    "or write=False to get the data with its conditions"
                )
        default = os.path.join(os.path.dirname(os.path.abspath(raw_dir)), "preprocessed_data")
        out = os.fspath(out_dir) if out_dir is not None else default
        files = {
            preprocessed_path(out, subject, "training"): save_preprocessed_dict(
                training.data, training.ch_names, training.times
            ),
            preprocessed_path(out, subject, "test"): save_preprocessed_dict(
                test.data, test.ch_names, test.times
            ),
        }
        written = save_many_npy(files)
        paths = {"training": written[0], "test": written[1]}
    return PreprocessedSubject(training, test, paths)
