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

``recipe="alignvis"`` gives the variant of the decoding papers (NICE, AlignVis: NonaRjb/AlignVis
``src/dataset/preprocessing_utils.py`` and ``things_eeg_preprocessing.py``): all 63 channels in the
published order, 250 Hz, epochs -0.2..1.0 s cropped to 0..1 s (250 samples) before MVNN, MVNN over
epochs with the covariance of the training partition only. Each of its settings is also an argument, so
the two recipes can be mixed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np

from fastalign._checks import check_bool, check_choice, check_int, check_real, message
from fastalign.data._io import save_many_npy
from fastalign.data.mvnn import MVNNDim, mvnn
from fastalign.data.responses import EEGResponses, _check_random_state
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

#: The 63 EEG channels of THINGS-EEG2 in the order the decoding papers keep them (AlignVis
#: ``preprocessing_utils.py`` ``chan_order``, picked with ``ordered=True``; the montage has no Fz). The
#: last 17 are the occipital/parietal channels of the published 17-channel files; those files keep the
#: order of the raw recordings (eeg_encoding picks them by a regular expression, which keeps the raw
#: order), which this tuple does not claim to be. Loading selects channels by name, so order never matters
#: there; the synthetic raw files are written in this order.
THINGS_EEG2_CHANNELS = (
    "Fp1", "Fp2", "AF7", "AF3", "AFz", "AF4", "AF8", "F7", "F5", "F3", "F1", "F2", "F4", "F6", "F8",
    "FT9", "FT7", "FC5", "FC3", "FC1", "FCz", "FC2", "FC4", "FC6", "FT8", "FT10", "T7", "C5", "C3", "C1",
    "Cz", "C2", "C4", "C6", "T8", "TP9", "TP7", "CP5", "CP3", "CP1", "CPz", "CP2", "CP4", "CP6", "TP8",
    "TP10", "P7", "P5", "P3", "P1", "Pz", "P2", "P4", "P6", "P8", "PO7", "PO3", "POz", "PO4", "PO8",
    "O1", "Oz", "O2",
)  # fmt: skip

Recipe = Literal["eeg_encoding", "alignvis"]
MVNNCovariance = Literal["session", "training"]
#: The settings in which the published pipelines differ (everything else is shared: baseline (None, 0),
#: tmin -0.2 s, 2 training and 20 test repetitions per session, seed 20200220, target trials dropped).
_RECIPES: dict[str, dict[str, Any]] = {
    # gifale95/eeg_encoding 02_eeg_preprocessing (THINGS-EEG2's own files)
    "eeg_encoding": {
        "sfreq": 100.0,
        "channels": OCCIPITAL_PARIETAL,
        "tmax": 0.8,
        "crop": None,
        "mvnn_dim": "time",
        "mvnn_covariance": "session",
    },
    # NonaRjb/AlignVis (after NICE-EEG): things_eeg_preprocessing.py defaults, preprocessing_utils.py
    "alignvis": {
        "sfreq": 250.0,
        "channels": "all",
        "tmax": 1.0,
        "crop": (0.0, 1.0),
        "mvnn_dim": "epochs",
        "mvnn_covariance": "training",
    },
}


class _FromRecipe:
    """Default of the settings that ``recipe`` chooses when they are not given."""

    def __repr__(self) -> str:
        return "<from recipe>"


FROM_RECIPE: Any = _FromRecipe()


def _selection(count: int, n_repetitions: int, seed: int) -> np.ndarray:
    """Which of ``count`` repetitions to keep: ``sklearn.utils.shuffle(idx, random_state=seed,
    n_samples=n_repetitions)`` as published (the same seed for every condition)."""
    from sklearn.utils import shuffle

    return np.asarray(shuffle(np.arange(count), random_state=seed, n_samples=n_repetitions))


def _channel_names(channels: str | Sequence[str]) -> list[str] | None:
    """The channel names to pick in order ("all": the published 63), or None for a regex."""
    if isinstance(channels, str):
        return list(THINGS_EEG2_CHANNELS) if channels == "all" else None
    return list(channels)


