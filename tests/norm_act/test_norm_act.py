"""batch_norm_act (fused BatchNorm + residual + ReLU): every backend against eager PyTorch in float64."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from fastalign.norm_act import batch_norm_act, batch_norm_module_act


def _inputs(
    shape: tuple[int, int, int, int],
    channels_last: bool,
    residual: bool,
    seed: int,
    offset: float = 0.0,
) -> dict[str, torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def rnd(*s: int) -> torch.Tensor:
        return torch.randn(*s, generator=g, dtype=torch.float64)

    return {
        "x": (rnd(*shape) * 2 + offset).to(memory_format=fmt),
        "weight": torch.rand(c, generator=g, dtype=torch.float64) + 0.5,
        "bias": rnd(c),
        "running_mean": rnd(c),
        "running_var": torch.rand(c, generator=g, dtype=torch.float64) + 0.5,
        "residual": rnd(*shape).to(memory_format=fmt) if residual else None,
        "dy": rnd(*shape),
    }


def _run(
    inp: dict[str, torch.Tensor | None],
    dtype: torch.dtype,
    backend: str,
    relu_mask: torch.Tensor | None = None,
    **kw: object,
) -> dict[str, torch.Tensor]:
    """Output, running statistics after the call and every gradient, for inputs cast to ``dtype``.

    With ``relu_mask``, the ReLU's gradient uses that mask instead of ``y > 0`` (see :func:`_exact`).
    """

    def cast(t: torch.Tensor | None, grad: bool) -> torch.Tensor | None:
        if t is None:
            return None
        # x-like tensors in `dtype`; parameters and buffers stay float32 as under autocast
        out = t.to(dtype if t.dim() == 4 else max(dtype, torch.float32, key=lambda d: d.itemsize))
        return out.detach().requires_grad_(grad)

    x, r = cast(inp["x"], True), cast(inp["residual"], True)
    w, b = cast(inp["weight"], True), cast(inp["bias"], True)
    rm, rv = cast(inp["running_mean"], False), cast(inp["running_var"], False)
    assert x is not None and w is not None and b is not None
    if relu_mask is not None:
        pre = batch_norm_act(x, w, b, rm, rv, residual=r, backend=backend, **{**kw, "relu": False})  # type: ignore[arg-type]
        y = pre * relu_mask + (pre.detach().clamp(min=0) - pre.detach() * relu_mask)  # value relu(pre)
    else:
        y = batch_norm_act(x, w, b, rm, rv, residual=r, backend=backend, **kw)  # type: ignore[arg-type]
    assert y.dtype == x.dtype and y.shape == x.shape
    assert y.is_contiguous(memory_format=torch.channels_last) == x.is_contiguous(
        memory_format=torch.channels_last
    )
    dy = inp["dy"]
    assert dy is not None
    wrt = [x, w, b] + ([r] if r is not None else [])
    grads = torch.autograd.grad(y, wrt, dy.to(y.dtype))  # type: ignore[arg-type]
    out = {"y": y.detach(), "running_mean": rm, "running_var": rv}
    out.update(zip(["dx", "dweight", "dbias", "dresidual"], grads, strict=False))
    return {k: v.double() for k, v in out.items() if v is not None}


def _exact(inp: dict[str, torch.Tensor | None], candidate: dict[str, torch.Tensor], **kw: object) -> dict:
    """The float64 result with the ReLU gradient mask that ``candidate`` used.

    Where the exact pre-activation lies within rounding of 0, a ReLU's mask may flip either way in low
    precision, and one flipped element moves its channel's dweight, dbias and dx by O(dy). Which side
    is right is a matter of rounding, not of the kernel, so each result is judged against float64 with
    its own mask.
    """
    if not kw.get("relu", True):
        return _run(inp, torch.float64, "reference", **kw)
    return _run(inp, torch.float64, "reference", relu_mask=(candidate["y"] > 0).double(), **kw)


def _term_scales(inp: dict[str, torch.Tensor | None], training: bool, eps: float) -> dict[str, float]:
    """The size of the terms that dx, dweight and dbias are sums of: the scale their rounding errors
    follow, however much those terms cancel (eager CPU accumulates in double, so a relative error
    against a cancelled result would judge the summation order, not the kernel)."""
    x, dy, w = inp["x"], inp["dy"], inp["weight"]
    assert x is not None and dy is not None and w is not None
    if training:
        mean, var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)
    else:
        mean, var = inp["running_mean"], inp["running_var"]
        assert mean is not None and var is not None
    rstd = (var + eps).rsqrt()
    xhat = (x - mean.view(1, -1, 1, 1)) * rstd.view(1, -1, 1, 1)
    return {
        "dx": float(dy.abs().max() * (w * rstd).max()),
        "dweight": float((dy * xhat).abs().sum(dim=(0, 2, 3)).max()),
        "dbias": float(dy.abs().sum(dim=(0, 2, 3)).max()),
    }


def _assert_within_twice_reference(
    inp: dict[str, torch.Tensor | None], dtype: torch.dtype, floor: float, **kw: object
) -> None:
    """DESIGN's rule: the fused op's error against float64 is at most twice the same-dtype eager error,
    plus ``floor`` relative to the scale of each result's terms (float32: ~1e-5)."""
    ref = _run(inp, dtype, "reference", **kw)
    got = _run(inp, dtype, "triton", **kw)
    exact_ref, exact_got = _exact(inp, ref, **kw), _exact(inp, got, **kw)
    terms = _term_scales(inp, bool(kw["training"]), float(kw["eps"]))  # type: ignore[arg-type]
    assert got.keys() == exact_got.keys()
    for k in exact_got:
        scale = max(float(exact_got[k].abs().max()), terms.get(k, 0.0)) + 1e-12
        err = float((got[k] - exact_got[k]).abs().max()) / scale
        err_ref = float((ref[k] - exact_ref[k]).abs().max()) / scale
        assert err <= 2 * err_ref + floor, f"{k}: error {err:.3g} vs eager's {err_ref:.3g}"


