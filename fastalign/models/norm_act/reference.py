"""The correctness oracle of :func:`fastalign.models.batch_norm_act`: eager PyTorch, autograd throughout."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def batch_norm_act_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    *,
    training: bool,
    momentum: float,
    eps: float,
    residual: torch.Tensor | None = None,
    relu: bool = True,
) -> torch.Tensor:
    """relu(batch_norm(x) + residual), exactly as BatchNorm2d, ``+`` and ReLU compute it in eager mode."""
    y = F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)
    if residual is not None:
        y = y + residual
    return F.relu(y) if relu else y
