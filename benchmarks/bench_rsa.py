"""RSA: time-resolved RSA, permutation tests, RDMs and ranks; fastalign vs rsatoolbox, scipy and numpy.

Workloads (the issue's; baselines skipped at sizes noted in the saved meta):

- ``tr-rsa``: 10 subjects x 200 conditions x 17 channels x 100 time points; one correlation RDM per
  subject and time point, 4 model-layer RDMs (200 x 4096 features each), Spearman similarity of every
  (time, layer, subject): the whole analysis from data to the (100, 4, 10) similarities.
- ``tr-rsa-perm``: the same similarities plus condition-label permutation p-values (alternative
  "greater"), every provider on the same permutations (fastalign's, seed 0). rsatoolbox has no batched
  permutation test: its row is a Python loop (``reorder`` the model RDMs, ``compare`` them with all brain
  RDMs), seconds per permutation, at 20 permutations, where numpy and fastalign run too; numpy and
  fastalign also run 10,000 permutations. Every count is measured, none extrapolated.
- ``rdm``: correlation RDMs of n conditions x 512 features for n up to 16,540.
- ``rdm-batch``: 100 RDMs of 200 conditions x 17, 64 or 256 features (EEG windows).
- ``rank``: average ranks of 1,000 RDM vectors of 19,900 entries, and of 500,000 heavily tied values.

Baselines: rsatoolbox (``calc_rdm`` + ``compare``), scipy (``pdist``, ``spearmanr``, ``rankdata``), and
numpy as a user who knows numpy writes it: each RDM from a BLAS Gram matrix (matmul) of centred unit rows,
the condensed vector by ``triu_indices``, each RDM ranked once (``rankdata``), Spearman as BLAS products
of centred unit ranks; its permutation test ranks once and computes the null of 100 permutations at a
time as one gather and one matrix product. rsatoolbox and numpy run in the row's dtype (rsatoolbox's
``compare`` ranks in float64 whatever it is given; its permutation loop runs in float64 only); scipy
computes in float64. With ``--device cuda`` fastalign's inputs live on the GPU; the baselines run on the
CPU.

Timing: within a case (one workload and size) every provider gets one untimed warm-up call (the
permutation rows: the same call with 2 permutations), then the providers run interleaved, one call each
per round, for as many rounds as their repetitions (baselines that take seconds get fewer).

Equal results in the same run: each provider's result (of its last timed call) is compared with a
float64 result on float64 copies of the same inputs (the inputs are float32 values, so both dtypes see
the same data): numpy's float64 result (RDMs beyond the baselines' sizes: the same formula by row
blocks; ranks: a stable sort with tied positions averaged, written apart from scipy and fastalign).
Errors are max |got - float64| over the output's scale (RDMs: their largest value; similarities: 1, the
bound of a dot product of unit vectors); numpy in the row's dtype, the baseline, must be within
harness.CHECK_BOUND (1e-10 float64, 2e-5 float32), every other provider within twice numpy's error in
that dtype plus harness.CHECK_FLOOR, or within CHECK_BOUND where numpy has no row. Ranks must be exactly
equal. Permutation p-values must give the same count of null values at least as large as the observed
one, except by the number of float64 null values within 2 x CHECK_BOUND of the observed (near ties that
the dtype's rounding may order either way). Each row records ``max_abs_diff`` and ``equal``,
``meta.checks`` the errors and limits; a failed check makes the script exit with status 1 without writing
a result file.

    flock /tmp/fastalign-bench.lock python benchmarks/bench_rsa.py            # --device cuda on a GPU
    python benchmarks/bench_rsa.py --quick        # a smoke run with tiny sizes, no result file
"""

from __future__ import annotations

import argparse
import gc
import statistics
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
from fastalign.rsa import common

LAYERS = 4
#: permutations per chunk of the numpy test's null: its gather holds layers x chunk x pairs values
NUMPY_PERM_CHUNK = 100

