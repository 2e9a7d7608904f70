"""The evaluation after feature extraction: fastalign.eval.evaluate vs rsatoolbox / mne-rsa + MNE.

Workload (issue 13's): 10 subjects x 200 test images x 17 channels x 100 time points of EEG (100 Hz from
-200 ms, as THINGS-EEG2's test epochs), and 2 models with 4 layers each: CORnet-S and an aligned model
per subject (float32 features, 4,096 per layer, as the RSA benchmark's; the published CORnet-S layers are
25,088 to 200,704 wide: the ``widths`` case times one model's RDMs at those widths). The whole analysis
from features to statistics:

- model RDMs (1 - Pearson) of every layer of CORnet-S and of each subject's aligned model;
- each subject's brain RDM (1 - Pearson over channels) at each time point, and the Spearman similarity
  of each model-layer RDM with it: CORnet-S and the subject's own aligned model ("within");
- per layer, three cluster-based sign-flip permutation tests over time (tail 1, cluster-forming
  threshold at the one-sample t quantile of p = 0.05, 10,000 permutations: all 2^10 = 1,024 flips are
  enumerated): CORnet-S against 0, the aligned model against 0, and aligned minus CORnet-S against 0.

Providers, each a whole pipeline timed as one call:

- ``fastalign evaluate``: what a user calls, :func:`fastalign.eval.evaluate` on a ``BrainData`` and
  ``EvalModel``s holding the features (``out=None``: no files). It computes more than the baselines:
  every aligned model against every subject (across-subject, 10x the curves), the noise ceiling, the
  across-subject tests (20 cluster tests, not 12), individual variability and the tidy table's rows.
- ``fastalign rsa+stats``: the baselines' work exactly, through fastalign's public ops (``rdm``,
  ``time_resolved_rsa`` per subject, ``cluster_permutation_test``), which evaluate is built from.
- ``rsatoolbox + MNE``: ``rsatoolbox.rdm.calc_rdm`` (one Dataset per time point: faster here than
  ``calc_rdm_movie``, which splits a TemporalDataset into the same per-time calls), ``rdm.concat``,
  ``rdm.compare(..., "spearman")`` per subject (8 model RDMs x 100 brain RDMs in one call), and
  ``mne.stats.permutation_cluster_1samp_test`` for each test.
- ``mne-rsa + MNE``: ``mne_rsa.compute_rdm`` for the models and ``mne_rsa.rsa_array`` with a temporal
  searchlight of radius 0 per subject (where mne-rsa imports: ``pip install --no-deps mne-rsa nibabel``,
  its GUI dependencies do not install here; else a skipped row), MNE's cluster test.
- ``numpy + MNE``: the same maths as rsatoolbox's, written with numpy as a user who knows BLAS would: the
  float64 RDMs of all layers and time points by matrix products (rsatoolbox's np.einsum does not use
  BLAS: 63 against 5 ms for one 200 x 4,096 Gram matrix), every RDM ranked once by argsort (rsatoolbox
  ranks row by row with scipy, the model RDMs again for each subject), Spearman as dot products of
  centred unit ranks; MNE's cluster test as it is.
- ``numpy + vectorised MNE test``: the same, with MNE's exact test replicated over all flips at once
  (its flips, its t formula and summation order, its null: ``meta.vectorised_check`` holds it equal to
  MNE's, cluster for cluster and value for value); MNE loops over the flips in Python.
- on a CUDA device, ``fastalign rsa+stats`` again with the tensors on the GPU (evaluate's RSA runs on the
  CPU whatever its ``device``, which only places the models).

Equal results in the same run (``meta.checks``): every provider's (2, 4, 10, 100) similarities against
evaluate's to 1e-6, and the same clusters (start, stop) in every test. MNE's exact one-tailed null holds
the identity twice and lacks the all-negative flip (fastalign.cluster_permutation_test's docs), so each
MNE p-value must equal fastalign's plus 1/1024 exactly when the all-negative flip (-t) does not reach the
cluster's mass, and plus 0 when it does (for a test's largest cluster MNE may count one identity fewer:
see :func:`check`); MNE's null must equal ours under its convention (``meta.null_check``), and for
two-sided tests (checked on the paired effects) the two agree exactly. Timing: interleaved rounds (each
runs every provider once, so all see the same load on a shared machine), wall clock (perf_counter) and
the process's CPU time (all threads); every CPU provider runs again limited to ``--threads`` (default 1;
torch's threads and BLAS's through threadpoolctl), since on a loaded machine short OpenMP regions on 2
threads stall; "x" columns are medians of per-round ratios to the baseline on the same thread count;
peak memory is the resident-set growth of each CPU provider's full-size call in a fresh process, after
a call on a tiny workload (libraries loaded, thread pools started), with every allocation over 128 KiB
its own mapping returned when freed (harness.peak_memory_bytes; in the benchmark's process, which keeps
freed memory, a call reused the heap the others freed). Nothing is extrapolated: every baseline runs at
full size.

    flock /tmp/fastalign-bench.lock python benchmarks/bench_evaluate.py   # writes results/evaluate-*.json
    python benchmarks/bench_evaluate.py --quick     # a smoke run with tiny sizes, no result file
    python benchmarks/bench_evaluate.py --out /tmp/r    # the full run, its JSON written to /tmp/r
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import rsatoolbox as rt
import scipy.stats
import threadpoolctl
import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import harness
import mne

import fastalign as fa
import fastalign.eval as fe
from fastalign.cli.common import positive_int
from fastalign.rsa.stats import time_resolved_spearman_and_noise_ceiling
from fastalign.train import keep_freed_memory

try:
    import mne_rsa
except ImportError as exc:  # an optional baseline: pip install mne-rsa
    mne_rsa, MNE_RSA_MISSING = None, f"mne_rsa does not import ({exc}); pip install mne-rsa"
else:
    MNE_RSA_MISSING = None

LAYERS = ("V1", "V2", "V4", "IT")
TESTS = ("cornet_s vs0", "aligned vs0", "aligned vs cornet_s")
# evaluate's stats.json keys (model, comparison, test) of the three tests above
EVAL_TESTS = {
    ("cornet_s", "none", "vs0"): TESTS[0],
    ("realnet", "within", "vs0"): TESTS[1],
    ("realnet", "within", "vs:cornet_s"): TESTS[2],
}
# The baselines every row is compared with, on the same thread count, and their column names (x_<name>).
BASELINES = {
    "rsatoolbox + MNE": "rsatoolbox",
    "mne-rsa + MNE": "mne-rsa",
    "numpy + MNE": "numpy",
    "numpy + vectorised MNE test": "numpy_vectorised",
}
PERMUTATIONS = 10_000
ALPHA = 0.05
SIM_TOLERANCE = 1e-6


@dataclass
class Workload:
    """Features and EEG of one evaluation.

    Attributes:
        eeg: (n_subjects, n_images, n_channels, n_times) float64 repetition-averaged test EEG.
        times: (n_times,) seconds from image onset.
        cornet: (n_layers, n_images, width) float32 CORnet-S features.
        aligned: (n_subjects, n_layers, n_images, width) float32 features of each subject's aligned model.
        images: The test images' names (BrainData checks counts only).
    """

    eeg: np.ndarray
    times: np.ndarray
    cornet: np.ndarray
    aligned: np.ndarray
    images: list[str]

    @property
    def shape(self) -> str:
        s, n, ch, t = self.eeg.shape
        width = self.cornet.shape[-1]
        return f"{s} subj x {n} img x {ch} ch x {t} t; 2 models x {len(LAYERS)} layers x {width}"


def make_workload(
    n_subjects: int, n_images: int, n_channels: int, n_times: int, width: int, seed: int = 0
) -> Workload:
    """A brain driven by latent image features around 200 ms, and models that hold those features: the
    aligned models twice as strongly as CORnet-S, so every test has a cluster where they were planted."""
    rng = np.random.default_rng(seed)
    times = -0.2 + 0.01 * np.arange(n_times)
    latent = rng.normal(size=(n_images, 32))
    bump = np.exp(-0.5 * ((times - 0.2) / 0.06) ** 2)
    eeg = np.stack([
        0.3 * (latent @ rng.normal(size=(32, n_channels)))[:, :, None] * bump
        + rng.normal(size=(n_images, n_channels, n_times))
        for _ in range(n_subjects)
    ])  # fmt: skip

    def features(weight: float) -> np.ndarray:
        return np.stack([
            (weight * latent @ rng.normal(size=(32, width)) + rng.normal(size=(n_images, width)))
            for _ in LAYERS
        ]).astype(np.float32)  # fmt: skip

    cornet = features(0.1)
    aligned = np.stack([features(0.2) for _ in range(n_subjects)])
    return Workload(eeg, times, cornet, aligned, [f"test_{i:03d}.jpg" for i in range(n_images)])


def _threshold(n_subjects: int, tail: int = 1) -> float:
    """evaluate's cluster-forming threshold: the one-sample t quantile at p = 0.05 (per side for tail 0)."""
    return float(scipy.stats.t.ppf(1 - ALPHA / (2 if tail == 0 else 1), n_subjects - 1))


