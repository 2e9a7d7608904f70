"""Readers for the published THINGS-EEG2 layout (Gifford et al. 2022, https://osf.io/3jk45/).

Layout (folder names as published; every loader also takes a direct file path)::

    <eeg_dir>/raw_data/sub-01/ses-01/raw_eeg_training.npy      dict: raw_eeg_data (channels x samples,
    <eeg_dir>/raw_data/sub-01/ses-01/raw_eeg_test.npy                with a "stim" channel), ch_names,
                                                                     ch_types, sfreq
    <eeg_dir>/preprocessed_data/sub-01/preprocessed_eeg_training.npy   dict: preprocessed_eeg_data
    <eeg_dir>/preprocessed_data/sub-01/preprocessed_eeg_test.npy         (conditions x repetitions x
                                                                          channels x times), ch_names, times
    <image_dir>/training_images/<concept>/<file>.jpg
    <image_dir>/test_images/<concept>/<file>.jpg
    <image_dir>/image_metadata.npy     dict: train_img_concepts, train_img_files, test_img_concepts,
                                             test_img_files

Condition ``i`` of the preprocessed training (test) data is image ``i`` of ``train_img_files``
(``test_img_files``); raw event code ``i + 1`` marks a presentation of it, and 99999 a target trial.

The files are pickled dicts. They are read with :func:`fastalign.data._io.load_npy`, which unpickles only
numpy arrays, dicts, lists, tuples, strings and numbers, so a data file cannot run code when loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from fastalign.data._io import ALIGNVIS_HINT, check_array, load_pickled_dict
from fastalign.data.responses import EEGResponses

Split = Literal["training", "test"]
SPLITS = ("training", "test")
#: Occipital and parietal channels, the published default selection.
OCCIPITAL_PARIETAL = "^O *|^P *"
#: Event code of the target (catch) trials that the published pipeline drops.
TARGET_EVENT = 99999
#: Seed of the published preprocessing (repetition selection and shuffling).
PUBLISHED_SEED = 20200220

_PREPROCESSED_KEYS = ("preprocessed_eeg_data", "ch_names", "times")
_RAW_KEYS = ("raw_eeg_data", "ch_names", "ch_types", "sfreq")
_METADATA_KEYS = ("train_img_concepts", "train_img_files", "test_img_concepts", "test_img_files")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def subject_dir(root: str | os.PathLike[str], subject: int) -> str:
    """``root/sub-XX`` with the two-digit subject number of the published layout."""
    if isinstance(subject, bool) or not isinstance(subject, (int, np.integer)) or subject < 1:
        raise ValueError(f"subject must be a positive int (1 for sub-01), got {subject!r}")
    return os.path.join(os.fspath(root), f"sub-{int(subject):02d}")


def preprocessed_path(preprocessed_dir: str | os.PathLike[str], subject: int, split: Split) -> str:
    """Path of ``sub-XX/preprocessed_eeg_{split}.npy`` under ``preprocessed_dir``."""
    _check_split(split)
    return os.path.join(subject_dir(preprocessed_dir, subject), f"preprocessed_eeg_{split}.npy")


def raw_path(raw_dir: str | os.PathLike[str], subject: int, session: int, split: Split) -> str:
    """Path of ``sub-XX/ses-YY/raw_eeg_{split}.npy`` under ``raw_dir``."""
    _check_split(split)
    if isinstance(session, bool) or not isinstance(session, (int, np.integer)) or session < 1:
        raise ValueError(f"session must be a positive int (1 for ses-01), got {session!r}")
    return os.path.join(subject_dir(raw_dir, subject), f"ses-{int(session):02d}", f"raw_eeg_{split}.npy")


def _names(value: Any, name: str, file: str) -> list[str]:
    """Channel names as a list of distinct strings: a single string (whose characters list() would take
    for names) and repeated names (selection by name would take the first silently) are refused."""
    if isinstance(value, (str, bytes)) or (isinstance(value, np.ndarray) and value.ndim != 1):
        raise ValueError(f"{file!r}: {name} must be a list of channel names, got {value!r:.80}")
    names = [str(c) for c in value]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{file!r}: {name} repeats {repeated}; every channel needs its own name")
    return names


def load_preprocessed_eeg(
    path: str | os.PathLike[str], subject: int | None = None, split: Split = "training"
) -> EEGResponses:
    """Loads a preprocessed THINGS-EEG2 file.

    Args:
        path: The ``.npy`` file itself, or (with ``subject``) the folder holding ``sub-XX/``.
        subject: Subject number when ``path`` is the folder.
        split: "training" or "test" when ``path`` is the folder.

    Returns:
        EEGResponses with data (n_conditions, n_repetitions, n_channels, n_times) as stored (float64 in
        the published files), ch_names, times, and conditions 0..n_conditions-1 (image indices).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a damaged file, or not a dict with preprocessed_eeg_data (4-d, finite), ch_names and
            times (1-d) that match it.
    """
    file = preprocessed_path(path, subject, split) if subject is not None else os.fspath(path)
    d = load_pickled_dict(file, _PREPROCESSED_KEYS, "THINGS-EEG2 preprocessed EEG")
    data = check_array(d["preprocessed_eeg_data"], "preprocessed_eeg_data", file, ndim=4)
    times = check_array(d["times"], "times", file, ndim=1).astype(np.float64)
    ch_names = _names(d["ch_names"], "ch_names", file)
    expect = f"(conditions, repetitions, {len(ch_names)} channels, {times.size} times)"
    if data.ndim == 4 and data.shape[2] == len(ch_names) and times.size == data.shape[3] + 50:
        raise ValueError(
            f"{file!r}: times has {times.size} entries but preprocessed_eeg_data {data.shape[3]} samples, "
            f"50 fewer (AlignVis cuts the 50 samples before onset from the data, not from times): "
            f"{ALIGNVIS_HINT}"
        )
    if data.shape[2:] != (len(ch_names), times.size):
        raise ValueError(f"{file!r}: preprocessed_eeg_data has shape {data.shape}, expected {expect}")
    return EEGResponses(data, ch_names, times, np.arange(data.shape[0]), file)


@dataclass
class RawEEG:
    """One raw THINGS-EEG2 session file (a partition of one session).

    Attributes:
        data: (n_channels, n_samples) continuous data, including the stim channel.
        ch_names: n_channels names; ch_types: their MNE types ("eeg", "stim", ...); sfreq: Hz.
        source: the file path.
    """

    data: np.ndarray
    ch_names: list[str]
    ch_types: list[str]
    sfreq: float
    source: str


def load_raw_eeg(path: str | os.PathLike[str], stim_channel: str = "stim") -> RawEEG:
    """Loads ``raw_eeg_{training,test}.npy`` and checks it (2-d data, names/types per channel, a finite
    stim channel, a positive number as sfreq). NaN or inf in an EEG channel is left to the user of the
    data: :func:`fastalign.data.epoch_session` refuses it in the channels it picks only.

    Raises:
        FileNotFoundError: no such file.
        ValueError: damaged or unreadable file (see :func:`fastalign.data._io.load_npy`), missing key, or
            a check above fails; the message names the file.
    """
    file = os.fspath(path)
    d = load_pickled_dict(file, _RAW_KEYS, "THINGS-EEG2 raw EEG")
    data = check_array(d["raw_eeg_data"], "raw_eeg_data", file, ndim=2, finite=False)
    ch_names = _names(d["ch_names"], "ch_names", file)
    ch_types = [str(c) for c in d["ch_types"]]
    if not (len(ch_names) == len(ch_types) == data.shape[0]):
        raise ValueError(
            f"{file!r}: raw_eeg_data has {data.shape[0]} channels (shape {data.shape}) but "
            f"{len(ch_names)} ch_names and {len(ch_types)} ch_types; expected one name and type per channel"
        )
    if stim_channel not in ch_names:
        raise ValueError(f"{file!r}: no stim channel {stim_channel!r} among ch_names {ch_names}")
    check_array(
        data[ch_names.index(stim_channel)], f"raw_eeg_data's stim channel {stim_channel!r}", file, ndim=1
    )
    stored = d["sfreq"]
    arr = np.asarray(stored if isinstance(stored, (int, float, np.number, np.ndarray)) else np.nan)
    sfreq = float(arr.reshape(())) if arr.size == 1 and arr.dtype.kind in "iuf" else np.nan
    if not (np.isfinite(sfreq) and sfreq > 0):
        raise ValueError(
            f"{file!r}: sfreq must be a positive number of Hz, got {stored!r} ({type(stored).__name__})"
        )
    return RawEEG(data, ch_names, ch_types, sfreq, file)


@dataclass
class ImageMetadata:
    """``image_metadata.npy``: concept folder and file name of every training and test image, in
    condition order."""

    train_img_concepts: list[str]
    train_img_files: list[str]
    test_img_concepts: list[str]
    test_img_files: list[str]
    image_dir: str

    def paths(self, split: Split) -> list[str]:
        """Full paths of the images of ``split`` in condition order."""
        _check_split(split)
        if split == "training":
            sub, concepts, files = "training_images", self.train_img_concepts, self.train_img_files
        else:
            sub, concepts, files = "test_images", self.test_img_concepts, self.test_img_files
        return [os.path.join(self.image_dir, sub, c, f) for c, f in zip(concepts, files, strict=True)]


def load_image_metadata(image_dir: str | os.PathLike[str], *, check_files: bool = False) -> ImageMetadata:
    """Reads ``image_dir/image_metadata.npy``.

    Args:
        image_dir: The folder holding image_metadata.npy, training_images/ and test_images/.
        check_files: Also check that every listed image exists (one stat per image).

    Raises:
        FileNotFoundError: image_metadata.npy (or, with ``check_files``, an image) is missing.
        ValueError: wrong keys, or concept and file lists of different lengths.
    """
    image_dir = os.fspath(image_dir)
    file = os.path.join(image_dir, "image_metadata.npy")
    d = load_pickled_dict(file, _METADATA_KEYS, "THINGS-EEG2 image metadata")
    lists = {k: [str(v) for v in np.asarray(d[k]).reshape(-1)] for k in _METADATA_KEYS}
    for split in ("train", "test"):
        nc, nf = len(lists[f"{split}_img_concepts"]), len(lists[f"{split}_img_files"])
        if nc != nf:
            raise ValueError(
                f"{file!r}: {split}_img_concepts has {nc} entries but {split}_img_files has {nf}; "
                "expected one concept per image"
            )
    meta = ImageMetadata(**lists, image_dir=image_dir)
    if check_files:
        for split in SPLITS:
            missing = [p for p in meta.paths(split) if not os.path.isfile(p)]  # type: ignore[arg-type]
            if missing:
                raise FileNotFoundError(
                    f"{file!r} lists {len(missing)} {split} image(s) that do not exist, e.g. {missing[0]!r}"
                )
    return meta


def save_preprocessed_dict(data: np.ndarray, ch_names: list[str], times: np.ndarray) -> dict[str, Any]:
    """The dict stored in a preprocessed file, with the published keys."""
    return {"preprocessed_eeg_data": data, "ch_names": list(ch_names), "times": np.asarray(times)}
