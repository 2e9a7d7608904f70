"""InfoNCE with fused Triton kernels.

Forward: one pass over (BLOCK_M x BLOCK_N) logit tiles. Each program owns a group of row blocks and
sweeps every column block, keeping the row log-sum-exp online in registers and folding each tile's
column (max, sum) into its own slice of a (programs, N) float32 buffer, so the symmetric loss needs one
pass and no atomics; a tiny reduction over programs finishes the column log-sum-exp. Logits are
accumulated in float32 (tensor cores for bf16/fp16), in base 2 for exp2.

Backward: for stripes of rows, a kernel recomputes each logit tile and writes
``dS = g_row P_row + g_col P_col - diag`` (rounded to the input dtype for half inputs), then two GEMMs
with float32 accumulation give ``dx = scale dS @ y`` and ``dy += scale dS.T @ x``. D of 512 to 1024 is
far too large to keep dx in registers flash-attention style, so the products go to cuBLAS (or torch on
CPU) while the exp-heavy part stays fused. Memory: inputs, the column buffer and one stripe of dS,
never N x N. FLOPs: 2 N^2 D forward, 6 N^2 D backward.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from fastalign.contrastive.common import InfoNCEFunction, addmm_f32_, mm_f32

_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453
_STRIPE_BYTES = 1 << 26


@triton.jit
def _lse_fwd_kernel(
    A, B, SCALE, ROW_LSE, COL_M, COL_L,
    n_a, n_b, D, stride_a, stride_b, blocks_per_prog,
    WITH_COLS: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    scale2 = tl.load(SCALE).to(tl.float32) * 1.4426950408889634
    offs_k = tl.arange(0, BLOCK_K)
    # the last program may own fewer blocks; an all-padding block would poison the column sums
    my_blocks = tl.minimum(blocks_per_prog, tl.cdiv(n_a, BLOCK_M) - pid * blocks_per_prog)
    for rb in range(0, my_blocks):
        rows = (pid * blocks_per_prog + rb) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < n_a
        a_ptrs = A + rows.to(tl.int64)[:, None] * stride_a + offs_k[None, :]  # int64: N * D may pass 2^31
        m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_M,), tl.float32)
        for col0 in range(0, n_b, BLOCK_N):
            cols = col0 + tl.arange(0, BLOCK_N)
            col_ok = cols < n_b
            b_ptrs = B + cols.to(tl.int64)[:, None] * stride_b + offs_k[None, :]
            acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
            for k0 in range(0, D, BLOCK_K):
                k_ok = (k0 + offs_k) < D
                a = tl.load(a_ptrs + k0, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
                b = tl.load(b_ptrs + k0, mask=col_ok[:, None] & k_ok[None, :], other=0.0)
                if UPCAST:  # the interpreter's dot mishandles bf16
                    a, b = a.to(tl.float32), b.to(tl.float32)
                acc = tl.dot(a, tl.trans(b), acc, input_precision=PRECISION)
            s = tl.where(col_ok[None, :], acc * scale2, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            l_i = l_i * tl.exp2(m_i - m_new) + tl.sum(tl.exp2(s - m_new[:, None]), 1)
            m_i = m_new
            if WITH_COLS:
                sc = tl.where(row_ok[:, None], s, float("-inf"))
                c_m = tl.max(sc, 0)
                c_l = tl.sum(tl.exp2(sc - c_m[None, :]), 0)
                ptr = pid.to(tl.int64) * n_b + cols
                old_m = tl.load(COL_M + ptr, mask=col_ok, other=float("-inf"))
                old_l = tl.load(COL_L + ptr, mask=col_ok, other=0.0)
                new_m = tl.maximum(old_m, c_m)
                new_l = old_l * tl.exp2(old_m - new_m) + c_l * tl.exp2(c_m - new_m)
                tl.store(COL_M + ptr, new_m, mask=col_ok)
                tl.store(COL_L + ptr, new_l, mask=col_ok)
        tl.store(ROW_LSE + rows, (m_i + tl.log2(l_i)) * 0.6931471805599453, mask=row_ok)


@triton.jit
def _ds_kernel(
    A, B, SCALE, ROW_LSE, COL_LSE, G_ROW, G_COL, DS,
    row0, n_rows, n_b, D, offset, stride_a, stride_b, stride_ds,
    WITH_COLS: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    local = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = local < n_rows
    col_ok = cols < n_b
    rows = row0 + local
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = A + rows.to(tl.int64)[:, None] * stride_a + offs_k[None, :]
    b_ptrs = B + cols.to(tl.int64)[:, None] * stride_b + offs_k[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(0, D, BLOCK_K):
        k_ok = (k0 + offs_k) < D
        a = tl.load(a_ptrs + k0, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_ptrs + k0, mask=col_ok[:, None] & k_ok[None, :], other=0.0)
        if UPCAST:  # the interpreter's dot mishandles bf16
            a, b = a.to(tl.float32), b.to(tl.float32)
        acc = tl.dot(a, tl.trans(b), acc, input_precision=PRECISION)
    s2 = acc * (tl.load(SCALE).to(tl.float32) * 1.4426950408889634)
    row_lse2 = tl.load(ROW_LSE + rows, mask=row_ok, other=0.0) * 1.4426950408889634
    g_row = tl.load(G_ROW + rows, mask=row_ok, other=0.0)
    ds = g_row[:, None] * tl.exp2(s2 - row_lse2[:, None])
    pos = g_row[:, None] + tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    if WITH_COLS:
        col_lse2 = tl.load(COL_LSE + cols, mask=col_ok, other=0.0) * 1.4426950408889634
        g_col = tl.load(G_COL + cols, mask=col_ok, other=0.0)
        ds += g_col[None, :] * tl.exp2(s2 - col_lse2[None, :])
        pos += g_col[None, :]
    ds = tl.where(cols[None, :] == rows[:, None] + offset, ds - pos, ds)
    tl.store(DS + local.to(tl.int64)[:, None] * stride_ds + cols[None, :], ds.to(DS.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])  # fmt: skip


def _precision(dtype: torch.dtype) -> str:
    """Triton dot precision for float32 inputs follows torch's float32 matmul precision setting."""
    if dtype != torch.float32:
        return "tf32"  # Triton's default; only float32 operands read it
    return {"highest": "ieee", "high": "tf32x3", "medium": "tf32"}[torch.get_float32_matmul_precision()]


