"""relu(batch_norm(x) + residual) as fused Triton kernels, forward and backward, as torch custom ops.

Eager PyTorch runs BatchNorm (statistics pass + normalise pass), the residual add and the ReLU as separate
kernels: 5 activation-sized reads and 3 writes forward. Here the forward is one statistics pass and one
normalise+add+ReLU pass (3 reads, 1 write); the backward is one reduction pass and one pass that writes
dx (and the residual's gradient). The conv before it stays with cuDNN.

Layout: x is (N, C, H, W), contiguous or channels_last; every kernel addresses element (n, c, s) as
``n * stride_n + c * stride_c + s * stride_s`` with s = h * W + w, so both formats are one code path
(channels_last makes each tile's channel axis contiguous). Statistics are exact-pass Welford/Chan
combinations in float32 (no E[x^2] - E[x]^2 cancellation): each program owns a channel block and a split
of the N*H*W rows, and a tiny finalize kernel merges the splits deterministically (no atomics) and
updates the running statistics with PyTorch's formula (unbiased variance, ``momentum``). So that squares
cannot overflow float32 (x of 1e20 has a variance of 1e40), every (count, mean, M2) is kept in units of
a per-channel power of two 2^e that grows with the largest |x| seen (e = 0, plain float32 arithmetic,
while |x| < 2^40); the finalize kernel brings the splits to their largest e and scales the results back.

Both directions are ``torch.library`` custom ops (``fastalign::bn_act_fwd`` / ``bn_act_bwd``) with fake
(meta) implementations and registered autograd, so ``torch.compile(fullgraph=True)`` traces through them.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from fastalign import _checks
from fastalign.norm_act.common import check_eps

_BLOCK_M = 64
_BLOCK_C = 64
_BLOCK_S = 64  # splits merged per step of the finalize kernels
# statistics are kept in units 2^e with |x| / 2^e < 2^_SCALE_BITS: squared deviations < 2^82, so sums
# of up to 2^46 of them fit float32
_SCALE_BITS = tl.constexpr(40)
_CPU_PROGRAMS = 4  # statistics programs to aim for without a GPU (the interpreter is slow)


@triton.jit
def _unit(u, SB, HW, stride_n, stride_c, stride_s, cols, c_ok, BLOCK_M: tl.constexpr):
    """Offsets, mask and valid-row count of unit u: rows sb*BLOCK_M.. of image n (u = n * SB + sb), so
    the spatial index s is an arange: contiguous (vector loads) in NCHW, as the channels are in NHWC."""
    n = u // SB
    s = (u - n * SB) * BLOCK_M + tl.arange(0, BLOCK_M)
    s_ok = s < HW
    off = n.to(tl.int64) * stride_n + s.to(tl.int64)[:, None] * stride_s
    off += cols.to(tl.int64)[None, :] * stride_c
    return off, s_ok[:, None] & c_ok[None, :], tl.minimum(HW - (u - n * SB) * BLOCK_M, BLOCK_M)


@triton.jit
def _pow2(e):
    """2^e in float32 for integer e in [-126, 127], from its exponent bits (exact, which exp2 need not be)."""
    return ((e + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _stats_kernel(
    X, PMEAN, PM2, PCNT, PEXP, C, HW, SB, U, stride_n, stride_c, stride_s, units_per_split,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = cols < C
    start = tl.program_id(1) * units_per_split
    end = tl.minimum(start + units_per_split, U)
    mean = tl.zeros((BLOCK_C,), tl.float32)  # mean and m2 in units of 2^e
    m2 = tl.zeros((BLOCK_C,), tl.float32)
    count = tl.zeros((BLOCK_C,), tl.float32)
    e = tl.zeros((BLOCK_C,), tl.int32)
    for u in range(start, end):
        off, mask, rows = _unit(u, SB, HW, stride_n, stride_c, stride_s, cols, c_ok, BLOCK_M)
        x = tl.load(X + off, mask=mask, other=0.0).to(tl.float32)
        # |x| < 2^k with k = biased exponent - 126 (inf and NaN give the largest e; they stay inf/NaN)
        k = ((tl.max(tl.abs(x), 0).to(tl.int32, bitcast=True) >> 23) & 0xFF) - 126
        e_new = tl.maximum(e, tl.maximum(k - _SCALE_BITS, 0))
        r = _pow2(e - e_new)  # the running state in the new units (tiny old terms may underflow)
        mean *= r
        m2 *= r * r
        e = e_new
        x *= _pow2(-e)[None, :]
        n_b = rows.to(tl.float32)
        mean_b = tl.sum(x, 0) / n_b
        d = tl.where(mask, x - mean_b[None, :], 0.0)
        # Chan et al.: merge the block's (n_b, mean_b, M2_b) into the running (count, mean, m2)
        delta = mean_b - mean
        total = count + n_b
        mean += delta * (n_b / total)
        m2 += tl.sum(d * d, 0) + delta * delta * (count * n_b / total)
        count = total
    out = tl.program_id(1).to(tl.int64) * C + cols
    tl.store(PMEAN + out, mean, mask=c_ok)
    tl.store(PM2 + out, m2, mask=c_ok)
    tl.store(PCNT + out, count, mask=c_ok)
    tl.store(PEXP + out, e, mask=c_ok)


@triton.jit
def _finalize_kernel(
    PMEAN, PM2, PCNT, PEXP, W, RMEAN, RVAR, MEAN, RSTD, UVAR, SCALE, M, C, n_splits, eps,
    TRAINING: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = cols < C
    if TRAINING:
        # the splits' (count, mean, M2) merged BLOCK_S at a time in the units 2^e of the largest e: the
        # exact mean first, then M2 = sum M2_s + sum n_s (mean_s - mean)^2 (Chan et al.'s pairwise
        # form, all splits at once)
        e = tl.zeros((BLOCK_C,), tl.int32)
        for s0 in range(0, n_splits, BLOCK_S):
            sp = s0 + tl.arange(0, BLOCK_S)
            idx = sp.to(tl.int64)[:, None] * C + cols[None, :]
            ok = (sp < n_splits)[:, None] & c_ok[None, :]
            e = tl.maximum(e, tl.max(tl.load(PEXP + idx, mask=ok, other=0), 0))
        total = tl.zeros((BLOCK_C,), tl.float32)
        for s0 in range(0, n_splits, BLOCK_S):
            sp = s0 + tl.arange(0, BLOCK_S)
            idx = sp.to(tl.int64)[:, None] * C + cols[None, :]
            ok = (sp < n_splits)[:, None] & c_ok[None, :]
            r = _pow2(tl.load(PEXP + idx, mask=ok, other=0) - e[None, :])
            cnt = tl.load(PCNT + idx, mask=ok, other=0.0)
            total += tl.sum(cnt * (tl.load(PMEAN + idx, mask=ok, other=0.0) * r), 0)
        mean = total / M
        m2 = tl.zeros((BLOCK_C,), tl.float32)
        for s0 in range(0, n_splits, BLOCK_S):
            sp = s0 + tl.arange(0, BLOCK_S)
            idx = sp.to(tl.int64)[:, None] * C + cols[None, :]
            ok = (sp < n_splits)[:, None] & c_ok[None, :]
            r = _pow2(tl.load(PEXP + idx, mask=ok, other=0) - e[None, :])
            d = tl.load(PMEAN + idx, mask=ok, other=0.0) * r - mean[None, :]
            cnt = tl.load(PCNT + idx, mask=ok, other=0.0)
            m2 += tl.sum(tl.load(PM2 + idx, mask=ok, other=0.0) * (r * r) + cnt * d * d, 0)
        up = _pow2(e)
        mean *= up
        var_e = m2 / M
        var = var_e * up * up  # inf when the variance does not fit float32; eps is negligible then
        rstd = tl.where(var < float("inf"), 1.0 / tl.sqrt(var + eps), _pow2(-e) / tl.sqrt(var_e))
        # what the running variance averages, in float64: it may exceed float32 where the update does not
        up64 = up.to(tl.float64)
        tl.store(UVAR + cols, (m2 / (M - 1)).to(tl.float64) * up64 * up64, mask=c_ok)
    else:
        mean = tl.load(RMEAN + cols, mask=c_ok, other=0.0).to(tl.float32)
        var = tl.load(RVAR + cols, mask=c_ok, other=0.0).to(tl.float32)
        rstd = 1.0 / tl.sqrt(var + eps)
    tl.store(MEAN + cols, mean, mask=c_ok)
    tl.store(RSTD + cols, rstd, mask=c_ok)
    tl.store(SCALE + cols, tl.load(W + cols, mask=c_ok, other=0.0).to(tl.float32) * rstd, mask=c_ok)


@triton.jit
def _apply_kernel(
    X, R, Y, MEAN, SCALE, B, C, HW, SB, stride_n, stride_c, stride_s,
    HAS_RES: tl.constexpr, RELU: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = cols < C
    off, mask, _ = _unit(tl.program_id(0), SB, HW, stride_n, stride_c, stride_s, cols, c_ok, BLOCK_M)
    mean = tl.load(MEAN + cols, mask=c_ok, other=0.0)
    scale = tl.load(SCALE + cols, mask=c_ok, other=0.0)
    bias = tl.load(B + cols, mask=c_ok, other=0.0).to(tl.float32)
    # (x - mean) * scale + bias, not x * scale + (bias - mean * scale): no cancellation when |mean| >> std
    x = tl.load(X + off, mask=mask, other=0.0).to(tl.float32)
    y = (x - mean[None, :]) * scale[None, :] + bias[None, :]
    if HAS_RES:
        y += tl.load(R + off, mask=mask, other=0.0).to(tl.float32)
    if RELU:
        y = tl.maximum(y, 0.0, propagate_nan=tl.PropagateNan.ALL)  # NaN stays NaN, as in torch.relu
    tl.store(Y + off, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_reduce_kernel(
    DY, X, Y, MEAN, RSTD, PSUM, PSUMX, C, HW, SB, U, stride_n, stride_c, stride_s, units_per_split,
    RELU: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = cols < C
    start = tl.program_id(1) * units_per_split
    end = tl.minimum(start + units_per_split, U)
    mean = tl.load(MEAN + cols, mask=c_ok, other=0.0)
    rstd = tl.load(RSTD + cols, mask=c_ok, other=0.0)
    acc = tl.zeros((BLOCK_C,), tl.float32)
    acc_x = tl.zeros((BLOCK_C,), tl.float32)
    for u in range(start, end):
        off, mask, _ = _unit(u, SB, HW, stride_n, stride_c, stride_s, cols, c_ok, BLOCK_M)
        dz = tl.load(DY + off, mask=mask, other=0.0).to(tl.float32)
        if RELU:
            dz = tl.where(tl.load(Y + off, mask=mask, other=0.0) > 0, dz, 0.0)
        xhat = (tl.load(X + off, mask=mask, other=0.0).to(tl.float32) - mean[None, :]) * rstd[None, :]
        acc += tl.sum(dz, 0)
        acc_x += tl.sum(dz * xhat, 0)
    out = tl.program_id(1).to(tl.int64) * C + cols
    tl.store(PSUM + out, acc, mask=c_ok)
    tl.store(PSUMX + out, acc_x, mask=c_ok)


@triton.jit
def _bwd_finalize_kernel(
    PSUM, PSUMX, W, RSTD, DW, DB, COEF_A, COEF_B, COEF_C, M, C, n_splits,
    TRAINING: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = cols < C
    s_dz = tl.zeros((BLOCK_C,), tl.float32)
    s_dzx = tl.zeros((BLOCK_C,), tl.float32)
    for s0 in range(0, n_splits, BLOCK_S):
        sp = s0 + tl.arange(0, BLOCK_S)
        idx = sp.to(tl.int64)[:, None] * C + cols[None, :]
        ok = (sp < n_splits)[:, None] & c_ok[None, :]
        s_dz += tl.sum(tl.load(PSUM + idx, mask=ok, other=0.0), 0)
        s_dzx += tl.sum(tl.load(PSUMX + idx, mask=ok, other=0.0), 0)
    tl.store(DW + cols, s_dzx.to(DW.dtype.element_ty), mask=c_ok)
    tl.store(DB + cols, s_dz.to(DB.dtype.element_ty), mask=c_ok)
    a = tl.load(W + cols, mask=c_ok, other=0.0).to(tl.float32) * tl.load(RSTD + cols, mask=c_ok, other=0.0)
    tl.store(COEF_A + cols, a, mask=c_ok)
    # training: the batch statistics depend on x, which adds the mean(dz) and mean(dz*xhat) terms
    tl.store(COEF_B + cols, s_dz / M if TRAINING else s_dz * 0.0, mask=c_ok)
    tl.store(COEF_C + cols, s_dzx / M if TRAINING else s_dzx * 0.0, mask=c_ok)


@triton.jit
def _bwd_apply_kernel(
    DY, X, Y, MEAN, RSTD, COEF_A, COEF_B, COEF_C, DX, DR, C, HW, SB, stride_n, stride_c, stride_s,
    RELU: tl.constexpr, HAS_RES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = cols < C
    off, mask, _ = _unit(tl.program_id(0), SB, HW, stride_n, stride_c, stride_s, cols, c_ok, BLOCK_M)
    dz = tl.load(DY + off, mask=mask, other=0.0).to(tl.float32)
    if RELU:
        dz = tl.where(tl.load(Y + off, mask=mask, other=0.0) > 0, dz, 0.0)
    mean = tl.load(MEAN + cols, mask=c_ok, other=0.0)
    rstd = tl.load(RSTD + cols, mask=c_ok, other=0.0)
    a = tl.load(COEF_A + cols, mask=c_ok, other=0.0)
    b = tl.load(COEF_B + cols, mask=c_ok, other=0.0)
    c = tl.load(COEF_C + cols, mask=c_ok, other=0.0)
    xhat = (tl.load(X + off, mask=mask, other=0.0).to(tl.float32) - mean[None, :]) * rstd[None, :]
    dx = (dz - b[None, :] - xhat * c[None, :]) * a[None, :]
    tl.store(DX + off, dx.to(DX.dtype.element_ty), mask=mask)
    if HAS_RES:
        tl.store(DR + off, dz.to(DR.dtype.element_ty), mask=mask)


class _Geometry:
    """How the kernels walk x (N, C, H, W): units of BLOCK_M spatial rows of one image, their strides,
    and the split of units into statistics programs (enough to fill the device, each a whole number of
    units; the finalize kernels merge the splits BLOCK_S at a time)."""

    def __init__(self, x: torch.Tensor) -> None:
        n, c, h, w = x.shape
        self.c, self.hw, self.m = c, h * w, n * h * w
        # (stride_n, stride_c, stride_s) of the merged spatial index s = h * W + w (valid for contiguous
        # and channels_last tensors; a size-1 dim's stride is irrelevant)
        self.strides = (x.stride(0), x.stride(1), x.stride(3) if w > 1 else x.stride(2))
        self.sb = triton.cdiv(self.hw, _BLOCK_M)
        self.units = n * self.sb
        self.c_blocks = triton.cdiv(c, _BLOCK_C)
        target = _CPU_PROGRAMS
        if x.device.type == "cuda":
            target = 4 * torch.cuda.get_device_properties(x.device).multi_processor_count
        splits = max(1, min(self.units, triton.cdiv(target, self.c_blocks)))
        self.units_per_split = triton.cdiv(self.units, splits)
        self.n_splits = triton.cdiv(self.units, self.units_per_split)


def _dense(x: torch.Tensor) -> torch.Tensor:
    """x itself when contiguous or channels_last, else a contiguous copy."""
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return x
    return x.contiguous()


def _like(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """t with exactly x's strides (the kernels address every operand with x's strides)."""
    if t.stride() == x.stride():
        return t
    return torch.empty_like(x, dtype=t.dtype).copy_(t)


def _on_device(x: torch.Tensor) -> contextlib.AbstractContextManager[object]:
    """Triton launches on the current CUDA device: make it x's."""
    return torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext()


