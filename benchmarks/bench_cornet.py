"""CORnet-S throughput: eager reference vs torch.compile vs fastalign's fused paths.

Images/s for inference (forward, no autograd) and for a training step (forward + cross-entropy +
backward + SGD with momentum) at 224x224. On a GPU: batch 1/64/256, fp32 and bf16, channels_last,
including the fused inference module with CUDA-graph capture, and for training the fused
BatchNorm+add+ReLU kernels (``model.fuse_training()``), eager and under torch.compile. On a CPU the
default is what fits in a few minutes: batch 1 and 8, fp32 and bf16 inference for eager and fused,
torch.compile for fp32 inference only (each compile takes ~35 s on 2 cores), training (fp32) for eager
at batch 8 (fused training is the Triton kernels, GPU only); all of it can be changed with the
command-line flags. TFLOP/s are *model* FLOP/s: the eager network's forward FLOPs as counted by
torch.utils.flop_counter (the fused module's Winograd convs do fewer actual multiply-adds for the same
result), times 3 for a training step (forward + backward). "% peak" is of the peak of the dtype a row
computes in (``compute dtype``: fused bf16/fp16 on a CPU without oneDNN's kernels for them computes in
fp32, so % of the fp32 peak); none where that dtype is emulated on the CPU, whose peak is not measured
(harness.peak_tflops' 2048^3 products would take minutes each there).

Equal results in the same run: every row's first call, before the timed ones, is compared with the eager
network in float64 on the same input and weights: the logits (inference), or a training step's loss and
the 2-norm of all its gradients at the initial weights (before the optimiser). Errors count relative to
the float64 output's largest magnitude (``rel_err`` per row, ``meta.checks``): eager, the baseline,
within harness.CHECK_BOUND of its dtype (fp32 on a GPU whose cuDNN may use TF32: float16's; a training
step's gradient norm within ``GRAD_NORM_BOUND``, 1e-3, as fp32's error there grows with image size and
batch: 6.9e-5 at 224 px batch 8), every other implementation within twice eager's error for the same mode,
dtype and batch plus harness.CHECK_FLOOR.
A row outside its limit makes the script exit with status 1 without writing a result file. Training rows
also record ``grad_rel_l2`` (all gradients' relative L2 distance from float64), held to no limit: at the
random initial weights BatchNorm's backward is too ill-conditioned for single gradients (see
``meta.check_tolerance``).

On a CPU whose oneDNN cannot run bf16/fp16 (no AVX-512 or AVX-NE-CONVERT), ``--fallback-rounds N``
instead compares, in alternation, what ``fuse(dtype=torch.bfloat16)`` does there (float32 convs, outputs
cast) with the alternative (the dtype's convs through torch's native kernels), eager autocast and fp32.

Run: ``flock /tmp/fastalign-bench.lock python benchmarks/bench_cornet.py [--device cuda]``; the fallback
comparison: ``python benchmarks/bench_cornet.py --fallback-rounds 3 --batches 1 --name cornet_avx2``;
``--quick``: a smoke run (32 px, batch 2, training batch 8, every implementation once or twice, with its
checks, no result file)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
from collections.abc import Callable
from typing import Any
from unittest import mock

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness

from fastalign.cli.common import nonnegative_int, positive_int
from fastalign.models import cornet_s, fuse
from fastalign.models.cornet.fused import mkldnn_dtype_unsupported

NAME = "cornet"
COLUMNS = [
    ["mode", "mode"],
    ["impl", "implementation"],
    ["dtype", "dtype"],
    ["layout", "layout"],
    ["compute", "compute dtype"],
    ["batch", "batch"],
    ["median_ms", "median ms"],
    ["spread_ms", "p20-p80 ms"],
    ["images_per_s", "images/s"],
    ["tflops", "model TFLOP/s"],
    ["pct_peak", "% peak"],
    ["speedup", "x eager"],
    ["peak_mem_mb", "peak MB"],
    ["max_rel_err", "max rel err vs f64"],
    ["equal", "equal"],
]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_NAMES = {v: k for k, v in DTYPES.items()}
#: The fallback comparison's extra column: each row's time over fused fp32's in the same round.
FALLBACK_COLUMNS = [
    *COLUMNS[:7],
    ["best_ms", "best ms"],
    *COLUMNS[7:-3],
    ["vs_fused_fp32", "time / fused fp32"],
    *COLUMNS[-3:],
]


def forward_flops_per_image(size: int = 224) -> float:
    """FLOPs (2 per multiply-add) of one eager forward pass, counted op by op on the real module."""
    model = cornet_s().eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops())


def _model(device: str) -> torch.nn.Module:
    """CORnet-S with the weights every row and the float64 reference start from (seed 0)."""
    torch.manual_seed(0)
    return cornet_s().to(device)


def _input(batch: int, size: int, device: str) -> torch.Tensor:
    """A row's images (seed 1): the same for every implementation and for the reference."""
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)


