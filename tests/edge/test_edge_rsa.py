"""Edge cases of every public RSA function against scipy/numpy oracles, on every backend.

Axes: input kinds (int, bool, half, bfloat16, complex, int64 beyond 2^53, NaN / inf), empty and size-1
dims, memory layouts (transposed, stepped, stride 0), extreme magnitudes, and inputs that require
grad. The acceptance rule is edge_cases.attempt / assert_close / assert_grads.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import pytest
import torch
from edge_cases import (
    EDGE_SETTINGS,
    EXTREME_IDS,
    EXTREMES,
    FLOAT_KINDS,
    LAYOUTS,
    Outcome,
    assert_close,
    assert_grads,
    attempt,
    compute_dtype,
    env_triton,
    layout,
    make,
    np64,
    oracle_compare,
    oracle_crossnobis,
    oracle_noise_ceiling,
    oracle_rdm,
    rtol,
)
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

import fastalign as fa
from fastalign import _ext
from fastalign.rsa import api

HAS_CPP = _ext.why_ops_missing(api._CPP_OPS) is None
TRITON = pytest.param("triton", marks=pytest.mark.triton)
RDM_BACKENDS = ["reference", "torch", "cpp", TRITON]
RANK_BACKENDS = ["reference", "torch", "cpp"]
COMPARE_BACKENDS = ["reference", "torch", "cpp"]
RDM_METHODS = ["correlation", "cosine", "euclidean", "crossnobis"]
COMPARE_METHODS = ["spearman", "pearson", "kendall_tau_a", "rho_a", "cosine"]
RANK_METHODS = ("spearman", "kendall_tau_a", "rho_a")
HUGE = 2**60  # int64 values around here are not float64-representable one by one


def _skip_missing(backend: str) -> None:
    if backend == "cpp" and not HAS_CPP:
        pytest.skip("fastalign._C is not built")
    if backend == "triton" and not env_triton():
        pytest.skip("triton kernels need a GPU or TRITON_INTERPRET=1")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _kind_tensor(kind: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """``make`` plus the RSA-specific kinds: int64 beyond 2^53 and float64 with infinities / signed zeros."""
    if kind == "int64_huge":
        return HUGE + torch.randint(-40, 40, shape, generator=gen)
    if kind == "specials":
        pool = torch.tensor([-math.inf, -1.0, -0.0, 0.0, 5e-324, 1.0, math.inf], dtype=torch.float64)
        return pool[torch.randint(0, pool.numel(), shape, generator=gen)]
    return make(kind, shape, gen)


# ----------------------------------------------------------------------------------------- rank

RANK_KINDS = [*FLOAT_KINDS, "int32", "int64", "int64_huge", "int8", "int16", "uint8", "bool", "specials"]


@pytest.mark.parametrize("backend", RANK_BACKENDS)
@pytest.mark.parametrize("kind", RANK_KINDS)
@EDGE_SETTINGS
@given(
    shape=st.lists(st.integers(0, 4), min_size=1, max_size=3),
    last=st.integers(0, 9),
    how=st.sampled_from(LAYOUTS),
    seed=st.integers(0, 2**31),
    data=st.data(),
)
def test_rank_matches_rankdata(
    backend: str, kind: str, shape: list[int], last: int, how: str, seed: int, data: st.DataObject
) -> None:
    """Ranks are exact (scipy.stats.rankdata) for every real dtype, layout and dim, empty dims included."""
    _skip_missing(backend)
    x = layout(_kind_tensor(kind, (*shape[:-1], last), _gen(seed)), how)
    dim = data.draw(st.integers(-x.dim(), x.dim() - 1), label="dim")
    out = attempt(lambda: fa.rank(x, dim, backend=backend), "rank", ["x", "dim"])
    if not out.ok:
        assert isinstance(out.error, NotImplementedError), f"rank refused valid input: {out.error}"
        return
    want = stats.rankdata(x.to(torch.uint8).numpy() if kind == "bool" else np_exact(x), axis=dim)
    assert out.value.dtype == torch.float64
    np.testing.assert_array_equal(out.value.numpy(), want)


def np_exact(x: torch.Tensor) -> np.ndarray:
    """x as numpy without rounding (half -> float32, which holds every half value)."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return x.float().numpy()
    return x.contiguous().numpy()


@pytest.mark.parametrize("backend", RANK_BACKENDS)
def test_rank_uint64_and_complex(backend: str) -> None:
    """uint64 ranks exactly (scipy) or is refused cleanly; complex is a TypeError naming x."""
    _skip_missing(backend)
    x = torch.tensor([2**63 + 5, 3, 2**63 + 1, 3], dtype=torch.uint64)
    out = attempt(lambda: fa.rank(x, backend=backend), "rank", ["x"])
    if out.ok:
        np.testing.assert_array_equal(out.value.numpy(), stats.rankdata(x.numpy()))
    out = attempt(lambda: fa.rank(torch.ones(3, dtype=torch.complex64), backend=backend), "rank", ["x"])
    assert isinstance(out.error, TypeError)


@pytest.mark.parametrize("backend", RANK_BACKENDS)
@pytest.mark.parametrize("bad", [0.0, 1.5, "0", None], ids=repr)
def test_rank_dim_of_wrong_type(backend: str, bad: object) -> None:
    """A dim that is not an int is a TypeError/ValueError naming dim, not a torch internals error."""
    _skip_missing(backend)
    out = attempt(lambda: fa.rank(torch.arange(4.0), bad, backend=backend), "rank", ["dim"])  # type: ignore[arg-type]
    assert not out.ok


