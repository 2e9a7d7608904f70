"""Public InfoNCE / CLIP loss: validation, then dispatch to a backend."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import nn

from fastalign import _backend, _checks
from fastalign.contrastive.reference import infonce_loss_reference

Reduction = Literal["mean", "sum", "none"]
_REDUCTIONS = ("mean", "sum", "none")
_FN = "infonce_loss"

# every backend module but the reference offers infonce(x, y, scale, symmetric) and IMPL (common.Primitives)
_dispatch = _backend.dispatcher("infonce_loss")
_dispatch.register("triton", module="fastalign.contrastive.triton", dtypes=_checks.TRITON_DTYPES)
_dispatch.register("torch", module="fastalign.contrastive.torch_chunked")
_dispatch.register("reference", module="fastalign.contrastive.reference", auto=False)


def _validate(x: Any, y: Any, reduction: str, symmetric: Any = True) -> None:
    _checks.check_bool(_FN, "symmetric", symmetric)  # "no" is truthy: it ran the symmetric loss
    for name, t in (("x", x), ("y", y)):
        _checks.check_tensor(_FN, name, t, shape="(N, D)")
        _checks.check_shape(_FN, name, t, (None, None), doc="(N, D)")
        _checks.check_floating(_FN, name, t)
    if x.shape != y.shape:
        raise ValueError(
            f"{_FN}: x and y must have the same shape (N, D), got x {tuple(x.shape)} and y {tuple(y.shape)}"
        )
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{_FN}: x and y must be (N, D) with N and D at least 1, got shape {tuple(x.shape)}")
    _checks.check_same_device(_FN, x=x, y=y)
    _checks.check_choice(_FN, "reduction", reduction, _REDUCTIONS)


def _scale(temperature: Any, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(1 / temperature as a 0-dim tensor on x's device, its value); differentiable when temperature is
    a tensor (reading its value syncs). Its range is checked by :func:`_check_scale`, which knows the
    dtype the chosen backend applies it in."""
    expected = "a positive and finite float, or a 0-dim floating tensor"
    if isinstance(temperature, torch.Tensor):
        if temperature.dim() != 0 or not temperature.is_floating_point():
            raise ValueError(_checks.message(_FN, "temperature", expected, temperature))
        scale = 1.0 / temperature.to(x.device)
        return scale, float(scale.detach())
    value = _checks.check_real(_FN, "temperature", temperature, positive=True, expected=expected)
    # float64 here; the backends round it once to the dtype they compute in
    return torch.tensor(1.0 / value, dtype=torch.float64, device=x.device), 1.0 / value


def _scale_dtype(x: torch.Tensor, backend: str) -> torch.dtype:
    """The dtype the logit scale is applied in: the reference multiplies its logits, of the inputs'
    dtype, by it; the blockwise backends compute in float32 (float64 for float64 inputs)."""
    return x.dtype if backend == "reference" else _checks.compute_dtype(x)


def _check_scale(value: float, dtype: torch.dtype, source: str) -> None:
    """The logit scale must be a normal, finite number in ``dtype``, with headroom for the Triton
    kernels' base-2 exponentials (scale * log2(e)): an overflowing scale gives inf or NaN logits, and
    one that underflows to 0 a NaN temperature gradient (which divides by the scale)."""
    info = torch.finfo(dtype)
    low, high = info.tiny, info.max / 2
    if not (math.isfinite(value) and low <= value <= high):  # NaN fails too
        raise ValueError(
            f"{source} = {value:.6g}; expected a normal {str(dtype).removeprefix('torch.')} number (the "
            f"dtype this backend applies the scale in) of at most half its largest, within [{low:.3g}, "
            f"{high:.3g}]: a positive temperature within [{1 / high:.3g}, {1 / low:.3g}]"
        )


def _per_index(
    x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor, symmetric: bool, backend: str
) -> torch.Tensor:
    if backend == "reference":
        return infonce_loss_reference(x, y, scale, symmetric=symmetric)
    return _dispatch.module(backend).infonce(x, y, scale, symmetric)


def _reduce(losses: torch.Tensor, reduction: str, count: int) -> torch.Tensor:
    if reduction == "none":
        return losses
    total = losses.sum()
    return total if reduction == "sum" else total / count


