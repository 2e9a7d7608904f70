"""Round trips through the synthetic dataset: every loader reads it, and its structure is the known one."""

from __future__ import annotations

import os

import numpy as np
import pytest
from scipy.spatial.distance import pdist
from scipy.stats import spearmanr

from fastalign.data import (
    SyntheticThings,
    fmri_datasets,
    load_fmri,
    load_image_metadata,
    load_preprocessed_eeg,
    load_raw_eeg,
    make_synthetic_things,
    raw_path,
    things_eeg2_datasets,
)
from fastalign.data.synthetic import PUBLISHED_OP_CHANNELS


def test_layout_and_loaders(synthetic: SyntheticThings) -> None:
    meta = load_image_metadata(synthetic.image_dir, check_files=True)
    assert len(meta.train_img_files) == 12 and len(meta.test_img_files) == 8
    assert len(set(meta.train_img_concepts)) == 4 and len(set(meta.test_img_concepts)) == 8
    assert not set(meta.train_img_concepts) & set(meta.test_img_concepts)  # zero-shot split, as published
    assert all(
        p.endswith(".jpg") and os.sep + "training_images" + os.sep in p for p in meta.paths("training")
    )
    raw = load_raw_eeg(raw_path(synthetic.raw_dir, 1, 1, "training"))
    assert raw.sfreq == 250.0 and raw.ch_names[-1] == "stim" and raw.ch_types[-1] == "stim"
    assert raw.data.shape[0] == 17 + 4 + 1
    codes = set(np.unique(raw.data[-1])) - {0.0}
    assert 99999.0 in codes and codes - {99999.0} <= set(range(1, 13))
    train = load_preprocessed_eeg(synthetic.preprocessed_dir, 1, "training")
    test = load_preprocessed_eeg(synthetic.preprocessed_dir, 1, "test")
    assert train.data.shape == (12, 2, 17, 100) and test.data.shape == (8, 20, 17, 100)
    assert train.ch_names == list(PUBLISHED_OP_CHANNELS)
    np.testing.assert_allclose(test.times, -0.2 + np.arange(100) / 100, atol=1e-12)
    gt = np.load(os.path.join(synthetic.root, "ground_truth.npz"))
    assert set(gt.files) == set(synthetic.ground_truth)
    np.testing.assert_array_equal(gt["evoked_test_sub-01"], synthetic.ground_truth["evoked_test_sub-01"])


def test_data_carry_the_ground_truth_structure(synthetic: SyntheticThings) -> None:
    gt = synthetic.ground_truth
    test = load_preprocessed_eeg(synthetic.preprocessed_dir, 1, "test").data.mean(axis=1)
    rdm = pdist(test.reshape(len(test), -1), "correlation")
    truth = spearmanr(rdm, gt["rdm_evoked_sub-01"]).statistic
    assert truth > 0.6, truth
    # The RSA with the true features is the advertised one (computed here independently) ...
    expected = spearmanr(
        pdist(gt["test_features"], "correlation"),
        pdist(gt["evoked_test_sub-01"].reshape(8, -1), "correlation"),
    ).statistic
    assert gt["expected_rsa_sub-01"] == pytest.approx(expected, abs=1e-12)
    # ... and unrelated geometry scores far lower: permuting the images destroys the match.
    rng = np.random.default_rng(0)
    perm = rng.permutation(8)
    shuffled = pdist(gt["evoked_test_sub-01"][perm].reshape(8, -1), "correlation")
    assert spearmanr(rdm, shuffled).statistic < truth - 0.3
    # Every averaged test response resembles its own noise-free evoked response most.
    ev = gt["evoked_test_sub-01"].reshape(8, -1)
    corr = np.corrcoef(test.reshape(8, -1), ev)[:8, 8:]
    assert (corr.argmax(axis=1) == np.arange(8)).all()


def test_fmri_and_datasets_round_trip(synthetic: SyntheticThings) -> None:
    train_path = os.path.join(synthetic.fmri_dir, "sub-01", "fmri_training.h5")
    fmri = load_fmri(train_path)
    assert fmri.data.shape == (12, 3, 70)
    assert set(fmri.rois) == {"V1", "V2", "V3", "V4", "LOC", "FFA", "PPA", "HVC"}
    clean = synthetic.ground_truth["fmri_train_sub-01"]
    assert np.corrcoef(fmri.average().ravel(), clean.ravel())[0, 1] > 0.7
    meta = load_image_metadata(synthetic.image_dir)
    tr, _ = fmri_datasets(
        train_path,
        train_path.replace("training", "test"),
        meta.paths("training"),
        meta.paths("test"),
        rois="HVC",
        pca_components=5,
    )
    img, resp = tr[0]
    assert tuple(img.shape) == (3, 224, 224) and tuple(resp.shape) == (5,)
    eeg_tr, eeg_te = things_eeg2_datasets(
        synthetic.preprocessed_dir, 1, synthetic.image_dir, time_window=(0.0, 0.19), normalize="zscore"
    )
    assert len(eeg_tr) == 12 and len(eeg_te) == 8
    img, resp = eeg_te[3]
    assert tuple(img.shape) == (3, 224, 224) and tuple(resp.shape) == (17 * 20,)  # 17 channels x 20 samples


