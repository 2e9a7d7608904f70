"""The oracle for the InfoNCE / CLIP loss: materialises the N x N logits in the inputs' dtype.

Readable eager PyTorch; supports autograd and float64; defines the semantics every backend must match.
"""

from __future__ import annotations

import torch


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
