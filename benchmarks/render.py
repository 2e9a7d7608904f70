"""Renders benchmarks/results/*.json into markdown tables inside docs/benchmarks.md.

Each benchmark's tables go between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` in that page;
the columns are the ``meta.columns`` ([key, header] pairs) that the benchmark saved with its rows.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
TARGET = os.path.join(HERE, os.pardir, "docs", "benchmarks.md")


# A range of two non-negative numbers as a script wrote it, e.g. a p20-p80 spread "4.226e+04-4.462e+04".
_RANGE = re.compile(r"(\d+(?:\.\d+)?(?:e[+-]?\d+)?)-(\d+(?:\.\d+)?(?:e[+-]?\d+)?)")


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, str) and (m := _RANGE.fullmatch(v)):
        # each end as a number column shows it (42,262-44,620, not 4.226e+04-4.462e+04)
        return f"{_fmt(float(m[1]))}-{_fmt(float(m[2]))}"
    return str(v)


def table(doc: dict[str, Any]) -> str:
    """One markdown table (with a provenance line) for one result file."""
    env = doc["environment"]
    cols = doc["meta"].get("columns") or [[k, k] for k in doc["rows"][0]]
    out = [
        f"*{env['device']}*, torch {env['torch']}, triton {env['triton']}, commit `{env['commit']}`, "
        f"{env['date'][:10]}",
        "",
        "| " + " | ".join(h for _, h in cols) + " |",
        "|" + "---|" * len(cols),
    ]
    out += ["| " + " | ".join(_fmt(r.get(k)) for k, _ in cols) + " |" for r in doc["rows"]]
    return "\n".join(out)


def load_results(directory: str = RESULTS) -> dict[str, list[dict[str, Any]]]:
    """The result files of ``directory`` grouped by benchmark name, each group in file-name order."""
    docs: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
        with open(path) as f:
            doc = json.load(f)
        docs.setdefault(doc["benchmark"], []).append(doc)
    return docs


def render(text: str, results: dict[str, list[dict[str, Any]]]) -> tuple[str, list[str]]:
    """``text`` with every benchmark's tables between its markers, and the benchmarks without markers."""
    missing = []
    for name, group in results.items():
        start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
        if start not in text:
            missing.append(name)
            continue
        block = start + "\n" + "\n\n".join(table(d) for d in group) + "\n" + end
        # A function replacement: the tables' text is inserted as is, never read as a regex template.
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _, new=block: new, text, flags=re.S)
    return text, missing


def main() -> int:
    with open(TARGET) as f:
        text, missing = render(f.read(), load_results())
    for name in missing:
        print(f"{TARGET} has no <!-- bench:{name} --> marker; skipped {name}", file=sys.stderr)
    tmp = TARGET + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, TARGET)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
