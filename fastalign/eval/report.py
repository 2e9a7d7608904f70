"""The evaluation report: report.html showing the figures, the summary and the statistics, with
summary.json beside it; :func:`write_json`, the one writer of the evaluation's JSON files.

The page is one self-contained HTML file: inline CSS, no scripts, no fonts or anything else from the
network, figures linked by relative paths inside the report folder, so it opens offline and the folder
can be moved or archived whole. Every text that comes from data (model, layer and ROI names, table
cells, JSON keys) is HTML-escaped. Files are written atomically (a temp file beside each, renamed over
it), figures first and report.html last, so the page never links a file that is not there yet.

:func:`save_figure` writes a matplotlib figure as PNG and SVG; :mod:`fastalign.plotting` draws the figures
(this module does not import it: eval sits below plotting).
"""

from __future__ import annotations

import csv
import html
import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import fastalign
from fastalign.data._io import atomic_write, atomic_write_text, read_json_object

#: Formats :func:`save_figure` writes.
FIGURE_FORMATS: tuple[str, ...] = ("png", "svg", "pdf")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_SHOWN = (".png", ".svg", ".jpg", ".jpeg", ".gif", ".webp")

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 72em; padding: 0 1em; color: #111; line-height: 1.4; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: .9em; }
th, td { border: 1px solid #bbb; padding: .2em .6em; text-align: left; vertical-align: top; }
th { background: #eee; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { font-size: .9em; color: #333; } .note { color: #555; font-size: .9em; }
"""


# ---------------------------------------------------------------------------------------------- figures


def save_figure(
    figure: Any, path: str | os.PathLike[str], *, formats: Sequence[str] = ("png", "svg"), dpi: int = 200
) -> list[str]:
    """Writes a matplotlib figure to ``path.<format>`` for each format, each file atomically.

    Args:
        figure: a :class:`matplotlib.figure.Figure`.
        path: the files' path without extension (``report/figures/rsa``).
        formats: any of :data:`FIGURE_FORMATS`.
        dpi: resolution of raster formats.

    Returns:
        The paths written, in ``formats`` order.

    Raises:
        TypeError: ``figure`` has no ``savefig``.
        ValueError: an unknown or repeated format, or ``path`` ending in a format's extension.
    """
    fn = "save_figure"
    if not callable(getattr(figure, "savefig", None)):
        raise TypeError(f"{fn}: figure must be a matplotlib Figure, got {type(figure).__name__}")
    if isinstance(formats, str) or not formats or any(f not in FIGURE_FORMATS for f in formats):
        raise ValueError(f"{fn}: formats must be a non-empty sequence from {FIGURE_FORMATS}, got {formats!r}")
    if len(set(formats)) != len(formats):
        raise ValueError(f"{fn}: formats must not repeat, got {formats!r}")
    if not isinstance(dpi, int) or isinstance(dpi, bool) or dpi < 1:
        raise ValueError(f"{fn}: dpi must be an int >= 1, got {dpi!r}")
    stem = os.fspath(path)
    if os.path.splitext(stem)[1].lower().lstrip(".") in FIGURE_FORMATS:
        raise ValueError(f"{fn}: path must not have an extension (formats adds them), got {stem!r}")
    import matplotlib

    def writer(fmt: str) -> Callable[[str], None]:
        meta = {"Date": None} if fmt in ("svg", "pdf") else {}
        return lambda tmp: figure.savefig(tmp, format=fmt, dpi=dpi, metadata=meta)

    # a fixed salt and no date: the same figure gives the same SVG bytes, so reports diff cleanly; text
    # stays text (SVG <text>, PDF TrueType), editable and searchable in a journal's figure files, where
    # matplotlib's defaults draw it as outlines (SVG) or Type 3 fonts (PDF)
    with matplotlib.rc_context({"svg.hashsalt": "fastalign", "svg.fonttype": "none", "pdf.fonttype": 42}):
        return [atomic_write(f"{stem}.{fmt}", writer(fmt)) for fmt in formats]


# ---------------------------------------------------------------------------------------------- JSON


def _jsonable(value: Any, where: str, fn: str = "write_report") -> Any:
    """Plain JSON values: numpy/torch scalars and arrays as numbers and lists, NaN and inf as null."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{where}[{k!r}]", fn) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]", fn) for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if callable(getattr(value, "tolist", None)):  # numpy / torch scalars and arrays
        return _jsonable(value.tolist(), where, fn)
    raise TypeError(
        f"{fn}: {where} must be JSON-able (numbers, strings, lists, dicts), got {type(value).__name__}"
    )