def test_same_seed_same_dataset_different_seed_different(tmp_path: os.PathLike) -> None:
    small = dict(
        n_train_concepts=2,
        images_per_concept=2,
        n_test=3,
        n_sessions=1,
        test_repetitions=2,
        raw_sfreq=250.0,
        n_voxels=10,
        image_size=16,
        targets_per_session=1,
    )
    a = make_synthetic_things(os.path.join(tmp_path, "a"), seed=5, **small)
    b = make_synthetic_things(os.path.join(tmp_path, "b"), seed=5, **small)
    c = make_synthetic_things(os.path.join(tmp_path, "c"), seed=6, **small)
    for key in ("train_features", "evoked_test_sub-01", "fmri_test_sub-01"):
        np.testing.assert_array_equal(a.ground_truth[key], b.ground_truth[key])
        assert not np.array_equal(a.ground_truth[key], c.ground_truth[key])
    da = load_preprocessed_eeg(a.preprocessed_dir, 1, "test").data
    np.testing.assert_array_equal(da, load_preprocessed_eeg(b.preprocessed_dir, 1, "test").data)


def test_photo_images_from_scikit_image(tmp_path: os.PathLike) -> None:
    pytest.importorskip("skimage")
    from PIL import Image

    ds = make_synthetic_things(tmp_path, n_train_concepts=3, images_per_concept=2, n_test=4, n_sessions=1,
                               test_repetitions=20, raw_sfreq=250.0, n_voxels=10, image_size=32,
                               image_source="photos", seed=1)  # fmt: skip
    assert str(ds.ground_truth["image_source"]) == "photos"
    meta = load_image_metadata(ds.image_dir, check_files=True)
    assert meta.train_img_concepts[0].endswith("_astronaut0")  # concept 0 is the first photograph
    pixels = [np.asarray(Image.open(p), dtype=float) for p in meta.paths("training")]
    assert all(p.shape == (32, 32, 3) for p in pixels)
    assert np.abs(pixels[0] - pixels[1]).mean() > 1  # two augmentations of one concept differ
    test = load_preprocessed_eeg(ds.preprocessed_dir, 1, "test").data.mean(axis=1)
    rdm = pdist(test.reshape(4, -1), "correlation")
    assert spearmanr(rdm, ds.ground_truth["rdm_evoked_sub-01"]).statistic > 0.5


def test_synthetic_bad_arguments(tmp_path: os.PathLike) -> None:
    with pytest.raises(ValueError, match="n_test must be a positive int"):
        make_synthetic_things(tmp_path, n_test=0)
    with pytest.raises(ValueError, match="n_latents"):
        make_synthetic_things(tmp_path, n_channels=4, n_latents=8)
    with pytest.raises(ValueError, match=">= 2 repetitions"):
        make_synthetic_things(tmp_path, test_repetitions=1)
    with pytest.raises(ValueError, match="image_source must be"):
        make_synthetic_things(tmp_path, image_source="photo")
    # an odd count showed half of the training images in one session fewer; preprocessing then refused
    # the unequal repetitions, after the raw data were written
    with pytest.raises(ValueError, match=r"n_sessions must be 1 or even .*got 3"):
        make_synthetic_things(tmp_path, n_sessions=3)
    assert not os.listdir(tmp_path)


