"""Public RSA functions: validation, then dispatch to a backend.

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

import importlib
import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import torch

from fastalign import _backend
from fastalign.rsa import common, reference, torch_chunked

_rdm_dispatch = _backend.dispatcher("rdm")
_rank_dispatch = _backend.dispatcher("rank")
_compare_dispatch = _backend.dispatcher("compare_rdms")
_perm_dispatch = _backend.dispatcher("rsa_permutation_test")
_cluster_dispatch = _backend.dispatcher("cluster_permutation_test")
_nc_dispatch = _backend.dispatcher("noise_ceiling")

_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_COMPILED_RANK_DTYPES = (torch.float64, torch.float32, torch.int64, torch.int32)
# Pairwise C++ RDMs beat GEMM + extraction up to about this many features (benchmarks/bench_rsa.py).
_CPP_RDM_MAX_FEATURES = 64


def _always(*args: Any, explicit: bool, **kwargs: Any) -> list[str]:
    return []


def _rdm_triton_check(x: torch.Tensor, method: str, *, explicit: bool) -> list[str]:
    reasons = _backend.device_reasons("triton", (x,), explicit=explicit)
    if x.dtype not in _TRITON_DTYPES:
        reasons.append(f"triton takes float32, float16 or bfloat16 inputs, got {x.dtype}")
    if x.dtype == torch.bfloat16 and _backend.triton_interpret():
        reasons.append(
            "the Triton interpreter (TRITON_INTERPRET=1) multiplies the bit patterns of bfloat16 inputs in "
            "tl.dot (triton-lang/triton#11584), so bfloat16 RDMs would be wrong; pass float16 or float32, "
            "or run on a GPU without TRITON_INTERPRET"
        )
    if method == "crossnobis":
        reasons.append("triton has no crossnobis kernel (it needs the fold structure)")
    return reasons


def _ops_missing(name: str) -> list[str]:
    """Why the RSA ops of the compiled backend ``name`` are absent (an older fastalign._C), if they are."""
    if not _backend.global_status()[name][0]:
        return []  # device_reasons already says why the backend cannot run at all
    why = _module(name).missing()
    return [why] if why else []


def _rdm_cpp_check(x: torch.Tensor, method: str, *, explicit: bool) -> list[str]:
    reasons = _backend.device_reasons("cpp", (x,), explicit=explicit) + _ops_missing("cpp")
    if method == "crossnobis":
        reasons.append("cpp has no crossnobis kernel")
    if x.dtype not in (torch.float32, torch.float64):
        reasons.append(f"cpp takes float32 or float64 inputs, got {x.dtype}")
    if not explicit and x.shape[-1] > _CPP_RDM_MAX_FEATURES:
        reasons.append(
            f"auto uses cpp for at most {_CPP_RDM_MAX_FEATURES} features (GEMM is faster above), "
            f"got {x.shape[-1]}"
        )
    return reasons


def _compiled_check(name: str) -> Any:
    def check(x: torch.Tensor, *, explicit: bool) -> list[str]:
        reasons = _backend.device_reasons(name, (x,), explicit=explicit) + _ops_missing(name)
        if x.dtype not in _COMPILED_RANK_DTYPES:
            reasons.append(f"{name} ranks float64, float32, int64 or int32 tensors, got {x.dtype}")
        return reasons

    return check


def _perm_compiled_check(name: str, tau_a: bool = False) -> Any:
    methods = (*common.LINEAR_METHODS, "kendall_tau_a") if tau_a else common.LINEAR_METHODS

    def check(a: torch.Tensor, b: torch.Tensor, method: str, *, explicit: bool) -> list[str]:
        reasons = _backend.device_reasons(name, (a, b), explicit=explicit) + _ops_missing(name)
        if method not in methods:
            reasons.append(f"{name} runs the methods {methods}, got {method!r}")
        return reasons

    return check


# The compiled and Triton kernels have no backward (differentiable=False): with inputs that require grad,
# auto picks torch and an explicit request raises (fastalign._backend). reference and torch are autograd.
_rdm_dispatch.register("triton", _rdm_triton_check, differentiable=False)
_rdm_dispatch.register("cpp", _rdm_cpp_check, differentiable=False)
_rdm_dispatch.register("torch", _always)
_rdm_dispatch.register("reference", _always, auto=False)
_rank_dispatch.register("cuda", _compiled_check("cuda"), differentiable=False)
_rank_dispatch.register("cpp", _compiled_check("cpp"), differentiable=False)
_rank_dispatch.register("torch", _always)
_rank_dispatch.register("reference", _always, auto=False)
_compare_dispatch.register("cuda", _perm_compiled_check("cuda"), differentiable=False)
_compare_dispatch.register("cpp", _perm_compiled_check("cpp", tau_a=True), differentiable=False)
_compare_dispatch.register("torch", _always)
_compare_dispatch.register("reference", _always, auto=False)
_perm_dispatch.register("cuda", _perm_compiled_check("cuda"), differentiable=False)
_perm_dispatch.register("cpp", _perm_compiled_check("cpp", tau_a=True), differentiable=False)
_perm_dispatch.register("torch", _always)
_perm_dispatch.register("reference", _always, auto=False)
_cluster_dispatch.register("torch", _always)
_cluster_dispatch.register("reference", _always, auto=False)
_nc_dispatch.register("cuda", _perm_compiled_check("cuda"), differentiable=False)
_nc_dispatch.register("cpp", _perm_compiled_check("cpp", tau_a=True), differentiable=False)
_nc_dispatch.register("torch", _always)
_nc_dispatch.register("reference", _always, auto=False)


def _module(name: str) -> ModuleType:
    """The backend module of ``name`` (imported on first use: triton and the extension are optional)."""
    if name in ("cpp", "cuda", "triton"):
        return importlib.import_module(f"fastalign.rsa.{name}")
    return torch_chunked


# ----------------------------------------------------------------------------------------- validation


def _tensor(fn: str, name: str, x: Any) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if x.is_complex():
        raise TypeError(f"{fn}: {name} must be real, got dtype {x.dtype}")
    return x


def _is_int(value: Any) -> bool:
    """Python and numpy integers; bools (Python's and numpy's) are neither counts nor indices."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _count(fn: str, name: str, value: Any, minimum: int) -> int:
    if not _is_int(value):
        raise TypeError(f"{fn}: {name} must be an int >= {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{fn}: {name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _float(fn: str, name: str, x: torch.Tensor) -> torch.Tensor:
    """Integer and bool inputs (binary model RDMs, counts) become float64."""
    if not x.is_floating_point():
        if x.dtype in (torch.int64, torch.uint64) and x.numel():
            # float64 holds integers exactly only up to 2**53: distinct values would silently tie. uint64
            # has no comparisons on CPU; viewed as int64, its values of 2**63 and more are negative.
            v = x.view(torch.int64)
            lo = 0 if x.dtype == torch.uint64 else -(2**53)
            if int(v.amax()) > 2**53 or int(v.amin()) < lo:
                raise ValueError(
                    f"{fn}: {name} holds {str(x.dtype).removeprefix('torch.')} values beyond 2**53, which "
                    "float64 cannot hold exactly; pass float64 values"
                )
        return x.to(torch.float64)
    return x


def _all_finite(x: torch.Tensor) -> bool:
    """Whether x has no NaN/inf, in one reduction: NaN and inf propagate into the sum (an overflowing
    sum of finite values falls through to the element-wise check)."""
    if not x.is_floating_point() or math.isfinite(float(x.detach().sum())):
        return True
    return bool(torch.isfinite(x).all())


def _finite(fn: str, name: str, x: torch.Tensor, what: str = "") -> None:
    if not _all_finite(x):
        bad = "NaN" if bool(torch.isnan(x).any()) else "inf"
        raise ValueError(f"{fn}: {name} contains {bad}{what}; expected finite values")


def _method(fn: str, method: Any, allowed: tuple[str, ...]) -> str:
    if method not in allowed:
        raise ValueError(f"{fn}: method must be one of {allowed}, got {method!r}")
    return str(method)


def _n_from_pairs(fn: str, name: str, k: int) -> int:
    n = common.n_conditions(k)
    if n is None:
        raise ValueError(
            f"{fn}: {name} must be condensed RDM vectors whose last dim is n*(n-1)/2, got last dim {k}"
        )
    if n < 3:
        raise ValueError(f"{fn}: {name} must come from at least 3 conditions, got {n} (last dim {k})")
    return n


# Rounding errors of a sum of n terms grow like sqrt(n) eps times its largest term (a random walk; the
# centrings, pools and distances here measure within 4 sqrt(n) eps). Values spread less than this many
# times that apart are equal up to rounding: a statistic of them would be one of noise.
_ROUNDING_ULPS = 16


def _rounding(ct: torch.dtype, terms: int, magnitude: torch.Tensor | float) -> torch.Tensor | float:
    """The rounding tolerance of values computed in ``ct`` by ``terms``-term sums of terms of at most
    ``magnitude``: values within it of each other are equal up to rounding."""
    return _ROUNDING_ULPS * torch.finfo(ct).eps * math.sqrt(terms) * magnitude


def _undefined_rows(
    v: torch.Tensor, method: str, tolerance: torch.Tensor | float | None = None
) -> torch.Tensor:
    """Which vectors (last dim) a compare method is undefined for: constant ones ("pearson", "spearman":
    their spread max - min is at most ``tolerance``) and all-zero ones ("cosine": max |v| at most it).

    tolerance: how far rounding may have moved values that are equal (zero) in exact arithmetic, e.g.
        _rounding of the sums that made v; None: v as given, where only pearson's centring rounds (its
        mean of K values: _rounding(K, max |v|)); ranks and power-of-two scaling are exact.
    """
    if method not in ("pearson", "spearman", "cosine"):
        return torch.zeros(v.shape[:-1], dtype=torch.bool, device=v.device)
    ct = common.compute_dtype(v)
    # amax and amin are vectorised reductions, several times faster on CPU than torch.aminmax over dim -1
    top, bottom = v.detach().amax(-1).to(ct), v.detach().amin(-1).to(ct)
    maxabs = torch.maximum(top, -bottom)
    if tolerance is None:
        tolerance = _rounding(ct, v.shape[-1], maxabs) if method == "pearson" else 0.0
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


# Compare methods computed from ranks: piecewise constant in the RDM values.
_RANK_METHODS = ("spearman", "rho_a", "kendall_tau_a")


def _safe_magnitudes(dtype: torch.dtype, terms: int) -> tuple[float, float]:
    """(lo, hi) for the largest |value| of the operands of ``terms``-term sums of products in dtype
    (squared norms, Gram entries, squared distances of centred values): at most hi, no such sum (nor the
    sum of a few of them) reaches the dtype's maximum; at least lo, the products that underflow change a
    sum by at most eps relative to the square of that largest value."""
    fi = torch.finfo(dtype)
    return math.sqrt(terms * fi.tiny / fi.eps), math.sqrt(fi.max / (32 * terms))


def _pow2(k: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """2**k exactly, built from float64 bits (exp2 and ldexp round on some devices); |k| <= 1022."""
    return ((k.to(torch.int64) + 1023) << 52).view(torch.float64).to(dtype)


def _scale_exponents(
    maxabs: torch.Tensor, x: torch.Tensor, terms: int, *, at_most: float = math.inf
) -> torch.Tensor | None:
    """Exponents k that bring each group's largest |value| ``maxabs`` into [0.5, 1) by an exact power of
    two, 2**k (k limited so that 2**k and 2**-k are normal in x's dtype); None when every group is
    already safe for ``terms``-term sums in x's compute dtype, so the common case copies nothing.

    at_most: groups whose largest |value| exceeds it keep k = 0.
    """
    lo, hi = _safe_magnitudes(common.compute_dtype(x), terms)
    # all-zero groups have nothing to scale
    unsafe = ((maxabs < lo) & (maxabs > 0)) | ((maxabs > hi) & (maxabs <= at_most))
    if not bool(unsafe.any()):
        return None
    limit = -math.ceil(math.log2(torch.finfo(x.dtype).tiny))
    k = torch.frexp(maxabs.double()).exponent.neg().clamp(-limit, limit)
    return k.masked_fill(maxabs > at_most, 0)


def _operand(v: torch.Tensor, method: str) -> torch.Tensor:
    """An RDM operand (..., K) as a compare method needs it.

    Rank methods: detached. They are piecewise constant in the values (zero gradient almost everywhere,
    none at ties), so their results never claim a gradient and any backend may run them. pearson and
    cosine square the values: vectors whose sums of squares could overflow or underflow are multiplied
    by an exact power of two, which leaves both statistics unchanged (they are scale-invariant per
    vector); a norm pass decides, so the common case copies nothing.
    """
    if method in _RANK_METHODS:
        return v.detach()
    ct = common.compute_dtype(v)
    k_terms = v.shape[-1]
    lo, hi = _safe_magnitudes(ct, k_terms)
    norms = torch.linalg.vector_norm(v.detach(), dim=-1, dtype=ct)
    # max|v| <= norm <= sqrt(K) max|v|: norms within these bounds put every max|v| within [lo, hi]
    if bool(((norms >= lo * math.sqrt(k_terms)) & (norms <= hi)).all()):
        return v
    d = v.detach()
    k = _scale_exponents(torch.maximum(d.amax(-1), d.amin(-1).neg()), v, k_terms)
    return v if k is None else v * _pow2(k, v.dtype)[..., None]


# ----------------------------------------------------------------------------------------- rdm


def _check_patterns(fn: str, x: torch.Tensor, method: str, name: str = "x") -> tuple[int, torch.Tensor]:
    """Validates (..., [n_folds,] n_conditions, n_features) patterns for an RDM method.

    Args:
        fn, x, method: the public function, the patterns and the RDM method.
        name: the argument the patterns came from, for messages.

    Returns:
        n_conditions and the largest |value| of each pattern, (..., [n_folds,] n_conditions). The
        per-pattern max and min that find NaN/inf, constant ("correlation") and all-zero ("cosine")
        patterns give it without another pass.
    """
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
    top, bottom = x.detach().amax(-1), x.detach().amin(-1)  # NaN propagates into both
    if not bool((torch.isfinite(top) & torch.isfinite(bottom)).all()):
        bad = "NaN" if bool((top.isnan() | bottom.isnan()).any()) else "inf"
        raise ValueError(f"{fn}: {name} contains {bad}; expected finite values")
    if method == "correlation":
        if p < 2:
            raise ValueError(
                f"{fn}: {name} has {p} feature (shape {tuple(x.shape)}); correlation distance needs at "
                "least 2"
            )
        const = top == bottom
        if bool(const.any()):
            raise ValueError(
                f"{fn}: {name} has a constant pattern{_at(const)}; its correlation distance is undefined"
            )
    if method == "cosine":
        zero = (top == 0) & (bottom == 0)
        if bool(zero.any()):
            raise ValueError(f"{fn}: {name} has an all-zero pattern{_at(zero)}; cosine distance is undefined")
    if method == "crossnobis" and x.shape[-3] < 2:
        raise ValueError(
            f"{fn}: crossnobis needs at least 2 folds (dim -3 of {name}), got shape {tuple(x.shape)}"
        )
    return n, torch.maximum(top, bottom.neg())


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
            at_most = math.sqrt(torch.finfo(common.compute_dtype(x)).max) / 2
    k = _scale_exponents(maxabs, x, x.shape[-1], at_most=at_most)
    if k is None:
        return x, None
    factor = _pow2(k, x.dtype)
    return x * factor.reshape(*factor.shape, *(1,) * (x.dim() - factor.dim())), k


def _unscaled_distances(
    fn: str, out: torch.Tensor, method: str, k: torch.Tensor | None, noise: torch.Tensor | None
) -> torch.Tensor:
    """Undoes _scaled_patterns on euclidean / crossnobis RDMs (x (..., K)), exactly (powers of two),
    and raises where a distance is not finite: it overflows the dtype (or the noise matrix made it)."""
    if method not in ("euclidean", "crossnobis"):
        return out
    if k is not None:
        factor = _pow2(-k, out.dtype)[..., None]
        out = out * factor * factor  # two steps: 4**-k itself may not be representable
    elif noise is None:
        return out  # unscaled values within _safe_magnitudes cannot overflow
    if not _all_finite(out):
        bad = ~torch.isfinite(out.detach()).all(-1)
        raise ValueError(
            f"{fn}: the {method} distances of the RDM{_at(bad)} are not finite in {out.dtype} "
            f"(they exceed its maximum {torch.finfo(out.dtype).max:.3g}); expected data (and noise) whose "
            "distances fit: rescale them or use float64"
        )
    return out


def _rdm_run(x: torch.Tensor, method: str, noise: torch.Tensor | None, chosen: str) -> torch.Tensor:
    """Condensed RDMs of validated patterns on the chosen backend."""
    if chosen == "reference":
        ct = common.compute_dtype(x)
        return reference.rdm_reference(x.to(ct), method, None if noise is None else noise.to(ct))
    return _module(chosen).rdm(x, method, noise)


def _check_noise(fn: str, noise: Any, method: str, x: torch.Tensor) -> torch.Tensor | None:
    """The crossnobis noise precision matrix, validated and moved to x's device."""
    if noise is None:
        return None
    if method != "crossnobis":
        raise ValueError(f"{fn}: noise is used by method 'crossnobis' only, got method {method!r}")
    p = x.shape[-1]
    noise = _float(fn, "noise", _tensor(fn, "noise", noise))
    if noise.shape != (p, p):
        raise ValueError(
            f"{fn}: noise must be a ({p}, {p}) precision matrix for {p} features, got {tuple(noise.shape)}"
        )
    _finite(fn, "noise", noise)
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
        noise: crossnobis only: (n_features, n_features) noise precision matrix (None: identity).
        square: return (..., n, n) symmetric matrices with a zero diagonal instead of condensed vectors.
        backend: "auto", "reference", "torch", "cpp" (CPU; auto uses it for <= 64 features) or "triton".

    Returns:
        (..., n_conditions * (n_conditions - 1) / 2) condensed RDMs in rsatoolbox's (and scipy's
        squareform) order, or (..., n, n) when ``square``; float64 for float64 input, else float32.
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
    x = _float(fn, "x", _tensor(fn, "x", x))
    method = _method(fn, method, common.RDM_METHODS)
    n, maxabs = _check_patterns(fn, x, method)
    noise = _check_noise(fn, noise, method, x)
    x, k = _scaled_patterns(x, method, maxabs)
    # noise goes to crossnobis only, which only the differentiable backends run
    chosen = _rdm_dispatch.choose(backend, x, method)
    out = _unscaled_distances(fn, _rdm_run(x, method, noise, chosen), method, k, noise)
    return common.square(out, n) if square else out


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
        in data as :func:`rdm`.
    """
    win = _windows("time_resolved_rdms", data, method, window, step)
    return rdm(win, method, noise=noise, backend=backend)


def _windows(fn: str, data: Any, method: str, window: int, step: int) -> torch.Tensor:
    """(..., n_windows, [n_folds,] n_conditions, n_channels * window) window patterns (a view)."""
    data = _epochs_to_tensor(fn, data)
    data = _tensor(fn, "data", data)
    window, step = _count(fn, "window", window, 1), _count(fn, "step", step, 1)
    min_dim = 4 if method == "crossnobis" else 3
    if data.dim() < min_dim:
        raise ValueError(
            f"{fn}: data must have shape (..., n_conditions, n_channels, n_times) "
            f"(crossnobis: (..., n_folds, n_conditions, n_channels, n_times)), got {tuple(data.shape)}"
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


# The composed path computes this many brain-RDM entries per chunk of windows (bounded memory).
_TRRSA_CHUNK_ELEMENTS = 1 << 24


def _trrsa_cpp_check(
    win: torch.Tensor, models: torch.Tensor, rdm_method: str, method: str, *, explicit: bool
) -> list[str]:
    # the RDM half is rdm's cpp kernel (same limits); models only need to live on the CPU too
    reasons = _rdm_cpp_check(win, rdm_method, explicit=explicit)
    reasons += [r for r in _backend.device_reasons("cpp", (models,), explicit=explicit) if r not in reasons]
    if not reasons and not hasattr(torch.ops.fastalign, "rsa_rdm_compare"):
        reasons.append("fastalign._C was built without rsa_rdm_compare (csrc/rsa.cpp); rebuild it")
    if method not in common.LINEAR_METHODS:
        reasons.append(f"cpp fuses the compare methods {common.LINEAR_METHODS}, got {method!r}")
    return reasons


_trrsa_dispatch = _backend.dispatcher("time_resolved_rsa")
_trrsa_dispatch.register("cpp", _trrsa_cpp_check, differentiable=False)
_trrsa_dispatch.register("torch", _always)
_trrsa_dispatch.register("reference", _always, auto=False)


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
    kernel, rsa_rdm_compare); the other backends run ``time_resolved_rdms`` and ``compare_rdms`` on
    chunks of windows. 10 subjects x 100 time points x 200 conditions need 16 MB here instead of 160 MB.

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
    method = _method(fn, method, common.COMPARE_METHODS)
    rdm_method = _method(fn, rdm_method, common.RDM_METHODS)
    win = _windows(fn, data, rdm_method, window, step)
    win = _float(fn, "data", win)
    models = _float(fn, "models", _tensor(fn, "models", models))
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
        " (the brain RDMs have none, and rsatoolbox's masking needs NaN at the same entries of both)",
    )
    if models2.device != win.device:
        raise ValueError(
            f"{fn}: data and models must be on one device, got {win.device} and {models2.device}"
        )
    if method in _RANK_METHODS:
        win = win.detach()
    models2 = _operand(models2, method)
    _nonconstant(fn, "models", models2, method)
    core = 3 if rdm_method == "crossnobis" else 2
    lead = win.shape[:-core]
    flat = win.reshape(-1, *win.shape[-core:])  # the kernels' layout; one copy of the (strided) windows
    # checked on the contiguous copy: reductions over a strided last dim are several times slower
    _, maxabs = _check_patterns(fn, flat.view(*lead, *flat.shape[1:]), rdm_method, "data")
    noise = _check_noise(fn, noise, rdm_method, win)
    # Every compare method is invariant to scaling a brain RDM, so its distances are compared scaled;
    # those that could overflow are not, so that an overflow stays an error as in time_resolved_rdms.
    flat, _ = _scaled_patterns(flat, rdm_method, maxabs.reshape(flat.shape[:-1]), overflow_visible=True)
    chosen = _trrsa_dispatch.choose(backend, flat, models2, rdm_method, method)
    if chosen == "cpp":
        out = _module("cpp").rdm_compare(flat, models2, rdm_method, method)
    else:
        out = _trrsa_composed(
            flat, models2, rdm_method, method, noise, "auto" if backend == "auto" else chosen
        )
    if not _all_finite(out):
        bad = (~torch.isfinite(out.detach())).any(-1).reshape(lead).nonzero()[0]
        where = tuple(int(i) for i in bad)
        raise ValueError(
            f"{fn}: the brain RDM at window index {where} is constant (all-zero for cosine) or not finite "
            f"(distances overflowed); method {method!r} is undefined for it"
        )
    # compare_rdms's result dtype: float32 only when both sides are float32 or lower precision
    both = torch.promote_types(common.compute_dtype(win), models2.dtype)
    out = out.to(torch.float64 if both == torch.float64 else torch.float32).reshape(*lead, models2.shape[0])
    return out[..., 0] if single else out


def _trrsa_composed(
    flat: torch.Tensor, models: torch.Tensor, rdm_method: str, method: str, noise: Any, backend: str
) -> torch.Tensor:
    """(B, n_models) statistics of validated window patterns ``flat`` (B, [n_folds,] n, p), a chunk of
    windows at a time; NaN where a brain RDM is not finite (its distances overflowed)."""
    models = models.to(torch.promote_types(common.compute_dtype(flat), models.dtype))
    step = max(1, _TRRSA_CHUNK_ELEMENTS // models.shape[-1])
    rdm_backend = _rdm_dispatch.choose(backend, flat[:1], rdm_method)
    compare_backend = None
    parts = []
    for s in range(0, flat.shape[0], step):
        brain = _rdm_run(flat[s : s + step], rdm_method, noise, rdm_backend)
        brain = _exact_constants(brain, rdm_method, method, flat.shape[-1])
        brain = brain.to(models.dtype)
        compare_backend = compare_backend or _compare_dispatch.choose(backend, brain, models, method)
        finite = rdm_method not in ("euclidean", "crossnobis") or _all_finite(brain)
        if finite:  # unscaled distances near the dtype's maximum need rescaling for pearson / cosine
            brain = _operand(brain, method)
        stat = _compare_run(brain[:, None, :], models[None], method, compare_backend)
        if not finite:  # a rank of inf is finite: mark the window, the caller names it
            stat = torch.where(torch.isfinite(brain).all(-1, keepdim=True), stat, math.nan)
        parts.append(stat)
    return torch.cat(parts)


def _exact_constants(brain: torch.Tensor, rdm_method: str, method: str, n_features: int) -> torch.Tensor:
    """Brain RDMs (B, K) in the compute dtype that are all-zero, or constant for the methods that see
    constancy (all but cosine), up to the rounding of their distances made exactly so.

    The distances are sums over n_features, of order 1 for correlation and cosine RDMs and relative to
    the RDM's largest for the others. The statistics then give what the exact RDMs give (NaN where
    undefined, which the caller names; 0 for rho_a and tau-a), not a correlation of rounding noise:
    patterns that are shifted or scaled copies of each other are a few eps apart, not 0.
    """
    d = brain.detach()
    top, bottom = d.amax(-1, keepdim=True), d.amin(-1, keepdim=True)
    maxabs = torch.maximum(top, -bottom)
    tolerance = _rounding(brain.dtype, n_features, 1.0 if rdm_method in ("correlation", "cosine") else maxabs)
    finite = torch.isfinite(maxabs)  # distances that overflowed stay inf: the caller names them
    zero = (maxabs <= tolerance) & finite
    flat = (top - bottom <= tolerance) & finite if method != "cosine" else zero
    if not bool(flat.any() | zero.any()):
        return brain
    return torch.where(zero, 0.0, torch.where(flat, d[..., :1], brain))


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
    x = _rankable(fn, _tensor(fn, "x", x))
    if x.dim() == 0:
        raise ValueError(f"{fn}: x must have at least 1 dim, got a 0-dim tensor")
    if not _is_int(dim):
        raise TypeError(f"{fn}: dim must be an int, got {dim!r} ({type(dim).__name__})")
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"{fn}: dim must be in [{-x.dim()}, {x.dim() - 1}] for {tuple(x.shape)}, got {dim}")
    dim = int(dim)
    if x.is_floating_point() and bool(torch.isnan(x).any()):
        raise ValueError(f"{fn}: x contains NaN, which has no rank; expected no NaN")
    xt = x.detach().movedim(dim, -1)  # ranks are piecewise constant: no gradient to give
    if xt.shape[-1] == 0:
        return torch.empty(x.shape, dtype=torch.float64, device=x.device)
    chosen = _rank_dispatch.choose(backend, xt)
    out = reference.rank_reference(xt) if chosen == "reference" else _module(chosen).rank(xt.contiguous())
    return out.movedim(-1, dim)


# ----------------------------------------------------------------------------------------- compare


def _rdm_pair(fn: str, a: Any, b: Any, *, allow_nan: bool) -> tuple[torch.Tensor, torch.Tensor, int, bool]:
    """Validated, dtype-promoted (a, b), their number of conditions, and whether either has NaN."""
    a = _float(fn, "a", _tensor(fn, "a", a))
    b = _float(fn, "b", _tensor(fn, "b", b))
    for name, t in (("a", a), ("b", b)):
        if t.dim() < 1:
            raise ValueError(f"{fn}: {name} must have shape (..., n_pairs), got a 0-dim tensor")
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(
            f"{fn}: a and b must be RDMs of the same number of conditions, got last dims {a.shape[-1]} and "
            f"{b.shape[-1]}"
        )
    n = _n_from_pairs(fn, "a", a.shape[-1])
    try:
        torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    except RuntimeError:
        raise ValueError(
            f"{fn}: the leading dims of a {tuple(a.shape[:-1])} and b {tuple(b.shape[:-1])} do not broadcast"
        ) from None
    if a.device != b.device:
        raise ValueError(f"{fn}: a and b must be on one device, got {a.device} and {b.device}")
    dtype = torch.promote_types(a.dtype, b.dtype)
    a, b = a.to(dtype), b.to(dtype)
    has_nan = False
    for name, t in (("a", a), ("b", b)):
        if _all_finite(t):  # one pass in the common case; the checks below only on failure
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


def _drop_nan(fn: str, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """rsatoolbox's masking: an entry NaN in any RDM is dropped from all; a and b must agree on where."""
    nan_a = torch.isnan(a).reshape(-1, a.shape[-1]).any(0)
    nan_b = torch.isnan(b).reshape(-1, b.shape[-1]).any(0)
    if not torch.equal(nan_a, nan_b):
        raise ValueError(f"{fn}: a and b have NaN at different RDM entries; rsatoolbox needs the same ones")
    keep = ~nan_a
    if int(keep.sum()) < 2:
        raise ValueError(f"{fn}: fewer than 2 RDM entries are not NaN")
    return a[..., keep], b[..., keep]