def write_json(path: str | os.PathLike[str], obj: Any, *, fn: str = "write_json", what: str = "obj") -> str:
    """Writes ``obj`` as strict JSON, atomically: the one writer of the evaluation's JSON files
    (summary.json, stats.json, config.json), so that each has one format whoever writes it.

    numpy and torch numbers and arrays become numbers and lists, NaN and infinities null.

    Args:
        path: The file.
        obj: Dicts, lists, numbers, strings, booleans, None.
        fn, what: The calling function and the argument's name, for the error message.

    Returns:
        ``path``.

    Raises:
        TypeError: ``obj`` holds something that is not JSON-able (checked before anything is written).
    """
    text = json.dumps(_jsonable(obj, what, fn), indent=1, allow_nan=False) + "\n"
    return atomic_write_text(os.fspath(path), text)


# ---------------------------------------------------------------------------------------------- HTML


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return f"<td>{'—' if value is None else _e(value)}</td>"
    if isinstance(value, (int, float)):
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        return f'<td class="num">{_e(shown)}</td>'
    if isinstance(value, (Mapping, list, tuple)):  # a cell of a table given by the caller
        return f"<td>{_e(json.dumps(value))}</td>"
    return f"<td>{_e(value)}</td>"


def _table(records: Sequence[Mapping[str, Any]], keys: int = 0, max_rows: int | None = None) -> str:
    """Records as a table; the first ``keys`` columns (a path into a nested dict) have no header."""
    columns = list(dict.fromkeys(k for r in records for k in r))
    shown = records if max_rows is None else records[:max_rows]
    head = "".join(f"<th>{'' if i < keys else _e(c)}</th>" for i, c in enumerate(columns))
    body = "".join("<tr>" + "".join(_cell(r.get(c)) for c in columns) + "</tr>" for r in shown)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _is_flat(value: Any) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(_is_scalar(v) for v in value.values())


def _html(value: Mapping[str, Any]) -> str:
    """A JSON object as tables, whatever its nesting.

    The scalars of every nested object form one row, keyed by the path to it below its top-level key
    (the table's heading); a small object of scalars inside such a row is spread over columns
    ("similarity · V1"). Rows of the same depth and columns share a table: summary.json's models ->
    model -> modality -> comparison -> layer -> numbers becomes one table with a row per model,
    modality, comparison and layer. Lists of scalars are joined into one cell; lists of objects
    (stats.json's clusters) are tables of their own.
    """
    groups: dict[tuple[str, int, tuple[str, ...]], list[dict[str, Any]]] = {}
    lists: list[tuple[tuple[str, ...], list[Any]]] = []

    def walk(node: Mapping[str, Any], path: tuple[str, ...]) -> None:
        row: dict[str, Any] = {}
        for k, v in node.items():
            if _is_scalar(v):
                row[k] = v
            elif isinstance(v, list) and all(_is_scalar(x) for x in v):
                row[k] = ", ".join("—" if x is None else str(x) for x in v)
        spread = [k for k, v in node.items() if row and _is_flat(v)]
        for k in spread:
            row.update({f"{k} · {sub}": x for sub, x in node[k].items()})
        if row:
            keyed = {f"\0{i}": p for i, p in enumerate(path[1:])}
            groups.setdefault((path[0] if path else "", len(path), tuple(row)), []).append({**keyed, **row})
        for k, v in node.items():
            if isinstance(v, Mapping) and k not in spread:
                walk(v, (*path, k))
            elif isinstance(v, list) and not all(_is_scalar(x) for x in v):
                lists.append(((*path, k), v))

    walk(value, ())
    parts, seen = [], {""}
    for (top, depth, _), records in groups.items():
        parts.append(("" if top in seen else f"<h3>{_e(top)}</h3>") + _table(records, keys=max(depth - 1, 0)))
        seen.add(top)
    for path, items in lists:
        heading = f"<h3>{_e(' › '.join(path))}</h3>"
        if all(isinstance(x, Mapping) for x in items):
            parts.append(heading + _table(items))
        else:
            parts.append(heading + f"<pre>{_e(json.dumps(items, indent=1))}</pre>")
    return "".join(parts) or '<p class="note">(empty)</p>'


