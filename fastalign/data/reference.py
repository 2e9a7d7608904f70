"""The published preprocessing, step by step: the oracles fastalign.data is tested and timed against.

gifale95/eeg_encoding (preprocessing_utils.mvnn) estimates one session's noise covariance with
scikit-learn's shrinkage estimator (``_cov(..., shrinkage="auto")``: Ledoit-Wolf on standardised data)
for every condition and every time point ("time") or repetition ("epochs"), averages over those, then
over conditions, then over the session's partitions, and whitens with the inverse matrix square root.
:func:`published_preprocess` re-implements its whole script (epoching, mvnn, save_prepr) with the same
MNE calls and numpy loops, for testing and as the benchmarks' baseline.

NonaRjb/AlignVis (src/dataset/preprocessing_utils.py, run by src/dataset/things_eeg_preprocessing.py)
changes four things: the 63 channels picked in a fixed order, epochs -0.2..1.0 s cropped ``[..., 50:]``
before MVNN, the covariance of the training partition only (``sigma_tot = sigma_part[1]``), and a pickle
instead of ``np.save``; the script's defaults are 4 sessions, 250 Hz and ``mvnn_dim="epochs"``.
:func:`alignvis_preprocess` re-implements those steps with the same MNE calls and numpy loops, for
testing only.
"""

from __future__ import annotations

import os

import numpy as np
import scipy.linalg

from fastalign.data._io import load_pickled_dict


def published_noise_covariance(parts: list[np.ndarray], dim: str) -> np.ndarray:
    """One session's noise covariance (channels, channels) by the published per-condition loops.

    Args:
        parts: the session's partitions (e.g. test and training), each (conditions, repetitions,
            channels, times).
        dim: "time" (a covariance per time point over repetitions) or "epochs" (per repetition over
            time points).
    """
    from sklearn.discriminant_analysis import _cov  # private, as in the published code

    sigma_part = []
    for data in parts:
        sigma_cond = []
        for cond in data:
            if dim == "time":
                covs = [_cov(cond[:, :, t], shrinkage="auto") for t in range(cond.shape[2])]
            else:
                covs = [_cov(np.transpose(cond[e]), shrinkage="auto") for e in range(cond.shape[0])]
            sigma_cond.append(np.mean(covs, axis=0))
        sigma_part.append(np.mean(sigma_cond, axis=0))
    return np.asarray(np.mean(sigma_part, axis=0))


def _published_whiten(parts: list[np.ndarray], sigma: np.ndarray) -> list[np.ndarray]:
    inv = scipy.linalg.fractional_matrix_power(sigma, -0.5)
    return [
        np.reshape((np.reshape(d, (-1, d.shape[2], d.shape[3])).swapaxes(1, 2) @ inv).swapaxes(1, 2), d.shape)
        for d in parts
    ]


def published_mvnn(parts: list[np.ndarray], dim: str) -> tuple[list[np.ndarray], np.ndarray]:
    """(whitened partitions, noise covariance) of one session, as the published code computes them."""
    sigma = published_noise_covariance(parts, dim)
    return _published_whiten(parts, sigma), sigma


#: AlignVis preprocessing_utils.py ``chan_order`` (kept here verbatim, apart from fastalign's constant).
_ALIGNVIS_CHAN_ORDER = [
    "Fp1", "Fp2", "AF7", "AF3", "AFz", "AF4", "AF8", "F7", "F5", "F3",
    "F1", "F2", "F4", "F6", "F8", "FT9", "FT7", "FC5", "FC3", "FC1",
    "FCz", "FC2", "FC4", "FC6", "FT8", "FT10", "T7", "C5", "C3", "C1",
    "Cz", "C2", "C4", "C6", "T8", "TP9", "TP7", "CP5", "CP3", "CP1",
    "CPz", "CP2", "CP4", "CP6", "TP8", "TP10", "P7", "P5", "P3", "P1",
    "Pz", "P2", "P4", "P6", "P8", "PO7", "PO3", "POz", "PO4", "PO8",
    "O1", "Oz", "O2",
]  # fmt: skip