def compare_rdms(
    a: torch.Tensor, b: torch.Tensor, method: str = "spearman", *, backend: str = "auto"
) -> torch.Tensor:
    """Similarity between RDM vectors, broadcast over leading dims (e.g. time x layer x subject).

    Definitions are rsatoolbox's (rsatoolbox.rdm.compare): "spearman" (Pearson r of average ranks),
    "pearson" (rsatoolbox "corr"), "kendall_tau_a" ("tau-a": concordant minus discordant pairs over
    K(K-1)/2; O(K log K) per pair in cpp, O(K^2) in torch), "rho_a" ("rho-a": 12 sum(rc_a rc_b) /
    (K^3 - K) with centred ranks rc) and "cosine". NaN entries follow rsatoolbox: an entry NaN in any
    RDM of a or b is dropped from all, and a and b must have NaN at the same entries.

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
        ValueError: mismatched or non-condensed sizes, fewer than 3 conditions, inf, NaN at different
            entries, or a constant RDM for "pearson"/"spearman" (all-zero for "cosine"), for which the
            statistic is undefined. "pearson" counts an RDM whose values spread less than the rounding of
            its centring (16 sqrt(K) eps of its largest |value|, eps of the compute dtype) as constant:
            its centred values would be rounding noise. Ranks are exact, so spearman needs equal values.
    """
    fn = "compare_rdms"
    method = _method(fn, method, common.COMPARE_METHODS)
    a, b, _, has_nan = _rdm_pair(fn, a, b, allow_nan=True)
    if has_nan:
        a, b = _drop_nan(fn, a, b)
    a, b = _operand(a, method), _operand(b, method)
    _rounded_constants(fn, a, b, method)
    chosen = _compare_dispatch.choose(backend, a, b, method)
    return _checked(fn, _compare_run(a, b, method, chosen), a, b, method)


