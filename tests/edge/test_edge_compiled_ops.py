"""Edge cases of every compiled op under torch.ops.fastalign: the C++ ops of csrc/rsa.cpp (RSA, rng_discard,
conv_taps) and the Triton custom ops bn_act_fwd / bn_act_bwd, called directly (as torch.compile graphs
and other callers do), against numpy / torch.nn.functional oracles.

A compiled op reached with bad operands must refuse them with an error naming the op and the operand,
never read out of bounds: every case that could runs in a forked child. Those checks accept TORCH_CHECK's
RuntimeError, so that one root cause fails one test: test_compiled_op_errors_are_value_or_type_errors
asks for the project's ValueError/TypeError.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from edge_cases import (
    EDGE_SETTINGS,
    LAYOUTS,
    assert_close,
    env_triton,
    isolated,
    layout,
    make,
    np64,
    oracle_compare,
    oracle_rdm,
)
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from fastalign import _ext
from fastalign.rsa import api, cpp

pytestmark = pytest.mark.skipif(
    _ext.why_ops_missing(api._CPP_OPS) is not None, reason="fastalign._C is not built"
)
OPS = torch.ops.fastalign
RSA_OPS = {
    "rsa_rank",
    "rsa_centered_ranks",
    "rsa_rdm_direct",
    "rsa_rdm_compare",
    "rsa_spearman_ceiling",
    "rsa_rdm_spearman_ceiling",
    "rsa_kendall_tau_a",
    "rsa_permute_condensed",
    "rsa_cluster_null",
    "rsa_row_stats",
    "rsa_gram_centered",
}
BN_OPS = {"bn_act_fwd", "bn_act_bwd"}
RNG_OPS = {"rng_discard"}
TAP_OPS = {"conv_taps", "conv_taps_backward"}
RDM_CODES = {"correlation": 0, "cosine": 1, "euclidean": 2}
COMPARE_CODES = {"spearman": 0, "rho_a": 1, "pearson": 2, "cosine": 3}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _registered() -> set[str]:
    """The fastalign:: ops registered with the dispatcher (dir(torch.ops.fastalign) lists only the ones
    already looked up)."""
    _ext.load()
    if env_triton():
        import fastalign.norm_act.triton  # noqa: F401  (registers the bn_act custom ops)
    names = {
        n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("fastalign::")
    }
    return {n.split(".")[0] for n in names}


def test_the_op_inventory() -> None:
    """The suite covers every fastalign op: a new op must get edge cases here."""
    found = _registered()
    expected = RSA_OPS | RNG_OPS | TAP_OPS | (BN_OPS if env_triton() else set())
    assert found == expected, f"ops without edge cases: {found - expected}; gone: {expected - found}"


def _clean(status: str, payload: object, op: str, names: list[str]) -> None:
    """An isolated call's error is a ValueError/TypeError (or TORCH_CHECK's RuntimeError) naming the op
    and one of ``names``."""
    assert status != "crashed", f"{op} crashed the process (exit {payload})"
    assert status == "raised", f"{op} accepted invalid operands and returned {payload}"
    kind, msg = payload  # type: ignore[misc]
    assert kind in ("ValueError", "TypeError", "RuntimeError"), f"{op} raised {kind}: {msg}"
    assert op in msg and any(n in msg for n in names), f"{op}'s error names none of {names}: {msg!r}"


# ----------------------------------------------------------------------------------------- rsa_rank


@pytest.mark.parametrize("kind", ["float64", "float32", "int64", "int32", "int64_huge", "specials"])
@EDGE_SETTINGS
@given(rows=st.integers(0, 3), n=st.integers(0, 9), how=st.sampled_from(LAYOUTS), seed=st.integers(0, 2**31))
def test_rsa_rank_matches_rankdata(kind: str, rows: int, n: int, how: str, seed: int) -> None:
    """Average ranks of every row, exact (ints beyond 2^53 included), for any layout."""
    gen = _gen(seed)
    if kind == "int64_huge":
        x = 2**60 + torch.randint(-40, 40, (rows, n), generator=gen)
    elif kind == "specials":
        pool = torch.tensor([-math.inf, -0.0, 0.0, 5e-324, 1.0, math.inf], dtype=torch.float64)
        x = pool[torch.randint(0, 6, (rows, n), generator=gen)]
    else:
        x = make(kind, (rows, n), gen)
    x = layout(x, how)
    out = OPS.rsa_rank(x)
    assert out.dtype == torch.float64 and out.shape == x.shape
    np.testing.assert_array_equal(out.numpy(), stats.rankdata(x.contiguous().numpy(), axis=-1))


def test_rsa_rank_nan_rows() -> None:
    """A row with NaN has no ranks (NaN), the other rows are ranked (documented kernel behaviour)."""
    x = torch.tensor([[1.0, math.nan, 0.0], [3.0, 1.0, 2.0]])
    out = OPS.rsa_rank(x)
    assert bool(out[0].isnan().all())
    np.testing.assert_array_equal(out[1].numpy(), [3.0, 1.0, 2.0])


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", ["float64", "float32", "int64", "int32"])
@pytest.mark.parametrize("how", LAYOUTS)
def test_rsa_centered_ranks(normalize: bool, dtype: torch.dtype, kind: str, how: str) -> None:
    """Ranks minus their mean (divided by their norm when normalize), in the requested dtype."""
    x = layout(make(kind, (3, 7), _gen(1)), how)
    out = OPS.rsa_centered_ranks(x, normalize, dtype)
    r = stats.rankdata(x.contiguous().numpy(), axis=-1)
    want = r - r.mean(-1, keepdims=True)
    if normalize:
        want = want / np.linalg.norm(want, axis=-1, keepdims=True)
    assert out.dtype == dtype
    assert_close(out, want, dtype, "centred ranks", scale=float(np.abs(want).max()))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rsa_centered_ranks_of_a_constant_row(dtype: torch.dtype) -> None:
    """A constant row has zero centred ranks; normalising them is undefined: NaN, the op's documented
    output for such rows (as for rows with NaN), from which compare_rdms and noise_ceiling find the
    undefined statistic and name the constant RDM. The other rows are normalised as usual."""
    x = torch.tensor([[2.0, 2.0, 2.0, 2.0], [3.0, 1.0, 4.0, 2.0]], dtype=torch.float64)
    np.testing.assert_array_equal(OPS.rsa_centered_ranks(x, False, dtype)[0].numpy(), 0.0)
    out = OPS.rsa_centered_ranks(x, True, dtype)
    assert bool(out[0].isnan().all()), f"normalised centred ranks of a constant row: {out[0]}"
    want = np.array([0.5, -1.5, 1.5, -0.5]) / math.sqrt(5.0)
    assert_close(out[1], want, dtype, "centred ranks beside a constant row", scale=1.0)


# ----------------------------------------------------------------------------------------- rsa_rdm_direct


@pytest.mark.parametrize("method", list(RDM_CODES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@EDGE_SETTINGS
@given(b=st.integers(0, 2), n=st.integers(2, 6), p=st.integers(2, 5), how=st.sampled_from(LAYOUTS),
       seed=st.integers(0, 2**31))  # fmt: skip
def test_rsa_rdm_direct(method: str, dtype: torch.dtype, b: int, n: int, p: int, how: str, seed: int) -> None:
    """Condensed RDMs of (B, n, p) patterns equal scipy's, for any layout and an empty batch."""
    x = layout(torch.randn(b, n, p, generator=_gen(seed), dtype=torch.float64).to(dtype), how)
    out = OPS.rsa_rdm_direct(x, RDM_CODES[method])
    assert out.shape == (b, n * (n - 1) // 2) and out.dtype == dtype
    scale = 1.0 if method != "euclidean" else None
    assert_close(out, oracle_rdm(np64(x), method), dtype, f"rsa_rdm_direct {method}", scale=scale)


@pytest.mark.parametrize(("method", "row"), [("correlation", [1.0, 1.0]), ("cosine", [0.0, 0.0])])
def test_rsa_rdm_direct_undefined_pattern(method: str, row: list[float]) -> None:
    """A constant (correlation) or all-zero (cosine) pattern has no distance: an error, not NaN."""
    x = torch.tensor([[row, [1.0, 2.0], [3.0, 1.0]]], dtype=torch.float64)
    status, payload = isolated(lambda: OPS.rsa_rdm_direct(x, RDM_CODES[method]).tolist())
    _clean(status, payload, "rsa_rdm_direct", ["x", "constant", "zero"])


@pytest.mark.parametrize("scale", [1e200, 1e-170], ids=str)
@pytest.mark.parametrize("method", ["correlation", "cosine"])
def test_rsa_rdm_direct_extreme_magnitudes(scale: float, method: str) -> None:
    x = torch.randn(1, 4, 3, generator=_gen(2), dtype=torch.float64)
    out = OPS.rsa_rdm_direct(x * scale, RDM_CODES[method])
    assert_close(out, oracle_rdm(x.numpy(), method), torch.float64, f"{method} x {scale:g}", scale=1.0)


# ----------------------------------------------------------------------------------------- rsa_rdm_compare


@pytest.mark.parametrize("rdm_method", list(RDM_CODES))
@pytest.mark.parametrize("method", list(COMPARE_CODES))
@pytest.mark.parametrize("how", LAYOUTS)
def test_rsa_rdm_compare(rdm_method: str, method: str, how: str) -> None:
    """(B, M) dot products of each pattern set's prepared RDM with the prepared model vectors w: with
    w from rsa_centered_ranks / centring, equal to compare(rdm(x), models) (up to rho-a's constant)."""
    gen = _gen(3)
    x = layout(torch.randn(2, 5, 4, generator=gen, dtype=torch.float64), how)
    models = torch.randn(3, 10, generator=gen, dtype=torch.float64)
    w = cpp.prepare(models, method).contiguous()
    out = OPS.rsa_rdm_compare(x, w, RDM_CODES[rdm_method], COMPARE_CODES[method])
    brain = oracle_rdm(np64(x), rdm_method)
    want = oracle_compare(brain[:, None], models.numpy()[None], method)
    if method == "rho_a":
        want = want * (10**3 - 10) / 12
    assert_close(
        out, want, torch.float64, f"rsa_rdm_compare {rdm_method} {method}", scale=float(np.abs(want).max())
    )


# -------------------------------------------------------------------------------------- rsa_spearman_ceiling


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = stats.rankdata(a), stats.rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb) / den if den > 0 else math.nan


