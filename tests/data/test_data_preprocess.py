"""preprocess_things_eeg2 against a step-by-step oracle: the published script's MNE calls and numpy
loops (gifale95/eeg_encoding preprocessing_utils.py: epoching, mvnn, save_prepr), run on the raw files of
the synthetic dataset."""

from __future__ import annotations

import dataclasses
import os

import mne
import numpy as np
import pytest
from sklearn.utils import shuffle

from fastalign.data import (
    SyntheticThings,
    _io,
    epoch_session,
    load_preprocessed_eeg,
    load_raw_eeg,
    preprocess_things_eeg2,
    preprocessed_path,
    raw_path,
)
from fastalign.data.reference import published_epoching, published_mvnn

SEED = 20200220


def _oracle_merge(test: list, train: list, train_conds: list) -> tuple[np.ndarray, np.ndarray]:
    """reference.published_merge for any even number of sessions: the published one takes every training
    image to be in 2 sessions (``white_data.shape[1]*2``), true of 4 sessions, not of these 2."""
    merged_test = test[0]
    for s in range(1, len(test)):
        merged_test = np.append(merged_test, test[s], 1)
    merged_test = merged_test[:, shuffle(np.arange(merged_test.shape[1]), random_state=SEED)]
    white, img_cond = train[0], train_conds[0]
    for s in range(1, len(train)):
        white = np.append(white, train[s], 0)
        img_cond = np.append(img_cond, train_conds[s], 0)
    n_cond = len(np.unique(img_cond))
    reps_per_cond = white.shape[0] // n_cond * white.shape[1]
    merged_train = np.zeros((n_cond, reps_per_cond, white.shape[2], white.shape[3]))
    for i in range(n_cond):
        idx = np.where(img_cond == i + 1)[0]
        ordered = white[idx[0]]
        for r in range(1, len(idx)):
            ordered = np.append(ordered, white[idx[r]], 0)
        merged_train[i] = ordered
    merged_train = merged_train[:, shuffle(np.arange(merged_train.shape[1]), random_state=SEED)]
    return merged_test, merged_train


# The published rate (100 Hz) for one MVNN mode; 50 Hz for "time", whose oracle fits one shrunk covariance
# per condition and time point (half the points: half its seconds).
@pytest.mark.parametrize("dim, sfreq", [("time", 50.0), ("epochs", 100.0)])
def test_pipeline_matches_step_by_step_oracle(
    synthetic: SyntheticThings, tmp_path: os.PathLike, dim: str, sfreq: float
) -> None:
    test_ep, _, ch_names, times = published_epoching(synthetic.raw_dir, 1, 2, "test", sfreq, SEED, 10)
    train_ep, train_conds, _, _ = published_epoching(synthetic.raw_dir, 1, 2, "training", sfreq, SEED, 2)
    white = [published_mvnn([test, train], dim)[0] for test, train in zip(test_ep, train_ep, strict=True)]
    white_test, white_train = [w[0] for w in white], [w[1] for w in white]
    want_test, want_train = _oracle_merge(white_test, white_train, train_conds)

    got = preprocess_things_eeg2(
        synthetic.raw_dir, 1, tmp_path, sfreq=sfreq, mvnn_dim=dim, training_repetitions=2, test_repetitions=10
    )
    n_times = int(sfreq)  # the epoch is -0.2 to 0.8 s
    assert got.test.data.shape == want_test.shape == (8, 20, 17, n_times)
    # 2 sessions: each training image is in one of them (n_sessions // 2), 2 repetitions there.
    assert got.training.data.shape == want_train.shape == (12, 2, 17, n_times)
    np.testing.assert_allclose(got.test.data, want_test, rtol=1e-9, atol=1e-9 * np.abs(want_test).max())
    np.testing.assert_allclose(got.training.data, want_train, rtol=1e-9, atol=1e-9 * np.abs(want_train).max())
    for split, want in (("test", want_test), ("training", want_train)):
        stored = np.load(preprocessed_path(tmp_path, 1, split), allow_pickle=True).item()  # type: ignore[arg-type]
        assert sorted(stored) == ["ch_names", "preprocessed_eeg_data", "times"]
        assert list(stored["ch_names"]) == list(ch_names)
        np.testing.assert_array_equal(stored["times"], times)
        np.testing.assert_array_equal(
            stored["preprocessed_eeg_data"], got.test.data if split == "test" else got.training.data
        )
        loaded = load_preprocessed_eeg(tmp_path, 1, split)  # type: ignore[arg-type]
        np.testing.assert_allclose(loaded.data, want, rtol=1e-9, atol=1e-9 * np.abs(want).max())
        # One numbering: what was preprocessed and what is read back are the same 0-based image indices.
        made = got.test if split == "test" else got.training
        assert made.conditions.tolist() == loaded.conditions.tolist() == list(range(len(want)))


