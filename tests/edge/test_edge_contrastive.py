"""Edge cases of infonce_loss / InfoNCELoss against a float64 oracle (torch.nn.functional and an
overflow-free closed form), on every backend: dtypes, empty and size-1 shapes, NaN / inf, extreme
magnitudes and temperatures, memory layouts, and gradients to x, y and a tensor temperature."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from edge_cases import (
    EDGE_SETTINGS,
    EXTREME_IDS,
    EXTREMES,
    LAYOUTS,
    assert_close,
    attempt,
    env_triton,
    layout,
    make,
    np64,
    oracle_infonce,
)
from hypothesis import given
from hypothesis import strategies as st

import fastalign as fa

BACKENDS = ["reference", "torch", pytest.param("triton", marks=pytest.mark.triton)]
NAMES = ["x", "y", "temperature"]


def _skip_missing(backend: str) -> None:
    if backend == "triton" and not env_triton():
        pytest.skip("triton kernels need a GPU or TRITON_INTERPRET=1")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _tol_dtype(x: torch.Tensor, backend: str) -> torch.dtype:
    """float64 in float64; float32 arithmetic otherwise, except the reference, which works in half."""
    if x.dtype in (torch.float16, torch.bfloat16) and backend == "reference":
        return x.dtype
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_loss(out: torch.Tensor, x: torch.Tensor, y: torch.Tensor, temperature: float, symmetric: bool,
                reduction: str, tol: torch.dtype, what: str) -> None:  # fmt: skip
    """out against the oracle: close where the loss fits the output dtype, +inf where it does not."""
    per = oracle_infonce(np64(x), np64(y), 1.0 / temperature, symmetric)
    want = per if reduction == "none" else (per.sum() if reduction == "sum" else per.mean())
    got = out.detach().double().numpy()
    assert not np.isnan(got).any(), f"{what}: NaN loss from finite inputs (oracle {want})"
    big = np.abs(want) > torch.finfo(out.dtype).max
    if np.any(big):
        assert np.all(np.isposinf(np.asarray(got)[big] if np.ndim(got) else got)), f"{what}: {got} vs {want}"
        return
    logit = float(np.abs(np64(x) @ np64(y).T).max(initial=0.0)) / temperature
    assert_close(out, want, tol, what, scale=max(float(np.abs(want).max(initial=0.0)), logit))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["float64", "float32", "float16", "bfloat16", "int64", "bool", "complex64"])
@EDGE_SETTINGS
@given(
    n=st.integers(1, 6),
    d=st.integers(1, 5),
    symmetric=st.booleans(),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    temperature=st.sampled_from([0.07, 1.0, 1e3]),
    how=st.sampled_from(LAYOUTS),
    seed=st.integers(0, 2**31),
)
def test_infonce_matches_float64_oracle(
    backend: str,
    kind: str,
    n: int,
    d: int,
    symmetric: bool,
    reduction: str,
    temperature: float,
    how: str,
    seed: int,
) -> None:
    """The loss equals float64 cross-entropies of the N x N logits for every dtype, shape and layout;
    integer, bool and complex inputs are a TypeError naming x."""
    _skip_missing(backend)
    gen = _gen(seed)
    x, y = layout(make(kind, (n, d), gen), how), make(kind, (n, d), gen)
    out = attempt(
        lambda: fa.infonce_loss(x, y, temperature, symmetric=symmetric, reduction=reduction, backend=backend),
        "infonce_loss",
        NAMES,
    )
    if not x.is_floating_point():
        assert isinstance(out.error, TypeError), f"{kind} inputs must be a TypeError, got {out}"
        return
    if not out.ok:
        assert isinstance(out.error, NotImplementedError), f"infonce_loss refused valid input: {out.error}"
        return
    _check_loss(
        out.value, x, y, temperature, symmetric, reduction, _tol_dtype(x, backend), f"{backend} {kind}"
    )


def test_infonce_oracle_agrees_with_cross_entropy() -> None:
    """The closed-form oracle is F.cross_entropy where the latter does not overflow."""
    gen = _gen(0)
    x, y = (torch.randn(5, 3, generator=gen, dtype=torch.float64) for _ in range(2))
    logits = x @ y.T / 0.07
    ce = 0.5 * (F.cross_entropy(logits, torch.arange(5)) + F.cross_entropy(logits.T, torch.arange(5)))
    np.testing.assert_allclose(oracle_infonce(x.numpy(), y.numpy(), 1 / 0.07, True).mean(), float(ce), 1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("dtype", "scale"), EXTREMES, ids=EXTREME_IDS)
def test_infonce_extreme_magnitudes(backend: str, dtype: torch.dtype, scale: float) -> None:
    """Embeddings of 1e200 ... 1e-25: the loss is the oracle's, +inf when it exceeds the dtype, never NaN."""
    _skip_missing(backend)
    gen = _gen(1)
    x, y = (torch.randn(4, 3, generator=gen, dtype=torch.float64) for _ in range(2))
    xs, ys = (x * scale).to(dtype), (y * scale).to(dtype)
    out = attempt(lambda: fa.infonce_loss(xs, ys, backend=backend), "infonce_loss", NAMES)
    if out.ok:
        # the oracle of the scaled inputs: the same embeddings at temperature 0.07 / scale^2
        per = oracle_infonce(x.numpy(), y.numpy(), scale * scale / 0.07, True)
        got = float(out.value)
        assert not math.isnan(got), f"NaN loss for finite inputs of magnitude {scale:g} (oracle {per.mean()})"
        want = per.mean()
        if abs(want) > torch.finfo(dtype).max:
            assert got == math.inf, f"loss {got}, oracle {want} (beyond {dtype})"
        else:
            assert_close(out.value, want, dtype, f"{dtype} x {scale:g}", scale=max(abs(want), 1.0))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("temperature", [1e-30, 1e-39, 1e-300, 5e-324, 1e30, 1e300], ids=str)
