"""The compiled ops under torch.ops.fastalign are public: every bad input is a ValueError (shapes, values)
or TypeError (dtypes) that names the op and the argument (never a read outside a tensor or undefined
behaviour), and valid input gives what the Python API gives."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

import fastalign as fa
from fastalign import _ext
from fastalign.rsa import api, common, torch_chunked

_MISSING = _ext.why_ops_missing(api._CPP_OPS)
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=str(_MISSING))

F64 = torch.float64


def _op(name: str) -> Callable[..., torch.Tensor]:
    return getattr(torch.ops.fastalign, name)


def _perm(*rows: list[int]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.int64)


def _idx(*v: int) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.int64)


K6 = torch.rand(2, 6, dtype=F64)  # condensed RDMs of 4 conditions
X = torch.rand(2, 5, 3, dtype=F64)  # 2 pattern sets of 5 conditions x 3 features
W = torch.rand(3, 10, dtype=F64)  # 3 model vectors over 5 conditions' 10 pairs

# (the exception: ValueError for bad shapes and values, TypeError for bad dtypes; op, args, message regex)
BAD: list[tuple[type[Exception], str, Callable[[], tuple], str]] = [
    (ValueError, "rsa_rank", lambda: (torch.tensor(1.0),), r"rsa_rank: x must have at least 1 dim"),
    (
        TypeError,
        "rsa_rank",
        lambda: (torch.ones(3, dtype=torch.bool),),
        r"rsa_rank: x must be float64.*got Bool",
    ),
    (
        TypeError,
        "rsa_rank",
        lambda: (torch.ones(3, dtype=torch.float16),),
        r"rsa_rank: x must be float64.*got Half",
    ),
    # an empty tensor is checked too (it used to come back as float64 ranks of nothing)
    (
        TypeError,
        "rsa_rank",
        lambda: (torch.empty(0, dtype=torch.uint8),),
        r"rsa_rank: x must be float64.*got Byte",
    ),
    (
        ValueError,
        "rsa_centered_ranks",
        lambda: (torch.tensor(1.0), True, F64),
        r"rsa_centered_ranks: x must have at least",
    ),
    (
        TypeError,
        "rsa_centered_ranks",
        lambda: (torch.ones(3, dtype=torch.int16), True, F64),
        r"rsa_centered_ranks: x must be float64, float32, int64 or int32, got Short",
    ),
    (
        TypeError,
        "rsa_centered_ranks",
        lambda: (torch.ones(3), True, torch.int64),
        r"rsa_centered_ranks: dtype must be float64 or float32, got Long",
    ),
    (ValueError, "rsa_rdm_direct", lambda: (X[0], 0), r"rsa_rdm_direct: x must be \(B, n, p\), got \[5, 3\]"),
    (ValueError, "rsa_rdm_direct", lambda: (X, 3), r"rsa_rdm_direct: method must be 0, 1 or 2, got 3"),
    (ValueError, "rsa_rdm_direct", lambda: (X, -1), r"rsa_rdm_direct: method must be 0, 1 or 2, got -1"),
    (ValueError, "rsa_rdm_direct", lambda: (X[:, :1], 0), r"rsa_rdm_direct: need n >= 2 conditions"),
    (ValueError, "rsa_rdm_direct", lambda: (X[..., :0], 0), r"rsa_rdm_direct: need .* p >= 1 features"),
    (
        TypeError,
        "rsa_rdm_direct",
        lambda: (X.long(), 0),
        r"rsa_rdm_direct: x must be float64 or float32, got Long",
    ),
    (
        ValueError,
        "rsa_spearman_ceiling",
        lambda: (K6, W[:, :6]),
        r"rsa_spearman_ceiling: x must be \(S >= 2, B, K >= 2\), got \[2, 6\]",
    ),
    (
        ValueError,
        "rsa_spearman_ceiling",
        lambda: (K6[:1, None], W[:, :6]),
        r"rsa_spearman_ceiling: x must be \(S >= 2, B, K >= 2\), got \[1, 1, 6\]",
    ),
    (
        ValueError,
        "rsa_spearman_ceiling",
        lambda: (K6[:, None], W),
        r"rsa_spearman_ceiling: w must be \(M, 6\) for x's 6 pairs, got \[3, 10\]",
    ),
    (
        TypeError,
        "rsa_spearman_ceiling",
        lambda: (K6[:, None].float(), W[:, :6]),
        r"rsa_spearman_ceiling: x and w must be float64, got Float and Double",
    ),
    (
        ValueError,
        "rsa_rdm_spearman_ceiling",
        lambda: (X, W, 0),
        r"rsa_rdm_spearman_ceiling: x must be \(S >= 2, B, n >= 3, p >= 1\), got \[2, 5, 3\]",
    ),
    (
        ValueError,
        "rsa_rdm_spearman_ceiling",
        lambda: (X[:1, None], W, 0),
        r"rsa_rdm_spearman_ceiling: x must be \(S >= 2, B, n >= 3, p >= 1\), got \[1, 1, 5, 3\]",
    ),
    (
        ValueError,
        "rsa_rdm_spearman_ceiling",
        lambda: (X[:, None, :, :0], W, 0),
        r"rsa_rdm_spearman_ceiling: x must be \(S >= 2, B, n >= 3, p >= 1\), got \[2, 1, 5, 0\]",
    ),
    (
        ValueError,
        "rsa_rdm_spearman_ceiling",
        lambda: (X[:, None], W, 3),
        r"rsa_rdm_spearman_ceiling: rdm_method must be 0, 1 or 2, got 3",
    ),
    (
        ValueError,
        "rsa_rdm_spearman_ceiling",
        lambda: (X[:, None], W[:, :6], 0),
        r"rsa_rdm_spearman_ceiling: w must be \(M, 10\) for x's 5 conditions, got \[3, 6\]",
    ),
    (
        TypeError,
        "rsa_rdm_spearman_ceiling",
        lambda: (X[:, None], W.float(), 0),
        r"rsa_rdm_spearman_ceiling: w must be float64, got Float",
    ),
    (
        TypeError,
        "rsa_rdm_spearman_ceiling",
        lambda: (X[:, None].long(), W, 0),
        r"rsa_rdm_spearman_ceiling: x must be float64 or float32, got Long",
    ),
    (ValueError, "rsa_rdm_compare", lambda: (X[0], W, 0, 0), r"rsa_rdm_compare: x must be \(B, n, p\)"),
    (
        ValueError,
        "rsa_rdm_compare",
        lambda: (X, W, 3, 0),
        r"rsa_rdm_compare: rdm_method must be 0, 1 or 2, got 3",
    ),
    (
        ValueError,
        "rsa_rdm_compare",
        lambda: (X, W, 0, 4),
        r"rsa_rdm_compare: compare must be 0, 1, 2 or 3, got 4",
    ),
    (
        ValueError,
        "rsa_rdm_compare",
        lambda: (X, W, 0, -1),
        r"rsa_rdm_compare: compare must be 0, 1, 2 or 3, got -1",
    ),
    (
        ValueError,
        "rsa_rdm_compare",
        lambda: (X[:, :2], W[:, :1], 0, 0),
        r"rsa_rdm_compare: need n >= 3 conditions",
    ),
    (
        ValueError,
        "rsa_rdm_compare",
        lambda: (X, W[:, :6], 0, 0),
        r"rsa_rdm_compare: w must be \(M, 10\) for x's 5 cond",
    ),
    (ValueError, "rsa_rdm_compare", lambda: (X, W[0], 0, 0), r"rsa_rdm_compare: w must be \(M, 10\)"),
    (
        TypeError,
        "rsa_rdm_compare",
        lambda: (X, W.float(), 0, 0),
        r"rsa_rdm_compare: w must be float64, got Float",
    ),
    (
        TypeError,
        "rsa_rdm_compare",
        lambda: (X.long(), W, 0, 0),
        r"rsa_rdm_compare: x must be float64 or float32, got Long",
    ),
    (
        ValueError,
        "rsa_kendall_tau_a",
        lambda: (K6[0], K6, _idx(0), _idx(0)),
        r"rsa_kendall_tau_a: a must be \(Ba, K\)",
    ),
    (
        ValueError,
        "rsa_kendall_tau_a",
        lambda: (K6, K6[:, :5], _idx(0), _idx(0)),
        r"with one K, got \[2, 6\] and \[2, 5\]",
    ),
    (
        TypeError,
        "rsa_kendall_tau_a",
        lambda: (K6, K6.float(), _idx(0), _idx(0)),
        r"rsa_kendall_tau_a: a and b must be both float64 or both float32, got Double and Float",
    ),
    (
        TypeError,
        "rsa_kendall_tau_a",
        lambda: (K6.long(), K6.long(), _idx(0), _idx(0)),
        r"both float32, got Long and Long",
    ),
    (
        ValueError,
        "rsa_kendall_tau_a",
        lambda: (K6, K6, _idx(0, 1), _idx(0)),
        r"rsa_kendall_tau_a: ia and ib must be vectors of one length, got \[2\] and \[1\]",
    ),
    (
        ValueError,
        "rsa_kendall_tau_a",
        lambda: (K6, K6, _perm([0]), _perm([0])),
        r"ia and ib must be vectors of one length",
    ),
    (
        TypeError,
        "rsa_kendall_tau_a",
        lambda: (K6, K6, _idx(0).int(), _idx(0)),
        r"rsa_kendall_tau_a: ia and ib must be int64, got Int and Long",
    ),
    (
        ValueError,
        "rsa_kendall_tau_a",
        lambda: (K6, K6, _idx(0, 2), _idx(0, 1)),
        r"rsa_kendall_tau_a: ia indexes rows of a and must lie in \[0, 2\), got values in \[0, 2\]",
    ),
    (
        ValueError,
        "rsa_kendall_tau_a",
        lambda: (K6, K6, _idx(-1, 0), _idx(0, 1)),
        r"ia indexes rows of a .* in \[-1, 0\]",
    ),
    (
        ValueError,
        "rsa_kendall_tau_a",
        lambda: (K6, K6[:1], _idx(0, 1), _idx(0, 1)),
        r"ib indexes rows of b .*\[0, 1\)",
    ),
    (
        ValueError,
        "rsa_kendall_tau_a",
        lambda: (K6[:, :1], K6[:, :1], _idx(0), _idx(0)),
        r"need K >= 2 entries per row, got 1",
    ),
    (
        ValueError,
        "rsa_permute_condensed",
        lambda: (K6[0], _perm([0, 1, 2, 3])),
        r"rsa_permute_condensed: src must be \(B, K\)",
    ),
    (
        ValueError,
        "rsa_permute_condensed",
        lambda: (K6, _idx(0, 1, 2, 3)),
        r"perms must be \(P, n\) int64, got \[4\] Long",
    ),
    (
        TypeError,
        "rsa_permute_condensed",
        lambda: (K6, _perm([0, 1, 2, 3]).int()),
        r"perms must be \(P, n\) int64, got .* Int",
    ),
    (
        ValueError,
        "rsa_permute_condensed",
        lambda: (K6, _perm([0, 1, 2])),
        r"rsa_permute_condensed: src \(B, K\) must hold n\(n-1\)/2 = 3 pairs for perms of n = 3 .* got K = 6",
    ),
    (
        ValueError,
        "rsa_permute_condensed",
        lambda: (K6[:, :0], _perm([0])),
        r"n\(n-1\)/2 = 0 pairs .* n = 1 .*\(n >= 2\)",
    ),
    (
        ValueError,
        "rsa_permute_condensed",
        lambda: (K6, _perm([0, 1, 2, 3], [0, 1, 4, 3])),
        r"perms row 1 is not a permutation of 0\.\.3: entry 2 is 4, outside \[0, 4\)",
    ),
    (
        ValueError,
        "rsa_permute_condensed",
        lambda: (K6, _perm([0, -1, 2, 3])),
        r"perms row 0 .* entry 1 is -1, outside",
    ),
    # a repeated index passes a range check but leaves a condition out; index 0 meeting itself made the
    # pair formula read src[b, -1]
    (
        ValueError,
        "rsa_permute_condensed",
        lambda: (K6, _perm([3, 2, 1, 0], [0, 3, 2, 3])),
        r"perms row 1 is not a permutation of 0\.\.3: index 3 repeats \(entry 3\)",
    ),
    (
        ValueError,
        "rsa_permute_condensed",
        lambda: (K6, _perm([0, 1, 0, 3])),
        r"perms row 0 .*: index 0 repeats \(entry 2\)",
    ),
    (
        TypeError,
        "rsa_permute_condensed",
        lambda: (K6.long(), _perm([0, 1, 2, 3])),
        r"src must be float64 or float32, got Long",
    ),
]


@pytest.mark.parametrize(
    ("exc", "op", "args", "match"), BAD, ids=[f"{op}-{i}" for i, (_, op, _, _) in enumerate(BAD)]
)
def test_compiled_op_rejects_bad_input(
    exc: type[Exception], op: str, args: Callable[[], tuple], match: str
) -> None:
    with pytest.raises(exc, match=match):
        _op(op)(*args())


def test_permute_condensed_repeated_index_in_a_large_row_is_caught() -> None:
    """One repeat deep in a long row, after valid rows, is found (a per-row stamp, no sort)."""
    n = 300
    perms, _ = common.permutations(n, 5, seed=0)
    perms[3] = torch.arange(n)
    perms[3, 250] = 0
    with pytest.raises(
        ValueError, match=r"perms row 3 is not a permutation of 0\.\.299: index 0 repeats \(entry 250"
    ):
        _op("rsa_permute_condensed")(torch.rand(2, common.n_pairs(n), dtype=F64), perms)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.int64, torch.int32])
def test_rank_ops_agree_with_api(dtype: torch.dtype) -> None:
    x = torch.randint(-4, 4, (3, 2, 41)).to(dtype)
    if dtype == torch.int64:
        x = x + 2**62  # distinct values one float64 apart would be ties in a float kernel
    ref = fa.rank(x, backend="reference")
    assert torch.equal(_op("rsa_rank")(x), ref)
    centred = ref - ref.mean(-1, keepdim=True)
    for out_dtype in (torch.float64, torch.float32):
        got = _op("rsa_centered_ranks")(x, False, out_dtype)
        assert got.dtype == out_dtype
        assert torch.equal(got, centred.to(out_dtype))
        unit = _op("rsa_centered_ranks")(x, True, out_dtype)
        torch.testing.assert_close(unit.double(), centred / centred.norm(dim=-1, keepdim=True))


def test_prepare_ranks_int64_exactly() -> None:
    """ext_prepare hands int64 to the kernel as it is: through float32 (its output dtype) 2^40 and
    2^40 + 1 would tie."""
    v = torch.tensor([[2**40 + 1, 2**40, 0, 7, 2**40 + 2, 3]])
    for method in ("spearman", "rho_a"):
        torch.testing.assert_close(common.ext_prepare(v, method), torch_chunked.prepare(v, method))


@pytest.mark.parametrize(("method", "code"), [("correlation", 0), ("cosine", 1), ("euclidean", 2)])
def test_rdm_direct_agrees_with_api(method: str, code: int) -> None:
    x = torch.randn(3, 7, 4, dtype=F64)
    ref = fa.rdm(x, method, backend="reference")
    torch.testing.assert_close(_op("rsa_rdm_direct")(x, code), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("method", "code"), [("correlation", 0), ("cosine", 1)])
def test_rdm_direct_is_exact_at_extreme_magnitudes(method: str, code: int) -> None:
    """Correlation and cosine distances do not depend on a pattern's scale: each pattern is brought near 1
    by an exact power of two, at its own magnitude (at 2^1000 they were all 1.0, at 2^-1000 NaN)."""
    x = torch.randn(2, 6, 4, dtype=F64, generator=torch.Generator().manual_seed(11))
    want = fa.rdm(x, method, backend="reference")
    k = torch.tensor([1000.0, -1000.0, 0.0, 665.0, -565.0, 0.0], dtype=F64)  # one exponent per condition
    got = _op("rsa_rdm_direct")(x * torch.pow(2.0, k)[:, None], code)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def _ldexp(t: torch.Tensor, k: int) -> torch.Tensor:
    """t * 2**k rounded once (via float64, exact for float32 values), as std::ldexp gives it."""
    out = torch.tensor([math.ldexp(v, k) for v in t.double().flatten().tolist()], dtype=F64)
    return out.reshape(t.shape).to(t.dtype)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_rdm_direct_euclidean_scales_back_exactly_and_refuses_overflow(dtype: torch.dtype) -> None:
    """Euclidean distances of x * 2^k are those of x times 4^k, rounded once: extreme sets are computed
    scaled and scaled back exactly. Tiny data used to lose its squares to underflow, and sums of squares
    over the features overflowed where the distance (divided by the feature count) fits; a distance
    beyond the dtype's range is a ValueError naming x (it was inf)."""
    x = torch.randn(2, 6, 4, dtype=F64, generator=torch.Generator().manual_seed(12)).to(dtype)
    d = _op("rsa_rdm_direct")(x, 2)
    fi = torch.finfo(dtype)
    tiny = -530 if dtype == F64 else -70  # distances 4^k near the bottom of the dtype's subnormals
    # the largest k whose distances all fit: the biggest is then above max / 4, and its sum over the 4
    # features (before the division) above max
    big = math.floor((math.log2(fi.max) - math.log2(float(d.max()))) / 2)
    for k in (tiny, big):
        assert torch.equal(_op("rsa_rdm_direct")(x * 2.0**k, 2), _ldexp(d, 2 * k)), k
    at = int(d.max(-1).values.argmax())
    beyond = x.clone()
    beyond[at] *= 2.0 ** (big + 1)
    with pytest.raises(ValueError, match=rf"rsa_rdm_direct: the euclidean distances of x\[{at}\] exceed"):
        _op("rsa_rdm_direct")(beyond, 2)


