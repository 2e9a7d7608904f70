"""rdm and time_resolved_rdms against scipy's pdist and rsatoolbox's calc_rdm, across backends."""

from __future__ import annotations

import numpy as np
import pytest
import rsatoolbox as rt
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.spatial.distance import pdist

import fastalign as fa
from fastalign import _ext
from fastalign.rsa import api, common, torch_chunked

CPP = ["cpp"] if _ext.why_ops_missing(api._CPP_OPS) is None else []

PDIST = {"correlation": "correlation", "cosine": "cosine", "euclidean": "sqeuclidean"}


def _pdist(x: np.ndarray, method: str) -> np.ndarray:
    d = pdist(x, PDIST[method])
    return d / x.shape[1] if method == "euclidean" else d


@pytest.mark.parametrize("backend", ["reference", "torch", *CPP])
@pytest.mark.parametrize("method", ["correlation", "cosine", "euclidean"])
def test_rdm_matches_scipy_float64(method: str, backend: str) -> None:
    x = np.random.default_rng(0).normal(size=(2, 3, 13, 7))
    out = fa.rdm(torch.from_numpy(x), method, backend=backend).numpy()
    assert out.shape == (2, 3, 78)
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(out[i, j], _pdist(x[i, j], method), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["correlation", "euclidean"])
def test_rdm_matches_rsatoolbox(method: str) -> None:
    x = np.random.default_rng(1).normal(size=(11, 9))
    expect = rt.rdm.calc_rdm(rt.data.Dataset(x), method=method).get_vectors()[0]
    np.testing.assert_allclose(fa.rdm(torch.from_numpy(x), method).numpy(), expect, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("use_noise", [False, True])
@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_crossnobis_matches_rsatoolbox(backend: str, use_noise: bool) -> None:
    rng = np.random.default_rng(2)
    n_folds, n, p = 4, 6, 5
    x = rng.normal(size=(n_folds, n, p))
    ds = rt.data.Dataset(
        x.reshape(-1, p),
        obs_descriptors={"cond": np.tile(np.arange(n), n_folds), "fold": np.repeat(np.arange(n_folds), n)},
    )
    prec = np.linalg.inv(np.cov(rng.normal(size=(40, p)).T)) if use_noise else None
    expect = rt.rdm.calc_rdm(ds, method="crossnobis", descriptor="cond", cv_descriptor="fold", noise=prec)
    out = fa.rdm(
        torch.from_numpy(x),
        "crossnobis",
        noise=None if prec is None else torch.from_numpy(prec),
        backend=backend,
    )
    np.testing.assert_allclose(out.numpy(), expect.get_vectors()[0], rtol=1e-10, atol=1e-12)


def test_square_and_condensed_roundtrip() -> None:
    x = torch.randn(9, 4, dtype=torch.float64)
    sq = fa.rdm(x, "euclidean", square=True)
    assert sq.shape == (9, 9)
    assert torch.equal(sq, sq.T) and bool((sq.diagonal() == 0).all())
    np.testing.assert_allclose(common.condensed(sq).numpy(), _pdist(x.numpy(), "euclidean"), rtol=1e-10)


@pytest.mark.parametrize("method", ["correlation", "cosine", "euclidean", "crossnobis"])
def test_torch_feature_chunks_and_row_blocks(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny chunk budgets force many feature chunks; the result must not depend on them."""
    shape = (3, 2, 17, 23) if method == "crossnobis" else (2, 17, 23)
    x = torch.randn(shape, dtype=torch.float64)
    whole = fa.rdm(x, method, backend="reference")
    monkeypatch.setattr(torch_chunked, "_CHUNK_ELEMENTS", 37)
    monkeypatch.setattr(torch_chunked, "_BUFFER_FEATURES", 5)  # the CPU's centring buffer: 5 chunks
    monkeypatch.setattr(torch_chunked, "_PAIRS_PER_BLOCK", 40)
    monkeypatch.setattr(torch_chunked, "_GRAM_ELEMENTS", 300)
    np.testing.assert_allclose(
        fa.rdm(x, method, backend="torch").numpy(), whole.numpy(), rtol=1e-10, atol=1e-12
    )
    # with autograd the chunks are fresh tensors (no buffer written in place): the same distances
    xg = x.clone().requires_grad_()
    np.testing.assert_allclose(
        fa.rdm(xg, method, backend="torch").detach().numpy(), whole.numpy(), rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("method", ["correlation", "cosine"])
def test_torch_rdms_of_many_pairs_condensed_row_by_row(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Beyond the cached pair indices, 1 - Gram is condensed by row slices on the CPU (no index blocks
    built per call): the bits of the index path, for one RDM and a batch; with autograd the index path
    still serves (and gives a gradient)."""
    x = torch.randn(3, 29, 11, dtype=torch.float64)
    index_path = fa.rdm(x, method, backend="torch")
    calls = []
    rows = torch_chunked._condensed_rows
    monkeypatch.setattr(torch_chunked, "_condensed_rows", lambda g: calls.append(g.shape) or rows(g))
    monkeypatch.setattr(torch_chunked, "_CACHED_PAIRS", 100)  # 29 conditions: 406 pairs
    for xs in (x, x[:1], x.float()):
        got = fa.rdm(xs, method, backend="torch")
        want = index_path[: xs.shape[0]] if xs.dtype == torch.float64 else None
        if want is not None:
            assert torch.equal(got, want)
        else:
            np.testing.assert_allclose(got.numpy(), index_path.numpy(), atol=1e-6)
    assert len(calls) == 3
    xg = x.clone().requires_grad_()
    out = fa.rdm(xg, method, backend="torch")
    assert len(calls) == 3  # the autograd path's Gram matrices come from fresh chunks: not the same bits
    np.testing.assert_allclose(out.detach().numpy(), index_path.numpy(), rtol=1e-12, atol=1e-13)
    out.sum().backward()
    assert xg.grad is not None and bool(torch.isfinite(xg.grad).all())


def test_torch_pair_indices_made_in_inference_mode_serve_autograd() -> None:
    """The condensed-order indices of small RDMs are kept between calls; kept from a call in inference
    mode, they must still serve a later differentiable call (an inference tensor cannot be saved for
    backward)."""
    for method in ("euclidean", "correlation"):  # euclidean indexes with them directly
        torch_chunked._triu_small.cache_clear()
        with torch.inference_mode():
            fa.rdm(torch.randn(2, 13, 5, dtype=torch.float64), method, backend="torch")
        x = torch.randn(2, 13, 5, dtype=torch.float64, requires_grad=True)
        fa.rdm(x, method, backend="torch").sum().backward()
        assert x.grad is not None and bool(torch.isfinite(x.grad).all())
        assert torch_chunked._triu_small.cache_info().hits == 1


@pytest.mark.parametrize("backend", ["torch", *CPP])
def test_float32_within_tolerance_of_float64(backend: str) -> None:
    x = torch.randn(2, 40, 300, dtype=torch.float64) + 3.0  # an offset makes cancellation visible
    for method in ("correlation", "cosine", "euclidean"):
        ref = fa.rdm(x, method, backend="reference")
        out = fa.rdm(x.float(), method, backend=backend)
        assert out.dtype == torch.float32
        np.testing.assert_allclose(out.double().numpy(), ref.numpy(), rtol=2e-5, atol=2e-5)


# cpp has no backward: it runs without grad only
_FAR = [*((b, False) for b in ["reference", "torch", *CPP]), ("reference", True), ("torch", True)]


@pytest.mark.parametrize(("backend", "grad"), _FAR)
@pytest.mark.parametrize("offset", [1e4, 1e6, 1e7])
def test_float32_correlation_of_patterns_far_from_zero(offset: float, backend: str, grad: bool) -> None:
    # float32 values near 1e6 that vary by about 1: a mean summed in float32 was off by half the spread,
    # and the torch and reference RDMs by 1e-2 (the cpp one centres in float64)
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(20, 300, generator=g, dtype=torch.float64) + offset).float().requires_grad_(grad)
    expected = pdist(x.detach().double().numpy(), "correlation")  # of the same float32 values
    out = fa.rdm(x, backend=backend)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.detach().double().numpy(), expected, rtol=0, atol=1e-6)
    if grad:
        out.sum().backward()
        assert x.grad is not None and bool(torch.isfinite(x.grad).all())


