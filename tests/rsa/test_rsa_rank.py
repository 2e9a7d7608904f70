"""rank against scipy.stats.rankdata: ties, integers, long heavily tied vectors, every backend."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import rankdata

import fastalign as fa
from fastalign import _ext
from fastalign.rsa import api

COMPILED = ["cpp"] if _ext.why_ops_missing(api._CPP_OPS) is None else []
BACKENDS = ["reference", "torch", *COMPILED]


@pytest.mark.parametrize("backend", BACKENDS)
def test_rank_matches_rankdata_with_ties(backend: str) -> None:
    rng = np.random.default_rng(0)
    cases = [
        rng.integers(0, 4, size=(3, 50)).astype(np.float64),
        rng.normal(size=(2, 5, 17)),
        np.array([[0.0, -0.0, 1.0, np.inf, -np.inf, 1.0, np.inf]]),
        np.ones((2, 9)),
        np.array([[3.0]]),
    ]
    for x in cases:
        out = fa.rank(torch.from_numpy(x), backend=backend)
        assert out.dtype == torch.float64
        np.testing.assert_array_equal(out.numpy(), rankdata(x, axis=-1))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.float32])
def test_rank_other_dtypes(backend: str, dtype: torch.dtype) -> None:
    x = torch.randint(-3, 3, (4, 33)).to(dtype)
    np.testing.assert_array_equal(fa.rank(x, backend=backend).numpy(), rankdata(x.numpy(), axis=-1))


def test_rank_dim_argument() -> None:
    x = torch.randint(0, 5, (6, 7, 8)).double()
    for dim in (0, 1, -1, -2):
        np.testing.assert_array_equal(fa.rank(x, dim=dim).numpy(), rankdata(x.numpy(), axis=dim))


@pytest.mark.parametrize("backend", ["torch", *COMPILED])
def test_rank_half_million_heavily_tied_is_exact(backend: str) -> None:
    """500,000 entries in 3 tie groups: ranks reach 250,000-ish sums of positions past int32 range."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 3, (500_000,), generator=gen)
    out = fa.rank(x, backend=backend)
    np.testing.assert_array_equal(out.numpy(), rankdata(x.numpy()))
    ones = fa.rank(torch.zeros(500_001), backend=backend)
    assert bool((ones == 250_001.0).all())


@given(
    n=st.sampled_from([1, 2, 3, 7, 31, 128, 257]),
    batch=st.sampled_from([(), (1,), (3,), (2, 3)]),
    levels=st.sampled_from([1, 2, 5, 1000]),
    seed=st.integers(0, 2**16),
)
def test_backends_match_reference(n: int, batch: tuple[int, ...], levels: int, seed: int) -> None:
    x = torch.randint(0, levels, (*batch, n), generator=torch.Generator().manual_seed(seed)).double()
    ref = fa.rank(x, backend="reference")
    for backend in ["torch", *COMPILED]:
        assert torch.equal(fa.rank(x, backend=backend), ref)


