"""Saliency checked on its defining properties: integrated gradients' completeness and its definition as a
path integral, the frequency split's exactness, Grad-CAM's non-negativity, its zeros where the model reads
nothing and its equality with captum's LayerGradCam, and a planted channel and time window found."""

from __future__ import annotations

import functools
import math

import captum.attr
import numpy as np
import pytest
import torch

from fastalign.data import normalize_embeddings
from fastalign.eval.saliency import EEG_BANDS, Saliency, grad_cam, integrated_gradients, saliency
from fastalign.models.encoders import ATMS, NICE, EEGNetV4
from fastalign.train.decoding import Decoder

C, T, D = 5, 100, 8


def _calibrated(model: torch.nn.Module, n_channels: int = C, n_times: int = T) -> torch.nn.Module:
    """BatchNorm running statistics of random trials, as training leaves them: in eval mode the features
    are then scaled to unit variance and the output depends on the input, not mostly on the biases."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in norms:
        bn.momentum = None  # a plain average over the batches below
    model.train()
    with torch.no_grad():
        model(torch.randn(32, n_channels, n_times, generator=torch.Generator().manual_seed(99)).double())
    return model.eval()


def _nice(n_channels: int = C, n_times: int = T, seed: int = 0) -> NICE:
    torch.manual_seed(seed)
    return _calibrated(NICE(n_channels, n_times, D, n_filters=4).double(), n_channels, n_times)


def _data(
    n: int = 3, n_channels: int = C, n_times: int = T, seed: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, n_channels, n_times, generator=g, dtype=torch.float64)
    return x, torch.randn(n, D, generator=g, dtype=torch.float64)


def _embedded(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


def _cosine(model: torch.nn.Module, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """The target written out: cosine similarity of the mean-centred embeddings, eval mode."""
    z = _embedded(model, x)
    z = z - z.mean(-1, keepdim=True)
    e = e - e.mean(-1, keepdim=True)
    return torch.nn.functional.cosine_similarity(z, e, dim=-1)


# ---------------------------------------------------------------------------------------------- IG


@pytest.mark.parametrize("baseline", ["zeros", "constant", "per-trial"])
def test_ig_completeness(baseline: str) -> None:
    """Attributions sum to f(x) - f(baseline), whatever the baseline; f is the cosine similarity."""
    model, (x, noise) = _nice(), _data()
    e = _embedded(model, x) + 0.3 * noise  # trials close to their images: a large f(x) - f(baseline)
    base = {
        "zeros": None,
        "constant": torch.full((C, T), 0.3, dtype=torch.float64),
        "per-trial": 0.5
        * torch.randn(3, C, T, dtype=torch.float64, generator=torch.Generator().manual_seed(5)),
    }[baseline]
    r = integrated_gradients(model, x, e, baseline=base, n_steps=64)
    b = torch.zeros_like(x) if base is None else base.expand_as(x)
    torch.testing.assert_close(r.similarity, _cosine(model, x, e), rtol=0, atol=1e-12)
    torch.testing.assert_close(r.baseline_similarity, _cosine(model, b, e), rtol=0, atol=1e-12)
    total = r.attributions.sum(dim=(1, 2, 3))
    gap = r.similarity - r.baseline_similarity
    assert gap.abs().min() > 0.02
    # the quadrature's error (the integrand has the kinks of ELU's second derivative), reported as delta
    torch.testing.assert_close(total, gap, rtol=2e-3, atol=1e-6)
    torch.testing.assert_close(total - gap, r.convergence_delta, rtol=0, atol=1e-12)


def test_ig_is_the_path_integral() -> None:
    """captum's quadrature against the definition, (x - b) * the mean gradient on the straight path, by a
    fine midpoint rule computed with autograd here; for a smooth model (NICE's ELU has kinks in its
    derivative, which slow every quadrature's convergence)."""
    torch.manual_seed(2)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(C * T, 16), torch.nn.Tanh(), torch.nn.Linear(16, D)
    )
    model = model.double()
    x, e = _data(n=2)
    r = integrated_gradients(model, x, e, n_steps=32)
    steps = 500
    alphas = (torch.arange(steps, dtype=torch.float64) + 0.5) / steps
    path = (alphas[:, None, None, None] * x).reshape(-1, C, T).requires_grad_(True)
    f = (normalize_embeddings(model(path)) * normalize_embeddings(e).repeat(steps, 1)).sum()
    (grad,) = torch.autograd.grad(f, path)
    expected = x * grad.reshape(steps, 2, C, T).mean(0)
    torch.testing.assert_close(
        r.attributions[:, 0], expected, rtol=0, atol=1e-5 * float(expected.abs().max())
    )


