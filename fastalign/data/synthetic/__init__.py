"""A synthetic THINGS-EEG2 (+ fMRI) dataset from a known "brain", written in the published layout.

:func:`make_synthetic_things` runs three writers in turn, all drawing from generators seeded by its
``seed``: :mod:`~fastalign.data.synthetic.images` (the JPEGs and their ground-truth features, a fixed
function of the pixels), :mod:`~fastalign.data.synthetic.eeg` (per subject: a brain that maps the
features to EEG through cortical sources with their own latencies, a shared ERP and a mixing matrix, with
noise correlated across channels as real EEG noise is, and the raw session files of the THINGS-EEG2 RSVP
design) and :mod:`~fastalign.data.synthetic.fmri` (per subject: responses linear in the same features in
early visual ROIs and in a per-concept embedding in higher ones, plus noise). The preprocessed files are
then made by :func:`fastalign.data.preprocess_things_eeg2` from the raw files, so every loader reads this
dataset through the same code as the real one.

The ground truth (features, noise-free evoked responses, mixing, noise covariance, the test RDMs and
their expected RSA) is returned and saved to ``root/ground_truth.npz``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, get_args

import numpy as np

from fastalign import _checks
from fastalign._checks import check_bool, check_choice, check_int, check_real
from fastalign.data._io import atomic_write, replacing_dir
from fastalign.data.mvnn import MVNNDim
from fastalign.data.preprocess import preprocess_things_eeg2
from fastalign.data.synthetic.eeg import (
    OTHER_CHANNELS,
    PUBLISHED_OP_CHANNELS,
    SOA,
    EEGDesign,
    eeg_ground_truth,
    output_times,
    write_raw_eeg,
)
from fastalign.data.synthetic.fmri import FMRI_ROIS, write_fmri
from fastalign.data.synthetic.images import image_features, write_images
from fastalign.data.synthetic.images import photo_dir as _photo_dir
from fastalign.data.things_eeg2 import OCCIPITAL_PARIETAL

__all__ = ["FMRI_ROIS", "PUBLISHED_OP_CHANNELS", "SOA", "SyntheticThings", "make_synthetic_things"]

_FOLDERS = ("image_set", "raw_data", "preprocessed_data", "fmri")
#: make_synthetic_things' arguments that are counts of at least one.
_POSITIVE_INTS = (
    "n_train_concepts", "images_per_concept", "n_test", "n_subjects", "n_sessions", "training_repetitions",
    "test_repetitions", "n_channels", "n_times", "n_latents", "n_voxels", "fmri_repetitions", "image_size",
)  # fmt: skip


@dataclass
class SyntheticThings:
    """Where :func:`make_synthetic_things` wrote the dataset, and its ground truth.

    Attributes:
        root: The dataset folder.
        image_dir: ``root/image_set`` (training_images/, test_images/, image_metadata.npy).
        raw_dir: ``root/raw_data`` (sub-XX/ses-YY/raw_eeg_{training,test}.npy).
        preprocessed_dir: ``root/preprocessed_data`` (sub-XX/preprocessed_eeg_{training,test}.npy).
        fmri_dir: ``root/fmri`` (sub-XX/fmri_{training,test}.h5).
        subjects: Subject numbers written.
        ground_truth: Arrays also saved to ``root/ground_truth.npz`` (see :func:`make_synthetic_things`).
    """

    root: str
    image_dir: str
    raw_dir: str
    preprocessed_dir: str
    fmri_dir: str
    subjects: list[int]
    ground_truth: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def _at(cls, root: str, n_subjects: int) -> SyntheticThings:
        images, raw, preprocessed, fmri = (os.path.join(root, d) for d in _FOLDERS)
        return cls(root, images, raw, preprocessed, fmri, list(range(1, n_subjects + 1)))


def _check_synthetic_arguments(args: dict[str, Any]) -> None:
    """Refuses bad arguments of :func:`make_synthetic_things` before anything is written."""
    fn = "make_synthetic_things"
    if not isinstance(args["root"], (str, os.PathLike)):
        raise TypeError(f"{fn}: root must be a folder path, got {type(args['root']).__name__}")
    for name in _POSITIVE_INTS:
        if check_int(fn, name, args[name]) < 1:
            raise ValueError(f"{fn}: {name} must be a positive int, got {args[name]!r}")
    if args["n_sessions"] > 1 and args["n_sessions"] % 2:
        # each training image is shown in half of the sessions, as published: an odd count showed half
        # of them in one session fewer, and preprocessing then refused the unequal repetitions
        raise ValueError(
            f"{fn}: n_sessions must be 1 or even (each training image in half of the sessions), got "
            f"{args['n_sessions']}"
        )
    n_extra, n_max = check_int(fn, "n_extra_channels", args["n_extra_channels"]), len(OTHER_CHANNELS)
    if not 0 <= n_extra <= n_max:
        raise ValueError(f"{fn}: n_extra_channels must be 0..{n_max}, got {n_extra}")
    check_int(fn, "targets_per_session", args["targets_per_session"], minimum=0)
    check_int(fn, "seed", args["seed"], minimum=0)
    for name in ("raw_sfreq", "snr", "fmri_snr"):
        check_real(fn, name, args[name], positive=True)
    for name in ("preprocess", "overwrite"):
        check_bool(fn, name, args[name])
    check_choice(fn, "mvnn_dim", args["mvnn_dim"], get_args(MVNNDim))
    check_choice(fn, "image_source", args["image_source"], ("auto", "photos", "procedural"))
    n_train = args["n_train_concepts"] * args["images_per_concept"]
    if args["n_test"] < 3 or n_train < 3:
        raise ValueError(
            f"{fn}: need at least 3 training and 3 test images for RDMs, got {n_train} training "
            f"(n_train_concepts {args['n_train_concepts']} x images_per_concept "
            f"{args['images_per_concept']}) and {args['n_test']} test (n_test)"
        )
    if args["n_latents"] > args["n_channels"]:
        raise ValueError(
            f"{fn}: n_latents ({args['n_latents']}) must be <= n_channels ({args['n_channels']})"
        )
    if args["test_repetitions"] < 2 or args["training_repetitions"] < 2:
        raise ValueError(f"{fn}: MVNN needs >= 2 repetitions per session and partition")
    if args["raw_sfreq"] < 2 * args["n_times"]:
        raise ValueError(
            f"{fn}: raw_sfreq must be >= 2 * n_times, got raw_sfreq={args['raw_sfreq']} and "
            f"n_times={args['n_times']}"
        )


def _preprocess(out: SyntheticThings, subject: int, design: EEGDesign, n_times: int, mvnn_dim: str) -> None:
    """Writes the subject's preprocessed files from its raw ones, as for the real dataset."""
    sfreq, _ = output_times(n_times)
    result = preprocess_things_eeg2(
        out.raw_dir,
        subject,
        out.preprocessed_dir,
        sfreq=sfreq,
        channels=OCCIPITAL_PARIETAL,
        training_repetitions=design.training_repetitions,
        test_repetitions=design.test_repetitions,
        mvnn_dim=mvnn_dim,  # type: ignore[arg-type]
        write=True,
    )
    if result.test.data.shape[-1] != n_times or result.test.ch_names != design.op_channel_names():
        raise ValueError(
            f"make_synthetic_things: raw_sfreq={design.raw_sfreq} and n_times={n_times} give "
            f"{result.test.data.shape[-1]} samples per epoch after resampling to {sfreq} Hz; "
            "expected n_times (e.g. raw_sfreq=1000 works for any n_times < 500)"
        )


