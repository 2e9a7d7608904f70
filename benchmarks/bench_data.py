"""MVNN and the full THINGS-EEG2 preprocessing on the CPU: fastalign against the published pipeline
(gifale95/eeg_encoding) rebuilt step by step (fastalign.data.reference), every time measured.

Published sizes: 63 raw channels at 1000 Hz, 4 sessions; per session 8,270 training images x 2
repetitions and 200 test images x 20 repetitions (16,540 training conditions x 4 repetitions and
200 x 80 after merging), 17 occipital/parietal channels x 100 samples per epoch.

- ``mvnn``: one session at the published size, ``dim="time"`` and ``"epochs"``: fastalign's vectorised
  ``mvnn`` (median of ``--reps`` runs) against ``reference.published_mvnn`` (one run): the published
  per-condition loop (sklearn ``_cov(shrinkage="auto")`` per condition and time point / repetition) and
  its whitening (``scipy.linalg.fractional_matrix_power(sigma, -0.5)`` and one matmul per epoch), the
  same work as ``mvnn``. The published ``"time"`` loop fits ~850,000 covariances (about 1 ms each on an
  idle 2-core CPU, several on a busy one): most of a default run's time.
- ``preprocess``: ``preprocess_things_eeg2`` (recipe "eeg_encoding": 100 Hz, ``mvnn_dim="time"``)
  against ``reference.published_preprocess`` (the published script's epoching, mvnn and save_prepr with
  the same MNE calls and numpy loops, saving its two files as published), each run once on the same
  synthetic subject (raw files from ``make_synthetic_things``: 63 channels, 1000 Hz, 4 sessions, 200
  test images x 20 repetitions per session as published) with the training set reduced to fractions of
  the 16,540 images. ``--full`` runs both on one full published-size subject instead (about 1.7 GB of
  raw float64 per session file; making its synthetic raw data takes ~3 min, the published ``"time"``
  MVNN fits ~3.4 million covariances): results/data_full-*.json.

Equal results in the same run: fastalign's whitened partitions (mvnn) and merged test and training
arrays (preprocess) against the published rebuild's: max |fastalign - published| over max |published|
of each output within ``RTOL`` (1e-13, the agreement the project claims), and the same channel names.
Each row records ``rel_err`` (its largest output's) and ``equal``; ``meta.checks`` the error of every
output. An output outside the limit makes the script exit with status 1 without writing a result file.

    flock /tmp/fastalign-bench.lock python benchmarks/bench_data.py        # an hour or more on 2 cores
    python benchmarks/bench_data.py --fractions 0.125 0.25 --reps 3         # the defaults
    flock /tmp/fastalign-bench.lock python benchmarks/bench_data.py --full  # the full size, hours
    python benchmarks/bench_data.py --quick      # a smoke run: 4 test images, 20 training ones, no file
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from typing import Any

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import harness

from fastalign.cli.common import positive_int
from fastalign.data import make_synthetic_things, mvnn, preprocess_things_eeg2
from fastalign.data.reference import published_mvnn, published_preprocess

TRAIN_IMAGES, TEST_IMAGES, TRAIN_REPS, TEST_REPS, SESSIONS = 16540, 200, 2, 20, 4
N_CH, N_T = 17, 100
CASE = "preprocess_things_eeg2, 1 subject"
FAST, PUBLISHED = "fastalign", "published (gifale95/eeg_encoding rebuilt)"
#: The largest difference from the published rebuild, relative to its largest value, that passes.
RTOL = 1e-13
# --quick: test images, training images per session, and the fraction of the 16,540 training images
# preprocessed (20 images, 10 a session: each is in 2 of the 4)
QUICK_TEST_IMAGES, QUICK_PER_SESSION, QUICK_FRACTION = 4, 10, 20 / TRAIN_IMAGES


def _row(case: str, impl: str, shape: str, seconds: float, how: str, **extra: Any) -> dict[str, Any]:
    row = {"case": case, "impl": impl, "shape": shape, "seconds": seconds, "how": how}
    row.update({"p20_s": None, "p80_s": None, "peak_mem_mb": None, "speedup": None} | extra)
    return row


def check_equal(
    got: dict[str, np.ndarray],
    want: dict[str, np.ndarray],
    ch_names: tuple[list[str], list[str]] | None = None,
) -> dict[str, Any]:
    """Each output's max |got - want| / max |want| and whether all are within RTOL (and, when given,
    the channel names (got's, want's) are the same). NaN and a shape mismatch never pass."""
    rel = {}
    for k, w in want.items():
        g = np.asarray(got[k], dtype=np.float64)
        if g.shape != w.shape:
            rel[k] = float("nan")
            continue
        rel[k] = float(np.abs(g - w).max() / np.abs(w).max()) if w.size else 0.0
    equal = all(v <= RTOL for v in rel.values())  # NaN compares False
    out: dict[str, Any] = {"rel_err": rel, "limit": RTOL}
    if ch_names is not None:
        out["same_ch_names"] = list(ch_names[0]) == list(ch_names[1])
        equal = equal and out["same_ch_names"]
    out["equal"] = equal
    return out


def _session(rng: np.random.Generator, n_cond: int, n_rep: int) -> np.ndarray:
    mix = np.eye(N_CH) + 0.3 * rng.normal(size=(N_CH, N_CH))
    return np.einsum("ij,crjt->crit", mix, rng.normal(size=(n_cond, n_rep, N_CH, N_T)))


def _timed_once(fn: Any) -> tuple[Any, float, int]:
    """(fn's result, its seconds, the peak memory it added in bytes) of one call."""
    gc.collect()
    out: list[Any] = []
    t0 = time.perf_counter()
    mem = harness.peak_memory_bytes(lambda: out.append(fn()), "cpu")
    return out[0], time.perf_counter() - t0, mem


def bench_mvnn(
    reps: int, test_images: int = TEST_IMAGES, per_session: int = TRAIN_IMAGES // 2
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """MVNN of one session of ``test_images`` and ``per_session`` training images (published: each
    training image is in 2 of the 4 sessions): the rows and the checks by case."""
    rng = np.random.default_rng(0)
    test, train = _session(rng, test_images, TEST_REPS), _session(rng, per_session, TRAIN_REPS)
    shape = f"test {test.shape} + train {train.shape}"
    rows, checks = [], {}
    for dim in ("time", "epochs"):
        case = f"mvnn dim={dim}, 1 session"
        last: dict[str, list[np.ndarray]] = {}

        def fast(dim: str = dim, last: dict[str, list[np.ndarray]] = last) -> None:
            last["white"] = mvnn([test, train], dim)

        gc.collect()
        t = harness.time_fn(fast, "cpu", warmup=1, rep=reps)
        mem = harness.peak_memory_bytes(fast, "cpu")
        (want, _), pub_seconds, pub_mem = _timed_once(lambda dim=dim: published_mvnn([test, train], dim))
        parts = ("test", "train")
        result = check_equal(
            dict(zip(parts, last["white"], strict=True)), dict(zip(parts, want, strict=True))
        )
        checks[case] = result
        seconds = t["median_ms"] / 1e3
        verdict = {"rel_err": max(result["rel_err"].values()), "equal": result["equal"]}
        rows.append(
            _row(case, FAST, shape, seconds, f"measured, median of {reps}", p20_s=t["p20_ms"] / 1e3,
                 p80_s=t["p80_ms"] / 1e3, peak_mem_mb=mem / 2**20, speedup=pub_seconds / seconds, **verdict)
        )  # fmt: skip
        rows.append(_row(case, PUBLISHED, shape, pub_seconds, "measured, 1 run", peak_mem_mb=pub_mem / 2**20))
        print(rows[-2], rows[-1], sep="\n", flush=True)
        del last, want
    return rows, checks


def _make_subject(root: str, fraction: float, test_images: int) -> int:
    n_concepts = max(1, round(TRAIN_IMAGES * fraction / 10))
    make_synthetic_things(
        root, n_train_concepts=n_concepts, images_per_concept=10, n_test=test_images, n_sessions=SESSIONS,
        training_repetitions=TRAIN_REPS, test_repetitions=TEST_REPS, n_channels=N_CH, n_extra_channels=46,
        n_times=N_T, raw_sfreq=1000.0, image_size=8, n_voxels=8, fmri_repetitions=1, preprocess=False,
    )  # fmt: skip
    return n_concepts * 10


def bench_preprocess(
    fractions: list[float], test_images: int = TEST_IMAGES
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One subject per fraction preprocessed by fastalign and by the published rebuild: the rows and the
    checks by case."""
    rows: list[dict[str, Any]] = []
    checks: dict[str, Any] = {}
    for fraction in fractions:
        with tempfile.TemporaryDirectory(prefix="fastalign-bench-") as root:
            t0 = time.perf_counter()
            n_train = _make_subject(root, fraction, test_images)
            print(
                f"synthetic subject with {n_train} training images made in {time.perf_counter() - t0:.0f} s"
            )
            raw_dir = os.path.join(root, "raw_data")
            trials = SESSIONS * (n_train // 2 * TRAIN_REPS + test_images * TEST_REPS)
            got, seconds, mem = _timed_once(lambda raw_dir=raw_dir: preprocess_things_eeg2(raw_dir, 1))
            pub_out = os.path.join(root, "published")
            (want_test, want_train, ch_names, _), pub_seconds, pub_mem = _timed_once(
                lambda raw_dir=raw_dir, pub_out=pub_out: published_preprocess(raw_dir, 1, pub_out)
            )
        size = f"{n_train} train imgs x 4 reps, {test_images} test x 80; {trials} raw trials, 63 ch @ 1000 Hz"
        case = f"{CASE}, {n_train} training images"
        result = check_equal(
            {"test": got.test.data, "training": got.training.data},
            {"test": want_test, "training": want_train},
            (got.test.ch_names, ch_names),
        )
        checks[case] = result
        verdict = {"rel_err": max(result["rel_err"].values()), "equal": result["equal"]}
        rows.append(
            _row(CASE, FAST, size, seconds, "measured, 1 run", peak_mem_mb=mem / 2**20,
                 speedup=pub_seconds / seconds, **verdict)
        )  # fmt: skip
        rows.append(_row(CASE, PUBLISHED, size, pub_seconds, "measured, 1 run", peak_mem_mb=pub_mem / 2**20))
        print(rows[-2], rows[-1], sep="\n", flush=True)
        del got, want_test, want_train
    return rows, checks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fractions", type=harness.fraction, nargs="+", default=[0.125, 0.25],
                   help="fractions of the 16,540 training images for the preprocessing runs")  # fmt: skip
    p.add_argument("--reps", type=positive_int, default=3, help="timed repetitions of fastalign's MVNN")
    full_help = "only preprocess one full published-size subject, both ways (hours, 5+ GB): results/data_full"
    p.add_argument("--full", action="store_true", help=full_help)
    p.add_argument("--no-save", action="store_true")
    quick_help = "smoke run: 4 test images, 20 training ones (10 a session for MVNN), no result file"
    p.add_argument("--quick", action="store_true", help=quick_help)
    args = p.parse_args(argv)
    if args.quick:  # every case and check on tiny sizes
        rows, checks = bench_mvnn(1, QUICK_TEST_IMAGES, QUICK_PER_SESSION)
        more = bench_preprocess([QUICK_FRACTION], QUICK_TEST_IMAGES)
    elif args.full:
        rows, checks = [], {}
        more = bench_preprocess([1.0])
    else:
        rows, checks = bench_mvnn(args.reps)
        more = bench_preprocess(args.fractions)
    rows, checks = rows + more[0], checks | more[1]
    differ = [k for k, v in checks.items() if not v["equal"]]
    for k in differ:
        print(f"RESULTS DIFFER from the published pipeline beyond RTOL: {k}: {checks[k]}", file=sys.stderr)
    if differ:
        return 1
    if args.quick:
        return 0
    note = (
        "CPU only, float64, shared 2-core machine (other engineers' jobs may run at the same time). Every "
        "time is measured: fastalign's MVNN as the median of its runs, each preprocessing and each "
        "published run once. The published pipeline is gifale95/eeg_encoding rebuilt step by step "
        "(fastalign.data.reference: its MNE calls, sklearn _cov loops, fractional_matrix_power whitening "
        "and numpy merging). Preprocessing times include reading the raw .npy files, MNE epoching and "
        "resampling, MVNN and writing both output files (both implementations), not making the synthetic "
        "raw data; peak memory is the process's peak RSS above its RSS before the call. speedup: the "
        "published time over fastalign's, on fastalign's row."
    )
    meta = {
        "columns": [
            ["case", "case"],
            ["impl", "implementation"],
            ["shape", "size"],
            ["seconds", "time (s)"],
            ["p20_s", "p20 (s)"],
            ["p80_s", "p80 (s)"],
            ["peak_mem_mb", "peak mem (MB)"],
            ["speedup", "x published"],
            ["rel_err", "rel. diff vs published"],
            ["equal", "equal"],
            ["how", "how"],
        ],
        "note": note,
        "fractions": [1.0] if args.full else args.fractions,
        "check_tolerance": "fastalign's outputs (whitened test and training partitions; merged test and "
        "training arrays) against the published rebuild's in the same run: max |fastalign - published| "
        f"over max |published| of each output within {RTOL}, and the same channel names",
        "checks": checks,
    }
    if not args.no_save:
        print(harness.save("data_full" if args.full else "data", "cpu", rows, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