@pytest.mark.parametrize("op", ["rsa_rdm_direct", "rsa_rdm_compare"])
@pytest.mark.parametrize(
    ("code", "value", "what"),
    [(0, 3.0, "is a constant pattern"), (1, 0.0, "is an all-zero pattern"), (0, math.nan, "contains NaN"),
     (2, math.inf, "contains NaN or inf"), (1, -math.inf, "contains NaN or inf")],
)  # fmt: skip
def test_rdm_ops_refuse_patterns_without_distances(op: str, code: int, value: float, what: str) -> None:
    """A constant (correlation) or all-zero (cosine) pattern, or one with NaN / inf, has no distances: a
    ValueError naming the pattern of x, as fastalign.rdm raises (these were NaN)."""
    x = X.clone()
    if math.isfinite(value):
        x[1, 2] = value
    else:
        x[1, 2, 1] = value
    args = (x, code) if op == "rsa_rdm_direct" else (x, W, code, 2)
    with pytest.raises(ValueError, match=rf"{op}: x\[1, 2\] {what}"):
        _op(op)(*args)


@pytest.mark.parametrize(("rdm_method", "code"), [("correlation", 0), ("cosine", 1), ("euclidean", 2)])
def test_rdm_compare_at_extreme_magnitudes(rdm_method: str, code: int) -> None:
    """The fused op scales patterns as rsa_rdm_direct does, and compares a scaled euclidean RDM at its
    scale (no compare method depends on a positive factor): 2^1000 and 2^-1000 give the statistic of x
    (they gave NaN: distances all 1, or underflowed to a constant 0); euclidean distances beyond float64
    give NaN, which time_resolved_rsa reports."""
    gen = torch.Generator().manual_seed(13)
    x = torch.randn(3, 6, 4, dtype=F64, generator=gen)
    w = common.ext_prepare(torch.rand(2, 15, dtype=F64, generator=gen), "pearson").contiguous()
    want = _op("rsa_rdm_compare")(x, w, code, 2)
    for k in (1000, -1000):
        got = _op("rsa_rdm_compare")(x * 2.0**k, w, code, 2)
        if rdm_method == "euclidean" and k > 0:
            assert bool(got.isnan().all()), got
        else:
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("method", "code"), [("spearman", 0), ("rho_a", 1), ("pearson", 2), ("cosine", 3)])
def test_rdm_compare_agrees_with_api(method: str, code: int) -> None:
    """The op returns the dot products of the prepared vectors; rho_a's constant factor is the caller's."""
    x = torch.randn(4, 6, 3, dtype=F64)
    models = torch.rand(2, 15, dtype=F64)
    w = common.ext_prepare(models, method).contiguous()
    got = _op("rsa_rdm_compare")(x, w, 0, code) * common.linear_scale(method, 15)
    brain = fa.rdm(x, "correlation", backend="reference")
    ref = fa.compare_rdms(brain[:, None], models[None], method, backend="reference")
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


