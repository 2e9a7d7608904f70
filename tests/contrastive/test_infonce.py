"""InfoNCE / CLIP loss: every backend against the reference, the reference against F.cross_entropy."""

from __future__ import annotations

import contextlib
import math
import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import fastalign
from fastalign.contrastive import torch_chunked

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

# N and D around the interpreter's 32-wide tiles and the 16-wide K tile: 1, primes, non-multiples
SIZES_N = st.sampled_from([1, 2, 3, 7, 16, 31, 32, 33, 47, 64, 67])
SIZES_D = st.sampled_from([1, 3, 5, 16, 17, 29, 40])
TEMPERATURES = st.sampled_from([0.01, 0.07, 0.5, 1.0, 3.0])


def _inputs(n: int, d: int, dtype: torch.dtype, seed: int, normalize: bool = False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(n, d, generator=g, dtype=torch.float64) + 0.5 * x  # correlated pairs, like real data
    if normalize:
        x, y = F.normalize(x, dim=1), F.normalize(y, dim=1)
    return x.to(dtype), y.to(dtype)


def _loss_and_grads(x, y, temperature, backend, symmetric, reduction, device="cpu", dtype=None):
    dtype = dtype or x.dtype
    xr = x.detach().to(device=device, dtype=dtype).requires_grad_()
    yr = y.detach().to(device=device, dtype=dtype).requires_grad_()
    t = torch.tensor(temperature, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    t = t.to(device).requires_grad_()
    out = fastalign.infonce_loss(xr, yr, t, symmetric=symmetric, reduction=reduction, backend=backend)
    w = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype, device=device).reshape(out.shape)
    (out * w).sum().backward()
    return [v.detach().cpu().double() for v in (out, xr.grad, yr.grad, t.grad)]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    assert torch.isfinite(a).all(), "non-finite values"
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _check_against_reference(x, y, temperature, backend, symmetric, reduction, device, dtype, tol):
    """rtol = tol; atol = tol times the size of the rounding each output inherits from the logits.

    Logits are rounded to about eps * |S|max, so the loss carries that, dx and dy carry it times
    scale * |y|, and d temperature (= -scale^2 sum dS * x @ y.T) carries scale * |S|max^2. This keeps
    cases whose exact value is 0 (N = 1) meaningful.
    """
    got = _loss_and_grads(x, y, temperature, backend, symmetric, reduction, device, dtype)
    want = _loss_and_grads(x, y, temperature, "reference", symmetric, reduction, "cpu", torch.float64)
    scale = 1.0 / temperature
    s_max = max(1.0, scale * float(x.norm(dim=1).max() * y.norm(dim=1).max()))
    v_max = max(1.0, float(x.norm(dim=1).max()), float(y.norm(dim=1).max()))
    mags = (s_max, scale * s_max * v_max, scale * s_max * v_max, scale * s_max**2)
    for name, a, b, mag in zip(("loss", "dx", "dy", "dtemperature"), got, want, mags, strict=True):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * max(mag, float(b.abs().max())), msg=name)


