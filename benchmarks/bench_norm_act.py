"""Fused BatchNorm + residual add + ReLU (CORnet-S's training tails): forward + backward per call.

For the BatchNorm shapes of a CORnet-S training step at 224x224 (batch 64 and 256, fp32 and bf16,
channels_last): eager PyTorch (``F.batch_norm`` -> ``+ skip`` -> ``F.relu``, what the original module
runs, cuDNN's BatchNorm kernels), ``torch.compile`` of that composition (inductor), and fastalign's
Triton kernels (``batch_norm_act(backend="triton")``). The op is memory-bound, so each row reports the
bandwidth its time implies for the fused design's minimal traffic (forward: x twice, the skip once, y
once; backward: dy, x and y twice each, dx and the skip's gradient once) and that as % of the GPU's
datasheet HBM bandwidth: the roofline of what any implementation of this op could reach.

Equal results in the same run: each implementation's output y and gradients (dx, dweight, dbias, and
dskip where the tail adds one) from one forward + backward on the row's inputs are compared with eager
PyTorch in float64 on float64 copies of the same inputs, with the implementation's own ReLU mask (where
the exact pre-activation lies within rounding of 0 the mask may flip either way; a flipped element moves
its channel's dweight and dbias by O(dy), a matter of rounding, not of the kernel; y itself is compared
with the exact ReLU). Each row records max |got - float64| per output (``max_abs_*_diff``) and
``equal``; ``meta.checks`` also the errors over each output's scale (y: its largest float64 value; dx,
dweight, dbias, dskip: the largest sum of absolute terms each is made of, the scale its rounding
follows however much the terms cancel) and their limits: eager, the baseline, within 2e-5 in fp32 and 2^-5
(eight unit roundoffs) in bf16, torch.compile and triton within twice eager's error plus 2e-5 (fp32) or
1e-3 (bf16) (harness.CHECK_BOUND, harness.CHECK_FLOOR). An implementation outside its limit makes the
script exit with status 1 without writing a result file.

Needs CUDA (the Triton kernels are what it measures; on a CPU they only run through the interpreter,
which is a correctness tool: tests/norm_act/test_bench_norm_act.py runs this script's checks there).
Run: ``python benchmarks/bench_norm_act.py``; ``--quick`` is a smoke run (batch 2, one layer of each
kind of tail, every implementation and its checks, no result file).
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

from fastalign.cli.common import nonnegative_int, positive_int
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
    ["max_abs_y_diff", "max Δ y"],
    ["max_abs_dx_diff", "max Δ dx"],
    ["max_abs_dweight_diff", "max Δ dweight"],
    ["max_abs_dbias_diff", "max Δ dbias"],
    ["max_abs_dskip_diff", "max Δ dskip"],
    ["equal", "equal"],
]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MOMENTUM, EPS = 0.1, 1e-5
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
    y = F.batch_norm(x, rm, rv, w, b, True, MOMENTUM, EPS)
    if r is not None:
        y = y + r
    return F.relu(y) if relu else y


def fused(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, rm: torch.Tensor, rv: torch.Tensor,
          r: torch.Tensor | None, relu: bool) -> torch.Tensor:  # fmt: skip
    return batch_norm_act(
        x, w, b, rm, rv, momentum=MOMENTUM, eps=EPS, residual=r, relu=relu, backend="triton"
    )


def outputs(op: Any, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, r: torch.Tensor | None,
            dy: torch.Tensor, relu: bool) -> dict[str, torch.Tensor]:  # fmt: skip
    """y and the gradients of one forward + backward of ``op`` in training mode (fresh running statistics)."""
    rm = torch.zeros(w.shape[0], device=x.device, dtype=w.dtype)
    rv = torch.ones(w.shape[0], device=x.device, dtype=w.dtype)
    y = op(x, w, b, rm, rv, r, relu)
    wrt = [x, w, b] + ([r] if r is not None else [])
    grads = torch.autograd.grad(y, wrt, dy)
    return dict(zip(["y", "dx", "dweight", "dbias", "dskip"], [y.detach(), *grads], strict=False))


def float64_eager(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, r: torch.Tensor | None,
                  dy: torch.Tensor, relu_mask: torch.Tensor | None) -> dict[str, torch.Tensor]:  # fmt: skip
    """:func:`outputs` of eager in float64 on float64 copies; with ``relu_mask`` the ReLU's gradient is
    that mask instead of ``y > 0`` (its value stays the exact ReLU's)."""
    x, w, b = (t.detach().double().requires_grad_() for t in (x, w, b))
    r = None if r is None else r.detach().double().requires_grad_()
    if relu_mask is None:
        return outputs(eager, x, w, b, r, dy.double(), False)
    mask = relu_mask.double()

    def masked(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, rm: torch.Tensor, rv: torch.Tensor,
               r: torch.Tensor | None, relu: bool) -> torch.Tensor:  # fmt: skip
        pre = eager(x, w, b, rm, rv, r, False)
        return pre * mask + (pre.detach().clamp(min=0) - pre.detach() * mask)  # the value of relu(pre)

    return outputs(masked, x, w, b, r, dy.double(), True)


def term_scales(x: torch.Tensor, w: torch.Tensor, dy: torch.Tensor) -> dict[str, float]:
    """The size of the terms each gradient is a sum of (the scale its rounding follows however much the
    terms cancel), in float64: dx, dweight, dbias, dskip."""
    x, w, dy = x.detach().double(), w.detach().double(), dy.double()
    mean, var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)
    rstd = (var + EPS).rsqrt()
    xhat = (x - mean.view(1, -1, 1, 1)) * rstd.view(1, -1, 1, 1)
    dy_max = float(dy.abs().max())
    return {
        "dx": dy_max * float((w * rstd).abs().max()),
        "dweight": float((dy * xhat).abs().sum(dim=(0, 2, 3)).max()),
        "dbias": float(dy.abs().sum(dim=(0, 2, 3)).max()),
        "dskip": dy_max,
    }