def _figure_files(fn: str, out_dir: str, name: str, figure: Any) -> list[str]:
    """The figure's files, relative to ``out_dir``; a Figure is saved to figures/<name>.png/.svg first."""
    if callable(getattr(figure, "savefig", None)):
        paths = save_figure(figure, os.path.join(out_dir, "figures", name))
    else:
        items = [figure] if isinstance(figure, (str, os.PathLike)) else figure
        if (
            not isinstance(items, Sequence)
            or not items
            or not all(isinstance(p, (str, os.PathLike)) for p in items)
        ):
            raise TypeError(
                f"{fn}: figures[{name!r}] must be a matplotlib Figure, a file path or a list of paths, "
                f"got {type(figure).__name__}"
            )
        paths = [os.fspath(p) for p in items]
    root = os.path.realpath(out_dir)
    rel = []
    for p in paths:
        full = os.path.realpath(p if os.path.isabs(p) else os.path.join(out_dir, p))
        if os.path.commonpath([root, full]) != root:
            raise ValueError(f"{fn}: figures[{name!r}] file {p!r} is outside the report folder {out_dir!r}")
        if not os.path.isfile(full):
            raise FileNotFoundError(f"{fn}: figures[{name!r}] file {p!r} does not exist")
        rel.append(os.path.relpath(full, root).replace(os.sep, "/"))
    return rel


def _figure_html(name: str, files: list[str]) -> str:
    shown = next((f for f in files if f.lower().endswith(_SHOWN)), None)
    links = " · ".join(f'<a href="{_e(f)}">{_e(f.rsplit(".", 1)[-1].upper())}</a>' for f in files)
    img = f'<img src="{_e(shown)}" alt="{_e(name)}">' if shown else ""
    return f'<figure id="fig-{_e(name)}">{img}<figcaption>{_e(name)} — {links}</figcaption></figure>'


def _table_rows(fn: str, name: str, table: Any, out_dir: str) -> tuple[list[Mapping[str, Any]], str | None]:
    """(rows, the CSV's link or None) of a table given as rows or as a CSV path."""
    if isinstance(table, (str, os.PathLike)):
        path = os.fspath(table)
        full = path if os.path.isabs(path) else os.path.join(out_dir, path)
        if not os.path.isfile(full):
            raise FileNotFoundError(f"{fn}: tables[{name!r}] file {path!r} does not exist")
        with open(full, newline="", encoding="utf-8") as f:
            rows: list[Any] = list(csv.DictReader(f))
        inside = os.path.commonpath([os.path.realpath(out_dir), os.path.realpath(full)]) == os.path.realpath(
            out_dir
        )
        return rows, os.path.relpath(full, out_dir).replace(os.sep, "/") if inside else None
    if (
        isinstance(table, Sequence)
        and not isinstance(table, (str, bytes))
        and all(isinstance(r, Mapping) for r in table)
    ):
        link = f"{name}.csv" if os.path.isfile(os.path.join(out_dir, f"{name}.csv")) else None
        return list(table), link
    raise TypeError(
        f"{fn}: tables[{name!r}] must be a list of row dicts or a CSV path, got {type(table).__name__}"
    )


