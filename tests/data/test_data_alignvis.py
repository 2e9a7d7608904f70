"""The decoding papers' THINGS-EEG2 variant (NICE, AlignVis) end to end: ``preprocess_things_eeg2(...,
recipe="alignvis")`` against the published AlignVis steps (fastalign.data.reference.alignvis_preprocess:
the same MNE calls and numpy loops) on synthetic raw files with the 63-channel montage; cropping before
MVNN and the training-only covariance; the published loader's per-trial normalisation; the seeded
train/validation split; and the embedding normalisation of both sides."""

from __future__ import annotations

import itertools
import os
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastalign.data import (
    EEGResponses,
    SyntheticThings,
    datasets,
    epoch_session,
    load_preprocessed_eeg,
    load_raw_eeg,
    make_synthetic_things,
    merge_sessions,
    mvnn,
    noise_covariance,
    preprocess_things_eeg2,
    raw_path,
    things_eeg2_datasets,
)
from fastalign.data._io import load_npy
from fastalign.data.datasets import BrainImageDataset, train_val_split
from fastalign.data.embeddings import normalize_embeddings
from fastalign.data.preprocess import THINGS_EEG2_CHANNELS, PreprocessedSubject, _crop_samples
from fastalign.data.reference import alignvis_mvnn, alignvis_preprocess

# The smallest raw set that exercises every published step: 4 sessions (the published merge needs each
# training image in exactly 2 of them), 63 channels, a raw rate that is resampled to 250 Hz (the
# published [..., 50:] crop is 0 s only at 250 Hz and after resampling -0.2..1.0 s to 300 samples).
RAW = dict(
    n_train_concepts=2,
    images_per_concept=2,
    n_test=3,
    n_sessions=4,
    training_repetitions=2,
    test_repetitions=3,
    n_extra_channels=46,
    raw_sfreq=500.0,
    targets_per_session=1,
    n_voxels=10,
    image_size=16,
    seed=1,
    image_source="procedural",
    preprocess=False,
)
TEST_REPS = 3  # test repetitions kept per session (published: 20, as many as THINGS-EEG2 has)
EPOCHING = dict(sfreq=250.0, channels="all", tmax=1.0)  # the recipe's epoch_session settings
CROP = (0.0, 1.0)


@pytest.fixture(scope="module")
def raw63(tmp_path_factory: pytest.TempPathFactory) -> SyntheticThings:
    return make_synthetic_things(tmp_path_factory.mktemp("things63"), **RAW)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def ours(raw63: SyntheticThings, tmp_path_factory: pytest.TempPathFactory) -> PreprocessedSubject:
    out = tmp_path_factory.mktemp("alignvis")
    return preprocess_things_eeg2(raw63.raw_dir, 1, out, recipe="alignvis", test_repetitions=TEST_REPS)


@pytest.fixture(scope="module")
def session1(raw63: SyntheticThings) -> dict[str, EEGResponses]:
    """Session 1's partitions epoched as the recipe does, cropped and not."""
    out = {}
    for split, reps in (("test", TEST_REPS), ("training", 2)):
        path = raw_path(raw63.raw_dir, 1, 1, split)  # type: ignore[arg-type]
        out[split] = epoch_session(path, n_repetitions=reps, crop=CROP, **EPOCHING)  # type: ignore[arg-type]
        out[f"{split} uncropped"] = epoch_session(path, n_repetitions=reps, **EPOCHING)  # type: ignore[arg-type]
    return out


def _relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


# ----------------------------------------------------------------------------------------- preprocessing


