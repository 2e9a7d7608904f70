"""InfoNCE / CLIP loss, forward + backward: naive PyTorch vs fastalign's torch and triton backends.

naive is what open_clip's ClipLoss does: full logits through two matmuls and two cross-entropies.
FLOPs are counted as 8 * N^2 * D for forward + backward for every provider (fastalign recomputes the
logits in backward; naive keeps them), so TFLOP/s compares time for the same useful work.

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

GPU_SIZES = [(n, d) for n in (4096, 16384, 32768, 65536, 131072, 262144) for d in (512, 768, 1024)]
CPU_SIZES = [(1024, 512), (4096, 512), (8192, 512), (16384, 512)]
QUICK_SIZES = [(128, 64), (257, 33)]  # 257, 33: not multiples of any block size
TEMPERATURE = 0.07


def naive_clip_loss(x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """open_clip's ClipLoss for one process: logits both ways and mean of two cross-entropies."""
    logits_x = scale * x @ y.T
    logits_y = scale * y @ x.T
    labels = torch.arange(x.shape[0], device=x.device)
    return (F.cross_entropy(logits_x, labels) + F.cross_entropy(logits_y, labels)) / 2


def _step(provider: str, x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        x.grad = y.grad = None
        if provider == "naive":
            loss = naive_clip_loss(x, y, scale)
        else:
            loss = fastalign.infonce_loss(x, y, 1.0 / scale, backend=provider)
        loss.backward()

    return run


def _providers(device: str) -> list[str]:
    return ["naive", "torch", "triton"] if device.startswith("cuda") else ["naive", "torch"]


def bench(
    device: str, sizes: list[tuple[int, int]], dtypes: list[torch.dtype], reps: int
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for dtype in dtypes:
        peak = harness.peak_tflops(device, dtype)[0]
        for n, d in sizes:
            base: dict[str, float] = {}
            for provider in _providers(device):
                gc.collect()
                if device.startswith("cuda"):
                    torch.cuda.empty_cache()
                g = torch.Generator(device=device).manual_seed(0)
                x = (
                    F.normalize(torch.randn(n, d, device=device, generator=g), dim=1)
                    .to(dtype)
                    .requires_grad_()
                )
                y = (
                    F.normalize(torch.randn(n, d, device=device, generator=g), dim=1)
                    .to(dtype)
                    .requires_grad_()
                )
                scale = torch.tensor(1.0 / TEMPERATURE, device=device)
                fn = _step(provider, x, y, scale)
                row: dict[str, Any] = {"provider": provider, "N": n, "D": d, "dtype": str(dtype)[6:]}
                try:
                    row["peak_mem_MiB"] = harness.peak_memory_bytes(fn, device) / 2**20
                    row.update(harness.time_fn(fn, device, warmup=1, rep=reps))
                except torch.OutOfMemoryError:
                    row["status"] = "OOM"
                    rows.append(row)
                    print(row, flush=True)
                    continue
                row["status"] = "ok"
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
                print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
                del x, y, fn
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", nargs="*", help="NxD pairs, e.g. 4096x512")
    p.add_argument("--dtypes", nargs="*", default=None, help="float32 bfloat16 ...")
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="tiny sizes, no result file")
    args = p.parse_args()
    gpu = args.device.startswith("cuda")
    sizes = (
        [tuple(map(int, s.split("x"))) for s in args.sizes]
        if args.sizes
        else (QUICK_SIZES if args.quick else GPU_SIZES if gpu else CPU_SIZES)
    )
    names = args.dtypes or (["float32", "bfloat16"] if gpu else ["float32"])
    dtypes = [getattr(torch, n) for n in names]
    reps = args.reps or (2 if args.quick else 20 if gpu else 5)
    rows = bench(args.device, sizes, dtypes, reps)  # type: ignore[arg-type]
    if args.quick:
        return
    peak = {str(dt)[6:]: harness.peak_tflops(args.device, dt) for dt in dtypes}
    meta = {
        "what": "InfoNCE/CLIP loss forward+backward, symmetric, temperature 0.07, L2-normalised inputs",
        "flops": "8*N^2*D per forward+backward",
        "device_peak_tflops": {k: {"tflops": v[0], "source": v[1]} for k, v in peak.items()},
        "memory": "peak bytes allocated during one forward+backward beyond the inputs "
        "(CUDA: max_memory_allocated; CPU: peak RSS growth via VmHWM)",
        "columns": [["provider", "provider"], ["N", "N"], ["D", "D"], ["dtype", "dtype"],
                    ["median_ms", "median ms"], ["p20_ms", "p20"], ["p80_ms", "p80"],
                    ["peak_mem_MiB", "peak MiB"], ["tflops", "TFLOP/s"], ["pct_peak", "% peak"],
                    ["speedup_vs_naive", "x naive"], ["mem_vs_naive_pct", "mem % naive"],
                    ["status", "status"]],
    }  # fmt: skip
    print(harness.save("infonce", args.device, rows, meta))


if __name__ == "__main__":
    main()
