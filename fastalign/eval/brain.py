"""The brain side of an evaluation: test-set responses per subject and modality, and their RDMs.

:func:`load_brain` reads the layout that :func:`fastalign.data.make_synthetic_things` writes (and the
real THINGS-EEG2 set arranged the same way)::

    DATA/image_set/          image_metadata.npy, test_images/
    DATA/preprocessed_data/  sub-XX/preprocessed_eeg_test.npy   (n_images, n_repetitions, channels, times)
    DATA/fmri/               sub-XX/fmri_test.{h5,hdf5,npy}     (n_images, n_repetitions, voxels) + ROIs

An fMRI file may be BData (:func:`fastalign.data.load_fmri`); one that names its images is put in the
image set's order by name (:meth:`fastalign.data.FMRIResponses.in_image_order`). Repetitions are
averaged. A :class:`BrainData` can also be built from arrays (e.g. noise-free responses, or another
dataset's), and a behavioural RDM (e.g. from similarity judgements) joins it as a third modality that is
compared like a brain RDM.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fastalign import _checks
from fastalign.data import SyntheticThings, load_fmri, load_image_metadata, load_preprocessed_eeg, roi_order
from fastalign.eval.features import subject_name
from fastalign.rsa import rdm

__all__ = ["MODALITIES", "BrainData", "load_brain"]

_FN = "evaluate"
#: The modalities of the tables: brain recordings and behaviour.
MODALITIES = ("eeg", "fmri", "behaviour")
_FOLDERS = {"eeg": "preprocessed_data", "fmri": "fmri"}
_SUBJECT_DIR = re.compile(r"^sub-(\d+)$")


@dataclass
class BrainData:
    """Test-set responses of the subjects, repetitions averaged.

    Attributes:
        images: The test images (files) in condition order.
        eeg: Subject ("sub-01") -> (n_images, n_channels, n_times) EEG.
        times: (n_times,) seconds of the EEG samples from image onset.
        fmri: Subject -> ROI name -> (n_images, n_voxels) fMRI responses (every subject has the same ROIs;
            kept in :func:`fastalign.data.roi_order`, whatever order they are given in).
        behaviour: Subject (or "group") -> (n_pairs,) condensed RDM (dissimilarities) over the images.
        fmri_images: The fMRI test images when they are not ``images`` (e.g. another stimulus set).
        source: Where the data came from (for messages and config.json).
    """

    images: list[str]
    eeg: dict[str, np.ndarray] = field(default_factory=dict)
    times: np.ndarray | None = None
    fmri: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    behaviour: dict[str, np.ndarray] = field(default_factory=dict)
    fmri_images: list[str] | None = None
    source: str = "arrays"

    def __post_init__(self) -> None:
        where = "BrainData"
        if isinstance(self.images, (str, bytes)) or not isinstance(self.images, Sequence):
            raise TypeError(_checks.message(where, "images", "a sequence of image files", self.images))
        self.images = [os.fspath(p) for p in self.images]
        if self.fmri_images is not None:
            self.fmri_images = [os.fspath(p) for p in self.fmri_images]
        self.eeg = _by_subject("eeg", self.eeg, lambda s, v: _finite(where, f"eeg[{s!r}]", v, 3))
        if self.eeg:
            shapes = {v.shape for v in self.eeg.values()}
            if len(shapes) > 1:
                raise ValueError(f"{where}: every subject's EEG must have one shape, got {sorted(shapes)}")
            ((n, _, n_times),) = shapes
            self._check_count("eeg", n, self.images)
            if self.times is None:
                raise ValueError(f"{where}: EEG needs times (seconds of its {n_times} samples)")
            self.times = np.asarray(self.times, dtype=np.float64).reshape(-1)
            if self.times.shape != (n_times,) or not np.all(np.diff(self.times) > 0):
                got = (
                    "values that do not increase" if self.times.shape == (n_times,) else f"{self.times.size}"
                )
                raise ValueError(f"{where}: times must be {n_times} increasing sample times, got {got}")
        self.fmri = _by_subject("fmri", self.fmri, self._rois)
        if len({frozenset(r) for r in self.fmri.values()}) > 1:
            found = {s: list(r) for s, r in self.fmri.items()}
            raise ValueError(f"{where}: every subject needs the same fMRI ROIs, got {found}")
        if self.fmri:  # the visual hierarchy (V1 ... HVC), other ROIs after them in the first subject's order
            order = roi_order(next(iter(self.fmri.values())))
            self.fmri = {s: {roi: r[roi] for roi in order} for s, r in self.fmri.items()}
        self.behaviour = _by_subject(
            "behaviour",
            self.behaviour,
            lambda s, v: _condensed(v, len(self.images), f"behaviour[{s!r}]"),
            group=True,
        )
        if "group" in self.behaviour and len(self.behaviour) > 1:
            raise ValueError(
                f"BrainData: behaviour holds a 'group' RDM and per-subject ones ({list(self.behaviour)}); "
                "the group RDM is no subject's: give one group RDM or one RDM per subject"
            )

    def _rois(self, subject: Any, rois: Mapping[str, Any]) -> dict[str, np.ndarray]:
        if not isinstance(rois, Mapping):
            raise TypeError(
                _checks.message("BrainData", f"fmri[{subject!r}]", "a mapping ROI -> array", rois)
            )
        if not rois:
            raise ValueError(
                f"BrainData: fmri[{subject!r}] holds no ROI; every fMRI subject needs at least one"
            )
        out = {str(k): _finite("BrainData", f"fmri[{subject!r}][{k!r}]", v, 2) for k, v in rois.items()}
        for v in out.values():
            self._check_count("fmri", v.shape[0], self.images_of("fmri"))
        return out

    def _check_count(self, modality: str, n: int, images: Sequence[str]) -> None:
        if n != len(images):
            raise ValueError(
                f"BrainData: the {modality} responses are of {n} images but the image list has {len(images)}"
            )

    def images_of(self, modality: str) -> list[str]:
        """The images a modality's responses (and behaviour: ``images``) are of."""
        return self.fmri_images if modality == "fmri" and self.fmri_images is not None else self.images

    def subjects(self, modality: str) -> list[str]:
        """The subjects with data of ``modality``, sorted."""
        stores: dict[str, Mapping[str, Any]] = {
            "eeg": self.eeg,
            "fmri": self.fmri,
            "behaviour": self.behaviour,
        }
        return sorted(stores[modality])

    def rois(self) -> list[str]:
        """The fMRI ROI names in :func:`fastalign.data.roi_order`: V1, V2, V3, V4, LOC, FFA, PPA, HVC (those
        present), then any others in the first subject's order."""
        return list(next(iter(self.fmri.values()))) if self.fmri else []