def _effects(sims: np.ndarray, layer: int) -> dict[str, np.ndarray]:
    """The (n_subjects, n_times) effects of the three tests of one layer from (2, L, S, T) similarities."""
    return dict(zip(TESTS, (sims[0, layer], sims[1, layer], sims[1, layer] - sims[0, layer]), strict=True))


# ----------------------------------------------------------------------------------------- providers
# Each returns (sims (2, n_layers, n_subjects, n_times): CORnet-S and the within-subject aligned model;
# clusters {(test, layer): [(start, stop, p)]}; t curves {(test, layer): (n_times,)} or None).


def fastalign_evaluate(w: Workload) -> Any:
    brain = fe.BrainData(images=w.images, eeg={s + 1: e for s, e in enumerate(w.eeg)}, times=w.times)
    models = [fe.EvalModel("cornet_s", features=dict(zip(LAYERS, w.cornet, strict=True)))] + [
        fe.EvalModel("realnet", features=dict(zip(LAYERS, f, strict=True)), subject=s + 1, modality="eeg")
        for s, f in enumerate(w.aligned)
    ]
    return fe.evaluate(brain, models, out=None, permutations=PERMUTATIONS, seed=0)


def parse_evaluate(w: Workload, res: Any) -> tuple[np.ndarray, dict[tuple[str, int], list], None]:
    s_, _, _, t_ = w.eeg.shape
    sims = np.full((2, len(LAYERS), s_, t_), np.nan)
    which = {("cornet_s", "none"): 0, ("realnet", "within"): 1}
    count: dict[tuple[int, int, int], int] = {}
    for r in res.rows:
        m = which.get((r["model"], r["comparison"]))
        if m is None or r["modality"] != "eeg":
            continue
        key = (m, LAYERS.index(r["layer"]), int(r["subject"][4:]) - 1)
        k = count.get(key, 0)  # rows of one (model, layer, subject) come in time order
        sims[(*key, k)] = r["similarity"]
        count[key] = k + 1
    clusters: dict[tuple[str, int], list] = {(n, li): [] for n in TESTS for li in range(len(LAYERS))}
    for c in res.stats["clusters"]:
        name = EVAL_TESTS.get((c["model"], c["comparison"], c["test"]))
        if name is not None:
            start = int(np.argmin(np.abs(w.times - c["t_start"])))
            stop = int(np.argmin(np.abs(w.times - c["t_stop"]))) + 1
            clusters[name, LAYERS.index(c["layer"])].append((start, stop, c["p"]))
    return sims, clusters, None


