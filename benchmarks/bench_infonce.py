"""InfoNCE / CLIP loss, forward + backward: naive PyTorch vs fastalign's torch and triton backends.

naive is what open_clip's ClipLoss does: full logits through two matmuls and two cross-entropies.
FLOPs are counted as 8 * N^2 * D for forward + backward for every provider (fastalign recomputes the
logits in backward; naive keeps them), so TFLOP/s compares time for the same useful work.

Equal results in the same run: for each size and dtype, the loss and both gradients (dx, dy) of every
provider's last timed call are compared with a float64 result on float64 copies of the same inputs:
naive where its N x N float64 matrices take at most 4 GiB (N <= 11,585), else fastalign's torch backend
in float64 (held to the reference within 1e-10 by the tests). Each row records max |got - float64| per
output (``max_abs_*_diff``) and ``equal``; ``meta.checks`` also the errors relative to the largest
float64 value (|loss| for the loss) and their limits: naive, the baseline, within 2e-5 in float32 and
2^-5 (eight unit roundoffs) in bfloat16, every other provider within twice naive's error plus 2e-5
(float32) or 1e-3 (bfloat16) (harness.CHECK_BOUND, harness.CHECK_FLOOR). A provider outside its limit
makes the script exit with status 1 without writing a result file.

    python benchmarks/bench_infonce.py                 # sizes for the device present
    python benchmarks/bench_infonce.py --device cpu --sizes 4096x512 16384x512
    python benchmarks/bench_infonce.py --quick         # a smoke run with tiny sizes, no result file
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import harness

import fastalign
from fastalign.cli.common import positive_int

GPU_SIZES = [(n, d) for n in (4096, 16384, 32768, 65536, 131072, 262144) for d in (512, 768, 1024)]
CPU_SIZES = [(1024, 512), (4096, 512), (8192, 512), (16384, 512)]
QUICK_SIZES = [(128, 64), (257, 33)]  # 257, 33: not multiples of any block size
TEMPERATURE = 0.07
#: The float64 check runs naive up to this N (its four N x N float64 matrices: 4 GiB), the streaming
#: torch backend beyond.
REFERENCE_NAIVE_MAX_N = 11585
OUTPUTS = ("loss", "dx", "dy")


def naive_clip_loss(x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """open_clip's ClipLoss for one process: logits both ways and mean of two cross-entropies."""
    logits_x = scale * x @ y.T
    logits_y = scale * y @ x.T
    labels = torch.arange(x.shape[0], device=x.device)
    return (F.cross_entropy(logits_x, labels) + F.cross_entropy(logits_y, labels)) / 2


def _step(
    provider: str, x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor, last: dict[str, torch.Tensor]
) -> Callable[[], None]:
    """One forward + backward; ``last`` keeps the loss of the latest call (x.grad and y.grad its grads)."""

    def run() -> None:
        x.grad = y.grad = None
        if provider == "naive":
            loss = naive_clip_loss(x, y, scale)
        else:
            loss = fastalign.infonce_loss(x, y, 1.0 / scale, backend=provider)
        loss.backward()
        last["loss"] = loss.detach()

    return run


def float64_reference(
    x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor
) -> tuple[str, dict[str, torch.Tensor]]:
    """(what computed it, {loss, dx, dy} on the CPU) for float64 copies of x and y (see the module doc)."""
    x64, y64 = (t.detach().double().requires_grad_() for t in (x, y))
    scale64 = scale.double()
    if x.shape[0] <= REFERENCE_NAIVE_MAX_N:
        which, loss = "naive float64", naive_clip_loss(x64, y64, scale64)
    else:
        which, loss = (
            "fastalign torch float64",
            fastalign.infonce_loss(x64, y64, 1.0 / scale64, backend="torch"),
        )
    loss.backward()
    assert x64.grad is not None and y64.grad is not None
    return which, {"loss": loss.detach().cpu(), "dx": x64.grad.cpu(), "dy": y64.grad.cpu()}


def _providers(device: str) -> list[str]:
    return ["naive", "torch", "triton"] if device.startswith("cuda") else ["naive", "torch"]


