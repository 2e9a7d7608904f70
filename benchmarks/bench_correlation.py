"""ReAlnet's correlation-contrastive loss: fastalign vs the published construction and a corrcoef matrix.

Providers (each on the same float32 pred / target):

- ``published-torchmetrics``: the published notebooks' code rebuilt faithfully: a Python loop over all
  B^2 pairs, ``torchmetrics.functional.pearson_corrcoef`` per pair (a 0-dim tensor each), then
  ``1 - mean(torch.tensor(pos)) + mean(torch.tensor(neg))``: a value without gradient. torchmetrics is
  an optional dependency (``pip install fastalign[bench]``); without it the row is
  ``published-formula``, the same loop with a re-implementation of torchmetrics' basic Pearson formula
  (centred sums over n - 1, clamped to [-1, 1]; not the library's code, which also rescales by the
  largest deviation and checks the variances), and its ``pearson`` column says so.
- ``published-numpy``: the same loop with ``np.corrcoef`` per pair (how the loss is often re-derived).
- ``corrcoef-matrix``: ``torch.corrcoef`` of the stacked 2B rows, its B x B cross block, diagonal and
  off-diagonal means: differentiable, O(B^2) memory.
- ``fastalign-reference``: ``backend="reference"``, the explicit B x B Pearson matrix.
- ``fastalign``: ``backend="torch"`` (auto), O(B * D), never forms a B x B tensor.

``fwd`` times the value; ``fwd+bwd`` the value and the gradient of pred (the published providers have
none). Peak memory is what one call adds. The B^2-pair loops are skipped at large B (their time grows
as B^2 Python iterations).

Equal results in the same run: every row's loss (and, for fwd+bwd, the gradient of pred from its last
timed call) is compared with fastalign's loss and gradient on float64 copies of the inputs (the
reference backend where its B x B float64 matrices fit in ``--max-gib``, else the torch backend in
float64, held to the reference within 1e-10 by the tests). Errors are relative to |loss| and to the
largest float64 gradient entry. The published loop (the baseline) must be within harness.CHECK_BOUND
(2e-5 in float32); every other row within twice the published loop's error plus harness.CHECK_FLOOR
(2e-5), or within CHECK_BOUND where the published loop is skipped or has no gradient. Each row records
its errors and ``equal``; ``meta.checks`` the limits. A row outside its limit makes the script exit with
status 1 without writing a result file.

    flock /tmp/fastalign-bench.lock python benchmarks/bench_correlation.py
    python benchmarks/bench_correlation.py --quick       # a smoke run with tiny sizes, no result file
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import harness

from fastalign.cli.common import positive_int, positive_real
from fastalign.contrastive import correlation_contrastive_loss

SIZES = [(16, 340), (16, 1024), (256, 340), (4096, 340), (16384, 1024)]
QUICK_SIZES = [(4, 8), (64, 16)]
LOOP_MAX_B = 256  # the per-pair loops run B^2 Python iterations: 65,536 at 256


try:
    import torchmetrics
    from torchmetrics.functional import pearson_corrcoef as _pearson

    PUBLISHED = "published-torchmetrics"
    PUBLISHED_PEARSON = f"torchmetrics {torchmetrics.__version__} pearson_corrcoef"
except ImportError:  # the fallback, labelled in every row and result file

    def _pearson(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """torchmetrics' basic Pearson formula for two 1-D tensors (not its code: see the module doc)."""
        mx, my = x.mean(), y.mean()
        n = x.numel()
        var_x = ((x - mx) ** 2).sum() / (n - 1)
        var_y = ((y - my) ** 2).sum() / (n - 1)
        cov = ((x - mx) * (y - my)).sum() / (n - 1)
        return (cov / (var_x * var_y).sqrt()).clamp(-1.0, 1.0)

    PUBLISHED = "published-formula"
    PUBLISHED_PEARSON = "torchmetrics' formula re-implemented (torchmetrics not installed)"