def infonce_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    temperature: float | torch.Tensor = 0.07,
    *,
    symmetric: bool = True,
    reduction: Reduction = "mean",
    backend: str = "auto",
    group: Any = None,
) -> torch.Tensor:
    """InfoNCE / CLIP contrastive loss with positives on the diagonal.

    ``logits = x @ y.T / temperature``; row i's positive is column i. With ``symmetric`` this is CLIP's
    loss, the mean of the cross-entropies over rows (x -> y) and over columns (y -> x). Inputs are used
    as given: normalise them first for cosine logits. Only the reference backend builds the N x N
    logits; the others stream over tiles with O(N * D) memory.

    Logits too large for the dtype they are computed in (x and y of 1e20 in float32, whose products
    overflow) make the loss unknowable, not infinite: finite x and y whose loss comes out non-finite
    raise ValueError (checking the loss costs one device sync, skipped under torch.compile and
    torch.func; NaN or inf in x or y propagate).

    Args:
        x: (N, D) float tensor.
        y: (N, D) float tensor on x's device; mixed dtypes are promoted (torch.promote_types).
        temperature: positive float, or a 0-dim tensor (gradients flow to it; checking it syncs).
            ``1 / temperature`` must be a normal number, at most half the largest, in the dtype the
            backend applies it in (float32 for float32 and half inputs, float64 for float64; the
            reference uses the inputs' dtype): else ValueError, instead of inf or NaN logits.
        symmetric: average both directions (True) or use rows only (False).
        reduction: "mean" or "sum" over the N per-index losses, or "none" for the (N,) losses
            (``0.5 * (row_i + col_i)`` when symmetric).
        backend: "auto", "reference", "torch" or "triton" (see docs/losses.md, Backends).
        group: a torch.distributed process group. Each rank passes its local shard; negatives are
            the whole global batch, the result is the global loss ("none": this rank's per-index
            losses) and the gradients of the local inputs equal those of the single-process loss
            on the concatenated batch.

    Returns:
        A scalar, or (N,) (this rank's rows with ``group``) for reduction "none".
    """
    _validate(x, y, reduction, symmetric)
    scale, value = _scale(temperature, x)
    given = (
        "the temperature tensor" if isinstance(temperature, torch.Tensor) else f"temperature {temperature!r}"
    )
    source = f"infonce_loss: {given} gives the logit scale 1/temperature"
    return _loss(x, y, (scale, value, source), symmetric, reduction, backend, group)


def _loss(
    x: torch.Tensor,
    y: torch.Tensor,
    logit_scale: tuple[torch.Tensor, float, str],
    symmetric: bool,
    reduction: str,
    backend: str,
    group: Any,
) -> torch.Tensor:
    """The loss of validated inputs; ``logit_scale`` is (scale, its value, what it came from)."""
    if x.dtype != y.dtype:  # e.g. bf16 brain embeddings under autocast vs cached fp32 image embeddings
        dtype = torch.promote_types(x.dtype, y.dtype)
        x, y = x.to(dtype), y.to(dtype)
    scale, value, source = logit_scale
    # torch.func transforms (grad, vmap, jvp) see through composite torch ops only: the reference
    # backend is those; the blockwise backends' autograd.Function is first-order and eager only
    transformed = any(torch._C._functorch.is_functorch_wrapped_tensor(t) for t in (x, y, scale))
    chosen = "reference" if transformed and backend == "auto" else _dispatch.choose(backend, x, y)
    if transformed and chosen != "reference":
        raise NotImplementedError(
            f"{_FN}: backend {chosen!r} cannot run under torch.func transforms (grad, vmap, jvp); use "
            "backend='reference' (auto picks it there)"
        )
    _check_scale(value, _scale_dtype(x, chosen), source)
    # the backends choose their own precisions; autocast would silently lower the reference's
    with torch.autocast(x.device.type, enabled=False):
        return _dispatched(x, y, scale, value, symmetric, reduction, chosen, group)


def _check_overflow(
    finite_loss: torch.Tensor, x: torch.Tensor, y: torch.Tensor, value: float, dtype: torch.dtype, group: Any
) -> None:
    """ValueError when the loss is not finite although x and y are (on every rank with ``group``:
    ``finite_loss`` is then the same on all of them): the logits overflowed ``dtype``, and the true loss,
    which may well be finite, cannot be told from inf."""
    if torch.compiler.is_compiling() or torch._C._functorch.is_functorch_wrapped_tensor(finite_loss):
        return  # a traced graph (vmap's batched tensors) cannot branch on a value: callers check the loss
    if bool(finite_loss):
        return
    inputs_finite = torch.isfinite(x).all() & torch.isfinite(y).all()
    if group is not None:
        from fastalign.contrastive.distributed import all_ranks

        inputs_finite = all_ranks(inputs_finite, group)
    if not bool(inputs_finite):
        return  # NaN and inf inputs propagate, as documented
    big_x, big_y = (float(t.detach().abs().max()) for t in (x, y))
    raise ValueError(
        f"infonce_loss: the logits x @ y.T / temperature overflow {str(dtype).removeprefix('torch.')} "
        f"(largest |x| {big_x:.3g}, largest |y| {big_y:.3g}, logit scale 1/temperature {value:.3g}), so "
        "the loss is not finite although x and y are; normalise x and y (cosine logits), scale them "
        "down, or raise the temperature"
    )