def _epoching(
    raw_dir: str,
    subject: int,
    n_ses: int,
    data_part: str,
    sfreq: float,
    seed: int,
    max_rep: int,
    channels: str | list[str],
    tmax: float,
    first_sample: int,
) -> tuple[list[np.ndarray], list[np.ndarray], list[str], np.ndarray]:
    """Both published ``epoching`` functions: they differ in the channels (a regular expression, picked
    in recording order, or a list, picked in its order), the epoch's end and AlignVis's crop."""
    import mne
    from sklearn.utils import shuffle

    epoched_data, img_conditions = [], []
    for s in range(n_ses):
        eeg_dir = os.path.join(f"sub-{subject:02}", f"ses-{s + 1:02}", f"raw_eeg_{data_part}.npy")
        # the published np.load(allow_pickle=True), through the loader that runs no code from the file
        eeg_data = load_pickled_dict(
            os.path.join(raw_dir, eeg_dir), ("ch_names", "sfreq", "ch_types", "raw_eeg_data"), "raw EEG"
        )
        info = mne.create_info(eeg_data["ch_names"], eeg_data["sfreq"], eeg_data["ch_types"])
        raw = mne.io.RawArray(eeg_data["raw_eeg_data"], info, verbose="error")
        events = mne.find_events(raw, stim_channel="stim", verbose="error")
        if isinstance(channels, str):
            chan_idx = np.asarray(mne.pick_channels_regexp(raw.info["ch_names"], channels))
            raw.pick([raw.info["ch_names"][c] for c in chan_idx], verbose="error")
        else:
            raw.pick_channels(channels, ordered=True, verbose="error")
        events = np.delete(events, np.where(events[:, 2] == 99999)[0], 0)
        epochs = mne.Epochs(
            raw, events, tmin=-0.2, tmax=tmax, baseline=(None, 0), preload=True, verbose="error"
        )
        if sfreq < 1000:
            epochs.resample(sfreq, verbose="error")
        ch_names, times = epochs.info["ch_names"], epochs.times
        data, ev = epochs.get_data(), epochs.events[:, 2]
        img_cond = np.unique(ev)
        sorted_data = np.zeros((len(img_cond), max_rep, data.shape[1], data.shape[2]))
        for i in range(len(img_cond)):
            idx = shuffle(np.where(ev == img_cond[i])[0], random_state=seed, n_samples=max_rep)
            sorted_data[i] = data[idx]
        epoched_data.append(sorted_data[:, :, :, first_sample:])
        img_conditions.append(img_cond)
    return epoched_data, img_conditions, ch_names, times


def published_epoching(
    raw_dir: str, subject: int, n_ses: int, data_part: str, sfreq: float, seed: int, max_rep: int
) -> tuple[list[np.ndarray], list[np.ndarray], list[str], np.ndarray]:
    """gifale95/eeg_encoding ``epoching``: (epoched data per session, image conditions per session,
    ch_names, times): the 17 occipital and parietal channels (``'^O *|^P *'``), -0.2..0.8 s, baseline
    (None, 0), resampled when ``sfreq`` < 1000. ``max_rep`` is hard-coded there (20 test, 2 training).
    """
    return _epoching(raw_dir, subject, n_ses, data_part, sfreq, seed, max_rep, "^O *|^P *", 0.8, 0)


def alignvis_epoching(
    raw_dir: str, subject: int, n_ses: int, data_part: str, sfreq: float, seed: int, max_rep: int
) -> tuple[list[np.ndarray], list[np.ndarray], list[str], np.ndarray]:
    """AlignVis ``epoching``: (epoched data per session, image conditions per session, ch_names, times).

    As published, ``times`` are those of the uncropped epoch (300 values for 250 data samples).
    ``max_rep`` is hard-coded there (20 test, 2 training).
    """
    return _epoching(raw_dir, subject, n_ses, data_part, sfreq, seed, max_rep, _ALIGNVIS_CHAN_ORDER, 1.0, 50)


