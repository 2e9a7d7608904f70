"""Fused inference path of CORnet-S: BatchNorm folded into per-timestep conv weights.

Built from the eager model of :mod:`fastalign.models.cornet.model` (this module imports it, not the
reverse).

What :func:`fuse` changes, none of which changes the function the network computes (up to rounding):

- every conv -> BatchNorm pair becomes one conv with bias, using the BatchNorm's running statistics
  (eval semantics). The recurrent blocks share conv1/conv2/conv3 across timesteps but have a BatchNorm
  per timestep, so each shared conv gets one folded copy per timestep (V4's 3x3 conv: four copies);
- each block's 1x1 ``conv_input`` is multiplied into the two 1x1 convs that read it at timestep 0
  (``conv1`` and the strided ``skip``), which removes a conv and about half of those 1x1 FLOPs;
- activations and weights are channels_last (NHWC, what oneDNN and cuDNN prefer), optionally bf16;
- on CPU, when autograd is not recording, convs run as oneDNN convs with the bias, ReLU and residual add
  fused into the conv (``torch.ops.mkldnn._convolution_pointwise``, the kernels inductor uses);
  otherwise as ``F.conv2d`` followed by in-place add/ReLU, which autograd supports (feature taps used
  for training keep gradients with respect to the input);
- bf16/fp16 on a CPU whose oneDNN cannot run that dtype (no AVX-512 or AVX-NE-CONVERT, asked of torch
  when fusing) compute in float32 and cast every output: torch's own bf16/fp16 CPU convs are slower
  than the float32 path there (see benchmarks/bench_cornet.py), and float32 is more accurate;
- optionally, on CUDA, the whole forward (or one features() call pattern) is captured once per input
  shape in a CUDA graph and replayed.

The result is an inference module: its weights are buffers, it has no training mode.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from fastalign.models.cornet.convs import gemm_conv3x3, gemm_pays, winograd_conv3x3, winograd_weight_by_input
from fastalign.models.cornet.model import DEFAULT_LAYERS, CORblockS, CORnetBase, CORnetS

_FOLD_DTYPE = torch.float64  # fold in float64 so that folding adds no rounding of its own


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(
            "fuse: a BatchNorm without running statistics (track_running_stats=False) cannot be folded"
        )
    var = bn.running_var.to(_FOLD_DTYPE)
    scale = bn.weight.detach().to(_FOLD_DTYPE) / torch.sqrt(var + bn.eps)
    shift = bn.bias.detach().to(_FOLD_DTYPE) - bn.running_mean.to(_FOLD_DTYPE) * scale
    return scale, shift


def fold_conv_bn(
    weight: torch.Tensor, bn: nn.BatchNorm2d, out: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight', bias') in float64 with conv(x, weight', bias') == bn(conv(x, weight)) in eval mode.

    Shapes: weight (O, I, kh, kw) -> (O, I, kh, kw), bias (O,). ``out``: a float64 tensor of weight's
    shape to write weight' into (a new one when None).
    """
    scale, shift = _bn_scale_shift(bn)
    w = weight.detach()
    w = w.to(_FOLD_DTYPE, copy=True) if out is None else out.copy_(w)
    return w.mul_(scale.view(-1, 1, 1, 1)), shift


class _Scratch:
    """float64 work buffers that one :func:`fuse` reuses from conv to conv.

    A new large tensor costs a page fault per 4 KiB page at its first write, more than the arithmetic
    that fills it: on a 2-core CPU, widening IT's 3x3 conv (37.7 M weights) into a new float64 tensor
    took 160 ms, into a reused one 28 ms (and 20 ms to scale it). A part's buffers are its own copies;
    nothing keeps the scratch after fuse().
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, torch.device], torch.Tensor] = {}

    def take(self, tag: str, shape: Sequence[int], device: torch.device) -> torch.Tensor:
        """A float64 tensor of ``shape`` over ``tag``'s buffer (grown when too small): valid until the
        next take of the same tag."""
        numel = math.prod(shape)
        buf = self._buffers.get((tag, device))
        if buf is None or buf.numel() < numel:
            buf = torch.empty(numel, dtype=_FOLD_DTYPE, device=device)
            self._buffers[(tag, device)] = buf
        return buf[:numel].view(*shape)


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d, scratch: _Scratch) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`fold_conv_bn` into ``scratch``'s "fold" buffer."""
    return fold_conv_bn(conv.weight, bn, out=scratch.take("fold", conv.weight.shape, conv.weight.device))


