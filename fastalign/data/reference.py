"""The published MVNN, loop by loop: the oracle that fastalign.data.mvnn is tested and timed against.

gifale95/eeg_encoding (preprocessing_utils.mvnn) estimates one session's noise covariance with
scikit-learn's shrinkage estimator (``_cov(..., shrinkage="auto")``: Ledoit-Wolf on standardised data)
for every condition and every time point ("time") or repetition ("epochs"), averages over those, then
over conditions, then over the session's partitions, and whitens with the inverse matrix square root.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg


def published_noise_covariance(parts: list[np.ndarray], dim: str) -> np.ndarray:
    """One session's noise covariance (channels, channels) by the published per-condition loops.

    Args:
        parts: the session's partitions (e.g. test and training), each (conditions, repetitions,
            channels, times).
        dim: "time" (a covariance per time point over repetitions) or "epochs" (per repetition over
            time points).
    """
    from sklearn.discriminant_analysis import _cov  # private, as in the published code

    sigma_part = []
    for data in parts:
        sigma_cond = []
        for cond in data:
            if dim == "time":
                covs = [_cov(cond[:, :, t], shrinkage="auto") for t in range(cond.shape[2])]
            else:
                covs = [_cov(np.transpose(cond[e]), shrinkage="auto") for e in range(cond.shape[0])]
            sigma_cond.append(np.mean(covs, axis=0))
        sigma_part.append(np.mean(sigma_cond, axis=0))
    return np.asarray(np.mean(sigma_part, axis=0))


def published_mvnn(parts: list[np.ndarray], dim: str) -> tuple[list[np.ndarray], np.ndarray]:
    """(whitened partitions, noise covariance) of one session, as the published code computes them."""
    sigma = published_noise_covariance(parts, dim)
    inv = scipy.linalg.fractional_matrix_power(sigma, -0.5)
    white = [
        np.reshape((np.reshape(d, (-1, d.shape[2], d.shape[3])).swapaxes(1, 2) @ inv).swapaxes(1, 2), d.shape)
        for d in parts
    ]
    return white, sigma
