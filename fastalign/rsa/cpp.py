"""RSA through the C++/OpenMP kernels of fastalign._C (csrc/rsa.cpp), for CPU tensors.

``rank`` sorts each row as (value, index) pairs on its own thread; ``permutation_null`` gathers
permuted condensed RDMs with pair indices computed on the fly (no (P, K) index tensor) and reduces
them with batched matrix products.
"""

from __future__ import annotations

import torch

from fastalign import _ext

_CHUNK_ELEMENTS = 1 << 24


def missing() -> str | None:
    """None when the RSA ops are registered, else why not."""
    why = _ext.why_unavailable()
    if why is not None:
        return why
    if not hasattr(torch.ops.fastalign, "rsa_rank"):
        return "fastalign._C was built without the RSA ops (csrc/rsa.cpp); rebuild it"
    return None


def rank(x: torch.Tensor) -> torch.Tensor:
    """Average ranks along the last dim, float64 (x: float64, float32, int64 or int32 on the CPU)."""
    _ext.load()
    return torch.ops.fastalign.rsa_rank(x)


def permutation_null(fixed: torch.Tensor, moving: torch.Tensor, perms: torch.Tensor, n: int) -> torch.Tensor:
    """(P, *broadcast): sum_k fixed[..., k] * moving[..., idx_p[k]] (see torch_chunked.permutation_null)."""
    _ext.load()
    k = moving.shape[-1]
    lead = moving.shape[:-1]
    flat = moving.reshape(-1, k).contiguous()
    shape = torch.broadcast_shapes(fixed.shape[:-1], lead)
    pad = [1] * (len(shape) - len(lead))  # keeps the permutation dim left of the batch dims
    out = torch.empty((perms.shape[0], *shape), dtype=fixed.dtype)
    step = max(1, _CHUNK_ELEMENTS // max(flat.numel(), 1))
    for s in range(0, perms.shape[0], step):
        g = torch.ops.fastalign.rsa_permute_condensed(flat, perms[s : s + step].contiguous())
        out[s : s + step] = torch.einsum("...k,...k->...", fixed, g.reshape(-1, *pad, *lead, k))
    return out