def test_ig_bands_split_exactly() -> None:
    """The bands' attributions add up to the time-domain ones sample by sample, and a 10 Hz input puts
    everything in alpha (8-13 Hz): the other bands get nothing."""
    model = _nice()
    _, e = _data(n=2)
    t = np.arange(T) / 100.0
    x = torch.from_numpy(np.tile(np.sin(2 * np.pi * 10 * t), (2, C, 1)) * np.arange(1, C + 1)[:, None])
    noise, _ = _data(n=2, seed=4)  # every frequency, band edges included
    for trials in (noise, x):
        whole = integrated_gradients(model, trials, e, n_steps=24)
        split = integrated_gradients(model, trials, e, n_steps=24, sfreq=100.0)
        torch.testing.assert_close(split.attributions.sum(1), whole.attributions[:, 0], rtol=0, atol=1e-12)
    assert [b[0] for b in split.bands] == [b[0] for b in EEG_BANDS]
    assert split.attributions.shape == (2, len(EEG_BANDS), C, T)
    alpha = [b[0] for b in split.bands].index("alpha")
    others = torch.cat([split.attributions[:, :alpha], split.attributions[:, alpha + 1 :]], dim=1)
    assert others.abs().max() < 1e-12 < split.attributions[:, alpha].abs().max()


# ---------------------------------------------------------------------------------------------- Grad-CAM


def _ignore_channel(model: torch.nn.Module, channel: int) -> None:
    """Zero every weight that reads ``channel``: the spatial convolution's column for it."""
    spatial = model.conv.tsconv[4] if isinstance(model, NICE) else model.conv_spatial
    with torch.no_grad():
        spatial.weight[:, :, channel, :] = 0.0


@pytest.mark.parametrize("kind", ["nice", "eegnetv4"])
def test_grad_cam_nonnegative_and_zero_on_an_ignored_channel(kind: str) -> None:
    torch.manual_seed(0)
    model = _nice() if kind == "nice" else _calibrated(EEGNetV4(C, T, D).double())
    _ignore_channel(model, 2)
    x, e = _data()
    for pool in ("time", "none"):
        cam = grad_cam(model, x, e, pool=pool)
        assert cam.shape == (3, C, T) and cam.dtype == torch.float64
        assert cam.min() >= 0
        assert torch.count_nonzero(cam[:, 2]) == 0
        assert (cam[:, [0, 1, 3, 4]].sum(-1) > 0).all()
    # the original pooling over channels too maps the ignored channel's filtered input: not zero
    assert grad_cam(model, x, e, pool="all")[:, 2].abs().max() > 0