def fastalign_rsa_stats(w: Workload, device: str = "cpu") -> Any:
    """evaluate's computation restricted to the baselines' work, through fastalign's public ops."""
    eeg = torch.from_numpy(w.eeg).to(device)
    cornet = fa.rdm(torch.from_numpy(w.cornet).to(device), "correlation").double()
    sims = torch.empty((2, len(LAYERS), *w.eeg.shape[:1], w.eeg.shape[-1]), dtype=torch.float64)
    for s, feats in enumerate(w.aligned):
        models = torch.cat([cornet, fa.rdm(torch.from_numpy(feats).to(device), "correlation").double()])
        sims[:, :, s] = fa.time_resolved_rsa(eeg[s : s + 1], models)[0].T.reshape(2, len(LAYERS), -1).cpu()
    threshold = _threshold(w.eeg.shape[0])
    tests = {}
    for li in range(len(LAYERS)):
        for name, x in _effects(sims.numpy(), li).items():
            x = torch.from_numpy(x).to(device)
            tests[name, li] = fa.cluster_permutation_test(
                x, threshold=threshold, n_permutations=PERMUTATIONS, tail=1, seed=0
            )
    return sims.numpy(), tests


def parse_fastalign_rsa_stats(w: Workload, res: Any) -> tuple[np.ndarray, dict, dict]:
    sims, tests = res
    clusters = {
        k: [(c.start, c.stop, p) for c, p in zip(r.clusters, r.pvalues.tolist(), strict=True)]
        for k, r in tests.items()
    }
    return sims, clusters, {k: r.t_values.cpu().numpy() for k, r in tests.items()}


def _mne_tests(sims: np.ndarray, tail: int = 1, only: tuple[str, ...] = TESTS) -> dict[tuple[str, int], Any]:
    threshold = _threshold(sims.shape[2], tail)
    out = {}
    for li in range(len(LAYERS)):
        for name, x in _effects(sims, li).items():
            if name in only:
                out[name, li] = mne.stats.permutation_cluster_1samp_test(
                    x, threshold=threshold, n_permutations=PERMUTATIONS, tail=tail, out_type="mask",
                    verbose=False,
                )  # fmt: skip
    return out


def rsatoolbox_mne(w: Workload) -> Any:
    cornet = rt.rdm.calc_rdm([rt.data.Dataset(f) for f in w.cornet], method="correlation")
    s_, _, _, t_ = w.eeg.shape
    sims = np.empty((2, len(LAYERS), s_, t_))
    for s in range(s_):
        aligned = rt.rdm.calc_rdm([rt.data.Dataset(f) for f in w.aligned[s]], method="correlation")
        brain = rt.rdm.calc_rdm([rt.data.Dataset(w.eeg[s, :, :, t]) for t in range(t_)], method="correlation")
        sims[:, :, s] = rt.rdm.compare(rt.rdm.concat(cornet, aligned), brain, "spearman").reshape(2, -1, t_)
    return sims, _mne_tests(sims)


def mnersa_mne(w: Workload) -> Any:
    assert mne_rsa is not None
    cornet = [mne_rsa.compute_rdm(f, "correlation") for f in w.cornet]
    s_, _, _, t_ = w.eeg.shape
    sims = np.empty((2, len(LAYERS), s_, t_))
    for s in range(s_):
        models = cornet + [mne_rsa.compute_rdm(f, "correlation") for f in w.aligned[s]]
        patches = mne_rsa.searchlight(w.eeg[s].shape, temporal_radius=0)
        sims[:, :, s] = mne_rsa.rsa_array(
            w.eeg[s], models, patches=patches, data_rdm_metric="correlation", rsa_metric="spearman"
        ).reshape(2, len(LAYERS), t_)
    return sims, _mne_tests(sims)


# numpy baselines: what a user who writes the same maths with numpy's BLAS would have (the libraries above
# spend most of their time in np.einsum without BLAS, row-by-row scipy ranking and a Python loop over
# flips), with MNE's cluster test as it is, or with that test's exact null vectorised over the flips.


def _numpy_rdms(patterns: np.ndarray, dtype: Any = None) -> np.ndarray:
    """(..., n, p) -> (..., n(n-1)/2) float64 1 - Pearson RDMs: rsatoolbox's formula (centre, scale to unit
    norm, 1 - the Gram matrix), the Gram matrix by BLAS, computed in ``dtype`` (default: float32 for
    float32 patterns, as fastalign computes them, float64 otherwise; BLAS's sgemm is about twice dgemm)."""
    dtype = dtype or (np.float32 if patterns.dtype == np.float32 else np.float64)
    x = patterns.astype(dtype)
    x = x - x.mean(axis=-1, keepdims=True)
    x /= np.sqrt(np.einsum("...ij,...ij->...i", x, x))[..., None]
    gram = x @ np.swapaxes(x, -1, -2)
    i, j = np.triu_indices(x.shape[-2], 1)
    return 1.0 - gram[..., i, j].astype(np.float64)


def _numpy_unit_ranks(v: np.ndarray) -> np.ndarray:
    """(m, K) -> average ranks of each row, centred and scaled to unit norm (Spearman's vectors): one
    argsort per row; rows with ties ranked again by scipy.stats.rankdata."""
    order = np.argsort(v, axis=1)
    ranks = np.empty_like(v)
    np.put_along_axis(ranks, order, np.arange(1.0, v.shape[1] + 1.0)[None].repeat(len(v), 0), axis=1)
    tied = np.flatnonzero((np.diff(np.take_along_axis(v, order, axis=1), axis=1) == 0).any(axis=1))
    for r in tied:
        ranks[r] = scipy.stats.rankdata(v[r])
    ranks -= (v.shape[1] + 1) / 2.0
    return ranks / np.sqrt(np.einsum("ij,ij->i", ranks, ranks))[:, None]