def _check_x(op: str, x: torch.Tensor, training: bool) -> None:
    """x as the kernels walk it: (N, C, H, W), a kernel dtype, non-empty, contiguous or channels_last."""
    _checks.check_shape(op, "x", x, (None,) * 4, doc="(N, C, H, W)")
    if x.dtype not in _checks.TRITON_DTYPES:
        raise TypeError(f"{op}: x must be float32, bfloat16 or float16, got {x.dtype}")
    if x.numel() == 0:  # batch_norm_act returns eager's result for empty inputs without launching
        raise ValueError(f"{op}: x must not be empty, got shape {tuple(x.shape)}")
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        raise ValueError(
            f"{op}: x must be contiguous or channels_last, got strides {x.stride()} for shape "
            f"{tuple(x.shape)}"
        )
    if training and x.numel() == x.shape[1]:  # the unbiased variance would divide by N*H*W - 1 = 0
        raise ValueError(f"{op}: training needs N * H * W > 1, got x of shape {tuple(x.shape)}")


def _check_like_x(op: str, name: str, t: torch.Tensor, x: torch.Tensor) -> None:
    """t is read or written with x's offsets: same shape, dtype, device and strides (of dims > 1)."""
    if t.shape != x.shape:
        raise ValueError(f"{op}: {name} must have x's shape {tuple(x.shape)}, got {tuple(t.shape)}")
    if t.dtype != x.dtype or t.device != x.device:
        raise ValueError(
            f"{op}: {name} must match x's dtype and device ({x.dtype} on {x.device}), "
            f"got {t.dtype} on {t.device}"
        )
    if any(a != b for a, b, n in zip(t.stride(), x.stride(), x.shape, strict=True) if n > 1):
        raise ValueError(f"{op}: {name} must have x's strides {x.stride()}, got {t.stride()}")


