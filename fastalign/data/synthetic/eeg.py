"""The EEG half of the synthetic dataset: a subject's brain and its raw THINGS-EEG2 session files.

A subject's brain maps image features to EEG: every feature drives one cortical source with its own
temporal response (a Gaussian bump at its own latency), a shared ERP (P1/N1) is added, the sources reach
the sensors through a mixing matrix L, and sensor noise is L times independent AR(1) source noise plus a
little white noise, so that it is correlated across channels as real EEG noise is (MVNN has something to
undo). Trials follow the THINGS-EEG2 RSVP design (one image every 200 ms, overlapping responses, target
trials with code 99999) and are written as raw session files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fastalign.data._io import save_npy
from fastalign.data.preprocess import THINGS_EEG2_CHANNELS
from fastalign.data.things_eeg2 import TARGET_EVENT, raw_path

#: The 17 occipital/parietal channels of the published preprocessed data.
PUBLISHED_OP_CHANNELS = THINGS_EEG2_CHANNELS[-17:]
#: The 46 other channels of the 63-channel THINGS-EEG2 montage (frontal, central, temporal), first in
#: the raw files, so that with all 46 a raw file holds the 63 channels in the published order.
OTHER_CHANNELS = THINGS_EEG2_CHANNELS[:-17]
#: Stimulus onset asynchrony of the THINGS-EEG2 RSVP design, in seconds.
SOA = 0.2
#: The epoch of the preprocessed files, in seconds from image onset.
EPOCH = (-0.2, 0.8)


@dataclass(frozen=True)
class EEGDesign:
    """The recording every subject gets: montage, sampling rate, signal-to-noise ratio and sessions.

    Attributes:
        n_channels: Occipital/parietal channels (the ones preprocessing keeps).
        n_extra_channels: Other channels, first in the raw files.
        raw_sfreq: Raw sampling rate in Hz.
        snr: Single-trial signal-to-noise ratio per source (see :func:`make_brain`).
        n_sessions: Sessions per subject.
        training_repetitions, test_repetitions: Presentations of an image per session that shows it.
        targets_per_session: Target trials (event 99999) per raw file.
    """

    n_channels: int
    n_extra_channels: int
    raw_sfreq: float
    snr: float
    n_sessions: int
    training_repetitions: int
    test_repetitions: int
    targets_per_session: int

    def op_channel_names(self) -> list[str]:
        """Names of the occipital/parietal channels: the published 17, then made-up P/PO names."""
        n = self.n_channels
        names = list(PUBLISHED_OP_CHANNELS[:n])
        names += [f"PO{10 + i}" if i % 2 else f"P{10 + i}" for i in range(n - len(names))]
        return names

    def ch_names(self) -> list[str]:
        """Channel names of a raw file, in order: other channels, occipital/parietal ones, stim."""
        return list(OTHER_CHANNELS[: self.n_extra_channels]) + self.op_channel_names() + ["stim"]


def output_times(n_times: int) -> tuple[float, np.ndarray]:
    """The rate (Hz) that gives ``n_times`` samples per epoch, and the epoch time of each sample."""
    sfreq = n_times / (EPOCH[1] - EPOCH[0])
    return sfreq, EPOCH[0] + np.arange(n_times) / sfreq


def _volts(n_channels: int) -> float:
    """Scale from the model's unit-variance sources to the microvolt-scale data written (in volts)."""
    return float(1e-6 / np.sqrt(n_channels))


def _gauss(t: np.ndarray, latency: float | np.ndarray, width: float | np.ndarray) -> np.ndarray:
    return np.asarray(np.exp(-0.5 * ((t - latency) / width) ** 2))


