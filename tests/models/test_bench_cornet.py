"""benchmarks/bench_cornet.py's equality checks (every implementation's output against eager float64 in
the same run; a row outside its limit fails the run) and its % peak rule (no peak of a dtype the CPU
emulates)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
import torch
from bench_scripts import BENCHMARKS, load_script

SCRIPT = BENCHMARKS / "bench_cornet.py"
# the smallest run: 32 px, fp32 inference of eager and fused, one timed call, no interleaved rounds
TINY = ["--quick", "--device", "cpu", "--modes", "inference", "--dtypes", "fp32", "--impls", "eager",
        "fused", "--reps", "1", "--warmup", "0", "--ab-rounds", "0", "--no-memory"]  # fmt: skip


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script(SCRIPT, "_bench_cornet")


@pytest.fixture(autouse=True)
def _no_peak_measurement(bench: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU's peak is measured by seconds of 2048^3 products; these tests look at the checks only."""
    monkeypatch.setattr(bench.harness, "peak_tflops", lambda device, dtype: (1.0, "not measured"))


def _row(impl: str, dtype: str, rel: dict[str, float], mode: str = "inference") -> dict[str, Any]:
    return {"mode": mode, "impl": impl, "dtype": dtype, "batch": 2, "rel_err": rel,
            "max_abs_diff": dict(rel)}  # fmt: skip


def test_eager_is_held_to_the_bound_and_the_others_to_twice_its_error(bench: ModuleType) -> None:
    rows = [
        _row("eager", "fp32", {"logits": 1e-6}),
        _row("fused", "fp32", {"logits": 2.1e-5}),  # 2 x 1e-6 + 2e-5 = 2.2e-5
        _row("eager", "bf16", {"logits": 0.01}),
        _row("fused", "bf16", {"logits": 0.0215}),  # 2 x 0.01 + 1e-3 = 0.021
        _row("fused", "fp16", {"logits": 1e-3}),  # no eager fp16 row: CHECK_BOUND, 2^-8
        # a training step's gradient norm: eager within GRAD_NORM_BOUND (fp32's error grows with size and
        # batch), its loss within CHECK_BOUND; the others within twice eager's error
        _row("eager", "fp32", {"loss": 1e-6, "grad_norm": 7e-5}, mode="train"),
        _row(
            "compile", "fp32", {"loss": 1e-6, "grad_norm": 1.7e-4}, mode="train"
        ),  # 2 x 7e-5 + 2e-5 = 1.6e-4
        _row("eager", "fp16", {"loss": 3e-5, "grad_norm": 2e-3}, mode="train"),
    ]
    rows[-1]["batch"] = 4
    checks = bench.apply_checks(rows, "cpu")
    assert [r["equal"] for r in rows] == [True, True, True, False, True, True, False, True]
    assert checks["inference fused bf16 batch=2"]["limit"] == {"logits": pytest.approx(0.021)}
    assert checks["inference fused fp16 batch=2"]["limit"] == {"logits": 2.0**-8}
    assert checks["train eager fp32 batch=2"]["limit"] == {"loss": 2e-5, "grad_norm": bench.GRAD_NORM_BOUND}
    assert checks["train compile fp32 batch=2"]["limit"] == {
        "loss": pytest.approx(2.2e-5),
        "grad_norm": pytest.approx(1.6e-4),
    }
    assert checks["train eager fp16 batch=4"]["limit"] == {"loss": 2.0**-8, "grad_norm": 2.0**-8}
    assert rows[5]["max_rel_err"] == 7e-5
    rows = [_row("eager", "fp32", {"loss": 1e-6, "grad_norm": 1.1e-3}, mode="train")]
    bench.apply_checks(rows, "cpu")
    assert not rows[0]["equal"]
    assert bench.check_dtype("bf16", "cpu") == "bfloat16" and bench.check_dtype("fp32", "cpu") == "float32"


def test_rows_agree_with_float64_and_a_wrong_one_fails_the_run(
    bench: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench.main(TINY) == 0
    real = bench.fuse

    def off(*args: Any, **kwargs: Any) -> Any:
        fused = real(*args, **kwargs)
        forward = fused.forward
        fused.forward = lambda x: forward(x) * (1 + 1e-3)
        return fused

    monkeypatch.setattr(bench, "fuse", off)
    capsys.readouterr()
    assert bench.main(TINY) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("RESULTS DIFFER from float64 beyond the limit: inference fused fp32 batch=2: ")


def test_a_training_row_checks_its_loss_and_gradient_norm(bench: ModuleType) -> None:
    args = bench.argparse.Namespace(size=32, eager_layout="auto", device="cpu", warmup=0, reps=1,
                                    train_reps=1, memory=False)  # fmt: skip
    ref = bench.float64_reference("train", 8, 32, "cpu")
    row = bench.bench_row("train", "eager", "fp32", 8, "cpu", args, 1.0, ref)
    assert set(row["rel_err"]) == {"loss", "grad_norm"} and 0 <= row["grad_rel_l2"] < 1e-3
    bench.apply_checks([row], "cpu")
    assert row["equal"], row["rel_err"]


def test_no_peak_for_a_dtype_the_cpu_emulates(bench: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[torch.dtype] = []

    def peak(device: str, dtype: torch.dtype) -> tuple[float, str]:
        asked.append(dtype)
        return 1.0, "m"

    monkeypatch.setattr(bench.harness, "peak_tflops", peak)
    monkeypatch.setattr(bench, "mkldnn_dtype_unsupported", lambda dtype: "needs avx512_core_bf16")
    assert bench.compute_peak("cpu", torch.bfloat16) == (None, "not measured: needs avx512_core_bf16 "
                                                         "(emulated on this CPU)")  # fmt: skip
    assert bench.compute_peak("cpu", torch.float32) == (1.0, "m")
    assert asked == [torch.float32]  # the emulated dtype's 2048^3 products never ran
    monkeypatch.setattr(bench, "mkldnn_dtype_unsupported", lambda dtype: None)
    assert bench.compute_peak("cpu", torch.bfloat16) == (1.0, "m")
