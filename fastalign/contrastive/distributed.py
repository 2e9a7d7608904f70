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

from fastalign.contrastive import torch_chunked
from fastalign.contrastive.common import (
    Primitives,
    compute_dtype,
    direction_weights,
    positives,
    scale_grad,
)
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


class _DistributedInfoNCE(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        y: torch.Tensor,
        scale: torch.Tensor,
        symmetric: bool,
        impl: Primitives,
        group: Any,
        sizes: list[int],
        offset: int,
    ) -> torch.Tensor:
        w_row, w_col = direction_weights(symmetric)
        scale_c = scale.detach().to(compute_dtype(x))
        y_all = _gather_cat(y, sizes, group)
        row_lse, col_part = impl.lse_stats(x, y_all, scale_c, symmetric)
        pos = positives(x, y, scale_c)
        loss = w_row * (row_lse - pos)
        col_lse = None
        if col_part is not None:
            col_lse = _all_reduce_lse(col_part, group)
            loss = loss + w_col * (col_lse[offset : offset + x.shape[0]] - pos)
        ctx.save_for_backward(x, y_all, scale_c, row_lse, col_lse if col_lse is not None else row_lse)
        ctx.symmetric, ctx.impl, ctx.group, ctx.sizes, ctx.offset = symmetric, impl, group, sizes, offset
        ctx.scale_dtype = scale.dtype
        return loss

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, y_all, scale_c, row_lse, col_lse = ctx.saved_tensors
        w_row, w_col = direction_weights(ctx.symmetric)
        grad = grad.to(scale_c.dtype).contiguous()
        g_col = w_col * _gather_cat(grad, ctx.sizes, ctx.group) if ctx.symmetric else None
        dx, dy_all = ctx.impl.grads(
            x, y_all, scale_c, row_lse, col_lse if ctx.symmetric else None, w_row * grad, g_col, ctx.offset
        )
        dist.all_reduce(dy_all, group=ctx.group)
        dy = dy_all[ctx.offset : ctx.offset + x.shape[0]]
        dscale = scale_grad(dx, x, scale_c).to(ctx.scale_dtype) if ctx.needs_input_grad[2] else None
        return dx.to(x.dtype), dy.to(x.dtype), dscale, None, None, None, None, None


def distributed_infonce(
    x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor, symmetric: bool, backend: str, group: Any
) -> tuple[torch.Tensor, int, torch.Tensor]:
    """(this rank's per-index losses, global N, detached global sum of all per-index losses)."""
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("infonce_loss: group was given but torch.distributed is not initialised")
    sizes = _sizes(x.shape[0], x.device, group)
    offset = sum(sizes[: dist.get_rank(group)])
    if backend == "reference":
        x_all = _GatherWithGrad.apply(x, sizes, offset, group)
        y_all = _GatherWithGrad.apply(y, sizes, offset, group)
        full = infonce_loss_reference(x_all, y_all, scale, symmetric=symmetric)
        losses = full[offset : offset + x.shape[0]]
    else:
        if backend == "triton":
            from fastalign.contrastive import triton as triton_backend

            impl: Primitives = triton_backend.IMPL
        else:
            impl = torch_chunked.IMPL
        losses = _DistributedInfoNCE.apply(x, y, scale, symmetric, impl, group, sizes, offset)
    total = losses.detach().sum()
    dist.all_reduce(total, group=group)
    return losses, sum(sizes), total