def _rounded_constants(fn: str, a: torch.Tensor, b: torch.Tensor, method: str) -> None:
    """Pearson's centring turns an RDM constant up to rounding into noise, not NaN, so _checked would
    not see it: pearson operands are checked before (two reductions each)."""
    if method == "pearson":
        _nonconstant(fn, "a", a, method)
        _nonconstant(fn, "b", b, method)


def _compare_run(a: torch.Tensor, b: torch.Tensor, method: str, chosen: str) -> torch.Tensor:
    """Similarities of validated RDMs (one dtype) on the chosen backend, in the compute dtype."""
    if chosen == "reference":
        ct = common.compute_dtype(a)
        return reference.compare_reference(a.to(ct), b.to(ct), method)
    return _module(chosen).compare(a, b, method)


def _checked(fn: str, stat: torch.Tensor, a: torch.Tensor, b: torch.Tensor, method: str) -> torch.Tensor:
    """Undefined statistics (a constant RDM: zero norm after centring) come out NaN; only then are the
    inputs searched for the culprit, so valid input pays for one pass over the small result."""
    if _all_finite(stat):
        return stat
    _nonconstant(fn, "a", a, method)
    _nonconstant(fn, "b", b, method)
    raise ValueError(f"{fn}: the {method} statistic is not finite for these inputs")