# Each pattern times its own power of two: float64 near 1e200 and 1e-170, float32 near 1e20 and 1e-25.
EXPONENTS = {torch.float64: [665, -565, 0, 640, -540, 3], torch.float32: [66, -83, 0, 60, -80, 1]}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("backend", ["reference", "torch", *CPP])
@pytest.mark.parametrize("method", ["correlation", "cosine"])
def test_scale_invariant_methods_at_extreme_magnitudes(method: str, backend: str, dtype: torch.dtype) -> None:
    """Scaling a pattern by a power of two is exact and changes no correlation or cosine distance: the
    result must be float64's on the unscaled patterns (it was all-equal values, NaN or -inf)."""
    x = torch.randn(2, 6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    scaled = x * torch.tensor([2.0**e for e in EXPONENTS[dtype]], dtype=torch.float64)[:, None]
    out = fa.rdm(scaled.to(dtype), method, backend=backend)
    tol = 1e-10 if dtype == torch.float64 else 2e-6
    np.testing.assert_allclose(out.double().numpy(), _pdist_batch(x, method), rtol=tol, atol=tol)


def _pdist_batch(x: torch.Tensor, method: str) -> np.ndarray:
    flat = np.stack([_pdist(v.numpy(), method) for v in x.reshape(-1, *x.shape[-2:])])
    return flat.reshape(*x.shape[:-2], -1)


@pytest.mark.triton
def test_triton_correlation_of_patterns_far_from_zero(triton_device: str) -> None:
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(20, 40, generator=g, dtype=torch.float64) + 1e6).float()
    out = fa.rdm(x.to(triton_device), backend="triton").cpu()
    expected = pdist(x.double().numpy(), "correlation")
    np.testing.assert_allclose(out.double().numpy(), expected, rtol=0, atol=2e-6)


