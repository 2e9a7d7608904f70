"""fMRI in BData (bdpy's HDF5 layout, in which the Kamitani lab's fMRI data sets are published): trials
grouped by image, ROI_* columns as ROIs, the label's value map as image names, and responses that name
their images put in an image set's order by every loader that pairs them with images."""

from __future__ import annotations

import os
import re

import h5py
import numpy as np
import pytest
from published_formats import write_bdata  # tests/published_formats.py

from fastalign.data import FMRIResponses, fmri_datasets, load_fmri

NAMES = ["n01443537_22563", "n01621127_19020", "n01677366_18182", "n01695060_8780"]


def _design(seed: int = 0, n_images: int = 4, reps: int = 3, voxels: int = 10):
    """Trials in a shuffled presentation order with rest rows (no label) among them, and the expected
    (images, repetitions, voxels) array: images in label order, each image's trials in file order."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(1.0, n_images + 1), reps)
    rng.shuffle(labels)
    trials = rng.normal(size=(len(labels), voxels))
    rest = rng.normal(size=(2, voxels))
    all_trials = np.vstack([rest[:1], trials[:5], rest[1:], trials[5:]])
    all_labels = np.concatenate([[np.nan], labels[:5], [np.nan], labels[5:]])
    expected = np.stack([trials[labels == k] for k in np.arange(1.0, n_images + 1)])
    return all_trials, all_labels, expected


def _rois(voxels: int = 10) -> dict[str, np.ndarray]:
    masks = {k: np.zeros(voxels, dtype=bool) for k in ("ROI_V1", "ROI_hV4", "ROI_LOC", "ROI_VC", "ROI_PPA")}
    masks["ROI_V1"][:3] = True
    masks["ROI_hV4"][3:6] = True
    masks["ROI_LOC"][[6, 8]] = True
    masks["ROI_VC"][:] = True  # ROI_PPA: no voxels in this file
    return masks


def test_bdata_trials_are_grouped_by_image_with_rois_and_names(tmp_path: os.PathLike) -> None:
    trials, labels, expected = _design()
    path = os.path.join(tmp_path, "sub-01_perceptionNaturalImageTest_VC.h5")
    names = {float(k + 1): n for k, n in enumerate(NAMES)}
    write_bdata(path, trials, labels, _rois(), names=names)
    r = load_fmri(path)
    np.testing.assert_array_equal(r.data, expected)
    assert r.images == NAMES
    assert list(r.rois) == ["V1", "V4", "LOC", "VC"]  # hierarchy order; hV4 is V4; an empty ROI is left out
    assert r.rois["V4"].tolist() == [3, 4, 5] and r.rois["LOC"].tolist() == [6, 8]
    np.testing.assert_array_equal(r.select("V4").data, expected[:, :, 3:6])
    # the same trials by image_index (no value map: no names); MATLAB-era dataset names read alike
    other = os.path.join(tmp_path, "by_index.h5")
    write_bdata(other, trials, labels, _rois(), label_key="image_index", old_names=True)
    by_index = load_fmri(other)
    np.testing.assert_array_equal(by_index.data, expected)
    assert by_index.images is None
    assert load_fmri(other, label="image_index").images is None


def test_bdata_written_by_bdpy_reads_as_bdpy_selects_it(tmp_path: os.PathLike) -> None:
    bdpy = pytest.importorskip("bdpy")
    trials, labels, expected = _design(seed=3)
    b = bdpy.BData()
    b.add(trials, "VoxelData")
    for key, mask in _rois().items():
        b.add_metadata(key, mask.astype(float), where="VoxelData")
    b.add(labels[:, None], "stimulus_name")
    b.add_vmap("stimulus_name", {float(k + 1): n for k, n in enumerate(NAMES)})
    b.add(np.where(np.isnan(labels), np.nan, labels - 1)[:, None], "image_index")
    path = os.path.join(tmp_path, "bdpy.h5")
    b.save(path)
    r = load_fmri(path)
    np.testing.assert_array_equal(r.data, expected)
    assert r.images == NAMES
    back = bdpy.BData(path)
    v4 = back.select("ROI_hV4")  # bdpy's own selection of the V4 voxels, trial by trial
    stim = np.asarray(back.get_labels("stimulus_name"))
    for i, name in enumerate(NAMES):
        np.testing.assert_array_equal(r.select("V4").data[i], v4[stim == name])
    np.testing.assert_array_equal(load_fmri(path, label="image_index").data, expected)


def test_in_image_order_matches_names_by_file_name(tmp_path: os.PathLike) -> None:
    data = np.arange(4 * 2 * 3, dtype=float).reshape(4, 2, 3)
    r = FMRIResponses(data, {"V1": [0, 2]}, "f.h5", NAMES)
    paths = [f"imgs/{n}.JPEG" for n in (NAMES[2], NAMES[0], NAMES[3], NAMES[1])]
    moved = r.in_image_order(paths)
    np.testing.assert_array_equal(moved.data, data[[2, 0, 3, 1]])
    assert moved.images == [NAMES[2], NAMES[0], NAMES[3], NAMES[1]] and moved.rois["V1"].tolist() == [0, 2]
    assert r.in_image_order([f"{n}.png" for n in NAMES]) is r  # already in order: no copy
    unnamed = FMRIResponses(data)
    assert unnamed.in_image_order(paths) is unnamed  # no names: the rows are taken as in order
    with pytest.raises(
        ValueError, match=r"f.h5: its 4 images are not the image set's 4: 1 of the image set's images are "
    ):
        r.in_image_order([*paths[:3], "imgs/n09999999_1.JPEG"])
    with pytest.raises(ValueError, match=r"the image set repeats image names \['n01443537_22563'\]"):
        r.in_image_order([paths[1], paths[1], paths[2], paths[3]])
    with pytest.raises(ValueError, match=r"f.h5: 3 image names for 4 rows"):
        FMRIResponses(data, source="f.h5", images=NAMES[:3])
    with pytest.raises(ValueError, match=r"images must be names \(str\), got a int"):
        FMRIResponses(data, source="f.h5", images=[1, 2, 3, 4])
    with pytest.raises(ValueError, match=r"f.h5: image names repeat \('n01443537_22563'\); expected one"):
        FMRIResponses(data, source="f.h5", images=[NAMES[0]] * 4)
    with pytest.raises(ValueError, match=r"f.h5 repeats image names \['a'\] \(matched without folder"):
        FMRIResponses(data, source="f.h5", images=["a.jpg", "a.png", "b", "c"]).in_image_order(paths)


def test_names_in_npy_and_h5_files_and_fmri_datasets_order(tmp_path: os.PathLike) -> None:
    from fastalign.data._io import save_npy

    rng = np.random.default_rng(2)
    data = rng.normal(size=(4, 2, 5))
    npy = os.path.join(tmp_path, "r.npy")
    save_npy(npy, {"responses": data, "images": NAMES})
    h5 = os.path.join(tmp_path, "r.h5")
    with h5py.File(h5, "w") as f:
        f["responses"] = data
        f["images"] = [n.encode() for n in NAMES]
    assert load_fmri(npy).images == NAMES == load_fmri(h5).images
    order = [3, 1, 0, 2]
    images = [os.path.join(tmp_path, f"{NAMES[i]}.jpg") for i in order]
    train, test = fmri_datasets(npy, h5, images, images)
    ref_train, ref_test = fmri_datasets(
        FMRIResponses(data[order]), FMRIResponses(data[order]), images, images
    )
    for ds, ref in ((train, ref_train), (test, ref_test)):
        assert ds.images == images
        np.testing.assert_array_equal(ds.responses().numpy(), ref.responses().numpy())
    with pytest.raises(ValueError, match=r"r.npy: its 4 images are not the image set's 4"):
        fmri_datasets(npy, h5, [*images[:3], "other.jpg"], images)


def test_bad_bdata_files_say_what_is_wrong(tmp_path: os.PathLike) -> None:
    trials, labels, _ = _design()
    path = os.path.join(tmp_path, "b.h5")

    def fails(match: str, **kwargs: object) -> None:
        with pytest.raises(ValueError, match=match):
            load_fmri(path, **kwargs)  # type: ignore[arg-type]

    write_bdata(path, trials[:-1], labels[:-1], _rois())  # the last trial's image has one repetition less
    fails(
        r"b.h5': BData images have unequal repetition counts: 3 images with 3 trials "
        r"\(stimulus_name 2, 3, 4\), 1 image with 2 trials \(stimulus_name 1\); expected the same number"
    )
    write_bdata(path, trials, labels, _rois(), label_key="trial_type")
    fails(
        r"without a label column \(stimulus_name, image_index, Label\); name the column .* with "
        r"load_fmri\(label=...\), or store it under one of those keys, which evaluate and align look for"
    )
    fails(
        r"label='image_index' is not a metadata key of this BData file; it has \['VoxelData'",
        label="image_index",
    )
    np.testing.assert_array_equal(load_fmri(path, label="trial_type").data, _design()[2])
    fails(r"BData label 'VoxelData' marks 10 columns; expected one column", label="VoxelData")
    write_bdata(path, trials, np.full_like(labels, np.nan), _rois())
    fails(r"label column 'stimulus_name' holds no labels \(all NaN\)")
    write_bdata(path, trials, labels, _rois(), names={1.0: NAMES[0], 2.0: NAMES[1]})
    fails(r"value map of 'stimulus_name' names no image for label values \[3.0, 4.0\]")
    with h5py.File(path, "a") as f:
        del f["metadata/value"]
        f["metadata/value"] = np.ones((2, 3))
    fails(r"BData metadata 'value' is \(2, 3\), expected \(8 keys, 12 columns of 'dataset'\)")
    with h5py.File(path, "w") as f:
        f["dataset"] = np.ones((3, 2))
        f.create_group("metadata")
    fails(r"BData 'metadata' must be a group with datasets 'key' and 'value'")
    with h5py.File(path, "w") as f:
        f["dataset"] = np.ones((3, 2))
        md = f.create_group("metadata")
        md["key"] = [b"Run", b"stimulus_name"]
        md["value"] = np.array([[1.0, np.nan], [np.nan, 1.0]])
    fails(r"BData file without voxel columns \(metadata key 'VoxelData' = 1\); it has keys \['Run'")
    plain = os.path.join(tmp_path, "plain.h5")
    with h5py.File(plain, "w") as f:
        f["responses"] = np.ones((3, 2))
    with pytest.raises(
        ValueError, match=re.escape(f"label='stimulus_name' applies to BData files only; {plain!r}")
    ):
        load_fmri(plain, label="stimulus_name")
    with pytest.raises(TypeError, match=r"label must be a metadata key \(str\) or None, got int"):
        load_fmri(plain, label=3)  # type: ignore[arg-type]


def test_bdata_other_rois_keep_the_file_order(tmp_path: os.PathLike) -> None:
    """ROIs outside the hierarchy come in the order of the file's metadata keys, as roi_order promises
    for every file (the published VC files list ROI_LVC, ROI_HVC, ROI_VC)."""
    trials, labels, _ = _design()
    masks = {k: np.zeros(10, dtype=bool) for k in ("ROI_V1", "ROI_LVC", "ROI_HVC", "ROI_VC", "ROI_V1v")}
    masks["ROI_V1"][:3] = masks["ROI_LVC"][:5] = masks["ROI_HVC"][5:] = masks["ROI_VC"][:] = True
    masks["ROI_V1v"][:2] = True
    path = os.path.join(tmp_path, "vc.h5")
    write_bdata(path, trials, labels, masks)
    assert list(load_fmri(path).rois) == ["V1", "HVC", "LVC", "VC", "V1v"]


def test_bdata_value_map_entries_as_arrays_and_bad_keys(tmp_path: os.PathLike) -> None:
    """Value-map names stored as one-element arrays (as MATLAB and some writers store strings) are the
    names, not their repr; a key that is no number, or an entry that is no name, is named in the error."""
    trials, labels, expected = _design()
    path = os.path.join(tmp_path, "b.h5")
    write_bdata(path, trials, labels, _rois())
    with h5py.File(path, "a") as f:
        for k, name in enumerate(NAMES):
            f[f"vmap/stimulus_name/{k + 1}"] = np.array([name.encode()])
    r = load_fmri(path)
    assert r.images == NAMES
    np.testing.assert_array_equal(r.data, expected)
    with h5py.File(path, "a") as f:
        f["vmap/stimulus_name/first"] = b"x"
    with pytest.raises(ValueError, match=r"vmap/stimulus_name has a key that is no number: 'first'"):
        load_fmri(path)
    with h5py.File(path, "a") as f:
        del f["vmap/stimulus_name/first"]
        del f["vmap/stimulus_name/2"]
        f["vmap/stimulus_name/2"] = np.array([b"a", b"b"])
    with pytest.raises(ValueError, match=r"vmap/stimulus_name/2 is not one name: \[b'a' b'b'\]"):
        load_fmri(path)


def test_brain_image_dataset_pairs_named_responses_by_name(tmp_path: os.PathLike) -> None:
    """BrainImageDataset given responses that name their images (a BData file's, say) and image paths
    pairs them by name, as fmri_datasets does, rather than row by row."""
    from fastalign.data import BrainImageDataset

    data = np.random.default_rng(4).normal(size=(4, 2, 5))
    order = [2, 0, 3, 1]
    paths = [os.path.join(tmp_path, f"{NAMES[i]}.JPEG") for i in order]
    ds = BrainImageDataset(FMRIResponses(data, images=NAMES), images=paths)
    np.testing.assert_allclose(ds.responses().numpy(), data[order].mean(axis=1), rtol=1e-6)
    with pytest.raises(ValueError, match=r"its 4 images are not the image set's 4"):
        BrainImageDataset(FMRIResponses(data, images=NAMES), images=[*paths[:3], "other.jpg"])


def test_a_bdata_label_of_inf_is_refused(tmp_path: os.PathLike) -> None:
    trials, labels, _ = _design()
    labels[4] = np.inf
    path = os.path.join(tmp_path, "b.h5")
    write_bdata(path, trials, labels, _rois())
    with pytest.raises(
        ValueError, match=r"label column 'stimulus_name' holds inf in sample row 4; expected a finite"
    ):
        load_fmri(path)


def test_bdata_value_map_problems_name_the_rows_and_the_keys(tmp_path: os.PathLike) -> None:
    """A value the value map does not name points at its sample rows and at NaN for samples that are no
    trials (rest rows coded 0); two keys naming one value differently ('1' and '1.0') are refused, not
    resolved by whichever came last; the same name under both keys is one name."""
    trials, labels, expected = _design()
    labels[[0, 6]] = 0.0  # the two rest rows coded 0, not NaN
    path = os.path.join(tmp_path, "b.h5")
    names = {float(k + 1): n for k, n in enumerate(NAMES)}
    write_bdata(path, trials, labels, _rois(), names=names)
    with pytest.raises(
        ValueError,
        match=r"names no image for label values \[0.0\] \(sample rows 0, 6\); expected a name for every "
        r"trial's value. Samples that are no trials \(rest, fixation\) need the label NaN",
    ):
        load_fmri(path)
    labels[[0, 6]] = np.nan
    write_bdata(path, trials, labels, _rois(), names=names)
    with h5py.File(path, "a") as f:  # keys '1.0', '2.0', ... (str of the float)
        f["vmap/stimulus_name/1"] = NAMES[0].encode()  # the same name under a second key: fine
    np.testing.assert_array_equal(load_fmri(path).data, expected)
    assert load_fmri(path).images == NAMES
    with h5py.File(path, "a") as f:
        del f["vmap/stimulus_name/1"]
        f["vmap/stimulus_name/1"] = b"other"
    with pytest.raises(
        ValueError,
        match=r"vmap/stimulus_name names label value 1 twice: '1' -> 'other' and '1.0' -> 'n01443537_22563'; "
        r"expected one name per value",
    ):
        load_fmri(path)


def _as_float32(path: str) -> None:
    """Rewrites a BData file's dataset as float32 (as a writer that saves single precision would)."""
    with h5py.File(path, "a") as f:
        data = f["dataset"][()]
        del f["dataset"]
        f["dataset"] = data.astype(np.float32)


def test_float32_bdata_that_merges_ids_says_so(tmp_path: os.PathLike) -> None:
    """GOD-style label IDs (synset + image number / 10^6) are distinct in float64 but round to their synset
    in float32, merging images: the unequal-count error says that the dataset is float32, how far apart its
    values are, and what to do."""
    ids = np.array([1443537.022563, 1443537.03567, 1621127.019020, 1677366.018182])
    labels = np.repeat(ids, 3)
    trials = np.random.default_rng(1).normal(size=(len(labels), 10))
    path = os.path.join(tmp_path, "god.h5")
    write_bdata(path, trials, labels, _rois())
    _as_float32(path)
    with pytest.raises(
        ValueError,
        match=r"expected the same number of trials for every image; the dataset is float32, whose values "
        r"near 1\.67737e\+06 are 0\.125 apart: labels closer than that \(image IDs with a fraction\) merge "
        r"into one image. Store it as float64",
    ):
        load_fmri(path)
    write_bdata(path, trials, labels, _rois())  # float64: four images of 3 trials
    assert load_fmri(path).data.shape == (4, 3, 10)
    # with a value map of the IDs, the rounded values have no name: that error says it too
    write_bdata(path, trials, labels, _rois(), names=dict(zip(ids.tolist(), NAMES, strict=True)))
    assert load_fmri(path).images == NAMES
    _as_float32(path)
    with pytest.raises(
        ValueError,
        match=r"names no image for label values \[1443537.0, 1621127.0, 1677366.0\] .* the dataset is "
        r"float32, whose values near 1\.67737e\+06 are 0\.125 apart",
    ):
        load_fmri(path)
