"""noxfile.py's benchmarks session: ``--device`` reaches only the scripts whose parser takes it."""

from __future__ import annotations

from types import ModuleType

import pytest
from bench_scripts import ROOT, load_script


@pytest.fixture(scope="module")
def noxfile() -> ModuleType:
    pytest.importorskip("nox")
    return load_script(ROOT / "noxfile.py", "_noxfile")


def test_device_goes_only_to_scripts_that_take_it(noxfile: ModuleType) -> None:
    assert noxfile.script_args(["--quick", "--device", "cuda", "--x"], {"--quick"}) == ["--quick", "--x"]
    assert noxfile.script_args(["--device=cuda", "--quick"], set()) == ["--quick"]
    assert noxfile.script_args(["--device", "cuda"], {"--device"}) == ["--device", "cuda"]


def test_script_flags_are_read_from_the_parsers(noxfile: ModuleType) -> None:
    flags = {p.stem: noxfile.script_flags(str(p)) for p in (ROOT / "benchmarks").glob("bench_*.py")}
    assert {"--device", "--name", "--quick"} <= flags["bench_demo"]
    assert all("--quick" in f for f in flags.values())
