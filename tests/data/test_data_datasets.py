"""BrainImageDataset options: repetitions, channels, time windows, flattening, normalisation, inputs."""

from __future__ import annotations

import warnings

import mne
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fastalign.data import (
    BrainImageDataset,
    EEGResponses,
    as_responses,
    epochs_to_responses,
    fit_norm_stats,
    fmri_datasets,
    mvnn,
    things_eeg2_datasets,
)

NAMES = ["O1", "Oz", "O2", "P1"]
TIMES = -0.2 + np.arange(10) / 10


def _eeg(seed: int = 0, n: int = 5, reps: int = 6) -> EEGResponses:
    data = np.random.default_rng(seed).normal(size=(n, reps, 4, 10)) * 3 + 1
    return EEGResponses(data, NAMES, TIMES)


def test_repetition_options() -> None:
    eeg = _eeg()
    full = BrainImageDataset(eeg, flatten=False)
    np.testing.assert_allclose(full.responses().numpy(), eeg.data.mean(axis=1), rtol=1e-6)
    first2 = BrainImageDataset(eeg, repetitions=2, flatten=False)
    np.testing.assert_allclose(first2.responses().numpy(), eeg.data[:, :2].mean(axis=1), rtol=1e-6)
    picked = BrainImageDataset(eeg, repetitions=[5, 1], flatten=False)
    np.testing.assert_allclose(picked.responses().numpy(), eeg.data[:, [5, 1]].mean(axis=1), rtol=1e-6)
    rand = BrainImageDataset(eeg, repetitions=[0, 1, 2], random_repetitions=2, flatten=False)
    torch.manual_seed(0)
    draws = {tuple(rand[1][1].numpy().ravel().round(5)) for _ in range(30)}
    subsets = {
        tuple(eeg.data[1, list(s)].mean(axis=0).astype(np.float32).ravel().round(5))
        for s in ([0, 1], [0, 2], [1, 2])
    }
    assert len(draws) > 1 and draws <= subsets  # fresh draws, each the mean of 2 of the selected reps


def test_channels_time_window_flatten() -> None:
    eeg = _eeg()
    ds = BrainImageDataset(eeg, channels=["P1", "O1"], time_window=(0.0, 0.3))
    assert ds.ch_names == ["P1", "O1"]
    np.testing.assert_allclose(ds.times, [0.0, 0.1, 0.2, 0.3], atol=1e-12)
    want = eeg.data.mean(axis=1)[:, [3, 0]][:, :, 2:6].reshape(5, -1)
    np.testing.assert_allclose(ds.responses().numpy(), want, rtol=1e-6)
    assert ds.response_shape == (8,)
    by_index = BrainImageDataset(eeg.data, channels=[3, 0], time_window=slice(2, 6), flatten=False)
    np.testing.assert_allclose(by_index.responses().numpy().reshape(5, -1), want, rtol=1e-6)
    with pytest.raises(ValueError, match="no channel 'Cz'"):
        BrainImageDataset(eeg, channels=["Cz"])
    with pytest.raises(ValueError, match="selects no samples"):
        BrainImageDataset(eeg, time_window=(2.0, 3.0))
    with pytest.raises(ValueError, match="needs the epoch times"):
        BrainImageDataset(eeg.data, time_window=(0.0, 0.1))


def test_normalisation_uses_training_statistics_only() -> None:
    train, test = _eeg(0), _eeg(1, n=3)
    test.data = test.data * 10 + 5  # a different scale must not leak into the statistics
    tr = BrainImageDataset(train, normalize="zscore")
    te = BrainImageDataset(test, normalize="zscore", norm_stats=tr.norm_stats)
    assert tr.norm_stats is not None
    assert float(tr.norm_stats.mean) == pytest.approx(train.data.mean())
    assert float(tr.norm_stats.std) == pytest.approx(train.data.std())
    want = ((test.data - train.data.mean()) / train.data.std()).mean(axis=1).reshape(3, -1)
    np.testing.assert_allclose(te.responses().numpy(), want, rtol=1e-5, atol=1e-6)

    ch = BrainImageDataset(train, normalize="channel", flatten=False)
    stats = fit_norm_stats(train.data, "channel")
    assert stats.mean.shape == (4, 1)
    np.testing.assert_allclose(stats.mean[:, 0], train.data.mean(axis=(0, 1, 3)))
    np.testing.assert_allclose(
        ch.responses().numpy(), ((train.data - stats.mean) / stats.std).mean(axis=1), rtol=1e-5, atol=1e-6
    )

    trial = BrainImageDataset(test, normalize="trial").responses()
    np.testing.assert_allclose(trial.mean(dim=1).numpy(), 0.0, atol=1e-6)
    np.testing.assert_allclose(trial.norm(dim=1).numpy(), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="norm_stats are for 'zscore'"):
        BrainImageDataset(test, normalize="channel", norm_stats=tr.norm_stats)


