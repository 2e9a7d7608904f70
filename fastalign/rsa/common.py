"""Math shared by the RSA backends and the public API: condensed-vector indexing, permutations, p-values.

Condensed RDM vectors follow rsatoolbox (and scipy.spatial.distance.squareform): the strict upper
triangle of the n x n matrix read row by row, so pair (i, j) with i < j sits at
``i * n - i * (i + 1) / 2 + (j - i - 1)``. Permutations and sign flips are drawn on the CPU from a
seeded ``torch.Generator`` so that every backend and device sees the same ones for the same seed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch

RDM_METHODS = ("correlation", "cosine", "euclidean", "crossnobis")
COMPARE_METHODS = ("spearman", "pearson", "kendall_tau_a", "rho_a", "cosine")
# Methods whose permutation statistic is a dot product of fixed per-RDM vectors: sum_k za[k] * zb[pi(k)].
LINEAR_METHODS = ("spearman", "pearson", "rho_a", "cosine")
ALTERNATIVES = ("greater", "less", "two-sided")


def n_pairs(n: int) -> int:
    """Length of the condensed vector of an n x n RDM."""
    return n * (n - 1) // 2


def n_conditions(k: int) -> int | None:
    """The n with n * (n - 1) / 2 == k, or None if k is not such a number."""
    n = (1 + math.isqrt(1 + 8 * k)) // 2
    return n if n_pairs(n) == k else None


@functools.lru_cache(maxsize=16)
def _triu(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    i, j = torch.triu_indices(n, n, offset=1)
    return i, j


def triu_indices(n: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices (int64, length n(n-1)/2) of the condensed order."""
    i, j = _triu(n)
    return i.to(device), j.to(device)