def _numpy_sims(w: Workload) -> np.ndarray:
    """(2, layers, subjects, times) Spearman similarities, every RDM ranked once."""
    s_, n, _, t_ = w.eeg.shape
    cornet = _numpy_unit_ranks(_numpy_rdms(w.cornet))
    aligned = _numpy_unit_ranks(_numpy_rdms(w.aligned.reshape(-1, n, w.aligned.shape[-1])))
    aligned = aligned.reshape(s_, len(LAYERS), -1)
    sims = np.empty((2, len(LAYERS), s_, t_))
    for s in range(s_):
        brain = _numpy_unit_ranks(_numpy_rdms(np.moveaxis(w.eeg[s], -1, 0)))  # (times, pairs)
        sims[:, :, s] = (np.concatenate([cornet, aligned[s]]) @ brain.T).reshape(2, len(LAYERS), t_)
    return sims


def numpy_mne(w: Workload) -> Any:
    sims = _numpy_sims(w)
    return sims, _mne_tests(sims)


def _vectorised_mne_test(x: np.ndarray, threshold: float) -> Any:
    """mne.stats.permutation_cluster_1samp_test(x, threshold, tail=1, out_type="mask") for an exact null
    (2^n <= permutations), its flips as one array: MNE's flips (every sign pattern but the all-negative
    one, bin_perm_rep's order), its t formula per flip (a mean by one product per flip, the sum of squares
    once), its null (the observed maximum first), the same (t_obs, clusters, p-values, H0)."""
    from mne.stats.cluster_level import bin_perm_rep

    n, t_ = x.shape
    t_obs = mne.stats.ttest_1samp_no_p(x)
    signs = 2.0 * bin_perm_rep(n)[1:] - 1.0
    mean = np.stack([sg @ x for sg in signs]) / n  # one product per flip, as MNE's reordered t-test
    den = np.maximum(np.sum(x**2, axis=0) - n * mean * mean, 0.0)
    t = np.divide(mean, np.sqrt(den), out=np.zeros_like(mean), where=den > 0) * np.sqrt(n * (n - 1))
    run, best = np.zeros(len(t)), np.zeros(len(t))
    for k in range(t_):  # each flip's largest run mass, summed in time order
        run = np.where(t[:, k] > threshold, run + t[:, k], 0.0)
        np.maximum(best, run, out=best)
    clusters, masses = [], []
    k = 0
    while k < t_:
        if t_obs[k] > threshold:
            stop = k
            while stop < t_ and t_obs[stop] > threshold:
                stop += 1
            mask = np.zeros(t_, bool)
            mask[k:stop] = True
            clusters.append(mask)
            masses.append(float(np.cumsum(t_obs[k:stop])[-1]))
            k = stop
        else:
            k += 1
    if not clusters:
        return t_obs, [], np.array([]), np.array([])
    null = np.concatenate([[max(masses)], best])
    return t_obs, clusters, np.array([np.mean(null >= m) for m in masses]), null


def numpy_vectorised(w: Workload) -> Any:
    sims = _numpy_sims(w)
    threshold = _threshold(sims.shape[2])
    assert 2 ** sims.shape[2] <= PERMUTATIONS  # the exact null, which the vectorised test reproduces
    tests = {
        (name, li): _vectorised_mne_test(x, threshold)
        for li in range(len(LAYERS))
        for name, x in _effects(sims, li).items()
    }
    return sims, tests


def _mask_runs(mask: Any, n_times: int) -> tuple[int, int]:
    m = np.zeros(n_times, bool)
    m[mask] = True  # a boolean mask, or a tuple of index arrays / slices depending on the MNE version
    idx = np.flatnonzero(m)
    return int(idx[0]), int(idx[-1]) + 1


def parse_mne(w: Workload, res: Any) -> tuple[np.ndarray, dict, dict]:
    sims, tests = res
    n_times = w.eeg.shape[-1]
    clusters = {
        k: sorted((*_mask_runs(c, n_times), float(p)) for c, p in zip(cl, pv, strict=True))
        for k, (_, cl, pv, _) in tests.items()
    }
    return sims, clusters, {k: r[0] for k, r in tests.items()}


# ----------------------------------------------------------------------------------------- checks


def _all_negative_mass(t: np.ndarray, threshold: float) -> float:
    """The largest cluster mass (tail 1) of the all-negative flip, whose t curve is -t."""
    best, run = 0.0, 0.0
    for v in -t:
        run = run + v if v > threshold else 0.0
        best = max(best, run)
    return best


def check(parsed: dict[str, tuple], n_subjects: int) -> dict[str, Any]:
    """Similarities and clusters of every provider against evaluate's (see the module doc).

    MNE's p-values are checked against evaluate's under MNE's exact null: + 2^-n where the all-negative
    flip does not reach the cluster's mass. MNE computes the enumerated identity flip's t by another
    formula than the observed t, so for the largest cluster the two copies of the identity can differ
    in the last bits and one can fall below the observed mass: there 2^-n less is MNE's answer too
    (counted in ``mne_identity_ties``).
    """
    ref_sims, ref_clusters, _ = parsed["fastalign evaluate"]
    threshold = _threshold(n_subjects)
    out: dict[str, Any] = {}
    for name, (sims, clusters, t_curves) in parsed.items():
        mne_null = name.split(" [")[0] in BASELINES  # MNE's null (its cluster test, or its replica)
        entry: dict[str, Any] = {"max_abs_sim_diff": float(np.abs(sims - ref_sims).max())}
        same_runs = same_p = same_significant = True
        worst_p, ties = 0.0, 0
        for key, ref in ref_clusters.items():
            got, ref = sorted(clusters[key]), sorted(ref)
            same_runs &= [c[:2] for c in got] == [c[:2] for c in ref]
            if not same_runs:
                continue
            masses = [float(t_curves[key][a:b].sum()) for a, b, _ in got] if mne_null else []
            for k, ((_, _, p), (_, _, p_ref)) in enumerate(zip(got, ref, strict=True)):
                expect = [p_ref]
                if mne_null:  # MNE's null: the identity twice, the all-negative flip never
                    reached = _all_negative_mass(t_curves[key], threshold) >= masses[k]
                    expect = [p_ref + (0.0 if reached else 2.0**-n_subjects)]
                    if masses[k] == max(masses):
                        expect.append(expect[0] - 2.0**-n_subjects)
                diff = min(abs(p - e) for e in expect)
                ties += int(mne_null and diff <= 1e-12 and abs(p - expect[0]) > 1e-12)
                worst_p = max(worst_p, diff)
                same_p &= diff <= 1e-12
            same_significant &= [c[:2] for c in got if c[2] < ALPHA] == [c[:2] for c in ref if c[2] < ALPHA]
        entry.update(
            same_clusters=bool(same_runs), p_as_expected=bool(same_p), max_abs_p_diff=worst_p,
            same_significant=bool(same_significant), mne_identity_ties=ties,
            n_clusters=sum(len(v) for v in ref_clusters.values()),
            n_significant=sum(c[2] < ALPHA for v in ref_clusters.values() for c in v),
            equal=bool(entry["max_abs_sim_diff"] <= SIM_TOLERANCE and same_runs and same_p),
        )  # fmt: skip
        out[name] = entry
        print(f"check {name}: {entry}", flush=True)
    return out


