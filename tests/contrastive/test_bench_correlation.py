"""benchmarks/bench_correlation.py's equality checks: every row's loss (and gradient) against float64 in the
same run, a row outside its limit fails the run, and the published baseline says which Pearson it ran."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
import torch
from bench_scripts import BENCHMARKS, load_script

SCRIPT = BENCHMARKS / "bench_correlation.py"
QUICK = ["--quick", "--device", "cpu", "--sizes", "5x7", "--reps", "1"]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script(SCRIPT, "_bench_correlation")


@pytest.mark.slow
def test_every_row_is_checked_against_float64(bench: ModuleType) -> None:
    rows, checks = bench.bench("cpu", [(5, 7), (6, 3)], 1, 2**30)
    assert len(rows) == len(checks) == 2 * 8
    for row in rows:
        entry = checks[f"{row['provider']} {row['mode']} B={row['B']} D={row['D']}"]
        assert entry["reference"] == "fastalign reference float64" and row["equal"] and entry["equal"], entry
        outputs = {"loss", "grad"} if row["mode"] == "fwd+bwd" else {"loss"}
        assert set(entry["rel_err"]) == set(entry["limit"]) == outputs
        assert row["abs_err_vs_float64"] == pytest.approx(entry["max_abs_diff"]["loss"])
        assert row.get("grad_rel_err") == entry["rel_err"].get("grad")
    base = checks[f"{bench.PUBLISHED} fwd B=5 D=7"]
    assert base["limit"] == {"loss": 2e-5}
    assert checks["fastalign fwd B=5 D=7"]["limit"] == {"loss": 2 * base["rel_err"]["loss"] + 2e-5}
    # no published gradient: the gradient's limit is the bound
    assert checks["fastalign fwd+bwd B=5 D=7"]["limit"]["grad"] == 2e-5


def test_the_published_baseline_is_torchmetrics_or_labelled_as_its_formula(bench: ModuleType) -> None:
    try:
        import torchmetrics
    except ImportError:
        assert bench.PUBLISHED == "published-formula" and "not installed" in bench.PUBLISHED_PEARSON
        return
    assert bench.PUBLISHED == "published-torchmetrics"
    assert bench.PUBLISHED_PEARSON == f"torchmetrics {torchmetrics.__version__} pearson_corrcoef"
    assert bench._pearson is torchmetrics.functional.pearson_corrcoef


def test_beyond_the_memory_limit_the_torch_backend_in_float64_is_the_oracle(bench: ModuleType) -> None:
    g = torch.Generator().manual_seed(1)
    pred, target = torch.randn(9, 4, generator=g), torch.randn(9, 4, generator=g)
    which, ref = bench.float64_reference(pred, target, 0)
    assert which == "fastalign torch float64"
    want = bench.float64_reference(pred, target, 2**30)[1]
    for k in ("loss", "grad"):
        assert ref[k].dtype == torch.float64
        torch.testing.assert_close(ref[k], want[k], rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_a_row_off_by_more_than_its_limit_fails_the_run(
    bench: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench.main(QUICK) == 0
    fn, differentiable = bench.PROVIDERS["fastalign"]

    def off(*args: Any) -> torch.Tensor:
        return fn(*args) * (1 + 1e-3)

    monkeypatch.setitem(bench.PROVIDERS, "fastalign", (off, differentiable))
    capsys.readouterr()
    assert bench.main(QUICK) == 1
    lines = [line.split(": {")[0] for line in capsys.readouterr().err.splitlines()]
    assert lines == [
        "RESULTS DIFFER from float64 beyond the limit: fastalign fwd B=5 D=7",
        "RESULTS DIFFER from float64 beyond the limit: fastalign fwd+bwd B=5 D=7",
    ]
