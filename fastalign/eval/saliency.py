"""Saliency of a trained brain encoder over time, frequency and channels.

What is explained: the similarity of the encoder's embedding of a trial to the embedding of the trial's
own image, ``f(x) = <n(encoder(x)), n(image)>`` with ``n`` the mean-centring and L2 normalisation that
training and retrieval use (:func:`fastalign.data.normalize_embeddings`): the cosine similarity that
retrieval ranks by. It is what AlignVis's Grad-CAM backpropagates (src/evaluation/gradcam.py:
``output.backward(target)`` with both sides normalised). The model is put in eval mode (dropout off,
BatchNorm's running statistics) for the attribution and put back afterwards; no parameter gradient is
touched.

- :func:`grad_cam`: Grad-CAM (Selvaraju et al. 2017) at a convolution, by default the encoder's temporal
  convolution (NICE's first ``Conv2d(1, F, (1, 25))``, EEGNet-4's ``conv_temporal``), whose output keeps
  the channels and the time axis. ``pool="time"`` (default) averages the gradients over time for each
  EEG channel separately, ``pool="all"`` over channels and time as in the original method (captum's
  ``LayerGradCam``), ``pool="none"`` not at all (gradient x activation per position, HiResCAM, Draelos
  & Carin 2020). Channels are not a translation axis of these encoders (the spatial convolution has a
  weight per channel), so pooling the gradient over them mixes unrelated electrodes: with ``"all"`` a
  channel the model ignores still gets the map of its filtered input; with ``"time"`` and ``"none"`` it
  gets exactly zero. The (channels, output times) map is carried to the input's samples by linear
  interpolation between the convolution windows' centres (held constant beyond the first and last),
  which keeps it non-negative; AlignVis resamples with a bicubic interpolation, which can overshoot
  below zero.
- :func:`integrated_gradients`: integrated gradients (Sundararajan et al. 2017) through captum, along the
  straight line from a baseline (default zeros: no signal, as the channel-normalised EEG has zero mean
  per channel) to the trial. Completeness: the attributions of a trial sum to ``f(x) - f(baseline)`` up
  to the quadrature error, which is reported (``convergence_delta``). **Frequency**: with ``sfreq`` the
  difference ``x - baseline`` is split by FFT masks into band-limited parts, one per band, that sum to
  it exactly (the bands cover 0 Hz to Nyquist without overlap), and the parts are captum's inputs. The
  path is the same line, so the attributions of all bands sum to the time-domain attributions, sample
  by sample, and their total is still ``f(x) - f(baseline)``: each band's share of the similarity, per
  channel and time (``band attribution = <part_b, mean path gradient>``, a cross-spectrum of the input
  and the gradient summed over the band's frequencies).
- :func:`saliency`: both for a set of trials, as a :class:`Saliency` (numpy arrays with times, channel
  names and bands) that :mod:`fastalign.plotting.decoding` draws.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fastalign import _checks
from fastalign._modes import eval_mode
from fastalign.data import normalize_embeddings
from fastalign.models.encoders import NICE, EEGNetV4

__all__ = ["EEG_BANDS", "IGAttributions", "Saliency", "grad_cam", "integrated_gradients", "saliency"]

#: The classical EEG bands in Hz, (name, low, high), covering 0 Hz (with delta) to Nyquist (gamma's
#: ``inf``): the default of :func:`integrated_gradients` and :func:`saliency`.
EEG_BANDS: tuple[tuple[str, float, float], ...] = (
    ("delta", 0.0, 4.0),
    ("theta", 4.0, 8.0),
    ("alpha", 8.0, 13.0),
    ("beta", 13.0, 30.0),
    ("gamma", 30.0, math.inf),
)
POOLS = ("time", "all", "none")


# ---------------------------------------------------------------------------------------------- inputs


def _check_inputs(fn: str, model: Any, x: Any, image_emb: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, image_emb) checked: a module, a finite floating (B, C, T) batch and (B, d) embeddings."""
    if not isinstance(model, nn.Module):
        raise TypeError(_checks.message(fn, "model", "a torch.nn.Module (a brain encoder or Decoder)", model))
    x = _checks.check_tensor(fn, "x", x, shape="(B, n_channels, n_times)", arrays=True)
    _checks.check_floating(fn, "x", x)
    _checks.check_shape(fn, "x", x, (None, None, None), doc="(B, n_channels, n_times)")
    emb = _checks.check_tensor(fn, "image_emb", image_emb, shape="(B, d)", arrays=True)
    _checks.check_floating(fn, "image_emb", emb)
    _checks.check_shape(
        fn, "image_emb", emb, (x.shape[0], None), doc=f"({x.shape[0]}, d) (one per trial of x)"
    )
    if x.shape[0] == 0:
        raise ValueError(f"{fn}: x must hold at least one trial, got shape {tuple(x.shape)}")
    for name, t in (("x", x), ("image_emb", emb)):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{fn}: {name} must be finite, got NaN or inf")
    like = next(iter(model.parameters()), None)
    if like is not None:
        x, emb = x.to(device=like.device, dtype=like.dtype), emb.to(device=like.device, dtype=like.dtype)
    return x, emb