def _by_subject(
    name: str, given: Mapping[Any, Any], convert: Callable[[Any, Any], Any], group: bool = False
) -> dict[str, Any]:
    """``given`` keyed by subject folder names (3, "3" and "sub-03" are one subject; "group" kept where
    ``group``), each value through ``convert(key, value)``; two keys of one subject are refused (one
    would silently replace the other)."""
    out: dict[str, Any] = {}
    first: dict[str, Any] = {}
    for key, value in given.items():
        name_of = key if group and key == "group" else subject_name(key, f"{name} key")
        if name_of in out:
            raise ValueError(
                f"BrainData: {name} has two entries for {name_of} (keys {first[name_of]!r} and {key!r}); "
                "give each subject once"
            )
        first[name_of] = key
        out[name_of] = convert(key, value)
    return out


def _finite(where: str, name: str, value: Any, ndim: int) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != ndim or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ValueError(
            f"{where}: {name} must be a {ndim}-d real array, got shape {arr.shape} ({arr.dtype})"
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"{where}: {name} has NaN or inf")
    return arr


def is_dissimilarity_matrix(arr: np.ndarray) -> bool:
    """Whether a square array is an RDM: symmetric with a zero diagonal, up to rounding (``1 -
    numpy.corrcoef(x)`` leaves 2e-16 on the diagonal). One rule for every square RDM a user gives."""
    return bool(np.allclose(arr, arr.T) and np.allclose(np.diag(arr), 0))


