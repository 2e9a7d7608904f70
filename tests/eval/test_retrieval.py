"""fastalign.eval.retrieval.retrieval_topk: accuracy, chance, ties, the concept level and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastalign.eval.retrieval import retrieval_topk


def _emb(n: int, d: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_perfect_embeddings_retrieve_everything() -> None:
    gallery = _emb(30)
    got = retrieval_topk(gallery * 3.0, gallery)  # cosine: the scale of a row does not matter
    assert (got["top1"], got["top3"], got["top5"]) == (1.0, 1.0, 1.0)
    assert got["chance"] == {"top1": 1 / 30, "top3": 3 / 30, "top5": 5 / 30}
    assert (got["n_gallery"], got["n_queries"]) == (30, 30)
    # Any gallery size and explicit targets: samples 0..9 are images perm[0..9] of 40.
    gallery = _emb(40, seed=1)
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(2))[:10]
    got = retrieval_topk(gallery[perm].numpy(), gallery.numpy(), perm.numpy(), ks=(1, 2))
    assert (got["top1"], got["top2"], got["n_gallery"], got["n_queries"]) == (1.0, 1.0, 40, 10)


def test_random_embeddings_are_at_chance_on_average() -> None:
    runs = [retrieval_topk(_emb(50, seed=2 * i), _emb(50, seed=2 * i + 1)) for i in range(100)]
    for k in (1, 3, 5):
        mean = np.mean([r[f"top{k}"] for r in runs])
        # 5,000 draws at p = k/50: the standard error is below 0.0045
        assert mean == pytest.approx(k / 50, abs=0.015), (k, mean)


def test_one_wrong_sample() -> None:
    gallery = torch.eye(6)
    brain = gallery.clone()
    brain[2] = gallery[4] + 0.5 * gallery[2]  # ranks image 4 first, its own image second
    got = retrieval_topk(brain, gallery, ks=(1, 2, 3))
    assert got["top1"] == pytest.approx(5 / 6) and got["top2"] == 1.0 and got["top3"] == 1.0


def test_ties_count_against_the_sample() -> None:
    # Images 0 and 1 have one embedding: each sample ties with the other image, so neither is a top-1 hit
    # (the published argmax target would name image 0 for both and score sample 0 right, sample 1 wrong).
    gallery = torch.eye(5)
    gallery[1] = gallery[0]
    got = retrieval_topk(gallery.clone(), gallery, ks=(1, 2))
    assert got["top1"] == pytest.approx(3 / 5)
    assert got["top2"] == 1.0
    # A constant encoder (every score equal) retrieves nothing before the whole gallery.
    flat = retrieval_topk(torch.zeros(5, 5), torch.eye(5), ks=(1, 4, 5))
    assert (flat["top1"], flat["top4"], flat["top5"]) == (0.0, 0.0, 1.0)


def test_concept_level() -> None:
    gallery = torch.eye(6)
    concepts = [0, 0, 1, 1, 2, 2]
    brain = gallery[[1, 0, 3, 2, 5, 4]]  # each sample picks the other image of its own concept
    got = retrieval_topk(brain, gallery, ks=(1,), concepts=concepts)
    assert got["top1"] == 0.0
    assert got["concept_top1"] == 1.0
    assert got["concept_chance"] == {"top1": 1 / 3} and got["n_concepts"] == 3
    with pytest.raises(ValueError, match="top 5 concepts but the gallery has 3"):
        retrieval_topk(brain, gallery, concepts=concepts)
    with pytest.raises(ValueError, match="concepts"):
        retrieval_topk(brain, gallery, ks=(1,), concepts=[0, 1])


def test_concept_chance_of_unequal_concepts_is_the_exact_expectation() -> None:
    """Concepts with more gallery images win more often by chance (ranked by their best image): the
    chance level is the expected concept accuracy of random scores for these queries, here checked
    against enumerating all 6! orders of a gallery of concepts of 3, 1, 1 and 1 images (every order of
    i.i.d. continuous scores is equally likely), and k / c for equal concepts."""
    import itertools

    concepts = [0, 0, 0, 1, 2, 3]
    queries = [0, 1, 3, 4]  # gallery indices of the samples' images: concepts 0, 0, 1, 2
    ks = (1, 2, 3)
    count = dict.fromkeys(ks, 0)
    orders = list(itertools.permutations(range(6)))
    for order in orders:  # order[r]: the gallery image with the r-th best score
        ranking: list[int] = []
        for image in order:
            if concepts[image] not in ranking:
                ranking.append(concepts[image])
        for q in queries:
            for k in ks:
                count[k] += concepts[q] in ranking[:k]
    want = {k: count[k] / (len(orders) * len(queries)) for k in ks}
    brain = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    got = retrieval_topk(brain, torch.eye(6), targets=queries, ks=ks, concepts=concepts)["concept_chance"]
    for k in ks:
        assert got[f"top{k}"] == pytest.approx(want[k], abs=1e-12), (k, got, want)
    assert got["top1"] == pytest.approx((3 / 6 + 3 / 6 + 1 / 6 + 1 / 6) / 4)  # m / G per query
    assert got["top1"] > 1 / 4  # what k / c said
    big = retrieval_topk(torch.randn(3, 4), torch.randn(3_002, 4), targets=[0, 3_000, 3_001], ks=(1, 3),
                         concepts=[0] * 3_000 + [1, 2])["concept_chance"]  # fmt: skip
    assert big["top1"] == pytest.approx(1 / 3, abs=1e-13) and 1 - 1e-13 <= big["top3"] <= 1.0
    even = retrieval_topk(brain, torch.eye(6), targets=queries, ks=ks, concepts=[0, 0, 1, 1, 2, 2])
    assert even["concept_chance"] == {"top1": 1 / 3, "top2": 2 / 3, "top3": 1.0}


@pytest.mark.parametrize(
    ("brain", "gallery", "kwargs", "error", "match"),
    [
        (_emb(4), _emb(4), {}, ValueError, "gallery of 4 images; expected a gallery of at least 5"),
        (_emb(6), _emb(6, d=8), {}, ValueError, "16 features per row but image_emb has 8"),
        (_emb(6), _emb(7), {}, ValueError, "targets=None pairs sample i"),
        (_emb(6) * float("nan"), _emb(6), {}, ValueError, "brain_emb holds 96 NaN or inf"),
        (_emb(6), _emb(6).index_fill(0, torch.tensor([1]), float("inf")), {}, ValueError, "image_emb holds"),
        (_emb(3), _emb(6), {"targets": [0, 1, 6]}, ValueError, "targets must index the gallery of 6"),
        (_emb(3), _emb(6), {"targets": [0, 1]}, ValueError, "targets"),
        (_emb(3), _emb(6), {"targets": [0.0, 1.0, 2.0]}, TypeError, "targets"),
        (_emb(6), _emb(6), {"ks": (0,)}, ValueError, "ks"),
        (_emb(6), _emb(6), {"ks": ()}, TypeError, "ks"),
        (_emb(6).int(), _emb(6), {}, TypeError, "brain_emb"),
        (_emb(6)[0], _emb(6), {}, ValueError, "brain_emb"),
    ],
)
def test_bad_input(brain: torch.Tensor, gallery: torch.Tensor, kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        retrieval_topk(brain, gallery, **kwargs)
