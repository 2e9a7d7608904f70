"""torch.distributed for the fit loop: the process group torchrun describes, and the few collectives the
loop needs (sums, one object from rank 0, a barrier).

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`setup`
initialises the default group from them (NCCL for CUDA devices, gloo otherwise) unless the caller already
did, and :func:`teardown` destroys only a group that :func:`setup` created. With one process every
collective here is a no-op, so the loop reads the same in both cases.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the data-parallel run.

    Attributes:
        rank: this process's rank in the default group (0 without one).
        world_size: number of processes (1 without a group).
        local_rank: this process's index on its machine (selects the CUDA device).
        owns_group: :func:`setup` created the group, so :func:`teardown` destroys it.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes the run folder, progress and events."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """More than one process: gradients are synchronised and metrics reduced."""
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"fit: environment variable {name}={text!r} is not an integer") from None


def planned() -> DistInfo:
    """The run's layout before any group exists: an initialised group's, else torchrun's environment.

    Raises:
        ValueError: ``WORLD_SIZE``, ``RANK`` or ``LOCAL_RANK`` is not an integer or out of range.
    """
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        return DistInfo(rank, world, _env_int("LOCAL_RANK", rank))
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(
            f"fit: environment WORLD_SIZE={world}, RANK={rank}; expected WORLD_SIZE >= 1 and "
            "0 <= RANK < WORLD_SIZE (as torchrun sets them)"
        )
    return DistInfo(rank, world, _env_int("LOCAL_RANK", rank))


def default_device(info: DistInfo) -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", info.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def setup(info: DistInfo, device: torch.device) -> DistInfo:
    """Initialises the default group that ``info`` plans, if it is not there yet.

    Returns:
        ``info`` with ``owns_group`` set when this call created the group.
    """
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's object collectives use the current device
    if not info.active or dist.is_initialized():
        return info
    if not dist.is_available():
        raise NotImplementedError(
            f"fit: WORLD_SIZE={info.world_size} but this torch has no torch.distributed"
        )
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(info.rank, info.world_size, info.local_rank, owns_group=True)


def teardown(info: DistInfo) -> None:
    """Destroys the group if :func:`setup` created it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """``tensor`` summed over ranks, in place (unchanged with one process)."""
    if info.active:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank (picklable objects)."""
    if not info.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_to_main(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (rank 0 uses it)."""
    if not info.active:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    """Waits for every rank (so none reads a file rank 0 is still writing)."""
    if info.active:
        dist.barrier()