def make_synthetic_things(
    root: str | os.PathLike[str],
    *,
    n_train_concepts: int = 8,
    images_per_concept: int = 4,
    n_test: int = 10,
    n_subjects: int = 1,
    n_sessions: int = 4,
    training_repetitions: int = 2,
    test_repetitions: int = 20,
    n_channels: int = 17,
    n_extra_channels: int = 4,
    n_times: int = 100,
    raw_sfreq: float = 1000.0,
    snr: float = 0.5,
    n_latents: int = 8,
    targets_per_session: int = 3,
    n_voxels: int = 280,
    fmri_repetitions: int = 3,
    fmri_snr: float = 1.0,
    image_size: int = 64,
    mvnn_dim: str = "time",
    seed: int = 0,
    preprocess: bool = True,
    image_source: str = "auto",
    overwrite: bool = False,
) -> SyntheticThings:
    """Writes a small THINGS-EEG2-layout dataset generated from a known brain (see the module doc).

    Args:
        root: Output folder: created, or an empty folder (a non-empty one needs ``overwrite``).
        n_train_concepts, images_per_concept: Training images = concepts x images per concept.
        n_test: Test images, one per test concept (other concepts than the training ones, as published;
            with more concepts than photos or shapes, concepts share a source photo / shape).
        n_subjects: Subjects sub-01.. (each with its own brain: mixing, latencies).
        n_sessions: Sessions per subject. Each session shows every test image ``test_repetitions``
            times and, as published, half of the training images (each image in n_sessions // 2
            sessions; all of them when n_sessions == 1) ``training_repetitions`` times.
        n_channels: Occipital/parietal channels kept by preprocessing (published: 17).
        n_extra_channels: Other channels in the raw files, dropped by the channel regex (up to 46:
            17 + 46 = the published 63-channel montage).
        n_times: Time points per preprocessed epoch; the epoch is -0.2..0.8 s, so the output rate is
            n_times Hz (published: 100).
        raw_sfreq: Raw sampling rate in Hz (published: 1000).
        snr: Single-trial signal-to-noise ratio per source (see
            :func:`fastalign.data.synthetic.eeg.make_brain`).
        n_latents: Feature dimensions (<= n_channels).
        targets_per_session: Target trials (event 99999) per raw file; preprocessing drops them.
        n_voxels, fmri_repetitions, fmri_snr: Size and noise of the fMRI set.
        image_size: Side of the square JPEG images in pixels.
        mvnn_dim: MVNN mode used to make the preprocessed files.
        seed: Everything is a deterministic function of the arguments.
        image_source: "photos": augmented crops of scikit-image's bundled sample photographs (needs
            scikit-image installed; its files are read with PIL); "procedural": drawn shapes; "auto":
            photos when scikit-image is installed, else procedural. ``ground_truth["image_source"]``
            says which was used.
        overwrite: Replace ``root`` if it holds a dataset written before (its ground_truth.npz); a
            non-empty folder without one is an error either way.
        preprocess: Run :func:`preprocess_things_eeg2` to write the preprocessed files (False leaves
            only raw data, images and fMRI, e.g. to time the preprocessing separately).

    Returns:
        SyntheticThings. ``ground_truth`` holds ``train_features`` (n_train, k), ``test_features``
        (n_test, k), ``train_concepts``/``test_concepts`` (concept index per image), and per subject
        (suffix ``_sub-XX``): ``mixing`` (C, C), ``latency``/``width`` (k,), ``noise_cov`` (C, C) sensor
        noise covariance of one raw sample (in the units written, V^2), ``evoked_train`` /
        ``evoked_test`` (n, C, n_times) noise-free responses at the output times in the channel order
        of the preprocessed files (before MVNN, in volts), ``rdm_features`` / ``rdm_evoked`` (condensed
        correlation-distance RDMs of the test images) and ``expected_rsa`` (their Spearman correlation:
        the RSA a model with exactly the true features reaches against the noise-free brain),
        ``fmri_train`` / ``fmri_test`` (n, n_voxels) noise-free fMRI responses.
    """
    _check_synthetic_arguments(locals())  # at this point locals() holds exactly the arguments
    photos_from = _photo_dir() if image_source in ("auto", "photos") else None
    if image_source == "photos" and photos_from is None:
        raise ImportError(
            "make_synthetic_things: image_source='photos' needs scikit-image (pip install scikit-image)"
        )
    design = EEGDesign(
        n_channels, n_extra_channels, raw_sfreq, snr, n_sessions, training_repetitions, test_repetitions,
        targets_per_session,
    )  # fmt: skip

    # replaced only where it holds a synthetic dataset (its ground truth), never the photos it reads, nor
    # files added to it since but decode's image-embedding cache (DATA/embeddings, made again on demand)
    final = _checks.check_out_folder(
        "make_synthetic_things", "root", root, overwrite, marker="ground_truth.npz",
        inputs=[photos_from] if photos_from is not None else (),
        known=lambda path: path.startswith("embeddings/"),
    )  # fmt: skip
    # Everything is written into a sibling folder that replaces root as a unit once complete, so a
    # failure, an interrupt or a kill leaves the old dataset (or none) under root, never a half-written one.
    with replacing_dir(final, manifest=True) as staging:
        out = SyntheticThings._at(staging, n_subjects)
        rng = np.random.default_rng(seed)
        images = write_images(
            out.image_dir, rng, n_train_concepts=n_train_concepts, images_per_concept=images_per_concept,
            n_test=n_test, size=image_size, photos_from=photos_from,
        )  # fmt: skip
        feats = image_features(images, n_latents, rng)
        n_train = len(images.paths["train"])
        features = {"train": feats[:n_train], "test": feats[n_train:]}
        concepts = {split: np.array(images.concepts[split]) for split in ("train", "test")}
        gt: dict[str, np.ndarray] = {
            "image_source": np.array(images.source),
            "train_features": features["train"],
            "test_features": features["test"],
            "train_concepts": concepts["train"],
            "test_concepts": concepts["test"],
        }
        # One embedding per concept, shared by the subjects: what higher visual cortex responds to.
        concept_embedding = rng.normal(size=(n_train_concepts + n_test, n_latents))
        for subject in out.subjects:
            srng = np.random.default_rng([seed, subject])
            brain = write_raw_eeg(out.raw_dir, subject, design, features["train"], features["test"], srng)
            if preprocess:
                _preprocess(out, subject, design, n_times, mvnn_dim)
            gt.update(eeg_ground_truth(brain, subject, features["train"], features["test"], n_times))
            gt.update(
                write_fmri(
                    out.fmri_dir, subject, features, concepts, concept_embedding,
                    n_voxels=n_voxels, repetitions=fmri_repetitions, snr=fmri_snr, rng=srng,
                )
            )  # fmt: skip

        def write_gt(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, **gt)  # type: ignore[arg-type]

        atomic_write(os.path.join(staging, "ground_truth.npz"), write_gt)
    result = SyntheticThings._at(final, n_subjects)
    result.ground_truth = gt
    return result