def _check_channels(
    op: str, name: str, t: torch.Tensor, x: torch.Tensor, dtype: torch.dtype | None = None
) -> None:
    """t is a (C,) vector read with unit stride on x's device: floating, or exactly ``dtype``."""
    c = x.shape[1]
    _checks.check_shape(op, name, t, (c,), doc=f"({c},) (x's channels)")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{op}: {name} must be {dtype}, got {t.dtype}")
    _checks.check_floating(op, name, t, expected="floating-point")
    if t.device != x.device:
        raise ValueError(f"{op}: {name} is on {t.device} but x is on {x.device}")
    if not t.is_contiguous():
        raise ValueError(f"{op}: {name} must be contiguous (unit stride), got stride {t.stride()}")


def _check_fwd(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    residual: torch.Tensor | None,
    training: bool,
    eps: float,
) -> None:
    op = "fastalign::bn_act_fwd"
    _check_x(op, x, training)
    _check_channels(op, "weight", weight, x)
    _check_channels(op, "bias", bias, x)
    if not training and (running_mean is None or running_var is None):
        raise ValueError(f"{op}: training=False normalises with running_mean and running_var; give both")
    for name, stat in (("running_mean", running_mean), ("running_var", running_var)):
        if stat is not None:
            _check_channels(op, name, stat, x)
    if residual is not None:
        _check_like_x(op, "residual", residual, x)
    check_eps(op, eps)


