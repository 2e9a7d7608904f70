"""Zero-shot retrieval: which gallery image does a brain embedding pick?

:func:`retrieval_topk` is the evaluation of brain-to-image decoding (NICE, AlignVis): each brain
embedding ranks a gallery of image embeddings (THINGS-EEG2: the 200 test images, never seen in training)
by cosine similarity, and a sample is a top-k hit when its own image is among the k best.

Two choices differ from the published code (AlignVis src/utils.py):

- **The correct image is the sample's own gallery index**, not the argmax of the sample's own image
  embedding against the gallery. The two agree while the gallery's embeddings are distinct; when two
  coincide (a duplicated image, or an image model that maps two images to one point) the argmax names one
  of them for both samples, so one sample is scored against the wrong image whatever the brain did.
- **Ties count against the sample.** The correct image's rank is the number of *other* gallery images
  scoring at least as high as it, so a tie is a miss when it pushes the correct image out of the top k.
  ``topk``'s order among equal scores is arbitrary (the published code inherits it); counting ties
  conservatively means an encoder whose scores are all equal gets 0, not chance by index order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fastalign import _checks

__all__ = ["retrieval_topk"]

_FN = "retrieval_topk"


def _as_tensor(name: str, x: Any) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    _checks.check_tensor(_FN, name, x, shape="(N, D)")
    _checks.check_floating(_FN, name, x)
    _checks.check_shape(_FN, name, x, (None, None), doc="(N, D)")
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{_FN}: {name} holds {bad} NaN or inf value(s); expected finite embeddings")
    return x.detach().to("cpu", torch.float64)


def _labels(name: str, x: Any, n: int, what: str) -> torch.Tensor:
    t = torch.as_tensor(x) if isinstance(x, np.ndarray | Sequence) else x
    if (
        not isinstance(t, torch.Tensor)
        or t.dtype.is_floating_point
        or t.dtype.is_complex
        or t.dtype == torch.bool
    ):
        raise TypeError(_checks.message(_FN, name, f"({n},) integer {what}", x))
    t = t.to("cpu", torch.int64)
    _checks.check_shape(_FN, name, t, (n,), doc=f"({n},) {what}")
    return t


def _hits(scores: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...]) -> dict[str, float]:
    correct = scores.gather(1, targets[:, None])
    # Others at least as good as the correct one: the correct one itself counts once, so subtract it.
    rank = (scores >= correct).sum(1) - 1
    return {f"top{k}": float((rank < k).double().mean()) for k in ks}


def _concept_chance(sizes: list[int], query_concepts: list[int], ks: tuple[int, ...]) -> dict[str, float]:
    """The concept-level top-k accuracy of i.i.d. continuous random scores, averaged over the queries.

    A concept's score is its best image's: for a concept of m images that best score u has density
    m u^(m - 1) (uniform scores), and given u each other concept i beats it independently with probability
    1 - u^(m_i). The number that beat it is Poisson-binomial (a DP over the concepts), and a hit at k is
    fewer than k of them. The integral over u is taken in y = -log(u) (u = e^-y: the integrand's features
    sit at y ~ 1 / G and y ~ 1 / m) by Gauss-Legendre panels of 20 nodes, geometrically spaced from
    1e-3 / G to 40 / m (beyond, e^-(m y) < 1e-17): within 1e-13 of a single Gauss-Legendre rule in u, which
    is exact for this polynomial of degree G - 1 (compared on random galleries of up to 440 images), in a
    time linear in the number of concepts (that rule needs G / 2 nodes and G^3 time: 31 s for 16,553
    images); 1,200 concepts of 1-19 images take 0.4 s.
    """
    c, g = len(sizes), sum(sizes)
    if len(set(sizes)) == 1:  # every concept alike: each is among the k best with probability k / c
        return {f"top{k}": k / c for k in ks}
    x, wx = np.polynomial.legendre.leggauss(20)
    kmax = max(ks)
    size = np.asarray(sizes, dtype=np.float64)[:, None]
    by_size: dict[int, list[float]] = {}  # concepts of one size face the same others
    for j in sorted(set(query_concepts)):
        m = sizes[j]
        if m in by_size:
            continue
        lo, hi = 1e-3 / g, 40.0 / m
        edges = [0.0, lo]
        while edges[-1] < hi:
            edges.append(min(edges[-1] * 2.0, hi))
        a, b = np.asarray(edges[:-1])[:, None], np.asarray(edges[1:])[:, None]
        y = ((b - a) / 2 * x + (a + b) / 2).ravel()  # (nodes,)
        w = ((b - a) / 2 * wx).ravel()
        beats = -np.expm1(-size * y[None, :])  # (c, nodes): 1 - u^(m_i), without cancellation near u = 1
        # dist[r]: probability (per node) that exactly r of the other concepts beat j, r < kmax
        dist = np.zeros((kmax, len(y)))
        dist[0] = 1.0
        for i, p in enumerate(beats):
            if i == j:
                continue
            shifted = np.vstack([np.zeros((1, len(y))), dist[:-1] * p])
            dist = dist * (1 - p) + shifted
        cum = np.cumsum(dist, axis=0) @ (m * np.exp(-m * y) * w)  # P(fewer than r + 1 concepts beat j)
        by_size[m] = [float(min(1.0, max(0.0, cum[k - 1]))) for k in ks]
    n = len(query_concepts)
    return {
        f"top{k}": min(1.0, sum(by_size[sizes[j]][i] for j in query_concepts) / n) for i, k in enumerate(ks)
    }


def retrieval_topk(
    brain_emb: torch.Tensor | np.ndarray,
    image_emb: torch.Tensor | np.ndarray,
    targets: torch.Tensor | np.ndarray | Sequence[int] | None = None,
    ks: Sequence[int] = (1, 3, 5),
    *,
    concepts: torch.Tensor | np.ndarray | Sequence[int] | None = None,
) -> dict[str, Any]:
    """Top-k retrieval accuracy of brain embeddings against a gallery of image embeddings.

    Similarity is cosine (each row scaled to unit L2 norm; a zero row scores 0 against everything).
    Sample i is a top-k hit when fewer than k other gallery images score at least as high as its correct
    image ``targets[i]``: ties count as misses (see the module doc for why, and for why the correct image
    is the sample's own index rather than the published argmax of its image's embedding).

    Args:
        brain_emb: (N, D) brain embeddings, one per sample.
        image_emb: (G, D) gallery image embeddings (any G >= max(ks); THINGS-EEG2: 200).
        targets: (N,) gallery index of each sample's image; None: sample i is image i (needs N == G).
        ks: the k's, each an int >= 1.
        concepts: optional (G,) concept label of each gallery image: adds the concept-level accuracy
            ``concept_top{k}``, where concepts are ranked by their best image's score and a hit is the
            sample's concept among the k best (ties against it again count as misses). Needs at least
            max(ks) concepts.

    Returns:
        ``{"top{k}": accuracy, ..., "chance": {"top{k}": k / G, ...}, "n_gallery": G, "n_queries": N}``,
        plus with ``concepts`` ``concept_top{k}``, ``concept_chance`` and ``n_concepts``. Accuracies are
        Python floats in [0, 1]. ``concept_chance`` is the expected concept-level accuracy of random
        scores for these queries: k / number of concepts when every concept has as many gallery images,
        more for queries of concepts with more images (ranked by their best image, a concept of m of the
        G images comes first with probability m / G).

    Raises:
        TypeError: non-floating embeddings, non-integer targets or concepts, a bad k.
        ValueError: wrong shapes (other D, targets of another length, N != G without targets), NaN or
            inf, targets out of range, a gallery (or concept set) smaller than a k.
    """
    brain = _as_tensor("brain_emb", brain_emb)
    gallery = _as_tensor("image_emb", image_emb)
    n, g = brain.shape[0], gallery.shape[0]
    if brain.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"{_FN}: brain_emb has {brain.shape[1]} features per row but image_emb has {gallery.shape[1]}; "
            "expected one embedding size"
        )
    if n == 0 or g == 0:
        raise ValueError(f"{_FN}: brain_emb has {n} rows and image_emb {g}; expected at least one of each")
    if isinstance(ks, str | bytes) or not isinstance(ks, Sequence) or not ks:
        raise TypeError(_checks.message(_FN, "ks", "a non-empty sequence of ints >= 1", ks))
    ks = tuple(_checks.check_int(_FN, "ks[i]", k, minimum=1) for k in ks)
    if max(ks) > g:
        raise ValueError(
            f"{_FN}: ks={list(ks)} asks for the top {max(ks)} of a gallery of {g} images; expected a gallery "
            f"of at least {max(ks)}"
        )
    if targets is None:
        if n != g:
            raise ValueError(
                f"{_FN}: targets=None pairs sample i with gallery image i, but brain_emb has {n} rows and "
                f"image_emb {g}; pass targets (each sample's gallery index)"
            )
        target = torch.arange(n)
    else:
        target = _labels("targets", targets, n, "gallery indices")
        if n and not (0 <= int(target.min()) and int(target.max()) < g):
            raise ValueError(
                f"{_FN}: targets must index the gallery of {g} images, got values from {int(target.min())} "
                f"to {int(target.max())}"
            )
    scores = F.normalize(brain, dim=1) @ F.normalize(gallery, dim=1).T
    out: dict[str, Any] = _hits(scores, target, ks)
    out["chance"] = {f"top{k}": k / g for k in ks}
    out["n_gallery"], out["n_queries"] = g, n
    if concepts is not None:
        labels = _labels("concepts", concepts, g, "concept labels of the gallery images")
        names, index = torch.unique(labels, return_inverse=True)
        c = len(names)
        if max(ks) > c:
            raise ValueError(
                f"{_FN}: ks={list(ks)} asks for the top {max(ks)} concepts but the gallery has {c}; expected "
                f"at least {max(ks)} concepts"
            )
        per_concept = torch.full((n, c), -torch.inf, dtype=scores.dtype)
        per_concept.scatter_reduce_(1, index.expand(n, g), scores, reduce="amax")
        hits = _hits(per_concept, index[target], ks)
        out.update({f"concept_{k}": v for k, v in hits.items()})
        sizes = torch.bincount(index, minlength=c).tolist()
        out["concept_chance"] = _concept_chance(sizes, index[target].tolist(), ks)
        out["n_concepts"] = c
    return out