# ----------------------------------------------------------------------------------------- permutation tests


@dataclass
class PermutationResult:
    """Result of :func:`rsa_permutation_test`.

    Attributes:
        statistic: (...) the observed similarities (as :func:`compare_rdms`).
        pvalue: (...) ``(1 + #{null at least as extreme}) / (1 + n_permutations)``.
        null: (n_permutations, ...) the permutation distribution, or None unless ``return_null``.
    """

    statistic: torch.Tensor
    pvalue: torch.Tensor
    null: torch.Tensor | None = None


# torch.Generator.manual_seed takes 64-bit seeds; negative ones alias large ones, so both ends are cut
_MAX_SEED = 2**63 - 1


def _seed(fn: str, seed: Any) -> int | None:
    if seed is None:
        return None
    if not _is_int(seed):
        raise TypeError(f"{fn}: seed must be an int in [0, 2**63 - 1] or None, got {type(seed).__name__}")
    if not 0 <= seed <= _MAX_SEED:
        raise ValueError(f"{fn}: seed must be an int in [0, 2**63 - 1] or None, got {seed}")
    return int(seed)


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
    a relative 100 * eps of the observed statistic count as ties (scipy.stats.permutation_test).

    Args:
        a: (..., n_pairs) condensed RDMs, e.g. brain RDMs (n_times, 1, n_subjects, K).
        b: (..., n_pairs) condensed RDMs broadcastable with a, e.g. model RDMs (1, n_layers, 1, K).
        method: as :func:`compare_rdms`.
        n_permutations: number of random permutations (>= 1).
        alternative: "greater" (similarity above chance), "less" or "two-sided".
        seed: an int in [0, 2**63 - 1] seeding the permutations (drawn on the CPU, identical across
            backends and devices), or None for a fresh seed.
        return_null: also return the (n_permutations, ...) null distribution.
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
    method = _method(fn, method, common.COMPARE_METHODS)
    if alternative not in common.ALTERNATIVES:
        raise ValueError(f"{fn}: alternative must be one of {common.ALTERNATIVES}, got {alternative!r}")
    n_perm = _count(fn, "n_permutations", n_permutations, 1)
    seed = _seed(fn, seed)
    a, b, n, _ = _rdm_pair(fn, a, b, allow_nan=False)
    a, b = _operand(a.detach(), method), _operand(b.detach(), method)
    _rounded_constants(fn, a, b, method)
    chosen = _perm_dispatch.choose(backend, a, b, method)
    perms = common.permutations(n, n_perm, seed)
    if chosen == "reference":
        ct = common.compute_dtype(a)
        a, b = a.to(ct), b.to(ct)
        observed = reference.compare_reference(a, b, method)
        null = reference.permutation_null_reference(a, b, method, perms)
    elif method not in common.LINEAR_METHODS:
        compare = _module(chosen).compare
        observed = _checked(fn, compare(a, b, method), a, b, method)
        null = _generic_null(compare, a, b, method, perms, n)
    else:
        mod = _module(chosen)
        za, zb = mod.prepare(a, method), mod.prepare(b, method)
        scale = common.linear_scale(method, a.shape[-1])
        observed = _checked(fn, common.dot(za, zb) * scale, a, b, method)
        if zb.numel() <= za.numel():
            null = mod.permutation_null(za, zb, perms, n) * scale
        else:
            # sum_k za[k] zb[idx_pi[k]] == sum_m za[idx_pi^-1[m]] zb[m]: gather the smaller operand
            null = mod.permutation_null(zb, za, perms.argsort(dim=1), n) * scale
    observed = _checked(fn, observed, a, b, method)
    pvalue = common.permutation_pvalue(observed, null, alternative)
    return PermutationResult(observed, pvalue, null if return_null else None)


