"""fMRI loading (.npy array, .npy dict, .h5), ROIs by name or mask, averaging, PCA fitted on training."""

from __future__ import annotations

import os
import re

import h5py
import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from fastalign.data import (
    ROI_NAMES,
    BrainImageDataset,
    FMRIResponses,
    ResponsePCA,
    fmri_datasets,
    load_fmri,
    roi_order,
)
from fastalign.data._io import save_npy


def test_formats_and_rois(tmp_path: os.PathLike) -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(size=(6, 2, 12))
    rois = {"V1": np.arange(0, 4), "FFA": np.r_[False].repeat(12)}
    rois["FFA"][[9, 10]] = True
    np.save(os.path.join(tmp_path, "plain.npy"), data[:, 0])
    save_npy(os.path.join(tmp_path, "dict.npy"), {"responses": data, "rois": rois})
    with h5py.File(os.path.join(tmp_path, "resp.h5"), "w") as f:
        f["betas"] = data
        f.create_group("rois")["V1"] = np.arange(0, 4)
    plain = load_fmri(os.path.join(tmp_path, "plain.npy"))
    assert plain.data.shape == (6, 1, 12) and plain.rois == {}
    d = load_fmri(os.path.join(tmp_path, "dict.npy"))
    h = load_fmri(os.path.join(tmp_path, "resp.h5"), key="betas", rois={"FFA": [9, 10]})
    np.testing.assert_array_equal(d.data, h.data)
    assert d.rois["FFA"].tolist() == [9, 10] == h.rois["FFA"].tolist()
    both = d.select(["FFA", "V1"])
    np.testing.assert_array_equal(both.data, data[:, :, [0, 1, 2, 3, 9, 10]])
    assert both.rois["FFA"].tolist() == [4, 5]
    np.testing.assert_allclose(d.average(), data.mean(axis=1))
    np.testing.assert_allclose(d.average([1]), data[:, 1])


