"""benchmarks/bench_data.py's equality checks: fastalign's MVNN and preprocessing against the published
pipeline rebuilt, in the same run, and an output outside the limit fails the run."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import pytest
from bench_scripts import BENCHMARKS, load_script

SCRIPT = BENCHMARKS / "bench_data.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script(SCRIPT, "_bench_data")


def test_check_equal_is_relative_to_the_published_scale_and_fails_nan_and_shapes(bench: ModuleType) -> None:
    want = {"a": np.array([1e-3, -2e-3]), "b": np.array([[4.0]])}
    ok = bench.check_equal({"a": want["a"] * (1 + 1e-14), "b": want["b"]}, want)
    assert ok["equal"] and ok["limit"] == bench.RTOL == 1e-13
    assert ok["rel_err"]["a"] == pytest.approx(1e-14, rel=0.3) and ok["rel_err"]["b"] == 0.0
    assert not bench.check_equal({"a": want["a"] + 1e-15, "b": want["b"]}, want)["equal"]  # 5e-13 relative
    assert not bench.check_equal({"a": np.array([np.nan, -2e-3]), "b": want["b"]}, want)["equal"]
    assert not bench.check_equal({"a": want["a"][:1], "b": want["b"]}, want)["equal"]
    names = bench.check_equal(want, want, (["O1", "Oz"], ["Oz", "O1"]))
    assert not names["equal"] and not names["same_ch_names"]


@pytest.mark.slow
def test_mvnn_rows_are_checked_against_the_published_loop(bench: ModuleType) -> None:
    rows, checks = bench.bench_mvnn(1, test_images=2, per_session=3)
    assert [r["impl"] for r in rows] == [bench.FAST, bench.PUBLISHED] * 2
    assert set(checks) == {"mvnn dim=time, 1 session", "mvnn dim=epochs, 1 session"}
    for fast, published in zip(rows[::2], rows[1::2], strict=True):
        entry = checks[fast["case"]]
        assert fast["equal"] and entry["equal"] and set(entry["rel_err"]) == {"test", "train"}
        assert fast["rel_err"] == max(entry["rel_err"].values()) <= 1e-13
        # both measured, the speedup from the two measured times
        assert fast["speedup"] == pytest.approx(published["seconds"] / fast["seconds"])
        assert "EXTRAPOLATED" not in fast["how"] + published["how"]


@pytest.mark.slow
def test_preprocess_rows_are_checked_against_the_published_script(bench: ModuleType) -> None:
    # 4 sessions (the published merge needs them), 10 training images and 3 test images
    rows, checks = bench.bench_preprocess([10 / bench.TRAIN_IMAGES], 3)
    fast, published = rows
    assert (fast["impl"], published["impl"]) == (bench.FAST, bench.PUBLISHED)
    (entry,) = checks.values()
    assert entry["equal"] and entry["same_ch_names"] and set(entry["rel_err"]) == {"test", "training"}
    assert fast["equal"] and fast["rel_err"] == max(entry["rel_err"].values()) <= 1e-13
    assert fast["speedup"] == pytest.approx(published["seconds"] / fast["seconds"])


@pytest.mark.slow
def test_a_result_off_by_more_than_the_limit_fails_the_run(
    bench: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(bench, "bench_preprocess", lambda fractions, test_images: ([], {}))
    monkeypatch.setattr(bench, "QUICK_TEST_IMAGES", 2)
    monkeypatch.setattr(bench, "QUICK_PER_SESSION", 3)
    assert bench.main(["--quick"]) == 0
    mvnn = bench.mvnn

    def off(*args: Any, **kwargs: Any) -> Any:
        return [w * (1 + 1e-12) for w in mvnn(*args, **kwargs)]

    monkeypatch.setattr(bench, "mvnn", off)
    capsys.readouterr()
    assert bench.main(["--quick"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(": {")[0] for line in lines] == [
        "RESULTS DIFFER from the published pipeline beyond RTOL: mvnn dim=time, 1 session",
        "RESULTS DIFFER from the published pipeline beyond RTOL: mvnn dim=epochs, 1 session",
    ]
