"""The image half of the synthetic dataset: JPEGs in the THINGS-EEG2 layout and their true features.

Images are augmented crops of scikit-image's bundled sample photographs (a photo, region and colour cast
per concept, jittered per image) or procedural (a shape and colours per concept, jittered per image).
Each image's ground-truth features are a fixed function of its pixels as written: 8 x 8 colour thumbnail
-> random projection -> tanh, standardised.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import numpy as np

from fastalign.data._io import atomic_write, save_npy

_SHAPES = ("disk", "square", "triangle", "ring", "stripes", "checker", "cross", "blob")
#: scikit-image's bundled sample photographs (in its wheel; no download) used when it is installed.
_PHOTOS = (
    "astronaut.png", "camera.png", "chelsea.png", "coffee.png", "coins.png", "moon.png", "page.png",
    "text.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg", "retina.jpg", "ihc.png",
    "brick.png", "grass.png", "gravel.png", "horse.png", "clock_motion.png", "cell.png",
)  # fmt: skip


@dataclass
class ImageSet:
    """What :func:`write_images` wrote: image paths and concept indices per split ("train", "test")."""

    paths: dict[str, list[str]]
    concepts: dict[str, list[int]]
    source: str  # "photos" or "procedural"


def photo_dir() -> str | None:
    """scikit-image's data folder when it is installed with the sample photographs, else None.

    The files are read with PIL, so skimage itself is never imported (it is slow to import)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = os.path.join(next(iter(spec.submodule_search_locations)), "data")
    return folder if all(os.path.isfile(os.path.join(folder, p)) for p in _PHOTOS) else None


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


def write_images(
    image_dir: str,
    rng: np.random.Generator,
    *,
    n_train_concepts: int,
    images_per_concept: int,
    n_test: int,
    size: int,
    photos_from: str | None,
) -> ImageSet:
    """Writes ``image_dir``/{training,test}_images/<concept>/<file>.jpg and image_metadata.npy.

    Training concepts come first, then one image for each of the ``n_test`` test concepts, as published.
    ``photos_from`` is scikit-image's data folder (augmented photographs) or None (procedural images).
    """
    n_concepts = n_train_concepts + n_test
    photos = _load_photos(photos_from) if photos_from is not None else []
    if photos:  # concept = a photo (cycled) + its own region and colour cast
        kinds = [os.path.splitext(_PHOTOS[i % len(_PHOTOS)])[0].split("_")[0] for i in range(n_concepts)]
        centres, tints = rng.uniform(0.3, 0.7, (n_concepts, 2)), rng.uniform(0.0, 1.0, (n_concepts, 3))
    else:  # concept = a shape with its own colours
        kinds = [_SHAPES[i % len(_SHAPES)] for i in rng.permutation(n_concepts)]
        fg, bg = rng.uniform(0.1, 0.9, (n_concepts, 3)), rng.uniform(0.1, 0.9, (n_concepts, 3))
    meta: dict[str, list[str]] = {k: [] for k in ("train_img_concepts", "train_img_files")}
    meta.update({"test_img_concepts": [], "test_img_files": []})
    images = ImageSet(
        {"train": [], "test": []}, {"train": [], "test": []}, "photos" if photos else "procedural"
    )
    for c in range(n_concepts):
        split, folder = ("train", "training_images") if c < n_train_concepts else ("test", "test_images")
        index = c if split == "train" else c - n_train_concepts
        concept = f"{index + 1:05d}_{kinds[c]}{c}"
        for j in range(images_per_concept if split == "train" else 1):
            file = f"{kinds[c]}{c}_{j + 1:02d}{'b' if split == 'train' else 's'}.jpg"
            path = os.path.join(image_dir, folder, concept, file)
            if photos:
                pixels = _augment(photos[c % len(photos)], size, centres[c], tints[c], rng)
            else:
                pixels = _render(kinds[c], size, fg[c], bg[c], rng)
            _save_jpeg(path, pixels)
            meta[f"{split}_img_concepts"].append(concept)
            meta[f"{split}_img_files"].append(file)
            images.paths[split].append(path)
            images.concepts[split].append(c)
    save_npy(os.path.join(image_dir, "image_metadata.npy"), meta)
    return images


def image_features(images: ImageSet, n_latents: int, rng: np.random.Generator) -> np.ndarray:
    """(n_train + n_test, n_latents) ground-truth features of the images as written (after JPEG), each
    dimension standardised over the images: 8x8 RGB thumbnail -> random projection -> tanh."""
    from PIL import Image

    projection = rng.normal(size=(8 * 8 * 3, n_latents)) * 3.0 / np.sqrt(8 * 8 * 3)
    paths = images.paths["train"] + images.paths["test"]
    thumbs = []
    for p in paths:
        with Image.open(p) as im:
            thumbs.append(np.asarray(im.convert("RGB").resize((8, 8), Image.Resampling.BOX), np.float64))
    x = np.stack(thumbs).reshape(len(paths), -1) / 255.0 - 0.5
    feats = np.tanh(x @ projection)
    return np.asarray((feats - feats.mean(0)) / np.maximum(feats.std(0), 1e-12))
