"""The RSA functions rdm, rank, compare_rdms, time_resolved_rdms and time_resolved_rsa, each as validate,
choose a backend, call it; the backend registrations and the argument checks they share with the
statistics (fastalign.rsa.stats). The math lives in the backend modules and fastalign.rsa.common.

Conventions are rsatoolbox's: RDMs are condensed vectors (the strict upper triangle read row by row),
rdm methods "correlation" / "euclidean" (squared, divided by n_features) / "crossnobis", compare
methods "spearman" / "pearson" (rsatoolbox's "corr") / "kendall_tau_a" ("tau-a") / "rho_a" ("rho-a")
/ "cosine", noise ceilings as rsatoolbox.inference.boot_noise_ceiling.

Gradients: RDMs, time-resolved RDMs and the pearson / cosine statistics (compare_rdms, time_resolved_rsa,
noise_ceiling) are differentiable on the reference and torch backends; with an input that requires grad
(grad mode on), auto picks those and an explicit cpp / cuda / triton request raises NotImplementedError
(their kernels have no backward). Ranks and the rank statistics (spearman, rho_a, kendall_tau_a) are
piecewise constant, with zero gradient almost everywhere, and the permutation and cluster tests are
counts: these detach their inputs, so their outputs never claim a gradient.

Scale: correlation / cosine RDMs, the pearson / cosine statistics and the cluster test's t do not depend
on the magnitude of a pattern, RDM vector or time point; those whose sums of squares would overflow or
underflow in the compute dtype are multiplied by an exact power of two first, so they are exact at any
finite magnitude. Euclidean and crossnobis distances are scaled and scaled back the same way; distances
beyond the dtype's range raise ValueError.

Rounding: a statistic undefined for a constant (all-zero) vector is also undefined for one that only
rounding keeps from being so (values spread within 16 sqrt(n) eps of their scale, n the terms of the
sums that made them): pools in noise_ceiling, brain RDMs in time_resolved_rsa, pearson's centring, time
points in the cluster test. Ranks are exact and need no such tolerance. Every backend computes in the
compute dtype: float64 for float64 inputs, else float32.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from fastalign import _backend, _checks
from fastalign.rsa import common

_rdm_dispatch = _backend.dispatcher("rdm")
_rank_dispatch = _backend.dispatcher("rank")
_compare_dispatch = _backend.dispatcher("compare_rdms")
_trrsa_dispatch = _backend.dispatcher("time_resolved_rsa")

# The modules that implement the backends (the protocols each provides: common.OP_PROTOCOLS).
_REFERENCE = "fastalign.rsa.reference"
_TORCH = "fastalign.rsa.torch_chunked"
_CPP = "fastalign.rsa.cpp"
_CUDA = "fastalign.rsa.cuda"
_TRITON = "fastalign.rsa.triton"
# The fastalign._C ops (csrc/rsa.cpp) each compiled module calls; an extension built from older sources
# that lacks one of them is refused as a whole, naming it.
_CPP_OPS = (
    "rsa_rank", "rsa_centered_ranks", "rsa_kendall_tau_a", "rsa_rdm_direct", "rsa_rdm_compare",
    "rsa_spearman_ceiling", "rsa_rdm_spearman_ceiling", "rsa_permute_condensed", "rsa_cluster_null",
)  # fmt: skip
_CUDA_OPS = ("rsa_rank", "rsa_centered_ranks", "rsa_permute_condensed")
_CPP_FLOATS = (torch.float32, torch.float64)
_COMPILED_RANK_DTYPES = (torch.float64, torch.float32, torch.int64, torch.int32)
# Pairwise C++ RDMs beat GEMM + extraction up to about this many features (benchmarks/bench_rsa.py).
_CPP_RDM_MAX_FEATURES = 64


def _rdm_triton_limits(x: torch.Tensor, method: str, *, explicit: bool) -> list[str]:
    reasons = []
    if x.dtype == torch.bfloat16 and _backend.triton_interpret():
        reasons.append(
            "the Triton interpreter (TRITON_INTERPRET=1) multiplies the bit patterns of bfloat16 inputs in "
            "tl.dot (triton-lang/triton#11584), so bfloat16 RDMs would be wrong; pass float16 or float32, "
            "or run on a GPU without TRITON_INTERPRET"
        )
    if method == "crossnobis":
        reasons.append("triton has no crossnobis kernel (it needs the fold structure)")
    return reasons


def _rdm_cpp_limits(x: torch.Tensor, method: str, *, explicit: bool) -> list[str]:
    reasons = []
    if method == "crossnobis":
        reasons.append("cpp has no crossnobis kernel")
    if not explicit and x.shape[-1] > _CPP_RDM_MAX_FEATURES:
        reasons.append(
            f"auto uses cpp for at most {_CPP_RDM_MAX_FEATURES} features (GEMM is faster above), "
            f"got {x.shape[-1]}"
        )
    return reasons


def _rank_limits(name: str) -> _backend.Check:
    def check(x: torch.Tensor, *, explicit: bool) -> list[str]:
        if x.dtype in _COMPILED_RANK_DTYPES:
            return []
        return [f"{name} ranks float64, float32, int64 or int32 tensors, got {x.dtype}"]

    return check


def _cuda_linear_methods(a: torch.Tensor, b: torch.Tensor, method: str, *, explicit: bool) -> list[str]:
    if method in common.LINEAR_METHODS:
        return []
    return [f"cuda runs the methods {common.LINEAR_METHODS}, got {method!r}"]


def _trrsa_cpp_limits(
    win: torch.Tensor, models: torch.Tensor, rdm_method: str, method: str, *, explicit: bool
) -> list[str]:
    # the RDM half is rdm's cpp kernel (its dtypes and limits); the models may have any float dtype
    reasons = _checks.dtype_reasons("cpp", _CPP_FLOATS, (win,)) + _rdm_cpp_limits(
        win, rdm_method, explicit=explicit
    )
    if method not in common.LINEAR_METHODS:
        reasons.append(f"cpp fuses the compare methods {common.LINEAR_METHODS}, got {method!r}")
    return reasons


# In auto's order of preference. The compiled and Triton kernels have no backward (differentiable=False):
# with inputs that require grad, auto passes over them and an explicit request raises (fastalign._backend).
_rdm_dispatch.register(
    "triton", _rdm_triton_limits, module=_TRITON, dtypes=_checks.TRITON_DTYPES, differentiable=False
)
_rdm_dispatch.register(
    "cpp", _rdm_cpp_limits, module=_CPP, dtypes=_CPP_FLOATS, ops=_CPP_OPS, differentiable=False
)
_rdm_dispatch.register("torch", module=_TORCH)
_rdm_dispatch.register("reference", module=_REFERENCE, auto=False)
_rank_dispatch.register("cuda", _rank_limits("cuda"), module=_CUDA, ops=_CUDA_OPS, differentiable=False)
_rank_dispatch.register("cpp", _rank_limits("cpp"), module=_CPP, ops=_CPP_OPS, differentiable=False)
_rank_dispatch.register("torch", module=_TORCH)
_rank_dispatch.register("reference", module=_REFERENCE, auto=False)
_compare_dispatch.register("cuda", _cuda_linear_methods, module=_CUDA, ops=_CUDA_OPS, differentiable=False)
_compare_dispatch.register("cpp", module=_CPP, ops=_CPP_OPS, differentiable=False)
_compare_dispatch.register("torch", module=_TORCH)
_compare_dispatch.register("reference", module=_REFERENCE, auto=False)
# torch and reference compose the rdm and compare_rdms backends (common.composed_time_resolved_rsa)
_trrsa_dispatch.register("cpp", _trrsa_cpp_limits, module=_CPP, ops=_CPP_OPS, differentiable=False)
_trrsa_dispatch.register("torch", module=_TORCH)
_trrsa_dispatch.register("reference", module=_REFERENCE, auto=False)


# ----------------------------------------------------------------------------------------- validation


def _tensor(fn: str, name: str, x: Any) -> torch.Tensor:
    """x as a real tensor; numpy arrays are taken (sharing their memory)."""
    x = _checks.check_tensor(fn, name, x, arrays=True)
    _checks.check_real_dtype(fn, name, x)
    return x


def _finite(fn: str, name: str, x: torch.Tensor, what: str = "") -> None:
    if not common.all_finite(x):
        bad = "NaN" if bool(torch.isnan(x).any()) else "inf"
        raise ValueError(f"{fn}: {name} contains {bad}{what}; expected finite values")


def _n_from_pairs(fn: str, name: str, x: torch.Tensor) -> int:
    """The number of conditions of condensed RDM vectors x (..., K), refusing square RDMs.

    A square (n, n) RDM whose n is a triangular number (3, 6, 10, 15, ...) has the shape of n condensed
    RDMs of fewer conditions, and was compared as such, silently; one that is symmetric with a zero
    diagonal is taken for what it almost surely is (n condensed RDMs would each need a zero distance at
    their own index) and refused, as is any (..., n, n) whose n is not triangular.
    """
    k = x.shape[-1]
    n = common.n_conditions(k)
    square = x.dim() >= 2 and x.shape[-2] == k >= 3
    fix = (
        "pass its strict upper triangle, m[..., i, j] for (i, j) in zip(*numpy.triu_indices(n, 1)), the "
        "condensed order fastalign.rdm returns"
    )
    if n is None:
        raise ValueError(
            f"{fn}: {name} must be condensed RDM vectors whose last dim is n*(n-1)/2, got last dim {k}"
            + (f" (shape {tuple(x.shape)}: a square RDM? {fix})" if square else "")
        )
    if square and _symmetric_zero_diagonal(x):
        raise ValueError(
            f"{fn}: {name} of shape {tuple(x.shape)} is a square RDM (symmetric, zero diagonal), not "
            f"condensed RDM vectors: {fix} (if it is {k} condensed RDMs, the i-th 0 at entry i, as "
            f"'only pair i is alike' models are, give them their own dim: {name}[:, None, :])"
        )
    if n < 3:
        raise ValueError(f"{fn}: {name} must come from at least 3 conditions, got {n} (last dim {k})")
    return n


def _symmetric_zero_diagonal(x: torch.Tensor) -> bool:
    """Whether every (n, n) matrix in x (..., n, n) is symmetric (to rounding) with a zero diagonal."""
    m = x.detach()
    if not bool((m.diagonal(dim1=-2, dim2=-1) == 0).all()):
        return False
    t = m.transpose(-1, -2)
    return bool(torch.isclose(m, t, rtol=1e-6, atol=0.0, equal_nan=True).all())


def _undefined_rows(
    v: torch.Tensor, method: str, tolerance: torch.Tensor | float | None = None
) -> torch.Tensor:
    """Which vectors (last dim) a compare method is undefined for: constant ones ("pearson", "spearman":
    their spread max - min is at most ``tolerance``) and all-zero ones ("cosine": max |v| at most it).

    tolerance: how far rounding may have moved values that are equal (zero) in exact arithmetic, e.g.
        common.rounding of the sums that made v; None: v as given, where only pearson's centring rounds (its
        mean of K values: common.rounding(K, max |v|)); ranks and power-of-two scaling are exact.
    """
    if method not in ("pearson", "spearman", "cosine"):
        return torch.zeros(v.shape[:-1], dtype=torch.bool, device=v.device)
    ct = _checks.compute_dtype(v)
    # amax and amin are vectorised reductions, several times faster on CPU than torch.aminmax over dim -1
    top, bottom = v.detach().amax(-1).to(ct), v.detach().amin(-1).to(ct)
    maxabs = torch.maximum(top, -bottom)
    if tolerance is None:
        tolerance = common.rounding(ct, v.shape[-1], maxabs) if method == "pearson" else 0.0
    return (maxabs if method == "cosine" else top - bottom) <= tolerance


def _nonconstant(
    fn: str, name: str, v: torch.Tensor, method: str, tolerance: torch.Tensor | float | None = None
) -> None:
    """Pearson-type statistics are undefined for a constant vector (cosine: for an all-zero one), also
    when rounding is all that keeps it from being one (see _undefined_rows)."""
    bad = _undefined_rows(v, method, tolerance)
    if bool(bad.any()):
        what = "is all zeros" if method == "cosine" else "is constant"
        raise ValueError(
            f"{fn}: {name}{_at(bad)} {what}; method {method!r} is undefined for it (values equal up to "
            "rounding count as equal)"
        )


def _at(bad: torch.Tensor) -> str:
    """Where the first True of a mask over leading dims is, for messages; empty for a 0-dim mask."""
    return f" at index {tuple(int(i) for i in bad.nonzero()[0])}" if bad.dim() else ""


# ----------------------------------------------------------------------------------------- rdm


def _check_pattern_shape(fn: str, x: torch.Tensor, method: str, name: str = "x") -> int:
    """The shape checks of _check_patterns; returns n_conditions."""
    min_dim = 3 if method == "crossnobis" else 2
    shape_doc = "(..., " + ("n_folds, " if min_dim == 3 else "") + "n_conditions, n_features)"
    if x.dim() < min_dim:
        raise ValueError(
            f"{fn}: {name} must have shape {shape_doc} for method {method!r}, got {tuple(x.shape)}"
        )
    n, p = x.shape[-2], x.shape[-1]
    if n < 3:
        raise ValueError(f"{fn}: {name} must have at least 3 conditions (dim -2), got shape {tuple(x.shape)}")
    if p < 1 or x.numel() == 0:
        raise ValueError(f"{fn}: {name} must have at least 1 feature and no empty dim, got {tuple(x.shape)}")
    return n


def _check_patterns(
    fn: str, x: torch.Tensor, method: str, name: str = "x", windows: bool = False
) -> tuple[int, torch.Tensor, torch.Tensor | None]:
    """Validates (..., [n_folds,] n_conditions, n_features) patterns for an RDM method.

    Args:
        fn, x, method: the public function, the patterns and the RDM method.
        name: the argument the patterns came from, for messages.
        windows: x is time windows of ``name`` (_windows' layout), whose features are channels x samples.

    Returns:
        n_conditions, the largest |value| of each pattern, (..., [n_folds,] n_conditions), and where the
        C++ row kernel found them, its (..., [n_folds,] n_conditions, 3) float64 max, min and sum of each
        pattern (for common.reusing_row_stats), else None. The per-pattern max and min that find NaN/inf,
        constant ("correlation") and all-zero ("cosine") patterns give the largest |value| without
        another pass.
    """
    n = _check_pattern_shape(fn, x, method, name)
    p = x.shape[-1]
    where = " (..., window, [fold,] condition)" if windows else ""
    raw = None
    if common.cpp_rows(x):  # one pass instead of two (a third of an RDM's time at 200 x 4,096 float32)
        raw = common.row_stats(x)
        stats = raw.to(x.dtype)  # max and min are values of x: exact in its dtype
        top, bottom = stats[..., 0], stats[..., 1]
    else:
        top, bottom = x.detach().amax(-1), x.detach().amin(-1)  # NaN propagates into both
    if not bool((torch.isfinite(top) & torch.isfinite(bottom)).all()):
        bad = "NaN" if bool((top.isnan() | bottom.isnan()).any()) else "inf"
        raise ValueError(f"{fn}: {name} contains {bad}; expected finite values")
    if method == "correlation":
        if p < 2:
            if windows:
                raise ValueError(
                    f"{fn}: {name} has 1 channel and windows of 1 sample: 1 feature per pattern, and "
                    "correlation distance needs at least 2; give window >= 2 or more channels"
                )
            raise ValueError(
                f"{fn}: {name} has {p} feature (shape {tuple(x.shape)}); correlation distance needs at "
                "least 2"
            )
        const = top == bottom
        if bool(const.any()):
            raise ValueError(
                f"{fn}: {name} has a constant pattern{_at(const)}{where}; its correlation distance is "
                "undefined"
            )
    if method == "cosine":
        zero = (top == 0) & (bottom == 0)
        if bool(zero.any()):
            raise ValueError(
                f"{fn}: {name} has an all-zero pattern{_at(zero)}{where}; cosine distance is undefined"
            )
    if method == "crossnobis" and x.shape[-3] < 2:
        raise ValueError(
            f"{fn}: crossnobis needs at least 2 folds (dim -3 of {name}), got shape {tuple(x.shape)}"
        )
    return n, torch.maximum(top, bottom.neg()), raw


def _scaled_patterns(
    x: torch.Tensor, method: str, maxabs: torch.Tensor, *, overflow_visible: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x times exact powers of two 2**k where its sums over features could overflow or underflow in the
    compute dtype (float64 near 1e200 or 1e-170, float32 near 1e20 or 1e-25), and k (None: x as is).

    correlation and cosine distances are scale-invariant per pattern, so each pattern is scaled on its
    own and the distances need no correction; euclidean and crossnobis distances of x * 2**k are 4**k
    times those of x, so one k serves a whole RDM (all its conditions and folds).

    Args:
        x: (..., [n_folds,] n_conditions, n_features) validated patterns.
        method: the RDM method.
        maxabs: (..., [n_folds,] n_conditions) from _check_patterns.
        overflow_visible: leave the RDMs whose distances (at most 4 max|x|^2) could overflow the compute
            dtype unscaled, so that an overflow shows as inf (for callers that never scale back).
    """
    at_most = math.inf
    if method in ("euclidean", "crossnobis"):
        maxabs = maxabs.amax(-1) if method == "euclidean" else maxabs.flatten(-2).amax(-1)
        if overflow_visible:
            at_most = math.sqrt(torch.finfo(_checks.compute_dtype(x)).max) / 2
    k = common.scale_exponents(maxabs, x, x.shape[-1], at_most=at_most)
    if k is None:
        return x, None
    factor = _checks.pow2(k, x.dtype)
    return x * factor.reshape(*factor.shape, *(1,) * (x.dim() - factor.dim())), k


def _unscaled_distances(
    fn: str, out: torch.Tensor, method: str, k: torch.Tensor | None, noise: torch.Tensor | None
) -> torch.Tensor:
    """Undoes _scaled_patterns on euclidean / crossnobis RDMs (x (..., K)), exactly (powers of two),
    and raises where a distance is not finite: it overflows the dtype (or the noise matrix made it)."""
    if method not in ("euclidean", "crossnobis"):
        return out
    if k is not None:
        factor = _checks.pow2(-k, out.dtype)[..., None]
        out = out * factor * factor  # two steps: 4**-k itself may not be representable
    elif noise is None:
        return out  # unscaled values within common._safe_magnitudes cannot overflow
    if not common.all_finite(out):
        bad = ~torch.isfinite(out.detach()).all(-1)
        raise ValueError(
            f"{fn}: the {method} distances of the RDM{_at(bad)} are not finite in {out.dtype} "
            f"(they exceed its maximum {torch.finfo(out.dtype).max:.3g}); expected data (and noise) whose "
            "distances fit: rescale them or use float64"
        )
    return out


def _check_noise(fn: str, noise: Any, method: str, x: torch.Tensor) -> torch.Tensor | None:
    """The crossnobis noise precision matrix, validated and moved to x's device."""
    if noise is None:
        return None
    if method != "crossnobis":
        raise ValueError(f"{fn}: noise is used by method 'crossnobis' only, got method {method!r}")
    p = x.shape[-1]
    noise = _checks.exact_float(fn, "noise", _tensor(fn, "noise", noise))
    if noise.shape != (p, p):
        raise ValueError(
            f"{fn}: noise must be a ({p}, {p}) precision matrix for {p} features, got {tuple(noise.shape)}"
        )
    _finite(fn, "noise", noise)
    # a precision matrix is symmetric positive (semi)definite: another gives distances of no meaning
    # (a negative definite one flips their signs), so it is refused, up to 1e-5 of its largest entry
    # (float32 rounding of an inverted covariance; gradcheck's steps of 1e-6 in one entry)
    n = noise.detach().double()
    scale = float(n.abs().max()) or 1.0
    tol = 1e-5 * scale
    if float((n - n.T).abs().max()) > tol:
        raise ValueError(f"{fn}: noise must be a symmetric precision matrix; noise - noise.T reaches "
                         f"{float((n - n.T).abs().max()):.3g}")  # fmt: skip
    lowest = float(torch.linalg.eigvalsh((n + n.T) / 2).min())
    if lowest < -tol * p:
        raise ValueError(
            f"{fn}: noise must be a positive semidefinite precision matrix (an inverse noise covariance); "
            f"its smallest eigenvalue is {lowest:.3g}"
        )
    return noise.to(device=x.device)


def rdm(
    x: torch.Tensor,
    method: str = "correlation",
    *,
    noise: torch.Tensor | None = None,
    square: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """Representational dissimilarity matrices, batched over leading dims.

    Methods follow rsatoolbox.rdm.calc_rdm: "correlation" (1 - Pearson r between condition patterns),
    "cosine" (1 - cosine similarity, scipy's pdist "cosine"), "euclidean" (squared Euclidean distance
    divided by n_features) and "crossnobis" (leave-one-fold-out cross-validated squared Mahalanobis
    distance divided by n_features: the mean over folds f of (train_i - train_j) N (test_i - test_j),
    with test = fold f's patterns and train = the mean of the other folds; rsatoolbox's
    calc_rdm_crossnobis for balanced folds). Features are streamed in chunks, so n_features in the
    hundreds of thousands (CORnet-S V1: 200,704) needs only O(n_conditions^2) extra memory.

    Args:
        x: (..., n_conditions, n_features); for "crossnobis" (..., n_folds, n_conditions, n_features).
            Floating point, finite; integer input is used as float64.
        method: "correlation", "cosine", "euclidean" or "crossnobis".
        noise: crossnobis only: (n_features, n_features) noise precision matrix, symmetric positive
            semidefinite (None: identity).
        square: return (..., n, n) symmetric matrices with a zero diagonal instead of condensed vectors.
        backend: "auto", "reference", "torch", "cpp" (CPU; auto uses it for <= 64 features) or "triton".

    Returns:
        (..., n_conditions * (n_conditions - 1) / 2) condensed RDMs in rsatoolbox's (and scipy's
        squareform) order, or (..., n, n) when ``square``; float64 for float64 and integer (or bool)
        input, else float32.
        Differentiable in x (and noise) on "reference" and "torch"; "cpp" and "triton" have no
        backward, so auto avoids them when x requires grad and asking for them raises.

    Raises:
        ValueError: fewer than 3 conditions, NaN/inf, a constant pattern ("correlation": undefined), an
            all-zero pattern ("cosine"), fewer than 2 folds, a badly shaped noise matrix, or euclidean /
            crossnobis distances beyond the dtype's range (correlation and cosine are exact at any
            finite magnitude).
        NotImplementedError: an explicit backend that cannot run these inputs (e.g. cpp when x requires
            grad).
    """
    fn = "rdm"
    backend = _checks.check_choice(fn, "backend", backend, _backend.BACKENDS)
    x = _checks.exact_float(fn, "x", _tensor(fn, "x", x))
    square = _checks.check_bool(fn, "square", square)
    out = _rdm(fn, "x", x, method, noise, backend)
    return common.square(out, x.shape[-2]) if square else out


def _rdm(
    fn: str, name: str, x: torch.Tensor, method: str, noise: torch.Tensor | None, backend: str
) -> torch.Tensor:
    """rdm's condensed RDMs of float patterns x, its errors naming ``fn`` and ``name`` (time_resolved_rdms:
    its data, whose windows x are; indices in messages are the windows' (..., window, condition))."""
    method = _checks.check_choice(fn, "method", method, common.RDM_METHODS)
    _, maxabs, stats = _check_patterns(fn, x, method, name, windows=fn != "rdm")
    noise = _check_noise(fn, noise, method, x)
    checked = x
    x, k = _scaled_patterns(x, method, maxabs)
    # noise goes to crossnobis only, which only the differentiable backends run
    chosen = _rdm_dispatch.choose(backend, x, method)
    # the backend's own row statistics of the patterns (the torch backend's means) come from the check's
    # pass; patterns scaled above are new memory, which the check's statistics never stand for
    with common.reusing_row_stats(checked, stats):
        out = _rdm_dispatch.module(chosen).rdm(x, method, noise)
    return _unscaled_distances(fn, out, method, k, noise)


def time_resolved_rdms(
    data: Any,
    method: str = "correlation",
    window: int = 1,
    step: int = 1,
    *,
    noise: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """One RDM per time window: the features of a window are its channels x time points.

    Args:
        data: (..., n_conditions, n_channels, n_times) (for "crossnobis" (..., n_folds, n_conditions,
            n_channels, n_times)), or an ``mne.Epochs`` whose event types are the conditions: each is
            averaged to one evoked response (good data channels) in ascending event code order (the
            order of :func:`fastalign.data.epochs_to_responses`).
        method: as :func:`rdm`.
        window: time points per window (>= 1).
        step: time points between window starts (>= 1).
        noise: crossnobis noise precision over the (n_channels * window) window features.
        backend: as :func:`rdm`.

    Returns:
        (..., n_windows, n_pairs) with ``n_windows = (n_times - window) // step + 1``; differentiable
        in data as :func:`rdm`. A window's RDM whose distances are all equal up to the rounding of their
        sums over the window's features (e.g. patterns that are shifted copies of one another: exactly 0
        apart, computed a few eps apart) is returned exactly constant, as :func:`time_resolved_rsa`
        treats it, so that comparing it raises as for any constant RDM.
    """
    fn = "time_resolved_rdms"
    backend = _checks.check_choice(fn, "backend", backend, _backend.BACKENDS)
    win = _checks.exact_float(fn, "data", _windows(fn, data, method, window, step))
    out = _rdm(fn, "data", win, method, noise, backend)
    # as time_resolved_rsa sees its brain RDMs: distances all equal up to rounding (patterns that are
    # shifted or scaled copies of one another come out a few eps apart) become exactly equal, so that
    # comparing such an RDM says it is constant instead of ranking rounding noise; the gradient passes
    # through unchanged
    snapped = common.exact_constants(out, method, "pearson", win.shape[-1])
    return snapped if not out.requires_grad else out + (snapped - out).detach()


def _windows(fn: str, data: Any, method: str, window: int, step: int) -> torch.Tensor:
    """(..., n_windows, [n_folds,] n_conditions, n_channels * window) window patterns (a view)."""
    data = _epochs_to_tensor(fn, data)
    data = _tensor(fn, "data", data)
    window = _checks.check_int(fn, "window", window, minimum=1)
    step = _checks.check_int(fn, "step", step, minimum=1)
    min_dim = 4 if method == "crossnobis" else 3
    if data.dim() < min_dim:
        raise ValueError(
            f"{fn}: data must have shape (..., n_conditions, n_channels, n_times) "
            f"(crossnobis: (..., n_folds, n_conditions, n_channels, n_times)), got {tuple(data.shape)}"
        )
    # checked on the data as given: the window view's shapes (windows first) would read as another layout
    n_cond = data.shape[-3]
    if n_cond < 3:
        raise ValueError(
            f"{fn}: data must have at least 3 conditions (dim -3 of (..., n_conditions, n_channels, "
            f"n_times)), got shape {tuple(data.shape)}"
        )
    if data.numel() == 0:
        raise ValueError(f"{fn}: data must have no empty dim, got shape {tuple(data.shape)}")
    if method == "crossnobis" and data.shape[-4] < 2:
        raise ValueError(
            f"{fn}: crossnobis needs at least 2 folds (dim -4 of (..., n_folds, n_conditions, n_channels, "
            f"n_times)), got shape {tuple(data.shape)}"
        )
    n_times = data.shape[-1]
    if window > n_times:
        raise ValueError(f"{fn}: window ({window}) is longer than the data's {n_times} time points")
    win = data.unfold(-1, window, step)  # (..., n_cond, n_ch, n_windows, window)
    win = win.movedim(-2, -3).flatten(-2)  # (..., n_cond, n_windows, n_ch * window)
    core = 3 if method == "crossnobis" else 2  # dims before the window dim that belong to one RDM
    return win.movedim(-2, -1 - core)  # (..., n_windows, [n_folds,] n_cond, features)


def _epochs_to_tensor(fn: str, data: Any) -> Any:
    """An mne.Epochs -> (n_conditions, n_channels, n_times) float64 of per-condition evoked means;
    anything else as is.

    fastalign's one MNE convention (fastalign._mne, shared with fastalign.data.epochs_to_responses):
    conditions in ascending event code order, not event_id insertion order, since the code is what MNE
    stores per epoch, so model RDMs built in image/code order line up; good data channels only (bads out).
    """
    from fastalign import _mne

    if not _mne.is_epochs(data):
        return data
    grouped = _mne.group_epochs(data, fn)
    if len(grouped.conditions) < 3:
        raise ValueError(f"{fn}: the Epochs have {len(grouped.conditions)} event types; need >= 3")
    return torch.from_numpy(grouped.condition_means())


def time_resolved_rsa(
    data: Any,
    models: torch.Tensor,
    method: str = "spearman",
    *,
    rdm_method: str = "correlation",
    window: int = 1,
    step: int = 1,
    noise: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Time-resolved RSA in one call: each time window's brain RDM against each model RDM.

    Equal to ``compare_rdms(time_resolved_rdms(data, rdm_method, window, step)[..., None, :], models,
    method)``, without holding the (..., n_windows, n_pairs) brain RDMs: the cpp backend computes each
    window's RDM, ranks it and takes its dot products with the models in a per-thread buffer (one fused
    kernel, rsa_rdm_compare); the other backends compute the brain RDMs of a chunk of windows and
    compare them on the rdm and compare_rdms backends that this request allows, chosen once. 10
    subjects x 100 time points x 200 conditions need 16 MB here instead of 160 MB.

    Args:
        data: as :func:`time_resolved_rdms`: (..., n_conditions, n_channels, n_times), or an
            ``mne.Epochs`` (one averaged evoked response per event type).
        models: (n_models, n_pairs) or (n_pairs,) condensed model RDMs over the same conditions (e.g.
            ``fastalign.rdm(layer_features)``).
        method: compare method, as :func:`compare_rdms`.
        rdm_method: brain RDM method, as :func:`rdm`.
        window, step: as :func:`time_resolved_rdms`.
        noise: crossnobis noise precision (rdm_method "crossnobis" only).
        backend: "auto", "reference", "torch" or "cpp" (CPU; correlation / cosine / euclidean RDMs with
            the linear compare methods; auto fuses up to 64 window features). "auto" composes the
            fastest RDM and compare backends where cpp does not apply (e.g. on a GPU).

    Returns:
        (..., n_windows, n_models), or (..., n_windows) for a 1-D ``models``; float64 unless the data
        and the models are both float32 (or lower precision), then float32. "pearson" and "cosine"
        are differentiable in data and models through the composed reference / torch path (the fused
        cpp kernel has no backward: auto avoids it when an input requires grad); the rank methods
        detach their inputs (piecewise constant). Brain RDMs enter the statistic up to a positive
        factor, which no method depends on: tiny data is exact, distances that overflow raise.

    Raises:
        TypeError: a window or step that is not an int (numpy ints are ints; bools are not).
        ValueError: as :func:`time_resolved_rdms` and :func:`compare_rdms`, e.g. a constant brain RDM at
            some window (its Spearman correlation is undefined) or models over another number of
            conditions. The reference and torch paths take a brain RDM whose distances are equal (or
            zero) up to their rounding as the exact one: patterns that are shifted or scaled copies of
            each other raise for "pearson" / "spearman" and give 0 for "rho_a" / "kendall_tau_a". The
            fused cpp kernel sees the distances as computed.
    """
    fn = "time_resolved_rsa"
    backend = _checks.check_choice(fn, "backend", backend, _backend.BACKENDS)
    method = _checks.check_choice(fn, "method", method, common.COMPARE_METHODS)
    rdm_method = _checks.check_choice(fn, "rdm_method", rdm_method, common.RDM_METHODS)
    win = _windows(fn, data, rdm_method, window, step)
    win = _checks.exact_float(fn, "data", win)
    models = _checks.exact_float(fn, "models", _tensor(fn, "models", models))
    if models.dim() not in (1, 2):
        raise ValueError(f"{fn}: models must be (n_models, n_pairs) or (n_pairs,), got {tuple(models.shape)}")
    single = models.dim() == 1
    models2 = models[None] if single else models
    n = win.shape[-2]
    if models2.shape[-1] != common.n_pairs(n) or models2.shape[0] == 0:
        raise ValueError(
            f"{fn}: models must be RDMs of the data's {n} conditions, i.e. (n_models >= 1, "
            f"{common.n_pairs(n)}), got {tuple(models.shape)}"
        )
    _finite(
        fn,
        "models",
        models2,
        " (every window's brain RDM is complete; compare_rdms drops NaN entries per comparison)",
    )
    _checks.check_same_device(fn, data=win, models=models2)
    if method in common.RANK_METHODS:
        win = win.detach()
    models2 = common.operand(models2, method)
    _nonconstant(fn, "models", models2, method)
    core = 3 if rdm_method == "crossnobis" else 2
    lead = win.shape[:-core]
    flat = win.reshape(-1, *win.shape[-core:])  # the kernels' layout; one copy of the (strided) windows
    # checked on the contiguous copy: reductions over a strided last dim are several times slower
    shaped = flat.view(*lead, *flat.shape[1:])
    _check_pattern_shape(fn, shaped, rdm_method, "data")
    noise = _check_noise(fn, noise, rdm_method, win)
    chosen = _trrsa_dispatch.choose(backend, flat, models2, rdm_method, method)
    if chosen == "cpp":
        # The fused kernel checks the patterns in the pass that normalises them (NaN / inf, constant,
        # all-zero), scales extreme ones by exact powers of two itself and gives NaN for distances that
        # overflow; the value checks (three more passes over the data) run only to name what it refused.
        try:
            out = _trrsa_dispatch.module("cpp").rdm_compare(flat, models2, rdm_method, method)
        except ValueError:
            _check_patterns(fn, shaped, rdm_method, "data", windows=True)
            raise
    else:
        _, maxabs, _ = _check_patterns(fn, shaped, rdm_method, "data", windows=True)
        # Every compare method is invariant to scaling a brain RDM, so its distances are compared scaled;
        # those that could overflow are not, so that an overflow stays an error as in time_resolved_rdms.
        flat, _ = _scaled_patterns(flat, rdm_method, maxabs.reshape(flat.shape[:-1]), overflow_visible=True)
        # the RDMs and their comparison on the backends this request allows, chosen once for all chunks
        # (flat stands in for the brain RDMs: same device, and requires grad exactly when they would)
        sub = "auto" if backend == "auto" else chosen
        rdm_backend = _rdm_dispatch.module(_rdm_dispatch.choose(sub, flat, rdm_method))
        compare_backend = _compare_dispatch.module(_compare_dispatch.choose(sub, flat, models2, method))
        out = common.composed_time_resolved_rsa(
            flat, models2, rdm_method, method, noise, rdm_backend, compare_backend
        )
    if not common.all_finite(out):
        bad = (~torch.isfinite(out.detach())).any(-1).reshape(lead).nonzero()[0]
        where = tuple(int(i) for i in bad)
        raise ValueError(
            f"{fn}: the brain RDM at window index {where} is constant (all-zero for cosine) or not finite "
            f"(distances overflowed); method {method!r} is undefined for it"
        )
    # compare_rdms's result dtype: float32 only when both sides are float32 or lower precision
    both = torch.promote_types(_checks.compute_dtype(win), models2.dtype)
    out = out.to(torch.float64 if both == torch.float64 else torch.float32).reshape(*lead, models2.shape[0])
    return out[..., 0] if single else out


# ----------------------------------------------------------------------------------------- rank


_RANKED_AS_IS = (
    *(torch.float64, torch.float32, torch.float16, torch.bfloat16),
    *(torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8),
)


def _rankable(fn: str, x: torch.Tensor) -> torch.Tensor:
    """x in a dtype that every backend compares, with the same order and ties: torch has no CPU
    comparisons for uint16/32/64 or float8. Exact: uint16/32 fit int64, uint64 maps onto int64 by
    flipping the sign bit (monotone), float8 values are float32 values."""
    if x.dtype in _RANKED_AS_IS:
        return x
    if x.dtype == torch.bool:
        return x.to(torch.uint8)
    if x.dtype == torch.uint64:
        return x.view(torch.int64) ^ torch.iinfo(torch.int64).min
    if x.dtype in (torch.uint16, torch.uint32):
        return x.to(torch.int64)
    if x.is_floating_point() and x.element_size() == 1:
        return x.to(torch.float32)
    raise TypeError(
        f"{fn}: x has dtype {x.dtype}, which cannot be ranked; expected a real float, int or bool tensor"
    )


def rank(x: torch.Tensor, dim: int = -1, *, backend: str = "auto") -> torch.Tensor:
    """Average ranks along ``dim`` with ties sharing their mean rank: scipy.stats.rankdata.

    Exact at any length: tie groups are found by position in int64 and the average rank
    ``(first + last + 2) / 2`` is formed in float64 (no int32 overflow with 500,000 tied entries).

    Args:
        x: real tensor of any shape (every float, int, unsigned int and bool dtype), without NaN.
        dim: the dim to rank along (an int; numpy ints are accepted).
        backend: "auto", "reference", "torch", "cpp" (CPU) or "cuda".

    Returns:
        float64 tensor of x's shape with ranks in 1..n. Not differentiable (piecewise constant: zero
        gradient almost everywhere): x is detached, so the result never requires grad.

    Raises:
        TypeError: x complex or of a dtype without an order (e.g. quantized), or a dim that is not an int.
        ValueError: a 0-dim x, a dim out of range, or NaN.
    """
    fn = "rank"
    backend = _checks.check_choice(fn, "backend", backend, _backend.BACKENDS)
    x = _tensor(fn, "x", x)
    given = x.dtype
    x = _rankable(fn, x)
    if x.dim() == 0:
        raise ValueError(f"{fn}: x must have at least 1 dim, got a 0-dim tensor")
    dim = _checks.check_int(fn, "dim", dim)
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"{fn}: dim must be in [{-x.dim()}, {x.dim() - 1}] for {tuple(x.shape)}, got {dim}")
    if x.is_floating_point() and bool(torch.isnan(x).any()):
        raise ValueError(f"{fn}: x contains NaN, which has no rank; expected no NaN")
    xt = x.detach().movedim(dim, -1)  # ranks are piecewise constant: no gradient to give
    if xt.shape[-1] == 0:
        return torch.empty(x.shape, dtype=torch.float64, device=x.device)
    try:
        chosen = _rank_dispatch.choose(backend, xt)
    except NotImplementedError as exc:
        if given == x.dtype:
            raise
        # the backends see the dtype x is ranked as (bool as uint8, ...): name the one given
        raise NotImplementedError(f"{exc} (x is {given}, ranked as {x.dtype})") from None
    out = _rank_dispatch.module(chosen).rank(xt.contiguous())
    return out.movedim(-1, dim)


# ----------------------------------------------------------------------------------------- compare


def _rdm_pair(fn: str, a: Any, b: Any, *, allow_nan: bool) -> tuple[torch.Tensor, torch.Tensor, int, bool]:
    """Validated, dtype-promoted (a, b), their number of conditions, and whether either has NaN."""
    a = _checks.exact_float(fn, "a", _tensor(fn, "a", a))
    b = _checks.exact_float(fn, "b", _tensor(fn, "b", b))
    for name, t in (("a", a), ("b", b)):
        if t.dim() < 1:
            raise ValueError(f"{fn}: {name} must have shape (..., n_pairs), got a 0-dim tensor")
    if a.shape[-1] != b.shape[-1]:
        hint = ""
        for name, t, other in (("a", a, b), ("b", b, a)):
            k = t.shape[-1]
            if t.dim() >= 2 and t.shape[-2] == k and other.shape[-1] == common.n_pairs(k):
                hint = (
                    f" ({name} {tuple(t.shape)} looks like square RDMs of {k} conditions: pass the strict "
                    f"upper triangle, m[..., i, j] for (i, j) in zip(*numpy.triu_indices({k}, 1)))"
                )
        raise ValueError(
            f"{fn}: a and b must be RDMs of the same number of conditions, got last dims {a.shape[-1]} and "
            f"{b.shape[-1]}{hint}"
        )
    n = _n_from_pairs(fn, "a", a)
    _n_from_pairs(fn, "b", b)
    try:
        torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    except RuntimeError:
        raise ValueError(
            f"{fn}: the leading dims of a {tuple(a.shape[:-1])} and b {tuple(b.shape[:-1])} do not broadcast"
        ) from None
    _checks.check_same_device(fn, a=a, b=b)
    dtype = torch.promote_types(a.dtype, b.dtype)
    a, b = a.to(dtype), b.to(dtype)
    has_nan = False
    for name, t in (("a", a), ("b", b)):
        if common.all_finite(t):  # one pass in the common case; the checks below only on failure
            continue
        has_nan = True
        if bool(torch.isinf(t).any()):
            raise ValueError(f"{fn}: {name} contains inf; expected finite values")
        if not allow_nan and bool(torch.isnan(t).any()):
            raise ValueError(
                f"{fn}: {name} contains NaN; permuting conditions moves NaN entries, so this test needs "
                "complete RDMs"
            )
    return a, b, n, has_nan


def _compare_with_nan(fn: str, a: torch.Tensor, b: torch.Tensor, method: str, backend: str) -> torch.Tensor:
    """compare_rdms of RDMs with NaN: each comparison (each element of the broadcast result) drops the
    entries NaN in its RDM of a or b (rsatoolbox's masking, per comparison), so that a batch gives what a
    loop over its elements gives. Comparisons with the same NaN entries are computed together, in chunks
    of ``_NAN_CHUNK`` gathered pairs of RDMs."""
    shape = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    k = a.shape[-1]
    a2, b2 = a.reshape(-1, k), b.reshape(-1, k)
    ia = torch.arange(a2.shape[0], device=a.device).reshape(a.shape[:-1]).expand(shape).reshape(-1)
    ib = torch.arange(b2.shape[0], device=b.device).reshape(b.shape[:-1]).expand(shape).reshape(-1)
    keep_a, which_a = torch.unique(~torch.isnan(a2.detach()), dim=0, return_inverse=True)
    keep_b, which_b = torch.unique(~torch.isnan(b2.detach()), dim=0, return_inverse=True)
    combo = which_a[ia] * keep_b.shape[0] + which_b[ib]
    out: torch.Tensor | None = None
    for c in torch.unique(combo).tolist():
        idx = (combo == c).nonzero()[:, 0]
        keep = keep_a[c // keep_b.shape[0]] & keep_b[c % keep_b.shape[0]]
        if int(keep.sum()) < 2:
            at = tuple(int(i) for i in torch.unravel_index(idx[0], shape))
            raise ValueError(
                f"{fn}: fewer than 2 RDM entries are not NaN in both RDMs of the comparison at index {at}; "
                "its statistic is undefined"
            )
        for part in idx.split(_NAN_CHUNK):
            try:
                got = _compare_valid(fn, a2[ia[part]][:, keep], b2[ib[part]][:, keep], method, backend)
            except ValueError:

                def again(j: int, keep: torch.Tensor = keep) -> object:
                    return _compare_valid(fn, a2[ia[j]][keep], b2[ib[j]][keep], method, backend)

                common.raise_first_failure(part, shape, again, "comparison")
                raise
            out = got.new_empty(ia.shape[0]) if out is None else out
            out = out.index_put((part,), got)
    assert out is not None
    return out.reshape(shape)


_NAN_CHUNK = 4096


def compare_rdms(
    a: torch.Tensor, b: torch.Tensor, method: str = "spearman", *, backend: str = "auto"
) -> torch.Tensor:
    """Similarity between RDM vectors, broadcast over leading dims (e.g. time x layer x subject).

    Definitions are rsatoolbox's (rsatoolbox.rdm.compare): "spearman" (Pearson r of average ranks),
    "pearson" (rsatoolbox "corr"), "kendall_tau_a" ("tau-a": concordant minus discordant pairs over
    K(K-1)/2; O(K log K) per pair in cpp, O(K^2) in torch), "rho_a" ("rho-a": 12 sum(rc_a rc_b) /
    (K^3 - K) with centred ranks rc) and "cosine". NaN entries are dropped per comparison: each element
    of the result uses the entries that are NaN in neither of its two RDMs (rsatoolbox's masking for one
    pair of RDMs; rsatoolbox refuses two RDMs with NaN at different entries, and masks a whole collection
    at once, where here a batch equals a loop over its elements).

    Args:
        a: (..., n_pairs) condensed RDMs (e.g. (n_times, 1, n_subjects, K) brain RDMs).
        b: (..., n_pairs) condensed RDMs broadcastable with a (e.g. (1, n_layers, 1, K) model RDMs).
        method: "spearman", "pearson", "kendall_tau_a", "rho_a" or "cosine".
        backend: "auto", "reference", "torch", "cpp" (linear methods and kendall_tau_a) or "cuda" (linear
            methods).

    Returns:
        broadcast(a.shape[:-1], b.shape[:-1]) similarities; float64 unless both inputs are float32
        (or lower precision), then float32. "pearson" and "cosine" are differentiable in a and b on
        "reference" and "torch" (auto picks torch when an input requires grad; cpp and cuda raise);
        "spearman", "rho_a" and "kendall_tau_a" are piecewise constant (zero gradient almost
        everywhere), so a and b are detached and the result never requires grad. "pearson" and
        "cosine" are exact at any finite magnitude (vectors are rescaled by powers of two).

    Raises:
        ValueError: mismatched or non-condensed sizes, fewer than 3 conditions, inf, fewer than 2
            entries without NaN in a comparison, or a constant RDM for "pearson"/"spearman" (all-zero for
            "cosine"), for which the statistic is undefined. "pearson" counts an RDM whose values spread
            less than the rounding of its centring (16 sqrt(K) eps of its largest |value|, eps of the
            compute dtype) as constant: its centred values would be rounding noise. Ranks are exact, so
            spearman needs equal values.
    """
    fn = "compare_rdms"
    backend = _checks.check_choice(fn, "backend", backend, _backend.BACKENDS)
    method = _checks.check_choice(fn, "method", method, common.COMPARE_METHODS)
    a, b, _, has_nan = _rdm_pair(fn, a, b, allow_nan=True)
    if has_nan:
        return _compare_with_nan(fn, a, b, method, backend)
    return _compare_valid(fn, a, b, method, backend)


def _compare_valid(fn: str, a: torch.Tensor, b: torch.Tensor, method: str, backend: str) -> torch.Tensor:
    """compare_rdms of validated RDM vectors without NaN (of any length: entries left after masking)."""
    a, b = common.operand(a, method), common.operand(b, method)
    _rounded_constants(fn, a, b, method)
    chosen = _compare_dispatch.choose(backend, a, b, method)
    return _checked(fn, _compare_dispatch.module(chosen).compare(a, b, method), a, b, method)


def _rounded_constants(fn: str, a: torch.Tensor, b: torch.Tensor, method: str) -> None:
    """Pearson's centring turns an RDM constant up to rounding into noise, not NaN, so _checked would
    not see it: pearson operands are checked before (two reductions each)."""
    if method == "pearson":
        _nonconstant(fn, "a", a, method)
        _nonconstant(fn, "b", b, method)


def _checked(fn: str, stat: torch.Tensor, a: torch.Tensor, b: torch.Tensor, method: str) -> torch.Tensor:
    """Undefined statistics (a constant RDM: zero norm after centring) come out NaN; only then are the
    inputs searched for the culprit, so valid input pays for one pass over the small result."""
    if common.all_finite(stat):
        return stat
    _nonconstant(fn, "a", a, method)
    _nonconstant(fn, "b", b, method)
    raise ValueError(f"{fn}: the {method} statistic is not finite for these inputs")