@EDGE_SETTINGS
@given(
    s=st.integers(2, 5), b=st.integers(0, 3), n=st.integers(3, 7), m=st.integers(0, 3),
    ties=st.sampled_from(["none", "some", "integer"]), how=st.sampled_from(LAYOUTS),
    seed=st.integers(0, 2**31),
)  # fmt: skip
def test_rsa_spearman_ceiling(s: int, b: int, n: int, m: int, ties: str, how: str, seed: int) -> None:
    """Spearman similarities (S, B, M) with prepared model vectors and the Spearman noise ceiling's bounds
    (B,) against scipy's ranks, for any layout, heavy ties, no points or no models; a constant pool (or
    subject RDM) gives NaN where scipy has no correlation."""
    gen = _gen(seed)
    k = n * (n - 1) // 2
    x = torch.randn(s, b, k, generator=gen, dtype=torch.float64)
    if ties == "some":
        x = x.round(decimals=0)
    elif ties == "integer":
        x = torch.randint(0, 3, (s, b, k), generator=gen).double()
    x = layout(x, how)
    models = torch.randn(m, k, generator=gen, dtype=torch.float64)
    w = cpp.prepare(models, "spearman").contiguous() if m else torch.empty(0, k, dtype=torch.float64)
    sims, lower, upper = OPS.rsa_spearman_ceiling(x, w)
    assert sims.shape == (s, b, m) and lower.shape == upper.shape == (b,)
    xs = np64(x)
    ranks = np.stack([[stats.rankdata(xs[i, j]) for j in range(b)] for i in range(s)]).reshape(s, b, k)
    for j in range(b):
        want_sims = [[_spearman(xs[i, j], models[q].numpy()) for q in range(m)] for i in range(s)]
        np.testing.assert_allclose(sims[:, j].numpy(), np.array(want_sims).reshape(s, m), atol=1e-12)
        pool = ranks[:, j].mean(0)
        up = np.mean([_spearman(pool, xs[i, j]) for i in range(s)])
        lo = np.mean([_spearman((ranks[:, j].sum(0) - ranks[i, j]) / (s - 1), xs[i, j]) for i in range(s)])
        np.testing.assert_allclose([lower[j].item(), upper[j].item()], [lo, up], atol=1e-12)


