"""Multivariate noise normalisation (MVNN) of epoched EEG, vectorised.

The published THINGS-EEG2 pipeline (Gifford et al. 2022, gifale95/eeg_encoding, after Guggenmos et
al. 2018) estimates, for every image condition, the channel covariance of the noise across repetitions
with scikit-learn's ``_cov(X, shrinkage="auto")`` (Ledoit-Wolf on standardised data, rescaled), either
at every time point (``dim="time"``: X is repetitions x channels) or for every repetition
(``dim="epochs"``: X is times x channels), averages these matrices over time points / repetitions and
conditions, then over the data partitions of a session (test, training), and whitens the data with the
inverse matrix square root of the result.

The reference loops over ~800k tiny (2 x 17) problems per session in Python; here the same arithmetic
runs as batched numpy over blocks of conditions, so a published-size session takes seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from fastalign._checks import check_choice, check_int, magnitude_shift, message
from fastalign.data._io import SAFE_HIGH, SAFE_LOW
from fastalign.data.responses import as_responses

MVNNDim = Literal["time", "epochs"]
_DIMS = ("time", "epochs")
# Data values per block of conditions: each float64 temporary of a block is at most 16 MiB.
_BLOCK_VALUES = 1 << 21


def _shrunk_cov_sum(x: np.ndarray) -> np.ndarray:
    """Sum over the batch of sklearn's ``_cov(x[b], shrinkage="auto")``; x is (batch, n_samples, p).

    Same arithmetic as StandardScaler -> ledoit_wolf -> rescale, including StandardScaler's rule that a
    (numerically) constant feature keeps scale 1 instead of being divided by ~0. Rescaling undoes the
    standardisation, so each term is (1 - s_b) * C_b + s_b * mu_b * diag(scale_b^2), with C_b the plain
    biased covariance and s_b, mu_b the Ledoit-Wolf shrinkage and mean variance of the standardised
    data z. The shrinkage needs only ||z^T z||_F and the row norms of z, which come from the smaller of
    the two Gram matrices; with few samples the weighted sum of the C_b is one (p x batch*n) GEMM.
    """
    n, p = x.shape[1], x.shape[2]
    mean = x.mean(axis=1, keepdims=True)
    xc = x - mean
    var = np.square(xc).mean(axis=1)
    eps = np.finfo(np.float64).eps
    constant = var <= n * eps * var + (n * mean[:, 0, :] * eps) ** 2
    scale2 = np.where(constant, 1.0, var)
    if n <= p:  # few samples (dim="time"): the n x n Gram matrix of z is the small one
        z = xc / np.sqrt(scale2)[:, None, :]
        gram = np.matmul(z, z.transpose(0, 2, 1))
        delta_ = np.square(gram).sum(axis=(1, 2)) / n**2
        row_norms = np.diagonal(gram, axis1=1, axis2=2)
    else:  # many samples (dim="epochs"): work on the p x p covariances
        cov = np.matmul(xc.transpose(0, 2, 1), xc) / n
        inv_scale = 1.0 / np.sqrt(scale2)
        emp = cov * inv_scale[:, :, None] * inv_scale[:, None, :]
        delta_ = np.square(emp).sum(axis=(1, 2))
        row_norms = (np.square(xc) / scale2[:, None, :]).sum(axis=2)
    beta_ = np.square(row_norms).sum(axis=1)
    trace = row_norms.sum(axis=1) / n
    mu = trace / p
    beta = (beta_ / n - delta_) / (p * n)
    delta = (delta_ - 2.0 * mu * trace + p * mu**2) / p
    beta = np.minimum(beta, delta)
    # delta == 0 means the standardised covariance already is mu * I (always so for one channel), where
    # every shrinkage gives the same matrix; 0 avoids dividing rounding noise by zero.
    shrinkage = np.divide(beta, delta, out=np.zeros_like(beta), where=(beta != 0) & (delta > 0) & (p > 1))
    if n <= p:
        weighted = (xc * (1.0 - shrinkage)[:, None, None]).reshape(-1, p)
        total = weighted.T @ xc.reshape(-1, p) / n
    else:
        total = np.tensordot(1.0 - shrinkage, cov, axes=1)
    total[np.arange(p), np.arange(p)] += (shrinkage * mu) @ scale2
    return np.asarray(total)


def _check_dim(dim: str, fn: str) -> None:
    check_choice(fn, "dim", dim, _DIMS)


def _check_partition(x: np.ndarray, dim: MVNNDim, name: str, fn: str) -> None:
    """Refuses partitions from which ``dim``'s covariances cannot be estimated."""
    n_rep, n_t = x.shape[1], x.shape[3]
    if x.size == 0:
        raise ValueError(
            f"{fn}: {name} has shape {x.shape}; expected at least one condition, repetition, channel and "
            "time point"
        )
    if dim == "time" and n_rep < 2:
        raise ValueError(
            f"{fn}: dim='time' needs at least 2 repetitions per condition, got {name} of shape {x.shape}"
        )
    if dim == "epochs" and n_t < 2:
        raise ValueError(f"{fn}: dim='epochs' needs at least 2 time points, got {name} of shape {x.shape}")


