"""Vision backbones for brain alignment: CORnet-S (eager reference and fused fast paths)."""

from __future__ import annotations

from fastalign.models.cornet import CORnetS, cornet_s
from fastalign.models.fuse import FusedCORnetS, fuse
from fastalign.models.norm_act import batch_norm_act, batch_norm_module_act
from fastalign.models.transforms import ImageNetTransform, imagenet_transform

__all__ = [
    "CORnetS",
    "FusedCORnetS",
    "ImageNetTransform",
    "batch_norm_act",
    "batch_norm_module_act",
    "cornet_s",
    "fuse",
    "imagenet_transform",
]
