"""The benchmark scripts and the noxfile of this tree loaded as modules, for the tests of their checks
and helpers (a script's top level runs: imports and constants, not its main)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def load_script(path: Path, name: str) -> ModuleType:
    """The Python file at ``path`` as a module called ``name``, registered in sys.modules as importlib's
    recipe does (a dataclass's string annotations are resolved through it: bench_evaluate.py's); sys.path
    is left as it was (a bench script puts benchmarks/ on it for its harness). A file already loaded under
    ``name`` is that module: loading the noxfile again registered its sessions twice, which nox warns
    will become an error."""
    known = sys.modules.get(name)
    if known is not None and getattr(known, "__file__", None) == str(path):
        return known
    saved = list(sys.path)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    finally:
        sys.path[:] = saved
    return module
