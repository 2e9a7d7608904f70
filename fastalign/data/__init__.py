"""Brain data in: THINGS-EEG2 (raw and preprocessed), MNE epochs, fMRI, MVNN, images, synthetic data.

- :func:`load_preprocessed_eeg`, :func:`load_raw_eeg`, :func:`load_image_metadata`: the published
  THINGS-EEG2 files; :func:`preprocess_things_eeg2`: the published preprocessing (MNE + MVNN).
- :func:`mvnn`: multivariate noise normalisation, vectorised.
- :class:`BrainImageDataset`, :func:`things_eeg2_datasets`, :func:`fmri_datasets`: (image, response)
  pairs for training and evaluation; arrays, :class:`EEGResponses` and ``mne.Epochs`` all work.
- :func:`load_fmri`, :class:`FMRIResponses`, :class:`ResponsePCA`: fMRI responses, ROIs, PCA;
  :func:`roi_order`: ROI names in the visual hierarchy.
- :class:`ImageTransform`, :func:`load_image`: images without torchvision; :func:`embed_images`: image
  embeddings by any torch model, cached on disk (:mod:`fastalign.data.embeddings`).
- :func:`make_synthetic_things`: a complete small dataset in the published layout from a known brain.
"""

from __future__ import annotations

from fastalign.data.datasets import (
    BrainImageDataset,
    NormStats,
    fit_norm_stats,
    fmri_datasets,
    things_eeg2_datasets,
    train_val_split,
)
from fastalign.data.embeddings import embed_images, model_key, normalize_embeddings
from fastalign.data.fmri import BDATA_LABELS, ROI_NAMES, FMRIResponses, ResponsePCA, load_fmri, roi_order
from fastalign.data.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageTransform,
    load_image,
    load_images,
)
from fastalign.data.mvnn import mvnn, noise_covariance
from fastalign.data.preprocess import (
    THINGS_EEG2_CHANNELS,
    PreprocessedSubject,
    epoch_session,
    merge_sessions,
    preprocess_things_eeg2,
)
from fastalign.data.responses import EEGResponses, as_responses, epochs_to_responses
from fastalign.data.synthetic import SyntheticThings, make_synthetic_things
from fastalign.data.things_eeg2 import (
    OCCIPITAL_PARIETAL,
    PUBLISHED_SEED,
    TARGET_EVENT,
    ImageMetadata,
    RawEEG,
    load_image_metadata,
    load_preprocessed_eeg,
    load_raw_eeg,
    preprocessed_path,
    raw_path,
)

__all__ = [
    "BDATA_LABELS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "OCCIPITAL_PARIETAL",
    "PUBLISHED_SEED",
    "ROI_NAMES",
    "TARGET_EVENT",
    "THINGS_EEG2_CHANNELS",
    "BrainImageDataset",
    "EEGResponses",
    "FMRIResponses",
    "ImageMetadata",
    "ImageTransform",
    "NormStats",
    "PreprocessedSubject",
    "RawEEG",
    "ResponsePCA",
    "SyntheticThings",
    "as_responses",
    "embed_images",
    "epoch_session",
    "epochs_to_responses",
    "fit_norm_stats",
    "fmri_datasets",
    "load_fmri",
    "load_image",
    "load_image_metadata",
    "load_images",
    "load_preprocessed_eeg",
    "load_raw_eeg",
    "make_synthetic_things",
    "merge_sessions",
    "model_key",
    "mvnn",
    "noise_covariance",
    "normalize_embeddings",
    "preprocess_things_eeg2",
    "preprocessed_path",
    "raw_path",
    "roi_order",
    "things_eeg2_datasets",
    "train_val_split",
]