def test_kendall_tau_a_agrees_with_api_and_gives_nan_for_nan_rows() -> None:
    """NaN breaks the sort's order (undefined behaviour); a pair with NaN in either row is NaN, as
    compare_rdms' statistic is undefined there (it drops NaN entries before calling the op)."""
    gen = torch.Generator().manual_seed(3)
    a = torch.randint(0, 4, (3, 45), generator=gen).double()
    b = torch.randint(0, 6, (2, 45), generator=gen).double()
    ia, ib = _idx(0, 1, 2, 2, 0), _idx(1, 0, 1, 0, 0)
    ref = fa.compare_rdms(a[ia], b[ib], "kendall_tau_a", backend="reference")
    for dtype in (torch.float64, torch.float32):
        got = _op("rsa_kendall_tau_a")(a.to(dtype), b.to(dtype), ia, ib)
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, ref, rtol=1e-15, atol=0)
    a[1, 7] = float("nan")
    b[0, 44] = float("nan")
    got = _op("rsa_kendall_tau_a")(a, b, ia, ib)
    nan_pair = (ia == 1) | (ib == 0)
    assert bool(torch.isnan(got[nan_pair]).all())
    torch.testing.assert_close(got[~nan_pair], ref[~nan_pair], rtol=1e-15, atol=0)
    assert _op("rsa_kendall_tau_a")(a, b, _idx(), _idx()).shape == (0,)


