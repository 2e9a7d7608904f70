"""ReAlnet's correlation-contrastive loss: fastalign vs the published construction and a corrcoef matrix.

Providers (each on the same float32 pred / target; every row shows its loss value and its distance from
the float64 value, so equal values are shown in the same run):

- ``published-torchmetrics``: the published notebooks' code rebuilt faithfully: a Python loop over all
  B^2 pairs, torchmetrics' ``pearson_corrcoef`` formula per pair (a 0-dim tensor each), then
  ``1 - mean(torch.tensor(pos)) + mean(torch.tensor(neg))``: a value without gradient.
- ``published-numpy``: the same loop with ``np.corrcoef`` per pair (how the loss is often re-derived).
- ``corrcoef-matrix``: ``torch.corrcoef`` of the stacked 2B rows, its B x B cross block, diagonal and
  off-diagonal means: differentiable, O(B^2) memory.
- ``fastalign-reference``: ``backend="reference"``, the explicit B x B Pearson matrix.
- ``fastalign``: ``backend="torch"`` (auto), O(B * D), never forms a B x B tensor.

``fwd`` times the value; ``fwd+bwd`` the value and the gradient of pred (the published providers have
none). Peak memory is what one call adds. The B^2-pair loops are skipped at large B (their time grows
as B^2 Python iterations).

    flock /tmp/fastalign-bench.lock python benchmarks/bench_correlation.py
    python benchmarks/bench_correlation.py --quick       # a smoke run with tiny sizes
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

from fastalign.contrastive import correlation_contrastive_loss

SIZES = [(16, 340), (16, 1024), (256, 340), (4096, 340), (16384, 1024)]
QUICK_SIZES = [(4, 8), (64, 16)]
LOOP_MAX_B = 256  # the per-pair loops run B^2 Python iterations: 65,536 at 256


def _torchmetrics_pearson(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """torchmetrics.functional.pearson_corrcoef for two 1-D tensors (its update + compute steps)."""
    mx, my = x.mean(), y.mean()
    n = x.numel()
    var_x = ((x - mx) ** 2).sum() / (n - 1)
    var_y = ((y - my) ** 2).sum() / (n - 1)
    cov = ((x - mx) * (y - my)).sum() / (n - 1)
    return (cov / (var_x * var_y).sqrt()).clamp(-1.0, 1.0)


def published_torchmetrics(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Gen_criterion's correlation term in code/Train_ReAlnet.ipynb (the MSE term left out)."""
    pos_corr, neg_corr = [], []
    n = pred.shape[0]
    for i in range(n):
        for j in range(n):
            (pos_corr if i == j else neg_corr).append(_torchmetrics_pearson(pred[i], target[j]))
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
    "published-torchmetrics": (published_torchmetrics, False),
    "published-numpy": (published_numpy, False),
    "corrcoef-matrix": (corrcoef_matrix, True),
    "fastalign-reference": (lambda p, t: correlation_contrastive_loss(p, t, backend="reference"), True),
    "fastalign": (lambda p, t: correlation_contrastive_loss(p, t, backend="torch"), True),
}


def _step(fn: Callable[..., torch.Tensor], pred: torch.Tensor, target: torch.Tensor, backward: bool):
    def run() -> None:
        pred.grad = None
        loss = fn(pred, target)
        if backward:
            loss.backward()

    return run


def bench(device: str, sizes: list[tuple[int, int]], reps: int, max_bytes: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for b, d in sizes:
        g = torch.Generator(device=device).manual_seed(0)
        pred = torch.randn(b, d, device=device, generator=g)
        target = torch.randn(b, d, device=device, generator=g) + 0.5 * pred  # correlated, like training
        exact = float(correlation_contrastive_loss(pred.double(), target.double(), backend="reference"))
        base: dict[tuple[str, str], float] = {}
        for provider, (fn, differentiable) in PROVIDERS.items():
            loops = provider.startswith("published")
            matrix = provider in ("corrcoef-matrix", "fastalign-reference")
            for mode in ("fwd", "fwd+bwd") if differentiable else ("fwd",):
                row: dict[str, Any] = {"provider": provider, "mode": mode, "B": b, "D": d, "dtype": "float32"}
                if (loops and b > LOOP_MAX_B) or (matrix and 4 * (2 * b) ** 2 * 3 > max_bytes):
                    row["status"] = "skipped (B^2 loop)" if loops else "skipped (B x B memory)"
                    rows.append(row)
                    continue
                gc.collect()
                p = pred.clone().requires_grad_(mode == "fwd+bwd")
                value = float(fn(p, target).detach())
                run = _step(fn, p, target, mode == "fwd+bwd")
                slow = (loops and b >= 64) or (matrix and b >= 2048)  # seconds a call on a CPU
                row["peak_mem_MiB"] = harness.peak_memory_bytes(run, device) / 2**20
                row.update(harness.time_fn(run, device, warmup=0 if slow else 2, rep=3 if slow else reps))
                row.update(status="ok", value=value, abs_err_vs_float64=abs(value - exact))
                base[(provider, mode)] = row["median_ms"]
                rows.append(row)
                print({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
                del p, run
        for row in rows:
            if row["provider"] == "fastalign" and (row["B"], row["D"]) == (b, d):
                # the published loop has only a value: compare it with ours with or without the gradient
                if ("published-torchmetrics", "fwd") in base:
                    row["x_published"] = base[("published-torchmetrics", "fwd")] / row["median_ms"]
                if ("corrcoef-matrix", row["mode"]) in base:
                    row["x_corrcoef"] = base[("corrcoef-matrix", row["mode"])] / row["median_ms"]
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", nargs="*", help="BxD pairs, e.g. 16x340")
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="tiny sizes, no result file")
    p.add_argument("--max-gib", type=float, default=2.0, help="skip B x B providers above this memory")
    args = p.parse_args()
    sizes = (
        [tuple(map(int, s.split("x"))) for s in args.sizes]
        if args.sizes
        else (QUICK_SIZES if args.quick else SIZES)
    )
    reps = args.reps or (3 if args.quick else 15)
    rows = bench(args.device, sizes, reps, int(args.max_gib * 2**30))  # type: ignore[arg-type]
    if args.quick:
        return
    meta = {
        "what": "ReAlnet correlation-contrastive loss C = 1 - mean_i r_ii + mean_{i!=j} r_ij (Pearson over D)"
        ", float32 inputs; fwd+bwd takes the gradient of pred",
        "load_average_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "memory": "peak bytes one call adds (CUDA: max_memory_allocated; CPU: peak RSS growth via VmHWM)",
        "columns": [["provider", "provider"], ["mode", "mode"], ["B", "B"], ["D", "D"],
                    ["median_ms", "median ms"], ["p20_ms", "p20"], ["p80_ms", "p80"],
                    ["peak_mem_MiB", "peak MiB"], ["value", "loss"], ["abs_err_vs_float64", "|err| vs f64"],
                    ["x_published", "x published"], ["x_corrcoef", "x corrcoef"], ["status", "status"]],
    }  # fmt: skip
    print(harness.save("correlation", args.device, rows, meta))


if __name__ == "__main__":
    main()