def check(
    got: dict[str, torch.Tensor],
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
    r: torch.Tensor | None,
    dy: torch.Tensor,
    relu: bool,
) -> dict[str, Any]:
    """A row's check fields for one implementation's :func:`outputs` on these inputs (see the module
    doc): ``max_abs_{output}_diff`` (max |got - float64|) and ``rel_err`` (those over each scale)."""
    want = float64_eager(x, w, b, r, dy, got["y"] > 0 if relu else None)
    diffs = harness.max_abs_diffs(got, want)
    scales = {"y": 0.0, **term_scales(x, w, dy)}
    rel = {k: diffs[k] / max(scales[k], float(want[k].abs().max()), 1e-300) for k in want}
    return {**{f"max_abs_{k}_diff": v for k, v in diffs.items()}, "rel_err": rel}


def minimal_bytes(numel: int, itemsize: int, residual: bool, relu: bool) -> int:
    fwd = (2 + residual + 1) * numel  # statistics pass over x, normalise pass over x (+ skip), write y
    # reduction pass: dy, x (+ y for the ReLU mask); dx pass: the same again, write dx (+ the skip's)
    bwd = 2 * (2 + relu) * numel + (1 + residual) * numel
    return (fwd + bwd) * itemsize


def inputs(
    layer: tuple, batch: int, dtype_name: str, dev: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """x, weight, bias, the skip (None without one) and dy of a row: the same (seed 0) for every
    implementation; activations in the row's dtype and channels_last, weight and bias float32."""
    _, c, h, w, residual, _ = layer
    g = torch.Generator(device=dev).manual_seed(0)

    def act() -> torch.Tensor:
        t = torch.randn(batch, c, h, w, device=dev, generator=g).to(DTYPES[dtype_name])
        return t.contiguous(memory_format=torch.channels_last)

    x, dy = act().requires_grad_(), act()
    r = act().requires_grad_() if residual else None
    wt = torch.rand(c, device=dev, generator=g).add_(0.5).requires_grad_()
    bs = torch.randn(c, device=dev, generator=g).requires_grad_()
    return x, wt, bs, r, dy


def bench_row(
    layer: tuple, batch: int, dtype_name: str, impl: str, args: argparse.Namespace
) -> dict[str, Any]:
    name, c, h, w, residual, relu = layer
    dev = args.device
    x, wt, bs, r, dy = inputs(layer, batch, dtype_name, dev)
    rm, rv = torch.zeros(c, device=dev), torch.ones(c, device=dev)
    op = {"eager": eager, "compile": torch.compile(eager), "triton": fused}[impl]
    wrt = [x, wt, bs] + ([r] if r is not None else [])
    checked = check(outputs(op, x, wt, bs, r, dy, relu), x, wt, bs, r, dy, relu)

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
        **checked,
    }