def test_grad_cam_all_is_captums_layer_grad_cam() -> None:
    """pool="all" equals captum's LayerGradCam at the same layer; NICE's valid convolution of kernel 25
    puts output t' at input sample t' + 12, where the interpolation is exact."""
    model, (x, e) = _nice(), _data()
    ours = grad_cam(model, x, e, pool="all")
    model.eval()
    layer = model.conv.tsconv[0]

    def target(inputs: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return (normalize_embeddings(model(inputs)) * normalize_embeddings(emb)).sum(-1)

    ref = captum.attr.LayerGradCam(target, layer).attribute(
        x, additional_forward_args=(e,), relu_attributions=True
    )
    n_out = T - 24
    assert ref.shape == (3, 1, C, n_out)
    torch.testing.assert_close(ours[:, :, 12 : 12 + n_out], ref[:, 0].detach(), rtol=1e-10, atol=1e-14)
    # constant beyond the first and last window centres
    torch.testing.assert_close(ours[:, :, :12], ours[:, :, 12:13].expand(-1, -1, 12))


def test_grad_cam_after_the_spatial_convolution_is_the_same_for_every_channel() -> None:
    """AlignVis's layer (projection.0, height 1): one map, repeated over the channels."""
    model, (x, e) = _nice(), _data()
    cam = grad_cam(model, x, e, layer="conv.projection")
    assert cam.shape == (3, C, T)
    torch.testing.assert_close(cam, cam[:, :1].expand(-1, C, -1))
    assert cam.min() >= 0 and cam.max() > 0


# ---------------------------------------------------------------------------------------------- planted


def test_a_planted_channel_and_time_window_are_found() -> None:
    """A NICE that reads only channel 1 (the spatial filters' other columns zero) and only pooled positions
    10-12 (the head's other inputs zero) depends on samples 50-134 of channel 1 alone (pooling windows of
    51 at stride 5 after a kernel of 25): integrated gradients and Grad-CAM put all their mass there."""
    n_ch, n_t, filters = 4, 150, 3
    torch.manual_seed(3)
    model = _calibrated(NICE(n_ch, n_t, D, n_filters=filters).double(), n_ch, n_t)
    with torch.no_grad():
        for c in (0, 2, 3):
            model.conv.tsconv[4].weight[:, :, c, :] = 0.0
        keep = torch.zeros(model.conv.out_length, filters, dtype=torch.bool)
        keep[10:13] = True  # features flatten in (time, filter) order
        model.head.linear.weight[:, ~keep.flatten()] = 0.0
    x, e = _data(n=2, n_channels=n_ch, n_times=n_t)
    s = saliency(model, x, e, sfreq=150.0, n_steps=24, ch_names=["O1", "Oz", "O2", "Pz"])
    window = np.zeros(n_t, dtype=bool)
    window[50:135] = True
    ig = np.abs(s.integrated_gradients)
    assert ig[:, [0, 2, 3]].max() == 0 and ig[:, 1, ~window].max() == 0 and ig[:, 1, window].max() > 0
    assert int(np.argmax(np.abs(s.channel_map()))) == 1
    # Grad-CAM: the channel with pooling over time; the window too without pooling (HiResCAM)
    assert s.grad_cam[:, [0, 2, 3]].max() == 0 < s.grad_cam[:, 1].max()
    hires = grad_cam(model, x, e, pool="none").numpy()
    assert hires[:, 1, ~window].max() == 0 < hires[:, 1, window].max()
    assert all(window[np.abs(s.time_course()).argmax(axis=1)])


# ---------------------------------------------------------------------------------------------- saliency()


def test_saliency_of_a_decoder() -> None:
    """A Decoder's (z, temperature) output, the result's axes and summaries, and the model left as it was:
    its train mode back and no parameter gradient."""
    decoder = Decoder(_nice(), 0.04, learn_temperature=True).double().train()
    x, e = _data(n=2)
    s = saliency(decoder, x, e, sfreq=100.0, tmin=-0.2, n_steps=16)
    assert isinstance(s, Saliency)
    assert decoder.training and all(m.training for m in decoder.modules())
    assert all(p.grad is None for p in decoder.parameters())
    np.testing.assert_allclose(s.times, -0.2 + np.arange(T) / 100.0)
    assert s.ch_names == tuple(f"ch{i}" for i in range(C))
    assert s.band_attributions.shape == (2, len(EEG_BANDS), C, T) and s.grad_cam.shape == (2, C, T)
    assert s.band_names == ("delta", "theta", "alpha", "beta", "gamma")
    # a Decoder embeds in float32
    np.testing.assert_allclose(
        s.band_contributions().sum(1), s.similarity - s.baseline_similarity + s.convergence_delta, atol=1e-6
    )
    np.testing.assert_allclose(
        s.channel_map().sum(), (s.similarity - s.baseline_similarity + s.convergence_delta).mean()
    )
    np.testing.assert_allclose(s.channel_map("grad_cam"), s.grad_cam.mean(axis=(0, 2)))
    np.testing.assert_allclose(s.time_course("alpha"), s.band_attributions[:, 2].sum(1))
    with pytest.raises(ValueError, match="Saliency: method must be"):
        s.channel_map("beta2")


def test_without_captum_saliency_stops_before_any_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    # it ran Grad-CAM in full, then found captum missing
    import sys

    module = sys.modules[saliency.__module__]  # fastalign.eval.saliency (the package's name is the function)

    calls = []
    monkeypatch.setattr(module, "grad_cam", lambda *a, **k: calls.append(1))
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    x, e = _data(n=1)
    with pytest.raises(ImportError, match=r"integrated_gradients needs captum \(pip install captum"):
        saliency(_nice().double(), x, e, sfreq=100.0)
    assert calls == []


# ---------------------------------------------------------------------------------------------- errors


def _bad_calls() -> list[tuple[str, object, type[Exception], str]]:
    model, (x, e) = _nice(), _data(n=2)
    gc, ig = functools.partial(grad_cam, model), functools.partial(integrated_gradients, model)
    atms = ATMS(C, T, D).double()
    nan = x.clone().fill_(math.nan)
    return [
        ("pool", lambda: gc(x, e, pool="channels"), ValueError, r"grad_cam: pool must be one of"),
        ("layer name", lambda: gc(x, e, layer="conv.nope"), ValueError, r"not a submodule"),
        ("foreign layer", lambda: gc(x, e, layer=torch.nn.Conv2d(1, 1, 1)), ValueError, r"not a submodule"),
        ("head layer", lambda: gc(x, e, layer="head.linear"), ValueError, r"must output \(B, K"),
        ("atms default", lambda: grad_cam(atms, x, e), ValueError, r"pass layer="),
        ("model", lambda: grad_cam(len, x, e), TypeError, r"grad_cam: model must be a torch.nn.Module"),
        ("nan", lambda: ig(nan, e), ValueError, r"integrated_gradients: x must be finite"),
        ("emb rows", lambda: ig(x, e[:1]), ValueError, r"image_emb must have shape \(2, d\)"),
        ("x dims", lambda: gc(x[0], e), ValueError, r"x must have shape \(B, n_channels, n_times\)"),
        ("ints", lambda: gc(x.long(), e), TypeError, r"x must be a floating-point tensor"),
        ("bands no sfreq", lambda: ig(x, e, bands=EEG_BANDS), ValueError, r"need sfreq"),
        (
            "bands short",
            lambda: ig(x, e, sfreq=100.0, bands=[("a", 0, 20)]),
            ValueError,
            r"Nyquist \(50 Hz\)",
        ),
        ("bands gap", lambda: ig(x, e, sfreq=100.0, bands=[("a", 0, 8), ("b", 9, 60)]), ValueError, r"gaps"),
        ("n_steps", lambda: ig(x, e, n_steps=0), ValueError, r"n_steps must be"),
        ("baseline", lambda: ig(x, e, baseline=torch.zeros(C, T + 1)), ValueError, r"shape \(5, 100\)"),
        (
            "ch_names",
            lambda: saliency(model, x, e, sfreq=100.0, ch_names=["a"]),
            ValueError,
            r"5 channel names",
        ),
    ]


@pytest.mark.parametrize("case", _bad_calls(), ids=lambda c: c[0])
def test_bad_input_is_refused(case: tuple[str, object, type[Exception], str]) -> None:
    _, call, error, pattern = case
    with pytest.raises(error, match=pattern):
        call()
