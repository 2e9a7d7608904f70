"""A synthetic THINGS-EEG2 (+ fMRI) dataset from a known "brain", written in the published layout.

Images are augmented crops of scikit-image's bundled sample photographs when it is installed (a
photo, region and colour cast per concept, jittered per image), else procedural (a shape and colours
per concept, jittered per image). Each image's ground-truth features are a fixed function of its
pixels (8 x 8 colour thumbnail -> random projection -> tanh, standardised). A subject's brain maps
them to EEG: every feature drives one cortical source with its own temporal response (a Gaussian bump
at its own latency), a shared ERP (P1/N1) is added, the sources reach the sensors through a mixing
matrix L, and sensor noise is L times independent AR(1) source noise plus a little white noise, so
that it is correlated across channels as real EEG noise is (MVNN has something to undo). Trials
follow the THINGS-EEG2 RSVP design (one image every 200 ms, overlapping responses, target trials with
code 99999) and are written as raw session files; the preprocessed files are then made by
:func:`fastalign.data.preprocess_things_eeg2` from those raw files, so every loader reads this
dataset through the same code as the real one. fMRI responses are linear in the same features (early
visual ROIs) and in a per-concept embedding (higher ROIs), plus noise.

The ground truth (features, noise-free evoked responses, mixing, noise covariance, the test RDMs and
their expected RSA) is returned and saved to ``root/ground_truth.npz``.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from typing import Any, get_args

import numpy as np

from fastalign.data._io import atomic_write, replacing_dir, save_npy
from fastalign.data.mvnn import MVNNDim
from fastalign.data.preprocess import preprocess_things_eeg2
from fastalign.data.responses import _check_int, _check_real
from fastalign.data.things_eeg2 import OCCIPITAL_PARIETAL, TARGET_EVENT, raw_path

#: The 17 occipital/parietal channels of the published preprocessed data.
PUBLISHED_OP_CHANNELS = (
    "P7", "P5", "P3", "P1", "Pz", "P2", "P4", "P6", "P8",
    "PO7", "PO3", "POz", "PO4", "PO8", "O1", "Oz", "O2",
)  # fmt: skip
#: The 46 other channels of the 63-channel THINGS-EEG2 montage (frontal, central, temporal).
_OTHER_CHANNELS = (
    "Fp1", "Fp2", "AF7", "AF3", "AFz", "AF4", "AF8", "F7", "F5", "F3", "F1", "Fz", "F2", "F4", "F6", "F8",
    "FT9", "FT7", "FC5", "FC3", "FC1", "FCz", "FC2", "FC4", "FC6", "FT8", "FT10", "T7", "C5", "C3", "C1",
    "Cz", "C2", "C4", "C6", "T8", "TP9", "TP7", "CP5", "CP3", "CP1", "CPz", "CP2", "CP4", "CP6", "TP8",
)  # fmt: skip
_SHAPES = ("disk", "square", "triangle", "ring", "stripes", "checker", "cross", "blob")
#: Stimulus onset asynchrony of the THINGS-EEG2 RSVP design, in seconds.
SOA = 0.2
_EPOCH = (-0.2, 0.8)
#: scikit-image's bundled sample photographs (in its wheel; no download) used when it is installed.
_PHOTOS = (
    "astronaut.png", "camera.png", "chelsea.png", "coffee.png", "coins.png", "moon.png", "page.png",
    "text.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg", "retina.jpg", "ihc.png",
    "brick.png", "grass.png", "gravel.png", "horse.png", "clock_motion.png", "cell.png",
)  # fmt: skip
#: make_synthetic_things' arguments that are counts of at least one.
_POSITIVE_INTS = (
    "n_train_concepts", "images_per_concept", "n_test", "n_subjects", "n_sessions", "training_repetitions",
    "test_repetitions", "n_channels", "n_times", "n_latents", "n_voxels", "fmri_repetitions", "image_size",
)  # fmt: skip
FMRI_ROIS = ("V1", "V2", "V3", "V4", "LOC", "FFA", "PPA", "HVC")
_HIGHER = ("LOC", "FFA", "PPA")


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


def _op_channel_names(n: int) -> list[str]:
    names = list(PUBLISHED_OP_CHANNELS[:n])
    names += [f"PO{10 + i}" if i % 2 else f"P{10 + i}" for i in range(n - len(names))]
    return names


def _render(shape: str, size: int, fg: np.ndarray, bg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One (size, size, 3) uint8 image of ``shape`` with per-image jitter of place, scale, angle, colour."""
    v, u = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    u = u - rng.uniform(-0.15, 0.15)
    v = v - rng.uniform(-0.15, 0.15)
    a = rng.uniform(0, np.pi)
    ur, vr = u * np.cos(a) + v * np.sin(a), -u * np.sin(a) + v * np.cos(a)
    s = rng.uniform(0.45, 0.7)
    r = np.hypot(u, v)
    if shape == "disk":
        m = r < s
    elif shape == "square":
        m = np.maximum(abs(ur), abs(vr)) < s * 0.8
    elif shape == "triangle":
        m = (vr < s * 0.5) & (vr > -s + 2 * abs(ur))
    elif shape == "ring":
        m = abs(r - s) < 0.15
    elif shape == "stripes":
        m = (np.sin(12 * ur) > 0) & (r < s * 1.2)
    elif shape == "checker":
        m = (np.sin(9 * ur) * np.sin(9 * vr) > 0) & (np.maximum(abs(ur), abs(vr)) < s)
    elif shape == "cross":
        m = ((abs(ur) < s / 4) & (abs(vr) < s)) | ((abs(vr) < s / 4) & (abs(ur) < s))
    else:  # blob
        m = r < s * (1 + 0.3 * np.sin(3 * np.arctan2(v, u) + rng.uniform(0, 2 * np.pi)))
    jitter = rng.normal(0, 0.05, 3)
    img = np.where(m[..., None], fg + jitter, bg - jitter) + rng.normal(0, 0.03, (size, size, 3))
    return np.asarray(np.clip(img * 255, 0, 255).round(), dtype=np.uint8)


