"""ImageNet preprocessing (the CORnet-S pipeline) without torchvision.

The one image transform of the package; it lives in ``data/`` because models never import data.

The same steps as the original CORnet validation pipeline (torchvision ``Resize(256)``,
``CenterCrop(224)``, ``ToTensor``, ``Normalize``): resize the shorter side with bilinear, antialiased
interpolation, crop the centre, scale to [0, 1], normalise with the ImageNet mean and std. With
``crop=False``, the published ReAlnet pipeline (torchvision ``Resize((224, 224))``): both sides resized
to ``size``, a non-square image squeezed to a square rather than cut.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from fastalign._checks import check_bool

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageNetTransform:
    """Callable: a PIL image or uint8 tensor -> normalised float32 tensor.

    Picklable, so it works in DataLoader worker processes.

    Args:
        size: Side of the square output (the centre crop, or the whole image with crop=False).
        resize: Length the shorter side is resized to before cropping; defaults to
            ``round(size * 256 / 224)`` (256 for 224, the original's ratio); with ``crop=False`` None or
            ``size``.
        normalize: Subtract the ImageNet mean and divide by its std; False leaves values in [0, 1].
        crop: Keep the aspect ratio and crop the centre (True), or resize both sides to ``size`` (False:
            torchvision's ``Resize((size, size))``, as the published ReAlnet code; the same for square
            images with ``resize=size``).
    """

    def __init__(
        self, size: int = 224, resize: int | None = None, normalize: bool = True, crop: bool = True
    ) -> None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        crop = check_bool(type(self).__name__, "crop", crop)
        if not crop and resize not in (None, size):
            raise ValueError(
                f"resize must be None or size ({size}) with crop=False (nothing is cropped), got {resize!r}"
            )
        if resize is None:
            resize = round(size * 256 / 224) if crop else size
        if not isinstance(resize, int) or isinstance(resize, bool) or resize < size:
            raise ValueError(f"resize must be an int >= size ({size}), got {resize!r}")
        self.size = size
        self.resize = resize
        self.normalize = bool(normalize)
        self.crop = crop

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({"crop": True, **state})  # pickled before crop existed: they cropped

    def __repr__(self) -> str:
        tail = "" if self.crop else ", crop=False"  # the cropping transforms' repr (cache keys) unchanged
        return (
            f"{type(self).__name__}(size={self.size}, resize={self.resize}, normalize={self.normalize}{tail})"
        )

    def _resized_shape(self, h: int, w: int) -> tuple[int, int]:
        if h < 1 or w < 1:  # the aspect ratio below would divide by zero
            raise ValueError(f"ImageNetTransform: image is {w}x{h} (width x height); expected at least 1x1")
        if not self.crop:
            return self.size, self.size
        # torchvision's Resize(int): the shorter side becomes `resize`, the other keeps the aspect ratio.
        if h <= w:
            return self.resize, int(self.resize * w / h)
        return int(self.resize * h / w), self.resize

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        top = round((h - self.size) / 2.0)
        left = round((w - self.size) / 2.0)
        return x[..., top : top + self.size, left : left + self.size]

    def __call__(self, image: Any) -> torch.Tensor:
        """Preprocesses one image or a batch.

        Args:
            image: a PIL image (any mode; converted to RGB), or a uint8 tensor of shape (3, H, W) or
                (B, 3, H, W).

        Returns:
            float32 tensor (3, size, size), or (B, 3, size, size) for a batch.
        """
        if isinstance(image, torch.Tensor):
            x = self._from_tensor(image)
        else:
            x = self._from_pil(image)
        x = self._crop(x)
        if not self.normalize:
            return x.contiguous()
        mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(3, 1, 1)
        return (x - mean) / std

    def _from_pil(self, image: Any) -> torch.Tensor:
        try:
            from PIL import Image
        except ImportError as exc:  # pillow is a dependency; say so if it went missing
            raise TypeError("image: PIL images need pillow installed") from exc
        if not isinstance(image, Image.Image):
            raise TypeError(f"image must be a PIL image or a uint8 tensor, got {type(image).__name__}")
        image = image.convert("RGB")
        h, w = image.height, image.width
        nh, nw = self._resized_shape(h, w)
        if nh < self.size or nw < self.size:
            raise ValueError(f"image: {w}x{h} is too small to crop {self.size}x{self.size} after resizing")
        # PIL's bilinear resize filters with a support scaled to the reduction (antialiasing).
        image = image.resize((nw, nh), Image.Resampling.BILINEAR)
        data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(nh, nw, 3)
        return data.permute(2, 0, 1).float().div_(255.0)

    def _from_tensor(self, image: torch.Tensor) -> torch.Tensor:
        if image.dtype != torch.uint8:
            raise TypeError(f"image tensor must be uint8 (0..255), got {image.dtype}")
        if image.dim() not in (3, 4) or image.shape[-3] != 3:
            raise ValueError(f"image tensor must be (3, H, W) or (B, 3, H, W), got {tuple(image.shape)}")
        batched = image.dim() == 4
        x = image if batched else image.unsqueeze(0)
        h, w = x.shape[-2:]
        nh, nw = self._resized_shape(h, w)
        x = x.float()
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
            # uint8 images resized by PIL are rounded and clamped back to 0..255; do the same.
            x = x.round_().clamp_(0.0, 255.0)
        x = x.div_(255.0)
        return x if batched else x[0]


def imagenet_transform(
    size: int = 224, resize: int | None = None, normalize: bool = True, crop: bool = True
) -> ImageNetTransform:
    """The ImageNet preprocessing CORnet-S was trained with, as a callable (:class:`ImageNetTransform`)."""
    return ImageNetTransform(size, resize, normalize, crop)
