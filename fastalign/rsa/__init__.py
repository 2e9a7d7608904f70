"""Representational similarity analysis: RDMs, exact ranks, RDM comparison, permutation and cluster
statistics, noise ceilings; batched over leading dims, with rsatoolbox's definitions."""

from fastalign.rsa.api import compare_rdms, rank, rdm, time_resolved_rdms, time_resolved_rsa
from fastalign.rsa.stats import (
    ClusterResult,
    PermutationResult,
    cluster_permutation_test,
    noise_ceiling,
    rsa_permutation_test,
)

__all__ = [
    "ClusterResult",
    "PermutationResult",
    "cluster_permutation_test",
    "compare_rdms",
    "noise_ceiling",
    "rank",
    "rdm",
    "rsa_permutation_test",
    "time_resolved_rdms",
    "time_resolved_rsa",
]