@pytest.mark.parametrize("backend", RANK_BACKENDS)
def test_rank_of_input_that_requires_grad(backend: str) -> None:
    """Ranks are piecewise constant: no gradient, or a zero one, never an output whose backward is None."""
    _skip_missing(backend)
    x = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    out = fa.rank(x, backend=backend)
    assert_grads(out, fa.rank(x.detach(), backend="reference"), [x], torch.float64, f"rank[{backend}]")


# ----------------------------------------------------------------------------------------- rdm


def _rdm_valid(x: np.ndarray, method: str) -> bool:
    p = x.shape[-1]
    if method == "correlation":
        return p >= 2 and not bool((x.max(-1) == x.min(-1)).any())
    if method == "cosine":
        return not bool((x == 0).all(-1).any())
    return True


def _rdm_oracle(x: np.ndarray, method: str) -> np.ndarray:
    return oracle_crossnobis(x) if method == "crossnobis" else oracle_rdm(x, method)


@pytest.mark.parametrize("backend", RDM_BACKENDS)
@pytest.mark.parametrize("kind", [*FLOAT_KINDS, "int32", "int64", "bool", "complex128"])
@EDGE_SETTINGS
@given(
    method=st.sampled_from(RDM_METHODS),
    n=st.integers(3, 6),
    p=st.integers(1, 5),
    batch=st.sampled_from([(), (1,), (2,)]),
    how=st.sampled_from(LAYOUTS),
    seed=st.integers(0, 2**31),
)
def test_rdm_matches_scipy(
    backend: str, kind: str, method: str, n: int, p: int, batch: tuple[int, ...], how: str, seed: int
) -> None:
    """rdm equals scipy's pdist (rsatoolbox's definitions) for every dtype and layout, or refuses cleanly."""
    _skip_missing(backend)
    if method == "correlation" and p < 2:
        return  # test_rdm_correlation_of_one_feature
    folds = (2,) if method == "crossnobis" else ()
    x = layout(make(kind, (*batch, *folds, n, p), _gen(seed)), how)
    out = attempt(lambda: fa.rdm(x, method, backend=backend), "rdm", ["x"])
    if kind.startswith("complex"):
        assert isinstance(out.error, TypeError), "complex patterns must be a TypeError naming x"
        return
    xs = np64(x)
    if not out.ok:
        assert isinstance(out.error, NotImplementedError) or not _rdm_valid(xs, method), (
            f"rdm refused valid input: {out.error}"
        )
        return
    assert _rdm_valid(xs, method), "rdm accepted input for which the method is undefined"
    ct = compute_dtype(x.dtype)
    assert out.value.dtype == ct, f"rdm returned {out.value.dtype} for {x.dtype}; documented {ct}"
    tol_dtype = x.dtype if backend == "triton" and x.dtype in (torch.float16, torch.bfloat16) else ct
    want = _rdm_oracle(xs, method)
    scale = 1.0 if method in ("correlation", "cosine") else None  # distances of order 1
    assert_close(out.value, want, tol_dtype, f"rdm[{backend}, {method}, {kind}, {how}]", scale=scale)


@pytest.mark.parametrize("backend", RDM_BACKENDS)
def test_rdm_correlation_of_one_feature(backend: str) -> None:
    """One feature has no correlation distance: a ValueError that names x."""
    _skip_missing(backend)
    out = attempt(lambda: fa.rdm(torch.randn(4, 1), "correlation", backend=backend), "rdm", ["x"])
    assert not out.ok


