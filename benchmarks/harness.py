"""Shared benchmark machinery: timing, peak memory, device peaks, environment and atomic JSON results.

Every bench_*.py builds rows with :func:`measure` and saves them with :func:`save`; ``render.py`` turns
the JSON files in results/ into docs/benchmarks.md. Numbers are medians of repeated runs after warm-up;
CUDA work is timed with events, CPU work with perf_counter.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import re
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _fix_glibc_mmap_threshold() -> None:
    """Serve every allocation over 128 KiB with its own mmap, returned to the OS when freed.

    glibc raises its mmap threshold (up to 32 MiB) each time a mapped chunk is freed, after which such
    allocations come from the heap and stay resident when freed; a later call then reuses them and its
    peak resident set under-counts what it allocated. A fixed threshold keeps the CPU peak-memory
    numbers comparable across providers and call orders.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_mmap_threshold = -3
    libc.mallopt(m_mmap_threshold, 128 * 1024)


_fix_glibc_mmap_threshold()

# Dense (no sparsity) datasheet peaks in TFLOP/s, keyed by a substring of the device name.
_GPU_PEAKS: dict[str, dict[str, float]] = {
    "H100": {"bfloat16": 989.4, "float16": 989.4, "float32": 494.7, "float32-ieee": 66.9},
    "H200": {"bfloat16": 989.4, "float16": 989.4, "float32": 494.7, "float32-ieee": 66.9},
    "A100": {"bfloat16": 312.0, "float16": 312.0, "float32": 156.0, "float32-ieee": 19.5},
}
_cpu_peak_cache: dict[str, float] = {}
# Datasheet HBM bandwidth in GB/s, most specific name first (memory-bound ops report % of this).
_GPU_BANDWIDTH: dict[str, float] = {
    "H100 PCIe": 2000.0,
    "H100 NVL": 3900.0,
    "H100": 3350.0,
    "H200": 4800.0,
    "A100": 2039.0,
}


def device_name(device: str) -> str:
    """A human name for ``device``: the GPU's name, or the CPU model and thread count."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    model = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model} ({torch.get_num_threads()} threads)"


def cpu_features() -> tuple[str, bool]:
    """(the vector capability torch dispatches on, e.g. "AVX512" or "AVX2"; whether the CPU computes bf16
    natively, where align's and decode's amp="auto" train in bf16)."""
    return torch.backends.cpu.get_cpu_capability(), bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def device_slug(device: str) -> str:
    """A file-name-safe short name of the device, used in result file names: a GPU's model, or a CPU's
    thread count, vector capability and native bf16 (``cpu2-avx512-bf16``, ``cpu2-avx2``), so that runs
    on CPUs that compute differently keep their own files."""
    if device.startswith("cuda"):
        name = device_name(device)
        for key in _GPU_PEAKS:
            if key in name:
                return key.lower()
        return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    capability, bf16 = cpu_features()
    slug = f"cpu{torch.get_num_threads()}-{re.sub(r'[^a-z0-9]+', '', capability.lower()) or 'unknown'}"
    return slug + ("-bf16" if bf16 else "")


def peak_tflops(device: str, dtype: torch.dtype) -> tuple[float, str]:
    """(peak dense TFLOP/s, where the number comes from) for matrix work in ``dtype`` on ``device``.

    GPUs use datasheet dense peaks (fp32 as TF32 tensor-core peak, since torch and Triton use TF32 for
    fp32 matmuls when allowed; otherwise the IEEE fp32 peak). CPUs have no datasheet here, so the peak is
    measured: the best of several 2048^3 torch.mm products in that dtype on all threads.
    """
    key = str(dtype).replace("torch.", "")
    if device.startswith("cuda"):
        name = device_name(device)
        for gpu, peaks in _GPU_PEAKS.items():
            if gpu in name:
                tf32 = (
                    torch.backends.cuda.matmul.allow_tf32 or torch.get_float32_matmul_precision() != "highest"
                )
                k = key if key != "float32" or tf32 else "float32-ieee"
                return peaks[k], f"{gpu} datasheet dense {k}"
        return float("nan"), f"no datasheet peak known for {name}"
    if key not in _cpu_peak_cache:
        n = 2048
        a = torch.randn(n, n, dtype=dtype)
        b = torch.randn(n, n, dtype=dtype)
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t0)
        _cpu_peak_cache[key] = 2 * n**3 / best / 1e12
    return _cpu_peak_cache[key], f"measured torch.mm {key} 2048^3 on this CPU"


def peak_bandwidth_gbs(device: str) -> tuple[float, str]:
    """(peak memory bandwidth in GB/s, where the number comes from); NaN where no datasheet is known."""
    if device.startswith("cuda"):
        name = device_name(device)
        for gpu, gbs in _GPU_BANDWIDTH.items():
            if gpu in name:
                return gbs, f"{gpu} datasheet HBM bandwidth"
        return float("nan"), f"no datasheet bandwidth known for {name}"
    return float("nan"), "no datasheet bandwidth for CPUs"


# The scripts' number flags take the fastalign command's types (fastalign.cli.common: positive_int,
# nonnegative_int, positive_real, seed) and these two, so that a malformed or out-of-range value is a usage
# error (argparse's message naming the flag, exit status 2) before anything runs, never a traceback.
def size_pair(text: str) -> tuple[int, int]:
    """An argparse type for ``--sizes``: two positive integers joined by ``x`` (``4096x512``)."""
    first, sep, second = text.partition("x")
    try:
        pair = (int(first), int(second)) if sep else (0, 0)
    except ValueError:
        pair = (0, 0)
    if min(pair) < 1:
        raise argparse.ArgumentTypeError(
            f"expected two positive integers joined by x (e.g. 16x340), got {text!r}"
        )
    return pair


def fraction(text: str) -> float:
    """An argparse type: a share of a whole, a number in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= 1:  # NaN fails too
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], Any], device: str, *, warmup: int = 3, rep: int = 10) -> dict[str, float]:
    """Median, spread (20th to 80th percentile), min and max of ``fn``'s run time in ms."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(rep):
        if device.startswith("cuda"):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    p20, p80 = spread(times)
    return {"median_ms": statistics.median(times), "p20_ms": p20, "p80_ms": p80, "min_ms": times[0],
            "max_ms": times[-1], "reps": len(times)}  # fmt: skip


def spread(values: list[float]) -> tuple[float, float]:
    """The 20th and 80th percentiles of measured values, interpolated between them (``statistics``'
    "inclusive" method): they stay within the smallest and largest measurement. The default "exclusive"
    method extrapolates beyond them for a few values (3 runs gave a p20 below the fastest run)."""
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=5, method="inclusive")
    return q[0], q[3]


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory_bytes(fn: Callable[[], Any], device: str) -> int:
    """Peak memory ``fn`` adds on top of what was allocated before it ran.

    CUDA: torch.cuda.max_memory_allocated. CPU: the process's peak resident set (VmHWM, reset through
    /proc/self/clear_refs) minus its resident set before the call; allocations over 128 KiB are mmap'd
    and returned to the OS when freed (see _fix_glibc_mmap_threshold), so this tracks the tensors
    ``fn`` keeps alive at its peak.
    """
    _sync(device)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - base)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _proc_status_kib("VmRSS")
    fn()
    return int((_proc_status_kib("VmHWM") - base) * 1024)


#: Equality checks against float64 (DESIGN, Correctness). Each output's error is its largest absolute
#: difference from the float64 result over that output's scale. The baseline (PyTorch as a user runs it,
#: in the benchmarked dtype) must be within CHECK_BOUND: float32 DESIGN's ~1e-5 with the test suite's
#: factor 2, half precision eight unit roundoffs (its results are rounded more than once). Every other
#: provider must be within twice the baseline's error in the same run plus CHECK_FLOOR (DESIGN's rule
#: for half precision, with the test suite's floors), or within CHECK_BOUND where the baseline has no
#: result.
CHECK_BOUND = {"float64": 1e-10, "float32": 2e-5, "bfloat16": 2.0**-5, "float16": 2.0**-8}
CHECK_FLOOR = {"float64": 1e-10, "float32": 2e-5, "bfloat16": 1e-3, "float16": 1e-3}


def max_abs_diffs(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> dict[str, float]:
    """max |got - want| of each output, computed in float64 on want's device (NaN where either has one)."""
    out = {}
    for k, w in want.items():
        d = (got[k].detach().to(w.device, torch.float64) - w).abs()
        out[k] = float(d.max()) if d.numel() else 0.0  # a NaN anywhere makes the max NaN
    return out


