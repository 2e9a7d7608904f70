"""The README and docs/ as tests: their Python runs, their links resolve, their maps match the code.

Every ```python block of a page runs, in page order, in one namespace per page, in a temporary working
directory (``tempfile`` writes there too). Each block is its own test so that a slow page (CORnet-S) does
not make one slow test; a block run on its own first runs the blocks above it. Shell commands and output
are ```bash and ```text blocks and are not run, so a block that needs a GPU or real data must not be
```python. A ```text block right after a ```python block (blank lines between at most) is that block's
output: what the block prints must be that text, so a page cannot show results its code no longer gives.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import fastalign  # noqa: F401  (imported at collection, as by every test module: a block's time is its own)

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
FENCE = re.compile(r"^```(.*)$")
LANGUAGES = ("python", "bash", "text")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the block's first code line
    lang: str
    code: str
    output: str | None = None  # a python block's printed output: the ```text block right after it

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a markdown page, in order."""
    out: list[Block] = []
    ends: list[int] = []  # each block's closing fence line
    lang: str | None = None
    start, lines = 0, []
    page_lines = page.read_text().splitlines()
    for i, text in enumerate(page_lines, start=1):
        m = FENCE.match(text)
        if lang is None:
            if m:
                lang, start, lines = m.group(1).strip(), i + 1, []
        elif m and not m.group(1).strip():
            out.append(Block(page, start, lang, "\n".join(lines) + "\n"))
            ends.append(i)
            lang = None
        else:
            lines.append(text)
    assert lang is None, f"{page.relative_to(ROOT)}: the block opened at line {start - 1} is never closed"
    for k in range(len(out) - 1):
        a, b = out[k], out[k + 1]
        between = page_lines[ends[k] : b.line - 2]  # lines after a's closing fence, before b's opening one
        if a.lang == "python" and b.lang == "text" and not any(line.strip() for line in between):
            out[k] = Block(a.page, a.line, a.lang, a.code, b.code)
    return out


PYTHON = [b for page in PAGES for b in blocks(page) if b.lang == "python"]
# CORnet-S's page builds the 53 M-parameter model and its fused module: seconds whatever the input size.
SLOW_PAGES = ("models.md",)


@dataclass
class _PageRun:
    """One page's namespace and how many of its Python blocks have run in it."""

    workdir: Path
    namespace: dict[str, Any] = field(default_factory=lambda: {"__name__": "__main__"})
    done: int = 0
    failed: str | None = None


_RUNS: dict[Path, _PageRun] = {}


def _exec(block: Block, run: _PageRun) -> None:
    # Leading newlines put tracebacks on the page's own line numbers.
    code = compile("\n" * (block.line - 1) + block.code, str(block.page.relative_to(ROOT)), "exec")
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            exec(code, run.namespace)
    except BaseException:
        run.failed = block.name
        raise
    if block.output is not None and printed.getvalue() != block.output:
        run.failed = block.name
        raise AssertionError(
            f"{block.name} prints other than the ```text block after it shows:\n--- page\n{block.output}"
            f"--- printed\n{printed.getvalue()}"
        )


def test_pages_exist() -> None:
    names = {p.name for p in DOCS.glob("*.md")}
    assert {"losses.md", "rsa.md", "models.md", "data.md", "benchmarks.md", "reliability.md"} <= names
    assert "architecture.md" in names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_fences_name_a_known_language(page: Path) -> None:
    """An unlabelled or ```py block would silently escape execution."""
    bad = [f"{b.name} ```{b.lang}" for b in blocks(page) if b.lang not in LANGUAGES]
    assert not bad, f"fences must be one of {LANGUAGES}: {bad}"