def test_permute_condensed_agrees_with_pair_indices() -> None:
    n = 9
    src = torch.randn(3, common.n_pairs(n), dtype=F64)
    perms, _ = common.permutations(n, 6, seed=0)
    idx = common.permuted_pair_indices(perms, n)  # (P, K)
    want = src[:, idx].movedim(1, 0)  # (P, B, K)
    assert torch.equal(_op("rsa_permute_condensed")(src, perms), want)
    assert torch.equal(_op("rsa_permute_condensed")(src.float(), perms), want.float())
    assert _op("rsa_permute_condensed")(src, perms[:0]).shape == (0, 3, common.n_pairs(n))


GRAD_CALLS: list[tuple[str, Callable[[torch.Tensor], tuple]]] = [
    ("rsa_rank", lambda x: (x[0],)),
    ("rsa_centered_ranks", lambda x: (x[0], True, F64)),
    ("rsa_rdm_direct", lambda x: (x,)),
    ("rsa_rdm_compare", lambda x: (x, W, 0, 2)),
]


@pytest.mark.parametrize(("op", "args"), GRAD_CALLS, ids=[op for op, _ in GRAD_CALLS])
def test_compiled_ops_never_drop_a_gradient_silently(op: str, args: Callable[[torch.Tensor], tuple]) -> None:
    """Called directly with an input that requires grad, backward raises instead of leaving x.grad None."""
    x = X.clone().requires_grad_(True)
    call = args(x) if op != "rsa_rdm_direct" else (x, 0)
    out = _op(op)(*call)
    with pytest.raises(RuntimeError, match=f"derivative for fastalign::{op} is not implemented"):
        out.sum().backward()