def _check_channels(fn: str, channels: Any) -> None:
    if isinstance(channels, str):
        if channels != "all":
            try:
                re.compile(channels)
            except re.error as err:
                raise ValueError(f"{fn}: channels={channels!r} is not a valid regex ({err})") from err
        return
    expected = (
        f'a regex str (e.g. {OCCIPITAL_PARIETAL!r}), "all" (the 63 published channels) or a sequence of '
        "distinct channel names"
    )
    if not isinstance(channels, (Sequence, np.ndarray)) or isinstance(channels, bytes):
        raise TypeError(message(fn, "channels", expected, channels))
    names = list(channels)
    if not all(isinstance(c, str) for c in names):
        raise TypeError(f"{fn}: channels must be {expected}, got {names!r}")
    if not names or len(set(names)) != len(names):
        raise ValueError(f"{fn}: channels must be {expected}, got {names!r}")


def _check_crop(fn: str, crop: Any, lo: float, hi: float, sfreq: float | None) -> tuple[float, float] | None:
    """``crop`` as a (start, end) pair inside the epoch [lo, hi], on the sample grid of ``sfreq`` Hz."""
    if crop is None:
        return None
    if isinstance(crop, (str, bytes)) or not isinstance(crop, (Sequence, np.ndarray)) or len(crop) != 2:
        raise TypeError(message(fn, "crop", "None or a (start, end) pair in seconds", crop))
    start, end = check_real(fn, "crop[0]", crop[0]), check_real(fn, "crop[1]", crop[1])
    if not lo <= start < end <= hi:
        raise ValueError(
            f"{fn}: crop {tuple(crop)} must be an interval [start, end) inside the epoch [tmin, tmax] = "
            f"[{lo}, {hi}] s, start < end"
        )
    if sfreq is not None:
        _crop_samples(fn, (start, end), lo, sfreq)
    return start, end


def _crop_samples(
    fn: str, crop: tuple[float, float], first: float, sfreq: float, n_times: int | None = None
) -> tuple[int, int]:
    """(index of the first kept sample, number kept) of an epoch whose samples are ``first + k / sfreq``
    (``n_times`` of them, when known)."""
    start, count = (crop[0] - first) * sfreq, (crop[1] - crop[0]) * sfreq
    i0, n = round(start), round(count)
    # Half-open [start, end) on whole samples: (0, 1) at 250 Hz keeps 250 samples, 0..0.996 s, as the
    # published [..., 50:] of the -0.2..1.0 s epoch resampled to 300 samples.
    if abs(start - i0) > 1e-6 or abs(count - n) > 1e-6:
        raise ValueError(
            f"{fn}: crop {tuple(crop)} s does not fall on whole samples at sfreq={sfreq:g} Hz (samples at "
            f"{first:g} + k/{sfreq:g} s: start - tmin and end - start must be whole multiples of "
            f"1/sfreq = {1 / sfreq:g} s)"
        )
    if n_times is not None and i0 + n > n_times:
        raise ValueError(
            f"{fn}: crop {tuple(crop)} s needs samples {i0}..{i0 + n - 1} but the epoch has {n_times} "
            f"({first:g} s + k/{sfreq:g} s)"
        )
    return i0, n


def _check_epoching(
    fn: str,
    *,
    sfreq: Any,
    channels: Any,
    tmin: Any,
    tmax: Any,
    baseline: Any,
    seed: Any,
    crop: Any = None,
) -> None:
    """Checks the epoching arguments shared by :func:`epoch_session` and :func:`preprocess_things_eeg2`
    before any file is read (MNE's own errors name neither the function nor the argument)."""
    check_real(fn, "sfreq", sfreq, positive=True, none=True)
    _check_channels(fn, channels)
    lo, hi = check_real(fn, "tmin", tmin), check_real(fn, "tmax", tmax)
    if lo >= hi:
        raise ValueError(f"{fn}: tmin must be < tmax (seconds), got tmin={tmin!r}, tmax={tmax!r}")
    if baseline is not None:
        if isinstance(baseline, (str, bytes)) or not isinstance(baseline, Sequence) or len(baseline) != 2:
            raise TypeError(f"{fn}: baseline must be None or a (start, end) pair, got {baseline!r}")
        b_lo = check_real(fn, "baseline[0]", baseline[0], none=True)
        b_hi = check_real(fn, "baseline[1]", baseline[1], none=True)
        b_lo, b_hi = lo if b_lo is None else b_lo, hi if b_hi is None else b_hi
        if not lo <= b_lo <= b_hi <= hi:
            raise ValueError(
                f"{fn}: baseline {tuple(baseline)} must be an interval inside the epoch "
                f"[tmin, tmax] = [{lo}, {hi}] s, start <= end (None: the epoch's start or end)"
            )
    _check_crop(fn, crop, lo, hi, sfreq)
    _check_random_state(fn, seed)