def test_epoch_session_options(synthetic: SyntheticThings) -> None:
    path = raw_path(synthetic.raw_dir, 1, 1, "test")
    full = epoch_session(path, n_repetitions=None, sfreq=None)
    assert full.data.shape == (8, 10, 17, 251)  # 250 Hz raw, -0.2..0.8 s inclusive
    # 0-based image indices (raw codes 1..8 minus 1); target trials (99999) dropped
    assert full.conditions.tolist() == list(range(8))
    occ = epoch_session(path, n_repetitions=3, channels="^O", sfreq=50.0)
    assert occ.ch_names == ["O1", "Oz", "O2"] and occ.data.shape == (8, 3, 3, 50)
    every = epoch_session(path, n_repetitions=2, channels=".*", sfreq=125.0)
    assert len(every.ch_names) == 17 + 4 and "stim" not in every.ch_names
    assert every.data.shape == (8, 2, 21, 126)  # 251 samples at 250 Hz -> round(125.5)
    with pytest.raises(ValueError, match="fewer than n_repetitions=11"):
        epoch_session(path, n_repetitions=11)
    with pytest.raises(ValueError, match="no channel matches"):
        epoch_session(path, n_repetitions=2, channels="^Q")


def test_preprocess_writes_both_files_or_neither(
    synthetic: SyntheticThings, tmp_path: os.PathLike, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    real_save = np.save

    def failing_save(f: object, obj: object, **kw: object) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        real_save(f, obj, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(_io.np, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        preprocess_things_eeg2(synthetic.raw_dir, 1, tmp_path, training_repetitions=2, test_repetitions=10)
    assert not os.path.exists(preprocessed_path(tmp_path, 1, "training"))
    assert not os.path.exists(preprocessed_path(tmp_path, 1, "test"))
    assert not [f for _, _, fs in os.walk(tmp_path) for f in fs]  # no temp files left behind


def test_preprocess_bad_input(synthetic: SyntheticThings, tmp_path: os.PathLike) -> None:
    with pytest.raises(FileNotFoundError, match="sub-02"):
        preprocess_things_eeg2(synthetic.raw_dir, 2, tmp_path)
    with pytest.raises(FileNotFoundError, match="ses-03"):
        preprocess_things_eeg2(synthetic.raw_dir, 1, tmp_path, sessions=[1, 3], test_repetitions=10)
    with pytest.raises(ValueError, match="fewer than n_repetitions=20"):
        preprocess_things_eeg2(synthetic.raw_dir, 1, tmp_path, sessions=[1])
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"sfreq": 0}, ValueError, "sfreq must be None or a finite number > 0, got 0"),
        ({"sfreq": -100.0}, ValueError, "sfreq must be None or a finite number > 0"),
        ({"sfreq": np.inf}, ValueError, "sfreq must be None or a finite number > 0, got inf"),
        ({"sfreq": "100"}, TypeError, "sfreq must be None or a finite number > 0, got '100'"),
        ({"tmin": 0.5, "tmax": 0.2}, ValueError, "tmin must be < tmax"),
        ({"tmin": 0.2, "tmax": 0.2}, ValueError, "tmin must be < tmax"),
        ({"tmin": np.nan}, ValueError, "tmin must be a finite number, got nan"),
        ({"tmax": None}, TypeError, "tmax must be a finite number, got None"),
        ({"baseline": (0.3, 0.1)}, ValueError, r"baseline \(0.3, 0.1\) must be an interval inside the epoch"),
        ({"baseline": (-0.5, 0)}, ValueError, r"baseline \(-0.5, 0\) must be an interval inside the epoch"),
        ({"baseline": (None, 2.0)}, ValueError, r"baseline \(None, 2.0\) must be an interval inside"),
        ({"baseline": "none"}, TypeError, "baseline must be None or a"),
        ({"baseline": (None, "0")}, TypeError, r"baseline\[1\] must be None or a finite number"),
        ({"channels": 3}, TypeError, "channels must be a regex str"),
        ({"channels": "^(O"}, ValueError, "channels='\\^\\(O' is not a valid regex"),
        ({"seed": -1}, ValueError, "seed must be an int >= 0, got -1"),
        ({"seed": 2**32}, ValueError, r"seed must be an int in \[0, 2\*\*32\)"),
        ({"seed": 1.5}, TypeError, "seed must be an int >= 0, got 1.5"),
    ],
)
def test_epoching_arguments_are_checked_before_reading(kwargs: dict, exc: type, match: str) -> None:
    # The paths do not exist: every check must come before any file is read.
    with pytest.raises(exc, match="epoch_session: " + match):
        epoch_session("missing/raw_eeg_test.npy", **{"n_repetitions": 2, **kwargs})
    with pytest.raises(exc, match="preprocess_things_eeg2: " + match):
        preprocess_things_eeg2("missing", 1, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"n_repetitions": 0}, ValueError, "n_repetitions must be None or an int >= 1, got 0"),
        ({"n_repetitions": 2.0}, TypeError, "n_repetitions must be None or an int >= 1, got 2.0"),
        ({"n_repetitions": True}, TypeError, "n_repetitions must be None or an int >= 1, got True"),
        ({"target_event": "99999"}, TypeError, "target_event must be None or an int"),
        ({"stim_channel": 0}, TypeError, "stim_channel must be a channel name"),
    ],
)
def test_epoch_session_bad_arguments(kwargs: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match="epoch_session: " + match):
        epoch_session("missing/raw_eeg_test.npy", **{"n_repetitions": 2, **kwargs})