@pytest.mark.triton
@pytest.mark.parametrize("method", ["correlation", "cosine"])
def test_triton_scale_invariant_methods_at_extreme_magnitudes(triton_device: str, method: str) -> None:
    x = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    scaled = x * torch.tensor([2.0**e for e in EXPONENTS[torch.float32]], dtype=torch.float64)[:, None]
    out = fa.rdm(scaled.float().to(triton_device), method, backend="triton")
    np.testing.assert_allclose(out.cpu().double().numpy(), _pdist(x.numpy(), method), rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("backend", ["reference", "torch", *CPP])
@pytest.mark.parametrize(
    ("dtype", "exponent"),
    [(torch.float64, 508), (torch.float64, -500), (torch.float32, 60), (torch.float32, -60)],
)
def test_euclidean_at_extreme_magnitudes(backend: str, dtype: torch.dtype, exponent: int) -> None:
    """Squared distances of x * 2**e are 4**e times x's: exact where that fits the dtype, even when the
    squares or Gram entries along the way would not (float64 near 1e153 and 1e-150)."""
    x = torch.randn(2, 6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x[:, 0, 0] = 2.0  # max |x| >= 2, so that 2**508 pushes it past the unscaled range
    out = fa.rdm((x * 2.0**exponent).to(dtype), "euclidean", backend=backend)
    want = _pdist_batch(x, "euclidean") * 2.0**exponent * 2.0**exponent
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    np.testing.assert_allclose(out.double().numpy(), want, rtol=tol, atol=0)


@pytest.mark.parametrize("backend", ["reference", "torch", *CPP])
@pytest.mark.parametrize(("dtype", "exponent"), [(torch.float64, 511), (torch.float32, 63)])
def test_euclidean_distances_near_the_dtype_maximum(backend: str, dtype: torch.dtype, exponent: int) -> None:
    """Patterns +-1.5 * 2**e apart in one of 5 features: the sum of squares 9 * 4**e passes the dtype's
    maximum, the distance 9 * 4**e / 5 does not (it came out inf)."""
    x = torch.zeros(4, 5, dtype=torch.float64)
    x[0, 0], x[1, 0], x[2, 1], x[3, 2] = 1.5, -1.5, 1.0, 1.0
    out = fa.rdm((x * 2.0**exponent).to(dtype), "euclidean", backend=backend)
    want = _pdist(x.numpy(), "euclidean") * 2.0**exponent * 2.0**exponent
    assert float(want.max()) < torch.finfo(dtype).max < 9 * 4.0**exponent
    np.testing.assert_allclose(out.double().numpy(), want, rtol=1e-15 if dtype == torch.float64 else 1e-6)


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_crossnobis_at_extreme_magnitudes(backend: str) -> None:
    x = torch.randn(3, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    want = fa.rdm(x, "crossnobis", backend="reference").numpy() * 2.0**-1000
    out = fa.rdm(x * 2.0**-500, "crossnobis", backend=backend)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-10, atol=0)


@pytest.mark.parametrize("backend", ["reference", "torch", *CPP])
def test_distances_that_overflow_raise(backend: str) -> None:
    """Distances beyond the dtype's range were inf or NaN; now a clear error."""
    x = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    with pytest.raises(ValueError, match=r"rdm: the euclidean distances .* not finite in torch\.float64"):
        fa.rdm(x * 2.0**600, "euclidean", backend=backend)
    with pytest.raises(ValueError, match=r"not finite in torch\.float32"):
        fa.rdm((x * 2.0**70).float(), "euclidean", backend=backend)
    if backend != "cpp":
        noise = torch.eye(5, dtype=torch.float64) * 1e300
        with pytest.raises(ValueError, match=r"crossnobis distances .* not finite"):
            fa.rdm(torch.stack([x, x.flip(0)]) * 1e10, "crossnobis", noise=noise, backend=backend)


def test_cornet_v1_sized_features_stream() -> None:
    """200,704 features (CORnet-S V1) with a few conditions: chunked accumulation, exact vs float64."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 200_704, generator=gen)
    out = fa.rdm(x, "correlation")
    np.testing.assert_allclose(
        out.double().numpy(), _pdist(x.double().numpy(), "correlation"), rtol=1e-4, atol=1e-5
    )


@given(
    n=st.sampled_from([3, 4, 7, 13, 32]),
    p=st.sampled_from([1, 2, 5, 31, 64]),
    batch=st.sampled_from([(), (1,), (3,), (2, 2)]),
    method=st.sampled_from(["correlation", "cosine", "euclidean"]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_torch_matches_reference(
    n: int, p: int, batch: tuple[int, ...], method: str, dtype: torch.dtype, seed: int
) -> None:
    if method == "correlation" and p < 2:
        p = 2
    x = torch.randn((*batch, n, p), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ref = fa.rdm(x, method, backend="reference")
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    for backend in ["torch", *CPP]:
        out = fa.rdm(x.to(dtype), method, backend=backend)
        assert out.shape == (*batch, n * (n - 1) // 2) and out.dtype == dtype
        np.testing.assert_allclose(out.double().numpy(), ref.numpy(), rtol=tol, atol=tol)


def test_time_resolved_windows_match_explicit_rdms() -> None:
    data = torch.randn(2, 8, 3, 10, dtype=torch.float64)  # (subjects, conditions, channels, times)
    out = fa.time_resolved_rdms(data, "correlation", window=3, step=2)
    assert out.shape == (2, 4, 28)
    for s in range(2):
        for w, t0 in enumerate(range(0, 8, 2)):
            feats = data[s, :, :, t0 : t0 + 3].reshape(8, -1).numpy()
            np.testing.assert_allclose(out[s, w].numpy(), _pdist(feats, "correlation"), rtol=1e-10)


def test_time_resolved_crossnobis_per_window() -> None:
    data = torch.randn(3, 5, 2, 6, dtype=torch.float64)  # (folds, conditions, channels, times)
    out = fa.time_resolved_rdms(data, "crossnobis", window=2, step=2)
    assert out.shape == (3, 10)
    for w in range(3):
        expect = fa.rdm(data[..., 2 * w : 2 * w + 2].reshape(3, 5, 4), "crossnobis", backend="reference")
        np.testing.assert_allclose(out[w].numpy(), expect.numpy(), rtol=1e-10)


def test_time_resolved_from_mne_epochs() -> None:
    mne = pytest.importorskip("mne")
    rng = np.random.default_rng(3)
    n_cond, n_rep, n_ch, n_t = 4, 3, 5, 6
    info = mne.create_info([f"EEG{i}" for i in range(n_ch)], 100.0, "eeg")
    data = rng.normal(size=(n_cond * n_rep, n_ch, n_t))
    labels = np.repeat(np.arange(n_cond), n_rep)
    events = np.column_stack([np.arange(len(labels)) * 10, np.zeros_like(labels), labels + 1])
    epochs = mne.EpochsArray(
        data, info, events, event_id={f"c{i}": i + 1 for i in range(n_cond)}, verbose=False
    )
    out = fa.time_resolved_rdms(epochs, "euclidean")
    evoked = np.stack([data[labels == c].mean(0) for c in range(n_cond)])
    assert out.shape == (n_t, 6)
    for t in range(n_t):
        np.testing.assert_allclose(out[t].numpy(), _pdist(evoked[:, :, t], "euclidean"), rtol=1e-10)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"x": torch.randn(2, 5)}, ValueError, "at least 3 conditions"),
        ({"x": torch.randn(5)}, ValueError, "shape"),
        ({"x": [[1.0]]}, TypeError, "torch.Tensor"),
        ({"x": torch.randn(4, 3), "method": "mahalanobis"}, ValueError, "method"),
        ({"x": torch.tensor([[1.0, 2.0], [3.0, 3.0], [0.0, 1.0]])}, ValueError, "constant pattern"),
        (
            {"x": torch.tensor([[1.0, 2.0], [0.0, 0.0], [0.0, 1.0]]), "method": "cosine"},
            ValueError,
            "all-zero",
        ),
        ({"x": torch.tensor([[1.0, float("nan")], [0.0, 2.0], [0.0, 1.0]])}, ValueError, "NaN"),
        ({"x": torch.randn(1, 4, 3), "method": "crossnobis"}, ValueError, "2 folds"),
        ({"x": torch.randn(2, 4, 3), "method": "crossnobis", "noise": torch.eye(2)}, ValueError, "precision"),
        (
            {
                "x": torch.randn(2, 4, 3),
                "method": "crossnobis",
                "noise": torch.tensor([[1.0, 0.5, 0], [0, 1, 0], [0, 0, 1]]),
            },
            ValueError,
            "noise must be a symmetric precision matrix; noise - noise.T reaches 0.5",
        ),
        (
            {"x": torch.randn(2, 4, 3), "method": "crossnobis", "noise": -torch.eye(3)},
            ValueError,
            "noise must be a positive semidefinite precision matrix .* smallest eigenvalue is -1",
        ),
        ({"x": torch.randn(4, 3), "noise": torch.eye(3)}, ValueError, "crossnobis. only"),
    ],
)
def test_rdm_rejects_bad_input(kwargs: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        fa.rdm(**kwargs)


def test_explicit_unavailable_backend_raises() -> None:
    with pytest.raises(NotImplementedError, match="crossnobis"):
        fa.rdm(torch.randn(2, 4, 3), "crossnobis", backend="triton")
    with pytest.raises(NotImplementedError, match="does not exist"):
        fa.rdm(torch.randn(4, 3), backend="cuda")
    if CPP:
        with pytest.raises(NotImplementedError, match="crossnobis"):
            fa.rdm(torch.randn(2, 4, 3), "crossnobis", backend="cpp")


@pytest.mark.triton
@pytest.mark.parametrize(
    ("n", "p", "method"),
    [
        (3, 1, "cosine"),
        (5, 7, "correlation"),
        (33, 40, "euclidean"),
        (37, 33, "correlation"),
        (4, 2, "euclidean"),
    ],
)
def test_triton_kernel_matches_reference(triton_device: str, n: int, p: int, method: str) -> None:
    """Tiny shapes (the interpreter is slow): partial tiles, a single tile, several feature blocks."""
    x = torch.randn(2, n, p, dtype=torch.float64)
    ref = fa.rdm(x, method, backend="reference")
    out = fa.rdm(x.float().to(triton_device), method, backend="triton")
    assert out.shape == ref.shape and out.dtype == torch.float32
    np.testing.assert_allclose(out.cpu().double().numpy(), ref.numpy(), rtol=1e-5, atol=2e-6)


@pytest.mark.triton
@pytest.mark.parametrize("method", ["correlation", "euclidean"])
def test_triton_kernel_batches_beyond_one_grid(
    triton_device: str, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More RDMs than a CUDA grid holds along z (65,535) go in several launches; shrunk here to 2."""
    from fastalign.rsa import triton as rdm_triton

    monkeypatch.setattr(rdm_triton, "_MAX_GRID_Z", 2)
    x = torch.randn(5, 6, 4, dtype=torch.float64)
    ref = fa.rdm(x, method, backend="reference")
    out = fa.rdm(x.float().to(triton_device), method, backend="triton")
    np.testing.assert_allclose(out.cpu().double().numpy(), ref.numpy(), rtol=1e-5, atol=2e-6)


@pytest.mark.triton
def test_triton_kernel_half_precision(triton_device: str) -> None:
    x = torch.randn(6, 40, dtype=torch.float64)
    ref = fa.rdm(x, "correlation", backend="reference")
    out = fa.rdm(x.half().to(triton_device), "correlation", backend="triton")
    half_ref = fa.rdm(x.half().float(), "correlation", backend="reference").double()
    # no more than twice the error of the half-rounded inputs in float32 arithmetic, plus fp16 products
    assert float((out.cpu().double() - ref).abs().max()) <= 2 * float((half_ref - ref).abs().max()) + 2e-3


def test_auto_never_sends_cpu_tensors_to_triton() -> None:
    assert api._rdm_dispatch.choose("auto", torch.randn(4, 3), "correlation") != "triton"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"window": 0}, "window"),
        ({"step": 0}, "step"),
        ({"window": 11}, "longer"),
    ],
)
def test_time_resolved_rejects_bad_input(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fa.time_resolved_rdms(torch.randn(5, 3, 10), **kwargs)
    with pytest.raises(ValueError, match="n_times"):
        fa.time_resolved_rdms(torch.randn(5, 10))


def test_half_precision_input_computes_in_float32() -> None:
    x = torch.randn(2, 9, 70, dtype=torch.float64)
    out = fa.rdm(x.half(), "correlation")
    ref = fa.rdm(x.half().double(), "correlation", backend="reference")
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.double().numpy(), ref.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["reference", "torch", *CPP])
def test_pattern_errors_name_the_argument(backend: str) -> None:
    """The one-feature correlation message named no argument; time_resolved_rsa's said x for its data."""
    with pytest.raises(ValueError, match=r"rdm: x has 1 feature .*correlation distance needs at least 2"):
        fa.rdm(torch.randn(4, 1), "correlation", backend=backend)
    with pytest.raises(
        ValueError, match=r"time_resolved_rsa: data must have no empty dim, got shape \(0, 5, 2, 4\)"
    ):
        fa.time_resolved_rsa(torch.randn(0, 5, 2, 4), torch.rand(10), backend=backend)
    # time_resolved_rdms named rdm and x, with the windows' internal shape
    one = torch.randn(6, 1, 10, dtype=torch.float64)  # 1 channel
    for f in (fa.time_resolved_rdms, fa.time_resolved_rsa):
        with pytest.raises(ValueError, match=rf"^{f.__name__}: data has 1 channel and windows of 1 sample: "):
            f(one, *(() if f is fa.time_resolved_rdms else (torch.rand(15),)), backend=backend)
    assert fa.time_resolved_rdms(one, window=2, backend=backend).shape == (9, 15)
    x = torch.randn(6, 5, 8, dtype=torch.float64)
    x[2, :, 5] = 1.0  # condition 2 at sample 5
    with pytest.raises(
        ValueError,
        match=r"^time_resolved_rdms: data has a constant pattern at index \(5, 2\) \(\.\.\., window, ",
    ):
        fa.time_resolved_rdms(x, backend=backend)
    with pytest.raises(TypeError, match="rdm: square must be a bool, got 'no'"):
        fa.rdm(torch.randn(5, 4), square="no")


