"""MVNN and the full THINGS-EEG2 preprocessing, at (or extrapolated to) the published sizes, on the CPU.

Published sizes: 63 raw channels at 1000 Hz, 4 sessions; per session 8,270 training images x 2
repetitions and 200 test images x 20 repetitions (16,540 training conditions x 4 repetitions and
200 x 80 after merging), 17 occipital/parietal channels x 100 samples per epoch.

- ``mvnn``: fastalign's vectorised MVNN of one session at the published size (measured in full), and the
  published per-condition loop (gifale95/eeg_encoding: sklearn ``_cov(shrinkage="auto")`` per condition
  and time point / repetition), timed on a slice of conditions and extrapolated linearly to the session
  (its cost is a sum of identical per-condition terms); the extrapolation is labelled as such.
- ``preprocess``: ``preprocess_things_eeg2`` on a synthetic subject (raw files from
  ``make_synthetic_things``: 63 channels, 1000 Hz, 4 sessions, 200 test images x 20 repetitions per
  session as published) with the training set reduced to a fraction of the 16,540 images, at two
  fractions. The time of the larger run is scaled by the ratio of raw trials (every stage is linear in
  them) and peak memory by a linear fit in the number of training images, to the full size. The full
  size (about 1.7 GB of raw float64 per session file, a 2.3 GB epochs array per session; making its
  synthetic raw data alone takes ~3 min here) does not fit the few-minute budget of a default run on a
  shared 2-core machine; ``--full`` measures it in a run of its own (results/data_full-*.json).

    flock /tmp/fastalign-bench.lock python benchmarks/bench_data.py
    python benchmarks/bench_data.py --fractions 0.125 0.25 --loop-conditions 30   # the defaults
    flock /tmp/fastalign-bench.lock python benchmarks/bench_data.py --full         # measured full size
    python benchmarks/bench_data.py --quick      # a smoke run: 10 test images, 40 training ones, no file
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

from fastalign.data import make_synthetic_things, mvnn, preprocess_things_eeg2
from fastalign.data.reference import published_noise_covariance

TRAIN_IMAGES, TEST_IMAGES, TRAIN_REPS, TEST_REPS, SESSIONS = 16540, 200, 2, 20, 4
N_CH, N_T = 17, 100
CASE, IMPL = "preprocess_things_eeg2, 1 subject", "fastalign (MNE + vectorised MVNN)"
# --quick: test images, training images per session, conditions timed in the published loop, and the
# fraction of the 16,540 training images preprocessed (40 images)
QUICK_TEST_IMAGES, QUICK_PER_SESSION, QUICK_LOOP_CONDITIONS, QUICK_FRACTION = 10, 20, 5, 40 / TRAIN_IMAGES


def _row(case: str, impl: str, shape: str, seconds: float, how: str, **extra: Any) -> dict[str, Any]:
    row = {"case": case, "impl": impl, "shape": shape, "seconds": seconds, "how": how}
    row.update({"p20_s": None, "p80_s": None, "peak_mem_mb": None, "speedup": None} | extra)
    return row


def _session(rng: np.random.Generator, n_cond: int, n_rep: int) -> np.ndarray:
    mix = np.eye(N_CH) + 0.3 * rng.normal(size=(N_CH, N_CH))
    return np.einsum("ij,crjt->crit", mix, rng.normal(size=(n_cond, n_rep, N_CH, N_T)))


def bench_mvnn(
    loop_conditions: int, reps: int, test_images: int = TEST_IMAGES, per_session: int = TRAIN_IMAGES // 2
) -> list[dict[str, Any]]:
    """MVNN of one session of ``test_images`` and ``per_session`` training images (published: each
    training image is in 2 of the 4 sessions)."""
    rng = np.random.default_rng(0)
    test, train = _session(rng, test_images, TEST_REPS), _session(rng, per_session, TRAIN_REPS)
    shape = f"test {test.shape} + train {train.shape}"
    rows = []
    for dim in ("time", "epochs"):
        gc.collect()
        t = harness.time_fn(lambda dim=dim: mvnn([test, train], dim), "cpu", warmup=1, rep=reps)
        mem = harness.peak_memory_bytes(lambda dim=dim: mvnn([test, train], dim), "cpu")
        fast = t["median_ms"] / 1e3
        case = f"mvnn dim={dim}, 1 session"
        rows.append(
            _row(case, "fastalign (vectorised)", shape, fast, f"measured, median of {reps}",
                 p20_s=t["p20_ms"] / 1e3, p80_s=t["p80_ms"] / 1e3, peak_mem_mb=mem / 2**20)
        )  # fmt: skip
        # The published loop on a slice of conditions, scaled by the number of conditions.
        k_test = min(test_images, max(10, loop_conditions * test_images // per_session))
        t0 = time.perf_counter()
        published_noise_covariance([train[:loop_conditions]], dim)
        t_train = (time.perf_counter() - t0) / loop_conditions
        t0 = time.perf_counter()
        published_noise_covariance([test[:k_test]], dim)
        t_test = (time.perf_counter() - t0) / k_test
        loop = t_train * per_session + t_test * test_images
        how = f"EXTRAPOLATED from {loop_conditions} train + {k_test} test conditions"
        rows.append(_row(case, "published sklearn loop", shape, loop, how, speedup=loop / fast))
        print(rows[-2], rows[-1], sep="\n", flush=True)
    return rows


def _make_subject(root: str, fraction: float, test_images: int) -> int:
    n_concepts = max(1, round(TRAIN_IMAGES * fraction / 10))
    make_synthetic_things(
        root, n_train_concepts=n_concepts, images_per_concept=10, n_test=test_images, n_sessions=SESSIONS,
        training_repetitions=TRAIN_REPS, test_repetitions=TEST_REPS, n_channels=N_CH, n_extra_channels=46,
        n_times=N_T, raw_sfreq=1000.0, image_size=8, n_voxels=8, fmri_repetitions=1, preprocess=False,
    )  # fmt: skip
    return n_concepts * 10


def bench_preprocess(fractions: list[float], test_images: int = TEST_IMAGES) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    points: list[tuple[int, int, float, int]] = []
    for fraction in fractions:
        with tempfile.TemporaryDirectory(prefix="fastalign-bench-") as root:
            t0 = time.perf_counter()
            n_train = _make_subject(root, fraction, test_images)
            print(
                f"synthetic subject with {n_train} training images made in {time.perf_counter() - t0:.0f} s"
            )
            gc.collect()
            trials = SESSIONS * (n_train // 2 * TRAIN_REPS + test_images * TEST_REPS)
            t0 = time.perf_counter()
            mem = harness.peak_memory_bytes(
                lambda root=root: preprocess_things_eeg2(os.path.join(root, "raw_data"), 1), "cpu"
            )
            seconds = time.perf_counter() - t0
        points.append((n_train, trials, seconds, mem))
        size = f"{n_train} train imgs x 4 reps, {test_images} test x 80; {trials} raw trials, 63 ch @ 1000 Hz"
        rows.append(_row(CASE, IMPL, size, seconds, "measured, 1 run", peak_mem_mb=mem / 2**20))
        print(rows[-1], flush=True)
    if points and max(points)[0] < TRAIN_IMAGES:
        # Time: every stage (reading, MNE epoching and resampling, MVNN, merging, writing) is linear in
        # the number of raw trials, so the largest run is scaled by the trial ratio. A two-point fit
        # would need two clean timings; on a shared CPU one run can be slowed by others' jobs.
        full_trials = SESSIONS * (TRAIN_IMAGES // 2 * TRAIN_REPS + TEST_IMAGES * TEST_REPS)
        n_train, trials, seconds, _ = max(points)
        size = f"{TRAIN_IMAGES} train imgs x 4 reps, 200 test x 80; {full_trials} raw trials (published)"
        how = f"EXTRAPOLATED: the {n_train}-image run x {full_trials}/{trials} raw trials"
        mem_mb = None
        if len(points) >= 2:  # peak memory grows with the training part of one session: linear fit
            fit = np.polyfit([p[0] for p in points], [p[3] for p in points], 1)
            mem_mb = float(np.polyval(fit, TRAIN_IMAGES)) / 2**20
            how += f"; peak mem: linear fit over the {len(points)} runs"
        rows.append(_row(CASE, IMPL, size, seconds * full_trials / trials, how, peak_mem_mb=mem_mb))
        print(rows[-1], flush=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fractions", type=float, nargs="+", default=[0.125, 0.25],
                   help="fractions of the 16,540 training images for the preprocessing runs")  # fmt: skip
    p.add_argument("--loop-conditions", type=int, default=30, help="conditions timed in the published loop")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions of the vectorised MVNN")
    full_help = "only preprocess one full published-size subject (~5 min, ~5 GB): results/data_full"
    p.add_argument("--full", action="store_true", help=full_help)
    p.add_argument("--no-save", action="store_true")
    quick_help = "smoke run: 10 test images, 40 training ones (20 a session for MVNN), no result file"
    p.add_argument("--quick", action="store_true", help=quick_help)
    args = p.parse_args()
    if args.quick:  # every case, the extrapolation too, on tiny sizes
        bench_mvnn(QUICK_LOOP_CONDITIONS, 1, QUICK_TEST_IMAGES, QUICK_PER_SESSION)
        bench_preprocess([QUICK_FRACTION], QUICK_TEST_IMAGES)
        return 0
    if args.full:
        rows = bench_preprocess([1.0])
        note = (
            "CPU only, float64, shared 2-core machine (other engineers' jobs may run at the same time). "
            "One run of a full published-size synthetic subject, measured (not extrapolated). The time "
            "includes reading the raw .npy files, MNE epoching and resampling, MVNN and writing both "
            "output files, not making the synthetic raw data; peak memory is the process's peak RSS "
            "above its RSS before the call."
        )
    else:
        rows = bench_mvnn(args.loop_conditions, args.reps) + bench_preprocess(args.fractions)
        note = (
            "CPU only, float64, shared 2-core machine (other engineers' jobs may run at the same time). "
            "The published loop and the full-size preprocessing are extrapolated, not measured: see the "
            "'how' column (--full measures the full size; it takes longer than a default run may). "
            "Preprocessing times include reading the raw .npy files, MNE epoching and resampling, MVNN "
            "and writing both output files; peak memory is the process's peak RSS above its RSS before "
            "the call."
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
            ["speedup", "speedup"],
            ["how", "how"],
        ],
        "note": note,
        "fractions": [1.0] if args.full else args.fractions,
        "loop_conditions": None if args.full else args.loop_conditions,
    }
    if not args.no_save:
        print(harness.save("data_full" if args.full else "data", "cpu", rows, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
