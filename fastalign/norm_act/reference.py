"""The correctness oracle of :func:`fastalign.norm_act.batch_norm_act`: eager PyTorch, autograd throughout."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_HALF = (torch.float16, torch.bfloat16)

# Bits of headroom below the square root of the accumulation dtype's largest power of two: channels are
# scaled into |x| < 2^(maxexp/2 - 24), so sums of up to 2^46 squared deviations cannot overflow.
_HEADROOM_BITS = 24


def _vector_dtype(x: torch.Tensor, vectors: list[torch.Tensor]) -> torch.dtype:
    """The one dtype F.batch_norm takes for the (C,) vectors: x's when they all have it, else x's
    (float32 for half x, the mixed-precision case F.batch_norm supports) for all of them."""
    if all(v.dtype == x.dtype for v in vectors):
        return x.dtype
    return torch.float32 if x.dtype in _HALF else x.dtype


def _channel_scale(x: torch.Tensor) -> torch.Tensor:
    """(C,) powers of two s >= 1 for which x / s cannot overflow F.batch_norm's batch statistics.

    s is 1 for every channel whose largest |x| is at most 2^B (B = maxexp/2 - 24 of the accumulation
    dtype: 40 for float32, 488 for float64), else 2^(k - B) for |x| < 2^k. Dividing by a power of two is
    exact, so where s is 1 the result is F.batch_norm's bit for bit; where s > 1 eps acts as eps * s^2,
    which x's precision makes negligible beside any variance it can express at that magnitude.
    """
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    maxexp = math.frexp(torch.finfo(acc).max)[1]  # 128, 1024
    bound = 2.0 ** (maxexp // 2 - _HEADROOM_BITS)
    if x.numel() == 0:  # an empty batch: nothing to scale (and amax has no identity)
        return torch.ones(x.shape[1], dtype=acc, device=x.device)
    amax = x.detach().abs().amax(dim=(0, 2, 3)).to(acc)
    mantissa, _ = torch.frexp(amax)
    # amax / mantissa is exactly the power of two 2^k above amax (a NaN channel keeps s = 1)
    return torch.where(amax > bound, amax / mantissa / bound, 1.0)


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
    """relu(batch_norm(x) + residual), exactly as BatchNorm2d, ``+`` and ReLU compute it in eager mode.

    Two extensions of F.batch_norm, each exact wherever F.batch_norm itself works: (C,) vectors of
    mixed dtypes are cast to the one it takes (see :func:`_vector_dtype`; the running statistics are
    updated in that dtype and stored back in their own), and in training each channel is normalised as
    ``x / s`` (see :func:`_channel_scale`), so a batch variance beyond the dtype's range normalises
    correctly instead of to ``bias``; the running statistics follow in ``x / s``'s units.
    """
    running = [t for t in (running_mean, running_var) if t is not None]
    dtype = _vector_dtype(x, [weight, bias, *running])
    w, b = weight.to(dtype), bias.to(dtype)
    if not training:
        rm, rv = (t.to(dtype) if t is not None else None for t in (running_mean, running_var))
        y = F.batch_norm(x, rm, rv, w, b, False, momentum, eps)
    else:
        s = _channel_scale(x)
        xs = x / s.to(x.dtype).view(1, -1, 1, 1)
        # fresh copies in x / s's units for F.batch_norm to update; copied back below
        rm = (running_mean / s).to(dtype) if running_mean is not None else None
        rv = (running_var / s / s).to(dtype) if running_var is not None else None
        y = F.batch_norm(xs, rm, rv, w, b, True, momentum, eps)
        with torch.no_grad():
            if running_mean is not None and rm is not None:
                running_mean.copy_(rm * s)
            if running_var is not None and rv is not None:
                running_var.copy_(rv * s * s)
    if residual is not None:
        y = y + residual
    return F.relu(y) if relu else y
