"""im2col GEMM (inference and training layouts, all taps or only those that reach the input) and Winograd
F(2x2, 3x3) convs vs F.conv2d: values (float64 exact, float32 within direct-conv rounding) and gradients,
on odd, even, prime and unit spatial sizes, and the rules that pick the GEMM and the taps."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from fastalign import _ext
from fastalign.models.cornet import convs
from fastalign.models.cornet.convs import (
    conv_taps,
    gemm_conv3x3,
    gemm_pays,
    taps_conv3x3,
    unfold_conv3x3,
    valid_taps,
    winograd_conv3x3,
    winograd_weight,
)


@given(
    n=st.integers(1, 3),
    c=st.integers(1, 9),
    k=st.integers(1, 7),
    h=st.integers(1, 11),
    w=st.integers(1, 11),
    relu=st.booleans(),
    channels_last=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_matches_conv2d_float64(n, c, k, h, w, relu, channels_last, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, dtype=torch.float64, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(k, c, 3, 3, dtype=torch.float64, generator=g)
    bias = torch.randn(k, dtype=torch.float64, generator=g)
    ref = F.conv2d(x, weight, bias, 1, 1)
    if relu:
        ref = ref.relu()
    got = winograd_conv3x3(x, winograd_weight(weight), bias, relu)
    assert got.shape == ref.shape
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 64, 7, 7), (1, 32, 14, 14), (3, 16, 5, 8)])
def test_float32_rounding_like_direct_conv(shape) -> None:
    g = torch.Generator().manual_seed(0)
    c = shape[1]
    x = torch.randn(shape, generator=g).relu().contiguous(memory_format=torch.channels_last)
    weight = torch.randn(c, c, 3, 3, generator=g) * (2 / (9 * c)) ** 0.5
    ref64 = F.conv2d(x.double(), weight.double(), None, 1, 1)
    direct = F.conv2d(x, weight, None, 1, 1)
    got = winograd_conv3x3(x, winograd_weight(weight).float())
    err_direct = (direct.double() - ref64).abs().max()
    err_wino = (got.double() - ref64).abs().max()
    assert got.dtype == torch.float32
    assert err_wino <= 4 * err_direct + 1e-6 * ref64.abs().max()


def test_gradients_match_conv2d() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64, generator=g)
    bias = torch.randn(4, dtype=torch.float64, generator=g)
    u = winograd_weight(weight).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b: winograd_conv3x3(a, u, b, relu=True), (x, bias.requires_grad_())
    )
    y = winograd_conv3x3(x, u, bias)
    (gx,) = torch.autograd.grad(y.square().sum(), x)
    x2 = x.detach().requires_grad_(True)
    (gref,) = torch.autograd.grad(F.conv2d(x2, weight, bias, 1, 1).square().sum(), x2)
    torch.testing.assert_close(gx, gref, rtol=1e-10, atol=1e-10)


def test_bad_weight_shape() -> None:
    with pytest.raises(ValueError, match=r"\(C_out, C_in, 3, 3\)"):
        winograd_weight(torch.zeros(4, 3, 5, 5))


@given(
    n=st.integers(1, 3),
    c=st.integers(1, 9),
    k=st.integers(1, 7),
    h=st.integers(1, 11),
    w=st.integers(1, 11),
    stride=st.sampled_from([1, 2]),
    relu=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_gemm_conv_matches_conv2d_float64(n, c, k, h, w, stride, relu, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, dtype=torch.float64, generator=g).contiguous(
        memory_format=torch.channels_last
    )
    weight = torch.randn(k, c, 3, 3, dtype=torch.float64, generator=g)
    bias = torch.randn(k, dtype=torch.float64, generator=g)
    ref = F.conv2d(x, weight, bias, stride, 1)
    if relu:
        ref = ref.relu()
    got = gemm_conv3x3(x, weight.contiguous(memory_format=torch.channels_last), bias, stride, relu)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_gemm_conv_gradients_and_layout_check() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64, generator=g)
    wcl = weight.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    bias = torch.randn(4, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, w, b: gemm_conv3x3(a, w, b, 2, relu=True), (x, wcl, bias))
    with pytest.raises(ValueError, match="channels_last"):
        gemm_conv3x3(x, weight, bias, 1)


@given(
    n=st.integers(0, 3),
    c=st.integers(1, 5),
    k=st.integers(1, 7),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    stride=st.sampled_from([1, 2]),
    channels_last=st.booleans(),
    weight_channels_last=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_unfold_conv_matches_conv2d_and_its_gradients(
    n, c, k, h, w, stride, channels_last, weight_channels_last, seed
) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, dtype=torch.float64, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(k, c, 3, 3, dtype=torch.float64, generator=g)
    if weight_channels_last:  # e.g. after model.to(memory_format=torch.channels_last)
        weight = weight.contiguous(memory_format=torch.channels_last)
    _matches_conv2d_with_gradients(lambda a, b: unfold_conv3x3(a, b, stride), x, weight, stride, g)


def _matches_conv2d_with_gradients(
    conv: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: int,
    g: torch.Generator,
) -> torch.Tensor:
    """conv(x, weight) equals conv2d(x, weight, stride=stride, padding=1) in float64, in conv2d's NCHW
    layout, and so do the gradients of x and weight for a random output gradient; returns weight's."""
    xs, ws = x.clone().requires_grad_(), weight.clone().requires_grad_()
    xr, wr = x.clone().requires_grad_(), weight.clone().requires_grad_()
    ref = F.conv2d(xr, wr, None, stride, 1)
    got = conv(xs, ws)
    assert got.shape == ref.shape and got.is_contiguous()  # the layout conv2d gives NCHW inputs
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    dy = torch.randn(ref.shape, dtype=torch.float64, generator=g)
    ref.backward(dy)
    got.backward(dy)
    torch.testing.assert_close(xs.grad, xr.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ws.grad, wr.grad, rtol=1e-12, atol=1e-12)
    return ws.grad