def test_mne_epochs_and_fmri_shapes_and_images() -> None:
    eeg = _eeg(reps=3)
    trials = eeg.data.transpose(1, 0, 2, 3).reshape(15, 4, 10)  # presentation order: rep-major
    codes = np.tile(np.arange(1, 6), 3)
    events = np.column_stack([np.arange(15) * 50, np.zeros(15, int), codes])
    epochs = mne.EpochsArray(trials, mne.create_info(NAMES, 10.0, "eeg"), events, tmin=-0.2, verbose="error")
    from_epochs = BrainImageDataset(epochs, channels=["Oz"], time_window=(0.0, 0.5))
    from_array = BrainImageDataset(eeg, channels=["Oz"], time_window=(0.0, 0.5))
    np.testing.assert_allclose(from_epochs.responses().numpy(), from_array.responses().numpy(), rtol=1e-6)

    fmri = np.random.default_rng(0).normal(size=(6, 2, 30))
    ds = BrainImageDataset(fmri, images=np.arange(6 * 7).reshape(6, 7))
    img, resp = ds[2]
    assert img.tolist() == list(range(14, 21)) and tuple(resp.shape) == (30,)
    assert BrainImageDataset(fmri[:, 0]).response_shape == (30,)
    from_tensor = BrainImageDataset(torch.from_numpy(fmri)).responses()
    np.testing.assert_allclose(from_tensor.numpy(), fmri.mean(axis=1), rtol=1e-6)
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert tuple(batch[0].shape) == (4, 7) and tuple(batch[1].shape) == (4, 30)
    with pytest.raises(ValueError, match="channels and time_window need EEG"):
        BrainImageDataset(fmri, channels=[0])
    with pytest.raises(ValueError, match="5 images for 6 responses"):
        BrainImageDataset(fmri, images=np.zeros((5, 3)))
    with pytest.raises(ValueError, match="NaN"):
        BrainImageDataset(np.full((2, 2, 3), np.nan))
    with pytest.raises(ValueError, match="repetitions=7 but the data has 2"):
        BrainImageDataset(fmri, repetitions=7)
    with pytest.raises(IndexError):
        ds[6]


def test_epochs_keep_good_data_channels_and_need_equal_repetitions() -> None:
    rng = np.random.default_rng(0)
    info = mne.create_info(["O1", "Oz", "EOG1", "STI"], 100.0, ["eeg", "eeg", "eog", "stim"])
    info["bads"] = ["Oz"]
    data = rng.normal(size=(6, 4, 10))
    events = np.column_stack([np.arange(6) * 50, np.zeros(6, int), [2, 1, 2, 1, 2, 1]])
    epochs = mne.EpochsArray(data, info, events, verbose="error")
    resp = epochs_to_responses(epochs)
    assert resp.ch_names == ["O1"] and resp.conditions.tolist() == [1, 2]
    np.testing.assert_array_equal(resp.data[:, :, 0], np.stack([data[[1, 3, 5], 0], data[[0, 2, 4], 0]]))
    uneven = mne.EpochsArray(data[:5], info, events[:5], verbose="error")
    with pytest.raises(ValueError, match="same number of repetitions"):
        epochs_to_responses(uneven)