def _inputs(n: int, d: int, dtype: torch.dtype, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The same unit-norm x and y (seed 0) for every provider, rounded to ``dtype``, requiring grad."""
    g = torch.Generator(device=device).manual_seed(0)
    x, y = (F.normalize(torch.randn(n, d, device=device, generator=g), dim=1) for _ in range(2))
    return x.to(dtype).requires_grad_(), y.to(dtype).requires_grad_()


def check(
    last: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    ref: dict[str, torch.Tensor],
    dtype: str,
    baseline: dict[str, float] | None,
) -> dict[str, Any]:
    """A provider's last loss and gradients against the float64 ``ref`` (see the module doc)."""
    got = {"loss": last["loss"], "dx": x.grad, "dy": y.grad}
    if any(v is None for v in got.values()):
        raise RuntimeError(f"no result to check: {[k for k, v in got.items() if v is None]} missing")
    diffs = harness.max_abs_diffs(got, ref)  # type: ignore[arg-type]
    rel = {k: diffs[k] / max(float(ref[k].abs().max()), 1e-300) for k in OUTPUTS}
    return {"max_abs_diff": diffs, **harness.check_errors(rel, dtype, baseline)}


def bench(
    device: str, sizes: list[tuple[int, int]], dtypes: list[torch.dtype], reps: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The rows, and the equality checks by row (provider, dtype, N, D)."""
    rows: list[dict[str, Any]] = []
    checks: dict[str, Any] = {}
    for dtype in dtypes:
        peak = harness.peak_tflops(device, dtype)[0]
        dtype_name = str(dtype)[6:]
        for n, d in sizes:
            base: dict[str, float] = {}
            scale = torch.tensor(1.0 / TEMPERATURE, device=device)
            which, ref = float64_reference(*_inputs(n, d, dtype, device), scale)
            baseline: dict[str, float] | None = None
            for provider in _providers(device):
                gc.collect()
                if device.startswith("cuda"):
                    torch.cuda.empty_cache()
                x, y = _inputs(n, d, dtype, device)
                last: dict[str, torch.Tensor] = {}
                fn = _step(provider, x, y, scale, last)
                row: dict[str, Any] = {"provider": provider, "N": n, "D": d, "dtype": dtype_name}
                try:
                    row["peak_mem_MiB"] = harness.peak_memory_bytes(fn, device) / 2**20
                    row.update(harness.time_fn(fn, device, warmup=1, rep=reps))
                except torch.OutOfMemoryError:
                    row["status"] = "OOM"
                    rows.append(row)
                    print(row, flush=True)
                    continue
                row["status"] = "ok"
                result = check(last, x, y, ref, dtype_name, None if provider == "naive" else baseline)
                if provider == "naive":
                    baseline = result["rel_err"]
                checks[f"{provider} {dtype_name} N={n} D={d}"] = {"reference": which, **result}
                row.update({f"max_abs_{k}_diff": v for k, v in result["max_abs_diff"].items()})
                row["equal"] = result["equal"]
                row["tflops"] = 8 * n * n * d / (row["median_ms"] * 1e-3) / 1e12
                row["pct_peak"] = 100 * row["tflops"] / peak
                if provider == "naive":
                    base = {"ms": row["median_ms"], "mem": row["peak_mem_MiB"]}
                elif base:
                    row["speedup_vs_naive"] = base["ms"] / row["median_ms"]
                    # tiny sizes can fit in memory the process already holds: no growth to compare with
                    if base["mem"] > 0:
                        row["mem_vs_naive_pct"] = 100 * row["peak_mem_MiB"] / base["mem"]
                rows.append(row)
                print({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
                del x, y, fn, last
    return rows, checks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", nargs="*", type=harness.size_pair, help="NxD pairs, e.g. 4096x512")
    p.add_argument("--dtypes", nargs="*", default=None, help="float32 bfloat16 ...")
    p.add_argument("--reps", type=positive_int, default=None)
    p.add_argument("--quick", action="store_true", help="tiny sizes, no result file")
    args = p.parse_args(argv)
    gpu = args.device.startswith("cuda")
    sizes = args.sizes if args.sizes else (QUICK_SIZES if args.quick else GPU_SIZES if gpu else CPU_SIZES)
    names = args.dtypes or (["float32", "bfloat16"] if gpu else ["float32"])
    for name in names:
        if name not in harness.CHECK_BOUND:
            p.error(f"--dtypes: {name!r} is not one of {', '.join(sorted(harness.CHECK_BOUND))}")
    dtypes = [getattr(torch, n) for n in names]
    reps = args.reps or (2 if args.quick else 20 if gpu else 5)
    rows, checks = bench(args.device, sizes, dtypes, reps)  # type: ignore[arg-type]
    differ = [k for k, v in checks.items() if not v["equal"]]
    for k in differ:
        print(f"RESULTS DIFFER from float64 beyond the limit: {k}: {checks[k]}", file=sys.stderr)
    if differ:
        return 1
    if args.quick:
        return 0
    peak = {str(dt)[6:]: harness.peak_tflops(args.device, dt) for dt in dtypes}
    meta = {
        "what": "InfoNCE/CLIP loss forward+backward, symmetric, temperature 0.07, L2-normalised inputs",
        "flops": "8*N^2*D per forward+backward",
        "device_peak_tflops": {k: {"tflops": v[0], "source": v[1]} for k, v in peak.items()},
        "memory": "peak bytes allocated during one forward+backward beyond the inputs "
        "(CUDA: max_memory_allocated; CPU: peak RSS growth via VmHWM)",
        "check_tolerance": "loss, dx and dy of each provider's last timed call against float64 (naive up "
        f"to N = {REFERENCE_NAIVE_MAX_N}, else the torch backend in float64); errors relative to the largest "
        "float64 value; naive within CHECK_BOUND, every other provider within 2 x naive's error + "
        f"CHECK_FLOOR; CHECK_BOUND {harness.CHECK_BOUND}, CHECK_FLOOR {harness.CHECK_FLOOR}",
        "checks": checks,
        "columns": [["provider", "provider"], ["N", "N"], ["D", "D"], ["dtype", "dtype"],
                    ["median_ms", "median ms"], ["p20_ms", "p20"], ["p80_ms", "p80"],
                    ["peak_mem_MiB", "peak MiB"], ["tflops", "TFLOP/s"], ["pct_peak", "% peak"],
                    ["speedup_vs_naive", "x naive"], ["mem_vs_naive_pct", "mem % naive"],
                    ["max_abs_loss_diff", "max Δ loss"], ["max_abs_dx_diff", "max Δ dx"],
                    ["max_abs_dy_diff", "max Δ dy"], ["equal", "equal"], ["status", "status"]],
    }  # fmt: skip
    print(harness.save("infonce", args.device, rows, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