def _photo_dir() -> str | None:
    """scikit-image's data folder when it is installed with the sample photographs, else None.

    The files are read with PIL, so skimage itself is never imported (it is slow to import)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = os.path.join(next(iter(spec.submodule_search_locations)), "data")
    return folder if all(os.path.isfile(os.path.join(folder, p)) for p in _PHOTOS) else None


def _load_photos(folder: str) -> list[np.ndarray]:
    from PIL import Image

    photos = []
    for name in _PHOTOS:
        with Image.open(os.path.join(folder, name)) as im:
            photos.append(np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0)
    return photos


def _augment(
    photo: np.ndarray, size: int, centre: np.ndarray, tint: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """A (size, size, 3) uint8 view of a photo: a concept-specific region and colour, with per-image
    jitter of crop position and scale, a random horizontal flip and brightness noise."""
    from PIL import Image

    h, w = photo.shape[:2]
    side = int(min(h, w) * rng.uniform(0.45, 0.7))
    cy, cx = (centre + rng.uniform(-0.05, 0.05, 2)) * [h, w]
    top = int(np.clip(cy - side / 2, 0, h - side))
    left = int(np.clip(cx - side / 2, 0, w - side))
    crop = photo[top : top + side, left : left + side] * (0.7 + 0.6 * tint) * rng.uniform(0.85, 1.15)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    pixels = np.asarray(np.clip(crop * 255, 0, 255).round(), dtype=np.uint8)
    return np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR))


def _save_jpeg(path: str, pixels: np.ndarray) -> None:
    from PIL import Image

    atomic_write(path, lambda tmp: Image.fromarray(pixels).save(tmp, format="JPEG", quality=92))


def _pixel_features(paths: list[str], projection: np.ndarray) -> np.ndarray:
    """Features of the images as written (after JPEG): 8x8 RGB thumbnail -> projection -> tanh."""
    from PIL import Image

    thumbs = []
    for p in paths:
        with Image.open(p) as im:
            thumbs.append(np.asarray(im.convert("RGB").resize((8, 8), Image.Resampling.BOX), np.float64))
    x = np.stack(thumbs).reshape(len(paths), -1) / 255.0 - 0.5
    return np.tanh(x @ projection)


def _gauss(t: np.ndarray, latency: float | np.ndarray, width: float | np.ndarray) -> np.ndarray:
    return np.asarray(np.exp(-0.5 * ((t - latency) / width) ** 2))


@dataclass
class _Brain:
    mixing: np.ndarray  # (C, C): sources -> O/P sensors; the first k sources carry image features
    extra: np.ndarray  # (n_extra, C): O/P sensors -> other channels
    latency: np.ndarray  # (k,)
    width: np.ndarray  # (k,)
    sign: np.ndarray  # (k,)
    amp: np.ndarray  # (k,)
    erp_pattern: np.ndarray  # (C,)
    ar: float  # AR(1) coefficient of the source noise at the raw rate

    def kernels(self, t: np.ndarray) -> np.ndarray:
        """(k, len(t)) temporal responses of the feature sources (zero before onset)."""
        h = (
            self.sign[:, None]
            * self.amp[:, None]
            * _gauss(t[None, :], self.latency[:, None], self.width[:, None])
        )
        return np.asarray(np.where(t[None, :] >= 0, h, 0.0))

    def erp(self, t: np.ndarray) -> np.ndarray:
        """(len(t),) the stimulus-locked response shared by every image (P1 and N1)."""
        return np.asarray(np.where(t >= 0, _gauss(t, 0.1, 0.02) - 1.2 * _gauss(t, 0.17, 0.03), 0.0))

    def evoked(self, features: np.ndarray, t: np.ndarray) -> np.ndarray:
        """(n_images, C, len(t)) noise-free sensor responses to images with ``features`` (n, k)."""
        k = features.shape[1]
        sources = features[:, :, None] * self.kernels(t)[None]  # (n, k, T)
        sig = np.einsum("ck,nkt->nct", self.mixing[:, :k], sources)
        return np.asarray(sig + self.erp_pattern[None, :, None] * self.erp(t)[None, None, :])


def _make_brain(
    rng: np.random.Generator, n_ch: int, k: int, n_extra: int, snr: float, sfreq: float
) -> _Brain:
    q1, _ = np.linalg.qr(rng.normal(size=(n_ch, n_ch)))
    q2, _ = np.linalg.qr(rng.normal(size=(n_ch, n_ch)))
    mixing = (q1 * np.geomspace(1.0, 0.1, n_ch)) @ q2 * np.sqrt(n_ch)
    latency = rng.permutation(np.linspace(0.08, 0.4, k))
    width = rng.uniform(0.025, 0.06, k)
    sign = rng.choice([-1.0, 1.0], k)
    t = np.arange(0, _EPOCH[1], 1.0 / sfreq)
    rms = np.sqrt(np.mean(_gauss(t[None, :], latency[:, None], width[:, None]) ** 2, axis=1))
    # snr: RMS over images and the 0..0.8 s response of a feature source's image-driven activity, over
    # the standard deviation of one noise source (unit-variance features, unit-variance noise).
    amp = snr / rms
    pattern = mixing @ rng.normal(size=n_ch) / np.sqrt(n_ch)
    extra = rng.normal(size=(n_extra, n_ch)) / np.sqrt(n_ch)
    return _Brain(mixing, extra, latency, width, sign, amp, pattern, float(np.exp(-1.0 / (0.01 * sfreq))))


def _raw_session(
    brain: _Brain,
    trial_features: np.ndarray,
    codes: np.ndarray,
    sfreq: float,
    ch_names: list[str],
    rng: np.random.Generator,
) -> dict[str, Any]:
    """One raw partition: trials in the given order, one every SOA, as a published raw dict."""
    from scipy.signal import fftconvolve, lfilter

    n_ch, n_extra, k = brain.mixing.shape[0], brain.extra.shape[0], trial_features.shape[1]
    soa, pad = round(SOA * sfreq), round(1.0 * sfreq)
    n = 2 * pad + soa * len(codes)
    onsets = pad + soa * np.arange(len(codes))
    t = np.arange(0, _EPOCH[1], 1.0 / sfreq)
    impulses = np.zeros((k + 1, n))
    impulses[:k, onsets] = trial_features.T
    impulses[k, onsets] = 1.0
    kern = np.vstack([brain.kernels(t), brain.erp(t)[None]])
    sources = fftconvolve(impulses, kern, axes=1)[:, :n]
    del impulses
    # Rows filled in place, temporaries a block of rows at a time: a published-size session (63
    # channels x 3.3 M samples) peaks at about twice its own size. The random draws are taken in the
    # same order as whole-array draws would be, so the data do not depend on the block size.
    data = np.empty((n_extra + n_ch + 1, n))
    sensors = data[n_extra : n_extra + n_ch]
    np.matmul(brain.mixing[:, :k], sources[:k], out=sensors)
    sensors += brain.erp_pattern[:, None] * sources[k]
    del sources
    innovations = rng.normal(size=(n_ch, n))
    innovations *= np.sqrt(1 - brain.ar**2)
    sensors += brain.mixing @ lfilter([1.0], [1.0, -brain.ar], innovations, axis=1)
    del innovations
    block = 4
    for r in range(0, n_ch, block):
        sensors[r : r + block] += 0.1 * rng.normal(size=(min(block, n_ch - r), n))
    other = data[:n_extra]
    np.matmul(brain.extra, sensors, out=other)
    for r in range(0, n_extra, block):
        other[r : r + block] += 0.5 * rng.normal(size=(min(block, n_extra - r), n))
    data[:-1] *= 1e-6 / np.sqrt(n_ch)  # microvolt-scale data in volts, as MNE expects for EEG
    data[-1] = 0.0
    for width in range(2):  # 2-sample pulses: mne.find_events' default shortest_event
        data[-1, onsets + width] = codes
    return {
        "raw_eeg_data": data,
        "ch_names": ch_names,
        "ch_types": ["eeg"] * (n_ch + n_extra) + ["stim"],
        "sfreq": float(sfreq),
    }


def _condensed_corr_rdm(x: np.ndarray) -> np.ndarray:
    from scipy.spatial.distance import pdist

    return np.asarray(pdist(x.reshape(len(x), -1), "correlation"))


def _check_synthetic_arguments(args: dict[str, Any]) -> None:
    """Refuses bad arguments of :func:`make_synthetic_things` before anything is written."""
    fn = "make_synthetic_things"
    if not isinstance(args["root"], (str, os.PathLike)):
        raise TypeError(f"{fn}: root must be a folder path, got {type(args['root']).__name__}")
    for name in _POSITIVE_INTS:
        if _check_int(args[name], name, fn) < 1:
            raise ValueError(f"{fn}: {name} must be a positive int, got {args[name]!r}")
    n_extra, n_max = _check_int(args["n_extra_channels"], "n_extra_channels", fn), len(_OTHER_CHANNELS)
    if not 0 <= n_extra <= n_max:
        raise ValueError(f"{fn}: n_extra_channels must be 0..{n_max}, got {n_extra}")
    _check_int(args["targets_per_session"], "targets_per_session", fn, minimum=0)
    _check_int(args["seed"], "seed", fn, minimum=0)
    for name in ("raw_sfreq", "snr", "fmri_snr"):
        _check_real(args[name], name, fn, positive=True)
    for name in ("preprocess", "overwrite"):
        if not isinstance(args[name], (bool, np.bool_)):
            raise TypeError(f"{fn}: {name} must be a bool, got {args[name]!r}")
    if args["mvnn_dim"] not in get_args(MVNNDim):
        raise ValueError(f"{fn}: mvnn_dim must be one of {get_args(MVNNDim)}, got {args['mvnn_dim']!r}")
    if args["image_source"] not in ("auto", "photos", "procedural"):
        raise ValueError(
            f"{fn}: image_source must be 'auto', 'photos' or 'procedural', got {args['image_source']!r}"
        )
    if args["n_test"] < 3 or args["n_train_concepts"] * args["images_per_concept"] < 3:
        raise ValueError(f"{fn}: need at least 3 training and 3 test images for RDMs")
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
        n_test: Test images, one per test concept (concepts disjoint from training, as published).
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
        snr: Single-trial signal-to-noise ratio per source (see ``_make_brain``).
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
        overwrite: Replace ``root`` if it is a non-empty folder (else that is an error).
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
        the RSA a model with exactly the true features reaches against the noise-free brain).
    """
    _check_synthetic_arguments(locals())  # at this point locals() holds exactly the arguments

    final = os.path.abspath(os.fspath(root))
    # Everything is written into a sibling folder that replaces root as a unit once complete, so a
    # failure, an interrupt or a kill leaves the old dataset (or none) under root, never a half-written one.
    with replacing_dir(final) as root:
        if os.path.exists(final) and (not os.path.isdir(final) or (os.listdir(final) and not overwrite)):
            raise FileExistsError(
                f"make_synthetic_things: {final!r} exists and is not an empty folder; pass overwrite=True "
                "to replace it"
            )
        out = SyntheticThings(
            root,
            os.path.join(root, "image_set"),
            os.path.join(root, "raw_data"),
            os.path.join(root, "preprocessed_data"),
            os.path.join(root, "fmri"),
            list(range(1, n_subjects + 1)),
        )
        rng = np.random.default_rng(seed)
        gt: dict[str, np.ndarray] = {}

        # Images and metadata.
        n_concepts = n_train_concepts + n_test
        photo_dir = _photo_dir() if image_source in ("auto", "photos") else None
        if image_source == "photos" and photo_dir is None:
            raise ImportError(
                "make_synthetic_things: image_source='photos' needs scikit-image (pip install scikit-image)"
            )
        photos = _load_photos(photo_dir) if photo_dir is not None else []
        if photos:  # concept = a photo (cycled) + its own region and colour cast
            kinds = [os.path.splitext(_PHOTOS[i % len(_PHOTOS)])[0].split("_")[0] for i in range(n_concepts)]
            centres, tints = rng.uniform(0.3, 0.7, (n_concepts, 2)), rng.uniform(0.0, 1.0, (n_concepts, 3))
        else:  # concept = a shape with its own colours
            kinds = [_SHAPES[i % len(_SHAPES)] for i in rng.permutation(n_concepts)]
            fg, bg = rng.uniform(0.1, 0.9, (n_concepts, 3)), rng.uniform(0.1, 0.9, (n_concepts, 3))
        gt["image_source"] = np.array("photos" if photos else "procedural")
        meta: dict[str, list[str]] = {k: [] for k in ("train_img_concepts", "train_img_files")}
        meta.update({"test_img_concepts": [], "test_img_files": []})
        paths: dict[str, list[str]] = {"train": [], "test": []}
        concept_of: dict[str, list[int]] = {"train": [], "test": []}
        for c in range(n_concepts):
            split, folder = ("train", "training_images") if c < n_train_concepts else ("test", "test_images")
            index = c if split == "train" else c - n_train_concepts
            concept = f"{index + 1:05d}_{kinds[c]}{c}"
            for j in range(images_per_concept if split == "train" else 1):
                file = f"{kinds[c]}{c}_{j + 1:02d}{'b' if split == 'train' else 's'}.jpg"
                path = os.path.join(out.image_dir, folder, concept, file)
                if photos:
                    pixels = _augment(photos[c % len(photos)], image_size, centres[c], tints[c], rng)
                else:
                    pixels = _render(kinds[c], image_size, fg[c], bg[c], rng)
                _save_jpeg(path, pixels)
                meta[f"{split}_img_concepts"].append(concept)
                meta[f"{split}_img_files"].append(file)
                paths[split].append(path)
                concept_of[split].append(c)
        save_npy(os.path.join(out.image_dir, "image_metadata.npy"), meta)

        projection = rng.normal(size=(8 * 8 * 3, n_latents)) * 3.0 / np.sqrt(8 * 8 * 3)
        feats = _pixel_features(paths["train"] + paths["test"], projection)
        feats = (feats - feats.mean(0)) / np.maximum(feats.std(0), 1e-12)
        n_train = len(paths["train"])
        gt["train_features"], gt["test_features"] = feats[:n_train], feats[n_train:]
        gt["train_concepts"], gt["test_concepts"] = (
            np.array(concept_of["train"]),
            np.array(concept_of["test"]),
        )
        concept_embedding = rng.normal(size=(n_concepts, n_latents))

        op_names = _op_channel_names(n_channels)
        ch_names = list(_OTHER_CHANNELS[:n_extra_channels]) + op_names + ["stim"]
        out_sfreq = n_times / (_EPOCH[1] - _EPOCH[0])
        out_times = _EPOCH[0] + np.arange(n_times) / out_sfreq
        for subject in out.subjects:
            srng = np.random.default_rng([seed, subject])
            brain = _make_brain(srng, n_channels, n_latents, n_extra_channels, snr, raw_sfreq)
            target_features = srng.normal(size=(targets_per_session, n_latents))
            halves = np.array_split(srng.permutation(n_train), 2) if n_sessions > 1 else [np.arange(n_train)]
            for ses in range(1, n_sessions + 1):
                shown = np.sort(halves[(ses - 1) % len(halves)])
                for split, images, reps in (
                    ("training", shown, training_repetitions),
                    ("test", np.arange(len(paths["test"])), test_repetitions),
                ):
                    source = gt["train_features"] if split == "training" else gt["test_features"]
                    trials = np.concatenate([np.repeat(images, reps), -1 - np.arange(targets_per_session)])
                    trials = srng.permutation(trials)
                    is_target = trials < 0
                    tfeat = np.where(is_target[:, None], target_features[np.where(is_target, -1 - trials, 0)],
                                     source[np.where(is_target, 0, trials)])  # fmt: skip
                    codes = np.where(is_target, TARGET_EVENT, trials + 1)
                    raw = _raw_session(brain, tfeat, codes, raw_sfreq, ch_names, srng)
                    save_npy(raw_path(out.raw_dir, subject, ses, split), raw)  # type: ignore[arg-type]
            if preprocess:
                result = preprocess_things_eeg2(
                    out.raw_dir,
                    subject,
                    out.preprocessed_dir,
                    sfreq=out_sfreq,
                    channels=OCCIPITAL_PARIETAL,
                    training_repetitions=training_repetitions,
                    test_repetitions=test_repetitions,
                    mvnn_dim=mvnn_dim,  # type: ignore[arg-type]
                    write=True,
                )
                if result.test.data.shape[-1] != n_times or result.test.ch_names != op_names:
                    raise ValueError(
                        f"make_synthetic_things: raw_sfreq={raw_sfreq} and n_times={n_times} give "
                        f"{result.test.data.shape[-1]} samples per epoch after resampling to {out_sfreq} Hz; "
                        "expected n_times (e.g. raw_sfreq=1000 works for any n_times < 500)"
                    )
            sub = f"_sub-{subject:02d}"
            scale = 1e-6 / np.sqrt(n_channels)
            gt["mixing" + sub] = brain.mixing
            gt["latency" + sub], gt["width" + sub] = brain.latency, brain.width
            gt["noise_cov" + sub] = (brain.mixing @ brain.mixing.T + 0.01 * np.eye(n_channels)) * scale**2
            for split, f in (("train", gt["train_features"]), ("test", gt["test_features"])):
                gt[f"evoked_{split}{sub}"] = brain.evoked(f, out_times) * scale
            gt["rdm_features" + sub] = _condensed_corr_rdm(gt["test_features"])
            gt["rdm_evoked" + sub] = _condensed_corr_rdm(gt["evoked_test" + sub])
            from scipy.stats import spearmanr

            gt["expected_rsa" + sub] = np.asarray(
                spearmanr(gt["rdm_features" + sub], gt["rdm_evoked" + sub]).statistic
            )
            _write_fmri(
                out.fmri_dir, subject, gt, concept_embedding, n_voxels, fmri_repetitions, fmri_snr, srng
            )

        def write_gt(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, **gt)  # type: ignore[arg-type]

        atomic_write(os.path.join(root, "ground_truth.npz"), write_gt)
    return SyntheticThings(
        final,
        os.path.join(final, "image_set"),
        os.path.join(final, "raw_data"),
        os.path.join(final, "preprocessed_data"),
        os.path.join(final, "fmri"),
        out.subjects,
        gt,
    )