def check_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Each row's errors against their limits, eager's row of the same layer, shape and dtype the
    baseline: sets each row's ``equal``, moves its ``rel_err`` into the checks and returns them by row
    ("layer shape dtype impl")."""
    eager_err = {(r["layer"], r["shape"], r["dtype"]): r["rel_err"] for r in rows if r["impl"] == "eager"}
    checks = {}
    for r in rows:
        baseline = None if r["impl"] == "eager" else eager_err.get((r["layer"], r["shape"], r["dtype"]))
        result = harness.check_errors(r.pop("rel_err"), str(DTYPES[r["dtype"]])[6:], baseline)
        r["equal"] = result["equal"]
        diffs = {k[8:-5]: v for k, v in r.items() if k.startswith("max_abs_") and k.endswith("_diff")}
        checks[f"{r['layer']} {r['shape']} {r['dtype']} {r['impl']}"] = {"max_abs_diff": diffs, **result}
    return checks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--batches", type=positive_int, nargs="+", default=[64, 256])
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    p.add_argument("--impls", nargs="+", default=["eager", "compile", "triton"])
    p.add_argument("--warmup", type=nonnegative_int, default=5)
    p.add_argument("--reps", type=positive_int, default=30)
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
                    keys = ("layer", "shape", "dtype", "impl", "median_ms", "gbs", "max_abs_dx_diff")
                    print({k: row[k] for k in keys})
    base = {(r["layer"], r["shape"], r["dtype"]): r["median_ms"] for r in rows if r["impl"] == "eager"}
    for r in rows:
        eager_ms = base.get((r["layer"], r["shape"], r["dtype"]))
        r["speedup"] = None if eager_ms is None else eager_ms / r["median_ms"]
    checks = check_rows(rows)
    meta = {
        "columns": COLUMNS,
        "traffic_model": "fwd: 2 reads of x (+ skip) + write y; bwd: 2 x (dy, x (+ y)) + dx (+ skip grad)",
        "bandwidth_source": harness.peak_bandwidth_gbs(args.device)[1],
        "layout": "channels_last",
        "check_tolerance": "y, dx, dweight, dbias (dskip) of one forward + backward against eager in float64 "
        "with the implementation's ReLU mask; errors over each output's scale (y: its largest value; "
        "gradients: the largest sum of absolute terms); eager within CHECK_BOUND, every other "
        f"implementation within 2 x eager's error + CHECK_FLOOR; CHECK_BOUND {harness.CHECK_BOUND}, "
        f"CHECK_FLOOR {harness.CHECK_FLOOR}",
        "checks": checks,
    }
    differ = [k for k, v in checks.items() if not v["equal"]]
    for k in differ:
        print(f"RESULTS DIFFER from float64 beyond the limit: {k}: {checks[k]}", file=sys.stderr)
    if differ:
        return 1
    if args.quick:
        return 0
    print(f"wrote {harness.save(NAME, args.device, rows, meta)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