def test_alignvis_recipe_matches_the_published_steps(
    raw63: SyntheticThings, ours: PreprocessedSubject
) -> None:
    want_test, want_train, ch_names, times = alignvis_preprocess(raw63.raw_dir, 1, test_repetitions=TEST_REPS)
    assert ours.test.data.shape == want_test.shape == (3, 4 * TEST_REPS, 63, 250)
    # Each training image is in 2 of the 4 sessions with 2 repetitions each: 4, as published.
    assert ours.training.data.shape == want_train.shape == (4, 4, 63, 250)
    for got, want in ((ours.test.data, want_test), (ours.training.data, want_train)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * np.abs(want).max())
    assert ours.test.ch_names == ours.training.ch_names == ch_names == list(THINGS_EEG2_CHANNELS)
    # The published files keep the 300 times of the uncropped epoch beside 250 samples; ours are the
    # samples' own times, 0..0.996 s.
    assert len(times) == 300
    np.testing.assert_allclose(ours.test.times, times[50:], rtol=0, atol=1e-12)
    assert ours.settings == {
        "sfreq": 250.0,
        "channels": "all",
        "tmax": 1.0,
        "crop": (0.0, 1.0),
        "mvnn_dim": "epochs",
        "mvnn_covariance": "training",
    }
    for split, made in (("training", ours.training), ("test", ours.test)):
        # fastalign's format (np.save of a dict, read back without running code), not a bare pickle
        with open(ours.paths[split], "rb") as f:
            assert f.read(6) == b"\x93NUMPY"
        assert sorted(load_npy(ours.paths[split], "test", objects=True)) == [
            "ch_names",
            "preprocessed_eeg_data",
            "times",
        ]
        loaded = load_preprocessed_eeg(ours.paths[split])
        np.testing.assert_array_equal(loaded.data, made.data)
        np.testing.assert_array_equal(loaded.times, made.times)
        assert loaded.ch_names == made.ch_names


def test_crop_before_mvnn_is_not_crop_after(session1: dict[str, EEGResponses]) -> None:
    test, train = session1["test"], session1["training"]
    full_test, full_train = session1["test uncropped"], session1["training uncropped"]
    assert full_test.data.shape[-1] == 300 and test.data.shape[-1] == 250
    # The crop is the published [..., 50:] of the resampled epoch.
    np.testing.assert_array_equal(test.data, full_test.data[..., 50:])
    np.testing.assert_array_equal(test.times, full_test.times[50:])
    before = mvnn([test.data, train.data], "epochs", fit_on=[1])
    after = [w[..., 50:] for w in mvnn([full_test.data, full_train.data], "epochs", fit_on=[1])]
    for b, a in zip(before, after, strict=True):
        assert b.shape == a.shape
        # The baseline period's covariance enters the whitening only when cropping comes after MVNN.
        assert _relative_difference(b, a) > 1e-2


def test_settings_mix_across_recipes(raw63: SyntheticThings, session1: dict[str, EEGResponses]) -> None:
    # The eeg_encoding recipe (covariance of both partitions) with the AlignVis epoching and dim.
    got = preprocess_things_eeg2(
        raw63.raw_dir, 1, sessions=[1, 2], test_repetitions=TEST_REPS, write=False, crop=CROP,
        mvnn_dim="epochs", **EPOCHING,  # type: ignore[arg-type]
    )  # fmt: skip
    assert got.settings["mvnn_covariance"] == "session" and got.settings["crop"] == CROP
    test2, train2 = (
        epoch_session(raw_path(raw63.raw_dir, 1, 2, split), n_repetitions=reps, crop=CROP, **EPOCHING)  # type: ignore[arg-type]
        for split, reps in (("test", TEST_REPS), ("training", 2))
    )
    parts = [(session1["test"], session1["training"]), (test2, train2)]

    def pipeline(fit_on: list[int] | None) -> tuple[EEGResponses, EEGResponses]:
        white: dict[str, list[EEGResponses]] = {"test": [], "training": []}
        for test, train in parts:
            w_test, w_train = mvnn([test.data, train.data], "epochs", fit_on=fit_on)
            white["test"].append(EEGResponses(w_test, test.ch_names, test.times, test.conditions))
            white["training"].append(EEGResponses(w_train, train.ch_names, train.times, train.conditions))
        return merge_sessions(white["test"], white["training"])

    both, training_only = pipeline(None), pipeline([1])
    np.testing.assert_array_equal(got.test.data, both[0].data)
    np.testing.assert_array_equal(got.training.data, both[1].data)
    assert _relative_difference(training_only[1].data, both[1].data) > 1e-3


