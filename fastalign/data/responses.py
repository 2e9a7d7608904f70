"""Epoched EEG responses as one container, and conversion from MNE epochs.

Everything in fastalign.data that takes EEG accepts an array of shape (conditions, repetitions,
channels, times), an :class:`EEGResponses`, or an ``mne.Epochs`` / ``mne.EpochsArray`` whose event
codes name the image of each epoch (one event per image presentation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fastalign import _mne
from fastalign._checks import check_int, message
from fastalign.data._io import check_array


def _check_random_state(fn: str, seed: Any) -> int:
    """``seed`` as an int that scikit-learn's random_state takes ([0, 2**32)), refused here rather
    than deep inside sklearn."""
    if check_int(fn, "seed", seed, minimum=0) >= 2**32:
        raise ValueError(message(fn, "seed", "an int in [0, 2**32)", seed))
    return int(seed)


def _check_times(times: Any, n_times: int, name: str, where: str) -> np.ndarray:
    """``times`` as a (n_times,) float64 array of finite, strictly increasing seconds."""
    arr = np.asarray(times)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{where}: {name} must be real numbers (seconds), got dtype {arr.dtype}")
    if arr.shape != (n_times,):
        raise ValueError(
            f"{where}: {name} must have shape ({n_times},), one time per sample of the data's time axis, "
            f"got {arr.shape}"
        )
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise ValueError(f"{where}: {name} must be finite, got {name}[{bad}] = {arr[bad]}")
    down = np.flatnonzero(np.diff(arr) <= 0)
    if down.size:
        i = int(down[0])
        raise ValueError(
            f"{where}: {name} must be strictly increasing, got {name}[{i}] = {arr[i]} and "
            f"{name}[{i + 1}] = {arr[i + 1]}"
        )
    return arr


@dataclass
class EEGResponses:
    """Epoched EEG sorted by image condition.

    Attributes:
        data: (n_conditions, n_repetitions, n_channels, n_times) responses.
        ch_names: n_channels channel names (may be empty when unknown).
        times: (n_times,) epoch time of each sample in seconds (may be empty when unknown).
        conditions: (n_conditions,) label of each condition, ascending: 0-based image indices for
            THINGS-EEG2 (row ``i`` of image_metadata's list; :func:`load_preprocessed_eeg`,
            :func:`preprocess_things_eeg2`, 0..n_conditions-1 for plain arrays), the event codes for
            MNE epochs (:func:`epochs_to_responses`).
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
        if np.size(self.times):
            self.times = _check_times(self.times, n_t, "times", self.source)
        else:
            self.times = np.zeros(0)
        self.conditions = np.asarray(self.conditions)
        if not self.conditions.size:
            self.conditions = np.arange(n_cond)
        if self.conditions.shape != (n_cond,):
            raise ValueError(
                f"{self.source}: conditions must have shape ({n_cond},), got {self.conditions.shape}"
            )


def epochs_to_responses(epochs: Any) -> EEGResponses:
    """Sorts MNE epochs into an (n_conditions, n_repetitions, n_channels, n_times) array.

    Conditions follow fastalign's one MNE convention (:mod:`fastalign._mne`, the same as
    :func:`fastalign.time_resolved_rdms`): each condition is an event code of ``epochs.event_id``, in
    ascending code order, whatever the order of the event_id dict, because the code is what MNE keeps
    per epoch and what the stim channel holds; repetitions of one condition keep their order in
    ``epochs``. ``conditions`` holds the codes themselves: epochs of the raw THINGS-EEG2 files carry the
    published 1-based image numbers (code ``i + 1`` is image ``i``), so subtract 1 for the 0-based
    image indices that :func:`fastalign.data.load_preprocessed_eeg` and
    :func:`fastalign.data.preprocess_things_eeg2` give. Only good data channels are kept (MNE's data
    types, without ``info["bads"]``), so stim, EOG and bad channels are dropped.

    Raises:
        TypeError: ``epochs`` is not an mne.Epochs.
        ValueError: no epochs at all, conditions have different numbers of repetitions (subsample them
            first), an event_id condition has no epochs, or no good data channel is left.
    """
    grouped = _mne.group_epochs(epochs, "epochs_to_responses")
    return EEGResponses(
        grouped.repetitions("epochs_to_responses"),
        grouped.ch_names,
        grouped.times,
        grouped.conditions,
        "mne.Epochs",
    )


def as_responses(x: Any, name: str = "data") -> EEGResponses:
    """An :class:`EEGResponses` from an array or tensor (conditions, repetitions, channels, times), MNE
    epochs or an :class:`EEGResponses` (returned as is).

    A tensor is detached and copied to the CPU; bfloat16 becomes float32 (numpy has no bfloat16), other
    real dtypes are kept.
    """
    if isinstance(x, EEGResponses):
        return x
    if _mne.is_epochs(x):
        return epochs_to_responses(x)
    if isinstance(x, (np.ndarray, list, tuple)) or hasattr(x, "__array__"):
        # EEGResponses converts through check_array, which also takes tensors that require grad or
        # have dtypes numpy lacks (bfloat16)
        return EEGResponses(x, source=f"argument {name}")
    raise TypeError(
        f"{name} must be an array of shape (conditions, repetitions, channels, times), EEGResponses or "
        f"mne.Epochs, got {type(x).__name__}"
    )