def _generic_null(
    compare: Any, a: torch.Tensor, b: torch.Tensor, method: str, perms: torch.Tensor, n: int
) -> torch.Tensor:
    """Nonlinear statistics (kendall_tau_a): ``compare`` on each permuted b, a few permutations at a time."""
    shape = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    pad = [1] * (len(shape) - (b.dim() - 1))  # keeps the permutation dim left of the batch dims
    out = torch.empty((perms.shape[0], *shape), dtype=common.compute_dtype(a), device=a.device)
    step = max(1, (1 << 20) // max(b.numel(), 1))
    for s in range(0, perms.shape[0], step):
        idx = common.permuted_pair_indices(perms[s : s + step].to(a.device), n)
        g = b[..., idx].movedim(-2, 0)
        out[s : s + step] = compare(a, g.reshape(g.shape[0], *pad, *b.shape[:-1], -1), method)
    return out


@dataclass
class ClusterResult:
    """Result of :func:`cluster_permutation_test`.

    Attributes:
        t_values: (n_times,) one-sample t statistic of the effects at each time point.
        clusters: one ``slice(start, stop)`` of time indices per cluster, in time order.
        masses: (n_clusters,) sum of t over each cluster (negative for negative clusters).
        pvalues: (n_clusters,) ``(1 + #{null max mass >= |mass|}) / (1 + n_permutations)``.
        null: (n_permutations,) the maximum cluster mass (|mass| for tail 0) of each sign flip.
        threshold: the cluster-forming t threshold used.
    """

    t_values: torch.Tensor
    clusters: list[slice]
    masses: torch.Tensor
    pvalues: torch.Tensor
    null: torch.Tensor
    threshold: float


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

    Args:
        x: (n_subjects, n_times) effects, e.g. model-brain similarity minus a baseline; n_subjects >= 2.
        threshold: positive t threshold forming clusters; None: the t quantile at p = 0.05 with
            n_subjects - 1 degrees of freedom (one-sided for tail +-1, 0.025 per side for tail 0), MNE's
            default.
        n_permutations: random sign flips (>= 1).
        tail: 1 (positive effects), -1 (negative) or 0 (both).
        seed: an int in [0, 2**63 - 1] seeding the sign flips (drawn on the CPU), or None.
        backend: "auto", "reference" or "torch".

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
    x = _tensor(fn, "x", x)
    if x.dim() != 2:
        raise ValueError(f"{fn}: x must have shape (n_subjects, n_times), got {tuple(x.shape)}")
    if x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(f"{fn}: x needs at least 2 subjects and 1 time point, got shape {tuple(x.shape)}")
    x = x.detach().to(torch.float64)
    _finite(fn, "x", x)
    if not _is_int(tail):
        raise TypeError(f"{fn}: tail must be 1, -1 or 0, got {tail!r} ({type(tail).__name__})")
    if tail not in (1, -1, 0):
        raise ValueError(f"{fn}: tail must be 1, -1 or 0, got {tail!r}")
    tail = int(tail)
    n_perm = _count(fn, "n_permutations", n_permutations, 1)
    seed = _seed(fn, seed)
    if threshold is None:
        from scipy import stats

        threshold = float(stats.t.ppf(1 - (0.05 if tail != 0 else 0.025), x.shape[0] - 1))
    elif not (_is_int(threshold) or isinstance(threshold, (float, np.floating))):
        raise TypeError(
            f"{fn}: threshold must be a positive finite number or None, got {threshold!r} "
            f"({type(threshold).__name__})"
        )
    elif not (math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"{fn}: threshold must be a positive finite number or None, got {threshold!r}")
    threshold = float(threshold)
    x = _scaled_effects(x)
    top, bottom = x.amax(0), x.amin(0)
    flat = top - bottom <= _rounding(x.dtype, x.shape[0], torch.maximum(top, -bottom))
    if bool(flat.any()):
        raise ValueError(
            f"{fn}: x has zero variance across subjects at time {int(flat.nonzero()[0, 0])} (its values are "
            "equal up to rounding); t is undefined there"
        )
    chosen = _cluster_dispatch.choose(backend, x)
    flips = common.sign_flips(x.shape[0], n_perm, seed)
    if chosen == "reference":
        t, found, null, pvals = reference.cluster_test_reference(x, threshold, tail, flips)
    else:
        t = common.one_sample_t(x)
        found = reference.cluster_masses_reference(t.cpu(), threshold, tail)
        null = torch_chunked.cluster_null(x, threshold, tail, flips).cpu()
        observed = torch.tensor([abs(m) for _, _, m in found], dtype=torch.float64)
        pvals = common.permutation_pvalue(observed, null[:, None].expand(-1, len(found)), "greater")
    masses = torch.tensor([m for _, _, m in found], dtype=torch.float64)
    return ClusterResult(t, [slice(s, e) for s, e, _ in found], masses, pvals, null, threshold)


def _scaled_effects(x: torch.Tensor) -> torch.Tensor:
    """(n_subjects, n_times) float64 effects with each time point multiplied by an exact power of two
    where its sums of squares could overflow or underflow (near 1e200 or 1e-170): t at a time point,
    and so every sign flip's, does not depend on the scale of its effects."""
    k = _scale_exponents(x.abs().amax(0), x, x.shape[0])
    return x if k is None else x * _pow2(k, x.dtype)


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
        rdms: (n_subjects, ..., n_pairs) condensed RDMs, n_subjects >= 2, without NaN.
        method: as :func:`compare_rdms`.
        backend: "auto", "reference", "torch", "cpp" or "cuda" (as :func:`compare_rdms`).

    Returns:
        (lower, upper), each of shape rdms.shape[1:-1]. "pearson" and "cosine" are differentiable in
        rdms on "reference" and "torch" (cpp and cuda have no backward); the rank methods detach rdms.

    Raises:
        ValueError: bad shapes, NaN/inf, a constant subject RDM, or a constant (all-zero for "cosine")
            pooled RDM, for which "pearson" / "spearman" / "cosine" are undefined (as in
            :func:`compare_rdms`). Pools of z-scored or RMS-normalised RDMs that are constant (all-zero)
            up to the rounding of the normalisation count as constant: subjects r and 1 - r pool to
            rounding noise, not to an RDM with a defined correlation. Pools of ranks are exact.
    """
    fn = "noise_ceiling"
    method = _method(fn, method, common.COMPARE_METHODS)
    rdms = _float(fn, "rdms", _tensor(fn, "rdms", rdms))
    if rdms.dim() < 2 or rdms.shape[0] < 2:
        raise ValueError(f"{fn}: rdms must have shape (n_subjects >= 2, ..., K), got {tuple(rdms.shape)}")
    _n_from_pairs(fn, "rdms", rdms.shape[-1])
    _finite(fn, "rdms", rdms)
    rdms = _operand(rdms, method)
    _nonconstant(fn, "rdms", rdms, method)
    chosen = _nc_dispatch.choose(backend, rdms, rdms, method)
    # a pool can be constant (all-zero), exactly or up to rounding, where no subject RDM is: a bound is
    # then undefined, as compare_rdms's statistic for such an RDM is. The reference pools as torch does.
    mod = torch_chunked if chosen == "reference" else _module(chosen)
    upper_pool, loo_pools, tolerance = _pools(mod, rdms, method)
    _nonconstant(fn, "the pooled RDM of all subjects", upper_pool, method, tolerance)
    _nonconstant(fn, "the pooled RDM of the other subjects (index: left-out subject, ...)", loo_pools,
                 method, tolerance)  # fmt: skip
    if chosen == "reference":
        lower, upper = reference.noise_ceiling_reference(rdms.to(common.compute_dtype(rdms)), method)
    else:
        upper = mod.compare(upper_pool, rdms, method).mean(0)
        lower = mod.compare(loo_pools, rdms, method).mean(0)
    if not (_all_finite(lower) and _all_finite(upper)):
        raise ValueError(f"{fn}: the {method} noise ceiling is not finite for these RDMs")
    return lower, upper


def _pools(
    mod: ModuleType, rdms: torch.Tensor, method: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | float]:
    """rsatoolbox's pool_rdm of (S, ..., K) subject RDMs: the pool of all subjects (..., K), the
    leave-one-out pools (S, ..., K), with ranks from the backend module ``mod``, and how far rounding
    may have moved the pools' values (_rounding: z-scores and RMS normalisation sum K terms; pools of
    ranks are exact, as sums of half-integers in float64)."""
    s = rdms.shape[0]
    ct = common.compute_dtype(rdms)
    tolerance: torch.Tensor | float = 0.0
    if method in _RANK_METHODS:
        pooled_in = mod.rank(rdms)
    else:
        r = rdms.to(ct)
        if method == "pearson":
            c = r - r.mean(-1, keepdim=True)
            pooled_in = c / c.std(-1, correction=0, keepdim=True)
        else:
            pooled_in = r / r.pow(2).mean(-1, keepdim=True).sqrt()
        z = pooled_in.detach()
        tolerance = _rounding(ct, rdms.shape[-1], torch.maximum(z.amax(-1), -z.amin(-1)).amax(0))
    total = pooled_in.sum(0)
    return (total / s).to(ct), ((total - pooled_in) / (s - 1)).to(ct), tolerance