def test_infonce_extreme_temperatures(backend: str, dtype: torch.dtype, temperature: float) -> None:
    """Tiny and huge temperatures: the oracle's loss (+inf past the dtype), or a ValueError naming
    temperature; never NaN."""
    _skip_missing(backend)
    gen = _gen(2)
    x, y = (torch.randn(4, 3, generator=gen, dtype=torch.float64).to(dtype) for _ in range(2))
    out = attempt(
        lambda: fa.infonce_loss(x, y, temperature, backend=backend), "infonce_loss", ["temperature"]
    )
    if backend == "triton" and dtype == torch.float64:
        assert isinstance(out.error, NotImplementedError), "triton takes no float64: a backend refusal"
    elif out.ok:
        _check_loss(out.value, x, y, temperature, True, "mean", dtype, f"T={temperature:g}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", ["nan_x", "inf_y", "empty", "zero_dim", "mismatch", "three_d"])
def test_infonce_bad_inputs(backend: str, bad: str) -> None:
    """Non-finite inputs give NaN/inf or a ValueError, never a crash; bad shapes are ValueErrors
    naming x/y."""
    _skip_missing(backend)
    x, y = torch.randn(3, 2, generator=_gen(3)), torch.randn(3, 2, generator=_gen(4))
    if bad == "nan_x":
        x[0, 0] = math.nan
    elif bad == "inf_y":
        y[1, 1] = math.inf
    elif bad == "empty":
        x, y = x[:0], y[:0]
    elif bad == "zero_dim":
        x, y = x[:, :0], y[:, :0]
    elif bad == "mismatch":
        y = y[:2]
    else:
        x, y = x[None], y[None]
    out = attempt(lambda: fa.infonce_loss(x, y, backend=backend), "infonce_loss", ["x", "y"])
    if out.ok:
        assert bad in ("nan_x", "inf_y"), f"infonce_loss accepted {bad} inputs: {out.value}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("temperature", [0.0, -1.0, math.nan, math.inf, True, "0.1", None], ids=repr)
