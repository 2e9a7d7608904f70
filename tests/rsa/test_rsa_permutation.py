"""Permutation and cluster tests: backends agree, p-values are uniform under the null, small with an
effect, and the cluster test matches a brute-force implementation and MNE's observed clusters."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

import fastalign as fa
from fastalign import _ext
from fastalign.rsa import api, common, torch_chunked
from fastalign.rsa import stats as rsa_stats

METHODS = ["spearman", "pearson", "rho_a", "cosine", "kendall_tau_a"]
LINEAR = ["spearman", "pearson", "rho_a", "cosine"]
FAST = ["torch", *(["cpp"] if _ext.why_ops_missing(api._CPP_OPS) is None else [])]


def _rdms(seed: int, n: int, batch: tuple[int, ...]) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((*batch, common.n_pairs(n)), generator=gen, dtype=torch.float64)


def test_permuted_pair_indices_relabel_square_matrix() -> None:
    n = 7
    v = _rdms(0, n, ())
    perms, _ = common.permutations(n, 5, seed=1)
    idx = common.permuted_pair_indices(perms, n)
    sq = common.square(v, n)
    for p in range(5):
        pi = perms[p]
        assert torch.equal(v[idx[p]], common.condensed(sq[pi][:, pi]))


@pytest.mark.parametrize("method", METHODS)
def test_backends_match_reference_null(method: str) -> None:
    a, b = _rdms(1, 9, (3, 1, 2)), _rdms(2, 9, (1, 2, 1))
    ref = fa.rsa_permutation_test(
        a, b, method=method, n_permutations=40, seed=3, return_null=True, backend="reference"
    )
    assert ref.null is not None and ref.null.shape == (40, 3, 2, 2)
    np.testing.assert_allclose(ref.statistic.numpy(), fa.compare_rdms(a, b, method).numpy(), rtol=1e-12)
    for backend in FAST:
        out = fa.rsa_permutation_test(
            a, b, method=method, n_permutations=40, seed=3, return_null=True, backend=backend
        )
        assert out.null is not None
        np.testing.assert_allclose(out.null.numpy(), ref.null.numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(out.statistic.numpy(), ref.statistic.numpy(), rtol=1e-10, atol=1e-12)
        assert torch.equal(out.pvalue, ref.pvalue)


@pytest.mark.parametrize("backend", FAST)
def test_gathering_either_operand_gives_the_same_null(backend: str) -> None:
    """Fast backends gather the smaller operand (inverse permutations when that is a): same numbers."""
    small, big = _rdms(4, 8, (2,)), _rdms(5, 8, (6, 1))
    for a, b in ((small, big), (big, small)):
        ref = fa.rsa_permutation_test(a, b, n_permutations=30, seed=0, return_null=True, backend="reference")
        out = fa.rsa_permutation_test(a, b, n_permutations=30, seed=0, return_null=True, backend=backend)
        assert out.null is not None and ref.null is not None
        np.testing.assert_allclose(out.null.numpy(), ref.null.numpy(), rtol=1e-10, atol=1e-12)


def test_pvalue_definition() -> None:
    observed = torch.tensor([0.5, 0.1], dtype=torch.float64)
    null = torch.tensor([[0.6, 0.0], [0.5, 0.2], [0.1, 0.1 - 1e-15]], dtype=torch.float64)
    p = common.permutation_pvalue(observed, null, "greater")
    # 0.5: null >= 0.5 twice; 0.1: 0.2 and 0.1-1e-15 (a tie within 100 eps) -> (1 + 2) / 4 each
    np.testing.assert_allclose(p.numpy(), [0.75, 0.75])
    less = common.permutation_pvalue(observed, null, "less")
    np.testing.assert_allclose(less.numpy(), [0.75, 0.75])
    two = common.permutation_pvalue(observed, null, "two-sided")
    np.testing.assert_allclose(two.numpy(), [1.0, 1.0])


@pytest.mark.parametrize("method", ["spearman", "pearson"])
@pytest.mark.parametrize("alternative", ["greater", "two-sided"])
def test_pvalues_uniform_under_null(method: str, alternative: str) -> None:
    """300 independent null datasets: the p-values must look uniform (Kolmogorov-Smirnov)."""
    a, b = _rdms(10, 10, (300,)), _rdms(11, 10, (300,))
    res = fa.rsa_permutation_test(a, b, method=method, n_permutations=199, alternative=alternative, seed=12)
    p = res.pvalue.numpy()
    assert bool((p > 0).all() and (p <= 1).all())
    assert stats.kstest(p, "uniform").pvalue > 0.01
    # super-uniformity at a conventional level: about 5% below 0.05, never far more
    assert (p <= 0.05).mean() < 0.1


@pytest.mark.parametrize("method", METHODS)
def test_planted_effect_gives_small_p(method: str) -> None:
    a = _rdms(20, 12, (2,))
    b = a[0] + 0.3 * _rdms(21, 12, ())
    res = fa.rsa_permutation_test(a[:1], b, method=method, n_permutations=99, seed=0)
    assert float(res.pvalue[0]) == pytest.approx(1 / 100)
    null_res = fa.rsa_permutation_test(a[1:], b, method=method, n_permutations=99, seed=0)
    assert float(null_res.pvalue[0]) > 0.01


def test_seed_reproducible_and_null_optional() -> None:
    a, b = _rdms(30, 8, ()), _rdms(31, 8, ())
    r1 = fa.rsa_permutation_test(a, b, n_permutations=50, seed=7)
    r2 = fa.rsa_permutation_test(a, b, n_permutations=50, seed=7)
    assert r1.null is None and torch.equal(r1.pvalue, r2.pvalue)


@given(
    n=st.sampled_from([3, 4, 5, 11]),
    batch_a=st.sampled_from([(), (2,), (2, 1)]),
    batch_b=st.sampled_from([(), (1,), (1, 3), (3, 1, 1)]),
    method=st.sampled_from(LINEAR),
    seed=st.integers(0, 1000),
)
def test_fast_backends_match_reference_property(
    n: int, batch_a: tuple, batch_b: tuple, method: str, seed: int
) -> None:
    if batch_a == (2,) and batch_b == (1, 3):
        batch_a = (2, 1)  # make the leading dims broadcast
    a, b = _rdms(seed, n, batch_a), _rdms(seed + 1, n, batch_b)
    ref = fa.rsa_permutation_test(
        a, b, method=method, n_permutations=7, seed=seed, return_null=True, backend="reference"
    )
    for backend in FAST:
        out = fa.rsa_permutation_test(
            a, b, method=method, n_permutations=7, seed=seed, return_null=True, backend=backend
        )
        assert out.null is not None and ref.null is not None
        np.testing.assert_allclose(out.null.numpy(), ref.null.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"n_permutations": 0}, ValueError, "n_permutations"),
        ({"alternative": "both"}, ValueError, "alternative"),
        ({"seed": 1.5}, TypeError, "seed"),
        ({"method": "kendall_tau_a", "backend": "cuda"}, NotImplementedError, "cuda"),
    ],
)
def test_permutation_rejects_bad_input(kwargs: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        fa.rsa_permutation_test(_rdms(0, 5, ()), _rdms(1, 5, ()), **kwargs)


@pytest.mark.parametrize(
    ("seed", "exc", "match"),
    [
        (2**70, ValueError, "got 1180591620717411303424"),
        (2**63, ValueError, "got 9223372036854775808"),
        (-1, ValueError, "got -1"),
        (np.uint64(2**64 - 1), ValueError, "got 18446744073709551615"),
        (True, TypeError, "got bool"),
        (np.bool_(False), TypeError, "got bool"),
        ("7", TypeError, "got str"),
    ],
)
def test_seeds_are_validated(seed: object, exc: type, match: str) -> None:
    """Seeds beyond 64 bits gave an unclear overflow error from torch.Generator; negative ones aliased."""
    expected = r"seed must be an int in \[0, 2\*\*63 - 1\] or None, " + match
    with pytest.raises(exc, match="rsa_permutation_test: " + expected):
        fa.rsa_permutation_test(_rdms(0, 5, ()), _rdms(1, 5, ()), seed=seed)  # type: ignore[arg-type]
    with pytest.raises(exc, match="cluster_permutation_test: " + expected):
        fa.cluster_permutation_test(torch.randn(4, 6), seed=seed)  # type: ignore[arg-type]


def test_extreme_seeds_are_accepted() -> None:
    for seed in (0, 2**63 - 1, np.int64(2**63 - 1)):
        res = fa.rsa_permutation_test(_rdms(0, 5, ()), _rdms(1, 5, ()), n_permutations=3, seed=seed)
        assert 0 < float(res.pvalue) <= 1
        assert fa.cluster_permutation_test(torch.randn(4, 6), n_permutations=3, seed=seed).null.shape == (3,)


def test_permutation_rejects_nan() -> None:
    a = _rdms(0, 5, ())
    a[3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        fa.rsa_permutation_test(a, _rdms(1, 5, ()))


# ----------------------------------------------------------------------------------------- cluster test


def _brute_clusters(t: np.ndarray, thr: float, tail: int) -> list[tuple[int, int, float]]:
    """Every maximal run, by checking each (start, stop) interval: O(T^3), independent of the library."""
    out = []
    n = len(t)
    for sign in [1] if tail == 1 else [-1] if tail == -1 else [1, -1]:
        inside = sign * t > thr
        for s, e in itertools.combinations(range(n + 1), 2):
            if inside[s:e].all() and (s == 0 or not inside[s - 1]) and (e == n or not inside[e]):
                out.append((s, e, float(t[s:e].sum())))
    return sorted(out)


def _brute_test(
    x: np.ndarray, thr: float, tail: int, flips: np.ndarray
) -> tuple[list, np.ndarray, np.ndarray]:
    def t_of(v: np.ndarray) -> np.ndarray:
        return stats.ttest_1samp(v, 0.0).statistic

    clusters = _brute_clusters(t_of(x), thr, tail)
    null = np.array(
        [
            max([abs(m) for _, _, m in _brute_clusters(t_of(x * f[:, None]), thr, tail)], default=0.0)
            for f in flips
        ]
    )
    pvals = np.array([(1 + (null >= abs(m) * (1 - 1e-13)).sum()) / (1 + len(flips)) for _, _, m in clusters])
    return clusters, null, pvals


@pytest.mark.parametrize("tail", [1, -1, 0])
@pytest.mark.parametrize("backend", ["reference", "torch", "cpp"])
def test_cluster_test_matches_brute_force(backend: str, tail: int) -> None:
    rng = np.random.default_rng(tail + 5)
    effect = np.zeros(25)
    effect[5:11], effect[15:19] = 1.2, -1.0
    x = rng.normal(size=(9, 25)) + effect
    res = fa.cluster_permutation_test(
        torch.from_numpy(x), n_permutations=200, tail=tail, seed=1, backend=backend
    )
    flips, exact = rsa_stats._sign_flips(9, 200, tail, seed=1)
    assert not exact and len(flips) == 200
    flips = flips.numpy()
    clusters, null, pvals = _brute_test(x, res.threshold, tail, flips)
    assert res.threshold == pytest.approx(stats.t.ppf(0.975 if tail == 0 else 0.95, 8))
    np.testing.assert_allclose(res.t_values.numpy(), stats.ttest_1samp(x, 0.0).statistic, rtol=1e-10)
    assert [(c.start, c.stop) for c in res.clusters] == [(s, e) for s, e, _ in clusters]
    np.testing.assert_allclose(res.masses.numpy(), [m for _, _, m in clusters], rtol=1e-10)
    np.testing.assert_allclose(res.null.numpy(), null, rtol=1e-10)
    np.testing.assert_allclose(res.pvalues.numpy(), pvals, rtol=1e-12)


def _exact_pvalues(x: np.ndarray, thr: float, tail: int) -> tuple[list, np.ndarray, np.ndarray]:
    """Clusters, every sign pattern's max mass (the identity first, all 2^n of them) and the exact
    p-values: the fraction of all patterns whose maximum reaches each cluster's mass."""
    flips = np.array(list(itertools.product([1.0, -1.0], repeat=x.shape[0])))
    clusters, null, _ = _brute_test(x, thr, tail, flips)
    pvals = np.array([(null >= abs(m) * (1 - 1e-13)).mean() for _, _, m in clusters])
    return clusters, null, pvals


