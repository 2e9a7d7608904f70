"""time_resolved_rsa (fused cpp kernel and composed backends) against the explicit composition of
time_resolved_rdms and compare_rdms, rsatoolbox and scipy; exact in float64 to 1e-10."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import rsatoolbox as rt
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.spatial.distance import pdist

import fastalign as fa
from fastalign import _ext
from fastalign.rsa import api, common

CPP = ["cpp"] if _ext.why_ops_missing(api._CPP_OPS) is None else []
BACKENDS = ["reference", "torch", *CPP]
LINEAR = ["spearman", "pearson", "rho_a", "cosine"]
FUSED_RDM = ["correlation", "cosine", "euclidean"]


def _composed(
    data: torch.Tensor,
    models: torch.Tensor,
    method: str,
    rdm_method: str,
    window: int,
    step: int,
    rdm_backend: str = "reference",
) -> torch.Tensor:
    brain = fa.time_resolved_rdms(data, rdm_method, window, step, backend=rdm_backend)
    return fa.compare_rdms(brain[..., None, :], models, method, backend="reference")


@settings(deadline=None, max_examples=40)
@given(
    n=st.integers(3, 24),
    channels=st.integers(1, 6),
    times=st.integers(1, 9),
    window=st.integers(1, 3),
    step=st.integers(1, 3),
    lead=st.sampled_from([(), (2,), (2, 3)]),
    n_models=st.integers(1, 4),
    method=st.sampled_from(LINEAR),
    rdm_method=st.sampled_from(FUSED_RDM),
    integer=st.booleans(),
    backend=st.sampled_from(BACKENDS),
    seed=st.integers(0, 2**31 - 1),
)
def test_matches_composition(
    n: int,
    channels: int,
    times: int,
    window: int,
    step: int,
    lead: tuple[int, ...],
    n_models: int,
    method: str,
    rdm_method: str,
    integer: bool,
    backend: str,
    seed: int,
) -> None:
    """Every backend equals time_resolved_rdms + compare_rdms, including heavily tied RDMs (small
    integer data gives many equal distances) and single-channel windows. The brain RDMs of the
    composition come from the same backend's rdm, so that entries equal up to rounding (ties of the
    exact distances) are the same floats on both sides and the ranks are comparable exactly."""
    window = min(window, times)
    if rdm_method == "correlation" and channels * window < 2:
        channels = 2
    gen = torch.Generator().manual_seed(seed)
    shape = (*lead, n, channels, times)
    if integer:
        data = torch.randint(-2, 3, shape, generator=gen).double()
        data[..., 0, :] = 5.0  # no constant or all-zero pattern at any window
        data[..., 1, 0, :] = -4.0
        data[..., 0, 0, :] = 7.0
    else:
        data = torch.randn(shape, generator=gen, dtype=torch.float64)
    models = fa.rdm(torch.randn(n_models, n, 7, generator=gen, dtype=torch.float64))
    try:
        want = _composed(data, models, method, rdm_method, window, step, rdm_backend=backend)
    except ValueError:  # an undefined statistic (a constant brain RDM): the fused path must say so too
        with pytest.raises(ValueError):
            fa.time_resolved_rsa(
                data, models, method, rdm_method=rdm_method, window=window, step=step, backend=backend
            )
        return
    got = fa.time_resolved_rsa(
        data, models, method, rdm_method=rdm_method, window=window, step=step, backend=backend
    )
    assert got.shape == (*lead, (times - window) // step + 1, n_models)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_rsatoolbox(backend: str) -> None:
    """The whole analysis of the benchmark, in small: 3 subjects x 12 times x 30 conditions x 17 channels."""
    rng = np.random.default_rng(1)
    data = rng.normal(size=(3, 30, 17, 12))
    feats = [rng.normal(size=(30, 50)) for _ in range(2)]
    brain = rt.rdm.calc_rdm(
        [rt.data.Dataset(data[s, :, :, t]) for s in range(3) for t in range(12)], method="correlation"
    )
    layers = rt.rdm.calc_rdm([rt.data.Dataset(f) for f in feats], method="correlation")
    want = rt.rdm.compare(layers, brain, "spearman").T.reshape(3, 12, 2)
    models = fa.rdm(torch.from_numpy(np.stack(feats)))
    got = fa.time_resolved_rsa(torch.from_numpy(data), models, backend=backend)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_spearman_with_one_dominant_tie_group(backend: str) -> None:
    """A brain RDM that is constant except for a few entries: the sum of squared centred ranks is a
    difference of nearly equal cubes, which the kernel forms in exact integers. The reference ranks in
    O(K^2) (4.5e4 entries at n = 300 took 90 s), so it checks the definition on a smaller RDM."""
    n = 40 if backend == "reference" else 300
    data = torch.zeros(n, 2, 1, dtype=torch.float64)
    data[:, 0, 0] = 1.0  # every pattern (1, 0): all correlation distances 0 ...
    data[:3, :, 0] = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])  # ... except pairs with these 3
    models = fa.rdm(torch.randn(2, n, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    brain = fa.rdm(data[..., 0])
    got = fa.time_resolved_rsa(data, models, rdm_method="correlation", backend=backend)
    for m in range(2):
        want = stats.spearmanr(brain.numpy(), models[m].numpy()).statistic
        assert abs(float(got[0, m]) - want) < 1e-10


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_inputs(backend: str) -> None:
    gen = torch.Generator().manual_seed(3)
    data = torch.randn(2, 40, 5, 6, generator=gen)
    models = fa.rdm(torch.randn(3, 40, 8, generator=gen))
    got = fa.time_resolved_rsa(data, models, window=2, backend=backend)
    want = _composed(data.double(), models.double(), "spearman", "correlation", 2, 1)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=2e-5)
    mixed = fa.time_resolved_rsa(data, models.double(), window=2, backend=backend)
    assert mixed.dtype == torch.float64


def test_one_model_vector_and_kendall_and_crossnobis_compose() -> None:
    gen = torch.Generator().manual_seed(4)
    data = torch.randn(12, 3, 5, generator=gen, dtype=torch.float64)
    model = fa.rdm(torch.randn(12, 4, generator=gen, dtype=torch.float64))
    got = fa.time_resolved_rsa(data, model, "kendall_tau_a")
    assert got.shape == (5,)
    np.testing.assert_allclose(
        got.numpy(), _composed(data, model, "kendall_tau_a", "correlation", 1, 1)[:, 0].numpy(), atol=1e-12
    )
    folds = torch.randn(3, 12, 3, 5, generator=gen, dtype=torch.float64)
    got = fa.time_resolved_rsa(folds, model, rdm_method="crossnobis", window=2)
    brain = fa.time_resolved_rdms(folds, "crossnobis", 2)
    np.testing.assert_allclose(got.numpy(), fa.compare_rdms(brain, model).numpy(), atol=1e-12)


def test_composed_path_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(5)
    data = torch.randn(3, 15, 4, 9, generator=gen, dtype=torch.float64)
    models = fa.rdm(torch.randn(2, 15, 6, generator=gen, dtype=torch.float64))
    whole = fa.time_resolved_rsa(data, models, backend="torch")
    monkeypatch.setattr(common, "_TRRSA_CHUNK_ELEMENTS", 200)  # 1 RDM of 105 entries per chunk
    chunked = fa.time_resolved_rsa(data, models, backend="torch")
    np.testing.assert_allclose(chunked.numpy(), whole.numpy(), rtol=0, atol=1e-14)


@pytest.mark.parametrize("backend", ["auto", "torch", "reference"])
def test_composed_path_validates_and_chooses_once(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunk after chunk the composed path calls the chosen RDM and compare backends directly: one choice
    of each for the whole call, no public function (with its validation) per chunk."""
    gen = torch.Generator().manual_seed(6)
    data = torch.randn(3, 15, 8, 9, generator=gen, dtype=torch.float64)  # 72 window features: auto composes
    models = fa.rdm(torch.randn(2, 15, 6, generator=gen, dtype=torch.float64))
    whole = fa.time_resolved_rsa(data, models, "pearson", window=9, backend=backend)
    calls: list[str] = []
    for disp in (api._rdm_dispatch, api._compare_dispatch):
        choose = disp.choose
        monkeypatch.setattr(disp, "choose", lambda *a, _c=choose, _op=disp.op: calls.append(_op) or _c(*a))
    check = api._check_patterns
    monkeypatch.setattr(api, "_check_patterns", lambda *a, **k: calls.append("check") or check(*a, **k))
    for name in ("rdm", "compare_rdms", "time_resolved_rdms"):
        monkeypatch.setattr(api, name, lambda *a, **k: pytest.fail("a public function per chunk"))
    monkeypatch.setattr(common, "_TRRSA_CHUNK_ELEMENTS", 200)  # 1 RDM of 105 entries per chunk: 3 chunks
    chunked = fa.time_resolved_rsa(data, models, "pearson", window=9, backend=backend)
    assert calls == ["check", "rdm", "compare_rdms"]
    np.testing.assert_allclose(chunked.numpy(), whole.numpy(), rtol=0, atol=1e-14)