def _check_bwd(
    dy: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor | None,
    weight: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    training: bool,
) -> None:
    op = "fastalign::bn_act_bwd"
    _check_x(op, x, training)
    # dy is copied to x's strides when they differ; everything else about it must match
    if dy.shape != x.shape or dy.dtype != x.dtype or dy.device != x.device:
        raise ValueError(
            f"{op}: dy must have x's shape, dtype and device ({tuple(x.shape)}, {x.dtype}, {x.device}), "
            f"got {tuple(dy.shape)}, {dy.dtype}, {dy.device}"
        )
    if y is not None:
        _check_like_x(op, "y", y, x)
    _check_channels(op, "weight", weight, x)
    _check_channels(op, "mean", mean, x, torch.float32)
    _check_channels(op, "rstd", rstd, x, torch.float32)


@torch.library.custom_op("fastalign::bn_act_fwd", mutates_args=())
def bn_act_fwd(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    residual: torch.Tensor | None,
    training: bool,
    eps: float,
    relu: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, mean, rstd, unbiased_var): y = relu(batch_norm(x) + residual); the (C,) float32 statistics it
    used, and in training the batch's unbiased variance, in float64 (it may not fit float32 when x is
    huge), for the running-statistics update (functional: autograd ops may not mutate, so the caller
    updates the buffers). (C,) operands must be contiguous; running_mean and running_var are read only
    when not training, and are then required. Bad operands raise ValueError/TypeError before any launch
    (the kernels would read out of bounds)."""
    _check_fwd(x, weight, bias, running_mean, running_var, residual, training, eps)
    g = _Geometry(x)
    c, (s_n, s_c, s_s) = g.c, g.strides
    mean, rstd, scale = (x.new_empty(c, dtype=torch.float32) for _ in range(3))
    uvar = x.new_empty(c, dtype=torch.float64)
    y = torch.empty_like(x)
    with _on_device(x):
        pmean = pm2 = pcnt = pexp = mean  # unused unless training
        if training:
            pmean, pm2, pcnt = (x.new_empty(g.n_splits, c, dtype=torch.float32) for _ in range(3))
            pexp = x.new_empty(g.n_splits, c, dtype=torch.int32)
            _stats_kernel[(g.c_blocks, g.n_splits)](
                x, pmean, pm2, pcnt, pexp, c, g.hw, g.sb, g.units, s_n, s_c, s_s, g.units_per_split,
                BLOCK_M=_BLOCK_M, BLOCK_C=_BLOCK_C,
            )  # fmt: skip
        else:
            uvar.zero_()
        _finalize_kernel[(g.c_blocks,)](
            pmean, pm2, pcnt, pexp, weight,
            running_mean if running_mean is not None else mean,
            running_var if running_var is not None else rstd,
            mean, rstd, uvar, scale, g.m, c, g.n_splits, eps,
            TRAINING=training, BLOCK_S=_BLOCK_S, BLOCK_C=_BLOCK_C,
        )  # fmt: skip
        _apply_kernel[(g.units, g.c_blocks)](
            x, residual if residual is not None else x, y, mean, scale, bias, c, g.hw, g.sb, s_n, s_c, s_s,
            HAS_RES=residual is not None, RELU=relu, BLOCK_M=_BLOCK_M, BLOCK_C=_BLOCK_C,
        )  # fmt: skip
    return y, mean, rstd, uvar


@bn_act_fwd.register_fake
def _(x, weight, bias, running_mean, running_var, residual, training, eps, relu):
    _check_fwd(x, weight, bias, running_mean, running_var, residual, training, eps)
    mean, rstd = (x.new_empty(x.shape[1], dtype=torch.float32) for _ in range(2))
    return torch.empty_like(x), mean, rstd, x.new_empty(x.shape[1], dtype=torch.float64)


@torch.library.custom_op("fastalign::bn_act_bwd", mutates_args=())
def bn_act_bwd(
    dy: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor | None,
    weight: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    training: bool,
    has_residual: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dweight, dbias, dresidual) of bn_act_fwd; ReLU when y is given; dresidual is empty without one.

    mean and rstd are bn_act_fwd's (C,) float32 outputs; y, when given, has x's strides; operands are
    checked as in bn_act_fwd."""
    _check_bwd(dy, x, y, weight, mean, rstd, training)
    g = _Geometry(x)
    c, (s_n, s_c, s_s) = g.c, g.strides
    dy = _like(dy, x)
    relu = y is not None
    y_arg = y if y is not None else x
    psum, psumx = (x.new_empty(g.n_splits, c, dtype=torch.float32) for _ in range(2))
    dweight, dbias = torch.empty_like(weight), torch.empty_like(weight)
    coef_a, coef_b, coef_c = (x.new_empty(c, dtype=torch.float32) for _ in range(3))
    dx = torch.empty_like(x)
    dres = torch.empty_like(x) if has_residual else x.new_empty(0)
    with _on_device(x):
        _bwd_reduce_kernel[(g.c_blocks, g.n_splits)](
            dy, x, y_arg, mean, rstd, psum, psumx, c, g.hw, g.sb, g.units, s_n, s_c, s_s, g.units_per_split,
            RELU=relu, BLOCK_M=_BLOCK_M, BLOCK_C=_BLOCK_C,
        )  # fmt: skip
        _bwd_finalize_kernel[(g.c_blocks,)](
            psum, psumx, weight, rstd, dweight, dbias, coef_a, coef_b, coef_c, g.m, c, g.n_splits,
            TRAINING=training, BLOCK_S=_BLOCK_S, BLOCK_C=_BLOCK_C,
        )  # fmt: skip
        _bwd_apply_kernel[(g.units, g.c_blocks)](
            dy, x, y_arg, mean, rstd, coef_a, coef_b, coef_c, dx, dres if has_residual else dx,
            c, g.hw, g.sb, s_n, s_c, s_s,
            RELU=relu, HAS_RES=has_residual, BLOCK_M=_BLOCK_M, BLOCK_C=_BLOCK_C,
        )  # fmt: skip
    return dx, dweight, dbias, dres