@contextlib.contextmanager
def _patched(module, **values):
    """Temporarily set module attributes (monkeypatch does not reset between hypothesis examples)."""
    old = {k: getattr(module, k) for k in values}
    for k, v in values.items():
        setattr(module, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(module, k, v)


@given(n=SIZES_N, d=SIZES_D, temperature=TEMPERATURES, symmetric=st.booleans(),
       reduction=st.sampled_from(["mean", "sum", "none"]), seed=st.integers(0, 2**16),
       stripe=st.sampled_from([1, 5, 64, 1 << 24]))  # fmt: skip
def test_torch_backend_float64_matches_reference(n, d, temperature, symmetric, reduction, seed, stripe):
    x, y = _inputs(n, d, torch.float64, seed)
    with _patched(torch_chunked, _STRIPE_ELEMENTS=stripe):  # one row per stripe up to a single stripe
        _check_against_reference(
            x, y, temperature, "torch", symmetric, reduction, "cpu", torch.float64, 1e-10
        )


@given(n=SIZES_N, d=SIZES_D, temperature=TEMPERATURES, symmetric=st.booleans(), seed=st.integers(0, 2**16))
def test_torch_backend_float32_matches_reference(n, d, temperature, symmetric, seed):
    x, y = _inputs(n, d, torch.float64, seed, normalize=True)
    _check_against_reference(x, y, temperature, "torch", symmetric, "mean", "cpu", torch.float32, 2e-5)


def test_torch_backend_uses_several_stripes(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a tiny stripe budget the online combination over many stripes must stay exact."""
    monkeypatch.setattr(torch_chunked, "_STRIPE_ELEMENTS", 64)
    x, y = _inputs(45, 6, torch.float64, 3)
    _check_against_reference(x, y, 0.2, "torch", True, "none", "cpu", torch.float64, 1e-10)


@pytest.mark.triton
@settings(max_examples=15)
@given(n=SIZES_N, d=SIZES_D, temperature=TEMPERATURES, symmetric=st.booleans(),
       reduction=st.sampled_from(["mean", "sum", "none"]), seed=st.integers(0, 2**16),
       programs=st.sampled_from([1, 2, 64]), stripe_rows=st.sampled_from([32, 64, 1 << 20]))  # fmt: skip
def test_triton_float32_matches_reference(
    triton_device, n, d, temperature, symmetric, reduction, seed, programs, stripe_rows
):
    from fastalign.contrastive import triton as tr

    x, y = _inputs(n, d, torch.float64, seed, normalize=True)
    tol = 2e-5 if torch.get_float32_matmul_precision() == "highest" else 1e-3
    # few programs: several row blocks each in the forward; few stripe rows: several backward stripes
    with _patched(tr, _max_programs=lambda t: programs, _STRIPE_BYTES=stripe_rows * n * 4):
        _check_against_reference(
            x, y, temperature, "triton", symmetric, reduction, triton_device, torch.float32, tol
        )


@pytest.mark.triton
def test_triton_uses_several_stripes_and_programs(triton_device, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastalign.contrastive import triton as tr

    monkeypatch.setattr(tr, "_STRIPE_BYTES", 32 * 70 * 4)  # one 32-row stripe at a time
    monkeypatch.setattr(tr, "_max_programs", lambda t: 2)  # several row blocks per forward program
    x, y = _inputs(150, 20, torch.float64, 11, normalize=True)
    _check_against_reference(x, y, 0.05, "triton", True, "none", triton_device, torch.float32, 2e-5)


def _half_errors(backend, device, dtype, n, d, temperature, seed):
    """(backend error, same-dtype reference error), each against float64, per output."""
    x, y = _inputs(n, d, torch.float64, seed, normalize=True)
    x, y = x.to(dtype).double(), y.to(dtype).double()  # exactly representable in dtype
    exact = _loss_and_grads(x, y, temperature, "reference", True, "mean", "cpu", torch.float64)
    fast = _loss_and_grads(x, y, temperature, backend, True, "mean", device, dtype)
    ref = _loss_and_grads(x, y, temperature, "reference", True, "mean", "cpu", dtype)
    return [(_rel(f, e), _rel(r, e)) for f, r, e in zip(fast, ref, exact, strict=True)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("temperature", [0.01, 0.07])  # logit scales 100 and ~14
@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.triton)])
def test_half_precision_within_twice_reference_error(backend, dtype, temperature, request):
    device = request.getfixturevalue("triton_device") if backend == "triton" else "cpu"
    for fast_err, ref_err in _half_errors(backend, device, dtype, 67, 40, temperature, seed=5):
        assert fast_err <= 2 * ref_err + 1e-6, (fast_err, ref_err)


def test_reference_matches_cross_entropy_on_full_logits() -> None:
    x, y = _inputs(23, 9, torch.float64, 0)
    for temperature in (0.07, 1.0):
        logits = x @ y.T / temperature
        labels = torch.arange(23)
        clip = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
        torch.testing.assert_close(
            fastalign.infonce_loss(x, y, temperature, backend="reference"), clip, rtol=1e-12, atol=1e-12
        )
        rows = F.cross_entropy(logits, labels, reduction="none")
        torch.testing.assert_close(
            fastalign.infonce_loss(x, y, temperature, symmetric=False, reduction="none", backend="reference"),
            rows,
            rtol=1e-12,
            atol=1e-12,
        )
        torch.testing.assert_close(
            fastalign.infonce_loss(x, y, temperature, reduction="sum", backend="reference"),
            0.5 * (rows.sum() + F.cross_entropy(logits.T, labels, reduction="sum")),
            rtol=1e-12,
            atol=1e-12,
        )


def test_extreme_logit_scale_stays_finite_and_exact() -> None:
    """Scale 100 with orthogonal-ish unit vectors: naive exp would overflow; the loss must not."""
    x, y = _inputs(40, 8, torch.float64, 9, normalize=True)
    _check_against_reference(x, y, 0.01, "torch", True, "mean", "cpu", torch.float32, 2e-5)


class _MaxBytes(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())  # bytes
        return out


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.triton)])
def test_no_n_by_n_tensor_outside_the_reference(backend, request) -> None:
    device = request.getfixturevalue("triton_device") if backend == "triton" else "cpu"
    n = 96
    x, y = _inputs(n, 5, torch.float32, 1)
    x, y = x.to(device).requires_grad_(), y.to(device).requires_grad_()
    with _MaxBytes() as mode:
        fastalign.infonce_loss(x, y, backend=backend).backward()
    assert mode.largest < n * n * 4
    with _MaxBytes() as mode:
        fastalign.infonce_loss(x, y, backend="reference").backward()
    assert mode.largest >= n * n * 4  # the probe does see N x N tensors where they exist


def test_module_fixed_and_learnable_temperature() -> None:
    x, y = _inputs(12, 4, torch.float64, 2)
    fixed = fastalign.InfoNCELoss(temperature=0.1)
    assert not list(fixed.parameters())
    torch.testing.assert_close(fixed(x, y), fastalign.infonce_loss(x, y, 0.1), rtol=1e-6, atol=1e-6)
    learn = fastalign.InfoNCELoss(temperature=0.1, learnable=True)
    (param,) = learn.parameters()
    torch.testing.assert_close(param.detach(), torch.tensor(math.log(10.0)))
    learn(x, y).backward()
    t = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    fastalign.infonce_loss(x, y, t).backward()
    # d/d log_scale = d/dt * dt/d log_scale = d/dt * (-t)
    torch.testing.assert_close(param.grad.double(), -t.grad * 0.1, rtol=1e-5, atol=1e-8)


def test_a_fixed_temperature_is_used_as_given_and_a_learnable_one_must_start_under_the_clamp() -> None:
    # a fixed temperature below 1 / max_logit_scale was moved to it without a word (0.005 -> 0.01: half
    # the loss); a learnable one would be clamped before the first step, so it is refused
    x, y = _inputs(8, 4, torch.float64, 5)
    for t in (0.005, 0.07):
        fixed = fastalign.InfoNCELoss(temperature=t)
        assert fixed.logit_scale.dtype == torch.float64
        assert float(fixed.temperature) == pytest.approx(t, rel=1e-15)
        torch.testing.assert_close(fixed(x, y), fastalign.infonce_loss(x, y, t), rtol=1e-14, atol=0)
    with pytest.raises(ValueError, match=r"InfoNCELoss: temperature 0.005 is below 1 / max_logit_scale"):
        fastalign.InfoNCELoss(temperature=0.005, learnable=True)
    assert float(fastalign.InfoNCELoss(0.005, learnable=True, max_logit_scale=1000.0).temperature) == (
        pytest.approx(0.005, rel=1e-6)
    )
    with pytest.raises(TypeError, match="InfoNCELoss: learnable must be"):
        fastalign.InfoNCELoss(learnable="yes")  # type: ignore[arg-type]


def test_module_clamps_scale_like_clip() -> None:
    learn = fastalign.InfoNCELoss(temperature=0.2, learnable=True, max_logit_scale=10.0)
    with torch.no_grad():
        learn.logit_scale.fill_(5.0)  # scale e^5 > 10, as a training step may leave it
    x, y = _inputs(6, 3, torch.float32, 4)
    out = learn(x, y)
    assert float(learn.logit_scale) == pytest.approx(math.log(10.0))
    torch.testing.assert_close(out, fastalign.infonce_loss(x, y, 0.1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"x": torch.randn(4, 3), "y": torch.randn(5, 3)}, ValueError, "same shape"),
        ({"x": torch.randn(4, 3), "y": torch.randn(4, 2)}, ValueError, "same shape"),
        ({"x": torch.randn(0, 3), "y": torch.randn(0, 3)}, ValueError, "at least 1"),
        ({"x": torch.randn(4), "y": torch.randn(4)}, ValueError, "shape \\(N, D\\)"),
        ({"x": torch.ones(4, 3, dtype=torch.int64), "y": torch.ones(4, 3, dtype=torch.int64)}, TypeError,
         "floating-point"),
        ({"x": torch.randn(4, 3), "y": torch.randn(4, 3), "temperature": 0.0}, ValueError, "and finite"),
        ({"x": torch.randn(4, 3), "y": torch.randn(4, 3), "temperature": -1.0}, ValueError, "positive"),
        ({"x": torch.randn(4, 3), "y": torch.randn(4, 3), "temperature": float("nan")}, ValueError, "finite"),
        ({"x": torch.randn(4, 3), "y": torch.randn(4, 3), "temperature": float("inf")}, ValueError, "finite"),
        ({"x": torch.randn(4, 3), "y": torch.randn(4, 3), "temperature": torch.tensor(-0.5)}, ValueError,
         "positive"),
        ({"x": torch.randn(4, 3), "y": torch.randn(4, 3), "temperature": torch.ones(2)}, ValueError, "0-dim"),
        ({"x": torch.randn(4, 3), "y": torch.randn(4, 3), "temperature": "hot"}, TypeError, "temperature"),
        ({"x": torch.randn(4, 3), "y": torch.randn(4, 3), "reduction": "max"}, ValueError, "reduction"),
        ({"x": torch.randn(4, 3), "y": torch.randn(4, 3), "backend": "fast"}, ValueError, "backend"),
        ({"x": [[1.0]], "y": torch.randn(1, 1)}, TypeError, "torch.Tensor"),
    ],
)  # fmt: skip
def test_bad_input_is_a_clear_error(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        fastalign.infonce_loss(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"max_logit_scale": "big"},
            TypeError,
            r"InfoNCELoss: max_logit_scale must be a positive and finite",
        ),
        ({"max_logit_scale": math.nan}, ValueError, r"InfoNCELoss: max_logit_scale must be .*, got nan"),
        ({"temperature": True}, TypeError, r"InfoNCELoss: temperature must be a positive and finite float"),
        ({"temperature": 0}, ValueError, r"InfoNCELoss: temperature must be .*, got 0 \(int\)"),
    ],
)
def test_module_arguments_are_clear_errors(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        fastalign.InfoNCELoss(**kwargs)


def test_numpy_temperatures_are_numbers() -> None:
    np = pytest.importorskip("numpy")
    x, y = _inputs(6, 3, torch.float64, 2)
    want = fastalign.infonce_loss(x, y, 0.25)
    for t in (np.float32(0.25), np.float64(0.25)):
        torch.testing.assert_close(fastalign.infonce_loss(x, y, t), want, rtol=0, atol=0)
    assert float(fastalign.InfoNCELoss(temperature=np.float32(0.25)).temperature) == pytest.approx(0.25)


def test_backends_are_registered_by_module_and_imported_when_chosen() -> None:
    from fastalign.contrastive import api

    modules = {name: spec.module for name, spec in api._dispatch.specs.items()}
    assert modules == {
        "triton": "fastalign.contrastive.triton",
        "torch": "fastalign.contrastive.torch_chunked",
        "reference": "fastalign.contrastive.reference",
    }
    assert api._dispatch.module("torch") is torch_chunked


def test_devices_must_match() -> None:
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="one device"):
        fastalign.infonce_loss(x, torch.randn(4, 3, device="meta"))


def test_auto_never_sends_cpu_tensors_to_triton_and_explicit_requests_do_not_fall_back(monkeypatch) -> None:
    from fastalign.contrastive import api

    x, y = _inputs(8, 4, torch.float32, 0)
    assert api._dispatch.choose("auto", x, y) == "torch"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(NotImplementedError, match="TRITON_INTERPRET=1"):
        fastalign.infonce_loss(x, y, backend="triton")
    with pytest.raises(NotImplementedError, match="float64"):
        fastalign.infonce_loss(x.double(), y.double(), backend="triton")
    with pytest.raises(NotImplementedError, match="does not exist"):
        fastalign.infonce_loss(x, y, backend="cuda")


def test_env_var_overrides_auto(monkeypatch) -> None:
    from fastalign.contrastive import api

    x, y = _inputs(8, 4, torch.float32, 0)
    monkeypatch.setenv("FASTALIGN_BACKEND", "reference")
    assert api._dispatch.choose("auto", x, y) == "reference"
    assert api._dispatch.choose("torch", x, y) == "torch"  # explicit beats the environment
    monkeypatch.setenv("FASTALIGN_BACKEND", "cpp")  # a backend this op lacks: auto as usual
    assert api._dispatch.choose("auto", x, y) == "torch"
    monkeypatch.setenv("FASTALIGN_BACKEND", "bogus")
    with pytest.raises(ValueError, match="FASTALIGN_BACKEND"):
        api._dispatch.choose("auto", x, y)


def test_mixed_dtypes_are_promoted_and_autocast_does_not_lower_precision() -> None:
    x, y = _inputs(20, 6, torch.float64, 8)
    xb = x.to(torch.bfloat16).requires_grad_()
    got = fastalign.infonce_loss(xb, y, 0.1, backend="torch")
    torch.testing.assert_close(got, fastalign.infonce_loss(xb.double(), y, 0.1, backend="reference"))
    got.backward()
    assert xb.grad is not None and xb.grad.dtype == torch.bfloat16
    x32, y32 = x.float(), y.float()  # autocast lowers float32 matmuls (not float64) to bf16
    want32 = fastalign.infonce_loss(x32, y32, 0.1, backend="reference")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (x32 @ y32.T).dtype == torch.bfloat16  # autocast is really on here
        for backend in ("reference", "torch"):
            torch.testing.assert_close(
                fastalign.infonce_loss(x32, y32, 0.1, backend=backend), want32, rtol=1e-5, atol=1e-5
            )


@pytest.mark.parametrize("chunk_bytes", [4 * 5, 1 << 25])  # one row of acc at a time, or all at once
def test_half_products_accumulate_in_float32(monkeypatch, chunk_bytes) -> None:
    from fastalign.contrastive import common

    monkeypatch.setattr(common, "_ADD_CHUNK_BYTES", chunk_bytes)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(7, 300, generator=g).bfloat16()
    b = torch.randn(300, 5, generator=g).bfloat16()
    acc = torch.randn(7, 5, generator=g)
    want = acc.double() + a.double() @ b.double()
    got = common.addmm_f32_(acc.clone(), a, b)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4)  # bf16 sums would be ~1e-1 off
    torch.testing.assert_close(common.mm_f32(a, b).double(), a.double() @ b.double(), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("backend", ["torch", "reference", pytest.param("triton", marks=pytest.mark.triton)])
def test_temperature_is_checked_against_the_compute_dtype(backend, request) -> None:
    """1/temperature must be a normal number of the dtype the scale is applied in: 1/1e-40 is finite in
    Python and float64 but overflows float32, where the loss used to come out NaN."""
    device = request.getfixturevalue("triton_device") if backend == "triton" else "cpu"
    x, y = (t.to(device) for t in _inputs(5, 3, torch.float32, 0))
    for temperature, shown in [
        (1e-40, r"temperature 1e-40 gives the logit scale 1/temperature = 1e\+40"),
        (1e39, r"1/temperature = 1e-39"),  # underflows: float32 subnormal, and 0 beyond (NaN gradient)
        (torch.tensor(1e-40), "temperature tensor .* = inf"),  # a float32 subnormal: 1/T is inf
        (torch.tensor(1e-40, dtype=torch.float64), r"= 1e\+40; expected a normal float32"),
    ]:
        with pytest.raises(ValueError, match=shown):
            fastalign.infonce_loss(x, y, temperature, backend=backend)
    if backend != "triton":  # float64 inputs compute in float64, where the same scale is fine
        loss = fastalign.infonce_loss(x.double(), y.double(), 1e-40, backend=backend)
        assert torch.isfinite(loss)


def test_reference_checks_the_scale_in_the_half_dtype_it_multiplies_in() -> None:
    x, y = _inputs(6, 4, torch.float16, 1, normalize=True)
    # scale 1e5: past float16's 65504, where the reference's fp16 logits would all be inf
    with pytest.raises(ValueError, match="float16"):
        fastalign.infonce_loss(x, y, 1e-5, backend="reference")
    # the torch backend applies it in float32: finite, and equal to the float64 loss at that scale
    got = fastalign.infonce_loss(x, y, 1e-5, backend="torch")
    want = fastalign.infonce_loss(x.double(), y.double(), 1e-5, backend="reference")
    assert torch.isfinite(got)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=0)


def test_module_rejects_a_logit_scale_the_compute_dtype_cannot_hold() -> None:
    x, y = _inputs(6, 3, torch.float32, 4)
    learn = fastalign.InfoNCELoss(temperature=0.07, learnable=True)
    with torch.no_grad():
        learn.logit_scale.fill_(float("nan"))  # a diverged step: clamp_ keeps NaN
    with pytest.raises(ValueError, match=r"InfoNCELoss: the logit scale exp\(logit_scale\) = nan"):
        learn(x, y)
    # a fixed scale past float32's range, e.g. from a float64 state_dict, fails for float32 inputs only
    fixed = fastalign.InfoNCELoss(temperature=0.07, max_logit_scale=1e300).double()
    fixed.load_state_dict({"logit_scale": torch.tensor(math.log(1e39), dtype=torch.float64)})
    with pytest.raises(ValueError, match=r"exp\(logit_scale\) = 1e\+39; expected a normal float32"):
        fixed(x, y)
    assert torch.isfinite(fixed(x.double(), y.double()))


@pytest.mark.parametrize("shape", [(0, 3), (3, 0)])
def test_empty_inputs_name_x_and_y(shape: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match=r"x and y must be \(N, D\) with N and D at least 1"):
        fastalign.infonce_loss(torch.randn(shape), torch.randn(shape))


_OVERFLOWS = [  # (backend, dtype, magnitude of x and y, temperature)
    ("reference", torch.float32, 1e20, 0.07),
    ("torch", torch.float32, 1e20, 0.07),
    pytest.param("triton", torch.float32, 1e20, 0.07, marks=pytest.mark.triton),
    ("reference", torch.float64, 1e200, 0.07),
    ("torch", torch.float64, 1e200, 0.07),
    ("torch", torch.float32, 2.0, 1e-38),  # a logit scale float32 holds, times products of 4
]


@pytest.mark.parametrize(("backend", "dtype", "magnitude", "temperature"), _OVERFLOWS)
def test_overflowing_logits_are_a_clear_error(backend, dtype, magnitude, temperature, request) -> None:
    """Logits past the compute dtype used to give a NaN loss on every backend. The true loss here is
    ~0 (x = y = magnitude * I: every positive dominates its row), so inf would be as wrong as NaN: a
    ValueError naming x, y and the temperature. Non-finite inputs still propagate (NaN, no error)."""
    device = request.getfixturevalue("triton_device") if backend == "triton" else "cpu"
    x = (torch.eye(4, dtype=torch.float64) * magnitude).to(dtype).to(device)
    shown = re.escape(f"overflow {str(dtype).removeprefix('torch.')} (largest |x| {magnitude:.3g}")
    with pytest.raises(ValueError, match=shown + ".*temperature"):
        fastalign.infonce_loss(x, x, temperature, backend=backend)
    bad = x.clone()
    bad[0, 0] = math.nan
    assert torch.isnan(fastalign.infonce_loss(bad, x, temperature, backend=backend))


def test_second_derivatives_and_torch_func_use_the_reference_or_say_so() -> None:
    # the blockwise backward wrote into out= buffers: double backward failed with torch's "mm(): functions
    # with out=... arguments don't support automatic differentiation", torch.func with a setup_context error
    x, y = _inputs(6, 4, torch.float64, 11)
    x.requires_grad_(True)
    (g,) = torch.autograd.grad(fastalign.infonce_loss(x, y, 0.5, backend="reference"), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.sum(), x)
    xr = x.detach().requires_grad_(True)
    logits = xr @ y.T / 0.5
    labels = torch.arange(6)
    plain = 0.5 * (
        torch.nn.functional.cross_entropy(logits, labels)
        + torch.nn.functional.cross_entropy(logits.T, labels)
    )
    (pg,) = torch.autograd.grad(plain, xr, create_graph=True)
    torch.testing.assert_close(gg, torch.autograd.grad(pg.sum(), xr)[0], rtol=1e-12, atol=1e-12)
    with pytest.raises(RuntimeError, match=r"infonce_loss: .* first-order only .* use backend='reference'"):
        torch.autograd.grad(fastalign.infonce_loss(x, y, 0.5, backend="torch"), x, create_graph=True)
    # torch.func: auto takes the reference, whose gradient is the eager one
    fgrad = torch.func.grad(lambda a: fastalign.infonce_loss(a, y, 0.5))(x.detach())
    (eager,) = torch.autograd.grad(fastalign.infonce_loss(x, y, 0.5), x)
    torch.testing.assert_close(fgrad, eager, rtol=1e-12, atol=1e-14)
    per_row = torch.func.vmap(lambda a: fastalign.infonce_loss(a, y, 0.5), in_dims=0)(
        x.detach()[None].repeat(2, 1, 1)
    )
    assert per_row.shape == (2,)
    with pytest.raises(NotImplementedError, match=r"backend 'torch' cannot run under torch.func transforms"):
        torch.func.grad(lambda a: fastalign.infonce_loss(a, y, 0.5, backend="torch"))(x.detach())


def test_symmetric_must_be_a_bool() -> None:
    x, y = _inputs(4, 3, torch.float64, 12)
    for fn in (
        lambda: fastalign.infonce_loss(x, y, symmetric="no"),
        lambda: fastalign.InfoNCELoss()(x, y, symmetric=0),
    ):
        with pytest.raises(TypeError, match=r"infonce_loss: symmetric must be a bool"):
            fn()  # type: ignore[arg-type]


@pytest.mark.parametrize("cast", ["bfloat16", "half", "to_dtype_in_a_model"])
def test_module_cast_keeps_its_fixed_temperature(cast: str) -> None:
    """Casting the module (or a model holding it) moved its float64 scale to the cast dtype: 0.07 became
    0.0703 in bfloat16 and the loss was another temperature's. The fixed scale stays float64 and exact."""
    loss = fastalign.InfoNCELoss(0.07)
    holder = torch.nn.Sequential(torch.nn.Linear(2, 2), loss)
    if cast == "bfloat16":
        loss.to(torch.bfloat16)
    elif cast == "half":
        loss.half()
    else:
        holder.to(torch.bfloat16)
    assert loss.logit_scale.dtype == torch.float64
    assert loss.logit_scale.item() == math.log(1 / 0.07)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 5, generator=gen), torch.randn(6, 5, generator=gen)
    assert torch.equal(loss(x, y), fastalign.infonce_loss(x, y, temperature=0.07))
    learnt = fastalign.InfoNCELoss(0.07, learnable=True).to(
        torch.bfloat16
    )  # a parameter is the user's to cast
    assert learnt.logit_scale.dtype == torch.bfloat16