@pytest.mark.parametrize("tail", [1, -1, 0])
@pytest.mark.parametrize("backend", ["reference", "torch", "cpp"])
def test_cluster_exact_null_matches_brute_force_count(backend: str, tail: int) -> None:
    """With 6 subjects there are 64 sign flips: 10,000 permutations drew them with replacement (p-values
    off by Monte-Carlo noise); now all are enumerated and p is the exact count over the 64."""
    rng = np.random.default_rng(tail + 20)
    effect = np.zeros(24)
    effect[4:10], effect[15:19] = 1.5, -1.2
    x = rng.normal(size=(6, 24)) + effect
    res = fa.cluster_permutation_test(torch.from_numpy(x), n_permutations=10000, tail=tail, seed=3,
                                      backend=backend)  # fmt: skip
    clusters, null, pvals = _exact_pvalues(x, res.threshold, tail)
    assert res.exact
    assert len(res.null) == (63 if tail else 31)  # the identity is counted by the +1; f ~ -f for tail 0
    assert [(c.start, c.stop) for c in res.clusters] == [(s, e) for s, e, _ in clusters] and clusters
    np.testing.assert_allclose(res.pvalues.numpy(), pvals, rtol=1e-12)
    # the null holds every pattern but the identity (for tail 0: one of each pair f, -f)
    want = np.sort(null[1:] if tail else null[1:32])
    np.testing.assert_allclose(np.sort(res.null.numpy()), want, rtol=1e-10)
    if tail == 1:
        assert float(res.pvalues.min()) == pytest.approx(1 / 64)  # the planted cluster: nothing beats it


