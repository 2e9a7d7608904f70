"""InfoNCE in plain PyTorch, blockwise: O(N * D) memory on any device (the CPU default).

Logits are computed one stripe of rows at a time (at most ``_STRIPE_ELEMENTS`` float32 entries and
never all N rows), giving exact row log-sum-exps and, combined across stripes with logaddexp, column
log-sum-exps in the same pass. The backward recomputes each stripe. float64 inputs stay float64;
half-precision inputs are multiplied with float32 accumulation into float32 logits.
"""

from __future__ import annotations

import torch

from fastalign._checks import compute_dtype
from fastalign.contrastive.common import InfoNCEFunction, addmm_f32_, mm_f32

_STRIPE_ELEMENTS = 1 << 24


def _stripe_rows(n_rows: int, n_cols: int) -> int:
    """Rows per stripe: within the element budget and, for N > 1, fewer than all rows."""
    return max(1, min(_STRIPE_ELEMENTS // max(n_cols, 1), -(-n_rows // 2)))


def _operand(t: torch.Tensor) -> torch.Tensor:
    """The matmul operand: half types stay half on CUDA (fp32 out below), are upcast on CPU."""
    if t.dtype in (torch.float16, torch.bfloat16) and t.device.type != "cuda":
        return t.float()
    return t


def _logits(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """scale * a @ b.T in float32 (float64 for float64 inputs)."""
    return mm_f32(a, b.T).mul_(scale)


class _Impl:
    def lse_stats(
        self, a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, with_cols: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        ct = compute_dtype(a)
        a_op, b_op = _operand(a), _operand(b)
        scale = scale.to(ct)
        row = torch.empty(a.shape[0], dtype=ct, device=a.device)
        col = torch.full((b.shape[0],), -torch.inf, dtype=ct, device=a.device) if with_cols else None
        step = _stripe_rows(a.shape[0], b.shape[0])
        for i0 in range(0, a.shape[0], step):
            s = _logits(a_op[i0 : i0 + step], b_op, scale)
            row[i0 : i0 + step] = torch.logsumexp(s, dim=1)
            if col is not None:
                col = torch.logaddexp(col, torch.logsumexp(s, dim=0))
        return row, col

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
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ct = compute_dtype(a)
        a_op, b_op = _operand(a), _operand(b)
        scale = scale.to(ct)
        row_lse, g_row = row_lse.to(ct), g_row.to(ct)
        da = torch.empty(a.shape, dtype=ct, device=a.device)
        db = torch.zeros(b.shape, dtype=ct, device=a.device)
        step = _stripe_rows(a.shape[0], b.shape[0])
        for i0 in range(0, a.shape[0], step):
            i1 = min(i0 + step, a.shape[0])
            s = _logits(a_op[i0:i1], b_op, scale)
            ds = (s - row_lse[i0:i1, None]).exp_().mul_(g_row[i0:i1, None])
            if col_lse is not None and g_col is not None:
                ds += s.sub_(col_lse.to(ct)[None, :]).exp_().mul_(g_col.to(ct)[None, :])
            del s
            # the positives -S[i, i + offset] contribute -(g_row[i] + g_col[i + offset])
            diag = ds.diagonal(i0 + offset)
            k = diag.shape[0]
            pos_cols = slice(i0 + offset, i0 + offset + k)
            diag -= g_row[i0 : i0 + k] + (g_col.to(ct)[pos_cols] if g_col is not None else 0.0)
            ds = ds.to(a_op.dtype)  # half operands (CUDA only): dS rounded, products accumulated in fp32
            mm_f32(ds, b_op, out=da[i0:i1])
            addmm_f32_(db, ds.T, a_op[i0:i1])
        return da.mul_(scale), db.mul_(scale)


IMPL = _Impl()


def infonce(x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor, symmetric: bool) -> torch.Tensor:
    """Per-index InfoNCE losses (N,) with O(N * D) memory."""
    return InfoNCEFunction.apply(x, y, scale, symmetric, IMPL)