@EDGE_SETTINGS
@given(
    s=st.integers(2, 4), b=st.integers(0, 3), n=st.integers(3, 7), p=st.integers(1, 5), m=st.integers(0, 3),
    rdm_method=st.sampled_from(list(RDM_CODES)), dtype=st.sampled_from([torch.float64, torch.float32]),
    copies=st.booleans(), how=st.sampled_from(LAYOUTS), seed=st.integers(0, 2**31),
)  # fmt: skip
def test_rsa_rdm_spearman_ceiling(
    s: int,
    b: int,
    n: int,
    p: int,
    m: int,
    rdm_method: str,
    dtype: torch.dtype,
    copies: bool,
    how: str,
    seed: int,
) -> None:
    """The fused RDMs + Spearman ceiling of (S, B, n, p) pattern sets are rsa_spearman_ceiling of their
    RDMs (rsa_rdm_direct, snapped as rsa_rdm_compare snaps them) bit for bit, whatever the layout: with
    shifted and scaled copies of patterns (distances 0 and 2 up to rounding), and NaN at a point where a
    set has no Spearman statistic (a pattern without distances: one feature for correlation; an RDM
    constant up to rounding)."""
    gen = _gen(seed)
    x = torch.randn(s, b, n, p, generator=gen, dtype=torch.float64)
    if copies and n > 3:
        x[..., 1, :] = 3 * x[..., 0, :] + 1  # distance 0 (correlation), computed a few eps off
        x[..., 2, :] = -2 * x[..., 0, :]  # distance 2
    x = layout(x.to(dtype), how)
    k = n * (n - 1) // 2
    models = torch.randn(m, k, generator=gen, dtype=torch.float64)
    w = cpp.prepare(models, "spearman").contiguous() if m else torch.empty(0, k, dtype=torch.float64)
    sims, lower, upper = OPS.rsa_rdm_spearman_ceiling(x, w, RDM_CODES[rdm_method])
    assert sims.shape == (s, b, m) and lower.shape == upper.shape == (b,)
    for j in range(b):
        try:
            rdms = OPS.rsa_rdm_direct(x[:, j].contiguous(), RDM_CODES[rdm_method])
        except ValueError:  # a pattern without distances (one feature: constant for correlation): NaN
            assert bool(lower[j].isnan()) and bool(upper[j].isnan()) and bool(sims[:, j].isnan().all())
            continue
        if rdm_method != "euclidean":  # rsa_rdm_compare's snapping of correlation / cosine distances
            near = 16 * torch.finfo(dtype).eps * math.sqrt(p)
            rdms = torch.where(rdms.abs() <= near, 0.0, torch.where((rdms - 2).abs() <= near, 2.0, rdms))
        # in the RDMs' dtype, as common.exact_constants decides (a float32 tensor against a Python float
        # compares in float32)
        span = rdms.amax(-1) - rdms.amin(-1)
        top = rdms.abs().amax(-1)
        tol = 16 * torch.finfo(dtype).eps * math.sqrt(p) * (1.0 if rdm_method != "euclidean" else top)
        undefined = bool(((span <= tol) | (top <= tol)).any())
        if undefined:  # some subject's RDM is constant at this point: NaN bounds and similarities there
            assert bool(lower[j].isnan()) and bool(upper[j].isnan())
            continue
        want = OPS.rsa_spearman_ceiling(rdms.double()[:, None].contiguous(), w)
        torch.testing.assert_close(sims[:, j], want[0][:, 0], rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(lower[j], want[1][0], rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(upper[j], want[2][0], rtol=0, atol=0, equal_nan=True)


# ----------------------------------------------------------------------------------------- rsa_kendall_tau_a


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@EDGE_SETTINGS
@given(k=st.integers(2, 12), ties=st.booleans(), how=st.sampled_from(LAYOUTS), seed=st.integers(0, 2**31))
def test_rsa_kendall_tau_a(dtype: torch.dtype, k: int, ties: bool, how: str, seed: int) -> None:
    """tau-a of the index-paired rows equals the sign-product definition, ties counting zero."""
    gen = _gen(seed)
    draw = (
        (lambda s: torch.randint(0, 3, s, generator=gen).to(dtype))
        if ties
        else (lambda s: torch.randn(s, generator=gen, dtype=torch.float64).to(dtype))
    )
    a, b = layout(draw((2, k)), how), draw((3, k))
    ia, ib = torch.tensor([0, 1, 1]), torch.tensor([2, 0, 1])
    out = OPS.rsa_kendall_tau_a(a, b, ia, ib)
    want = oracle_compare(np64(a)[ia.numpy()], np64(b)[ib.numpy()], "kendall_tau_a")
    assert_close(out, want, torch.float64, "tau-a", scale=1.0)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_rsa_kendall_tau_a_non_finite(bad: float) -> None:
    """NaN has no order: NaN out (as rsa_rank's NaN rows) or an error naming the operand, not a tau-a
    computed as if NaN were a value; infinities order like any other value."""
    a = torch.tensor([[bad, 1.0, 2.0, 0.5]], dtype=torch.float64)
    b = torch.tensor([[3.0, 1.0, 2.0, 0.0]], dtype=torch.float64)
    ia = ib = torch.tensor([0])
    status, payload = isolated(lambda: OPS.rsa_kendall_tau_a(a, b, ia, ib).tolist())
    if math.isnan(bad):
        if status == "ok":
            assert math.isnan(payload[0]), f"tau-a of a row with NaN is {payload}, not NaN"  # type: ignore[index]
        else:
            _clean(status, payload, "rsa_kendall_tau_a", ["a", "NaN"])
    else:
        assert status == "ok", payload
        assert_close(
            np.array(payload),
            oracle_compare(a.numpy(), b.numpy(), "kendall_tau_a"),
            torch.float64,
            "inf",
            scale=1.0,
        )


# ------------------------------------------------------------------------------------- rsa_permute_condensed


def _pair_index(n: int) -> np.ndarray:
    i, j = np.triu_indices(n, 1)
    m = np.full((n, n), -1)
    m[i, j] = m[j, i] = np.arange(i.size)
    return m


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("how", LAYOUTS)
@pytest.mark.parametrize("n", [2, 3, 5])
def test_rsa_permute_condensed(dtype: torch.dtype, how: str, n: int) -> None:
    """Every relabelling of the conditions moves pair (i, j) to (pi[i], pi[j])."""
    k = n * (n - 1) // 2
    src = layout(torch.randn(2, k, generator=_gen(4), dtype=torch.float64).to(dtype), how)
    perms = layout(torch.tensor(list(itertools.permutations(range(n))), dtype=torch.int64), how)
    out = OPS.rsa_permute_condensed(src, perms)
    m = _pair_index(n)
    i, j = np.triu_indices(n, 1)
    pn = perms.contiguous().numpy()
    idx = m[pn[:, i], pn[:, j]]  # (P, K)
    want = np64(src)[:, idx].transpose(1, 0, 2)
    np.testing.assert_array_equal(out.double().numpy(), want)


@pytest.mark.parametrize(
    "perms",
    [[[0, 0, 1, 1]], [[0, 1, 2, 2]], [[0, 1, 2, 4]], [[-1, 1, 2, 3]], [[0, 1, 2]], [[[0, 1, 2, 3]]]],
    ids=["repeated", "one_repeat", "out_of_range", "negative", "wrong_n", "three_d"],
)
def test_rsa_permute_condensed_rejects_non_permutations(perms: list) -> None:
    """Rows that are not permutations of range(n) are refused (a repeated index would read the
    diagonal's -1 pair index, out of bounds)."""
    src = torch.randn(2, 6, generator=_gen(5), dtype=torch.float64)
    status, payload = isolated(lambda: OPS.rsa_permute_condensed(src, torch.tensor(perms)).tolist())
    _clean(status, payload, "rsa_permute_condensed", ["perms"])


# ----------------------------------------------------------------------------------------- rsa_cluster_null


def _max_mass_oracle(x: np.ndarray, flips: np.ndarray, thr: float, tail: int) -> np.ndarray:
    """Each flip's largest cluster mass from scipy's t and an explicit scan of maximal runs."""
    out = []
    for f in flips:
        t = stats.ttest_1samp(x * f[:, None], 0.0).statistic
        best = 0.0
        for sign in [s for s in (1, -1) if tail == 0 or tail == s]:
            run = 0.0
            for v in sign * t:
                run = run + v if v > thr else 0.0
                best = max(best, run)
        out.append(best)
    return np.array(out)


@pytest.mark.parametrize("tail", [1, -1, 0])
@pytest.mark.parametrize("how", LAYOUTS)
@EDGE_SETTINGS
@given(
    s=st.integers(2, 7),
    t=st.integers(1, 12),
    thr=st.sampled_from([0.3, 1.5, 3.0]),
    seed=st.integers(0, 2**31),
)
def test_rsa_cluster_null_matches_scipy_runs(
    tail: int, how: str, s: int, t: int, thr: float, seed: int
) -> None:
    """Every flip's t curve is scipy's one-sample t of the flipped effects, and its value the largest run
    mass beyond the threshold (0 without a run), for any layout of the flips and of x; an expanded x,
    whose subjects are equal, has no t and is refused, as cluster_permutation_test refuses it."""
    gen = _gen(seed)
    x = layout(torch.randn(s, t, generator=gen, dtype=torch.float64) + 0.5, how)
    flips = layout(1.0 - 2.0 * torch.randint(0, 2, (9, s), generator=gen).double(), how)
    if how == "expanded":
        with pytest.raises(
            ValueError, match="rsa_cluster_null: x has zero variance across subjects at time 0"
        ):
            OPS.rsa_cluster_null(x, flips, thr, tail)
        return
    out = OPS.rsa_cluster_null(x, flips, thr, tail)
    want = _max_mass_oracle(np64(x), np64(flips), thr, tail)
    assert out.dtype == torch.float64 and out.shape == (9,)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-12, atol=1e-12)


def test_rsa_cluster_null_extreme_magnitudes() -> None:
    """t does not depend on a time point's scale: effects near 1e200 or 1e-170 (squares that overflow or
    underflow) give the null of the unscaled effects."""
    x = torch.randn(5, 6, generator=_gen(8), dtype=torch.float64) + 1.0
    flips = torch.tensor(list(itertools.product([1.0, -1.0], repeat=5)), dtype=torch.float64)
    want = OPS.rsa_cluster_null(x, flips, 1.0, 0)
    assert float(want.max()) > 0
    scale = torch.tensor([1e200, 1e-170, 1.0, 1e200, 1e-170, 3.0], dtype=torch.float64)
    torch.testing.assert_close(OPS.rsa_cluster_null(x * scale, flips, 1.0, 0), want, rtol=1e-13, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch", [1, 3])
def test_rsa_gram_centered_beyond_one_column_chunk(dtype: torch.dtype, batch: int) -> None:
    """Above 384 conditions the tiles run over chunks of the columns (each chunk against every row block
    that reaches it): still the float64 Gram matrix to the dtype's accuracy, symmetric, and one pattern
    set's bits alone as in a batch (one batch element per thread, or all threads on one)."""
    gen = _gen(5)
    x = (torch.randn(batch, 900, 300, generator=gen, dtype=torch.float64) + 2).to(dtype)
    mean = x.mean(-1).reshape(-1)
    gram = torch.empty(batch, 900, 900, dtype=dtype)
    OPS.rsa_gram_centered(x, mean, gram)
    y = np64(torch.sub(x, mean.view(batch, 900, 1)))
    want = y @ y.transpose(0, 2, 1)
    norm = np.sqrt(np.einsum("bii->bi", want))
    tol = 4e-15 if dtype == torch.float64 else 2e-6
    got = np64(gram) / norm[:, :, None] / norm[:, None, :]
    np.testing.assert_allclose(got, want / norm[:, :, None] / norm[:, None, :], rtol=0, atol=tol)
    assert torch.equal(gram, gram.transpose(1, 2))
    alone = torch.empty(1, 900, 900, dtype=dtype)
    OPS.rsa_gram_centered(x[-1:], mean[-900:], alone)
    assert torch.equal(alone[0], gram[-1])


@pytest.mark.parametrize(
    ("case", "names"),
    [
        ("x_float32", ["float64"]), ("x_1d", ["x"]), ("one_subject", ["x"]), ("flips_width", ["flips"]),
        ("flip_value", ["flips"]), ("nan", ["x"]), ("flat", ["zero variance"]), ("threshold", ["threshold"]),
        ("tail", ["tail"]),
    ],
)  # fmt: skip
def test_rsa_cluster_null_rejects_bad_operands(case: str, names: list[str]) -> None:
    x = torch.randn(4, 5, generator=_gen(9), dtype=torch.float64)
    flips = torch.tensor([[1.0, -1.0, 1.0, 1.0]], dtype=torch.float64)
    args = {
        "x_float32": (x.float(), flips, 1.0, 1), "x_1d": (x[0], flips, 1.0, 1),
        "one_subject": (x[:1], flips[:, :1], 1.0, 1), "flips_width": (x, flips[:, :3], 1.0, 1),
        "flip_value": (x, flips * 2, 1.0, 1),
        "nan": (x.index_fill(1, torch.tensor([2]), math.nan), flips, 1.0, 1),
        "flat": (x.index_fill(1, torch.tensor([3]), 0.25), flips, 1.0, 1),
        "threshold": (x, flips, -1.0, 1), "tail": (x, flips, 1.0, 2),
    }[case]  # fmt: skip
    status, payload = isolated(lambda: OPS.rsa_cluster_null(*args).tolist())
    _clean(status, payload, "rsa_cluster_null", names)


# ----------------------------------------------------------------------------------------- row kernels


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("how", LAYOUTS)
@EDGE_SETTINGS
@given(rows=st.integers(0, 4), p=st.integers(1, 300), special=st.sampled_from(["none", "nan", "inf", "-inf"]),
       seed=st.integers(0, 2**31))  # fmt: skip
def test_rsa_row_stats_matches_numpy(
    dtype: torch.dtype, how: str, rows: int, p: int, special: str, seed: int
) -> None:
    """Each row's max and min are numpy's (NaN for a row holding NaN, as torch's amax / amin), its sum
    numpy's float64 sum to float32 partial-sum rounding, for any layout and any length (the vector loop's
    tail included)."""
    gen = _gen(seed)
    x = torch.randn(rows, p, generator=gen, dtype=torch.float64).mul(
        1 + 10 * torch.rand(rows, 1, generator=gen)
    )
    if special != "none" and rows:
        x[rows - 1, int(torch.randint(0, p, (1,), generator=gen))] = float(special)
    x = layout(x.to(dtype), how)
    out = OPS.rsa_row_stats(x)
    assert out.dtype == torch.float64 and out.shape == (rows, 3)
    v = np64(x)
    with np.errstate(invalid="ignore"):
        want = np.stack([v.max(1), v.min(1), v.sum(1)], 1) if rows else np.zeros((0, 3))
    np.testing.assert_array_equal(out[:, :2].numpy(), want[:, :2])
    tol = 1e-13 if dtype == torch.float64 else 2e-6
    np.testing.assert_allclose(out[:, 2].numpy(), want[:, 2], rtol=0, atol=tol * max(1.0, float(np.nanmax(
        np.abs(v).sum(1), initial=0.0))))  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@EDGE_SETTINGS
@given(
    b=st.integers(1, 3), n=st.integers(1, 70), p=st.integers(1, 600), strided=st.booleans(),
    seed=st.integers(0, 2**31),
)  # fmt: skip
def test_rsa_gram_centered_matches_float64(
    dtype: torch.dtype, b: int, n: int, p: int, strided: bool, seed: int
) -> None:
    """gram is the float64 Gram matrix of y = torch.sub(x, mean) (the values in x's dtype) to the dtype's
    accuracy relative to the rows' norms, exactly symmetric, and every pattern set gets the same bits
    alone as in the batch; the sums and sums of squares are numpy's of those y. Sizes end inside the
    register tiles, the packed panels and the 256-feature blocks; rows may have a stride wider than p."""
    gen = _gen(seed)
    wide = torch.randn(b, n, p + 3 * strided, generator=gen, dtype=torch.float64).to(dtype) * 2 + 3
    x = wide[..., :p]
    mean = torch.randn(b * n, generator=gen, dtype=torch.float64).to(dtype) + 3
    gram = torch.full((b, n, n), float("nan"), dtype=dtype)
    sums = OPS.rsa_gram_centered(x, mean, gram)
    y = np64(torch.sub(x, mean.view(b, n, 1)))
    want = y @ y.transpose(0, 2, 1)
    norm = np.sqrt(np.einsum("bii->bi", want)) + 1e-300
    tol = 4e-15 if dtype == torch.float64 else 2e-6
    np.testing.assert_allclose(
        np64(gram) / norm[:, :, None] / norm[:, None, :], want / norm[:, :, None] / norm[:, None, :], rtol=0,
        atol=tol * max(1.0, p / 256),
    )  # fmt: skip
    assert torch.equal(gram, gram.transpose(1, 2))
    for i in range(b):
        alone = torch.empty(1, n, n, dtype=dtype)
        OPS.rsa_gram_centered(x[i : i + 1], mean[i * n : (i + 1) * n], alone)
        assert torch.equal(alone[0], gram[i])
    ys = y.reshape(b * n, p)
    scale = max(1.0, float((ys * ys).sum(1).max(initial=0.0)))
    assert sums.dtype == torch.float64 and sums.shape == (b * n, 2)
    np.testing.assert_allclose(sums[:, 0].numpy(), ys.sum(1), rtol=0, atol=tol * scale)
    np.testing.assert_allclose(sums[:, 1].numpy(), (ys * ys).sum(1), rtol=0, atol=tol * scale)


@pytest.mark.parametrize(
    ("case", "names"),
    [
        ("x_float16", ["float32"]), ("x_1d", ["x"]), ("x_empty_rows", ["p >= 1"]), ("mean_dtype", ["mean"]),
        ("mean_shape", ["mean"]), ("gram_shape", ["gram"]), ("gram_strided", ["contiguous"]),
        ("gram_dtype", ["gram"]), ("batch_2d", ["(B, n >= 1, p >= 1)"]),
    ],
)  # fmt: skip
def test_row_kernels_reject_bad_operands(case: str, names: list[str]) -> None:
    x = torch.randn(3, 5, generator=_gen(4))
    m, gram = x.mean(1), torch.empty(1, 3, 3)
    calls = {
        "x_float16": lambda: OPS.rsa_row_stats(x.half()), "x_1d": lambda: OPS.rsa_row_stats(x[0]),
        "x_empty_rows": lambda: OPS.rsa_row_stats(x[:, :0]),
        "mean_dtype": lambda: OPS.rsa_gram_centered(x[None], m.double(), gram),
        "mean_shape": lambda: OPS.rsa_gram_centered(x[None], m[:2], gram),
        "gram_shape": lambda: OPS.rsa_gram_centered(x[None], m, gram[:, :2]),
        "gram_strided": lambda: OPS.rsa_gram_centered(x[None], m, torch.empty(1, 3, 6)[..., ::2]),
        "gram_dtype": lambda: OPS.rsa_gram_centered(x[None], m, gram.double()),
        "batch_2d": lambda: OPS.rsa_gram_centered(x, m, gram),
    }  # fmt: skip
    op = "rsa_row_stats" if case.startswith("x_") else "rsa_gram_centered"
    status, payload = isolated(lambda: calls[case]().tolist())
    _clean(status, payload, op, names)


# ----------------------------------------------------------------------------------------- rng_discard


@EDGE_SETTINGS
@given(seed=st.integers(0, 2**63 - 1), before=st.integers(0, 1300), n=st.integers(0, 2000))
def test_rng_discard_matches_uniform_draws(seed: int, before: int, n: int) -> None:
    """From any seed and position in the 624-word state, discarding n draws leaves the generator where n
    float32 uniform_ draws leave it."""
    a, b = _gen(seed), _gen(seed)
    torch.empty(before).uniform_(generator=a)
    torch.empty(before).uniform_(generator=b)
    torch.empty(n).uniform_(generator=a)
    assert OPS.rng_discard(b, n) is None
    assert torch.equal(a.get_state(), b.get_state())


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((None, -1), ValueError, r"rng_discard: n must be in \[0, 2\^36\], got -1"),
        ((None, 2**36 + 1), ValueError, r"rng_discard: n must be in \[0, 2\^36\], got 68719476737"),
        ((None, 1.5), RuntimeError, "rng_discard"),
        ((torch.empty(1), 1), RuntimeError, "rng_discard"),
    ],
)
def test_rng_discard_rejects_bad_operands(args: tuple, error: type, match: str) -> None:
    """A negative or absurd count (2^36 draws already take tens of seconds) and operands of the wrong type
    are refused; the generator is left as it was."""
    state = torch.get_rng_state()
    with pytest.raises(error, match=match):
        OPS.rng_discard(*args)
    assert torch.equal(torch.get_rng_state(), state)