def test_infonce_bad_temperature(backend: str, temperature: object) -> None:
    _skip_missing(backend)
    x = torch.randn(3, 2, generator=_gen(5))
    out = attempt(
        lambda: fa.infonce_loss(x, x, temperature, backend=backend), "infonce_loss", ["temperature"]
    )  # type: ignore[arg-type]
    assert not out.ok


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("how", LAYOUTS)
def test_infonce_gradients(backend: str, symmetric: bool, how: str) -> None:
    """Gradients of x, y and a 0-dim temperature tensor equal the float64 autograd of F.cross_entropy."""
    _skip_missing(backend)
    dtype = torch.float32 if backend == "triton" else torch.float64
    gen = _gen(6)
    x0, y0 = (torch.randn(5, 3, generator=gen, dtype=torch.float64) for _ in range(2))
    x = layout(x0.to(dtype), how).requires_grad_()
    y = y0.to(dtype).requires_grad_()
    t = torch.tensor(0.1, dtype=dtype, requires_grad=True)
    out = fa.infonce_loss(x, y, t, symmetric=symmetric, backend=backend)
    assert out.requires_grad, "the loss dropped the gradient"
    got = torch.autograd.grad(out, [x, y, t])
    xo, yo, to = (v.detach().double().requires_grad_() for v in (x, y, t))
    logits = xo @ yo.T / to
    target = torch.arange(5)
    want = F.cross_entropy(logits, target)
    if symmetric:
        want = 0.5 * (want + F.cross_entropy(logits.T, target))
    exp = torch.autograd.grad(want, [xo, yo, to])
    for name, g, e in zip("xyt", got, exp, strict=True):
        assert g is not None, f"no gradient for {name}"
        assert_close(g, e, dtype, f"d loss / d {name}", scale=float(e.abs().max()) + 1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_infonce_mixed_dtypes_promote(backend: str) -> None:
    """float32 x with float64 y is promoted (documented) and matches the float64 oracle."""
    _skip_missing(backend)
    x = torch.randn(4, 3, generator=_gen(7))
    y = torch.randn(4, 3, generator=_gen(8), dtype=torch.float64)
    out = attempt(lambda: fa.infonce_loss(x, y, backend=backend), "infonce_loss", ["x", "y"])
    if out.ok:
        _check_loss(out.value, x.double(), y, 0.07, True, "mean", torch.float64, "mixed")


@pytest.mark.parametrize("learnable", [False, True])
@pytest.mark.parametrize("temperature", [1e-30, 0.07, 1e30, np.float64(0.5), np.float32(0.5)], ids=repr)
def test_infonce_module(learnable: bool, temperature: float) -> None:
    """InfoNCELoss equals infonce_loss at its temperature; a learnable scale gets a gradient."""
    x, y = torch.randn(4, 3, generator=_gen(9)), torch.randn(4, 3, generator=_gen(10))
    mod = attempt(lambda: fa.InfoNCELoss(temperature, learnable=learnable), "InfoNCELoss", ["temperature"])
    if not mod.ok:
        return
    out = attempt(lambda: mod.value(x, y), "InfoNCELoss", ["logit_scale"])  # 1e30: past float32
    if not out.ok:
        return
    loss = out.value
    t = float(mod.value.temperature)
    _check_loss(loss, x, y, t, True, "mean", torch.float32, f"module T={temperature}")
    if learnable:
        (g,) = torch.autograd.grad(loss, [mod.value.logit_scale])
        assert g is not None and torch.isfinite(g)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf], ids=repr)
def test_infonce_module_bad_max_logit_scale(bad: float) -> None:
    out = attempt(lambda: fa.InfoNCELoss(max_logit_scale=bad), "InfoNCELoss", ["max_logit_scale"])
    assert not out.ok
