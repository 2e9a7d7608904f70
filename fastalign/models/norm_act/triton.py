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
updates the running statistics with PyTorch's formula (unbiased variance, ``momentum``).

Both directions are ``torch.library`` custom ops (``fastalign::bn_act_fwd`` / ``bn_act_bwd``) with fake
(meta) implementations and registered autograd, so ``torch.compile(fullgraph=True)`` traces through them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_BLOCK_M = 64
_BLOCK_C = 64


@triton.jit
def _offsets(rows, cols, HW, stride_n, stride_c, stride_s):
    rows = rows.to(tl.int64)
    n = rows // HW
    return (n * stride_n + (rows - n * HW) * stride_s)[:, None] + cols.to(tl.int64)[None, :] * stride_c


@triton.jit
def _stats_kernel(
    X, PMEAN, PM2, M, C, HW, stride_n, stride_c, stride_s, rows_per_split,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = cols < C
    start = tl.program_id(1) * rows_per_split
    end = tl.minimum(start + rows_per_split, M)
    mean = tl.zeros((BLOCK_C,), tl.float32)
    m2 = tl.zeros((BLOCK_C,), tl.float32)
    for r0 in range(start, end, BLOCK_M):
        rows = r0 + tl.arange(0, BLOCK_M)
        r_ok = rows < end
        x = tl.load(X + _offsets(rows, cols, HW, stride_n, stride_c, stride_s),
                    mask=r_ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)  # fmt: skip
        n_prev = (r0 - start).to(tl.float32)
        n_b = tl.minimum(end - r0, BLOCK_M).to(tl.float32)
        mean_b = tl.sum(x, 0) / n_b
        d = tl.where(r_ok[:, None], x - mean_b[None, :], 0.0)
        # Chan et al.: merge the block's (n_b, mean_b, M2_b) into the running (n_prev, mean, m2)
        delta = mean_b - mean
        total = n_prev + n_b
        mean += delta * (n_b / total)
        m2 += tl.sum(d * d, 0) + delta * delta * (n_prev * n_b / total)
    out = tl.program_id(1).to(tl.int64) * C + cols
    tl.store(PMEAN + out, mean, mask=c_ok)
    tl.store(PM2 + out, m2, mask=c_ok)


@triton.jit
def _finalize_kernel(
    PMEAN, PM2, W, RMEAN, RVAR, MEAN, RSTD, UVAR, SCALE,
    M, C, n_splits, rows_per_split, eps,
    TRAINING: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = cols < C
    if TRAINING:
        mean = tl.zeros((BLOCK_C,), tl.float32)
        m2 = tl.zeros((BLOCK_C,), tl.float32)
        for s in range(0, n_splits):
            n_prev = (s * rows_per_split).to(tl.float32)
            n_s = tl.minimum(rows_per_split, M - s * rows_per_split).to(tl.float32)
            mean_s = tl.load(PMEAN + s * C + cols, mask=c_ok, other=0.0)
            delta = mean_s - mean
            total = n_prev + n_s
            mean += delta * (n_s / total)
            m2 += tl.load(PM2 + s * C + cols, mask=c_ok, other=0.0) + delta * delta * (n_prev * n_s / total)
        var = m2 / M
        tl.store(UVAR + cols, m2 / (M - 1), mask=c_ok)  # what the running variance averages
    else:
        mean = tl.load(RMEAN + cols, mask=c_ok, other=0.0).to(tl.float32)
        var = tl.load(RVAR + cols, mask=c_ok, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(var + eps)
    tl.store(MEAN + cols, mean, mask=c_ok)
    tl.store(RSTD + cols, rstd, mask=c_ok)
    tl.store(SCALE + cols, tl.load(W + cols, mask=c_ok, other=0.0).to(tl.float32) * rstd, mask=c_ok)


@triton.jit
def _apply_kernel(
    X, R, Y, MEAN, SCALE, B, M, C, HW, stride_n, stride_c, stride_s,
    HAS_RES: tl.constexpr, RELU: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = cols < C
    mask = (rows < M)[:, None] & c_ok[None, :]
    off = _offsets(rows, cols, HW, stride_n, stride_c, stride_s)
    mean = tl.load(MEAN + cols, mask=c_ok, other=0.0)
    scale = tl.load(SCALE + cols, mask=c_ok, other=0.0)
    bias = tl.load(B + cols, mask=c_ok, other=0.0).to(tl.float32)
    # (x - mean) * scale + bias, not x * scale + (bias - mean * scale): no cancellation when |mean| >> std
    x = tl.load(X + off, mask=mask, other=0.0).to(tl.float32)
    y = (x - mean[None, :]) * scale[None, :] + bias[None, :]
    if HAS_RES:
        y += tl.load(R + off, mask=mask, other=0.0).to(tl.float32)
    if RELU:
        y = tl.maximum(y, 0.0)
    tl.store(Y + off, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_reduce_kernel(
    DY, X, Y, MEAN, RSTD, PSUM, PSUMX, M, C, HW, stride_n, stride_c, stride_s, rows_per_split,
    RELU: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = cols < C
    start = tl.program_id(1) * rows_per_split
    end = tl.minimum(start + rows_per_split, M)
    mean = tl.load(MEAN + cols, mask=c_ok, other=0.0)
    rstd = tl.load(RSTD + cols, mask=c_ok, other=0.0)
    acc = tl.zeros((BLOCK_C,), tl.float32)
    acc_x = tl.zeros((BLOCK_C,), tl.float32)
    for r0 in range(start, end, BLOCK_M):
        rows = r0 + tl.arange(0, BLOCK_M)
        mask = (rows < end)[:, None] & c_ok[None, :]
        off = _offsets(rows, cols, HW, stride_n, stride_c, stride_s)
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
    TRAINING: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = cols < C
    s_dz = tl.zeros((BLOCK_C,), tl.float32)
    s_dzx = tl.zeros((BLOCK_C,), tl.float32)
    for s in range(0, n_splits):
        s_dz += tl.load(PSUM + s * C + cols, mask=c_ok, other=0.0)
        s_dzx += tl.load(PSUMX + s * C + cols, mask=c_ok, other=0.0)
    tl.store(DW + cols, s_dzx.to(DW.dtype.element_ty), mask=c_ok)
    tl.store(DB + cols, s_dz.to(DB.dtype.element_ty), mask=c_ok)
    a = tl.load(W + cols, mask=c_ok, other=0.0).to(tl.float32) * tl.load(RSTD + cols, mask=c_ok, other=0.0)
    tl.store(COEF_A + cols, a, mask=c_ok)
    # training: the batch statistics depend on x, which adds the mean(dz) and mean(dz*xhat) terms
    tl.store(COEF_B + cols, s_dz / M if TRAINING else s_dz * 0.0, mask=c_ok)
    tl.store(COEF_C + cols, s_dzx / M if TRAINING else s_dzx * 0.0, mask=c_ok)


@triton.jit
def _bwd_apply_kernel(
    DY, X, Y, MEAN, RSTD, COEF_A, COEF_B, COEF_C, DX, DR, M, C, HW, stride_n, stride_c, stride_s,
    RELU: tl.constexpr, HAS_RES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = cols < C
    mask = (rows < M)[:, None] & c_ok[None, :]
    off = _offsets(rows, cols, HW, stride_n, stride_c, stride_s)
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


def _layout(x: torch.Tensor) -> tuple[torch.memory_format, tuple[int, int, int]]:
    """x's memory format and (stride_n, stride_c, stride_s) of the merged spatial index s = h * W + w."""
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    stride_s = x.stride(3) if x.shape[3] > 1 else x.stride(2)
    return fmt, (x.stride(0), x.stride(1), stride_s)


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


def _splits(m: int, c_blocks: int, device: torch.device) -> tuple[int, int]:
    """(n_splits, rows_per_split): enough programs to fill the device, each a whole number of blocks."""
    target = 4
    if device.type == "cuda":
        target *= torch.cuda.get_device_properties(device).multi_processor_count
    blocks = triton.cdiv(m, _BLOCK_M)
    splits = max(1, min(blocks, triton.cdiv(target, c_blocks)))
    rows = triton.cdiv(blocks, splits) * _BLOCK_M
    return triton.cdiv(m, rows), rows


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
    used, and in training the batch's unbiased variance for the running-statistics update (functional:
    autograd ops may not mutate, so the caller updates the buffers)."""
    n, c, h, w = x.shape
    m, hw = n * h * w, h * w
    _, (s_n, s_c, s_s) = _layout(x)
    c_blocks = triton.cdiv(c, _BLOCK_C)
    mean, rstd, uvar, scale = (x.new_empty(c, dtype=torch.float32) for _ in range(4))
    n_splits, rows = _splits(m, c_blocks, x.device)
    pmean = pm2 = mean  # unused unless training
    if training:
        pmean, pm2 = (x.new_empty(n_splits, c, dtype=torch.float32) for _ in range(2))
        _stats_kernel[(c_blocks, n_splits)](
            x, pmean, pm2, m, c, hw, s_n, s_c, s_s, rows, BLOCK_M=_BLOCK_M, BLOCK_C=_BLOCK_C
        )
    else:
        uvar.zero_()
    _finalize_kernel[(c_blocks,)](
        pmean, pm2, weight,
        running_mean if running_mean is not None else mean, running_var if running_var is not None else rstd,
        mean, rstd, uvar, scale, m, c, n_splits, rows, eps,
        TRAINING=training, BLOCK_C=_BLOCK_C,
    )  # fmt: skip
    y = torch.empty_like(x)
    res = _like(residual, x) if residual is not None else x
    _apply_kernel[(triton.cdiv(m, _BLOCK_M), c_blocks)](
        x, res, y, mean, scale, bias, m, c, hw, s_n, s_c, s_s,
        HAS_RES=residual is not None, RELU=relu, BLOCK_M=_BLOCK_M, BLOCK_C=_BLOCK_C,
    )  # fmt: skip
    return y, mean, rstd, uvar


@bn_act_fwd.register_fake
def _(x, weight, bias, running_mean, running_var, residual, training, eps, relu):
    stats = [x.new_empty(x.shape[1], dtype=torch.float32) for _ in range(3)]
    return torch.empty_like(x), *stats


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
    """(dx, dweight, dbias, dresidual) of bn_act_fwd; ReLU when y is given; dresidual is empty without one."""
    n, c, h, w = x.shape
    m, hw = n * h * w, h * w
    _, (s_n, s_c, s_s) = _layout(x)
    dy = _like(dy, x)
    relu = y is not None
    c_blocks = triton.cdiv(c, _BLOCK_C)
    n_splits, rows = _splits(m, c_blocks, x.device)
    psum, psumx = (x.new_empty(n_splits, c, dtype=torch.float32) for _ in range(2))
    y_arg = y if y is not None else x
    _bwd_reduce_kernel[(c_blocks, n_splits)](
        dy, x, y_arg, mean, rstd, psum, psumx, m, c, hw, s_n, s_c, s_s, rows,
        RELU=relu, BLOCK_M=_BLOCK_M, BLOCK_C=_BLOCK_C,
    )  # fmt: skip
    dweight, dbias = torch.empty_like(weight), torch.empty_like(weight)
    coef_a, coef_b, coef_c = (x.new_empty(c, dtype=torch.float32) for _ in range(3))
    _bwd_finalize_kernel[(c_blocks,)](
        psum, psumx, weight, rstd, dweight, dbias, coef_a, coef_b, coef_c, m, c, n_splits,
        TRAINING=training, BLOCK_C=_BLOCK_C,
    )  # fmt: skip
    dx = torch.empty_like(x)
    dres = torch.empty_like(x) if has_residual else x.new_empty(0)
    _bwd_apply_kernel[(triton.cdiv(m, _BLOCK_M), c_blocks)](
        dy, x, y_arg, mean, rstd, coef_a, coef_b, coef_c, dx, dres, m, c, hw, s_n, s_c, s_s,
        RELU=relu, HAS_RES=has_residual, BLOCK_M=_BLOCK_M, BLOCK_C=_BLOCK_C,
    )  # fmt: skip
    return dx, dweight, dbias, dres


@bn_act_bwd.register_fake
def _(dy, x, y, weight, mean, rstd, training, has_residual):
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


def batch_norm_act_triton(
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
    y, mean, _, uvar = bn_act_fwd(x, weight, bias, running_mean, running_var, residual, training, eps, relu)
    if training and running_mean is not None and running_var is not None:
        with torch.no_grad():
            running_mean.lerp_(mean.to(running_mean.dtype), momentum)
            running_var.lerp_(uvar.to(running_var.dtype), momentum)
    return y
