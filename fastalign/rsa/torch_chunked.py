"""RSA in vectorised PyTorch with bounded memory: the CPU default and a fallback on any device.

- RDMs: one Gram matrix per RDM accumulated over chunks of features (``_CHUNK_ELEMENTS`` per chunk), so
  200,704 features never sit in memory as a float32 copy; the condensed triangle is read out one row
  block at a time, never through (n^2)-sized index tensors.
- Ranks: one stable sort, tie groups from cumulative max/min of positions (int64 throughout: exact at
  any length), average ranks scattered back.
- Permutation statistics: RDM vectors are ranked/normalised once; each permutation is a gather of
  pair indices, and a chunk of permutations against all RDMs is one batched matrix product.
- Cluster test: sign flips as a matrix, t curves batched, cluster masses by scatter-add over run ids.

float64 inputs stay float64; other floating inputs are computed in float32.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fastalign.rsa import common

_CHUNK_ELEMENTS = 1 << 24


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 for float64 inputs, else float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _condensed_rows(gram: torch.Tensor, fn: Callable[[torch.Tensor, int, int], torch.Tensor]) -> torch.Tensor:
    """Reads the strict upper triangle of (B, n, n) row block by row block, mapping each through fn.

    ``fn(block, r0, r1)`` gets gram[:, r0:r1, :] and returns the distances of those rows (same shape).
    """
    b, n, _ = gram.shape
    out = gram.new_empty((b, common.n_pairs(n)))
    rows = max(1, min(n, (1 << 22) // max(n, 1)))
    cols = torch.arange(n, device=gram.device)
    offset = 0
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        mask = cols[None, :] > torch.arange(r0, r1, device=gram.device)[:, None]
        vals = fn(gram[:, r0:r1, :], r0, r1)[:, mask]
        out[:, offset : offset + vals.shape[1]] = vals
        offset += vals.shape[1]
    return out


def _gram(xb: torch.Tensor, ct: torch.dtype, center: str | None) -> torch.Tensor:
    """(B, n, p) -> (B, n, n) Gram matrix in ct, accumulated over feature chunks.

    center "rows" removes each pattern's mean (correlation), "columns" each feature's mean over
    conditions (euclidean: distances do not change, cancellation in ||a||^2 + ||b||^2 - 2ab does).
    """
    b, n, p = xb.shape
    gram = torch.zeros((b, n, n), dtype=ct, device=xb.device)
    row_mean = xb.sum(-1, dtype=ct, keepdim=True) / p if center == "rows" else None
    step = max(1, _CHUNK_ELEMENTS // max(b * n, 1))
    for s in range(0, p, step):
        c = xb[..., s : s + step].to(ct)
        if row_mean is not None:
            c = c - row_mean
        elif center == "columns":
            c = c - c.mean(-2, keepdim=True)
        gram.baddbmm_(c, c.transpose(-1, -2))
    return gram


def rdm(x: torch.Tensor, method: str, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Condensed RDMs (see reference.rdm_reference for the definitions and shapes)."""
    ct = compute_dtype(x)
    if method == "crossnobis":
        return _crossnobis(x, noise, ct)
    lead, (n, p) = x.shape[:-2], x.shape[-2:]
    xb = x.reshape(-1, n, p)
    center = {"correlation": "rows", "euclidean": "columns"}.get(method)
    gram = _gram(xb, ct, center)
    diag = gram.diagonal(dim1=-2, dim2=-1)
    if method in ("correlation", "cosine"):
        inv = diag.rsqrt()

        def fn(block: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
            return 1 - block * inv[:, r0:r1, None] * inv[:, None, :]
    else:

        def fn(block: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
            return (diag[:, r0:r1, None] + diag[:, None, :] - 2 * block).clamp_(min=0) / p

    return _condensed_rows(gram, fn).reshape(*lead, -1)


def _crossnobis(x: torch.Tensor, noise: torch.Tensor | None, ct: torch.dtype) -> torch.Tensor:
    """Sum over folds f of (train_i - train_j) N (test_i - test_j), with the fold kernels summed first.

    The distance is linear in each fold's kernel ``train_f N test_f^T``, so one (n, n) accumulator holds
    them all: d_ij = K_ii + K_jj - K_ij - K_ji.
    """
    lead, (n_folds, n, p) = x.shape[:-3], x.shape[-3:]
    xb = x.reshape(-1, n_folds, n, p)
    b = xb.shape[0]
    kern = torch.zeros((b, n, n), dtype=ct, device=x.device)
    step = p if noise is not None else max(1, _CHUNK_ELEMENTS // max(b * n * n_folds, 1))
    for s in range(0, p, step):
        c = xb[..., s : s + step].to(ct)
        total = c.sum(1)
        for f in range(n_folds):
            test = c[:, f]
            train = (total - test) / (n_folds - 1)
            if noise is not None:
                test = test @ noise.to(ct).T
            kern.baddbmm_(train, test.transpose(-1, -2))
    diag = kern.diagonal(dim1=-2, dim2=-1)
    kt = kern.transpose(-1, -2)

    def fn(block: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
        return (diag[:, r0:r1, None] + diag[:, None, :] - block - kt[:, r0:r1, :]) / (n_folds * p)

    return _condensed_rows(kern, fn).reshape(*lead, -1)


def rank(x: torch.Tensor) -> torch.Tensor:
    """Average ranks along the last dim (scipy.stats.rankdata), float64, exact at any length."""
    n = x.shape[-1]
    vals, order = torch.sort(x, dim=-1, stable=True)
    pos = torch.arange(n, device=x.device).expand(vals.shape)
    start = torch.ones(vals.shape, dtype=torch.bool, device=x.device)
    start[..., 1:] = vals[..., 1:] != vals[..., :-1]
    end = torch.ones_like(start)
    end[..., :-1] = start[..., 1:]
    first = torch.where(start, pos, 0).cummax(-1).values
    last = torch.where(end, pos, n).flip(-1).cummin(-1).values.flip(-1)
    avg = (first + last + 2).to(torch.float64) / 2
    return torch.empty_like(avg).scatter_(-1, order, avg)


def prepare(v: torch.Tensor, method: str, ranks: torch.Tensor | None = None) -> torch.Tensor:
    """The per-RDM vector z of a linear method: statistic(a, b) = scale * sum_k za[k] zb[k].

    spearman: centred ranks / norm; pearson: centred / norm; cosine: v / norm; rho_a: centred ranks
    (scale 12 / (K^3 - K), see :func:`linear_scale`). ``ranks`` may pass precomputed ranks of v.
    """
    ct = compute_dtype(v)
    if method in ("spearman", "rho_a"):
        z = (ranks if ranks is not None else rank(v)).to(ct)
    else:
        z = v.to(ct)
    if method != "cosine":
        z = z - z.mean(-1, keepdim=True)
    if method == "rho_a":
        return z
    return z / z.norm(dim=-1, keepdim=True)


def linear_scale(method: str, k: int) -> float:
    """The constant factor of a linear method's statistic (1 except rho_a)."""
    return 12.0 / (k**3 - k) if method == "rho_a" else 1.0


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_k a[..., k] b[..., k] with broadcasting, as batched matrix products."""
    return torch.einsum("...k,...k->...", a, b)


def _tau_a(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Kendall's tau-a by sign products, one block of pairs at a time (O(K^2) work, O(chunk) memory)."""
    a, b = torch.broadcast_tensors(a, b)
    lead, k = a.shape[:-1], a.shape[-1]
    ab, bb = a.reshape(-1, k), b.reshape(-1, k)
    total = torch.zeros(ab.shape[0], dtype=torch.int64, device=a.device)
    step = max(1, _CHUNK_ELEMENTS // max(ab.shape[0] * k, 1))
    for s in range(0, k, step):
        sa = torch.sign(ab[:, s : s + step, None] - ab[:, None, :])
        sb = torch.sign(bb[:, s : s + step, None] - bb[:, None, :])
        total += (sa * sb).sum((-2, -1), dtype=torch.int64)
    return ((total // 2).to(compute_dtype(a)) / common.n_pairs(k)).reshape(lead)


def compare(a: torch.Tensor, b: torch.Tensor, method: str) -> torch.Tensor:
    """RDM similarities broadcast over leading dims (see reference.compare_reference)."""
    if method == "kendall_tau_a":
        return _tau_a(a, b)
    return _dot(prepare(a, method), prepare(b, method)) * linear_scale(method, a.shape[-1])


def permutation_null(fixed: torch.Tensor, moving: torch.Tensor, perms: torch.Tensor, n: int) -> torch.Tensor:
    """(P, *broadcast) with entry p = sum_k fixed[..., k] * moving[..., idx_p[k]].

    idx_p are the condensed indices of permutation p (common.permuted_pair_indices); permutations are
    processed in chunks so the gathered copies of ``moving`` stay within ``_CHUNK_ELEMENTS``.
    """
    k = moving.shape[-1]
    shape = torch.broadcast_shapes(fixed.shape[:-1], moving.shape[:-1])
    pad = [1] * (len(shape) - (moving.dim() - 1))  # keeps the permutation dim left of the batch dims
    out = torch.empty((perms.shape[0], *shape), dtype=fixed.dtype, device=fixed.device)
    step = max(1, _CHUNK_ELEMENTS // max(moving.numel(), k))
    perms = perms.to(fixed.device)
    for s in range(0, perms.shape[0], step):
        idx = common.permuted_pair_indices(perms[s : s + step], n)
        g = moving[..., idx].movedim(-2, 0)  # (Pc, *moving_lead, K)
        out[s : s + step] = _dot(fixed, g.reshape(g.shape[0], *pad, *moving.shape[:-1], k))
    return out


def _max_run_mass(v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Largest sum of v over a maximal run of True in mask, per row of (P, T); 0 when there is none."""
    start = mask.clone()
    start[:, 1:] &= ~mask[:, :-1]
    run = start.cumsum(1) * mask  # 0 outside runs, 1..R inside
    sums = torch.zeros((v.shape[0], v.shape[1] + 1), dtype=v.dtype, device=v.device)
    sums.scatter_add_(1, run, torch.where(mask, v, 0))
    return sums[:, 1:].amax(1).clamp_(min=0)


def cluster_null(x: torch.Tensor, threshold: float, tail: int, flips: torch.Tensor) -> torch.Tensor:
    """(P,) max cluster mass of the t curve of each sign-flipped x (n_subjects, n_times).

    Positive clusters are runs of t > threshold with mass sum(t); negative ones runs of t < -threshold
    with mass sum(-t); tail 0 takes the larger of both (threshold must be positive).
    """
    out = torch.empty(flips.shape[0], dtype=x.dtype, device=x.device)
    flips = flips.to(device=x.device, dtype=x.dtype)
    step = max(1, _CHUNK_ELEMENTS // max(x.numel(), 1))
    for s in range(0, flips.shape[0], step):
        t = common.one_sample_t(flips[s : s + step, :, None] * x)
        best = torch.zeros(t.shape[0], dtype=x.dtype, device=x.device)
        if tail >= 0:
            best = torch.maximum(best, _max_run_mass(t, t > threshold))
        if tail <= 0:
            best = torch.maximum(best, _max_run_mass(-t, t < -threshold))
        out[s : s + step] = best
    return out
