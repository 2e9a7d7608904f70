"""``fastalign demo``: how long the full demo and ``--quick`` take, stage by stage, on this machine.

Each run is the command a user types, ``python -m fastalign demo --out DIR [--quick]``, in a fresh process
(so Python's and torch's imports are counted in the end-to-end time, and nothing is cached from another
run). The stages' times come from the run's summary.json: wall-clock seconds, and the CPU seconds of the
process's threads (on a machine shared with other jobs the wall time stretches with the load, the CPU
time much less: both are recorded, with the load average before and after each run). The runs are
repeated in interleaved rounds. The first round's printed output is kept in ``meta.output`` (the README
shows the full demo's), and ``meta.same_numbers_every_round`` says whether the later rounds printed the
same numbers (the seed fixes them). ``meta.image_source`` says which images the demos drew: photographs
(scikit-image installed, as for the committed results: ``pip install -e .[photos]``) or procedural shapes,
which give other numbers.

    flock /tmp/fastalign-bench.lock python benchmarks/bench_demo.py      # writes results/demo-*.json
    python benchmarks/bench_demo.py --quick     # a smoke run: the quick demo once, no result file
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness
import torch

from fastalign.cli.common import positive_int, seed

NAME = "demo"
COLUMNS = [
    ["run", "run"],
    ["round", "round"],
    ["stage", "stage"],
    ["wall_s", "wall s"],
    ["cpu_s", "CPU s"],
    ["share", "% of wall"],
    ["load", "load avg (before, after)"],
]
STAGES = ("data", "start", "align", "evaluate", "decode", "report")


def run_demo(quick: bool, seed: int, folder: str, device: str) -> dict[str, Any]:
    """One ``fastalign demo`` in a new process: its summary.json, printed output and end-to-end time."""
    out = os.path.join(folder, "quick" if quick else "full")
    argv = [sys.executable, "-m", "fastalign", "demo", "--out", out, "--seed", str(seed), "--no-progress"]
    argv += ["--device", device]
    argv += ["--overwrite"]  # a kept folder of an earlier run
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run(
        [*argv, *(["--quick"] if quick else [])], capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"bench_demo: {' '.join(argv)} failed ({done.returncode}): {done.stderr[-2000:]}")
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    return {
        "summary": summary,
        "output": done.stdout.replace(out, "demo"),
        "command_s": seconds,
        "load": (load_before, os.getloadavg()[0]),
    }


def rows_of(name: str, round_: int, run: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per stage, the stages' total, and the whole command (imports and start-up included)."""
    wall, cpu = run["summary"]["seconds"], run["summary"]["cpu_seconds"]
    common = {"run": name, "round": round_, "load": f"{run['load'][0]:.1f}, {run['load'][1]:.1f}"}
    rows = [
        {**common, "stage": k, "wall_s": wall[k], "cpu_s": cpu[k], "share": 100 * wall[k] / wall["total"]}
        for k in STAGES
    ]
    rows.append({**common, "stage": "all stages", "wall_s": wall["total"], "cpu_s": cpu["total"]})
    rows.append({**common, "stage": "command (with imports)", "wall_s": run["command_s"]})
    return rows


def _numbers(output: str) -> str:
    """The printed output without its times: what the seed must fix."""
    return "\n".join(line for line in output.splitlines() if not line.startswith("Time (s): "))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where the demos' models run (their --device)")  # fmt: skip
    p.add_argument("--runs", nargs="+", choices=("quick", "full"), default=["quick", "full"])
    p.add_argument(
        "--rounds", type=positive_int, default=2, help="each run this many times, interleaved (default 2)"
    )
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--no-save", action="store_true", help="print, write no result file")
    p.add_argument("--keep", metavar="DIR", help="keep the demos' folders in DIR/quick, DIR/full")
    p.add_argument("--quick", action="store_true", help="--runs quick --rounds 1 --no-save: a smoke run")
    p.add_argument("--name", default=NAME, help="result file results/NAME-DEVICE.json")
    args = p.parse_args(argv)
    if args.quick:
        args.runs, args.rounds, args.no_save = ["quick"], 1, True
    rows: list[dict[str, Any]] = []
    meta: dict[str, Any] = {"columns": COLUMNS, "seed": args.seed, "cpus": os.cpu_count(), "output": {},
                            "device": args.device}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench_demo.") as scratch:
        folder = args.keep or scratch
        for round_ in range(1, args.rounds + 1):
            for name in args.runs:
                run = run_demo(name == "quick", args.seed, folder, args.device)
                # photographs or procedural shapes (without scikit-image): other images, other numbers
                meta.setdefault("image_source", {})[name] = run["summary"].get("image_source")
                rows += rows_of(name, round_, run)
                print(run["output"], f"command (with imports): {run['command_s']:.1f} s", sep="\n")
                if name in meta["output"]:  # the same seed in a new process: the same numbers
                    same = _numbers(run["output"]) == _numbers(meta["output"][name])
                    meta.setdefault("same_numbers_every_round", {})[name] = same
                    continue
                meta["output"][name] = run["output"]
                meta.setdefault("results", {})[name] = {
                    k: run["summary"][k] for k in ("rsa", "decoding", "align")
                }
    print("images:", meta["image_source"])
    if not args.no_save:
        print(harness.save(args.name, args.device, rows, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
