"""The oracle for the InfoNCE / CLIP loss: materialises the N x N logits in the inputs' dtype.

Readable eager PyTorch; supports autograd and float64; defines the semantics every backend must match.
The correlation-contrastive loss's oracle builds its B x B Pearson matrix the same way.
"""

from __future__ import annotations

import math

import torch

from fastalign._checks import magnitude_shift, pow2


def infonce_loss_reference(
    x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor | float, *, symmetric: bool = True
) -> torch.Tensor:
    """Per-index InfoNCE losses.

    Args:
        x: (N, D) queries; row i's positive is y[i].
        y: (N, D) keys.
        scale: logit scale, 1 / temperature (float or 0-dim tensor; gradients flow to a tensor).
        symmetric: CLIP's loss, the mean of the row (x -> y) and column (y -> x) cross-entropies.

    Returns:
        (N,) losses: ``lse_j(S[i, j]) - S[i, i]`` for rows, averaged with ``lse_j(S[j, i]) - S[i, i]``
        for columns when symmetric, where ``S = scale * x @ y.T``.
    """
    logits = (x @ y.T) * scale
    positives = logits.diagonal()
    rows = torch.logsumexp(logits, dim=1) - positives
    if not symmetric:
        return rows
    cols = torch.logsumexp(logits, dim=0) - positives
    return 0.5 * (rows + cols)


def centred_unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Each row of ``x`` (B, D) centred and scaled to unit norm, in x's dtype: Pearson's
    ``r(x_i, y_j) = <z_i, w_j>`` for ``z = centred_unit_rows(x)`` and ``w = centred_unit_rows(y)``.

    A row of zero variance (constant) comes out NaN, as do rows holding NaN or inf. Differentiable.
    """
    # Pearson is scale-invariant: an exact power of two bringing each row's largest |value| into
    # [0.5, 1) keeps the sums of squares from overflowing or underflowing at any finite magnitude
    limit = -math.ceil(math.log2(torch.finfo(x.dtype).tiny))  # 2**k and 2**-k stay normal
    k = magnitude_shift(x.detach().abs().amax(dim=1), low=math.inf, high=math.inf, limit=limit)
    x = x * pow2(k, x.dtype)[:, None]
    # subtracting the first value before the mean turns a constant row into exact zeros (so 0 / 0:
    # NaN), where the mean alone could leave rounding noise that normalises to a spurious pattern
    x = x - x[:, :1]
    centred = x - x.mean(dim=1, keepdim=True)
    return centred / torch.linalg.vector_norm(centred, dim=1, keepdim=True)


def correlation_contrastive_loss_reference(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """ReAlnet's correlation-contrastive loss from the explicit B x B Pearson matrix, in the inputs' dtype.

    Args:
        pred: (B, D) predicted responses, B >= 2, D >= 2.
        target: (B, D) recorded responses, of pred's dtype.

    Returns:
        0-dim ``1 - mean_i R[i, i] + mean_{i != j} R[i, j]`` with ``R[i, j]`` the Pearson correlation of
        pred[i] and target[j] over D (NaN where a row is constant or not finite).
    """
    r = centred_unit_rows(pred) @ centred_unit_rows(target).T
    off_diagonal = ~torch.eye(r.shape[0], dtype=torch.bool, device=r.device)
    return 1 - r.diagonal().mean() + r[off_diagonal].mean()