@pytest.mark.parametrize("size", range(1, 7))
@pytest.mark.parametrize("stride", [1, 2, 3])
def test_valid_taps_are_the_offsets_that_read_an_input(size: int, stride: int) -> None:
    out = (size - 1) // stride + 1
    reads = [k for k in range(3) if any(0 <= o * stride + k - 1 < size for o in range(out))]
    assert valid_taps(size, stride) == (reads[0], reads[-1] + 1)
    assert reads == list(range(reads[0], reads[-1] + 1))  # a range: one slice of the kernel


@given(
    n=st.integers(1, 3),
    c=st.integers(1, 5),
    k=st.integers(1, 5),
    h=st.integers(1, 4),
    w=st.integers(1, 4),
    stride=st.sampled_from([1, 2]),
    wider=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_taps_conv_matches_conv2d_and_its_gradients(n, c, k, h, w, stride, wider, seed) -> None:
    """Over the taps that reach the input (or a wider range that holds them, as a block's passes share
    one), the conv and the gradients of input and weight are conv2d's; the weight's gradient is zero at
    the taps outside the range."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, dtype=torch.float64, generator=g)
    weight = torch.randn(k, c, 3, 3, dtype=torch.float64, generator=g)
    rows, cols = valid_taps(h, stride), valid_taps(w, stride)
    if wider:
        rows, cols = (min(rows[0], 1), 3), (0, max(cols[1], 2))
    origin = (rows[0], cols[0])

    def conv(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        taps = conv_taps(b, rows, cols)
        assert taps.shape == (k, rows[1] - rows[0], cols[1] - cols[0], c) and taps.is_contiguous()
        return taps_conv3x3(a, taps, origin, stride)

    grad = _matches_conv2d_with_gradients(conv, x, weight, stride, g)
    outside = torch.ones(3, 3, dtype=torch.bool)
    outside[rows[0] : rows[1], cols[0] : cols[1]] = False
    assert bool((grad[:, :, outside] == 0).all())


def test_taps_conv_gradcheck_and_the_taps_it_needs() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 2, 1, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, w: taps_conv3x3(a, conv_taps(w, (1, 3), (1, 2)), (1, 1), 2), (x, weight)
    )
    with pytest.raises(
        ValueError, match=r"taps_conv3x3: taps hold offsets \[1, 2\) x \[1, 2\).*reads \[0, 3\)"
    ):
        taps_conv3x3(
            torch.randn(1, 3, 3, 3, dtype=torch.float64), conv_taps(weight, (1, 2), (1, 2)), (1, 1), 1
        )


@pytest.mark.skipif(_ext.why_ops_missing(convs._TAP_OPS) is not None, reason="fastalign._C is not built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_tap_copies_equal_torchs(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled gather and scatter give torch's slices bit for bit (what runs without fastalign._C)."""
    weight = torch.randn(6, 5, 3, 3).to(dtype).requires_grad_()
    dy = torch.randn(6, 2, 1, 5).to(dtype)

    def taps_and_grad() -> tuple[torch.Tensor, torch.Tensor]:
        weight.grad = None
        taps = conv_taps(weight, (1, 3), (2, 3))
        taps.backward(dy)
        return taps.detach(), weight.grad

    compiled = taps_and_grad()
    monkeypatch.setattr(convs, "_TAP_OPS", ("no_such_op",))  # as without the extension
    fallback = taps_and_grad()
    for a, b in zip(compiled, fallback, strict=True):
        assert a.dtype == b.dtype == dtype and torch.equal(a, b)


def test_unfold_conv_gradcheck_and_no_weight_copy() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, w: unfold_conv3x3(a, w, 2), (x, weight))
    assert torch.autograd.gradgradcheck(lambda a, w: unfold_conv3x3(a, w, 1), (x, weight))