@pytest.mark.parametrize(
    ("x", "kwargs", "exc", "match"),
    [
        (torch.tensor([1.0, float("nan")]), {}, ValueError, "NaN"),
        (torch.tensor(1.0), {}, ValueError, "0-dim"),
        (torch.ones(3), {"dim": 1}, ValueError, "dim"),
        ([1, 2], {}, TypeError, "torch.Tensor"),
        (torch.ones(3), {"backend": "triton"}, NotImplementedError, "does not exist"),
    ],
)
def test_rank_rejects_bad_input(x: object, kwargs: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        fa.rank(x, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", BACKENDS)
def test_rank_integer_extremes_and_signed_zero(backend: str) -> None:
    big = torch.tensor([[2**63 - 1, -(2**63), 0, -1, 2**63 - 1, 5]], dtype=torch.int64)
    np.testing.assert_array_equal(fa.rank(big, backend=backend).numpy(), rankdata(big.numpy(), axis=-1))
    small = torch.tensor([[2**31 - 1, -(2**31), 0, -1, -(2**31)]], dtype=torch.int32)
    np.testing.assert_array_equal(fa.rank(small, backend=backend).numpy(), rankdata(small.numpy(), axis=-1))
    floats = torch.tensor([[-0.0, 0.0, -1e-300, 1e-300, -0.0, 5e-324, float("-inf")]], dtype=torch.float64)
    np.testing.assert_array_equal(fa.rank(floats, backend=backend).numpy(), rankdata(floats.numpy(), axis=-1))
    f32 = torch.tensor([[-0.0, 0.0, -1e-30, 1e-30, 3.4e38, -3.4e38, 1e-45]], dtype=torch.float32)
    np.testing.assert_array_equal(fa.rank(f32, backend=backend).numpy(), rankdata(f32.numpy(), axis=-1))


def test_rank_bool_input() -> None:
    x = torch.tensor([True, False, True, True])
    np.testing.assert_array_equal(fa.rank(x).numpy(), rankdata(x.numpy()))


@pytest.mark.parametrize("backend", BACKENDS)
def test_rank_skewed_and_outlier_rows(backend: str) -> None:
    """Rows whose values crowd into a few keys of the C++ radix sort (a heavy tail, one outlier: long
    runs of distinct values under one key), next to a well-spread row: every path gives scipy's ranks."""
    rng = np.random.default_rng(7)
    rows = np.stack(
        [
            np.exp(8 * rng.normal(size=3000)),  # heavy tail: most values in the lowest keys
            np.r_[rng.normal(size=2999), 1e12],  # one outlier: all other values under key 0
            rng.normal(size=3000),
            np.round(rng.normal(size=3000), 1),  # spread out but tied
        ]
    )
    np.testing.assert_array_equal(
        fa.rank(torch.from_numpy(rows), backend=backend).numpy(), rankdata(rows, axis=-1)
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_rank_long_rows_every_sort_path(backend: str) -> None:
    """The C++ sort keys values on (max - min) / 2^22 steps (2^32 beyond 65,536 entries): distinct values
    that share a key, in short runs (insertion sort) and long ones, and keys collapsed by the float64
    conversion of int64 values, must still come out in exact value order.

    The reference is O(n^2) (160 s on 70,000 entries): it gets the same value patterns on 3,000-entry
    rows, which still span several of its row blocks; the key widths it would miss are the C++ kernel's.
    """
    long = 3_000 if backend == "reference" else 70_000
    rng = np.random.default_rng(11)
    base = rng.normal(size=400)
    clustered = (base[:, None] + np.arange(5) * 1e-15).ravel()  # 400 runs of 5 distinct values
    cases = [
        np.r_[clustered, 0.0, 1e3],  # runs of 5 inside one key
        np.r_[rng.normal(size=long), np.round(rng.normal(size=1_001), 1)],  # 3 passes, ties
        np.r_[rng.integers(0, 3, size=long)].astype(np.float64),  # 3 keys, heavy ties
    ]
    for row in cases:
        x = torch.from_numpy(row)
        np.testing.assert_array_equal(fa.rank(x, backend=backend).numpy(), rankdata(row))
        x32 = x.float()
        np.testing.assert_array_equal(fa.rank(x32, backend=backend).numpy(), rankdata(x32.numpy()))
    # int64 values 1 apart near 2^62 share one float64 value, hence one key
    big = np.r_[2**62 + rng.permutation(600), rng.integers(-1000, 1000, size=600)].astype(np.int64)
    np.testing.assert_array_equal(fa.rank(torch.from_numpy(big), backend=backend).numpy(), rankdata(big))


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("n", [4_095, 4_096, 19_900, 65_536, 65_537])
def test_rank_byte_key_rows(backend: str, n: int) -> None:
    """Rows of 4,096 to 65,536 entries (RDMs of 91 to 362 conditions) are sorted on 24-bit keys in three
    8-bit passes, shorter and longer ones otherwise: at and around both bounds, values that share a key
    (runs of distinct values 1e-15 apart, everything under one key beside an outlier), ties, a heavy tail
    and float32 rows all rank as scipy ranks them, and the centred ranks' norm is the exact one."""
    rng = np.random.default_rng(n)
    clustered = (rng.normal(size=n // 5 + 1)[:, None] + np.arange(5) * 1e-15).ravel()[:n]
    rows = np.stack(
        [
            1 - np.corrcoef(rng.normal(size=(400, 17)))[np.triu_indices(400, 1)][:n],  # RDM entries
            clustered,
            np.r_[rng.normal(size=n - 1), 1e12],  # one outlier: every other value under key 0
            np.round(rng.normal(size=n), 2),  # ties
            np.exp(8 * rng.normal(size=n)),  # heavy tail: most values in the lowest keys
            rng.integers(0, 3, size=n).astype(np.float64),  # 3 values
        ]
    )
    x = torch.from_numpy(rows)
    np.testing.assert_array_equal(fa.rank(x, backend=backend).numpy(), rankdata(rows, axis=-1))
    x32 = x.float()
    np.testing.assert_array_equal(fa.rank(x32, backend=backend).numpy(), rankdata(x32.numpy(), axis=-1))
    centred = torch.ops.fastalign.rsa_centered_ranks(x, True, torch.float64).numpy()
    ref = rankdata(rows, axis=-1) - (n + 1) / 2
    np.testing.assert_allclose(centred, ref / np.linalg.norm(ref, axis=-1, keepdims=True), rtol=1e-13, atol=0)


def _exact_ranks(x: torch.Tensor) -> np.ndarray:
    """scipy's average ranks of the values as Python ints (an object array: no float64 on the way)."""
    return rankdata(np.array(x.tolist(), dtype=object), axis=-1)


I64_MIN, I64_MAX = -(2**63), 2**63 - 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_rank_int64_beyond_2_53_is_exact(backend: str) -> None:
    """Distinct int64 values that round to one float64 are not ties, on every path of the C++ sort: a row
    whose min and max round alike (short: entries sort; long: radix sort), the full int64 range with
    ties, and a long row where most values crowd under one key next to the extremes."""
    rng = np.random.default_rng(5)
    cluster = (2**62 + rng.permutation(40)).tolist()  # 40 distinct values, all one float64
    rows = [
        [2**53 + 1, 2**53],
        [I64_MAX, I64_MAX - 1, I64_MAX - 2, I64_MAX - 1],  # short, ties, all one float64
        cluster,
        [v for v in cluster for _ in range(2)],  # every value twice
        [I64_MIN + 1, I64_MIN, I64_MAX, I64_MAX - 1, 0, -1, I64_MIN, I64_MAX] * 3,  # extremes, ties
        [I64_MIN, I64_MAX, *cluster, *(-c for c in cluster)] * 2,
    ]
    for row in rows:
        x = torch.tensor(row, dtype=torch.int64)
        np.testing.assert_array_equal(fa.rank(x, backend=backend).numpy(), _exact_ranks(x), err_msg=str(row))
    batched = torch.tensor([cluster[:17], cluster[17:34]], dtype=torch.int64)
    np.testing.assert_array_equal(fa.rank(batched, backend=backend).numpy(), _exact_ranks(batched))


@given(
    n=st.sampled_from([2, 3, 16, 17, 100]),
    base=st.sampled_from([2**53, 2**62, I64_MIN, I64_MAX - 60]),
    levels=st.sampled_from([2, 60]),
    seed=st.integers(0, 2**16),
)
def test_huge_int64_backends_match_exact_ranks(n: int, base: int, levels: int, seed: int) -> None:
    x = base + torch.randint(0, levels, (3, n), generator=torch.Generator().manual_seed(seed))
    want = _exact_ranks(x)
    for backend in BACKENDS:
        np.testing.assert_array_equal(fa.rank(x, backend=backend).numpy(), want, err_msg=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8, torch.bool])
def test_rank_narrow_integers_full_range(backend: str, dtype: torch.dtype) -> None:
    """Every integer dtype rank accepts, at its extremes; cpp takes int32 and refuses the narrower ones."""
    info = torch.iinfo(dtype) if dtype != torch.bool else None
    lo, hi = (info.min, info.max) if info else (0, 1)
    x = torch.tensor([[hi, lo, hi - 1, lo + 1, hi, lo, (lo + hi) // 2] * 3], dtype=torch.int64).to(dtype)
    if backend == "cpp" and dtype != torch.int32:
        with pytest.raises(NotImplementedError, match="cpp ranks float64, float32, int64 or int32"):
            fa.rank(x, backend=backend)
        return
    np.testing.assert_array_equal(fa.rank(x, backend=backend).numpy(), _exact_ranks(x.to(torch.int64)))


@pytest.mark.skipif(not COMPILED, reason="fastalign._C is not built")
def test_cpp_rank_op_propagates_nan() -> None:
    """The public rank() rejects NaN; the C++ op itself (reached by fused paths) gives a NaN row, as
    scipy's nan_policy="propagate", instead of ranking NaN anywhere."""
    for n in (5, 40, 3000):
        x = torch.randn(2, n, dtype=torch.float64)
        x[0, n // 2] = float("nan")
        got = torch.ops.fastalign.rsa_rank(x)
        assert torch.isnan(got[0]).all()
        np.testing.assert_array_equal(got[1].numpy(), rankdata(x[1].numpy()))


@pytest.mark.skipif(not COMPILED, reason="fastalign._C is not built")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_compiled_rank_takes_half_inputs(dtype: torch.dtype) -> None:
    """Half RDMs (e.g. noise_ceiling of bf16 RDMs with spearman) are ranked as the float32 they equal."""
    x = torch.randn(3, 40).to(dtype)
    want = rankdata(x.float().numpy(), axis=-1)
    from fastalign.rsa import common

    np.testing.assert_array_equal(common.ext_rank(x).numpy(), want)
    r = torch.rand(4, 45).to(dtype)
    got = fa.noise_ceiling(r, "spearman", backend="cpp")
    ref = fa.noise_ceiling(r.float(), "spearman", backend="reference")
    for g, w in zip(got, ref, strict=True):
        torch.testing.assert_close(g.double(), w.double(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.uint16, torch.uint32, torch.uint64, torch.float8_e4m3fn])
def test_rank_of_dtypes_torch_cannot_compare(backend: str, dtype: torch.dtype) -> None:
    """torch has no CPU comparisons for uint16/32/64 or float8 (the reference raised "lt_cpu" not
    implemented): they are ranked exactly, uint64 beyond 2**63 included."""
    if dtype == torch.float8_e4m3fn:
        x = torch.tensor([[3.0, -1.0, 3.0], [0.5, 2.0, -1.0]]).to(dtype)
        values = x.float().numpy()
    else:
        top = 2**63 + 5 if dtype == torch.uint64 else 7
        values = np.array([[top, 3, top - 4], [3, top, top - 1]], dtype=np.uint64)
        x = torch.from_numpy(values.astype(np.int64) if dtype != torch.uint64 else values).to(dtype)
    for dim in (-1, 0):
        np.testing.assert_array_equal(fa.rank(x, dim, backend=backend).numpy(), rankdata(values, axis=dim))


@pytest.mark.parametrize("backend", BACKENDS)
def test_rank_validates_dim(backend: str) -> None:
    """A dim that is not an int was a raw TypeError from torch (or a float accepted by the range check)."""
    x = torch.tensor([[3.0, 1.0], [2.0, 5.0]])
    for bad in ("0", None, 0.0, True, np.bool_(False)):
        with pytest.raises(TypeError, match=r"rank: dim must be an int, got"):
            fa.rank(x, bad, backend=backend)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"rank: dim must be in \[-2, 1\]"):
        fa.rank(x, np.int64(2), backend=backend)  # type: ignore[arg-type]
    got = fa.rank(x, np.int32(0), backend=backend)  # type: ignore[arg-type]
    np.testing.assert_array_equal(got.numpy(), rankdata(x.numpy(), axis=0))


def test_a_backend_refusing_a_converted_dtype_names_the_one_given() -> None:
    # bool is ranked as uint8, which the compiled kernel does not take: the message said "got torch.uint8"
    with pytest.raises(
        NotImplementedError, match=r"got torch.uint8 \(x is torch.bool, ranked as torch.uint8\)"
    ):
        fa.rank(torch.tensor([True, False, True]), backend="cpp")
    torch.testing.assert_close(
        fa.rank(torch.tensor([True, False, True])), torch.tensor([2.5, 1.0, 2.5], dtype=torch.float64)
    )