def test_mvnn_covariance_from_the_training_partition_only() -> None:
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(5, 5)) + 2 * np.eye(5)
    test = np.einsum("ij,crjt->crit", mix, rng.normal(size=(3, 4, 5, 30)))
    train = np.einsum("ij,crjt->crit", mix, rng.normal(size=(6, 2, 5, 30)))
    (w_test, w_train), sigma = mvnn([test, train], "epochs", fit_on=[1], return_covariance=True)
    np.testing.assert_allclose(sigma, noise_covariance(train, "epochs"), rtol=1e-12)
    (r_test,), (r_train,) = alignvis_mvnn([test], [train], "epochs")  # sigma_tot = sigma_part[1]
    np.testing.assert_allclose(w_test, r_test, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(w_train, r_train, rtol=1e-10, atol=1e-12)
    # No test statistic enters: other test data leave the training data's whitening as it was.
    _, w_train_other = mvnn([5 * test + 1, train], "epochs", fit_on=[1])
    np.testing.assert_array_equal(w_train_other, w_train)
    _, sigma_both = mvnn([test, train], "epochs", return_covariance=True)
    assert _relative_difference(sigma, sigma_both) > 1e-2
    # A partition no covariance is estimated from needs no repetitions for one.
    mvnn([test[:, :1], train], "time", fit_on=[1])
    with pytest.raises(ValueError, match=r"mvnn: dim='time' needs at least 2 repetitions .* data\[0\]"):
        mvnn([test[:, :1], train], "time")


@pytest.mark.parametrize(
    ("fit_on", "exc", "match"),
    [
        (
            [2],
            ValueError,
            r"fit_on must be a non-empty sequence of distinct partition indices in 0\.\.1, got \[2\]",
        ),
        ([], ValueError, r"fit_on must be a non-empty sequence .* got \[\]"),
        ([1, 1], ValueError, r"fit_on must be a non-empty sequence .* got \[1, 1\]"),
        ([-1], ValueError, r"fit_on\[0\] must be an int >= 0, got -1"),
        ([1.0], TypeError, r"fit_on\[0\] must be an int >= 0, got 1\.0"),
        (1, TypeError, r"fit_on must be a non-empty sequence of distinct partition indices"),
        ("1", TypeError, r"fit_on must be a non-empty sequence of distinct partition indices"),
    ],
)
def test_mvnn_fit_on_is_checked(fit_on: object, exc: type, match: str) -> None:
    data = np.random.default_rng(0).normal(size=(2, 3, 2, 4))
    with pytest.raises(exc, match="mvnn: " + match):
        mvnn([data, data], fit_on=fit_on)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"mvnn: fit_on=\[0\] needs data as a list of partitions"):
        mvnn(data, fit_on=[0])


def test_channels_all_is_the_published_order(
    raw63: SyntheticThings, session1: dict[str, EEGResponses]
) -> None:
    raw = load_raw_eeg(raw_path(raw63.raw_dir, 1, 1, "test"))
    order = np.random.default_rng(0).permutation(len(raw.ch_names))
    raw.data = raw.data[order]
    raw.ch_names = [raw.ch_names[i] for i in order]
    raw.ch_types = [raw.ch_types[i] for i in order]
    shuffled = epoch_session(raw, n_repetitions=TEST_REPS, crop=CROP, **EPOCHING)  # type: ignore[arg-type]
    assert shuffled.ch_names == list(THINGS_EEG2_CHANNELS)
    np.testing.assert_array_equal(shuffled.data, session1["test"].data)
    # Names in a given order; each channel is epoched, baseline-corrected and resampled on its own.
    named = epoch_session(raw, n_repetitions=TEST_REPS, crop=CROP, **{**EPOCHING, "channels": ["O2", "Fp1"]})  # type: ignore[arg-type]
    assert named.ch_names == ["O2", "Fp1"]
    np.testing.assert_allclose(named.data, session1["test"].data[:, :, [62, 0]], rtol=1e-12, atol=1e-20)
    keep = [i for i, n in enumerate(raw.ch_names) if n not in ("Fp1", "TP10")]
    raw.data, raw.ch_names = raw.data[keep], [raw.ch_names[i] for i in keep]
    raw.ch_types = [raw.ch_types[i] for i in keep]
    with pytest.raises(ValueError, match=r"lacks 2 of the 63 channels of channels='all' \(Fp1, TP10\)"):
        epoch_session(raw, n_repetitions=TEST_REPS, **EPOCHING)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"lacks 1 of the channels named \(TP10\)"):
        epoch_session(raw, n_repetitions=TEST_REPS, **{**EPOCHING, "channels": ["O1", "TP10"]})  # type: ignore[arg-type]


