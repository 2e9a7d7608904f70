"""Brain encoders for decoding: an EEG/MEG trial (B, channels, times) or fMRI voxels (B, voxels) -> (B, d).

Each encoder follows a published architecture layer for layer, with every size computed from the input's
(channels, times) instead of the published constants (NICE's ``embedding_dim=1440``, ATM's 63 channels and
250 samples):

- :class:`NICE`: Song et al., ICLR 2024, as AlignVis uses it (NonaRjb/AlignVis,
  src/brain_architectures/nice.py): a temporal-spatial convolution, a 1x1 projection, then a residual
  projection head. AlignVis's ``BrainEncoder`` (src/models/brain_encoder.py) adds a Linear(d, d) after the
  head (``output_linear=True``, the published default).
- :class:`EEGNetV4`: Lawhern et al. 2018 as braindecode defines it (braindecode/models/eegnet.py):
  F1=8, D=2, F2=16, kernel 64, pools 4 and 8, dropout 0.25, max-norm 1 on the spatial filters; its
  ``(1, n_out_times)`` classifier convolution with ``embed_dim`` outputs is the projection to d.
- :class:`ATMS`: ATM-S (Li et al. 2024) as AlignVis uses it (src/brain_architectures/atms.py): a
  transformer over channel tokens (each channel's time course is a token), then NICE's convolution and head.
- :class:`BrainMLP`: AlignVis's fMRI MLP (src/brain_architectures/brain_mlp.py): hidden 4096, 4 residual
  blocks, LayerNorm + GELU.

Use :func:`brain_encoder` to build one by name. docs/decoding.md lists the parameter counts and where
fastalign differs from the published code.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fastalign import _checks

#: The names :func:`brain_encoder` takes.
ENCODERS: tuple[str, ...] = ("nice", "eegnetv4", "atms", "mlp")


def _check_probability(fn: str, name: str, value: Any) -> float:
    """A dropout probability in [0, 1)."""
    expected = "a number in [0, 1)"
    p = _checks.check_real(fn, name, value, expected=expected)
    if not 0 <= p < 1:
        raise ValueError(_checks.message(fn, name, expected, value))
    return p


def _pool_length(n: int, kernel: int, stride: int) -> int:
    """Output length of a valid pooling or convolution; 0 when the input is shorter than the kernel."""
    return (n - kernel) // stride + 1 if n >= kernel else 0


def _check_length(fn: str, name: str, value: int, out_length: Callable[[int], int], needs: str) -> None:
    """``value`` input samples leave at least one output sample, else a ValueError naming the minimum."""
    if out_length(value) >= 1:
        return
    # Output lengths grow with the input's, so the first length that works is the minimum.
    minimum = next(n for n in itertools.count(1) if out_length(n) >= 1)
    raise ValueError(_checks.message(fn, name, f"at least {minimum} ({needs})", value))


class _MaxNormConv2d(nn.Conv2d):
    """Conv2d whose filters (output channels) are renormed to an L2 norm of at most ``max_norm`` in each
    forward, as braindecode's Conv2dWithConstraint (a parametrization: the stored weight is unconstrained
    and gradients flow through the renorm)."""

    def __init__(self, *args: Any, max_norm: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_norm = max_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight.renorm(2, 0, self.max_norm), self.bias)


class _MaxNormLinear(nn.Linear):
    """Linear whose rows are renormed to an L2 norm of at most ``max_norm`` (braindecode's
    LinearWithConstraint)."""

    def __init__(self, *args: Any, max_norm: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_norm = max_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.renorm(2, 0, self.max_norm), self.bias)


class _BrainEncoder(nn.Module):
    """What every encoder shares: its input sizes, its output size and the check of its input."""

    def __init__(self, n_channels: int, n_times: int, embed_dim: int) -> None:
        super().__init__()
        fn = type(self).__name__
        self.n_channels = _checks.check_int(fn, "n_channels", n_channels, minimum=1)
        self.n_times = _checks.check_int(fn, "n_times", n_times, minimum=1)
        self.embed_dim = _checks.check_int(fn, "embed_dim", embed_dim, minimum=1)

    def _check_x(self, x: Any) -> None:
        """``x`` is a floating (B, n_channels, n_times) tensor."""
        fn = f"{type(self).__name__}.forward"
        _checks.check_tensor(fn, "x", x, shape="(B, n_channels, n_times)")
        _checks.check_floating(fn, "x", x)
        doc = f"(B, {self.n_channels}, {self.n_times}) (B, n_channels, n_times as constructed)"
        _checks.check_shape(fn, "x", x, (None, self.n_channels, self.n_times), doc=doc)

    def extra_repr(self) -> str:
        return f"n_channels={self.n_channels}, n_times={self.n_times}, embed_dim={self.embed_dim}"


def _has_hooks(module: nn.Module) -> bool:
    """Whether forward or backward hooks are registered on ``module`` itself."""
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or module._backward_hooks
        or module._backward_pre_hooks
    )


def _global_hooks() -> bool:
    """Whether module hooks registered for every module (``nn.modules.module.register_module_*``) are set."""
    g = nn.modules.module
    return bool(
        g._global_forward_hooks
        or g._global_forward_pre_hooks
        or g._global_backward_hooks
        or g._global_backward_pre_hooks
    )


class TemporalSpatialConv(nn.Module):
    """NICE's patch embedding: (B, channels, times) -> (B, n_features) with n_features = n_filters x the
    pooled length.

    Layers (NICE's ``PatchEmbedding``): ``tsconv`` = Conv2d(1, F, (1, temporal_kernel)) -> AvgPool2d((1,
    pool_kernel), (1, pool_stride)) -> BatchNorm2d -> ELU -> Conv2d(F, F, (channels, 1)) -> BatchNorm2d ->
    ELU -> Dropout; ``projection`` = Conv2d(F, F, 1x1); then a flatten in (time, filter) order (the
    published ``permute(0, 2, 3, 1)``). For 63 x 250 with the defaults, n_features = 40 x 36 = 1440.

    Args:
        owner: the public class building it, for error messages.
        n_channels: spatial kernel height (the input's channels).
        n_times: the input's length; ``length_name`` is what the owner calls it in messages.
    """

    def __init__(
        self,
        owner: str,
        n_channels: int,
        n_times: int,
        *,
        length_name: str = "n_times",
        n_filters: int = 40,
        temporal_kernel: int = 25,
        pool_kernel: int = 51,
        pool_stride: int = 5,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        n_filters = _checks.check_int(owner, "n_filters", n_filters, minimum=1)
        temporal_kernel = _checks.check_int(owner, "temporal_kernel", temporal_kernel, minimum=1)
        pool_kernel = _checks.check_int(owner, "pool_kernel", pool_kernel, minimum=1)
        pool_stride = _checks.check_int(owner, "pool_stride", pool_stride, minimum=1)
        dropout = _check_probability(owner, "dropout", dropout)

        def out_length(n: int) -> int:
            return _pool_length(max(n - temporal_kernel + 1, 0), pool_kernel, pool_stride)

        needs = (
            f"samples, for the temporal convolution's kernel of {temporal_kernel} and the average pooling's "
            f"kernel of {pool_kernel}"
        )
        _check_length(owner, length_name, n_times, out_length, needs)
        self.out_length = out_length(n_times)
        self.n_features = n_filters * self.out_length
        self.tsconv = nn.Sequential(
            nn.Conv2d(1, n_filters, (1, temporal_kernel)),
            nn.AvgPool2d((1, pool_kernel), (1, pool_stride)),
            nn.BatchNorm2d(n_filters),
            nn.ELU(),
            nn.Conv2d(n_filters, n_filters, (n_channels, 1)),
            nn.BatchNorm2d(n_filters),
            nn.ELU(),
            nn.Dropout(dropout),
        )
        self.projection = nn.Conv2d(n_filters, n_filters, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, channels, times) -> (B, n_features).

        The temporal convolution and the average pooling run as one strided convolution (see
        :meth:`_fused_temporal`) unless a hook watches either layer or their configuration was changed to
        one the fold does not cover; then the layers run as modules.
        """
        fused = self._fused_temporal(x)
        if fused is None:
            x = self.tsconv(x.unsqueeze(1))
        else:
            x = fused
            for layer in itertools.islice(self.tsconv, 2, None):
                x = layer(x)
        x = self.projection(x)  # (B, F, 1, out_length)
        return x.permute(0, 2, 3, 1).flatten(1)

    def _fused_temporal(self, x: torch.Tensor) -> torch.Tensor | None:
        """``tsconv[1](tsconv[0](x.unsqueeze(1)))`` as a matmul over unfolded windows, or None.

        An average pool of kernel p and stride s after a stride-1 convolution of kernel k is one convolution
        of stride s whose kernel (length k + p - 1) is the temporal kernel convolved with a box of p weights
        1/p; the bias passes through once since the box sums to 1. Without padding and ceil_mode the
        windows are the pool's windows exactly. Unfolding them and taking one matmul replaces the
        convolution's (B, F, channels, times - k + 1) intermediate and the pool over it: about 3.5x faster
        for NICE's training step at 63 x 250 on a CPU. None (run the modules) when a hook on the
        convolution, the pool or the sequence would be skipped by the fold, or the layers' configuration
        is not the one it covers.
        """
        seq = self.tsconv
        conv, pool = seq[0], seq[1]
        if type(conv) is not nn.Conv2d or type(pool) is not nn.AvgPool2d:
            return None
        if any(_has_hooks(m) for m in (seq, conv, pool)) or _global_hooks():
            return None
        kernel = nn.modules.utils._pair(pool.kernel_size)
        stride = nn.modules.utils._pair(pool.stride)
        plain_conv = (
            conv.in_channels == 1
            and conv.kernel_size[0] == 1
            and conv.stride == (1, 1)
            and conv.padding in ((0, 0), "valid")
            and conv.dilation == (1, 1)
            and conv.groups == 1
        )
        plain_pool = (
            kernel[0] == 1
            and stride[0] == 1
            and nn.modules.utils._pair(pool.padding) == (0, 0)
            and not pool.ceil_mode
            and pool.divisor_override is None
        )
        if not (plain_conv and plain_pool):
            return None
        f, k, p, s = conv.out_channels, conv.kernel_size[1], kernel[1], stride[1]
        box = conv.weight.new_full((1, 1, p), 1 / p)
        w = F.conv1d(F.pad(conv.weight.reshape(f, 1, k), (p - 1, p - 1)), box).reshape(f, k + p - 1)
        y = x.unfold(-1, k + p - 1, s) @ w.t()  # (B, channels, out_length, F)
        if conv.bias is not None:
            y = y + conv.bias
        # contiguous: the module path's NCHW layout, which Dropout's mask follows (empty_like keeps strides),
        # so the same seed drops the same units on both paths
        return y.permute(0, 3, 1, 2).contiguous()


class ProjectionHead(nn.Module):
    """NICE's ``Proj_eeg``: Linear(n_in, d) -> x + Dropout(Linear(GELU(x))) -> LayerNorm(d), then
    AlignVis's ``BrainEncoder.repr_layer`` Linear(d, d) when ``output_linear``."""

    def __init__(self, n_in: int, embed_dim: int, *, dropout: float, output_linear: bool) -> None:
        super().__init__()
        self.linear = nn.Linear(n_in, embed_dim)
        self.residual = nn.Sequential(nn.GELU(), nn.Linear(embed_dim, embed_dim), nn.Dropout(dropout))
        self.norm = nn.LayerNorm(embed_dim)
        self.out = nn.Linear(embed_dim, embed_dim) if output_linear else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        x = self.norm(x + self.residual(x))
        return x if self.out is None else self.out(x)


class NICE(_BrainEncoder):
    """NICE (Song et al., ICLR 2024) as AlignVis trains it: (B, C, T) EEG -> (B, embed_dim).

    :class:`TemporalSpatialConv` then :class:`ProjectionHead`. At the published size (63 x 250) the
    flattened features are 1440, as the published ``embedding_dim``; here they follow (C, T).

    Args:
        n_channels: C, the spatial convolution's height.
        n_times: T, at least ``temporal_kernel + pool_kernel - 1`` (75 with the defaults).
        embed_dim: d.
        n_filters: temporal, spatial and 1x1 filters (published 40).
        temporal_kernel, pool_kernel, pool_stride: published 25, 51, 5.
        dropout: after the spatial convolution (published 0.5).
        proj_dropout: in the head's residual branch (published ``drop_proj`` 0.5).
        output_linear: the Linear(d, d) that AlignVis's ``BrainEncoder`` adds after the head (published
            default True; False is the original NICE).
    """

    def __init__(
        self,
        n_channels: int,
        n_times: int,
        embed_dim: int,
        *,
        n_filters: int = 40,
        temporal_kernel: int = 25,
        pool_kernel: int = 51,
        pool_stride: int = 5,
        dropout: float = 0.5,
        proj_dropout: float = 0.5,
        output_linear: bool = True,
    ) -> None:
        super().__init__(n_channels, n_times, embed_dim)
        fn = type(self).__name__
        self.conv = TemporalSpatialConv(
            fn,
            self.n_channels,
            self.n_times,
            n_filters=n_filters,
            temporal_kernel=temporal_kernel,
            pool_kernel=pool_kernel,
            pool_stride=pool_stride,
            dropout=dropout,
        )
        self.head = ProjectionHead(
            self.conv.n_features,
            self.embed_dim,
            dropout=_check_probability(fn, "proj_dropout", proj_dropout),
            output_linear=_checks.check_bool(fn, "output_linear", output_linear),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n_channels, n_times) -> (B, embed_dim)."""
        self._check_x(x)
        return self.head(self.conv(x))


class EEGNetV4(_BrainEncoder):
    """EEGNet-4 (Lawhern et al. 2018) as braindecode defines it, with a projection to d.

    Layers (braindecode's names): ``conv_temporal`` Conv2d(1, F1, (1, kernel_length), padding (0,
    kernel_length // 2), no bias) -> ``bnorm_temporal`` -> ``conv_spatial`` depthwise Conv2d(F1, F1 * D,
    (C, 1), groups F1, no bias, filters max-normed to ``conv_spatial_max_norm``) -> ``bnorm_1`` -> ELU ->
    AvgPool (1, pool1) -> Dropout -> ``conv_separable_depth`` Conv2d(F1 * D, F1 * D, (1, 16), groups F1 * D,
    padding (0, 8), no bias) -> ``conv_separable_point`` 1x1 Conv2d(F1 * D, F2, no bias) -> ``bnorm_2`` ->
    ELU -> AvgPool (1, pool2) -> Dropout -> flatten -> ``projection`` Linear(F2 * L, d). BatchNorms have
    braindecode's momentum 0.01 and eps 1e-3. braindecode's final layer is a Conv2d(F2, d, (1, L)) with a
    bias: the same weights and the same map as the Linear on the flattened (F2, L) features.

    Initialisation as braindecode: Xavier-uniform spatial filters, zero biases, the rest PyTorch's default.

    Args:
        n_channels: C.
        n_times: T, at least 27 with the defaults (the message names the minimum for other options).
        embed_dim: d.
        f1, depth_multiplier, f2: braindecode's F1 (8), D (2), F2 (None: F1 * D).
        kernel_length, depthwise_kernel_length: 64 and 16.
        pool1_kernel_size, pool2_kernel_size: 4 and 8.
        drop_prob: both dropouts (braindecode 0.25; the EEGNet paper uses 0.5 within subjects).
        conv_spatial_max_norm: braindecode's 1.
        final_max_norm: None (braindecode's default convolutional final layer), or the max-norm of the
            projection's rows (braindecode's ``final_layer_with_constraint=True`` uses 0.25).
    """

    def __init__(
        self,
        n_channels: int,
        n_times: int,
        embed_dim: int,
        *,
        f1: int = 8,
        depth_multiplier: int = 2,
        f2: int | None = None,
        kernel_length: int = 64,
        depthwise_kernel_length: int = 16,
        pool1_kernel_size: int = 4,
        pool2_kernel_size: int = 8,
        drop_prob: float = 0.25,
        conv_spatial_max_norm: float = 1.0,
        final_max_norm: float | None = None,
    ) -> None:
        super().__init__(n_channels, n_times, embed_dim)
        fn = type(self).__name__
        f1 = _checks.check_int(fn, "f1", f1, minimum=1)
        depth_multiplier = _checks.check_int(fn, "depth_multiplier", depth_multiplier, minimum=1)
        f2 = _checks.check_int(fn, "f2", f2, minimum=1, none=True) or f1 * depth_multiplier
        kernel_length = _checks.check_int(fn, "kernel_length", kernel_length, minimum=1)
        depth_kernel = _checks.check_int(fn, "depthwise_kernel_length", depthwise_kernel_length, minimum=1)
        pool1 = _checks.check_int(fn, "pool1_kernel_size", pool1_kernel_size, minimum=1)
        pool2 = _checks.check_int(fn, "pool2_kernel_size", pool2_kernel_size, minimum=1)
        drop_prob = _check_probability(fn, "drop_prob", drop_prob)
        spatial_norm = _checks.check_real(fn, "conv_spatial_max_norm", conv_spatial_max_norm, positive=True)
        final_norm = _checks.check_real(fn, "final_max_norm", final_max_norm, positive=True, none=True)

        def out_length(n: int) -> int:
            # A convolution padded by k // 2 on both sides is a valid one over n + 2 (k // 2) samples.
            n = _pool_length(n + 2 * (kernel_length // 2), kernel_length, 1)
            n = _pool_length(n, pool1, pool1)
            n = _pool_length(n + 2 * (depth_kernel // 2), depth_kernel, 1) if n else 0
            return _pool_length(n, pool2, pool2)

        needs = (
            f"samples, for the temporal and depthwise convolutions and the average poolings of {pool1} and "
            f"{pool2}"
        )
        _check_length(fn, "n_times", self.n_times, out_length, needs)
        self.out_length = out_length(self.n_times)
        f_spatial = f1 * depth_multiplier

        def batch_norm(n: int) -> nn.BatchNorm2d:
            return nn.BatchNorm2d(n, momentum=0.01, eps=1e-3)

        self.conv_temporal = nn.Conv2d(1, f1, (1, kernel_length), padding=(0, kernel_length // 2), bias=False)
        self.bnorm_temporal = batch_norm(f1)
        self.conv_spatial = _MaxNormConv2d(
            f1, f_spatial, (self.n_channels, 1), groups=f1, bias=False, max_norm=spatial_norm
        )
        self.bnorm_1 = batch_norm(f_spatial)
        self.pool_1 = nn.AvgPool2d((1, pool1))
        self.drop_1 = nn.Dropout(drop_prob)
        self.conv_separable_depth = nn.Conv2d(
            f_spatial,
            f_spatial,
            (1, depth_kernel),
            padding=(0, depth_kernel // 2),
            groups=f_spatial,
            bias=False,
        )
        self.conv_separable_point = nn.Conv2d(f_spatial, f2, 1, bias=False)
        self.bnorm_2 = batch_norm(f2)
        self.pool_2 = nn.AvgPool2d((1, pool2))
        self.drop_2 = nn.Dropout(drop_prob)
        n_features = f2 * self.out_length
        self.projection: nn.Linear = (
            nn.Linear(n_features, self.embed_dim)
            if final_norm is None
            else _MaxNormLinear(n_features, self.embed_dim, max_norm=final_norm)
        )
        nn.init.xavier_uniform_(self.conv_spatial.weight)
        nn.init.zeros_(self.projection.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n_channels, n_times) -> (B, embed_dim)."""
        self._check_x(x)
        x = self.bnorm_temporal(self.conv_temporal(x.unsqueeze(1)))
        x = self.drop_1(self.pool_1(F.elu(self.bnorm_1(self.conv_spatial(x)))))
        x = self.conv_separable_point(self.conv_separable_depth(x))
        x = self.drop_2(self.pool_2(F.elu(self.bnorm_2(x))))
        return self.projection(x.flatten(1))


class _ChannelAttentionLayer(nn.Module):
    """The published iTransformer ``EncoderLayer`` (post-norm): x = LN(x + Drop(Attn(x))); x = LN(x +
    Drop(W2 Drop(GELU(W1 x)))). Heads have ``d_model // n_heads`` features each, so with d_model = 250
    and 4 heads the attention works in 248 dimensions, as published."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        inner = (d_model // n_heads) * n_heads
        self.query = nn.Linear(d_model, inner)
        self.key = nn.Linear(d_model, inner)
        self.value = nn.Linear(d_model, inner)
        self.out = nn.Linear(inner, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.ff1 = nn.Linear(d_model, d_ff)
        self.ff2 = nn.Linear(d_ff, d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.n_heads, -1).transpose(1, 2)

        p = self.dropout if self.training else 0.0
        attended = F.scaled_dot_product_attention(
            heads(self.query(x)), heads(self.key(x)), heads(self.value(x)), dropout_p=p
        )
        x = self.norm1(x + F.dropout(self.out(attended.transpose(1, 2).flatten(2)), p, self.training))
        y = F.dropout(F.gelu(self.ff1(x)), p, self.training)
        return self.norm2(x + F.dropout(self.ff2(y), p, self.training))


class ATMS(_BrainEncoder):
    """ATM-S (Li et al. 2024) as AlignVis uses it: channel-wise attention, then NICE's convolution and head.

    Each channel's time course is a token: Linear(T, d_model) (no positional embedding, as published, where
    the time marks are None), a learned subject token in front, Dropout, ``n_layers`` post-norm transformer
    layers and a LayerNorm. The C channel tokens, (B, C, d_model), then go through
    :class:`TemporalSpatialConv` with d_model as its length and :class:`ProjectionHead`.

    Differences from the published code (none changes the parameter count of a layer it has): the
    published model keeps the first 63 tokens after the transformer, i.e. the subject token and channels 1
    to 62 of 63, so the last channel's token never reaches the spatial convolution; here the C channel
    tokens do. The subject token is per sample (the published one falls back to the shared token for the
    whole batch when any id is out of range); an id out of range is an error. The published model's unused
    parameters (a time-feature Linear(4, d_model) and two mask tokens) are left out.

    Args:
        n_channels: C.
        n_times: T, the length of a token before its embedding.
        embed_dim: d.
        d_model: token size (published 250), at least 75 with the default convolution.
        n_heads, d_ff, n_layers: published 4, 256, 1.
        transformer_dropout: embedding, attention and layer dropout (published 0.25).
        n_subjects: how many per-subject tokens to learn (published 10); with 0 only the shared token
            exists and ``subject`` must be None.
        n_filters, temporal_kernel, pool_kernel, pool_stride, dropout, proj_dropout, output_linear: as
            :class:`NICE`.
    """

    def __init__(
        self,
        n_channels: int,
        n_times: int,
        embed_dim: int,
        *,
        d_model: int = 250,
        n_heads: int = 4,
        d_ff: int = 256,
        n_layers: int = 1,
        transformer_dropout: float = 0.25,
        n_subjects: int = 0,
        n_filters: int = 40,
        temporal_kernel: int = 25,
        pool_kernel: int = 51,
        pool_stride: int = 5,
        dropout: float = 0.5,
        proj_dropout: float = 0.5,
        output_linear: bool = True,
    ) -> None:
        super().__init__(n_channels, n_times, embed_dim)
        fn = type(self).__name__
        d_model = _checks.check_int(fn, "d_model", d_model, minimum=1)
        n_heads = _checks.check_int(fn, "n_heads", n_heads, minimum=1)
        if n_heads > d_model:
            raise ValueError(_checks.message(fn, "n_heads", f"at most d_model ({d_model})", n_heads))
        d_ff = _checks.check_int(fn, "d_ff", d_ff, minimum=1)
        n_layers = _checks.check_int(fn, "n_layers", n_layers, minimum=1)
        p = _check_probability(fn, "transformer_dropout", transformer_dropout)
        self.n_subjects = _checks.check_int(fn, "n_subjects", n_subjects, minimum=0)

        self.embedding = nn.Linear(self.n_times, d_model)
        self.shared_token = nn.Parameter(torch.randn(1, 1, d_model))
        self.subject_tokens = nn.Embedding(self.n_subjects, d_model) if self.n_subjects else None
        self.embedding_dropout = nn.Dropout(p)
        self.layers = nn.ModuleList(
            _ChannelAttentionLayer(d_model, n_heads, d_ff, p) for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.conv = TemporalSpatialConv(
            fn,
            self.n_channels,
            d_model,
            length_name="d_model",
            n_filters=n_filters,
            temporal_kernel=temporal_kernel,
            pool_kernel=pool_kernel,
            pool_stride=pool_stride,
            dropout=dropout,
        )
        self.head = ProjectionHead(
            self.conv.n_features,
            self.embed_dim,
            dropout=_check_probability(fn, "proj_dropout", proj_dropout),
            output_linear=_checks.check_bool(fn, "output_linear", output_linear),
        )

    def _subject_token(self, subject: Any, batch: int) -> torch.Tensor:
        """(B, 1, d_model): the shared token, or each sample's subject's."""
        if subject is None:
            return self.shared_token.expand(batch, 1, -1)
        fn = f"{type(self).__name__}.forward"
        if self.subject_tokens is None:
            raise ValueError(_checks.message(fn, "subject", "None (built with n_subjects=0)", subject))
        subject = _checks.check_tensor(fn, "subject", subject, shape="(B,)")
        if subject.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{fn}: subject must be an int64 or int32 tensor, got dtype {subject.dtype}")
        _checks.check_shape(fn, "subject", subject, (batch,), doc=f"({batch},) (x's batch)")
        if batch and not 0 <= int(subject.min()) <= int(subject.max()) < self.n_subjects:
            raise ValueError(
                f"{fn}: subject must hold ids in [0, {self.n_subjects}) (n_subjects), got ids from "
                f"{int(subject.min())} to {int(subject.max())}"
            )
        return self.subject_tokens(subject).unsqueeze(1)

    def forward(self, x: torch.Tensor, subject: torch.Tensor | None = None) -> torch.Tensor:
        """(B, n_channels, n_times) -> (B, embed_dim).

        Args:
            subject: None (the shared token) or (B,) integer ids in [0, n_subjects).
        """
        self._check_x(x)
        tokens = torch.cat([self._subject_token(subject, len(x)), self.embedding(x)], dim=1)
        tokens = self.embedding_dropout(tokens)
        for layer in self.layers:
            tokens = layer(tokens)
        return self.head(self.conv(self.norm(tokens)[:, 1:]))


class BrainMLP(_BrainEncoder):
    """AlignVis's BrainMLP (after MindEye's): flattened input -> (B, embed_dim), for fMRI voxels.

    Linear(n, h) -> LayerNorm -> GELU -> Dropout(0.5), then ``n_blocks`` residual blocks x = x + Dropout(0.15)
    (GELU(LayerNorm(Linear(h, h)(x)))), then Linear(h, d); AlignVis's ``BrainEncoder`` builds it with
    ``use_projector=False`` and adds a Linear(d, d) (``output_linear``). n = n_channels x n_times: for fMRI
    pass ``n_channels=n_voxels, n_times=1``.

    Args:
        n_channels, n_times: the input's sizes; x is (B, n_channels, n_times) or (B, n_channels * n_times).
        embed_dim: d.
        hidden: h (published 4096).
        n_blocks: published 4.
        dropout, block_dropout: published 0.5 and 0.15.
        output_linear: the Linear(d, d) of AlignVis's ``BrainEncoder`` (published default True).
    """

    def __init__(
        self,
        n_channels: int,
        n_times: int,
        embed_dim: int,
        *,
        hidden: int = 4096,
        n_blocks: int = 4,
        dropout: float = 0.5,
        block_dropout: float = 0.15,
        output_linear: bool = True,
    ) -> None:
        super().__init__(n_channels, n_times, embed_dim)
        fn = type(self).__name__
        hidden = _checks.check_int(fn, "hidden", hidden, minimum=1)
        n_blocks = _checks.check_int(fn, "n_blocks", n_blocks, minimum=0)
        dropout = _check_probability(fn, "dropout", dropout)
        block_dropout = _check_probability(fn, "block_dropout", block_dropout)
        self.n_features = self.n_channels * self.n_times

        def block(n_in: int, p: float) -> nn.Sequential:
            return nn.Sequential(nn.Linear(n_in, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(p))

        self.lin0 = block(self.n_features, dropout)
        self.blocks = nn.ModuleList(block(hidden, block_dropout) for _ in range(n_blocks))
        self.lin1 = nn.Linear(hidden, self.embed_dim)
        output_linear = _checks.check_bool(fn, "output_linear", output_linear)
        self.out = nn.Linear(self.embed_dim, self.embed_dim) if output_linear else None

    def _check_x(self, x: Any) -> None:
        """``x`` is floating, (B, n_channels, n_times) or (B, n_channels * n_times)."""
        fn = f"{type(self).__name__}.forward"
        _checks.check_tensor(fn, "x", x, shape="(B, n_channels, n_times) or (B, n_channels * n_times)")
        _checks.check_floating(fn, "x", x)
        if x.dim() == 2 and x.shape[1] == self.n_features:
            return
        doc = (
            f"(B, {self.n_channels}, {self.n_times}) or (B, {self.n_features}) "
            "(B, n_channels, n_times as constructed, or flattened)"
        )
        _checks.check_shape(fn, "x", x, (None, self.n_channels, self.n_times), doc=doc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n_channels, n_times) or (B, n_channels * n_times) -> (B, embed_dim)."""
        self._check_x(x)
        x = self.lin0(x.flatten(1))
        for block in self.blocks:
            x = x + block(x)
        x = self.lin1(x)
        return x if self.out is None else self.out(x)


