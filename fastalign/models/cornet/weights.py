"""CORnet-S checkpoints: reading (never executing) them, cleaning the original's format, strict loading.

The original release is ``{"state_dict": {...}, "epoch": ..., "arch": ..., "optimizer": ...}`` with the
``module.`` prefix of its DataParallel wrapper on every key; a ``.safetensors`` file of the same keys is read
too. Nothing here depends on the model's class: it
loads into any module whose ``state_dict()`` keys are CORnet-S's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, TypeVar

import torch
from torch import nn

from fastalign._checks import nonfinite_keys, some_keys, torch_load_failure

_Module = TypeVar("_Module", bound=nn.Module)


def _read_checkpoint(weights: str | os.PathLike[str] | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(weights, Mapping):
        return weights
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(
            f"cornet_s: weights must be None, a path or a state_dict mapping, got {type(weights).__name__}"
        )
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"cornet_s: weights: no checkpoint file at {path!r}")
    if path.endswith(".safetensors"):  # a state dict saved with safetensors (e.g. a ReAlnet's backbone)
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except Exception as exc:
            raise ValueError(f"cornet_s: weights: could not read {path!r} as safetensors: {exc}") from exc
    try:
        # weights_only: a checkpoint is data; never run code from it.
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"cornet_s: weights: could not read {path!r} as a torch checkpoint of tensors: "
            f"{torch_load_failure(exc, path)}"
        ) from exc
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"cornet_s: weights: {path!r} holds a {type(ckpt).__name__}, expected a dict")
    return ckpt


def clean_state_dict(ckpt: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The plain state_dict inside an original-format checkpoint.

    Accepts ``{"state_dict": {...}, ...}`` (the original release, with ``epoch``/``arch``/optimizer
    entries beside it) or a bare state_dict; strips the ``module.`` prefix of DataParallel when every
    key has it.
    """
    sd = ckpt["state_dict"] if "state_dict" in ckpt and isinstance(ckpt["state_dict"], Mapping) else ckpt
    keys = list(sd)
    if keys and all(k.startswith("module.") for k in keys):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"cornet_s: weights: entries that are not tensors: {bad}")
    return dict(sd)


def load_cornet_weights(model: _Module, weights: str | os.PathLike[str] | Mapping[str, Any]) -> _Module:
    """Loads an original-format checkpoint into ``model`` strictly.

    Every key must match in name and shape; BatchNorm ``num_batches_tracked`` counters may be absent
    (checkpoints saved by PyTorch < 0.4.1 have none; they only matter for momentum=None). Anything else
    missing, unexpected or of the wrong shape raises ValueError naming the first 10 such keys of each
    kind and their count; so do NaN and inf values. A whole ReAlnet (the published Encoder's
    ``realnet.module.*`` and ``fc_*`` keys, or fastalign's ``backbone.*`` and ``head.*``) is told apart.
    """
    sd = clean_state_dict(_read_checkpoint(weights))
    heads = {k.partition(".")[0] for k in sd}
    if {"realnet", "fc"} <= heads or {"backbone", "head"} <= heads:
        raise ValueError(
            "cornet_s: weights are a whole ReAlnet checkpoint (CORnet-S and an encoding head: "
            f"{'the published Encoder' if 'realnet' in heads else 'fastalign'}'s "
            f"{'realnet.module.* and fc_*' if 'realnet' in heads else 'backbone.* and head.*'} keys), not "
            "CORnet-S's: pass it as a model, NAME=FILE (fastalign evaluate --models NAME=FILE, fastalign "
            "decode --image-model FILE, fastalign.models.realnet(weights=FILE))"
        )
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in sd and sd[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {some_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {some_keys(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches ({len(shapes)}): {some_keys(shapes)}")
        raise ValueError("cornet_s: weights do not match CORnet-S: " + "; ".join(parts))
    bad = nonfinite_keys(sd)
    if bad:
        raise ValueError(f"cornet_s: weights hold NaN or inf in {len(bad)} tensor(s): {some_keys(bad)}")
    model.load_state_dict(sd, strict=False)
    return model