# ----------------------------------------------------------------------------------------- conv_taps

_BITS = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.bfloat16: torch.int16,
    torch.float16: torch.int16,
}


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(_BITS[x.dtype])


@pytest.mark.parametrize("dtype", list(_BITS))
@pytest.mark.parametrize("how", LAYOUTS)
@EDGE_SETTINGS
@given(
    k=st.integers(0, 3), c=st.integers(0, 5), kh=st.integers(1, 4), kw=st.integers(1, 4), data=st.data(),
    seed=st.integers(0, 2**31),
)  # fmt: skip
def test_conv_taps_and_backward_copy_the_taps_bit_for_bit(
    dtype: torch.dtype, how: str, k: int, c: int, kh: int, kw: int, data: st.DataObject, seed: int
) -> None:
    """conv_taps is the tap-major slice of the weight and conv_taps_backward puts it back among zeros, bit
    for bit (NaN, inf and -0 included), for any layout, dtype and size (empty ones too)."""
    r0 = data.draw(st.integers(0, kh - 1))
    r1 = data.draw(st.integers(r0 + 1, kh))
    c0 = data.draw(st.integers(0, kw - 1))
    c1 = data.draw(st.integers(c0 + 1, kw))
    gen = _gen(seed)
    w = torch.randn(k, c, kh, kw, generator=gen, dtype=torch.float64)
    pool = torch.tensor([math.nan, math.inf, -math.inf, -0.0], dtype=torch.float64)
    w = torch.where(
        torch.rand(w.shape, generator=gen) < 0.2, pool[torch.randint(0, 4, w.shape, generator=gen)], w
    )
    w = layout(w.to(dtype), how)
    out = OPS.conv_taps(w, r0, r1, c0, c1)
    assert out.dtype == dtype and out.shape == (k, r1 - r0, c1 - c0, c) and out.is_contiguous()
    assert torch.equal(_bits(out), _bits(w[:, :, r0:r1, c0:c1].permute(0, 2, 3, 1)))
    grad = layout(out, how)  # "expanded" repeats a slice: other values
    back = OPS.conv_taps_backward(grad, kh, kw, r0, c0)
    want = torch.zeros((k, c, kh, kw), dtype=dtype)
    want[:, :, r0:r1, c0:c1] = grad.permute(0, 3, 1, 2)
    assert back.dtype == dtype and back.is_contiguous()
    assert torch.equal(_bits(back), _bits(want))