def _check_vectorised(mne_res: Any, vectorised_res: Any) -> dict[str, Any]:
    """The vectorised replica of MNE's test against MNE's own on the same similarities: the same clusters,
    p-values and null (H0), value for value."""
    (_, mne_tests), (_, ours) = mne_res, vectorised_res
    worst_null, worst_p, same = 0.0, 0.0, True
    for key, (t_obs, clusters, pvalues, h0) in mne_tests.items():
        _, c2, p2, h2 = ours[key]
        runs = [_mask_runs(c, len(t_obs)) for c in clusters]
        same &= runs == [_mask_runs(c, len(t_obs)) for c in c2]
        if len(h0) and len(h2):
            worst_null = max(worst_null, float(np.abs(np.sort(h0) - np.sort(h2)).max()))
            worst_p = max(worst_p, float(np.abs(np.asarray(pvalues) - np.asarray(p2)).max()))
    print(
        f"vectorised MNE test: same clusters {same}, max |H0 diff| {worst_null:.2e}, |p diff| {worst_p:.2e}"
    )
    return {"same_clusters": bool(same), "max_abs_null_diff": worst_null, "max_abs_p_diff": worst_p,
            "equal": bool(same and worst_null == 0.0 and worst_p == 0.0)}  # fmt: skip


def check_null(mne_res: Any) -> dict[str, Any]:
    """fastalign's exact null against MNE's H0 on the same effects (rsatoolbox + MNE's), test by test:
    MNE's is the observed maximum twice and every flip but the all-negative one (our null's last)."""
    sims, tests = mne_res
    threshold = _threshold(sims.shape[2])
    worst, compared = 0.0, 0
    for (name, li), (_, _, _, h0) in tests.items():
        ours = fa.cluster_permutation_test(
            torch.from_numpy(_effects(sims, li)[name]), threshold=threshold, n_permutations=PERMUTATIONS,
            tail=1, seed=0,
        )  # fmt: skip
        if len(ours.clusters) == 0:
            continue
        top = float(ours.masses.abs().max())
        expect = np.sort([top, top, *ours.null[:-1].tolist()])
        worst = max(worst, float(np.abs(np.sort(h0) - expect).max()) if len(h0) == len(expect) else np.inf)
        compared += 1
    print(f"null check: {compared} tests, max |MNE H0 - ours| = {worst:.2e}", flush=True)
    return {"tests": compared, "max_abs_null_diff": worst, "equal": bool(worst <= 1e-9)}


def check_two_sided(sims: np.ndarray) -> dict[str, Any]:
    """Two-sided tests of the paired effects: fastalign's and MNE's exact nulls agree exactly."""
    threshold = _threshold(sims.shape[2], 0)
    mne_res = _mne_tests(sims, tail=0, only=(TESTS[2],))
    worst, same = 0.0, True
    for (name, li), (_, cl, pv, _) in mne_res.items():
        ours = fa.cluster_permutation_test(
            torch.from_numpy(_effects(sims, li)[name]), threshold=threshold, n_permutations=PERMUTATIONS,
            tail=0, seed=0,
        )  # fmt: skip
        theirs = sorted((*_mask_runs(c, sims.shape[-1]), float(p)) for c, p in zip(cl, pv, strict=True))
        mine = sorted((c.start, c.stop, p) for c, p in zip(ours.clusters, ours.pvalues.tolist(), strict=True))
        same &= [c[:2] for c in mine] == [c[:2] for c in theirs]
        if same:
            worst = max([worst, *(abs(a[2] - b[2]) for a, b in zip(mine, theirs, strict=True))])
    result = {"tests": len(mne_res), "same_clusters": bool(same), "max_abs_p_diff": worst,
              "equal": bool(same and worst <= 1e-12)}  # fmt: skip
    print(f"two-sided check: {result}", flush=True)
    return result


# ----------------------------------------------------------------------------------------- timing


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], device: str) -> tuple[Any, float, float]:
    """(result, wall ms, CPU ms of the whole process) of one call."""
    _sync(device)
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    _sync(device)
    return out, (time.perf_counter() - w0) * 1e3, (time.process_time() - c0) * 1e3


def _spread(times: list[float]) -> dict[str, float]:
    p20, p80 = harness.spread(times)
    return {"median_ms": statistics.median(times), "p20_ms": p20, "p80_ms": p80, "best_ms": min(times)}


@dataclass
class Provider:
    name: str
    device: str
    run: Callable[[], Any]
    parse: Callable[[Any], tuple]
    work: str
    threads: int | None = None  # None: the process's default (torch and BLAS)