def test_nan_model_entries_are_rejected() -> None:
    """compare_rdms masks NaN only where both sides have it; brain RDMs of finite data have none."""
    data = torch.randn(10, 3, 4, dtype=torch.float64)
    models = fa.rdm(torch.randn(2, 10, 6, dtype=torch.float64))
    models[:, 3] = float("nan")
    for backend in BACKENDS:
        with pytest.raises(ValueError, match="models contains NaN"):
            fa.time_resolved_rsa(data, models, backend=backend)


@pytest.mark.skipif(not CPP, reason="fastalign._C not built")
def test_fused_rejects_what_it_cannot_run() -> None:
    data = torch.randn(10, 3, 4, dtype=torch.float64)
    models = fa.rdm(torch.randn(10, 6, dtype=torch.float64))
    with pytest.raises(NotImplementedError, match="kendall_tau_a"):
        fa.time_resolved_rsa(data, models, "kendall_tau_a", backend="cpp")
    with pytest.raises(NotImplementedError, match="crossnobis"):
        fa.time_resolved_rsa(data[None].expand(2, -1, -1, -1), models, rdm_method="crossnobis", backend="cpp")


@pytest.mark.parametrize("backend", BACKENDS)
def test_constant_brain_rdm_names_the_window(backend: str) -> None:
    data = torch.randn(2, 8, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    data[1, :, :, 2] = torch.tensor([1.0, 2.0, 4.0])  # every condition the same pattern at t = 2
    models = fa.rdm(torch.randn(8, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="constant"):
        fa.time_resolved_rsa(data, models, backend=backend)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"models": torch.rand(10)}, r"models must be RDMs of the data's 8 conditions"),
        ({"models": torch.rand(2, 2, 28)}, r"models must be \(n_models, n_pairs\)"),
        ({"models": torch.rand(0, 28)}, r"n_models >= 1"),
        ({"method": "spearmann"}, "method must be one of"),
        ({"rdm_method": "mahalanobis"}, "method must be one of"),
        # a compare method passed as the RDM method: the message named "method", the wrong argument
        ({"rdm_method": "pearson"}, r"time_resolved_rsa: rdm_method must be one of \('correlation'"),
        ({"window": 0}, "window must be an int >= 1"),
        ({"window": 9}, "longer than the data's 4 time points"),
        ({"data": torch.rand(8, 4)}, r"data must have shape"),
        ({"data": torch.full((8, 3, 4), float("nan"))}, "contains NaN"),
        ({"noise": torch.eye(3)}, "noise is used by method 'crossnobis' only"),
        # shapes are named as the data were given, not as the window view (windows first) holds them
        ({"data": torch.rand(2, 3, 4), "models": torch.rand(1)},
         r"at least 3 conditions \(dim -3 of \(\.\.\., n_conditions, n_channels, n_times\)\), "
         r"got shape \(2, 3, 4\)"),
        ({"data": torch.rand(0, 8, 3, 4)}, r"no empty dim, got shape \(0, 8, 3, 4\)"),
        ({"data": torch.rand(1, 8, 3, 4), "rdm_method": "crossnobis"},
         r"at least 2 folds \(dim -4 of .*got shape \(1, 8, 3, 4\)"),
        ({"backend": "gpu"}, r"^time_resolved_rsa: backend must be one of"),
    ],
)  # fmt: skip
def test_rejects_bad_input(kwargs: dict, match: str) -> None:
    args = {"data": torch.randn(8, 3, 4, dtype=torch.float64), "models": torch.rand(2, 28), **kwargs}
    with pytest.raises(ValueError, match=match):
        fa.time_resolved_rsa(**args)