@pytest.mark.parametrize(
    ("call", "names"),
    [
        (lambda w: OPS.conv_taps(w, 1, 1, 0, 3), ["r0", "r1"]),
        (lambda w: OPS.conv_taps(w, 0, 4, 0, 3), ["r1", "kh"]),
        (lambda w: OPS.conv_taps(w, -1, 2, 0, 3), ["r0"]),
        (lambda w: OPS.conv_taps(w, 0, 3, 2, 1), ["c0", "c1"]),
        (lambda w: OPS.conv_taps(w[0], 0, 3, 0, 3), ["weight"]),
        (lambda w: OPS.conv_taps(w.to(torch.int32), 0, 3, 0, 3), ["weight"]),
        (lambda w: OPS.conv_taps(w.to(torch.complex64), 0, 3, 0, 3), ["weight"]),
        (lambda w: OPS.conv_taps_backward(w, 3, 3, 1, 0), ["r0", "kh"]),
        (lambda w: OPS.conv_taps_backward(w, 3, 3, 0, 2), ["c0", "kw"]),
        (lambda w: OPS.conv_taps_backward(w, 0, 3, 0, 0), ["kh"]),
        (lambda w: OPS.conv_taps_backward(w, 3, 3, -1, 0), ["r0"]),
        (lambda w: OPS.conv_taps_backward(w[0], 3, 3, 0, 0), ["grad"]),
        (lambda w: OPS.conv_taps_backward(w.to(torch.int64), 3, 3, 0, 0), ["grad"]),
    ],
    ids=[
        "empty_rows", "rows_past_kernel", "negative_r0", "reversed_cols", "three_d", "int_weight",
        "complex_weight", "grad_rows_past_kernel", "grad_cols_past_kernel", "zero_kh", "negative_origin",
        "grad_three_d", "int_grad",
    ],
)  # fmt: skip
def test_conv_taps_refuse_bad_operands(call: object, names: list[str]) -> None:
    """Tap ranges outside the kernel, empty or reversed ranges and tensors of the wrong rank or dtype are
    refused by name, never copied out of bounds."""
    w = torch.randn(2, 3, 3, 3)
    status, payload = isolated(lambda: call(w).tolist())  # type: ignore[operator]
    _clean(status, payload, "conv_taps", names)  # the name of either op holds "conv_taps"