def test_cluster_exact_null_boundary_and_large_n() -> None:
    """Exact as soon as the 2^n - 1 non-identity flips fit in n_permutations; beyond 62 free subjects the
    flips are today's independent draws (common.sign_flips), so large-n results are unchanged."""
    x = torch.randn(5, 7, generator=torch.Generator().manual_seed(4), dtype=torch.float64) + 1.0
    assert fa.cluster_permutation_test(x, n_permutations=31, seed=0).exact
    assert not fa.cluster_permutation_test(x, n_permutations=30, seed=0).exact
    assert fa.cluster_permutation_test(x, n_permutations=15, tail=0, seed=0).exact
    big = torch.randn(64, 5, generator=torch.Generator().manual_seed(5), dtype=torch.float64) + 0.5
    res = fa.cluster_permutation_test(big, n_permutations=20, seed=7, backend="torch")
    flips = common.sign_flips(64, 20, seed=7)
    want = common.cluster_test(torch_chunked, big, res.threshold, 1, flips)[2]
    assert not res.exact and torch.equal(res.null, want)


@pytest.mark.parametrize(
    ("n", "count", "tail"), [(4, 7, 1), (9, 200, 1), (9, 200, 0), (12, 3000, -1), (40, 500, 1)]
)
def test_sign_flips_are_distinct_and_skip_the_identity(n: int, count: int, tail: int) -> None:
    flips, exact = rsa_stats._sign_flips(n, count, tail, seed=1)
    assert not exact and flips.shape == (count, n) and flips.dtype == torch.float64
    assert bool((flips.abs() == 1).all())
    assert len(torch.unique(flips, dim=0)) == count
    assert not bool((flips == 1).all(1).any())  # the identity is counted by the +1, never drawn
    if tail == 0:  # one of each pair f, -f: the last subject is never flipped
        assert bool((flips[:, -1] == 1).all())
    else:
        assert bool((flips[:, -1] == -1).any())
    again, _ = rsa_stats._sign_flips(n, count, tail, seed=1)
    assert torch.equal(flips, again)