def _max_abs(x: np.ndarray) -> float:
    # max and min instead of abs(x).max(): no temporary the size of the data
    return max(abs(float(x.max())), abs(float(x.min())))


def _scaled_noise_covariance(x: np.ndarray, dim: MVNNDim, shift: int) -> np.ndarray:
    """The noise covariance of ``x * 2**shift`` (see :func:`noise_covariance`); x is checked."""
    n_cond, n_rep, n_ch, n_t = x.shape
    per_cond = n_t if dim == "time" else n_rep
    block = max(1, _BLOCK_VALUES // (n_rep * n_ch * n_t))
    total = np.zeros((n_ch, n_ch))
    for start in range(0, n_cond, block):
        chunk = np.asarray(x[start : start + block], dtype=np.float64)
        if shift:
            chunk = np.ldexp(chunk, shift)
        if dim == "time":  # problems (condition, time): samples = repetitions
            problems = chunk.transpose(0, 3, 1, 2).reshape(-1, n_rep, n_ch)
        else:  # problems (condition, repetition): samples = time points
            problems = chunk.transpose(0, 1, 3, 2).reshape(-1, n_t, n_ch)
        total += _shrunk_cov_sum(problems)
    # Every condition contributes the same number of problems, so the grand mean equals the mean over
    # conditions of the per-condition means, as in the reference.
    return total / (n_cond * per_cond)


def noise_covariance(data: Any, dim: MVNNDim = "time") -> np.ndarray:
    """The MVNN noise covariance of one data partition.

    Args:
        data: (n_conditions, n_repetitions, n_channels, n_times) epoched EEG (array or tensor), an
            EEGResponses, or mne.Epochs with one event code per image.
        dim: "time": covariance over repetitions at each time point (needs >= 2 repetitions);
            "epochs": covariance over time points within each repetition.

    Returns:
        (n_channels, n_channels) float64: the per-condition shrinkage covariances averaged over time
        points (or repetitions) and conditions. Data of extreme magnitude (beyond 2**+-400) are rescaled
        by an exact power of two first, so the result is exact wherever it is representable (entries
        beyond float64's range are inf or 0).
    """
    fn = "noise_covariance"
    _check_dim(dim, fn)
    x = as_responses(data).data
    _check_partition(x, dim, "data", fn)
    shift = int(magnitude_shift(_max_abs(x), low=SAFE_LOW, high=SAFE_HIGH))
    return np.ldexp(_scaled_noise_covariance(x, dim, shift), -2 * shift)


def _fit_indices(fit_on: Any, n_parts: int | None, fn: str) -> list[int]:
    """The partitions ``fit_on`` names (all when None); ``n_parts`` is None for a single partition."""
    if fit_on is None:
        return list(range(n_parts or 1))
    if n_parts is None:
        raise ValueError(
            f"{fn}: fit_on={fit_on!r} needs data as a list of partitions (e.g. [test, training]), got one "
            "partition"
        )
    expected = f"a non-empty sequence of distinct partition indices in 0..{n_parts - 1}"
    if isinstance(fit_on, (str, bytes)) or not isinstance(fit_on, (Sequence, np.ndarray)):
        raise TypeError(message(fn, "fit_on", expected, fit_on))
    idx = [check_int(fn, f"fit_on[{j}]", i, minimum=0) for j, i in enumerate(fit_on)]
    if not idx or max(idx) >= n_parts or len(set(idx)) != len(idx):
        raise ValueError(f"{fn}: fit_on must be {expected}, got {list(fit_on)}")
    return idx


def inverse_sqrt(sigma: np.ndarray) -> np.ndarray:
    """sigma^(-1/2) of a symmetric positive-definite matrix (what scipy's fractional_matrix_power gives)."""
    w, v = np.linalg.eigh((sigma + sigma.T) / 2)
    if w.min() <= 0 or not np.isfinite(w).all():
        raise ValueError(
            f"mvnn: the noise covariance is not positive definite (smallest eigenvalue {w.min():.3g}); "
            "is a channel flat or a copy of another?"
        )
    return np.asarray((v / np.sqrt(w)) @ v.T)


def _whiten(x: np.ndarray, sigma_inv: np.ndarray, shift: int) -> np.ndarray:
    """``sigma_inv @ (x * 2**shift)`` along channels, in x's floating dtype (float64 for integers)."""
    out_dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
    n_cond, n_rep, n_ch, n_t = x.shape
    out = np.empty(x.shape, dtype=out_dtype)
    block = max(1, _BLOCK_VALUES // (n_rep * n_ch * n_t))
    for start in range(0, n_cond, block):
        chunk = np.asarray(x[start : start + block], dtype=np.float64)
        if shift:
            chunk = np.ldexp(chunk, shift)
        # One (channels x everything) GEMM per block: a broadcast matmul makes one small BLAS call per
        # epoch, whose threading overhead dominates (seconds for a few hundred epochs on a busy machine).
        flat = chunk.transpose(2, 0, 1, 3).reshape(n_ch, -1)
        white = (sigma_inv @ flat).reshape(n_ch, len(chunk), n_rep, n_t)
        out[start : start + block] = white.transpose(1, 2, 0, 3)
    return out


def mvnn(
    data: Any, dim: MVNNDim = "time", *, return_covariance: bool = False, fit_on: Sequence[int] | None = None
) -> Any:
    """Multivariate noise normalisation of one recording session.

    Args:
        data: One partition — (n_conditions, n_repetitions, n_channels, n_times) array or tensor,
            EEGResponses or mne.Epochs — or a list/tuple of partitions of the same session (the
            published pipeline passes [test, training]); all must have the same channels.
        dim: "time" or "epochs" (see :func:`noise_covariance`).
        return_covariance: Also return the (n_channels, n_channels) averaged covariance.
        fit_on: Indices into the list ``data`` of the partitions whose covariances are averaged; None:
            all of them (gifale95/eeg_encoding). ``fit_on=[1]`` with ``[test, training]`` estimates the
            covariance from the training partition only, as AlignVis (NICE) does
            (``sigma_tot = sigma_part[1]``), so no test statistic enters the whitening.

    Returns:
        The whitened data, same shape(s) as the input arrays (float64 for integer input, else the input
        dtype; bfloat16 tensors give float32): an array for one partition, a list for a list. With
        ``return_covariance``, a tuple (whitened, sigma). The covariance of a list is the unweighted
        mean of the covariances of the partitions in ``fit_on``, as published; every partition is
        whitened with the same matrix. Whitening does not depend on the data's scale: data of extreme
        magnitude (beyond 2**+-400) are rescaled by an exact power of two before the covariance, so they
        whiten like data of ordinary size (sigma itself is inf or 0 where its true entries leave
        float64's range).

    Raises:
        TypeError, ValueError: data that is not 4-d real and finite, an empty axis, too few repetitions
            (dim="time") or time points (dim="epochs"), partitions with different channel counts,
            ``fit_on`` that is not a non-empty list of distinct partition indices (or given for a single
            partition), or a noise covariance that is not positive definite (a flat channel, a copy of
            another, or noiseless repetitions).
    """
    fn = "mvnn"
    _check_dim(dim, fn)
    many = isinstance(data, (list, tuple))
    names = [f"data[{i}]" for i in range(len(data))] if many else ["data"]
    parts = [as_responses(p, n).data for p, n in zip(data if many else [data], names, strict=True)]
    if not parts:
        raise ValueError("mvnn: data is an empty list; expected one or more partitions")
    if len({p.shape[2] for p in parts}) != 1:
        raise ValueError(
            f"mvnn: all partitions must have the same channel count, got shapes {[p.shape for p in parts]}"
        )
    fitted = _fit_indices(fit_on, len(parts) if many else None, fn)
    for i, (p, name) in enumerate(zip(parts, names, strict=True)):
        # Only the partitions a covariance is estimated from need the repetitions or times for it.
        if i in fitted or p.size == 0:
            _check_partition(p, dim, name, fn)
    # One shift for all partitions: they are whitened by one matrix.
    shift = int(magnitude_shift(max(_max_abs(p) for p in parts), low=SAFE_LOW, high=SAFE_HIGH))
    scaled = np.mean([_scaled_noise_covariance(parts[i], dim, shift) for i in fitted], axis=0)
    sigma_inv = inverse_sqrt(scaled)
    white = [_whiten(p, sigma_inv, shift) for p in parts]
    out: Any = white if many else white[0]
    return (out, np.ldexp(scaled, -2 * shift)) if return_covariance else out