def test_pca_is_fitted_on_training_only() -> None:
    rng = np.random.default_rng(1)
    train = FMRIResponses(rng.normal(size=(20, 3, 15)))
    test = FMRIResponses(rng.normal(size=(7, 3, 15)) * 5)
    pca = ResponsePCA(4).fit(train)
    ref = PCA(4, random_state=0).fit(train.average())
    got = pca.transform(test)
    assert got.data.shape == (7, 3, 4)
    np.testing.assert_allclose(got.average(), ref.transform(test.average()), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(pca.explained_variance_ratio, ref.explained_variance_ratio_, rtol=1e-9)
    tr_ds, te_ds = fmri_datasets(train, test, pca_components=4, normalize="channel")
    assert te_ds.norm_stats is tr_ds.norm_stats and tr_ds.response_shape == (4,)
    with pytest.raises(ValueError, match="exceeds"):
        ResponsePCA(30).fit(train)
    with pytest.raises(RuntimeError, match="fit"):
        ResponsePCA(2).transform(test)


def test_bad_fmri_input(tmp_path: os.PathLike) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing.h5"):
        load_fmri(os.path.join(tmp_path, "missing.h5"))
    bad = os.path.join(tmp_path, "resp.txt")
    open(bad, "w").close()
    with pytest.raises(ValueError, match=r"\.npy or \.h5"):
        load_fmri(bad)
    nan = np.ones((3, 4))
    nan[1, 2] = np.nan
    np.save(os.path.join(tmp_path, "nan.npy"), nan)
    with pytest.raises(ValueError, match=r"nan.npy: NaN or inf in 1 of 4 voxels"):
        load_fmri(os.path.join(tmp_path, "nan.npy")).average()  # read whole; refused where it is used
    save_npy(os.path.join(tmp_path, "nokey.npy"), {"betas": np.ones((3, 4))})
    with pytest.raises(ValueError, match=r"nokey.npy.*'responses'"):
        load_fmri(os.path.join(tmp_path, "nokey.npy"))
    with pytest.raises(ValueError, match=r"outside 0..3"):
        FMRIResponses(np.ones((3, 4)), {"V2": [1, 4]})
    with pytest.raises(ValueError, match="mask has 3 entries, expected 4"):
        FMRIResponses(np.ones((3, 4)), {"V2": np.ones(3, bool)})
    with pytest.raises(KeyError, match="no ROI named \\['LOC'\\]"):
        FMRIResponses(np.ones((3, 4)), {"V2": [1]}).select("LOC")
    with pytest.raises(ValueError, match="5 voxels but"):
        fmri_datasets(FMRIResponses(np.ones((3, 4))), FMRIResponses(np.ones((3, 5))))


def test_damaged_fmri_files_name_the_file(tmp_path: os.PathLike) -> None:
    h5 = os.path.join(tmp_path, "resp.h5")
    with h5py.File(h5, "w") as f:
        f["responses"] = np.ones((50, 60))
    with open(h5, "rb") as f:
        good = f.read()
    for damaged in (b"garbage" * 20, good[: len(good) // 2]):
        with open(h5, "wb") as f:
            f.write(damaged)
        with pytest.raises(ValueError, match=r"fMRI responses: '.*resp.h5' is not a readable HDF5 file \("):
            load_fmri(h5)
    npy = os.path.join(tmp_path, "resp.npy")
    np.save(npy, np.ones((50, 60)))
    with open(npy, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(
        ValueError, match=r"resp.npy' is truncated: it holds 872 bytes of data, expected 24000"
    ):
        load_fmri(npy)


def test_rois_of_the_wrong_kind(tmp_path: os.PathLike) -> None:
    h5 = os.path.join(tmp_path, "resp.h5")
    for make, found in (
        (lambda f: f.create_dataset("rois", data=np.arange(3)), "'rois' must be a group .* found a dataset"),
        (lambda f: f.create_group("rois").create_group("V1"), "rois/V1 is a group; expected one dataset"),
        (lambda f: f.create_group("responses2"), "expected a dataset 'responses2', found a group"),
    ):
        with h5py.File(h5, "w") as f:
            f["responses"] = np.ones((3, 4))
            make(f)
        with pytest.raises(ValueError, match=rf"resp.h5': {found}"):
            load_fmri(h5, key="responses2" if "responses2" in found else "responses")
    npy = os.path.join(tmp_path, "resp.npy")
    save_npy(npy, {"responses": np.ones((3, 4)), "rois": [np.arange(2)]})
    with pytest.raises(ValueError, match=r"resp.npy': 'rois' must be a dict of ROI name -> .*, got list"):
        load_fmri(npy)
    save_npy(npy, np.ones((3, 4)))
    with pytest.raises(TypeError, match=r"load_fmri: rois must be a mapping of ROI name -> .*, got list"):
        load_fmri(npy, rois=["V1"])  # type: ignore[arg-type]


def test_pca_arguments() -> None:
    """n_components and seed are ints (numpy ints too, not bools) in range, named when they are not."""
    train = FMRIResponses(np.random.default_rng(0).normal(size=(6, 2, 5)))
    ints = ResponsePCA(np.int64(2), seed=np.int32(1)).fit(train).transform(train)
    np.testing.assert_array_equal(ints.data, ResponsePCA(2, seed=1).fit(train).transform(train).data)
    assert type(ResponsePCA(np.int64(2)).n_components) is int
    for n, exc in ((True, TypeError), (2.0, TypeError), ("2", TypeError), (0, ValueError)):
        with pytest.raises(exc, match="ResponsePCA: n_components must be an int >= 1"):
            ResponsePCA(n)  # type: ignore[arg-type]
    for seed, exc in ((-1, ValueError), (2**32, ValueError), (0.5, TypeError)):
        with pytest.raises(exc, match="ResponsePCA: seed must be an int"):
            ResponsePCA(2, seed=seed)  # type: ignore[arg-type]
    assert fmri_datasets(train, train, pca_components=np.int64(3))[0].response_shape == (3,)


def test_integer_masks_and_repeated_indices(tmp_path: os.PathLike) -> None:
    """A 0/1 mask stored as integers (MATLAB, many HDF5 writers) selects its voxels; it was read as
    voxel indices (voxels 0 and 1). Repeated indices are refused."""
    h5 = os.path.join(tmp_path, "roi.h5")
    mask = np.zeros(10, bool)
    mask[[2, 5, 7, 8]] = True
    data = np.random.default_rng(0).random((6, 2, 10)).astype("f4")
    for dtype in (np.uint8, np.int32, np.int64):
        with h5py.File(h5, "w") as f:
            f["responses"] = data
            f.create_group("rois")["V1"] = mask.astype(dtype)
        r = load_fmri(h5)
        np.testing.assert_array_equal(r.rois["V1"], [2, 5, 7, 8])
        np.testing.assert_array_equal(r.select("V1").data, data[..., [2, 5, 7, 8]])
    with pytest.raises(ValueError, match=r"ROI 'V1' repeats voxel indices; expected distinct indices"):
        FMRIResponses(data, {"V1": np.array([3, 4, 3])})
    np.testing.assert_array_equal(FMRIResponses(data, {"V1": np.array([0, 1])}).rois["V1"], [0, 1])  # indices


def _masked_file(
    path: str, data: np.ndarray, masks: dict[str, np.ndarray], *, track_order: bool = False
) -> None:
    """An .h5 response file as real data come: float32 betas with NaN outside the brain, one uint8 mask per
    ROI (MATLAB's and many HDF5 writers' masks) in group ``rois``, listed by name unless ``track_order``."""
    with h5py.File(path, "w") as f:
        f["responses"] = data.astype(np.float32)
        group = f.create_group("rois", track_order=track_order)
        for name, mask in masks.items():
            group[name] = mask.astype(np.uint8)


def _nan_outside_rois(n_images: int = 5, n_reps: int = 2) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Responses of 12 voxels: V1 = 0..2, V2 = 3..5, LOC = 6..7; voxels 8..11 lie outside every ROI and
    are NaN in every image (outside the brain), voxel 9 also inf in one."""
    data = np.random.default_rng(0).normal(size=(n_images, n_reps, 12))
    data[:, :, 8:] = np.nan
    data[1, 0, 9] = np.inf
    rois = {"V1": [0, 1, 2], "V2": [3, 4, 5], "LOC": [6, 7]}
    return data, {name: np.isin(np.arange(12), idx) for name, idx in rois.items()}


def test_nan_outside_the_used_rois_is_read_and_never_used(tmp_path: os.PathLike) -> None:
    """Real beta files carry NaN outside the brain or the ROIs: such a file loads, the ROIs' voxels are
    selected and used as they are, and every use of all voxels refuses them, saying where they are. It
    was refused as a whole."""
    data, masks = _nan_outside_rois()
    h5 = os.path.join(tmp_path, "sub-01", "fmri_test.h5")
    os.makedirs(os.path.dirname(h5))
    _masked_file(h5, data, masks)
    r = load_fmri(h5)
    v1v2 = r.select(["V1", "V2"])
    np.testing.assert_array_equal(v1v2.data, data[:, :, :6].astype(np.float32))
    assert list(v1v2.rois) == ["V1", "V2"] and np.isfinite(v1v2.average()).all()
    r.check_finite(["V1", "LOC"])
    r.check_finite("V2")
    everything = (
        rf"{re.escape(h5)}: NaN or inf in 4 of 12 voxels \(4 outside every ROI\), in 5 of 5 stimulus rows "
        r"\(0, 1, 2, 3, 4\); all voxels are used here, so each must be finite in every image and repetition: "
        r"select ROIs whose voxels are finite"
    )
    with pytest.raises(ValueError, match=everything):
        r.check_finite()
    with pytest.raises(ValueError, match=everything):
        r.average()
    with pytest.raises(ValueError, match=everything):
        ResponsePCA(2).fit(r)
    with pytest.raises(ValueError, match=everything):
        BrainImageDataset(r)
    with pytest.raises(ValueError, match=everything):
        fmri_datasets(h5, h5)
    with pytest.raises(
        ValueError, match=rf"{re.escape(h5)}: NaN or inf in 4 of 6 voxels, in 5 of 5 stimulus rows"
    ):
        ResponsePCA(2).fit(v1v2).transform(FMRIResponses(r.data[:, :, 6:], source=h5))
    tr, te = fmri_datasets(h5, h5, rois=["V1", "LOC"], pca_components=2)
    assert tr.response_shape == (2,) and torch.isfinite(te.responses()).all()
    with pytest.raises(KeyError, match=r"no ROI named \['FFA'\]; it defines \['V1', 'V2', 'LOC'\]"):
        r.check_finite(["FFA"])


def test_nan_inside_a_used_roi_is_refused_naming_the_roi_voxels_and_rows(tmp_path: os.PathLike) -> None:
    """NaN in a voxel of a selected ROI is an error naming the file, the ROI, how many of its voxels and
    which, and the stimulus rows; the other ROIs stay usable. The same for an np.save'd dict."""
    data, masks = _nan_outside_rois(n_images=8)
    data[[2, 6], 1, 4] = np.nan  # V2's second voxel in two images' second repetition
    data[3, 0, 7] = np.inf  # LOC's last voxel
    h5, npy = os.path.join(tmp_path, "betas.h5"), os.path.join(tmp_path, "betas.npy")
    _masked_file(h5, data, masks)
    save_npy(npy, {"responses": data, "rois": {k: np.flatnonzero(v) for k, v in masks.items()}})
    for path in (h5, npy):
        r = load_fmri(path)
        with pytest.raises(ValueError, match=(
            rf"^{re.escape(path)}: NaN or inf in ROI 'V2': 1 of its 3 voxels \(indices 4\), "
            r"in 2 of 8 stimulus rows \(2, 6\); the voxels of a used ROI must be finite in every image and "
            r"repetition: leave the ROI out, or give it without those voxels \(load_fmri\(..., rois="
        )):  # fmt: skip
            r.select(["V1", "V2"])
        with pytest.raises(ValueError, match=(
            r"NaN or inf in ROI 'V2': 1 of its 3 voxels \(indices 4\); ROI 'LOC': 1 of its 2 voxels "
            r"\(indices 7\), in 3 of 8 stimulus rows \(2, 3, 6\)"
        )):  # fmt: skip
            r.check_finite(["LOC", "V2", "V1"])
        assert np.isfinite(r.select("V1").average()).all()
        without = load_fmri(path, rois={"V2": [3, 5]})  # the ROI without its NaN voxel
        np.testing.assert_array_equal(without.select("V2").data, r.data[:, :, [3, 5]])
    many = FMRIResponses(np.full((9, 1, 8), np.nan), {"A": np.arange(8)}, "many.npy")
    with pytest.raises(ValueError, match=r"'A': 8 of its 8 voxels \(indices 0, 1, 2, 3, 4, ...\), in 9 of 9 "
                       r"stimulus rows \(0, 1, 2, 3, 4, ...\)"):  # fmt: skip
        many.select("A")


def test_rois_are_listed_in_the_visual_hierarchy(tmp_path: os.PathLike) -> None:
    """h5py lists a group's members by name (FFA, HVC, LOC, PPA, V1, ...): the ROIs come in the hierarchy
    V1, V2, V3, V4, LOC, FFA, PPA, HVC, then any others in the file's order (by name, in creation order
    for a group that tracks it, a dict's insertion order), names matched exactly."""
    data = np.random.default_rng(0).normal(size=(4, 1, 20))
    written = ["hV4", "HVC", "FFA", "V3A", "PPA", "LOC", "V4", "v1", "V3", "V2", "V1", "EBA"]
    masks = {name: np.isin(np.arange(20), [i, i + 1]) for i, name in enumerate(written)}
    h5 = os.path.join(tmp_path, "r.h5")
    _masked_file(h5, data, masks)
    hierarchy = ["V1", "V2", "V3", "V4", "LOC", "FFA", "PPA", "HVC"]
    assert list(load_fmri(h5).rois) == [*hierarchy, "EBA", "V3A", "hV4", "v1"]
    _masked_file(h5, data, masks, track_order=True)
    assert list(load_fmri(h5).rois) == [*hierarchy, "hV4", "V3A", "v1", "EBA"]  # creation order
    npy = os.path.join(tmp_path, "r.npy")
    save_npy(npy, {"responses": data, "rois": masks})
    assert list(load_fmri(npy).rois) == [*hierarchy, "hV4", "V3A", "v1", "EBA"]
    others = ["hV4", "V3A", "v1", "EBA"]  # in creation order
    assert list(load_fmri(npy, rois={"MT": [0], "V2": [5]}).rois) == [*hierarchy, *others, "MT"]
    assert list(FMRIResponses(data, {"Z": [0], "HVC": [1], "V1": [2]}).rois) == ["V1", "HVC", "Z"]
    assert list(load_fmri(h5).select(["HVC", "V1"]).rois) == ["V1", "HVC"]
    assert roi_order(["b", "PPA", "a", "V2", "b"]) == ["V2", "PPA", "b", "a"]
    assert tuple(hierarchy) == ROI_NAMES
