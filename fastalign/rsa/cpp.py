"""RSA through the C++/OpenMP kernels of fastalign._C (csrc/rsa.cpp), for CPU tensors.

- ``rank`` / ``prepare``: a radix sort per row on its own thread; Spearman's and rho-a's per-RDM
  vectors (centred, normalised ranks) come out of the same pass in the working dtype.
- ``rdm``: pairwise distances straight from the patterns for few features (no Gram matrix, no n^2
  extraction pass); the api sends larger feature counts to the GEMM-based torch backend.
- ``compare``: linear methods as dot products of the prepared vectors; Kendall's tau-a in O(K log K)
  per RDM pair (sort + merge-sort inversion count, as scipy), against O(K^2) in the torch backend.
- ``rdm_compare``: time-resolved RSA fused: each pattern set's RDM is ranked (or centred) and dotted
  with the model vectors in a per-thread buffer; no (B, K) RDMs are held.
- ``spearman_ceiling``: Spearman similarities and the Spearman noise ceiling of many subject RDMs at
  once (one ranking per RDM and per pool, in a per-thread buffer; no ranks or pools are stored).
- ``permutation_null``: permuted condensed RDMs gathered with pair indices computed on the fly (no
  (P, K) index tensor), reduced with batched matrix products.
- ``cluster_null``: the cluster test's sign-flip null, each flip's t curve and largest cluster mass in a
  per-thread buffer (rsa_cluster_null): no (P, T) intermediates.
"""

from __future__ import annotations

import torch

from fastalign import _checks, _ext
from fastalign.rsa import common

_RDM_CODES = {"correlation": 0, "cosine": 1, "euclidean": 2}
_COMPARE_CODES = {"spearman": 0, "rho_a": 1, "pearson": 2, "cosine": 3}


rank = common.ext_rank
prepare = common.ext_prepare


def _tau_a(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Kendall's tau-a broadcast over leading dims, O(K log K) per pair (no broadcast copies of a, b)."""
    shape = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    k = a.shape[-1]
    ia = torch.arange(a[..., 0].numel()).reshape(a.shape[:-1]).expand(shape).reshape(-1)
    ib = torch.arange(b[..., 0].numel()).reshape(b.shape[:-1]).expand(shape).reshape(-1)
    ct = _checks.compute_dtype(a)
    out = torch.ops.fastalign.rsa_kendall_tau_a(a.to(ct).reshape(-1, k), b.to(ct).reshape(-1, k), ia, ib)
    return out.to(ct).reshape(shape)


def compare(a: torch.Tensor, b: torch.Tensor, method: str) -> torch.Tensor:
    """Similarities broadcast over leading dims (linear methods and kendall_tau_a)."""
    _ext.load()
    if method == "kendall_tau_a":
        return _tau_a(a, b)
    za, zb = prepare(a, method), prepare(b, method)
    return common.dot(za, zb) * common.linear_scale(method, a.shape[-1])


def rdm(x: torch.Tensor, method: str, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Condensed RDMs of (..., n, p) patterns ("correlation", "cosine", "euclidean")."""
    _ext.load()
    lead, (n, p) = x.shape[:-2], x.shape[-2:]
    out = torch.ops.fastalign.rsa_rdm_direct(
        x.to(_checks.compute_dtype(x)).reshape(-1, n, p).contiguous(), _RDM_CODES[method]
    )
    return out.reshape(*lead, -1)


def rdm_compare(x: torch.Tensor, models: torch.Tensor, rdm_method: str, method: str) -> torch.Tensor:
    """(B, M) float64 similarities of the RDMs of x (B, n, p) with models (M, K), fused (rsa_rdm_compare):
    no (B, K) RDMs are held. rdm_method: correlation / cosine / euclidean; method: a linear method."""
    _ext.load()
    w = prepare(models.to(torch.float64), method).contiguous()
    x = x.to(_checks.compute_dtype(x)).contiguous()
    out = torch.ops.fastalign.rsa_rdm_compare(x, w, _RDM_CODES[rdm_method], _COMPARE_CODES[method])
    return out * common.linear_scale(method, w.shape[-1])


def spearman_ceiling(
    rdms: torch.Tensor, models_z: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Spearman similarities (S, B, M) of (S, B, K) float64 subject RDMs with the prepared model vectors
    (M, K), and the Spearman noise ceiling's (lower, upper) bounds (B,) at each of the B points, each RDM
    ranked once in a per-thread buffer (rsa_spearman_ceiling; NaN bounds where a pool is constant)."""
    _ext.load()
    return torch.ops.fastalign.rsa_spearman_ceiling(rdms.contiguous(), models_z.contiguous())


def permutation_null(fixed: torch.Tensor, moving: torch.Tensor, perms: torch.Tensor, n: int) -> torch.Tensor:
    """(P, *broadcast): sum_k fixed[..., k] * moving[..., idx_p[k]] (see torch_chunked.permutation_null)."""
    _ext.load()
    return common.gathered_null(torch.ops.fastalign.rsa_permute_condensed, fixed, moving, perms)


def cluster_null(x: torch.Tensor, threshold: float, tail: int, flips: torch.Tensor) -> torch.Tensor:
    """(P,) max cluster mass of the t curve of each sign-flipped x (see torch_chunked.cluster_null)."""
    _ext.load()
    x, flips = x.to(torch.float64).contiguous(), flips.to(torch.float64).contiguous()
    return torch.ops.fastalign.rsa_cluster_null(x, flips, float(threshold), int(tail))