# ----------------------------------------------------------------------------------------- timing


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_interleaved(
    calls: dict[str, Callable[[], Any]],
    reps: dict[str, int],
    device: str,
    warmups: dict[str, Callable[[], Any]] | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Each call's timing stats (ms) and the result of its last timed call.

    One untimed warm-up call each (``warmups[k]``, a smaller call of the same code, where given), then
    rounds in which every call still owed a repetition runs once: a change of load falls on all alike.
    Wall-clock time, the device synchronised before and after each call.
    """
    for k, fn in calls.items():
        gc.collect()
        (warmups or {}).get(k, fn)()
    times: dict[str, list[float]] = {k: [] for k in calls}
    last: dict[str, Any] = {}
    for r in range(max(reps.values())):
        for k, fn in calls.items():
            if r >= reps[k]:
                continue
            gc.collect()
            _sync(device)
            t0 = time.perf_counter()
            out = fn()
            _sync(device)
            times[k].append((time.perf_counter() - t0) * 1e3)
            if r == reps[k] - 1:
                last[k] = out
            del out
    stats = {}
    for k, t in times.items():
        t.sort()
        p20, p80 = harness.spread(t)
        stats[k] = {"median_ms": statistics.median(t), "p20_ms": p20, "p80_ms": p80, "min_ms": t[0],
                    "max_ms": t[-1], "reps": len(t)}  # fmt: skip
    return stats, last


# ----------------------------------------------------------------------------------------- checks


def _f64(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().to(torch.float64)
    return torch.from_numpy(np.asarray(x, dtype=np.float64))


def check_values(
    got: Any, ref: np.ndarray, dtype: str, baseline: dict[str, float] | None, scale: float | None = None
) -> dict[str, Any]:
    """got against the float64 ``ref`` by the harness rule; errors over ``scale`` (default max |ref|)."""
    diff = harness.max_abs_diffs({"value": _f64(got)}, {"value": _f64(ref)})["value"]
    scale = float(np.abs(ref).max()) if scale is None else scale
    rel = {"value": diff / max(scale, 1e-300)}
    return {"max_abs_diff": diff, **harness.check_errors(rel, dtype, baseline)}


def check_ranks(got: Any, ref: np.ndarray) -> dict[str, Any]:
    """Ranks are exact: equal value for value."""
    diff = harness.max_abs_diffs({"value": _f64(got)}, {"value": _f64(ref)})["value"]
    return {"max_abs_diff": diff, "limit": 0.0, "equal": diff == 0.0}


def check_pvalues(
    got: Any, ref_p: np.ndarray, ref_obs: np.ndarray, ref_null: np.ndarray, dtype: str
) -> dict[str, Any]:
    """p-values against the float64 test's: the same count of null values >= the observed statistic,
    except by the number of float64 null values within 2 x CHECK_BOUND[dtype] of it (near ties that a
    dtype's rounding may order either way; none for float64 on continuous data)."""
    n_null = ref_null.shape[0]
    counts = np.rint(np.asarray(_f64(got)) * (n_null + 1)) - 1
    ref_counts = np.rint(ref_p * (n_null + 1)) - 1
    near = (np.abs(ref_null - ref_obs) <= 2 * harness.CHECK_BOUND[dtype]).sum(0)
    off = np.abs(counts - ref_counts)
    differ = int(((off > near) | np.isnan(off)).sum())  # NaN never passes
    return {"max_count_diff": float(off.max()), "near_ties": int(near.sum()), "differ": differ,
            "equal": differ == 0}  # fmt: skip


def record_checks(
    rows: dict[str, dict[str, Any]],
    results: dict[str, Any],
    check: Callable[[dict[str, Any], Any, dict[str, float] | None], dict[str, Any]],
    checks: dict[str, Any],
    reference: str,
) -> None:
    """Checks each row's result (``rows`` and ``results`` by the same keys) with ``check(row, result,
    baseline_errors)``; the numpy row of a dtype is that dtype's baseline, checked first. Sets
    ``max_abs_diff`` and ``equal`` on each row and adds the checks to ``checks``."""
    baselines: dict[str, dict[str, float]] = {}
    for k in sorted(rows, key=lambda k: not rows[k]["provider"].startswith("numpy")):
        row = rows[k]
        result = check(row, results[k], baselines.get(row["dtype"]))
        if row["provider"].startswith("numpy") and "rel_err" in result:
            baselines[row["dtype"]] = result["rel_err"]
        name = " ".join(str(row[c]) for c in ("case", "provider", "dtype", "shape"))
        if "permutations" in row:
            name += f" {row['permutations']} perms"
        checks[name] = {"reference": reference, **result}
        row["max_abs_diff"], row["equal"] = result["max_abs_diff"], result["equal"]


def _speedups(rows: list[dict[str, Any]], scipy_baseline: bool = False) -> None:
    """x rsatoolbox and x numpy: against the row of the same case, shape, count and dtype."""
    for row in rows:
        for prefix, key in (("rsatoolbox", "speedup_vs_rsatoolbox"), ("numpy", "speedup_vs_numpy")) + (
            (("scipy", "speedup_vs_scipy"),) if scipy_baseline else ()
        ):
            base = [b for b in rows if b["provider"].startswith(prefix) and b["dtype"] == row["dtype"]]
            if base:
                row[key] = base[0]["median_ms"] / row["median_ms"]


# ----------------------------------------------------------------------------------------- baselines


def _rt_rdms(data: np.ndarray, feats: list[np.ndarray]) -> tuple[Any, Any]:
    s, _, _, t = data.shape
    brain = rt.rdm.calc_rdm(
        [rt.data.Dataset(data[i, :, :, j]) for i in range(s) for j in range(t)], method="correlation"
    )
    return brain, rt.rdm.calc_rdm([rt.data.Dataset(f) for f in feats], method="correlation")


def _tls(v: np.ndarray, s: int, t: int) -> np.ndarray:
    """(layers, subjects * times), subject-major -> (times, layers, subjects)."""
    return v.reshape(-1, s, t).transpose(2, 0, 1)


def rsatoolbox_tr_rsa(data: np.ndarray, feats: list[np.ndarray]) -> np.ndarray:
    brain, models = _rt_rdms(data, feats)
    return _tls(rt.rdm.compare(models, brain, "spearman"), data.shape[0], data.shape[-1])


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


def numpy_rdms(x: np.ndarray) -> np.ndarray:
    """(..., n, p) -> (..., n(n-1)/2) correlation distances in x's dtype: rsatoolbox's formula (centre,
    scale to unit norm, 1 - the Gram matrix), the Gram matrix by BLAS (matmul)."""
    z = x - x.mean(-1, keepdims=True)
    z /= np.linalg.norm(z, axis=-1, keepdims=True)
    i, j = np.triu_indices(x.shape[-2], 1)
    return 1 - (z @ np.swapaxes(z, -1, -2))[..., i, j]


def reference_rdm(x: np.ndarray, block: int = 1024) -> np.ndarray:
    """numpy_rdms of one (n, p) float64 matrix by blocks of rows, without its n x n Gram matrix (for sizes
    where the baselines do not run)."""
    z = x - x.mean(-1, keepdims=True)
    z /= np.linalg.norm(z, axis=-1, keepdims=True)
    n = len(z)
    out, pos = np.empty(n * (n - 1) // 2), 0
    for a in range(0, n, block):
        gram = z[a : a + block] @ z[a:].T  # rows a.., columns a..
        for r in range(len(gram)):  # condition a + r: its pairs with a + r + 1 .. n - 1
            out[pos : pos + n - a - r - 1] = 1 - gram[r, r + 1 :]
            pos += n - a - r - 1
    return out


def reference_ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks along the last axis in float64, written apart from scipy and fastalign: a stable sort,
    then each run of equal values gets the mean of its first and last 1-based position."""
    order = np.argsort(x, axis=-1, kind="stable")
    xs = np.take_along_axis(x, order, axis=-1)
    pos = np.broadcast_to(np.arange(x.shape[-1]), x.shape)
    starts = np.ones(x.shape, dtype=bool)
    starts[..., 1:] = xs[..., 1:] != xs[..., :-1]
    ends = np.ones(x.shape, dtype=bool)
    ends[..., :-1] = starts[..., 1:]
    first = np.maximum.accumulate(np.where(starts, pos, 0), axis=-1)
    last = np.flip(np.minimum.accumulate(np.flip(np.where(ends, pos, x.shape[-1]), -1), axis=-1), -1)
    out = np.empty(x.shape)
    np.put_along_axis(out, order, (first + last) / 2 + 1, axis=-1)
    return out


def _numpy_unit_ranks(v: np.ndarray) -> np.ndarray:
    """(..., K) -> each vector's average ranks, centred and scaled to unit norm, in v's dtype."""
    r = scipy.stats.rankdata(v, axis=-1).astype(v.dtype)
    r -= r.mean(-1, keepdims=True)
    r /= np.linalg.norm(r, axis=-1, keepdims=True)
    return r


def _numpy_ranked(data: np.ndarray, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(subjects * times, K) brain and (layers, K) model unit ranks, subject-major."""
    brain = _numpy_unit_ranks(numpy_rdms(np.moveaxis(data, -1, 1)))  # (s, t, K)
    return brain.reshape(-1, brain.shape[-1]), _numpy_unit_ranks(numpy_rdms(feats))


def numpy_tr_rsa(data: np.ndarray, feats: np.ndarray) -> np.ndarray:
    brain, models = _numpy_ranked(data, feats)
    return _tls(models @ brain.T, data.shape[0], data.shape[-1])


def numpy_perm(data: np.ndarray, feats: np.ndarray, perms: np.ndarray) -> dict[str, np.ndarray]:
    """Observed (times, layers, subjects) similarities, p-values (alternative "greater") and the
    (permutations, times, layers, subjects) null: ranks once; the null of each chunk of permutations is one
    gather of the model ranks (conditions relabelled) and one BLAS product with all brain ranks."""
    s, n, _, t = data.shape
    brain, models = _numpy_ranked(data, feats)
    obs = models @ brain.T  # (layers, s * t)
    i, j = np.triu_indices(n, 1)
    pair = np.zeros((n, n), dtype=np.int64)
    pair[i, j] = pair[j, i] = np.arange(len(i))
    null = np.empty((len(perms), *obs.shape), dtype=obs.dtype)
    for c in range(0, len(perms), NUMPY_PERM_CHUNK):
        pc = perms[c : c + NUMPY_PERM_CHUNK]
        moved = models[:, pair[pc[:, i], pc[:, j]]]  # (layers, chunk, K)
        prod = moved.reshape(-1, moved.shape[-1]) @ brain.T  # (layers * chunk, s * t)
        null[c : c + len(pc)] = prod.reshape(len(models), len(pc), -1).swapaxes(0, 1)
    pvalue = (1 + (null >= obs).sum(0)) / (1 + len(perms))
    return {"statistic": _tls(obs, s, t), "pvalue": _tls(pvalue, s, t),
            "null": null.reshape(len(perms), -1, s, t).transpose(0, 3, 1, 2)}  # fmt: skip


def rsatoolbox_perm_loop(
    data: np.ndarray, feats: list[np.ndarray], perms: np.ndarray
) -> dict[str, np.ndarray]:
    """rsatoolbox's test as a user writes it: one ``compare`` per permutation of the model RDMs."""
    s, _, _, t = data.shape
    brain, models = _rt_rdms(data, feats)
    obs = rt.rdm.compare(models, brain, "spearman")
    null = np.empty((len(perms), *obs.shape))
    for k, p in enumerate(perms):
        moved = models.copy()
        moved.reorder(p)
        null[k] = rt.rdm.compare(moved, brain, "spearman")
    pvalue = (1 + (null >= obs).sum(0)) / (1 + len(perms))
    return {"statistic": _tls(obs, s, t), "pvalue": _tls(pvalue, s, t)}


def fastalign_tr_rsa(data: torch.Tensor, feats: torch.Tensor, backend: str = "auto", **perm: Any) -> Any:
    """The composed calls: time_resolved_rdms, rdm, compare_rdms (or rsa_permutation_test)."""
    brain = fa.time_resolved_rdms(data, "correlation", backend=backend)
    models = fa.rdm(feats, "correlation")
    a, b = brain.permute(1, 0, 2)[:, None], models[None, :, None]  # (t, 1, s, K), (1, layers, 1, K)
    if perm:
        res = fa.rsa_permutation_test(a, b, method="spearman", backend=backend, **perm)
        return {"statistic": res.statistic, "pvalue": res.pvalue}
    return fa.compare_rdms(a, b, "spearman", backend=backend)  # (t, layers, s)


def fastalign_tr_rsa_fused(data: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """The one-call form: fastalign.time_resolved_rsa (fused RDM -> ranks -> dot kernel on the CPU)."""
    return fa.time_resolved_rsa(data, fa.rdm(feats, "correlation")).permute(1, 2, 0)  # (t, layers, s)


# ----------------------------------------------------------------------------------------- cases


class _Case:
    """The providers of one case (one workload and size): their calls, repetitions and row fields."""

    def __init__(self) -> None:
        self.calls: dict[str, Callable[[], Any]] = {}
        self.reps: dict[str, int] = {}
        self.info: dict[str, dict[str, Any]] = {}
        self.warmups: dict[str, Callable[[], Any]] = {}

    def add(
        self,
        key: str,
        provider: str,
        dtype: str,
        device: str,
        reps: int,
        fn: Callable[[], Any],
        warmup: Callable[[], Any] | None = None,
        **fields: Any,
    ) -> None:
        self.calls[key], self.reps[key] = fn, reps
        self.info[key] = {"provider": provider, "device": device, "dtype": dtype, **fields}
        if warmup is not None:
            self.warmups[key] = warmup

    def run(self, case: str, shape: str, device: str) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
        """The rows by key, and each call's result (of its last timed call)."""
        stats, results = time_interleaved(self.calls, self.reps, device, self.warmups)
        rows = {}
        for k, st in stats.items():
            row = {"case": case, "shape": shape, **self.info[k], **st}
            line = f"{case:12s} {row['provider']:28s} {row['dtype']:8s} {shape:28s}"
            print(f"{line} {st['median_ms']:10.1f} ms", flush=True)
            rows[k] = row
        return rows, results

    def peak_memory(self, rows: dict[str, dict[str, Any]], device: str, prefix: str = "fa ") -> None:
        for k, fn in self.calls.items():
            if k.startswith(prefix):
                rows[k]["peak_mem_MiB"] = harness.peak_memory_bytes(fn, device) / 2**20


def _backends(op: str, device: str) -> list[str]:
    """torch and the compiled backend of ``op`` for ``device`` where it runs in this process."""
    ok = {k: v[0] for k, v in _backend.global_status().items()}
    gpu = device.startswith("cuda")
    compiled = {"rank": "cuda" if gpu else "cpp", "rdm": "triton" if gpu else "cpp"}[op]
    return ["torch", *([compiled] if ok.get(compiled) else [])]


def _tr_inputs(tr_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(subjects, n, channels, times) data and (layers, n, features) model features: float32 values in
    float64 arrays, so that the float32 and float64 rows and their float64 reference see the same data."""
    s, n, ch, t, feat = tr_shape
    rng = np.random.default_rng(0)
    data = rng.normal(size=(s, n, ch, t)).astype(np.float32).astype(np.float64)
    return data, rng.normal(size=(LAYERS, n, feat)).astype(np.float32).astype(np.float64)


def _values_check(ref: np.ndarray, scale: float | None = None) -> Callable[..., dict[str, Any]]:
    def check(row: dict[str, Any], got: Any, base: dict[str, float] | None) -> dict[str, Any]:
        return check_values(got, ref, row["dtype"], base, scale)

    return check


def _perm_check(ref: dict[str, np.ndarray]) -> Callable[..., dict[str, Any]]:
    def check(row: dict[str, Any], got: Any, base: dict[str, float] | None) -> dict[str, Any]:
        stat = check_values(got["statistic"], ref["statistic"], row["dtype"], base, scale=1.0)
        pv = check_pvalues(got["pvalue"], ref["pvalue"], ref["statistic"], ref["null"], row["dtype"])
        return {**stat, "pvalue": pv, "equal": stat["equal"] and pv["equal"]}

    return check


def _finish(
    rows: list[dict[str, Any]],
    case_rows: dict[str, dict[str, Any]],
    results: dict[str, Any],
    check: Callable[..., dict[str, Any]],
    checks: dict[str, Any],
    reference: str,
) -> None:
    record_checks(case_rows, results, check, checks, reference)
    _speedups(list(case_rows.values()), scipy_baseline=case_rows[next(iter(case_rows))]["case"] == "rank")
    rows += case_rows.values()


def bench_tr_rsa(args: argparse.Namespace, rows: list[dict[str, Any]], checks: dict[str, Any]) -> None:
    s, n, ch, t, feat = args.tr_shape
    dev, slow = args.device, args.slow_reps
    data, feats = _tr_inputs(args.tr_shape)
    c = _Case()
    for name in ("float64", "float32"):
        d, f = data.astype(name), feats.astype(name)
        c.add(f"rt {name}", "rsatoolbox", name, "cpu", slow, lambda d=d, f=f: rsatoolbox_tr_rsa(d, list(f)))
        if name == "float64":  # scipy computes in float64 whatever it is given
            c.add("scipy", "scipy loops", name, "cpu", slow, lambda: scipy_loop_tr_rsa(data, list(feats)))
        c.add(f"np {name}", "numpy (BLAS)", name, "cpu", slow, lambda d=d, f=f: numpy_tr_rsa(d, f))
    for name in ("float64", "float32"):
        d, f = (torch.from_numpy(v).to(dev, getattr(torch, name)) for v in (data, feats))
        for b in ("auto", "torch"):
            c.add(f"fa {b} {name}", f"fastalign {b}", name, dev, args.reps,
                  lambda d=d, f=f, b=b: fastalign_tr_rsa(d, f, b))  # fmt: skip
        c.add(f"fa fused {name}", "fastalign time_resolved_rsa", name, dev, args.reps,
              lambda d=d, f=f: fastalign_tr_rsa_fused(d, f))  # fmt: skip
    case_rows, results = c.run("tr-rsa", f"{s}x{n}x{ch}x{t} vs {LAYERS}x{n}x{feat}", dev)
    c.peak_memory(case_rows, dev)
    check = _values_check(results["np float64"], scale=1.0)
    _finish(rows, case_rows, results, check, checks, "numpy (BLAS) float64")


def bench_tr_rsa_perm(args: argparse.Namespace, rows: list[dict[str, Any]], checks: dict[str, Any]) -> None:
    s, n, ch, t, feat = args.tr_shape
    dev = args.device
    data, feats = _tr_inputs(args.tr_shape)
    warm = common.permutations(n, 2, 0)[0].numpy()
    for k in (args.cmp_perm, args.n_perm):
        perms = common.permutations(n, k, 0)[0].numpy()  # what fastalign draws for seed 0
        c = _Case()
        if k == args.cmp_perm:
            c.add("rt", "rsatoolbox loop", "float64", "cpu", 1,
                  lambda p=perms: rsatoolbox_perm_loop(data, list(feats), p),
                  lambda: rsatoolbox_perm_loop(data, list(feats), warm), permutations=k)  # fmt: skip
        for name in ("float64", "float32"):
            d, f = data.astype(name), feats.astype(name)
            c.add(f"np {name}", "numpy (BLAS)", name, "cpu", 1, lambda d=d, f=f, p=perms: numpy_perm(d, f, p),
                  lambda d=d, f=f: numpy_perm(d, f, warm), permutations=k)  # fmt: skip
        for name in ("float64", "float32"):
            d, f = (torch.from_numpy(v).to(dev, getattr(torch, name)) for v in (data, feats))
            # torch float64 only at the smaller count: 10,000 permutations take tens of seconds on a CPU
            for b in ("auto", "torch") if name == "float32" or k == args.cmp_perm else ("auto",):
                c.add(f"fa {b} {name}", f"fastalign {b}", name, dev, 1,
                      lambda d=d, f=f, b=b, k=k: fastalign_tr_rsa(d, f, b, n_permutations=k, seed=0),
                      lambda d=d, f=f, b=b: fastalign_tr_rsa(d, f, b, n_permutations=2, seed=0),
                      permutations=k)  # fmt: skip
        case_rows, results = c.run("tr-rsa-perm", f"{s}x{n}x{ch}x{t} vs {LAYERS}x{n}x{feat}", dev)
        check = _perm_check(results["np float64"])
        _finish(rows, case_rows, results, check, checks, f"numpy (BLAS) float64, {k} permutations")
        del results, check


def bench_rdm(args: argparse.Namespace, rows: list[dict[str, Any]], checks: dict[str, Any]) -> None:
    dev, p = args.device, args.rdm_features
    for n in args.rdm_sizes:
        x = torch.randn(n, p, generator=torch.Generator().manual_seed(n))
        x64 = x.double().numpy()
        reps = args.reps if n <= 1000 else args.slow_reps if n <= args.baseline_max_n else 1
        c = _Case()
        if n <= args.baseline_max_n:
            for name in ("float64", "float32"):
                xn = x64.astype(name)
                c.add(f"rt {name}", "rsatoolbox", name, "cpu", reps,
                      lambda xn=xn: rt.rdm.calc_rdm(rt.data.Dataset(xn), method="correlation"))  # fmt: skip
                if name == "float64":  # pdist computes in float64 whatever it is given
                    c.add("scipy", "scipy pdist", name, "cpu", reps, lambda x=x64: pdist(x, "correlation"))
                c.add(f"np {name}", "numpy (BLAS)", name, "cpu", reps, lambda xn=xn: numpy_rdms(xn))
        for dtype in (torch.float64, torch.float32):
            xd = x.to(dev, dtype)
            c.add(f"fa {dtype}", "fastalign auto", str(dtype)[6:], dev, reps, lambda xd=xd: fa.rdm(xd))
        case_rows, results = c.run("rdm", f"{n}x{p}", dev)
        c.peak_memory(case_rows, dev)
        for k in ("rt float64", "rt float32"):
            if k in results:
                results[k] = results[k].dissimilarities[0]
        if "np float64" in results:
            ref, which = results["np float64"], "numpy (BLAS) float64"
        else:
            ref, which = reference_rdm(x64), "numpy_rdms float64 by row blocks"
        _finish(rows, case_rows, results, _values_check(ref), checks, which)
        del results, ref
    _bench_rdm_batch(args, rows, checks)


def _bench_rdm_batch(args: argparse.Namespace, rows: list[dict[str, Any]], checks: dict[str, Any]) -> None:
    """Few features (EEG windows): the pairwise C++ kernel against GEMM + extraction (and numpy)."""
    dev, (m, n) = args.device, args.batch_shape
    for feats in (17, 64, 256):
        x = torch.randn(m, n, feats, generator=torch.Generator().manual_seed(feats))
        xn, xd = x.numpy(), x.to(dev)
        c = _Case()
        c.add("np", "numpy (BLAS)", "float32", "cpu", args.reps, lambda xn=xn: numpy_rdms(xn))
        for b in _backends("rdm", dev):
            c.add(f"fa {b}", f"fastalign {b}", "float32", dev, args.reps,
                  lambda xd=xd, b=b: fa.rdm(xd, backend=b))  # fmt: skip
        case_rows, results = c.run("rdm-batch", f"{m}x{n}x{feats}", dev)
        ref = numpy_rdms(x.double().numpy())
        _finish(rows, case_rows, results, _values_check(ref), checks, "numpy (BLAS) float64")


def bench_rank(args: argparse.Namespace, rows: list[dict[str, Any]], checks: dict[str, Any]) -> None:
    dev, g = args.device, torch.Generator().manual_seed(0)
    cases = [
        (f"{args.rank_rows}x19900", torch.randn(args.rank_rows, 19900, dtype=torch.float64, generator=g)),
        ("500000 tied", torch.randint(0, 3, (500_000,), generator=g).double()),
    ]
    for shape, x in cases:
        xn, xd = x.numpy(), x.to(dev)
        c = _Case()
        c.add("scipy", "scipy rankdata", "float64", "cpu", args.slow_reps,
              lambda xn=xn: scipy.stats.rankdata(xn, axis=-1))  # fmt: skip
        for b in _backends("rank", dev):
            c.add(f"fa {b}", f"fastalign {b}", "float64", dev, args.reps,
                  lambda xd=xd, b=b: fa.rank(xd, backend=b))  # fmt: skip
        case_rows, results = c.run("rank", shape, dev)
        ref = reference_ranks(xn)

        def check(row: dict[str, Any], got: Any, base: Any, ref: np.ndarray = ref) -> dict[str, Any]:
            return check_ranks(got, ref)

        _finish(rows, case_rows, results, check, checks, "numpy stable sort, average of tied positions")


CASES = {"tr-rsa": bench_tr_rsa, "tr-rsa-perm": bench_tr_rsa_perm, "rdm": bench_rdm, "rank": bench_rank}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu",
        help="where fastalign's inputs live: cpu or cuda (default: cuda when present); baselines: the CPU",
    )  # fmt: skip
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, no result file")
    p.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    args = p.parse_args(argv)
    if not (args.device == "cpu" or (args.device.startswith("cuda") and torch.cuda.is_available())):
        p.error(f"--device: {args.device!r} cannot run here; expected cpu, or cuda with a CUDA device")
    if args.quick:
        args.tr_shape, args.cmp_perm, args.n_perm = (2, 30, 17, 5, 64), 7, 50
        args.rdm_sizes, args.rdm_features, args.baseline_max_n = [50, 100, 130], 64, 100
        args.batch_shape, args.rank_rows, args.reps, args.slow_reps = (5, 20), 10, 2, 1
    else:
        args.tr_shape, args.cmp_perm, args.n_perm = (10, 200, 17, 100, 4096), 20, 10_000
        args.rdm_sizes, args.rdm_features, args.baseline_max_n = [200, 1000, 4000, 16540], 512, 4000
        args.batch_shape, args.rank_rows, args.reps, args.slow_reps = (100, 200), 1000, 3, 2
    rows: list[dict[str, Any]] = []
    checks: dict[str, Any] = {}
    for case in args.cases:
        CASES[case](args, rows, checks)
    differ = [k for k, v in checks.items() if not v["equal"]]
    for k in differ:
        print(f"RESULTS DIFFER from float64 beyond the limit: {k}: {checks[k]}", file=sys.stderr)
    if differ:
        return 1
    print(f"all {len(checks)} results equal to float64 within their limits")
    if args.quick:
        return 0
    meta = {
        "what": "time-resolved RSA (correlation RDMs, Spearman vs 4 model layers), with/without "
        "condition-label permutation tests; correlation RDMs; average ranks. fastalign 'auto' on a CPU = "
        "cpp (C++/OpenMP) where it is registered and fastest, else torch; on a GPU cuda/triton where they "
        "apply",
        "reduced": "baselines (rsatoolbox, scipy pdist, numpy) run up to n = "
        f"{args.baseline_max_n} conditions for RDMs (minutes and > 2 GiB beyond); rsatoolbox's "
        f"permutation loop runs {args.cmp_perm} permutations (each takes seconds), numpy and fastalign "
        f"also {args.n_perm}; fastalign's torch backend in float64 only {args.cmp_perm}. No number is "
        "extrapolated",
        "device": f"fastalign on {args.device}; rsatoolbox, scipy and numpy on the CPU",
        "timing": "per case one untimed warm-up call per provider (permutation rows: 2 permutations), then "
        "interleaved rounds, one call per provider each; wall clock, the device synchronised",
        "memory": "peak RSS growth during one call (VmHWM); CUDA: max_memory_allocated",
        "speedups": "x rsatoolbox / x numpy: against that baseline's row of the same case, size, "
        "permutation count and dtype (none where it has no such row: rsatoolbox's permutation loop is "
        "float64 only); x scipy: against scipy rankdata (float64)",
        "check_tolerance": "each result against float64 on float64 copies of the same inputs (numpy's, "
        "beyond the baselines' sizes the same formula by row blocks; ranks: numpy stable sort, tie runs "
        "averaged); "
        "errors over the output's scale (RDMs: their largest value; similarities: 1); numpy in the row's "
        "dtype within CHECK_BOUND, every other provider within 2 x numpy's error in that dtype + CHECK_FLOOR "
        "(CHECK_BOUND without a numpy row); ranks exactly equal; p-values: the same count of null values "
        ">= the observed except by the float64 null values within 2 x CHECK_BOUND of it; CHECK_BOUND "
        f"{harness.CHECK_BOUND}, CHECK_FLOOR {harness.CHECK_FLOOR}",
        "checks": checks,
        "columns": [["case", "case"], ["provider", "provider"], ["device", "device"], ["shape", "shape"],
                    ["permutations", "perms"], ["dtype", "dtype"], ["median_ms", "median ms"],
                    ["p20_ms", "p20"], ["p80_ms", "p80"], ["peak_mem_MiB", "peak MiB"],
                    ["speedup_vs_rsatoolbox", "x rsatoolbox"], ["speedup_vs_numpy", "x numpy"],
                    ["speedup_vs_scipy", "x scipy"], ["max_abs_diff", "max Δ vs float64"],
                    ["equal", "equal"]],
    }  # fmt: skip
    print(harness.save("rsa", args.device, rows, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