# N * H * W >= 3: with two values per channel BatchNorm maps them to -1 and +1 whatever they are, so the
# training dx is analytically ~0 (eps / var) and its relative error is pure cancellation noise.
shapes = st.tuples(
    st.integers(1, 3), st.sampled_from([1, 3, 64, 65, 130]), st.integers(1, 6), st.integers(1, 7)
).filter(lambda s: s[0] * s[2] * s[3] > 2)


@pytest.mark.triton
@given(
    shape=shapes,
    channels_last=st.booleans(),
    residual=st.booleans(),
    relu=st.booleans(),
    training=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_triton_matches_float64_eager(
    triton_device: str,
    shape: tuple[int, int, int, int],
    channels_last: bool,
    residual: bool,
    relu: bool,
    training: bool,
    seed: int,
) -> None:
    inp = _inputs(shape, channels_last, residual, seed)
    inp = {k: v.to(triton_device) if v is not None else None for k, v in inp.items()}
    _assert_within_twice_reference(
        inp, torch.float32, floor=1e-5, training=training, momentum=0.3, eps=1e-5, relu=relu
    )


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_half_precision(triton_device: str, dtype: torch.dtype) -> None:
    inp = _inputs((2, 65, 5, 7), True, True, seed=3)
    inp = {k: v.to(triton_device) if v is not None else None for k, v in inp.items()}
    _assert_within_twice_reference(inp, dtype, floor=1e-3, training=True, momentum=0.1, eps=1e-5, relu=True)


@pytest.mark.triton
@pytest.mark.parametrize("channels_last", [False, True])
def test_triton_statistics_across_splits_and_offset(triton_device: str, channels_last: bool) -> None:
    # 2 * 17 * 19 = 646 rows: 11 row blocks over several splits, a partial last block; a mean of 1e3
    # next to unit variance, where E[x^2] - E[x]^2 in float32 would lose every digit of the variance
    inp = _inputs((2, 3, 17, 19), channels_last, False, seed=5, offset=1e3)
    inp = {k: v.to(triton_device) if v is not None else None for k, v in inp.items()}
    kw = dict(training=True, momentum=0.5, eps=1e-5, relu=False)
    _assert_within_twice_reference(inp, torch.float32, floor=1e-5, **kw)


def test_reference_is_eager_batchnorm_add_relu() -> None:
    inp = _inputs((2, 4, 3, 5), False, True, seed=0)
    bn = nn.BatchNorm2d(4, momentum=0.2).double()
    with torch.no_grad():
        bn.weight.copy_(inp["weight"])  # type: ignore[arg-type]
        bn.bias.copy_(inp["bias"])  # type: ignore[arg-type]
    x, r = inp["x"], inp["residual"]
    assert x is not None and r is not None
    want = F.relu(bn(x) + r)
    rm, rv = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    got = batch_norm_act(x, bn.weight, bn.bias, rm, rv, momentum=0.2, residual=r, backend="reference")
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(rm, bn.running_mean, rtol=0, atol=0)
    torch.testing.assert_close(rv, bn.running_var, rtol=0, atol=0)


def _leaf_inputs(device: str, seed: int) -> tuple[torch.Tensor, ...]:
    """x, residual, weight, bias requiring grad, for (2, 5, 3, 4) activations."""
    g = torch.Generator().manual_seed(seed)
    x, r = (torch.randn(2, 5, 3, 4, generator=g) for _ in range(2))
    w, b = torch.rand(5, generator=g) + 0.5, torch.randn(5, generator=g)
    return tuple(t.to(device).requires_grad_() for t in (x, r, w, b))


@pytest.mark.triton
def test_triton_custom_ops_pass_opcheck(triton_device: str) -> None:
    from fastalign.norm_act import triton as bn_triton

    x, r, w, b = _leaf_inputs(triton_device, 0)
    rm, rv = torch.zeros(5, device=triton_device), torch.ones(5, device=triton_device)
    torch.library.opcheck(bn_triton.bn_act_fwd, (x, w, b, rm, rv, r, True, 1e-5, True))
    torch.library.opcheck(bn_triton.bn_act_fwd, (x, w, b, rm, rv, None, False, 1e-5, False))


@pytest.mark.triton
def test_triton_op_compiles_fullgraph(triton_device: str) -> None:
    x, r, w, b = _leaf_inputs(triton_device, 1)

    def f(rm: torch.Tensor, rv: torch.Tensor) -> torch.Tensor:
        return batch_norm_act(x, w, b, rm, rv, residual=r, backend="triton").square().sum()

    stats = [torch.zeros(5, device=triton_device), torch.ones(5, device=triton_device)]
    stats_c = [s.clone() for s in stats]
    want = f(*stats)
    got = torch.compile(f, backend="aot_eager", fullgraph=True)(*stats_c)
    torch.testing.assert_close(got, want)
    wrt = [x, w, b, r]
    for a, c in zip(torch.autograd.grad(want, wrt), torch.autograd.grad(got, wrt), strict=True):
        torch.testing.assert_close(c, a)
    for a, c in zip(stats, stats_c, strict=True):  # running statistics updated under compile too
        torch.testing.assert_close(c, a)
    assert not torch.equal(stats_c[0], torch.zeros(5, device=triton_device))


def _module_backends() -> list[object]:
    return ["reference", pytest.param("triton", marks=pytest.mark.triton)]


@pytest.mark.parametrize("backend", _module_backends())
@pytest.mark.parametrize(
    "bn_kwargs, train",
    [
        (dict(momentum=0.1), True),
        (dict(momentum=None), True),  # cumulative moving average: factor 1 / num_batches_tracked
        (dict(track_running_stats=False), True),
        (dict(track_running_stats=False), False),  # batch statistics in eval mode too
        (dict(momentum=0.1), False),
    ],
)
def test_module_helper_follows_batchnorm2d(
    backend: str, bn_kwargs: dict, train: bool, request: pytest.FixtureRequest
) -> None:
    if backend == "triton":
        request.getfixturevalue("triton_device")
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(6, **bn_kwargs)
    nn.init.uniform_(bn.weight, 0.5, 1.5)
    nn.init.normal_(bn.bias)
    twin = nn.BatchNorm2d(6, **bn_kwargs)
    twin.load_state_dict(bn.state_dict())
    bn.train(train)
    twin.train(train)
    for step in range(3):  # several steps: the cumulative factor changes with num_batches_tracked
        x = torch.randn(3, 6, 4, 5) + step
        skip = torch.randn(3, 6, 4, 5)
        want = F.relu(bn(x) + skip)
        got = batch_norm_module_act(twin, x, residual=skip, relu=True, backend=backend)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for (k, a), (_, c) in zip(bn.state_dict().items(), twin.state_dict().items(), strict=True):
        torch.testing.assert_close(c, a, rtol=1e-5, atol=1e-6, msg=k)


def test_auto_picks_reference_on_cpu() -> None:
    from fastalign.norm_act.api import _choose

    assert _choose("auto", torch.device("cpu"), torch.float32, False) == "reference"


def test_explicit_triton_without_interpreter_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    if torch.cuda.is_available():
        pytest.skip("CPU tensors only")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(NotImplementedError, match="TRITON_INTERPRET"):
        batch_norm_act(x, torch.ones(3), torch.zeros(3), backend="triton")


def test_triton_rejects_float64_explicitly() -> None:
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    w = torch.ones(3, dtype=torch.float64)
    with pytest.raises(NotImplementedError, match="float32, bfloat16 or float16"):
        batch_norm_act(x, w, w, backend="triton")


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(x=torch.randn(2, 3, 4)), ValueError, r"x must have shape \(N, C, H, W\)"),
        (dict(x=torch.ones(2, 3, 4, 4, dtype=torch.int64)), TypeError, "x must be a floating-point"),
        (dict(weight=torch.ones(4)), ValueError, r"weight must have shape \(3,\)"),
        (dict(bias=[0.0, 0.0, 0.0]), TypeError, "bias must be a torch.Tensor"),
        (dict(running_var=None), ValueError, "both be given or both be None"),
        (dict(running_mean=None, running_var=None, training=False), ValueError, "running statistics"),
        (dict(x=torch.randn(1, 3, 1, 1)), ValueError, r"more than one value per channel"),
        (dict(residual=torch.randn(2, 3, 4, 5)), ValueError, "residual must have x's shape"),
        (dict(residual=torch.randn(2, 3, 4, 4, dtype=torch.float64)), ValueError, "residual must match"),
        (dict(backend="cuda"), NotImplementedError, "does not exist for this op"),
    ],
)
def test_bad_input_errors(change: dict, error: type, match: str) -> None:
    args: dict = dict(
        x=torch.randn(2, 3, 4, 4),
        weight=torch.ones(3),
        bias=torch.zeros(3),
        running_mean=torch.zeros(3),
        running_var=torch.ones(3),
        training=True,
        backend="reference",
    )
    args.update(change)
    with pytest.raises(error, match=match):
        batch_norm_act(**args)