@pytest.mark.cuda
def test_cuda_ops_reject_bad_input() -> None:
    """The CUDA glue (csrc/cuda/rsa_cuda.cpp) makes the CPU op's checks."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    why = _ext.why_ops_missing(api._CUDA_OPS, cuda=True)
    if why is not None:
        pytest.skip(why)
    src = K6.cuda()
    with pytest.raises(ValueError, match=r"perms row 1 is not a permutation of 0\.\.3"):
        _op("rsa_permute_condensed")(src, _perm([0, 1, 2, 3], [0, 3, 2, 3]).cuda())
    with pytest.raises(ValueError, match=r"perms row 0 is not a permutation of 0\.\.3"):
        _op("rsa_permute_condensed")(src, _perm([0, 1, 2, 4]).cuda())
    with pytest.raises(TypeError, match=r"perms must be \(P, n\) int64, got .* Int"):
        _op("rsa_permute_condensed")(src, _perm([0, 1, 2, 3]).int().cuda())
    with pytest.raises(TypeError, match=r"rsa_rank: x must be float64.*got Bool"):
        _op("rsa_rank")(torch.ones(3, dtype=torch.bool, device="cuda"))
    with pytest.raises(TypeError, match=r"rsa_centered_ranks: dtype must be float64 or float32"):
        _op("rsa_centered_ranks")(torch.ones(3, device="cuda"), True, torch.int64)
    perms, _ = common.permutations(4, 3, seed=0)
    want = _op("rsa_permute_condensed")(K6, perms)
    assert torch.equal(_op("rsa_permute_condensed")(src, perms.cuda()).cpu(), want)
    huge = torch.tensor([2**53 + 1, 2**53, 2**63 - 1, 2**53 + 1], device="cuda")
    assert _op("rsa_rank")(huge).tolist() == [2.5, 1.0, 4.0, 2.5]


def _lane_sum(v: torch.Tensor, w: torch.Tensor) -> float:
    """sum_k v[k] w[k] in the op's order: eight lanes over k in steps of 8 (each lane left to right), the
    tail into lane 0, then the lanes in order; every addition rounded in float64."""
    prod = (v * w).tolist()
    main = len(prod) - len(prod) % 8
    lanes = [0.0] * 8
    for k in range(main):
        lanes[k % 8] += prod[k]
    for k in range(main, len(prod)):
        lanes[0] += prod[k]
    total = 0.0
    for s in lanes:
        total += s
    return total


@pytest.mark.parametrize("threads", [1, 2])
def test_rdm_compare_blocks_give_the_bits_of_one_rdm_at_a_time(threads: int) -> None:
    """The op dots blocks of up to 4 RDMs with each model vector in one pass; every output is still each
    RDM's own dot product summed in the documented lane order, to the last bit, whatever the block holds:
    11, 4 and 2 RDMs (blocks of 4, 4, 3 / 4 / 2 on 1 thread, 4, 4, 3 / 2, 2 / 1, 1 on 2), a constant-RDM
    pattern set (NaN, no dot) inside a block, and pair counts with and without a tail (10, 4,950:
    4,950 % 8 = 6) and across the op's chunks of 2,048 pairs."""
    gen = torch.Generator().manual_seed(5)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for n, batch in ((5, 11), (100, 11), (100, 4), (100, 2)):
            k = n * (n - 1) // 2
            x = torch.randn(batch, n, 3, dtype=F64, generator=gen)
            x[1] = x[1, :1] + torch.arange(n, dtype=F64)[:, None]  # shifted copies: a constant RDM
            w = common.ext_prepare(torch.rand(3, k, dtype=F64, generator=gen), "spearman").contiguous()
            got = _op("rsa_rdm_compare")(x, w, 0, 0)
            assert bool(got[1].isnan().all()), got[1]
            rows = [b for b in range(batch) if b != 1]
            v = _op("rsa_centered_ranks")(_op("rsa_rdm_direct")(x[rows], 0), False, F64)
            scale = 1.0 / math.sqrt((k**3 - k) / 12)  # no ties among random distances
            want = torch.tensor([[_lane_sum(vb, wm) * scale for wm in w] for vb in v], dtype=F64)
            assert torch.equal(got[rows], want), (got[rows] - want).abs().max()
            for b in rows:  # one RDM per call: the same bits
                assert torch.equal(_op("rsa_rdm_compare")(x[b : b + 1], w, 0, 0)[0], got[b])
    finally:
        torch.set_num_threads(old)


