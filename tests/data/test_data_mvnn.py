"""MVNN against the published computation: per-condition sklearn _cov(shrinkage='auto') loops."""

from __future__ import annotations

import mne
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastalign.data import mvnn, noise_covariance
from fastalign.data.reference import published_mvnn as _published_mvnn


def _session(rng: np.random.Generator, n_cond: int, n_rep: int, n_ch: int, n_t: int) -> np.ndarray:
    mix = rng.normal(size=(n_ch, n_ch)) + 2 * np.eye(n_ch)
    return np.einsum("ij,crjt->crit", mix, rng.normal(size=(n_cond, n_rep, n_ch, n_t)))


@pytest.mark.parametrize("dim", ["time", "epochs"])
def test_mvnn_matches_published_loops_on_two_partitions(dim: str) -> None:
    rng = np.random.default_rng(0)
    test, train = _session(rng, 5, 6, 7, 9), _session(rng, 9, 2, 7, 9)
    train[1, :, 2, 4] = 3.0  # a constant feature: StandardScaler keeps scale 1 there
    (w_test, w_train), sigma = mvnn([test, train], dim, return_covariance=True)
    (r_test, r_train), r_sigma = _published_mvnn([test, train], dim)
    np.testing.assert_allclose(sigma, r_sigma, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(w_test, r_test, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(w_train, r_train, rtol=1e-9, atol=1e-10)


@given(
    n_cond=st.integers(1, 4),
    n_rep=st.integers(2, 5),
    n_ch=st.integers(1, 6),
    n_t=st.integers(2, 7),
    dim=st.sampled_from(["time", "epochs"]),
    seed=st.integers(0, 2**16),
)
def test_noise_covariance_matches_sklearn_any_shape(
    n_cond: int, n_rep: int, n_ch: int, n_t: int, dim: str, seed: int
) -> None:
    data = _session(np.random.default_rng(seed), n_cond, n_rep, n_ch, n_t)
    _, ref = _published_mvnn([data], dim)
    np.testing.assert_allclose(noise_covariance(data, dim), ref, rtol=1e-9, atol=1e-12)


def test_mvnn_whitens_the_noise() -> None:
    rng = np.random.default_rng(1)
    mix = np.eye(6) + 0.3 * rng.normal(size=(6, 6))
    noise = np.einsum("ij,crjt->crit", mix, rng.normal(size=(40, 200, 6, 5)))

    def off_diagonal_correlation(x: np.ndarray) -> float:
        corr = np.corrcoef((x - x.mean(axis=1, keepdims=True)).transpose(2, 0, 1, 3).reshape(6, -1))
        return float(np.abs(corr - np.eye(6)).mean())

    white, sigma = mvnn(noise, "time", return_covariance=True)
    true = mix @ mix.T
    # Ledoit-Wolf shrinks off-diagonals a little at 200 repetitions: close to, not equal to, the truth.
    assert np.linalg.norm(sigma - true) < 0.2 * np.linalg.norm(true)
    assert off_diagonal_correlation(white) < off_diagonal_correlation(noise) / 3


def test_mvnn_accepts_epochs_and_keeps_float32() -> None:
    rng = np.random.default_rng(2)
    data = _session(rng, 3, 4, 3, 11)
    # Presentation order interleaves the conditions (rep 0 of each, then rep 1, ...), as in a recording.
    trials = data.transpose(1, 0, 2, 3).reshape(12, 3, 11)
    codes = np.tile(np.arange(1, 4), 4)
    info = mne.create_info(["O1", "Oz", "O2"], 100.0, "eeg")
    events = np.column_stack([np.arange(len(codes)) * 200, np.zeros(len(codes), int), codes])
    epochs = mne.EpochsArray(trials, info, events, verbose="error")
    np.testing.assert_allclose(mvnn(epochs), mvnn(data), rtol=1e-12)
    out = mvnn(data.astype(np.float32))
    assert out.dtype == np.float32


def test_mvnn_bad_input() -> None:
    data = np.random.default_rng(3).normal(size=(2, 3, 4, 5))
    with pytest.raises(ValueError, match="dim must be one of"):
        mvnn(data, "channels")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 2 repetitions"):
        mvnn(data[:, :1])
    with pytest.raises(ValueError, match="4 dimensions"):
        mvnn(data[0])
    bad = data.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        mvnn(bad)
    with pytest.raises(ValueError, match="same channel count"):
        mvnn([data, data[:, :, :3]])
    with pytest.raises(ValueError, match="not positive definite"):
        mvnn(np.zeros((2, 3, 4, 5)))


def test_mvnn_of_epochs_refuses_a_condition_without_epochs() -> None:
    rng = np.random.default_rng(4)
    trials = _session(rng, 3, 4, 3, 11).transpose(1, 0, 2, 3).reshape(12, 3, 11)
    codes = np.tile([3, 1, 2], 4)
    info = mne.create_info(["O1", "Oz", "O2"], 100.0, "eeg")
    events = np.column_stack([np.arange(12) * 200, np.zeros(12, int), codes])
    epochs = mne.EpochsArray(trials, info, events, event_id={"c": 3, "a": 1, "b": 2}, verbose="error")
    sorted_data = np.stack([trials[codes == c] for c in (1, 2, 3)])  # ascending codes, whatever event_id says
    np.testing.assert_allclose(mvnn(epochs), mvnn(sorted_data), rtol=1e-12)
    # All epochs of code 2 dropped: silently whitening 2 of the 3 conditions would misalign them.
    with pytest.raises(ValueError, match=r"event_id condition\(s\) \{'b': 2\} have no epochs"):
        mvnn(epochs.copy().drop(np.flatnonzero(codes == 2)))


@pytest.mark.parametrize("scale", [1e200, 1e-170, 1e307, 2.0**-1000], ids=str)
@pytest.mark.parametrize("dim", ["time", "epochs"])
def test_mvnn_does_not_depend_on_the_scale(dim: str, scale: float) -> None:
    """mvnn(c x) = (c^2 sigma)^-1/2 c x = mvnn(x) at any finite magnitude, though the squares of 1e200
    overflow and those of 1e-170 underflow."""
    data = _session(np.random.default_rng(5), 3, 4, 3, 6)
    np.testing.assert_allclose(mvnn(data * scale, dim), mvnn(data, dim), rtol=1e-12, atol=1e-12)
    a, b = mvnn([data * scale, data[:2] * scale], dim)
    want_a, want_b = mvnn([data, data[:2]], dim)
    np.testing.assert_allclose(a, want_a, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(b, want_b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("scale", [2.0**500, 2.0**-500], ids=str)
def test_noise_covariance_of_large_and_small_data(scale: float) -> None:
    """Data beyond 2**+-400 are rescaled exactly: the covariance is c^2 times the unscaled one."""
    data = _session(np.random.default_rng(7), 3, 4, 3, 6)
    np.testing.assert_array_equal(noise_covariance(data * scale), noise_covariance(data) * scale**2)


@pytest.mark.parametrize("shape", [(0, 3, 2, 4), (2, 3, 0, 4), (2, 0, 2, 4), (2, 3, 2, 0)])
@pytest.mark.parametrize("dim", ["time", "epochs"])
def test_mvnn_refuses_empty_axes(dim: str, shape: tuple[int, ...]) -> None:
    """No conditions, channels, repetitions or times: a ValueError naming data, not ZeroDivisionError or
    an eigenvalue of NaN."""
    with pytest.raises(ValueError, match=r"mvnn: data has shape \("):
        mvnn(np.zeros(shape), dim)
    with pytest.raises(ValueError, match=r"noise_covariance: data has shape \("):
        noise_covariance(np.zeros(shape), dim)
    good = np.random.default_rng(6).normal(size=(2, 3, 2, 4))
    if shape[2]:  # the channel count matches: the empty partition is named by its index
        with pytest.raises(ValueError, match=r"mvnn: data\[1\] has shape \("):
            mvnn([good, np.zeros(shape)], dim)
