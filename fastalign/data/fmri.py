"""Per-image fMRI responses: .npy / .h5 loading, ROIs by name, repetition averaging, PCA.

A response file holds (n_images, n_voxels) or (n_images, n_repetitions, n_voxels) responses, in image
order, optionally ROI definitions (a boolean mask over voxels or a list of voxel indices per name) and
the images' names:

- ``.npy``: the array itself, or an ``np.save``'d dict ``{"responses": array, "rois": {name: ...},
  "images": [name, ...]}``;
- ``.h5`` / ``.hdf5``: a dataset ``responses``, a group ``rois`` with one dataset per ROI and a dataset
  ``images`` of names;
- a BData ``.h5`` file (bdpy's format, in which the Kamitani lab's fMRI data sets are published, e.g.
  Shen et al.'s Deep Image Reconstruction, whose ROIs the ReAlnet-fMRI paper evaluates): a 2-D
  ``dataset`` of samples x columns and a ``metadata`` group whose ``key`` / ``value`` rows mark columns
  (``VoxelData``, ``ROI_V1``, ... with 1, a label column such as ``stimulus_name`` or ``image_index``).
  Its trials are grouped by their label into (images, repetitions, voxels), images in ascending label
  order, repetitions in file order; ``ROI_*`` columns become ROIs (``ROI_hV4`` is ``V4``), the label's
  value map (``vmap``) names the images. Read with h5py: bdpy itself is not a dependency.

When a file names its images, the loaders that pair responses with an image set (evaluate's
``load_brain``, align's data, :func:`fastalign.data.fmri_datasets`) match the names to the image files
(by file name without extension) and put the responses in the image set's order, refusing names that
do not match; a file without names must already be in that order.

ROI names follow the usual visual areas: V1, V2, V3, V4, LOC, FFA, PPA and HVC (higher visual cortex);
any other name in the file works too. ROIs are listed in that hierarchy, whatever order the file stores
them in (:func:`roi_order`).

Non-finite values. Real response files carry NaN in voxels outside the brain or the ROIs (a masked
volume, a whole-brain beta map), so a file is read whole, NaN and inf included, and only
the voxels an analysis uses must be finite, in every image and repetition: :meth:`FMRIResponses.select`
checks the selected ROIs' voxels, and every use of all voxels (:meth:`FMRIResponses.average`,
:meth:`FMRIResponses.check_finite`, :class:`ResponsePCA`, the datasets) checks them all. Like a masker
(nilearn's ``NiftiMasker``), what lies outside the used voxels is never read into a result; unlike
nilearn's ``ensure_finite``, a NaN inside them is an error, not a zero, since zero is not a response.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fastalign._checks import check_int
from fastalign.data._io import check_array, load_npy, require_file
from fastalign.data.responses import _check_random_state

ROI_NAMES = ("V1", "V2", "V3", "V4", "LOC", "FFA", "PPA", "HVC")
_RANK = {name: i for i, name in enumerate(ROI_NAMES)}


def roi_order(names: Iterable[str]) -> list[str]:
    """``names`` in the visual hierarchy: those of :data:`ROI_NAMES` in its order (V1, V2, V3, V4, LOC,
    FFA, PPA, HVC), then any others in the order given, each name once.

    Names match exactly, as ROI names do everywhere (``"v1"`` is another ROI than ``"V1"``). The order
    given is the file's for the other names: an HDF5 group lists its members by name unless it was created
    with ``track_order=True`` (then in creation order), an ``np.save``'d dict in its insertion order.
    """
    return sorted(dict.fromkeys(names), key=lambda name: _RANK.get(name, len(ROI_NAMES)))


def _few(items: Sequence[str], limit: int = 5) -> str:
    """The first ``limit`` of ``items``: "a, b" or "a, b, c, d, e, ..." (messages say how many)."""
    return ", ".join(items[:limit]) + (", ..." if len(items) > limit else "")


def _listed(values: np.ndarray, limit: int = 5) -> str:
    """The first ``limit`` ints of ``values``: "0, 3, 7" or "0, 3, 7, 9, 12, ..." (messages say how many)."""
    return _few([str(int(v)) for v in values[: limit + 1]], limit)


def _repeated(names: Sequence[str]) -> list[str]:
    """The names that occur more than once, sorted."""
    return sorted(n for n, c in Counter(names).items() if c > 1)


def _stem(path: str | os.PathLike[str]) -> str:
    return os.path.splitext(os.path.basename(os.fspath(path)))[0]


def _image_names(value: Any, n_images: int, source: str) -> list[str]:
    """``value`` as a list of ``n_images`` image names (str; bytes as UTF-8, as HDF5 stores them)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise ValueError(f"{source}: images must be a sequence of image names, got {type(value).__name__}")
    names = [_text(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    bad = [type(v).__name__ for v in names if not isinstance(v, str)]
    if bad:
        raise ValueError(f"{source}: images must be names (str), got a {bad[0]}")
    if len(names) != n_images:
        raise ValueError(f"{source}: {len(names)} image names for {n_images} rows of responses")
    repeated = _repeated(names)
    if repeated:
        raise ValueError(
            f"{source}: image names repeat ({', '.join(map(repr, repeated[:5]))}); expected one distinct "
            "name per image, to pair responses with images by name"
        )
    return names


def _text(v: Any) -> Any:
    return v.decode("utf-8") if isinstance(v, bytes) else v


def _values(values: np.ndarray, limit: int = 5) -> str:
    """The first ``limit`` label values, shortest exact-enough form: "2, 3, 1443537.022563, ..."."""
    return _few([format(v, ".15g") for v in values[: limit + 1].tolist()], limit)


def _roi_indices(value: Any, n_voxels: int, name: str, source: str) -> np.ndarray:
    arr = np.asarray(value).reshape(-1)
    if arr.dtype == bool:
        if arr.size != n_voxels:
            raise ValueError(
                f"{source}: ROI {name!r} mask has {arr.size} entries, expected {n_voxels} (one per voxel)"
            )
        return np.flatnonzero(arr)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"{source}: ROI {name!r} must be a boolean mask or integer indices, got dtype {arr.dtype}"
        )
    if n_voxels > 2 and arr.size == n_voxels and bool(np.isin(arr, (0, 1)).all()):
        # one 0/1 entry per voxel: a mask stored as integers (MATLAB's and many HDF5 writers' uint8), never
        # distinct indices of more than 2 voxels; read as indices it selected voxels 0 and 1, silently
        return np.flatnonzero(arr)
    if arr.size and (arr.min() < 0 or arr.max() >= n_voxels):
        raise ValueError(f"{source}: ROI {name!r} has voxel indices outside 0..{n_voxels - 1}")
    if np.unique(arr).size != arr.size:
        raise ValueError(
            f"{source}: ROI {name!r} repeats voxel indices; expected distinct indices or a boolean mask of "
            f"{n_voxels} entries (a 0/1 mask of another length?)"
        )
    return np.asarray(arr, dtype=np.int64)


@dataclass
class FMRIResponses:
    """fMRI responses of one subject and split.

    Attributes:
        data: (n_images, n_repetitions, n_voxels) responses (n_repetitions is 1 for averaged files). It
            may hold NaN or inf in voxels that no analysis uses (outside the brain or the ROIs):
            :meth:`select`, :meth:`average` and :meth:`check_finite` refuse them where they are used.
        rois: ROI name -> int64 voxel indices into the last axis, in :func:`roi_order`.
        source: the file (or "array") for error messages.
        images: The images' names, one per row of ``data`` (distinct), where the file gives them; None:
            the rows are in the order of the image set they are used with.
    """

    data: np.ndarray
    rois: dict[str, np.ndarray] = field(default_factory=dict)
    source: str = "array"
    images: list[str] | None = None

    def __post_init__(self) -> None:
        arr = check_array(self.data, "responses", self.source, ndim=(2, 3), finite=False)
        self.data = arr[:, None, :] if arr.ndim == 2 else arr
        n_vox = self.data.shape[2]
        rois = {str(k): _roi_indices(v, n_vox, str(k), self.source) for k, v in self.rois.items()}
        self.rois = {name: rois[name] for name in roi_order(rois)}
        if self.images is not None:
            self.images = _image_names(self.images, self.data.shape[0], self.source)

    def in_image_order(self, images: Sequence[str | os.PathLike[str]]) -> FMRIResponses:
        """The responses in the order of ``images`` (image files or names), matched to :attr:`images` by
        file name without extension (``n01443537_22563`` is ``.../n01443537_22563.JPEG``); itself where
        the responses name no images (their rows must then be in that order already) or are in that
        order.

        Raises:
            ValueError: the names of the responses and of ``images`` differ (naming a few of each side's
                unmatched names), or either side repeats a name.
        """
        if self.images is None:
            return self
        wanted = [_stem(p) for p in images]
        have = [_stem(n) for n in self.images]
        for side, names in (("the image set", wanted), (self.source, have)):
            repeated = _repeated(names)
            if repeated:
                raise ValueError(
                    f"{self.source}: {side} repeats image names {repeated[:5]} (matched without folder "
                    "and extension); expected distinct names to pair responses with images"
                )
        if wanted == have:
            return self
        missing, extra = sorted(set(wanted) - set(have)), sorted(set(have) - set(wanted))
        if missing or extra:
            raise ValueError(
                f"{self.source}: its {len(have)} images are not the image set's {len(wanted)}: "
                f"{len(missing)} of the image set's images are not in the file ({_few(missing)}), "
                f"{len(extra)} of the file's not in the image set ({_few(extra)}); names are matched by file "
                "name without extension"
            )
        pos = {n: i for i, n in enumerate(have)}
        idx = np.array([pos[n] for n in wanted])
        return FMRIResponses(self.data[idx], self.rois, self.source, [self.images[i] for i in idx])

    def select(self, rois: str | Sequence[str]) -> FMRIResponses:
        """The voxels of one ROI or the union of several (in ascending voxel order).

        Raises:
            KeyError: an ROI the responses do not define.
            ValueError: a selected ROI has NaN or inf in a voxel (see :meth:`check_finite`).
        """
        names = [rois] if isinstance(rois, str) else list(rois)
        missing = [n for n in names if n not in self.rois]
        if missing or not names:
            raise KeyError(f"{self.source}: no ROI named {missing or names}; it defines {list(self.rois)}")
        self.check_finite(names)
        idx = np.unique(np.concatenate([self.rois[n] for n in names]))
        remap = {n: np.flatnonzero(np.isin(idx, v)) for n, v in self.rois.items() if np.isin(v, idx).all()}
        return FMRIResponses(self.data[:, :, idx], remap, self.source, self.images)

    def check_finite(self, rois: str | Sequence[str] | None = None) -> None:
        """Refuses NaN and inf in the voxels of ``rois`` (None: every voxel), in any image or repetition.

        Raises:
            KeyError: an ROI the responses do not define.
            ValueError: naming the file, each ROI with such voxels (how many of its voxels and their
                indices), in how many and which stimulus rows (images) and, when every voxel is checked,
                how many such voxels lie outside every ROI.
        """
        names = None if rois is None else [rois] if isinstance(rois, str) else list(rois)
        missing = [n for n in names or () if n not in self.rois]
        if missing:
            raise KeyError(f"{self.source}: no ROI named {missing}; it defines {list(self.rois)}")
        if names == [] or not np.issubdtype(self.data.dtype, np.floating):  # nothing used, or ints
            return
        bad_voxel = np.zeros(self.data.shape[2], dtype=bool)
        used = slice(None) if names is None else np.unique(np.concatenate([self.rois[n] for n in names]))
        bad_voxel[used] = ~np.isfinite(self.data[:, :, used]).all(axis=(0, 1))
        if not bad_voxel.any():
            return
        bad = np.flatnonzero(bad_voxel)
        rows = np.flatnonzero(~np.isfinite(self.data[:, :, bad]).all(axis=(1, 2)))
        where = f"in {len(rows)} of {self.data.shape[0]} stimulus rows ({_listed(rows)})"
        parts = [
            f"ROI {name!r}: {int(bad_voxel[idx].sum())} of its {len(idx)} voxels "
            f"(indices {_listed(idx[bad_voxel[idx]])})"
            for name, idx in self.rois.items()
            if (names is None or name in names) and bad_voxel[idx].any()
        ]
        if names is not None:
            raise ValueError(
                f"{self.source}: NaN or inf in {'; '.join(parts)}, {where}; the voxels of a used ROI must be "
                "finite in every image and repetition: leave the ROI out, or give it without those voxels "
                "(load_fmri(..., rois={name: mask or indices}))"
            )
        inside = np.zeros_like(bad_voxel)
        for idx in self.rois.values():
            inside[idx] = True
        outside = int((bad_voxel & ~inside).sum())
        if outside and self.rois:
            parts.append(f"{outside} outside every ROI")
        detail = f" ({'; '.join(parts)})" if parts else ""
        raise ValueError(
            f"{self.source}: NaN or inf in {len(bad)} of {self.data.shape[2]} voxels{detail}, "
            f"{where}; all voxels are used here, so each must be finite in every image and repetition: "
            "select ROIs whose voxels are finite (FMRIResponses.select, or rois=)"
        )

    def average(self, repetitions: Sequence[int] | None = None) -> np.ndarray:
        """(n_images, n_voxels): the mean over all (or the given) repetitions.

        Raises:
            ValueError: a voxel holds NaN or inf (:meth:`check_finite`); :meth:`select` ROIs first.
        """
        self.check_finite()
        data = self.data if repetitions is None else self.data[:, list(repetitions)]
        return np.asarray(data.mean(axis=1))


def load_fmri(
    path: str | os.PathLike[str],
    *,
    key: str = "responses",
    rois: Mapping[str, Any] | None = None,
    label: str | None = None,
) -> FMRIResponses:
    """Loads per-image fMRI responses from ``.npy`` or ``.h5`` (this module's layouts, or BData).

    A ``.npy`` file is read without running code (:func:`fastalign.data._io.load_npy`): a plain array
    without pickling, a dict through an unpickler that builds only arrays, dicts, lists, strings and
    numbers. An ``.h5`` file without a dataset ``key`` but with BData's ``dataset`` and ``metadata`` is
    read as BData (the module doc): its trials grouped by image.

    Args:
        path: The file.
        key: Name of the responses array (dict key / HDF5 dataset).
        rois: Extra ROIs (name -> boolean mask or voxel indices) that override those in the file.
        label: BData only: the metadata key of the column that names each trial's image (default: the
            first of :data:`BDATA_LABELS` the file has).

    Raises:
        FileNotFoundError: no such file.
        TypeError: ``rois`` is not a mapping.
        ValueError: wrong extension, damaged file, missing key, responses not 2-d/3-d, ROIs not a dict /
            group of datasets, bad ROI, image names not one per image; BData: no voxel columns, no or an
            unknown label column, images with unequal repetition counts; ``label`` for a file that is
            not BData. NaN and inf are read; the voxels a use selects must be finite
            (:meth:`FMRIResponses.check_finite`).
    """
    if rois is not None and not isinstance(rois, Mapping):
        raise TypeError(
            "load_fmri: rois must be a mapping of ROI name -> boolean mask or voxel indices, got "
            f"{type(rois).__name__}"
        )
    if label is not None and not isinstance(label, str):
        raise TypeError(f"load_fmri: label must be a metadata key (str) or None, got {type(label).__name__}")
    file = require_file(path, "fMRI responses")
    ext = os.path.splitext(file)[1].lower()
    bdata = False
    if ext == ".npy":
        data, file_rois, images = _read_npy(file, key)
    elif ext in (".h5", ".hdf5"):
        data, file_rois, images, bdata = _read_h5(file, key, label)
    else:
        raise ValueError(f"{file!r}: fMRI responses must be a .npy or .h5/.hdf5 file, got {ext!r}")
    if label is not None and not bdata:
        raise ValueError(f"load_fmri: label={label!r} applies to BData files only; {file!r} is not one")
    return FMRIResponses(data, {**file_rois, **dict(rois or {})}, file, images)


def _read_npy(file: str, key: str) -> tuple[Any, dict[str, Any], Any]:
    obj = load_npy(file, "fMRI responses", objects=True)
    if isinstance(obj, np.ndarray):
        return obj, {}, None
    if not isinstance(obj, dict) or key not in obj:
        keys = f" with keys {sorted(map(str, obj))}" if isinstance(obj, dict) else ""
        raise ValueError(
            f"{file!r}: expected an array or a dict with key {key!r}, got {type(obj).__name__}{keys}"
        )
    file_rois = obj.get("rois") or {}
    if not isinstance(file_rois, dict):
        raise ValueError(
            f"{file!r}: 'rois' must be a dict of ROI name -> boolean mask or voxel indices, got "
            f"{type(file_rois).__name__}"
        )
    return obj[key], file_rois, obj.get("images")


def _read_h5(file: str, key: str, label: str | None) -> tuple[Any, dict[str, Any], Any, bool]:
    """Responses, ROIs, image names (or None) and whether the file is BData."""
    import h5py

    try:
        with h5py.File(file, "r") as f:
            if key not in f and _is_bdata(f):
                return (*_read_bdata(file, f, label), True)
            if not isinstance(f.get(key), h5py.Dataset):
                found = f"a {type(f[key]).__name__.lower()}" if key in f else "none"
                raise ValueError(f"{file!r}: expected a dataset {key!r}, found {found}; it has {sorted(f)}")
            data = f[key][()]
            group = f.get("rois", {})
            if not isinstance(group, (h5py.Group, dict)):
                raise ValueError(
                    f"{file!r}: 'rois' must be a group with one dataset (mask or indices) per ROI, "
                    f"found a {type(group).__name__.lower()}"
                )
            nested = [name for name, item in group.items() if not isinstance(item, h5py.Dataset)]
            if nested:
                raise ValueError(
                    f"{file!r}: rois/{nested[0]} is a {type(group[nested[0]]).__name__.lower()}; expected "
                    "one dataset (mask or indices) per ROI"
                )
            images = f.get("images")
            if images is not None and not isinstance(images, h5py.Dataset):
                raise ValueError(f"{file!r}: 'images' must be a dataset of image names, found a group")
            names = None if images is None else images[()]
            return data, {name: ds[()] for name, ds in group.items()}, names, False
    except OSError as err:  # h5py's messages do not name the file
        raise ValueError(f"fMRI responses: {file!r} is not a readable HDF5 file ({err})") from err


#: BData label columns tried in this order when :func:`load_fmri` is given no ``label``: the Kamitani lab's
#: files name each trial's image by ``stimulus_name`` (with a value map of names), ``image_index`` or, in
#: older files, ``Label``.
BDATA_LABELS = ("stimulus_name", "image_index", "Label")


def _is_bdata(f: Any) -> bool:
    """Whether an open HDF5 file has BData's datasets (bdpy also reads the older names dataSet / metaData)."""
    return ("dataset" in f or "dataSet" in f) and ("metadata" in f or "metaData" in f)


def _read_bdata(file: str, f: Any, label: str | None) -> tuple[np.ndarray, dict[str, Any], Any]:
    """(images, repetitions, voxels) responses, ROIs and image names (or None) of an open BData file."""
    import h5py

    ds = f["dataset" if "dataset" in f else "dataSet"]
    md = f["metadata" if "metadata" in f else "metaData"]
    if not isinstance(ds, h5py.Dataset) or ds.ndim != 2:
        raise ValueError(f"{file!r}: BData 'dataset' must be a 2-D dataset of samples x columns")
    parts = ("key", "value")
    if not isinstance(md, h5py.Group) or not all(isinstance(md.get(k), h5py.Dataset) for k in parts):
        raise ValueError(f"{file!r}: BData 'metadata' must be a group with datasets 'key' and 'value'")
    keys = [str(_text(k)) for k in np.asarray(md["key"][()]).reshape(-1).tolist()]
    values = np.asarray(md["value"][()], dtype=np.float64)
    if values.shape != (len(keys), ds.shape[1]):
        raise ValueError(
            f"{file!r}: BData metadata 'value' is {values.shape}, expected ({len(keys)} keys, "
            f"{ds.shape[1]} columns of 'dataset')"
        )
    marked: dict[str, np.ndarray] = {}  # in the file's key order (roi_order keeps it for other ROIs)
    for i, k in enumerate(keys):
        marked.setdefault(k, values[i] == 1)  # a key given twice: its first row
    if "VoxelData" not in marked or not marked["VoxelData"].any():
        raise ValueError(
            f"{file!r}: BData file without voxel columns (metadata key 'VoxelData' = 1); it has keys {keys}"
        )
    voxels = np.flatnonzero(marked["VoxelData"])
    if label is None:
        label = next((k for k in BDATA_LABELS if k in marked), None)
        if label is None:
            raise ValueError(
                f"{file!r}: BData file without a label column ({', '.join(BDATA_LABELS)}); name the "
                f"column that gives each trial's image with load_fmri(label=...), or store it under one "
                f"of those keys, which evaluate and align look for (its metadata keys: {keys})"
            )
    elif label not in marked:
        raise ValueError(f"{file!r}: label={label!r} is not a metadata key of this BData file; it has {keys}")
    columns = np.flatnonzero(marked[label])
    if len(columns) != 1 or marked["VoxelData"][columns[0]]:
        raise ValueError(
            f"{file!r}: BData label {label!r} marks {len(columns)} columns"
            f"{' (a voxel)' if len(columns) == 1 else ''}; expected one column of per-trial labels"
        )
    full = np.asarray(ds[()])  # read once: the label column and the voxels come from it
    labels = full[:, int(columns[0])].astype(np.float64)
    trials = np.flatnonzero(~np.isnan(labels))  # samples without a label (rest, fixation) are no trials
    if not len(trials):
        raise ValueError(f"{file!r}: BData label column {label!r} holds no labels (all NaN)")
    if np.isinf(labels[trials]).any():
        rows = trials[np.isinf(labels[trials])]
        raise ValueError(
            f"{file!r}: BData label column {label!r} holds inf in sample row{'s' if len(rows) > 1 else ''} "
            f"{_listed(rows)}; expected a finite label per trial, or NaN for a sample that is no trial"
        )
    values_of, counts = np.unique(labels[trials], return_counts=True)
    # names before counts: samples that are no trials but coded 0 (rest) have a value without a name, and
    # often another count; the name check says what they are
    images = _bdata_names(file, f, label, values_of, labels, trials, ds.dtype)
    if counts.min() != counts.max():
        kinds, n_images = np.unique(counts, return_counts=True)
        reps = ", ".join(
            f"{m} image{'s' if m > 1 else ''} with {c} trials ({label} {_values(values_of[counts == c])})"
            for m, c in sorted(zip(n_images.tolist(), kinds.tolist(), strict=True), reverse=True)
        )
        raise ValueError(
            f"{file!r}: BData images have unequal repetition counts: {reps}; expected the same number of "
            f"trials for every image{_rounding_hint(ds.dtype, values_of)}"
        )
    rows = trials[np.argsort(labels[trials], kind="stable")]  # by image, each image's trials in file order
    data = full[np.ix_(rows, voxels)].reshape(len(values_of), int(counts[0]), len(voxels))
    roi_keys = [k for k in marked if k.startswith("ROI_") and marked[k][voxels].any()]
    rois = {
        ("V4" if k == "ROI_hV4" and "ROI_V4" not in marked else k[4:]): marked[k][voxels] for k in roi_keys
    }
    return data, rois, images


def _rounding_hint(dtype: np.dtype, values: np.ndarray) -> str:
    """For a label error in a dataset of less than float64: how far apart its values are near the largest
    label. GOD-style IDs (synset + image number / 10^6: 1443537.022563) need float64: float32 rounds them to
    values 0.125 apart near 10^6, merging a synset's images into one of many trials."""
    if dtype.kind != "f" or dtype.itemsize >= 8:
        return ""
    top = np.abs(values).max().astype(dtype)
    return (
        f"; the dataset is {dtype}, whose values near {float(top):g} are {float(np.spacing(top)):g} apart: "
        "labels closer than that (image IDs with a fraction) merge into one image. Store it as float64"
    )


def _bdata_names(
    file: str,
    f: Any,
    label: str,
    values_of: np.ndarray,
    labels: np.ndarray,
    trials: np.ndarray,
    dtype: np.dtype,
) -> list[str] | None:
    """The image name of each label value (``values_of``, ascending) from the BData file's value map of
    ``label``, or None without one; refuses a value without a name (naming its sample rows, and what a
    ``dtype`` below float64 does to labels) and two keys that name one value differently."""
    import h5py

    maps = f.get("vmap")
    vmap = maps.get(label) if isinstance(maps, h5py.Group) else None
    if not isinstance(vmap, h5py.Group):
        return None
    names: dict[float, str] = {}
    keys_of: dict[float, str] = {}  # the key that named each value
    for k, v in vmap.items():
        if not isinstance(v, h5py.Dataset):
            continue
        try:
            value = float(k)
        except ValueError:
            raise ValueError(
                f"{file!r}: BData value map vmap/{label} has a key that is no number: {k!r}; expected the "
                "label values as keys (bdpy writes str(value): '1', '1443537.022563')"
            ) from None
        name = v[()]
        if isinstance(name, np.ndarray):  # a one-element array, as MATLAB and some writers store strings
            if name.size != 1:
                raise ValueError(f"{file!r}: BData vmap/{label}/{k} is not one name: {name}")
            name = name.reshape(-1)[0]
        text = str(_text(name.item() if isinstance(name, np.generic) else name))
        if value in names and names[value] != text:  # '1' and '1.0': one label value, two names
            raise ValueError(
                f"{file!r}: BData value map vmap/{label} names label value {value:g} twice: "
                f"{keys_of[value]!r} -> {names[value]!r} and {k!r} -> {text!r}; expected one name per value"
            )
        names[value], keys_of[value] = text, k
    unnamed = [v for v in values_of.tolist() if v not in names]
    if unnamed:
        rows = trials[np.isin(labels[trials], unnamed)]
        where = f"sample row{'s' if len(rows) > 1 else ''} {_listed(rows)}"
        raise ValueError(
            f"{file!r}: BData value map of {label!r} names no image for label values {unnamed[:5]}"
            f"{' ...' if len(unnamed) > 5 else ''} ({where}); "
            "expected a name for every trial's value. Samples that are no trials (rest, fixation) need the "
            f"label NaN{_rounding_hint(dtype, values_of)}"
        )
    return [names[v] for v in values_of.tolist()]


class ResponsePCA:
    """PCA to ``n_components`` fitted on training responses only (scikit-learn), applied to any split.

    Fitted on the repetition-averaged training responses; transforming repetitions one by one is the
    same projection, so averaging before or after it gives the same result.
    """

    def __init__(self, n_components: int, seed: int = 0) -> None:
        self.n_components = check_int("ResponsePCA", "n_components", n_components, minimum=1)
        self.seed = _check_random_state("ResponsePCA", seed)
        self._pca: Any = None

    def fit(self, train: FMRIResponses | np.ndarray) -> ResponsePCA:
        """Fits on (n_images, n_voxels) averaged training responses (an FMRIResponses is averaged)."""
        from sklearn.decomposition import PCA

        x = (
            train.average()
            if isinstance(train, FMRIResponses)
            else check_array(train, "train", "ResponsePCA.fit", ndim=2)
        )
        if self.n_components > min(x.shape):
            raise ValueError(
                f"ResponsePCA: n_components={self.n_components} exceeds min(n_images, n_voxels) of {x.shape}"
            )
        self._pca = PCA(self.n_components, random_state=self.seed).fit(x)
        return self

    def transform(self, responses: FMRIResponses) -> FMRIResponses:
        """Projects every repetition: (n, r, v) -> (n, r, n_components); ROIs no longer apply."""
        if self._pca is None:
            raise RuntimeError("ResponsePCA: call fit() on the training responses first")
        n, r, v = responses.data.shape
        if v != self._pca.n_features_in_:
            raise ValueError(
                f"{responses.source}: {v} voxels, but the PCA was fitted on {self._pca.n_features_in_}"
            )
        responses.check_finite()
        out = self._pca.transform(responses.data.reshape(n * r, v)).reshape(n, r, -1)
        return FMRIResponses(out, {}, responses.source + f" (PCA {self.n_components})", responses.images)

    @property
    def explained_variance_ratio(self) -> np.ndarray:
        """Fraction of the training variance each component explains."""
        if self._pca is None:
            raise RuntimeError("ResponsePCA: not fitted")
        return np.asarray(self._pca.explained_variance_ratio_)