def check_errors(
    errors: dict[str, float],
    dtype: str,
    baseline: dict[str, float] | None,
    bounds: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The limits of ``errors`` (relative, per output) and whether each is within its limit.

    ``baseline`` is the baseline's errors in the same run, None for the baseline itself or when it has
    none. ``bounds``: per-output limits that replace CHECK_BOUND[dtype] where there is no baseline, for an
    output whose error in ``dtype`` is known to be larger (the script says why). NaN never passes.
    """
    if dtype not in CHECK_BOUND:
        raise ValueError(f"dtype: no check tolerance for {dtype!r}; expected one of {sorted(CHECK_BOUND)}")
    bounds = bounds or {}
    limits = {
        k: bounds.get(k, CHECK_BOUND[dtype]) if baseline is None else 2 * baseline[k] + CHECK_FLOOR[dtype]
        for k in errors
    }
    return {"rel_err": errors, "limit": limits, "equal": all(errors[k] <= limits[k] for k in errors)}


def environment(device: str) -> dict[str, Any]:
    """Versions, device and commit recorded with every result file."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()  # fmt: skip
        # changes to the results and their rendered page are not changes to what is measured: a run that
        # follows another (nox -s benchmarks) would otherwise always record "-dirty"
        status = ["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                  ":(exclude)benchmarks/results", ":(exclude)docs/benchmarks.md"]  # fmt: skip
        dirty = bool(subprocess.run(status, capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", False
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "device": device_name(device),
        "device_slug": device_slug(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "python": platform.python_version(),
        "commit": commit + ("-dirty" if dirty else ""),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "threads": torch.get_num_threads(),
        # the CPU's vector capability as torch dispatches on it, and whether it computes bf16 natively
        # (align's and decode's amp="auto" train in bf16 there): the device name alone says neither
        **dict(zip(("cpu_capability", "cpu_bf16_native"), cpu_features(), strict=True)),
    }


def save(
    name: str,
    device: str,
    rows: list[dict[str, Any]],
    meta: dict[str, Any] | None = None,
    folder: str = RESULTS,
) -> str:
    """Writes {folder}/{name}-{device}.json (default benchmarks/results) atomically (temp file + rename)
    and returns its path."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{name}-{device_slug(device)}.json")
    doc = {"benchmark": name, "environment": environment(device), "meta": meta or {}, "rows": rows}
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
    return path