# Patterns of one condition times a power of two: float64 near 1e200 and 1e-170, float32 near 1e20 / 1e-25.
EXPONENTS = {
    torch.float64: [665, -565, 0, 640, -540, 3, 1, -2],
    torch.float32: [66, -83, 0, 60, -80, 1, 2, -1],
}


# Euclidean data times one power of two: tiny, or large enough that the brain RDM's squares overflow.
EUCLIDEAN = {
    "tiny": {torch.float64: -560, torch.float32: -70},
    "large": {torch.float64: 508, torch.float32: 60},
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("method", "rdm_method", "euclidean"),
    [
        ("spearman", "correlation", None),
        ("pearson", "cosine", None),
        ("spearman", "euclidean", "tiny"),
        ("pearson", "euclidean", "large"),
    ],
)
def test_extreme_magnitudes(
    method: str, rdm_method: str, euclidean: str | None, backend: str, dtype: torch.dtype
) -> None:
    """The statistics of data and models scaled by powers of two (per condition for correlation and
    cosine, per RDM for euclidean, whose RDM changes by a positive factor) equal those of the unscaled
    ones; the fused kernel returned NaN, wrong ranks or a constant-RDM error."""
    gen = torch.Generator().manual_seed(9)
    data = torch.randn(2, 8, 3, 5, generator=gen, dtype=torch.float64)
    models = fa.rdm(torch.randn(2, 8, 4, generator=gen, dtype=torch.float64))
    want = fa.time_resolved_rsa(data, models, method, rdm_method=rdm_method, window=2, backend="reference")
    if euclidean is not None:
        factor = torch.tensor(2.0 ** EUCLIDEAN[euclidean][dtype], dtype=torch.float64)
    else:
        factor = torch.tensor([2.0**e for e in EXPONENTS[dtype]], dtype=torch.float64)[:, None, None]
    model_factor = torch.tensor([2.0**e for e in EXPONENTS[dtype][:2]], dtype=torch.float64)[:, None]
    got = fa.time_resolved_rsa(
        (data * factor).to(dtype), (models * model_factor).to(dtype), method, rdm_method=rdm_method, window=2,
        backend=backend,
    )  # fmt: skip
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    np.testing.assert_allclose(got.double().numpy(), want.numpy(), rtol=0, atol=tol)


