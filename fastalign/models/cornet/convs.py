"""3x3 conv algorithms (padding 1) that beat oneDNN's direct convs on CPU for CORnet-S's wide layers.

All are differentiable PyTorch built on BLAS matrix products (the taps' gather and scatter are compiled ops,
with plain torch slicing where fastalign._C is missing).

**im2col GEMM** (:func:`gemm_conv3x3`, any stride): gathers the 3x3xC_in patches of every output pixel
into a (pixels x 9*C_in) matrix and multiplies it by the (9*C_in x C_out) weight. When there are fewer
output pixels than output channels (IT's strided conv: 392 pixels, 2048 channels at batch 8) the direct
conv is bound by reading its 151 MB of weights in a blocked order; one large GEMM reads them once at
close to peak FLOP/s (measured 2x faster on the 2-core dev CPU).

**Taps that reach the input** (:func:`taps_conv3x3`, training): on inputs 1 or 2 pixels wide (CORnet-S's IT
at 32 px) some kernel taps read only padding, and their columns of the im2col matrix are zeros (5 of 9 on
IT's strided pass, 8 of 9 on the next). The product over the other taps alone does up to 9x less work,
and its weight gradient is that much smaller; a compiled gather (``conv_taps``) and scatter
(``conv_taps_backward``) move the taps between the weight's (C_out, C_in, 3, 3) layout and the product's.
A ReAlnet step at 32 px: see docs/benchmarks.md (realnet_32px).

**Winograd F(2x2, 3x3)** (:func:`winograd_conv3x3`, stride 1): each 2x2 output tile of a 3x3 conv
needs 36 multiply-adds per (input, output) channel pair done directly and 16 in the Winograd domain
(Lavin & Gray, 2016): the 3x3 kernel becomes a 4x4 tile ``G g G^T`` (once, at fuse time), each 4x4
input tile becomes ``B^T d B``, the 16 tile positions become 16 independent (tiles x C_in) @
(C_in x C_out) matrix products, and ``A^T m A`` maps each product back to a 2x2 output tile. That is
2.25x fewer multiply-adds in the products, which dominate for CORnet-S's wide recurrent convs (512 to
2048 channels); the transforms are additions only. F(2x2, 3x3) is the variant whose rounding error stays
at the level of a direct float32 conv (larger tiles amplify it), see the tests.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F

from fastalign import _ext


def gemm_conv3x3(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, relu: bool = False
) -> torch.Tensor:
    """relu?(conv2d(x, weight, bias, stride, padding=1)) as one im2col matrix product.

    Args:
        x: (N, C_in, H, W), any memory format (channels_last avoids a copy).
        weight: (C_out, C_in, 3, 3) in channels_last memory format, so that its memory is the
            (C_out, 9*C_in) matrix the product needs (no copy of the weights per call).
        bias: (C_out,) or None.
        stride: Conv stride.
        relu: Apply a ReLU to the result.

    Returns:
        (N, C_out, H_out, W_out) in channels_last memory format.
    """
    if not weight.is_contiguous(memory_format=torch.channels_last):
        raise ValueError("weight must be in channels_last memory format")
    n, c, h, w = x.shape
    k = weight.shape[0]
    oh, ow = (h - 1) // stride + 1, (w - 1) // stride + 1
    xp = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1))  # (N, H+2, W+2, C_in)
    patches = xp.unfold(1, 3, stride).unfold(2, 3, stride)  # (N, oh, ow, C_in, 3, 3), a view
    cols = patches.permute(0, 1, 2, 4, 5, 3).reshape(n * oh * ow, 9 * c)  # rows ordered (kh, kw, c)
    w_mat = weight.permute(0, 2, 3, 1).reshape(k, 9 * c)  # a view of channels_last memory
    y = torch.addmm(bias, cols, w_mat.T) if bias is not None else cols @ w_mat.T
    if relu:
        y = y.relu_()
    return y.view(n, oh, ow, k).permute(0, 3, 1, 2)


def gemm_pays(x: torch.Tensor, weight: torch.Tensor, stride: int) -> bool:
    """Whether an im2col GEMM beats oneDNN's direct conv here: a CPU tensor, and fewer output pixels
    (batch x height x width) than output channels, where the direct conv is bound by reading its weights
    in a blocked order (see the module docstring)."""
    n, _, h, w = x.shape
    return x.device.type == "cpu" and gemm_pays_for(n, h, w, stride, weight.shape[0])


def gemm_pays_for(n: int, h: int, w: int, stride: int, channels: int) -> bool:
    """:func:`gemm_pays`' rule from shapes (a CPU tensor assumed): fewer output pixels of an (n, _, h, w)
    input at ``stride`` than ``channels`` output channels."""
    return n * ((h - 1) // stride + 1) * ((w - 1) // stride + 1) < channels


def unfold_conv3x3(x: torch.Tensor, weight: torch.Tensor, stride: int) -> torch.Tensor:
    """conv2d(x, weight, stride=stride, padding=1) as one im2col matrix product, for training.

    Unlike :func:`gemm_conv3x3` it takes the weight in its own (C_out, C_in, 3, 3) layout: a contiguous
    weight (as ``nn.Conv2d`` makes it) is already the (C_out, 9*C_in) matrix of ``F.unfold``'s (c, kh, kw)
    column order and is read in place; a channels_last one is copied into that order on every call.
    Autograd differentiates it as three matrix products (output, input gradient, weight gradient) and
    ``F.fold`` (col2im). CORnet-S's training step at 32 px spends most of its time in oneDNN's backward
    of V4's and IT's wide convs at 1-4 px, where these products are several times faster
    (:meth:`fastalign.models.CORnetS.fuse_training`).

    Shapes: x (N, C_in, H, W), weight (C_out, C_in, 3, 3) -> (N, C_out, H_out, W_out), contiguous like
    conv2d's output for NCHW input, so that the layers after it see the layout they see in the original.
    """
    n, c, h, w = x.shape
    k = weight.shape[0]
    oh, ow = (h - 1) // stride + 1, (w - 1) // stride + 1
    cols = F.unfold(x, 3, padding=1, stride=stride)  # (N, 9*C_in, pixels), rows ordered (c, kh, kw)
    cols = cols.transpose(1, 2).reshape(n * oh * ow, 9 * c)  # one matrix: all images' pixels
    y = cols @ weight.reshape(k, 9 * c).T  # a view when weight is contiguous
    return y.view(n, oh, ow, k).permute(0, 3, 1, 2).contiguous()


def valid_taps(size: int, stride: int) -> tuple[int, int]:
    """The kernel offsets ``[lo, hi)`` along one axis at which a 3x3 conv (padding 1, ``stride``) over
    ``size`` inputs reads an input for some output; the others read only padding.

    Offset 0 reads input ``o * stride - 1``, real from the second output on; offset 2 reads
    ``o * stride + 1``, real when there are two inputs. So a 1-pixel axis uses the centre only ([1, 2)), a
    2-pixel axis at stride 2 (one output) the centre and the offset after it ([1, 3)), and every wider axis
    all three.
    """
    out = (size - 1) // stride + 1
    return (0 if out >= 2 else 1), (3 if size >= 2 else 2)


def _gather_taps(weight: torch.Tensor, r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
    if weight.device.type == "cpu" and _ext.why_ops_missing(_TAP_OPS) is None:
        return torch.ops.fastalign.conv_taps(weight, r0, r1, c0, c1)
    return weight[:, :, r0:r1, c0:c1].permute(0, 2, 3, 1).contiguous()


def _scatter_taps(grad: torch.Tensor, kh: int, kw: int, r0: int, c0: int) -> torch.Tensor:
    if grad.device.type == "cpu" and _ext.why_ops_missing(_TAP_OPS) is None:
        return torch.ops.fastalign.conv_taps_backward(grad, kh, kw, r0, c0)
    k, th, tw, c = grad.shape
    out = grad.new_zeros((k, kh, kw, c))
    out[:, r0 : r0 + th, c0 : c0 + tw] = grad
    return out.permute(0, 3, 1, 2).contiguous()


_TAP_OPS = ("conv_taps", "conv_taps_backward")


class _Taps(torch.autograd.Function):
    """weight (C_out, C_in, kh, kw) -> its taps [r0, r1) x [c0, c1) as (C_out, r1 - r0, c1 - c0, C_in);
    the gradient goes back to those taps, zeros to the others."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
        ctx.kernel, ctx.origin = tuple(weight.shape[2:]), (r0, c0)
        return _gather_taps(weight, r0, r1, c0, c1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return _scatter_taps(grad.contiguous(), *ctx.kernel, *ctx.origin), None, None, None, None


def conv_taps(weight: torch.Tensor, rows: tuple[int, int], cols: tuple[int, int]) -> torch.Tensor:
    """The taps ``rows x cols`` (``[r0, r1) x [c0, c1)``) of a (C_out, C_in, kh, kw) conv weight, as a
    contiguous (C_out, r1 - r0, c1 - c0, C_in) tensor (tap-major, the order :func:`taps_conv3x3` reads),
    differentiable: the weight's gradient is the taps' at those taps and zero elsewhere. On CPU one pass
    of the compiled ``conv_taps`` / ``conv_taps_backward`` ops each way."""
    return _Taps.apply(weight, rows[0], rows[1], cols[0], cols[1])


def taps_conv3x3(
    x: torch.Tensor,
    taps: torch.Tensor,
    origin: tuple[int, int],
    stride: int,
) -> torch.Tensor:
    """conv2d(x, weight, stride=stride, padding=1) over only the kernel taps that read x, for training.

    Where a 3x3 conv's input is 1 or 2 pixels wide, some taps read nothing but padding (CORnet-S's IT at
    32 px: 4 of 9 taps on its strided pass, the centre alone on the next one): those columns of
    :func:`unfold_conv3x3`'s matrix product are zeros, up to 8/9 of its work and of its weight gradient.
    This product leaves them out. ``taps`` (C_out, th, tw, C_in) is :func:`conv_taps` of the weight for a
    range of taps that holds :func:`valid_taps` of this call on both axes, starting at offsets ``origin``;
    the call multiplies by its own taps, a view of them (one range for all of a block's passes: a single
    gather of the weight per step).

    Shapes: x (N, C_in, H, W) -> (N, C_out, H_out, W_out), contiguous like conv2d's output for NCHW input.
    """
    n, c, h, w = x.shape
    k = taps.shape[0]
    oh, ow = (h - 1) // stride + 1, (w - 1) // stride + 1
    (r0, r1), (c0, c1) = valid_taps(h, stride), valid_taps(w, stride)
    th, tw = r1 - r0, c1 - c0
    i0, j0 = r0 - origin[0], c0 - origin[1]
    if i0 < 0 or j0 < 0 or i0 + th > taps.shape[1] or j0 + tw > taps.shape[2]:
        raise ValueError(
            f"taps_conv3x3: taps hold offsets [{origin[0]}, {origin[0] + taps.shape[1]}) x "
            f"[{origin[1]}, {origin[1] + taps.shape[2]}), but a {h}x{w} input at stride {stride} reads "
            f"[{r0}, {r1}) x [{c0}, {c1})"
        )
    # (N, H+2, W+2, C) cut to the rows and columns these taps read
    xp = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1))
    xp = xp[:, r0 : r0 + (oh - 1) * stride + th, c0 : c0 + (ow - 1) * stride + tw]
    # one strided slice per tap, (N, oh, ow, C) each, stacked in (kh, kw) order: the same columns as
    # unfold's windows, whose backward torch.compile's inductor lowered wrongly for windows narrower than
    # the stride (th = 1 or 2 at stride 2): a compiled training step corrupted the heap
    span_h, span_w = (oh - 1) * stride + 1, (ow - 1) * stride + 1
    parts = [xp[:, a : a + span_h : stride, b : b + span_w : stride] for a in range(th) for b in range(tw)]
    cols = torch.stack(parts, dim=3).reshape(n * oh * ow, th * tw * c)  # rows ordered (kh, kw, c)
    w_mat = taps[:, i0 : i0 + th, j0 : j0 + tw].reshape(k, th * tw * c)  # a view for a row of taps
    y = cols @ w_mat.T
    return y.view(n, oh, ow, k).permute(0, 3, 1, 2).contiguous()