def test_triton_refuses_bfloat16_under_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Triton interpreter multiplies bfloat16 bit patterns in tl.dot (triton-lang/triton#11584): its
    RDMs were garbage, so bfloat16 is refused there; float16 is not."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x = torch.randn(5, 4).bfloat16()
    assert any("11584" in r for r in api._rdm_triton_limits(x, "correlation", explicit=True))
    assert not any("11584" in r for r in api._rdm_triton_limits(x.half(), "correlation", explicit=True))
    with pytest.raises(NotImplementedError, match="11584"):
        fa.rdm(x, "correlation", backend="triton")


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"window": 2.0}, TypeError),
        ({"step": np.bool_(True)}, TypeError),
        ({"window": np.int64(0)}, ValueError),
    ],
)
def test_time_resolved_window_types(kwargs: dict, exc: type) -> None:
    """numpy ints are windows and steps like Python ints (they were rejected); floats and bools are not."""
    data = torch.randn(5, 3, 10, dtype=torch.float64)
    want = fa.time_resolved_rdms(data, window=2, step=3)
    torch.testing.assert_close(fa.time_resolved_rdms(data, window=np.int64(2), step=np.int32(3)), want)  # type: ignore[arg-type]
    with pytest.raises(exc, match=r"time_resolved_rdms: (window|step) must be an int >= 1"):
        fa.time_resolved_rdms(data, **kwargs)


