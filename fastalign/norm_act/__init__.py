"""Op family: fused BatchNorm2d (+ residual add) (+ ReLU), forward and backward.

The tails of residual conv nets (conv -> BN -> ReLU, conv -> BN -> + skip -> ReLU), e.g. CORnet-S's blocks
in training (:meth:`fastalign.models.CORnetS.fuse_training`). ``api.py`` validates and dispatches,
``reference.py`` is the eager oracle, ``triton.py`` the fused kernels.
"""

from __future__ import annotations

from fastalign.norm_act.api import batch_norm_act, batch_norm_module_act

__all__ = ["batch_norm_act", "batch_norm_module_act"]
