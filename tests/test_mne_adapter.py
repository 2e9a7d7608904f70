"""fastalign._mne: one MNE adapter and one condition convention for fastalign.data and fastalign.rsa."""

from __future__ import annotations

import ast
import importlib.abc
import inspect
import sys

import mne
import numpy as np
import pytest
import torch

import fastalign as fa
from fastalign import _mne
from fastalign.data import BrainImageDataset, epochs_to_responses

N_REP, N_T = 3, 6
CH = ["O1", "Oz", "O2", "Pz"]


def _epochs(bads: tuple[str, ...] = ()) -> tuple[mne.EpochsArray, np.ndarray, np.ndarray]:
    """4 conditions whose event_id order (30, 10, 40, 20) is not their code order, presented interleaved."""
    rng = np.random.default_rng(0)
    codes = np.tile([30, 10, 40, 20], N_REP)
    data = rng.normal(size=(len(codes), len(CH) + 1, N_T))
    info = mne.create_info([*CH, "EOG"], 100.0, ["eeg"] * len(CH) + ["eog"])
    info["bads"] = list(bads)
    events = np.column_stack([np.arange(len(codes)) * 20, np.zeros(len(codes), int), codes])
    event_id = {"cat": 30, "dog": 10, "eel": 40, "ant": 20}
    epochs = mne.EpochsArray(data, info, events, event_id=event_id, tmin=-0.01, verbose="error")
    return epochs, data, codes


def test_conditions_come_in_ascending_code_order_in_data_and_rsa() -> None:
    epochs, data, codes = _epochs()
    assert list(epochs.event_id.values()) == [30, 10, 40, 20]  # the order that must not matter
    resp = epochs_to_responses(epochs)
    assert resp.conditions.tolist() == [10, 20, 30, 40]
    assert resp.ch_names == CH  # EOG is not a data channel
    for i, code in enumerate([10, 20, 30, 40]):
        np.testing.assert_array_equal(resp.data[i], data[codes == code][:, :4])  # recording order kept

    # time_resolved_rdms averages the same conditions, in the same order, as epochs_to_responses gives.
    from_epochs = fa.time_resolved_rdms(epochs, "euclidean")
    evoked = torch.from_numpy(resp.data.mean(axis=1))
    np.testing.assert_allclose(
        from_epochs.numpy(), fa.time_resolved_rdms(evoked, "euclidean").numpy(), rtol=1e-12
    )
    # ... and as MNE's own Evoked averages, taken in code order.
    mne_evoked = np.stack([epochs[name].average(picks=CH).data for name in ("dog", "ant", "cat", "eel")])
    np.testing.assert_allclose(evoked.numpy(), mne_evoked, rtol=1e-12)
    # A dataset built from the epochs pairs row i with image i of a code-ordered image list.
    ds = BrainImageDataset(epochs, np.arange(4)[:, None] * 1.0, flatten=False)
    np.testing.assert_allclose(ds.responses().numpy(), evoked.numpy(), rtol=1e-6)


def test_bad_channels_are_left_out_everywhere() -> None:
    epochs, _, _ = _epochs(bads=("Oz",))
    good = epochs.copy().drop_channels(["Oz"])
    good.info["bads"] = []
    assert epochs_to_responses(epochs).ch_names == ["O1", "O2", "Pz"]
    np.testing.assert_array_equal(
        fa.time_resolved_rdms(epochs, "correlation").numpy(),
        fa.time_resolved_rdms(good, "correlation").numpy(),
    )


def test_unequal_counts_average_in_rsa_but_not_in_responses() -> None:
    epochs, data, codes = _epochs()
    uneven = epochs.copy().drop([0])  # one "cat" (30) epoch fewer
    grouped = _mne.group_epochs(uneven, "f")
    assert grouped.counts.tolist() == [3, 3, 2, 3] and grouped.names == ["dog", "ant", "cat", "eel"]
    np.testing.assert_allclose(
        grouped.condition_means()[2], data[codes == 30][1:, :4].mean(axis=0), rtol=1e-12
    )
    assert fa.time_resolved_rdms(uneven).shape == (N_T, 6)
    with pytest.raises(
        ValueError, match=r"epochs_to_responses: every condition .* same number of repetitions"
    ):
        epochs_to_responses(uneven)


def test_a_condition_without_epochs_is_an_error() -> None:
    epochs, _, codes = _epochs()
    emptied = epochs.copy().drop(np.flatnonzero(codes == 40))  # event_id still lists "eel"
    assert "eel" in emptied.event_id
    for call, fn in (
        (epochs_to_responses, "epochs_to_responses"),
        (fa.time_resolved_rdms, "time_resolved_rdms"),
    ):
        with pytest.raises(ValueError, match=rf"{fn}: event_id condition\(s\) {{'eel': 40}} have no epochs"):
            call(emptied)
    # Selecting conditions by name drops the empty ones from event_id: the suggested fix works.
    assert epochs_to_responses(emptied[["dog", "ant", "cat"]]).conditions.tolist() == [10, 20, 30]


def test_other_inputs() -> None:
    epochs, _, _ = _epochs(bads=tuple(CH))
    with pytest.raises(ValueError, match="epochs_to_responses: the epochs have no good data channel"):
        epochs_to_responses(epochs)
    with pytest.raises(TypeError, match=r"epochs_to_responses: epochs must be mne\.Epochs"):
        epochs_to_responses(np.zeros((2, 2, 2, 2)))
    assert not _mne.is_epochs(np.zeros(3)) and not _mne.is_epochs(None)
    three = _epochs()[0][["dog", "ant"]]
    with pytest.raises(ValueError, match="time_resolved_rdms: the Epochs have 2 event types; need >= 3"):
        fa.time_resolved_rdms(three)


class _NoMne(importlib.abc.MetaPathFinder):
    """Fails any import of mne (AssertionError, which no ``except ImportError`` swallows)."""

    def find_spec(self, name: str, *args: object) -> None:
        if name == "mne" or name.startswith("mne."):
            raise AssertionError(f"{name} was imported")


def test_array_inputs_and_importing_the_adapter_do_not_import_mne(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "mne" or m.startswith("mne.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_NoMne(), *sys.meta_path])
    assert not _mne.is_epochs(np.zeros(2))
    BrainImageDataset(np.random.default_rng(0).normal(size=(3, 2, 2, 4)))
    fa.time_resolved_rdms(torch.randn(4, 2, 5))
    # the module imports mne only inside functions, so importing it (and fastalign.rsa) never loads MNE
    tree = ast.parse(inspect.getsource(_mne))
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = [a.name for n in top for a in n.names] + [n.module for n in top if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if n and n.split(".")[0] == "mne"]


@pytest.mark.filterwarnings("ignore:.*Epochs-object is empty:RuntimeWarning")  # MNE's, on get_data()
@pytest.mark.parametrize("how", ["sliced", "dropped"])
def test_epochs_without_any_epoch_are_an_error(how: str) -> None:
    """No epoch at all (a slice to nothing clears event_id too; drop() keeps it) is a ValueError naming the
    epochs, from every function that takes them, not numpy's zero-size reduction error."""
    epochs, _, codes = _epochs()
    empty = epochs[:0] if how == "sliced" else epochs.copy().drop(np.arange(len(codes)), verbose="error")
    for call, fn in (
        (epochs_to_responses, "epochs_to_responses"),
        (fa.time_resolved_rdms, "time_resolved_rdms"),
    ):
        with pytest.raises(ValueError, match=rf"{fn}: the epochs are empty"):
            call(empty)
