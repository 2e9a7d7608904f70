"""The benchmark scripts' number flags: a malformed or out-of-range value is a usage error (argparse's
message naming the flag, exit status 2) before anything runs. ``bench_infonce.py --sizes 4096x`` raised a
ValueError traceback from ``int("")`` after the imports, and ``--reps 0`` ran the default repetitions."""

from __future__ import annotations

from types import ModuleType

import pytest
from bench_scripts import BENCHMARKS, load_script

# (script, flag, a bad value): every number flag of every bench_*.py
BAD = [
    ("bench_infonce", "--sizes", "4096x"),
    ("bench_infonce", "--sizes", "x512"),
    ("bench_infonce", "--sizes", "4096x512x2"),
    ("bench_infonce", "--sizes", "0x512"),
    ("bench_infonce", "--reps", "0"),
    ("bench_correlation", "--sizes", "16x"),
    ("bench_correlation", "--sizes", "16by340"),
    ("bench_correlation", "--reps", "-1"),
    ("bench_correlation", "--max-gib", "nan"),
    ("bench_correlation", "--max-gib", "0"),
    ("bench_cornet", "--batches", "2.5"),
    ("bench_cornet", "--train-batches", "0"),
    ("bench_cornet", "--size", "0"),
    ("bench_cornet", "--train-reps", "x"),
    ("bench_cornet", "--warmup", "-1"),
    ("bench_cornet", "--reps", "0"),
    ("bench_cornet", "--ab-rounds", "-2"),
    ("bench_cornet", "--fallback-rounds", "one"),
    ("bench_data", "--fractions", "0"),
    ("bench_data", "--fractions", "1.5"),
    ("bench_data", "--reps", "0"),
    ("bench_decode", "--n-images", "0"),
    ("bench_decode", "--embed-dim", "-8"),
    ("bench_decode", "--steps", "-1"),
    ("bench_decode", "--rounds", "0"),
    ("bench_decode", "--workers", "two"),
    ("bench_demo", "--rounds", "0"),
    ("bench_demo", "--seed", "-1"),
    ("bench_evaluate", "--rounds", "0"),
    ("bench_evaluate", "--threads", "0"),
    ("bench_norm_act", "--batches", "0"),
    ("bench_norm_act", "--warmup", "-1"),
    ("bench_norm_act", "--reps", "0"),
    ("bench_realnet", "--size", "0"),
    ("bench_realnet", "--batch", "0"),
    ("bench_realnet", "--n-out", "-340"),
    ("bench_realnet", "--rounds", "0"),
    ("bench_realnet", "--warmup", "-1"),
]

_LOADED: dict[str, ModuleType] = {}


def _script(name: str) -> ModuleType:
    if name not in _LOADED:
        _LOADED[name] = load_script(BENCHMARKS / f"{name}.py", f"_options_{name}")
    return _LOADED[name]


@pytest.mark.parametrize(("script", "flag", "value"), BAD)
def test_a_malformed_number_is_a_usage_error(
    script: str, flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        _script(script).main([flag, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: expected " in err and repr(value) in err, err


def test_every_number_flag_is_covered() -> None:
    """A new number flag gets a checked type and a case above: no bench script parses with int or float."""
    for path in sorted(BENCHMARKS.glob("bench_*.py")):
        text = path.read_text()
        assert "type=int" not in text and "type=float" not in text, path.name
        assert 'split("x")' not in text, path.name


def test_sizes_are_read_as_pairs() -> None:
    harness = _script("bench_infonce").harness
    assert harness.size_pair("4096x512") == (4096, 512)
    assert harness.fraction("1") == 1.0
