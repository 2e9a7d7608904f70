"""Fused inference CORnet-S vs the eager reference: outputs, every feature tap, gradients, options.

The tests run a narrow CORnet-S (test_cornet_model's: V2, V4 and IT an eighth as wide, the same classes and
code paths with 0.9 M instead of 53 M weights); ``test_real_width_matches_eager`` runs the real one.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_cornet_model import _narrow_cornet_s, randomize_bn

from fastalign.models import CORnetS, FusedCORnetS, cornet_s, fuse
from fastalign.models.cornet import fold_conv_bn, winograd_weight
from fastalign.models.cornet import fused as fused_module
from fastalign.models.cornet.fused import FusedBlock, _mkldnn_available, mkldnn_dtype_unsupported
from fastalign.models.cornet.model import CORblockS

ALL = ("V1", "V2", "V4", "IT", "avgpool", "decoder")


@pytest.fixture(scope="module")
def model() -> CORnetS:
    return _narrow_cornet_s(seed=1).eval()


@pytest.fixture(scope="module")
def model64(model: CORnetS) -> CORnetS:
    return copy.deepcopy(model).double().eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def refs(model: CORnetS, model64: CORnetS, x: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
    """Every tap of the eager module in float64 and float32 (computed once)."""
    with torch.inference_mode():
        return {
            "f64": model64.features(x.double(), layers=ALL, timesteps="all"),
            "f32": model.features(x, layers=ALL, timesteps="all"),
        }


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("winograd", [True, False])
def test_float64_fold_is_exact(model64: CORnetS, x: torch.Tensor, refs, winograd: bool) -> None:
    # In float64 folding, conv_input composition and Winograd must agree to rounding: the algebra.
    fused = fuse(model64, dtype=torch.float64, mkldnn=False, winograd=winograd)
    ref = refs["f64"]
    with torch.no_grad():
        got = fused.features(x.double(), layers=ALL, timesteps="all")
    assert list(got) == list(ref)
    for k in ref:
        assert got[k].dtype == torch.float64
        assert _rel_err(got[k], ref[k]) < 1e-11, k


@pytest.mark.parametrize(
    ("channels_last", "mkldnn", "winograd"),
    [(True, True, True), (False, False, True), (True, True, False)],
)
def test_float32_matches_eager(model, x, refs, channels_last: bool, mkldnn: bool, winograd: bool) -> None:
    if mkldnn and not _mkldnn_available():
        pytest.skip("this torch has no oneDNN fused convolution ops")
    fused = fuse(model, channels_last=channels_last, mkldnn=mkldnn, winograd=winograd)
    assert fused.winograd is winograd
    ref64, ref32 = refs["f64"], refs["f32"]
    with torch.inference_mode():
        got = fused.features(x, layers=ALL, timesteps="all")
        logits = fused(x)
    assert fused.V2.use_mkldnn is mkldnn
    # At 32x32 every strided 3x3 conv has fewer output pixels than channels: im2col GEMM when NHWC.
    assert fused.IT.use_gemm is channels_last
    for k in ref64:
        # Within the float32 rounding of the eager module itself (and never worse than 1e-5 relative).
        assert _rel_err(got[k], ref64[k]) <= max(4 * _rel_err(ref32[k], ref64[k]), 1e-5), k
    # NHWC inside, NCHW out as the eager model's taps (a channels_last tap broke .view(B, -1))
    assert all(v.is_contiguous() for v in got.values())
    assert got["V4.output-t0"].view(x.shape[0], -1).shape[1] == got["V4.output-t0"][0].numel()
    torch.testing.assert_close(logits, got["decoder.output-t0"], rtol=0, atol=0)


@pytest.fixture(scope="module")
def real() -> CORnetS:
    """CORnet-S at its real width (53 M weights)."""
    torch.manual_seed(0)
    model = cornet_s()
    randomize_bn(model, seed=1)
    return model.eval()


@pytest.fixture(scope="module")
def real_refs(real: CORnetS, x: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
    with torch.inference_mode():
        return {
            "f64": copy.deepcopy(real).double().features(x.double(), layers=ALL, timesteps="all"),
            "f32": real.features(x, layers=ALL, timesteps="all"),
        }


def test_real_width_matches_eager(real: CORnetS, real_refs, x: torch.Tensor) -> None:
    # Fused with the defaults: every tap within 4x the eager float32 module's error against float64, as
    # the narrow network's are.
    with torch.inference_mode():
        got = fuse(real).features(x, layers=ALL, timesteps="all")
    ref64, ref32 = real_refs["f64"], real_refs["f32"]
    assert list(got) == list(ref64)
    for k in ref64:
        assert got[k].dtype == torch.float32 and got[k].shape == ref64[k].shape, k
        assert _rel_err(got[k], ref64[k]) <= max(4 * _rel_err(ref32[k], ref64[k]), 1e-5), k


@pytest.fixture(scope="module")
def fused_default(model: CORnetS):
    return fuse(model)


# Each example runs the whole network three times (float64, float32, fused: 1-3 s on 2 busy cores), so
# beside explicit examples at the extremes few are drawn (1 in CI, 12 with the thorough profile).
# 1x1: every area 1x1, V1's 3x3 conv as im2col (fewer pixels than its 64 channels). 37x37: areas 10, 5,
# 3, 2, Winograd tiles cropped in V2 and V4, V1's conv direct (100 pixels). 2 x 9x40: odd by even, areas
# 3x10, 2x5, 1x3, 1x2 (cropped tiles in V2 and V4), V1's conv as im2col over a batch of 2 (60 pixels).
@settings(settings.default, max_examples=max(1, settings.default.max_examples // 25))
@example(n=1, h=1, w=1, seed=0)
@example(n=1, h=37, w=37, seed=1)
@example(n=2, h=9, w=40, seed=2)
@given(n=st.integers(1, 2), h=st.integers(1, 41), w=st.integers(1, 41), seed=st.integers(0, 2**16))
def test_any_input_size_matches_eager(
    model, model64, fused_default, n: int, h: int, w: int, seed: int
) -> None:
    # Odd, prime and tiny sizes: Winograd tiles that need cropping, im2col vs direct choices flipping.
    x = torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        ref64 = model64.features(x.double(), layers=ALL, timesteps="all")
        ref32 = model.features(x, layers=ALL, timesteps="all")
        got = fused_default.features(x, layers=ALL, timesteps="all")
    for k in ref64:
        assert got[k].shape == ref64[k].shape, k
        assert _rel_err(got[k], ref64[k]) <= max(4 * _rel_err(ref32[k], ref64[k]), 1e-5), k


@pytest.fixture(scope="module")
def refs_low(model: CORnetS, x: torch.Tensor) -> Callable[[torch.dtype], dict[str, torch.Tensor]]:
    """Every tap of the eager module run in a low-precision dtype (computed once per dtype, on first use)."""
    cache: dict[torch.dtype, dict[str, torch.Tensor]] = {}

    def get(dtype: torch.dtype) -> dict[str, torch.Tensor]:
        if dtype not in cache:
            low = copy.deepcopy(model).to(dtype)
            with torch.inference_mode():
                cache[dtype] = low.eval().features(x.to(dtype), layers=ALL, timesteps="all")
        return cache[dtype]

    return get


_PROBES = {torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("native", [True, False], ids=["onednn-low-precision", "float32-fallback"])
def test_low_precision_within_twice_eager_error(
    model: CORnetS,
    x,
    refs,
    refs_low,
    dtype,
    native: bool,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    if native:
        missing = mkldnn_dtype_unsupported(dtype)
        if missing is not None:  # this branch is tested only on CPUs that have the instructions
            pytest.skip(f"oneDNN {dtype} convs cannot run on this CPU: {missing}")
        # oneDNN's own low-precision kernels: at the real width, where their rounding was measured
        model = request.getfixturevalue("real")
        ref64 = request.getfixturevalue("real_refs")["f64"]
        with torch.inference_mode():
            ref_low = copy.deepcopy(model).to(dtype).features(x.to(dtype), layers=ALL, timesteps="all")
    else:
        # torch's probe says no, as on a CPU without AVX-512 / AVX-NE-CONVERT: the float32 fallback
        monkeypatch.setattr(torch.ops.mkldnn, _PROBES[dtype], lambda: False)
        ref64, ref_low = refs["f64"], refs_low(dtype)
    fused = fuse(model, dtype=dtype)
    assert fused.dtype == dtype
    assert fused.compute_dtype == (dtype if native else torch.float32)
    with torch.inference_mode():
        got = fused.features(x, layers=ALL, timesteps="all")
        logits = fused(x)
    assert fused.V2.use_mkldnn is _mkldnn_available()
    assert logits.dtype == dtype
    assert got["V4.output-t0"].is_contiguous()  # NCHW out, as the eager model's taps
    for k in ref64:
        assert got[k].dtype == dtype
        assert torch.isfinite(got[k]).all()
        # DESIGN: at most twice the error of the same-dtype eager module against float64.
        assert _rel_err(got[k], ref64[k]) <= 2 * _rel_err(ref_low[k], ref64[k]), k
    if not native:
        feature = "avx_ne_convert"  # named in both dtypes' requirements
        with pytest.raises(NotImplementedError, match=f"mkldnn=True with dtype {dtype}.*{feature}"):
            fuse(model, dtype=dtype, mkldnn=True)


def test_empty_batch_gives_empty_outputs_on_every_path(model: CORnetS, fused_default) -> None:
    # Every layer supports B = 0; only the original's Flatten (view(B, -1)) did not.
    with torch.inference_mode():
        ref = model.features(torch.randn(1, 3, 32, 33), layers=ALL, timesteps="all")
    x0 = torch.empty(0, 3, 32, 33)
    with torch.inference_mode():  # eager, and fused through oneDNN's fused kernels where available
        outs = [model.features(x0, layers=ALL, timesteps="all"), fused_default.features(x0, ALL, "all")]
        logits = [model(x0), fused_default(x0)]
    xg = x0.clone().requires_grad_(True)  # fused through F.conv2d, Winograd and im2col (autograd)
    outs.append(fused_default.features(xg, layers=ALL, timesteps="all"))
    assert fused_default.V2.use_mkldnn is False
    (g,) = torch.autograd.grad(sum(v.sum() for v in outs[-1].values()), xg)
    assert g.shape == x0.shape
    for got in outs:
        assert list(got) == list(ref)
        for k, v in got.items():
            assert v.shape == (0, *ref[k].shape[1:]), k
    classes = model.decoder.linear.out_features
    assert [tuple(t.shape) for t in logits] == [(0, classes), (0, classes)]
    for net in (model, fused_default):
        with pytest.raises(ValueError, match=f"{type(net).__name__}: x must have H >= 1 and W >= 1"):
            net(torch.empty(2, 3, 0, 8))


def test_gradients_through_fused_taps(model: CORnetS, model64: CORnetS, x) -> None:
    fused = fuse(model)  # float32, oneDNN fused ops where available, Winograd
    xg = x.clone().requires_grad_(True)
    feats = fused.features(xg, layers=("V4", "IT"), timesteps="all")
    assert fused.V4.use_mkldnn is False  # oneDNN's fused ops have no autograd: plain convs are used
    (g,) = torch.autograd.grad(feats["V4.output-t1"].square().sum() + feats["IT.output-t1"].sum(), xg)
    with torch.no_grad():
        fused(x)
    assert fused.V4.use_mkldnn is _mkldnn_available()
    xr = x.double().requires_grad_(True)
    ref = model64.features(xr, layers=("V4", "IT"), timesteps="all")
    (gref,) = torch.autograd.grad(ref["V4.output-t1"].square().sum() + ref["IT.output-t1"].sum(), xr)
    assert g.abs().max() > 0
    assert _rel_err(g, gref) < 1e-4


def test_fuse_method_and_structure(model: CORnetS, x) -> None:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = model.fuse(mkldnn=False)
    assert isinstance(fused, FusedCORnetS) and not fused.training
    # One folded copy of each shared conv per timestep, none of conv_input (multiplied into timestep 0).
    names = {n for n, _ in fused.V4.named_buffers()}
    # Timestep 0 (stride 2) stays a direct conv; later ones keep only their Winograd-domain kernel.
    assert {"conv2_0_weight", "conv2_1_wino", "conv2_2_wino", "conv2_3_wino"} <= names
    assert not names & {"conv2_1_weight", "conv2_2_weight", "conv2_3_weight"}
    assert not any("conv_input" in n for n in names)
    assert not torch.equal(fused.V4.conv2_1_wino, fused.V4.conv2_2_wino)
    direct = fuse(model, winograd=False, mkldnn=False)
    assert not torch.equal(direct.V4.conv2_0_weight, direct.V4.conv2_1_weight)
    assert sum(1 for _ in fused.parameters()) == 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    with torch.no_grad():
        last = fused.features(x)
        torch.testing.assert_close(fused(x), fused.features(x, "decoder")["decoder"], rtol=0, atol=0)
    assert list(last) == ["V1", "V2", "V4", "IT", "avgpool"]


@pytest.mark.parametrize("slice_values", [16 * 24 * 5, 1 << 17], ids=["ragged-slices", "one-slice"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_folded_buffers_are_the_public_fold_and_transform(
    dtype: torch.dtype, slice_values: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # fuse() folds into reused float64 scratch buffers and transforms Winograd kernels a slice of input
    # channels at a time (5 of 24 here: the last slice is short); the buffers are fold_conv_bn's and
    # winograd_weight's values, cast once, and no buffer is a view of the scratch.
    monkeypatch.setattr(fused_module, "_WINOGRAD_SLICE_VALUES", slice_values)
    torch.manual_seed(3)
    block = CORblockS(6, 6, times=3)  # conv2: 24 -> 24 channels
    randomize_bn(block, seed=4)
    scratch = fused_module._Scratch()
    fused = FusedBlock(block, dtype, channels_last=True, winograd=True, scratch=scratch)
    storages = [b.untyped_storage().data_ptr() for b in fused.buffers()]
    work = {b.untyped_storage().data_ptr() for b in scratch._buffers.values()}
    assert work and not work & set(storages) and len(set(storages)) == len(storages)
    # float64 sums of 9 terms in another order (the product's slices); float32 values may round the other
    # way when float64 ones differ, by at most one float32 ulp
    tol = 1e-15 if dtype == torch.float64 else 2.0**-23
    for t in range(3):
        _, norm2, norm3 = block.norms(t)
        weight, bias = fold_conv_bn(block.conv2.weight, norm2)
        if t == 0:  # stride 2: a direct conv
            torch.testing.assert_close(fused.conv2_0_weight, weight.to(dtype), rtol=0, atol=0)
            assert fused.conv2_0_weight.is_contiguous(memory_format=torch.channels_last)
        else:
            want = winograd_weight(weight).to(dtype)
            got = getattr(fused, f"conv2_{t}_wino")
            assert got.dtype == dtype and got.shape == want.shape == (16, 24, 24)
            assert ((got - want).abs().max() / want.abs().max()).item() <= tol, t
        torch.testing.assert_close(getattr(fused, f"conv2_{t}_bias"), bias.to(dtype), rtol=0, atol=0)
        w3, b3 = fold_conv_bn(block.conv3.weight, norm3)
        torch.testing.assert_close(getattr(fused, f"conv3_{t}_weight"), w3.to(dtype), rtol=0, atol=0)
        torch.testing.assert_close(getattr(fused, f"conv3_{t}_bias"), b3.to(dtype), rtol=0, atol=0)


def test_fuse_bad_arguments(model: CORnetS) -> None:
    with pytest.raises(TypeError, match="fuse: model must be a CORnetS"):
        fuse(torch.nn.Linear(2, 2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"fuse: dtype must be .*, got torch\.int8"):
        fuse(model, dtype=torch.int8)
    with pytest.raises(RuntimeError, match="inference-only"):
        fuse(model, mkldnn=False).train()
    with pytest.raises(ValueError, match="mkldnn"):
        fuse(model, dtype=torch.float64, mkldnn=True)
    with pytest.raises(ValueError, match="winograd"):
        fuse(model, dtype=torch.bfloat16, winograd=True)
    if not torch.cuda.is_available():
        with pytest.raises(NotImplementedError, match="CUDA"):
            fuse(model, cuda_graph=True)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_matches_eager(model: CORnetS, x, dtype) -> None:
    eager = copy.deepcopy(model).cuda().eval()
    plain = fuse(eager, dtype=dtype)
    graphed = fuse(eager, dtype=dtype, cuda_graph=True)
    xc = x.cuda()
    with torch.inference_mode():
        for _ in range(2):  # the first call captures, the second replays
            a = graphed.features(xc, layers=ALL, timesteps="all")
            b = plain.features(xc, layers=ALL, timesteps="all")
            for k in b:
                torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
        y = graphed(xc * 2)
        torch.testing.assert_close(y, plain(xc * 2), rtol=0, atol=0)
        ref = eager(xc)
        tol = 1e-2 if dtype == torch.bfloat16 else 1e-3
        assert _rel_err(graphed(xc), ref) < tol
    with torch.no_grad():  # replaying a graph captured under inference_mode, outside it
        torch.testing.assert_close(graphed(xc), plain(xc), rtol=0, atol=0)
    assert len(graphed._graphs) == 2