_BT = ((1.0, 0.0, -1.0, 0.0), (0.0, 1.0, 1.0, 0.0), (0.0, -1.0, 1.0, 0.0), (0.0, 1.0, 0.0, -1.0))
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))
_AT = ((1.0, 1.0, 1.0, 0.0), (0.0, 1.0, -1.0, -1.0))


def winograd_weight(weight: torch.Tensor) -> torch.Tensor:
    """The Winograd-domain kernel ``G g G^T`` of a 3x3 conv weight, computed in float64.

    Shapes: (C_out, C_in, 3, 3) -> (16, C_in, C_out), position (i, j) of the 4x4 tile at index 4i + j.
    """
    if weight.dim() != 4 or weight.shape[2:] != (3, 3):
        raise ValueError(f"weight must have shape (C_out, C_in, 3, 3), got {tuple(weight.shape)}")
    c_out, c_in = weight.shape[:2]
    # The kernels in (C_in, C_out) order: transposing the 9-wide kernels is cheaper than the 16-wide result.
    by_input = torch.empty((c_in, c_out, 3, 3), dtype=torch.float64, device=weight.device)
    return winograd_weight_by_input(by_input.copy_(weight.detach().permute(1, 0, 2, 3)))


def winograd_weight_by_input(weight: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`winograd_weight` of a contiguous float64 weight already in (C_in, C_out, 3, 3) order.

    One (16 x 9) @ (9 x C_in*C_out) product, ``kron(G, G) vec(g) = vec(G g G^T)``, written into ``out``
    (C_in*C_out*16 float64 values) when given. Shapes: (C_in, C_out, 3, 3) -> (16, C_in, C_out).
    """
    c_in, c_out = weight.shape[:2]
    g2 = _kron_g(weight.device)
    kernels = weight.view(c_in * c_out, 9).T
    if out is None:
        return (g2 @ kernels).view(16, c_in, c_out)
    return torch.mm(g2, kernels, out=out.view(16, c_in * c_out)).view(16, c_in, c_out)


@functools.lru_cache(maxsize=16)
def _kron_g(device: torch.device) -> torch.Tensor:
    """kron(G, G) in float64 on ``device``, made once (a fold calls the transform once per slice)."""
    g = torch.tensor(_G, dtype=torch.float64)
    return torch.kron(g, g).to(device)


def _transforms(dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    bt = torch.tensor(_BT, dtype=torch.float64)
    at = torch.tensor(_AT, dtype=torch.float64)
    # kron(M, M) applies M on both sides of a row-major flattened tile: vec(M d M^T).
    return torch.kron(bt, bt).to(dtype=dtype, device=device), torch.kron(at, at).to(
        dtype=dtype, device=device
    )


def winograd_conv3x3(
    x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None = None, relu: bool = False
) -> torch.Tensor:
    """relu?(conv2d(x, weight, bias, stride=1, padding=1)) with ``u = winograd_weight(weight)``.

    Args:
        x: (N, C_in, H, W), any memory format (channels_last avoids a copy).
        u: (16, C_in, C_out) from :func:`winograd_weight`, in x's dtype.
        bias: (C_out,) or None.
        relu: Apply a ReLU to the result.

    Returns:
        (N, C_out, H, W) in channels_last memory format.
    """
    n, c, h, w = x.shape
    k = u.shape[2]
    th, tw = (h + 1) // 2, (w + 1) // 2
    kb, ka = _transforms(x.dtype, x.device)
    xh = x.permute(0, 2, 3, 1)  # NHWC: a free view of a channels_last tensor
    # Pad 1 on top/left (the conv's padding) and enough on bottom/right for whole 2x2 output tiles.
    xp = F.pad(xh, (0, 0, 1, 2 * tw + 1 - w, 1, 2 * th + 1 - h))
    tiles = xp.unfold(1, 4, 2).unfold(2, 4, 2)  # (N, th, tw, C_in, 4, 4), overlapping views
    d = tiles.permute(4, 5, 0, 1, 2, 3).reshape(16, -1)  # the one gather copy: (16, tiles * C_in)
    v = (kb @ d).view(16, n * th * tw, c)
    m = torch.bmm(v, u)  # (16, tiles, C_out): the 16 products that replace the conv
    y = (ka @ m.view(16, -1)).view(2, 2, n, th, tw, k)
    y = y.permute(2, 3, 0, 4, 1, 5).reshape(n, 2 * th, 2 * tw, k)
    if bias is not None:
        y = y.add_(bias)
    if relu:
        y = y.relu_()
    if (2 * th, 2 * tw) != (h, w):
        y = y[:, :h, :w].contiguous()
    return y.permute(0, 3, 1, 2)
