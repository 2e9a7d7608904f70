"""CORnet-S: the eager model, its checkpoints, the fused inference module and its conv algorithms.

``model.py`` is the original network (the correctness oracle), ``weights.py`` reads and loads the original
checkpoint, ``fused.py`` builds the inference module from a model (:func:`fuse`), and ``convs.py`` holds the
Winograd and im2col 3x3 convs that it and the fast training path use on CPU. Imports point one way:
fused -> model -> weights and convs.
"""

from __future__ import annotations

from fastalign.models.cornet.convs import (
    conv_taps,
    gemm_conv3x3,
    gemm_pays,
    taps_conv3x3,
    unfold_conv3x3,
    valid_taps,
    winograd_conv3x3,
    winograd_weight,
)
from fastalign.models.cornet.fused import (
    FusedBlock,
    FusedCORnetS,
    FusedV1,
    fold_conv_bn,
    fuse,
    mkldnn_dtype_unsupported,
)
from fastalign.models.cornet.model import (
    DEFAULT_LAYERS,
    NUM_PARAMETERS,
    REGIONS,
    CORblockS,
    CORnetBase,
    CORnetS,
    Flatten,
    Identity,
    V1Block,
    cornet_s,
)
from fastalign.models.cornet.weights import clean_state_dict, load_cornet_weights

__all__ = [
    "DEFAULT_LAYERS",
    "NUM_PARAMETERS",
    "REGIONS",
    "CORblockS",
    "CORnetBase",
    "CORnetS",
    "Flatten",
    "FusedBlock",
    "FusedCORnetS",
    "FusedV1",
    "Identity",
    "V1Block",
    "clean_state_dict",
    "conv_taps",
    "cornet_s",
    "fold_conv_bn",
    "fuse",
    "gemm_conv3x3",
    "gemm_pays",
    "load_cornet_weights",
    "mkldnn_dtype_unsupported",
    "taps_conv3x3",
    "unfold_conv3x3",
    "valid_taps",
    "winograd_conv3x3",
    "winograd_weight",
]