def _dispatched(
    x: torch.Tensor,
    y: torch.Tensor,
    scale: torch.Tensor,
    value: float,
    symmetric: bool,
    reduction: str,
    chosen: str,
    group: Any,
) -> torch.Tensor:
    dtype = _scale_dtype(x, chosen)  # the dtype the logits are computed in
    if group is not None:
        from fastalign.contrastive.distributed import distributed_infonce

        # the reference (impl None) materialises the global logits; the others stream over tiles
        impl = None if chosen == "reference" else _dispatch.module(chosen).IMPL
        losses, total_n, global_sum = distributed_infonce(x, y, scale, symmetric, impl, group)
        _check_overflow(torch.isfinite(global_sum), x, y, value, dtype, group)
        if reduction == "none":
            return losses
        local = _reduce(losses, reduction, total_n)
        # value of the global loss, gradient of this rank's share (the backward couples the ranks)
        target = global_sum if reduction == "sum" else global_sum / total_n
        return local + (target - local).detach()
    losses = _per_index(x, y, scale, symmetric, chosen)
    _check_overflow(torch.isfinite(losses).all(), x, y, value, dtype, group)
    return _reduce(losses, reduction, x.shape[0])


class InfoNCELoss(nn.Module):
    """The InfoNCE / CLIP loss as a module, optionally with CLIP's learnable temperature.

    With ``learnable`` the module stores ``logit_scale = log(1 / temperature)`` as a parameter and, as
    CLIP does, clamps it to at most ``log(max_logit_scale)`` (in place, before each forward), so the
    scale ``exp(logit_scale)`` never exceeds ``max_logit_scale`` (a ``temperature`` below
    ``1 / max_logit_scale`` raises ValueError). Without, ``logit_scale`` is a float64 buffer and the loss
    is :func:`infonce_loss`'s at ``temperature`` (``max_logit_scale`` unused). Each forward checks the
    scale as :func:`infonce_loss` checks ``1 / temperature`` (one device sync, besides the check of the loss):
    a NaN ``logit_scale`` raises.
    """

    def __init__(
        self, temperature: float = 0.07, learnable: bool = False, max_logit_scale: float = 100.0
    ) -> None:
        super().__init__()
        expected = "a positive and finite float"
        temperature = _checks.check_real(
            "InfoNCELoss", "temperature", temperature, positive=True, expected=expected
        )
        self.max_logit_scale = _checks.check_real(
            "InfoNCELoss", "max_logit_scale", max_logit_scale, positive=True, expected=expected
        )
        self.learnable = _checks.check_bool("InfoNCELoss", "learnable", learnable)
        init = math.log(1.0 / temperature)
        self.logit_scale: torch.Tensor  # a Parameter when learnable, else a float64 buffer
        if learnable:
            if init > math.log(self.max_logit_scale):
                # CLIP clamps the learnt scale at max_logit_scale: a start above it would be moved there
                # before the first step, silently training at another temperature than the one given
                raise ValueError(
                    f"InfoNCELoss: temperature {temperature!r} is below 1 / max_logit_scale "
                    f"(1 / {self.max_logit_scale!r}), where the learnable scale is clamped; expected a "
                    f"temperature >= {1.0 / self.max_logit_scale:.4g} or a larger max_logit_scale"
                )
            self.logit_scale = nn.Parameter(torch.tensor(init))
        else:
            # float64, as infonce_loss holds a float temperature's scale: the backends round it once to
            # the dtype they compute in (a float32 buffer was 4e-7 off float64 losses)
            self.register_buffer("logit_scale", torch.tensor(init, dtype=torch.float64))

    def _apply(self, fn: Any, recurse: bool = True) -> InfoNCELoss:
        """Module casts (``.to(torch.bfloat16)``, ``.half()``, a model's ``.to(dtype)`` with this loss as a
        submodule) move the fixed scale but keep it float64: rounded to bfloat16, 0.07 became 0.0703. A
        device without float64 (MPS) gets it in float32."""
        if self.learnable:
            return super()._apply(fn, recurse)
        exact = self.logit_scale
        super()._apply(fn, recurse)
        moved = self.logit_scale
        if moved.dtype != torch.float64:
            try:
                self.logit_scale = exact.to(device=moved.device)
            except (TypeError, RuntimeError):  # no float64 on that device
                self.logit_scale = exact.to(torch.float32).to(moved.device)
        return self

    @property
    def temperature(self) -> torch.Tensor:
        """The current temperature, 1 / exp(logit_scale)."""
        return torch.exp(-self.logit_scale.detach())

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        symmetric: bool = True,
        reduction: Reduction = "mean",
        backend: str = "auto",
        group: Any = None,
    ) -> torch.Tensor:
        """The loss of :func:`infonce_loss` at this module's temperature."""
        if self.learnable:
            with torch.no_grad():
                self.logit_scale.clamp_(max=math.log(self.max_logit_scale))
        _validate(x, y, reduction, symmetric)
        scale = self.logit_scale.exp().to(x.device)
        # one device sync per call: a NaN logit_scale (a diverged step) or one past what the compute
        # dtype holds (a loaded state_dict, a large max_logit_scale) must not give a NaN loss
        source = "InfoNCELoss: the logit scale exp(logit_scale)"
        return _loss(x, y, (scale, float(scale.detach()), source), symmetric, reduction, backend, group)

    def extra_repr(self) -> str:
        return (
            f"temperature={float(self.temperature):.4g}, learnable={self.learnable}, "
            f"max_logit_scale={self.max_logit_scale}"
        )
