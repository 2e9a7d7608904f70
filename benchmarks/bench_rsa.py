"""RSA: time-resolved RSA, permutation tests, RDMs and ranks; fastalign vs rsatoolbox, scipy and numpy.

Workloads (the issue's, reduced on small CPUs where noted in the saved meta):

- ``tr-rsa``: 10 subjects x 200 conditions x 17 channels x 100 time points; one correlation RDM per
  subject and time point, 4 model-layer RDMs (200 x 4096 features each), Spearman similarity of every
  (time, layer, subject): the whole analysis from data to the (100, 4, 10) similarities.
- ``tr-rsa-perm``: the same similarities plus condition-label permutation p-values; rsatoolbox has no
  batched permutation test, so its row is a Python loop over permutations (model RDMs reordered, then
  compared to all brain RDMs), timed on a few permutations and extrapolated linearly.
- ``rdm``: correlation RDMs of n conditions x 512 features (float32) for n up to 16,540.
- ``rank``: average ranks of 1,000 RDM vectors of 19,900 entries, and of 500,000 heavily tied values.

    flock /tmp/fastalign-bench.lock python benchmarks/bench_rsa.py
    python benchmarks/bench_rsa.py --quick        # a smoke run with tiny sizes
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import rsatoolbox as rt
import scipy.stats
import torch
from scipy.spatial.distance import pdist

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import harness

import fastalign as fa
from fastalign import _backend


def _rows_timed(case: str, provider: str, fn: Callable[[], Any], reps: int, **extra: Any) -> dict[str, Any]:
    """One row: median/spread of fn over reps runs (after one warm-up unless reps == 1)."""
    gc.collect()
    if reps == 1:
        t0 = time.perf_counter()
        fn()
        ms = (time.perf_counter() - t0) * 1e3
        stats = {"median_ms": ms, "p20_ms": ms, "p80_ms": ms, "min_ms": ms, "max_ms": ms, "reps": 1}
    else:
        stats = harness.time_fn(fn, "cpu", warmup=1, rep=reps)
    row = {"case": case, "provider": provider, **extra, **stats}
    print(f"{case:12s} {provider:28s} {extra.get('shape', ''):28s} {stats['median_ms']:10.1f} ms", flush=True)
    return row


# ----------------------------------------------------------------------------------------- baselines


def rsatoolbox_tr_rsa(data: np.ndarray, feats: list[np.ndarray]) -> np.ndarray:
    s, _, _, t = data.shape
    brain = rt.rdm.calc_rdm(
        [rt.data.Dataset(data[i, :, :, j]) for i in range(s) for j in range(t)], method="correlation"
    )
    models = rt.rdm.calc_rdm([rt.data.Dataset(f) for f in feats], method="correlation")
    return rt.rdm.compare(models, brain, "spearman")  # (layers, subjects * times)


def scipy_loop_tr_rsa(data: np.ndarray, feats: list[np.ndarray]) -> np.ndarray:
    s, _, _, t = data.shape
    models = [pdist(f, "correlation") for f in feats]
    out = np.empty((t, len(feats), s))
    for i in range(s):
        for j in range(t):
            brain = pdist(data[i, :, :, j], "correlation")
            for k, m in enumerate(models):
                out[j, k, i] = scipy.stats.spearmanr(brain, m).statistic
    return out


def _np_corr_rdms(x: np.ndarray) -> np.ndarray:
    """(..., n, p) -> (..., n(n-1)/2) correlation distances, vectorised numpy."""
    z = x - x.mean(-1, keepdims=True)
    z /= np.linalg.norm(z, axis=-1, keepdims=True)
    i, j = np.triu_indices(x.shape[-2], 1)
    return 1 - np.einsum("...ik,...ik->...i", z[..., i, :], z[..., j, :])


def numpy_tr_rsa(data: np.ndarray, feats: list[np.ndarray]) -> np.ndarray:
    x = np.moveaxis(data, -1, 1)  # (s, t, n, ch)
    z = x - x.mean(-1, keepdims=True)
    z /= np.linalg.norm(z, axis=-1, keepdims=True)
    n = x.shape[-2]
    i, j = np.triu_indices(n, 1)
    brain = 1 - np.matmul(z, np.swapaxes(z, -1, -2))[..., i, j]
    models = np.stack([_np_corr_rdms(f) for f in feats])
    rb = scipy.stats.rankdata(brain, axis=-1)
    rm = scipy.stats.rankdata(models, axis=-1)
    rb -= rb.mean(-1, keepdims=True)
    rm -= rm.mean(-1, keepdims=True)
    rb /= np.linalg.norm(rb, axis=-1, keepdims=True)
    rm /= np.linalg.norm(rm, axis=-1, keepdims=True)
    return np.einsum("stk,lk->tls", rb, rm)


def fastalign_tr_rsa(data: torch.Tensor, feats: torch.Tensor, backend: str = "auto", **perm: Any) -> Any:
    brain = fa.time_resolved_rdms(data, "correlation", backend=backend if backend != "cpp" else "auto")
    models = fa.rdm(feats, "correlation")
    a, b = brain.permute(1, 0, 2)[:, None], models[None, :, None]  # (t, 1, s, K), (1, layers, 1, K)
    if perm:
        return fa.rsa_permutation_test(a, b, method="spearman", backend=backend, **perm)
    return fa.compare_rdms(a, b, "spearman", backend=backend)


def fastalign_tr_rsa_fused(data: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """The one-call form: fastalign.time_resolved_rsa (fused RDM -> ranks -> dot kernel on the CPU)."""
    return fa.time_resolved_rsa(data, fa.rdm(feats, "correlation"))  # (subjects, times, layers)


def rsatoolbox_perm_loop(data: np.ndarray, feats: list[np.ndarray], n_perm: int) -> None:
    s, n, _, t = data.shape
    brain = rt.rdm.calc_rdm(
        [rt.data.Dataset(data[i, :, :, j]) for i in range(s) for j in range(t)], method="correlation"
    )
    models = rt.rdm.calc_rdm([rt.data.Dataset(f) for f in feats], method="correlation")
    rt.rdm.compare(models, brain, "spearman")
    rng = np.random.default_rng(0)
    for _ in range(n_perm):
        perm = models.copy()
        perm.reorder(rng.permutation(n))
        rt.rdm.compare(perm, brain, "spearman")


# ----------------------------------------------------------------------------------------- cases


def bench_tr_rsa(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    s, n, ch, t, feat = args.tr_shape
    rng = np.random.default_rng(0)
    data = rng.normal(size=(s, n, ch, t))
    feats = [rng.normal(size=(n, feat)) for _ in range(4)]
    data_t, feats_t = torch.from_numpy(data), torch.from_numpy(np.stack(feats))
    shape = f"{s}x{n}x{ch}x{t} vs 4x{n}x{feat}"
    expect = fastalign_tr_rsa(data_t, feats_t).numpy()
    check = rsatoolbox_tr_rsa(data, feats)
    err = float(np.abs(expect.transpose(1, 2, 0).reshape(4, -1) - check).max())
    fused = fastalign_tr_rsa_fused(data_t, feats_t).numpy()
    err_fused = float(np.abs(fused.transpose(2, 0, 1).reshape(4, -1) - check).max())
    print(f"max |fastalign - rsatoolbox| = {err:.2e}, time_resolved_rsa: {err_fused:.2e}")
    base = _rows_timed(
        "tr-rsa",
        "rsatoolbox",
        lambda: rsatoolbox_tr_rsa(data, feats),
        args.slow_reps,
        shape=shape,
        dtype="float64",
    )
    rows.append(base)
    rows.append(
        _rows_timed(
            "tr-rsa", "scipy loops", lambda: scipy_loop_tr_rsa(data, feats), 1, shape=shape, dtype="float64"
        )
    )
    rows.append(
        _rows_timed(
            "tr-rsa",
            "numpy vectorised",
            lambda: numpy_tr_rsa(data, feats),
            args.slow_reps,
            shape=shape,
            dtype="float64",
        )
    )
    for dtype in (torch.float64, torch.float32):
        d, f = data_t.to(dtype), feats_t.to(dtype)
        for backend in ("auto", "torch"):
            row = _rows_timed(
                "tr-rsa",
                f"fastalign {backend}",
                lambda d=d, f=f, b=backend: fastalign_tr_rsa(d, f, b),
                args.reps,
                shape=shape,
                dtype=str(dtype)[6:],
            )
            row["peak_mem_MiB"] = (
                harness.peak_memory_bytes(lambda d=d, f=f, b=backend: fastalign_tr_rsa(d, f, b), "cpu")
                / 2**20
            )
            rows.append(row)
        row = _rows_timed(
            "tr-rsa",
            "fastalign time_resolved_rsa",
            lambda d=d, f=f: fastalign_tr_rsa_fused(d, f),
            args.reps,
            shape=shape,
            dtype=str(dtype)[6:],
        )
        row["peak_mem_MiB"] = (
            harness.peak_memory_bytes(lambda d=d, f=f: fastalign_tr_rsa_fused(d, f), "cpu") / 2**20
        )
        if dtype == torch.float64:
            row["max_abs_err_vs_rsatoolbox_f64"] = err_fused
        rows.append(row)
    for r in rows:  # the composed float64 result was checked against rsatoolbox above
        if r["case"] == "tr-rsa" and r["provider"] == "fastalign auto" and r["dtype"] == "float64":
            r["max_abs_err_vs_rsatoolbox_f64"] = err
    for r in rows:
        if r["case"] == "tr-rsa":
            r["speedup_vs_rsatoolbox"] = base["median_ms"] / r["median_ms"]

    n_perm = args.n_perm
    loop_perm = args.loop_perm
    t_loop = _rows_timed(
        "tr-rsa-perm",
        f"rsatoolbox loop ({loop_perm} perms)",
        lambda: rsatoolbox_perm_loop(data, feats, loop_perm),
        1,
        shape=shape,
        dtype="float64",
    )
    # extrapolate the loop linearly from loop_perm to n_perm permutations (its setup counted once)
    t_setup = base["median_ms"]
    per_perm = max(t_loop["median_ms"] - t_setup, 0.0) / loop_perm
    ext = dict(t_loop)
    ext.update(
        provider=f"rsatoolbox loop (extrapolated to {n_perm})",
        median_ms=t_setup + per_perm * n_perm,
        p20_ms=None,
        p80_ms=None,
        min_ms=None,
        max_ms=None,
        reps=0,
    )
    rows += [t_loop, ext]
    for dtype in (torch.float64, torch.float32):
        d, f = data_t.to(dtype), feats_t.to(dtype)
        # the torch-backend row only in float32: each 10,000-permutation run takes tens of seconds here
        for backend in ("auto", "torch") if dtype == torch.float32 else ("auto",):
            row = _rows_timed(
                "tr-rsa-perm",
                f"fastalign {backend} ({n_perm} perms)",
                lambda d=d, f=f, b=backend: fastalign_tr_rsa(d, f, b, n_permutations=n_perm, seed=0),
                1,
                shape=shape,
                dtype=str(dtype)[6:],
            )
            row["speedup_vs_rsatoolbox"] = ext["median_ms"] / row["median_ms"]
            rows.append(row)


def bench_rdm(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    p = args.rdm_features
    for n in args.rdm_sizes:
        x = torch.randn(n, p, generator=torch.Generator().manual_seed(n))
        _bench_rdm_size(args, rows, x, n, p)
    _bench_rdm_few_features(args, rows)


def _bench_rdm_size(
    args: argparse.Namespace, rows: list[dict[str, Any]], x: torch.Tensor, n: int, p: int
) -> None:
    xn = x.double().numpy()
    shape = f"{n}x{p}"
    slow = n <= args.baseline_max_n
    reps = 1 if n > 4000 else args.reps
    base = None
    if slow:
        base = _rows_timed(
            "rdm",
            "rsatoolbox",
            lambda: rt.rdm.calc_rdm(rt.data.Dataset(xn), method="correlation"),
            1 if n > 1000 else args.slow_reps,
            shape=shape,
            dtype="float64",
        )
        rows.append(base)
        rows.append(
            _rows_timed(
                "rdm", "scipy pdist", lambda: pdist(xn, "correlation"), 1, shape=shape, dtype="float64"
            )
        )
        rows.append(
            _rows_timed(
                "rdm",
                "numpy vectorised",
                lambda: 1 - np.corrcoef(xn)[np.triu_indices(n, 1)],
                1 if n > 1000 else args.slow_reps,
                shape=shape,
                dtype="float64",
            )
        )
    for dtype in (torch.float64, torch.float32):
        xd = x.to(dtype)
        row = _rows_timed(
            "rdm", "fastalign auto", lambda xd=xd: fa.rdm(xd), reps, shape=shape, dtype=str(dtype)[6:]
        )
        row["peak_mem_MiB"] = harness.peak_memory_bytes(lambda xd=xd: fa.rdm(xd), "cpu") / 2**20
        if base is not None:
            row["speedup_vs_rsatoolbox"] = base["median_ms"] / row["median_ms"]
        rows.append(row)


def _bench_rdm_few_features(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    """Few features (EEG windows): the pairwise C++ kernel against GEMM + extraction."""
    if _backend.global_status()["cpp"][0]:
        for feats in (17, 64, 256):
            x = torch.randn(100, 200, feats)
            for backend in ("torch", "cpp"):
                rows.append(
                    _rows_timed(
                        "rdm-batch",
                        f"fastalign {backend}",
                        lambda x=x, b=backend: fa.rdm(x, backend=b),
                        args.reps,
                        shape=f"100x200x{feats}",
                        dtype="float32",
                    )
                )


def bench_rank(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    cases = [
        ("1000x19900", torch.randn(args.rank_rows, 19900, dtype=torch.float64)),
        ("500000 tied", torch.randint(0, 3, (500_000,)).double()),
    ]
    backends = ["torch", *(["cpp"] if _backend.global_status()["cpp"][0] else [])]
    for shape, x in cases:
        xn = x.numpy()
        base = _rows_timed(
            "rank",
            "scipy rankdata",
            lambda xn=xn: scipy.stats.rankdata(xn, axis=-1),
            args.slow_reps,
            shape=shape,
            dtype="float64",
        )
        rows.append(base)
        for backend in backends:
            row = _rows_timed(
                "rank",
                f"fastalign {backend}",
                lambda x=x, b=backend: fa.rank(x, backend=b),
                args.reps,
                shape=shape,
                dtype="float64",
            )
            row["speedup_vs_scipy"] = base["median_ms"] / row["median_ms"]
            rows.append(row)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the script")
    p.add_argument("--cases", nargs="*", default=["tr-rsa", "rdm", "rank"])
    args = p.parse_args()
    if args.quick:
        args.tr_shape, args.n_perm, args.loop_perm = (2, 30, 17, 5, 64), 50, 3
        args.rdm_sizes, args.rdm_features, args.baseline_max_n, args.rank_rows = [50, 100], 64, 100, 10
        args.reps, args.slow_reps = 2, 1
    else:
        args.tr_shape, args.n_perm, args.loop_perm = (10, 200, 17, 100, 4096), 10_000, 5
        args.rdm_sizes, args.rdm_features, args.baseline_max_n, args.rank_rows = (
            [200, 1000, 4000, 16540],
            512,
            4000,
            1000,
        )
        args.reps, args.slow_reps = 3, 2
    rows: list[dict[str, Any]] = []
    if "tr-rsa" in args.cases:
        bench_tr_rsa(args, rows)
    if "rdm" in args.cases:
        bench_rdm(args, rows)
    if "rank" in args.cases:
        bench_rank(args, rows)
    meta = {
        "what": "time-resolved RSA (correlation RDMs, Spearman vs 4 model layers), with/without "
        "condition-label permutation tests; correlation RDMs; average ranks. fastalign 'auto' on this CPU = "
        "cpp (C++/OpenMP) where it is registered and fastest, else torch",
        "reduced": "none of the issue's sizes are reduced; baselines (rsatoolbox, scipy pdist, numpy) run "
        f"up to n = {args.baseline_max_n} conditions for RDMs (minutes and > 2 GiB beyond); the rsatoolbox "
        f"permutation row is a loop of {args.loop_perm} permutations extrapolated linearly to {args.n_perm}",
        "quick": bool(args.quick),
        "memory": "peak RSS growth during one call (VmHWM)",
        "columns": [
            ["case", "case"],
            ["provider", "provider"],
            ["shape", "shape"],
            ["dtype", "dtype"],
            ["median_ms", "median ms"],
            ["p20_ms", "p20"],
            ["p80_ms", "p80"],
            ["peak_mem_MiB", "peak MiB"],
            ["speedup_vs_rsatoolbox", "x rsatoolbox"],
            ["speedup_vs_scipy", "x scipy"],
            ["max_abs_err_vs_rsatoolbox_f64", "max err vs rsatoolbox"],
        ],
    }
    if not args.quick:
        print(harness.save("rsa", "cpu", rows, meta))


if __name__ == "__main__":
    main()