@dataclass
class Brain:
    """One subject's brain (in model units; :func:`write_raw_eeg` scales to volts)."""

    mixing: np.ndarray  # (C, C): sources -> O/P sensors; the first k sources carry image features
    extra: np.ndarray  # (n_extra, C): O/P sensors -> other channels
    latency: np.ndarray  # (k,)
    width: np.ndarray  # (k,)
    sign: np.ndarray  # (k,)
    amp: np.ndarray  # (k,)
    erp_pattern: np.ndarray  # (C,)
    ar: float  # AR(1) coefficient of the source noise at the raw rate

    def kernels(self, t: np.ndarray) -> np.ndarray:
        """(k, len(t)) temporal responses of the feature sources (zero before onset)."""
        h = (
            self.sign[:, None]
            * self.amp[:, None]
            * _gauss(t[None, :], self.latency[:, None], self.width[:, None])
        )
        return np.asarray(np.where(t[None, :] >= 0, h, 0.0))

    def erp(self, t: np.ndarray) -> np.ndarray:
        """(len(t),) the stimulus-locked response shared by every image (P1 and N1)."""
        return np.asarray(np.where(t >= 0, _gauss(t, 0.1, 0.02) - 1.2 * _gauss(t, 0.17, 0.03), 0.0))

    def evoked(self, features: np.ndarray, t: np.ndarray) -> np.ndarray:
        """(n_images, C, len(t)) noise-free sensor responses to images with ``features`` (n, k)."""
        k = features.shape[1]
        sources = features[:, :, None] * self.kernels(t)[None]  # (n, k, T)
        sig = np.einsum("ck,nkt->nct", self.mixing[:, :k], sources)
        return np.asarray(sig + self.erp_pattern[None, :, None] * self.erp(t)[None, None, :])


def make_brain(rng: np.random.Generator, design: EEGDesign, k: int) -> Brain:
    """A random brain with ``k`` feature sources.

    ``design.snr``: RMS over images and the 0..0.8 s response of a feature source's image-driven
    activity, over the standard deviation of one noise source (unit-variance features and noise).
    """
    n_ch = design.n_channels
    q1, _ = np.linalg.qr(rng.normal(size=(n_ch, n_ch)))
    q2, _ = np.linalg.qr(rng.normal(size=(n_ch, n_ch)))
    mixing = (q1 * np.geomspace(1.0, 0.1, n_ch)) @ q2 * np.sqrt(n_ch)
    latency = rng.permutation(np.linspace(0.08, 0.4, k))
    width = rng.uniform(0.025, 0.06, k)
    sign = rng.choice([-1.0, 1.0], k)
    t = np.arange(0, EPOCH[1], 1.0 / design.raw_sfreq)
    rms = np.sqrt(np.mean(_gauss(t[None, :], latency[:, None], width[:, None]) ** 2, axis=1))
    amp = design.snr / rms
    pattern = mixing @ rng.normal(size=n_ch) / np.sqrt(n_ch)
    extra = rng.normal(size=(design.n_extra_channels, n_ch)) / np.sqrt(n_ch)
    ar = float(np.exp(-1.0 / (0.01 * design.raw_sfreq)))
    return Brain(mixing, extra, latency, width, sign, amp, pattern, ar)


