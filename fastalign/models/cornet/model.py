"""CORnet-S (Kubilius et al., 2019): the eager reference module and its feature taps.

The architecture, parameter names and initialisation follow the original ``cornet_s.py`` of
dicarlolab/CORnet exactly, so its pretrained checkpoint loads unchanged (after stripping the
``module.`` prefix that its DataParallel wrapper added) and the layer names are those of Brain-Score.
Two deliberate differences that do not change any result: the recurrent conv2 gets its stride per call
instead of by mutating ``conv2.stride`` (thread- and torch.compile-safe), and the residual add is out of
place so that feature taps stay valid for autograd.

This module is the correctness oracle of the fast inference path (:mod:`fastalign.models.cornet.fused`,
which imports it; never the reverse at import time). Checkpoints are read by
:mod:`fastalign.models.cornet.weights`.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import math
import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fastalign import _checks
from fastalign.models.cornet.convs import (
    conv_taps,
    gemm_pays,
    gemm_pays_for,
    taps_conv3x3,
    unfold_conv3x3,
    valid_taps,
)
from fastalign.models.cornet.weights import load_cornet_weights
from fastalign.norm_act import batch_norm_module_act
from fastalign.norm_act.api import BACKENDS as _NORM_BACKENDS

#: The regions that :meth:`CORnetS.features` can tap, in network order, with the number of timesteps
#: of each and the Brain-Score module name whose output the tap is.
REGIONS: dict[str, tuple[str, int]] = {
    "V1": ("V1.output", 1),
    "V2": ("V2.output", 2),
    "V4": ("V4.output", 4),
    "IT": ("IT.output", 2),
    "avgpool": ("decoder.avgpool", 1),
    "decoder": ("decoder.output", 1),
}
_ALIASES: dict[str, str] = {bs: region for region, (bs, _) in REGIONS.items()}
_ALIASES.update({"logits": "decoder", "decoder.linear": "decoder", "IT.output": "IT"})
DEFAULT_LAYERS: tuple[str, ...] = ("V1", "V2", "V4", "IT", "avgpool")

#: Each block's output channels. Every block halves the spatial size, h -> (h - 1) // 2 + 1: V1 by its
#: stride-2 7x7 conv (padding 3) and then its stride-2 3x3 max pool (padding 1), so twice; V2, V4 and IT
#: by their stride-2 3x3 conv2 (padding 1) and 1x1 skip.
AREA_CHANNELS: dict[str, int] = {"V1": 64, "V2": 128, "V4": 256, "IT": 512}


def area_shapes(image_size: tuple[int, int]) -> dict[str, tuple[int, int, int]]:
    """Each block's (C, h, w) output for (H, W) images, from the strides and paddings above (a test checks
    it against the network run on the meta device)."""
    h, w = image_size
    shapes = {}
    for area, channels in AREA_CHANNELS.items():
        for _ in range(2 if area == "V1" else 1):
            h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        shapes[area] = (channels, h, w)
    return shapes


#: The values of ``CORnetS.fuse_training(convs=...)``.
_CONV_ALGORITHMS: tuple[str | None, ...] = (None, "auto")

#: Parameters plus nothing else (BatchNorm running statistics are buffers), as in the original.
NUM_PARAMETERS = 53_416_616


class Identity(nn.Module):
    """Returns its input; exists so that block outputs have the original's module names."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Flatten(nn.Module):
    """(B, C, 1, 1) -> (B, C), the original's decoder.flatten."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # flatten(1), not the original's view(B, -1): the -1 is ambiguous for an empty batch
        return x.flatten(1)


def _autocast_dtype(dtype: torch.dtype, device_type: str) -> torch.dtype:
    """The dtype a conv computes a tensor of ``dtype`` in: autocast's when it is on and casts that dtype
    (float32 and half types; it leaves float64 alone)."""
    castable = (torch.float32, torch.float16, torch.bfloat16)
    if dtype in castable and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return dtype


def _norm_act(
    backend: str | None,
    bn: nn.Module,
    x: torch.Tensor,
    nonlin: nn.Module | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """nonlin(bn(x) + residual): the original's module calls when ``backend`` is None, else the fused op.

    Norms that are not plain BatchNorm2d (e.g. SyncBatchNorm after convert_sync_batchnorm, whose
    statistics span processes) always run as modules.
    """
    if backend is None or type(bn) is not nn.BatchNorm2d:
        x = bn(x)
        if residual is not None:
            x = x + residual
        return nonlin(x) if nonlin is not None else x
    assert isinstance(bn, nn.BatchNorm2d)  # for mypy: checked above
    return batch_norm_module_act(bn, x, residual=residual, relu=nonlin is not None, backend=backend)


class CORblockS(nn.Module):
    """The recurrent block of CORnet-S.

    ``conv_input`` maps ``in_channels`` to ``out_channels``; then ``times`` steps of a bottleneck
    (1x1 -> 3x3 -> 1x1, widened by ``scale``) with shared conv weights and a BatchNorm per step. Step 0
    halves the resolution (conv2 stride 2) and its residual is the strided ``skip`` conv + ``norm_skip``;
    later steps add their input back.

    Shapes: (B, in_channels, H, W) -> (B, out_channels, ceil(H/2), ceil(W/2)).
    """

    scale = 4
    #: None: BatchNorm and ReLU modules, as the original; else the batch_norm_act backend (fused).
    norm_backend: str | None = None
    #: None: conv2 runs as F.conv2d, as the original; "auto": as an im2col matrix product where that is
    #: faster (CPU tensors, fewer output pixels than channels: :func:`convs.gemm_pays`).
    conv_algorithm: str | None = None

    def __init__(self, in_channels: int, out_channels: int, times: int = 1) -> None:
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("times", times)):
            _checks.check_int("CORblockS", name, value, minimum=1, expected="a positive int")
        super().__init__()
        self.times = times
        wide = out_channels * self.scale
        self.conv_input = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.skip = nn.Conv2d(out_channels, out_channels, kernel_size=1, stride=2, bias=False)
        self.norm_skip = nn.BatchNorm2d(out_channels)
        self.conv1 = nn.Conv2d(out_channels, wide, kernel_size=1, bias=False)
        self.nonlin1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(wide, wide, kernel_size=3, stride=2, padding=1, bias=False)
        self.nonlin2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(wide, out_channels, kernel_size=1, bias=False)
        self.nonlin3 = nn.ReLU(inplace=True)
        self.output = Identity()
        # One BatchNorm per timestep, as in the original (its training needed them).
        for t in range(times):
            setattr(self, f"norm1_{t}", nn.BatchNorm2d(wide))
            setattr(self, f"norm2_{t}", nn.BatchNorm2d(wide))
            setattr(self, f"norm3_{t}", nn.BatchNorm2d(out_channels))

    def norms(self, t: int) -> tuple[nn.BatchNorm2d, nn.BatchNorm2d, nn.BatchNorm2d]:
        """The three BatchNorms of timestep ``t``."""
        return getattr(self, f"norm1_{t}"), getattr(self, f"norm2_{t}"), getattr(self, f"norm3_{t}")

    def _conv2_taps(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]] | None:
        """With ``conv_algorithm="auto"``, where every pass of conv2 runs as a matrix product and together
        they read fewer than its 9 kernel taps (inputs of 1 or 2 pixels: IT at 32 px), those taps of its
        weight (:func:`convs.conv_taps`, one gather per forward) and the offsets they start at; else None.
        ``x``: conv2's first input."""
        if self.conv_algorithm != "auto" or x.device.type != "cpu":
            return None
        weight = self.conv2.weight
        h, w = x.shape[-2:]
        rows, cols = [], []
        for t in range(self.times):
            stride = 2 if t == 0 else 1
            if not gemm_pays_for(x.shape[0], h, w, stride, weight.shape[0]):  # this pass stays F.conv2d
                return None
            rows.append(valid_taps(h, stride))
            cols.append(valid_taps(w, stride))
            h, w = (h - 1) // stride + 1, (w - 1) // stride + 1
        r = (min(lo for lo, _ in rows), max(hi for _, hi in rows))
        c = (min(lo for lo, _ in cols), max(hi for _, hi in cols))
        if r == (0, 3) and c == (0, 3):
            return None
        return conv_taps(weight, r, c), (r[0], c[0])

    def forward(self, inp: torch.Tensor, taps: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Runs all timesteps; appends each timestep's output to ``taps`` when given."""
        x = self.conv_input(inp)
        kernel = self._conv2_taps(x)
        for t in range(self.times):
            norm1, norm2, norm3 = self.norms(t)
            if t == 0:
                skip = _norm_act(self.norm_backend, self.norm_skip, self.skip(x))
                stride = 2
            else:
                skip = x
                stride = 1
            x = _norm_act(self.norm_backend, norm1, self.conv1(x), self.nonlin1)
            weight = self.conv2.weight
            if kernel is not None:
                x = taps_conv3x3(x, kernel[0], kernel[1], stride)
            elif self.conv_algorithm == "auto" and gemm_pays(x, weight, stride):
                x = unfold_conv3x3(x, weight, stride)
            else:
                x = F.conv2d(x, weight, None, stride, 1)
            x = _norm_act(self.norm_backend, norm2, x, self.nonlin2)
            x = _norm_act(self.norm_backend, norm3, self.conv3(x), self.nonlin3, residual=skip)
            x = self.output(x)
            if taps is not None:
                taps.append(x)
        return x


class V1Block(nn.Sequential):
    """The original's V1 Sequential (same children, same state_dict keys) with a fusable forward."""

    norm_backend: str | None = None  # as CORblockS.norm_backend
    conv1: nn.Conv2d  # the first child (a named child of the Sequential, declared for type checkers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv1, norm1, nonlin1, pool, conv2, norm2, nonlin2, output = self  # the original's order
        x = _norm_act(self.norm_backend, norm1, conv1(x), nonlin1)
        x = pool(x)
        x = _norm_act(self.norm_backend, norm2, conv2(x), nonlin2)
        return output(x)


def _v1() -> V1Block:
    return V1Block(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)),
                ("norm1", nn.BatchNorm2d(64)),
                ("nonlin1", nn.ReLU(inplace=True)),
                ("pool", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
                ("conv2", nn.Conv2d(64, 64, kernel_size=3, stride=1, padding=1, bias=False)),
                ("norm2", nn.BatchNorm2d(64)),
                ("nonlin2", nn.ReLU(inplace=True)),
                ("output", Identity()),
            ]
        )
    )


