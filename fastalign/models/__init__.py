"""Vision backbones for brain alignment: CORnet-S (eager reference and fused fast paths)."""

from __future__ import annotations

from fastalign.models.cornet import CORnetS, cornet_s
from fastalign.models.fuse import FusedCORnetS, fuse
from fastalign.models.transforms import ImageNetTransform, imagenet_transform

__all__ = ["CORnetS", "FusedCORnetS", "ImageNetTransform", "cornet_s", "fuse", "imagenet_transform"]