def test_epoch_session_checks_raw(synthetic: SyntheticThings) -> None:
    with pytest.raises(TypeError, match="epoch_session: raw must be a RawEEG or the path"):
        epoch_session(3, n_repetitions=2)  # type: ignore[arg-type]
    loaded = load_raw_eeg(raw_path(synthetic.raw_dir, 1, 1, "test"))
    with pytest.raises(ValueError, match=r"epoch_session: .*no stim channel 'STI 014'"):
        epoch_session(loaded, n_repetitions=2, stim_channel="STI 014")

    # MNE's own errors on the stim channel (e.g. "events shorter than the shortest_event") named no file
    def refuse(*args: object, **kwargs: object) -> None:
        raise ValueError("You have 1 events shorter than the shortest_event.")

    with pytest.MonkeyPatch.context() as m:
        m.setattr(mne, "find_events", refuse)
        with pytest.raises(ValueError, match=r"raw_eeg_test\.npy: the stim channel 'stim' could not be read"):
            epoch_session(loaded, n_repetitions=1)
    stim = loaded.ch_names.index("stim")
    # a negative sample: MNE read it as the event of its absolute value, an extra epoch of that image
    bad = dataclasses.replace(loaded, data=loaded.data.copy())
    bad.data[stim, np.flatnonzero(bad.data[stim])[0] - 10] = -3
    with pytest.raises(
        ValueError, match=r"the stim channel 'stim' holds negative values \(smallest -3, at sample"
    ):
        epoch_session(bad, n_repetitions=1)
    # a stim channel typed "misc" is not data, by its name, even when the regex takes every channel
    misc = dataclasses.replace(
        loaded, ch_types=[*loaded.ch_types[:stim], "misc", *loaded.ch_types[stim + 1 :]]
    )
    got = epoch_session(misc, n_repetitions=1, channels=".*")
    assert "stim" not in got.ch_names
    assert got.ch_names == epoch_session(loaded, n_repetitions=1, channels=".*").ch_names