def test_sign_flips_are_uniform_without_replacement() -> None:
    """7 of the 15 non-identity flips of 4 subjects, over 600 seeds: each flip is drawn 280 times on
    average (sd ~12); a biased draw (e.g. low codes first) would be far off."""
    counts = torch.zeros(16)
    for seed in range(600):
        flips, _ = rsa_stats._sign_flips(4, 7, 1, seed=seed)
        codes = ((flips < 0).long() << torch.arange(4)).sum(1)
        counts += torch.bincount(codes, minlength=16)
    assert counts[0] == 0 and bool((counts[1:] - 280).abs().max() < 60)


def test_cluster_exact_null_vs_mne() -> None:
    """MNE's exact one-tailed null (n_permutations >= 2^n) holds the identity twice (inserted, and
    the all-ones pattern of its enumeration) and lacks the all-negative flip, so its p-values are ours
    plus 1/2^n whenever the all-negative flip does not reach the cluster."""
    mne_stats = pytest.importorskip("mne.stats")
    rng = np.random.default_rng(7)
    x = rng.normal(size=(6, 30))
    x[:, 8:16] += 1.5
    res = fa.cluster_permutation_test(torch.from_numpy(x), threshold=2.0, tail=1, n_permutations=10000,
                                      seed=0)  # fmt: skip
    _, clusters, p_mne, h0 = mne_stats.permutation_cluster_1samp_test(
        x, threshold=2.0, tail=1, n_permutations=10000, out_type="mask", verbose=False
    )
    assert res.exact and len(clusters) == len(res.clusters) >= 1
    identity = float(res.masses.abs().max())
    all_negative = float(res.null[-1])  # the last code flips every subject
    np.testing.assert_allclose(
        np.sort(h0), np.sort([identity, identity, *res.null[:-1].tolist()]), rtol=1e-10
    )
    order = np.argsort([int(np.flatnonzero(np.asarray(c).reshape(-1))[0]) for c in clusters])
    for k, m in enumerate(res.masses.tolist()):
        missing = 0.0 if all_negative >= m else 1 / 64
        assert p_mne[order[k]] == pytest.approx(float(res.pvalues[k]) + missing, rel=1e-12)
    assert p_mne[order[0]] == pytest.approx(float(res.pvalues[0]) + 1 / 64)


