"""benchmarks/bench_decode.py's float64 checks of every timed precision (the same dropout masks in every
dtype, harness.check_errors' rule) and decode's recipe (its split and drop_last) in the timed loop."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from bench_scripts import BENCHMARKS, load_script

SCRIPT = BENCHMARKS / "bench_decode.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script(SCRIPT, "_bench_decode")


def test_dropout_masks_are_the_same_in_every_dtype(bench: ModuleType) -> None:
    drop = torch.nn.Dropout(0.5)
    original = torch.nn.functional.dropout
    outs = []
    with bench._float32_dropout_masks():
        for dtype in (torch.float64, torch.float32, torch.bfloat16):
            torch.manual_seed(7)
            outs.append(drop(torch.ones(4, 257, dtype=dtype)))
    assert all(torch.equal(o.double(), outs[0]) for o in outs[1:])
    assert set(outs[0].unique().tolist()) == {0.0, 2.0}
    assert torch.nn.functional.dropout is original


def test_every_precision_is_checked_against_float64(bench: ModuleType, tmp_path: Path) -> None:
    n, d = 140, 16
    bench.make_data(str(tmp_path), n, d)
    pub_ds = bench.PublishedThingsEEG2(str(tmp_path))
    brain, images = bench.fastalign_data(str(tmp_path), n)
    torch.manual_seed(0)
    enc = bench.brain_encoder("nice", bench.N_CHANNELS, bench.N_TIMES, d)
    model = bench.Decoder(enc, bench.PUBLISHED_TEMPERATURE, True).train()
    tr = bench.train_val_split(n, bench.VAL_FRACTION, bench.SEED, method="random_split")[0]
    index = np.asarray(tr[:16])
    cpu = torch.device("cpu")
    ours = {"fastalign": bench.resolve_amp("fp32", cpu), "fastalign-auto": bench.Precision("bf16", "", "cpu")}
    checks = bench.check_precisions(model, pub_ds, brain, images, index, "cpu", ours)
    assert set(checks) == {"published", "published-fp32", "fastalign", "fastalign-auto"}
    for name, check in checks.items():
        assert check["equal"] and set(check["rel_err"]) == {"loss", "grad_norm", "grad"}, (name, check)
    assert checks["published-fp32"]["limit"] == {"loss": 2e-5, "grad_norm": 2e-5, "grad": 2e-5}
    pub_bf16 = checks["published"]["rel_err"]
    held = ("loss", "grad_norm")  # a bf16 gradient's own error is recorded, not held
    assert checks["fastalign-auto"]["limit"] == {k: 2 * pub_bf16[k] + 1e-3 for k in held}
    assert checks["fastalign"]["rel_err"]["loss"] < 1e-6


def test_the_timed_loop_runs_decodes_recipe(bench: ModuleType, tmp_path: Path) -> None:
    """decode's split (the published random_split) and drop_last: whole batches only."""
    n = 300
    tr = bench.train_val_split(n, bench.VAL_FRACTION, bench.SEED, method="random_split")[0]
    g = torch.Generator().manual_seed(bench.SEED)
    published = torch.utils.data.random_split(
        range(n), [1 - bench.VAL_FRACTION, bench.VAL_FRACTION], generator=g
    )
    assert sorted(published[0].indices) == tr.tolist()
    brain = torch.randn(n, bench.N_CHANNELS, bench.N_TIMES)
    images = torch.randn(n, 8)
    torch.manual_seed(0)
    model = bench.Decoder(bench.brain_encoder("nice", bench.N_CHANNELS, bench.N_TIMES, 8), 0.04, True)
    loop = bench.FastalignLoop(
        model, torch.as_tensor(tr), brain, images, "cpu", str(tmp_path / "run"), "fp32"
    )
    steps, seconds = loop(0)  # a whole epoch: 270 images, 2 batches of 128, the last 14 dropped
    assert steps == len(tr) // bench.BATCH == 2 and seconds > 0


QUICK = ["--quick", "--device", "cpu", "--n-images", "140", "--embed-dim", "16"]


@pytest.fixture
def small(bench: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of 16 (7 steps an epoch of the 126 training images). The two fp32 losses are then about 10
    (random 16-d embeddings at temperature 0.04) and differ in their 7th digit, beyond the published size's
    absolute 1e-5: a relative 1e-6 of them."""
    monkeypatch.setattr(bench, "BATCH", 16)
    monkeypatch.setattr(bench, "TOLERANCE", 1e-4)


@pytest.mark.usefixtures("small")
def test_a_failed_check_ends_the_run_before_the_timed_rounds(
    bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wrong result exited with status 1 only after every timed round (hours at the published size on
    a CPU): the checks are looked at once the loops have warmed up, and a failure ends the run there."""
    checked = bench.check_precisions

    def off(*args: Any, **kwargs: Any) -> dict[str, Any]:
        checks = checked(*args, **kwargs)
        checks["fastalign"]["equal"] = False
        return checks

    def timed(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the timed rounds ran after a failed check")

    monkeypatch.setattr(bench, "check_precisions", off)
    monkeypatch.setattr(bench, "_rounds", timed)
    assert bench.main([*QUICK, "--data-dir", str(tmp_path / "data")]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("RESULTS DIFFER from float64 beyond the limit: fastalign: ")


@pytest.mark.usefixtures("small")
def test_the_results_after_the_rounds_are_checked_too(
    bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each timed loop's last training loss must be finite after the rounds as after the warm-up step."""
    data = ["--data-dir", str(tmp_path / "data")]
    assert bench.main([*QUICK, *data]) == 0  # kept and reused below
    rounds = bench._rounds

    def diverged(variants: list[tuple[str, str, Any]], args: Any) -> Any:
        out = rounds(variants, args)
        variants[0][2].last_loss = float("nan")  # the published loop's
        return out

    monkeypatch.setattr(bench, "_rounds", diverged)
    capsys.readouterr()
    assert bench.main([*QUICK, *data]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line == "TRAINING LOSS NOT FINITE after the rounds: {'published': nan}"