def test_rdm_compare_of_large_rdms_one_per_thread() -> None:
    """Above 2^18 pairs a thread holds one compare vector instead of a block of 4 (each is 2 MB or
    more): 3 RDMs of 750 conditions (280,875 pairs) give their own statistics."""
    gen = torch.Generator().manual_seed(9)
    n = 750
    x = torch.randn(3, n, 2, dtype=F64, generator=gen)
    models = torch.rand(2, n * (n - 1) // 2, dtype=F64, generator=gen)
    got = _op("rsa_rdm_compare")(x, common.ext_prepare(models, "pearson").contiguous(), 2, 2)
    want = fa.compare_rdms(fa.rdm(x, "euclidean")[:, None, :], models, "pearson")
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


_TILE_SCRIPT = """
import sys, torch
import fastalign._ext as ext
ext.load()
gen = torch.Generator().manual_seed(11)
out = []
for dtype in (torch.float64, torch.float32):
    for n, p in ((3, 2), (5, 3), (9, 17), (33, 5), (40, 64), (71, 17)):
        x = torch.randn(2, n, p, dtype=dtype, generator=gen) * 3 + 1
        out += [torch.ops.fastalign.rsa_rdm_direct(x, m) for m in (0, 1, 2)]
        w = torch.randn(3, n * (n - 1) // 2, dtype=torch.float64, generator=gen)
        out += [torch.ops.fastalign.rsa_rdm_compare(x, w, m, 0) for m in (0, 2)]
    for b, n, p in ((1, 1, 3), (2, 7, 9), (3, 40, 300), (1, 71, 513), (2, 130, 257), (1, 800, 40)):
        x = torch.randn(b, n, p, dtype=dtype, generator=gen) * 3 + 1
        gram = torch.empty(b, n, n, dtype=dtype)
        out += [torch.ops.fastalign.rsa_gram_centered(x, x.mean(-1).reshape(-1), gram), gram]
    # the model dot products: 1-4 vectors per block (one thread: blocks of up to 4 sets) against 1-9 models
    # (tiles of 4 models and every remainder), 2,485 pairs (chunks, and a tail that is not a multiple of 8)
    torch.set_num_threads(1)
    for b, models in ((1, 1), (2, 2), (3, 3), (5, 4), (5, 5), (2, 6), (3, 7), (5, 9)):
        x = torch.randn(b, 71, 4, dtype=dtype, generator=gen)
        w = torch.randn(models, 71 * 70 // 2, dtype=torch.float64, generator=gen)
        out += [torch.ops.fastalign.rsa_rdm_compare(x, w, 0, c) for c in (0, 2)]
    torch.set_num_threads(2)
rdms = torch.rand(7, 3, 2485, dtype=torch.float64, generator=gen)
w = torch.randn(6, 2485, dtype=torch.float64, generator=gen)
out += list(torch.ops.fastalign.rsa_spearman_ceiling(rdms, w))
torch.save(out, sys.argv[1])
"""


def test_rdm_tiles_give_the_same_bits_with_and_without_avx512(tmp_path) -> None:
    """The RDM and Gram register tiles run with 64-byte vectors on CPUs with AVX-512 and 32-byte ones
    elsewhere (FASTALIGN_NO_AVX512=1 forces those): every distance or product sum is the same chain of
    FMAs, so both give the same bits, for both dtypes and every method, at sizes that end inside a tile
    and read its padding (the Gram tiles are also 4 x 24 against 8 x 48 wide); the model dot products of
    rsa_rdm_compare and rsa_spearman_ceiling (4 vectors x 4 models per AVX-512 tile against one model at a
    time) are the same multiplies and adds in the same order. On a CPU without AVX-512 both runs take the
    AVX2 tiles."""
    import os
    import subprocess
    import sys

    got = []
    for off in ("0", "1"):
        path = tmp_path / f"tiles{off}.pt"
        env = {**os.environ, "FASTALIGN_NO_AVX512": off}
        subprocess.run([sys.executable, "-c", _TILE_SCRIPT, str(path)], cwd=tmp_path, check=True, env=env)
        got.append(torch.load(path))
    assert len(got[0]) == len(got[1]) == 119
    for a, b in zip(*got, strict=True):  # (NaN: a 3-condition RDM whose Spearman is undefined)
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
