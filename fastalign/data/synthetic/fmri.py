"""The fMRI part of the synthetic dataset: responses linear in the image features (early visual ROIs)
and in a per-concept embedding (higher ROIs), plus noise, in the layout :func:`fastalign.data.load_fmri`
reads."""

from __future__ import annotations

import os

import numpy as np

from fastalign.data._io import atomic_write, save_npy

FMRI_ROIS = ("V1", "V2", "V3", "V4", "LOC", "FFA", "PPA", "HVC")
_HIGHER = ("LOC", "FFA", "PPA")


def _rois(n_voxels: int) -> dict[str, np.ndarray]:
    """Voxel indices per ROI: consecutive blocks for the areas, HVC the union of the higher ones."""
    areas = FMRI_ROIS[:-1]
    bounds = np.linspace(0, n_voxels, len(areas) + 1).round().astype(int)
    rois = {name: np.arange(bounds[i], bounds[i + 1]) for i, name in enumerate(areas)}
    rois["HVC"] = np.concatenate([rois[r] for r in _HIGHER])  # higher visual cortex
    return rois


def write_fmri(
    fmri_dir: str,
    subject: int,
    features: dict[str, np.ndarray],
    concepts: dict[str, np.ndarray],
    concept_embedding: np.ndarray,
    *,
    n_voxels: int,
    repetitions: int,
    snr: float,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Writes fmri_{training,test}.h5 (or .npy without h5py) of one subject: responses (n_images,
    repetitions, n_voxels) and rois/.

    Args:
        features, concepts: Per split ("train", "test"): the images' features (n, k) and concept indices.
        concept_embedding: (n_concepts, k), the concepts' own geometry that the higher ROIs carry.

    Returns:
        The noise-free responses, as ground truth ``fmri_{train,test}_sub-XX``.
    """
    rois = _rois(n_voxels)
    k = features["train"].shape[1]
    weights = rng.normal(size=(k, n_voxels)) / np.sqrt(k)
    gt = {}
    for split in ("train", "test"):
        feats = features[split]
        mix = np.zeros(n_voxels)
        mix[rois["HVC"]] = 0.8  # higher ROIs respond mostly to the concept, early ones to the pixel features
        concept = concept_embedding[concepts[split]]
        clean = (feats @ weights) * (1 - mix) + (concept @ weights) * mix
        noisy = clean[:, None, :] + rng.normal(size=(len(feats), repetitions, n_voxels)) / snr
        gt[f"fmri_{split}_sub-{subject:02d}"] = clean
        name = "training" if split == "train" else "test"
        try:
            import h5py
        except ImportError:  # pragma: no cover - h5py is a dependency; .npy keeps the set readable
            save_npy(
                os.path.join(fmri_dir, f"sub-{subject:02d}", f"fmri_{name}.npy"),
                {"responses": noisy.astype(np.float32), "rois": rois},
            )
            continue

        def write(tmp: str, noisy: np.ndarray = noisy) -> None:
            with h5py.File(tmp, "w") as f:
                f.create_dataset("responses", data=noisy.astype(np.float32))
                g = f.create_group("rois")
                for roi, idx in rois.items():
                    g.create_dataset(roi, data=idx)

        atomic_write(os.path.join(fmri_dir, f"sub-{subject:02d}", f"fmri_{name}.h5"), write)
    return gt
