"""A tiny regression run shared by the tests/train tests, and the forked processes they start.

The model has dropout so that a resumed run repeats an uninterrupted one only if the RNG states are
restored too. Forked children (a killed run, the two ranks of a data-parallel run) start with
:func:`forked_child`: GNU OpenMP, torch's CPU thread pool, hangs in a forked child once the parent has
used it, so a child keeps to one thread (as DataLoader workers do); the tensors here are too small for
torch to split over threads, so the results do not depend on it.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from fastalign.train import FitResult, FitState, Hook, fit

N_TRAIN, N_VAL, BATCH, D = 48, 16, 8, 6
KILLED = 17  # the exit status of a run that ExitAt ended
DEFAULT: Any = object()  # run()'s "fit_tiny's data" (None is fit's "no validation data")


def data(seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N_TRAIN + N_VAL, D, generator=g)
    y = x @ torch.randn(D, 1, generator=g) + 0.1 * torch.randn(N_TRAIN + N_VAL, 1, generator=g)
    return TensorDataset(x[:N_TRAIN], y[:N_TRAIN]), TensorDataset(x[N_TRAIN:], y[N_TRAIN:])


def model(dropout: float = 0.2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 1))


def step(m: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x, y = batch
    pred = m(x)
    return nn.functional.mse_loss(pred, y), {"mae": (pred - y).abs().mean()}


def state_of(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


class ExitAt(Hook):
    """Ends the process, as a kill would, right after optimizer step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, state: FitState) -> None:
        if state.step == self.step:
            sys.stdout.flush()
            os._exit(KILLED)


def forked_child() -> None:
    """What a forked child does first (see the module docstring)."""
    torch.set_num_threads(1)


def run(
    out: str | os.PathLike[str],
    *,
    train: Any = DEFAULT,
    val: Any = DEFAULT,
    net: nn.Module | None = None,
    **kwargs: Any,
) -> FitResult:
    """fit() of the tiny regression into ``out``; keyword arguments override its defaults (``train``,
    ``val``: the data; ``net``: the model)."""
    default_train, default_val = data()
    step_fn = kwargs.pop("step_fn", step)
    settings: dict[str, Any] = dict(
        epochs=3,
        batch_size=BATCH,
        seed=0,
        optimizer=functools.partial(torch.optim.Adam, lr=1e-2),
        config={"task": "tiny regression"},
        progress=False,
        log_every=2,
        amp="fp32",
    )
    settings.update(kwargs)
    return fit(
        net if net is not None else model(),
        step_fn,
        default_train if train is DEFAULT else train,
        default_val if val is DEFAULT else val,
        out=out,
        **settings,
    )
