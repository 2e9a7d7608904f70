"""Tiny torch models for the fastalign.eval tests."""

from __future__ import annotations

import torch
from torch import nn


class Tiny(nn.Module):
    """conv -> relu -> pool -> fc, with a call counter (to see whether the cache ran it)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.conv = nn.Conv2d(3, 4, 3, stride=2)
            self.relu = nn.ReLU()
            self.pool = nn.AdaptiveAvgPool2d(2)
            self.fc = nn.Linear(16, 5)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))
