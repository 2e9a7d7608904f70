"""Fused BatchNorm (+ residual add) (+ ReLU) for training CORnet-S's blocks."""

from __future__ import annotations

from fastalign.models.norm_act.api import batch_norm_act, batch_norm_module_act

__all__ = ["batch_norm_act", "batch_norm_module_act"]
