"""Shared machinery of the edge suite (tests/edge): the acceptance rule, tolerances, layouts, oracles.

The rule every edge case follows: a call either returns what an independent oracle (scipy, numpy,
torch.nn.functional) or the reference backend gives, within the tolerance of its dtype, or raises a
ValueError / TypeError whose message names the function and the argument (NotImplementedError naming
the function and the backend for an explicit backend that refuses). Any other exception, a NaN from
finite input, a value off the oracle, or a gradient that is dropped or comes back as None fails.
"""

from __future__ import annotations

import multiprocessing
import os
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from hypothesis import Phase, settings
from scipy import stats
from scipy.spatial.distance import pdist

#: A sixth of the loaded profile's examples (ci: 4, thorough: 50): the edge tests are parametrised
#: over hundreds of cases, and each hypothesis example only varies shapes, values and seeds. No
#: shrinking: a failing edge case is reported as drawn, so a known bug costs one example, not a search.
EDGE_SETTINGS = settings(
    settings.default,
    max_examples=max(2, settings.default.max_examples // 6),
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
)

#: (dtype, scale) pairs whose squares over- or underflow the dtype: the brief's extreme magnitudes.
EXTREMES = [
    (torch.float64, 1e200),
    (torch.float64, 1e-170),
    (torch.float32, 1e20),
    (torch.float32, 1e-25),
]
EXTREME_IDS = [f"{str(d).split('.')[-1]}x{s:g}" for d, s in EXTREMES]

#: The floating input dtypes of the "kind" axes (the tests add integer, bool and complex kinds).
FLOAT_KINDS = ["float64", "float32", "float16", "bfloat16"]
LAYOUTS = ["contiguous", "transposed", "stepped", "expanded"]


def rtol(dtype: torch.dtype) -> float:
    """Relative tolerance of a result computed in ``dtype`` (DESIGN.md: float64 ~1e-10, float32 ~1e-5)."""
    if dtype == torch.float64:
        return 1e-10
    if dtype == torch.float32:
        return 1e-5
    if dtype == torch.float16:
        return 4e-3
    return 3e-2  # bfloat16


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The documented working dtype of the RSA functions: float64 for float64 and integers, else float32."""
    if dtype == torch.float64 or not dtype.is_floating_point:
        return torch.float64
    return torch.float32


def make(kind: str, shape: Sequence[int], gen: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    """A random tensor of ``kind`` (a dtype name): normal values for floats, small integers for ints.

    Half values are drawn in float32 and rounded, so the oracle can use the exact rounded values.
    """
    if kind == "bool":
        return torch.rand(tuple(shape), generator=gen) > 0.5
    if kind in ("int32", "int64", "int8", "int16", "uint8"):
        lo = 0 if kind == "uint8" else -50
        return torch.randint(lo, 50, tuple(shape), generator=gen).to(getattr(torch, kind))
    if kind in ("complex64", "complex128"):
        re = torch.randn(tuple(shape), generator=gen, dtype=torch.float64)
        return torch.complex(re, re.flip(-1)).to(getattr(torch, kind))
    x = torch.randn(tuple(shape), generator=gen, dtype=torch.float64) * scale
    return x.to(getattr(torch, kind))


def layout(x: torch.Tensor, how: str) -> torch.Tensor:
    """x in another memory layout, for oracles computed from the returned tensor.

    transposed: a transposed copy viewed back (permuted strides; 1-d: a column of a (n, 2) tensor);
    stepped: every other element of a twice-as-long last dim (same values as x); expanded: stride 0
    along the first leading dim longer than 1 (else the last dim), i.e. that dim's first slice
    repeated (values change).
    """
    if how == "contiguous":
        return x.contiguous()
    if how == "transposed":
        if x.dim() < 2:
            return torch.stack([x, x], 1)[:, 0]
        return x.transpose(-1, -2).contiguous().transpose(-1, -2)
    if how == "stepped":
        wide = torch.zeros((*x.shape[:-1], 2 * x.shape[-1]), dtype=x.dtype)
        wide[..., ::2] = x
        return wide[..., ::2]
    if how == "expanded":
        for d, size in enumerate(x.shape):  # leading dims first, the last dim only when they are all 1
            if size > 1:
                return x.narrow(d, 0, 1).expand(x.shape)
        return x
    raise ValueError(how)


# ----------------------------------------------------------------------------------------- the rule


def check_error(exc: BaseException, fn: str | tuple[str, ...], names: Iterable[str]) -> None:
    """Asserts that ``exc`` is a clean error of ``fn``: ValueError/TypeError naming one of ``names``, or a
    NotImplementedError naming ``fn`` (or one of the functions it is composed of) and the backend."""
    msg = str(exc)
    if isinstance(exc, NotImplementedError):
        fns = (fn,) if isinstance(fn, str) else fn
        assert any(f in msg for f in fns) and "backend" in msg, f"NotImplementedError not from {fns}: {msg!r}"
        return
    assert isinstance(exc, (ValueError, TypeError)), f"{fn} raised {type(exc).__name__}: {msg!r}\n" + "".join(
        traceback.format_exception(exc)
    )
    names = list(names)
    assert any(n in msg for n in names), f"{fn}'s {type(exc).__name__} names none of {names}: {msg!r}"


@dataclass
class Outcome:
    """What a call did: its value, or the clean error it raised (anything else propagates)."""

    value: Any = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def attempt(call: Callable[[], Any], fn: str | tuple[str, ...], names: Iterable[str]) -> Outcome:
    """Runs ``call``; a clean error (see :func:`check_error`) is returned, anything else fails the test."""
    try:
        return Outcome(value=call())
    except (ValueError, TypeError, NotImplementedError) as exc:
        check_error(exc, fn, names)
        return Outcome(error=exc)


def assert_close(got: Any, want: Any, dtype: torch.dtype, what: str, scale: float | None = None) -> None:
    """got == want within ``rtol(dtype)``, relative to the larger of |want| and ``scale`` (for values
    that are sums of larger terms); NaN never passes, infinities must agree exactly."""
    g = np.asarray(got.detach().double().cpu() if isinstance(got, torch.Tensor) else got, dtype=np.float64)
    w = np.asarray(want.detach().double().cpu() if isinstance(want, torch.Tensor) else want, dtype=np.float64)
    assert g.shape == w.shape, f"{what}: shape {g.shape}, expected {w.shape}"
    assert not np.isnan(g).any(), f"{what}: NaN in the result where the oracle has {w[np.isnan(g)]}"
    assert not np.isnan(w).any(), f"{what}: the oracle itself is NaN; the test case is wrong"
    inf = np.isinf(w)
    np.testing.assert_array_equal(g[inf], w[inf], err_msg=f"{what}: infinities differ")
    finite = ~inf
    ref = np.abs(w[finite]).max(initial=0.0) if scale is None else scale
    tol = rtol(dtype) * max(ref, np.finfo(np.float64).tiny)
    np.testing.assert_allclose(g[finite], w[finite], rtol=rtol(dtype), atol=tol, err_msg=what)


def assert_grads(
    out: torch.Tensor,
    want: torch.Tensor,
    inputs: Sequence[torch.Tensor],
    dtype: torch.dtype,
    what: str,
) -> None:
    """The gradients of ``out.sum()`` match those of the oracle's ``want.sum()`` for every input.

    ``want`` must be a differentiable function of ``inputs`` (or not require grad, when the statistic
    is piecewise constant, e.g. rank-based: then ``out`` must not require grad, or give zero gradients).
    """
    if not want.requires_grad:
        if out.requires_grad:
            grads = torch.autograd.grad(out.sum(), list(inputs), allow_unused=True, retain_graph=True)
            for i, g in enumerate(grads):
                assert g is not None, f"{what}: output requires grad but input {i}'s gradient is None"
                assert bool((g == 0).all()), f"{what}: a piecewise-constant statistic has gradient {g}"
        return
    assert out.requires_grad, f"{what}: the gradient is dropped (the reference's output requires grad)"
    # retain_graph: callers check several outputs of one call (noise_ceiling's lower and upper)
    got = torch.autograd.grad(out.sum(), list(inputs), allow_unused=True, retain_graph=True)
    exp = torch.autograd.grad(want.sum(), list(inputs), allow_unused=True, retain_graph=True)
    for i, (g, e) in enumerate(zip(got, exp, strict=True)):
        if e is None:
            continue
        assert g is not None, f"{what}: backward gives no gradient for input {i}"
        assert_close(g, e, dtype, f"{what}: gradient of input {i}", scale=float(e.abs().max()) + 1e-12)


# ----------------------------------------------------------------------------------------- crash isolation


def _child(call: Callable[[], Any], conn: Any) -> None:
    try:
        conn.send(("ok", call()))
    except BaseException as exc:
        conn.send(("raised", (type(exc).__name__, str(exc))))
    finally:
        conn.close()


def isolated(call: Callable[[], Any], timeout: float = 30.0) -> tuple[str, Any]:
    """Runs ``call`` in a forked child, so that memory corruption (unvalidated compiled ops reading out
    of bounds) fails one test instead of killing the session.

    Returns ("ok", picklable result), ("raised", (exception type name, message)) or ("crashed", exit
    code / "timeout").
    """
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(call, send))
    proc.start()
    send.close()
    result = recv.recv() if recv.poll(timeout) else None
    proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join()
        return ("crashed", "timeout")
    if result is None:
        return ("crashed", proc.exitcode)
    return result


# ----------------------------------------------------------------------------------------- oracles


def np64(x: torch.Tensor) -> np.ndarray:
    """x as a float64 numpy array (exact for every input dtype the tests use)."""
    return x.detach().to(torch.float64).cpu().numpy()


def oracle_rdm(x: np.ndarray, method: str) -> np.ndarray:
    """Condensed RDMs of (..., n, p) float64 patterns with scipy (rsatoolbox's definitions)."""
    lead = x.shape[:-2]
    flat = x.reshape(-1, *x.shape[-2:])
    out = []
    for m in flat:
        if method == "euclidean":
            out.append(pdist(m, "sqeuclidean") / m.shape[-1])
        else:
            out.append(pdist(m, method))
    n = x.shape[-2]
    return np.stack(out).reshape(*lead, -1) if out else np.zeros((*lead, n * (n - 1) // 2))


def oracle_crossnobis(x: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
    """Leave-one-fold-out crossnobis of (..., folds, n, p), from the formula (rsatoolbox, balanced)."""
    lead, (k, n, p) = x.shape[:-3], x.shape[-3:]
    flat = x.reshape(-1, k, n, p)
    i, j = np.triu_indices(n, 1)
    prec = np.eye(p) if noise is None else noise
    out = np.zeros((flat.shape[0], i.size))
    for b, folds in enumerate(flat):
        for f in range(k):
            train = (folds.sum(0) - folds[f]) / (k - 1)
            out[b] += np.einsum("kp,pq,kq->k", train[i] - train[j], prec, folds[f][i] - folds[f][j])
    return (out / (k * p)).reshape(*lead, -1)


def oracle_compare(a: np.ndarray, b: np.ndarray, method: str) -> np.ndarray:
    """Similarity of broadcast (..., K) RDM vectors, vectorised numpy from the definitions, with
    scipy.stats.rankdata for the ranks (exact for int64 input beyond 2^53)."""
    a, b = np.broadcast_arrays(a, b)
    if method in ("spearman", "rho_a"):
        a, b = stats.rankdata(a, axis=-1), stats.rankdata(b, axis=-1)
    if method == "kendall_tau_a":
        k = a.shape[-1]
        # comparisons, not sign(a_k - a_l): infinities are ordered values (inf - inf would be NaN)
        sa = np.greater(a[..., :, None], a[..., None, :]) * 1.0 - np.less(a[..., :, None], a[..., None, :])
        sb = np.greater(b[..., :, None], b[..., None, :]) * 1.0 - np.less(b[..., :, None], b[..., None, :])
        return (sa * sb).sum((-2, -1)) / 2 / (k * (k - 1) / 2)
    a, b = a.astype(np.float64), b.astype(np.float64)
    size = np.sqrt(a.shape[-1]) * np.maximum(np.abs(a).max(-1), np.abs(b).max(-1))
    if method != "cosine":
        a = a - a.mean(-1, keepdims=True)
        b = b - b.mean(-1, keepdims=True)
    dot = (a * b).sum(-1)
    if method == "rho_a":
        k = a.shape[-1]
        return 12 * dot / (k**3 - k)
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    # a vector constant up to rounding (e.g. a pool of r and 1 - r) has no defined correlation
    rounding = np.minimum(np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)) <= 1e-12 * size
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(rounding & (method != "cosine"), np.nan, dot / norms)


def oracle_pool(rdms: np.ndarray, method: str) -> np.ndarray:
    """rsatoolbox's pool_rdm over axis 0."""
    if method in ("spearman", "rho_a", "kendall_tau_a"):
        return stats.rankdata(rdms, axis=-1).mean(0)
    if method == "pearson":
        c = rdms - rdms.mean(-1, keepdims=True)
        return (c / c.std(-1, keepdims=True)).mean(0)
    return (rdms / np.sqrt((rdms**2).mean(-1, keepdims=True))).mean(0)


def oracle_noise_ceiling(rdms: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) as rsatoolbox.inference.boot_noise_ceiling, over axis 0 of (S, ..., K)."""
    s = rdms.shape[0]
    pooled = oracle_pool(rdms, method)
    upper = np.mean([oracle_compare(pooled, rdms[i], method) for i in range(s)], axis=0)
    lower = np.mean(
        [oracle_compare(oracle_pool(np.delete(rdms, i, 0), method), rdms[i], method) for i in range(s)],
        axis=0,
    )
    return lower, upper


def oracle_infonce(x: np.ndarray, y: np.ndarray, scale: float, symmetric: bool) -> np.ndarray:
    """Per-index InfoNCE losses for any logit scale, without overflow where the true loss is finite.

    ``lse_j(c S_ij) - c S_ii = c (M_i - S_ii) + log sum_j exp(c (S_ij - M_i))`` with M_i = max_j S_ij:
    the exponents are <= 0, so a huge c (a tiny temperature) gives the exact limit; an infinite loss
    (beyond float64) comes out as inf, never NaN.
    """
    s = x @ y.T

    def rows(m: np.ndarray) -> np.ndarray:
        top = m.max(1)
        gap = top - np.diagonal(m)
        with np.errstate(over="ignore", invalid="ignore"):
            head = np.where(gap == 0, 0.0, scale * gap)
            expo = np.where(m == top[:, None], 0.0, scale * (m - top[:, None]))
        return head + np.log(np.exp(expo).sum(1))

    r = rows(s)
    return r if not symmetric else 0.5 * (r + rows(s.T))


def env_triton() -> bool:
    """Whether Triton kernels can run here (a GPU, or CPU tensors under TRITON_INTERPRET=1)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
