"""Renders benchmarks/results/*.json into markdown tables inside README.md.

Each benchmark's tables go between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` in the README;
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
README = os.path.join(HERE, os.pardir, "README.md")


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
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


def main() -> int:
    docs: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(glob.glob(os.path.join(HERE, "results", "*.json"))):
        with open(path) as f:
            doc = json.load(f)
        docs.setdefault(doc["benchmark"], []).append(doc)
    with open(README) as f:
        text = f.read()
    for name, group in docs.items():
        start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
        if start not in text:
            print(f"README has no {start} marker; skipped {name}", file=sys.stderr)
            continue
        body = "\n\n".join(table(d) for d in group)
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), f"{start}\n{body}\n{end}", text, flags=re.S)
    tmp = README + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, README)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