@pytest.mark.parametrize(
    "block",
    [
        pytest.param(b, id=b.name, marks=[pytest.mark.slow] if b.page.name in SLOW_PAGES else [])
        for b in PYTHON
    ],
)
def test_python_block_runs(
    block: Block, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    if block.page not in _RUNS:
        _RUNS[block.page] = _PageRun(tmp_path_factory.mktemp(block.page.stem))
    run = _RUNS[block.page]
    monkeypatch.chdir(run.workdir)
    monkeypatch.setattr(tempfile, "tempdir", str(run.workdir))
    page_blocks = [b for b in PYTHON if b.page == block.page]
    index = page_blocks.index(block)
    for earlier in page_blocks[run.done : index + 1]:
        if run.failed is not None:
            pytest.fail(f"{block.name} not run: the block at {run.failed} failed")
        _exec(earlier, run)
        run.done += 1
    if run.done == len(page_blocks):
        # A finished page's models (CORnet-S: about 1 GB with its fused module) and files go now, not at
        # the end of the session.
        run.namespace.clear()
        shutil.rmtree(run.workdir, ignore_errors=True)


def _slug(heading: str) -> str:
    """GitHub's anchor for a markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.*)$", text, flags=re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no heading with that anchor)")
    assert not broken, f"{page.relative_to(ROOT)}: broken links {broken}"


def test_readme_links_every_docs_page() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [p.name for p in DOCS.glob("*.md") if f"(docs/{p.name}" not in readme]
    assert not missing, f"README.md does not link {missing}"


def test_docs_name_no_internal_notes() -> None:
    """The docs describe the project, not where or by whom it was made (runs lack a GPU: say "not yet
    measured on a GPU"); the design notes live in docs/architecture.md, not in an outside DESIGN.md."""
    pattern = re.compile(r"\blent\b|\bDESIGN\.md\b|shared folder|was available", re.I)
    hits = [
        f"{p.relative_to(ROOT)}:{i}: {line.strip()[:80]}"
        for p in PAGES
        for i, line in enumerate(p.read_text().splitlines(), start=1)
        if pattern.search(line)
    ]
    assert not hits, hits


def _render_module() -> Any:
    spec = importlib.util.spec_from_file_location("_bench_render", ROOT / "benchmarks" / "render.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_tables_match_the_results() -> None:
    """docs/benchmarks.md holds every committed result, exactly as render.py renders it."""
    render = _render_module()
    assert Path(render.TARGET).resolve() == DOCS / "benchmarks.md"
    text = (DOCS / "benchmarks.md").read_text()
    results = render.load_results()
    assert results, "benchmarks/results/ holds no result files"
    rendered, missing = render.render(text, results)
    assert not missing, f"docs/benchmarks.md has no <!-- bench:NAME --> marker for {missing}"
    assert rendered == text, "docs/benchmarks.md is stale: run `python benchmarks/render.py`"
    assert "<!-- bench:" not in (ROOT / "README.md").read_text()


def _tree() -> list[str]:
    """Paths named by the tree that opens docs/architecture.md (two spaces of indent per level)."""
    first = blocks(DOCS / "architecture.md")[0]
    assert first.lang == "text", "docs/architecture.md must open with the tree as a ```text block"
    paths: list[str] = []
    stack: list[str] = []
    for line in first.code.splitlines():
        m = re.match(r"^( *)(\S+)", line)
        if not m or not re.fullmatch(r"[\w.-]+/?", m.group(2)):
            continue
        depth = len(m.group(1)) // 2
        if depth > len(stack):  # a description's continuation line, not an entry
            continue
        del stack[depth:]
        path = "".join(stack) + m.group(2)
        paths.append(path)
        if path.endswith("/"):
            stack.append(m.group(2))
    return paths


def test_architecture_tree_matches_the_package() -> None:
    paths = _tree()
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"
    packages = {
        str(d.relative_to(ROOT)) + "/"
        for d in (ROOT / "fastalign").rglob("*")
        if (d / "__init__.py").is_file()
    }
    unlisted = sorted(packages - set(paths))
    assert not unlisted, f"docs/architecture.md's tree lacks the packages {unlisted}"
    shared_core = {str(p.relative_to(ROOT)) for p in (ROOT / "fastalign").glob("_[!_]*.py")}
    assert shared_core <= set(paths), f"the tree lacks the shared core {sorted(shared_core - set(paths))}"


OP_FAMILIES = ("fastalign.contrastive", "fastalign.rsa", "fastalign.norm_act")
# Layers above the op families: what each may not import (pipelines sit above models and data; only the
# command line and the plotting sit on top).
TOP = ("fastalign.cli", "fastalign.plotting")
PIPELINES = ("fastalign.train", "fastalign.eval")


def _imports(package: str, pattern: str = "**/*.py") -> dict[str, set[str]]:
    """fastalign names imported anywhere (functions included) by each module of ``package`` that matches
    ``pattern``."""
    out: dict[str, set[str]] = {}
    for path in (ROOT / package.replace(".", "/")).glob(pattern):
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                # relative imports resolve against the module's own package
                parts = list(path.relative_to(ROOT).with_suffix("").parts)
                base = parts[: len(parts) - node.level] if node.level else []
                module = ".".join([*base, *([node.module] if node.module else [])])
                found |= {f"{module}.{a.name}" for a in node.names}
        out[str(path.relative_to(ROOT))] = {m for m in found if m.split(".")[0] == "fastalign"}
    return out


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _shared_core(module: str) -> bool:
    return module.count(".") > 0 and module.split(".")[1].startswith("_")


def test_import_rules() -> None:
    """The import rules of docs/architecture.md: the shared core (fastalign/_*.py) imports only itself; op
    families use only themselves and the shared core; models/ and data/ never import each other nor
    anything above them; pipelines (train/, eval/) never import the command line or the plotting."""
    broken = []
    for path, mods in _imports("fastalign", "_[!_]*.py").items():
        broken += [f"{path}: {m}" for m in mods if not _shared_core(m)]
    for family in OP_FAMILIES:
        for path, mods in _imports(family).items():
            broken += [f"{path}: {m}" for m in mods if not (_within(m, family) or _shared_core(m))]
    for package, other in (("fastalign.models", "fastalign.data"), ("fastalign.data", "fastalign.models")):
        above = (other, *PIPELINES, *TOP)
        for path, mods in _imports(package).items():
            broken += [f"{path}: {m}" for m in mods if any(_within(m, a) for a in above)]
    for package in PIPELINES:
        if (ROOT / package.replace(".", "/")).is_dir():
            for path, mods in _imports(package).items():
                broken += [f"{path}: {m}" for m in mods if any(_within(m, a) for a in TOP)]
    assert not broken, f"imports that break docs/architecture.md's rules: {broken}"


def test_render_inserts_table_text_verbatim() -> None:
    """A backslash in a table cell is text, not a regex escape or group reference."""
    render = _render_module()
    doc = {
        "benchmark": "x",
        "environment": {"device": "cpu", "torch": "2", "triton": "3", "commit": "abc", "date": "2026-01-01"},
        "meta": {"columns": [["case", "case"]]},
        "rows": [{"case": r"C:\new \1 \d"}],
    }
    page = "intro\n<!-- bench:x -->\nold table\n<!-- /bench:x -->\noutro\n"
    text, missing = render.render(page, {"x": [doc], "y": [doc]})
    assert r"| C:\new \1 \d |" in text and "old table" not in text
    assert text.startswith("intro\n<!-- bench:x -->\n*cpu*") and text.endswith("<!-- /bench:x -->\noutro\n")
    assert missing == ["y"]


def test_render_shows_a_range_as_two_numbers() -> None:
    """A p20-p80 spread that a script wrote with %.4g reads as the number columns do, not in e-notation."""
    fmt = _render_module()._fmt
    assert fmt("4.226e+04-4.462e+04") == "42,260-44,620"
    assert fmt("343.6-407.6") == "344-408" and fmt("47.53-48.95") == "47.5-49"
    assert (
        fmt("2 x 3") == "2 x 3" and fmt("f89286a-dirty") == "f89286a-dirty" and fmt("1.0, 1.3") == "1.0, 1.3"
    )