@pytest.mark.parametrize(
    ("times", "match"),
    [
        (TIMES[:-1], r"times must have shape \(10,\), one time per sample"),
        (np.r_[TIMES[:-1], np.nan], r"times must be finite, got times\[9\] = nan"),
        (TIMES[::-1], r"times must be strictly increasing, got times\[0\] = 0.7"),
        (
            np.r_[TIMES[:5], TIMES[4:9]],
            r"times must be strictly increasing, got times\[4\] = 0.2 and times\[5\] = 0.2",
        ),
    ],
)
def test_times_must_fit_the_data(times: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match="BrainImageDataset: " + match):
        BrainImageDataset(_eeg().data, times=times, time_window=(0.0, 0.3))
    with pytest.raises(ValueError, match=match):
        EEGResponses(_eeg().data, NAMES, times)


@pytest.mark.parametrize(
    ("options", "exc", "match"),
    [
        ({"repetitions": 2.0}, TypeError, r"repetitions must be 'all', an int or a sequence of int indices"),
        ({"repetitions": True}, TypeError, "repetitions must be an int >= 1, got True"),
        ({"repetitions": 0}, ValueError, "repetitions must be an int >= 1, got 0"),
        ({"repetitions": [0.5, 1]}, TypeError, r"repetitions\[0\] must be an int, got 0.5"),
        ({"repetitions": [0, True]}, TypeError, r"repetitions\[1\] must be an int, got True"),
        ({"repetitions": [1, -5]}, ValueError, r"repetition indices \[1, -5\] repeat a repetition"),
        ({"repetitions": []}, ValueError, r"repetition indices \[\] out of range"),
        ({"random_repetitions": 1.5}, TypeError, "random_repetitions must be None or an int >= 1, got 1.5"),
        ({"random_repetitions": True}, TypeError, "random_repetitions must be None or an int >= 1"),
        ({"random_repetitions": 0}, ValueError, "random_repetitions must be None or an int >= 1, got 0"),
        ({"channels": "O1"}, TypeError, r"channels must be a sequence of channel names or indices"),
        ({"channels": [1.0]}, TypeError, r"channels\[0\] must be an int, got 1.0"),
        ({"channels": [True]}, TypeError, r"channels\[0\] must be an int, got True"),
        ({"channels": [0, -4]}, ValueError, "channels must name at least one channel, each once"),
        ({"channels": []}, ValueError, "channels must name at least one channel"),
        ({"time_window": (0.3, 0.0)}, ValueError, r"time_window must have tmin <= tmax, got \(0.3, 0.0\)"),
        ({"time_window": ("0", 0.3)}, TypeError, r"time_window\[0\] \(tmin\) must be a finite number"),
        ({"time_window": (0.0, np.nan)}, ValueError, r"time_window\[1\] \(tmax\) must be a finite number"),
        ({"time_window": (0.0, 0.1, 0.2)}, TypeError, r"time_window must be None, \(tmin, tmax\)"),
        ({"time_window": 0.1}, TypeError, r"time_window must be None, \(tmin, tmax\)"),
        ({"time_window": slice(0, 2.5)}, TypeError, r"time_window.stop must be None or an int, got 2.5"),
        ({"time_window": slice(0, 5, 0)}, ValueError, "time_window slice step must not be 0"),
        ({"flatten": "no"}, TypeError, "flatten must be a bool, got 'no'"),
        ({"flatten": 0}, TypeError, "flatten must be a bool, got 0"),
        ({"normalize": "z"}, ValueError, "normalize must be one of"),
        ({"norm_stats": {"mean": 0}}, TypeError, "norm_stats must be None or a NormStats"),
        ({"image_transform": "resize"}, TypeError, "image_transform must be callable"),
        ({"ch_names": "O1Oz"}, TypeError, "ch_names must be a sequence of channel names"),
        ({"ch_names": [1, 2, 3, 4]}, TypeError, "ch_names must be strings, got 1"),
        ({"ch_names": ["a", "b"]}, ValueError, "ch_names must be 4 distinct names"),
        (
            {"ch_names": ["a", "a", "b", "c"]},
            ValueError,
            r"ch_names must be 4 distinct names.*\(3 distinct\)",
        ),
        ({"dtype": "float32"}, TypeError, "dtype must be a floating torch.dtype"),
        ({"dtype": torch.int64}, TypeError, "dtype must be a floating torch.dtype"),
        ({"images": "images/"}, TypeError, "images must be None, a sequence of image paths"),
        ({"images": np.array(["a.jpg"] * 5)}, TypeError, "an images array must be numeric"),
        ({"images": torch.tensor(3.0)}, ValueError, "images must have one row per image"),
        ({"images": ["a.jpg"] * 4}, ValueError, "got 4 images for 5 responses"),
    ],
)
def test_bad_options_name_the_option(options: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match="BrainImageDataset: " + match):
        BrainImageDataset(_eeg().data, **{"times": TIMES, **options})