def published_torchmetrics(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Gen_criterion's correlation term in code/Train_ReAlnet.ipynb (the MSE term left out)."""
    pos_corr, neg_corr = [], []
    n = pred.shape[0]
    for i in range(n):
        for j in range(n):
            (pos_corr if i == j else neg_corr).append(_pearson(pred[i], target[j]))
    return 1 - torch.mean(torch.tensor(pos_corr)) + torch.mean(torch.tensor(neg_corr))


def published_numpy(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The same loop with np.corrcoef per pair."""
    p, t = pred.detach().cpu().numpy(), target.detach().cpu().numpy()
    pos_corr, neg_corr = [], []
    n = p.shape[0]
    for i in range(n):
        for j in range(n):
            (pos_corr if i == j else neg_corr).append(np.corrcoef(p[i], t[j])[0, 1])
    return 1 - torch.mean(torch.tensor(pos_corr)) + torch.mean(torch.tensor(neg_corr))


def corrcoef_matrix(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """torch.corrcoef of all 2B rows; the pred x target block is the B x B Pearson matrix."""
    b = pred.shape[0]
    r = torch.corrcoef(torch.cat([pred, target]))[:b, b:]
    trace = r.diagonal().sum()
    return 1 - trace / b + (r.sum() - trace) / (b * (b - 1))


PROVIDERS: dict[str, tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], bool]] = {
    # name: (loss function, differentiable)
    PUBLISHED: (published_torchmetrics, False),
    "published-numpy": (published_numpy, False),
    "corrcoef-matrix": (corrcoef_matrix, True),
    "fastalign-reference": (lambda p, t: correlation_contrastive_loss(p, t, backend="reference"), True),
    "fastalign": (lambda p, t: correlation_contrastive_loss(p, t, backend="torch"), True),
}


def _step(
    fn: Callable[..., torch.Tensor],
    pred: torch.Tensor,
    target: torch.Tensor,
    backward: bool,
    last: dict[str, torch.Tensor],
) -> Callable[[], None]:
    """One call (and backward); ``last`` keeps the loss of the latest call (pred.grad its gradient)."""

    def run() -> None:
        pred.grad = None
        loss = fn(pred, target)
        if backward:
            loss.backward()
        last["loss"] = loss.detach()

    return run


def float64_reference(pred: torch.Tensor, target: torch.Tensor, max_bytes: int) -> tuple[str, dict[str, Any]]:
    """(what computed it, {loss, grad}) on float64 copies of pred and target (see the module doc)."""
    b = pred.shape[0]
    backend = "reference" if 8 * (2 * b) ** 2 * 3 <= max_bytes else "torch"
    p64 = pred.detach().double().requires_grad_()
    loss = correlation_contrastive_loss(p64, target.detach().double(), backend=backend)
    loss.backward()
    assert p64.grad is not None
    return f"fastalign {backend} float64", {"loss": loss.detach().cpu(), "grad": p64.grad.cpu()}


def check(
    got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], baseline: dict[str, float] | None
) -> dict[str, Any]:
    """A row's loss (and gradient) against the float64 ``ref``; ``baseline``: the published loop's
    relative errors in the same run (None where it has none)."""
    diffs = harness.max_abs_diffs(got, {k: ref[k] for k in got})
    rel = {k: diffs[k] / max(float(ref[k].abs().max()), 1e-300) for k in got}
    base = None if baseline is None or any(k not in baseline for k in rel) else baseline
    return {"max_abs_diff": diffs, **harness.check_errors(rel, "float32", base)}


def bench(
    device: str, sizes: list[tuple[int, int]], reps: int, max_bytes: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The rows, and the equality checks by row (provider, mode, B, D)."""
    rows: list[dict[str, Any]] = []
    checks: dict[str, Any] = {}
    for b, d in sizes:
        g = torch.Generator(device=device).manual_seed(0)
        pred = torch.randn(b, d, device=device, generator=g)
        target = torch.randn(b, d, device=device, generator=g) + 0.5 * pred  # correlated, like training
        which, ref = float64_reference(pred, target, max_bytes)
        base: dict[tuple[str, str], float] = {}
        baseline: dict[str, float] | None = None
        for provider, (fn, differentiable) in PROVIDERS.items():
            loops = provider.startswith("published")
            matrix = provider in ("corrcoef-matrix", "fastalign-reference")
            for mode in ("fwd", "fwd+bwd") if differentiable else ("fwd",):
                row: dict[str, Any] = {"provider": provider, "mode": mode, "B": b, "D": d, "dtype": "float32"}
                if loops:
                    row["pearson"] = PUBLISHED_PEARSON if provider == PUBLISHED else "np.corrcoef"
                if (loops and b > LOOP_MAX_B) or (matrix and 4 * (2 * b) ** 2 * 3 > max_bytes):
                    row["status"] = "skipped (B^2 loop)" if loops else "skipped (B x B memory)"
                    rows.append(row)
                    continue
                gc.collect()
                p = pred.clone().requires_grad_(mode == "fwd+bwd")
                last: dict[str, torch.Tensor] = {}

                run = _step(fn, p, target, mode == "fwd+bwd", last)
                slow = (loops and b >= 64) or (matrix and b >= 2048)  # seconds a call on a CPU
                row["peak_mem_MiB"] = harness.peak_memory_bytes(run, device) / 2**20
                row.update(harness.time_fn(run, device, warmup=0 if slow else 2, rep=3 if slow else reps))
                got = {"loss": last["loss"]} | ({"grad": p.grad} if mode == "fwd+bwd" else {})
                result = check(got, ref, None if provider == PUBLISHED else baseline)  # type: ignore[arg-type]
                if provider == PUBLISHED:
                    baseline = result["rel_err"]
                checks[f"{provider} {mode} B={b} D={d}"] = {"reference": which, **result}
                value = float(last["loss"])
                row.update(status="ok", value=value, abs_err_vs_float64=abs(value - float(ref["loss"])))
                if "grad" in got:
                    row["grad_rel_err"] = result["rel_err"]["grad"]
                row["equal"] = result["equal"]
                base[(provider, mode)] = row["median_ms"]
                rows.append(row)
                print({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
                del p, run, last
        for row in rows:
            if row["provider"] == "fastalign" and (row["B"], row["D"]) == (b, d):
                # the published loop has only a value: compare it with ours with or without the gradient
                if (PUBLISHED, "fwd") in base:
                    row["x_published"] = base[(PUBLISHED, "fwd")] / row["median_ms"]
                if ("corrcoef-matrix", row["mode"]) in base:
                    row["x_corrcoef"] = base[("corrcoef-matrix", row["mode"])] / row["median_ms"]
    return rows, checks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", nargs="*", type=harness.size_pair, help="BxD pairs, e.g. 16x340")
    p.add_argument("--reps", type=positive_int, default=None)
    p.add_argument("--quick", action="store_true", help="tiny sizes, no result file")
    p.add_argument(
        "--max-gib", type=positive_real, default=2.0, help="skip B x B providers above this memory"
    )
    args = p.parse_args(argv)
    sizes = args.sizes if args.sizes else (QUICK_SIZES if args.quick else SIZES)
    reps = args.reps or (3 if args.quick else 15)
    rows, checks = bench(args.device, sizes, reps, int(args.max_gib * 2**30))  # type: ignore[arg-type]
    differ = [k for k, v in checks.items() if not v["equal"]]
    for k in differ:
        print(f"RESULTS DIFFER from float64 beyond the limit: {k}: {checks[k]}", file=sys.stderr)
    if differ:
        return 1
    if args.quick:
        return 0
    meta = {
        "what": "ReAlnet correlation-contrastive loss C = 1 - mean_i r_ii + mean_{i!=j} r_ij (Pearson over D)"
        ", float32 inputs; fwd+bwd takes the gradient of pred",
        "published_pearson": PUBLISHED_PEARSON,
        "load_average_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "memory": "peak bytes one call adds (CUDA: max_memory_allocated; CPU: peak RSS growth via VmHWM)",
        "check_tolerance": "each row's loss (and fwd+bwd's gradient of pred) against fastalign on float64 "
        "copies (reference backend where its B x B float64 matrices fit, else the torch backend); errors "
        f"relative to |loss| and the largest gradient entry; {PUBLISHED} (the baseline) within CHECK_BOUND, "
        f"every other row within 2 x its error + CHECK_FLOOR, or CHECK_BOUND where it has none; CHECK_BOUND "
        f"{harness.CHECK_BOUND['float32']}, CHECK_FLOOR {harness.CHECK_FLOOR['float32']} (float32)",
        "checks": checks,
        "columns": [["provider", "provider"], ["mode", "mode"], ["B", "B"], ["D", "D"],
                    ["median_ms", "median ms"], ["p20_ms", "p20"], ["p80_ms", "p80"],
                    ["peak_mem_MiB", "peak MiB"], ["value", "loss"], ["abs_err_vs_float64", "|err| vs f64"],
                    ["grad_rel_err", "grad rel err"], ["equal", "equal"], ["x_published", "x published"],
                    ["x_corrcoef", "x corrcoef"], ["pearson", "per-pair Pearson"], ["status", "status"]],
    }  # fmt: skip
    print(harness.save("correlation", args.device, rows, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