def test_crop_off_the_sample_grid_after_reading(raw63: SyntheticThings) -> None:
    # Without resampling the raw rate (500 Hz) decides: 0.201 s after the epoch's start is no sample.
    path = raw_path(raw63.raw_dir, 1, 1, "training")
    with pytest.raises(
        ValueError,
        match=r"epoch_session: .*raw_eeg_training\.npy: crop \(0\.001, 0\.5\) s does not fall on whole "
        r"samples at sfreq=500 Hz",
    ):
        epoch_session(path, n_repetitions=2, sfreq=None, channels="^O", tmax=1.0, crop=(0.001, 0.5))
    assert _crop_samples("f", (0.0, 1.0), -0.2, 250.0) == (50, 250)
    with pytest.raises(
        ValueError, match=r"f: crop \(0\.0, 1\.0\) s needs samples 50\.\.299 but the epoch has 299"
    ):
        _crop_samples("f", (0.0, 1.0), -0.2, 250.0, n_times=299)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (
            {"crop": (-0.5, 0.5)},
            ValueError,
            r"crop \(-0\.5, 0\.5\) must be an interval \[start, end\) inside the epoch "
            r"\[tmin, tmax\] = \[-0\.2, 1\.0\]",
        ),
        ({"crop": (0.0, 1.2)}, ValueError, r"crop \(0\.0, 1\.2\) must be an interval \[start, end\) inside"),
        ({"crop": (0.5, 0.5)}, ValueError, r"crop \(0\.5, 0\.5\) must be an interval .* start < end"),
        (
            {"crop": (0.0, 1.0), "sfreq": 256.0},
            ValueError,
            r"crop \(0\.0, 1\.0\) s does not fall on whole samples at sfreq=256 Hz",
        ),
        (
            {"crop": (0.0, 0.999)},
            ValueError,
            r"crop \(0\.0, 0\.999\) s does not fall on whole samples at sfreq=250 Hz",
        ),
        ({"crop": "0-1"}, TypeError, r"crop must be None or a \(start, end\) pair in seconds, got '0-1'"),
        ({"crop": (0.0,)}, TypeError, r"crop must be None or a \(start, end\) pair in seconds, got tuple"),
        ({"crop": (0.0, np.nan)}, ValueError, r"crop\[1\] must be a finite number, got nan"),
        (
            {"channels": []},
            ValueError,
            r"channels must be a regex str .* or a sequence of distinct channel names, got \[\]",
        ),
        ({"channels": ["O1", "O1"]}, ValueError, r"channels must be .* got \['O1', 'O1'\]"),
        ({"channels": ["O1", 2]}, TypeError, r"channels must be .* got \['O1', 2\]"),
        ({"channels": b"O1"}, TypeError, r"channels must be a regex str"),
    ],
)
def test_alignvis_arguments_are_checked_before_reading(kwargs: dict, exc: type, match: str) -> None:
    kwargs = {**EPOCHING, **kwargs}
    with pytest.raises(exc, match="epoch_session: " + match):
        epoch_session("missing/raw_eeg_test.npy", n_repetitions=2, **kwargs)
    with pytest.raises(exc, match="preprocess_things_eeg2: " + match):
        preprocess_things_eeg2("missing", 1, recipe="alignvis", **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"recipe": "nice"}, ValueError, r"recipe must be one of \('eeg_encoding', 'alignvis'\), got 'nice'"),
        ({"recipe": None}, ValueError, r"recipe must be one of \('eeg_encoding', 'alignvis'\), got None"),
        (
            {"recipe": "alignvis", "mvnn_covariance": "test"},
            ValueError,
            r"mvnn_covariance must be one of \('session', 'training'\)",
        ),
        # The eeg_encoding epoch ends at 0.8 s: the AlignVis crop does not fit without tmax=1.0.
        ({"crop": (0.0, 1.0)}, ValueError, r"crop \(0\.0, 1\.0\) must be an interval .* \[-0\.2, 0\.8\]"),
        ({"recipe": "alignvis", "sfreq": 128.0}, ValueError, r"crop \(0\.0, 1\.0\) s does not fall on whole"),
    ],
)
def test_recipe_arguments_are_checked(kwargs: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match="preprocess_things_eeg2: " + match):
        preprocess_things_eeg2("missing", 1, **kwargs)
    # A mix whose crop falls on whole samples passes every check (then finds no files).
    with pytest.raises(FileNotFoundError, match="no raw data folder"):
        preprocess_things_eeg2("missing", 1, recipe="alignvis", sfreq=100.0, mvnn_covariance="session")


# ---------------------------------------------------------------------------------------------- loader


