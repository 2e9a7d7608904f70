"""report.html: shows the figures, summary, statistics and tables, works offline, escapes data."""

from __future__ import annotations

import json
import math
import os
from html.parser import HTMLParser

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fastalign.eval.report import save_figure, write_report

EVIL = "<script>alert('x')</script>"
_VOID = {"meta", "img", "br", "hr", "link", "input"}


class _Page(HTMLParser):
    """Tags, every linked resource, the text, and whether the tags nest properly."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[str] = []
        self.links: list[tuple[str, str]] = []
        self.text: list[str] = []
        self.balanced = True

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append(tag)
        self.links += [(k, v) for k, v in attrs if k in ("src", "href", "srcset", "data", "action")]
        if tag not in _VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack.pop() != tag:
            self.balanced = False

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(path: str) -> _Page:
    page = _Page()
    with open(path, encoding="utf-8") as f:
        page.feed(f.read())
    page.close()
    assert page.balanced and not page.stack
    return page


def _figure() -> Figure:
    fig = Figure(figsize=(2, 1.5))
    FigureCanvasAgg(fig)
    fig.subplots().plot([0, 1], [1, 0])
    return fig


def test_report_shows_everything_and_links_only_files_inside_the_folder(tmp_path: os.PathLike) -> None:
    out = os.path.join(tmp_path, "report")
    rows = [{"model": EVIL, "attack": "fgsm", "eps": 0.0, "accuracy": 0.75, "relative_accuracy": 1.0}]
    stats = {
        "clusters": [
            {"model": EVIL, "layer": "V1", "test": "vs0", "t_start": 0.1, "t_stop": 0.2, "p": 0.001}
        ],
        "permutations": 1024,
        "exact": True,
    }
    summary = {"cornet_s": {"V1": {"peak": np.float32(0.25), "latency_ms": np.int64(120)}}, EVIL: math.nan}
    path = write_report(out, {"robustness": rows}, stats, summary, {"rsa": _figure()})
    assert path == os.path.join(out, "report.html")
    page = _parse(path)
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    text = "".join(page.text)
    assert text.count(EVIL) == 3  # the model name in the table and the stats, the summary key: as text
    with open(path, encoding="utf-8") as f:
        raw = f.read()
    assert "<script>" not in raw and "&lt;script&gt;" in raw
    assert "http:" not in raw and "https:" not in raw and "url(" not in raw
    files = sorted(v for k, v in page.links if not v.startswith("#"))
    assert files == ["figures/rsa.png", "figures/rsa.png", "figures/rsa.svg"]  # img src + two links
    for f in files:
        assert os.path.isfile(os.path.join(out, f))
    anchors = {v[1:] for k, v in page.links if v.startswith("#")}
    assert anchors == {"summary", "figures", "statistics", "tables"} and all(
        f'id="{a}"' in raw for a in anchors
    )
    for shown in ("0.25", "120", "1024", "0.75", "fgsm", "peak", "latency_ms", "t_start"):
        assert shown in page.text, shown
    with open(os.path.join(out, "summary.json"), encoding="utf-8") as f:
        assert json.load(f) == {"cornet_s": {"V1": {"peak": 0.25, "latency_ms": 120}}, EVIL: None}


class _Tables(HTMLParser):
    """Each table's rows as lists of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.in_cell = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.tables[-1][-1].append("")
            self.in_cell = True

    def handle_endtag(self, tag: str) -> None:
        self.in_cell = self.in_cell and tag not in ("td", "th")

    def handle_data(self, data: str) -> None:
        if self.in_cell:
            self.tables[-1][-1][-1] += data


def test_nested_summaries_become_one_table_per_level(tmp_path: os.PathLike) -> None:
    numbers = {"peak_similarity": 0.5, "peak_time": 0.12}
    summary = {
        "baseline": "cornet_s",
        "n_subjects": {"eeg": 10},
        "models": {
            "cornet_s": {"layers": ["V1", "IT"], "eeg": {"none": {"V1": numbers, "IT": numbers}}},
            "realnet": {"layers": ["V1"], "eeg": {"within": {"V1": {**numbers, "mean_gain": 0.1}}},
                        "fmri": {"within": {"V1": {"n_subjects": 3, "similarity": {"LOC": 0.2, "V1": 0.4}}}}},
        },
    }  # fmt: skip
    parser = _Tables()
    with open(write_report(str(tmp_path), summary=summary), encoding="utf-8") as f:
        parser.feed(f.read())
    assert parser.tables == [
        [["baseline", "n_subjects · eeg"], ["cornet_s", "10"]],
        [["", "layers"], ["cornet_s", "V1, IT"], ["realnet", "V1"]],
        [["", "", "", "", "peak_similarity", "peak_time"],
         ["cornet_s", "eeg", "none", "V1", "0.5", "0.12"], ["cornet_s", "eeg", "none", "IT", "0.5", "0.12"]],
        [["", "", "", "", "peak_similarity", "peak_time", "mean_gain"],
         ["realnet", "eeg", "within", "V1", "0.5", "0.12", "0.1"]],
        [["", "", "", "", "n_subjects", "similarity · LOC", "similarity · V1"],
         ["realnet", "fmri", "within", "V1", "3", "0.2", "0.4"]],
    ]  # fmt: skip