@pytest.mark.skipif(_ext.why_ops_missing(common._ROW_OPS) is not None, reason="fastalign._C is not built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_cpu_correlation_rdms_through_the_row_kernels(
    dtype: torch.dtype, offset: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the CPU the torch backend checks, centres and sums the patterns with the C++ row kernels: the
    RDMs are scipy's (float64 sums: at least as exact as torch's passes, which remain the path without
    the extension, on other devices and under autograd), and NaN is still named."""
    rng = np.random.default_rng(4)
    x = torch.from_numpy(rng.normal(size=(2, 30, 2100)) + offset).to(
        dtype
    )  # 3 feature chunks, the last short
    want = np.stack([pdist(v.double().numpy(), "correlation") for v in x])
    calls = []
    rows = torch_chunked._gram_rows
    monkeypatch.setattr(torch_chunked, "_gram_rows", lambda *a: calls.append(1) or rows(*a))
    got = fa.rdm(x, backend="torch")
    assert calls, "the CPU path did not take the row kernels"
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    np.testing.assert_allclose(got.double().numpy(), want, rtol=0, atol=tol)
    monkeypatch.setattr(common, "cpp_rows", lambda x: False)
    plain = fa.rdm(x, backend="torch")
    np.testing.assert_allclose(plain.double().numpy(), want, rtol=0, atol=tol if offset == 0 else 1e-5)
    bad = x.clone()
    bad[1, 7, 3] = float("nan")
    with pytest.raises(ValueError, match="rdm: x contains NaN"):
        fa.rdm(bad, backend="torch")


@pytest.mark.parametrize("method", ["correlation", "euclidean", "cosine"])
def test_torch_rdm_has_the_same_bits_alone_or_in_a_batch(method: str) -> None:
    """Feature chunks on the CPU have a fixed width, so a pattern set's RDM does not depend on what else
    is in the batch (the chunks were once sized by the batch)."""
    x = torch.randn(3, 200, 2500)  # 3 chunks of 1,024 features (chunks sized by B x n differed: 2 vs 1)
    batch = fa.rdm(x, method, backend="torch")
    for i in range(3):
        assert torch.equal(fa.rdm(x[i], method, backend="torch"), batch[i])
    assert torch.equal(fa.rdm(x[:2], method, backend="torch"), batch[:2])


@pytest.mark.parametrize("backend", ["reference", "torch", *CPP])
def test_time_resolved_rdm_of_shifted_copies_is_exactly_constant(backend: str) -> None:
    """At a time point where the patterns are shifted and positively scaled copies of one another they
    are exactly 0 apart in correlation distance; computed, they came out a few eps apart, and
    compare_rdms ranked that noise where time_resolved_rsa of the same data raised. That window's RDM
    is exactly 0 now (the other window's is not touched), comparing it raises, and gradients still
    flow through every window."""
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(5, dtype=torch.float64, generator=gen)
    data = torch.randn(4, 5, 2, dtype=torch.float64, generator=gen)  # (conditions, channels, times)
    data[..., 0] = torch.stack([base * s + o for s, o in ((1.0, 0.0), (2.0, 3.0), (0.7, -1.3), (3.1, 0.25))])
    d = fa.time_resolved_rdms(data, "correlation", backend=backend)
    assert torch.equal(d[0], torch.zeros_like(d[0])), d[0]
    torch.testing.assert_close(d[1], fa.rdm(data[..., 1], "correlation", backend=backend), rtol=1e-14, atol=0)
    with pytest.raises(ValueError, match="constant"):
        fa.compare_rdms(d[0], torch.rand(6, dtype=torch.float64), "spearman")
    if backend != "cpp":
        x = data.clone().requires_grad_()
        fa.time_resolved_rdms(x, "euclidean", backend=backend)[0].sum().backward()
        plain = data.clone().requires_grad_()
        fa.rdm(plain[..., 0], "euclidean", backend=backend).sum().backward()
        assert x.grad is not None and plain.grad is not None
        torch.testing.assert_close(x.grad, plain.grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_correlation_rdm_backward(dtype: torch.dtype) -> None:
    """A differentiable RSA loss in a compiled step: rdm (correlation) and time_resolved_rsa under
    torch.compile give eager's values and gradients (the norms' in-place scaling after a graph break
    failed in backward: a saved tensor modified in place)."""
    gen = torch.Generator().manual_seed(4)
    f = torch.randn(20, 64, dtype=dtype, generator=gen)
    out = []
    for fn in (
        lambda x: fa.rdm(x, "correlation"),
        torch.compile(lambda x: fa.rdm(x, "correlation"), backend="aot_eager"),
    ):
        x = f.clone().requires_grad_()
        v = fn(x)
        v.square().sum().backward()
        out.append((v.detach(), x.grad))
    torch.testing.assert_close(out[1][0], out[0][0])
    torch.testing.assert_close(out[1][1], out[0][1])
    data = torch.randn(6, 4, 3, dtype=dtype, generator=gen, requires_grad=True)
    model = torch.rand(15, dtype=dtype, generator=gen)
    sims = torch.compile(lambda d: fa.time_resolved_rsa(d, model, "pearson"), backend="aot_eager")(data)
    sims.sum().backward()
    assert data.grad is not None and bool(torch.isfinite(data.grad).all())


@pytest.mark.parametrize("method", ["correlation", "euclidean", "cosine"])
def test_torch_rdm_forward_mode_derivatives(method: str) -> None:
    """Forward-mode derivatives (torch.func.jvp, forward_ad duals) take the torch backend's out-of-place
    path (the CPU's reused buffer is written in place, which forward mode cannot differentiate): the
    directional derivative equals the finite difference."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, 1500, dtype=torch.float64, generator=gen)  # 2 chunks of features
    v = torch.randn(x.shape, dtype=torch.float64, generator=gen)
    _, tangent = torch.func.jvp(lambda t: fa.rdm(t, method, backend="torch"), (x,), (v,))
    h = 1e-6
    diff = (fa.rdm(x + h * v, method, backend="torch") - fa.rdm(x - h * v, method, backend="torch")) / (2 * h)
    torch.testing.assert_close(tangent, diff, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "backend", ["reference", "torch", *(["cpp"] if _ext.why_ops_missing(api._CPP_OPS) is None else [])]
)
def test_float64_correlation_far_from_zero_is_exact(backend: str) -> None:
    """float64 patterns near 1e15 varying by about 1: their mean is off by a share of that spread, which
    cpp and reference did not take out (distances off by up to 5e-2); centred twice, every backend gives
    the exact distances of the given values to 2e-16 (an exact rational oracle)."""
    from fractions import Fraction

    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(6, 17)) + 1e15)

    def exact(a: list[float], b: list[float]) -> float:
        fa_, fb_ = [Fraction(v) for v in a], [Fraction(v) for v in b]
        ca = [v - sum(fa_) / len(fa_) for v in fa_]
        cb = [v - sum(fb_) / len(fb_) for v in fb_]
        num = sum(p * q for p, q in zip(ca, cb, strict=True))
        return 1 - float(num) / float(sum(p * p for p in ca) * sum(q * q for q in cb)) ** 0.5

    want = [exact(x[i].tolist(), x[j].tolist()) for i in range(6) for j in range(i + 1, 6)]
    np.testing.assert_allclose(fa.rdm(x, backend=backend).numpy(), want, rtol=0, atol=1e-15)
    data = x[:, :, None].expand(6, 17, 3).contiguous()  # 3 identical time points of 17 channels
    sims = fa.time_resolved_rsa(data, torch.tensor(want), "pearson", backend=backend)
    np.testing.assert_allclose(sims.numpy(), 1.0, rtol=0, atol=1e-12)


