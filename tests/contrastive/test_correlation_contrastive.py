"""ReAlnet's correlation-contrastive loss: both backends against numpy / scipy in float64, gradients,
half precision against the same-dtype reference, invariances, the published no-gradient form, refusals,
torch.compile, and the O(B * D) memory of the torch backend."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from scipy import stats
from torch.utils._python_dispatch import TorchDispatchMode

import fastalign
from fastalign.contrastive import correlation_contrastive_loss
from fastalign.contrastive.correlation import correlation_contrastive

BACKENDS = ["torch", "reference"]
# batch sizes around the published 16, primes included; D of 2 to 300 (the fixed-size tests take 340)
SIZES_B = st.sampled_from([2, 3, 5, 7, 11, 13, 16, 17, 31, 32, 33])
SIZES_D = st.integers(2, 300)


def _inputs(b: int, d: int, seed: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
    """pred and target rows that correlate as in training, each with its own offset and scale (which
    Pearson must ignore)."""
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(b, d, generator=g, dtype=torch.float64)
    target = torch.randn(b, d, generator=g, dtype=torch.float64) + 0.7 * pred
    for t in (pred, target):
        t.mul_(torch.rand(b, 1, generator=g, dtype=torch.float64) * 4 + 0.1)
        t.add_(torch.randn(b, 1, generator=g, dtype=torch.float64) * 3)
    return pred.to(dtype), target.to(dtype)


def _from_matrix(r: np.ndarray) -> float:
    """1 - mean of the diagonal + mean off the diagonal, of a B x B matrix."""
    b = r.shape[0]
    return float(1 - np.trace(r) / b + (r.sum() - np.trace(r)) / (b * (b - 1)))


def _numpy_oracle(pred: torch.Tensor, target: torch.Tensor) -> float:
    b = pred.shape[0]
    r = np.corrcoef(pred.double().numpy(), target.double().numpy())[:b, b:]
    return _from_matrix(r)


def _loss(pred: torch.Tensor, target: torch.Tensor, backend: str, **kw) -> torch.Tensor:
    return correlation_contrastive_loss(pred, target, backend=backend, **kw)


def test_exported() -> None:
    assert fastalign.contrastive.correlation_contrastive_loss is correlation_contrastive_loss
    assert "correlation_contrastive_loss" in fastalign.contrastive.__all__


@pytest.mark.parametrize("backend", BACKENDS)
@given(b=SIZES_B, d=SIZES_D, seed=st.integers(0, 2**31))
def test_float64_matches_numpy_corrcoef(backend: str, b: int, d: int, seed: int) -> None:
    pred, target = _inputs(b, d, seed)
    got = _loss(pred, target, backend)
    assert got.dtype == torch.float64 and got.shape == ()
    assert abs(float(got) - _numpy_oracle(pred, target)) < 1e-12


def test_float64_matches_scipy_pearsonr_pair_by_pair() -> None:
    pred, target = _inputs(6, 340, 0)
    p, t = pred.numpy(), target.numpy()
    r = np.array([[stats.pearsonr(p[i], t[j]).statistic for j in range(6)] for i in range(6)])
    want = _from_matrix(r)
    for backend in BACKENDS:
        assert abs(float(_loss(pred, target, backend)) - want) < 1e-12


@given(b=SIZES_B, d=SIZES_D, seed=st.integers(0, 2**31))
def test_torch_backend_matches_reference_with_gradients(b: int, d: int, seed: int) -> None:
    pred, target = _inputs(b, d, seed)
    results = []
    for backend in BACKENDS:
        p, t = pred.clone().requires_grad_(), target.clone().requires_grad_()
        loss = _loss(p, t, backend)
        loss.backward()
        results.append((loss, p.grad, t.grad))
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(backend: str) -> None:
    pred, target = _inputs(5, 7, 3)
    args = (pred.requires_grad_(), target.requires_grad_())
    assert torch.autograd.gradcheck(lambda p, t: _loss(p, t, backend), args)
    assert torch.autograd.gradgradcheck(lambda p, t: _loss(p, t, backend), args)


def _loss_and_grads(pred: torch.Tensor, target: torch.Tensor, backend: str) -> list[torch.Tensor]:
    """The loss and the gradients of both inputs, as float64."""
    p, t = pred.detach().clone().requires_grad_(), target.detach().clone().requires_grad_()
    loss = _loss(p, t, backend)
    loss.backward()
    return [v.detach().double() for v in (loss, p.grad, t.grad)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@given(b=SIZES_B, d=SIZES_D, seed=st.integers(0, 2**31))
def test_half_inputs_within_twice_the_same_dtype_reference(
    dtype: torch.dtype, b: int, d: int, seed: int
) -> None:
    """Loss and gradients against the float64 loss of the same (rounded) inputs: at most twice the error
    of the reference computed in the inputs' dtype, plus the rounding of float32 arithmetic (loss) and
    of the inputs' dtype (gradients, whose size for row i is about 1 / (B * |centred row i|))."""
    pred, target = _inputs(b, d, seed, dtype)
    assume(bool((pred.diff(dim=1) != 0).any(1).all() & (target.diff(dim=1) != 0).any(1).all()))  # rounding
    assert _loss(pred, target, "torch").dtype == torch.float32
    exact = _loss_and_grads(pred.double(), target.double(), "reference")
    ours = [(a - e).abs().max() for a, e in zip(_loss_and_grads(pred, target, "torch"), exact, strict=True)]
    ref = [
        (a - e).abs().max() for a, e in zip(_loss_and_grads(pred, target, "reference"), exact, strict=True)
    ]
    spread = min(
        float((v - v.mean(1, keepdim=True)).norm(dim=1).min()) for v in (pred.double(), target.double())
    )
    floors = [1e-5, *[torch.finfo(dtype).eps / (b * spread)] * 2]
    for name, o, r, floor in zip(("loss", "d pred", "d target"), ours, ref, floors, strict=True):
        assert o <= 2 * r + floor, f"{name}: error {o:.3g}, same-dtype reference's {r:.3g}"