@pytest.mark.parametrize(
    ("op", "args"),
    [
        ("conv_taps", (torch.randn(3, 4, 3, 3), 1, 3, 0, 2)),
        ("conv_taps_backward", (torch.randn(3, 2, 2, 4), 3, 3, 1, 0)),
    ],
)
def test_conv_taps_pass_opcheck(op: str, args: tuple) -> None:
    """Schema, autograd registration and the Meta kernels that torch.compile traces CORnet-S's step with
    agree with the CPU kernels (torch.library.opcheck)."""
    result = torch.library.opcheck(getattr(OPS, op).default, args)
    assert set(result.values()) == {"SUCCESS"}, result


# ----------------------------------------------------------------------------------------- error types


def _bad_rsa_calls() -> dict[str, object]:
    x = torch.randn(2, 4, dtype=torch.float64)
    i32 = torch.tensor([0], dtype=torch.int32)
    return {
        "rsa_rank": lambda: OPS.rsa_rank(torch.ones(3, dtype=torch.float16)),
        "rsa_centered_ranks": lambda: OPS.rsa_centered_ranks(x, True, torch.int32),
        "rsa_rdm_direct": lambda: OPS.rsa_rdm_direct(x[None], 7),
        "rsa_rdm_compare": lambda: OPS.rsa_rdm_compare(x[None, :3, :2], x.float()[:, :3], 0, 0),
        "rsa_spearman_ceiling": lambda: OPS.rsa_spearman_ceiling(x[:, None].float(), x),
        "rsa_rdm_spearman_ceiling": lambda: OPS.rsa_rdm_spearman_ceiling(x[:, None, :, None], x, 0),
        "rsa_kendall_tau_a": lambda: OPS.rsa_kendall_tau_a(x, x, i32, i32),
        "rsa_permute_condensed": lambda: OPS.rsa_permute_condensed(torch.randn(1, 6), i32.expand(1, 4)),
        "rsa_cluster_null": lambda: OPS.rsa_cluster_null(x, x[:, :2], 1.0, 1),
        "rsa_row_stats": lambda: OPS.rsa_row_stats(x.to(torch.int32)),
        "rsa_gram_centered": lambda: OPS.rsa_gram_centered(x[None], x[0], torch.empty(1, 2, 2)),
        "conv_taps": lambda: OPS.conv_taps(x.reshape(2, 1, 2, 2), 0, 3, 0, 2),
        "conv_taps_backward": lambda: OPS.conv_taps_backward(
            x.reshape(2, 1, 2, 2).to(torch.int32), 3, 3, 0, 0
        ),
    }


