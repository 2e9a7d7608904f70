"""RDMs as one fused Triton kernel: tiled Gram products written straight into the condensed triangle.

The launcher normalises the patterns once in O(n * p) (correlation: centred and unit norm; cosine: unit
norm; euclidean: centred per feature, with squared norms), then each program computes one (BLOCK x
BLOCK) tile of pattern products for tile rows <= tile columns over the feature dim and stores only
the pairs i < j at their condensed index ``i * n - i * (i + 1) / 2 + (j - i - 1)`` (int64). No n x n
matrix is ever materialised. float32 inputs are multiplied in IEEE fp32 (no TF32) so results stay
within float32 tolerance of the reference; float16/bfloat16 use the tensor cores with fp32
accumulation. Output is float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_MODE = {"correlation": 0, "cosine": 0, "euclidean": 1}
_MAX_GRID_Z = 65535


@triton.jit
def _rdm_kernel(
    z_ptr,
    sq_ptr,
    out_ptr,
    n,
    p,
    inv_p,
    stride_zb,
    stride_zn,
    stride_ob,
    MODE: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_i = tl.program_id(0)
    pid_j = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    if pid_j >= pid_i:
        rows = pid_i * BLOCK + tl.arange(0, BLOCK)
        cols = pid_j * BLOCK + tl.arange(0, BLOCK)
        # int64 offsets: row * stride passes 2^31 at 16,540 conditions x 200,704 features (CORnet-S V1)
        row_off = rows.to(tl.int64)[:, None] * stride_zn
        col_off = cols.to(tl.int64)[:, None] * stride_zn
        z_b = z_ptr + b * stride_zb
        acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
        for k0 in range(0, p, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            kmask = ks[None, :] < p
            a = tl.load(z_b + row_off + ks[None, :], mask=(rows[:, None] < n) & kmask, other=0.0)
            c = tl.load(z_b + col_off + ks[None, :], mask=(cols[:, None] < n) & kmask, other=0.0)
            if IEEE:
                acc += tl.dot(a, tl.trans(c), input_precision="ieee")
            else:
                acc += tl.dot(a, tl.trans(c))
        if MODE == 0:
            d = 1.0 - acc
        else:
            sq_r = tl.load(sq_ptr + b * n + rows, mask=rows < n, other=0.0)
            sq_c = tl.load(sq_ptr + b * n + cols, mask=cols < n, other=0.0)
            d = tl.maximum((sq_r[:, None] + sq_c[None, :] - 2.0 * acc) * inv_p, 0.0)
        i = rows[:, None].to(tl.int64)
        j = cols[None, :].to(tl.int64)
        idx = i * n - i * (i + 1) // 2 + (j - i - 1)
        tl.store(out_ptr + b * stride_ob + idx, d, mask=(i < j) & (j < n))


def _normalised(xb: torch.Tensor, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, n, p) -> (patterns for the kernel in float32, squared norms (B, n) for euclidean)."""
    z = xb.float()
    if method == "correlation":
        z = z - z.mean(-1, keepdim=True)
        # again: a float32 mean of patterns far from zero against their spread (values near 1e6 varying by
        # 1) is off by a large share of that spread; the centred values' own mean is exact enough
        z = z - z.mean(-1, keepdim=True)
    if method in ("correlation", "cosine"):
        z = z / z.norm(dim=-1, keepdim=True)
        return z, z.new_empty(0)
    z = z - z.mean(-2, keepdim=True)
    return z, (z * z).sum(-1)


def rdm(x: torch.Tensor, method: str, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Condensed RDMs of (..., n, p) patterns ("correlation", "cosine", "euclidean"), float32."""
    lead, (n, p) = x.shape[:-2], x.shape[-2:]
    xb = x.reshape(-1, n, p)
    z, sq = _normalised(xb, method)
    ieee = x.dtype not in (torch.float16, torch.bfloat16)
    if not ieee:
        z = z.to(x.dtype)  # half inputs go to the tensor cores; normalised first in float32
    z = z.contiguous()
    out = torch.empty((xb.shape[0], n * (n - 1) // 2), dtype=torch.float32, device=x.device)
    interpret = x.device.type == "cpu"
    block = 32 if interpret or n <= 64 else 64
    block_k = 32 if interpret else 64
    nb = triton.cdiv(n, block)
    for b0 in range(0, xb.shape[0], _MAX_GRID_Z):  # CUDA grids hold at most 65,535 blocks along z
        zc, oc = z[b0 : b0 + _MAX_GRID_Z], out[b0 : b0 + _MAX_GRID_Z]
        sqc = sq[b0 : b0 + _MAX_GRID_Z] if sq.numel() else sq
        _rdm_kernel[(nb, nb, zc.shape[0])](
            zc, sqc, oc, n, p, 1.0 / p, zc.stride(0), zc.stride(1), oc.stride(0),
            MODE=_MODE[method], IEEE=ieee, BLOCK=block, BLOCK_K=block_k,
        )  # fmt: skip
    return out.reshape(*lead, -1)
