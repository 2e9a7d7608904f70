"""benchmarks/bench_norm_act.py's equality checks on CPU tensors: the script itself needs CUDA."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
import torch
from bench_scripts import BENCHMARKS, load_script

SCRIPT = BENCHMARKS / "bench_norm_act.py"
# (name, channels, H, W, residual, relu): N * H * W > 2, else training BatchNorm's dx is ~0 (see
# test_norm_act.py's shapes); 67 channels: not a multiple of any block size
LAYERS = [("skip+relu", 67, 5, 7, True, True), ("bn", 3, 6, 5, False, False)]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script(SCRIPT, "_bench_norm_act")


def _row(bench: ModuleType, layer: tuple, dtype_name: str, impl: str, op: Any, device: str) -> dict:
    """The check fields of one implementation, keyed as bench_row keys them."""
    x, w, b, r, dy = bench.inputs(layer, 2, dtype_name, device)
    got = bench.outputs(op, x, w, b, r, dy, layer[5])
    return {"layer": layer[0], "shape": "2", "dtype": dtype_name, "impl": impl,
            **bench.check(got, x, w, b, r, dy, layer[5])}  # fmt: skip


@pytest.mark.triton
@pytest.mark.parametrize("dtype_name", ["fp32", "bf16"])
@pytest.mark.parametrize("layer", LAYERS, ids=[layer[0] for layer in LAYERS])
def test_eager_and_triton_pass_their_checks(
    bench: ModuleType, triton_device: str, dtype_name: str, layer: tuple
) -> None:
    rows = [_row(bench, layer, dtype_name, impl, op, triton_device)
            for impl, op in (("eager", bench.eager), ("triton", bench.fused))]  # fmt: skip
    checks = bench.check_rows(rows)
    outputs = {"y", "dx", "dweight", "dbias"} | ({"dskip"} if layer[4] else set())
    for row, (key, entry) in zip(rows, checks.items(), strict=True):
        assert key == f"{layer[0]} 2 {dtype_name} {row['impl']}" and "rel_err" not in row
        assert set(entry["rel_err"]) == set(entry["limit"]) == set(entry["max_abs_diff"]) == outputs
        assert {k[8:-5] for k in row if k.startswith("max_abs_")} == outputs
        assert row["equal"] and entry["equal"], entry
    eager, triton = checks.values()
    bound, floor = bench.harness.CHECK_BOUND, bench.harness.CHECK_FLOOR
    dtype = str(bench.DTYPES[dtype_name])[6:]
    assert all(v == bound[dtype] for v in eager["limit"].values())
    assert triton["limit"] == {k: 2 * v + floor[dtype] for k, v in eager["rel_err"].items()}


def _scaled(bench: ModuleType, factor: float) -> Any:
    def op(*args: Any) -> torch.Tensor:
        return bench.eager(*args) * factor

    return op


def test_a_result_off_by_more_than_its_limit_is_not_equal(bench: ModuleType) -> None:
    layer = LAYERS[0]
    rows = [
        _row(bench, layer, "fp32", "eager", bench.eager, "cpu"),
        _row(bench, layer, "fp32", "close", _scaled(bench, 1 + 1e-6), "cpu"),
        _row(bench, layer, "fp32", "off", _scaled(bench, 1 + 1e-3), "cpu"),
        _row(bench, layer, "fp32", "nan", _scaled(bench, float("nan")), "cpu"),
    ]
    checks = bench.check_rows(rows)
    assert [r["equal"] for r in rows] == [True, True, False, False]
    off = checks[f"{layer[0]} 2 fp32 off"]
    assert off["rel_err"]["y"] > off["limit"]["y"] and off["rel_err"]["dx"] > off["limit"]["dx"]


def test_without_an_eager_row_the_baseline_bound_applies(bench: ModuleType) -> None:
    rows = [_row(bench, LAYERS[1], "bf16", "compile", _scaled(bench, 1 + 2**-4), "cpu")]
    (entry,) = bench.check_rows(rows).values()
    assert set(entry["limit"].values()) == {2**-5} and not rows[0]["equal"]


def test_a_relu_mask_flipped_at_zero_is_judged_with_its_own_mask(bench: ModuleType) -> None:
    """Where the exact pre-activation is within rounding of 0 an implementation may mask either way; the
    other side than float64's moves its channel's dweight and dbias by O(dy), yet both sides are right."""
    layer = ("flip", 4, 5, 6, False, True)
    x, w, b, r, dy = bench.inputs(layer, 2, "fp32", "cpu")
    stats = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    i = (1, 2, 3, 4)
    with torch.no_grad():  # channel 2's bias puts element i's exact pre-activation at ~0
        b[2] -= float(bench.eager(x.double(), w.double(), b.double(), *stats, None, False)[i])
        pre64 = bench.eager(x.double(), w.double(), b.double(), *stats, None, False)
        pre = bench.eager(x, w, b, torch.zeros(4), torch.ones(4), None, False)
    assert abs(float(pre64[i])) < 1e-6 and abs(float(pre[i])) < 1e-6
    delta = torch.zeros_like(pre)
    delta[i] = -float(pre[i]) + (-1e-7 if float(pre64[i]) > 0 else 1e-7)  # the other side of 0 from float64

    def flipped(*args: Any) -> torch.Tensor:
        return torch.relu(bench.eager(*args[:-1], False) + delta)

    got = bench.outputs(flipped, x, w, b, r, dy, True)
    fields = bench.check(got, x, w, b, r, dy, True)
    assert max(fields["rel_err"].values()) <= 2e-5, fields
    exact = bench.float64_eager(x, w, b, r, dy, pre64 > 0)  # float64's own mask instead
    assert float((got["dbias"][2] - exact["dbias"][2]).abs()) == pytest.approx(float(dy[i].abs()), rel=1e-5)