def test_mixed_dtypes_compute_in_the_wider() -> None:
    pred, target = _inputs(8, 40, 1)
    assert _loss(pred.bfloat16(), target.float(), "torch").dtype == torch.float32
    assert _loss(pred.float(), target, "torch").dtype == torch.float64
    assert _loss(pred.bfloat16(), target.float(), "reference").dtype == torch.float32
    want = _numpy_oracle(pred.float(), target)
    assert abs(float(_loss(pred.float(), target, "torch")) - want) < 1e-12


@pytest.mark.parametrize("backend", BACKENDS)
@given(
    b=SIZES_B,
    d=st.integers(2, 60),
    seed=st.integers(0, 2**31),
    scale=st.sampled_from([3.7e-200, 1e-9, 0.3, 7.0, 2.5e12, 4.1e200]),
    shift=st.floats(-10, 10),
)
def test_affine_invariance_and_sign(
    backend: str, b: int, d: int, seed: int, scale: float, shift: float
) -> None:
    """r(a * x + c, y) = sign(a) r(x, y): the loss ignores positive scales and offsets per row, at any
    float64 magnitude, and negating pred gives 2 - C."""
    pred, target = _inputs(b, d, seed)
    base = float(_loss(pred, target, backend))
    spread = pred.std(dim=1, keepdim=True)
    moved = (pred + shift * spread) * scale
    assert abs(float(_loss(moved, target * scale, backend)) - base) < 1e-12
    assert abs(float(_loss(-moved, target, backend)) - (2 - base)) < 1e-12


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("magnitude", [1e30, 1e-30])
def test_float32_at_extreme_magnitudes(backend: str, magnitude: float) -> None:
    """Sums of squares of such rows overflow or underflow float32: exact power-of-two row scaling."""
    pred, target = _inputs(16, 340, 2)
    want = _numpy_oracle(pred, target)
    got = _loss((pred * magnitude).float(), (target * magnitude).float(), backend)
    assert got.dtype == torch.float32
    assert abs(float(got) - want) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_memory_layouts(backend: str) -> None:
    pred, target = _inputs(9, 13, 4)
    want = float(_loss(pred, target, backend))
    transposed = (pred.T.contiguous().T, target.T.contiguous().T)
    stepped = (torch.zeros(9, 26, dtype=pred.dtype), torch.zeros(9, 26, dtype=pred.dtype))
    stepped[0][:, ::2], stepped[1][:, ::2] = pred, target
    for p, t in (transposed, (stepped[0][:, ::2], stepped[1][:, ::2])):
        assert not p.is_contiguous()
        assert abs(float(_loss(p, t, backend)) - want) < 1e-12


