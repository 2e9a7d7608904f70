"""Public fused BatchNorm (+ residual add) (+ ReLU): validation, then dispatch to a backend."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fastalign import _backend, _checks
from fastalign.norm_act.common import check_eps, check_momentum

_dispatch = _backend.dispatcher("batch_norm_act")
_dispatch.register("triton", module="fastalign.norm_act.triton", dtypes=_checks.TRITON_DTYPES)
_dispatch.register("reference", module="fastalign.norm_act.reference")
#: What ``backend=`` accepts here.
BACKENDS: tuple[str, ...] = ("auto", *_dispatch.specs)


#: batch_norm_act of each backend chosen so far, by name: what traced code calls
_IMPLS: dict[str, Callable[..., torch.Tensor]] = {}


def _assume_constant_result(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``torch.compiler.assume_constant_result(fn)`` without importing torch._dynamo when nothing has:
    that import is half of ``import fastalign`` (2.4 of 5 s on a 2-core CPU), paid by every process that
    never compiles. The public decorator only sets this attribute (torch 2.4 to 2.13); a test checks
    that it still does, and the torch.compile tests need the mark."""
    if "torch._dynamo" in sys.modules:
        return torch.compiler.assume_constant_result(fn)
    fn._dynamo_marked_constant = True  # type: ignore[attr-defined]
    return fn


@_assume_constant_result
def _choose(backend: str, device: torch.device, dtype: torch.dtype, empty: bool) -> str:
    """The backend to run for inputs on ``device`` of ``dtype``, its function put in ``_IMPLS``.

    An empty batch runs the reference (nothing to fuse; eager defines what it returns) once the request
    is known to be valid. torch.compile evaluates this once, at trace time: the dispatcher reads the
    environment and imports the extension and the backend's module, none of which dynamo can trace.
    """
    chosen = _dispatch.choose(backend, torch.empty(0, dtype=dtype, device=device))
    if empty:
        chosen = "reference"
    if chosen not in _IMPLS:
        _IMPLS[chosen] = _dispatch.module(chosen).batch_norm_act
    return chosen


def _check_vector(name: str, t: Any, c: int, x: torch.Tensor) -> None:
    fn = "batch_norm_act"
    _checks.check_tensor(fn, name, t, shape=f"({c},)")
    _checks.check_shape(fn, name, t, (c,), doc=f"({c},) (x's channels)")
    _checks.check_floating(fn, name, t)
    if t.device != x.device:
        raise ValueError(f"{fn}: {name} is on {t.device} but x is on {x.device}")


def _validate(
    x: Any,
    weight: Any,
    bias: Any,
    running_mean: Any,
    running_var: Any,
    residual: Any,
    training: bool,
    momentum: Any,
    eps: Any,
) -> None:
    _checks.check_tensor("batch_norm_act", "x", x, shape="(N, C, H, W)")
    _checks.check_shape("batch_norm_act", "x", x, (None,) * 4, doc="(N, C, H, W)")
    _checks.check_floating("batch_norm_act", "x", x)
    c = x.shape[1]
    if c == 0:  # F.batch_norm and BatchNorm2d fail on it with an IndexError
        raise ValueError(f"batch_norm_act: x must have at least one channel, got shape {tuple(x.shape)}")
    _check_vector("weight", weight, c, x)
    _check_vector("bias", bias, c, x)
    if (running_mean is None) != (running_var is None):
        raise ValueError("batch_norm_act: running_mean and running_var must both be given or both be None")
    if running_mean is not None:
        _check_vector("running_mean", running_mean, c, x)
        _check_vector("running_var", running_var, c, x)
    elif not training:
        raise ValueError("batch_norm_act: training=False normalises with running statistics; none were given")
    check_momentum("batch_norm_act", momentum)
    check_eps("batch_norm_act", eps)
    if training and x.numel() // max(c, 1) == 1:  # as F.batch_norm: an empty batch passes through
        raise ValueError(
            "batch_norm_act: training needs more than one value per channel (N * H * W > 1), "
            f"got x of shape {tuple(x.shape)}"
        )
    if residual is not None:
        if not isinstance(residual, torch.Tensor) or residual.shape != x.shape:
            got = tuple(residual.shape) if isinstance(residual, torch.Tensor) else type(residual).__name__
            raise ValueError(f"batch_norm_act: residual must have x's shape {tuple(x.shape)}, got {got}")
        if residual.dtype != x.dtype or residual.device != x.device:
            raise ValueError(
                f"batch_norm_act: residual must match x's dtype and device ({x.dtype} on {x.device}), "
                f"got {residual.dtype} on {residual.device}"
            )