def _suffix(threads: int | None) -> str:
    return "" if threads is None else f" [{threads} thread{'s' if threads > 1 else ''}]"


def _on_threads(fn: Callable[[], Any], threads: int) -> Callable[[], Any]:
    """fn with torch's intra-op threads and the BLAS threads (numpy, scipy) limited to ``threads``."""

    def run() -> Any:
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with threadpoolctl.threadpool_limits(threads, user_api="blas"):
                return fn()
        finally:
            torch.set_num_threads(old)

    return run


def _providers(
    w: Workload, devices: list[str], thread_counts: list[int]
) -> tuple[list[Provider], dict[str, str]]:
    s_, _, _, t_ = w.eeg.shape
    matched = f"{s_ * 8} curves, {3 * len(LAYERS)} tests"
    curves = s_ * 4 * (s_ + 1)
    full = f"{curves} curves, {5 * len(LAYERS)} tests, ceiling, variability, {curves * t_:,} rows"
    out = [
        Provider("fastalign evaluate", "cpu", lambda: fastalign_evaluate(w), lambda r: parse_evaluate(w, r),
                 full),
        Provider("fastalign rsa+stats", "cpu", lambda: fastalign_rsa_stats(w),
                 lambda r: parse_fastalign_rsa_stats(w, r), matched),
        Provider("rsatoolbox + MNE", "cpu", lambda: rsatoolbox_mne(w), lambda r: parse_mne(w, r), matched),
        Provider("numpy + MNE", "cpu", lambda: numpy_mne(w), lambda r: parse_mne(w, r), matched),
        Provider("numpy + vectorised MNE test", "cpu", lambda: numpy_vectorised(w), lambda r: parse_mne(w, r),
                 matched),
    ]  # fmt: skip
    skipped = {}
    if MNE_RSA_MISSING is None:
        out.append(Provider("mne-rsa + MNE", "cpu", lambda: mnersa_mne(w), lambda r: parse_mne(w, r),
                            matched))  # fmt: skip
    else:
        skipped["mne-rsa + MNE"] = MNE_RSA_MISSING
    for dev in devices:
        if dev != "cpu":
            out.append(
                Provider(f"fastalign rsa+stats ({dev})", dev, lambda d=dev: fastalign_rsa_stats(w, d),
                         lambda r: parse_fastalign_rsa_stats(w, r), matched)
            )  # fmt: skip
    limited = [
        Provider(p.name + _suffix(n), p.device, _on_threads(p.run, n), p.parse, p.work, n)
        for n in thread_counts
        for p in out
        if p.device == "cpu"
    ]
    return out + limited, skipped


def _fresh_peak(name: str, shape: tuple[int, ...], width: int, threads: list[int]) -> int:
    """Peak memory of one CPU provider's full-size call in a fresh process (spawned), with every allocation
    over 128 KiB its own mapping, returned when freed (harness's fixed mmap threshold; not the timed
    runs' keep_freed_memory): the resident-set growth is what the call holds at its peak. In the
    benchmark's process, which keeps freed memory for reuse and has run the other providers, a call
    reused their freed heap and its growth said nothing (0.2 MiB for rsatoolbox + MNE)."""
    warnings.filterwarnings("ignore")
    mne.set_log_level("WARNING")
    # first a call on a tiny workload: libraries load and thread pools start (tens of MiB of code and
    # stacks that any first call pays) without growing the heap by more than that tiny call needs
    tiny = make_workload(4, 30, 5, 20, 64)
    (small,) = [p for p in _providers(tiny, ["cpu"], threads)[0] if p.name == name]
    small.run()
    w = make_workload(*shape, width)
    (p,) = [p for p in _providers(w, ["cpu"], threads)[0] if p.name == name]
    return harness.peak_memory_bytes(p.run, "cpu")