def _target(batch: int, device: str) -> torch.Tensor:
    """A training row's class labels (seed 2)."""
    return torch.randint(0, 1000, (batch,), generator=torch.Generator().manual_seed(2)).to(device)


def _grads(model: torch.nn.Module) -> list[torch.Tensor]:
    """Every parameter's gradient, in float64."""
    names = [k for k, p in model.named_parameters() if p.grad is None]
    if names:
        raise RuntimeError(f"no gradient to check: {names}")
    return [p.grad.detach().double() for p in model.parameters() if p.grad is not None]


def _grad_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def float64_reference(
    mode: str, batch: int, size: int, device: str
) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """The eager network in float64 on a row's input and weights: ({"logits"}, []) in inference (eval
    mode); a training step's ({"loss", "grad_norm"}, every parameter's gradient) in training mode, before
    the optimiser (grad_norm: the 2-norm of all gradients together)."""
    model = _model(device).double()
    x = _input(batch, size, device).double()
    if mode == "inference":
        with torch.no_grad():
            return {"logits": model.eval()(x)}, []
    loss = F.cross_entropy(model.train()(x), _target(batch, device))
    loss.backward()
    grads = _grads(model)
    return {"loss": loss.detach(), "grad_norm": _grad_norm(grads)}, grads


def grad_rel_l2(grads: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    """||g - g64|| / ||g64|| over all parameters together: recorded, not held to a limit (see
    CHECK_TOLERANCE)."""
    diff = [(g.to(r.device) - r) for g, r in zip(grads, ref, strict=True)]
    return float(_grad_norm(diff) / _grad_norm(ref))


def check_dtype(dtype_name: str, device: str) -> str:
    """The harness tolerance (harness.CHECK_BOUND key) a row is held to: its dtype's; float32 rows on a
    GPU whose cuDNN convolutions may use TF32 (torch's default) float16's, as TF32 keeps fp16's 10-bit
    mantissa."""
    if dtype_name == "fp32" and device.startswith("cuda") and torch.backends.cudnn.allow_tf32:
        return "float16"
    return str(DTYPES[dtype_name]).removeprefix("torch.")


def errors(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """max |got - float64| per output, and that over the output's largest float64 magnitude."""
    diffs = harness.max_abs_diffs(got, ref)
    rel = {k: diffs[k] / max(float(ref[k].abs().max()), 1e-300) for k in ref}
    return {"max_abs_diff": diffs, "rel_err": rel}


def apply_checks(rows: list[dict[str, Any]], device: str) -> dict[str, Any]:
    """Holds every row's errors against float64 (``rel_err``, set by the row's run) to harness.check_errors'
    rule: eager, the baseline, within CHECK_BOUND of the row's dtype; every other implementation within
    twice eager's error for the same mode, dtype and batch plus CHECK_FLOOR (CHECK_BOUND where no eager
    row ran). Sets each row's ``limit``, ``max_rel_err`` and ``equal``; returns meta.checks by row."""
    base = {(r["mode"], r["dtype"], r["batch"]): r["rel_err"] for r in rows if r["impl"] == "eager"}
    checks = {}
    for r in rows:
        baseline = None if r["impl"] == "eager" else base.get((r["mode"], r["dtype"], r["batch"]))
        tolerance = check_dtype(r["dtype"], device)
        bounds = (
            {"grad_norm": max(GRAD_NORM_BOUND, harness.CHECK_BOUND[tolerance])}
            if r["mode"] == "train"
            else None
        )
        result = harness.check_errors(r["rel_err"], tolerance, baseline, bounds)
        r.update(limit=result["limit"], max_rel_err=max(r["rel_err"].values()), equal=result["equal"])
        checks[f"{r['mode']} {r['impl']} {r['dtype']} batch={r['batch']}"] = {
            "reference": "eager float64",
            "tolerance": tolerance,
            "max_abs_diff": r["max_abs_diff"],
            **result,
        }
    return checks


# The eager (baseline) training row's gradient norm against float64: fp32's error grows with the image size
# and batch through BatchNorm's backward at the initial weights (the 2-thread CPU: 64 px batch 4 within
# 2e-5; 224 px batch 8 6.9e-5), so it is held to this, not to CHECK_BOUND["float32"]; other rows of the
# same mode, dtype and batch stay within twice eager's error.
GRAD_NORM_BOUND = 1e-3

CHECK_TOLERANCE = (
    "each row's first call (inference: the logits; training: the loss and the 2-norm of all gradients "
    "together, at the initial weights) against the eager network in float64 on the same input and "
    "weights; errors relative to the largest float64 magnitude of each output; eager within "
    "CHECK_BOUND of the row's dtype (fp32 on a GPU with cuDNN TF32 allowed: float16's, TF32's 10-bit "
    "mantissa), every other implementation within 2 x eager's error (same mode, dtype, batch) + "
    f"CHECK_FLOOR; CHECK_BOUND {harness.CHECK_BOUND}, CHECK_FLOOR {harness.CHECK_FLOOR}; eager training's "
    f"grad_norm within max({GRAD_NORM_BOUND}, CHECK_BOUND) (fp32's error grows with image size and batch "
    "through BatchNorm's backward: 2e-5 at 64 px batch 4, 6.9e-5 at 224 px batch 8). Training rows "
    "also record grad_rel_l2, ||g - g64|| / ||g64|| over all gradients, held to no limit: BatchNorm's "
    "backward in training mode at the random initial weights is ill-conditioned (the 2-thread CPU, 64 px, "
    "batch 4: fp32 gradients within 2e-5 of float64 except the first conv's, 7e-3 of its largest "
    "magnitude; bf16 autocast 0.1-0.8 of each gradient's largest magnitude), more than their norm"
)


def differ(checks: dict[str, Any]) -> bool:
    """Prints every check outside its limit to stderr; whether there was one."""
    bad = [k for k, v in checks.items() if not v["equal"]]
    for k in bad:
        print(f"RESULTS DIFFER from float64 beyond the limit: {k}: {checks[k]}", file=sys.stderr)
    return bool(bad)


def compute_peak(device: str, compute: torch.dtype) -> tuple[float | None, str]:
    """(the peak TFLOP/s a row computing in ``compute`` is a percentage of, its source); None on a CPU
    whose oneDNN lacks that dtype: its kernels are emulated there, and harness.peak_tflops' 2048^3
    products in it would take minutes each and measure no peak."""
    if not device.startswith("cuda") and compute != torch.float32:
        missing = mkldnn_dtype_unsupported(compute)
        if missing is not None:
            return None, f"not measured: {missing} (emulated on this CPU)"
    return harness.peak_tflops(device, compute)


def _autocast(device: str, dtype: torch.dtype) -> contextlib.AbstractContextManager[Any]:
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype)


def _inference_fn(
    impl: str, model: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype, device: str
) -> tuple[Callable[[], Any], torch.dtype]:
    """(one inference call, the dtype its convs compute in)."""
    if impl.startswith("fused"):
        if impl == "fused-native":
            # The path fuse() does not take on a CPU whose oneDNN lacks the dtype: the dtype's convs through
            # torch's own kernels (F.conv2d), forced by answering the support probe yes while fusing.
            with mock.patch("fastalign.models.cornet.fused.mkldnn_dtype_unsupported", return_value=None):
                fused = fuse(model, dtype=dtype, mkldnn=False)
        else:
            fused = fuse(model, dtype=dtype, cuda_graph=impl == "fused+cudagraph")

        def run() -> torch.Tensor:
            with torch.inference_mode():
                return fused(x)

        return run, fused.compute_dtype
    net = torch.compile(model) if impl == "compile" else model

    def run() -> torch.Tensor:
        with torch.inference_mode(), _autocast(device, dtype):
            return net(x)

    return run, dtype


def _train_fn(
    impl: str, model: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype, device: str
) -> tuple[Callable[[], Any], torch.dtype]:
    """(one training step returning its loss, the dtype it computes in)."""
    model.train()
    if impl.startswith("fused"):
        model.fuse_training()  # type: ignore[operator]
    net = torch.compile(model) if impl.endswith("compile") else model
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    target = _target(x.shape[0], device)

    def run() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        with _autocast(device, dtype):
            loss = F.cross_entropy(net(x), target)
        loss.backward()
        opt.step()
        return loss.detach()

    return run, dtype


def _eager_layout(args: argparse.Namespace, dtype_name: str) -> str:
    if args.eager_layout != "auto":
        return str(args.eager_layout)
    # The faster layout for the eager baseline. On the 2-core dev CPU (oneDNN, torch 2.13), measured
    # interleaved at batch 8: fp32 NCHW 1.34 s vs channels_last 1.52 s; bf16 autocast NCHW 0.75 s vs
    # channels_last 0.49 s. On GPUs channels_last is what cuDNN wants for both.
    if args.device.startswith("cuda") or dtype_name != "fp32":
        return "channels_last"
    return "NCHW"


def bench_row(
    mode: str,
    impl: str,
    dtype_name: str,
    batch: int,
    device: str,
    args: argparse.Namespace,
    flops: float,
    ref: tuple[dict[str, torch.Tensor], list[torch.Tensor]],
) -> dict[str, Any]:
    """One timed row; its first call's result (the logits, or a training step's loss and gradients, before
    the optimiser changes the weights) against :func:`float64_reference`'s ``ref`` on the same input and
    weights is in ``rel_err`` (training: also ``grad_rel_l2``)."""
    dtype = DTYPES[dtype_name]
    model = _model(device)
    # Eager/compile (and fused training, the eager module with fused BatchNorm tails) run in the layout
    # the user asked for; the fused inference module converts to channels_last itself.
    fused_inference = mode == "inference" and impl.startswith("fused")
    channels_last = _eager_layout(args, dtype_name) == "channels_last" or fused_inference
    if channels_last and not fused_inference:
        model = model.to(memory_format=torch.channels_last)
    model.eval()
    x = _input(batch, args.size, device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    make = _inference_fn if mode == "inference" else _train_fn
    fn, compute = make(impl, model, x, dtype, device)
    out = fn()  # the checked call, also a warm-up (training: the gradients at the initial weights)
    if mode == "inference":
        checked: dict[str, Any] = errors({"logits": out}, ref[0])
    else:
        grads = _grads(model)
        checked = {**errors({"loss": out, "grad_norm": _grad_norm(grads)}, ref[0])}
        checked["grad_rel_l2"] = grad_rel_l2(grads, ref[1])
        del grads
    reps = args.reps if mode == "inference" else args.train_reps
    t = harness.time_fn(fn, device, warmup=args.warmup, rep=reps)
    mem = harness.peak_memory_bytes(fn, device) if args.memory else None
    per_step = flops * batch * (1 if mode == "inference" else 3)
    tflops = per_step / (t["median_ms"] * 1e-3) / 1e12
    peak, _ = compute_peak(device, compute)
    return {
        "mode": mode,
        "impl": impl,
        "dtype": dtype_name,
        "layout": "NHWC" if channels_last else "NCHW",
        "compute": _NAMES[compute],
        "batch": batch,
        "size": args.size,
        "median_ms": t["median_ms"],
        "spread_ms": f"{t['p20_ms']:.4g}-{t['p80_ms']:.4g}",
        "p20_ms": t["p20_ms"],
        "p80_ms": t["p80_ms"],
        "reps": t["reps"],
        "images_per_s": batch / (t["median_ms"] * 1e-3),
        "tflops": tflops,
        "pct_peak": None if peak is None else 100 * tflops / peak,
        "peak_mem_mb": None if mem is None else mem / 2**20,
        **checked,
    }


def interleaved_speedup(batch: int, device: str, args: argparse.Namespace, rounds: int) -> dict[str, Any]:
    """fp32 inference, eager and fused timed alternately: each round's ratio sees the same machine load.

    On a shared CPU the load changes between the rows above (each times one implementation for a while);
    the median of per-round ratios is the fair comparison there.
    """
    model = _model(device).eval()
    x = _input(batch, args.size, device)
    eager, _ = _inference_fn("eager", model, x, torch.float32, device)
    fused, _ = _inference_fn("fused", model, x, torch.float32, device)
    eager()
    fused()
    ratios, e_ms, f_ms = [], [], []
    for _ in range(rounds):
        te = harness.time_fn(eager, device, warmup=0, rep=1)["median_ms"]
        tf = harness.time_fn(fused, device, warmup=0, rep=1)["median_ms"]
        ratios.append(te / tf)
        e_ms.append(te)
        f_ms.append(tf)
    ratios.sort()
    return {
        "batch": batch,
        "rounds": rounds,
        "median_ratio": ratios[len(ratios) // 2]
        if rounds % 2
        else sum(ratios[rounds // 2 - 1 : rounds // 2 + 1]) / 2,
        "ratios": ratios,
        "eager_ms": e_ms,
        "fused_ms": f_ms,
        "ratio_of_best": min(e_ms) / min(f_ms),
    }


def fallback_comparison(
    batch: int, args: argparse.Namespace, flops: float, rounds: int, ref: dict[str, torch.Tensor]
) -> tuple[list[dict[str, Any]], list[str]]:
    """What bf16/fp16 cost on a CPU whose oneDNN cannot run them, timed in alternation (each round calls
    every implementation once, so all see the same machine load).

    Implementations: eager fp32 (NCHW) and fused fp32; for each low dtype this CPU's oneDNN lacks,
    eager under autocast (channels_last, its faster layout), ``fuse(dtype=...)`` as it is (there: float32
    convs, outputs cast) and ``fused-native`` (the alternative: the dtype's convs through torch's
    native kernels). Rows hold the median over rounds and, per round, the ratios to eager in the same
    dtype (``speedup``) and to fused fp32 (``vs_fused_fp32``), and each one's first output against the
    float64 ``ref`` (``rel_err``).

    Returns:
        (rows, the low dtypes compared).
    """
    low = [n for n in args.dtypes if n != "fp32" and mkldnn_dtype_unsupported(DTYPES[n]) is not None]
    if args.device != "cpu" or not low:
        raise SystemExit(
            "--fallback-rounds measures bf16/fp16 on a CPU whose oneDNN lacks them; here none of "
            f"{args.dtypes} lacks oneDNN support"
        )
    nchw = _model("cpu").eval()
    nhwc = _model("cpu").eval().to(memory_format=torch.channels_last)
    x = _input(batch, args.size, "cpu")
    x_cl = x.contiguous(memory_format=torch.channels_last)
    cases = [("eager", "fp32", nchw, x), ("fused", "fp32", nchw, x)]
    for name in low:
        cases += [("eager", name, nhwc, x_cl), ("fused", name, nchw, x), ("fused-native", name, nchw, x)]
    fns, checked = [], []
    for impl, name, model, inp in cases:
        fn, compute = _inference_fn(impl, model, inp, DTYPES[name], "cpu")
        checked.append(errors({"logits": fn()}, ref))  # also the warm-up: oneDNN primitives, allocations
        fns.append((impl, name, compute, fn))
        print("built", impl, name, "computing in", _NAMES[compute])
    times: list[list[float]] = [[] for _ in fns]
    for r in range(rounds):
        for i, (*_, fn) in enumerate(fns):
            times[i].append(harness.time_fn(fn, "cpu", warmup=0, rep=1)["median_ms"])
        print(f"round {r + 1}/{rounds}:", [f"{t[-1]:.0f}" for t in times])
    by_key = {(impl, name): t for (impl, name, _, _), t in zip(fns, times, strict=True)}
    fp32_fused = by_key[("fused", "fp32")]
    peak_fp32, _ = harness.peak_tflops("cpu", torch.float32)
    rows = []
    for (impl, name, compute, fn), t, check in zip(fns, times, checked, strict=True):
        p20, p80 = harness.spread(t)
        med = statistics.median(t)
        tflops = flops * batch / (med * 1e-3) / 1e12
        eager = by_key[("eager", name)]
        mem = harness.peak_memory_bytes(fn, "cpu") if args.memory else None
        rows.append(
            {
                "mode": "inference",
                "impl": impl,
                "dtype": name,
                "layout": "NHWC" if impl != "eager" or name != "fp32" else "NCHW",
                "compute": _NAMES[compute],
                "batch": batch,
                "size": args.size,
                "median_ms": med,
                "spread_ms": f"{p20:.4g}-{p80:.4g}",
                "p20_ms": p20,
                "p80_ms": p80,
                "best_ms": min(t),  # the least disturbed round, on a shared machine
                "reps": len(t),
                "times_ms": t,
                "images_per_s": batch / (med * 1e-3),
                "tflops": tflops,
                # a bf16/fp16 peak is not measured here (see meta.reduced): % of the fp32 peak only
                "pct_peak": 100 * tflops / peak_fp32 if compute == torch.float32 else None,
                "speedup": statistics.median([e / v for e, v in zip(eager, t, strict=True)]),
                "vs_fused_fp32": statistics.median([v / f for v, f in zip(t, fp32_fused, strict=True)]),
                "peak_mem_mb": None if mem is None else mem / 2**20,
                **check,
            }
        )
    return rows, low


def main(argv: list[str] | None = None) -> int:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--batches", type=positive_int, nargs="+", default=None)
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    p.add_argument("--impls", nargs="+", default=None, help="eager compile fused fused+cudagraph")
    p.add_argument("--modes", nargs="+", default=["inference", "train"], choices=["inference", "train"])
    p.add_argument("--train-batches", type=positive_int, nargs="+", default=None)
    p.add_argument("--size", type=positive_int, default=None, help="image size (default 224, --quick 32)")
    p.add_argument("--eager-layout", choices=["auto", "NCHW", "channels_last"], default="auto")
    p.add_argument("--train-dtypes", nargs="+", default=None, choices=list(DTYPES))
    p.add_argument("--train-reps", type=positive_int, default=None)
    p.add_argument("--warmup", type=nonnegative_int, default=None)
    p.add_argument("--reps", type=positive_int, default=None)
    p.add_argument("--no-memory", dest="memory", action="store_false")
    p.add_argument("--compile-dtypes", nargs="+", default=None, choices=list(DTYPES))
    p.add_argument("--train-impls", nargs="+", default=None, help="eager compile fused fused+compile")
    p.add_argument(
        "--ab-rounds", type=nonnegative_int, default=None, help="interleaved eager/fused rounds (0: none)"
    )
    p.add_argument(
        "--fallback-rounds",
        type=nonnegative_int,
        default=0,
        help="instead of the rows above: interleaved rounds comparing bf16/fp16 on a CPU whose oneDNN "
        "lacks them (fuse()'s float32 fallback, the native-kernel alternative, eager, fp32), first batch",
    )
    p.add_argument("--name", default=NAME, help="result file results/NAME-DEVICE.json")
    p.add_argument(
        "--quick", action="store_true", help="smoke run: 32 px, batch 2 (training 8), no result file"
    )
    args = p.parse_args(argv)
    gpu = args.device.startswith("cuda")
    args.size = args.size or (32 if args.quick else 224)
    # quick: batch 2, not 1 (at 32 px IT's maps are 1x1: BatchNorm in training needs 2 values a channel);
    # training at 8: with 2 values a channel, BatchNorm in training is so ill-conditioned that fp32's loss
    # was 9e-3 from float64's
    args.batches = args.batches or ([2] if args.quick else [1, 64, 256] if gpu else [1, 8])
    args.train_batches = args.train_batches or (args.batches if gpu and not args.quick else [8])
    args.impls = args.impls or ["eager", "compile", "fused", "fused+cudagraph"]
    # CPU: torch.compile only for fp32 inference (each compile takes ~35 s here, a backward one longer).
    args.compile_dtypes = args.compile_dtypes or (args.dtypes if gpu else ["fp32"])
    # fused training runs the Triton kernels, which need CUDA (on a CPU "auto" is the eager reference)
    args.train_impls = args.train_impls or (
        ["eager", "compile", "fused", "fused+compile"] if gpu else ["eager"]
    )
    args.train_dtypes = args.train_dtypes or (args.dtypes if gpu else ["fp32"])
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick or not gpu else 5)
    args.reps = args.reps or (2 if args.quick else 20 if gpu else 5)
    args.train_reps = args.train_reps or (1 if args.quick else 20 if gpu else 3)
    args.ab_rounds = args.ab_rounds if args.ab_rounds is not None else (0 if gpu else 1 if args.quick else 5)

    flops = forward_flops_per_image(args.size)
    print(f"forward FLOPs per {args.size}x{args.size} image (torch.utils.flop_counter): {flops / 1e9:.3f} G")
    if args.fallback_rounds > 0:
        return _save_fallback(args, flops)
    rows: list[dict[str, Any]] = []
    tasks: list[tuple[str, str, str, int]] = []
    for mode in args.modes:
        batches = args.batches if mode == "inference" else args.train_batches
        impls = args.impls if mode == "inference" else args.train_impls
        for dtype_name in args.dtypes if mode == "inference" else args.train_dtypes:
            for batch in batches:
                for impl in impls:
                    if impl == "fused+cudagraph" and not gpu:
                        continue
                    if impl.endswith("compile") and dtype_name not in args.compile_dtypes:
                        continue
                    tasks.append((mode, impl, dtype_name, batch))

    refs: dict[tuple[str, int], tuple[dict[str, torch.Tensor], list[torch.Tensor]]] = {}
    for mode, _, _, batch in tasks:  # float64 runs before any timing, one per input
        if (mode, batch) not in refs:
            refs[mode, batch] = float64_reference(mode, batch, args.size, args.device)
    if gpu:
        torch.cuda.empty_cache()

    def run(selected: list[tuple[str, str, str, int]]) -> None:
        for mode, impl, dtype_name, batch in selected:
            row = bench_row(mode, impl, dtype_name, batch, args.device, args, flops, refs[mode, batch])
            rows.append(row)
            print({k: row[k] for k in ("mode", "impl", "dtype", "batch", "median_ms", "images_per_s")},
                  "rel err vs float64:", row["rel_err"])  # fmt: skip

    # torch.compile last (after the interleaved rounds too): its compile workers and caches stay in the
    # process and must not share the machine with the other timings.
    run([t for t in tasks if not t[1].endswith("compile")])
    ab = []
    if "inference" in args.modes and args.ab_rounds > 0:
        for batch in args.batches:
            ab.append(interleaved_speedup(batch, args.device, args, args.ab_rounds))
            print("interleaved fp32 inference, eager/fused:", ab[-1]["batch"], ab[-1]["median_ratio"])
    run([t for t in tasks if t[1].endswith("compile")])
    base = {(r["mode"], r["dtype"], r["batch"]): r["median_ms"] for r in rows if r["impl"] == "eager"}
    for r in rows:
        eager_ms = base.get((r["mode"], r["dtype"], r["batch"]))
        r["speedup"] = None if eager_ms is None else eager_ms / r["median_ms"]
    order = ["eager", "compile", "fused", "fused+cudagraph", "fused+compile"]
    rows.sort(key=lambda r: (r["mode"], r["dtype"] != "fp32", r["batch"], order.index(r["impl"])))
    checks = apply_checks(rows, args.device)
    if differ(checks):
        return 1
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    meta = {
        "columns": COLUMNS,
        "forward_gflop_per_image": flops / 1e9,
        "flop_convention": "2 FLOPs per multiply-add; train step = 3x forward; model FLOPs of the eager net",
        "size": args.size,
        "eager_layout": {d: _eager_layout(args, d) for d in DTYPES},
        "impls": args.impls,
        "peak_source": _peak_sources(rows, args.device),
        "check_tolerance": CHECK_TOLERANCE,
        "checks": checks,
        "load_average_at_end": load,
        "interleaved_fp32_inference_speedup": ab,
        "reduced": None
        if gpu
        else (
            "CPU run: batches 1 and 8 instead of 1/64/256; training only fp32 eager at batch 8 (median of "
            "3); torch.compile (default inductor, ~35 s per compile here) only for fp32 inference; "
            "fused+cudagraph needs CUDA; inference median of 5 after the checked call and 1 warm-up. The "
            "CPU was shared with other jobs (see load_average_at_end), so spreads are wide and rows timed "
            "minutes apart see different loads: the interleaved eager/fused ratios are the fair comparison"
        ),
    }
    if args.quick:
        return 0
    path = harness.save(args.name, args.device, rows, meta)
    print(f"wrote {path}")
    return 0


def _save_fallback(args: argparse.Namespace, flops: float) -> int:
    batch = args.batches[0]
    ref = float64_reference("inference", batch, args.size, "cpu")[0]
    rows, low = fallback_comparison(batch, args, flops, args.fallback_rounds, ref)
    order = ["eager", "fused", "fused-native"]
    rows.sort(key=lambda r: (list(DTYPES).index(r["dtype"]), order.index(r["impl"])))
    checks = apply_checks(rows, "cpu")
    if differ(checks):
        return 1
    meta = {
        "columns": FALLBACK_COLUMNS,
        "forward_gflop_per_image": flops / 1e9,
        "flop_convention": "2 FLOPs per multiply-add; model FLOPs of the eager net",
        "size": args.size,
        "oneDNN_missing": {n: mkldnn_dtype_unsupported(DTYPES[n]) for n in low},
        "peak_source": _peak_sources(rows, "cpu"),
        "check_tolerance": CHECK_TOLERANCE,
        "checks": checks,
        "load_average_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "reduced": (
            f"CPU fallback comparison: batch {batch}, {args.fallback_rounds} interleaved rounds (each "
            "round calls every implementation once after one warm-up call each; median, p20-p80 and best "
            "over rounds; "
            "'x eager' and 'time / fused fp32' are medians of per-round ratios). No bf16/fp16 peak: "
            "harness.peak_tflops times 2048^3 torch.mm products, which in bf16/fp16 take minutes each on a "
            "CPU without these instructions, so % peak is given for float32 compute only."
        ),
    }
    if args.quick:
        return 0
    path = harness.save(args.name, args.device, rows, meta)
    print(f"wrote {path}")
    return 0


def _peak_sources(rows: list[dict[str, Any]], device: str) -> dict[str, str]:
    """Where each compute dtype's peak (the % peak column) comes from, or why there is none."""
    return {c: compute_peak(device, DTYPES[c])[1] for c in sorted({r["compute"] for r in rows})}


if __name__ == "__main__":
    raise SystemExit(main())
