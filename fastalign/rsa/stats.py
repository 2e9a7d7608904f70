"""RSA statistics: condition-label permutation tests, the cluster test over time, noise ceilings
(rsatoolbox's ``inference``).

Each public function validates its inputs (with the checks of fastalign.rsa.api), chooses a backend and
runs it: the reference runs the whole test one permutation at a time (the oracle); the other backends
provide the functions of common.StatisticsBackend / common.ClusterBackend, from which the compositions
of fastalign.rsa.common assemble the result. Permutations and sign flips are drawn on the CPU from the
seed, so every backend and device sees the same ones. p-values are counts: the tests detach their
inputs and never claim a gradient; noise_ceiling's "pearson" and "cosine" bounds are differentiable on
the reference and torch backends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch

from fastalign import _backend, _checks
from fastalign.rsa import common, reference
from fastalign.rsa.api import (
    _CPP,
    _CPP_OPS,
    _CUDA,
    _CUDA_OPS,
    _REFERENCE,
    _TORCH,
    _checked,
    _cuda_linear_methods,
    _finite,
    _n_from_pairs,
    _nonconstant,
    _rdm_dispatch,
    _rdm_pair,
    _rounded_constants,
    _tensor,
    _windows,
    time_resolved_rdms,
)

_perm_dispatch = _backend.dispatcher("rsa_permutation_test")
_cluster_dispatch = _backend.dispatcher("cluster_permutation_test")
_nc_dispatch = _backend.dispatcher("noise_ceiling")
# In auto's order of preference; the compiled kernels have no backward (see fastalign._backend).
_perm_dispatch.register("cuda", _cuda_linear_methods, module=_CUDA, ops=_CUDA_OPS, differentiable=False)
_perm_dispatch.register("cpp", module=_CPP, ops=_CPP_OPS, differentiable=False)
_perm_dispatch.register("torch", module=_TORCH)
_perm_dispatch.register("reference", module=_REFERENCE, auto=False)
_cluster_dispatch.register("cpp", module=_CPP, ops=_CPP_OPS, differentiable=False)
_cluster_dispatch.register("torch", module=_TORCH)
_cluster_dispatch.register("reference", module=_REFERENCE, auto=False)
_nc_dispatch.register("cuda", _cuda_linear_methods, module=_CUDA, ops=_CUDA_OPS, differentiable=False)
_nc_dispatch.register("cpp", module=_CPP, ops=_CPP_OPS, differentiable=False)
_nc_dispatch.register("torch", module=_TORCH)
_nc_dispatch.register("reference", module=_REFERENCE, auto=False)


# ----------------------------------------------------------------------------------------- permutation tests


@dataclass
class PermutationResult:
    """Result of :func:`rsa_permutation_test`.

    Attributes:
        statistic: (...) the observed similarities (as :func:`compare_rdms`).
        pvalue: (...) ``(1 + #{null at least as extreme}) / (1 + n_null)``.
        null: (n_null, ...) the permutation distribution, or None unless ``return_null``.
        exact: whether the null holds every permutation but the identity (n_null = n! - 1; then the
            p-values are exact: the fraction of all n! relabellings whose statistic is as extreme).
    """

    statistic: torch.Tensor
    pvalue: torch.Tensor
    null: torch.Tensor | None = None
    exact: bool = False


def rsa_permutation_test(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    method: str = "spearman",
    n_permutations: int = 10000,
    alternative: str = "greater",
    seed: int | None = None,
    return_null: bool = False,
    backend: str = "auto",
) -> PermutationResult:
    """Condition-label permutation test of RDM similarity, batched over leading dims.

    Each permutation relabels b's conditions (rows and columns together); the same permutations are
    used for every RDM in the batch. For the linear methods (spearman, pearson, rho_a, cosine) ranks and
    normalisation are computed once and each permutation is a gather of pair indices followed by dot
    products; "kendall_tau_a" recomputes the statistic per permutation (O(K^2) each). Null values within
    100 * eps * max(|statistic|, 1) of the observed statistic count as ties (scipy.stats.permutation_test's
    relative tolerance, and at least that absolutely: a relabelling that gives the same statistic in
    exact arithmetic is a tie also where that statistic is 0).

    Args:
        a: (..., n_pairs) condensed RDMs, e.g. brain RDMs (n_times, 1, n_subjects, K).
        b: (..., n_pairs) condensed RDMs broadcastable with a, e.g. model RDMs (1, n_layers, 1, K).
        method: as :func:`compare_rdms`.
        n_permutations: number of random permutations (>= 1). When the n conditions have at most
            n_permutations + 1 orders (n! of them: 5,040 for 7 conditions) and n <= 8, every order is
            used once instead (an exact test, ``result.exact``; seed plays no part); 9 or more
            conditions are always drawn (9! = 362,880 orders).
        alternative: "greater" (similarity above chance), "less" or "two-sided".
        seed: an int in [0, 2**63 - 1] seeding the permutations (drawn on the CPU, identical across
            backends and devices), or None for a fresh seed.
        return_null: also return the (n_null, ...) null distribution (n_null: n_permutations, or n! - 1
            when exact).
        backend: "auto", "reference", "torch", "cpp" (CPU; kendall_tau_a in O(K log K) per permutation) or
            "cuda" (linear methods).

    Returns:
        A :class:`PermutationResult`. Not differentiable (p-values are counts): a and b are detached;
        use :func:`compare_rdms` for a differentiable statistic.

    Raises:
        TypeError: a seed or n_permutations that is not an int (numpy ints are ints; bools are not).
        ValueError: a seed outside [0, 2**63 - 1], and bad RDMs as :func:`compare_rdms`.
    """
    fn = "rsa_permutation_test"
    backend = _checks.check_choice(fn, "backend", backend, _backend.BACKENDS)
    return_null = _checks.check_bool(fn, "return_null", return_null)
    method = _checks.check_choice(fn, "method", method, common.COMPARE_METHODS)
    alternative = _checks.check_choice(fn, "alternative", alternative, common.ALTERNATIVES)
    n_perm = _checks.check_int(fn, "n_permutations", n_permutations, minimum=1)
    seed = _checks.check_seed(fn, seed)
    a, b, n, _ = _rdm_pair(fn, a, b, allow_nan=False)
    a, b = common.operand(a.detach(), method), common.operand(b.detach(), method)
    _rounded_constants(fn, a, b, method)
    chosen = _perm_dispatch.choose(backend, a, b, method)
    perms, exact = common.permutations(n, n_perm, seed)
    if chosen == "reference":
        ct = _checks.compute_dtype(a)
        a, b = a.to(ct), b.to(ct)
        observed = reference.compare_reference(a, b, method)
        null = reference.permutation_null_reference(a, b, method, perms)
    elif method not in common.LINEAR_METHODS:
        mod = _perm_dispatch.module(chosen)
        observed = _checked(fn, mod.compare(a, b, method), a, b, method)
        null = common.generic_null(mod, a, b, method, perms, n)
    else:
        # ranks and norms once; each permutation is then a gather and dot products (common.linear_null)
        mod = _perm_dispatch.module(chosen)
        za, zb = mod.prepare(a, method), mod.prepare(b, method)
        observed = _checked(fn, common.dot(za, zb) * common.linear_scale(method, a.shape[-1]), a, b, method)
        null = common.linear_null(mod, za, zb, method, perms, n)
    observed = _checked(fn, observed, a, b, method)
    pvalue = common.permutation_pvalue(observed, null, alternative, unit_scale=True)
    return PermutationResult(observed, pvalue, null if return_null else None, exact)


@dataclass
class ClusterResult:
    """Result of :func:`cluster_permutation_test`.

    Attributes:
        t_values: (n_times,) one-sample t statistic of the effects at each time point.
        clusters: one ``slice(start, stop)`` of time indices per cluster, in time order.
        masses: (n_clusters,) sum of t over each cluster (negative for negative clusters).
        pvalues: (n_clusters,) ``(1 + #{null max mass >= |mass|}) / (1 + n_flips)``: the identity flip
            (the data as observed) is counted once, by the 1.
        null: (n_flips,) the maximum cluster mass (|mass| for tail 0) of each sign flip other than the
            identity.
        threshold: the cluster-forming t threshold used.
        exact: whether ``null`` holds every distinct sign flip (then the p-values are exact: the
            fraction of all 2^n_subjects flips, the identity included, whose maximum reaches the mass).
    """

    t_values: torch.Tensor
    clusters: list[slice]
    masses: torch.Tensor
    pvalues: torch.Tensor
    null: torch.Tensor
    threshold: float
    exact: bool = False


def cluster_permutation_test(
    x: torch.Tensor,
    *,
    threshold: float | None = None,
    n_permutations: int = 1000,
    tail: int = 1,
    seed: int | None = None,
    backend: str = "auto",
) -> ClusterResult:
    """Sign-flip max-cluster-mass test across time (Maris & Oostenveld 2007), as MNE's 1-sample test.

    Under the null each subject's effect curve is symmetric around zero, so each permutation flips the
    sign of whole subjects, recomputes the one-sample t curve, finds clusters (maximal runs of time points
    with t beyond the threshold; tail 0 keeps positive and negative runs apart) and records the largest
    cluster mass (sum of t; |sum| for tail 0). Each observed cluster's p-value is the +1-corrected
    fraction of permutations whose maximum reaches its mass, which controls the family-wise error over
    time.

    With few subjects the null is small: 2^n_subjects flips, of which 2^(n_subjects - 1) differ for
    tail 0 (f and -f give the same |mass|). When the distinct flips other than the identity are no more
    than ``n_permutations``, all of them are enumerated (the all-negative flip included; the identity
    is counted once, by the +1), so the p-value is the exact fraction of all flips whose maximum reaches
    the mass, and ``ClusterResult.exact`` is True. (MNE's exact one-tailed null holds the identity twice
    and lacks the all-negative flip, so its p-values can be 2^-n_subjects off, mostly higher; lower
    where that flip turns a cluster of the other sign into one outweighing the tested one.) Otherwise
    ``n_permutations`` distinct flips other than the identity are drawn uniformly at random; beyond 62
    subjects (63 for tail 0), where a repeat is unlikely (< n_permutations^2 / 2^63), they are drawn
    independently.

    Args:
        x: (n_subjects, n_times) effects, e.g. model-brain similarity minus a baseline; n_subjects >= 2.
        threshold: positive t threshold forming clusters; None: the t quantile at p = 0.05 with
            n_subjects - 1 degrees of freedom (one-sided for tail +-1, 0.025 per side for tail 0), MNE's
            default.
        n_permutations: sign flips drawn at random (>= 1), or at least the number of distinct flips
            other than the identity (2^n_subjects - 1; 2^(n_subjects - 1) - 1 for tail 0) to enumerate
            them all (an exact test).
        tail: 1 (positive effects), -1 (negative) or 0 (both).
        seed: an int in [0, 2**63 - 1] seeding the sign flips (drawn on the CPU), or None.
        backend: "auto", "reference", "torch" or "cpp" (CPU tensors: each flip's t curve and clusters in
            a per-thread buffer; 10 subjects x 100 time points, 1,023 flips: the null 6-8x, the whole
            test 4-8x faster than the torch backend).

    Returns:
        A :class:`ClusterResult` (computed in float64). Not differentiable: x is detached. t at a time
        point does not depend on the scale of its effects: time points whose sums of squares would
        overflow or underflow float64 (near 1e200 or 1e-170) are multiplied by an exact power of two.

    Raises:
        TypeError: a seed, tail or n_permutations that is not an int, or a threshold that is not a real
            number (numpy ints and floats are accepted; bools are not).
        ValueError: a seed outside [0, 2**63 - 1], x not (n_subjects >= 2, n_times), NaN/inf, a time
            point without variance across subjects (values equal up to rounding count as equal), or a
            bad threshold / tail / n_permutations value.
    """
    fn = "cluster_permutation_test"
    backend = _checks.check_choice(fn, "backend", backend, _backend.BACKENDS)
    x = _tensor(fn, "x", x)
    if x.dim() != 2:
        raise ValueError(f"{fn}: x must have shape (n_subjects, n_times), got {tuple(x.shape)}")
    if x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(f"{fn}: x needs at least 2 subjects and 1 time point, got shape {tuple(x.shape)}")
    x = x.detach().to(torch.float64)
    _finite(fn, "x", x)
    tail = _checks.check_int(fn, "tail", tail, expected="1, -1 or 0")
    if tail not in (1, -1, 0):
        raise ValueError(_checks.message(fn, "tail", "1, -1 or 0", tail))
    n_perm = _checks.check_int(fn, "n_permutations", n_permutations, minimum=1)
    seed = _checks.check_seed(fn, seed)
    threshold = _checks.check_real(
        fn, "threshold", threshold, positive=True, none=True, expected="a positive finite number or None"
    )
    if threshold is None:
        from scipy.stats import t as student_t

        threshold = float(student_t.ppf(1 - (0.05 if tail != 0 else 0.025), x.shape[0] - 1))
    x = _scaled_effects(x)
    top, bottom = x.amax(0), x.amin(0)
    flat = top - bottom <= common.rounding(x.dtype, x.shape[0], torch.maximum(top, -bottom))
    if bool(flat.any()):
        raise ValueError(
            f"{fn}: x has zero variance across subjects at time index {int(flat.nonzero()[0, 0])} (its "
            "values are equal up to rounding); t is undefined there"
        )
    chosen = _cluster_dispatch.choose(backend, x)
    flips, exact = _sign_flips(x.shape[0], n_perm, tail, seed)
    if chosen == "reference":
        t, found, null, pvals = reference.cluster_test_reference(x, threshold, tail, flips)
    else:
        t, found, null, pvals = common.cluster_test(
            _cluster_dispatch.module(chosen), x, threshold, tail, flips
        )
    masses = torch.tensor([m for _, _, m in found], dtype=torch.float64)
    return ClusterResult(t, [slice(s, e) for s, e, _ in found], masses, pvals, null, threshold, exact)


# Beyond this many free subjects flips are drawn independently (codes of them no longer fit an int64).
_MAX_CODED_SUBJECTS = 62


def _sign_flips(
    n_subjects: int, n_permutations: int, tail: int, seed: int | None
) -> tuple[torch.Tensor, bool]:
    """((n_flips, n_subjects) float64 signs, exact) of the sign-flip null, the identity left out.

    A flip is coded by an integer whose bit k flips subject k. For tail 0 the last subject is never
    flipped: f and -f give the same |mass|, so each pair is represented once and the identity's mirror
    (the all-negative flip) is left out with it. Exact: every code 1 .. 2^free - 1 once; else
    ``n_permutations`` distinct codes in random order.
    """
    free = n_subjects - (tail == 0)
    if free > _MAX_CODED_SUBJECTS:
        return common.sign_flips(n_subjects, n_permutations, seed), False
    n_codes = 1 << free
    exact = n_codes - 1 <= n_permutations
    codes = torch.arange(1, n_codes) if exact else _distinct_codes(n_codes, n_permutations, seed)
    bits = (codes[:, None] >> torch.arange(n_subjects)) & 1
    return (1 - 2 * bits).to(torch.float64), exact


def _distinct_codes(n_codes: int, count: int, seed: int | None) -> torch.Tensor:
    """``count`` (< n_codes - 1) distinct integers drawn uniformly from [1, n_codes), in draw order."""
    gen = common._generator(seed)
    if 4 * count >= n_codes:  # a shuffle of all codes costs at most 4 times the draws
        return torch.randperm(n_codes - 1, generator=gen)[:count] + 1
    # Draw until count distinct codes have appeared, keeping each code's first draw (rejection
    # sampling: a uniform sample without replacement). Under 1/4 of the codes are taken, so a round
    # repeats an earlier code less than 1/4 of the time.
    drawn = torch.empty(0, dtype=torch.int64)
    n_distinct = 0
    while n_distinct < count:
        more = torch.randint(1, n_codes, ((count - n_distinct) * 5 // 4 + 8,), generator=gen)
        drawn = torch.cat([drawn, more])
        unique, inverse = torch.unique(drawn, return_inverse=True)
        n_distinct = len(unique)
    order = torch.arange(len(drawn))
    first = torch.full((n_distinct,), len(drawn)).scatter_reduce_(0, inverse, order, "amin")
    return drawn[first.sort().values[:count]]


def _scaled_effects(x: torch.Tensor) -> torch.Tensor:
    """(n_subjects, n_times) float64 effects with each time point multiplied by an exact power of two
    where its sums of squares could overflow or underflow (near 1e200 or 1e-170): t at a time point,
    and so every sign flip's, does not depend on the scale of its effects."""
    k = common.scale_exponents(x.abs().amax(0), x, x.shape[0])
    return x if k is None else x * _checks.pow2(k, x.dtype)


# ----------------------------------------------------------------------------------------- noise ceiling


def noise_ceiling(
    rdms: torch.Tensor, method: str = "spearman", *, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper bounds on the similarity a model can reach, from a stack of subject RDMs.

    As rsatoolbox.inference.boot_noise_ceiling: the upper bound is the mean over subjects of the
    similarity between the subject's RDM and the pooled RDM of all subjects, the lower bound the same
    with the pool of all other subjects (leave one out). Pooling is rsatoolbox's pool_rdm: the mean of
    ranks for the rank methods, of z-scored RDMs for "pearson", of RMS-normalised RDMs for "cosine".

    Args:
        rdms: (n_subjects, ..., n_pairs) condensed RDMs, n_subjects >= 2. Each ceiling (each index of
            the dims between subjects and pairs, e.g. a time point) drops the entries NaN in any of its
            subjects' RDMs (rsatoolbox's masking, per ceiling: a batch equals a loop over its ceilings);
            inf is refused.
        method: as :func:`compare_rdms`.
        backend: "auto", "reference", "torch", "cpp" or "cuda" (as :func:`compare_rdms`).

    Returns:
        (lower, upper), each of shape rdms.shape[1:-1]. "pearson" and "cosine" are differentiable in
        rdms on "reference" and "torch" (cpp and cuda have no backward); the rank methods detach rdms.

    Raises:
        ValueError: bad shapes, inf, fewer than 2 entries without NaN, a constant subject RDM, or a
            constant (all-zero for "cosine") pooled RDM, for which "pearson" / "spearman" / "cosine" are
            undefined (as in :func:`compare_rdms`). Pools of z-scored or RMS-normalised RDMs that are
            constant (all-zero) up to the rounding of the normalisation count as constant: subjects r and
            1 - r pool to rounding noise, not to an RDM with a defined correlation. Pools of ranks are
            exact.
    """
    lower, upper, _ = _ceiling_chunks("noise_ceiling", rdms, method, backend, None)
    return lower, upper


def spearman_rsa_and_noise_ceiling(
    rdms: torch.Tensor, models: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``compare_rdms(rdms[..., None, :], models, "spearman")`` and ``noise_ceiling(rdms, "spearman")``
    with each subject RDM ranked once, for both (what an evaluation over time needs: 10 subjects x 100
    time points x 19,900 pairs, 44 model RDMs: the second ranking was a third of the work). Used by
    :func:`fastalign.eval.evaluate`; not exported by ``fastalign.rsa``.

    Args:
        rdms: (n_subjects >= 2, ..., n_pairs) subject RDMs, as for :func:`noise_ceiling`.
        models: (n_models, n_pairs) model RDMs.

    Returns:
        (similarities (n_subjects, ..., n_models), lower, upper) as the two calls return them, computed
        in the wider working dtype of the two inputs (float64 when either is float64; sums in another
        order may differ in the last bits).

    Raises:
        ValueError: what the two calls raise, naming this function and ``rdms`` or ``models``.
    """
    fn = "spearman_rsa_and_noise_ceiling"
    rdms = _checks.exact_float(fn, "rdms", _tensor(fn, "rdms", rdms))
    models = _checks.exact_float(fn, "models", _tensor(fn, "models", models))
    if rdms.dim() < 2:
        raise ValueError(f"{fn}: rdms must have shape (n_subjects >= 2, ..., K), got {tuple(rdms.shape)}")
    if models.dim() != 2 or models.shape[-1] != rdms.shape[-1]:
        raise ValueError(
            f"{fn}: models must have shape (n_models, n_pairs) with the n_pairs of rdms "
            f"{tuple(rdms.shape)}, got {tuple(models.shape)}"
        )
    # one working dtype for both, as compare_rdms promotes its operands
    ct = torch.promote_types(_checks.compute_dtype(rdms), _checks.compute_dtype(models))
    rdms, models = rdms.to(ct), models.to(ct)
    _finite(fn, "models", models)
    models = common.operand(models, "spearman")
    _nonconstant(fn, "models", models, "spearman")
    lower, upper, sims = _ceiling_chunks(fn, rdms, "spearman", "auto", models)
    assert sims is not None
    return sims, lower, upper


def time_resolved_spearman_and_noise_ceiling(
    data: torch.Tensor, models: torch.Tensor, rdm_method: str = "correlation", window: int = 1, step: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``spearman_rsa_and_noise_ceiling(time_resolved_rdms(data, rdm_method, window, step), models)``, with
    the brain RDMs computed and ranked in one fused pass where the compiled kernels compute both
    (rsa_rdm_spearman_ceiling: float32 / float64 CPU data whose windows have few features, RDMs compared
    in float64): each window's RDM lives in a per-thread buffer, no (n_subjects, n_windows, n_pairs) RDMs
    are stored (10 subjects x 100 time points x 200 conditions x 17 channels, 8 models, 2 threads of a
    Xeon: 0.29 -> 0.18 s). The same results, bit for bit; inputs the fused pass cannot take and every
    error go through the two calls. Used by :func:`fastalign.eval.evaluate`; not exported by
    ``fastalign.rsa``.

    Args:
        data: (n_subjects >= 2, ..., n_conditions, n_channels, n_times), as :func:`time_resolved_rdms`.
        models: (n_models, n_pairs) model RDMs.
        rdm_method, window, step: as :func:`time_resolved_rdms`.

    Returns:
        (similarities (n_subjects, ..., n_windows, n_models), lower, upper (..., n_windows)), as
        :func:`spearman_rsa_and_noise_ceiling` returns them.

    Raises:
        ValueError: what the two calls raise.
    """
    fused = _fused_time_resolved_ceiling(data, models, rdm_method, window, step)
    if fused is not None:
        return fused
    return spearman_rsa_and_noise_ceiling(time_resolved_rdms(data, rdm_method, window, step), models)


_FUSED_RDM_CODES = {"correlation": 0, "cosine": 1, "euclidean": 2}


def _fused_time_resolved_ceiling(
    data: object, models: object, rdm_method: str, window: int, step: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """time_resolved_spearman_and_noise_ceiling's result from rsa_rdm_spearman_ceiling, or None where the
    composed calls would not compute it with the same kernels (the cpp RDMs and the cpp ceiling in
    float64), or where it is not finite (a refused pattern, a constant RDM or pool): the composed calls
    then compute it or name what they refuse."""
    fn = "time_resolved_spearman_and_noise_ceiling"
    if not isinstance(data, torch.Tensor) or not isinstance(models, torch.Tensor):
        return None
    if (
        rdm_method not in _FUSED_RDM_CODES
        or data.dim() != 4
        or data.shape[0] < 2
        or data.device.type != "cpu"
        or models.device.type != "cpu"
        or data.requires_grad
        or models.dim() != 2
        or models.shape[0] == 0
        or data.dtype not in (torch.float32, torch.float64)
        or models.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16)
        or torch.promote_types(data.dtype, _checks.compute_dtype(models)) != torch.float64
    ):
        return None
    try:
        win = _windows(fn, data, rdm_method, window, step)  # (n_subjects, n_windows, n_conditions, p)
    except (TypeError, ValueError):
        return None
    n, k = win.shape[-2], models.shape[-1]
    if n < 3 or win.shape[-1] < 1 or k != n * (n - 1) // 2 or win.shape[1] == 0:
        return None
    models = models.detach().to(torch.float64)
    try:  # FASTALIGN_BACKEND may name a backend that cannot run: the composed calls raise that in their order
        chosen = (
            _rdm_dispatch.choose("auto", win, rdm_method),
            _nc_dispatch.choose("auto", models, models, "spearman"),
        )
    except (NotImplementedError, ValueError):
        return None
    if (
        chosen != ("cpp", "cpp")
        or (win.shape[0] + 6) * k * 8 * min(torch.get_num_threads(), win.shape[1]) > _FUSED_CEILING_BYTES
        or not common.all_finite(models)
        or (rdm_method == "euclidean" and _scaled_up_windows(data, win, window, step))
    ):
        return None
    models_z = common.ext_prepare(models, "spearman").contiguous()
    sims, lower, upper = torch.ops.fastalign.rsa_rdm_spearman_ceiling(
        win.contiguous(), models_z, _FUSED_RDM_CODES[rdm_method]
    )
    if not (common.all_finite(sims) and common.all_finite(lower) and common.all_finite(upper)):
        return None
    return sims, lower, upper


def _scaled_up_windows(data: torch.Tensor, win: torch.Tensor, window: int, step: int) -> bool:
    """Whether a window's patterns are so small that time_resolved_rdms scales them up for its euclidean
    sums and its distances back down by 4**-k (into subnormals or zero: ties and constant RDMs the fused
    kernel, which ranks the distances at scale, does not see). The largest |value| of each window, from
    each sample's (one pass over data), against _safe_magnitudes' lower bound (api._scaled_patterns')."""
    lo, _ = common._safe_magnitudes(_checks.compute_dtype(win), win.shape[-1])
    per_window = data.detach().abs().amax(dim=(-3, -2)).unfold(-1, window, step).amax(-1)
    return bool(((per_window > 0) & (per_window < lo)).any())


def _ceiling_chunks(
    fn: str,
    rdms: torch.Tensor,
    method: str,
    backend: str,
    models: torch.Tensor | None,
    *,
    condensed: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """noise_ceiling's validation and chunked computation; with ``models`` (validated, "spearman" only)
    also each subject RDM's similarity with each model, from the same ranks. condensed=False: rdms are
    entries of condensed RDMs left after dropping NaN (their count is not n(n-1)/2)."""
    method = _checks.check_choice(fn, "method", method, common.COMPARE_METHODS)
    backend = _checks.check_choice(fn, "backend", backend, _backend.BACKENDS)
    rdms = _checks.exact_float(fn, "rdms", _tensor(fn, "rdms", rdms))
    if rdms.dim() < 2 or rdms.shape[0] < 2:
        raise ValueError(f"{fn}: rdms must have shape (n_subjects >= 2, ..., K), got {tuple(rdms.shape)}")
    if condensed:
        _n_from_pairs(fn, "rdms", rdms)
    if models is None and rdms.dim() > 2 and bool(torch.isnan(rdms.detach()).any()):
        return _ceiling_by_nan_pattern(fn, rdms, method, backend)
    if models is None:
        rdms = _without_nan_entries(fn, rdms)
    _finite(fn, "rdms", rdms)
    rdms = common.operand(rdms, method)
    _nonconstant(fn, "rdms", rdms, method)
    chosen = _nc_dispatch.choose(backend, rdms, rdms, method)
    models_z = None
    if models is not None:
        mod = _nc_dispatch.module("torch" if chosen == "reference" else chosen)
        models_z = mod.prepare(models.to(device=rdms.device), method)  # models has rdms's dtype already
    fused = _fused_spearman_ceiling(rdms, method, chosen, models_z)
    if fused is not None:
        return fused
    # Many RDMs (e.g. one per time point) on the CPU in chunks: the ranks and pools of a chunk stay a few
    # MB, where those of all of them are fresh arrays of hundreds of MB that the system maps and zeroes (10
    # subjects x 100 time points x 19,900 pairs on 2 threads: 0.67-0.73 -> 0.54-0.59 s). An error in a
    # chunk is raised again from the whole stack, so that it names the whole stack's indices.
    flat = rdms.reshape(rdms.shape[0], -1, rdms.shape[-1])
    step = max(1, _NC_CHUNK_ELEMENTS // (flat.shape[0] * flat.shape[2]))
    if flat.shape[1] <= step or rdms.dim() < 3 or rdms.device.type != "cpu":
        return _noise_ceiling(fn, rdms, method, chosen, models_z)
    try:
        parts = [
            _noise_ceiling(fn, flat[:, i : i + step], method, chosen, models_z)
            for i in range(0, flat.shape[1], step)
        ]
    except ValueError:
        try:
            _noise_ceiling(fn, rdms, method, chosen, models_z)
        except ValueError as whole:
            raise whole from None  # the chunk's error, with its chunk-relative index, is not shown
        raise
    lower = torch.cat([p[0] for p in parts]).reshape(rdms.shape[1:-1])
    upper = torch.cat([p[1] for p in parts]).reshape(rdms.shape[1:-1])
    sims = None
    if models_z is not None:  # then every chunk has its similarities
        chunks = [cast(torch.Tensor, p[2]) for p in parts]
        sims = torch.cat(chunks, 1).reshape(*rdms.shape[:-1], models_z.shape[0])
    return lower, upper, sims


# The fused Spearman ceiling holds one point's ranks of every subject and a few (K,) buffers per thread
# ((S + 6) x K float64): above this much in all its threads, the composed path's chunks are used.
_FUSED_CEILING_BYTES = 1 << 29


def _fused_spearman_ceiling(
    rdms: torch.Tensor, method: str, chosen: str, models_z: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
    """_ceiling_chunks' result from the cpp backend's fused kernel (rsa_spearman_ceiling) for validated
    float64 CPU RDMs and "spearman": each subject RDM and each pool ranked once in a per-thread buffer,
    where the composed path stores ranks, pools and their ranks (10 subjects x 100 time points x 19,900
    pairs, 44 models, 2 threads: 0.65-0.70 -> 0.39-0.41 s). None where it does not apply (or would hold
    more than _FUSED_CEILING_BYTES), or where a pool's ranks are constant (NaN bounds): the composed path
    then computes the result or names the pool in its error."""
    if (
        method != "spearman"
        or chosen != "cpp"
        or rdms.dtype != torch.float64
        or rdms.device.type != "cpu"
        or rdms.requires_grad
        or (rdms.shape[0] + 6) * rdms.shape[-1] * 8 * min(torch.get_num_threads(), rdms[0, ..., 0].numel())
        > _FUSED_CEILING_BYTES
    ):
        return None
    from fastalign.rsa import cpp

    k = rdms.shape[-1]
    w = rdms.new_empty((0, k)) if models_z is None else models_z.to(torch.float64)
    sims, lower, upper = cpp.spearman_ceiling(rdms.reshape(rdms.shape[0], -1, k), w)
    if not (common.all_finite(lower) and common.all_finite(upper)):
        return None
    points = rdms.shape[1:-1]
    out_sims = None if models_z is None else sims.reshape(*rdms.shape[:-1], w.shape[0])
    return lower.reshape(points), upper.reshape(points), out_sims


def _without_nan_entries(fn: str, rdms: torch.Tensor, where: str = "") -> torch.Tensor:
    """rsatoolbox's rule for NaN in one noise ceiling's (n_subjects, n_pairs) RDMs: an entry NaN in any
    subject's RDM is dropped from all of them (e.g. pairs no subject judged), so that every bound compares
    the same entries."""
    nan = torch.isnan(rdms.detach())
    if not bool(nan.any()):
        return rdms
    keep = ~nan.reshape(-1, rdms.shape[-1]).any(0)
    if int(keep.sum()) < 2:
        raise ValueError(f"{fn}: fewer than 2 RDM entries are not NaN in every RDM of rdms{where}")
    return rdms[..., keep]


def _ceiling_by_nan_pattern(
    fn: str, rdms: torch.Tensor, method: str, backend: str
) -> tuple[torch.Tensor, torch.Tensor, None]:
    """noise_ceiling of (n_subjects, ..., K) RDMs with NaN: each ceiling (each index of the leading dims
    after the subjects, e.g. a time point) drops the entries NaN in any of its subjects' RDMs, and only
    those, so that a batch gives what a loop over its ceilings gives (one NaN at one time point does not
    remove that pair at every other). Ceilings with the same NaN entries are computed together."""
    flat = rdms.reshape(rdms.shape[0], -1, rdms.shape[-1])
    keep = ~torch.isnan(flat.detach()).any(0)  # (n_ceilings, K)
    patterns, which = torch.unique(keep, dim=0, return_inverse=True)
    lower = torch.empty(flat.shape[1], dtype=_checks.compute_dtype(rdms), device=rdms.device)
    upper = torch.empty_like(lower)
    for g, mask in enumerate(patterns):
        idx = (which == g).nonzero()[:, 0]
        if int(mask.sum()) < 2:
            at = tuple(int(i) for i in torch.unravel_index(idx[0], rdms.shape[1:-1]))
            raise ValueError(
                f"{fn}: fewer than 2 RDM entries are not NaN in every subject's RDM at index {at} of rdms' "
                "leading dims"
            )
        try:
            lo, up, _ = _ceiling_chunks(fn, flat[:, idx][..., mask], method, backend, None, condensed=False)
        except ValueError:

            def again(i: int, mask: torch.Tensor = mask) -> object:
                return _ceiling_chunks(fn, flat[:, i][..., mask], method, backend, None, condensed=False)

            common.raise_first_failure(idx, rdms.shape[1:-1], again, "ceiling")
            raise
        lower, upper = (
            lower.index_put((idx,), lo.to(lower.dtype)),
            upper.index_put((idx,), up.to(upper.dtype)),
        )
    return lower.reshape(rdms.shape[1:-1]), upper.reshape(rdms.shape[1:-1]), None


#: Elements of the (n_subjects, chunk, n_pairs) stack noise_ceiling computes at a time (8 MiB of float64).
_NC_CHUNK_ELEMENTS = 1 << 20


def _noise_ceiling(
    fn: str, rdms: torch.Tensor, method: str, chosen: str, models_z: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """noise_ceiling of validated, prepared RDMs on the chosen backend, and with ``models_z`` (the
    prepared (M, K) vectors of model RDMs, "spearman") each subject RDM's similarity with each model."""
    # a pool can be constant (all-zero), exactly or up to rounding, where no subject RDM is: a bound is
    # then undefined, as compare_rdms's statistic for such an RDM is. The reference pools as torch does.
    mod = _nc_dispatch.module("torch" if chosen == "reference" else chosen)
    sims = None
    ranks = mod.rank(rdms).to(_checks.compute_dtype(rdms)) if method == "spearman" else None
    upper_pool, loo_pools, tolerance = common.pools(mod, rdms, method, ranks)
    _nonconstant(fn, "the pooled RDM of all subjects", upper_pool, method, tolerance)
    _nonconstant(fn, "the pooled RDM of the other subjects (index: left-out subject, ...)", loo_pools,
                 method, tolerance)  # fmt: skip
    if chosen == "reference":
        lower, upper = reference.noise_ceiling_reference(rdms.to(_checks.compute_dtype(rdms)), method)
    elif method == "spearman":
        # Spearman is Pearson of average ranks. Each subject's RDM is ranked once, for the pools and the
        # comparisons both (not again in each comparison): its ranks, centred by their exact mean
        # (K + 1) / 2 and scaled to unit norm in place, are its vectors z; the pools' come from prepare.
        assert ranks is not None
        z = ranks.sub_((rdms.shape[-1] + 1) / 2)
        z = z.div_(torch.linalg.vector_norm(z, dim=-1, keepdim=True))
        upper = common.dot(mod.prepare(upper_pool, method), z).mean(0)
        lower = common.dot(mod.prepare(loo_pools, method), z).mean(0)
        if models_z is not None:
            sims = torch.matmul(z.reshape(-1, z.shape[-1]), models_z.T).reshape(*z.shape[:-1], -1)
    else:
        upper = mod.compare(upper_pool, rdms, method).mean(0)
        lower = mod.compare(loo_pools, rdms, method).mean(0)
    if not (common.all_finite(lower) and common.all_finite(upper)):
        raise ValueError(f"{fn}: the {method} noise ceiling is not finite for these RDMs")
    return lower, upper, sims
