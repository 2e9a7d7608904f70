"""The one adapter from ``mne.Epochs`` to arrays, shared by every fastalign function that takes epochs.

Convention (the same wherever epochs come in: :func:`fastalign.data.epochs_to_responses`, the datasets,
MVNN and :func:`fastalign.time_resolved_rdms`):

- A condition is an event code of ``epochs.event_id``; conditions come in ascending code order. The
  code, not the event_id name or its insertion order, is what MNE stores per epoch
  (``epochs.events[:, 2]``), what ``mne.find_events`` reads from the stim channel and what survives
  ``mne.concatenate_epochs``, saving and selection; two Epochs of the same recording therefore give
  the same order however their event_id dicts were built. For THINGS-EEG2 the codes are the published
  1-based image numbers, so ascending codes are image order.
- Every condition of ``event_id`` must have at least one epoch: a condition that silently vanished
  (all its epochs dropped) would shift every later condition against image or model lists.
- Channels are MNE's data channels (EEG, MEG, iEEG, fNIRS...) minus ``info["bads"]``; stim, EOG, ECG
  and misc channels are left out.

MNE is imported lazily: importing this module (and with it fastalign.rsa) never loads MNE.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

# MNE's data channel types (what picks="data" selects); stim, EOG, ECG, misc... are left out.
DATA_TYPES = frozenset(
    {"eeg", "mag", "grad", "seeg", "dbs", "ecog", "csd", "hbo", "hbr", "fnirs_cw_amplitude",
     "fnirs_fd_ac_amplitude", "fnirs_fd_phase", "fnirs_od"}
)  # fmt: skip


def is_epochs(x: Any) -> bool:
    """Whether ``x`` is an ``mne.Epochs`` / ``mne.EpochsArray`` (any ``mne.BaseEpochs``)."""
    # An Epochs object can only exist once mne has been imported, so arrays never pay for importing it.
    mne = sys.modules.get("mne")
    return mne is not None and isinstance(x, mne.BaseEpochs)


@dataclass(frozen=True)
class GroupedEpochs:
    """Epochs sorted by condition.

    Attributes:
        data: (n_epochs, n_channels, n_times) float64, grouped by condition in ascending event code
            order; within a condition, epochs keep their order in the Epochs (recording order).
        counts: (n_conditions,) epochs per condition.
        conditions: (n_conditions,) the event codes, ascending.
        names: the event_id name of each condition.
        ch_names: n_channels names of the good data channels kept.
        times: (n_times,) epoch time of each sample in seconds.
    """

    data: np.ndarray
    counts: np.ndarray
    conditions: np.ndarray
    names: list[str]
    ch_names: list[str]
    times: np.ndarray

    def condition_means(self) -> np.ndarray:
        """(n_conditions, n_channels, n_times) per-condition averages (what ``Evoked`` would hold)."""
        starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        return np.add.reduceat(self.data, starts, axis=0) / self.counts[:, None, None]

    def repetitions(self, fn: str) -> np.ndarray:
        """(n_conditions, n_repetitions, n_channels, n_times) view; every condition needs as many epochs.

        Raises:
            ValueError: conditions have different numbers of epochs (subsample them first, e.g. with
                ``epochs.equalize_event_counts()``).
        """
        lo, hi = int(self.counts.min()), int(self.counts.max())
        if lo != hi:
            few = self.conditions[self.counts == lo][:5].tolist()
            raise ValueError(
                f"{fn}: every condition (event code) of the epochs needs the same number of repetitions, "
                f"got {lo} to {hi} (e.g. code(s) {few} have {lo}); equalize them first, e.g. with "
                "epochs.equalize_event_counts()"
            )
        return self.data.reshape(len(self.conditions), hi, *self.data.shape[1:])


def group_epochs(epochs: Any, fn: str) -> GroupedEpochs:
    """Sorts the good data channels of ``epochs`` by condition (see the module docstring).

    Args:
        epochs: an ``mne.BaseEpochs``.
        fn: the public function's name, for error messages.

    Raises:
        TypeError: ``epochs`` is not an mne.Epochs.
        ValueError: no good data channel; no epochs at all; an event_id condition without epochs; an
            epoch whose code is not in event_id.
    """
    if not is_epochs(epochs):
        raise TypeError(f"{fn}: epochs must be mne.Epochs or mne.EpochsArray, got {type(epochs).__name__}")
    bads = set(epochs.info["bads"])
    types = epochs.get_channel_types()
    keep = [
        i
        for i, (n, t) in enumerate(zip(epochs.ch_names, types, strict=True))
        if t in DATA_TYPES and n not in bads
    ]
    if not keep:
        raise ValueError(
            f"{fn}: the epochs have no good data channel (EEG/MEG/iEEG/fNIRS) among {epochs.ch_names} "
            f"(bads: {sorted(bads)})"
        )
    # get_data first: for epochs that are not preloaded it drops the rejected epochs, changing events.
    data = np.asarray(epochs.get_data(picks=keep), dtype=np.float64)
    if len(data) == 0:
        raise ValueError(
            f"{fn}: the epochs are empty (no epoch left; all dropped? see epochs.drop_log); expected at "
            "least one epoch per condition"
        )
    codes = np.asarray(epochs.events[:, 2])
    name_of: dict[int, str] = {}
    for name, code in epochs.event_id.items():
        name_of.setdefault(int(code), name)
    conditions = np.array(sorted(name_of), dtype=np.int64)
    unknown = np.setdiff1d(codes, conditions)
    if unknown.size:
        raise ValueError(
            f"{fn}: epochs have event code(s) {unknown[:5].tolist()} that are not in event_id "
            f"{epochs.event_id}"
        )
    counts = np.bincount(np.searchsorted(conditions, codes), minlength=len(conditions))
    if not counts.all():
        empty = {name_of[int(c)]: int(c) for c in conditions[counts == 0][:5]}
        raise ValueError(
            f"{fn}: event_id condition(s) {empty} have no epochs (all dropped?); select the conditions "
            "you want, e.g. epochs[list_of_names], which also drops the empty ones from event_id"
        )
    order = np.argsort(codes, kind="stable")
    return GroupedEpochs(
        data=data[order],
        counts=counts,
        conditions=conditions,
        names=[name_of[int(c)] for c in conditions],
        ch_names=[epochs.ch_names[i] for i in keep],
        times=np.asarray(epochs.times, dtype=np.float64),
    )