def test_cluster_test_observed_clusters_match_mne() -> None:
    mne_stats = pytest.importorskip("mne.stats")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 40))
    x[:, 10:20] += 1.0
    x[:, 28:33] -= 1.0
    res = fa.cluster_permutation_test(torch.from_numpy(x), threshold=2.0, tail=0, n_permutations=10, seed=0)
    t_obs, clusters, _, _ = mne_stats.permutation_cluster_1samp_test(
        x, threshold=2.0, tail=0, n_permutations=10, rng=0, out_type="mask", verbose=False
    )
    np.testing.assert_allclose(res.t_values.numpy(), t_obs, rtol=1e-10)
    masks = [np.zeros(40, bool) for _ in clusters]
    for m, c in zip(masks, clusters, strict=True):
        m[c] = True  # a boolean mask or a tuple of slices, depending on the MNE version
    mne_runs = sorted((int(np.flatnonzero(m)[0]), int(np.flatnonzero(m)[-1]) + 1) for m in masks)
    assert [(c.start, c.stop) for c in res.clusters] == mne_runs
    assert len(mne_runs) >= 2


def test_cluster_planted_effect_and_null() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(12, 50))
    x[:, 20:30] += 1.5
    res = fa.cluster_permutation_test(torch.from_numpy(x), n_permutations=500, seed=0)
    hit = [i for i, c in enumerate(res.clusters) if c.start <= 25 < c.stop]
    assert hit and float(res.pvalues[hit[0]]) < 0.01
    # under the null the smallest cluster p-value of a run is uniform-ish: rarely below 0.05
    rejections = 0
    for seed in range(40):
        z = np.random.default_rng(100 + seed).normal(size=(12, 50))
        r = fa.cluster_permutation_test(torch.from_numpy(z), n_permutations=99, seed=seed)
        rejections += int(bool((r.pvalues <= 0.05).any()))
    assert rejections <= 6  # family-wise 5% of 40 runs: expected 2; P(>6) < 0.5% under Binomial(40, .05)


