"""Vision backbones and brain encoders: CORnet-S (eager reference and fused fast paths), ReAlnet, and the
encoders that decode seen images from brain recordings.

The fused BatchNorm tails of CORnet-S's training path are the op family :mod:`fastalign.norm_act`,
re-exported here. Image preprocessing lives in :mod:`fastalign.data.transforms` (models never import data).
"""

from __future__ import annotations

from fastalign.models.calibration import calibrate_batchnorm
from fastalign.models.cornet import CORnetS, FusedCORnetS, cornet_s, fuse
from fastalign.models.encoders import ATMS, NICE, BrainMLP, EEGNetV4, brain_encoder
from fastalign.models.realnet_model import ReAlnet, ReAlnetOutput, realnet, save_realnet
from fastalign.norm_act import batch_norm_act, batch_norm_module_act

__all__ = [
    "ATMS",
    "NICE",
    "BrainMLP",
    "CORnetS",
    "EEGNetV4",
    "FusedCORnetS",
    "ReAlnet",
    "ReAlnetOutput",
    "batch_norm_act",
    "batch_norm_module_act",
    "brain_encoder",
    "calibrate_batchnorm",
    "cornet_s",
    "fuse",
    "realnet",
    "save_realnet",
]
