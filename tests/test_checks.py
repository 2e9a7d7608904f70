"""fastalign._checks: the shared argument checks, their one message format and the exact scaling helpers."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from fastalign import _checks


@pytest.mark.parametrize(
    ("value", "ok"),
    [(3, True), (np.int64(3), True), (np.uint8(0), True), (True, False), (np.bool_(True), False),
     (3.0, False), ("3", False), (None, False), (torch.tensor(3), False)],
    ids=repr,
)  # fmt: skip
def test_is_int_takes_python_and_numpy_ints_but_not_bools(value: object, ok: bool) -> None:
    assert _checks.is_int(value) is ok


@pytest.mark.parametrize(
    ("value", "ok"),
    [(3, True), (2.5, True), (np.float32(2.5), True), (np.int16(2), True), (math.nan, True),
     (True, False), (np.bool_(False), False), (1j, False), ("2.5", False), (torch.tensor(2.5), False)],
    ids=repr,
)  # fmt: skip
def test_is_real(value: object, ok: bool) -> None:
    assert _checks.is_real(value) is ok


@pytest.mark.parametrize(
    ("value", "shown"),
    [(1.5, "1.5 (float)"), ("7", "'7' (str)"), (None, "None"), (True, "True (bool)"),
     (np.uint64(2**64 - 1), "18446744073709551615 (uint64)"), ([1, 2], "list"),
     (torch.ones(2, 3), "Tensor of shape (2, 3) and dtype float32"),
     (np.zeros((4,), np.int8), "ndarray of shape (4,) and dtype int8")],
    ids=repr,
)  # fmt: skip
def test_message_format(value: object, shown: str) -> None:
    assert _checks.message("f", "arg", "an int", value) == f"f: arg must be an int, got {shown}"
    assert len(_checks.message("f", "arg", "short", "x" * 1000)) < 150  # long values are cut


def test_check_int() -> None:
    assert _checks.check_int("f", "n", np.int32(4), minimum=1) == 4
    assert type(_checks.check_int("f", "n", np.int32(4))) is int
    assert _checks.check_int("f", "n", None, none=True) is None
    assert _checks.check_int("f", "n", -5) == -5  # no minimum
    with pytest.raises(TypeError, match=r"^f: n must be an int >= 1, got 2\.0 \(float\)$"):
        _checks.check_int("f", "n", 2.0, minimum=1)
    with pytest.raises(TypeError, match=r"^f: n must be an int >= 1, got True \(bool\)$"):
        _checks.check_int("f", "n", True, minimum=1)
    with pytest.raises(ValueError, match=r"^f: n must be None or an int >= 1, got 0 \(int\)$"):
        _checks.check_int("f", "n", 0, minimum=1, none=True)
    with pytest.raises(TypeError, match=r"^f: n must be an int, got None$"):
        _checks.check_int("f", "n", None)
    with pytest.raises(ValueError, match=r"^f: width must be a positive int, got 0 \(int\)$"):
        _checks.check_int("f", "width", 0, minimum=1, expected="a positive int")


def test_check_real() -> None:
    assert _checks.check_real("f", "t", np.float32(0.5), positive=True) == 0.5
    assert type(_checks.check_real("f", "t", 3)) is float
    assert _checks.check_real("f", "t", None, none=True) is None
    assert _checks.check_real("f", "t", -2.0) == -2.0
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match=rf"^f: t must be a finite number, got {bad} \(float\)$"):
            _checks.check_real("f", "t", bad)
    for bad in (0.0, -1e-300):
        with pytest.raises(ValueError, match=r"^f: t must be a finite number > 0, got"):
            _checks.check_real("f", "t", bad, positive=True)
    for bad in (True, "1", 1j, torch.tensor(1.0)):
        with pytest.raises(TypeError, match=r"^f: t must be None or a finite number, got"):
            _checks.check_real("f", "t", bad, none=True)
    with pytest.raises(ValueError, match=r"^f: eps must be positive and finite, got nan \(float\)$"):
        _checks.check_real("f", "eps", math.nan, positive=True, expected="positive and finite")


@pytest.mark.parametrize(
    ("seed", "error", "given"),
    [(2**63, ValueError, "9223372036854775808 (int)"), (-1, ValueError, "-1 (int)"),
     (np.uint64(2**64 - 1), ValueError, "18446744073709551615 (uint64)"), (True, TypeError, "bool"),
     (np.bool_(False), TypeError, "bool"), ("7", TypeError, "str"), (1.0, TypeError, "float")],
    ids=repr,
)  # fmt: skip
def test_check_seed_refuses(seed: object, error: type, given: str) -> None:
    expected = f"f: seed must be an int in [0, 2**63 - 1] or None, got {given}"
    with pytest.raises(error) as info:
        _checks.check_seed("f", seed)
    assert str(info.value) == expected


def test_check_seed_accepts() -> None:
    assert _checks.check_seed("f", None) is None
    assert _checks.check_seed("f", np.int64(2**63 - 1)) == 2**63 - 1
    assert _checks.check_seed("f", 0) == 0
    torch.Generator().manual_seed(_checks.check_seed("f", 2**63 - 1))  # the bound torch takes
    with pytest.raises(TypeError, match="an int in \\[0, 2\\*\\*63 - 1\\], got NoneType"):
        _checks.check_seed("f", None, none=False)


def test_check_bool_and_choice() -> None:
    assert _checks.check_bool("f", "flag", np.bool_(True)) is True
    for bad in (0, 1, "yes", None):
        with pytest.raises(TypeError, match=r"^f: flag must be a bool, got"):
            _checks.check_bool("f", "flag", bad)
    assert _checks.check_choice("f", "mode", "sum", ("mean", "sum")) == "sum"
    with pytest.raises(ValueError, match=r"^f: mode must be one of \('mean', 'sum'\), got 'max' \(str\)$"):
        _checks.check_choice("f", "mode", "max", ("mean", "sum"))
    for bad in (None, ["sum"], torch.tensor(1)):
        with pytest.raises(ValueError, match=r"^f: mode must be one of"):
            _checks.check_choice("f", "mode", bad, ("mean", "sum"))


def test_tensor_checks() -> None:
    t = torch.zeros(2, 3)
    assert _checks.check_tensor("f", "x", t) is t
    arr = np.zeros((2, 3))
    got = _checks.check_tensor("f", "x", arr, arrays=True)
    assert isinstance(got, torch.Tensor) and got.data_ptr() == arr.ctypes.data  # shares memory
    with pytest.raises(TypeError, match=r"^f: x must be a torch\.Tensor of shape \(N, D\), got ndarray"):
        _checks.check_tensor("f", "x", arr, shape="(N, D)")
    with pytest.raises(TypeError, match=r"^f: x must be a torch\.Tensor or numpy array, got list$"):
        _checks.check_tensor("f", "x", [1.0], arrays=True)
    _checks.check_shape("f", "x", t, (None, 3))
    with pytest.raises(ValueError, match=r"^f: x must have shape \(N, D\), got \(2, 3, 1\)$"):
        _checks.check_shape("f", "x", t[..., None], (None, None), doc="(N, D)")
    with pytest.raises(ValueError, match=r"^f: w must have shape \(2, 4\), got \(2, 3\)$"):
        _checks.check_shape("f", "w", t, (2, 4))
    _checks.check_floating("f", "x", t.half())
    for dtype in (torch.int64, torch.bool, torch.complex64):
        with pytest.raises(TypeError, match=f"^f: x must be a floating-point tensor, got dtype {dtype}$"):
            _checks.check_floating("f", "x", t.to(dtype))
    _checks.check_real_dtype("f", "x", t.long())
    with pytest.raises(TypeError, match=r"^f: x must be real, got dtype torch\.complex64$"):
        _checks.check_real_dtype("f", "x", t.to(torch.complex64))


def test_check_same_device() -> None:
    _checks.check_same_device("f", x=torch.zeros(1), y=torch.zeros(2))
    with pytest.raises(ValueError, match=r"^f: x and y must be on one device, got x on cpu and y on meta$"):
        _checks.check_same_device("f", x=torch.zeros(1), y=torch.zeros(1, device="meta"))


def test_exact_float() -> None:
    x = torch.tensor([2**53, -(2**53), 3])
    assert torch.equal(_checks.exact_float("f", "a", x), x.double())
    half = torch.ones(2, dtype=torch.float16)
    assert _checks.exact_float("f", "a", half) is half
    assert _checks.exact_float("f", "a", torch.tensor([True])).dtype == torch.float64
    for bad in (
        torch.tensor([2**53 + 1]),
        torch.tensor([-(2**53) - 1]),
        torch.tensor([2**63], dtype=torch.uint64),
    ):
        with pytest.raises(ValueError, match=r"^f: a holds u?int64 values beyond 2\*\*53"):
            _checks.exact_float("f", "a", bad)


def test_dtypes() -> None:
    assert _checks.compute_dtype(torch.zeros(1, dtype=torch.float64)) == torch.float64
    assert _checks.compute_dtype(torch.bfloat16) == torch.float32
    assert _checks.compute_dtype(torch.int64) == torch.float32
    a, b = torch.zeros(1), torch.zeros(1, dtype=torch.float64)
    assert _checks.dtype_reasons("triton", _checks.TRITON_DTYPES, [a, a.half()]) == []
    assert _checks.dtype_reasons("triton", _checks.TRITON_DTYPES, [a, b, b]) == [
        "triton takes float32, bfloat16 or float16 inputs, got torch.float64"
    ]
    assert _checks.dtype_reasons("cpp", (torch.float64,), [a]) == [
        "cpp takes float64 inputs, got torch.float32"
    ]


def test_pow2_is_exact_over_the_float64_range() -> None:
    k = torch.arange(-1022, 1024)
    got = _checks.pow2(k, torch.float64)
    want = torch.tensor([math.ldexp(1.0, int(i)) for i in k], dtype=torch.float64)
    assert torch.equal(got, want)
    assert torch.equal(
        _checks.pow2(torch.tensor([-126, 0, 127]), torch.float32), torch.tensor([2.0**-126, 1, 2.0**127])
    )


_MAGNITUDES = [
    0.0,
    1e-310,
    2.0**-402,
    2.0**-401,
    1.0,
    3.5e5,
    2.0**400 * (1 - 2**-53),
    2.0**400,
    1e300,
    math.inf,
    math.nan,
]


def test_magnitude_shift_brings_out_of_range_values_into_half_to_one() -> None:
    low, high = 2.0**-401, 2.0**400
    m = np.array(_MAGNITUDES)
    k = _checks.magnitude_shift(m, low=low, high=high)
    assert k.dtype == np.int64
    outside = np.isfinite(m) & (m > 0) & ((m < low) | (m >= high))
    assert np.all(k[~outside] == 0), "ordinary, zero and non-finite magnitudes are left alone"
    scaled = np.ldexp(m[outside], k[outside])
    assert np.all((scaled >= 0.5) & (scaled < 1)), scaled
    kt = _checks.magnitude_shift(torch.tensor(_MAGNITUDES, dtype=torch.float64), low=low, high=high)
    assert kt.dtype == torch.int64 and kt.tolist() == k.tolist(), "tensors and arrays agree"
    assert _checks.magnitude_shift(1e-310, low=low, high=high, limit=1022) == 1022  # a float goes too
    assert (
        _checks.magnitude_shift(
            torch.tensor([1e300], dtype=torch.float64), low=low, high=high, limit=100
        ).item()
        == -100
    )


def test_the_frexp_exponent_from_the_bits_is_torchs() -> None:
    g = torch.Generator().manual_seed(0)
    m = torch.rand(20000, generator=g, dtype=torch.float64) * 10.0 ** torch.randint(
        -320, 308, (20000,), generator=g
    )
    edges = [
        0.0,
        -0.0,
        math.inf,
        -math.inf,
        math.nan,
        -3.0,
        0.5,
        1.0,
        2.0**-1022,
        2.0**-1074,
        3 * 2.0**-1074,
        2.0**-1023,
        1.7976931348623157e308,
        0.75,
    ]
    m = torch.cat([m[m > 0], torch.tensor(edges, dtype=torch.float64)])
    assert torch.equal(_checks._frexp_exponent(m), torch.frexp(m).exponent.to(torch.int64))


def test_magnitude_shift_matches_the_data_loaders_former_shift() -> None:
    """The rule data/_io.py had before adopting this helper: |frexp exponent| <= 400 stays unscaled, i.e.
    low 2**-401 and high 2**400 here, bit for bit (its data files were written with it)."""
    m = np.array(_MAGNITUDES)
    _, exponent = np.frexp(m)
    former = np.where((m == 0) | (np.abs(exponent) <= 400), 0, -exponent)
    np.testing.assert_array_equal(_checks.magnitude_shift(m, low=2.0**-401, high=2.0**400), former)


@pytest.mark.parametrize(
    ("window", "warns"),
    [
        ((-0.2, 0.8), False),
        ((0.0, 0.2), False),
        ((-0.21, 0.8), False),
        ((0.0, 5.0), True),
        ((-1.0, 0.1), True),
    ],
)
def test_a_time_window_beyond_the_samples_warns(window: tuple[float, float], warns: bool) -> None:
    times = -0.2 + 0.01 * np.arange(100)  # THINGS-EEG2's epochs: -0.2 to 0.79 s at 100 Hz
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _checks.warn_if_window_clipped("f", "time_window", *window, times, "EEG")
    assert len(caught) == warns
    if warns:
        assert str(caught[0].message) == (
            f"f: time_window [{window[0]:g}, {window[1]:g}] s reaches beyond the EEG samples (-0.200 to "
            "0.790 s); only the samples within both are used"
        )


def test_an_output_folder_is_replaced_only_where_nothing_else_is_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    check = _checks.check_out_folder
    new = tmp_path / "new"
    assert check("f", "out", new, False, marker="summary.json") == str(new)
    with pytest.raises(ValueError, match=r"^f: out must name a folder, got '' \(an empty path\)$"):
        check("f", "out", "", True, marker="summary.json")  # '' is the current folder to os.path
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file, not a folder"):
        check("f", "out", tmp_path / "file", True, marker="summary.json")
    with pytest.raises(FileExistsError, match=f"is under {str(tmp_path / 'file')!r}, which is a file"):
        check("f", "out", tmp_path / "file" / "x" / "y", False, marker="summary.json")
    with monkeypatch.context() as m:  # a read-only folder (root may write in any: access is faked)
        m.setattr(_checks.os, "access", lambda p, mode: os.fspath(p) != str(tmp_path))
        with pytest.raises(PermissionError, match=f"no permission to write in {str(tmp_path)!r}"):
            check("f", "out", tmp_path / "new" / "x", False, marker="summary.json")
    mine = tmp_path / "mine"  # an earlier output: replaced with overwrite only
    mine.mkdir()
    (mine / "summary.json").write_text("{}")
    with pytest.raises(FileExistsError, match="is not empty; pass overwrite=True"):
        check("f", "out", mine, False, marker="summary.json")
    assert check("f", "out", mine, True, marker="summary.json") == str(mine)
    # another command's summary.json: told apart by the keys this command's has
    with pytest.raises(
        FileExistsError, match=r"holds another command's output \(its summary.json lacks a, b\)"
    ):
        check("f", "out", mine, True, marker="summary.json", marker_keys=("a", "b"))
    (mine / "summary.json").write_text('{"a": 1, "b": 2}')
    assert check("f", "out", mine, True, marker="summary.json", marker_keys=("a", "b")) == str(mine)
    other = tmp_path / "other"  # a folder the call did not write: never replaced
    (other / "data").mkdir(parents=True)
    (other / "thesis.txt").write_text("x")
    with pytest.raises(
        FileExistsError,
        match=r"holds no summary.json, so f did not write it, .* \(it holds data, thesis.txt\)",
    ):
        check("f", "out", other, True, marker="summary.json")
    # without overwrite the same answer at once: adding the flag would not help
    with pytest.raises(FileExistsError, match=r"is not empty, and holds no summary.json, so f did not"):
        check("f", "out", other, False, marker="summary.json")
    # what the call does not write in an earlier output of it: refused, named, kept; where the output
    # has no manifest, as ``known`` says
    (mine / "notes.txt").write_text("x")
    known = lambda path: path == "summary.json"
    with pytest.raises(FileExistsError, match=r"holds what f did not write \(notes.txt\), which overwrite"):
        check("f", "out", mine, True, marker="summary.json", known=known)
    assert (mine / "notes.txt").read_text() == "x"
    (mine / "notes.txt").unlink()
    assert check("f", "out", mine, True, marker="summary.json", known=known) == str(mine)
    # an input inside the folder, or the folder itself, would be deleted by the replacement
    (mine / "brain.npy").write_text("x")
    for given in (mine / "brain.npy", mine):
        with pytest.raises(ValueError, match=f"holds the input {str(given)!r}, which writing the output"):
            check("f", "out", mine, True, marker="summary.json", inputs=[tmp_path / "a.npy", given])
    # the current folder and those above it, even when they look like an output
    monkeypatch.chdir(mine)
    for folder in (".", mine, tmp_path):
        (tmp_path / "summary.json").write_text("{}")
        with pytest.raises(FileExistsError, match="is the current folder, one above it or the home folder"):
            check("f", "out", folder, True, marker="summary.json")


@pytest.mark.parametrize("compiled", [True, False])
def test_nonfinite_keys_names_every_tensor_with_nan_or_inf(compiled: bool, monkeypatch) -> None:
    """The state-dict check of every weights loader: NaN or inf anywhere (a single entry, a 0-dim tensor,
    float16 and complex, a non-contiguous view) is found, through the compiled pass for float32 / float64
    and through torch.isfinite otherwise (or without the extension); integers and empty tensors pass."""
    if not compiled:
        monkeypatch.setattr("fastalign._ext.why_ops_missing", lambda ops, **kw: "not built")
    elif _ext_missing():
        pytest.skip("the compiled extension is not built")
    big = torch.zeros(1_000_003)
    big[777_777] = float("nan")
    state = {
        "nan": big,
        "ones": torch.ones(3, 4),
        "inf64": torch.tensor([1.0, float("-inf")], dtype=torch.float64),
        "half": torch.tensor([1.0, float("inf")], dtype=torch.float16),
        "complex": torch.tensor([complex(1, float("nan"))]),
        "empty": torch.zeros(0),
        "scalar": torch.tensor(float("nan")),
        "ints": torch.arange(5),
        "view": torch.tensor([[1.0, float("inf")], [2.0, 3.0]]).t(),
        "huge": torch.tensor([3.4e38, -3.4e38]),
    }
    seen = []
    real = torch.isfinite
    monkeypatch.setattr(torch, "isfinite", lambda v: seen.append(v.dtype) or real(v))
    assert _checks.nonfinite_keys(state) == ["nan", "inf64", "half", "complex", "scalar", "view"]
    read_by_torch = {torch.float16, torch.complex64} | (set() if compiled else {torch.float32, torch.float64})
    assert set(seen) == read_by_torch


def _ext_missing() -> bool:
    from fastalign import _ext

    return _ext.why_ops_missing(["rsa_row_stats"]) is not None