def _condensed(value: Any, n_images: int, name: str) -> np.ndarray:
    """A behavioural RDM as a condensed (n_pairs,) float64 vector; a square one must be symmetric with a
    zero diagonal."""
    arr = np.asarray(value, dtype=np.float64)
    pairs = n_images * (n_images - 1) // 2
    if not np.isfinite(arr).all():  # first: NaN also fails the symmetry test, whose message would mislead
        what = "NaN" if np.isnan(arr).any() else "inf"
        raise ValueError(
            f"BrainData: {name} has {what}; every pair of images needs a finite dissimilarity (a model RDM "
            "has no missing pairs to mask with it)"
        )
    if arr.shape == (n_images, n_images):
        if not is_dissimilarity_matrix(arr):
            raise ValueError(
                f"BrainData: {name} must be symmetric with a zero diagonal (a dissimilarity matrix)"
            )
        arr = arr[np.triu_indices(n_images, 1)]
    if arr.shape != (pairs,):
        raise ValueError(
            f"BrainData: {name} must be an RDM of the {n_images} images: ({n_images}, {n_images}) or "
            f"condensed ({pairs},), got shape {arr.shape}"
        )
    return arr


def _root(data: Any) -> str:
    if isinstance(data, SyntheticThings):
        return data.root
    if not isinstance(data, (str, os.PathLike)):
        raise TypeError(_checks.message(_FN, "data", "a dataset folder, SyntheticThings or BrainData", data))
    root = os.fspath(data)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{_FN}: data={root!r} is not a folder; expected one holding image_set/")
    return root


def _available(root: str, modality: str) -> list[str]:
    folder = os.path.join(root, _FOLDERS[modality])
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"{_FN}: modality {modality!r} needs {folder!r} (sub-XX/ folders), which is missing"
        )
    names = (
        n for n in os.listdir(folder) if _SUBJECT_DIR.match(n) and os.path.isdir(os.path.join(folder, n))
    )
    return sorted(subject_name(n) for n in names)


def _fmri_file(root: str, subject: str) -> str:
    base = os.path.join(root, _FOLDERS["fmri"], subject, "fmri_test")
    for ext in (".h5", ".hdf5", ".npy"):
        if os.path.isfile(base + ext):
            return base + ext
    raise FileNotFoundError(f"{_FN}: no fMRI test responses at {base}.h5 (or .hdf5, .npy)")