def test_overflowing_distances_raise() -> None:
    """Squared euclidean distances of values near the float64 maximum overflow: an error, not numbers."""
    data = torch.randn(6, 3, 4, dtype=torch.float64)
    data[2, 1, :] = 1.7e308
    models = fa.rdm(torch.randn(2, 6, 5, dtype=torch.float64), "correlation")
    for backend in ("auto", "torch"):
        with pytest.raises(ValueError):
            fa.time_resolved_rsa(data, models, "spearman", rdm_method="euclidean", backend=backend)


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_brain_rdm_constant_up_to_rounding(backend: str) -> None:
    """Patterns that are shifted (and scaled) copies of each other have correlation distances of a few
    eps, not 0: the composed paths correlated that noise with the models (torch: -0.75). They see the
    exact RDM: undefined for pearson / spearman (the window's ValueError), 0 for rho_a and tau-a."""
    shifted = torch.tensor([[[1.0], [0.0]], [[2.0], [1.0]], [[5.0], [3.0]], [[9.0], [4.0]]]).double()
    gen = torch.Generator().manual_seed(0)
    u, gain, offset = (
        torch.randn(shape, dtype=torch.float64, generator=gen) for shape in (6, (5, 1), (5, 1))
    )
    scaled = (gain.abs() * u + offset)[..., None]  # (5 conditions, 6 channels, 1 time)
    for data in (shifted, scaled):
        models = torch.randn(2, data.shape[0] * (data.shape[0] - 1) // 2, dtype=torch.float64, generator=gen)
        for method in ("spearman", "pearson"):
            with pytest.raises(ValueError, match=r"brain RDM at window index \(0,\) is constant"):
                fa.time_resolved_rsa(data, models, method, backend=backend)
        for method in ("rho_a", "kendall_tau_a"):
            got = fa.time_resolved_rsa(data, models, method, backend=backend)
            assert torch.equal(got, torch.zeros(1, 2, dtype=torch.float64))


@pytest.mark.parametrize("method", ["spearman", "pearson", "rho_a", "cosine"])
@pytest.mark.parametrize("rdm_method", ["correlation", "euclidean"])
def test_fused_path_treats_rounding_noise_rdms_as_the_composed_path(method: str, rdm_method: str) -> None:
    """Conditions that are scaled copies of one pattern (correlation distances ~eps, not 0) or the vertices
    of a regular simplex (euclidean distances equal up to rounding): the fused cpp kernel gives what the
    composed path gives (an error naming the window, or exactly 0 for rho_a, or the cosine of the exact
    constant RDM), never a correlation of rounding noise."""
    g = torch.Generator().manual_seed(3)
    if rdm_method == "correlation":
        base = torch.randn(3, 5, dtype=torch.float64, generator=g)
        data = base * torch.tensor([1.0, 2.0, 3.5, 0.7, 5.0, 1.3], dtype=torch.float64)[:, None, None]
    else:
        data = (torch.eye(6, dtype=torch.float64) * 3.7)[:, :, None].expand(6, 6, 4).contiguous()
    models = torch.randn(2, 15, dtype=torch.float64, generator=g)
    results = {}
    for backend in ("cpp", "torch"):
        try:
            results[backend] = fa.time_resolved_rsa(
                data, models, method, rdm_method=rdm_method, window=4, backend=backend
            )
        except ValueError as exc:
            results[backend] = str(exc)
    if isinstance(results["torch"], str):
        assert results["cpp"] == results["torch"]
    else:
        torch.testing.assert_close(results["cpp"], results["torch"], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["rho_a", "spearman", "kendall_tau_a"])
@pytest.mark.parametrize("rdm_method", ["correlation", "cosine"])
def test_distances_of_equal_or_opposite_patterns_tie_exactly_on_every_backend(
    method: str, rdm_method: str
) -> None:
    """With 2 features per window (correlation) or 1 (cosine) every distance is exactly 0 or 2; computed
    they came out a few eps off in backend-dependent directions, so the ties broke differently (rho_a 0
    on reference, 0.5 on cpp and torch). Within rounding they are now 0 and 2 on every path, and the
    statistic is that of the exact distances."""
    g = torch.Generator().manual_seed(0)
    p = 2 if rdm_method == "correlation" else 1
    data = torch.randn(2, 5, p, 6, generator=g, dtype=torch.float64)
    # no window's RDM constant: condition 0 and 1 opposite (cosine: signs; correlation: orders)
    data[:, 0] = data[:, 0].abs().cumsum(1)
    data[:, 1] = -data[:, 1].abs().cumsum(1)
    models = fa.rdm(torch.randn(2, 5, 7, generator=g, dtype=torch.float64))
    results = {
        b: fa.time_resolved_rsa(data, models, method, rdm_method=rdm_method, backend=b)
        for b in ("reference", "torch", *([] if method == "kendall_tau_a" else CPP))
    }
    x = data.permute(0, 3, 1, 2).numpy()  # (subject, time, condition, feature)
    for b, got in results.items():
        for s, t in itertools.product(range(2), range(6)):
            exact = np.rint(pdist(x[s, t], rdm_method))  # 0 or 2 exactly
            assert set(np.unique(exact)) <= {0.0, 2.0}
            for m in range(2):
                names = {"rho_a": "rho-a", "spearman": "spearman", "kendall_tau_a": "tau-a"}
                want = rt.rdm.compare(
                    rt.rdm.RDMs(exact[None]), rt.rdm.RDMs(models[m].numpy()[None]), names[method]
                )
                want = float(want[0, 0])
                np.testing.assert_allclose(float(got[s, t, m]), want, rtol=0, atol=1e-12, err_msg=b)