@pytest.mark.parametrize("op", sorted(RSA_OPS | TAP_OPS))
def test_compiled_op_errors_are_value_or_type_errors(op: str) -> None:
    """Bad operands of the C++ ops are the project's ValueError/TypeError (TORCH_CHECK_VALUE /
    TORCH_CHECK_TYPE), not TORCH_CHECK's generic RuntimeError."""
    with pytest.raises((ValueError, TypeError), match=op):
        _bad_rsa_calls()[op]()  # type: ignore[operator]


@pytest.mark.parametrize("op", sorted(RSA_OPS | TAP_OPS))
def test_compiled_ops_with_inputs_that_require_grad(op: str) -> None:
    """No op output claims a gradient it cannot give: either it does not require grad, or backward
    returns a gradient."""
    x = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 3, dtype=torch.float64)
    calls = {
        "rsa_rank": lambda: OPS.rsa_rank(x),
        "rsa_centered_ranks": lambda: OPS.rsa_centered_ranks(x, True, torch.float64),
        "rsa_rdm_direct": lambda: OPS.rsa_rdm_direct(x.reshape(1, 3, 4), 0),
        "rsa_rdm_compare": lambda: OPS.rsa_rdm_compare(x.reshape(1, 3, 4), w, 0, 2),
        "rsa_spearman_ceiling": lambda: OPS.rsa_spearman_ceiling(
            x[:, None], torch.ones(1, 6, dtype=torch.float64)
        )[0],
        "rsa_rdm_spearman_ceiling": lambda: OPS.rsa_rdm_spearman_ceiling(
            x.reshape(2, 1, 3, 2), torch.ones(1, 3, dtype=torch.float64), 0
        )[0],
        "rsa_kendall_tau_a": lambda: OPS.rsa_kendall_tau_a(
            x, x.detach(), torch.tensor([0]), torch.tensor([1])
        ),
        "rsa_permute_condensed": lambda: OPS.rsa_permute_condensed(x, torch.tensor([[1, 0, 3, 2]])),
        "rsa_cluster_null": lambda: OPS.rsa_cluster_null(x, torch.ones(3, 2, dtype=torch.float64), 1.0, 0),
        "rsa_row_stats": lambda: OPS.rsa_row_stats(x),
        "rsa_gram_centered": lambda: OPS.rsa_gram_centered(
            x[None], x.detach()[:, 0], torch.empty(1, 2, 2, dtype=torch.float64)
        ),
        "conv_taps": lambda: OPS.conv_taps(x.reshape(2, 1, 2, 3), 0, 1, 1, 3),
        "conv_taps_backward": lambda: OPS.conv_taps_backward(x.reshape(2, 1, 2, 3), 3, 3, 1, 0),
    }
    try:
        out = calls[op]()
    except (ValueError, TypeError, NotImplementedError, RuntimeError) as exc:
        assert op in str(exc) and "grad" in str(exc), (
            f"{op} refused an input that requires grad unclearly: {exc}"
        )
        return
    if out.requires_grad:
        try:
            (g,) = torch.autograd.grad(out.sum(), [x], allow_unused=True)
        except RuntimeError as exc:  # torch's "derivative for <op> is not implemented": refused, not dropped
            assert op in str(exc), f"{op}: backward failed without naming the op: {exc}"
            return
        assert g is not None, f"{op}: output requires grad but backward gives None"