@bn_act_bwd.register_fake
def _(dy, x, y, weight, mean, rstd, training, has_residual):
    _check_bwd(dy, x, y, weight, mean, rstd, training)
    dres = torch.empty_like(x) if has_residual else x.new_empty(0)
    return torch.empty_like(x), torch.empty_like(weight), torch.empty_like(weight), dres


def _setup_context(ctx, inputs, output):
    x, weight, _, _, _, residual, training, _, relu = inputs
    y, mean, rstd, _ = output
    ctx.save_for_backward(x, y if relu else None, weight, mean, rstd)
    ctx.training, ctx.has_residual = training, residual is not None


def _backward(ctx, dy, _dmean, _drstd, _duvar):
    x, y, weight, mean, rstd = ctx.saved_tensors
    dx, dweight, dbias, dres = bn_act_bwd(dy, x, y, weight, mean, rstd, ctx.training, ctx.has_residual)
    return dx, dweight, dbias, None, None, dres if ctx.has_residual else None, None, None, None


bn_act_fwd.register_autograd(_backward, setup_context=_setup_context)


def batch_norm_act(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    *,
    training: bool,
    momentum: float,
    eps: float,
    residual: torch.Tensor | None = None,
    relu: bool = True,
) -> torch.Tensor:
    """The fused op on dense (contiguous or channels_last) operands; the api validates the arguments."""
    x = _dense(x)
    residual = _like(residual, x) if residual is not None else None
    # the kernels read the (C,) vectors with unit stride: an expanded or strided view gets copied
    w, b = weight.contiguous(), bias.contiguous()
    # running statistics are read only in eval mode; training updates them below
    rm = running_mean.contiguous() if running_mean is not None and not training else None
    rv = running_var.contiguous() if running_var is not None and not training else None
    y, mean, _, uvar = bn_act_fwd(x, w, b, rm, rv, residual, training, eps, relu)
    if training and running_mean is not None and running_var is not None:
        with torch.no_grad():
            running_mean.lerp_(mean.to(running_mean.dtype), momentum)
            # in float64: momentum * uvar may fit running_var's dtype where uvar does not
            running_var.copy_(torch.lerp(running_var.to(torch.float64), uvar, momentum))
    return y
