"""Epoched EEG responses as one container, and conversion from MNE epochs.

Everything in fastalign.data that takes EEG accepts an array of shape (conditions, repetitions,
channels, times), an :class:`EEGResponses`, or an ``mne.Epochs`` / ``mne.EpochsArray`` whose event
codes name the image of each epoch (one event per image presentation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fastalign.data._io import check_array


@dataclass
class EEGResponses:
    """Epoched EEG sorted by image condition.

    Attributes:
        data: (n_conditions, n_repetitions, n_channels, n_times) responses.
        ch_names: n_channels channel names (may be empty when unknown).
        times: (n_times,) epoch time of each sample in seconds (may be empty when unknown).
        conditions: (n_conditions,) event code / image index of each condition, ascending.
        source: where the data came from (a file path or "array"), for error messages.
    """

    data: np.ndarray
    ch_names: list[str] = field(default_factory=list)
    times: np.ndarray = field(default_factory=lambda: np.zeros(0))
    conditions: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    source: str = "array"

    def __post_init__(self) -> None:
        self.data = check_array(self.data, "data", self.source, ndim=4)
        n_cond, _, n_ch, n_t = self.data.shape
        if self.ch_names and len(self.ch_names) != n_ch:
            raise ValueError(
                f"{self.source}: {len(self.ch_names)} ch_names for {n_ch} channels in data {self.data.shape}"
            )
        self.times = np.asarray(self.times, dtype=np.float64)
        if self.times.size and self.times.shape != (n_t,):
            raise ValueError(
                f"{self.source}: times must have shape ({n_t},) to match data {self.data.shape}, "
                f"got {self.times.shape}"
            )
        self.conditions = np.asarray(self.conditions)
        if not self.conditions.size:
            self.conditions = np.arange(n_cond)
        if self.conditions.shape != (n_cond,):
            raise ValueError(
                f"{self.source}: conditions must have shape ({n_cond},), got {self.conditions.shape}"
            )


# MNE's data channel types (what picks="data" selects); stim, EOG, ECG, misc... are left out.
_DATA_TYPES = frozenset(
    {"eeg", "mag", "grad", "seeg", "dbs", "ecog", "csd", "hbo", "hbr", "fnirs_cw_amplitude",
     "fnirs_fd_ac_amplitude", "fnirs_fd_phase", "fnirs_od"}
)  # fmt: skip


def _is_epochs(x: Any) -> bool:
    try:
        import mne
    except ImportError:  # pragma: no cover - mne is a dependency
        return False
    return isinstance(x, mne.BaseEpochs)


def epochs_to_responses(epochs: Any) -> EEGResponses:
    """Sorts MNE epochs into an (n_conditions, n_repetitions, n_channels, n_times) array.

    Each epoch's event code (``epochs.events[:, 2]``) identifies its image. Conditions come out in
    ascending code order; repetitions of one condition keep their order in ``epochs``. Only data
    channels are kept (MNE's default picks, so a stim channel is dropped).

    Raises:
        ValueError: conditions have different numbers of repetitions (subsample them first).
    """
    if not _is_epochs(epochs):
        raise TypeError(f"epochs must be mne.Epochs or mne.EpochsArray, got {type(epochs).__name__}")
    bads = set(epochs.info["bads"])
    types = epochs.get_channel_types()
    keep = [
        i
        for i, (n, t) in enumerate(zip(epochs.ch_names, types, strict=True))
        if t in _DATA_TYPES and n not in bads
    ]
    if not keep:
        raise ValueError(f"epochs: no good data channels (EEG/MEG/iEEG/fNIRS) among {epochs.ch_names}")
    data = epochs.get_data(picks=keep)  # only the kept channels are copied out
    codes = np.asarray(epochs.events[:, 2])
    conditions, counts = np.unique(codes, return_counts=True)
    if counts.min() != counts.max():
        few = conditions[counts == counts.min()][:5].tolist()
        raise ValueError(
            "epochs: every image condition (event code) needs the same number of repetitions, got "
            f"{counts.min()} to {counts.max()} (e.g. code(s) {few} have {counts.min()})"
        )
    order = np.argsort(codes, kind="stable")
    n_rep = int(counts[0])
    sorted_data = data[order].reshape(len(conditions), n_rep, *data.shape[1:])
    names = [epochs.ch_names[i] for i in keep]
    return EEGResponses(sorted_data, names, np.asarray(epochs.times), conditions, "mne.Epochs")


def as_responses(x: Any, name: str = "data") -> EEGResponses:
    """An :class:`EEGResponses` from an array (conditions, repetitions, channels, times), MNE epochs or
    an :class:`EEGResponses` (returned as is)."""
    if isinstance(x, EEGResponses):
        return x
    if _is_epochs(x):
        return epochs_to_responses(x)
    if isinstance(x, (np.ndarray, list, tuple)) or hasattr(x, "__array__"):
        return EEGResponses(np.asarray(x), source=f"argument {name}")
    raise TypeError(
        f"{name} must be an array of shape (conditions, repetitions, channels, times), EEGResponses or "
        f"mne.Epochs, got {type(x).__name__}"
    )