def epoch_session(
    raw: RawEEG | str | os.PathLike[str],
    *,
    n_repetitions: int | None,
    seed: int = PUBLISHED_SEED,
    sfreq: float | None = 100.0,
    channels: str | Sequence[str] = OCCIPITAL_PARIETAL,
    tmin: float = -0.2,
    tmax: float = 0.8,
    baseline: tuple[float | None, float | None] | None = (None, 0),
    crop: tuple[float, float] | None = None,
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
        channels: Regex of the channels to keep, in the file's order (``mne.pick_channels_regexp``;
            stim channels never are; ``".*"``: every EEG channel); ``"all"``: the 63 channels of
            :data:`THINGS_EEG2_CHANNELS` in that (published) order, each required; or a sequence of
            channel names, kept in the order given.
        tmin, tmax: Epoch window in seconds around each event.
        baseline: Baseline interval passed to ``mne.Epochs``.
        crop: None, or (start, end) in seconds: after baseline correction and resampling, keep the
            samples at times ``start <= t < end`` (half-open, so (0, 1) at 250 Hz keeps 250 samples).
            Both bounds must fall on the sample grid ``tmin + k / sfreq``.
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
            baseline or crop outside the epoch, crop bounds between samples, ...); no channel matches, or
            a named channel is missing; an event code < 1; too few repetitions.
    """
    import mne

    fn = "epoch_session"
    _check_epoching(
        fn, sfreq=sfreq, channels=channels, tmin=tmin, tmax=tmax, baseline=baseline, seed=seed, crop=crop
    )
    check_int(fn, "n_repetitions", n_repetitions, minimum=1, none=True)
    check_int(fn, "target_event", target_event, none=True)
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
    stim_values = mraw.get_data(picks=[mraw.ch_names.index(stim_channel)])[0]  # "stim" is also a type name
    if stim_values.min() < 0:
        # MNE reads a negative sample as the event of its absolute value: a glitch became an image's epoch
        raise ValueError(
            f"{src}: the stim channel {stim_channel!r} holds negative values (smallest "
            f"{stim_values.min():g}, at sample {int(stim_values.argmin())}); expected THINGS-EEG2 codes: "
            "positive image numbers, 0 between events"
        )
    try:
        events = mne.find_events(mraw, stim_channel=stim_channel, verbose="error")
    except ValueError as exc:  # MNE's text names no file (e.g. a negative code: "events shorter than...")
        raise ValueError(
            f"{src}: the stim channel {stim_channel!r} could not be read as events ({exc}); expected "
            "THINGS-EEG2 codes: positive image numbers, 0 between events"
        ) from exc
    # The stim channel is never data, even when the regex matches it (e.g. ".*" for all 63 channels),
    # by its type or its name (a file that types it "misc")
    types = mraw.get_channel_types()
    eeg_names = [n for n, t in zip(mraw.ch_names, types, strict=True) if t != "stim" and n != stim_channel]
    names = _channel_names(channels)
    if names is None:
        picked = [eeg_names[i] for i in mne.pick_channels_regexp(eeg_names, channels)]
        if not picked:
            raise ValueError(f"{src}: no channel matches channels={channels!r}; channels are {eeg_names}")
    else:
        missing = [n for n in names if n not in eeg_names]
        if missing:
            which = "63 channels of channels='all'" if channels == "all" else "channels named"
            shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise ValueError(
                f"{fn}: {src} lacks {len(missing)} of the {which} ({shown}); its EEG channels are "
                f"{eeg_names}. Use a regex (e.g. '.*') for another montage"
            )
        picked = names
    mraw.pick(picked)  # in the order of ``picked`` (the published pick_channels(..., ordered=True))
    # NaN/inf only where it is used: a broken channel that is not picked (a frontal one, for the
    # occipital default) does not refuse the recording
    # (a channel at a time: the picked channels of a published-size file are half a GB in float64)
    bad = [n for i, n in enumerate(mraw.ch_names) if not np.isfinite(mraw.get_data(picks=[i])).all()]
    if bad:
        raise ValueError(
            f"{fn}: {src}: the picked channel(s) {bad} hold NaN/inf values; expected finite data in every "
            "channel used (leave them out with channels=)"
        )
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
    data, times = epochs.get_data(), np.asarray(epochs.times)
    if crop is not None:
        i0, n = _crop_samples(f"{fn}: {src}", crop, float(times[0]), float(epochs.info["sfreq"]), len(times))
        data, times = data[..., i0 : i0 + n], times[i0 : i0 + n]
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
    return EEGResponses(data[keep], list(epochs.ch_names), times, conditions - 1, src)


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
    _check_random_state("merge_sessions", seed)

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
            f"training sessions show images unequally often: stim code {few + 1} (image {few}) is in "
            f"{counts.min()} session(s), others in up to {counts.max()}; expected every image in the same "
            "number of sessions (a code that is no image, e.g. a start trigger, shows as such an image)"
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
    """What :func:`preprocess_things_eeg2` returns: the merged data, the files written (if any) and the
    recipe's settings as used (sfreq, channels, tmax, crop, mvnn_dim, mvnn_covariance)."""

    training: EEGResponses
    test: EEGResponses
    paths: dict[str, str]
    settings: dict[str, Any] = field(default_factory=dict)