def _write_fmri(
    fmri_dir: str,
    subject: int,
    gt: dict[str, np.ndarray],
    concept_embedding: np.ndarray,
    n_voxels: int,
    reps: int,
    snr: float,
    rng: np.random.Generator,
) -> None:
    """fmri_{training,test}.h5 (or .npy without h5py): responses (n_images, reps, n_voxels), rois/."""
    areas = FMRI_ROIS[:-1]
    bounds = np.linspace(0, n_voxels, len(areas) + 1).round().astype(int)
    rois = {name: np.arange(bounds[i], bounds[i + 1]) for i, name in enumerate(areas)}
    rois["HVC"] = np.concatenate([rois[r] for r in _HIGHER])  # higher visual cortex
    k = gt["train_features"].shape[1]
    weights = rng.normal(size=(k, n_voxels)) / np.sqrt(k)
    for split in ("train", "test"):
        feats = gt[f"{split}_features"]
        mix = np.zeros(n_voxels)
        mix[rois["HVC"]] = 0.8  # higher ROIs respond mostly to the concept, early ones to the pixel features
        concept = concept_embedding[gt[f"{split}_concepts"]]
        clean = (feats @ weights) * (1 - mix) + (concept @ weights) * mix
        noisy = clean[:, None, :] + rng.normal(size=(len(feats), reps, n_voxels)) / snr
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