def test_module_helper_rejects_non_affine() -> None:
    with pytest.raises(ValueError, match="affine"):
        batch_norm_module_act(nn.BatchNorm2d(3, affine=False), torch.randn(2, 3, 4, 4))
    with pytest.raises(TypeError, match=r"nn\.BatchNorm2d"):
        batch_norm_module_act(nn.LayerNorm(3), torch.randn(2, 3, 4, 4))  # type: ignore[arg-type]


@pytest.mark.triton
def test_triton_strided_and_expanded_parameters(triton_device: str) -> None:
    """(C,) operands that are views (an expanded scalar, every other element) are read as values."""
    d = triton_device
    x = torch.randn(2, 5, 3, 4, device=d)
    w = torch.full((1,), 1.5, device=d).expand(5)
    b = torch.randn(10, device=d)[::2]
    rm, rv = torch.randn(10, device=d)[::2], (torch.rand(10, device=d) + 0.5)[::2]
    for training in (True, False):
        kw = dict(training=training, relu=True)
        want = batch_norm_act(x, w, b, rm.clone(), rv.clone(), backend="reference", **kw)  # type: ignore[arg-type]
        got = batch_norm_act(x, w, b, rm.clone(), rv.clone(), backend="triton", **kw)  # type: ignore[arg-type]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.triton