@pytest.mark.skipif(
    _ext.why_ops_missing(common._ROW_OPS) is not None, reason="fastalign._C row kernels not built"
)
def test_rdm_reuses_the_checks_row_stats_and_only_for_the_checked_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """rdm's checks read each pattern's max, min and sum once (rsa_row_stats) and the torch backend's
    means come from that pass (one call, not two), with the same bits as reading them again. The
    reused statistics stand only for the checked patterns' own rows, unchanged: a block of their rows
    gets its rows, a write to them, another tensor or a misaligned view reads afresh."""
    calls: list[tuple[int, ...]] = []
    real = torch.ops.fastalign.rsa_row_stats

    def counting(rows: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(rows.shape))
        return real(rows)

    x = torch.randn(3, 40, 2_500, generator=torch.Generator().manual_seed(3)) * 2 + 1
    with monkeypatch.context() as m:
        m.setattr(common, "row_stats", lambda t: real(t.reshape(-1, t.shape[-1])).reshape(*t.shape[:-1], 3))
        fresh = fa.rdm(x, "correlation", backend="torch")  # every row_stats call reads the patterns
    monkeypatch.setattr(torch.ops.fastalign, "rsa_row_stats", counting, raising=False)
    reused = fa.rdm(x, "correlation", backend="torch")
    assert calls == [(120, 2_500)]  # the checks' pass only
    assert torch.equal(reused, fresh)

    stats = real(x.reshape(-1, 2_500)).reshape(3, 40, 3)
    calls.clear()
    with common.reusing_row_stats(x, stats):
        assert torch.equal(common.row_stats(x[1:]), stats[1:])  # a block of its rows
        assert torch.equal(common.row_stats(x[1, 5:9]), stats[1, 5:9])
        assert calls == []
        assert common.row_stats(x[..., 1:].contiguous()).shape == (3, 40, 3)  # another tensor
        assert common.row_stats(x.view(-1)[7 : 7 + 2_500 * 4].view(4, 2_500)).shape == (4, 3)  # misaligned
        assert len(calls) == 2
        x[0, 0, 0] = 1e6  # a write: read again, the new maximum seen
        assert common.row_stats(x)[0, 0, 0].item() == 1e6
        assert len(calls) == 3
    calls.clear()
    common.row_stats(x)  # outside the block: read
    assert len(calls) == 1
