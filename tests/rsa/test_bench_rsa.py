"""benchmarks/bench_rsa.py's equality checks: every provider's result against float64 in the same run,
ranks exactly, p-values by their counts, and a provider outside its limit fails the run."""

from __future__ import annotations

import argparse
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import scipy.stats
import torch
from bench_scripts import BENCHMARKS, load_script

SCRIPT = BENCHMARKS / "bench_rsa.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script(SCRIPT, "_bench_rsa")


def _args(**kw: Any) -> argparse.Namespace:
    sizes = {"device": "cpu", "tr_shape": (2, 12, 5, 3, 16), "cmp_perm": 4, "n_perm": 9,
             "rdm_sizes": [20, 31], "rdm_features": 7, "baseline_max_n": 20, "batch_shape": (3, 11),
             "rank_rows": 2, "reps": 1, "slow_reps": 1}  # fmt: skip
    return argparse.Namespace(**{**sizes, **kw})


@pytest.mark.slow  # every case at small sizes, rsatoolbox and scipy loops included
def test_every_provider_is_checked_against_float64(bench: ModuleType) -> None:
    rows: list[dict[str, Any]] = []
    checks: dict[str, Any] = {}
    for case in ("tr-rsa", "tr-rsa-perm", "rdm", "rank"):
        bench.CASES[case](_args(), rows, checks)
    assert len(rows) == len(checks)
    assert all(row["equal"] for row in rows) and all(c["equal"] for c in checks.values())
    providers = {(r["case"], r["provider"], r["dtype"]) for r in rows}
    for want in [("tr-rsa", "rsatoolbox", "float32"), ("tr-rsa", "numpy (BLAS)", "float32"),
                 ("tr-rsa", "scipy loops", "float64"), ("tr-rsa-perm", "rsatoolbox loop", "float64"),
                 ("rdm", "scipy pdist", "float64"), ("rdm-batch", "fastalign cpp", "float32"),
                 ("rank", "scipy rankdata", "float64")]:  # fmt: skip
        assert want in providers
    # the rsatoolbox loop only at the smaller count, every count measured
    perm = [r for r in rows if r["case"] == "tr-rsa-perm"]
    assert {r["permutations"] for r in perm} == {4, 9}
    assert [r["permutations"] for r in perm if r["provider"] == "rsatoolbox loop"] == [4]
    assert all("pvalue" in checks[k] for k in checks if k.startswith("tr-rsa-perm"))
    # the size beyond the baselines: fastalign only, checked against the blockwise float64 RDMs
    big = [r for r in rows if r["case"] == "rdm" and r["shape"] == "31x7"]
    assert {r["provider"] for r in big} == {"fastalign auto"}
    assert all("speedup_vs_numpy" in r for r in rows if r["case"] == "rdm" and r["shape"] == "20x7")
    # float32 rows are compared with float32 baselines only
    f32 = [r for r in rows if r["case"] == "tr-rsa-perm" and r["dtype"] == "float32"]
    assert f32 and all("speedup_vs_rsatoolbox" not in r for r in f32)


def test_reference_rdms_and_ranks_match_numpy_and_scipy(bench: ModuleType) -> None:
    x = np.random.default_rng(0).normal(size=(45, 6))
    np.testing.assert_allclose(bench.reference_rdm(x, block=8), bench.numpy_rdms(x), rtol=0, atol=1e-14)
    v = np.random.default_rng(1).integers(0, 4, (3, 40)).astype(np.float64)
    np.testing.assert_array_equal(bench.reference_ranks(v), scipy.stats.rankdata(v, axis=-1))


def test_pvalues_may_differ_only_by_near_ties(bench: ModuleType) -> None:
    obs = np.array([0.5, 0.2])
    null = np.array([[0.4, 0.2 + 1e-6], [0.6, 0.1], [0.1, 0.1]])  # counts >= obs: [1, 1]
    p = (1 + (null >= obs).sum(0)) / 4
    assert bench.check_pvalues(p, p, obs, null, "float64")["equal"]
    off = p + np.array([0.0, 0.25])  # one more null value counted for the second statistic
    assert bench.check_pvalues(off, p, obs, null, "float32")["equal"]  # 1e-6 from it: a float32 near tie
    assert not bench.check_pvalues(off, p, obs, null, "float64")["equal"]
    assert not bench.check_pvalues(off + np.array([0.25, 0.0]), p, obs, null, "float32")["equal"]
    assert not bench.check_pvalues(np.array([np.nan, p[1]]), p, obs, null, "float64")["equal"]


def test_a_provider_off_by_more_than_its_limit_fails_the_run(
    bench: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    quick = ["--quick", "--device", "cpu", "--cases", "rank"]
    assert bench.main(quick) == 0
    rank = bench.fa.rank

    def off(*args: Any, **kwargs: Any) -> torch.Tensor:
        return rank(*args, **kwargs) + 1e-9  # ranks are exact: any difference fails

    monkeypatch.setattr(bench.fa, "rank", off)
    assert bench.main(quick) == 1
    monkeypatch.undo()
    rdm = bench.fa.rdm
    monkeypatch.setattr(bench.fa, "rdm", lambda *a, **k: rdm(*a, **k) * (1 + 1e-4))
    checks: dict[str, Any] = {}
    bench.bench_rdm(_args(rdm_sizes=[20]), [], checks)
    failed = {k for k, v in checks.items() if not v["equal"]}
    assert failed and all("fastalign" in k for k in failed)


def test_device_must_be_cpu_or_present_cuda(bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        bench.main(["--quick", "--device", "tpu"])
    assert e.value.code == 2 and "--device" in capsys.readouterr().err
