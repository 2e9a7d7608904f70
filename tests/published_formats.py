"""Files in the published formats, written by the tests themselves (nothing is downloaded)."""

from __future__ import annotations

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