def _published_item(trials: np.ndarray) -> np.ndarray:
    """AlignVis things_eeg_2.py ``__getitem__`` (lines 133-136, 154, 163) for one image's trials
    (repetitions, channels, times): the EEG it pairs with the image, without the leading axis of 1."""
    eeg = trials.copy()
    if eeg.shape[0] > 1:
        eeg = np.expand_dims(eeg, axis=0)
    eeg = (eeg - np.mean(eeg, axis=-1, keepdims=True)) / np.linalg.norm(eeg, axis=-1, keepdims=True)
    return np.asarray(np.mean(eeg, axis=1)[0])


def _eeg(seed: int = 0) -> EEGResponses:
    # A nonzero mean: the norm of the uncentred signal (published) is not that of the centred one.
    data = np.random.default_rng(seed).normal(size=(5, 4, 3, 20)) * 2 + 1.5
    return EEGResponses(data, ["O1", "Oz", "O2"], np.arange(20) / 20)


def test_channel_l2_is_the_published_loader_normalisation() -> None:
    eeg = _eeg()
    ds = BrainImageDataset(eeg, normalize="channel_l2", flatten=False, dtype=torch.float64)
    want = np.stack([_published_item(eeg.data[i]) for i in range(5)])
    np.testing.assert_allclose(ds.responses().numpy(), want, rtol=1e-13, atol=1e-16)
    per_trial = (eeg.data - eeg.data.mean(-1, keepdims=True)) / np.linalg.norm(
        eeg.data, axis=-1, keepdims=True
    )
    norms = np.linalg.norm(per_trial, axis=-1)  # the uncentred norm: below 1 after centring
    assert np.all(norms < 1) and norms.mean() < 0.9
    # Channels and times are selected first (published: select_channels, window), then normalised.
    sub = BrainImageDataset(
        eeg, normalize="channel_l2", channels=[2, 0], time_window=(0.2, 0.7), dtype=torch.float64
    )
    want_sub = np.stack([_published_item(eeg.data[i][:, [2, 0], 4:15]) for i in range(5)])
    np.testing.assert_allclose(sub.responses().numpy(), want_sub.reshape(5, -1), rtol=1e-13, atol=1e-16)
    assert sub.response_shape == (22,)
    # float32 output from float64 averages; any magnitude gives the same numbers (exact 2**k scaling)
    np.testing.assert_allclose(
        BrainImageDataset(eeg, normalize="channel_l2", flatten=False).responses().numpy(),
        want,
        rtol=1e-6,
        atol=1e-7,
    )
    for scale in (1e200, 1e-200):
        huge = BrainImageDataset(eeg.data * scale, normalize="channel_l2", flatten=False, dtype=torch.float64)
        np.testing.assert_allclose(huge.responses().numpy(), want, rtol=1e-13, atol=1e-16)


