"""What the study scripts share: the synthetic brain and its calibrated start, and the command line that
runs a study in a temporary folder, prints its table and writes its JSON to ``results/studies/``."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any

from fastalign.cli.demo import start_model
from fastalign.data import SyntheticThings, make_synthetic_things
from fastalign.eval.report import write_json

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "studies")


def synthetic_start(root: str, data: Mapping[str, Any]) -> tuple[SyntheticThings, str]:
    """The synthetic dataset (seed 0) under ``root/data`` and the demo's start, a random CORnet-S whose
    BatchNorm statistics are set from the training images, saved as ``root/start.pth``."""
    things = make_synthetic_things(os.path.join(root, "data"), seed=0, **data)
    weights = start_model(things.root, os.path.join(root, "start.pth"), data["image_size"], seed=0)
    return things, weights


def align_pair(
    data_root: str, subject: int | str, root: str, weights: str, settings: Mapping[str, Any]
) -> dict[str, Any]:
    """``align``'s result(s) for ``subject`` (a number or "all") into ``root/realnet`` (paired) and
    ``root/control`` (the unpaired control), both from ``weights`` with seed 0 and no checkpoints."""
    from fastalign.train import align

    return {
        name: align(data_root, subject, out=os.path.join(root, name), control=control, seed=0,
                    weights=weights, keep_checkpoints=0, progress=False, **settings)
        for name, control in (("realnet", None), ("control", "unpaired"))
    }  # fmt: skip


def numbers(summary: Mapping[str, Any]) -> dict[str, Any]:
    """A run summary's numeric entries."""
    return {k: v for k, v in summary.items() if isinstance(v, (int, float))}


def record(
    name: str, settings: dict[str, Any], results: dict[str, Any], table: str, load_before: float
) -> dict[str, Any]:
    """A study's JSON: its settings, results and table, with the provenance every result file carries:
    harness.environment (commit, versions, date, threads, CPU capability) of the device the study's runs
    used (align, decode and evaluate default to ``cuda:LOCAL_RANK`` where CUDA is, else the CPU: a fixed
    "cpu" named the CPU whatever they ran on), the machine and the load average before and after."""
    from fastalign.train.distributed import default_device, planned

    # imported after the run: harness fixes glibc's mmap threshold at import (for its peak-memory
    # numbers), which would slow the study's training, unlike the fastalign program's setting
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)
    import harness

    environment = {
        **harness.environment(str(default_device(planned()))),
        "machine": platform.processor() or platform.machine(),
        "load_avg_before_after": [load_before, os.getloadavg()[0]],
    }
    return {
        "study": name,
        "settings": settings,
        "results": results,
        "table": table,
        "environment": environment,
    }


def main(
    name: str,
    doc: str,
    full: dict[str, Any],
    quick: dict[str, Any],
    run: Callable[[dict[str, Any], str], dict[str, Any]],
    table: Callable[[dict[str, Any], dict[str, Any]], str],
) -> None:
    """``python benchmarks/study_NAME.py [--quick] [--no-save]``: ``run(settings, folder)`` into a
    temporary folder, its ``table(results, settings)`` printed, and (full size) the JSON written to
    ``results/studies/NAME-synthetic.json``."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="toy sizes: a smoke run of the script")
    p.add_argument("--no-save", action="store_true", help="print only; write no result file")
    args = p.parse_args()
    settings = quick if args.quick else full
    begin, load_before = time.perf_counter(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="fastalign-study-") as root:
        results = run(settings, root)
    results["seconds"]["total"] = time.perf_counter() - begin
    out = record(name, settings, results, table(results, settings), load_before)
    print(out["table"])
    print(f"time (s): {json.dumps({k: round(v, 1) for k, v in results['seconds'].items()})}")
    if not args.no_save and not args.quick:
        os.makedirs(RESULTS, exist_ok=True)
        print(f"wrote {write_json(os.path.join(RESULTS, f'{name}-synthetic.json'), out)}", file=sys.stderr)
