"""Fused BatchNorm + residual add + ReLU (CORnet-S's training tails): forward + backward per call.

For the BatchNorm shapes of a CORnet-S training step at 224x224 (batch 64 and 256, fp32 and bf16,
channels_last): eager PyTorch (``F.batch_norm`` -> ``+ skip`` -> ``F.relu``, what the original module
runs, cuDNN's BatchNorm kernels), ``torch.compile`` of that composition (inductor), and fastalign's
Triton kernels (``batch_norm_act(backend="triton")``). The op is memory-bound, so each row reports the
bandwidth its time implies for the fused design's minimal traffic (forward: x twice, the skip once, y
once; backward: dy, x and y twice each, dx and the skip's gradient once) and that as % of the GPU's
datasheet HBM bandwidth: the roofline of what any implementation of this op could reach.

Needs CUDA (the Triton kernels are what it measures; on a CPU they only run through the interpreter,
which is a correctness tool). Run: ``python benchmarks/bench_norm_act.py``; ``--quick`` is a smoke run
(batch 2, one layer of each kind of tail, every implementation, no result file).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness

from fastalign.norm_act import batch_norm_act

NAME = "norm_act"
COLUMNS = [
    ["layer", "BatchNorm"],
    ["shape", "x (N, C, H, W)"],
    ["tail", "tail"],
    ["dtype", "dtype"],
    ["impl", "implementation"],
    ["median_ms", "fwd+bwd ms"],
    ["spread_ms", "p20-p80 ms"],
    ["gbs", "GB/s (minimal traffic)"],
    ["pct_peak", "% HBM peak"],
    ["speedup", "x eager"],
]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# (name, channels, H, W, residual, relu) at 224x224 input; every kind of tail CORnet-S has
LAYERS = [
    ("V1.norm1", 64, 112, 112, False, True),
    ("V2.norm1_0", 512, 56, 56, False, True),
    ("V2.norm_skip", 128, 28, 28, False, False),
    ("V2.norm3_1", 128, 28, 28, True, True),
    ("V4.norm2_1", 1024, 14, 14, False, True),
    ("IT.norm3_1", 512, 7, 7, True, True),
]


def eager(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, rm: torch.Tensor, rv: torch.Tensor,
          r: torch.Tensor | None, relu: bool) -> torch.Tensor:  # fmt: skip
    y = F.batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5)
    if r is not None:
        y = y + r
    return F.relu(y) if relu else y


def fused(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, rm: torch.Tensor, rv: torch.Tensor,
          r: torch.Tensor | None, relu: bool) -> torch.Tensor:  # fmt: skip
    return batch_norm_act(x, w, b, rm, rv, residual=r, relu=relu, backend="triton")


def minimal_bytes(numel: int, itemsize: int, residual: bool, relu: bool) -> int:
    fwd = (2 + residual + 1) * numel  # statistics pass over x, normalise pass over x (+ skip), write y
    # reduction pass: dy, x (+ y for the ReLU mask); dx pass: the same again, write dx (+ the skip's)
    bwd = 2 * (2 + relu) * numel + (1 + residual) * numel
    return (fwd + bwd) * itemsize


def bench_row(
    layer: tuple, batch: int, dtype_name: str, impl: str, args: argparse.Namespace
) -> dict[str, Any]:
    name, c, h, w, residual, relu = layer
    dev, dtype = args.device, DTYPES[dtype_name]
    g = torch.Generator(device=dev).manual_seed(0)

    def act() -> torch.Tensor:
        t = torch.randn(batch, c, h, w, device=dev, generator=g).to(dtype)
        return t.contiguous(memory_format=torch.channels_last)

    x, dy = act().requires_grad_(), act()
    r = act().requires_grad_() if residual else None
    wt = torch.rand(c, device=dev, generator=g).add_(0.5).requires_grad_()
    bs = torch.randn(c, device=dev, generator=g).requires_grad_()
    rm, rv = torch.zeros(c, device=dev), torch.ones(c, device=dev)
    op = {"eager": eager, "compile": torch.compile(eager), "triton": fused}[impl]
    wrt = [x, wt, bs] + ([r] if r is not None else [])

    def step() -> None:
        torch.autograd.grad(op(x, wt, bs, rm, rv, r, relu), wrt, dy)

    t = harness.time_fn(step, dev, warmup=args.warmup, rep=args.reps)
    nbytes = minimal_bytes(x.numel(), x.element_size(), residual, relu)
    gbs = nbytes / (t["median_ms"] * 1e-3) / 1e9
    peak, _ = harness.peak_bandwidth_gbs(dev)
    tail = "BN" + (" + skip" if residual else "") + (" + ReLU" if relu else "")
    return {
        "layer": name,
        "shape": f"{batch}x{c}x{h}x{w}",
        "tail": tail,
        "dtype": dtype_name,
        "impl": impl,
        "median_ms": t["median_ms"],
        "spread_ms": f"{t['p20_ms']:.4g}-{t['p80_ms']:.4g}",
        "p20_ms": t["p20_ms"],
        "p80_ms": t["p80_ms"],
        "reps": t["reps"],
        "bytes": nbytes,
        "gbs": gbs,
        "pct_peak": 100 * gbs / peak,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    p.add_argument("--impls", nargs="+", default=["eager", "compile", "triton"])
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--quick", action="store_true", help="batch 2, one layer per kind of tail, no result file")
    args = p.parse_args(argv)
    layers = LAYERS
    if args.quick:
        args.batches, args.warmup, args.reps = [2], 1, 3
        tails = {layer[4:]: layer for layer in reversed(LAYERS)}  # (residual, relu): its first layer
        layers = [layer for layer in LAYERS if layer in tails.values()]
    if not (args.device.startswith("cuda") and torch.cuda.is_available()):
        print("bench_norm_act: needs a CUDA device (it measures the Triton kernels); nothing measured")
        return 0
    rows = []
    for layer in layers:
        for batch in args.batches:
            for dtype_name in args.dtypes:
                for impl in args.impls:
                    row = bench_row(layer, batch, dtype_name, impl, args)
                    rows.append(row)
                    print({k: row[k] for k in ("layer", "shape", "dtype", "impl", "median_ms", "gbs")})
    base = {(r["layer"], r["shape"], r["dtype"]): r["median_ms"] for r in rows if r["impl"] == "eager"}
    for r in rows:
        eager_ms = base.get((r["layer"], r["shape"], r["dtype"]))
        r["speedup"] = None if eager_ms is None else eager_ms / r["median_ms"]
    meta = {
        "columns": COLUMNS,
        "traffic_model": "fwd: 2 reads of x (+ skip) + write y; bwd: 2 x (dy, x (+ y)) + dx (+ skip grad)",
        "bandwidth_source": harness.peak_bandwidth_gbs(args.device)[1],
        "layout": "channels_last",
    }
    if args.quick:
        return 0
    print(f"wrote {harness.save(NAME, args.device, rows, meta)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
