"""benchmarks/study.py, which writes the studies' JSON (benchmarks/results/studies/): each file records
the provenance every benchmark result file carries (harness.environment: commit, device, versions)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from types import ModuleType

import pytest
import torch
from bench_scripts import BENCHMARKS, load_script

from fastalign.train.distributed import default_device, planned


@pytest.fixture(scope="module")
def study() -> Iterator[ModuleType]:
    saved = list(sys.path)
    sys.path.insert(0, str(BENCHMARKS))  # a study script imports study as its sibling, and study harness
    try:
        yield load_script(BENCHMARKS / "study.py", "_study")
    finally:
        sys.path[:] = saved


def test_a_study_records_the_provenance_of_the_device_its_runs_used(study: ModuleType) -> None:
    """evaluate-synthetic.json lacked the commit and the device; the writer named the CPU whatever device
    align, decode and evaluate ran on (CUDA where there is one)."""
    out = study.record("demo", {"a": 1}, {"seconds": {"total": 1.0}}, "| table |", 0.5)
    assert {k: out[k] for k in ("study", "settings", "results", "table")} == {
        "study": "demo", "settings": {"a": 1}, "results": {"seconds": {"total": 1.0}}, "table": "| table |"
    }  # fmt: skip
    harness = sys.modules["harness"]
    env = out["environment"]
    expected = harness.environment(str(default_device(planned())))
    assert set(expected) | {"machine", "load_avg_before_after"} == set(env)
    for key in ("device", "device_slug", "torch", "cuda", "triton", "python", "threads", "cpu_capability"):
        assert env[key] == expected[key], key
    assert env["load_avg_before_after"][0] == 0.5
    if not torch.cuda.is_available():
        assert env["device"] == harness.device_name("cpu")
