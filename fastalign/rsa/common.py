"""What the RSA backends share, and what they must provide.

- Math shared by the backends and the public API: condensed-vector indexing, permutations, sign flips,
  p-values, the per-RDM vectors of the linear compare methods, one-sample t and its clusters.
- The backend protocols (``RDMBackend``, ``RankBackend``, ...): the functions, signatures, shapes and
  dtypes a backend module provides for each op it is registered for (``OP_PROTOCOLS``).
- Numerics the API and the compositions share: rounding tolerances and exact power-of-two rescaling.
- Compositions: the algorithms that assemble a result from a backend's functions (the permutation null,
  the noise ceiling's pools, the cluster test, time-resolved RSA chunk by chunk). They take the chosen
  backend module and call it directly; the public functions (api.py, stats.py) validate before.

Condensed RDM vectors follow rsatoolbox (and scipy.spatial.distance.squareform): the strict upper
triangle of the n x n matrix read row by row, so pair (i, j) with i < j sits at
``i * n - i * (i + 1) / 2 + (j - i - 1)``. Permutations and sign flips are drawn on the CPU from a
seeded ``torch.Generator`` so that every backend and device sees the same ones for the same seed.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import itertools
import math
from collections.abc import Callable, Iterator
from typing import Protocol

import torch

from fastalign import _checks

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


#: The most conditions whose orders are enumerated for an exact test (8! = 40,320; 9! would be 362,880
#: rows of gathered pair indices per RDM batch).
MAX_EXACT_CONDITIONS = 8


def permutations(n: int, n_permutations: int, seed: int | None) -> tuple[torch.Tensor, bool]:
    """(P, n) int64 permutations of range(n) on the CPU, and whether they are all of them: every one but
    the identity (P = n! - 1, in lexicographic order) when that many are at most ``n_permutations`` and
    n <= MAX_EXACT_CONDITIONS (an exact test, as scipy.stats.permutation_test enumerates; drawn, 6
    conditions would repeat each of their 720 orders about 14 times in 10,000 draws), else
    n_permutations uniformly random ones."""
    if n <= MAX_EXACT_CONDITIONS and math.factorial(n) - 1 <= n_permutations:
        every = torch.tensor(list(itertools.permutations(range(n))), dtype=torch.int64)
        return every[1:], True  # row 0 is the identity: the data as observed, counted once by the +1
    keys = torch.rand(n_permutations, n, generator=_generator(seed), dtype=torch.float64)
    return keys.argsort(dim=1), False


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


def permutation_pvalue(
    observed: torch.Tensor, null: torch.Tensor, alternative: str, *, unit_scale: bool = False
) -> torch.Tensor:
    """p-values with the +1 correction, ``(1 + #{null at least as extreme}) / (1 + n_permutations)``.

    Null values within a relative ``100 * eps`` of the observed one count as ties (as extreme), the
    convention of scipy.stats.permutation_test, so that rounding in a differently ordered sum never
    makes a relabelling that gives the same statistic in exact arithmetic look less extreme than the
    data. ``unit_scale`` (statistics in [-1, 1], the RDM comparisons): within ``100 * eps * max(|observed|,
    1)``, so also where that statistic is 0 (two category RDMs whose Spearman is exactly 0 under every
    relabelling: a relative tolerance is 0 there, and rounding of 1e-17 either way gave p = 1/720 or 1);
    distinct values of rank statistics of up to 200 conditions lie farther apart than this.

    Args:
        observed: (...) statistics.
        null: (P, ...) statistics under the null.
        alternative: "greater", "less" or "two-sided" (twice the smaller one-sided p, at most 1).
    """
    size = observed.abs().clamp(min=1.0) if unit_scale else observed.abs()
    gamma = size * (100 * torch.finfo(observed.dtype).eps)
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


def cluster_masses(t: torch.Tensor, threshold: float, tail: int) -> list[tuple[int, int, float]]:
    """Clusters of one t curve (n_times,): maximal runs beyond the threshold, as (start, stop, mass).

    tail=1: runs of t > threshold; tail=-1: runs of t < -threshold; tail=0: both kinds, a run never
    mixing signs. The mass is the sum of t over the run (negative for negative clusters).
    """
    clusters = []
    values = t.tolist()
    start, sign = None, 0
    for k in range(len(values) + 1):  # one step past the end closes a trailing run
        s = 0
        if k < len(values):
            if values[k] > threshold and tail >= 0:
                s = 1
            elif values[k] < -threshold and tail <= 0:
                s = -1
        if start is not None and s != sign:
            clusters.append((start, k, float(sum(values[start:k]))))
            start = None
        if s != 0 and start is None:
            start, sign = k, s
    return clusters


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


def raise_first_failure(
    indices: torch.Tensor, shape: tuple[int, ...], run: Callable[[int], object], what: str
) -> None:
    """Raises the ValueError of the first of ``indices`` (flat positions in ``shape``) for which
    ``run(index)`` raises, with that position named: a group of elements computed together (those with
    the same NaN entries) names a position within the gathered group when it fails."""
    for i in indices.tolist():
        try:
            run(i)
        except ValueError as exc:
            at = tuple(int(j) for j in torch.unravel_index(torch.tensor(i), shape))
            raise ValueError(f"{exc} (the {what} at index {at}, its NaN entries dropped)") from None


_ROW_OPS = ("rsa_row_stats", "rsa_gram_centered")


def cpp_rows(x: torch.Tensor) -> bool:
    """Whether the row kernels of fastalign._C (rsa_row_stats, rsa_gram_centered) may read x: a plain
    float32 / float64 CPU tensor with a contiguous last dim, outside torch.compile's tracing and
    torch.func's transforms (the ops have no fake-tensor or batching rules), with the extension built."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or x.stride(-1) != 1:
        return False
    if torch.compiler.is_compiling() or torch._C._functorch.is_functorch_wrapped_tensor(x):
        return False
    from fastalign import _ext

    return _ext.why_ops_missing(_ROW_OPS) is None


# (patterns, their row_stats as (rows, 3), the patterns' version counter: None for inference tensors, which
# have none) while a backend runs on them
_KNOWN_ROW_STATS: contextvars.ContextVar[tuple[torch.Tensor, torch.Tensor, int | None] | None] = (
    contextvars.ContextVar("fastalign_known_row_stats", default=None)
)


@contextlib.contextmanager
def reusing_row_stats(x: torch.Tensor, stats: torch.Tensor | None) -> Iterator[None]:
    """Within the block, row_stats of x, or of any contiguous block of its rows, returns the rows of
    ``stats`` (row_stats(x), computed by the caller's checks) instead of reading the patterns again: the
    api checks an RDM's patterns and the torch backend then needs their sums (one pass over 13 MB for
    4 x 200 x 4,096 float32, a tenth of the RDMs' time). x stays alive for the block, so its memory is
    no other tensor's; a write to x in between (its version counter moves) makes row_stats read again
    (inference tensors count no versions; nothing in a backend writes its input). stats None: nothing to
    reuse."""
    if stats is None or not x.is_contiguous():
        yield
        return
    token = _KNOWN_ROW_STATS.set((x, stats.reshape(-1, 3), _version(x)))
    try:
        yield
    finally:
        _KNOWN_ROW_STATS.reset(token)


def _version(x: torch.Tensor) -> int | None:
    return None if x.is_inference() else x._version


def _known_rows(x: torch.Tensor) -> torch.Tensor | None:
    """The known row_stats of x's rows (reusing_row_stats), or None where x is not a contiguous block of
    rows of the patterns they were computed for, unchanged since."""
    known = _KNOWN_ROW_STATS.get()
    if known is None:
        return None
    base, stats, version = known
    p = base.shape[-1]
    if _version(base) != version or x.dtype != base.dtype or x.shape[-1] != p or not x.is_contiguous():
        return None
    row_bytes = p * x.element_size()
    offset = x.data_ptr() - base.data_ptr()
    start, rows = offset // row_bytes, x.numel() // max(p, 1)
    if offset < 0 or offset % row_bytes or start + rows > stats.shape[0]:
        return None
    return stats[start : start + rows]


def row_stats(x: torch.Tensor) -> torch.Tensor:
    """(..., 3) float64: each row's (last dim's) max, min and sum in one pass (rsa_row_stats); max and
    min are NaN for a row with NaN, as amax / amin give. For x where cpp_rows holds; inside
    reusing_row_stats, rows already read are not read again."""
    known = _known_rows(x)
    if known is not None:
        return known.reshape(*x.shape[:-1], 3)
    rows = x.detach().reshape(-1, x.shape[-1])  # a view for the contiguous tensors it is used on
    return torch.ops.fastalign.rsa_row_stats(rows).reshape(*x.shape[:-1], 3)


def ext_prepare(v: torch.Tensor, method: str) -> torch.Tensor:
    """The per-RDM vector z of a linear method (see center_scale); ranks in one fastalign._C pass."""
    from fastalign import _ext

    _ext.load()
    ct = _checks.compute_dtype(v)
    if method in ("spearman", "rho_a"):
        # the kernel ranks its four dtypes exactly (int64 beyond 2^24 would tie in float32); the others
        # (half, small ints) are float32 values exactly
        x = v if v.dtype in (torch.float64, torch.float32, torch.int64, torch.int32) else v.to(ct)
        normalize = method == "spearman"
        return rowwise(lambda w: torch.ops.fastalign.rsa_centered_ranks(w, normalize, ct), x)
    return center_scale(v.to(ct), method)


# ----------------------------------------------------------------------------------------- backend protocols
# A backend module (torch_chunked, cpp, cuda, triton; reference for the oracle) provides, as plain
# module-level functions, the protocol of every op it is registered for (OP_PROTOCOLS). The public
# functions validate their inputs first: a backend receives finite tensors of one device, shapes that
# fit (n >= 3 conditions, K = n(n-1)/2 pairs), values rescaled by exact powers of two where sums of
# squares could overflow, and only the methods, dtypes and devices its registered check accepts. It
# computes in _checks.compute_dtype (float64 for float64 inputs, else float32) and needs no autograd support
# when it is registered differentiable=False.


class RDMBackend(Protocol):
    """rdm and time_resolved_rdms (torch, cpp, triton, reference)."""

    def rdm(self, x: torch.Tensor, method: str, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Condensed RDMs.

        Args:
            x: (..., n, p) patterns ((..., n_folds, n, p) for "crossnobis"), floating point.
            method: one of RDM_METHODS that the backend's check accepts.
            noise: (p, p) crossnobis noise precision on x's device, or None (identity).

        Returns:
            (..., n(n-1)/2) in condensed order, compute_dtype(x).
        """
        ...


class RankBackend(Protocol):
    """rank (torch, cpp, cuda, reference)."""

    def rank(self, x: torch.Tensor) -> torch.Tensor:
        """Average ranks along the last dim, as scipy.stats.rankdata: exact, ties share their mean rank.

        Args:
            x: (..., n) without NaN, n >= 1; a float, int or uint8 dtype that the check accepts.

        Returns:
            float64 of x's shape, values in 1..n.
        """
        ...


class CompareBackend(Protocol):
    """compare_rdms (torch, cpp, cuda, reference)."""

    def compare(self, a: torch.Tensor, b: torch.Tensor, method: str) -> torch.Tensor:
        """RDM similarities, broadcast over leading dims.

        Args:
            a: (..., K) condensed RDMs.
            b: (..., K) condensed RDMs of a's dtype, leading dims broadcastable with a's.
            method: one of COMPARE_METHODS that the backend's check accepts.

        Returns:
            broadcast(a.shape[:-1], b.shape[:-1]) in compute_dtype(a); NaN where the statistic is
            undefined (a constant RDM; all-zero for "cosine"), which the caller names.
        """
        ...


class StatisticsBackend(RankBackend, CompareBackend, Protocol):
    """rsa_permutation_test (prepare, compare, permutation_null) and noise_ceiling (rank, compare):
    torch, cpp, cuda."""

    def prepare(self, v: torch.Tensor, method: str) -> torch.Tensor:
        """The per-RDM vector z of a linear method (center_scale of v or of its ranks).

        Args:
            v: (..., K) condensed RDMs.
            method: one of LINEAR_METHODS.

        Returns:
            (..., K) in compute_dtype(v), with ``statistic(a, b) == linear_scale * sum_k za[k] zb[k]``.
        """
        ...

    def permutation_null(
        self, fixed: torch.Tensor, moving: torch.Tensor, perms: torch.Tensor, n: int
    ) -> torch.Tensor:
        """Dot products of ``fixed`` with ``moving`` relabelled by each permutation.

        Args:
            fixed: (..., K) prepared vectors.
            moving: (..., K) prepared vectors of fixed's dtype and device, leading dims broadcastable.
            perms: (P, n) int64 condition permutations, on the CPU (permutations()).
            n: the number of conditions, K = n(n-1)/2.

        Returns:
            (P, *broadcast) in fixed's dtype: entry p is ``sum_k fixed[..., k] moving[..., idx_p[k]]``
            with idx_p = permuted_pair_indices(perms, n)[p].
        """
        ...


class ClusterBackend(Protocol):
    """cluster_permutation_test's null distribution (torch)."""

    def cluster_null(self, x: torch.Tensor, threshold: float, tail: int, flips: torch.Tensor) -> torch.Tensor:
        """The largest cluster mass of each sign flip's one-sample t curve.

        Args:
            x: (n_subjects, n_times) float64 effects, every time point with variance across subjects.
            threshold: the positive cluster-forming t threshold.
            tail: 1 (runs of t > threshold, mass sum t), -1 (t < -threshold, mass sum -t) or 0 (both).
            flips: (P, n_subjects) float64 signs, on the CPU (sign_flips()).

        Returns:
            (P,) of x's dtype on x's device: the largest mass per flip, 0 where no run exists.
        """
        ...


class FusedRSABackend(Protocol):
    """time_resolved_rsa in one kernel (cpp); "torch" and "reference" compose their RDMBackend and
    CompareBackend instead (composed_time_resolved_rsa)."""

    def rdm_compare(
        self, x: torch.Tensor, models: torch.Tensor, rdm_method: str, method: str
    ) -> torch.Tensor:
        """Similarities of the RDMs of x with the models, without holding the RDMs.

        Args:
            x: (B, n, p) window patterns.
            models: (M, K) condensed model RDMs, K = n(n-1)/2, on x's device.
            rdm_method: "correlation", "cosine" or "euclidean".
            method: one of LINEAR_METHODS.

        Returns:
            (B, M) float64; NaN where a brain RDM makes the statistic undefined.
        """
        ...


class ComposedRSABackend(RDMBackend, CompareBackend, Protocol):
    """time_resolved_rsa's composed path: its RDMs and their comparison from one module (torch,
    reference) when that backend is asked for explicitly."""


class ReferenceStatistics(Protocol):
    """The reference's statistics: whole tests, one permutation at a time (the oracle), where the
    optimized backends provide StatisticsBackend or ClusterBackend to a composition."""

    def permutation_null_reference(
        self, a: torch.Tensor, b: torch.Tensor, method: str, perms: torch.Tensor
    ) -> torch.Tensor:
        """(P, ...) statistics of a against b with b's conditions relabelled by each row of perms."""
        ...

    def noise_ceiling_reference(self, rdms: torch.Tensor, method: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(lower, upper) bounds over dim 0 of (S, ..., K) subject RDMs."""
        ...

    def cluster_test_reference(
        self, x: torch.Tensor, threshold: float, tail: int, flips: torch.Tensor
    ) -> tuple[torch.Tensor, list[tuple[int, int, float]], torch.Tensor, torch.Tensor]:
        """(t, clusters, null, p-values) of the sign-flip max-cluster-mass test."""
        ...


# The protocol the module of each registered (op, backend) provides; OP_PROTOCOLS[op] unless named here.
OP_PROTOCOLS: dict[str, type] = {
    "rdm": RDMBackend,
    "rank": RankBackend,
    "compare_rdms": CompareBackend,
    "rsa_permutation_test": StatisticsBackend,
    "noise_ceiling": StatisticsBackend,
    "cluster_permutation_test": ClusterBackend,
    "time_resolved_rsa": FusedRSABackend,
}
PROTOCOL_EXCEPTIONS: dict[tuple[str, str], type] = {
    ("rsa_permutation_test", "reference"): ReferenceStatistics,
    ("noise_ceiling", "reference"): ReferenceStatistics,
    ("cluster_permutation_test", "reference"): ReferenceStatistics,
    ("time_resolved_rsa", "torch"): ComposedRSABackend,
    ("time_resolved_rsa", "reference"): ComposedRSABackend,
}


# ----------------------------------------------------------------------------------------- numerics

# Compare methods computed from ranks: piecewise constant in the RDM values.
RANK_METHODS = ("spearman", "rho_a", "kendall_tau_a")

# Rounding errors of a sum of n terms grow like sqrt(n) eps times its largest term (a random walk; the
# centrings, pools and distances here measure within 4 sqrt(n) eps). Values spread less than this many
# times that apart are equal up to rounding: a statistic of them would be one of noise.
_ROUNDING_ULPS = 16


def all_finite(x: torch.Tensor) -> bool:
    """Whether x has no NaN/inf, in one reduction: NaN and inf propagate into the sum (an overflowing
    sum of finite values falls through to the element-wise check)."""
    if not x.is_floating_point() or math.isfinite(float(x.detach().sum())):
        return True
    return bool(torch.isfinite(x).all())


def rounding(ct: torch.dtype, terms: int, magnitude: torch.Tensor | float) -> torch.Tensor | float:
    """The rounding tolerance of values computed in ``ct`` by ``terms``-term sums of terms of at most
    ``magnitude``: values within it of each other are equal up to rounding."""
    return _ROUNDING_ULPS * torch.finfo(ct).eps * math.sqrt(terms) * magnitude


def _safe_magnitudes(dtype: torch.dtype, terms: int) -> tuple[float, float]:
    """(lo, hi) for the largest |value| of the operands of ``terms``-term sums of products in dtype
    (squared norms, Gram entries, squared distances of centred values): at most hi, no such sum (nor the
    sum of a few of them) reaches the dtype's maximum; at least lo, the products that underflow change a
    sum by at most eps relative to the square of that largest value."""
    fi = torch.finfo(dtype)
    return math.sqrt(terms * fi.tiny / fi.eps), math.sqrt(fi.max / (32 * terms))


def scale_exponents(
    maxabs: torch.Tensor, x: torch.Tensor, terms: int, *, at_most: float = math.inf
) -> torch.Tensor | None:
    """Exponents k that bring the largest |value| ``maxabs`` of each group that is not safe for
    ``terms``-term sums in x's compute dtype into [0.5, 1) by an exact power of two, 2**k (k limited so
    that 2**k and 2**-k are normal in x's dtype), 0 for the safe ones; None when every group is safe, so
    the common case copies nothing.

    at_most: groups whose largest |value| exceeds it keep k = 0.
    """
    lo, hi = _safe_magnitudes(_checks.compute_dtype(x), terms)
    limit = -math.ceil(math.log2(torch.finfo(x.dtype).tiny))
    k = _checks.magnitude_shift(maxabs, low=lo, high=hi, limit=limit).masked_fill(maxabs > at_most, 0)
    return k if bool(k.any()) else None


def operand(v: torch.Tensor, method: str) -> torch.Tensor:
    """An RDM operand (..., K) as a compare method needs it.

    Rank methods: detached. They are piecewise constant in the values (zero gradient almost everywhere,
    none at ties), so their results never claim a gradient and any backend may run them. pearson and
    cosine square the values: vectors whose sums of squares could overflow or underflow are multiplied
    by an exact power of two, which leaves both statistics unchanged (they are scale-invariant per
    vector); a norm pass decides, so the common case copies nothing.
    """
    if method in RANK_METHODS:
        return v.detach()
    ct = _checks.compute_dtype(v)
    k_terms = v.shape[-1]
    lo, hi = _safe_magnitudes(ct, k_terms)
    norms = torch.linalg.vector_norm(v.detach(), dim=-1, dtype=ct)
    # max|v| <= norm <= sqrt(K) max|v|: norms within these bounds put every max|v| within [lo, hi]
    if bool(((norms >= lo * math.sqrt(k_terms)) & (norms <= hi)).all()):
        return v
    d = v.detach()
    k = scale_exponents(torch.maximum(d.amax(-1), d.amin(-1).neg()), v, k_terms)
    return v if k is None else v * _checks.pow2(k, v.dtype)[..., None]


# ----------------------------------------------------------------------------------------- compositions


def linear_null(
    mod: StatisticsBackend, za: torch.Tensor, zb: torch.Tensor, method: str, perms: torch.Tensor, n: int
) -> torch.Tensor:
    """(P, *broadcast) permutation null of a linear method from the prepared vectors za, zb (b's
    conditions relabelled), gathering the smaller operand."""
    scale = linear_scale(method, za.shape[-1])
    if zb.numel() <= za.numel():
        return mod.permutation_null(za, zb, perms, n) * scale
    # sum_k za[k] zb[idx_pi[k]] == sum_m za[idx_pi^-1[m]] zb[m]: gather the smaller operand
    return mod.permutation_null(zb, za, perms.argsort(dim=1), n) * scale


def generic_null(
    mod: CompareBackend, a: torch.Tensor, b: torch.Tensor, method: str, perms: torch.Tensor, n: int
) -> torch.Tensor:
    """Nonlinear statistics (kendall_tau_a): ``mod.compare`` on each permuted b, a few permutations at a
    time."""
    shape = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    pad = [1] * (len(shape) - (b.dim() - 1))  # keeps the permutation dim left of the batch dims
    out = torch.empty((perms.shape[0], *shape), dtype=_checks.compute_dtype(a), device=a.device)
    step = max(1, (1 << 20) // max(b.numel(), 1))
    for s in range(0, perms.shape[0], step):
        idx = permuted_pair_indices(perms[s : s + step].to(a.device), n)
        g = b[..., idx].movedim(-2, 0)
        out[s : s + step] = mod.compare(a, g.reshape(g.shape[0], *pad, *b.shape[:-1], -1), method)
    return out


def pools(
    mod: StatisticsBackend, rdms: torch.Tensor, method: str, ranks: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | float]:
    """rsatoolbox's pool_rdm of (S, ..., K) subject RDMs: the pool of all subjects (..., K), the
    leave-one-out pools (S, ..., K), with ranks from the backend module ``mod`` (or ``ranks``, the
    rank methods' ranks of rdms when the caller has them), and how far rounding may have moved the
    pools' values (rounding(): z-scores and RMS normalisation sum K terms; pools of ranks are exact, as
    sums of half-integers in float64)."""
    s = rdms.shape[0]
    ct = _checks.compute_dtype(rdms)
    tolerance: torch.Tensor | float = 0.0
    if method in RANK_METHODS:
        pooled_in = mod.rank(rdms) if ranks is None else ranks
    else:
        r = rdms.to(ct)
        if method == "pearson":
            c = r - r.mean(-1, keepdim=True)
            pooled_in = c / c.std(-1, correction=0, keepdim=True)
        else:
            pooled_in = r / r.pow(2).mean(-1, keepdim=True).sqrt()
        z = pooled_in.detach()
        tolerance = rounding(ct, rdms.shape[-1], torch.maximum(z.amax(-1), -z.amin(-1)).amax(0))
    total = pooled_in.sum(0)
    loo = total - pooled_in
    # in place where no gradient is asked for: one (S, ..., K) tensor less to allocate and fault in
    loo = loo / (s - 1) if loo.requires_grad else loo.div_(s - 1)
    return (total / s).to(ct), loo.to(ct), tolerance


def cluster_test(
    mod: ClusterBackend, x: torch.Tensor, threshold: float, tail: int, flips: torch.Tensor
) -> tuple[torch.Tensor, list[tuple[int, int, float]], torch.Tensor, torch.Tensor]:
    """The sign-flip max-cluster-mass test with the null from ``mod.cluster_null``; returns what
    reference.cluster_test_reference returns."""
    t = one_sample_t(x)
    found = cluster_masses(t.cpu(), threshold, tail)
    null = mod.cluster_null(x, threshold, tail, flips).cpu()
    observed = torch.tensor([abs(m) for _, _, m in found], dtype=torch.float64)
    pvals = permutation_pvalue(observed, null[:, None].expand(-1, len(found)), "greater")
    return t, found, null, pvals


# The composed time-resolved path computes this many brain-RDM entries per chunk of windows.
_TRRSA_CHUNK_ELEMENTS = 1 << 24


def composed_time_resolved_rsa(
    flat: torch.Tensor,
    models: torch.Tensor,
    rdm_method: str,
    method: str,
    noise: torch.Tensor | None,
    rdm_backend: RDMBackend,
    compare_backend: CompareBackend,
) -> torch.Tensor:
    """(B, n_models) statistics of validated window patterns ``flat`` (B, [n_folds,] n, p) against
    validated models (n_models, K), a chunk of windows at a time (bounded memory): RDMs from
    ``rdm_backend``, compared by ``compare_backend``; NaN where a brain RDM is not finite (its distances
    overflowed)."""
    models = models.to(torch.promote_types(_checks.compute_dtype(flat), models.dtype))
    step = max(1, _TRRSA_CHUNK_ELEMENTS // models.shape[-1])
    parts = []
    for s in range(0, flat.shape[0], step):
        brain = rdm_backend.rdm(flat[s : s + step], rdm_method, noise)
        brain = exact_constants(brain, rdm_method, method, flat.shape[-1])
        brain = brain.to(models.dtype)
        finite = rdm_method not in ("euclidean", "crossnobis") or all_finite(brain)
        if finite:  # unscaled distances near the dtype's maximum need rescaling for pearson / cosine
            brain = operand(brain, method)
        stat = compare_backend.compare(brain[:, None, :], models[None], method)
        if not finite:  # a rank of inf is finite: mark the window, the caller names it
            stat = torch.where(torch.isfinite(brain).all(-1, keepdim=True), stat, math.nan)
        parts.append(stat)
    return torch.cat(parts)


def exact_constants(brain: torch.Tensor, rdm_method: str, method: str, n_features: int) -> torch.Tensor:
    """Brain RDMs (..., K) in the compute dtype that are all-zero, or constant for the methods that see
    constancy (all but cosine), up to the rounding of their distances made exactly so (``rdm`` applies
    it with a method that sees constancy); correlation and cosine distances within that rounding of 0 or 2
    made exactly 0 or 2 (the fused cpp kernel does the same).

    The distances are sums over n_features, of order 1 for correlation and cosine RDMs and relative to
    the RDM's largest for the others. The statistics then give what the exact RDMs give (NaN where
    undefined, which the caller names; 0 for rho_a and tau-a), not a correlation of rounding noise:
    patterns that are shifted or scaled copies of each other are a few eps apart, not 0.
    """
    d = brain.detach()
    top, bottom = d.amax(-1, keepdim=True), d.amin(-1, keepdim=True)
    if rdm_method in ("correlation", "cosine"):
        # the extreme distances too: patterns equal or opposite up to shift and scale (always so with 2
        # features: every correlation is +-1) are 0 and 2 apart exactly, computed a few eps off in
        # backend-dependent directions, which broke their ties differently per backend (rho_a 0 vs 0.5)
        near = rounding(brain.dtype, n_features, 1.0)
        if bool((bottom <= near).any() | (top >= 2 - near).any()):
            brain = torch.where(d.abs() <= near, 0.0, torch.where((d - 2).abs() <= near, 2.0, brain))
            d = brain.detach()
            top, bottom = d.amax(-1, keepdim=True), d.amin(-1, keepdim=True)
    maxabs = torch.maximum(top, -bottom)
    tolerance = rounding(brain.dtype, n_features, 1.0 if rdm_method in ("correlation", "cosine") else maxabs)
    finite = torch.isfinite(maxabs)  # distances that overflowed stay inf: the caller names them
    zero = (maxabs <= tolerance) & finite
    flat = (top - bottom <= tolerance) & finite if method != "cosine" else zero
    if not bool(flat.any() | zero.any()):
        return brain
    return torch.where(zero, 0.0, torch.where(flat, d[..., :1], brain))
