"""A module in eval mode for a block, every submodule's own training flag restored afterwards.

``module.train(was_training)`` would set every submodule to the top-level flag: a BatchNorm a user froze
(``net.train(); net.bn.eval()``) would come back in training mode.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``module`` in eval mode for the block; each submodule's ``training`` flag restored afterwards."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, flag in flags:
            m.training = flag
