"""InfoNCE across ranks: each rank holds a shard of the batch; negatives are the whole global batch.

Rank k computes the logits of its rows x_k against all columns y (all-gathered), once: row
log-sum-exps are exact locally, and the column log-sum-exps are partials over local rows, combined
across ranks by an all-reduce (max, then sum of exponentials). In backward every rank recomputes its
stripe, producing dx_k exactly and its share of dy for all columns, which a sum across ranks (then
this rank's slice) turns into dy_k. Communication per step: all-gather of y (N x D) and of the
upstream per-index gradients, two all-reduces of N floats, one all-reduce of N x D. Shards may have
different sizes.

Gradient semantics: backward couples the ranks, so the gradient that reaches x_k and y_k is that of
the single-process loss on the concatenated batch. A replicated tensor temperature receives this
rank's share; the shares sum to the single-process gradient.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from fastalign.contrastive.common import InfoNCEFunction, Primitives
from fastalign.contrastive.reference import infonce_loss_reference


def _sizes(n: int, device: torch.device, group: Any) -> list[int]:
    world = dist.get_world_size(group)
    mine = torch.tensor([n], dtype=torch.int64, device=device)
    out = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(out, mine, group=group)
    return [int(t) for t in out]


def _gather_cat(t: torch.Tensor, sizes: list[int], group: Any) -> torch.Tensor:
    """Concatenation over ranks of tensors whose first dims are ``sizes`` (padded for all_gather)."""
    t = t.contiguous()
    biggest = max(sizes)
    if t.shape[0] < biggest:
        t = torch.cat([t, t.new_zeros((biggest - t.shape[0], *t.shape[1:]))])
    parts = [torch.empty_like(t) for _ in sizes]
    dist.all_gather(parts, t, group=group)
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])


def _all_reduce_lse(v: torch.Tensor, group: Any) -> torch.Tensor:
    """log(sum over ranks of exp(v)) elementwise, computed stably."""
    top = v.clone()
    dist.all_reduce(top, op=dist.ReduceOp.MAX, group=group)
    total = torch.exp(v - top)
    dist.all_reduce(total, group=group)
    return top + torch.log(total)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums the gradients over ranks and keeps this rank's slice."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor, sizes: list[int], offset: int, group: Any) -> torch.Tensor:
        ctx.sizes, ctx.offset, ctx.group, ctx.n = sizes, offset, group, t.shape[0]
        return _gather_cat(t, sizes, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad[ctx.offset : ctx.offset + ctx.n], None, None, None


class _GroupComm:
    """Collectives over ``group`` for :class:`InfoNCEFunction` (shards of ``sizes`` rows)."""

    def __init__(self, group: Any, sizes: list[int], offset: int, n: int) -> None:
        self.group, self.sizes, self.offset, self.n = group, sizes, offset, n

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        return _gather_cat(t, self.sizes, self.group)

    def logsumexp(self, v: torch.Tensor) -> torch.Tensor:
        return _all_reduce_lse(v, self.group)

    def sum_slice(self, t: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(t, group=self.group)
        return t[self.offset : self.offset + self.n]


def all_ranks(flag: torch.Tensor, group: Any) -> torch.Tensor:
    """Whether a 0-dim bool ``flag`` holds on every rank of ``group``."""
    out = flag.to(torch.int32).reshape(1)
    dist.all_reduce(out, op=dist.ReduceOp.MIN, group=group)
    return out[0].bool()


def distributed_infonce(
    x: torch.Tensor,
    y: torch.Tensor,
    scale: torch.Tensor,
    symmetric: bool,
    impl: Primitives | None,
    group: Any,
) -> tuple[torch.Tensor, int, torch.Tensor]:
    """(this rank's per-index losses, global N, detached global sum of all per-index losses).

    ``impl``: the chosen backend's blockwise primitives, or None for the reference, which gathers x and
    y (with gradients) and materialises the global logits.
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("infonce_loss: group was given but torch.distributed is not initialised")
    sizes = _sizes(x.shape[0], x.device, group)
    offset = sum(sizes[: dist.get_rank(group)])
    if impl is None:
        x_all = _GatherWithGrad.apply(x, sizes, offset, group)
        y_all = _GatherWithGrad.apply(y, sizes, offset, group)
        full = infonce_loss_reference(x_all, y_all, scale, symmetric=symmetric)
        losses = full[offset : offset + x.shape[0]]
    else:
        comm = _GroupComm(group, sizes, offset, x.shape[0])
        losses = InfoNCEFunction.apply(x, y, scale, symmetric, impl, comm)
    total = losses.detach().sum()
    dist.all_reduce(total, group=group)
    return losses, sum(sizes), total
