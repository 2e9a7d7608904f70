"""Hypothesis profiles, markers and shared fixtures.

Without a CUDA device, Triton kernels are interpreted on CPU tensors: TRITON_INTERPRET must be set
before any module that defines a kernel is imported, hence here, before fastalign.

The tests are of the fastalign that is installed: this tree's own in a development install (``pip
install -e``, the extension built in place), a wheel's when they run from an unpacked sdist beside the
wheel made from it. There the tree's fastalign/ (its sources, without the compiled extension) must not
shadow the wheel: ``python -m pytest`` puts the working directory first on sys.path, so the tree is taken
off it before fastalign is first imported (pytest_configure), and a test that starts Python (``python -m
fastalign``, ``python -c``, which put the working directory first too) runs it in tmp_path, not in the
tree. The report's header names the fastalign tested and whether its extension loads.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
from aligned_runs import AlignedRuns, make_aligned_runs
from filelock import FileLock
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parent.parent


def _installed_elsewhere() -> bool:
    """Whether a distribution of fastalign holds the package outside this tree (a wheel's, in
    site-packages). An editable install lists no package files, and an unpacked sdist's own
    fastalign.egg-info lists the tree's."""
    for dist in importlib.metadata.distributions(name="fastalign"):
        for file in dist.files or ():
            if file.as_posix() == "fastalign/__init__.py":
                if Path(file.locate()).resolve().parent.parent != ROOT:
                    return True
    return False


def pytest_configure(config: pytest.Config) -> None:
    # before any fastalign import: test modules are imported at collection, after this
    if "fastalign" not in sys.modules and _installed_elsewhere():
        sys.path[:] = [p for p in sys.path if Path(p or os.curdir).resolve() != ROOT]
    from fastalign.train import keep_freed_memory

    # As the fastalign program does (fastalign.cli.entry, docs/training.md): large blocks freed by one CPU
    # training step are reused by the next instead of being mapped and zeroed again (the suite on a 2-core
    # machine: 335 -> 267 s, most of it in the ReAlnet runs).
    keep_freed_memory()


def pytest_report_header(config: pytest.Config) -> str:
    """Which fastalign the session tests, and whether its compiled extension loads."""
    import fastalign
    from fastalign import _ext

    why = _ext.why_unavailable()
    loads = "extension loaded" if why is None else f"no extension ({why})"
    return f"fastalign {fastalign.__version__} from {Path(fastalign.__file__).parent}: {loads}"


settings.register_profile(
    "ci", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.register_profile("dev", max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=300, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def _triton_ok() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


@pytest.fixture(scope="session")
def triton_device() -> str:
    """The device Triton tests run on: cuda when present, else cpu through the interpreter."""
    if not _triton_ok():
        pytest.skip("triton is not installed")
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request: pytest.FixtureRequest) -> str:
    """Every available device; cuda cases skip on CPU-only machines."""
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return str(request.param)


@pytest.fixture(scope="session")
def aligned_runs(tmp_path_factory: pytest.TempPathFactory) -> AlignedRuns:
    """The shared synthetic brain and its ReAlnet runs (see tests/aligned_runs.py), made once per session
    even across pytest-xdist workers: tests read them and never write into them."""
    shared = tmp_path_factory.getbasetemp().parent  # the same folder for every xdist worker
    folder = shared / "aligned_runs"
    with FileLock(str(shared / "aligned_runs.lock")):
        folder.mkdir(exist_ok=True)
        return make_aligned_runs(folder)