@pytest.mark.parametrize(
    ("x", "kwargs", "match"),
    [
        (torch.randn(1, 10), {}, "at least 2 subjects"),
        (torch.randn(10), {}, "n_subjects, n_times"),
        (torch.randn(4, 10), {"tail": 2}, "tail"),
        (torch.randn(4, 10), {"threshold": -1.0}, "threshold"),
        (torch.ones(4, 10), {}, "zero variance"),
    ],
)
def test_cluster_rejects_bad_input(x: torch.Tensor, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fa.cluster_permutation_test(x, **kwargs)


@given(
    n_subjects=st.sampled_from([2, 3, 7]),
    n_times=st.sampled_from([1, 2, 13]),
    tail=st.sampled_from([1, -1, 0]),
    threshold=st.sampled_from([None, 0.5, 2.0]),
    seed=st.integers(0, 1000),
)
def test_cluster_torch_matches_reference_property(
    n_subjects: int, n_times: int, tail: int, threshold: float | None, seed: int
) -> None:
    x = torch.randn(n_subjects, n_times, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x += torch.linspace(-1, 1, n_times, dtype=torch.float64)  # some clusters of either sign
    kw = {"threshold": threshold, "n_permutations": 15, "tail": tail, "seed": seed}
    ref = fa.cluster_permutation_test(x, backend="reference", **kw)
    out = fa.cluster_permutation_test(x, backend="torch", **kw)
    assert out.clusters == ref.clusters
    np.testing.assert_allclose(out.null.numpy(), ref.null.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out.pvalues.numpy(), ref.pvalues.numpy(), rtol=1e-12)
    np.testing.assert_allclose(out.masses.numpy(), ref.masses.numpy(), rtol=1e-12)


@pytest.mark.parametrize("backend", ["reference", *FAST])
@pytest.mark.parametrize("method", METHODS)
def test_permutation_test_of_an_empty_batch(backend: str, method: str) -> None:
    """0 RDMs give empty statistics and p-values on every backend (cpp raised a reshape error)."""
    a = torch.randn(0, 10, dtype=torch.float64)
    res = fa.rsa_permutation_test(a, _rdms(1, 5, ()), method=method, n_permutations=3, seed=0,
                                  return_null=True, backend=backend)  # fmt: skip
    assert res.statistic.shape == res.pvalue.shape == (0,)
    assert res.null is not None and res.null.shape == (3, 0)


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_cluster_test_is_scale_free(backend: str) -> None:
    """Effects near 1e200 overflowed the sums of squares (t = 0, no clusters) and near 1e-170 underflowed
    them (a false "zero variance"): each time point is rescaled by a power of two, so t, the clusters and
    the null are those of the unscaled effects, also with time points of very different magnitudes."""
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(11), dtype=torch.float64) + 1.0
    run = lambda v: fa.cluster_permutation_test(v, n_permutations=10, seed=0, backend=backend)
    want = run(x)
    assert want.clusters
    mixed = x.clone()
    mixed[:, :4] *= 2.0**700
    mixed[:, 4:] *= 2.0**-600
    for scaled in (x * 1e200, x * 1e-170, x * 2.0**-1000, mixed):
        got = run(scaled)
        np.testing.assert_allclose(got.t_values.numpy(), want.t_values.numpy(), rtol=1e-13)
        assert got.clusters == want.clusters
        np.testing.assert_allclose(got.null.numpy(), want.null.numpy(), rtol=1e-13)


def test_cluster_null_of_nearly_equal_subjects_is_exact() -> None:
    """The torch null's sum of squares is sum(x^2) - n mean^2 (one matmul for all flips); for the flip that
    makes every subject's effect positive here, that subtraction cancels all but a few bits: the
    two-pass sum replaces it, and that flip's mass is the exact one (rational arithmetic) to 1e-12."""
    noise = torch.randn(10, 12, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    x = -(1e3 + 1e-6 * noise)  # all negative: tail 1 sees them only through the all-negative flip
    kw = {"n_permutations": 2000, "tail": 1, "seed": 0}  # 1023 flips: exact, the all-negative one last
    ref = fa.cluster_permutation_test(x, backend="reference", **kw)
    out = fa.cluster_permutation_test(x, backend="torch", **kw)
    exact_mass = 0.0
    for column in (-x).T.tolist():  # every time point's t (about 4e9) is above the threshold: one cluster
        v = [Fraction(c) for c in column]
        mean = sum(v) / len(v)
        ss = sum((c - mean) ** 2 for c in v)
        exact_mass += float(mean) / math.sqrt(float(ss) / (len(v) * (len(v) - 1)))
    assert out.exact and exact_mass > 1e10
    np.testing.assert_allclose(float(out.null[-1]), exact_mass, rtol=1e-12)
    np.testing.assert_allclose(float(ref.null[-1]), exact_mass, rtol=1e-7)  # torch.std's rounding
    np.testing.assert_allclose(out.null[:-1].numpy(), ref.null[:-1].numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_cluster_test_variance_of_rounding_only(backend: str) -> None:
    """A time point whose effects differ by one ulp (0.1 + 0.2 vs 0.3) has no variance but rounding:
    its t (about 1e16) made a cluster of noise; it is the zero-variance ValueError."""
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x[:, 3] = torch.tensor([0.1 + 0.2, 0.3, 0.3, 0.1 + 0.2, 0.3], dtype=torch.float64)
    with pytest.raises(ValueError, match="zero variance across subjects at time index 3"):
        fa.cluster_permutation_test(x, n_permutations=5, seed=0, backend=backend)


def test_numpy_scalars_are_accepted_everywhere() -> None:
    """threshold=np.float32(2.0) was rejected while n_permutations took numpy ints; numpy bools (which
    equal 1) passed as tail. numpy ints and floats work as Python's; bools of either kind are refused."""
    x = torch.randn(5, 7, generator=torch.Generator().manual_seed(3), dtype=torch.float64) + 0.5
    kw = {"n_permutations": 9, "seed": 1}
    want = fa.cluster_permutation_test(x, threshold=2.0, tail=-1, **kw)
    np_kw = {
        "threshold": np.float32(2.0),
        "tail": np.int64(-1),
        "n_permutations": np.int32(9),
        "seed": np.uint64(1),
    }
    got = fa.cluster_permutation_test(x, **np_kw)  # type: ignore[arg-type]
    assert got.clusters == want.clusters and torch.equal(got.null, want.null) and got.threshold == 2.0
    assert fa.cluster_permutation_test(x, threshold=np.int64(2), **kw).threshold == 2.0  # type: ignore[arg-type]
    for bad in ({"tail": np.bool_(True)}, {"tail": 1.0}, {"threshold": np.bool_(True)}, {"threshold": "2"},
                {"n_permutations": np.bool_(True)}, {"n_permutations": 9.0}):  # fmt: skip
        name = next(iter(bad))
        with pytest.raises(TypeError, match=f"cluster_permutation_test: {name} must be"):
            fa.cluster_permutation_test(x, **{**kw, **bad})
    a, b = _rdms(0, 5, ()), _rdms(1, 5, ())
    res = fa.rsa_permutation_test(a, b, n_permutations=np.int16(9), seed=np.int64(1))  # type: ignore[arg-type]
    assert res.pvalue == fa.rsa_permutation_test(a, b, n_permutations=9, seed=1).pvalue


def test_mne_exact_p_can_also_be_lower_than_the_exact_count() -> None:
    """tail -1 with a larger positive cluster: the all-negative flip (absent from MNE's null) turns it into
    a negative cluster outweighing the tested one, so MNE's p-value is 2^-n below the exact count."""
    mne_stats = pytest.importorskip("mne.stats")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 30))
    x[:, 5:13] += 1.5
    x[:, 18:24] -= 0.9
    thr = float(stats.t.ppf(0.95, 6))
    res = fa.cluster_permutation_test(
        torch.from_numpy(x), threshold=thr, tail=-1, n_permutations=10000, seed=0
    )
    clusters, _, pvals = _exact_pvalues(x, thr, -1)
    assert res.exact and [(c.start, c.stop) for c in res.clusters] == [(s, e) for s, e, _ in clusters]
    np.testing.assert_allclose(res.pvalues.numpy(), pvals, rtol=1e-12)  # fastalign: the exact count
    _, _, p_mne, _ = mne_stats.permutation_cluster_1samp_test(
        x, threshold=-thr, tail=-1, n_permutations=10000, out_type="mask", verbose=False
    )
    assert float(res.pvalues.min()) == pytest.approx(2 / 128)
    assert float(min(p_mne)) == pytest.approx(1 / 128)  # lower than the exact 2/128


@pytest.mark.parametrize("backend", ["reference", *FAST])
@pytest.mark.parametrize("alternative", ["greater", "two-sided"])
def test_few_conditions_enumerate_every_order_as_scipy(backend: str, alternative: str) -> None:
    """With n! - 1 <= n_permutations every relabelling but the identity is the null, once each: the
    p-value is scipy.stats.permutation_test's exact one (its permutation_type="pairings" enumerates the
    n! orders of one sample), whatever the seed; beyond, draws."""
    g = torch.Generator().manual_seed(2)
    n = 5
    a = torch.randn(common.n_pairs(n), generator=g, dtype=torch.float64)
    b = torch.randn(common.n_pairs(n), generator=g, dtype=torch.float64)
    res = fa.rsa_permutation_test(a, b, method="pearson", n_permutations=200, alternative=alternative,
                                  seed=1, return_null=True, backend=backend)  # fmt: skip
    assert res.exact and res.null is not None and res.null.shape == (119,)
    again = fa.rsa_permutation_test(a, b, method="pearson", n_permutations=119, alternative=alternative,
                                    seed=9, backend=backend)  # fmt: skip
    assert again.exact and torch.equal(again.pvalue, res.pvalue)
    sq = common.square(b, n).numpy()
    iu = np.triu_indices(n, 1)

    def statistic(order: np.ndarray) -> float:
        return float(np.corrcoef(a.numpy(), sq[np.ix_(order, order)][iu])[0, 1])

    want = stats.permutation_test(
        (np.arange(n),), statistic, permutation_type="pairings", n_resamples=np.inf, alternative=alternative
    ).pvalue
    np.testing.assert_allclose(float(res.pvalue), want, rtol=1e-12)
    drawn = fa.rsa_permutation_test(a, b, n_permutations=118, seed=1, backend=backend)
    assert not drawn.exact


@pytest.mark.parametrize("backend", ["reference", *FAST])
@pytest.mark.parametrize("method", ["spearman", "pearson", "rho_a"])
def test_a_statistic_of_exactly_zero_under_every_relabelling_has_p_one(backend: str, method: str) -> None:
    """Two category RDMs over 6 conditions whose similarity is exactly 0 under all 720 relabellings (an
    integer numerator of 0 for every order): every null value ties with the observed one, so p = 1 for
    each alternative, as scipy's exact test gives. Computed in two summation orders they came out +-1e-17
    apart, and a tolerance relative to the observed 0 is 0: cpp gave p(greater) = 1/720."""
    a = torch.tensor([0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 1, 0, 1, 1], dtype=torch.float64)
    b = torch.tensor([1, 1, 1, 1, 0, 1, 1, 0, 1, 0, 1, 1, 1, 1, 1], dtype=torch.float64)
    for alternative in ("greater", "less", "two-sided"):
        res = fa.rsa_permutation_test(
            a, b, method=method, n_permutations=1_000, alternative=alternative, backend=backend,
            return_null=True,
        )  # fmt: skip
        assert res.exact and res.null is not None
        assert float(res.statistic.abs()) < 1e-15 and float(res.null.abs().max()) < 1e-15
        assert float(res.pvalue) == 1.0, (alternative, res.statistic, res.pvalue)


def test_nine_conditions_are_drawn_even_when_all_orders_would_fit() -> None:
    """Every order is enumerated up to 8 conditions; 9! = 362,880 orders are always drawn."""
    assert common.MAX_EXACT_CONDITIONS == 8
    g = torch.Generator().manual_seed(4)
    a, b = (torch.randn(common.n_pairs(9), generator=g, dtype=torch.float64) for _ in range(2))
    res = fa.rsa_permutation_test(a, b, n_permutations=math.factorial(9), seed=0)
    assert not res.exact
    eight = fa.rsa_permutation_test(a[: common.n_pairs(8)], b[: common.n_pairs(8)], n_permutations=40_319)
    assert eight.exact