def test_triton_nan_propagates_like_eager(triton_device: str) -> None:
    x = torch.randn(2, 3, 4, 4, device=triton_device)
    x[0, 1, 2, 2] = float("nan")
    w, b = torch.ones(3, device=triton_device), torch.zeros(3, device=triton_device)
    for training in (True, False):
        rm, rv = torch.zeros(3, device=triton_device), torch.ones(3, device=triton_device)
        want = batch_norm_act(x, w, b, rm, rv, training=training, backend="reference")
        got = batch_norm_act(x, w, b, rm.clone(), rv.clone(), training=training, backend="triton")
        assert torch.isnan(got).any()  # ReLU keeps NaN instead of turning it into 0
        torch.testing.assert_close(got, want, equal_nan=True)


@pytest.mark.parametrize("backend", _module_backends())
def test_empty_batch_returns_what_eager_returns(backend: str, request: pytest.FixtureRequest) -> None:
    if backend == "triton":
        request.getfixturevalue("triton_device")
    x = torch.randn(0, 3, 4, 4)
    w, b = torch.ones(3), torch.zeros(3)
    for training in (True, False):
        got = batch_norm_act(x, w, b, torch.zeros(3), torch.ones(3), training=training, backend=backend)
        assert got.shape == x.shape


@pytest.mark.triton
def test_triton_merges_many_splits(triton_device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """More statistics splits than the finalize kernels merge per step (as on an H100's 528 programs)."""
    from fastalign.norm_act import triton as bn_triton

    if triton_device == "cpu":
        monkeypatch.setattr(bn_triton, "_CPU_PROGRAMS", 300)
    # 65 images of 2 x 4: one unit each, so 65 splits (one more than a merge step takes) of 8 rows
    inp = _inputs((bn_triton._BLOCK_S + 1, 3, 2, 4), True, True, seed=9, offset=3.0)
    g = bn_triton._Geometry(inp["x"].to(triton_device))  # type: ignore[union-attr]
    assert g.n_splits > bn_triton._BLOCK_S
    inp = {k: v.to(triton_device) if v is not None else None for k, v in inp.items()}
    _assert_within_twice_reference(
        inp, torch.float32, floor=1e-5, training=True, momentum=0.1, eps=1e-5, relu=True
    )


def test_module_helper_leaves_module_unchanged_on_bad_input() -> None:
    bn = nn.BatchNorm2d(3).train()
    with pytest.raises(ValueError, match="more than one value per channel"):
        batch_norm_module_act(bn, torch.randn(1, 3, 1, 1))
    assert int(bn.num_batches_tracked) == 0


def test_momentum_must_be_a_number() -> None:
    with pytest.raises(TypeError, match="momentum must be a float"):
        batch_norm_act(torch.randn(2, 3, 4, 4), torch.ones(3), torch.zeros(3), momentum=None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(eps=float("nan")), r"eps must be positive and finite, got nan"),
        (dict(eps=float("inf")), r"eps must be positive and finite, got inf"),
        (dict(eps=0.0), r"eps must be positive and finite, got 0.0"),
        (dict(eps=-1e-5), r"eps must be positive and finite"),
        (dict(momentum=float("nan")), r"momentum must be in \[0, 1\], got nan"),
        (dict(momentum=float("inf")), r"momentum must be in \[0, 1\], got inf"),
        (dict(momentum=1.5), r"momentum must be in \[0, 1\], got 1.5"),
        (dict(momentum=-0.1), r"momentum must be in \[0, 1\]"),
    ],
)
def test_eps_and_momentum_are_validated(change: dict, match: str) -> None:
    x, w, b = torch.randn(2, 3, 4, 4), torch.ones(3), torch.zeros(3)
    rm, rv = torch.zeros(3), torch.ones(3)
    with pytest.raises(ValueError, match="batch_norm_act: " + match):
        batch_norm_act(x, w, b, rm, rv, backend="reference", **change)
    assert torch.equal(rm, torch.zeros(3)) and torch.equal(rv, torch.ones(3))  # rejected before any update


