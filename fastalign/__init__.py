"""fastalign: fast, exact kernels and pipelines for brain-aligned vision models and brain decoding.

torch is imported first; the compiled extension fastalign._C is loaded lazily by the ops that need it,
so importing fastalign never fails because it or Triton is missing (see ``python -m fastalign.info``).
"""

from __future__ import annotations

import torch  # noqa: F401  (before anything that may load fastalign._C)

from fastalign import (
    data,  # brain data loaders; imports no MNE/sklearn until used (~25 ms)
    models,  # CORnet-S and ReAlnet: pure torch, no weights loaded at import (~20 ms)
    train,  # the fit loop and the recipes that use it
)
from fastalign.contrastive import InfoNCELoss, correlation_contrastive_loss, infonce_loss
from fastalign.rsa import (
    ClusterResult,
    PermutationResult,
    cluster_permutation_test,
    compare_rdms,
    noise_ceiling,
    rank,
    rdm,
    rsa_permutation_test,
    time_resolved_rdms,
    time_resolved_rsa,
)

__version__ = "0.1.0"

__all__ = [
    "ClusterResult",
    "InfoNCELoss",
    "PermutationResult",
    "__version__",
    "cluster_permutation_test",
    "compare_rdms",
    "correlation_contrastive_loss",
    "data",
    "infonce_loss",
    "models",
    "noise_ceiling",
    "rank",
    "rdm",
    "rsa_permutation_test",
    "time_resolved_rdms",
    "time_resolved_rsa",
    "train",
]