def load_brain(
    data: str | os.PathLike[str] | SyntheticThings,
    modality: Sequence[str] = ("eeg",),
    *,
    subjects: Sequence[int | str] | None = None,
    rois: Sequence[str] | None = None,
) -> BrainData:
    """The test-set responses of a dataset folder (see the module doc), repetitions averaged.

    Args:
        data: The dataset folder, or the SyntheticThings that wrote it.
        modality: "eeg" and/or "fmri".
        subjects: Subjects to load (numbers or "sub-XX"); None: every subject of each modality.
        rois: fMRI ROIs to keep (None: all that the files define; a file without ROIs gives one ROI
            "all" of every voxel). Only their voxels must be finite: a file may hold NaN elsewhere.

    Raises:
        FileNotFoundError: a missing folder or file.
        ValueError: a subject missing from the data, an unknown ROI, NaN or inf in a voxel of a kept ROI
            (naming the file, subject, ROI, voxels and stimulus rows), responses of another number of
            images than image_metadata.npy lists, subjects whose channels, times or ROIs differ.
    """
    root = _root(data)
    if not os.path.exists(os.path.join(root, "image_set")) and os.path.isfile(
        os.path.join(root, "image_metadata.npy")
    ):
        raise FileNotFoundError(
            f"{_FN}: data={root!r} is an image_set folder (it holds image_metadata.npy); expected the "
            f"dataset folder above it, {os.path.dirname(os.path.abspath(root))!r}"
        )
    meta = load_image_metadata(os.path.join(root, "image_set"))
    images = meta.paths("test")
    wanted = (
        None if subjects is None else [subject_name(s, "subjects[i]") for s in _seq("subjects", subjects)]
    )
    eeg: dict[str, np.ndarray] = {}
    fmri: dict[str, dict[str, np.ndarray]] = {}
    times = None
    ch_names = None
    for mod in modality:
        available = _available(root, mod)
        chosen = available if wanted is None else wanted
        missing = [s for s in chosen if s not in available]
        if missing or not chosen:
            raise ValueError(
                f"{_FN}: subject(s) {missing or chosen} missing from the data: "
                f"{os.path.join(root, _FOLDERS[mod])!r} holds {available}"
            )
        for s in chosen:
            number = int(s[4:])
            if mod == "eeg":
                r = _named(load_preprocessed_eeg, os.path.join(root, _FOLDERS["eeg"]), number, "test")
                if (times is not None and not np.array_equal(r.times, times)) or (
                    ch_names is not None and r.ch_names != ch_names
                ):
                    raise ValueError(f"{_FN}: {r.source!r} has other channels or sample times than sub-01's")
                times, ch_names = r.times, r.ch_names
                _check_n(r.data.shape[0], images, r.source)
                eeg[s] = r.data.mean(axis=1)
            else:
                f = _named(load_fmri, _fmri_file(root, s))
                _check_n(f.data.shape[0], images, f.source)
                f = _named(f.in_image_order, images)  # a file that names its images: in the set's order
                whole = not f.rois
                if whole:
                    f.rois = {"all": np.arange(f.data.shape[2])}
                names = list(f.rois) if rois is None else _seq("rois", rois)
                unknown = [r for r in names if r not in f.rois]
                if unknown:
                    raise ValueError(
                        f"{_FN}: rois names {unknown}, which {f.source!r} lacks; it has {list(f.rois)}"
                    )
                try:  # the kept ROIs' voxels must be finite; NaN elsewhere in the file is never read
                    f.check_finite(names)
                except ValueError as exc:
                    if whole:  # 'all' cannot be left out, and load_fmri(rois=) is not this caller's
                        found = str(exc).split("; the voxels of a used ROI")[0]
                        exc = ValueError(
                            f"{found}; the file defines no ROIs, so "
                            "every voxel is evaluated (ROI 'all'): define the ROIs to evaluate in the file "
                            "(an HDF5 group 'rois' or a dict key 'rois': name -> mask or voxel indices; in "
                            "BData, ROI_* metadata keys)"
                        )
                    raise ValueError(f"{_FN}: subject {s}: {exc}") from exc
                used = np.unique(np.concatenate([f.rois[r] for r in names]))
                mean = f.data[:, :, used].mean(axis=1)
                fmri[s] = {r: mean[:, np.searchsorted(used, f.rois[r])] for r in names}  # each ROI's order
    return BrainData(images, eeg, times, fmri, source=root)


def _named(load: Callable[..., Any], *args: Any) -> Any:
    """A loader's result; its ValueError / TypeError (which names the file) begins with the function that
    asked, as every error of evaluate does."""
    try:
        return load(*args)
    except (ValueError, TypeError) as exc:
        # the base class: a subclass may take other constructor arguments (json.JSONDecodeError)
        raise (TypeError if isinstance(exc, TypeError) else ValueError)(f"{_FN}: {exc}") from exc


def _seq(name: str, value: Any) -> list[Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(_checks.message(_FN, name, "a sequence", value))
    return list(value)


def _check_n(n: int, images: list[str], source: str) -> None:
    if n != len(images):
        raise ValueError(
            f"{_FN}: {source!r} holds responses to {n} test images but image_metadata.npy lists {len(images)}"
        )


def fmri_rdms(brain: BrainData, subjects: Sequence[str], rdm_method: str) -> torch.Tensor:
    """(n_subjects, n_rois, n_pairs) float64 RDMs of each subject's ROI responses."""
    per_roi = []
    for roi in brain.rois():
        stacked = torch.from_numpy(np.stack([brain.fmri[s][roi] for s in subjects]).astype(np.float64))
        try:
            per_roi.append(rdm(stacked, rdm_method))
        except ValueError as exc:
            raise ValueError(f"{_FN}: the fMRI RDM of ROI {roi!r}: {exc}") from exc
    return torch.stack(per_roi, dim=1)


def eeg_tensor(brain: BrainData, subjects: Sequence[str], time_index: np.ndarray) -> torch.Tensor:
    """(n_subjects, n_images, n_channels, n_times) float64 EEG at the selected time points."""
    return torch.from_numpy(np.stack([brain.eeg[s][..., time_index] for s in subjects]).astype(np.float64))