def test_option_types_that_are_fine() -> None:
    eeg = _eeg()
    want = BrainImageDataset(eeg, repetitions=[0, 2], channels=[1, 3], time_window=slice(2, 6))
    for kw in (
        {"repetitions": np.array([0, 2]), "channels": np.array([1, 3])},
        {"repetitions": torch.tensor([0, -4]), "channels": ["Oz", -1], "time_window": [0.0, 0.3]},
        {"repetitions": (0, 2), "channels": (np.int64(1), 3), "time_window": np.array([0.0, 0.3])},
    ):
        got = BrainImageDataset(eeg, **{"time_window": slice(2, 6), **kw})
        np.testing.assert_array_equal(got.responses().numpy(), want.responses().numpy())
    assert BrainImageDataset(eeg, repetitions=np.int64(2), flatten=np.bool_(False)).flatten is False
    ds = BrainImageDataset(eeg.data, ch_names=("a", "b", "c", "d"), times=list(TIMES), channels=["c"])
    assert ds.ch_names == ["c"] and ds.times.shape == (10,)


def test_norm_stats_must_fit_the_dataset() -> None:
    train = BrainImageDataset(_eeg(), normalize="channel")
    with pytest.raises(
        ValueError, match=r"norm_stats.mean has shape \(4, 1\), which does not fit .* \(1, 10\)"
    ):
        BrainImageDataset(_eeg(1), normalize="channel", norm_stats=train.norm_stats, channels=["O1"])
    with pytest.raises(ValueError, match=r"norm_stats \('channel'\) given but normalize=None"):
        BrainImageDataset(_eeg(1), norm_stats=train.norm_stats)
    fmri = np.random.default_rng(0).normal(size=(6, 2, 30))
    with pytest.raises(ValueError, match="ch_names and times need EEG responses"):
        BrainImageDataset(fmri, times=np.arange(30.0))
    with pytest.raises(ValueError, match=r"fit_norm_stats: trials must have 3 or 4 dimensions"):
        fit_norm_stats(fmri[:, 0], "zscore")


def test_split_functions_check_their_own_arguments(tmp_path: object) -> None:
    with pytest.raises(TypeError, match="things_eeg2_datasets: train_options must be None or a dict"):
        things_eeg2_datasets(tmp_path, 1, train_options=[("normalize", "zscore")])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="things_eeg2_datasets: test_options must not set norm_stats"):
        things_eeg2_datasets(tmp_path, 1, test_options={"norm_stats": None})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="fmri_datasets: train must be an FMRIResponses or the path"):
        fmri_datasets(np.zeros((2, 2, 3)), "test.h5")  # type: ignore[arg-type]
    with pytest.raises(
        TypeError, match=r"fmri_datasets: pca_components must be None or an int >= 1, got 2\.0"
    ):
        fmri_datasets("train.h5", "test.h5", pca_components=2.0)  # type: ignore[arg-type]
    with pytest.raises(
        TypeError, match=r"BrainImageDataset: responses must be an array .* got str; load files"
    ):
        BrainImageDataset("sub-01/preprocessed_eeg_training.npy")