def pair_index_matrix(n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(n, n) int64 with entry (i, j) the condensed index of the pair {i, j}; -1 on the diagonal."""
    i, j = triu_indices(n, device)
    m = torch.full((n, n), -1, dtype=torch.int64, device=device)
    k = torch.arange(i.numel(), device=device)
    m[i, j] = k
    m[j, i] = k
    return m


def square(v: torch.Tensor, n: int) -> torch.Tensor:
    """(..., n(n-1)/2) condensed -> (..., n, n) symmetric with a zero diagonal."""
    i, j = triu_indices(n, v.device)
    out = v.new_zeros((*v.shape[:-1], n, n))
    out[..., i, j] = v
    out[..., j, i] = v
    return out


def condensed(m: torch.Tensor) -> torch.Tensor:
    """(..., n, n) -> (..., n(n-1)/2): the strict upper triangle, row by row."""
    i, j = triu_indices(m.shape[-1], m.device)
    return m[..., i, j]


def _generator(seed: int | None) -> torch.Generator:
    g = torch.Generator(device="cpu")
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


def permutations(n: int, n_permutations: int, seed: int | None) -> torch.Tensor:
    """(n_permutations, n) int64 uniformly random permutations of range(n), on the CPU."""
    keys = torch.rand(n_permutations, n, generator=_generator(seed), dtype=torch.float64)
    return keys.argsort(dim=1)


def permuted_pair_indices(perms: torch.Tensor, n: int) -> torch.Tensor:
    """(P, n) condition permutations -> (P, n(n-1)/2) condensed indices.

    Relabelling conditions by pi moves pair (i, j) to pair (pi[i], pi[j]): ``v[..., idx[p]]`` is the
    condensed vector of the RDM with rows and columns permuted by ``perms[p]``.
    """
    m = pair_index_matrix(n, perms.device)
    i, j = triu_indices(n, perms.device)
    return m[perms[:, i], perms[:, j]]


def sign_flips(n_subjects: int, n_permutations: int, seed: int | None) -> torch.Tensor:
    """(n_permutations, n_subjects) float64 random signs (+1 / -1), on the CPU."""
    bits = torch.randint(0, 2, (n_permutations, n_subjects), generator=_generator(seed))
    return bits.to(torch.float64).mul_(2).sub_(1)


def permutation_pvalue(observed: torch.Tensor, null: torch.Tensor, alternative: str) -> torch.Tensor:
    """p-values with the +1 correction, ``(1 + #{null at least as extreme}) / (1 + n_permutations)``.

    Null values within a relative ``100 * eps`` of the observed one count as ties (as extreme), the
    convention of scipy.stats.permutation_test, so that rounding in a differently ordered sum never
    makes the identity permutation look less extreme than the data.

    Args:
        observed: (...) statistics.
        null: (P, ...) statistics under the null.
        alternative: "greater", "less" or "two-sided" (twice the smaller one-sided p, at most 1).
    """
    gamma = observed.abs() * (100 * torch.finfo(observed.dtype).eps)
    p = null.shape[0]
    greater = ((null >= observed - gamma).sum(0) + 1).to(observed.dtype) / (p + 1)
    if alternative == "greater":
        return greater
    less = ((null <= observed + gamma).sum(0) + 1).to(observed.dtype) / (p + 1)
    if alternative == "less":
        return less
    return torch.clamp(2 * torch.minimum(greater, less), max=1.0)


def linear_scale(method: str, k: int) -> float:
    """The constant factor of a linear method's statistic over K pairs (1 except rho_a)."""
    return 12.0 / (k**3 - k) if method == "rho_a" else 1.0


def center_scale(z: torch.Tensor, method: str) -> torch.Tensor:
    """The per-RDM vector of a linear method from its values (or ranks) z: statistic(a, b) is
    ``linear_scale * sum_k za[k] zb[k]``. cosine: z / |z|; pearson, spearman: centred z / norm;
    rho_a: centred z."""
    if method != "cosine":
        z = z - z.mean(-1, keepdim=True)
    if method == "rho_a":
        return z
    return z / z.norm(dim=-1, keepdim=True)


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_k a[..., k] * b[..., k] with broadcasting, as batched GEMMs in the larger operand's memory
    order: einsum copies a view with permuted batch dims first (5x slower for 1,000 RDMs of 19,900)."""
    nd = max(a.dim(), b.dim())
    a = a.reshape((1,) * (nd - a.dim()) + tuple(a.shape))
    b = b.reshape((1,) * (nd - b.dim()) + tuple(b.shape))
    big = a if a.numel() >= b.numel() else b
    last = nd - 1
    if nd >= 2 and not big.is_contiguous() and big.stride(-1) == 1:
        order = sorted(range(last), key=lambda d: big.stride(d), reverse=True)
        if big.permute(*order, last).is_contiguous():
            out = torch.einsum("...k,...k->...", a.permute(*order, last), b.permute(*order, last))
            inverse = [0] * last
            for i, d in enumerate(order):
                inverse[d] = i
            return out.permute(inverse)
    return torch.einsum("...k,...k->...", a, b)


def rowwise(fn: Callable[[torch.Tensor], torch.Tensor], v: torch.Tensor) -> torch.Tensor:
    """fn (a kernel over the rows of a contiguous tensor) applied to v without copying when v is a view
    with permuted batch dims (e.g. RDMs (subjects, times, K) viewed as (times, 1, subjects, K))."""
    last = v.dim() - 1
    if v.dim() >= 2 and not v.is_contiguous() and v.stride(-1) == 1:
        order = sorted(range(last), key=lambda d: v.stride(d), reverse=True)
        w = v.permute(*order, last)
        if w.is_contiguous():
            inverse = [0] * v.dim()
            for i, d in enumerate([*order, last]):
                inverse[d] = i
            return fn(w).permute(inverse)
    return fn(v.contiguous())


def gathered_null(
    gather: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    fixed: torch.Tensor,
    moving: torch.Tensor,
    perms: torch.Tensor,
    chunk_elements: int = 1 << 24,
) -> torch.Tensor:
    """(P, *broadcast): sum_k fixed[..., k] * moving[..., idx_p[k]], with a compiled gather.

    ``gather(src (B, K), perms (Pc, n)) -> (Pc, B, K)`` relabels condensed RDMs (rsa_permute_condensed);
    permutations go through it in chunks of about ``chunk_elements`` gathered values, each chunk
    reduced against ``fixed`` by batched matrix products.
    """
    k = moving.shape[-1]
    lead = moving.shape[:-1]
    flat = moving.reshape(-1, k).contiguous()
    shape = torch.broadcast_shapes(fixed.shape[:-1], lead)
    pad = [1] * (len(shape) - len(lead))  # keeps the permutation dim left of the batch dims
    out = torch.empty((perms.shape[0], *shape), dtype=fixed.dtype, device=fixed.device)
    fixed = fixed.contiguous()  # once, not in every chunk's einsum
    perms = perms.to(fixed.device)
    step = max(1, min(chunk_elements // max(flat.numel(), 1), 65535))
    for s in range(0, perms.shape[0], step):
        chunk = perms[s : s + step].contiguous()
        g = gather(flat, chunk)  # sized explicitly: -1 is ambiguous for an empty batch
        out[s : s + step] = torch.einsum("...k,...k->...", fixed, g.reshape(chunk.shape[0], *pad, *lead, k))
    return out


def one_sample_t(x: torch.Tensor) -> torch.Tensor:
    """One-sample t statistic over dim -2: x (..., n_subjects, n_times) -> (..., n_times).

    ``mean / (std(ddof=1) / sqrt(n))``, as scipy.stats.ttest_1samp and MNE's ttest_1samp_no_p.
    """
    n = x.shape[-2]
    return x.mean(-2) / (x.std(-2, correction=1) / math.sqrt(n))


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 for float64 inputs, else float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def ext_rank(x: torch.Tensor) -> torch.Tensor:
    """Average ranks along the last dim in float64 through fastalign._C (its CPU or CUDA kernel).

    float16 / bfloat16 go in as float32 (exact: every half value is a float32 value), which the
    kernels take.
    """
    from fastalign import _ext

    _ext.load()
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    return torch.ops.fastalign.rsa_rank(x)


def ext_prepare(v: torch.Tensor, method: str) -> torch.Tensor:
    """The per-RDM vector z of a linear method (see center_scale); ranks in one fastalign._C pass."""
    from fastalign import _ext

    _ext.load()
    ct = compute_dtype(v)
    if method in ("spearman", "rho_a"):
        # the kernel ranks its four dtypes exactly (int64 beyond 2^24 would tie in float32); the others
        # (half, small ints) are float32 values exactly
        x = v if v.dtype in (torch.float64, torch.float32, torch.int64, torch.int32) else v.to(ct)
        normalize = method == "spearman"
        return rowwise(lambda w: torch.ops.fastalign.rsa_centered_ranks(w, normalize, ct), x)
    return center_scale(v.to(ct), method)
