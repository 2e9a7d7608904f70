"""Files in the published formats, written by the tests themselves (nothing is downloaded)."""

from __future__ import annotations

import os

import h5py
import numpy as np
import torch

from fastalign.models import CORnetS, ReAlnet

#: The published Encoder's head layers (ReAlnet.py, code/Train_ReAlnet*.ipynb), in its concatenation order.
HEAD = (("V1", "fc_v1"), ("V2", "fc_v2"), ("V4", "fc_v4"), ("IT", "fc_it"))


def encoder_state_dict(model: ReAlnet) -> dict[str, torch.Tensor]:
    """``Encoder(realnet, n).state_dict()`` of ZitongLu1996/ReAlnet (realnet = DataParallel(CORnet_S())):
    what the released ``weights/ReAlnet/sub-XX/encoder.pt`` and the notebooks' ``best_model_params.pt``
    hold."""
    sd = {f"realnet.module.{k}": v.detach().clone() for k, v in model.backbone.state_dict().items()}
    for area, name in HEAD:
        sd[f"{name}.weight"] = model.head.proj[area].weight.detach().clone()
        sd[f"{name}.bias"] = model.head.proj[area].bias.detach().clone()
    sd["fc.weight"] = model.head.out.weight.detach().clone()
    sd["fc.bias"] = model.head.out.bias.detach().clone()
    return sd


def realnet_state_dict(backbone: CORnetS) -> dict[str, torch.Tensor]:
    """``DataParallel(CORnet_S()).state_dict()`` of ZitongLu1996/ReAlnet: what the released backbone-only
    ``weights/ReAlnet/sub-XX/realnet.pt`` holds (code/Load_ReAlnet.ipynb loads it into that wrapper)."""
    return {f"module.{k}": v.detach().clone() for k, v in backbone.state_dict().items()}


def write_bdata(
    path: str | os.PathLike[str],
    trials: np.ndarray,
    labels: np.ndarray,
    rois: dict[str, np.ndarray],
    *,
    names: dict[float, str] | None = None,
    label_key: str = "stimulus_name",
    old_names: bool = False,
) -> None:
    """A BData file as bdpy's BData.save writes it (bdpy/bdata/bdata.py __save_h5): 'dataset' (samples x
    columns: voxels, then Run, then the label), 'metadata' key / description (UTF-8 bytes) / value (one row
    per key: 1 on the columns it marks, 0 or NaN elsewhere), 'header' and 'vmap/<key>/<value as str>'.
    ``old_names``: MATLAB-era dataSet / metaData."""
    n, v = trials.shape
    run = np.repeat(np.arange(1, 3), (n + 1) // 2)[:n]
    dataset = np.column_stack([trials, run, labels])
    keys = ["VoxelData", *rois, "Run", label_key]
    value = np.full((len(keys), v + 2), np.nan)
    value[0, :v] = 1
    for i, mask in enumerate(rois.values(), start=1):
        value[i, :v] = mask.astype(float)  # bdpy's add_metadata(..., where='VoxelData'): 0 / 1 on voxels
    value[-2, v] = 1
    value[-1, v + 1] = 1
    with h5py.File(path, "w") as f:
        f.create_dataset("dataSet" if old_names else "dataset", data=dataset)
        md = f.create_group("metaData" if old_names else "metadata")
        md.create_dataset("key", data=[k.encode() for k in keys])
        md.create_dataset("description", data=[f"1 = {k}".encode() for k in keys])
        md.create_dataset("value", data=value)
        f.create_group("header").create_dataset("ctime", data=b"2019-01-01 00:00:00")
        vmap = f.create_group("vmap")
        if names is not None:
            group = vmap.create_group(label_key)
            for k, name in names.items():
                group.create_dataset(str(k), data=name.encode())