def test_module_helper_validates_bn_eps_and_momentum() -> None:
    x = torch.randn(2, 3, 4, 4)
    for attr, value, match in [
        ("eps", float("nan"), r"bn\.eps must be positive and finite, got nan"),
        ("momentum", 2.0, r"bn\.momentum must be in \[0, 1\], got 2.0"),
    ]:
        bn = nn.BatchNorm2d(3).train()
        setattr(bn, attr, value)
        with pytest.raises(ValueError, match="batch_norm_module_act: " + match):
            batch_norm_module_act(bn, x)
        assert int(bn.num_batches_tracked) == 0
    bn = nn.BatchNorm2d(3, momentum=None).train()  # None: the cumulative average, as BatchNorm2d
    torch.testing.assert_close(batch_norm_module_act(bn, x, relu=False), nn.BatchNorm2d(3).train()(x))


def _fwd_args(device: str) -> dict:
    """Valid arguments of fastalign::bn_act_fwd for a (2, 3, 4, 4) x, in eval mode."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 4, generator=g)
    args = dict(x=x, weight=torch.ones(3), bias=torch.zeros(3), running_mean=torch.zeros(3),
                running_var=torch.ones(3), residual=torch.randn(2, 3, 4, 4, generator=g), training=False,
                eps=1e-5, relu=True)  # fmt: skip
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in args.items()}


_BAD_FWD = [
    (dict(weight=torch.ones(2)), ValueError, r"weight must have shape \(3,\) \(x's channels\), got \(2,\)"),
    (dict(bias=torch.zeros(4)), ValueError, r"bias must have shape \(3,\)"),
    (dict(running_mean=torch.zeros(2)), ValueError, r"running_mean must have shape \(3,\)"),
    (dict(running_var=None), ValueError, "training=False normalises with running_mean and running_var"),
    (dict(weight=torch.ones(3, dtype=torch.int32)), TypeError, "weight must be floating-point"),
    (dict(weight=torch.ones(6)[::2]), ValueError, r"weight must be contiguous \(unit stride\)"),
    (dict(weight=torch.ones(3, device="meta")), ValueError, "weight is on meta but x is on"),
    (dict(residual=torch.randn(2, 3, 4, 5)), ValueError, r"residual must have x's shape \(2, 3, 4, 4\)"),
    (dict(residual=torch.randn(2, 3, 4, 4).double()), ValueError, "residual must match x's dtype"),
    (dict(residual=torch.randn(2, 3, 4, 4).to(memory_format=torch.channels_last)), ValueError,
     "residual must have x's strides"),
    (dict(x=torch.randn(2, 3, 4, 4).double()), TypeError, "x must be float32, bfloat16 or float16"),
    (dict(x=torch.randn(2, 3, 4)), ValueError, r"x must have shape \(N, C, H, W\)"),
    (dict(x=torch.randn(2, 3, 4, 4).transpose(2, 3), residual=None), ValueError,
     "x must be contiguous or channels_last"),
    (dict(x=torch.randn(0, 3, 4, 4), residual=None), ValueError, "x must not be empty"),
    (dict(x=torch.randn(1, 3, 1, 1), residual=None, training=True), ValueError,
     r"training needs N \* H \* W > 1"),
    (dict(eps=float("nan")), ValueError, "eps must be positive and finite"),
]  # fmt: skip


@pytest.mark.triton
@pytest.mark.parametrize(("change", "error", "match"), _BAD_FWD)
def test_triton_fwd_op_validates_its_operands(
    triton_device: str, change: dict, error: type, match: str
) -> None:
    """The public op checks what its kernels assume (they would read out of bounds) in the op itself."""
    from fastalign.norm_act import triton as bn_triton

    args = {**_fwd_args(triton_device), **change}
    with pytest.raises(error, match="fastalign::bn_act_fwd: " + match):
        bn_triton.bn_act_fwd(**args)


def test_triton_ops_fake_implementations_validate_too() -> None:
    """Tracing (meta tensors: the fake implementations) rejects what the kernels would misread."""
    pytest.importorskip("triton")
    from fastalign.norm_act import triton as bn_triton

    args = {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in _fwd_args("cpu").items()}
    with pytest.raises(ValueError, match=r"fastalign::bn_act_fwd: weight must have shape \(3,\)"):
        bn_triton.bn_act_fwd(**{**args, "weight": torch.ones(2, device="meta")})
    x, w = args["x"], args["weight"]
    stats = torch.ones(3, device="meta")
    with pytest.raises(ValueError, match=r"fastalign::bn_act_bwd: mean must have shape \(3,\)"):
        bn_triton.bn_act_bwd(torch.ones_like(x), x, None, w, stats[:2], stats, False, False)
    dx, dw, _, dres = bn_triton.bn_act_bwd(torch.ones_like(x), x, None, w, stats, stats, False, False)
    assert dx.shape == x.shape and dw.shape == (3,) and dres.numel() == 0


_BAD_BWD = [
    (dict(mean=torch.zeros(2)), ValueError, r"mean must have shape \(3,\)"),
    (dict(rstd=torch.ones(3, dtype=torch.float64)), TypeError, "rstd must be torch.float32"),
    (dict(weight=torch.ones(4)), ValueError, r"weight must have shape \(3,\)"),
    (dict(dy=torch.ones(2, 3, 4, 5)), ValueError, "dy must have x's shape, dtype and device"),
    (dict(dy=torch.ones(2, 3, 4, 4, dtype=torch.bfloat16)), ValueError, "dy must have x's shape, dtype"),
    (dict(y=torch.ones(2, 3, 4, 4).to(memory_format=torch.channels_last)), ValueError,
     "y must have x's strides"),
    (dict(x=torch.ones(2, 3, 4, 4).double()), TypeError, "x must be float32, bfloat16 or float16"),
]  # fmt: skip


@pytest.mark.triton
@pytest.mark.parametrize(("change", "error", "match"), _BAD_BWD)
def test_triton_bwd_op_validates_its_operands(
    triton_device: str, change: dict, error: type, match: str
) -> None:
    from fastalign.norm_act import triton as bn_triton

    x = torch.randn(2, 3, 4, 4)
    args = dict(dy=torch.randn(2, 3, 4, 4), x=x, y=torch.relu(x), weight=torch.ones(3), mean=torch.zeros(3),
                rstd=torch.ones(3), training=True, has_residual=False)  # fmt: skip
    args.update(change)
    args = {k: v.to(triton_device) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    with pytest.raises(error, match="fastalign::bn_act_bwd: " + match):
        bn_triton.bn_act_bwd(**args)


def _device(backend: str, request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("triton_device") if backend == "triton" else "cpu"


def _float64_batch_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, momentum: float):
    """(y, running_mean, running_var from 0 and 1) of training-mode F.batch_norm in float64, channel by
    channel on x_c / a_c with eps / a_c^2 (the same normalisation; a_c = max(|x_c|, 1)), so that 1e200s
    do not overflow float64 either."""
    x = x.double().cpu()
    ys = []
    for c in range(x.shape[1]):
        a = max(float(x[:, c].abs().max()), 1.0)
        eps = max(1e-5 / a / a, torch.finfo(torch.float64).tiny)  # F.batch_norm refuses 0
        ys.append(F.batch_norm(x[:, c : c + 1] / a, None, None, w[c : c + 1].double().cpu(),
                               b[c : c + 1].double().cpu(), True, 0.0, eps))  # fmt: skip
    uvar = x.var(dim=(0, 2, 3))  # unbiased, as the running variance averages it
    return torch.cat(ys, 1), momentum * x.mean(dim=(0, 2, 3)), (1 - momentum) + momentum * uvar


_HUGE = [
    # var 1e39 and 1e38: squares and their sums overflowed float32; the new running variance
    # 0.9 + 0.1 * var fits float32 although var may not
    (torch.float32, (3e19, 3e19, 1e19)),
    (torch.float32, (1e30, 1.0, 1e-30)),  # channels apart: each is scaled on its own
    (torch.float32, (1e37, 1e37, 1e37)),  # near float32's largest
]


@pytest.mark.parametrize(
    ("backend", "dtype", "scales"),
    [
        *[("reference", *case) for case in _HUGE],
        *[pytest.param("triton", *case, marks=pytest.mark.triton) for case in _HUGE],
        ("reference", torch.float64, (1e200, 1.0, 1e200)),  # triton takes no float64
    ],
    ids=str,
)
def test_huge_activations_normalise_as_float64(
    backend: str, dtype: torch.dtype, scales: tuple[float, ...], request: pytest.FixtureRequest
) -> None:
    """A batch variance beyond the dtype used to normalise to bias (reference) or NaN (triton); now as
    in float64, and the running variance is what float64 gives, inf when it does not fit the dtype."""
    device = _device(backend, request)
    g = torch.Generator().manual_seed(7)
    x64 = torch.randn(3, 3, 5, 7, generator=g, dtype=torch.float64)
    x64 *= torch.tensor(scales, dtype=torch.float64).view(1, 3, 1, 1)
    x = x64.to(dtype).to(device)
    w, b = (torch.rand(3, generator=g) + 0.5).to(device), torch.randn(3, generator=g).to(device)
    rm, rv = torch.zeros(3, device=device, dtype=dtype), torch.ones(3, device=device, dtype=dtype)
    got = batch_norm_act(x, w, b, rm, rv, momentum=0.1, relu=False, backend=backend)
    want, rm_want, rv_want = _float64_batch_norm(x, w, b, 0.1)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got.double().cpu(), want, rtol=tol, atol=tol * float(want.abs().max()))
    torch.testing.assert_close(rm.double().cpu(), rm_want.to(dtype).double(), rtol=tol, atol=0)
    torch.testing.assert_close(rv.cpu(), rv_want.to(dtype), rtol=tol, atol=0)  # inf where it overflows


@pytest.mark.parametrize("backend", _module_backends())
@pytest.mark.parametrize(
    ("x_dtype", "vector_dtypes"),
    [
        (torch.float32, (torch.float64,) * 4),  # F.batch_norm: "mixed dtype (CPU)" RuntimeError
        (torch.float64, (torch.float32,) * 4),  # the same (triton refuses float64 x: NotImplementedError)
        (torch.bfloat16, (torch.float64, torch.float32, torch.bfloat16, torch.float64)),  # all differ
        (torch.float32, (torch.float32, torch.float32, torch.float64, torch.bfloat16)),
    ],
    ids=str,
)
def test_vectors_of_any_float_dtype(
    backend: str, x_dtype: torch.dtype, vector_dtypes: tuple, request: pytest.FixtureRequest
) -> None:
    """weight, bias and the running statistics may each have any float dtype (documented): the output
    has x's dtype and matches float64, the running statistics keep their dtypes and are updated."""
    device = _device(backend, request)
    if backend == "triton" and x_dtype == torch.float64:
        with pytest.raises(NotImplementedError, match="float64"):
            batch_norm_act(torch.randn(2, 3, 4, 4, device=device, dtype=x_dtype), *[torch.ones(3)] * 2,
                           backend=backend)  # fmt: skip
        return
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    w, b = (
        torch.rand(3, generator=g, dtype=torch.float64) + 0.5,
        torch.randn(3, generator=g, dtype=torch.float64),
    )
    rm, rv = (
        torch.randn(3, generator=g, dtype=torch.float64),
        torch.rand(3, generator=g, dtype=torch.float64) + 1,
    )
    low = [t.to(d).to(device) for t, d in zip((w, b, rm, rv), vector_dtypes, strict=True)]
    xl = x.to(x_dtype).to(device)
    want_rm, want_rv = low[2].double().cpu(), low[3].double().cpu()  # updated by F.batch_norm below
    got = batch_norm_act(xl, *low, momentum=0.3, backend=backend)
    want = F.relu(F.batch_norm(xl.double().cpu(), want_rm, want_rv, *[t.double().cpu() for t in low[:2]],
                               True, 0.3))  # fmt: skip
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2}[x_dtype]
    assert got.dtype == x_dtype
    torch.testing.assert_close(got.double().cpu(), want, rtol=tol, atol=tol)
    for t, exp, d in zip(low[2:], (want_rm, want_rv), vector_dtypes[2:], strict=True):
        assert t.dtype == d
        torch.testing.assert_close(t.double().cpu(), exp.to(d).double(), rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", _module_backends())
def test_no_channels_is_a_clear_error(backend: str, request: pytest.FixtureRequest) -> None:
    """C = 0 used to raise IndexError from F.batch_norm (which BatchNorm2d(0) shares)."""
    device = _device(backend, request)
    x = torch.randn(2, 0, 2, 2, device=device)
    for training in (True, False):
        with pytest.raises(
            ValueError, match=r"batch_norm_act: x must have at least one channel.*\(2, 0, 2, 2\)"
        ):
            batch_norm_act(x, *(torch.ones(0, device=device) for _ in range(4)), training=training,
                           backend=backend)  # fmt: skip
    with pytest.raises(ValueError, match="at least one channel"):
        batch_norm_module_act(nn.BatchNorm2d(0).to(device), x, backend=backend)


def test_backend_choice_is_marked_constant_for_dynamo_without_importing_it(tmp_path) -> None:
    """_choose carries the mark torch.compiler.assume_constant_result gives (what lets torch.compile trace
    batch_norm_act in one graph: test_cornet_fuse_training), set without importing torch._dynamo, half of
    ``import fastalign``'s time; if torch's decorator stops setting that attribute, this fails."""
    from fastalign.norm_act import api

    def probe() -> int:
        return 0

    assert getattr(torch.compiler.assume_constant_result(probe), "_dynamo_marked_constant", False) is True
    assert getattr(api._choose, "_dynamo_marked_constant", False) is True
    code = "import sys, fastalign; print('torch._dynamo' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False", out
