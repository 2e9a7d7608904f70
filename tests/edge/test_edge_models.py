"""Edge cases of batch_norm_act / batch_norm_module_act (fastalign.norm_act) against F.batch_norm in
float64, CORnet-S (eager and fused) and the ImageNet transform (fastalign.data.transforms): dtypes, empty
and size-1 shapes, NaN, extreme magnitudes, layouts and gradients."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from edge_cases import (
    EDGE_SETTINGS,
    EXTREME_IDS,
    EXTREMES,
    assert_close,
    attempt,
    env_triton,
    make,
    rtol,
)
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import fastalign as fa
from fastalign.data.transforms import imagenet_transform
from fastalign.norm_act import batch_norm_act, batch_norm_module_act

BN_BACKENDS = ["reference", pytest.param("triton", marks=pytest.mark.triton)]
BN_LAYOUTS = ["contiguous", "channels_last", "transposed", "stepped", "expanded"]
BN_NAMES = ["x", "weight", "bias", "running_mean", "running_var", "residual", "momentum", "eps"]


def _skip_missing(backend: str) -> None:
    if backend == "triton" and not env_triton():
        pytest.skip("triton kernels need a GPU or TRITON_INTERPRET=1")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _bn_layout(x: torch.Tensor, how: str) -> torch.Tensor:
    if how == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if how == "transposed":
        return x.transpose(2, 3).contiguous().transpose(2, 3)
    if how == "stepped":
        wide = torch.zeros((*x.shape[:-1], 2 * x.shape[-1]), dtype=x.dtype)
        wide[..., ::2] = x
        return wide[..., ::2]
    if how == "expanded":  # every image the same: a stride-0 batch dim
        return x[:1].expand(x.shape)
    return x


def _oracle(x, weight, bias, rm, rv, residual, training, momentum, eps, relu):
    """F.batch_norm + residual + ReLU in float64 on copies; returns (y, running_mean, running_var)."""
    d = lambda t: None if t is None else t.detach().double().clone()
    rm64, rv64 = d(rm), d(rv)
    y = F.batch_norm(d(x), rm64, rv64, d(weight), d(bias), training, momentum, eps)
    if residual is not None:
        y = y + d(residual)
    return (F.relu(y) if relu else y), rm64, rv64


def _tol(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float16, torch.bfloat16, torch.float64) else torch.float32


@pytest.mark.parametrize("backend", BN_BACKENDS)
@pytest.mark.parametrize("kind", ["float64", "float32", "float16", "bfloat16"])
@EDGE_SETTINGS
@given(
    how=st.sampled_from(BN_LAYOUTS),
    shape=st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3)),
    training=st.booleans(),
    running=st.booleans(),
    residual=st.booleans(),
    relu=st.booleans(),
    momentum=st.sampled_from([0.0, 0.1, 1.0]),
    seed=st.integers(0, 2**31),
)
def test_batch_norm_act_matches_functional(
    backend: str,
    kind: str,
    how: str,
    shape: tuple[int, int, int, int],
    training: bool,
    running: bool,
    residual: bool,
    relu: bool,
    momentum: float,
    seed: int,
) -> None:
    """relu(batch_norm(x) + residual) and the running-statistics update equal F.batch_norm in float64,
    for every float dtype (parameters in x's dtype), layout and size-1 dims."""
    _skip_missing(backend)
    gen = _gen(seed)
    dtype = getattr(torch, kind)
    x = _bn_layout(make(kind, shape, gen), how)
    c = shape[1]
    w, b = torch.rand(c, generator=gen).to(dtype) + 0.5, make(kind, (c,), gen)
    rm = make(kind, (c,), gen) if running or not training else None
    rv = (torch.rand(c, generator=gen) + 0.5).to(dtype) if rm is not None else None
    res = make(kind, shape, gen) if residual else None
    one_value = training and x.numel() // c == 1  # F.batch_norm refuses this too
    want, rm_want, rv_want = (
        (None, None, None) if one_value else _oracle(x, w, b, rm, rv, res, training, momentum, 1e-5, relu)
    )
    out = attempt(
        lambda: batch_norm_act(x, w, b, rm, rv, training=training, momentum=momentum, residual=res, relu=relu,
                               backend=backend),
        "batch_norm_act", BN_NAMES,
    )  # fmt: skip
    if not out.ok:
        assert one_value or isinstance(out.error, NotImplementedError), f"refused valid input: {out.error}"
        return
    assert not one_value, "batch_norm_act normalised one value per channel in training"
    assert out.value.dtype == dtype
    assert_close(out.value, want, _tol(dtype), f"batch_norm_act[{backend}, {kind}, {how}]")
    if rm is not None and training:
        assert_close(rm, rm_want, _tol(dtype), "running_mean")
        assert_close(rv, rv_want, _tol(dtype), "running_var")


@pytest.mark.parametrize("backend", BN_BACKENDS)
@pytest.mark.parametrize(("dtype", "scale"), EXTREMES, ids=EXTREME_IDS)
def test_batch_norm_act_extreme_magnitudes(backend: str, dtype: torch.dtype, scale: float) -> None:
    """Normalisation is scale-free: x of 1e200 ... 1e-25 is normalised as the float64 oracle does (eps
    dominates tiny variances there too), or refused with a ValueError naming x; never NaN."""
    _skip_missing(backend)
    gen = _gen(1)
    x = (torch.randn(2, 3, 2, 2, generator=gen, dtype=torch.float64) * scale).to(dtype)
    w, b = torch.rand(3, generator=gen).to(dtype) + 0.5, torch.randn(3, generator=gen).to(dtype)
    out = attempt(lambda: batch_norm_act(x, w, b, relu=False, backend=backend), "batch_norm_act", ["x"])
    if out.ok:
        # batch norm is scale-free up to eps: the oracle normalises x / scale with eps / scale^2, so that
        # the float64 variance of 1e200s does not overflow (F.batch_norm would return the bias); an eps
        # that underflows (1e-405) becomes float64's smallest normal (F.batch_norm refuses 0), as
        # negligible beside a variance of about 1
        big = max(scale, 1.0)
        eps = max(1e-5 / big / big, np.finfo(np.float64).tiny)
        want, _, _ = _oracle(x.double() / big, w, b, None, None, None, True, 0.1, eps, False)
        assert_close(out.value, want, dtype, f"batch_norm_act[{backend}] x {scale:g}")


@pytest.mark.parametrize("backend", BN_BACKENDS)
@pytest.mark.parametrize(
    "case",
    ["x_int", "x_complex", "x_bool", "weight_int", "params_float32_x_float64", "params_float64_x_float32",
     "weight_short", "bias_2d", "residual_dtype", "residual_shape", "x_3d", "running_one",
     "eval_without_running", "momentum_nan", "momentum_2", "eps_nan", "eps_inf", "eps_negative", "eps_str"],
)  # fmt: skip
def test_batch_norm_act_bad_arguments(backend: str, case: str) -> None:
    """Every invalid argument is a ValueError/TypeError naming it; valid mixtures match the oracle."""
    _skip_missing(backend)
    gen = _gen(2)
    x = torch.randn(2, 3, 2, 2, generator=gen)
    kw: dict = dict(weight=torch.ones(3), bias=torch.zeros(3), running_mean=None, running_var=None)
    opts: dict = dict(training=True, momentum=0.1, eps=1e-5, residual=None)
    valid = False
    if case == "x_int":
        x = x.to(torch.int32)
    elif case == "x_complex":
        x = x.to(torch.complex64)
    elif case == "x_bool":
        x = x > 0
    elif case == "weight_int":
        kw["weight"] = torch.ones(3, dtype=torch.int64)
    elif case == "params_float32_x_float64":
        x, valid = x.double(), True
    elif case == "params_float64_x_float32":
        kw["weight"], kw["bias"], valid = kw["weight"].double(), kw["bias"].double(), True
    elif case == "weight_short":
        kw["weight"] = torch.ones(2)
    elif case == "bias_2d":
        kw["bias"] = torch.zeros(3, 1)
    elif case == "residual_dtype":
        opts["residual"] = torch.zeros(2, 3, 2, 2, dtype=torch.float64)
    elif case == "residual_shape":
        opts["residual"] = torch.zeros(1, 3, 2, 2)
    elif case == "x_3d":
        x = x[0]
    elif case == "running_one":
        kw["running_mean"] = torch.zeros(3)
    elif case == "eval_without_running":
        opts["training"] = False
    elif case.startswith("momentum"):
        opts["momentum"] = math.nan if case == "momentum_nan" else 2.0
    else:
        opts["eps"] = {"eps_nan": math.nan, "eps_inf": math.inf, "eps_negative": -1e-5, "eps_str": "1e-5"}[
            case
        ]
    names = [*BN_NAMES, "running statistics"]
    out = attempt(lambda: batch_norm_act(x, **kw, **opts, backend=backend), "batch_norm_act", names)
    if valid:
        assert out.ok or isinstance(out.error, NotImplementedError), f"refused a valid mixture: {out.error}"
        if out.ok:
            want, _, _ = _oracle(x, kw["weight"], kw["bias"], None, None, None, True, 0.1, 1e-5, True)
            assert_close(out.value, want, torch.float32, case)
    else:
        assert not out.ok, f"{case} was accepted: {out.value}"


@pytest.mark.parametrize("backend", BN_BACKENDS)
@pytest.mark.parametrize(
    "shape", [(0, 3, 2, 2), (2, 0, 2, 2), (2, 3, 0, 2), (2, 3, 1, 1), (1, 3, 1, 1)], ids=str
)
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_act_empty_and_size_one(backend: str, shape: tuple[int, ...], training: bool) -> None:
    """Empty dims and one value per channel: what F.batch_norm returns, or a ValueError naming x."""
    _skip_missing(backend)
    c = shape[1]
    x = torch.randn(shape, generator=_gen(3))
    rm, rv = torch.zeros(c), torch.ones(c)
    out = attempt(
        lambda: batch_norm_act(x, torch.ones(c), torch.zeros(c), rm, rv, training=training, backend=backend),
        "batch_norm_act",
        ["x"],
    )
    if out.ok:
        want, _, _ = _oracle(x, torch.ones(c), torch.zeros(c), rm, rv, None, training, 0.1, 1e-5, True)
        assert out.value.shape == x.shape
        assert_close(out.value, want, torch.float32, f"{shape}")


@pytest.mark.parametrize("backend", BN_BACKENDS)
def test_batch_norm_act_nan_propagates_as_eager(backend: str) -> None:
    """NaN in one channel: that channel is NaN (as eager), the others are untouched."""
    _skip_missing(backend)
    x = torch.randn(2, 3, 2, 2, generator=_gen(4))
    x[0, 1, 0, 0] = math.nan
    out = batch_norm_act(x, torch.ones(3), torch.zeros(3), relu=False, backend=backend)
    assert bool(out[:, 1].isnan().all())
    want, _, _ = _oracle(
        x[:, [0, 2]], torch.ones(2), torch.zeros(2), None, None, None, True, 0.1, 1e-5, False
    )
    assert_close(out[:, [0, 2]], want, torch.float32, "finite channels")


@pytest.mark.parametrize("backend", BN_BACKENDS)
@pytest.mark.parametrize(
    ("how", "residual"),
    [("contiguous", True), ("channels_last", False), ("stepped", True), ("expanded", False)],
)
def test_batch_norm_act_gradients(backend: str, how: str, residual: bool) -> None:
    """Gradients of x, weight, bias and residual equal float64 autograd through F.batch_norm."""
    _skip_missing(backend)
    gen = _gen(5)
    dtype = torch.float32 if backend == "triton" else torch.float64
    x = _bn_layout(torch.randn(2, 3, 2, 2, generator=gen, dtype=dtype), how).requires_grad_()
    w = (torch.rand(3, generator=gen, dtype=dtype) + 0.5).requires_grad_()
    b = torch.randn(3, generator=gen, dtype=dtype).requires_grad_()
    res = torch.randn(2, 3, 2, 2, generator=gen, dtype=dtype).requires_grad_() if residual else None
    inputs = [t for t in (x, w, b, res) if t is not None]
    out = batch_norm_act(x, w, b, residual=res, backend=backend)
    assert out.requires_grad
    dy = torch.randn(out.shape, generator=gen, dtype=dtype)
    got = torch.autograd.grad(out, inputs, dy)
    ref = [t.detach().double().requires_grad_() for t in inputs]
    y = F.batch_norm(ref[0], None, None, ref[1], ref[2], True)
    y = F.relu(y + ref[3] if residual else y)
    exp = torch.autograd.grad(y, ref, dy.double())
    for i, (g, e) in enumerate(zip(got, exp, strict=True)):
        assert g is not None, f"no gradient for input {i}"
        assert_close(g, e, dtype, f"gradient {i}", scale=float(e.abs().max()) + 1e-6)


@pytest.mark.parametrize("backend", BN_BACKENDS)
@pytest.mark.parametrize(
    "config",
    [dict(), dict(momentum=None), dict(track_running_stats=False), dict(affine=False), dict(eps=0.0)],
    ids=str,
)
@pytest.mark.parametrize("train", [True, False])
def test_batch_norm_module_act_matches_module(backend: str, config: dict, train: bool) -> None:
    """batch_norm_module_act(bn, x) == relu(bn(x)) with bn's buffers updated the same way."""
    _skip_missing(backend)
    gen = _gen(6)
    bn = nn.BatchNorm2d(3, **config)
    bn.train(train)
    x = torch.randn(2, 3, 2, 2, generator=gen)
    twin = copy.deepcopy(bn)
    out = attempt(lambda: batch_norm_module_act(bn, x, backend=backend), "batch_norm_module_act", ["bn"])
    if not out.ok:
        # eps=0 is a valid BatchNorm2d; refusing it (cleanly, naming eps) is the norm_act api's choice
        assert config.get("affine") is False or "eps" in str(out.error), (
            f"refused a valid module: {out.error}"
        )
        return
    want = F.relu(twin(x))
    assert_close(out.value, want, torch.float32, f"{config}")
    for name, buf in twin.named_buffers():
        assert_close(dict(bn.named_buffers())[name].double(), buf.double(), torch.float32, name)


def test_batch_norm_module_act_rejects_other_modules() -> None:
    out = attempt(lambda: batch_norm_module_act(nn.BatchNorm1d(3), torch.randn(2, 3, 2, 2)), "x", ["bn"])
    assert isinstance(out.error, TypeError)


# ----------------------------------------------------------------------------------------- CORnet-S


# One CORnet-S forward touches all 53M weights (about a second on 2 busy cores), so these tests share one
# model, one fused copy and one set of reference logits, and use 8x8 images.


@pytest.fixture(scope="module")
def model() -> fa.models.CORnetS:
    torch.manual_seed(0)
    return fa.models.cornet_s().eval()


@pytest.fixture(scope="module")
def fused(model: fa.models.CORnetS) -> torch.nn.Module:
    return model.fuse()


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    x = torch.randn(2, 3, 8, 8, generator=_gen(7))
    x[1] = x[0]  # so that a stride-0 batch holds the same values
    return x


@pytest.fixture(scope="module")
def logits(model: fa.models.CORnetS, image: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(image)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_cornet_input_dtype(
    model: fa.models.CORnetS, image: torch.Tensor, logits: torch.Tensor, dtype: torch.dtype
) -> None:
    """An input whose dtype differs from the weights' is converted or refused with a TypeError naming x
    (not a RuntimeError from inside conv2d)."""
    with torch.no_grad():
        out = attempt(lambda: model(image.to(dtype)), "CORnetS", ["x"])
    if out.ok:
        assert_close(
            out.value.float(), logits, dtype, f"CORnet-S on {dtype}", scale=float(logits.abs().max())
        )


@pytest.mark.parametrize("kind", ["int32", "bool", "complex64"])
def test_cornet_non_float_input(model: fa.models.CORnetS, kind: str) -> None:
    x = make(kind, (1, 3, 8, 8), _gen(8))
    out = attempt(lambda: model(x), "CORnetS", ["x"])
    assert isinstance(out.error, TypeError)


@pytest.mark.parametrize("which", ["eager", "fused"])
@pytest.mark.parametrize("shape", [(0, 3, 8, 8), (1, 3, 0, 8), (1, 4, 8, 8), (3, 8, 8)], ids=str)
def test_cornet_shapes(
    model: fa.models.CORnetS, fused: torch.nn.Module, which: str, shape: tuple[int, ...]
) -> None:
    """An empty batch gives empty logits and features; empty images and wrong channel counts are a
    ValueError naming x."""
    net = fused if which == "fused" else model
    x = torch.randn(shape, generator=_gen(9))
    with torch.no_grad():
        out = attempt(lambda: net(x), "CORnetS", ["x"])
        feats = attempt(lambda: net.features(x, ["V1", "decoder"]), "CORnetS.features", ["x"])
    valid = len(shape) == 4 and shape[1] == 3 and shape[2] > 0
    assert out.ok == valid and feats.ok == valid, f"{shape}: {out.error or feats.error}"
    if valid:
        assert out.value.shape == (shape[0], 1000)
        assert feats.value["decoder"].shape == (shape[0], 1000)


def test_cornet_one_pixel_image(model: fa.models.CORnetS) -> None:
    """A 1x1 image runs through every stride-2 stage (padding keeps it 1x1)."""
    with torch.no_grad():
        out = model(torch.randn(1, 3, 1, 1, generator=_gen(10)))
    assert out.shape == (1, 1000) and bool(torch.isfinite(out).all())


def test_cornet_empty_batch_in_training(model: fa.models.CORnetS) -> None:
    """An empty batch passes BatchNorm in training too (F.batch_norm returns it); logits are (0, 1000)."""
    net = copy.deepcopy(model).train()  # a copy: training would update the shared model's statistics
    out = attempt(lambda: net(torch.randn(0, 3, 8, 8)), "CORnetS", ["x"])
    assert out.ok and out.value.shape == (0, 1000), out.error


@pytest.mark.parametrize(
    ("which", "how"), [("eager", "stepped"), ("fused", "expanded"), ("fused", "transposed")]
)
def test_cornet_layouts(
    model: fa.models.CORnetS,
    fused: torch.nn.Module,
    image: torch.Tensor,
    logits: torch.Tensor,
    which: str,
    how: str,
) -> None:
    """Logits do not depend on the input's memory layout (eager and fused)."""
    net = fused if which == "fused" else model
    with torch.no_grad():
        got = net(_bn_layout(image, how))
    assert_close(got, logits, torch.float32, f"{which} {how}", scale=float(logits.abs().max()) * 10)


def test_cornet_features_require_grad(model: fa.models.CORnetS) -> None:
    """features() is differentiable with respect to the input (ReAlnet trains through the taps)."""
    x = torch.randn(1, 3, 8, 8, generator=_gen(11), requires_grad=True)
    feats = model.features(x, ["V1"])
    (g,) = torch.autograd.grad(feats["V1"].sum(), [x])
    assert g is not None and bool(torch.isfinite(g).all()) and bool((g != 0).any())


@pytest.mark.parametrize("layers", [[], ["V9"], [3], "V1", ("V1", "V1.output")], ids=str)
def test_cornet_features_layers(model: fa.models.CORnetS, layers: object) -> None:
    x = torch.randn(1, 3, 8, 8, generator=_gen(12))
    with torch.no_grad():
        out = attempt(lambda: model.features(x, layers), "features", ["layers", "layer"])  # type: ignore[arg-type]
    assert out.ok == (layers in ("V1", ("V1", "V1.output")))


@pytest.mark.parametrize("num_classes", [-1, 2.5], ids=repr)
def test_cornet_num_classes_is_validated(num_classes: object) -> None:
    out = attempt(lambda: fa.models.CORnetS(num_classes=num_classes), "CORnetS", ["num_classes"])  # type: ignore[arg-type]
    assert not out.ok


@pytest.mark.parametrize("dtype", [torch.int32, torch.complex64, "float32", None])
def test_fuse_dtype_is_validated(model: fa.models.CORnetS, dtype: object) -> None:
    out = attempt(lambda: fa.models.fuse(model, dtype=dtype), "fuse", ["dtype"])  # type: ignore[arg-type]
    assert not out.ok


@pytest.mark.parametrize("weights", [{"V1.conv1.weight": 1.0}], ids=repr)
def test_cornet_s_bad_weights(weights: object) -> None:
    out = attempt(lambda: fa.models.cornet_s(weights), "cornet_s", ["weights"])  # type: ignore[arg-type]
    assert not out.ok


# ----------------------------------------------------------------------------------------- transforms


@EDGE_SETTINGS
@given(
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    batch=st.sampled_from([None, 0, 2]),
    expanded=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_imagenet_transform_shapes(h: int, w: int, batch: int | None, expanded: bool, seed: int) -> None:
    """Any uint8 image of at least 1x1 becomes (3, size, size) in [0, 1] (normalize=False); without
    resizing (resize == size == the image's shorter side) it is the centre crop of x / 255."""
    size = min(h, w)
    t = imagenet_transform(size, resize=size, normalize=False)
    shape = (3, h, w) if batch is None else (batch, 3, h, w)
    img = torch.randint(0, 256, shape, generator=_gen(seed), dtype=torch.uint8)
    if expanded:
        img = img[..., :1, :].expand(shape)
    out = t(img)
    assert out.shape == (*shape[:-3], 3, size, size) and out.dtype == torch.float32
    top, left = round((h - size) / 2.0), round((w - size) / 2.0)
    want = img[..., top : top + size, left : left + size].double() / 255
    assert_close(out, want, torch.float32, "centre crop")


@pytest.mark.parametrize("shape", [(3, 0, 5), (3, 5, 0), (0, 5, 5), (4, 5, 5), (5, 5)], ids=str)
def test_imagenet_transform_bad_images(shape: tuple[int, ...]) -> None:
    """Empty or non-RGB images are a ValueError naming the image, not a ZeroDivisionError."""
    t = imagenet_transform(4)
    out = attempt(lambda: t(torch.zeros(shape, dtype=torch.uint8)), "ImageNetTransform", ["image"])
    assert not out.ok


@pytest.mark.parametrize("kind", ["float32", "int64", "bool"])
def test_imagenet_transform_non_uint8(kind: str) -> None:
    t = imagenet_transform(4)
    out = attempt(lambda: t(make(kind, (3, 6, 6), _gen(13))), "ImageNetTransform", ["image"])
    assert isinstance(out.error, TypeError)


@pytest.mark.parametrize(
    ("size", "resize"), [(0, None), (-1, None), (True, None), (4, 3), (4, 2.5), (2.0, None)]
)
def test_imagenet_transform_bad_sizes(size: object, resize: object) -> None:
    out = attempt(lambda: imagenet_transform(size, resize), "imagenet_transform", ["size", "resize"])  # type: ignore[arg-type]
    assert not out.ok


def test_imagenet_transform_normalises_with_imagenet_stats() -> None:
    img = torch.full((3, 4, 4), 128, dtype=torch.uint8)
    out = imagenet_transform(4, resize=4)(img)
    mean, std = np.array(fa.data.IMAGENET_MEAN), np.array(fa.data.IMAGENET_STD)
    want = np.broadcast_to(((128 / 255 - mean) / std)[:, None, None], (3, 4, 4))
    np.testing.assert_allclose(out.numpy(), want, rtol=rtol(torch.float32))
