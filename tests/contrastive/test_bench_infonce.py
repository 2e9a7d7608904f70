"""benchmarks/bench_infonce.py's equality checks: every provider's loss and gradients against float64 in
the same run, and a provider outside its limit fails the run."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
import torch
from bench_scripts import BENCHMARKS, load_script

SCRIPT = BENCHMARKS / "bench_infonce.py"
QUICK = ["--quick", "--device", "cpu", "--sizes", "17x5", "--reps", "1"]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script(SCRIPT, "_bench_infonce")


@pytest.fixture(autouse=True)
def _no_peak_measurement(bench: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU's peak is measured by seconds of 2048^3 products; these tests look at the checks only."""
    monkeypatch.setattr(bench.harness, "peak_tflops", lambda device, dtype: (1.0, "not measured"))


def test_every_provider_is_checked_against_float64(bench: ModuleType) -> None:
    rows, checks = bench.bench("cpu", [(17, 5), (40, 3)], [torch.float32, torch.bfloat16], reps=1)
    assert len(rows) == len(checks) == 8
    for row in rows:
        key = f"{row['provider']} {row['dtype']} N={row['N']} D={row['D']}"
        entry = checks[key]
        assert entry["reference"] == "naive float64" and row["equal"] and entry["equal"], entry
        assert set(entry["rel_err"]) == set(entry["limit"]) == {"loss", "dx", "dy"}
        assert [row[f"max_abs_{k}_diff"] for k in ("loss", "dx", "dy")] == list(
            entry["max_abs_diff"].values()
        )
    bf16 = checks["torch bfloat16 N=40 D=3"]
    naive = checks["naive bfloat16 N=40 D=3"]
    assert naive["limit"] == dict.fromkeys(naive["limit"], 2**-5)
    assert bf16["limit"] == {k: 2 * v + 1e-3 for k, v in naive["rel_err"].items()}


def test_beyond_the_reference_the_torch_backend_in_float64_is_the_oracle(
    bench: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench, "REFERENCE_NAIVE_MAX_N", 16)
    x, y = bench._inputs(17, 5, torch.float32, "cpu")
    scale = torch.tensor(1 / bench.TEMPERATURE)
    which, ref = bench.float64_reference(x, y, scale)
    assert which == "fastalign torch float64" and all(v.dtype == torch.float64 for v in ref.values())
    monkeypatch.setattr(bench, "REFERENCE_NAIVE_MAX_N", 17)
    naive = bench.float64_reference(x, y, scale)[1]
    for k in ("loss", "dx", "dy"):
        torch.testing.assert_close(ref[k], naive[k], rtol=1e-10, atol=1e-12)


def test_a_provider_off_by_more_than_its_limit_fails_the_run(
    bench: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench.main(QUICK) == 0
    loss = bench.fastalign.infonce_loss

    def off(*args: Any, **kwargs: Any) -> torch.Tensor:
        return loss(*args, **kwargs) * (1 + 1e-4)

    monkeypatch.setattr(bench.fastalign, "infonce_loss", off)
    capsys.readouterr()
    assert bench.main(QUICK) == 1
    (line,) = capsys.readouterr().err.splitlines()  # naive, the baseline, is untouched
    assert line.startswith("RESULTS DIFFER from float64 beyond the limit: torch float32 N=17 D=5: ")


def test_a_dtype_without_a_tolerance_is_a_usage_error(
    bench: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.main([*QUICK, "--dtypes", "int8"])
    assert exc.value.code == 2 and "--dtypes: 'int8' is not one of" in capsys.readouterr().err