def _sessions(raw_dir: str, subject: int) -> list[int]:
    folder = subject_dir(raw_dir, subject)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"no raw data folder {folder!r} (expected raw_dir/sub-XX/ses-YY/)")
    found = sorted(int(m.group(1)) for d in os.listdir(folder) if (m := re.fullmatch(r"ses-(\d+)", d)))
    if not found:
        raise FileNotFoundError(f"{folder!r} holds no ses-YY folders")
    return found


def preprocessed_dir(raw_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None) -> str:
    """Where :func:`preprocess_things_eeg2` writes: out_dir, or ``preprocessed_data`` beside raw_dir."""
    if out_dir is not None:
        return os.fspath(out_dir)
    return os.path.join(os.path.dirname(os.path.abspath(raw_dir)), "preprocessed_data")


def preprocess_things_eeg2(
    raw_dir: str | os.PathLike[str],
    subject: int,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    recipe: Recipe = "eeg_encoding",
    sessions: Sequence[int] | None = None,
    sfreq: float | None = FROM_RECIPE,
    mvnn_dim: MVNNDim = FROM_RECIPE,
    mvnn_covariance: MVNNCovariance = FROM_RECIPE,
    channels: str | Sequence[str] = FROM_RECIPE,
    tmin: float = -0.2,
    tmax: float = FROM_RECIPE,
    baseline: tuple[float | None, float | None] | None = (None, 0),
    crop: tuple[float, float] | None = FROM_RECIPE,
    training_repetitions: int | None = 2,
    test_repetitions: int | None = 20,
    seed: int = PUBLISHED_SEED,
    write: bool = True,
) -> PreprocessedSubject:
    """Preprocesses one THINGS-EEG2 subject from its raw session files.

    ``recipe`` chooses the published pipeline; the settings marked (recipe) take its value unless given:

    ================  ==========================  ==================================
    setting           "eeg_encoding" (default)    "alignvis" (NICE, AlignVis)
    ================  ==========================  ==================================
    sfreq             100.0                       250.0
    channels          ``'^O *|^P *'`` (17)        "all" (63, published order)
    tmax              0.8                         1.0
    crop              None                        (0.0, 1.0): 250 samples, before MVNN
    mvnn_dim          "time"                      "epochs"
    mvnn_covariance   "session"                   "training"
    ================  ==========================  ==================================

    Args:
        raw_dir: Folder holding ``sub-XX/ses-YY/raw_eeg_{training,test}.npy``.
        subject: Subject number (1 for sub-01).
        out_dir: Where ``sub-XX/preprocessed_eeg_{training,test}.npy`` go; default: the folder
            ``preprocessed_data`` beside ``raw_dir``.
        recipe: "eeg_encoding" (gifale95/eeg_encoding, THINGS-EEG2's own preprocessed files) or
            "alignvis" (the decoding papers' variant, NonaRjb/AlignVis).
        sessions: Session numbers to use; default every ``ses-YY`` folder found.
        sfreq, channels, tmin, tmax, baseline, crop: see :func:`epoch_session` (tmin -0.2 s and
            baseline (None, 0) in both recipes). The crop is applied to every partition before MVNN.
        mvnn_dim: (recipe) "time" or "epochs" (see :func:`fastalign.data.mvnn.mvnn`).
        mvnn_covariance: (recipe) the partitions each session's MVNN covariance is estimated from:
            "session" (the mean of its test and training partitions', as gifale95/eeg_encoding) or
            "training" (its training partition only, as AlignVis: no test statistic in the whitening).
        training_repetitions, test_repetitions: Repetitions kept per condition and session
            (published: 2 and 20).
        seed: Seed of repetition selection and shuffling (published: 20200220).
        write: Write the two files (both or neither, each atomically).

    Returns:
        PreprocessedSubject with training and test EEGResponses of shape (conditions, repetitions,
        channels, times), the paths written and the settings used. Their conditions are 0-based image
        indices, as :func:`load_preprocessed_eeg` gives for the written files (the raw 1-based event
        codes minus 1, see :func:`epoch_session`).

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
    check_choice(fn, "recipe", recipe, tuple(_RECIPES))
    given = {
        "sfreq": sfreq,
        "channels": channels,
        "tmax": tmax,
        "crop": crop,
        "mvnn_dim": mvnn_dim,
        "mvnn_covariance": mvnn_covariance,
    }
    settings: dict[str, Any] = {k: _RECIPES[recipe][k] if v is FROM_RECIPE else v for k, v in given.items()}
    sfreq, channels, tmax, crop, mvnn_dim, mvnn_covariance = settings.values()
    _check_epoching(
        fn, sfreq=sfreq, channels=channels, tmin=tmin, tmax=tmax, baseline=baseline, seed=seed, crop=crop
    )
    check_choice(fn, "mvnn_dim", mvnn_dim, get_args(MVNNDim))
    check_choice(fn, "mvnn_covariance", mvnn_covariance, get_args(MVNNCovariance))
    check_int(fn, "training_repetitions", training_repetitions, minimum=1, none=True)
    check_int(fn, "test_repetitions", test_repetitions, minimum=1, none=True)
    check_bool(fn, "write", write)
    raw_dir = os.fspath(raw_dir)
    if sessions is not None:
        if isinstance(sessions, (str, bytes)) or not isinstance(sessions, Sequence):
            raise TypeError(f"{fn}: sessions must be None or a sequence of session numbers, got {sessions!r}")
        sessions = [check_int(fn, f"sessions[{i}]", s, minimum=1) for i, s in enumerate(sessions)]
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
                    crop=crop,
                )
            )
        _check_same(parts, f"session {ses}")
        # One whitening matrix per session, from the mean of its partitions' covariances (eeg_encoding)
        # or from its training partition's alone (AlignVis); parts are [test, training].
        fit_on = [1] if mvnn_covariance == "training" else [0, 1]
        whitened = mvnn([p.data for p in parts], mvnn_dim, fit_on=fit_on)
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
        out = preprocessed_dir(raw_dir, out_dir)
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
    return PreprocessedSubject(training, test, paths, settings)
