"""Image loading with PIL, without torchvision.

:class:`ImageTransform` is :class:`fastalign.data.transforms.ImageNetTransform` (torchvision's
``Resize(resize) -> CenterCrop(size) -> ToTensor -> Normalize(ImageNet)`` without torchvision) that also
opens files. Embeddings of images by a model, and their cache, are in :mod:`fastalign.data.embeddings`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

from fastalign.data._io import require_file
from fastalign.data.transforms import IMAGENET_MEAN as IMAGENET_MEAN  # re-exported by fastalign.data
from fastalign.data.transforms import IMAGENET_STD as IMAGENET_STD
from fastalign.data.transforms import ImageNetTransform


class ImageTransform(ImageNetTransform):
    """:class:`fastalign.data.transforms.ImageNetTransform` that also opens image files.

    Callable: an image path, PIL image or uint8 tensor -> float32 tensor (3, size, size). Picklable, so
    it works in DataLoader workers. A missing or unreadable file raises an error naming it. A 16-bit file
    (PIL modes ``I;16*`` and ``I``) is rescaled to 8 bits (divided by 257) before its conversion to RGB; a
    floating-point one (mode ``F``, of no known range) is refused.

    Args:
        size: Side of the square output (the centre crop, or the whole image with crop=False).
        resize: Length the shorter side is resized to before cropping; default round(size * 256 / 224)
            (the usual ImageNet evaluation ratio); equal to ``size`` for no cropping margin.
        normalize: Subtract the ImageNet mean and divide by its std (else values in [0, 1]).
        crop: False: resize both sides to ``size`` instead (torchvision's ``Resize((size, size))``, the
            published ReAlnet preprocessing, which alignment and evaluation use).
    """

    def __call__(self, image: Any) -> torch.Tensor:
        if not isinstance(image, (str, os.PathLike)):
            return super().__call__(image)
        from PIL import Image

        path = require_file(image, "image")
        try:
            with Image.open(path) as opened:
                im = _eight_bit(opened, path).convert("RGB")
        except OSError as err:
            raise ValueError(f"image: {path!r} is not a readable image ({err})") from err
        return super().__call__(im)


def _eight_bit(image: Any, path: str) -> Any:
    """16-bit integer images (PIL modes I;16*, and I, as which older Pillow reads 16-bit PNGs) rescaled to
    0..255 (divided by 257): ``convert("RGB")`` clips their values at 255, so they came out almost white.
    Float images (mode F) have no known range and are refused."""
    from PIL import Image

    if image.mode == "F":
        raise ValueError(
            f"image: {path!r} must be an 8- or 16-bit integer image, got PIL mode 'F' (floating point, of "
            "no known range); convert it to 8 or 16 bits"
        )
    if image.mode != "I" and not image.mode.startswith("I;16"):
        return image
    pixels = np.asarray(image, dtype=np.float64)
    if pixels.size and (pixels.min() < 0 or pixels.max() > 65535):
        raise ValueError(
            f"image: {path!r} must hold 16-bit values (0..65535) in PIL mode {image.mode!r}, got values in "
            f"[{pixels.min():g}, {pixels.max():g}]"
        )
    return Image.fromarray(np.round(pixels / 257).astype(np.uint8), "L")


def load_image(
    path: str | os.PathLike[str],
    size: int = 224,
    resize: int | None = None,
    normalize: bool = True,
    crop: bool = True,
) -> torch.Tensor:
    """One image file as a (3, size, size) float32 tensor (see :class:`ImageTransform`)."""
    return ImageTransform(size, resize, normalize, crop)(path)


def _path_list(paths: Any, fn: str) -> list[Any]:
    """``paths`` as a list; one path (a str) would otherwise be read as a sequence of characters."""
    if isinstance(paths, (str, bytes, os.PathLike)) or not isinstance(paths, Iterable):
        raise TypeError(
            f"{fn}: paths must be a sequence of image paths, got {type(paths).__name__}; wrap a single path "
            "in a list"
        )
    return list(paths)


def _check_transform(transform: Any, fn: str) -> None:
    if transform is not None and not callable(transform):
        raise TypeError(
            f"{fn}: transform must be None or callable (image -> tensor), got {type(transform).__name__}"
        )


def load_images(
    paths: Sequence[str | os.PathLike[str]], transform: Callable[[Any], torch.Tensor] | None = None
) -> torch.Tensor:
    """Image files as one (n, 3, H, W) tensor; ``transform`` defaults to ``ImageTransform()``.

    Raises:
        TypeError: ``paths`` is one path or not a sequence, or ``transform`` is not callable.
        ValueError: ``paths`` is empty (a batch of no images has no known size), or a file is not a
            readable image.
        FileNotFoundError: a file does not exist.
    """
    items = _path_list(paths, "load_images")
    _check_transform(transform, "load_images")
    if not items:
        raise ValueError("load_images: paths is empty; expected at least one image path")
    transform = transform or ImageTransform()
    return torch.stack([transform(p) for p in items])