def test_nan_refuses_a_recording_only_in_the_channels_used(synthetic: SyntheticThings, tmp_path) -> None:
    # one broken frontal channel refused the whole file, also for the occipital channels
    loaded = load_raw_eeg(raw_path(synthetic.raw_dir, 1, 1, "test"))
    assert "Fp1" in loaded.ch_names and "O1" in loaded.ch_names
    for name, used in (("Fp1", False), ("O1", True)):
        broken = dataclasses.replace(loaded, data=loaded.data.copy())
        broken.data[loaded.ch_names.index(name), 100] = np.nan
        if used:
            with pytest.raises(ValueError, match=r"the picked channel\(s\) \['O1'\] hold NaN/inf values"):
                epoch_session(broken, n_repetitions=1)
        else:
            got = epoch_session(broken, n_repetitions=1)
            want = epoch_session(loaded, n_repetitions=1)
            np.testing.assert_array_equal(got.data, want.data)
    # the stim channel must be finite when the file is read
    path = raw_path(synthetic.raw_dir, 1, 1, "test")
    d = np.load(path, allow_pickle=True).item()  # the test's own file
    d["raw_eeg_data"] = d["raw_eeg_data"].copy()
    d["raw_eeg_data"][d["ch_names"].index("stim"), 5] = np.nan
    bad = os.path.join(tmp_path, "raw_eeg_test.npy")
    np.save(bad, d, allow_pickle=True)
    with pytest.raises(ValueError, match=r"stim channel 'stim' holds 1 NaN/inf value"):
        load_raw_eeg(bad)


def test_unequal_training_sessions_name_the_stim_code() -> None:
    # the message said "event 0": the 0-based image of raw code 1, in words that read as the raw code
    from fastalign.data.preprocess import EEGResponses, merge_sessions

    def part(conditions: list[int]) -> EEGResponses:
        c = np.asarray(conditions)
        return EEGResponses(np.zeros((len(c), 2, 3, 4)), ["O1", "O2", "Oz"], np.arange(4) / 100, c, "s.npy")

    test = [part([0, 1]), part([0, 1])]
    with pytest.raises(
        ValueError, match=r"stim code 255 \(image 254\) is in 1 session\(s\), others in up to 2"
    ):
        merge_sessions(test, [part([0, 1, 254]), part([0, 1])])


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (
            {"sessions": [1, 1]},
            ValueError,
            r"sessions must be distinct session numbers, at least one, got \[1, 1\]",
        ),
        ({"sessions": []}, ValueError, "sessions must be distinct session numbers, at least one"),
        ({"sessions": "12"}, TypeError, "sessions must be None or a sequence of session numbers"),
        ({"sessions": [1.0]}, TypeError, r"sessions\[0\] must be an int >= 1, got 1.0"),
        ({"mvnn_dim": "channels"}, ValueError, r"mvnn_dim must be one of \('time', 'epochs'\)"),
        ({"training_repetitions": 0}, ValueError, "training_repetitions must be None or an int >= 1"),
        ({"test_repetitions": 20.0}, TypeError, "test_repetitions must be None or an int >= 1"),
        ({"write": "yes"}, TypeError, "write must be a bool"),
        ({"out_dir": 3}, TypeError, "out_dir must be None or a path"),
    ],
)
def test_preprocess_bad_arguments(
    synthetic: SyntheticThings, tmp_path: os.PathLike, kwargs: dict, exc: type, match: str
) -> None:
    with pytest.raises(exc, match="preprocess_things_eeg2: " + match):
        preprocess_things_eeg2(synthetic.raw_dir, 1, **{"out_dir": tmp_path, **kwargs})
    assert not os.listdir(tmp_path)
    with pytest.raises(TypeError, match="preprocess_things_eeg2: raw_dir must be a path"):
        preprocess_things_eeg2(None, 1)  # type: ignore[arg-type]


def test_preprocess_refuses_to_write_files_that_miss_images(
    synthetic: SyntheticThings, tmp_path: os.PathLike
) -> None:
    # Session 1 shows half of the 12 training images: row i of a written file would not be image i.
    kw = dict(sessions=[1], training_repetitions=2, test_repetitions=10)
    with pytest.raises(ValueError, match=r"training data of sessions \[1\] lacks image\(s\) \[\d+"):
        preprocess_things_eeg2(synthetic.raw_dir, 1, tmp_path, **kw)
    assert not os.listdir(tmp_path)
    got = preprocess_things_eeg2(synthetic.raw_dir, 1, write=False, **kw)
    raw = np.load(raw_path(synthetic.raw_dir, 1, 1, "training"), allow_pickle=True).item()  # type: ignore[arg-type]
    codes = np.unique(raw["raw_eeg_data"][raw["ch_names"].index("stim")])
    shown = codes[(codes > 0) & (codes != 99999)].astype(int) - 1
    assert got.training.conditions.tolist() == shown.tolist() and len(shown) == 6
    assert got.test.conditions.tolist() == list(range(8))
