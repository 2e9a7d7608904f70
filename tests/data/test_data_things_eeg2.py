"""THINGS-EEG2 readers: any channel count / time length, and errors that name the file and the fix."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

from fastalign.data import (
    EEGResponses,
    load_image_metadata,
    load_preprocessed_eeg,
    load_raw_eeg,
    merge_sessions,
    preprocessed_path,
    things_eeg2_datasets,
)
from fastalign.data._io import save_npy


def _prep(tmp: str, shape: tuple[int, ...] = (6, 4, 63, 250), **override: object) -> str:
    n_ch, n_t = shape[2], shape[3]
    d = {
        "preprocessed_eeg_data": np.random.default_rng(0).normal(size=shape),
        "ch_names": [f"E{i}" for i in range(n_ch)],
        "times": np.linspace(-0.2, 0.8, n_t, endpoint=False),
    }
    d.update(override)
    path = preprocessed_path(tmp, 1, "training")
    save_npy(path, {k: v for k, v in d.items() if v is not None})
    return path


def test_any_channel_count_and_length(tmp_path: os.PathLike) -> None:
    path = _prep(str(tmp_path))
    eeg = load_preprocessed_eeg(tmp_path, 1, "training")
    assert eeg.data.shape == (6, 4, 63, 250) and len(eeg.ch_names) == 63 and eeg.source == path
    assert load_preprocessed_eeg(path).data.shape == (6, 4, 63, 250)


def test_preprocessed_bad_input(tmp_path: os.PathLike) -> None:
    tmp = str(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"preprocessed_eeg_test.npy"):
        load_preprocessed_eeg(tmp, 1, "test")
    _prep(tmp, times=None)
    with pytest.raises(ValueError, match=r"preprocessed_eeg_training.npy.*lacks key.*times"):
        load_preprocessed_eeg(tmp, 1, "training")
    _prep(tmp, ch_names=["a", "b"])
    with pytest.raises(ValueError, match=r"shape \(6, 4, 63, 250\), expected .*2 channels"):
        load_preprocessed_eeg(tmp, 1, "training")
    _prep(tmp, ch_names="O1O", preprocessed_eeg_data=np.zeros((6, 4, 3, 250)))  # list("O1O"): 3 "names"
    with pytest.raises(ValueError, match=r"ch_names must be a list of channel names, got 'O1O'"):
        load_preprocessed_eeg(tmp, 1, "training")
    _prep(tmp, ch_names=["O1", "Oz", "O1"], preprocessed_eeg_data=np.zeros((6, 4, 3, 250)))
    with pytest.raises(ValueError, match=r"ch_names repeats \['O1'\]; every channel needs its own name"):
        load_preprocessed_eeg(tmp, 1, "training")
    _prep(tmp, preprocessed_eeg_data=np.full((6, 4, 63, 250), np.nan))
    with pytest.raises(ValueError, match="NaN"):
        load_preprocessed_eeg(tmp, 1, "training")
    _prep(tmp, preprocessed_eeg_data=np.zeros((6, 63, 250)))
    with pytest.raises(ValueError, match="must have 4 dimensions"):
        load_preprocessed_eeg(tmp, 1, "training")
    np.save(preprocessed_path(tmp, 1, "training"), np.zeros(3))
    with pytest.raises(ValueError, match="must hold a dict"):
        load_preprocessed_eeg(tmp, 1, "training")
    with pytest.raises(ValueError, match="split must be one of"):
        load_preprocessed_eeg(tmp, 1, "train")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="subject must be a positive int"):
        load_preprocessed_eeg(tmp, 0, "training")


def test_raw_and_metadata_bad_input(tmp_path: os.PathLike) -> None:
    raw = os.path.join(tmp_path, "raw_eeg_test.npy")
    base = {
        "raw_eeg_data": np.zeros((3, 100)),
        "ch_names": ["O1", "O2", "stim"],
        "ch_types": ["eeg", "eeg", "stim"],
        "sfreq": 1000,
    }
    save_npy(raw, {**base, "ch_types": ["eeg", "stim"]})
    with pytest.raises(ValueError, match=r"raw_eeg_test.npy.*3 channels.*2 ch_types"):
        load_raw_eeg(raw)
    save_npy(raw, {**base, "ch_names": ["O1", "O2", "STI"]})
    with pytest.raises(ValueError, match="no stim channel 'stim'"):
        load_raw_eeg(raw)
    save_npy(raw, {**base, "sfreq": -1})
    with pytest.raises(ValueError, match="sfreq must be a positive"):
        load_raw_eeg(raw)
    save_npy(raw, base)
    assert load_raw_eeg(raw).sfreq == 1000.0

    with pytest.raises(FileNotFoundError, match=r"image_metadata.npy"):
        load_image_metadata(tmp_path)
    meta = os.path.join(tmp_path, "image_metadata.npy")
    save_npy(
        meta,
        {
            "train_img_concepts": ["a", "a"],
            "train_img_files": ["1.jpg"],
            "test_img_concepts": [],
            "test_img_files": [],
        },
    )
    with pytest.raises(ValueError, match="train_img_concepts has 2 entries but train_img_files has 1"):
        load_image_metadata(tmp_path)
    save_npy(
        meta,
        {
            "train_img_concepts": ["a"],
            "train_img_files": ["1.jpg"],
            "test_img_concepts": [],
            "test_img_files": [],
        },
    )
    with pytest.raises(FileNotFoundError, match=r"1 training image.*1.jpg"):
        load_image_metadata(tmp_path, check_files=True)


def test_mismatched_image_and_response_counts(tmp_path: os.PathLike) -> None:
    tmp = str(tmp_path)
    _prep(tmp, shape=(6, 2, 3, 5))
    d = np.load(preprocessed_path(tmp, 1, "training"), allow_pickle=True).item()
    save_npy(preprocessed_path(tmp, 1, "test"), d)
    files = [f"{i}.jpg" for i in range(5)]
    save_npy(
        os.path.join(tmp, "image_metadata.npy"),
        {
            "train_img_concepts": ["c"] * 5,
            "train_img_files": files,
            "test_img_concepts": ["c"] * 6,
            "test_img_files": [*files, "5.jpg"],
        },
    )
    with pytest.raises(ValueError, match=r"has 6 conditions but image_metadata.npy lists 5 training images"):
        things_eeg2_datasets(tmp, 1, tmp)


def test_merge_rejects_unequal_training_sessions() -> None:
    data = np.random.default_rng(0).normal(size=(2, 2, 3, 4))
    a = EEGResponses(data, ["O1", "O2", "Oz"], np.arange(4), np.array([1, 2]), "ses-01")
    b = EEGResponses(data[:1], ["O1", "O2", "Oz"], np.arange(4), np.array([1]), "ses-02")
    with pytest.raises(ValueError, match=r"stim code 3 \(image 2\) is in 1 session"):
        merge_sessions([a, a], [a, b])
    c = EEGResponses(data, ["O1", "O2", "Pz"], np.arange(4), np.array([1, 2]), "ses-03")
    with pytest.raises(ValueError, match="ses-03: channels"):
        merge_sessions([a, c], [a, a])


def test_damaged_files_name_the_file_and_the_damage(tmp_path: os.PathLike) -> None:
    path = _prep(str(tmp_path), shape=(2, 2, 3, 5))
    with open(path, "rb") as f:
        good = f.read()
    header = len(good) - len(good.split(b"\n", 1)[1])  # the .npy header ends with a newline
    for damaged, found in (
        (good[: len(good) // 2], "holds damaged or truncated pickled data"),
        (good[:header], "holds damaged or truncated pickled data"),
        (good[:header] + b"\x80\x04garbage" * 20, "holds damaged or truncated pickled data"),
        (good[:20], "has a damaged .npy header"),
        (b"not a numpy file at all", "is not a .npy file"),
        (b"", "is not a .npy file"),
    ):
        with open(path, "wb") as f:
            f.write(damaged)
        with pytest.raises(
            ValueError, match=f"THINGS-EEG2 preprocessed EEG: {re.escape(repr(path))} {found}"
        ):
            load_preprocessed_eeg(path)


@pytest.mark.parametrize("sfreq", ["1000Hz", None, [1000, 500], {"hz": 1000}, True, np.nan, np.array([])])
def test_raw_sfreq_must_be_a_positive_number(tmp_path: os.PathLike, sfreq: object) -> None:
    raw = os.path.join(tmp_path, "raw_eeg_training.npy")
    save_npy(raw, {"raw_eeg_data": np.zeros((2, 10)), "ch_names": ["O1", "stim"], "ch_types": ["eeg", "stim"],
                   "sfreq": sfreq})  # fmt: skip
    with pytest.raises(
        ValueError, match=r"raw_eeg_training.npy': sfreq must be a positive number of Hz, got"
    ):
        load_raw_eeg(raw)


def test_preprocessed_times_must_be_numeric(tmp_path: os.PathLike) -> None:
    _prep(str(tmp_path), shape=(2, 2, 3, 2), times=["a", "b"])
    with pytest.raises(TypeError, match=r"preprocessed_eeg_training.npy: times must be a real numeric array"):
        load_preprocessed_eeg(tmp_path, 1, "training")
