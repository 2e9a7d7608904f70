"""Math shared by the blockwise backends (torch_chunked, triton) and the distributed wrapper.

A backend provides two primitives over a block of rows ``a`` (n_a, D) against columns ``b`` (n_b, D),
with logits ``S = scale * a @ b.T`` that it never materialises whole:

- ``lse_stats(a, b, scale, with_cols)`` -> (row_lse (n_a,), col_lse (n_b,) or None), float32, where
  col_lse is the log-sum-exp over these rows only (a partial to be combined over row blocks/ranks).
- ``grads(a, b, scale, row_lse, col_lse, g_row, g_col, offset)`` -> (da (n_a, D), db (n_b, D)) float32:
  ``da = scale * dS @ b`` and ``db = scale * dS.T @ a`` with
  ``dS[i, j] = g_row[i] exp(S[i, j] - row_lse[i]) + g_col[j] exp(S[i, j] - col_lse[j])
  - [j == i + offset] (g_row[i] + g_col[j])`` (g_col None: no column terms).

``InfoNCEFunction`` turns these into the loss and its gradients for x, y and the scale, on one
process or across ranks (a ``Comm``).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from fastalign._checks import compute_dtype


class Primitives(Protocol):
    def lse_stats(
        self, a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, with_cols: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]: ...

    def grads(
        self,
        a: torch.Tensor,
        b: torch.Tensor,
        scale: torch.Tensor,
        row_lse: torch.Tensor,
        col_lse: torch.Tensor | None,
        g_row: torch.Tensor,
        g_col: torch.Tensor | None,
        offset: int,
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


_HALF = (torch.float16, torch.bfloat16)


def mm_f32(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """a @ b accumulated and returned in float32 (float64 stays float64), optionally into ``out``.

    Half inputs use cuBLAS's float32-output GEMM on CUDA and are upcast elsewhere (CPU only sees them
    under the Triton interpreter or in tests).
    """
    if a.dtype in _HALF:
        if a.device.type == "cuda":
            return torch.mm(a, b, out_dtype=torch.float32, out=out)
        a, b = a.float(), b.float()
    return torch.mm(a, b, out=out)


_ADD_CHUNK_BYTES = 1 << 25


def addmm_f32_(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """acc += a @ b in place with float32 accumulation, without a temporary of acc's size.

    cuBLAS's float32-output GEMM for half inputs requires the added matrix in the input dtype
    (torch's addmm with out_dtype checks self.dtype == mat2.dtype), so half products go through
    float32 temporaries of at most ``_ADD_CHUNK_BYTES``, a block of acc's rows at a time.
    """
    if a.dtype not in _HALF:
        return acc.addmm_(a, b)
    rows = max(1, _ADD_CHUNK_BYTES // (4 * acc.shape[1]))
    for r in range(0, acc.shape[0], rows):
        acc[r : r + rows] += mm_f32(a[r : r + rows], b)
    return acc


def direction_weights(symmetric: bool) -> tuple[float, float]:
    """Weights of the row (x -> y) and column (y -> x) cross-entropies in each per-index loss."""
    return (0.5, 0.5) if symmetric else (1.0, 0.0)


_ROW_CHUNK = 8192  # rows upcast at a time, so no (N, D) float32 copy of half inputs exists


def _rowwise_dot(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """<a_i, b_i> for every row, accumulated in ``dtype``, upcasting a chunk of rows at a time."""
    return torch.cat(
        [
            torch.linalg.vecdot(a[i : i + _ROW_CHUNK].to(dtype), b[i : i + _ROW_CHUNK].to(dtype))
            for i in range(0, a.shape[0], _ROW_CHUNK)
        ]
    )


def positives(x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """S[i, i] = scale * <x_i, y_i> in the compute dtype, shape (N,)."""
    return _rowwise_dot(x, y, compute_dtype(x)) * scale


def scale_grad(dx: torch.Tensor, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """d loss / d scale = sum(dS * x @ y.T) = <dx, x> / scale, since dx = scale * dS @ y."""
    return (_rowwise_dot(dx, x, dx.dtype).sum() / scale).reshape(scale.shape)


class Comm(Protocol):
    """How ranks share work; the single-process case is :data:`LOCAL` (every method the identity)."""

    offset: int  # this rank's first row in the global batch

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenation over ranks along dim 0."""
        ...

    def logsumexp(self, v: torch.Tensor) -> torch.Tensor:
        """Elementwise log-sum-exp over ranks."""
        ...

    def sum_slice(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over ranks of a global-batch tensor, then this rank's rows."""
        ...


class _Local:
    offset = 0

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def logsumexp(self, v: torch.Tensor) -> torch.Tensor:
        return v

    def sum_slice(self, t: torch.Tensor) -> torch.Tensor:
        return t


LOCAL: Comm = _Local()


class InfoNCEFunction(torch.autograd.Function):
    """Per-index InfoNCE losses of this rank's rows through a backend's blockwise primitives.

    This rank's rows x are compared once with the columns of the whole batch: row log-sum-exps are
    exact locally; column log-sum-exps are partials over local rows, combined over ranks. Backward
    recomputes the same stripe, giving dx exactly and this rank's share of dy for every column, which
    a sum over ranks turns into dy. With :data:`LOCAL` this is the single-process loss.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        y: torch.Tensor,
        scale: torch.Tensor,
        symmetric: bool,
        impl: Primitives,
        comm: Comm = LOCAL,
    ) -> torch.Tensor:
        w_row, w_col = direction_weights(symmetric)
        scale_c = scale.detach().to(compute_dtype(x))
        y_all = comm.gather(y)
        row_lse, col_part = impl.lse_stats(x, y_all, scale_c, symmetric)
        pos = positives(x, y, scale_c)
        loss = w_row * (row_lse - pos)
        col_lse = None
        if col_part is not None:
            col_lse = comm.logsumexp(col_part)
            loss = loss + w_col * (col_lse[comm.offset : comm.offset + x.shape[0]] - pos)
        ctx.save_for_backward(x, y_all, scale_c, row_lse, col_lse if col_lse is not None else row_lse)
        ctx.symmetric, ctx.impl, ctx.comm, ctx.scale_dtype = symmetric, impl, comm, scale.dtype
        return loss

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        if torch.is_grad_enabled():  # create_graph=True: a derivative of this backward is wanted
            raise RuntimeError(
                "infonce_loss: the blockwise backends' backward is first-order only (double backward, "
                "create_graph=True); use backend='reference', which autograd differentiates to any order"
            )
        x, y_all, scale_c, row_lse, col_lse = ctx.saved_tensors
        w_row, w_col = direction_weights(ctx.symmetric)
        grad = grad.to(scale_c.dtype).contiguous()
        g_col = w_col * ctx.comm.gather(grad) if ctx.symmetric else None
        dx, dy_all = ctx.impl.grads(
            x,
            y_all,
            scale_c,
            row_lse,
            col_lse if ctx.symmetric else None,
            w_row * grad,
            g_col,
            ctx.comm.offset,
        )
        dy = ctx.comm.sum_slice(dy_all)
        dscale = scale_grad(dx, x, scale_c).to(ctx.scale_dtype) if ctx.needs_input_grad[2] else None
        return dx.to(x.dtype), dy.to(x.dtype), dscale, None, None, None