_CLASSES: dict[str, type[_BrainEncoder]] = {"nice": NICE, "eegnetv4": EEGNetV4, "atms": ATMS, "mlp": BrainMLP}


def brain_encoder(name: str, n_channels: int, n_times: int, embed_dim: int, **options: Any) -> nn.Module:
    """A brain encoder by name: (B, n_channels, n_times) -> (B, embed_dim).

    Args:
        name: "nice" (:class:`NICE`), "eegnetv4" (:class:`EEGNetV4`), "atms" (:class:`ATMS`) or "mlp"
            (:class:`BrainMLP`; for fMRI, n_channels = voxels and n_times = 1).
        n_channels, n_times: the input's sizes; every layer size follows from them.
        embed_dim: d, the image embedding's size.
        **options: the class's keyword options (an unknown one is a TypeError).

    Returns:
        The encoder, in training mode, with PyTorch's (or braindecode's, for EEGNetV4) initialisation.
    """
    cls = _CLASSES[_checks.check_choice("brain_encoder", "name", name, ENCODERS)]
    params = list(inspect.signature(cls).parameters.values())[3:]  # after n_channels, n_times, embed_dim
    known = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(
            f"brain_encoder: options {unknown} are not options of {name!r} ({cls.__name__}); its options are "
            f"{', '.join(known) or 'none'}"
        )
    return cls(n_channels, n_times, embed_dim, **options)