def _published(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The published construction: a Pearson coefficient per pair (np.corrcoef here, torchmetrics there)
    into torch.tensor(list)."""
    p, t = pred.detach().numpy(), target.detach().numpy()
    pos, neg = [], []
    for i in range(p.shape[0]):
        for j in range(p.shape[0]):
            (pos if i == j else neg).append(np.corrcoef(p[i], t[j])[0, 1])
    return 1 - torch.mean(torch.tensor(pos)) + torch.mean(torch.tensor(neg))


@pytest.mark.parametrize("backend", BACKENDS)
def test_detach_is_the_published_value_without_gradient(backend: str) -> None:
    pred, target = _inputs(16, 340, 5, torch.float32)
    pred.requires_grad_()
    differentiable = _loss(pred, target, backend)
    detached = _loss(pred, target, backend, detach=True)
    assert differentiable.requires_grad
    assert not detached.requires_grad and detached.grad_fn is None
    assert torch.equal(detached, differentiable.detach())
    published = _published(pred, target)
    assert abs(float(detached) - float(published)) < 1e-6


def test_spearman_variant_is_the_loss_of_ranks() -> None:
    """ReAlnet.py's Spearman form: the loss of average ranks (ties included) against scipy's spearmanr,
    with no gradient (ranks are piecewise constant)."""
    pred, target = _inputs(7, 50, 6)
    target[:, :10] = target[:, :10].round()  # ties
    pred.requires_grad_()
    got = correlation_contrastive_loss(fastalign.rank(pred, dim=1), fastalign.rank(target, dim=1))
    assert not got.requires_grad
    p, t = pred.detach().numpy(), target.numpy()
    r = np.array([[stats.spearmanr(p[i], t[j]).statistic for j in range(7)] for i in range(7)])
    assert abs(float(got) - _from_matrix(r)) < 1e-12


class _LargestOutput(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_torch_backend_never_forms_a_b_by_b_tensor() -> None:
    b, d = 200, 3
    pred, target = (t.requires_grad_() for t in _inputs(b, d, 7, torch.float32))
    with _LargestOutput() as mode:
        _loss(pred, target, "torch").backward()
    assert mode.largest <= b * d
    with _LargestOutput() as mode:
        _loss(pred, target, "reference").backward()
    assert mode.largest >= b * b  # the probe sees B x B tensors where they exist


def test_torch_backend_compiles_to_one_graph() -> None:
    compiled = torch.compile(correlation_contrastive, backend="aot_eager", fullgraph=True)
    pred, target = _inputs(16, 34, 8, torch.float32)
    results = []
    for fn, constant_row in ((correlation_contrastive, False), (compiled, False), (compiled, True)):
        p = pred.clone()
        if constant_row:  # same shapes and flags as before: the same graph, no recompilation
            p[3] = 1.0
        p.requires_grad_()
        loss = fn(p, target)
        loss.backward()
        results.append((loss, p.grad))
    for got, want in zip(*results[:2], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert torch.isnan(results[2][0])


@pytest.mark.slow
def test_inductor_compiles_the_training_graph() -> None:
    # inductor's CPU code for frexp's int32 exponent converted to int64 did not compile (the backward
    # graph, when pred requires grad): the exponent is now read from the float64 bits
    compiled = torch.compile(correlation_contrastive, fullgraph=True)
    pred, target = _inputs(6, 20, 12, torch.float32)
    grads = []
    for fn in (correlation_contrastive, compiled):
        p = pred.clone().requires_grad_()
        loss = fn(p, target)
        loss.backward()
        grads.append((loss.detach(), p.grad))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-5, atol=1e-7)


def test_while_compiling_bad_rows_give_nan(monkeypatch: pytest.MonkeyPatch) -> None:
    """A traced graph cannot branch on values: the public function skips its check and returns NaN."""
    pred, target = _inputs(4, 6, 11)
    pred[1] = 7.0
    with pytest.raises(ValueError, match="row 1 constant"):
        correlation_contrastive_loss(pred, target)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert torch.isnan(correlation_contrastive_loss(pred, target))


_GOOD = torch.randn(4, 5)


def _with(row_value: float, which: int, row: int = 2, column: int | None = None) -> tuple[torch.Tensor, ...]:
    pred, target = _GOOD.clone(), torch.randn(4, 5)
    t = (pred, target)[which]
    if column is None:
        t[row] = row_value
    else:
        t[row, column] = row_value
    return pred, target


# (pred, target, keywords, exception, every fragment the message must contain)
REFUSED = {
    "pred not a tensor": ([[1.0, 2.0]] * 3, _GOOD, {}, TypeError, ["pred", "torch.Tensor", "list"]),
    "target not a tensor": (_GOOD, np.zeros((4, 5)), {}, TypeError, ["target", "torch.Tensor", "ndarray"]),
    "integer pred": (_GOOD.long(), _GOOD, {}, TypeError, ["pred", "floating-point", "int64"]),
    "complex target": (_GOOD, _GOOD.cfloat(), {}, TypeError, ["target", "floating-point", "complex64"]),
    "1-D pred": (_GOOD[0], _GOOD[0], {}, ValueError, ["pred", "(B, D)", "(5,)"]),
    "3-D target": (_GOOD, _GOOD[None], {}, ValueError, ["target", "(B, D)", "(1, 4, 5)"]),
    "shapes differ": (_GOOD, _GOOD[:, :4], {}, ValueError, ["target", "pred's shape (4, 5)", "(4, 4)"]),
    "one row": (_GOOD[:1], _GOOD[:1], {}, ValueError, ["at least 2 rows", "i != j", "(1, 5)"]),
    "no rows": (_GOOD[:0], _GOOD[:0], {}, ValueError, ["at least 2 rows", "(0, 5)"]),
    "one column": (_GOOD[:, :1], _GOOD[:, :1], {}, ValueError, ["at least 2 columns", "(4, 1)"]),
    "two devices": (_GOOD, _GOOD.to("meta"), {}, ValueError, ["pred on cpu", "target on meta"]),
    "NaN in pred": (*_with(math.nan, 0, 2, 1), {}, ValueError, ["pred must be finite", "row 2"]),
    "inf in target": (*_with(math.inf, 1, 0, 4), {}, ValueError, ["target must be finite", "row 0"]),
    "constant pred row": (*_with(0.25, 0, 3), {}, ValueError, ["row of pred", "row 3 constant", "0.25"]),
    "constant target row": (*_with(-2.0, 1, 1), {}, ValueError, ["row of target", "row 1", "-2.0"]),
    "detach not a bool": (_GOOD, _GOOD + 1, {"detach": 1}, TypeError, ["detach", "a bool", "1 (int)"]),
    "unknown backend": (_GOOD, _GOOD + 1, {"backend": "cuda"}, NotImplementedError, ["'cuda'", "torch"]),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_refused_inputs(case: str, backend: str) -> None:
    pred, target, kw, exc, fragments = REFUSED[case]
    kw = {"backend": backend, **kw}
    with pytest.raises(exc) as info:
        correlation_contrastive_loss(pred, target, **kw)
    text = str(info.value)
    assert text.startswith("correlation_contrastive_loss: "), text
    missing = [f for f in fragments if f not in text]
    assert not missing, f"{missing} not in {text!r}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_constant_rows_refused_whatever_their_rounding(backend: str, dtype: torch.dtype) -> None:
    """A constant row whose mean does not round back to its value must be refused, not normalised from
    rounding noise into a spurious pattern."""
    for value in (0.1, 1 / 3, 1e-3, 123.456, -7.77, 3e-5):
        for d in (3, 7, 340):
            pred, target = _inputs(4, d, 12, dtype)
            target[2] = value
            with pytest.raises(ValueError, match="row 2 constant"):
                correlation_contrastive_loss(pred, target, backend=backend)


def test_many_bad_rows_are_summarised() -> None:
    pred, target = _inputs(12, 6, 9)
    pred[[1, 4, 6, 9]] = 3.0
    target[5, 0] = math.nan
    with pytest.raises(ValueError, match=re.escape("rows 1, 4, 6, ... (4 rows) constant (row 1: every")):
        correlation_contrastive_loss(pred, target)
    with pytest.raises(ValueError, match="target must be finite, got NaN or inf in row 5"):
        correlation_contrastive_loss(pred, target)