def test_channel_l2_with_random_repetitions() -> None:
    eeg = _eeg(1)
    ds = BrainImageDataset(
        eeg, normalize="channel_l2", random_repetitions=2, flatten=False, dtype=torch.float64
    )
    per_trial = (eeg.data - eeg.data.mean(-1, keepdims=True)) / np.linalg.norm(
        eeg.data, axis=-1, keepdims=True
    )
    subsets = [per_trial[3, list(s)].mean(axis=0) for s in itertools.combinations(range(4), 2)]
    torch.manual_seed(0)
    draws = [ds[3][1].numpy() for _ in range(20)]
    # Every draw averages 2 normalised single trials (normalised before averaging, as published).
    assert all(min(np.abs(d - s).max() for s in subsets) < 1e-13 for d in draws)
    assert len({d.tobytes() for d in draws}) > 1


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("random_repetitions", [None, 2])
@pytest.mark.parametrize("normalize", ["channel_l2", "zscore", None])
def test_whole_selections_are_not_copied_and_the_input_never_changes(
    dtype: Any, random_repetitions: int | None, normalize: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every repetition, channel and time selected the raw trials are not gathered into a copy
    where normalising or averaging makes a new array anyway (4.2 GB at THINGS-EEG2's published size), and
    channel_l2's average is made block by block (no 8.3 GB float64 copy of every normalised trial): the
    same numbers, bitwise, as normalising everything then averaging; the caller's array is never changed
    and never shared (changing it afterwards changes nothing)."""
    monkeypatch.setattr(datasets, "_BLOCK_VALUES", 2 * 4 * 3 * 20)  # blocks of 2 images
    data = _eeg(2).data.astype(dtype)
    before = data.copy()
    kw = dict(normalize=normalize, flatten=False, dtype=torch.float64, random_repetitions=random_repetitions)
    ds = BrainImageDataset(data, seed=None if random_repetitions is None else 0, **kw)
    np.testing.assert_array_equal(data, before)
    if normalize == "channel_l2" and random_repetitions is None:
        x = data.astype(np.float64)
        full = (x - x.mean(axis=-1, keepdims=True)) / np.linalg.norm(x, axis=-1, keepdims=True)
        assert np.array_equal(ds.responses().numpy(), full.mean(axis=1))
    kept = [ds[i][1].clone() for i in range(len(data))]
    data += 1000.0
    assert all(torch.equal(ds[i][1], k) for i, k in enumerate(kept))


def test_statistics_do_not_depend_on_the_memory_layout() -> None:
    """The same trials in C order, Fortran order or as a strided view give bitwise the same norm stats and
    responses (numpy sums in memory order: a non-contiguous array gave another last bit)."""
    data = _eeg(3).data
    layouts = [data, np.asfortranarray(data), np.concatenate([data, data], axis=3)[..., ::2][..., :20]]
    layouts[2][...] = data
    for normalize in ("zscore", "channel", "channel_l2"):
        got = [BrainImageDataset(x, normalize=normalize, dtype=torch.float64) for x in layouts]
        for ds in got[1:]:
            assert torch.equal(ds.responses(), got[0].responses()), normalize
            if normalize != "channel_l2":
                assert ds.norm_stats is not None and got[0].norm_stats is not None
                assert np.array_equal(ds.norm_stats.mean, got[0].norm_stats.mean)
                assert np.array_equal(ds.norm_stats.std, got[0].norm_stats.std)


def test_channel_l2_refuses_what_it_cannot_normalise() -> None:
    data = _eeg().data
    data[2, 1, 0] = 0.0
    with pytest.raises(
        ValueError,
        match=r"BrainImageDataset: normalize='channel_l2' .* channel 0 of repetition 1 of image 2 is all "
        "zeros",
    ):
        BrainImageDataset(data, normalize="channel_l2")
    with pytest.raises(ValueError, match=r"normalize='channel_l2' .* needs EEG responses"):
        BrainImageDataset(np.ones((4, 2, 6)), normalize="channel_l2")
    stats = BrainImageDataset(_eeg(), normalize="zscore").norm_stats
    with pytest.raises(ValueError, match=r"norm_stats \('zscore'\) given but normalize='channel_l2'"):
        BrainImageDataset(_eeg(), normalize="channel_l2", norm_stats=stats)


def test_things_eeg2_datasets_as_the_published_loader(ours: PreprocessedSubject) -> None:
    folder = os.path.dirname(os.path.dirname(ours.paths["training"]))
    train, test = things_eeg2_datasets(folder, 1, normalize="channel_l2", flatten=False)
    assert (len(train), train.response_shape) == (4, (63, 250))  # 4 training repetitions averaged
    assert (len(test), test.response_shape) == (3, (63, 250))  # 80 test repetitions for the real data
    for ds, made in ((train, ours.training), (test, ours.test)):
        want = np.stack([_published_item(made.data[i]) for i in range(len(made.data))])
        np.testing.assert_allclose(ds.responses().numpy(), want, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------------------------- split


@pytest.mark.parametrize("method", ["numpy", "random_split"])
def test_train_val_split_is_seeded_and_disjoint(method: str) -> None:
    train, val = train_val_split(101, 0.1, 7, method=method)  # type: ignore[arg-type]
    again = train_val_split(101, 0.1, 7, method=method)  # type: ignore[arg-type]
    np.testing.assert_array_equal(train, again[0])
    np.testing.assert_array_equal(val, again[1])
    assert train.dtype == val.dtype == np.int64
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    assert not set(train) & set(val) and sorted([*train, *val]) == list(range(101))
    other = train_val_split(101, 0.1, 8, method=method)  # type: ignore[arg-type]
    assert not np.array_equal(val, other[1])
    if method == "numpy":
        assert len(val) == 10  # round(10.1)
        np.testing.assert_array_equal(val, np.sort(np.random.default_rng([7, 1]).permutation(101)[:10]))
    else:  # the published call, train_brain_clip.py return_dataloaders
        published: torch.utils.data.Subset[int] = torch.utils.data.random_split(
            range(101),  # type: ignore[arg-type]
            [0.9, 0.1],
            generator=torch.Generator().manual_seed(7),
        )[1]
        assert val.tolist() == sorted(published.indices) and len(val) == 10  # floor(10.1)
    none_held = train_val_split(5, 0.0, 0, method=method)  # type: ignore[arg-type]
    assert none_held[0].tolist() == list(range(5)) and none_held[1].size == 0


@pytest.mark.parametrize(
    ("args", "kwargs", "exc", "match"),
    [
        ((0,), {}, ValueError, "n must be an int >= 1, got 0"),
        ((10.0,), {}, TypeError, r"n must be an int >= 1, got 10\.0"),
        ((10, 1.0), {}, ValueError, r"val_fraction must be a number in \[0, 1\), got 1\.0"),
        ((10, -0.1), {}, ValueError, r"val_fraction must be a number in \[0, 1\)"),
        ((10, float("nan")), {}, ValueError, "val_fraction must be a finite number, got nan"),
        ((10, 0.1, -1), {}, ValueError, r"seed must be an int in \[0, 2\*\*63 - 1\], got -1"),
        ((10, 0.1, 1.5), {}, TypeError, "seed must be an int in"),
        ((10, 0.1), {"method": "torch"}, ValueError, r"method must be one of \('numpy', 'random_split'\)"),
        (
            (1, 0.5),
            {},
            ValueError,
            "val_fraction=0.5 of n=1 items leaves 0 for training and 1 for validation",
        ),
        (
            (5, 0.1),
            {"method": "random_split"},
            ValueError,
            r"val_fraction=0\.1 of n=5 items leaves 5 for training and 0 for validation",
        ),
    ],
)
def test_train_val_split_bad_arguments(args: tuple, kwargs: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match="train_val_split: " + match):
        train_val_split(*args, **kwargs)


# ----------------------------------------------------------------------------------------- embeddings


def test_normalize_embeddings_as_published() -> None:
    x = np.random.default_rng(0).normal(size=(6, 9)) * 3 + 2
    want = x - x.mean(axis=1, keepdims=True)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    got = normalize_embeddings(x)
    assert isinstance(got, np.ndarray) and got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(normalize_embeddings(x.T, dim=0), want.T, rtol=1e-14, atol=1e-15)
    # The published torch code (trainer.py, utils.get_embeddings): centre, then F.normalize.
    t = torch.tensor(x, dtype=torch.float32)
    published = F.normalize(t - t.mean(dim=-1, keepdim=True), p=2, dim=-1)
    torch.testing.assert_close(normalize_embeddings(t), published, rtol=1e-6, atol=1e-7)
    half = normalize_embeddings(t.half())
    assert isinstance(half, torch.Tensor) and half.dtype == torch.float16
    torch.testing.assert_close(half.float(), published, rtol=0, atol=2e-3)
    for scale in (1e-200, 1e200):  # F.normalize's eps=1e-12 would not give unit norms at 1e-200
        np.testing.assert_allclose(normalize_embeddings(x * scale), want, rtol=1e-14, atol=1e-15)
    assert np.array_equal(normalize_embeddings(np.full((2, 4), 3.0)), np.zeros((2, 4)))  # as published
    leaf = torch.tensor(x, requires_grad=True)
    assert torch.autograd.gradcheck(normalize_embeddings, (leaf,))


@pytest.mark.parametrize(
    ("x", "kwargs", "exc", "match"),
    [
        ([[1.0, 2.0]], {}, TypeError, "x must be a torch.Tensor or numpy array, got list"),
        (
            np.arange(6).reshape(2, 3),
            {},
            TypeError,
            "x must be a floating-point tensor, got dtype torch.int64",
        ),
        (np.array(1.0), {}, ValueError, "x must have at least one dimension"),
        (
            np.ones((2, 3)),
            {"dim": 2},
            ValueError,
            r"dim must be an int in \[-2, 1\] for x of shape \(2, 3\), got 2",
        ),
        (np.ones((2, 3)), {"dim": 1.0}, TypeError, r"dim must be an int, got 1\.0"),
    ],
)
def test_normalize_embeddings_bad_input(x: object, kwargs: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match="normalize_embeddings: " + match):
        normalize_embeddings(x, **kwargs)  # type: ignore[call-overload]
