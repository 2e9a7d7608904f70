"""The oracle for RSA: readable eager PyTorch that defines the semantics every backend must match.

The ``*_reference`` functions work in the inputs' dtype (use float64 for exactness), on any device, and
follow rsatoolbox's definitions (rdm methods, compare methods, condensed vectors, noise-ceiling pooling).
They materialise what they need (pairwise differences, comparison matrices, one permuted RDM at a time)
and are meant for small inputs and tests; the public functions validate inputs before calling these.
``rdm``, ``rank`` and ``compare`` are the same oracle behind the backend protocols
(fastalign.rsa.common), in the compute dtype as every backend computes; for the statistics the
reference runs whole tests (common.ReferenceStatistics).
"""

from __future__ import annotations

import torch

from fastalign import _checks
from fastalign.rsa import common


def rdm_reference(x: torch.Tensor, method: str, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Condensed RDMs, directly from pairwise differences / normalised patterns.

    Args:
        x: (..., n_conditions, n_features); for "crossnobis" (..., n_folds, n_conditions, n_features),
            the per-fold condition patterns.
        method: "correlation" (1 - Pearson r), "cosine" (1 - cosine similarity), "euclidean" (squared
            Euclidean distance / n_features) or "crossnobis" (leave-one-fold-out cross-validated squared
            Mahalanobis distance / n_features, rsatoolbox's calc_rdm_crossnobis).
        noise: (n_features, n_features) noise precision for "crossnobis" (None: identity).

    Returns:
        (..., n_conditions * (n_conditions - 1) / 2).
    """
    n = x.shape[-2]
    i, j = common.triu_indices(n, x.device)
    p = x.shape[-1]
    if method in ("correlation", "cosine"):
        # centred in float64, then back to x's dtype: a mean summed in float32 can be off by a large share
        # of the spread of patterns far from zero (float32 values near 1e6 varying by 1); centred twice:
        # the mean of float64 values near 1e15 is itself off by a share of a spread of 1, which the mean of
        # the (exact) differences takes out
        z = x
        if method == "correlation":
            wide = x.double()
            centred = wide - wide.mean(-1, keepdim=True)
            z = (centred - centred.mean(-1, keepdim=True)).to(x.dtype)
        z = z / z.norm(dim=-1, keepdim=True)
        return 1 - (z[..., i, :] * z[..., j, :]).sum(-1)
    if method == "euclidean":
        d = x[..., i, :] - x[..., j, :]
        return (d * d).sum(-1) / p
    if method == "crossnobis":
        n_folds = x.shape[-3]
        total = x.sum(-3)
        out = x.new_zeros((*x.shape[:-3], i.numel()))
        for f in range(n_folds):
            test = x[..., f, :, :]
            train = (total - test) / (n_folds - 1)
            d_train = train[..., i, :] - train[..., j, :]
            d_test = test[..., i, :] - test[..., j, :]
            if noise is not None:
                d_test = d_test @ noise.T
            out = out + (d_train * d_test).sum(-1)
        return out / (n_folds * p)
    raise ValueError(f"rdm_reference: unknown method {method!r}")


def rank_reference(x: torch.Tensor) -> torch.Tensor:
    """Average ranks along the last dim (scipy.stats.rankdata's "average"), float64.

    ``rank_i = #{j: x_j < x_i} + (#{j: x_j == x_i} + 1) / 2``, counted in int64, one row block at a
    time (O(n^2) work: for tests).
    """
    n = x.shape[-1]
    out = torch.empty(x.shape, dtype=torch.float64, device=x.device)
    step = max(1, (1 << 22) // max(n, 1))
    for s in range(0, n, step):
        xi = x[..., s : s + step, None]
        less = (x[..., None, :] < xi).sum(-1, dtype=torch.int64)
        equal = (x[..., None, :] == xi).sum(-1, dtype=torch.int64)
        out[..., s : s + step] = (2 * less + equal + 1).to(torch.float64) / 2
    return out


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


def _centered(v: torch.Tensor) -> torch.Tensor:
    return v - v.mean(-1, keepdim=True)


def _tau_a(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Kendall's tau-a: sum over pairs k < l of sign(a_k - a_l) sign(b_k - b_l), over K(K-1)/2."""
    a, b = torch.broadcast_tensors(a, b)
    k = a.shape[-1]
    total = torch.zeros(a.shape[:-1], dtype=torch.int64, device=a.device)
    step = max(1, (1 << 22) // max(k, 1))
    for s in range(0, k, step):
        sa = torch.sign(a[..., s : s + step, None] - a[..., None, :])
        sb = torch.sign(b[..., s : s + step, None] - b[..., None, :])
        total += (sa * sb).sum((-2, -1)).round().to(torch.int64)
    # every unordered pair was counted twice (k, l) and (l, k) with the same product
    return (total // 2).to(a.dtype) / common.n_pairs(k)


def compare_reference(a: torch.Tensor, b: torch.Tensor, method: str) -> torch.Tensor:
    """Similarity of RDM vectors a (..., K) and b (..., K), broadcast over the leading dims.

    Definitions are rsatoolbox's (rdm.compare): "pearson" (its "corr"), "spearman" (Pearson r of
    average ranks), "rho_a" (``12 * sum(rc_a * rc_b) / (K^3 - K)`` with centred ranks rc; equal to
    1 - 6 sum(d^2) / (K^3 - K) without ties), "kendall_tau_a" (concordant minus discordant pairs over
    K(K-1)/2, ties counting zero) and "cosine".
    """
    if method == "cosine":
        return _cosine(a, b)
    if method == "pearson":
        return _cosine(_centered(a), _centered(b))
    if method == "kendall_tau_a":
        return _tau_a(a, b)
    ra, rb = rank_reference(a).to(a.dtype), rank_reference(b).to(b.dtype)
    if method == "spearman":
        return _cosine(_centered(ra), _centered(rb))
    if method == "rho_a":
        k = a.shape[-1]
        return (_centered(ra) * _centered(rb)).sum(-1) * 12 / (k**3 - k)
    raise ValueError(f"compare_reference: unknown method {method!r}")


def rdm(x: torch.Tensor, method: str, noise: torch.Tensor | None = None) -> torch.Tensor:
    """rdm_reference in the compute dtype (common.RDMBackend)."""
    ct = _checks.compute_dtype(x)
    return rdm_reference(x.to(ct), method, None if noise is None else noise.to(ct))


rank = rank_reference


def compare(a: torch.Tensor, b: torch.Tensor, method: str) -> torch.Tensor:
    """compare_reference in the compute dtype of a, which b shares (common.CompareBackend)."""
    ct = _checks.compute_dtype(a)
    return compare_reference(a.to(ct), b.to(ct), method)


def permutation_null_reference(
    a: torch.Tensor, b: torch.Tensor, method: str, perms: torch.Tensor
) -> torch.Tensor:
    """(P, ...) statistics of a against b with b's conditions relabelled by each row of ``perms``.

    One permuted RDM at a time: ``compare_reference(a, b[..., idx_p], method)``.
    """
    n = perms.shape[1]
    idx = common.permuted_pair_indices(perms.to(a.device), n)
    return torch.stack([compare_reference(a, b[..., idx[p]], method) for p in range(idx.shape[0])])


def _max_mass(clusters: list[tuple[int, int, float]], tail: int) -> float:
    masses = [m * (-1 if tail == -1 else 1) for _, _, m in clusters]
    if tail == 0:
        masses = [abs(m) for m in masses]
    return max(masses, default=0.0)


def cluster_test_reference(
    x: torch.Tensor, threshold: float, tail: int, flips: torch.Tensor
) -> tuple[torch.Tensor, list[tuple[int, int, float]], torch.Tensor, torch.Tensor]:
    """Sign-flip max-cluster-mass test (Maris & Oostenveld 2007), one permutation at a time.

    Args:
        x: (n_subjects, n_times) effects.
        threshold: cluster-forming threshold on the one-sample t statistic (positive).
        tail: 1, -1 or 0 (two-sided, clusters of either sign, compared by |mass|).
        flips: (P, n_subjects) signs.

    Returns:
        (t (n_times,), clusters [(start, stop, mass)], null (P,) max |mass| per flip, p-values of the
        clusters with the +1 correction).
    """
    t = common.one_sample_t(x)
    clusters = common.cluster_masses(t, threshold, tail)
    null_values = []
    for f in flips:
        t_flip = common.one_sample_t(x * f[:, None].to(x.dtype))
        null_values.append(_max_mass(common.cluster_masses(t_flip, threshold, tail), tail))
    null = torch.tensor(null_values, dtype=torch.float64)
    observed = torch.tensor([_max_mass([c], tail) for c in clusters], dtype=torch.float64)
    pvals = common.permutation_pvalue(observed, null[:, None].expand(-1, len(clusters)), "greater")
    return t, clusters, null, pvals


def pool_rdms_reference(rdms: torch.Tensor, method: str) -> torch.Tensor:
    """rsatoolbox's pool_rdm over dim 0: the RDM a comparison method rewards most.

    spearman / rho_a / kendall_tau_a: mean of ranks; pearson: mean of z-scored RDMs (population std);
    cosine: mean of RDMs divided by their root mean square.
    """
    if method in ("spearman", "rho_a", "kendall_tau_a"):
        return rank_reference(rdms).to(rdms.dtype).mean(0)
    if method == "pearson":
        c = _centered(rdms)
        return (c / c.std(-1, correction=0, keepdim=True)).mean(0)
    if method == "cosine":
        return (rdms / rdms.pow(2).mean(-1, keepdim=True).sqrt()).mean(0)
    raise ValueError(f"pool_rdms_reference: unknown method {method!r}")


def _without(rdms: torch.Tensor, i: int) -> torch.Tensor:
    return torch.cat([rdms[:i], rdms[i + 1 :]])


def noise_ceiling_reference(rdms: torch.Tensor, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(lower, upper) bounds, as rsatoolbox.inference.boot_noise_ceiling, over dim 0 of (S, ..., K)."""
    s = rdms.shape[0]
    pooled = pool_rdms_reference(rdms, method)
    upper = torch.stack([compare_reference(pooled, rdms[i], method) for i in range(s)]).mean(0)
    lower = torch.stack(
        [compare_reference(pool_rdms_reference(_without(rdms, i), method), rdms[i], method) for i in range(s)]
    ).mean(0)
    return lower, upper