def test_figures_given_as_saved_files_and_tables_as_csv(tmp_path: os.PathLike) -> None:
    out = str(tmp_path)
    saved = save_figure(_figure(), os.path.join(out, "plots", "curve"))
    with open(os.path.join(out, "results.csv"), "w", encoding="utf-8") as f:
        f.write("model,layer,similarity\n" + "".join(f"m{i},V1,0.{i}\n" for i in range(5)))
    path = write_report(out, tables={"results": "results.csv"}, figures={"curve": saved}, max_rows=3)
    page = _parse(path)
    srcs = [v for k, v in page.links if k == "src"]
    hrefs = [v for k, v in page.links if k == "href" and not v.startswith("#")]
    assert srcs == ["plots/curve.png"] and hrefs == ["plots/curve.png", "plots/curve.svg", "results.csv"]
    text = "".join(page.text)
    assert "5 rows, first 3 shown" in text and "m2" in text and "m3" not in text
    with pytest.raises(
        ValueError, match=r"write_report: figures\['x'\] file .* is outside the report folder"
    ):
        write_report(os.path.join(out, "plots"), figures={"x": saved[0].replace("plots", "..")})
    with pytest.raises(
        FileNotFoundError, match=r"write_report: figures\['x'\] file 'nope.png' does not exist"
    ):
        write_report(out, figures={"x": "nope.png"})


def test_a_failed_write_leaves_the_old_report(tmp_path: os.PathLike) -> None:
    out = str(tmp_path)
    write_report(out, summary={"a": 1})
    before = {n: open(os.path.join(out, n), "rb").read() for n in ("report.html", "summary.json")}
    with pytest.raises(TypeError, match=r"write_report: summary\['bad'\] must be JSON-able"):
        write_report(out, summary={"bad": object()})
    with pytest.raises(FileNotFoundError, match=r"write_report: tables\['t'\] file"):
        write_report(out, tables={"t": "missing.csv"}, figures={"f": _figure()})
    assert {n: open(os.path.join(out, n), "rb").read() for n in before} == before
    assert sorted(os.listdir(out)) == ["report.html", "summary.json"]  # no temp files, no figure saved


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"figures": {"../x": "a.png"}}, ValueError, "write_report: figure names must be file names"),
        ({"figures": {"x": 3}}, TypeError, r"write_report: figures\['x'\] must be a matplotlib Figure"),
        ({"tables": {"t": 3}}, TypeError, r"write_report: tables\['t'\] must be a list of row dicts"),
        ({"stats": [1]}, TypeError, "write_report: stats must be None or a dict, got list"),
        ({"max_rows": -1}, ValueError, "write_report: max_rows must be an int >= 0"),
    ],
)
def test_bad_arguments_are_refused(tmp_path: os.PathLike, kwargs: dict, error: type, words: str) -> None:
    with pytest.raises(error, match=words):
        write_report(str(tmp_path), **kwargs)


def test_summary_json_has_one_writer(tmp_path: os.PathLike) -> None:
    """EvalResult.write (evaluate) and write_report both wrote summary.json, in two formats and with two
    notions of JSON (numpy numbers failed in one of them), so its bytes depended on which ran last. Both
    now write through write_json; a summary already written is given to write_report as its path, read
    and shown, and not written again; None writes nothing."""
    from fastalign.eval import EvalResult

    summary = {
        "models": {
            "m": {"eeg": {"none": {"IT": {"peak_similarity": np.float32(0.5), "peak_time": math.nan}}}}
        }
    }
    evaluated, reported = os.path.join(tmp_path, "a"), os.path.join(tmp_path, "b")
    EvalResult([], {"clusters": []}, summary, []).write(evaluated)
    write_report(reported, summary=summary)
    with open(os.path.join(evaluated, "summary.json"), "rb") as f:
        written = f.read()
    with open(os.path.join(reported, "summary.json"), "rb") as f:
        assert f.read() == written
    assert json.loads(written)["models"]["m"]["eeg"]["none"]["IT"] == {
        "peak_similarity": 0.5,
        "peak_time": None,
    }
    before = os.stat(os.path.join(evaluated, "summary.json"))
    page = _parse(write_report(evaluated, summary="summary.json"))
    assert "peak_similarity" in page.text and "0.5" in page.text
    write_report(evaluated)
    after = os.stat(os.path.join(evaluated, "summary.json"))
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    with pytest.raises(FileNotFoundError, match=r"write_report: summary file: no file at '.*nope\.json'"):
        write_report(evaluated, summary="nope.json")
    with pytest.raises(
        ValueError, match=r"write_report: summary file: '.*stats\.json' must hold a JSON object"
    ):
        with open(os.path.join(evaluated, "stats.json"), "w") as f:
            f.write("[1]")
        write_report(evaluated, summary="stats.json")