# float64 values of a Winograd fold's slice in the Winograd domain (16 x C_out x its input channels, 1 MiB):
# its intermediates stay in cache
_WINOGRAD_SLICE_VALUES = 1 << 17


def _fold_winograd(
    conv: nn.Conv2d, bn: nn.BatchNorm2d, dtype: torch.dtype, scratch: _Scratch
) -> tuple[torch.Tensor, torch.Tensor]:
    """(:func:`winograd_weight` of :func:`fold_conv_bn`'s weight in ``dtype``, bias in float64), the same
    values, made a slice of input channels at a time: folded and transformed in float64 without writing
    the whole float64 kernel (16/9 of the weight's values, at twice float32's size) to memory and back."""
    scale, shift = _bn_scale_shift(bn)
    w = conv.weight.detach()
    c_out, c_in = w.shape[:2]
    u = torch.empty((16, c_in, c_out), dtype=dtype, device=w.device)
    step = max(1, _WINOGRAD_SLICE_VALUES // (16 * c_out))
    for i in range(0, c_in, step):
        part = w[:, i : i + step].permute(1, 0, 2, 3)  # (slice of C_in, C_out, 3, 3)
        folded = scratch.take("fold", part.shape, w.device).copy_(part).mul_(scale.view(1, -1, 1, 1))
        out = scratch.take("winograd", (16, *part.shape[:2]), w.device)
        u[:, i : i + step].copy_(winograd_weight_by_input(folded, out=out))
    return u, shift


def _compose_1x1(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """The 1x1 conv weight of outer(inner(x)) for 1x1 convs: (O, M, 1, 1) x (M, I, 1, 1) -> (O, I, 1, 1)."""
    return (outer[:, :, 0, 0] @ inner[:, :, 0, 0].to(outer.dtype))[:, :, None, None]


class _ConvSpec:
    """One conv (+ bias, optional ReLU, optional residual add) with its kernel geometry."""

    __slots__ = ("name", "padding", "relu", "stride", "winograd")

    def __init__(self, name: str, stride: int, padding: int, relu: bool, winograd: bool = False) -> None:
        self.name, self.stride, self.padding, self.relu = name, stride, padding, relu
        self.winograd = winograd


class _FusedPart(nn.Module):
    """Holds folded conv weights as buffers and runs them on either conv path."""

    def __init__(self, dtype: torch.dtype, channels_last: bool) -> None:
        super().__init__()
        self.dtype = dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.use_mkldnn = False  # set per call by FusedCORnetS
        # im2col GEMM for weight-bound 3x3 convs: CPU only, and needs channels_last weights.
        self.use_gemm = False

    def _add_conv(self, name: str, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Keeps a folded float64 conv (a scratch view or a new tensor) as buffers in ``self.dtype``."""
        # copy, then the layout: as before the scratch, so that 1x1 weights keep their strides (the same
        # conv kernels run, the same bits come out)
        w = weight.to(self.dtype, copy=True).contiguous(memory_format=self.memory_format)
        self.register_buffer(f"{name}_weight", w)
        self.register_buffer(f"{name}_bias", bias.to(self.dtype))

    def _conv(self, x: torch.Tensor, spec: _ConvSpec, residual: torch.Tensor | None = None) -> torch.Tensor:
        b = getattr(self, f"{spec.name}_bias")
        if spec.winograd:
            if residual is not None:  # never built: only conv2 (no residual) runs as Winograd
                raise AssertionError("Winograd convs take no residual")
            y = winograd_conv3x3(x, getattr(self, f"{spec.name}_wino"), b, spec.relu)
            return y.contiguous(memory_format=self.memory_format)
        w = getattr(self, f"{spec.name}_weight")
        # Fewer output pixels than channels: the direct conv is weight-bound (see convs.py).
        if self.use_gemm and w.shape[-1] == 3 and residual is None and gemm_pays(x, w, spec.stride):
            return gemm_conv3x3(x, w, b, spec.stride, spec.relu).contiguous(memory_format=self.memory_format)
        pad, stride = [spec.padding] * 2, [spec.stride] * 2
        if self.use_mkldnn:
            unary = "relu" if spec.relu else "none"
            if residual is None:
                return torch.ops.mkldnn._convolution_pointwise(x, w, b, pad, stride, [1, 1], 1, unary, [], "")
            # oneDNN binary-add post-op reads `residual` and writes a new tensor, then applies the ReLU.
            return torch.ops.mkldnn._convolution_pointwise.binary(
                x, residual, w, b, pad, stride, [1, 1], 1, "add", None, unary, [], ""
            )
        y = F.conv2d(x, w, b, stride, pad)
        if residual is not None:
            y = y.add_(residual)
        return y.relu_() if spec.relu else y


class FusedV1(_FusedPart):
    """V1 with both BatchNorms folded: conv7x7/2+ReLU, max-pool 3/2, conv3x3+ReLU."""

    def __init__(self, v1: nn.Sequential, dtype: torch.dtype, channels_last: bool, scratch: _Scratch) -> None:
        super().__init__(dtype, channels_last)
        conv1, norm1, _, _, conv2, norm2, _, _ = v1  # the original's Sequential, in its order
        for name, conv, norm in (("conv1", conv1, norm1), ("conv2", conv2, norm2)):
            self._add_conv(name, *_fold(cast(nn.Conv2d, conv), cast(nn.BatchNorm2d, norm), scratch))
        self.c1 = _ConvSpec("conv1", 2, 3, True)
        self.c2 = _ConvSpec("conv2", 1, 1, True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._conv(x, self.c1)
        x = F.max_pool2d(x, 3, 2, 1)
        return self._conv(x, self.c2)


class FusedBlock(_FusedPart):
    """A CORblock_S with per-timestep folded weights and conv_input multiplied into timestep 0."""

    def __init__(
        self, block: CORblockS, dtype: torch.dtype, channels_last: bool, winograd: bool, scratch: _Scratch
    ) -> None:
        super().__init__(dtype, channels_last)
        self.times = block.times
        w_in = block.conv_input.weight.detach().to(_FOLD_DTYPE)
        w_skip, b_skip = _fold(block.skip, block.norm_skip, scratch)
        self._add_conv("skip", _compose_1x1(w_skip, w_in), b_skip)
        self.steps: list[tuple[_ConvSpec, _ConvSpec, _ConvSpec]] = []
        for t in range(self.times):
            norm1, norm2, norm3 = block.norms(t)
            w1, b1 = _fold(block.conv1, norm1, scratch)
            if t == 0:
                w1 = _compose_1x1(w1, w_in)
            self._add_conv(f"conv1_{t}", w1, b1)
            # Timesteps after the first run conv2 at stride 1, where Winograd applies.
            wino = winograd and t > 0
            if wino:  # only the Winograd-domain kernel is kept: the direct one would be dead weight
                u, b2 = _fold_winograd(block.conv2, norm2, dtype, scratch)
                self.register_buffer(f"conv2_{t}_wino", u)
                self.register_buffer(f"conv2_{t}_bias", b2.to(dtype))
            else:
                self._add_conv(f"conv2_{t}", *_fold(block.conv2, norm2, scratch))
            self._add_conv(f"conv3_{t}", *_fold(block.conv3, norm3, scratch))
            self.steps.append(
                (
                    _ConvSpec(f"conv1_{t}", 1, 0, True),
                    _ConvSpec(f"conv2_{t}", 2 if t == 0 else 1, 1, True, wino),
                    _ConvSpec(f"conv3_{t}", 1, 0, True),
                )
            )
        self.skip_spec = _ConvSpec("skip", 2, 0, False)

    def forward(self, inp: torch.Tensor, taps: list[torch.Tensor] | None = None) -> torch.Tensor:
        x = inp
        for t, (c1, c2, c3) in enumerate(self.steps):
            skip = self._conv(inp, self.skip_spec) if t == 0 else x
            y = self._conv(self._conv(x, c1), c2)
            x = self._conv(y, c3, residual=skip)
            if taps is not None:
                taps.append(x)
        return x


class FusedCORnetS(CORnetBase):
    """The fused inference CORnet-S made by :func:`fuse`: same forward() and features() as the eager one.

    Attributes:
        dtype: Dtype of every output (logits and feature taps).
        compute_dtype: Dtype of weights and activations (inputs are cast to it): ``dtype``, except
            bf16/fp16 on a CPU without oneDNN support for it (:func:`mkldnn_dtype_unsupported`), which
            compute in float32.
        channels_last: Whether activations are NHWC.
        mkldnn: Whether CPU calls without autograd use oneDNN's fused conv+bias+ReLU(+add) kernels.
        winograd: Whether the recurrent blocks' stride-1 3x3 convs (timesteps > 0) run as Winograd
            F(2x2, 3x3) (:mod:`fastalign.models.cornet.convs`).
        gemm: Whether CPU calls run weight-bound 3x3 convs as one im2col GEMM
            (:mod:`fastalign.models.cornet.convs`).
        cuda_graph: Whether CUDA calls without autograd are captured and replayed as CUDA graphs.
    """

    V1: FusedV1
    V2: FusedBlock
    V4: FusedBlock
    IT: FusedBlock
    linear_weight: torch.Tensor
    linear_bias: torch.Tensor

    def __init__(
        self,
        model: CORnetS,
        *,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = True,
        mkldnn: bool | None = None,
        winograd: bool | None = None,
        gemm: bool = True,
        cuda_graph: bool = False,
    ) -> None:
        super().__init__()
        self.dtype = dtype
        self.channels_last = channels_last
        on_cpu = next(model.parameters()).device.type == "cpu"
        mkldnn_dtypes = (torch.float32, torch.bfloat16, torch.float16)
        if mkldnn and dtype not in mkldnn_dtypes:
            raise ValueError(f"fuse: mkldnn=True supports float32, bfloat16 and float16, got dtype {dtype}")
        if mkldnn and not _mkldnn_available():
            raise NotImplementedError("fuse: mkldnn=True but this torch has no mkldnn._convolution_pointwise")
        missing = mkldnn_dtype_unsupported(dtype)
        if mkldnn and missing is not None:
            raise NotImplementedError(
                f"fuse: mkldnn=True with dtype {dtype} needs oneDNN convolutions in that dtype, which this "
                f"CPU cannot run: {missing}; leave mkldnn=None to compute in float32 and cast the outputs"
            )
        self.compute_dtype = torch.float32 if on_cpu and missing is not None else dtype
        compute = self.compute_dtype
        wino_dtypes = (torch.float32, torch.float64)
        # An explicit winograd=True is judged by the dtype asked for, the same on every CPU.
        if winograd and dtype not in wino_dtypes:
            raise ValueError(f"fuse: winograd=True supports float32 and float64, got dtype {dtype}")
        self.winograd = on_cpu and compute in wino_dtypes if winograd is None else winograd
        self.gemm = gemm
        self.mkldnn = _mkldnn_available() and compute in mkldnn_dtypes if mkldnn is None else mkldnn
        self.cuda_graph = cuda_graph
        scratch = _Scratch()
        self.V1 = FusedV1(model.V1, compute, channels_last, scratch)
        self.V2 = FusedBlock(model.V2, compute, channels_last, self.winograd, scratch)
        self.V4 = FusedBlock(model.V4, compute, channels_last, self.winograd, scratch)
        self.IT = FusedBlock(model.IT, compute, channels_last, self.winograd, scratch)
        linear = cast(nn.Linear, model.decoder[2])
        self.register_buffer("linear_weight", linear.weight.detach().to(compute).clone())
        self.register_buffer("linear_bias", linear.bias.detach().to(compute).clone())
        self._graphs: dict[tuple[Any, ...], _GraphEntry] = {}
        self.eval()

    def train(self, mode: bool = True) -> FusedCORnetS:
        """Stays in eval mode: BatchNorm was folded with its running statistics."""
        if mode:
            raise RuntimeError("FusedCORnetS is inference-only (BatchNorm is folded); train CORnetS")
        return super().train(False)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        # The conv path is chosen per call and stored on the parts, so one module must not be called
        # from several threads at once with different autograd modes or devices.
        use = self.mkldnn and x.device.type == "cpu" and not (torch.is_grad_enabled() and x.requires_grad)
        gemm = self.gemm and x.device.type == "cpu" and self.channels_last
        for part in (self.V1, self.V2, self.V4, self.IT):
            part.use_mkldnn = use
            part.use_gemm = gemm
        x = x.to(self.compute_dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x.contiguous()

    def _output(self, x: torch.Tensor) -> torch.Tensor:
        # NCHW-contiguous as the eager model's taps: a channels_last tap broke .view(B, -1) on it
        return x.to(self.dtype).contiguous()

    def _head(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = x.mean(dim=(2, 3), keepdim=True)
        return pooled, F.linear(pooled.flatten(1), self.linear_weight, self.linear_bias)

    def _use_graph(self, x: torch.Tensor) -> bool:
        # An empty batch launches no kernels: nothing to capture.
        eligible = self.cuda_graph and x.is_cuda and x.numel() > 0
        return eligible and not (torch.is_grad_enabled() and x.requires_grad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits, (B, 3, H, W) -> (B, num_classes), in ``self.dtype``."""
        if self._use_graph(x):
            run = super().forward
            return self._replay(("forward",), x, lambda inp: {"logits": run(inp)})["logits"]
        return super().forward(x)

    def features(
        self,
        x: torch.Tensor,
        layers: str | Sequence[str] = DEFAULT_LAYERS,
        timesteps: str = "last",
    ) -> dict[str, torch.Tensor]:
        """As :meth:`CORnetS.features <fastalign.models.CORnetS.features>`, in ``self.dtype``."""
        if self._use_graph(x):
            key = ("features", tuple([layers] if isinstance(layers, str) else layers), timesteps)
            feats = super().features
            return self._replay(key, x, lambda inp: feats(inp, layers, timesteps))
        return super().features(x, layers, timesteps)

    def _replay(self, key: tuple[Any, ...], x: torch.Tensor, fn: Any) -> dict[str, torch.Tensor]:
        """Runs ``fn(x)`` through a CUDA graph captured for this call pattern and input shape."""
        key = (*key, tuple(x.shape), x.dtype, x.device)
        entry = self._graphs.get(key)
        if entry is None:
            entry = _GraphEntry(fn, x)
            self._graphs[key] = entry
        return entry.run(x)


class _GraphEntry:
    """A CUDA graph of ``fn`` on a static input buffer (captured after warm-up on a side stream)."""

    def __init__(self, fn: Any, x: torch.Tensor) -> None:
        # A normal (not inference-mode) tensor, so that later calls outside inference_mode may copy into it.
        with torch.inference_mode(False):
            self.static_in = x.detach().clone()
        stream = torch.cuda.Stream(device=x.device)
        stream.wait_stream(torch.cuda.current_stream(x.device))
        with torch.no_grad(), torch.cuda.stream(stream):
            for _ in range(2):  # warm-up: cuDNN autotuning and allocations happen outside the capture
                fn(self.static_in)
        torch.cuda.current_stream(x.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(self.graph):
            self.static_out: dict[str, torch.Tensor] = fn(self.static_in)

    def run(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.static_in.copy_(x)
        self.graph.replay()
        # The outputs live in the graph's memory pool and are overwritten by the next replay.
        return {k: v.clone() for k, v in self.static_out.items()}


def _mkldnn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


# torch's own probe per dtype and the CPU features its oneDNN convolutions need (torch's error message).
_MKLDNN_LOW_PRECISION: dict[torch.dtype, tuple[str, str]] = {
    torch.bfloat16: ("_is_mkldnn_bf16_supported", "avx512bw, avx512vl and avx512dq, or avx_ne_convert"),
    torch.float16: ("_is_mkldnn_fp16_supported", "avx512_fp16 or avx_ne_convert"),
}


def mkldnn_dtype_unsupported(dtype: torch.dtype) -> str | None:
    """Why oneDNN cannot run ``dtype`` convolutions on this CPU, or None when it can.

    Asked of torch each time (``torch.ops.mkldnn._is_mkldnn_bf16_supported`` and its fp16 twin), never
    assumed: the same wheel runs on CPUs with and without the instructions. Only bf16 and fp16 depend on
    the CPU; other dtypes give None.
    """
    if dtype not in _MKLDNN_LOW_PRECISION:
        return None
    probe, features = _MKLDNN_LOW_PRECISION[dtype]
    if not _mkldnn_available():
        return "this torch has no oneDNN fused convolutions"
    supported = getattr(torch.ops.mkldnn, probe, None)
    if supported is None or not supported():
        return f"its oneDNN {str(dtype).removeprefix('torch.')} path needs the CPU features {features}"
    return None


def fuse(
    model: CORnetS,
    *,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = True,
    mkldnn: bool | None = None,
    winograd: bool | None = None,
    gemm: bool = True,
    cuda_graph: bool = False,
) -> FusedCORnetS:
    """An inference CORnet-S computing what ``model.eval()`` computes, faster.

    ``model`` is not modified. BatchNorms are folded with their running statistics, so the result
    matches ``model`` in eval mode whatever mode ``model`` is in. Move ``model`` to its device first.

    Args:
        model: The eager :class:`~fastalign.models.CORnetS`.
        dtype: Compute dtype (float32, bfloat16 or float16; float64 too, without oneDNN). Weights are
            folded in float64 and cast once, which is what autocast to this dtype computes without
            casting the weights on every call. bf16/fp16 models on a CPU whose oneDNN cannot run that
            dtype (:func:`mkldnn_dtype_unsupported`) compute in float32 and return outputs in ``dtype``
            (``FusedCORnetS.compute_dtype`` says which).
        channels_last: NHWC activations and weights.
        mkldnn: Use oneDNN's fused conv kernels on CPU when autograd is not recording (default: when
            available for the compute dtype). True for bf16/fp16 on a CPU without oneDNN support for
            that dtype raises NotImplementedError naming the missing CPU features.
        winograd: Run the recurrent stride-1 3x3 convs as Winograd F(2x2, 3x3): 2.25x fewer multiply-adds
            in those convs, 56% of the network's FLOPs (default: for float32/float64 compute on the CPU,
            the float32 fallback of bf16/fp16 included, where it is faster than oneDNN's direct convs;
            on GPUs cuDNN picks its own algorithms). True needs dtype float32 or float64.
        gemm: On CPU with channels_last, run 3x3 convs that have fewer output pixels than output channels
            (IT's strided conv) as one im2col matrix product instead of oneDNN's weight-bound direct conv.
        cuda_graph: Capture CUDA calls without autograd in CUDA graphs, one per input shape and call
            pattern (the first call of each captures; later ones replay).

    Returns:
        A :class:`FusedCORnetS` in eval mode.
    """
    if not isinstance(model, CORnetS):
        raise TypeError(f"fuse: model must be a CORnetS, got {type(model).__name__}")
    if dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        raise ValueError(f"fuse: dtype must be float32, bfloat16, float16 or float64, got {dtype!r}")
    if cuda_graph and not torch.cuda.is_available():
        raise NotImplementedError("fuse: cuda_graph=True needs a CUDA device; torch sees none")
    fused = FusedCORnetS(
        model,
        dtype=dtype,
        channels_last=channels_last,
        mkldnn=mkldnn,
        winograd=winograd,
        gemm=gemm,
        cuda_graph=cuda_graph,
    )
    device = next(model.parameters()).device
    return fused.to(device)