def _embedding(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's embedding: a Decoder's ``(z, temperature)`` gives z, an encoder its output."""
    out = model(x)
    return out[0] if isinstance(out, tuple) else out


def _similarity(model: nn.Module, x: torch.Tensor, image_emb: torch.Tensor) -> torch.Tensor:
    """(B,) cosine similarity of the normalised embeddings of ``x`` and of the image (the target)."""
    z = normalize_embeddings(_embedding(model, x))
    return (z * normalize_embeddings(image_emb).to(z.dtype)).sum(-1)


# ---------------------------------------------------------------------------------------------- Grad-CAM


def _default_layer(fn: str, model: nn.Module) -> nn.Module:
    """The temporal convolution of a NICE or EEGNet-4 encoder (alone or in a Decoder)."""
    encoder = getattr(model, "encoder", model)
    if isinstance(encoder, NICE):
        return encoder.conv.tsconv[0]
    if isinstance(encoder, EEGNetV4):
        return encoder.conv_temporal
    raise ValueError(
        f"{fn}: layer=None picks the temporal convolution of a NICE or EEGNetV4 encoder, but the model's "
        f"encoder is a {type(encoder).__name__}; pass layer= (a Conv2d of the model, or its name)"
    )


def _layer(fn: str, model: nn.Module, layer: Any) -> nn.Module:
    if layer is None:
        return _default_layer(fn, model)
    if isinstance(layer, str):
        try:
            return model.get_submodule(layer)
        except AttributeError:
            names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
            raise ValueError(
                f"{fn}: layer={layer!r} is not a submodule of the model; its convolutions are {names}"
            ) from None
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in model.modules()):
            raise ValueError(f"{fn}: layer (a {type(layer).__name__}) is not a submodule of the model")
        return layer
    raise TypeError(_checks.message(fn, "layer", "None, a submodule of the model or its name (str)", layer))


def _time_weights(n_out: int, n_times: int, conv: nn.Module, n_in: int) -> torch.Tensor:
    """(n_out, n_times) non-negative weights, each column summing to 1, that carry a map over the layer's
    output positions to the input's samples: linear between the positions' centres, constant beyond.

    A Conv2d that reads the input's samples (its input as long as the trial) puts output t' at its
    window's centre; any other layer's outputs are spread evenly over the trial.
    """
    if isinstance(conv, nn.Conv2d) and n_in == n_times:
        k, s, d = conv.kernel_size[1], conv.stride[1], conv.dilation[1]
        pad = conv.padding
        left = (0 if pad == "valid" else d * (k - 1) // 2) if isinstance(pad, str) else pad[1]
        centres = np.arange(n_out) * s - left + d * (k - 1) / 2
    else:
        centres = (np.arange(n_out) + 0.5) * n_times / n_out - 0.5
    grid = np.arange(n_times, dtype=np.float64)
    eye = np.eye(n_out)
    return torch.from_numpy(np.stack([np.interp(grid, centres, eye[i]) for i in range(n_out)]))


def grad_cam(
    model: nn.Module,
    x: torch.Tensor,
    image_emb: torch.Tensor,
    *,
    layer: nn.Module | str | None = None,
    pool: str = "time",
) -> torch.Tensor:
    """Grad-CAM of the similarity to each trial's image at a convolution, on the input's channels x samples.

    ``map = ReLU(sum_k w_k * A_k)`` with ``A_k`` the layer's k-th output map for the trial and ``w_k``
    the gradient of the similarity with respect to ``A_k``, averaged over time per channel (``pool=
    "time"``), over channels and time (``"all"``, the original Grad-CAM, as captum's ``LayerGradCam``)
    or not averaged (``"none"``: gradient x activation, HiResCAM). See the module docstring for why
    ``"time"`` is the default.

    Args:
        model: a brain encoder, or a Decoder (its ``(z, temperature)`` output: z is used).
        x: (B, C, T) trials, as the model takes them.
        image_emb: (B, d) the embedding of each trial's own image.
        layer: a Conv2d of the model (or its dotted name) whose output is (B, K, C or 1, L); default
            the temporal convolution of NICE or EEGNet-4. A map of height 1 (after the spatial
            convolution, AlignVis's ``projection.0``) is the same for every channel.
        pool: "time", "all" or "none".

    Returns:
        (B, C, T) float64 CPU tensor, >= 0, not normalised (0 where the model does not use the input).

    Raises:
        TypeError, ValueError: a bad model, input, embedding, layer or pool; a layer whose output is not
            4-d with height C or 1.
    """
    fn = "grad_cam"
    x, emb = _check_inputs(fn, model, x, image_emb)
    # the input needs a gradient too, so that a frozen model's activations still have a graph
    x = x.detach().requires_grad_(True)
    pool = _checks.check_choice(fn, "pool", pool, POOLS)
    module = _layer(fn, model, layer)
    seen: dict[str, Any] = {}

    def hook(_: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        seen["activation"], seen["n_in"] = output, inputs[0].shape[-1] if inputs else -1

    handle = module.register_forward_hook(hook)
    try:
        with eval_mode(model), torch.enable_grad():
            f = _similarity(model, x, emb)
            if "activation" not in seen:
                raise ValueError(
                    f"{fn}: layer (a {type(module).__name__}) did not run in the model's forward"
                )
            act = seen["activation"]
            if not isinstance(act, torch.Tensor) or act.dim() != 4 or act.shape[2] not in (1, x.shape[1]):
                shape = tuple(act.shape) if isinstance(act, torch.Tensor) else type(act).__name__
                raise ValueError(
                    f"{fn}: layer must output (B, K, {x.shape[1]} or 1, L) maps (channels or one row), got "
                    f"{shape}"
                )
            (grad,) = torch.autograd.grad(f.sum(), act)
    finally:
        handle.remove()
    act, grad = act.detach().double(), grad.double()
    dims = {"time": (3,), "all": (2, 3), "none": ()}[pool]
    weights = grad.mean(dim=dims, keepdim=True) if dims else grad
    cam = torch.relu((weights * act).sum(dim=1))  # (B, C or 1, L)
    cam = cam @ _time_weights(cam.shape[-1], x.shape[-1], module, seen["n_in"]).to(cam)
    return cam.expand(-1, x.shape[1], -1).cpu().contiguous()


# ---------------------------------------------------------------------------------------------- IG


@dataclass(frozen=True)
class IGAttributions:
    """Integrated gradients of the similarity to each trial's image, by frequency band.

    Attributes:
        attributions: (B, n_bands, C, T) float64; summed over bands, the time-domain integrated gradients;
            summed over everything, ``similarity - baseline_similarity + convergence_delta`` per trial.
        bands: (name, low Hz, high Hz) per band; one band ("all", 0, inf) when no ``sfreq`` was given.
        similarity: (B,) f(x).
        baseline_similarity: (B,) f(baseline).
        convergence_delta: (B,) captum's: the total attribution minus (f(x) - f(baseline)), the error of
            the quadrature.
    """

    attributions: torch.Tensor
    bands: tuple[tuple[str, float, float], ...]
    similarity: torch.Tensor
    baseline_similarity: torch.Tensor
    convergence_delta: torch.Tensor


def _check_bands(fn: str, bands: Any, sfreq: float) -> tuple[tuple[str, float, float], ...]:
    """Bands as (name, low, high) that tile [0, Nyquist] in order: every frequency in exactly one."""
    expected = "a sequence of (name, low Hz, high Hz) covering 0 Hz to Nyquist in order, without gaps"
    if isinstance(bands, str) or not isinstance(bands, Sequence) or not bands:
        raise TypeError(_checks.message(fn, "bands", expected, bands))
    out = []
    for band in bands:
        ok = isinstance(band, Sequence) and not isinstance(band, str) and len(band) == 3
        if not ok or not isinstance(band[0], str) or not all(_checks.is_real(v) for v in band[1:]):
            raise TypeError(f"{fn}: bands must hold (name, low Hz, high Hz) triples, got {band!r}")
        out.append((band[0], float(band[1]), float(band[2])))
    names = [b[0] for b in out]
    nyquist = sfreq / 2
    if out[0][1] != 0.0 or out[-1][2] < nyquist or len(set(names)) != len(names):
        raise ValueError(
            f"{fn}: bands must start at 0 Hz, reach Nyquist ({nyquist:g} Hz) and have distinct names, "
            f"got {out}"
        )
    for (_, lo, hi), (_, nxt, _) in zip(out, [*out[1:], ("", math.inf, math.inf)], strict=True):
        if not lo < hi or (nxt != math.inf and nxt != hi):
            raise ValueError(f"{fn}: bands must be {expected}, got {out}")
    return tuple(out)


def _band_parts(
    diff: torch.Tensor, bands: tuple[tuple[str, float, float], ...], sfreq: float
) -> list[torch.Tensor]:
    """``diff`` split along time into one band-limited part per band; the parts sum to ``diff``."""
    n = diff.shape[-1]
    spectrum = torch.fft.rfft(diff, dim=-1)
    freqs = torch.fft.rfftfreq(n, d=1.0 / sfreq, dtype=torch.float64)
    parts = []
    for i, (_, lo, hi) in enumerate(bands):
        # the last band keeps Nyquist itself; the others are [lo, hi)
        mask = (freqs >= lo) & ((freqs < hi) | (i == len(bands) - 1))
        parts.append(torch.fft.irfft(spectrum * mask.to(spectrum.device), n=n, dim=-1).to(diff.dtype))
    return parts


def _captum(fn: str) -> Any:
    """captum's IntegratedGradients, or an ImportError saying how to install it."""
    try:
        from captum.attr import IntegratedGradients
    except ImportError as exc:
        raise ImportError(
            f"{fn} needs captum (pip install captum, or fastalign's 'saliency' extra): {exc}"
        ) from exc
    return IntegratedGradients


def integrated_gradients(
    model: nn.Module,
    x: torch.Tensor,
    image_emb: torch.Tensor,
    *,
    baseline: torch.Tensor | None = None,
    n_steps: int = 50,
    sfreq: float | None = None,
    bands: Sequence[tuple[str, float, float]] | None = None,
    batch_size: int = 64,
) -> IGAttributions:
    """Integrated gradients of the similarity to each trial's image, by frequency band (captum).

    Args:
        model: a brain encoder or a Decoder.
        x: (B, C, T) trials.
        image_emb: (B, d) the embedding of each trial's own image.
        baseline: (C, T) or (B, C, T) reference input; default zeros.
        n_steps: points of captum's Gauss-Legendre quadrature along the path.
        sfreq: the sampling rate in Hz; with it the attributions are split by ``bands``.
        bands: (name, low Hz, high Hz) tiling 0 Hz to Nyquist (``inf`` for "up to Nyquist"); default
            :data:`EEG_BANDS`. Needs ``sfreq``.
        batch_size: at most this many inputs per forward pass (trials x path points); trials are
            attributed in groups so that each forward holds at most this many.

    Returns:
        An :class:`IGAttributions` (float64, CPU).

    Raises:
        ImportError: captum is not installed.
        TypeError, ValueError: bad arguments, NaN or inf in the inputs, ``bands`` without ``sfreq``.
    """
    fn = "integrated_gradients"
    x, emb = _check_inputs(fn, model, x, image_emb)
    n_steps = _checks.check_int(fn, "n_steps", n_steps, minimum=1)
    batch_size = _checks.check_int(fn, "batch_size", batch_size, minimum=1)
    sfreq = _checks.check_real(fn, "sfreq", sfreq, positive=True, none=True)
    if sfreq is None and bands is not None:
        raise ValueError(f"{fn}: bands are in Hz and need sfreq (the sampling rate), got sfreq=None")
    band_list = (("all", 0.0, math.inf),) if sfreq is None else _check_bands(fn, bands or EEG_BANDS, sfreq)
    base = torch.zeros_like(x) if baseline is None else _baseline(fn, baseline, x)
    integrated = _captum(fn)

    def forward(*args: torch.Tensor) -> torch.Tensor:
        *parts, start, target = args
        return _similarity(model, start + sum(parts), target)

    ig = integrated(forward)
    group = max(1, batch_size // n_steps)
    pieces: list[tuple[torch.Tensor, ...]] = []
    with eval_mode(model):
        for i in range(0, len(x), group):
            sl = slice(i, i + group)
            parts = tuple(_band_parts(x[sl] - base[sl], band_list, sfreq) if sfreq else [x[sl] - base[sl]])
            attr, delta = ig.attribute(
                parts, baselines=tuple(0.0 for _ in parts), additional_forward_args=(base[sl], emb[sl]),
                n_steps=n_steps, internal_batch_size=max(batch_size, len(parts[0])),
                return_convergence_delta=True,
            )  # fmt: skip
            with torch.no_grad():
                ends = (_similarity(model, x[sl], emb[sl]), _similarity(model, base[sl], emb[sl]))
            pieces.append((torch.stack([a.detach() for a in attr], dim=1), *ends, delta.detach()))
    attributions, similarity, base_similarity, delta = (
        torch.cat([p[k] for p in pieces]).double().cpu() for k in range(4)
    )
    return IGAttributions(attributions, band_list, similarity, base_similarity, delta)


def _baseline(fn: str, baseline: Any, x: torch.Tensor) -> torch.Tensor:
    b = _checks.check_tensor(fn, "baseline", baseline, shape="(C, T) or (B, C, T)", arrays=True)
    _checks.check_floating(fn, "baseline", b)
    if tuple(b.shape) not in (tuple(x.shape[1:]), tuple(x.shape)):
        raise ValueError(
            f"{fn}: baseline must have shape {tuple(x.shape[1:])} or {tuple(x.shape)} (x's), "
            f"got {tuple(b.shape)}"
        )
    if not bool(torch.isfinite(b).all()):
        raise ValueError(f"{fn}: baseline must be finite, got NaN or inf")
    return b.to(x).expand_as(x)


# ---------------------------------------------------------------------------------------------- both


@dataclass(frozen=True)
class Saliency:
    """Grad-CAM and integrated gradients of n trials, by channel, time and frequency band (numpy).

    Attributes:
        grad_cam: (n, C, T) >= 0.
        band_attributions: (n, n_bands, C, T) integrated gradients per band (see
            :func:`integrated_gradients`); ``integrated_gradients`` is their sum over bands.
        bands: (name, low Hz, high Hz) per band.
        times: (T,) seconds of the samples.
        ch_names: C channel names.
        similarity, baseline_similarity, convergence_delta: (n,) as in :class:`IGAttributions`.
    """

    grad_cam: np.ndarray
    band_attributions: np.ndarray
    bands: tuple[tuple[str, float, float], ...]
    times: np.ndarray
    ch_names: tuple[str, ...]
    similarity: np.ndarray
    baseline_similarity: np.ndarray
    convergence_delta: np.ndarray

    @property
    def integrated_gradients(self) -> np.ndarray:
        """(n, C, T) time-domain integrated gradients (all bands)."""
        return self.band_attributions.sum(axis=1)

    @property
    def band_names(self) -> tuple[str, ...]:
        return tuple(b[0] for b in self.bands)

    def _values(self, method: str) -> np.ndarray:
        if method == "grad_cam":
            return self.grad_cam
        if method == "integrated_gradients":
            return self.integrated_gradients
        if method in self.band_names:
            return self.band_attributions[:, self.band_names.index(method)]
        raise ValueError(
            _checks.message(
                "Saliency",
                "method",
                f"'grad_cam', 'integrated_gradients' or a band {self.band_names}",
                method,
            )
        )

    def channel_map(self, method: str = "integrated_gradients") -> np.ndarray:
        """(C,) per channel: Grad-CAM's mean over trials and time, or (integrated gradients, a band's
        attributions) the channel's contribution summed over time, averaged over trials."""
        v = self._values(method)
        return v.mean(axis=(0, 2)) if method == "grad_cam" else v.sum(axis=2).mean(axis=0)

    def time_course(self, method: str = "integrated_gradients") -> np.ndarray:
        """(n, T) per trial: Grad-CAM's mean over channels, or the attributions summed over channels."""
        v = self._values(method)
        return v.mean(axis=1) if method == "grad_cam" else v.sum(axis=1)

    def band_contributions(self) -> np.ndarray:
        """(n, n_bands) each band's share of ``similarity - baseline_similarity`` per trial."""
        return self.band_attributions.sum(axis=(2, 3))


def saliency(
    model: nn.Module,
    x: torch.Tensor,
    image_emb: torch.Tensor,
    *,
    sfreq: float,
    tmin: float = 0.0,
    ch_names: Sequence[str] | None = None,
    bands: Sequence[tuple[str, float, float]] | None = None,
    baseline: torch.Tensor | None = None,
    n_steps: int = 50,
    layer: nn.Module | str | None = None,
    pool: str = "time",
    batch_size: int = 64,
) -> Saliency:
    """Grad-CAM and integrated gradients (by band) of trials, with their times and channel names.

    Args:
        model, x, image_emb: as :func:`grad_cam` (e.g. test trials and their images' embeddings).
        sfreq: the sampling rate in Hz (THINGS-EEG2 as decoded: 250).
        tmin: the time of the first sample in seconds (THINGS-EEG2 as decoded: 0).
        ch_names: the C channel names (default "ch0", "ch1", ...); standard 10-20 names let
            :func:`fastalign.plotting.plot_saliency_topomaps` place them.
        bands, baseline, n_steps, batch_size: as :func:`integrated_gradients`.
        layer, pool: as :func:`grad_cam`.

    Returns:
        A :class:`Saliency`.
    """
    fn = "saliency"
    sfreq = _checks.check_real(fn, "sfreq", sfreq, positive=True)
    tmin = _checks.check_real(fn, "tmin", tmin)
    x_t = _checks.check_tensor(fn, "x", x, shape="(B, n_channels, n_times)", arrays=True)
    _checks.check_shape(fn, "x", x_t, (None, None, None), doc="(B, n_channels, n_times)")
    n_ch = x_t.shape[1]
    if ch_names is None:
        names = tuple(f"ch{i}" for i in range(n_ch))
    elif isinstance(ch_names, str) or len(ch_names) != n_ch or not all(isinstance(c, str) for c in ch_names):
        raise ValueError(_checks.message(fn, "ch_names", f"{n_ch} channel names (x's channels)", ch_names))
    else:
        names = tuple(ch_names)
    _captum("integrated_gradients")  # before Grad-CAM's pass, not after it
    cam = grad_cam(model, x, image_emb, layer=layer, pool=pool)
    ig = integrated_gradients(
        model,
        x,
        image_emb,
        baseline=baseline,
        n_steps=n_steps,
        sfreq=sfreq,
        bands=bands,
        batch_size=batch_size,
    )
    return Saliency(
        grad_cam=cam.numpy(),
        band_attributions=ig.attributions.numpy(),
        bands=ig.bands,
        times=tmin + np.arange(x_t.shape[-1]) / sfreq,
        ch_names=names,
        similarity=ig.similarity.numpy(),
        baseline_similarity=ig.baseline_similarity.numpy(),
        convergence_delta=ig.convergence_delta.numpy(),
    )