def write_report(
    out_dir: str | os.PathLike[str],
    tables: Mapping[str, Any] | None = None,
    stats: Mapping[str, Any] | None = None,
    summary: Mapping[str, Any] | str | os.PathLike[str] | None = None,
    figures: Mapping[str, Any] | None = None,
    *,
    title: str = "fastalign evaluation",
    max_rows: int = 200,
) -> str:
    """Writes ``out_dir/report.html``, and ``out_dir/summary.json`` when ``summary`` is a dict.

    Args:
        out_dir: the report folder (created if missing).
        tables: name -> rows (list of dicts) or a CSV path (relative to ``out_dir`` or absolute), e.g.
            ``{"results": "results.csv", "robustness": rows}``; each shown as a table of its first
            ``max_rows`` rows, linked to ``<name>.csv`` in ``out_dir`` when that file exists.
        stats: the contents of stats.json (clusters, ROI tests, settings), shown as tables.
        summary: headline numbers, shown first: a dict, written to summary.json (NaN and inf as null,
            by :func:`write_json`), or the path of a JSON file already written (``"summary.json"``,
            relative to ``out_dir`` or absolute), read and not written again; None shows none.
        figures: name -> a matplotlib Figure (saved as ``figures/<name>.png`` and ``.svg``) or the path(s)
            of figure files already inside ``out_dir``; names are file names (letters, digits, ``_.-``).
        title: the page's title.
        max_rows: rows shown per table.

    Returns:
        The path of report.html.

    Raises:
        TypeError: a value of the wrong kind (a figure that is neither a Figure nor paths, a summary
            that is not JSON-able).
        ValueError: a figure name that is not a file name, a figure file outside ``out_dir``.
        FileNotFoundError: a figure, table or summary file that does not exist.
        ValueError: a summary file that is not a JSON object.
    """
    fn = "write_report"
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"{fn}: out_dir must be a folder path, got {type(out_dir).__name__}")
    for arg, value in (("tables", tables), ("stats", stats), ("figures", figures)):
        if value is not None and not isinstance(value, Mapping):
            raise TypeError(f"{fn}: {arg} must be None or a dict, got {type(value).__name__}")
    if summary is not None and not isinstance(summary, (Mapping, str, os.PathLike)):
        raise TypeError(
            f"{fn}: summary must be None, a dict or the path of a JSON file, got {type(summary).__name__}"
        )
    if not isinstance(max_rows, int) or isinstance(max_rows, bool) or max_rows < 0:
        raise ValueError(f"{fn}: max_rows must be an int >= 0, got {max_rows!r}")
    out = os.fspath(out_dir)
    os.makedirs(out, exist_ok=True)
    for name in figures or {}:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(
                f"{fn}: figure names must be file names (letters, digits, '_', '.', '-'), got {name!r}"
            )
    summary_json = _summary(fn, summary, out)
    stats_json = _jsonable(dict(stats or {}), "stats")
    # every table is read before any figure is saved: a bad table leaves the folder as it was
    table_html = []
    for name, table in (tables or {}).items():
        rows, link = _table_rows(fn, str(name), table, out)
        note = f"{len(rows)} rows" + (f", first {max_rows} shown" if len(rows) > max_rows else "")
        if link:
            note += f' — <a href="{_e(link)}">{_e(link)}</a>'
        body = _table(_jsonable(rows, f"tables[{name!r}]"), max_rows=max_rows) if rows else ""
        table_html.append(f'<h3>{_e(name)}</h3><p class="note">{note}</p>{body}')
    figure_html = [_figure_html(n, _figure_files(fn, out, n, f)) for n, f in (figures or {}).items()]
    sections = {"summary": ("Summary", _html(summary_json))}
    if figure_html:
        sections["figures"] = ("Figures", "".join(figure_html))
    if stats_json:
        sections["statistics"] = ("Statistics", _html(stats_json))
    if table_html:
        sections["tables"] = ("Tables", "".join(table_html))
    nav = " · ".join(f'<a href="#{anchor}">{heading}</a>' for anchor, (heading, _) in sections.items())
    body = "".join(
        f'<section id="{anchor}"><h2>{heading}</h2>{html_}</section>'
        for anchor, (heading, html_) in sections.items()
    )
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f'<h1>{_e(title)}</h1><p class="note">fastalign {_e(fastalign.__version__)} · '
        "summary.json beside this page</p>"
        f"<nav>{nav}</nav>{body}</body></html>\n"
    )
    if isinstance(summary, Mapping):
        write_json(os.path.join(out, "summary.json"), summary_json, fn=fn, what="summary")
    return atomic_write_text(os.path.join(out, "report.html"), page)


def _summary(fn: str, summary: Mapping[str, Any] | str | os.PathLike[str] | None, out: str) -> dict[str, Any]:
    """The summary as plain JSON values: the dict given, or the JSON file's object."""
    if summary is None or isinstance(summary, Mapping):
        return _jsonable(dict(summary or {}), "summary", fn)
    path = os.fspath(summary)
    return read_json_object(path if os.path.isabs(path) else os.path.join(out, path), f"{fn}: summary file")
