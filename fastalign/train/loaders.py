"""Data for the fit loop: seeded, sharded DataLoaders built from Datasets, and batches moved to a device.

Every random choice of a run derives from its one ``seed`` so that a resumed run repeats an uninterrupted
one: the training order of epoch ``e`` is a permutation drawn from ``seed + e`` (DistributedSampler's rule,
used with one process too, so one process and N processes walk the same global batches), and DataLoader
workers are seeded from a generator reseeded from (seed, epoch, rank) at each epoch (torch seeds each
worker's torch, numpy and ``random`` from it), not from a generator whose state a resumed run would lack.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset
from torch.utils.data.distributed import DistributedSampler

from fastalign.train.distributed import DistInfo


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed mixed from ``seed`` and ``keys`` (numpy's SeedSequence), independent across keys."""
    state = np.random.SeedSequence([seed, *keys]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def rank_seed(seed: int, rank: int) -> int:
    """The seed of the global RNGs on ``rank``: ``seed`` itself on rank 0 (so a one-process run is seeded
    as ``torch.manual_seed(seed)`` would seed it), a derived one elsewhere (so that ranks draw different
    dropout masks and augmentations)."""
    return seed if rank == 0 else derive_seed(seed, rank)


def seed_everything(seed: int) -> None:
    """Seeds torch (every device), numpy's global RNG and Python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002  (the global RNG that np.random.* calls draw from)
    random.seed(seed)


def _check_sized(data: Any, what: str) -> int:
    if isinstance(data, IterableDataset) or not hasattr(data, "__len__"):
        raise TypeError(
            f"fit: {what} is a {type(data).__name__} without a length; pass a map-style Dataset (with "
            "__len__ and __getitem__) or your own DataLoader"
        )
    n = len(data)
    if n == 0:
        raise ValueError(f"fit: {what} is empty")
    return n


def check_data(data: Any, what: str, batch_size: int | None, info: DistInfo, *, train: bool) -> None:
    """Refuses data the loop cannot split or seed.

    Raises:
        TypeError: ``data`` is neither a map-style Dataset nor a DataLoader.
        ValueError: a Dataset without ``batch_size``, a DataLoader with one, a global batch that the
            processes cannot share evenly, or a training DataLoader that every process would read whole.
    """
    if isinstance(data, DataLoader):
        if batch_size is not None:
            raise ValueError(
                f"fit: batch_size={batch_size} applies to Datasets; {what} is a DataLoader with its own "
                f"batch size ({data.batch_size}): pass batch_size=None or pass the Dataset"
            )
        if train and info.active and not isinstance(data.sampler, DistributedSampler):
            raise ValueError(
                f"fit: {what} is a DataLoader whose sampler is a {type(data.sampler).__name__}, so each of "
                f"the {info.world_size} processes would read all of it; pass the Dataset (fit shards it) or "
                "a DataLoader with a DistributedSampler"
            )
        return
    if not isinstance(data, Dataset | Sequence):
        raise TypeError(f"fit: {what} is a {type(data).__name__}; expected a torch Dataset or DataLoader")
    _check_sized(data, what)
    if batch_size is None:
        raise ValueError(f"fit: {what} is a Dataset, so batch_size is required (the global batch size)")
    if batch_size % info.world_size:
        raise ValueError(
            f"fit: batch_size={batch_size} is the global batch; it must be divisible by the "
            f"{info.world_size} processes"
        )


class Loader:
    """One epoch's batches of a Dataset (built here) or a DataLoader (the caller's).

    Args:
        data: a map-style Dataset or a DataLoader.
        batch_size: the global batch size (Datasets only); each process loads ``batch_size // world``.
        info: the process layout.
        seed: the run's seed.
        train: shuffle per epoch and shard with padding (DistributedSampler) when True; otherwise read in
            order, each process a strided share without padding, so every sample counts once.
        num_workers, collate_fn, drop_last, pin_memory: as for DataLoader (Datasets only).
    """

    def __init__(
        self,
        data: Any,
        batch_size: int | None,
        info: DistInfo,
        seed: int,
        *,
        train: bool,
        num_workers: int = 0,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        drop_last: bool = False,
        pin_memory: bool = False,
    ) -> None:
        self.seed, self.rank = seed, info.rank
        self.owned = not isinstance(data, DataLoader)
        if not self.owned:
            self.loader = data
            return
        assert batch_size is not None  # check_data refused it
        sampler: Any = None
        if train:
            sampler = DistributedSampler(
                data, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed, drop_last=False
            )
        elif info.active:
            data = Subset(data, range(info.rank, len(data), info.world_size))
        self.loader = DataLoader(
            data,
            batch_size=batch_size // info.world_size,
            sampler=sampler,
            num_workers=num_workers,
            collate_fn=collate_fn,
            drop_last=drop_last and train,
            pin_memory=pin_memory,
            generator=torch.Generator(),
        )

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int) -> DataLoader:
        """The DataLoader, set for ``epoch`` (the sampler's shuffle and, when built here, worker seeds)."""
        set_epoch = getattr(self.loader.sampler, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)
        if self.owned:
            self.loader.generator.manual_seed(derive_seed(self.seed, epoch, self.rank))
        return self.loader


def to_device(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """``batch`` with every tensor in it (through tuples, lists and dicts) on ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, Mapping):
        return type(batch)({k: to_device(v, device, non_blocking) for k, v in batch.items()})  # type: ignore[call-arg]
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(to_device(v, device, non_blocking) for v in batch))
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device, non_blocking) for v in batch)
    return batch


def _first_tensor(batch: Any) -> torch.Tensor | None:
    if isinstance(batch, torch.Tensor):
        return batch
    values = (
        batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, list | tuple) else ()
    )
    for v in values:
        found = _first_tensor(v)
        if found is not None:
            return found
    return None


def batch_len(batch: Any) -> int:
    """Samples in ``batch``: the leading size of its first tensor (depth first).

    Raises:
        TypeError: the batch holds no tensor with a batch dimension.
    """
    t = _first_tensor(batch)
    if t is None or t.dim() == 0:
        raise TypeError(
            f"fit: a batch of type {type(batch).__name__} holds no tensor with a batch dimension; the loop "
            "counts samples (for averages and images/s) by the leading size of the batch's first tensor"
        )
    return int(t.shape[0])