def alignvis_mvnn(
    epoched_test: list[np.ndarray], epoched_train: list[np.ndarray], mvnn_dim: str
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """AlignVis ``mvnn``: each session whitened with its training partition's covariance alone."""
    whitened_test, whitened_train = [], []
    for test, train in zip(epoched_test, epoched_train, strict=True):
        # sigma_part[1]: the published loop also computes the test partition's, then leaves it unused.
        sigma_tot = published_noise_covariance([train], mvnn_dim)
        white_test, white_train = _published_whiten([test, train], sigma_tot)
        whitened_test.append(white_test)
        whitened_train.append(white_train)
    return whitened_test, whitened_train


def published_merge(
    whitened_test: list[np.ndarray],
    whitened_train: list[np.ndarray],
    img_conditions_train: list[np.ndarray],
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``save_prepr`` of gifale95/eeg_encoding, and of AlignVis (the same merging), without saving:
    (merged test, merged training).

    As published, every training image must be in exactly two sessions (``white_data.shape[1]*2``),
    which holds for the 4-session layout.
    """
    from sklearn.utils import shuffle

    merged_test = whitened_test[0]
    for s in range(1, len(whitened_test)):
        merged_test = np.append(merged_test, whitened_test[s], 1)
    merged_test = merged_test[:, shuffle(np.arange(0, merged_test.shape[1]), random_state=seed)]
    white_data, img_cond = whitened_train[0], img_conditions_train[0]
    for s in range(1, len(whitened_train)):
        white_data = np.append(white_data, whitened_train[s], 0)
        img_cond = np.append(img_cond, img_conditions_train[s], 0)
    n_cond = len(np.unique(img_cond))
    merged_train = np.zeros((n_cond, white_data.shape[1] * 2, white_data.shape[2], white_data.shape[3]))
    for i in range(n_cond):
        idx = np.where(img_cond == i + 1)[0]
        ordered_data = white_data[idx[0]]
        for r in range(1, len(idx)):
            ordered_data = np.append(ordered_data, white_data[idx[r]], 0)
        merged_train[i] = ordered_data
    merged_train = merged_train[:, shuffle(np.arange(0, merged_train.shape[1]), random_state=seed)]
    return merged_test, merged_train


def alignvis_preprocess(
    raw_dir: str,
    subject: int,
    n_ses: int = 4,
    sfreq: float = 250.0,
    mvnn_dim: str = "epochs",
    seed: int = 20200220,
    test_repetitions: int = 20,
    training_repetitions: int = 2,
) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """The AlignVis preprocessing script (things_eeg_preprocessing.py, defaults as published):
    (merged test, merged training, ch_names, times of the uncropped epoch) of one subject."""
    epoched_test, _, ch_names, times = alignvis_epoching(
        raw_dir, subject, n_ses, "test", sfreq, seed, test_repetitions
    )
    epoched_train, img_conditions_train, _, _ = alignvis_epoching(
        raw_dir, subject, n_ses, "training", sfreq, seed, training_repetitions
    )
    whitened_test, whitened_train = alignvis_mvnn(epoched_test, epoched_train, mvnn_dim)
    merged_test, merged_train = published_merge(whitened_test, whitened_train, img_conditions_train, seed)
    return merged_test, merged_train, ch_names, np.asarray(times)


def published_preprocess(
    raw_dir: str,
    subject: int,
    out_dir: str | None = None,
    n_ses: int = 4,
    sfreq: float = 100.0,
    mvnn_dim: str = "time",
    seed: int = 20200220,
    test_repetitions: int = 20,
    training_repetitions: int = 2,
) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """The gifale95/eeg_encoding preprocessing script (preprocessing.py, defaults as published):
    (merged test, merged training, ch_names, times) of one subject; with ``out_dir``, also saved as
    published (``np.save`` of a dict to ``{out_dir}/sub-XX/preprocessed_eeg_{test,training}.npy``)."""
    epoched_test, _, ch_names, times = published_epoching(
        raw_dir, subject, n_ses, "test", sfreq, seed, test_repetitions
    )
    epoched_train, img_conditions_train, _, _ = published_epoching(
        raw_dir, subject, n_ses, "training", sfreq, seed, training_repetitions
    )
    whitened_test, whitened_train = [], []
    for test, train in zip(epoched_test, epoched_train, strict=True):
        white_test, white_train = published_mvnn([test, train], mvnn_dim)[0]
        whitened_test.append(white_test)
        whitened_train.append(white_train)
    merged_test, merged_train = published_merge(whitened_test, whitened_train, img_conditions_train, seed)
    if out_dir is not None:
        save_dir = os.path.join(out_dir, f"sub-{subject:02}")
        os.makedirs(save_dir, exist_ok=True)
        for part, data in (("test", merged_test), ("training", merged_train)):
            stored = {"preprocessed_eeg_data": data, "ch_names": ch_names, "times": times}
            np.save(os.path.join(save_dir, f"preprocessed_eeg_{part}.npy"), stored)  # type: ignore[arg-type]
    return merged_test, merged_train, ch_names, np.asarray(times)