# ----------------------------------------------------------------------------------------- bn_act (Triton)

triton_only = pytest.mark.skipif(not env_triton(), reason="triton kernels need a GPU or TRITON_INTERPRET=1")


def _bn_oracle(x, w, b, rm, rv, res, training, eps, relu):
    """relu(F.batch_norm(x) + res) in float64, differentiable in whatever requires grad."""
    d = lambda t: None if t is None else t.double()
    y = F.batch_norm(
        d(x), None if training else d(rm), None if training else d(rv), d(w), d(b), training, 0.0, eps
    )
    if res is not None:
        y = y + d(res)
    return F.relu(y) if relu else y


@triton_only
@pytest.mark.triton
@pytest.mark.parametrize("how", ["contiguous", "channels_last", "transposed", "stepped", "expanded"])
@pytest.mark.parametrize(("training", "residual"), [(True, False), (False, True)])
def test_bn_act_fwd_layouts(how: str, training: bool, residual: bool) -> None:
    """The custom op called directly: y equals F.batch_norm (+ residual, ReLU) for contiguous and
    channels_last x; other strides are refused or handled, never normalised with the wrong strides."""
    _registered()
    gen = _gen(6)
    base = torch.randn(2, 3, 4, 4, generator=gen)
    x = {
        "contiguous": base,
        "channels_last": base.contiguous(memory_format=torch.channels_last),
        "transposed": base.transpose(2, 3).contiguous().transpose(2, 3),
        "stepped": torch.cat([base, base], 3)[..., ::2],
        "expanded": base[:1].expand(2, 3, 4, 4),
    }[how]
    w, b = torch.rand(3, generator=gen) + 0.5, torch.randn(3, generator=gen)
    rm, rv = torch.randn(3, generator=gen), torch.rand(3, generator=gen) + 0.5
    res = torch.randn(2, 3, 4, 4, generator=gen) if residual else None
    args = (x, w, b, None if training else rm, None if training else rv, res, training, 1e-5, True)
    status, payload = isolated(lambda: OPS.bn_act_fwd(*args)[0].tolist())
    assert status != "crashed", f"bn_act_fwd crashed on {how} x (exit {payload})"
    if status == "raised":
        _clean(status, payload, "bn_act_fwd", ["x", "stride", "contiguous"])
        return
    want = _bn_oracle(x, w, b, rm, rv, res, training, 1e-5, True)
    assert_close(np.array(payload), want, torch.float32, f"bn_act_fwd {how}", scale=float(want.abs().max()))


def _short(case: str) -> tuple:
    gen = _gen(7)
    x = torch.randn(2, 3, 4, 4, generator=gen)
    w, b = torch.ones(3), torch.zeros(3)
    rm, rv, res = None, None, None
    training = True
    if case == "weight":
        w = w[:2]
    elif case == "bias":
        b = b[:1]
    elif case == "running_mean":
        rm, rv, training = torch.zeros(2), torch.ones(3), False
    elif case == "running_var":
        rm, rv, training = torch.zeros(3), torch.ones(1), False
    elif case == "residual":
        res = x[:1]
    elif case == "eval_without_running":
        training = False
    elif case == "x_3d":
        x = x[0]
    return (x, w, b, rm, rv, res, training, 1e-5, True)


@triton_only
@pytest.mark.triton
@pytest.mark.parametrize(
    "case", ["weight", "bias", "running_mean", "running_var", "residual", "eval_without_running", "x_3d"]
)
def test_bn_act_fwd_rejects_bad_operands(case: str) -> None:
    """Operands that do not fit x (C channels, x's shape) are refused before any kernel reads them."""
    _registered()
    args = _short(case)
    status, payload = isolated(lambda: OPS.bn_act_fwd(*args)[0].tolist())
    names = {"eval_without_running": ["running_mean", "running_var"], "x_3d": ["x"]}.get(case, [case])
    _clean(status, payload, "bn_act_fwd", names)


@triton_only
@pytest.mark.triton
@pytest.mark.parametrize("case", ["dy", "mean", "rstd", "weight", "y"])
def test_bn_act_bwd_rejects_bad_operands(case: str) -> None:
    _registered()
    gen = _gen(8)
    x = torch.randn(2, 3, 4, 4, generator=gen)
    w = torch.ones(3)
    y, mean, rstd, _ = OPS.bn_act_fwd(x, w, torch.zeros(3), None, None, None, True, 1e-5, True)
    ops = dict(dy=torch.ones_like(x), x=x, y=y, weight=w, mean=mean, rstd=rstd)
    ops[case] = {"dy": ops["dy"][:1], "mean": mean[:1], "rstd": rstd[:2], "weight": w[:1], "y": y[:, :1]}[
        case
    ]
    status, payload = isolated(
        lambda: OPS.bn_act_bwd(ops["dy"], x, ops["y"], ops["weight"], ops["mean"], ops["rstd"], True, False)[
            0
        ].tolist()
    )
    _clean(status, payload, "bn_act_bwd", [case])


@triton_only
@pytest.mark.triton
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("residual", [False, True])
def test_bn_act_bwd_matches_autograd(relu: bool, residual: bool) -> None:
    """bn_act_bwd's (dx, dweight, dbias, dresidual) equal float64 autograd through F.batch_norm."""
    _registered()
    gen = _gen(9)
    x = torch.randn(2, 3, 4, 4, generator=gen)
    w, b = torch.rand(3, generator=gen) + 0.5, torch.randn(3, generator=gen)
    res = torch.randn(2, 3, 4, 4, generator=gen) if residual else None
    y, mean, rstd, _ = OPS.bn_act_fwd(x, w, b, None, None, res, True, 1e-5, relu)
    dy = torch.randn(x.shape, generator=gen)
    got = OPS.bn_act_bwd(dy, x, y if relu else None, w, mean, rstd, True, residual)
    leaves = [t.double().requires_grad_() for t in (x, w, b)] + (
        [res.double().requires_grad_()] if residual else []
    )
    out = _bn_oracle(
        leaves[0], leaves[1], leaves[2], None, None, leaves[3] if residual else None, True, 1e-5, relu
    )
    exp = torch.autograd.grad(out, leaves, dy.double())
    for name, g, e in zip(["dx", "dweight", "dbias", "dresidual"], got, exp, strict=False):
        assert_close(g, e, torch.float32, name, scale=float(e.abs().max()))
