"""compare_rdms and noise_ceiling against scipy, brute force and rsatoolbox (float64, to 1e-10)."""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pytest
import rsatoolbox as rt
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

import fastalign as fa
from fastalign import _ext
from fastalign.rsa import api
from fastalign.rsa import stats as rsa_stats

CPP = ["cpp"] if _ext.why_ops_missing(api._CPP_OPS) is None else []

RT_NAMES = {
    "spearman": "spearman",
    "pearson": "corr",
    "kendall_tau_a": "tau-a",
    "rho_a": "rho-a",
    "cosine": "cosine",
}
METHODS = list(RT_NAMES)


def _tau_a_brute(a: np.ndarray, b: np.ndarray) -> float:
    s = sum(np.sign(a[i] - a[j]) * np.sign(b[i] - b[j]) for i, j in itertools.combinations(range(len(a)), 2))
    return s / (len(a) * (len(a) - 1) / 2)


def _rho_a_brute(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = stats.rankdata(a), stats.rankdata(b)
    k = len(a)
    return 12 * np.sum((ra - ra.mean()) * (rb - rb.mean())) / (k**3 - k)


ORACLES = {
    "spearman": lambda a, b: stats.spearmanr(a, b).statistic,
    "pearson": lambda a, b: stats.pearsonr(a, b).statistic,
    "kendall_tau_a": _tau_a_brute,
    "rho_a": _rho_a_brute,
    "cosine": lambda a, b: a @ b / np.linalg.norm(a) / np.linalg.norm(b),
}


def _data(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Brain-like continuous RDMs (4, 1, 45) and tied / binary model RDMs (1, 3, 45)."""
    a = rng.normal(size=(4, 1, 45))
    b = np.stack([rng.integers(0, 2, 45), rng.integers(0, 4, 45), rng.normal(size=45)]).astype(np.float64)[
        None
    ]
    return a, b


@pytest.mark.parametrize("backend", ["reference", "torch", *CPP])
@pytest.mark.parametrize("method", METHODS)
def test_compare_matches_scipy_and_brute_force(method: str, backend: str) -> None:
    a, b = _data(np.random.default_rng(0))
    out = fa.compare_rdms(torch.from_numpy(a), torch.from_numpy(b), method, backend=backend).numpy()
    assert out.shape == (4, 3)
    for i in range(4):
        for j in range(3):
            np.testing.assert_allclose(out[i, j], ORACLES[method](a[i, 0], b[0, j]), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", ["reference", "torch", *CPP])
@pytest.mark.parametrize("method", METHODS)
def test_compare_matches_rsatoolbox(method: str, backend: str) -> None:
    a, b = _data(np.random.default_rng(1))
    expect = rt.rdm.compare(rt.rdm.RDMs(a[:, 0]), rt.rdm.RDMs(b[0]), RT_NAMES[method])
    out = fa.compare_rdms(torch.from_numpy(a), torch.from_numpy(b), method, backend=backend)
    np.testing.assert_allclose(out.numpy(), expect, rtol=1e-10, atol=1e-12)


def test_binary_model_rdm_as_bool() -> None:
    """A categorical model RDM given as bools/ints is used as float64."""
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 10)
    model = torch.from_numpy(labels[:, None] != labels[None, :])[tuple(torch.triu_indices(10, 10, 1))]
    brain = torch.from_numpy(rng.normal(size=45))
    for method in METHODS:
        out = fa.compare_rdms(brain, model, method)
        assert out.dtype == torch.float64
        np.testing.assert_allclose(
            float(out), ORACLES[method](brain.numpy(), model.double().numpy()), rtol=1e-10
        )


@pytest.mark.parametrize("method", METHODS)
def test_nan_entries_masked_like_rsatoolbox(method: str) -> None:  # auto: cpp where built
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(2, 45)), rng.normal(size=(3, 45))
    a[:, [4, 20]] = np.nan
    b[:, [4, 20]] = np.nan
    expect = rt.rdm.compare(rt.rdm.RDMs(a), rt.rdm.RDMs(b), RT_NAMES[method])
    out = fa.compare_rdms(torch.from_numpy(a)[:, None], torch.from_numpy(b)[None], method)
    np.testing.assert_allclose(out.numpy(), expect, rtol=1e-10)


@pytest.mark.parametrize("backend", ["reference", "torch", *CPP])
@pytest.mark.parametrize("method", METHODS)
def test_nan_entries_are_dropped_per_comparison(method: str, backend: str) -> None:
    """A batch with NaN gives what a loop over its comparisons gives: brain RDMs over time with a pair
    missing at one time point only, against models of which one lacks another pair (rsatoolbox would
    refuse that pair of RDMs; each comparison drops the entries NaN in either of its RDMs)."""
    rng = np.random.default_rng(7)
    brain = torch.from_numpy(rng.normal(size=(4, 1, 45)))  # (time, 1, pairs)
    models = torch.from_numpy(rng.normal(size=(1, 3, 45)))  # (1, model, pairs)
    brain[0, 0, 3] = float("nan")
    models[0, 2, 30] = float("nan")
    got = fa.compare_rdms(brain, models, method, backend=backend)
    assert got.shape == (4, 3)
    for t in range(4):
        for m in range(3):
            a, b = brain[t, 0], models[0, m]
            keep = ~(a.isnan() | b.isnan())
            want = _masked_oracle(method, a[keep].numpy(), b[keep].numpy())
            np.testing.assert_allclose(float(got[t, m]), want, rtol=1e-10, atol=1e-12)
    # the comparisons without NaN are what they are without the NaN elsewhere in the batch
    clean = fa.compare_rdms(brain[1:], models[:, :2], method, backend=backend)
    np.testing.assert_array_equal(got[1:, :2].numpy(), clean.numpy())


def _masked_oracle(method: str, a: np.ndarray, b: np.ndarray) -> float:
    """rsatoolbox's statistic of two RDM vectors of any length (entries left after masking)."""
    return float(rt.rdm.compare(rt.rdm.RDMs(a[None]), rt.rdm.RDMs(b[None]), RT_NAMES[method])[0, 0])


@given(
    n=st.sampled_from([3, 4, 7, 12]),
    batch_a=st.sampled_from([(), (1,), (3,), (2, 1)]),
    batch_b=st.sampled_from([(), (1,), (3,), (1, 3)]),
    levels=st.sampled_from([2, 3, 1000]),
    method=st.sampled_from(METHODS),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_torch_matches_reference(
    n: int, batch_a: tuple, batch_b: tuple, levels: int, method: str, dtype: torch.dtype, seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    k = n * (n - 1) // 2
    a = torch.randn((*batch_a, k), generator=gen, dtype=torch.float64)
    b = torch.randint(0, levels, (*batch_b, k), generator=gen).double()
    b[..., 0], b[..., 1] = 0.0, 1.0  # never constant
    ref = fa.compare_rdms(a, b, method, backend="reference")
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    for backend in ["torch", *CPP]:
        out = fa.compare_rdms(a.to(dtype), b.to(dtype), method, backend=backend)
        assert out.shape == ref.shape
        np.testing.assert_allclose(out.double().numpy(), ref.numpy(), rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", ["reference", "torch", *CPP])
@pytest.mark.parametrize("method", METHODS)
def test_noise_ceiling_matches_rsatoolbox(method: str, backend: str) -> None:
    rng = np.random.default_rng(4)
    shared = rng.normal(size=45)
    rdms = shared + rng.normal(size=(6, 2, 45))  # (subjects, rois, pairs)
    lower, upper = fa.noise_ceiling(torch.from_numpy(rdms), method, backend=backend)
    assert lower.shape == upper.shape == (2,)
    for roi in range(2):
        with pytest.warns(UserWarning) if method == "kendall_tau_a" else _nullcontext():
            lo, up = rt.inference.boot_noise_ceiling(rt.rdm.RDMs(rdms[:, roi]), method=RT_NAMES[method])
        np.testing.assert_allclose([lower[roi], upper[roi]], [lo, up], rtol=1e-10, atol=1e-12)
    assert bool((lower <= upper).all())


@pytest.mark.parametrize("backend", ["reference", "torch", *CPP])
@pytest.mark.parametrize("method", ["spearman", "pearson"])
def test_noise_ceiling_drops_nan_entries_as_compare_rdms_and_rsatoolbox_do(method: str, backend: str) -> None:
    rng = np.random.default_rng(5)
    rdms = rng.normal(size=45) + rng.normal(size=(5, 2, 45))  # (subjects, rois, pairs)
    shared = rdms.copy()
    shared[:, :, [3, 17]] = np.nan  # pairs nobody has (e.g. never judged): rsatoolbox masks them
    for roi in range(2):
        lo, up = rt.inference.boot_noise_ceiling(rt.rdm.RDMs(shared[:, roi]), method=RT_NAMES[method])
        lower, upper = fa.noise_ceiling(torch.from_numpy(shared[:, roi]), method, backend=backend)
        np.testing.assert_allclose([lower, upper], [lo, up], rtol=1e-10, atol=1e-12)
    # NaN at an entry of one subject's RDM drops that entry from that ceiling's RDMs, and only from
    # those: each ROI (any leading index) is the ceiling of its own subjects' RDMs, as a loop gives
    scattered = rdms.copy()
    scattered[0, 1, 3] = scattered[2, 0, 17] = np.nan
    got = fa.noise_ceiling(torch.from_numpy(scattered), method, backend=backend)
    for roi in range(2):  # one ceiling alone: its own NaN entry dropped, the other ROI's not
        alone = fa.noise_ceiling(torch.from_numpy(scattered[:, roi]), method, backend=backend)
        np.testing.assert_allclose([g[roi].numpy() for g in got], [w.numpy() for w in alone], rtol=1e-13)
        if backend == "torch" and method != "kendall_tau_a":  # rsatoolbox warns about its tau-a ceiling
            kept = rdms[:, roi][:, np.arange(45) != (17, 3)[roi]]
            lo, up = rt.inference.boot_noise_ceiling(rt.rdm.RDMs(kept), method=RT_NAMES[method])
            np.testing.assert_allclose([alone[0], alone[1]], [lo, up], rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="fewer than 2 RDM entries are not NaN in every RDM of rdms"):
        fa.noise_ceiling(torch.full((3, 10), float("nan")).index_fill_(1, torch.tensor([0]), 1.0), method)
    lone = torch.from_numpy(rdms.copy())
    lone[:, 1, 1:] = float("nan")
    with pytest.raises(
        ValueError, match=r"fewer than 2 RDM entries are not NaN in every subject's RDM at index \(1,\)"
    ):
        fa.noise_ceiling(lone, method)


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


@pytest.mark.parametrize(
    ("a", "b", "kwargs", "match"),
    [
        (torch.randn(10), torch.randn(15), {}, "same number of conditions"),
        (torch.randn(11), torch.randn(11), {}, r"n\*\(n-1\)/2"),
        (torch.randn(1), torch.randn(1), {}, "at least 3 conditions"),
        (torch.randn(2, 10), torch.randn(3, 10), {}, "broadcast"),
        (torch.ones(10), torch.randn(10), {}, "constant"),
        (torch.zeros(10), torch.randn(10), {"method": "cosine"}, "all zeros"),
        (torch.randn(10), torch.randn(10), {"method": "tau-a"}, "method"),
        (torch.tensor([float("inf")] + [1.0] * 9), torch.randn(10), {}, "inf"),
        (
            torch.tensor([float("nan")] * 9 + [1.0]),
            torch.randn(10),
            {},
            "fewer than 2 RDM entries are not NaN",
        ),
    ],
)
def test_compare_rejects_bad_input(a: torch.Tensor, b: torch.Tensor, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fa.compare_rdms(a, b, **kwargs)


def test_square_rdms_are_refused_not_read_as_rows_of_condensed_ones() -> None:
    # 10 x 10 is also the shape of 10 condensed RDMs of 5 conditions: compare_rdms returned 10 numbers
    # that meant nothing for fastalign.rdm(..., square=True) outputs
    g = torch.Generator().manual_seed(0)
    a, b = (fa.rdm(torch.randn(10, 20, generator=g, dtype=torch.float64), square=True) for _ in range(2))
    square = r"of shape \(10, 10\) is a square RDM \(symmetric, zero diagonal\), not condensed RDM vectors: "
    with pytest.raises(ValueError, match=r"^compare_rdms: a " + square + r"pass its strict upper triangle"):
        fa.compare_rdms(a, b)
    with pytest.raises(ValueError, match=r"^compare_rdms: b " + square):
        fa.compare_rdms(a[0, :10], b)  # a 1-D a of 10 pairs, b square
    with pytest.raises(ValueError, match=r"^rsa_permutation_test: a " + square):
        fa.rsa_permutation_test(a, b, n_permutations=10)
    with pytest.raises(ValueError, match=r"^noise_ceiling: rdms of shape \(3, 10, 10\) is a square RDM"):
        fa.noise_ceiling(torch.stack([a, b, a]))
    with pytest.raises(ValueError, match=r"got last dim 8 \(shape \(8, 8\): a square RDM\? pass its"):
        eight = fa.rdm(torch.randn(8, 5, generator=g, dtype=torch.float64), square=True)
        fa.compare_rdms(eight, eight)
    # the condensed forms compare; so do 10 condensed RDMs of 5 conditions that are not one square RDM
    i, j = np.triu_indices(10, 1)
    assert fa.compare_rdms(a[i, j], b[i, j]).shape == ()
    rows = torch.rand(10, 10, generator=g, dtype=torch.float64)
    assert fa.compare_rdms(rows, rows).shape == (10,)
    assert fa.compare_rdms(rows + rows.T, rows + rows.T).shape == (10,)  # symmetric, nonzero diagonal


def test_a_square_rdm_against_a_condensed_one_is_named() -> None:
    with pytest.raises(ValueError, match=r"last dims 10 and 45 \(a \(10, 10\) looks like square RDMs of 10 "):
        fa.compare_rdms(torch.rand(10, 10), torch.rand(45))
    with pytest.raises(ValueError, match=r"last dims 45 and 10 \(b \(3, 10, 10\) looks like square RDMs"):
        fa.compare_rdms(torch.rand(45), torch.rand(3, 10, 10))
    with pytest.raises(ValueError, match=r"last dims 10 and 15$"):  # no square RDM of 10 has 15 pairs
        fa.compare_rdms(torch.rand(10, 10), torch.rand(15))


def test_noise_ceiling_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="n_subjects >= 2"):
        fa.noise_ceiling(torch.randn(1, 10))
    with pytest.raises(ValueError, match="NaN"):
        fa.noise_ceiling(torch.full((3, 10), float("nan")))
    with pytest.raises(ValueError, match="contains inf"):
        fa.noise_ceiling(torch.randn(3, 10).index_fill_(1, torch.tensor([4]), float("inf")))


@pytest.mark.parametrize("backend", ["reference", "torch", *CPP])
@pytest.mark.parametrize(
    ("method", "what"), [("spearman", "is constant"), ("pearson", "is constant"), ("cosine", "is all zeros")]
)
def test_noise_ceiling_of_a_constant_pool_raises(method: str, what: str, backend: str) -> None:
    """RDMs v and -v pool to a constant (ranks, z-scores) or all-zero (cosine) RDM: the bound is undefined
    there, as compare_rdms's statistic is, so the same ValueError (it was NaN)."""
    gen = torch.Generator().manual_seed(6)
    v, w = (
        torch.randn(10, dtype=torch.float64, generator=gen),
        torch.randn(10, dtype=torch.float64, generator=gen),
    )
    undefined = f"{what}; method '{method}' is undefined for it"
    with pytest.raises(ValueError, match=f"compare_rdms: a {undefined}"):
        fa.compare_rdms(torch.zeros(10), v, method, backend=backend)
    with pytest.raises(ValueError, match=f"noise_ceiling: the pooled RDM of all subjects {undefined}"):
        fa.noise_ceiling(torch.stack([v, -v]), method, backend=backend)
    with pytest.raises(
        ValueError, match=rf"the pooled RDM of the other subjects .* at index \(2,\) {undefined}"
    ):
        fa.noise_ceiling(torch.stack([v, -v, w]), method, backend=backend)
    lower, upper = fa.noise_ceiling(torch.stack([v, -v, w]), "kendall_tau_a", backend=backend)
    assert bool(torch.isfinite(lower) & torch.isfinite(upper))  # tau-a of a constant RDM is 0: defined


# One RDM vector per power of two: float64 near 1e200 and 1e-170, float32 near 1e20 and 1e-25.
EXPONENTS = {torch.float64: [665, -565, 0], torch.float32: [66, -83, 0]}


def _extreme(v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """v (..., 3, K) with the vectors along dim -2 scaled by EXPONENTS (exact), in dtype."""
    return (v * torch.tensor([2.0**e for e in EXPONENTS[dtype]], dtype=torch.float64)[:, None]).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("backend", ["reference", "torch", *CPP])
@pytest.mark.parametrize("method", ["pearson", "cosine"])
def test_scale_invariant_statistics_at_extreme_magnitudes(
    method: str, backend: str, dtype: torch.dtype
) -> None:
    """pearson and cosine of RDM vectors scaled by powers of two equal float64's on the unscaled vectors
    (they were 0, NaN or a 'not finite' error) in compare_rdms, the permutation test and noise_ceiling."""
    gen = torch.Generator().manual_seed(8)
    a = torch.randn(3, 45, generator=gen, dtype=torch.float64)
    b = torch.randn(3, 45, generator=gen, dtype=torch.float64).flip(0) + a
    tol = 1e-10 if dtype == torch.float64 else 2e-6
    want = fa.compare_rdms(a[:, None], b, method, backend="reference")
    got = fa.compare_rdms(_extreme(a, dtype)[:, None], _extreme(b, dtype), method, backend=backend)
    np.testing.assert_allclose(got.double().numpy(), want.numpy(), rtol=tol, atol=tol)
    res = fa.rsa_permutation_test(_extreme(a, dtype), _extreme(b, dtype), method=method, n_permutations=20,
                                  seed=1, return_null=True, backend=backend)  # fmt: skip
    ref = fa.rsa_permutation_test(a, b, method=method, n_permutations=20, seed=1, return_null=True)
    assert res.null is not None and ref.null is not None
    np.testing.assert_allclose(res.null.double().numpy(), ref.null.numpy(), rtol=tol, atol=tol)
    bounds = fa.noise_ceiling(_extreme(torch.stack([a, b]), dtype), method, backend=backend)
    want_bounds = fa.noise_ceiling(torch.stack([a, b]), method, backend="reference")
    for got_b, want_b in zip(bounds, want_bounds, strict=True):
        np.testing.assert_allclose(got_b.double().numpy(), want_b.numpy(), rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", ["reference", "torch", *CPP])
@pytest.mark.parametrize("method", ["spearman", "pearson", "rho_a", "cosine"])
def test_permuted_views_give_the_same_result(method: str, backend: str) -> None:
    """(subjects, times, K) RDMs viewed as (times, 1, subjects, K): kernels must respect the strides."""
    gen = torch.Generator().manual_seed(0)
    brain = torch.randn(3, 5, 28, generator=gen, dtype=torch.float64)
    model = torch.randn(4, 28, generator=gen, dtype=torch.float64)
    view = brain.permute(1, 0, 2)[:, None]
    out = fa.compare_rdms(view, model[None, :, None], method, backend=backend)
    dense = fa.compare_rdms(view.contiguous(), model[None, :, None].contiguous(), method, backend="reference")
    assert out.shape == (5, 4, 3)
    np.testing.assert_allclose(out.numpy(), dense.numpy(), rtol=1e-12, atol=1e-12)
    res = fa.rsa_permutation_test(view, model[None, :, None], method=method, n_permutations=9, seed=0,
                                  return_null=True, backend=backend)  # fmt: skip
    ref = fa.rsa_permutation_test(view.contiguous(), model[None, :, None], method=method, n_permutations=9,
                                  seed=0, return_null=True, backend="reference")  # fmt: skip
    assert res.null is not None and ref.null is not None
    np.testing.assert_allclose(res.null.numpy(), ref.null.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(not CPP, reason="fastalign._C without the RSA ops")
def test_cpp_tau_a_long_tied_vectors_match_scipy() -> None:
    """O(K log K) tau-a on 19,900 heavily tied entries: exact integer pair counts (tau-a = tau-b * sqrt
    of the untied pair fractions, from scipy's kendalltau)."""
    rng = np.random.default_rng(5)
    a, b = rng.integers(0, 7, 19_900).astype(np.float64), rng.integers(0, 3, 19_900).astype(np.float64)
    out = float(fa.compare_rdms(torch.from_numpy(a), torch.from_numpy(b), "kendall_tau_a", backend="cpp"))
    tot = len(a) * (len(a) - 1) / 2
    ties = lambda v: sum(c * (c - 1) / 2 for c in np.unique(v, return_counts=True)[1])
    tau_b = stats.kendalltau(a, b).statistic
    expect = tau_b * np.sqrt((tot - ties(a)) * (tot - ties(b))) / tot
    np.testing.assert_allclose(out, expect, rtol=1e-10)
    short = [torch.from_numpy(v[:1953]) for v in (a, b)]  # 63 conditions
    assert float(fa.compare_rdms(*short, "kendall_tau_a", backend="cpp")) == float(
        fa.compare_rdms(*short, "kendall_tau_a", backend="torch")
    )  # integer counts: identical, not just close


@pytest.mark.parametrize("backend", ["reference", "torch", *CPP])
def test_noise_ceiling_pool_constant_up_to_rounding_raises(backend: str) -> None:
    """Subjects r and 1 - r z-score to opposite vectors, so the pool left when s is held out is zero up
    to rounding (5.6e-17): its Pearson correlation with s was rounding noise (-0.70 / -0.72)."""
    r = torch.tensor([0, 0, 0, 1, 0, 0], dtype=torch.float64)
    rdms = torch.stack([r, 1 - r, torch.tensor([1, 1, 1, 0, 1, 1.5], dtype=torch.float64)])
    match = r"the pooled RDM of the other subjects .* at index \(2,\) is constant; method 'pearson'"
    with pytest.raises(ValueError, match=match):
        fa.noise_ceiling(rdms, "pearson", backend=backend)


@pytest.mark.parametrize("backend", ["reference", "torch", *CPP])
def test_pearson_of_an_rdm_constant_up_to_rounding_raises(backend: str) -> None:
    """0.1 + 0.2 and 0.3 differ by one ulp: centring leaves only rounding, which gave a correlation of
    noise instead of the ValueError of a constant RDM. The rank methods see exact values and rank them."""
    a = torch.full((10,), 0.3, dtype=torch.float64)
    a[::3] = 0.1 + 0.2
    b = torch.randn(10, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    with pytest.raises(ValueError, match="compare_rdms: a is constant; method 'pearson'"):
        fa.compare_rdms(a, b, "pearson", backend=backend)
    with pytest.raises(ValueError, match="rsa_permutation_test: b is constant; method 'pearson'"):
        fa.rsa_permutation_test(b, a, method="pearson", n_permutations=3, backend=backend)
    want = stats.spearmanr(a.numpy(), b.numpy()).statistic
    assert abs(float(fa.compare_rdms(a, b, "spearman", backend=backend)) - want) < 1e-12


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", METHODS)
def test_reference_computes_half_inputs_in_float32(dtype: torch.dtype, method: str) -> None:
    """The reference computed half RDMs in half precision: float16 results where float32 is documented,
    p-values unlike the other backends'."""
    gen = torch.Generator().manual_seed(9)
    a, b = (torch.randn(2, 28, generator=gen).to(dtype) for _ in range(2))
    ref = fa.compare_rdms(a, b, method, backend="reference")
    assert ref.dtype == torch.float32
    torch.testing.assert_close(ref, fa.compare_rdms(a, b, method, backend="torch"), rtol=1e-5, atol=1e-6)
    res = fa.rsa_permutation_test(a, b, method=method, n_permutations=19, seed=2, backend="reference")
    fast = fa.rsa_permutation_test(a, b, method=method, n_permutations=19, seed=2, backend="torch")
    assert res.statistic.dtype == res.pvalue.dtype == torch.float32
    torch.testing.assert_close(res.pvalue, fast.pvalue)
    bounds = fa.noise_ceiling(torch.cat([a, b]), method, backend="reference")
    want = fa.noise_ceiling(torch.cat([a, b]).float(), method, backend="reference")
    for got_b, want_b in zip(bounds, want, strict=True):
        assert got_b.dtype == torch.float32
        torch.testing.assert_close(got_b, want_b)


@pytest.mark.parametrize(
    "a",
    [
        torch.tensor([2**53 + 1, 2**53, 1, 2, 3, 4], dtype=torch.int64),
        torch.tensor([-(2**60), 0, 1, 2, 3, 4], dtype=torch.int64),
        torch.tensor([2**60, 0, 1, 2, 3, 4], dtype=torch.uint64),
        torch.tensor([2**63 + 5, 0, 1, 2, 3, 4], dtype=torch.uint64),
    ],
    ids=["int64-2^53", "int64-negative", "uint64-2^60", "uint64-2^63"],
)
def test_integers_float64_cannot_hold_are_refused(a: torch.Tensor) -> None:
    """Distinct integers beyond 2**53 would tie in float64: refused, never silently merged."""
    b = torch.arange(6, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"compare_rdms: a holds u?int64 values beyond 2\*\*53"):
        fa.compare_rdms(a, b, "pearson")
    exact = torch.tensor([7, 0, 1, 2, 3, 4], dtype=a.dtype)
    assert torch.allclose(fa.compare_rdms(exact, b, "pearson"), fa.compare_rdms(exact.double(), b, "pearson"))


@pytest.mark.parametrize("backend", ["torch", *CPP])
@pytest.mark.parametrize("method", METHODS)
def test_noise_ceiling_in_chunks_of_rdms(method: str, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Many RDMs (subjects x 3 x 7 time points) are computed a few at a time: the bounds are those of the
    whole stack; an undefined pool inside a chunk is reported at its index in the whole stack."""
    rng = np.random.default_rng(8)
    rdms = torch.from_numpy(rng.normal(size=45) + rng.normal(size=(5, 3, 7, 45)))
    whole = fa.noise_ceiling(rdms, method, backend=backend)
    monkeypatch.setattr(rsa_stats, "_NC_CHUNK_ELEMENTS", 5 * 45 * 2)  # 2 of the 21 RDM positions per chunk
    chunked = fa.noise_ceiling(rdms, method, backend=backend)
    for got, want in zip(chunked, whole, strict=True):
        assert got.shape == (3, 7)
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-12, atol=1e-12)
    if method in ("spearman", "pearson"):
        bad = rdms.clone()  # at (2, 5): subjects v, -v, u, -u pool to a constant, left out is subject 4
        bad[1, 2, 5], bad[3, 2, 5] = -bad[0, 2, 5], -bad[2, 2, 5]
        with pytest.raises(
            ValueError, match=r"pooled RDM of the other subjects .* at index \(4, 2, 5\)"
        ) as err:
            fa.noise_ceiling(bad, method, backend=backend)
        assert (
            err.value.__context__ is None or err.value.__suppress_context__
        )  # no chunk-relative error shown


@pytest.mark.parametrize("chunk", [None, 5 * 45 * 2])
def test_spearman_rsa_and_noise_ceiling_is_both_calls(
    chunk: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The evaluation's one pass (each subject RDM ranked once) gives compare_rdms's Spearman similarities
    with every model and noise_ceiling's bounds, whole or a few RDMs at a time; bad models are refused by
    name."""
    rng = np.random.default_rng(9)
    rdms = torch.from_numpy(rng.normal(size=45) + rng.normal(size=(5, 3, 7, 45)))
    models = torch.from_numpy(rng.normal(size=(4, 45)))
    models[1, :10] = models[1, 10:20]  # ties
    if chunk is not None:
        monkeypatch.setattr(rsa_stats, "_NC_CHUNK_ELEMENTS", chunk)
    sims, lower, upper = rsa_stats.spearman_rsa_and_noise_ceiling(rdms, models)
    assert sims.shape == (5, 3, 7, 4) and sims.dtype == torch.float64
    want = fa.compare_rdms(rdms[..., None, :], models, "spearman")
    np.testing.assert_allclose(sims.numpy(), want.numpy(), rtol=1e-12, atol=1e-13)
    for got, ref in zip((lower, upper), fa.noise_ceiling(rdms, "spearman"), strict=True):
        np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-12, atol=1e-13)
    for bad, words in [(models[:, :44], "models must have shape"), (models[0], "models must have shape"),
                       (torch.ones(2, 45), "models at index \\(0,\\) is constant")]:  # fmt: skip
        with pytest.raises(ValueError, match="spearman_rsa_and_noise_ceiling: " + words):
            rsa_stats.spearman_rsa_and_noise_ceiling(rdms, bad)
    with pytest.raises(ValueError, match="spearman_rsa_and_noise_ceiling: rdms must have shape"):
        rsa_stats.spearman_rsa_and_noise_ceiling(rdms[:1], models)


@pytest.mark.skipif(not CPP, reason="fastalign._C is not built")
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_spearman_ceiling_is_the_composed_one(threads: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """float64 CPU RDMs take one fused pass (rsa_spearman_ceiling: each subject RDM and each pool ranked
    once in a per-thread buffer): the same similarities and bounds as the composed path that stores the
    ranks and pools, for random, heavily tied and integer RDMs, 2 to 6 subjects, one point or a grid of
    them, with and without models; a constant leave-one-out pool (NaN in the kernel) is named by the
    composed path's error at its index."""
    from fastalign.rsa import cpp

    rng = np.random.default_rng(12)
    calls = []
    fused = cpp.spearman_ceiling
    monkeypatch.setattr(cpp, "spearman_ceiling", lambda *a: calls.append(tuple(a[0].shape)) or fused(*a))
    limit = rsa_stats._FUSED_CEILING_BYTES
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for shape, kind in [((2, 45), "normal"), ((5, 3, 4, 45), "normal"), ((6, 7, 190), "tied"),
                            ((3, 2, 66), "integer"), ((4, 1, 3), "normal")]:  # fmt: skip
            k = shape[-1]
            rdms = rng.normal(size=shape)
            if kind == "tied":
                rdms = rdms.round(1)
            elif kind == "integer":
                rdms = rng.integers(0, 5, size=shape).astype(float)
            rdms = torch.from_numpy(rdms)
            models = torch.from_numpy(rng.normal(size=(3, k)).round(1))
            calls.clear()
            got = (
                *fa.noise_ceiling(rdms, "spearman"),
                *rsa_stats.spearman_rsa_and_noise_ceiling(rdms, models),
            )
            assert calls == [(shape[0], rdms[0, ..., 0].numel(), k)] * 2, calls
            monkeypatch.setattr(rsa_stats, "_FUSED_CEILING_BYTES", 0)  # the composed path
            want = (
                *fa.noise_ceiling(rdms, "spearman"),
                *rsa_stats.spearman_rsa_and_noise_ceiling(rdms, models),
            )
            monkeypatch.setattr(rsa_stats, "_FUSED_CEILING_BYTES", limit)
            assert len(calls) == 2
            for g, w in zip(got, want, strict=True):
                assert g.shape == w.shape and g.dtype == w.dtype == torch.float64
                np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-13, atol=1e-14)
        bad = torch.from_numpy(rng.normal(size=(5, 3, 45)))  # at point 1: v, -v, u, -u and subject 4
        bad[1, 1], bad[3, 1] = -bad[0, 1], -bad[2, 1]
        with pytest.raises(ValueError, match=r"pooled RDM of the other subjects .* at index \(4, 1\)"):
            fa.noise_ceiling(bad, "spearman")
    finally:
        torch.set_num_threads(old)


@pytest.mark.skipif(not CPP, reason="fastalign._C is not built")
def test_fused_spearman_ceiling_gives_time_resolved_rsa_bits() -> None:
    """The evaluation's similarities from time_resolved_rdms + spearman_rsa_and_noise_ceiling are the
    bits time_resolved_rsa's fused kernel gives: the same RDM, the same ranks, the same dot products."""
    gen = torch.Generator().manual_seed(13)
    eeg = torch.randn(4, 30, 5, 12, dtype=torch.float64, generator=gen)
    models = torch.rand(3, 435, dtype=torch.float64, generator=gen)
    sims, _, _ = rsa_stats.spearman_rsa_and_noise_ceiling(fa.time_resolved_rdms(eeg, "correlation"), models)
    want = fa.time_resolved_rsa(eeg, models)
    assert torch.equal(sims, want), (sims - want).abs().max()


@pytest.mark.skipif(not CPP, reason="fastalign._C is not built")
@pytest.mark.parametrize("threads", [1, 2])
def test_time_resolved_ceiling_is_the_composed_one_bit_for_bit(
    threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """time_resolved_spearman_and_noise_ceiling (evaluate's EEG RSA) computes each window's RDM and ranks
    it in one fused pass (rsa_rdm_spearman_ceiling): the bits of time_resolved_rdms +
    spearman_rsa_and_noise_ceiling, for float64 and float32 data, every RDM method, windows and steps,
    subjects with copies of patterns (distances 0 and 2 up to rounding) and float32 models; data whose
    windows have more features than the compiled RDMs take goes through the composed calls."""
    used = []
    op = torch.ops.fastalign.rsa_rdm_spearman_ceiling
    monkeypatch.setattr(
        rsa_stats.torch.ops.fastalign,
        "rsa_rdm_spearman_ceiling",
        lambda *a: used.append(1) or op(*a),
        raising=False,
    )
    gen = torch.Generator().manual_seed(21)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for dtype, method, window, step, fused in [
            (torch.float64, "correlation", 1, 1, True), (torch.float32, "correlation", 2, 3, True),
            (torch.float64, "cosine", 3, 2, True), (torch.float64, "euclidean", 1, 1, True),
            (torch.float64, "correlation", 14, 1, False),  # 5 channels x 14 samples: 70 > 64 features
        ]:  # fmt: skip
            eeg = torch.randn(3, 12, 5, 20, dtype=torch.float64, generator=gen)
            eeg[1, 4] = 2 * eeg[1, 3] + 1  # a shifted and scaled copy: correlation distance 0
            eeg[2, 5] = -eeg[2, 0]  # an opposite pattern: correlation distance 2
            eeg = eeg.to(dtype)
            models = torch.rand(3, 66, dtype=torch.float64, generator=gen)
            for m in (models, models.float()):
                used.clear()
                got = rsa_stats.time_resolved_spearman_and_noise_ceiling(eeg, m, method, window, step)
                # float32 data and float32 models are compared in float32: the composed calls
                wide = torch.float64 in (eeg.dtype, m.dtype)
                assert used == ([1] if fused and wide else []), (method, window, eeg.dtype, m.dtype)
                want = rsa_stats.spearman_rsa_and_noise_ceiling(
                    fa.time_resolved_rdms(eeg, method, window, step), m
                )
                for g, w in zip(got, want, strict=True):
                    assert g.dtype == w.dtype and torch.equal(g, w), (method, (g - w).abs().max())
    finally:
        torch.set_num_threads(old)


@pytest.mark.skipif(not CPP, reason="fastalign._C is not built")
def test_time_resolved_ceiling_errors_are_the_composed_ones() -> None:
    """What the fused pass cannot give (a NaN in the data, a constant pattern, a window whose RDM is
    constant, a constant model RDM) is named by the composed calls' errors, as before."""
    gen = torch.Generator().manual_seed(22)
    eeg = torch.randn(3, 6, 4, 5, dtype=torch.float64, generator=gen)
    models = torch.rand(2, 15, dtype=torch.float64, generator=gen)
    f = rsa_stats.time_resolved_spearman_and_noise_ceiling
    nan = eeg.clone()
    nan[1, 2, 0, 3] = math.nan
    with pytest.raises(ValueError, match=r"time_resolved_rdms: data contains NaN"):
        f(nan, models)
    flat = eeg.clone()
    flat[2, 3, :, 1] = 1.5  # one sample of one condition: the same on every channel
    with pytest.raises(ValueError, match=r"time_resolved_rdms: .*constant pattern"):
        f(flat, models)
    same = eeg.clone()
    same[0, :, :, 2] = same[0, 0, :, 2] * torch.arange(1.0, 7.0)[:, None]  # scaled copies: an RDM of zeros
    with pytest.raises(ValueError, match=r"spearman_rsa_and_noise_ceiling: .*constant"):
        f(same, models)
    with pytest.raises(ValueError, match=r"spearman_rsa_and_noise_ceiling: .*models.*constant"):
        f(eeg, torch.ones(2, 15, dtype=torch.float64))


@pytest.mark.skipif(not CPP, reason="fastalign._C is not built")
@pytest.mark.parametrize(
    ("dtype", "scale"),
    [(torch.float64, 1e-150), (torch.float64, 1e-160), (torch.float64, 1e-170), (torch.float32, 1e-22),
     (torch.float32, 1e-30)],
)  # fmt: skip
def test_time_resolved_ceiling_of_tiny_euclidean_windows_is_the_composed_one(
    dtype: torch.dtype, scale: float
) -> None:
    """time_resolved_rdms scales tiny windows up for their euclidean sums and their distances back down
    (into subnormals or zero: ties, or a constant RDM that it refuses); the fused kernel ranked them at
    scale, so these windows go through the composed calls: the same bits, or the same error."""
    gen = torch.Generator().manual_seed(23)
    eeg = (torch.randn(3, 10, 4, 6, dtype=torch.float64, generator=gen) * scale).to(dtype)
    models = torch.rand(2, 45, dtype=torch.float64, generator=gen)
    f = rsa_stats.time_resolved_spearman_and_noise_ceiling

    def composed() -> tuple[torch.Tensor, ...]:
        return rsa_stats.spearman_rsa_and_noise_ceiling(fa.time_resolved_rdms(eeg, "euclidean"), models)

    try:
        want = composed()
    except ValueError as exc:
        with pytest.raises(ValueError, match=re.escape(str(exc))):
            f(eeg, models, "euclidean")
        return
    for g, w in zip(f(eeg, models, "euclidean"), want, strict=True):
        assert g.dtype == w.dtype and torch.equal(g, w), (g - w).abs().max()


@pytest.mark.skipif(not CPP, reason="fastalign._C is not built")
@pytest.mark.parametrize("env", ["cuda", "triton", "bogus"])
def test_time_resolved_ceiling_backend_variable_keeps_the_composed_errors(
    env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With FASTALIGN_BACKEND naming a backend that cannot run (or none), bad data is still named as the
    composed calls name it (they validate the data before they choose a backend)."""
    monkeypatch.setenv("FASTALIGN_BACKEND", env)
    eeg = torch.randn(3, 6, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(24))
    eeg[1, 2, 0, 3] = math.nan
    models = torch.rand(2, 15, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"time_resolved_rdms: data contains NaN"):
        rsa_stats.time_resolved_spearman_and_noise_ceiling(eeg, models)


@pytest.mark.skipif(not CPP, reason="fastalign._C is not built")
def test_float32_rdm_spreading_its_float32_tolerance_is_constant_on_every_path() -> None:
    """A float32 euclidean RDM whose spread is exactly its tolerance rounded to float32 (6.25, against
    16 eps sqrt(9) * 1092266.625 = 6.2499998 in double) is constant for common.exact_constants, which
    compares float32 tensors in float32; the compiled kernels decided it in double and ranked it. Crafted
    integer patterns: 9 features, distances exact sums of squares, 1092261, 1092266.625, 1092260.375."""
    x = torch.tensor(
        [[1279, -1279, 0, 14, 1, -56, 4, 0, 42], [0, 1279, -1279, -24, 48, 46, -5, 3, 8],
         [-1279, 0, 1279, 10, -49, 10, 1, -3, -50]],
        dtype=torch.float32,
    )  # fmt: skip
    assert fa.rdm(x, "euclidean").tolist() == [1092261.0, 1092266.625, 1092260.375]
    eeg = torch.randn(3, 3, 9, 1, generator=torch.Generator().manual_seed(25))
    eeg[0, :, :, 0] = x
    models = torch.tensor([[1.0, 3.0, 2.0], [2.0, 1.0, 3.0]], dtype=torch.float64)
    constant = r"rdms at index \(0, 0\) is constant"
    with pytest.raises(ValueError, match=constant):
        rsa_stats.spearman_rsa_and_noise_ceiling(fa.time_resolved_rdms(eeg, "euclidean"), models)
    with pytest.raises(ValueError, match=constant):
        rsa_stats.time_resolved_spearman_and_noise_ceiling(eeg, models, "euclidean")
    for backend in ("torch", "cpp"):
        with pytest.raises(ValueError, match=r"brain RDM at window index \(0, 0\) is constant"):
            fa.time_resolved_rsa(eeg, models, "spearman", rdm_method="euclidean", backend=backend)


def test_spearman_rsa_and_noise_ceiling_promotes_mixed_dtypes() -> None:
    """float32 and float64 operands are computed in float64, as compare_rdms promotes them."""
    rng = np.random.default_rng(10)
    rdms = torch.from_numpy(rng.normal(size=(3, 4, 66)))
    models = torch.from_numpy(rng.normal(size=(2, 66)))
    for a, b in ((rdms, models.float()), (rdms.float(), models)):
        sims, lower, _ = rsa_stats.spearman_rsa_and_noise_ceiling(a, b)
        assert sims.dtype == lower.dtype == torch.float64
        want = fa.compare_rdms(a[..., None, :], b, "spearman")
        np.testing.assert_allclose(sims.numpy(), want.numpy(), rtol=1e-12, atol=1e-13)
    with pytest.raises(ValueError, match="spearman_rsa_and_noise_ceiling: rdms must have shape"):
        rsa_stats.spearman_rsa_and_noise_ceiling(torch.tensor(1.0), models)


_BAD_BACKEND = {
    "rdm": lambda b: fa.rdm(torch.randn(4, 3), backend=b),
    "time_resolved_rdms": lambda b: fa.time_resolved_rdms(torch.randn(4, 3, 5), backend=b),
    "rank": lambda b: fa.rank(torch.randn(5), backend=b),
    "compare_rdms": lambda b: fa.compare_rdms(torch.rand(6), torch.rand(6), backend=b),
    "noise_ceiling": lambda b: fa.noise_ceiling(torch.rand(3, 6), backend=b),
    "rsa_permutation_test": lambda b: fa.rsa_permutation_test(torch.rand(6), torch.rand(6), backend=b),
    "cluster_permutation_test": lambda b: fa.cluster_permutation_test(torch.randn(4, 5), backend=b),
}


@pytest.mark.parametrize("fn", sorted(_BAD_BACKEND))
def test_an_unknown_backend_is_named_with_the_function(fn: str) -> None:
    with pytest.raises(ValueError, match=rf"^{fn}: backend must be one of \('auto'.*got 'gpu'"):
        _BAD_BACKEND[fn]("gpu")


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_float8_inputs_are_their_float32_values(dtype: torch.dtype) -> None:
    """float8 RDMs and patterns (which torch's CPU max, sum and type promotion do not take) are computed
    as the float32 values they are, as rank already took them."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 6, 8, generator=g).to(dtype)
    x32 = x.float()
    assert torch.equal(fa.rdm(x), fa.rdm(x32))
    r, r32 = fa.rdm(x).to(dtype), fa.rdm(x).to(dtype).float()
    assert torch.equal(fa.compare_rdms(r[0], r[1:]), fa.compare_rdms(r32[0], r32[1:]))
    assert all(torch.equal(a, b) for a, b in zip(fa.noise_ceiling(r), fa.noise_ceiling(r32), strict=True))
    data = torch.randn(4, 6, 3, 5, generator=g).to(dtype)
    assert torch.equal(fa.time_resolved_rsa(data, r), fa.time_resolved_rsa(data.float(), r32))
    got = fa.rsa_permutation_test(r[0], r[1], n_permutations=20, seed=1)
    want = fa.rsa_permutation_test(r32[0], r32[1], n_permutations=20, seed=1)
    assert torch.equal(got.pvalue, want.pvalue)


def test_return_null_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match=r"rsa_permutation_test: return_null must be a bool, got 'no'"):
        fa.rsa_permutation_test(torch.rand(6), torch.rand(6), return_null="no")


def test_errors_with_nan_name_the_element_of_the_whole_batch() -> None:
    """Comparisons and ceilings with NaN run in groups of the same NaN entries; an error raised in a
    group named a position within it (index (0,) for the fourth comparison)."""
    g = torch.Generator().manual_seed(0)
    a = torch.rand(4, 10, generator=g, dtype=torch.float64)
    b = torch.rand(10, generator=g, dtype=torch.float64)
    a[3] = 1.0
    a[3, 0] = a[1, 5] = float("nan")
    for method in ("spearman", "pearson"):
        with pytest.raises(
            ValueError, match=r"a is constant.*\(the comparison at index \(3,\), its NaN entries"
        ):
            fa.compare_rdms(a, b, method)
    r = torch.rand(5, 3, 4, 10, generator=g, dtype=torch.float64)
    r[1, 2, 3] = 0.3
    r[0, 2, 3, 0] = float("nan")
    with pytest.raises(ValueError, match=r"rdms at index \(1,\) is constant.*the ceiling at index \(2, 3\)"):
        fa.noise_ceiling(r)