def _decoder(num_classes: int) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            [
                ("avgpool", nn.AdaptiveAvgPool2d(1)),
                ("flatten", Flatten()),
                ("linear", nn.Linear(512, num_classes)),
                ("output", Identity()),
            ]
        )
    )


def _resolve_layers(fn: str, layers: str | Sequence[str]) -> list[tuple[str, str]]:
    """[(name as given, region)] for the requested taps of ``fn``; ValueError naming unknown ones."""
    if isinstance(layers, str):
        layers = (layers,)
    if not isinstance(layers, Sequence) or not all(isinstance(n, str) for n in layers):
        raise TypeError(f"{fn}: layers must be a str or a sequence of str, got {type(layers).__name__}")
    if len(layers) == 0:
        raise ValueError(f"{fn}: layers must name at least one layer, got an empty sequence")
    out = []
    for name in layers:
        region = name if name in REGIONS else _ALIASES.get(name)
        if region is None:
            known = sorted(set(REGIONS) | set(_ALIASES))
            raise ValueError(f"{fn}: layers: unknown layer {name!r}; expected some of {known}")
        out.append((name, region))
    return out


class CORnetBase(nn.Module):
    """What the eager and the fused CORnet-S share: the forward pass and the feature taps.

    Subclasses provide ``V1`` (x -> tensor), ``V2``/``V4``/``IT`` (``(x, taps) -> tensor``, appending
    one tensor per timestep to ``taps`` when given), and ``_head`` (block output -> (pooled (B, 512, 1, 1),
    logits (B, num_classes))). ``_prepare`` may convert the input (dtype, memory format) and ``_output``
    every returned tensor (dtype).

    An empty batch (B = 0) gives empty outputs of the usual shapes, as torch's layers do.
    """

    V1: nn.Module
    V2: nn.Module
    V4: nn.Module
    IT: nn.Module

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _output(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _head(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _check_input(self, x: torch.Tensor) -> None:
        fn = type(self).__name__
        _checks.check_tensor(fn, "x", x, shape="(B, 3, H, W)")
        _checks.check_shape(fn, "x", x, (None, 3, None, None), doc="(B, 3, H, W)")
        if x.shape[2] == 0 or x.shape[3] == 0:
            raise ValueError(f"{fn}: x must have H >= 1 and W >= 1, got shape {tuple(x.shape)}")
        expected = "a floating-point tensor (see fastalign.data.transforms.imagenet_transform)"
        _checks.check_floating(fn, "x", x, expected=expected)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits.

        Args:
            x: (B, 3, H, W) normalised images (see :func:`fastalign.data.transforms.imagenet_transform`).

        Returns:
            (B, num_classes) logits.
        """
        self._check_input(x)
        x = self._prepare(x)
        for block in (self.V1, self.V2, self.V4, self.IT):
            x = block(x)
        return self._output(self._head(x)[1])

    def features(
        self,
        x: torch.Tensor,
        layers: str | Sequence[str] = DEFAULT_LAYERS,
        timesteps: str = "last",
    ) -> dict[str, torch.Tensor]:
        """Activations of the requested layers; differentiable (ReAlnet trains through them).

        Only the regions up to the last requested one are computed.

        Args:
            x: (B, 3, H, W) normalised images.
            layers: Regions to tap: "V1", "V2", "V4", "IT" (block outputs, (B, C, h, w)), "avgpool"
                ((B, 512, 1, 1), as Brain-Score records it) and "decoder" (logits, (B, num_classes));
                Brain-Score module names ("V4.output", "decoder.avgpool") are accepted as aliases.
            timesteps: "last" keys each tap by the name given and holds the region's final timestep;
                "all" keys every timestep by Brain-Score's name, e.g. "V4.output-t3",
                "decoder.avgpool-t0".

        Returns:
            A dict from name to activation tensor.
        """
        if timesteps not in ("last", "all"):
            raise ValueError(
                f"{type(self).__name__}.features: timesteps must be 'last' or 'all', got {timesteps!r}"
            )
        self._check_input(x)
        wanted = _resolve_layers(f"{type(self).__name__}.features", layers)
        regions = {r for _, r in wanted}
        order = list(REGIONS)
        stop = max(order.index(r) for r in regions)
        acts: dict[str, list[torch.Tensor]] = {}
        h = self._prepare(x)
        h = self.V1(h)
        acts["V1"] = [h]
        for region, block in (("V2", self.V2), ("V4", self.V4), ("IT", self.IT)):
            if order.index(region) > stop:
                break
            steps: list[torch.Tensor] = []
            h = block(h, steps)
            acts[region] = steps
        if stop >= order.index("avgpool"):
            pooled, logits = self._head(h)
            acts["avgpool"], acts["decoder"] = [pooled], [logits]
        out: dict[str, torch.Tensor] = {}
        for name, region in wanted:
            if timesteps == "last":
                out[name] = self._output(acts[region][-1])
            else:
                for t, a in enumerate(acts[region]):
                    out[f"{REGIONS[region][0]}-t{t}"] = self._output(a)
        return out

    @staticmethod
    def layer_names(timesteps: str = "all", layers: Iterable[str] = DEFAULT_LAYERS) -> list[str]:
        """The keys :meth:`features` returns with ``timesteps="all"`` (Brain-Score names), in order."""
        if timesteps != "all":
            raise ValueError(f"CORnetS.layer_names: timesteps must be 'all', got {timesteps!r}")
        names = []
        for _, region in _resolve_layers("CORnetS.layer_names", list(layers)):
            bs, times = REGIONS[region]
            names += [f"{bs}-t{t}" for t in range(times)]
        return names


class CORnetS(CORnetBase):
    """CORnet-S, parameter for parameter the original (53,416,616 parameters with 1000 classes).

    Submodules ``V1``, ``V2``, ``V4``, ``IT``, ``decoder`` carry the original's names, so
    ``state_dict()`` keys are the original's without the ``module.`` prefix. Call :meth:`fuse` for the
    fast inference module.
    """

    V1: V1Block
    V2: CORblockS
    V4: CORblockS
    IT: CORblockS
    decoder: nn.Sequential

    def __init__(self, num_classes: int = 1000) -> None:
        _checks.check_int("CORnetS", "num_classes", num_classes, minimum=1, expected="a positive int")
        super().__init__()
        # The modules' own random initialisation (nn.Conv2d's kaiming_uniform_), which the original's
        # normal_ below overwrites, is skipped where the generator can be advanced past it instead
        # (_skip_draws): the same weights and generator state; 53 M uniform values fewer to compute.
        skip = _skip_draws()
        with torch.device("meta") if skip else contextlib.nullcontext():
            c = AREA_CHANNELS
            self.V1 = _v1()
            self.V2 = CORblockS(c["V1"], c["V2"], times=2)
            self.V4 = CORblockS(c["V2"], c["V4"], times=4)
            self.IT = CORblockS(c["V4"], c["IT"], times=2)
            self.decoder = _decoder(num_classes)
        values = not _OVERWRITTEN.get()
        if skip:
            self.to_empty(device="cpu")
            self._replay_default_init(values)
        self._init_weights(discard=skip and not values)

    def _replay_default_init(self, values: bool) -> None:
        """The modules' default initialisation in their construction order, on a module built on the meta
        device and moved to (uninitialised) CPU memory: BatchNorm's and, when ``values``, the Linear's
        values; for every draw whose values are overwritten, the generator is only advanced."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # kaiming_uniform_, then normal_ in _init_weights
                if m.bias is not None:  # its values would be kept: CORnet-S's convs have none
                    raise RuntimeError(f"CORnetS: conv bias of {tuple(m.weight.shape)} has no replayed init")
                _discard(m.weight.numel())
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()
            elif isinstance(m, nn.Linear):
                if values:
                    m.reset_parameters()
                else:
                    _discard(sum(p.numel() for p in m.parameters(recurse=False)))
            elif any(True for _ in itertools.chain(m.parameters(recurse=False), m.buffers(recurse=False))):
                raise RuntimeError(f"CORnetS: no initialisation to replay for {type(m).__name__}")

    def _init_weights(self, discard: bool = False) -> None:
        # The original's initialisation; like it, the Linear keeps PyTorch's default. Meta tensors hold no
        # values to set (a CORnet-S on the meta device only gives shapes, e.g. ReAlnet's tap shapes), and
        # the first normal_ on one costs about 2 s of torch's one-time setup in every process. With
        # ``discard`` (a checkpoint replaces the values) the generator is only advanced as normal_ would.
        if self.V1.conv1.weight.is_meta:
            return
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                if discard and m.weight.numel() >= 16:
                    _discard(_normal_draws(m.weight))
                else:
                    nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        """x unchanged, once it is known to match the weights' dtype and device (else conv2d's errors)."""
        weight = next(self.parameters())  # V1.conv1's, the first to meet x
        if x.device != weight.device:
            raise ValueError(f"CORnetS: x is on {x.device} but the model's weights are on {weight.device}")
        device_type = x.device.type
        if _autocast_dtype(x.dtype, device_type) != _autocast_dtype(weight.dtype, device_type):
            raise TypeError(
                f"CORnetS: x is {x.dtype} but the model's weights are {weight.dtype}; convert one of them "
                f"(x.to({weight.dtype}) or model.to({x.dtype})), or run under torch.autocast, which casts "
                "float32 and half inputs and weights (not float64)"
            )
        return x

    def _head(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        avgpool, flatten, linear, output = self.decoder  # the original's Sequential, in its order
        pooled = avgpool(x)
        return pooled, output(linear(flatten(pooled)))

    def fuse_training(self, backend: str | None = "auto", convs: str | None = "auto") -> CORnetS:
        """The fast training path: fused BatchNorm tails and, on CPU, GEMM convs; returns ``self``.

        The parameters, buffers, state_dict and the function computed are unchanged (up to rounding);
        only how the layers run changes.

        Args:
            backend: How each BatchNorm (+ residual add) (+ ReLU) tail (``conv -> BN -> ReLU``,
                ``conv -> BN -> + skip -> ReLU``) runs: :func:`fastalign.norm_act.batch_norm_act` with
                this backend ("auto": fused Triton kernels for CUDA tensors, the eager reference, bitwise
                the original, otherwise), or ``None``: the original module calls. Training and eval mode
                both work, with BatchNorm's running-statistics updates. Norms other than plain
                BatchNorm2d (SyncBatchNorm for multi-GPU training) keep running as modules.
            convs: How the blocks' recurrent 3x3 conv2 runs. "auto": on CPU tensors, each call with fewer
                output pixels (batch x height x width) than channels runs as one im2col matrix product
                (:func:`fastalign.models.cornet.convs.unfold_conv3x3`; V2, V4 and IT at 32 px; at
                224 px IT's up to batch 41 and V4's up to batch 5), where oneDNN's direct conv and its
                backward are several times slower; a block whose inputs are 1 or 2 pixels wide (IT at
                32 px) multiplies by only the kernel taps that reach them
                (:func:`fastalign.models.cornet.convs.taps_conv3x3`: 4 of 9 on its strided pass, 1 on
                the next); every other call, and every call on a GPU, stays ``F.conv2d``. ``None``:
                ``F.conv2d`` always, as the original.
        """
        if backend is not None and backend not in _NORM_BACKENDS:
            raise ValueError(
                f"fuse_training: backend must be None or one of {_NORM_BACKENDS}, got {backend!r}"
            )
        if convs not in _CONV_ALGORITHMS:
            raise ValueError(f"fuse_training: convs must be one of {_CONV_ALGORITHMS}, got {convs!r}")
        for block in (self.V1, self.V2, self.V4, self.IT):
            block.norm_backend = backend
        for block in (self.V2, self.V4, self.IT):
            block.conv_algorithm = convs
        return self

    def fuse(self, **kwargs: Any) -> nn.Module:
        """The fused inference module; see :func:`fastalign.models.fuse` for the options."""
        # imported here: the fused module is built from this one, so it imports this module
        from fastalign.models.cornet.fused import fuse

        return fuse(self, **kwargs)


def cornet_s(weights: str | os.PathLike[str] | Mapping[str, Any] | None = None) -> CORnetS:
    """CORnet-S, randomly initialised as in the original or loaded from its checkpoint.

    Args:
        weights: None, a path to a checkpoint in the original format (``{"state_dict": ...}`` with
            ``module.``-prefixed keys, or a bare state_dict with or without the prefix; ``.safetensors``
            files hold a bare state_dict), or such a mapping already in memory. Nothing is downloaded.

    Returns:
        The model in eval mode when weights were loaded, else in train mode (like a fresh nn.Module).
    """
    if weights is None:
        return CORnetS()
    # The random values would be replaced: only the generator advances past them (the state after
    # cornet_s(weights) stays that of the original's construction, so seeded code that draws next, e.g.
    # align's encoding head, gets the same numbers). A load that fails leaves no half-initialised model.
    token = _OVERWRITTEN.set(True)
    try:
        model = CORnetS()
    finally:
        _OVERWRITTEN.reset(token)
    load_cornet_weights(model, weights)
    model.eval()
    return model


#: Set while a CORnetS is built whose parameters a checkpoint will replace (cornet_s(weights)).
_OVERWRITTEN: contextvars.ContextVar[bool] = contextvars.ContextVar("cornet_s_overwritten", default=False)
_SKIP_CHECKED: list[bool] = []


def _skip_draws() -> bool:
    """Whether construction may skip random values that are overwritten and advance the CPU generator
    with ``torch.ops.fastalign.rng_discard`` instead: the compiled op is present, parameters are made as
    float32 on the CPU (not under another default device or dtype), and, checked once per process, the
    op advances a generator exactly as this torch's float32 ``uniform_`` and ``normal_`` do."""
    if torch.get_default_device().type != "cpu" or torch.get_default_dtype() != torch.float32:
        return False
    # Under a dispatch mode (FakeTensorMode, tracing) or a function mode other than a default device,
    # tensors and draws are not what this path assumes: build as the original does.
    from torch.overrides import _get_current_function_mode_stack
    from torch.utils._device import DeviceContext
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    if _get_current_dispatch_mode_stack() or any(
        not isinstance(mode, DeviceContext) for mode in _get_current_function_mode_stack()
    ):
        return False
    if not _SKIP_CHECKED:
        _SKIP_CHECKED.append(_discard_matches_torch())
    return _SKIP_CHECKED[0]


def _discard_matches_torch() -> bool:
    from fastalign import _ext

    if _ext.why_ops_missing(["rng_discard"]) is not None:
        return False
    for n in (1, 623, 624, 1250, 2000):  # across twists of the 624-word state
        for method, values in (("uniform_", torch.empty(n)), ("normal_", torch.empty(n + 16))):
            a, b = torch.Generator().manual_seed(n), torch.Generator().manual_seed(n)
            getattr(values, method)(generator=a)
            torch.ops.fastalign.rng_discard(b, n if method == "uniform_" else _normal_draws(values))
            if not torch.equal(a.get_state(), b.get_state()):
                return False
    return True


def _normal_draws(t: torch.Tensor) -> int:
    """The 32-bit draws of a float32 ``normal_`` on a contiguous CPU tensor of 16 or more elements: one per
    value, and 16 more when the size is not a multiple of 16 (the last 16 values are drawn again)."""
    n = t.numel()
    if n < 16 or not t.is_contiguous():
        raise ValueError(
            f"_normal_draws: t must be a contiguous tensor of >= 16 values, got shape {tuple(t.shape)}"
        )
    return n + (16 if n % 16 else 0)


def _discard(n: int) -> None:
    torch.ops.fastalign.rng_discard(None, n)