def test_synthetic_is_all_or_nothing(tmp_path: os.PathLike, monkeypatch: pytest.MonkeyPatch) -> None:
    import fastalign.data.synthetic as synthetic_module

    tiny = dict(n_train_concepts=2, images_per_concept=2, n_test=3, n_sessions=1, test_repetitions=2,
                raw_sfreq=250.0, n_voxels=10, image_size=16, targets_per_session=1)  # fmt: skip
    root = os.path.join(tmp_path, "ds")

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("preprocessing crashed")

    monkeypatch.setattr(synthetic_module, "preprocess_things_eeg2", broken)
    with pytest.raises(RuntimeError, match="crashed"):
        make_synthetic_things(root, **tiny)
    assert os.listdir(tmp_path) == []  # neither the dataset nor its temp folder
    monkeypatch.undo()
    first = make_synthetic_things(root, seed=1, **tiny)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        make_synthetic_things(root, **tiny)
    second = make_synthetic_things(root, seed=2, overwrite=True, **tiny)
    assert os.listdir(tmp_path) == ["ds"] and first.root == second.root == root
    on_disk = np.load(os.path.join(root, "ground_truth.npz"))["train_features"]
    np.testing.assert_array_equal(on_disk, second.ground_truth["train_features"])
    assert load_preprocessed_eeg(second.preprocessed_dir, 1, "test").data.shape == (3, 2, 17, 100)


def test_auto_images_fall_back_to_procedural(tmp_path: os.PathLike, monkeypatch: pytest.MonkeyPatch) -> None:
    import fastalign.data.synthetic as synthetic_module

    monkeypatch.setattr(synthetic_module, "_photo_dir", lambda: None)  # as if scikit-image were absent
    with pytest.raises(ImportError, match="pip install scikit-image"):
        make_synthetic_things(os.path.join(tmp_path, "a"), image_source="photos")
    tiny = dict(n_train_concepts=2, images_per_concept=2, n_test=3, n_sessions=1, test_repetitions=2,
                raw_sfreq=250.0, n_voxels=10, image_size=16)  # fmt: skip
    ds = make_synthetic_things(os.path.join(tmp_path, "b"), image_source="auto", preprocess=False, **tiny)
    assert str(ds.ground_truth["image_source"]) == "procedural"
    assert not os.path.exists(ds.preprocessed_dir) and os.path.isdir(ds.raw_dir)


@pytest.mark.parametrize(
    "options, exc, match",
    [
        ({"seed": -1}, ValueError, "seed must be an int >= 0, got -1"),
        ({"seed": 1.5}, TypeError, "seed must be an int >= 0, got 1.5"),
        ({"n_sessions": 1.5}, TypeError, "n_sessions must be an int, got 1.5"),
        ({"n_subjects": True}, TypeError, "n_subjects must be an int, got True"),
        ({"targets_per_session": -1}, ValueError, "targets_per_session must be an int >= 0"),
        ({"n_extra_channels": 47}, ValueError, "n_extra_channels must be 0..46, got 47"),
        ({"n_extra_channels": 2.0}, TypeError, "n_extra_channels must be an int, got 2.0"),
        ({"snr": "1"}, TypeError, "snr must be a finite number > 0, got '1'"),
        ({"fmri_snr": float("inf")}, ValueError, "fmri_snr must be a finite number > 0"),
        ({"raw_sfreq": 0.0}, ValueError, "raw_sfreq must be a finite number > 0"),
        ({"raw_sfreq": 150.0}, ValueError, "raw_sfreq must be >= 2 \\* n_times"),
        ({"mvnn_dim": "channels"}, ValueError, "mvnn_dim must be one of"),
        ({"preprocess": "yes"}, TypeError, "preprocess must be a bool"),
        ({"overwrite": 1}, TypeError, "overwrite must be a bool"),
        ({"image_source": None}, ValueError, "image_source must be"),
    ],
)
def test_synthetic_names_every_bad_argument(
    tmp_path: os.PathLike, options: dict, exc: type, match: str
) -> None:
    """Every argument is checked before anything is written, and the error names it."""
    with pytest.raises(exc, match="make_synthetic_things: " + match):
        make_synthetic_things(tmp_path, **options)
    with pytest.raises(TypeError, match="make_synthetic_things: root must be a folder path, got int"):
        make_synthetic_things(3)  # type: ignore[arg-type]
    assert not os.listdir(tmp_path)


def test_too_few_images_says_how_many_were_asked_for(tmp_path: os.PathLike) -> None:
    with pytest.raises(
        ValueError, match=r"got 2 training \(n_train_concepts 1 x images_per_concept 2\) and 5 test"
    ):
        make_synthetic_things(
            tmp_path / "d", n_train_concepts=1, images_per_concept=2, n_test=5, preprocess=False
        )
    with pytest.raises(ValueError, match=r"got 8 training .* and 1 test \(n_test\)"):
        make_synthetic_things(
            tmp_path / "d", n_train_concepts=4, images_per_concept=2, n_test=1, preprocess=False
        )
    assert not os.path.exists(os.path.join(tmp_path, "d"))
