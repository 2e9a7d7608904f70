"""CUDA backends against the reference (skipped without a GPU and a CUDA build of fastalign._C)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import rankdata

import fastalign as fa

pytestmark = pytest.mark.cuda


@pytest.fixture
def cuda_backend() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from fastalign import _ext
    from fastalign.rsa import api

    why = _ext.why_ops_missing(api._CUDA_OPS, cuda=True)
    if why is not None:
        pytest.skip(why)


@pytest.mark.parametrize("n", [1, 2, 255, 256, 257, 19_900, 500_000])
@pytest.mark.parametrize("levels", [2, 1_000_000])
def test_cuda_rank_matches_rankdata(cuda_backend: None, n: int, levels: int) -> None:
    x = torch.randint(0, levels, (3, n)).double()
    out = fa.rank(x.cuda(), backend="cuda").cpu()
    np.testing.assert_array_equal(out.numpy(), rankdata(x.numpy(), axis=-1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int32, torch.int64])
def test_cuda_rank_dtypes(cuda_backend: None, dtype: torch.dtype) -> None:
    x = torch.randint(-5, 5, (4, 1000)).to(dtype)
    np.testing.assert_array_equal(
        fa.rank(x.cuda(), backend="cuda").cpu().numpy(), rankdata(x.numpy(), axis=-1)
    )


def test_cuda_rank_subnormals_and_nan_rows(cuda_backend: None) -> None:
    """float32 subnormals are distinct values (no flush-to-zero in the comparisons); a row with NaN gives
    NaN ranks, as the CPU op does."""
    tiny = torch.tensor([[2e-40, 0.0, 1e-40, -1e-45, 5.0]], dtype=torch.float32)
    np.testing.assert_array_equal(
        fa.rank(tiny.cuda(), backend="cuda").cpu().numpy(), rankdata(tiny.numpy(), axis=-1)
    )
    x = torch.randn(2, 300, dtype=torch.float64)
    x[0, 7] = float("nan")
    got = torch.ops.fastalign.rsa_rank(x.cuda()).cpu()
    assert torch.isnan(got[0]).all()
    np.testing.assert_array_equal(got[1].numpy(), rankdata(x[1].numpy()))


@pytest.mark.parametrize("method", ["spearman", "pearson", "rho_a", "cosine"])
def test_cuda_permutation_null_matches_reference(cuda_backend: None, method: str) -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(3, 1, 2, 190, generator=gen, dtype=torch.float64)
    b = torch.randn(1, 4, 1, 190, generator=gen, dtype=torch.float64)
    ref = fa.rsa_permutation_test(
        a, b, method=method, n_permutations=50, seed=1, return_null=True, backend="reference"
    )
    out = fa.rsa_permutation_test(
        a.cuda(), b.cuda(), method=method, n_permutations=50, seed=1, return_null=True, backend="cuda"
    )
    assert out.null is not None and ref.null is not None
    np.testing.assert_allclose(out.null.cpu().numpy(), ref.null.numpy(), rtol=1e-10, atol=1e-12)
    assert torch.equal(out.pvalue.cpu(), ref.pvalue)


def test_cuda_compare_and_triton_rdm(cuda_backend: None) -> None:
    x = torch.randn(2, 300, 64, dtype=torch.float64)
    ref = fa.rdm(x, "correlation", backend="reference")
    out = fa.rdm(x.float().cuda(), "correlation", backend="triton").cpu()
    np.testing.assert_allclose(out.double().numpy(), ref.numpy(), rtol=1e-5, atol=1e-5)
    s_ref = fa.compare_rdms(ref[:1], ref[1:], "spearman", backend="reference")
    s_out = fa.compare_rdms(ref[:1].cuda(), ref[1:].cuda(), "spearman", backend="cuda").cpu()
    np.testing.assert_allclose(s_out.numpy(), s_ref.numpy(), rtol=1e-12)
