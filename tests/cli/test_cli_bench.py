"""``fastalign bench``: the built-in micro-benchmark (its naive PyTorch versions compute the same numbers as
fastalign's ops) and the benchmark scripts of a source checkout (found, run with their arguments, refused
where there is no checkout)."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_scripts import BENCHMARKS, ROOT, load_script

import fastalign.cli.bench as bench
from fastalign.cli import main

TINY = {"infonce": (24, 8), "rdm": (9, 16), "rsa": (7, 3, 5)}


@pytest.fixture
def this_tree(monkeypatch: pytest.MonkeyPatch) -> Path:
    """The benchmarks/ folder of the tree these tests are in. fastalign finds it beside its own package
    when it runs from this tree (an editable install); a wheel installed from this tree's sdist, tested
    from the unpacked sdist, has no checkout (its scripts are {}), so it is shown this one."""
    import fastalign

    if Path(fastalign.__file__).resolve().parent.parent != ROOT:
        monkeypatch.setattr(bench, "_checkout", lambda: str(ROOT / "benchmarks"))
    return ROOT / "benchmarks"


def test_micro_benchmark_compares_equal_results() -> None:
    rows = bench.micro_benchmark("cpu", repeat=1, sizes=TINY)
    assert [r["op"] for r in rows] == [
        "infonce_loss fwd+bwd",
        "rdm correlation",
        "time_resolved_rsa spearman",
    ]
    tolerance = {"infonce_loss fwd+bwd": 1e-5, "rdm correlation": 1e-5, "time_resolved_rsa spearman": 1e-12}
    for r in rows:
        assert r["max_abs_diff"] <= tolerance[r["op"]], r
        assert r["fastalign_ms"] > 0 and r["naive_ms"] > 0
        assert r["speedup"] == pytest.approx(r["naive_ms"] / r["fastalign_ms"])
    with pytest.raises(ValueError, match="repeat"):
        bench.micro_benchmark("cpu", repeat=0, sizes=TINY)


def test_bench_prints_the_table(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(bench.SIZES, "cpu", TINY)
    assert main(["bench", "--repeat", "1", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("fastalign ") and ", cpu, " in lines[0]
    assert lines[1].split()[:2] == ["op", "shape"] and len(lines) >= 5
    assert lines[2].startswith("infonce_loss fwd+bwd") and lines[2].split()[-2].endswith("x")
    assert all(line.startswith("note: ") for line in lines[5:])  # where an op came out slower


def test_an_op_slower_than_plain_pytorch_gets_a_note_saying_why() -> None:
    rows = [
        {"op": "infonce_loss fwd+bwd", "speedup": 1.3},
        {"op": "rdm correlation", "speedup": 0.66},
        {"op": "time_resolved_rsa spearman", "speedup": 13.0},
    ]
    (note,) = bench.slower_notes(rows)
    assert note.startswith("rdm correlation: both are one Gram product")
    assert len(bench.slower_notes([{**r, "speedup": 0.9} for r in rows])) == 2  # rsa: no reason known
    assert set(bench.SLOWER_BECAUSE) <= {r["op"] for r in rows}


def test_scripts_of_this_checkout(this_tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    found = bench.scripts()
    assert {"rsa", "infonce"} <= set(found) and Path(found["rsa"]).resolve() == this_tree / "bench_rsa.py"
    assert main(["bench", "--list"]) == 0
    assert "bench_rsa.py" in capsys.readouterr().out
    assert main(["bench", "nope"]) == 1
    err = capsys.readouterr().err
    assert "no benchmark named ['nope']" in err and "'rsa'" in err


def test_every_script_has_a_quick_mode(this_tree: Path) -> None:
    """``nox -s benchmarks -- --quick`` and ``fastalign bench NAME --script-args=--quick`` pass --quick to
    every script. Read from each script's parser definition, not run with --help: that imports torch, MNE
    and the rest once per script, seconds each."""
    script_flags = load_script(ROOT / "noxfile.py", "_noxfile").script_flags  # nox reads them this way
    found = bench.scripts()
    assert len(found) >= 10
    for name, path in found.items():
        assert "--quick" in script_flags(path), f"benchmarks/bench_{name}.py has no --quick"


def test_runs_scripts_with_their_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    (folder / "harness.py").write_text("")
    (folder / "bench_ok.py").write_text("import sys\nprint('ok got', sys.argv[1:])\n")
    (folder / "bench_fails.py").write_text("raise SystemExit(3)\n")
    monkeypatch.setattr(bench, "_checkout", lambda: str(folder))
    assert main(["bench", "ok", "bench_ok.py", "--script-args=--quick --n 2"]) == 0
    out = capfd.readouterr().out
    assert (
        out.count("ok got ['--quick', '--n', '2']") == 2 and "== benchmarks/bench_ok.py --quick --n 2" in out
    )
    assert main(["bench", "fails"]) == 1
    assert "bench_fails.py exited with status 3" in capfd.readouterr().err
    assert main(["bench", "--script-args=--quick"]) == 1
    assert "goes with benchmark script names" in capfd.readouterr().err


def test_an_installed_package_has_no_scripts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(bench, "_checkout", lambda: None)
    assert main(["bench", "rsa"]) == 1
    err = capsys.readouterr().err
    assert "source checkout" in err and "fastalign bench' with no names" in err and len(err.splitlines()) == 1
    assert main(["bench", "--list"]) == 0
    assert "not a source checkout" in capsys.readouterr().out


def test_benchmark_spreads_stay_within_the_measured_times() -> None:
    """The p20-p80 columns of every benchmark come from harness.spread: percentiles interpolated between
    measurements, never beyond them (statistics' default method put 3 runs' p20 below the fastest)."""
    harness = load_script(BENCHMARKS / "harness.py", "_bench_harness")
    for times in ([162.78, 162.72, 185.7], [5.0, 1.0], [3.0, 1.0, 2.0, 5.0, 4.0], [7.5]):
        p20, p80 = harness.spread(times)
        assert min(times) <= p20 <= p80 <= max(times), (times, p20, p80)
    assert harness.spread([3.0, 1.0, 2.0, 5.0, 4.0]) == pytest.approx((1.8, 4.2))
    assert harness.spread([7.5]) == (7.5, 7.5)
    timed = harness.time_fn(lambda: None, "cpu", warmup=0, rep=3)
    assert timed["min_ms"] <= timed["p20_ms"] <= timed["p80_ms"] <= timed["max_ms"]


def test_result_files_of_cpus_that_compute_differently_do_not_overwrite_each_other(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A CPU result file is named by thread count, vector capability and native bf16: an AVX2 run and an
    AVX-512 run of the same benchmark (on the same thread count) keep their own files."""
    harness = load_script(BENCHMARKS / "harness.py", "_bench_harness")
    monkeypatch.setattr(harness.torch, "get_num_threads", lambda: 2)
    paths = []
    for features, slug in (
        (("AVX512", True), "cpu2-avx512-bf16"),
        (("AVX2", False), "cpu2-avx2"),
        (("AVX512", False), "cpu2-avx512"),
    ):
        monkeypatch.setattr(harness, "cpu_features", lambda f=features: f)
        assert harness.device_slug("cpu") == slug
        paths.append(harness.save("x", "cpu", [{"a": 1}], folder=str(tmp_path)))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"x-{s}.json" for s in ("cpu2-avx512-bf16", "cpu2-avx2", "cpu2-avx512")
    )
    assert len(set(paths)) == 3


def test_committed_result_files_are_named_after_their_device() -> None:
    """Each committed result file's name ends with its CPU's kind: from the recorded capability, or, for
    files written before it was recorded, from the CPU model (Xeon: AVX-512 with bf16; EPYC: AVX2)."""
    import json

    for path in sorted((BENCHMARKS / "results").glob("*.json")):
        env = json.loads(path.read_text())["environment"]
        if not env["device_slug"].startswith("cpu"):  # a GPU: its model
            want = env["device_slug"]
        elif "cpu_capability" in env:
            want = f"cpu{env['threads']}-{env['cpu_capability'].lower()}" + (
                "-bf16" if env["cpu_bf16_native"] else ""
            )
        else:
            assert env["device"].startswith(("Intel(R) Xeon(R)", "AMD EPYC")), (path.name, env["device"])
            want = "cpu2-avx512-bf16" if env["device"].startswith("Intel") else "cpu2-avx2"
        assert path.name.endswith(f"-{want}.json"), (path.name, want)