def batch_norm_act(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    running_mean: torch.Tensor | None = None,
    running_var: torch.Tensor | None = None,
    *,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    residual: torch.Tensor | None = None,
    relu: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """``relu(batch_norm(x) + residual)``: BatchNorm2d, the residual add and ReLU as one fused op.

    The chains of CORnet-S's blocks (conv -> BN -> ReLU, conv -> BN -> add -> ReLU). Same semantics as
    ``F.batch_norm`` followed by ``+ residual`` and ``F.relu``: in training it normalises with the
    batch's biased variance and, when running statistics are given, updates them in place with
    ``momentum`` and the unbiased variance; otherwise it normalises with the running statistics.
    Differentiable with respect to x, weight, bias and residual (first order: the triton backend has
    no double backward). NaN propagates as in eager (ReLU keeps NaN); an empty batch returns what eager
    returns.

    Beyond ``F.batch_norm``: a batch variance too large for x's dtype (x of 1e20 in float32) does not
    overflow: such channels are normalised from the statistics of x divided by an exact power of two,
    as exact arithmetic would (``F.batch_norm`` returns ``bias`` there; a running variance that does
    not fit its dtype becomes inf). And weight, bias and the running statistics may each have any
    floating dtype (``F.batch_norm`` wants x's, or float32 for half x): the result has x's dtype and
    the running statistics keep theirs.

    Args:
        x: (N, C, H, W) with C >= 1, contiguous or channels_last (other strides are copied); float32,
            bfloat16 or float16 for the triton backend, any float for the reference.
        weight, bias: (C,) affine parameters, any float dtype (float32 under autocast).
        running_mean, running_var: (C,) running statistics, any float dtype, updated in place when
            training; required when ``training`` is False.
        training: batch statistics (True) or running statistics (False).
        momentum: weight of the new batch in the running statistics update, a float in [0, 1].
        eps: added to the variance, a finite float > 0.
        residual: optional (N, C, H, W) tensor added after the normalisation, before the ReLU.
        relu: apply ReLU last.
        backend: "auto" (triton on CUDA, else reference), "triton" (CPU tensors with TRITON_INTERPRET=1),
            "reference".

    Returns:
        (N, C, H, W) tensor of x's dtype and memory format.
    """
    _validate(x, weight, bias, running_mean, running_var, residual, training, momentum, eps)
    kwargs: dict[str, Any] = dict(training=training, momentum=momentum, eps=eps, residual=residual, relu=relu)
    chosen = _choose(backend, x.device, x.dtype, x.numel() == 0)
    return _IMPLS[chosen](x, weight, bias, running_mean, running_var, **kwargs)


def batch_norm_module_act(
    bn: nn.BatchNorm2d,
    x: torch.Tensor,
    *,
    residual: torch.Tensor | None = None,
    relu: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """:func:`batch_norm_act` with the parameters, buffers and mode of ``bn``, as ``bn(x)`` would use them.

    Follows ``nn.BatchNorm2d.forward``: in training with running statistics it counts
    ``num_batches_tracked`` and, when ``bn.momentum`` is None, uses the cumulative average factor;
    ``track_running_stats=False`` normalises with batch statistics in both modes. ``bn.momentum`` must
    be None or in [0, 1] and ``bn.eps`` positive and finite.
    """
    if not isinstance(bn, nn.BatchNorm2d):
        raise TypeError(f"batch_norm_module_act: bn must be an nn.BatchNorm2d, got {type(bn).__name__}")
    if bn.weight is None or bn.bias is None:
        raise ValueError("batch_norm_module_act: bn must be affine (affine=False is not supported)")
    if bn.momentum is not None:
        check_momentum("batch_norm_module_act", bn.momentum, "bn.momentum")
    check_eps("batch_norm_module_act", bn.eps, "bn.eps")
    training = bn.training or (bn.running_mean is None and bn.running_var is None)
    use_running = not bn.training or bn.track_running_stats
    rm = bn.running_mean if use_running else None
    rv = bn.running_var if use_running else None
    counts = bn.training and bn.track_running_stats and bn.num_batches_tracked is not None
    factor = 0.0 if bn.momentum is None else bn.momentum
    if counts and bn.momentum is None:  # the cumulative average over the batches seen, this one included
        factor = 1.0 / (float(bn.num_batches_tracked) + 1.0)  # type: ignore[arg-type]
    y = batch_norm_act(
        x,
        bn.weight,
        bn.bias,
        rm,
        rv,
        training=training,
        momentum=factor,
        eps=bn.eps,
        residual=residual,
        relu=relu,
        backend=backend,
    )
    # counted after the call (which validates the input): a rejected input leaves the module as it was
    if counts:
        bn.num_batches_tracked.add_(1)  # type: ignore[union-attr]
    return y