def _raw_session(
    brain: Brain,
    trial_features: np.ndarray,
    codes: np.ndarray,
    design: EEGDesign,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """One raw partition: trials in the given order, one every SOA, as a published raw dict."""
    from scipy.signal import fftconvolve, lfilter

    sfreq = design.raw_sfreq
    n_ch, n_extra, k = brain.mixing.shape[0], brain.extra.shape[0], trial_features.shape[1]
    soa, pad = round(SOA * sfreq), round(1.0 * sfreq)
    n = 2 * pad + soa * len(codes)
    onsets = pad + soa * np.arange(len(codes))
    t = np.arange(0, EPOCH[1], 1.0 / sfreq)
    impulses = np.zeros((k + 1, n))
    impulses[:k, onsets] = trial_features.T
    impulses[k, onsets] = 1.0
    kern = np.vstack([brain.kernels(t), brain.erp(t)[None]])
    sources = fftconvolve(impulses, kern, axes=1)[:, :n]
    del impulses
    # Rows filled in place, temporaries a block of rows at a time: a published-size session (63
    # channels x 3.3 M samples) peaks at about twice its own size. The random draws are taken in the
    # same order as whole-array draws would be, so the data do not depend on the block size.
    data = np.empty((n_extra + n_ch + 1, n))
    sensors = data[n_extra : n_extra + n_ch]
    np.matmul(brain.mixing[:, :k], sources[:k], out=sensors)
    sensors += brain.erp_pattern[:, None] * sources[k]
    del sources
    innovations = rng.normal(size=(n_ch, n))
    innovations *= np.sqrt(1 - brain.ar**2)
    sensors += brain.mixing @ lfilter([1.0], [1.0, -brain.ar], innovations, axis=1)
    del innovations
    block = 4
    for r in range(0, n_ch, block):
        sensors[r : r + block] += 0.1 * rng.normal(size=(min(block, n_ch - r), n))
    other = data[:n_extra]
    np.matmul(brain.extra, sensors, out=other)
    for r in range(0, n_extra, block):
        other[r : r + block] += 0.5 * rng.normal(size=(min(block, n_extra - r), n))
    data[:-1] *= _volts(n_ch)  # microvolt-scale data in volts, as MNE expects for EEG
    data[-1] = 0.0
    for width in range(2):  # 2-sample pulses: mne.find_events' default shortest_event
        data[-1, onsets + width] = codes
    return {
        "raw_eeg_data": data,
        "ch_names": design.ch_names(),
        "ch_types": ["eeg"] * (n_ch + n_extra) + ["stim"],
        "sfreq": float(sfreq),
    }


def write_raw_eeg(
    raw_dir: str,
    subject: int,
    design: EEGDesign,
    train_features: np.ndarray,
    test_features: np.ndarray,
    rng: np.random.Generator,
) -> Brain:
    """Draws a brain for ``subject`` and writes its raw session files; returns the brain.

    Each session shows every test image ``test_repetitions`` times and, as published, half of the
    training images (each image in n_sessions // 2 sessions; all of them when n_sessions == 1)
    ``training_repetitions`` times, mixed with ``targets_per_session`` target trials, in random order.
    """
    n_train, k = train_features.shape
    brain = make_brain(rng, design, k)
    target_features = rng.normal(size=(design.targets_per_session, k))
    halves = np.array_split(rng.permutation(n_train), 2) if design.n_sessions > 1 else [np.arange(n_train)]
    for ses in range(1, design.n_sessions + 1):
        shown = np.sort(halves[(ses - 1) % len(halves)])
        for split, images, reps, source in (
            ("training", shown, design.training_repetitions, train_features),
            ("test", np.arange(len(test_features)), design.test_repetitions, test_features),
        ):
            trials = np.concatenate([np.repeat(images, reps), -1 - np.arange(design.targets_per_session)])
            trials = rng.permutation(trials)
            is_target = trials < 0
            tfeat = source[np.where(is_target, 0, trials)].copy()
            tfeat[is_target] = target_features[-1 - trials[is_target]]
            codes = np.where(is_target, TARGET_EVENT, trials + 1)
            raw = _raw_session(brain, tfeat, codes, design, rng)
            save_npy(raw_path(raw_dir, subject, ses, split), raw)  # type: ignore[arg-type]
    return brain


def _condensed_corr_rdm(x: np.ndarray) -> np.ndarray:
    from scipy.spatial.distance import pdist

    return np.asarray(pdist(x.reshape(len(x), -1), "correlation"))


def eeg_ground_truth(
    brain: Brain, subject: int, train_features: np.ndarray, test_features: np.ndarray, n_times: int
) -> dict[str, np.ndarray]:
    """The ground truth of one subject's EEG, keys suffixed ``_sub-XX`` (see make_synthetic_things)."""
    from scipy.stats import spearmanr

    sub = f"_sub-{subject:02d}"
    n_ch = brain.mixing.shape[0]
    scale = _volts(n_ch)
    _, times = output_times(n_times)
    gt = {
        "mixing" + sub: brain.mixing,
        "latency" + sub: brain.latency,
        "width" + sub: brain.width,
        "noise_cov" + sub: (brain.mixing @ brain.mixing.T + 0.01 * np.eye(n_ch)) * scale**2,
        "evoked_train" + sub: brain.evoked(train_features, times) * scale,
        "evoked_test" + sub: brain.evoked(test_features, times) * scale,
        "rdm_features" + sub: _condensed_corr_rdm(test_features),
    }
    gt["rdm_evoked" + sub] = _condensed_corr_rdm(gt["evoked_test" + sub])
    gt["expected_rsa" + sub] = np.asarray(
        spearmanr(gt["rdm_features" + sub], gt["rdm_evoked" + sub]).statistic
    )
    return gt
