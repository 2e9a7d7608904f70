"""Individual variability: how different the models aligned to different people are, layer by layer.

For each family of aligned models (one per subject) and each layer, the dissimilarity of two subjects'
models is 1 - Spearman between their RDMs of the test images; a family's variability at a layer is the
mean over all pairs. The ReAlnet paper reports that it rises from V1 to IT: alignment to a person changes
the higher areas the most.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, Protocol

import torch

from fastalign.rsa import compare_rdms

__all__ = ["AREA_ORDER", "variability"]

#: The visual areas in processing order, for "does it rise from V1 to IT".
AREA_ORDER = ("V1", "V2", "V4", "IT")


class _Slot(Protocol):
    """One model RDM: its family, the subject its model was aligned to ("" if none), its layer."""

    @property
    def model(self) -> str: ...
    @property
    def subject(self) -> str: ...
    @property
    def layer(self) -> str: ...


def variability(slots: Sequence[_Slot], rdms: torch.Tensor) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """variability.csv's rows and the summary of each family with models of two or more subjects.

    Args:
        slots: Per model RDM, its family (``model``), the subject it was aligned to ("" if none) and layer.
        rdms: (n_slots, n_pairs) the RDMs, one per slot, of one image set.

    Returns:
        (rows with layer, model_a, model_b (the two models' subjects), dissimilarity and model (the
        family), summary: family -> {"mean": layer -> mean dissimilarity, "n_pairs": layer -> the
        number of model pairs compared there (layers can hold different subjects' models), "rises_v1_to_it":
        IT's mean above V1's (None without both), "monotonic": the means non-decreasing over the areas
        V1, V2, V4, IT that were evaluated (None with fewer than 2)}). The two flags are descriptive:
        comparisons of the means, not tests (no uncertainty enters them).
    """
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    families = list(dict.fromkeys(s.model for s in slots if s.subject))
    for family in families:
        members = [i for i, s in enumerate(slots) if s.model == family]
        layers = list(dict.fromkeys(slots[i].layer for i in members))
        means: dict[str, float] = {}
        n_pairs: dict[str, int] = {}
        for layer in layers:
            at = sorted((slots[i].subject, i) for i in members if slots[i].layer == layer)
            if len(at) < 2:
                continue
            # every subject against every other in one broadcast call: each RDM is ranked twice (once per
            # side), where a stack per pair ranked each n - 1 times (10 subjects x 4 layers x 19,900 pairs,
            # 2 threads: 59 -> 15 ms)
            stack = torch.stack([rdms[i] for _, i in at])
            dis = (1 - compare_rdms(stack[:, None, :], stack[None, :, :], "spearman")).tolist()
            pairs = list(itertools.combinations(range(len(at)), 2))
            d = [dis[i][j] for i, j in pairs]
            for (i, j), value in zip(pairs, d, strict=True):
                rows.append(
                    {"layer": layer, "model_a": at[i][0], "model_b": at[j][0], "dissimilarity": value,
                     "model": family}
                )  # fmt: skip
            means[layer] = sum(d) / len(d)
            n_pairs[layer] = len(d)
        if not means:
            continue
        areas = [means[a] for a in AREA_ORDER if a in means]
        summary[family] = {
            "mean": means,
            "n_pairs": n_pairs,
            "rises_v1_to_it": means["IT"] > means["V1"] if "IT" in means and "V1" in means else None,
            "monotonic": all(x <= y for x, y in itertools.pairwise(areas)) if len(areas) >= 2 else None,
        }
    return rows, summary