def test_unfold_conv_reads_a_contiguous_weight_in_place() -> None:
    """No op of the forward makes a tensor of the weight's size: the product reads the parameter itself
    (the sizes here are chosen so that no other tensor of the call has the weight's 108 elements)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Sizes(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.made: list[tuple[str, int]] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and t.data_ptr() not in ptrs:
                    self.made.append((str(func), t.numel()))
            return out

    x = torch.randn(2, 3, 4, 5)
    for weight, copies in (
        (torch.randn(4, 3, 3, 3), False),
        (torch.randn(4, 3, 3, 3).to(memory_format=torch.channels_last), True),
    ):
        ptrs = {x.data_ptr(), weight.data_ptr()}  # views of the inputs are not new tensors
        with Sizes() as mode, torch.no_grad():
            unfold_conv3x3(x, weight, 1)
        assert any(n > 0 for _, n in mode.made)  # the mode saw the call's ops
        assert any(n == weight.numel() for _, n in mode.made) is copies, mode.made


@pytest.mark.parametrize(
    ("shape", "stride", "channels", "pays"),
    [
        ((16, 2048, 2, 2), 2, 2048, True),  # IT at 32 px: 16 output pixels, 2048 channels
        ((16, 1024, 4, 4), 1, 1024, True),  # V4 after its first step at 64 px: 256 pixels
        ((16, 256, 16, 16), 2, 256, False),  # 1,024 pixels, 256 channels: the direct conv is faster
        ((2, 512, 32, 32), 2, 512, False),  # exactly as many pixels as channels: direct
        ((0, 512, 4, 4), 1, 512, True),  # an empty batch: the product is empty too
    ],
)
def test_gemm_pays_where_pixels_are_fewer_than_channels(shape, stride, channels, pays) -> None:
    x = torch.empty(shape)
    weight = torch.empty(channels, shape[1], 3, 3)
    assert gemm_pays(x, weight, stride) is pays
    # only CPU tensors: GPUs keep cuDNN's convs
    assert gemm_pays(x.to("meta"), weight.to("meta"), stride) is False
