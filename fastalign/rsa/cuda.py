"""RSA through the CUDA kernels of fastalign._C (kernels/rsa.cu, launched by csrc/cuda/rsa_cuda.cpp).

- ``rank`` / ``prepare``: ATen's segmented sort per row, then one block per row turns the sorted values
  into average ranks with block-wide max/min scans of tie-group bounds (int64, exact at any length).
- ``permutation_null``: permuted condensed RDMs gathered by a kernel that computes pair indices on the
  fly, reduced against the fixed RDMs by batched GEMMs (cuBLAS), a chunk of permutations at a time.

RDMs on CUDA use the Triton kernel (fastalign.rsa.triton) or the torch backend.
"""

from __future__ import annotations

import torch

from fastalign import _ext
from fastalign.rsa import common

rank = common.ext_rank
prepare = common.ext_prepare


def compare(a: torch.Tensor, b: torch.Tensor, method: str) -> torch.Tensor:
    """Linear-method similarities broadcast over leading dims."""
    za, zb = prepare(a, method), prepare(b, method)
    return common.dot(za, zb) * common.linear_scale(method, a.shape[-1])


def permutation_null(fixed: torch.Tensor, moving: torch.Tensor, perms: torch.Tensor, n: int) -> torch.Tensor:
    """(P, *broadcast): sum_k fixed[..., k] * moving[..., idx_p[k]] (see torch_chunked.permutation_null)."""
    _ext.load()
    return common.gathered_null(torch.ops.fastalign.rsa_permute_condensed, fixed, moving, perms, 1 << 26)