def _rdm_inputs(method: str, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    shape = (2, 5, 4) if method == "crossnobis" else (5, 4)
    return torch.randn(shape, generator=_gen(seed), dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("backend", RDM_BACKENDS)
@pytest.mark.parametrize("method", RDM_METHODS)
@pytest.mark.parametrize(("dtype", "scale"), EXTREMES, ids=EXTREME_IDS)
def test_rdm_extreme_magnitudes(backend: str, method: str, dtype: torch.dtype, scale: float) -> None:
    """Patterns of 1e200 / 1e-170 (float64) or 1e20 / 1e-25 (float32): correlation and cosine distances
    are scale-free; (cross-validated) squared distances scale by scale^2, inf past the dtype's range."""
    _skip_missing(backend)
    base = _rdm_inputs(method, torch.float64)
    x = (base * scale).to(dtype)
    out = attempt(lambda: fa.rdm(x, method, backend=backend), "rdm", ["x"])
    if not out.ok:
        return
    want = _rdm_oracle(np64(base), method)
    if method in ("euclidean", "crossnobis"):
        with np.errstate(over="ignore", under="ignore"):
            want = (want * scale * scale).astype(np.dtype(str(dtype).split(".")[-1])).astype(np.float64)
    assert_close(out.value, want, dtype, f"rdm[{backend}, {method}] of {dtype} x {scale:g}")


def _refused(out: Outcome, backend: str) -> bool:
    """An explicit backend may refuse inputs that require grad (NotImplementedError); auto may not."""
    if out.ok:
        return False
    assert backend != "auto" and isinstance(out.error, NotImplementedError), f"{backend}: {out.error}"
    return True


@pytest.mark.parametrize("backend", ["auto", *RDM_BACKENDS])
@pytest.mark.parametrize("method", RDM_METHODS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rdm_input_that_requires_grad(backend: str, method: str, dtype: torch.dtype) -> None:
    """The gradient of rdm reaches x and equals the reference's."""
    _skip_missing(backend)
    x = _rdm_inputs(method, dtype).requires_grad_()
    out = attempt(lambda: fa.rdm(x, method, backend=backend), "rdm", ["x"])
    if not _refused(out, backend):
        want = fa.rdm(x, method, backend="reference")
        assert_grads(out.value, want, [x], dtype, f"rdm[{backend}, {method}]")


@pytest.mark.parametrize("backend", RDM_BACKENDS)
@pytest.mark.parametrize("method", ["correlation", "euclidean"])
def test_rdm_broadcast_batch_and_empty(backend: str, method: str) -> None:
    """A stride-0 batch gives the same RDM in every row; an empty batch is empty or a clean error."""
    _skip_missing(backend)
    dtype = torch.float32 if backend == "triton" else torch.float64
    x = _rdm_inputs(method, dtype)
    out = fa.rdm(x.expand(3, *x.shape), method, backend=backend)
    assert_close(out, np.broadcast_to(oracle_rdm(np64(x), method), (3, 10)), dtype, "expanded batch")
    empty = attempt(lambda: fa.rdm(x.expand(0, *x.shape), method, backend=backend), "rdm", ["x"])
    if empty.ok:
        assert empty.value.shape == (0, 10)


# ----------------------------------------------------------------------------------------- compare_rdms


def _compare_kind(kind: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    return _kind_tensor(kind, shape, gen)


def _refusal(error: BaseException | None, kind: str) -> bool:
    """Refusals allowed for valid input: an explicit backend's, and int64 values that float64 cannot
    hold (a ValueError saying so: these functions compute in float64, only rank is exact for them)."""
    if isinstance(error, NotImplementedError):
        return True
    return kind == "int64_huge" and isinstance(error, ValueError) and "2**53" in str(error)


def _defined(v: np.ndarray, method: str) -> bool:
    if method in ("spearman", "pearson"):
        return not bool((v.max(-1) == v.min(-1)).any())
    if method == "cosine":
        return not bool((v == 0).all(-1).any())
    return True


COMPARE_KINDS = [*FLOAT_KINDS, "int32", "int64", "int64_huge", "bool", "complex128", "nan_shared"]


@pytest.mark.parametrize("backend", COMPARE_BACKENDS)
@pytest.mark.parametrize("kind", COMPARE_KINDS)
@EDGE_SETTINGS
@given(
    data=st.data(),
    n=st.integers(3, 6),
    shapes=st.sampled_from([((), ()), ((2, 1), (1, 3)), ((1,), (2,)), ((2,), ())]),
    how=st.sampled_from(LAYOUTS),
    seed=st.integers(0, 2**31),
)
def test_compare_rdms_matches_scipy(
    backend: str,
    kind: str,
    data: st.DataObject,
    n: int,
    shapes: tuple[tuple[int, ...], tuple[int, ...]],
    how: str,
    seed: int,
) -> None:
    """compare_rdms equals scipy.stats (spearmanr, pearsonr, tau-a, rho-a, cosine) with broadcasting,
    for every dtype and layout; ranks of int64 beyond 2^53 are exact; NaN entries shared by a and b are
    dropped (rsatoolbox)."""
    _skip_missing(backend)
    # only rank statistics are exact for integers beyond float64's 53 bits
    method = data.draw(st.sampled_from(RANK_METHODS if kind == "int64_huge" else COMPARE_METHODS), "method")
    k = n * (n - 1) // 2
    gen = _gen(seed)
    base = "float64" if kind == "nan_shared" else kind
    a, b = _compare_kind(base, (*shapes[0], k), gen), _compare_kind(base, (*shapes[1], k), gen)
    if kind == "nan_shared":
        a[..., 0] = math.nan
        b[..., 0] = math.nan
    if kind == "nan_shared" and how == "expanded" and all(d <= 1 for d in a.shape[:-1]):
        how = "stepped"  # a stride-0 RDM repeats one value: it cannot be NaN at one entry only
    a = layout(a, how)
    out = attempt(lambda: fa.compare_rdms(a, b, method, backend=backend), "compare_rdms", ["a", "b"])
    if kind.startswith("complex"):
        assert isinstance(out.error, TypeError)
        return
    an, bn = (t.numpy() if kind == "int64_huge" else np64(t) for t in (a, b))
    if kind == "nan_shared":
        an, bn = an[..., 1:], bn[..., 1:]
    defined = _defined(an, method) and _defined(bn, method)
    if not out.ok:
        assert not defined or _refusal(out.error, kind), f"refused valid input: {out.error}"
        return
    assert defined, "compare_rdms returned a value for an undefined statistic"
    both32 = all(t.dtype.is_floating_point and t.dtype != torch.float64 for t in (a, b))
    expect = torch.float32 if both32 else torch.float64
    assert out.value.dtype == expect, f"compare_rdms returned {out.value.dtype}; documented {expect}"
    what = f"compare_rdms[{backend}, {method}, {kind}]"
    assert_close(out.value, oracle_compare(an, bn, method), expect, what, scale=1.0)


@pytest.mark.parametrize("backend", COMPARE_BACKENDS)
@pytest.mark.parametrize("method", COMPARE_METHODS)
@pytest.mark.parametrize(("dtype", "scale"), EXTREMES, ids=EXTREME_IDS)
def test_compare_rdms_extreme_magnitudes(backend: str, method: str, dtype: torch.dtype, scale: float) -> None:
    """Every compare method is scale-free: RDMs of 1e200 / 1e-170 (1e20 / 1e-25 in float32) give the
    unscaled similarity."""
    _skip_missing(backend)
    gen = _gen(1)
    a, b = (torch.randn(15, generator=gen, dtype=torch.float64) for _ in range(2))
    out = attempt(
        lambda: fa.compare_rdms((a * scale).to(dtype), (b * scale).to(dtype), method, backend=backend),
        "compare_rdms",
        ["a", "b"],
    )
    if out.ok:
        assert_close(
            out.value, oracle_compare(np64(a), np64(b), method), dtype, f"{method} x {scale:g}", scale=1.0
        )


@pytest.mark.parametrize("backend", ["auto", *COMPARE_BACKENDS])
@pytest.mark.parametrize("method", COMPARE_METHODS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_compare_rdms_inputs_that_require_grad(backend: str, method: str, dtype: torch.dtype) -> None:
    """Gradients reach both RDMs as in the reference (pearson, cosine); rank statistics give none."""
    _skip_missing(backend)
    gen = _gen(2)
    a = torch.randn(3, 10, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    b = torch.randn(10, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    out = attempt(lambda: fa.compare_rdms(a, b, method, backend=backend), "compare_rdms", ["a", "b"])
    if not _refused(out, backend):
        want = fa.compare_rdms(a, b, method, backend="reference")
        assert_grads(out.value, want, [a, b], dtype, f"compare_rdms[{backend}, {method}]")


# ----------------------------------------------------------------------------------------- noise ceiling

# "the pooled RDM of all subjects is constant" names the rdms argument's pool
NC_NAMES = ["rdms", "pooled RDM"]
NC_KINDS = ["float64", "float32", "float16", "bfloat16", "int32", "int64_huge", "bool", "complex128"]


@pytest.mark.parametrize("backend", COMPARE_BACKENDS)
@pytest.mark.parametrize("kind", NC_KINDS)
@EDGE_SETTINGS
@given(
    data=st.data(),
    s=st.integers(2, 4),
    n=st.integers(3, 5),
    extra=st.sampled_from([(), (2,)]),
    how=st.sampled_from(LAYOUTS),
    seed=st.integers(0, 2**31),
)
def test_noise_ceiling_matches_rsatoolbox_definition(
    backend: str, kind: str, data: st.DataObject, s: int, n: int, extra: tuple[int, ...], how: str, seed: int
) -> None:
    """(lower, upper) equal boot_noise_ceiling's leave-one-out / pooled definitions, computed with scipy."""
    _skip_missing(backend)
    method = data.draw(st.sampled_from(RANK_METHODS if kind == "int64_huge" else COMPARE_METHODS), "method")
    k = n * (n - 1) // 2
    rdms = layout(_kind_tensor(kind, (s, *extra, k), _gen(seed)), how)
    out = attempt(lambda: fa.noise_ceiling(rdms, method, backend=backend), "noise_ceiling", NC_NAMES)
    if kind.startswith("complex"):
        assert isinstance(out.error, TypeError)
        return
    rn = rdms.numpy() if kind == "int64_huge" else np64(rdms)
    with np.errstate(invalid="ignore", divide="ignore"):
        lower, upper = oracle_noise_ceiling(rn, method)
    defined = _defined(rn, method) and not (np.isnan(lower).any() or np.isnan(upper).any())
    if not out.ok:
        assert not defined or _refusal(out.error, kind), f"refused valid input: {out.error}"
        return
    assert defined, f"noise_ceiling returned {out.value} where the ceiling is undefined (oracle NaN)"
    ct = torch.float32 if rdms.dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.float64
    assert_close(out.value[0], lower, ct, f"lower[{backend}, {method}, {kind}]", scale=1.0)
    assert_close(out.value[1], upper, ct, f"upper[{backend}, {method}, {kind}]", scale=1.0)


@pytest.mark.parametrize("backend", COMPARE_BACKENDS)
@pytest.mark.parametrize("method", COMPARE_METHODS)
def test_noise_ceiling_constant_pooled_rdm(backend: str, method: str) -> None:
    """Subjects [r, -r]: the pooled RDM is constant (all-zero for cosine), so the upper bound of the
    correlation methods is undefined: a ValueError naming rdms, never NaN; tau-a and rho-a are 0."""
    _skip_missing(backend)
    r = torch.randn(10, generator=_gen(3), dtype=torch.float64)
    out = attempt(
        lambda: fa.noise_ceiling(torch.stack([r, -r]), method, backend=backend), "noise_ceiling", NC_NAMES
    )
    if out.ok:
        lower, upper = out.value
        assert not (torch.isnan(lower).any() or torch.isnan(upper).any()), f"NaN ceiling: {out.value}"
        assert method in ("kendall_tau_a", "rho_a"), "the upper bound is undefined here"
        assert_close(upper, 0.0, torch.float64, "upper", scale=1.0)


@pytest.mark.parametrize("backend", COMPARE_BACKENDS)
def test_noise_ceiling_pool_constant_up_to_rounding(backend: str) -> None:
    """Subjects r, 1 - r and s: z-scored, the first two cancel, so the pool left when s is held out is
    zero up to rounding (-5.6e-17) and its Pearson correlation with s is undefined: a ValueError, not
    the correlation of rounding noise (reference -0.36, torch/cpp -0.80 for these RDMs)."""
    _skip_missing(backend)
    r = torch.tensor([0, 0, 0, 1, 0, 0], dtype=torch.float64)
    rdms = torch.stack([r, 1 - r, torch.tensor([1, 1, 1, 0, 1, 1.5], dtype=torch.float64)])
    out = attempt(lambda: fa.noise_ceiling(rdms, "pearson", backend=backend), "noise_ceiling", NC_NAMES)
    assert not out.ok, f"noise_ceiling returned {out.value} for an undefined lower bound"


@pytest.mark.parametrize("backend", COMPARE_BACKENDS)
@pytest.mark.parametrize("method", COMPARE_METHODS)
@pytest.mark.parametrize(("dtype", "scale"), EXTREMES, ids=EXTREME_IDS)
def test_noise_ceiling_extreme_magnitudes(
    backend: str, method: str, dtype: torch.dtype, scale: float
) -> None:
    """The ceilings are scale-free: subject RDMs of 1e200 ... 1e-25 give the unscaled ceilings."""
    _skip_missing(backend)
    rdms = torch.randn(3, 10, generator=_gen(4), dtype=torch.float64)
    out = attempt(
        lambda: fa.noise_ceiling((rdms * scale).to(dtype), method, backend=backend), "noise_ceiling", ["rdms"]
    )
    if out.ok:
        lower, upper = oracle_noise_ceiling(np64(rdms), method)
        assert_close(out.value[0], lower, dtype, f"lower x {scale:g}", scale=1.0)
        assert_close(out.value[1], upper, dtype, f"upper x {scale:g}", scale=1.0)


@pytest.mark.parametrize("backend", ["auto", *COMPARE_BACKENDS])
@pytest.mark.parametrize("method", ["pearson", "cosine", "spearman"])
def test_noise_ceiling_input_that_requires_grad(backend: str, method: str) -> None:
    """The differentiable ceilings (pearson, cosine) pass gradients as the reference does."""
    _skip_missing(backend)
    rdms = torch.randn(3, 10, generator=_gen(5), dtype=torch.float64, requires_grad=True)
    out = attempt(lambda: fa.noise_ceiling(rdms, method, backend=backend), "noise_ceiling", ["rdms"])
    if _refused(out, backend):
        return
    want = fa.noise_ceiling(rdms, method, backend="reference")
    for got, exp, name in zip(out.value, want, ("lower", "upper"), strict=True):
        assert_grads(got, exp, [rdms], torch.float64, f"noise_ceiling[{backend}, {method}] {name}")


# ----------------------------------------------------------------------------------------- permutation test


def _all_permuted_stats(a: np.ndarray, b: np.ndarray, method: str, n: int) -> np.ndarray:
    """(n!, ...) the statistic of a against b with b's conditions relabelled by every permutation."""
    i, j = np.triu_indices(n, 1)
    index = np.full((n, n), -1)
    index[i, j] = index[j, i] = np.arange(i.size)
    out = []
    for pi in itertools.permutations(range(n)):
        pi = np.asarray(pi)
        out.append(oracle_compare(a, b[..., index[pi[i], pi[j]]], method))
    return np.stack(out)


@pytest.mark.parametrize("backend", COMPARE_BACKENDS)
@pytest.mark.parametrize("kind", ["float64", "float32", "float16", "int64", "bool"])
@EDGE_SETTINGS
@given(
    method=st.sampled_from(COMPARE_METHODS),
    n=st.integers(3, 4),
    shapes=st.sampled_from([((), ()), ((2, 1), (1, 2)), ((1,), (3,))]),
    n_perm=st.integers(1, 12),
    seed=st.integers(0, 2**31),
    alternative=st.sampled_from(["greater", "less", "two-sided"]),
)
def test_permutation_test_against_every_relabelling(
    backend: str,
    kind: str,
    method: str,
    n: int,
    shapes: tuple[tuple[int, ...], tuple[int, ...]],
    n_perm: int,
    seed: int,
    alternative: str,
) -> None:
    """The statistic is compare_rdms's (scipy), each null value is the statistic under some relabelling
    of b's conditions (checked against all n!), every backend draws the same null for a seed, and the
    p-value is the documented +1-corrected count over the returned null."""
    _skip_missing(backend)
    k = n * (n - 1) // 2
    gen = _gen(seed)
    a, b = make(kind, (*shapes[0], k), gen), make(kind, (*shapes[1], k), gen)

    def run(be: str) -> fa.PermutationResult:
        return fa.rsa_permutation_test(
            a, b, method=method, n_permutations=n_perm, seed=seed, alternative=alternative, return_null=True,
            backend=be,
        )  # fmt: skip

    out = attempt(lambda: run(backend), "rsa_permutation_test", ["a", "b"])
    an, bn = np64(a), np64(b)
    defined = _defined(an, method) and _defined(bn, method)
    if not out.ok:
        assert not defined, f"refused valid input: {out.error}"
        return
    res = out.value
    expect = torch.float32 if a.dtype in (torch.float32, torch.float16) else torch.float64
    assert res.statistic.dtype == expect, f"statistic is {res.statistic.dtype}; documented {expect}"
    assert_close(res.statistic, oracle_compare(an, bn, method), expect, "statistic", scale=1.0)
    every = _all_permuted_stats(an, bn, method, n)  # (n!, ...)
    null = res.null.double().numpy()
    tol = 10 * rtol(expect)
    hit = (np.abs(every[None] - null[:, None]) <= tol).any(1)
    assert hit.all(), f"null values that no relabelling gives: {null[~hit]}"
    # the reference in the documented working dtype (its own half arithmetic is checked above)
    a, b = a.to(compute_dtype(a.dtype)), b.to(compute_dtype(b.dtype))
    ref = run("reference")
    assert_close(res.null, ref.null, expect, "null vs the reference backend's (same seed)", scale=1.0)
    obs = res.statistic.double().numpy()
    gamma = np.maximum(np.abs(obs), 1.0) * 100 * torch.finfo(expect).eps  # statistics in [-1, 1]
    # every relabelling but the identity once when there are at most n_perm + 1 of them (exact)
    assert res.exact == (math.factorial(n) - 1 <= n_perm)
    assert null.shape[0] == (math.factorial(n) - 1 if res.exact else n_perm)
    greater = (1 + (null >= obs - gamma).sum(0)) / (null.shape[0] + 1)
    less = (1 + (null <= obs + gamma).sum(0)) / (null.shape[0] + 1)
    want = {"greater": greater, "less": less, "two-sided": np.minimum(1.0, 2 * np.minimum(greater, less))}
    assert_close(res.pvalue, want[alternative], expect, "p-value from the returned null", scale=1.0)


@pytest.mark.parametrize("backend", COMPARE_BACKENDS)
@pytest.mark.parametrize(
    "seed", [2**70, 2**64, 2**63, -1, -(2**63) - 1, np.int64(7), np.uint64(2**63)], ids=repr
)
def test_permutation_seeds(backend: str, seed: object) -> None:
    """Any int seed either seeds reproducibly or is a clean error naming seed."""
    _skip_missing(backend)
    a, b = (torch.randn(10, generator=_gen(s), dtype=torch.float64) for s in (6, 7))
    run = lambda: fa.rsa_permutation_test(a, b, n_permutations=5, seed=seed, backend=backend)  # type: ignore[arg-type]
    out = attempt(run, "rsa_permutation_test", ["seed"])
    if out.ok:
        assert torch.equal(out.value.pvalue, run().pvalue)


@pytest.mark.parametrize("backend", COMPARE_BACKENDS)
@pytest.mark.parametrize("method", COMPARE_METHODS)
def test_permutation_test_empty_batch(backend: str, method: str) -> None:
    """A batch of 0 RDMs gives empty statistics and p-values (as compare_rdms), not a reshape error."""
    _skip_missing(backend)
    a = torch.randn(0, 10, dtype=torch.float64)
    b = torch.randn(10, generator=_gen(8), dtype=torch.float64)
    res = fa.rsa_permutation_test(a, b, method=method, n_permutations=3, seed=0, backend=backend)
    assert res.statistic.shape == (0,) and res.pvalue.shape == (0,)


@pytest.mark.parametrize("bad", [0, -1, True, 2.0, "10"], ids=repr)
def test_permutation_count_is_validated(bad: object) -> None:
    a, b = (torch.randn(10, generator=_gen(s), dtype=torch.float64) for s in (9, 10))
    out = attempt(
        lambda: fa.rsa_permutation_test(a, b, n_permutations=bad),  # type: ignore[arg-type]
        "rsa_permutation_test",
        ["n_permutations"],
    )
    assert not out.ok


# ----------------------------------------------------------------------------------------- cluster test


def _runs(t: np.ndarray, thr: float, tail: int) -> list[tuple[int, int, float]]:
    """Maximal runs beyond the threshold (tail 0: positive and negative runs kept apart)."""
    sign = np.where(t > thr, 1, 0) if tail == 1 else np.where(t < -thr, -1, 0)
    if tail == 0:
        sign = np.where(t > thr, 1, np.where(t < -thr, -1, 0))
    out, start = [], None
    for k in range(len(t) + 1):
        s = sign[k] if k < len(t) else 0
        if start is not None and s != sign[start]:
            out.append((start, k, float(t[start:k].sum())))
            start = None
        if s != 0 and start is None:
            start = k
    return out


CLUSTER_KINDS = ["float64", "float32", "float16", "int32", "bool", "complex128"]


@pytest.mark.parametrize("backend", ["reference", "torch", "cpp"])
@pytest.mark.parametrize("kind", CLUSTER_KINDS)
@EDGE_SETTINGS
@given(
    s=st.integers(2, 6),
    t=st.integers(1, 8),
    tail=st.sampled_from([1, -1, 0]),
    threshold=st.sampled_from([None, 0.5, 2.0]),
    how=st.sampled_from(LAYOUTS),
    seed=st.integers(0, 2**31),
)
def test_cluster_test_matches_scipy_t_and_runs(
    backend: str, kind: str, s: int, t: int, tail: int, threshold: float | None, how: str, seed: int
) -> None:
    """t equals scipy.stats.ttest_1samp, clusters are the runs of t beyond the threshold, the null
    matches the reference backend's (same seed) and the p-values follow from the null."""
    x = layout(make(kind, (s, t), _gen(seed)), how)
    if kind in ("float64", "float32", "float16"):
        x = x + 0.5
    run = lambda be: fa.cluster_permutation_test(
        x, threshold=threshold, n_permutations=15, tail=tail, seed=seed, backend=be
    )
    out = attempt(lambda: run(backend), "cluster_permutation_test", ["x"])
    if kind.startswith("complex"):
        assert isinstance(out.error, TypeError)
        return
    xn = np64(x)
    # identical subjects leave t undefined even where numpy's std rounds to a tiny nonzero value
    defined = not bool(((xn.std(0) == 0) | (np.ptp(xn, axis=0) == 0)).any())
    if not out.ok:
        assert not defined, f"refused valid input: {out.error}"
        return
    res = out.value
    want_t = stats.ttest_1samp(xn, 0.0).statistic
    assert_close(res.t_values, want_t, torch.float64, "t values")
    runs = _runs(want_t, res.threshold, tail)
    assert [(c.start, c.stop) for c in res.clusters] == [(r[0], r[1]) for r in runs]
    assert_close(res.masses, np.array([r[2] for r in runs]), torch.float64, "masses", scale=1.0)
    ref = run("reference")
    assert_close(res.null, ref.null, torch.float64, "null vs reference", scale=1.0)
    n = 1 + len(res.null)  # the identity counts once (the null may be the exact enumeration)
    greater = [(1 + (res.null.numpy() >= abs(m) - 1e-12 * abs(m)).sum()) / n for m in res.masses.tolist()]
    assert_close(res.pvalues, np.array(greater), torch.float64, "cluster p-values", scale=1.0)


@pytest.mark.parametrize("backend", ["reference", "torch", "cpp"])
@pytest.mark.parametrize("scale", [1e200, 1e-170], ids=str)
def test_cluster_test_extreme_magnitudes(backend: str, scale: float) -> None:
    """t is scale-free: effects of 1e200 or 1e-170 give the t curve and clusters of the unscaled data."""
    x = torch.randn(6, 8, generator=_gen(11), dtype=torch.float64) + 1.0
    out = attempt(
        lambda: fa.cluster_permutation_test(x * scale, n_permutations=10, seed=0, backend=backend),
        "cluster_permutation_test",
        ["x"],
    )
    if out.ok:
        assert_close(out.value.t_values, stats.ttest_1samp(np64(x), 0.0).statistic, torch.float64, "t")


@pytest.mark.parametrize("backend", ["reference", "torch", "cpp"])
@pytest.mark.parametrize("seed", [2**70, -(2**63) - 1], ids=repr)
def test_cluster_test_seeds(backend: str, seed: int) -> None:
    x = torch.randn(4, 5, generator=_gen(12), dtype=torch.float64)
    attempt(
        lambda: fa.cluster_permutation_test(x, n_permutations=5, seed=seed, backend=backend),
        "cluster_permutation_test",
        ["seed"],
    )


# ----------------------------------------------------------------------------------------- time-resolved


def _windows(data: np.ndarray, window: int, step: int) -> np.ndarray:
    """(..., n_windows, n_cond, n_ch * window) window features, channel-major as documented."""
    n_t = data.shape[-1]
    starts = range(0, n_t - window + 1, step)
    return np.stack([data[..., s : s + window].reshape(*data.shape[:-2], -1) for s in starts], axis=-3)


TR_BACKENDS = ["reference", "torch", "cpp"]
# the time-resolved functions compose rdm and compare_rdms; a backend refusal may name either
TR_FNS = ("time_resolved_rsa", "time_resolved_rdms", "rdm", "compare_rdms")


def _near_ties(v: np.ndarray, rel: float) -> bool:
    """Whether some row of v has two entries closer than ``rel`` of its scale but not equal: their
    order (hence rank statistics) is decided by rounding in a float32 computation."""
    d = np.abs(v[..., :, None] - v[..., None, :])
    scale = np.abs(v).max(initial=0.0)
    return bool(((d > 0) & (d <= rel * scale)).any()) or bool((d == 0).sum() > v[..., 0].size * v.shape[-1])


@pytest.mark.parametrize("backend", TR_BACKENDS)
@pytest.mark.parametrize("kind", ["float64", "float32", "float16", "int32", "complex128"])
@EDGE_SETTINGS
@given(
    rdm_method=st.sampled_from(["correlation", "cosine", "euclidean"]),
    n=st.integers(3, 5),
    ch=st.integers(1, 3),
    times=st.integers(1, 6),
    window=st.integers(1, 3),
    step=st.integers(1, 3),
    method=st.sampled_from(COMPARE_METHODS),
    how=st.sampled_from(LAYOUTS),
    seed=st.integers(0, 2**31),
)
def test_time_resolved_rdms_and_rsa(
    backend: str,
    kind: str,
    rdm_method: str,
    n: int,
    ch: int,
    times: int,
    window: int,
    step: int,
    method: str,
    how: str,
    seed: int,
) -> None:
    """time_resolved_rdms equals scipy RDMs of the channel x time windows; time_resolved_rsa equals
    scipy's comparison of those RDMs with the models (where float32 rounding cannot reorder ties)."""
    _skip_missing(backend)
    if rdm_method == "correlation" and ch * window < 3:
        return  # 1 feature: test_rdm_correlation_of_one_feature; 2: distances are only 0 or 2 (ties)
    gen = _gen(seed)
    data = layout(make(kind, (n, ch, times), gen), how)
    models = torch.randn(2, n * (n - 1) // 2, generator=gen, dtype=torch.float64)
    names = ["data", "window", "step", "models"]
    rdms = attempt(
        lambda: fa.time_resolved_rdms(data, rdm_method, window, step, backend=backend), TR_FNS, names
    )
    rsa = attempt(
        lambda: fa.time_resolved_rsa(data, models, method, rdm_method=rdm_method, window=window, step=step,
                                     backend=backend),
        TR_FNS, names,
    )  # fmt: skip
    if kind.startswith("complex"):
        assert isinstance(rdms.error, TypeError) and isinstance(rsa.error, TypeError)
        return
    if window > times:
        assert not rdms.ok and not rsa.ok
        return
    ct = compute_dtype(data.dtype)
    win = _windows(np64(data), window, step)
    valid = _rdm_valid(win, rdm_method)
    if not rdms.ok:
        assert not valid or isinstance(rdms.error, NotImplementedError), f"refused valid input: {rdms.error}"
    else:
        assert valid, "time_resolved_rdms accepted windows whose RDM is undefined"
        assert_close(rdms.value, oracle_rdm(win, rdm_method), ct, "time_resolved_rdms", scale=1.0)
    if not valid:
        assert not rsa.ok
        return
    brain = oracle_rdm(win, rdm_method)
    want = oracle_compare(brain[:, None, :], np64(models)[None], method)
    if _near_ties(brain, 1e-5 if ct == torch.float32 else 1e-13) and method != "cosine":
        return  # the statistic depends on how rounding orders (near-)equal distances
    if not rsa.ok:
        assert isinstance(rsa.error, NotImplementedError) or np.isnan(want).any(), f"refused: {rsa.error}"
        return
    assert not np.isnan(want).any(), "time_resolved_rsa returned a value for an undefined statistic"
    assert_close(rsa.value, want, ct, "time_resolved_rsa", scale=1.0)


def test_time_resolved_rsa_constant_brain_rdm() -> None:
    """Two features per window: every correlation distance is exactly 0 here (the patterns are shifted
    copies), so Spearman against a model is undefined: a ValueError, not a correlation of rounding noise."""
    data = torch.tensor([[[1.0], [0.0]], [[2.0], [1.0]], [[5.0], [3.0]], [[9.0], [4.0]]], dtype=torch.float64)
    models = torch.randn(6, generator=_gen(18), dtype=torch.float64)
    for backend in TR_BACKENDS:
        out = attempt(
            functools.partial(fa.time_resolved_rsa, data, models, backend=backend),
            TR_FNS,
            ["data", "brain RDM"],
        )
        assert not out.ok, f"{backend}: {out.value} for an all-zero brain RDM"


@pytest.mark.parametrize("backend", ["auto", *TR_BACKENDS])
@pytest.mark.parametrize("method", ["pearson", "spearman"])
@pytest.mark.parametrize("rdm_method", ["correlation", "cosine", "euclidean"])
def test_time_resolved_rsa_input_that_requires_grad(backend: str, method: str, rdm_method: str) -> None:
    """Gradients reach the data and the models as in the reference (rank statistics: none)."""
    _skip_missing(backend)
    gen = _gen(13)
    data = torch.randn(5, 2, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    models = torch.randn(2, 10, generator=gen, dtype=torch.float64, requires_grad=True)
    run = lambda be: fa.time_resolved_rsa(data, models, method, rdm_method=rdm_method, window=2, backend=be)
    out = attempt(lambda: run(backend), TR_FNS, ["data", "models"])
    if not _refused(out, backend):
        assert_grads(out.value, run("reference"), [data, models], torch.float64, f"{backend}, {method}")


@pytest.mark.parametrize("backend", ["auto", *TR_BACKENDS])
@pytest.mark.parametrize("rdm_method", ["correlation", "cosine", "euclidean"])
def test_time_resolved_rdms_input_that_requires_grad(backend: str, rdm_method: str) -> None:
    _skip_missing(backend)
    data = torch.randn(5, 2, 4, generator=_gen(14), dtype=torch.float64, requires_grad=True)
    run = lambda be: fa.time_resolved_rdms(data, rdm_method, window=2, backend=be)
    out = attempt(lambda: run(backend), TR_FNS, ["data"])
    if not _refused(out, backend):
        assert_grads(out.value, run("reference"), [data], torch.float64, f"time_resolved_rdms[{backend}]")


@pytest.mark.parametrize("backend", TR_BACKENDS)
def test_time_resolved_rsa_empty_batch(backend: str) -> None:
    """A leading batch of 0 subjects gives an empty result or a ValueError naming data."""
    _skip_missing(backend)
    data = torch.randn(0, 5, 2, 4, dtype=torch.float64)
    models = torch.randn(10, generator=_gen(15), dtype=torch.float64)
    out = attempt(lambda: fa.time_resolved_rsa(data, models, backend=backend), "time_resolved_rsa", ["data"])
    if out.ok:
        assert out.value.shape == (0, 4)


@pytest.mark.parametrize("backend", TR_BACKENDS)
@pytest.mark.parametrize("method", ["spearman", "pearson", "cosine"])
def test_time_resolved_rsa_undefined_model_names_models(backend: str, method: str) -> None:
    """A constant (all-zero for cosine) model RDM is reported as time_resolved_rsa's models argument,
    whichever backend runs."""
    _skip_missing(backend)
    data = torch.randn(5, 2, 4, generator=_gen(16), dtype=torch.float64)
    models = torch.zeros(2, 10, dtype=torch.float64)
    out = attempt(
        lambda: fa.time_resolved_rsa(data, models, method, backend=backend), "time_resolved_rsa", ["models"]
    )
    assert not out.ok and "time_resolved_rsa" in str(out.error), str(out.error)


@pytest.mark.parametrize("backend", TR_BACKENDS)
@pytest.mark.parametrize(("dtype", "scale"), EXTREMES, ids=EXTREME_IDS)
def test_time_resolved_rsa_extreme_magnitudes(backend: str, dtype: torch.dtype, scale: float) -> None:
    """Correlation RDMs and Spearman comparisons are scale-free: 1e200 ... 1e-25 data give the unscaled
    result (or a ValueError naming data)."""
    _skip_missing(backend)
    gen = _gen(17)
    data = torch.randn(5, 2, 4, generator=gen, dtype=torch.float64)
    models = torch.randn(2, 10, generator=gen, dtype=torch.float64)
    out = attempt(
        lambda: fa.time_resolved_rsa((data * scale).to(dtype), models, window=2, backend=backend),
        "time_resolved_rsa",
        ["data"],
    )
    if out.ok:
        brain = oracle_rdm(_windows(np64(data), 2, 1), "correlation")
        want = oracle_compare(brain[:, None], np64(models)[None], "spearman")
        assert_close(out.value, want, dtype, "rsa", scale=1.0)