@pytest.mark.parametrize("scale", [1e200, 1e-170, 2.0**-1070], ids=str)
@pytest.mark.parametrize("mode", ["zscore", "channel"])
def test_fit_norm_stats_at_extreme_magnitudes(mode: str, scale: float) -> None:
    """Statistics of any finite magnitude are its true ones: the squares of 1e200 overflow and those of
    1e-170 underflow, but the std is representable (even for subnormal data, 2**-1070)."""
    x = _eeg().data
    stats = fit_norm_stats(x * scale, mode)
    want = fit_norm_stats(x, mode)
    # subnormal data hold only a few bits of each value, so compare against those values themselves
    rounded = (x * scale) / scale
    exact = fit_norm_stats(rounded, mode) if scale < 1e-300 else want
    np.testing.assert_allclose(stats.std, exact.std * scale, rtol=1e-12 if scale > 1e-300 else 1e-3)
    np.testing.assert_allclose(stats.mean, exact.mean * scale, rtol=1e-12 if scale > 1e-300 else 1e-3)
    assert stats.std.shape == want.std.shape and stats.std.dtype == np.float64


@pytest.mark.parametrize("shape", [(0, 2, 4, 3), (3, 0, 4, 3), (3, 2, 0, 3), (0, 2, 5)])
@pytest.mark.parametrize("mode", ["zscore", "channel"])
def test_fit_norm_stats_refuses_empty_trials(shape: tuple[int, ...], mode: str) -> None:
    with pytest.raises(ValueError, match=r"fit_norm_stats: trials is empty \(shape"):
        fit_norm_stats(np.zeros(shape), mode)


@pytest.mark.parametrize("shape", [(0, 2, 4, 3), (3, 0, 4, 3), (3, 2, 4, 0), (0, 5), (3, 2, 0)])
def test_dataset_of_no_images_is_an_error(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"BrainImageDataset: responses are empty \(shape"):
        BrainImageDataset(np.zeros(shape))


def test_float16_responses_are_averaged_in_float64() -> None:
    """Repetitions of float16 data are averaged in float64, not rounded to float16 (~3e-5 off)."""
    half = (_eeg().data * 0.37).astype(np.float16)
    got = BrainImageDataset(half, dtype=torch.float64).responses().numpy()
    np.testing.assert_array_equal(got, half.astype(np.float64).mean(axis=1).reshape(len(half), -1))


@pytest.mark.parametrize(
    "make",
    [lambda x: x.requires_grad_(), lambda x: x.bfloat16(), lambda x: x.half(), lambda x: x.float()[:, ::2]],
    ids=["requires_grad", "bfloat16", "float16", "stepped"],
)
def test_tensor_inputs(make: object) -> None:
    """Tensors that require grad or whose dtype numpy lacks (bfloat16) are read like their values."""
    t = make(torch.from_numpy(_eeg().data))  # type: ignore[operator]
    values = t.detach().double().numpy()
    assert as_responses(t).data.dtype == (
        np.float32 if t.dtype == torch.bfloat16 else t.numpy(force=True).dtype
    )
    np.testing.assert_array_equal(np.asarray(as_responses(t).data, dtype=np.float64), values)
    stats, want = fit_norm_stats(t, "channel"), fit_norm_stats(values, "channel")
    np.testing.assert_array_equal(stats.mean, want.mean)
    np.testing.assert_array_equal(stats.std, want.std)
    got = BrainImageDataset(t, dtype=torch.float64).responses()
    np.testing.assert_array_equal(got.numpy(), values.mean(axis=1).reshape(len(values), -1))
    white = mvnn(t)  # in the input's dtype (float32 for bfloat16)
    tol = 8 * float(np.finfo(white.dtype).eps)
    np.testing.assert_allclose(white, mvnn(values), rtol=tol, atol=tol * float(np.abs(white).max()))
    with pytest.raises(TypeError, match=r"data must be a real numeric array, got dtype torch\.complex64"):
        as_responses(torch.zeros(2, 2, 2, 2, dtype=torch.complex64))


def test_a_time_window_beyond_the_epoch_warns() -> None:
    """As align warns: a window in seconds that reaches past the epoch's samples gets fewer samples than
    it asked for; inside the epoch, no warning."""
    with pytest.warns(
        UserWarning, match=r"BrainImageDataset: time_window \[0.5, 1\] s reaches beyond the epoch's"
    ):
        ds = BrainImageDataset(_eeg().data, times=TIMES, time_window=(0.5, 1.0))
    assert ds[0][1].shape[-1] == 4 * 3  # 0.5, 0.6, 0.7 s of 4 channels
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        BrainImageDataset(_eeg().data, times=TIMES, time_window=(0.0, 0.3))