def _config(device_type: str, dtype: torch.dtype, precision: str) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) for a device type, input dtype and dot precision.

    The CUDA configurations are checked by tests/contrastive/test_infonce_sm90.py, which compiles the
    kernels for sm_90 without a GPU: Hopper wgmma, cp.async pipelining, and no register spills.
    """
    if device_type != "cuda":  # the interpreter: small tiles keep it quick
        return 32, 32, 16, 4, 1
    if dtype == torch.float32:
        # IEEE dots are FMAs that hold operand fragments in registers: a shorter K step avoids spills
        return (128, 64, 16, 8, 3) if precision == "ieee" else (128, 64, 32, 8, 3)
    return 128, 128, 64, 8, 3


def _max_programs(t: torch.Tensor) -> int:
    if t.device.type != "cuda":
        return 4
    return 2 * torch.cuda.get_device_properties(t.device).multi_processor_count


class _Impl:
    def lse_stats(
        self, a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, with_cols: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        a, b = a.contiguous(), b.contiguous()
        n_a, n_b, d = a.shape[0], b.shape[0], a.shape[1]
        bm, bn, bk, warps, stages = _config(a.device.type, a.dtype, _precision(a.dtype))
        n_blocks = triton.cdiv(n_a, bm)
        per_prog = triton.cdiv(n_blocks, min(n_blocks, _max_programs(a))) if with_cols else 1
        grid = triton.cdiv(n_blocks, per_prog)
        row = torch.empty(n_a, dtype=torch.float32, device=a.device)
        buf_shape = (grid, n_b) if with_cols else (1, 1)
        col_m = torch.full(buf_shape, -math.inf, dtype=torch.float32, device=a.device)
        col_l = torch.zeros(buf_shape, dtype=torch.float32, device=a.device)
        _lse_fwd_kernel[(grid,)](
            a, b, scale.reshape(1), row, col_m, col_l,
            n_a, n_b, d, a.stride(0), b.stride(0), per_prog,
            WITH_COLS=with_cols, PRECISION=_precision(a.dtype), UPCAST=a.device.type != "cuda",
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages,
        )  # fmt: skip
        if not with_cols:
            return row, None
        top = col_m.amax(0)
        col = (top + torch.log2((col_l * torch.exp2(col_m - top)).sum(0))) * _LN2
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
        a, b = a.contiguous(), b.contiguous()
        n_a, n_b, d = a.shape[0], b.shape[0], a.shape[1]
        bm, bn, bk, warps, stages = _config(a.device.type, a.dtype, _precision(a.dtype))
        ds_dtype = a.dtype if a.dtype in (torch.float16, torch.bfloat16) else torch.float32
        elem = torch.finfo(ds_dtype).bits // 8
        stripe = max(bm, min(_STRIPE_BYTES // (elem * n_b), triton.cdiv(n_a, 2)) // bm * bm)
        ds = torch.empty((min(stripe, n_a), n_b), dtype=ds_dtype, device=a.device)
        da = torch.empty((n_a, d), dtype=torch.float32, device=a.device)
        db = torch.zeros((n_b, d), dtype=torch.float32, device=a.device)
        row_lse, g_row = row_lse.float().contiguous(), g_row.float().contiguous()
        with_cols = col_lse is not None and g_col is not None
        col_arg, gcol_arg = row_lse, g_row  # unread placeholders when there are no column terms
        if col_lse is not None and g_col is not None:
            col_arg, gcol_arg = col_lse.float().contiguous(), g_col.float().contiguous()
        for i0 in range(0, n_a, stripe):
            rows = min(stripe, n_a - i0)
            grid = (triton.cdiv(rows, bm), triton.cdiv(n_b, bn))
            _ds_kernel[grid](
                a, b, scale.reshape(1), row_lse, col_arg, g_row, gcol_arg, ds,
                i0, rows, n_b, d, offset, a.stride(0), b.stride(0), ds.stride(0),
                WITH_COLS=with_cols, PRECISION=_precision(a.dtype), UPCAST=a.device.type != "cuda",
                BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages,
            )  # fmt: skip
            blk = ds[:rows]
            mm_f32(blk, b, out=da[i0 : i0 + rows])
            addmm_f32_(db, blk.T, a[i0 : i0 + rows])
        s = scale.float()
        return da.mul_(s), db.mul_(s)


IMPL = _Impl()


def infonce(x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor, symmetric: bool) -> torch.Tensor:
    """Per-index InfoNCE losses (N,) through the fused Triton kernels."""
    return InfoNCEFunction.apply(x, y, scale, symmetric, IMPL)