def bench_evaluate(
    args: argparse.Namespace, devices: list[str]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    import multiprocessing

    w = make_workload(*args.shape, args.width)
    print(f"workload: {w.shape}", flush=True)
    providers, skipped = _providers(w, devices, args.threads)
    raw, parsed, peak, first = {}, {}, {}, {}
    t0 = time.perf_counter()
    spawn = multiprocessing.get_context("spawn")
    for p in providers:  # warm-up: the results checked below; peak memory in a fresh process (CPU)
        if p.device == "cpu":
            if args.quick:  # a process per provider costs minutes (libraries imported in each): no peak
                peak[p.name] = math.nan
            else:
                with spawn.Pool(1) as pool:
                    peak[p.name] = pool.apply(_fresh_peak, (p.name, args.shape, args.width, args.threads))
            raw[p.name], first[p.name], _ = _timed(p.run, p.device)
        else:
            holder: dict[str, Any] = {}
            peak[p.name] = harness.peak_memory_bytes(
                lambda p=p, h=holder: h.setdefault("r", _timed(p.run, p.device)), p.device
            )
            raw[p.name], first[p.name], _ = holder["r"]
        parsed[p.name] = p.parse(raw[p.name])
        print(f"warm-up {p.name}: {first[p.name]:.0f} ms, peak {peak[p.name] / 2**20:.0f} MiB", flush=True)
    checks = check(parsed, w.eeg.shape[0])
    vectorised = _check_vectorised(raw["numpy + MNE"], raw["numpy + vectorised MNE test"])
    null_check = check_null(raw["rsatoolbox + MNE"])
    two_sided = check_two_sided(parsed["rsatoolbox + MNE"][0])
    warmup_s = time.perf_counter() - t0
    wall: dict[str, list[float]] = {p.name: [] for p in providers}
    cpu: dict[str, list[float]] = {p.name: [] for p in providers}
    t0 = time.perf_counter()
    for r in range(args.rounds):
        for p in providers:
            _, ms, cpu_ms = _timed(p.run, p.device)
            wall[p.name].append(ms)
            cpu[p.name].append(cpu_ms)
        print(f"round {r + 1}/{args.rounds} ms:", {k: round(v[-1]) for k, v in wall.items()}, flush=True)
    rounds_s = time.perf_counter() - t0
    rows = []
    for p in providers:
        baselines = [b for b in BASELINES if b + _suffix(p.threads) in wall]
        row: dict[str, Any] = {
            "case": "evaluate", "provider": p.name, "device": p.device,
            "threads": p.threads or torch.get_num_threads(), "shape": w.shape, "work": p.work,
            **_spread(wall[p.name]), "times_ms": wall[p.name], "cpu_ms": statistics.median(cpu[p.name]),
            "warmup_ms": first[p.name], "reps": args.rounds, "peak_mem_MiB": peak[p.name] / 2**20,
            "max_abs_sim_diff": checks[p.name]["max_abs_sim_diff"], "equal": checks[p.name]["equal"],
            "status": "ok",
        }  # fmt: skip
        for b in baselines:
            ratios = [x / y for x, y in zip(wall[b + _suffix(p.threads)], wall[p.name], strict=True)]
            row["x_" + BASELINES[b]] = statistics.median(ratios)
            row["x_" + BASELINES[b] + "_range"] = [min(ratios), max(ratios)]
        rows.append(row)
        print({k: row[k] for k in ("provider", "median_ms", "cpu_ms", "peak_mem_MiB", "equal")}, flush=True)
    rows += [{"case": "evaluate", "provider": k, "status": f"skipped: {v}"} for k, v in skipped.items()]
    stages = {_suffix(torch.get_num_threads()).strip(" []"): _stages(w, args.stage_reps)}
    for n in args.threads:
        stages[_suffix(n).strip(" []")] = _on_threads(lambda: _stages(w, args.stage_reps), n)()
    meta = {
        "checks": checks,
        "vectorised_check": vectorised,
        "null_check": null_check,
        "two_sided_check": two_sided,
        "skipped": skipped,
        "fastalign_stages_ms": stages,
        "seconds": {"warmup_and_checks": warmup_s, "rounds": rounds_s},
    }
    return rows, meta


def _stages(w: Workload, reps: int) -> dict[str, float]:
    """Medians of the public calls evaluate makes, timed alone: where its time goes."""
    eeg = torch.from_numpy(w.eeg)
    feats = [torch.from_numpy(f) for f in (w.cornet, *w.aligned)]
    models = torch.cat([fa.rdm(f, "correlation").double() for f in feats])
    sims = fa.time_resolved_rsa(eeg, models).numpy()
    effects = [sims[:, :, k].copy() for k in range(5 * len(LAYERS))]  # 20 (subjects, times) curves
    threshold = _threshold(w.eeg.shape[0])
    calls = {
        f"rdm x {len(feats) * len(LAYERS)} (model RDMs, one call per layer)": lambda: [
            fa.rdm(x, "correlation").double() for f in feats for x in f
        ],
        f"time_resolved_spearman_and_noise_ceiling ({eeg.shape[0]} subjects, {models.shape[0]} model RDMs; "
        "brain RDMs computed and ranked once, fused)": lambda: time_resolved_spearman_and_noise_ceiling(
            eeg, models, "correlation"
        ),
        f"cluster_permutation_test x {len(effects)}": lambda: [
            fa.cluster_permutation_test(
                torch.from_numpy(x), threshold=threshold, n_permutations=PERMUTATIONS, tail=1, seed=0
            )
            for x in effects
        ],
    }
    out = {}
    for name, fn in calls.items():
        out[name] = harness.time_fn(fn, "cpu", warmup=1, rep=reps)["median_ms"]
        print(f"stage {name}: {out[name]:.0f} ms", flush=True)
    return out


def bench_widths(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Model RDMs of one model at the published CORnet-S widths: the GEMM both sides pay per model."""
    rng = np.random.default_rng(1)
    widths = args.widths
    feats = [rng.standard_normal(size=(args.shape[1], p), dtype=np.float32) for p in widths]
    calls = {
        "fastalign rdm": lambda: [fa.rdm(torch.from_numpy(f), "correlation") for f in feats],
        "rsatoolbox calc_rdm": lambda: rt.rdm.calc_rdm(
            [rt.data.Dataset(f) for f in feats], method="correlation"
        ),
        # rsatoolbox's formula with the Gram matrix by BLAS (its einsum uses none): in float32, as
        # fastalign computes (the baseline), and in float64 (the reference of the RDMs' accuracy)
        "numpy, BLAS float32": lambda: [_numpy_rdms(f, np.float32) for f in feats],
        "numpy, BLAS float64": lambda: [_numpy_rdms(f, np.float64) for f in feats],
    }
    if MNE_RSA_MISSING is None:
        calls["mne-rsa compute_rdm"] = lambda: [mne_rsa.compute_rdm(f, "correlation") for f in feats]
    times: dict[str, list[float]] = {k: [] for k in calls}
    results = {k: fn() for k, fn in calls.items()}  # the warm-up call, whose RDMs are compared
    reference = np.stack(results["numpy, BLAS float64"])
    # float32 BLAS sums over 25,088-200,704 features: the harness's float32 bound; the others as evaluate's
    tolerance = {
        k: harness.CHECK_BOUND["float32"] if k == "numpy, BLAS float32" else SIM_TOLERANCE for k in calls
    }
    for _ in range(args.width_rounds):
        for k, fn in calls.items():
            times[k].append(_timed(fn, "cpu")[1])
    shape = f"{args.shape[1]} img x ({', '.join(f'{p:,}' for p in widths)})"
    rows = []
    for k, t in times.items():
        got = results[k]
        got = (
            got.dissimilarities if hasattr(got, "dissimilarities") else np.stack([np.asarray(g) for g in got])
        )
        diff = float(np.abs(got.reshape(reference.shape) - reference).max())
        row = {"case": "model RDMs, CORnet-S widths", "provider": k, "device": "cpu",
               "threads": torch.get_num_threads(), "shape": shape, **_spread(t), "times_ms": t,
               "reps": len(t), "max_abs_rdm_diff": diff, "equal": diff <= tolerance[k],
               "status": "ok"}  # fmt: skip
        for base, column in (("rsatoolbox calc_rdm", "x_rsatoolbox"), ("numpy, BLAS float32", "x_numpy")):
            row[column] = statistics.median([a / b for a, b in zip(times[base], t, strict=True)])
        rows.append(row)
        print(f"widths {k}: {row['median_ms']:.0f} ms, max |RDM - float64 numpy| {diff:.1e}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the script")
    p.add_argument("--cases", nargs="*", default=["evaluate", "widths"], choices=["evaluate", "widths"])
    p.add_argument(
        "--rounds", type=positive_int, default=None, help="interleaved rounds (default 5, --quick 2)"
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        nargs="*",
        default=[1],
        help="also run each CPU provider on this many threads",
    )
    p.add_argument(
        "--plain-malloc", action="store_true",
        help="leave glibc's malloc as it is (default: keep freed memory, as the fastalign program does)",
    )  # fmt: skip
    p.add_argument(
        "--out", default=harness.RESULTS, help="folder of the result file (default benchmarks/results)"
    )
    args = p.parse_args(argv)
    # As `fastalign evaluate` (fastalign.cli.entry): freed blocks are kept for reuse instead of being
    # unmapped and faulted in again; one process setting, so every provider runs under it.
    kept = False if args.plain_malloc else keep_freed_memory()
    if args.quick:
        args.shape, args.width, args.widths = (4, 30, 5, 20), 64, [256, 128]
        args.rounds, args.stage_reps, args.width_rounds = args.rounds or 2, 1, 1
    else:
        args.shape, args.width, args.widths = (10, 200, 17, 100), 4096, [200_704, 100_352, 50_176, 25_088]
        args.rounds, args.stage_reps, args.width_rounds = args.rounds or 5, 3, 3
    mne.set_log_level("WARNING")  # mne-rsa logs every searchlight
    warnings.filterwarnings("ignore", module="rsatoolbox")
    warnings.filterwarnings("ignore", message="No clusters found")  # MNE, for a test without clusters
    devices = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    meta: dict[str, Any] = {}
    if "evaluate" in args.cases:
        r, meta = bench_evaluate(args, devices)
        rows += r
    if "widths" in args.cases:
        rows += bench_widths(args)
    meta.update({
        "what": "the evaluation after feature extraction (module doc of benchmarks/bench_evaluate.py): "
        "model RDMs, time-resolved Spearman RSA, 10,000-permutation (exact: 1,024 flips) cluster tests "
        "against 0 and paired against CORnet-S; fastalign evaluate also computes across-subject curves and "
        "tests, the noise ceiling, variability and the tidy rows",
        "shape": {"subjects_images_channels_times": list(args.shape), "width": args.width,
                  "widths_case": args.widths},
        "reduced": "nothing: every provider runs the full workload; nothing is extrapolated",
        "timing": f"{args.rounds} interleaved rounds after one warm-up call each; wall clock "
        "(perf_counter); cpu_ms: the process's CPU time over all threads (median); x columns: median of "
        "per-round wall-time ratios (range in x_*_range)",
        "memory": "peak MiB: resident-set growth (VmHWM) of each CPU provider's full-size call in a fresh "
        "process after a call on a tiny workload, every allocation over 128 KiB its own mapping (CUDA: "
        "max_memory_allocated of the warm-up call)",
        "threads": {"torch": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "versions": {"rsatoolbox": _version("rsatoolbox"), "mne": mne.__version__,
                     "mne-rsa": _version("mne-rsa"), "numpy": np.__version__, "scipy": scipy.__version__},
        "malloc": "freed memory kept for reuse (fastalign.train.keep_freed_memory, as the fastalign program "
        "does), for every provider" if kept else "glibc's defaults",
        "load_average_at_start": load_start,
        "load_average_at_end": os.getloadavg(),
        "wall_s": time.perf_counter() - t0,
        "quick": bool(args.quick),
        "columns": [
            ["case", "case"], ["provider", "provider"], ["device", "device"], ["threads", "threads"],
            ["work", "work"],
            ["median_ms", "median ms"], ["p20_ms", "p20"], ["p80_ms", "p80"], ["cpu_ms", "CPU ms"],
            ["peak_mem_MiB", "peak MiB"], ["x_rsatoolbox", "x rsatoolbox+MNE"],
            ["x_mne-rsa", "x mne-rsa+MNE"], ["x_numpy", "x numpy+MNE"],
            ["x_numpy_vectorised", "x numpy vectorised"],
            ["max_abs_sim_diff", "max Δ sim"], ["max_abs_rdm_diff", "max Δ RDM"], ["equal", "equal"],
            ["status", "status"],
        ],
    })  # fmt: skip
    failed = _failed_checks(rows, meta)
    if failed:  # nothing is saved: a result file holds equal results only
        print("equality checks failed, no result file written: " + "; ".join(failed), file=sys.stderr)
        sys.exit(1)
    if not args.quick:  # a GPU run writes evaluate-<gpu>.json, a CPU run evaluate-cpu<threads>.json
        print(harness.save("evaluate", devices[-1], rows, meta, folder=args.out))


def _failed_checks(rows: list[dict[str, Any]], meta: dict[str, Any]) -> list[str]:
    """What the run's checks found unequal: rows (every provider's similarities and clusters against
    evaluate's, the widths' RDMs against float64 numpy) and the three checks of MNE's test in meta."""
    failed = [f"{r['case']}: {r['provider']}" for r in rows if r.get("equal") is False]
    checks = ("vectorised_check", "null_check", "two_sided_check")
    failed += [k for k in checks if meta.get(k, {}).get("equal") is False]
    return failed


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
