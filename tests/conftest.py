"""Hypothesis profiles, markers and shared fixtures.

Without a CUDA device, Triton kernels are interpreted on CPU tensors: TRITON_INTERPRET must be set
before any module that defines a kernel is imported, hence here, before fastalign.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
from aligned_runs import AlignedRuns, make_aligned_runs
from filelock import FileLock
from hypothesis import HealthCheck, settings

from fastalign.train import keep_freed_memory

# As the fastalign program does (fastalign.cli.entry, docs/training.md): large blocks freed by one CPU
# training step are reused by the next instead of being mapped and zeroed again (the suite on a 2-core
# machine: 335 -> 267 s, most of it in the ReAlnet runs).
keep_freed_memory()

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
