"""``fastalign preprocess``: the flags become preprocess_things_eeg2's arguments (the recipe's values where a
flag is not given), and the files it writes are the function's output."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest

from fastalign.cli import main, parser
from fastalign.cli.preprocess import _options
from fastalign.data import (
    PUBLISHED_SEED,
    load_preprocessed_eeg,
    make_synthetic_things,
    preprocess_things_eeg2,
)


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Raw files only (preprocess=False): two subjects, one session, 250 Hz."""
    root = tmp_path_factory.mktemp("raw") / "data"
    make_synthetic_things(
        root, n_subjects=2, n_train_concepts=3, images_per_concept=1, n_test=3, n_sessions=1,
        test_repetitions=2, raw_sfreq=250.0, n_extra_channels=1, image_size=8, preprocess=False,
    )  # fmt: skip
    return root


def _every_subject(raw: Path, out: Path) -> list[str]:
    """``fastalign preprocess`` of every subject of ``raw`` into ``out``, 2 test repetitions."""
    flags = ["--subject", "all", "--out", str(out), "--test-repetitions", "2"]
    return ["preprocess", "--data", str(raw), *flags]


def _parsed(*flags: str) -> dict:
    return _options(parser().parse_args(["preprocess", "--data", "d", *flags]))


def test_flags_not_given_follow_the_recipe() -> None:
    assert _parsed() == {
        "recipe": "eeg_encoding", "tmin": -0.2, "training_repetitions": 2, "test_repetitions": 20,
        "seed": PUBLISHED_SEED,
    }  # fmt: skip
    given = _parsed(
        "--recipe", "alignvis", "--sfreq", "none", "--channels", "O1", "Oz", "--tmax", "0.5", "--no-crop",
        "--baseline", "none", "-0.1", "--mvnn-dim", "time", "--mvnn-covariance", "session",
        "--sessions", "2", "--training-repetitions", "none", "--seed", "3",
    )  # fmt: skip
    assert given == {
        "recipe": "alignvis", "tmin": -0.2, "training_repetitions": None, "test_repetitions": 20, "seed": 3,
        "sessions": [2], "tmax": 0.5, "mvnn_dim": "time", "mvnn_covariance": "session", "sfreq": None,
        "channels": ["O1", "Oz"], "baseline": (None, -0.1), "crop": None,
    }  # fmt: skip
    assert _parsed("--channels", "^O", "--crop", "0", "0.5", "--no-baseline")["channels"] == "^O"
    assert _parsed("--crop", "0", "0.5")["crop"] == (0.0, 0.5)
    assert _parsed("--no-baseline")["baseline"] is None


def test_writes_the_function_output_for_every_subject(
    raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pre"
    argv = _every_subject(raw, out)
    assert main([*argv, "--sfreq", "50", "--no-progress"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [line[:6] for line in printed] == ["sub-01", "sub-02"] and "at 50 Hz" in printed[0]
    for subject in (1, 2):
        direct = preprocess_things_eeg2(
            raw / "raw_data", subject, sfreq=50.0, test_repetitions=2, write=False
        )
        for split in ("training", "test"):
            written = load_preprocessed_eeg(out, subject, split)
            np.testing.assert_array_equal(written.data, getattr(direct, split).data)
            assert written.ch_names == getattr(direct, split).ch_names


def test_errors(raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["preprocess", "--data", str(tmp_path / "none")]) == 1
    assert "--data: " in capsys.readouterr().err
    assert main(["preprocess", "--data", str(raw), "--subject", "1", "3", "--out", str(tmp_path / "o")]) == 1
    captured = capsys.readouterr()  # refused before sub-01 is preprocessed
    assert "--subject: no sub-03 in " in captured.err and "which holds sub-01, sub-02" in captured.err
    assert "preprocessing" not in captured.err and not (tmp_path / "o").exists()
    bad = ["preprocess", "--data", str(raw), "--out", str(tmp_path / "o"), "--channels", "("]
    assert main(bad) == 1
    assert "not a valid regex" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit):  # argparse: --crop and --no-crop together
        main(["preprocess", "--data", str(raw), "--crop", "0", "1", "--no-crop"])


def test_files_already_there_are_replaced_only_with_overwrite(
    raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pre"
    argv = [*_every_subject(raw, out), "--no-progress"]
    assert main([*argv, "--sfreq", "50"]) == 0
    capsys.readouterr()
    before = {p: p.read_bytes() for p in sorted(out.rglob("*.npy"))}
    assert len(before) == 4  # two subjects, two splits
    # a second recipe into the same folder: refused before any subject is preprocessed, nothing changes
    assert main([*argv, "--sfreq", "25"]) == 1
    err = capsys.readouterr().err
    assert "--out: " in err and "preprocessed_eeg_training.npy" in err and "and 3 more" in err
    assert "--overwrite" in err
    assert {p: p.read_bytes() for p in sorted(out.rglob("*.npy"))} == before
    # one subject's files are enough to refuse
    (out / "sub-01" / "preprocessed_eeg_training.npy").unlink()
    (out / "sub-01" / "preprocessed_eeg_test.npy").unlink()
    assert main([*argv, "--sfreq", "25"]) == 1
    assert "sub-02" in capsys.readouterr().err and not (out / "sub-01" / "preprocessed_eeg_test.npy").exists()
    assert main([*argv, "--sfreq", "25", "--overwrite"]) == 0
    for subject in (1, 2):
        assert load_preprocessed_eeg(out, subject, "test").times[1] - load_preprocessed_eeg(
            out, subject, "test"
        ).times[0] == pytest.approx(1 / 25)


def test_a_stop_between_subjects_says_which_were_written(
    raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (or an error) during the second subject: the first is written with the new settings, the
    second keeps its previous files (each is replaced as a unit), and the command says so."""
    import fastalign.data

    real = fastalign.data.preprocess_things_eeg2

    def second_interrupted(raw_dir: str, subject: int, *args: object, **kwargs: object) -> object:
        if subject == 2:
            raise KeyboardInterrupt
        return real(raw_dir, subject, *args, **kwargs)

    monkeypatch.setattr(fastalign.data, "preprocess_things_eeg2", second_interrupted)
    assert main([*_every_subject(raw, tmp_path / "pre"), "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert "stopped at sub-02; written with these settings: sub-01; not written: sub-02 (each subject" in err


def test_a_failure_after_the_last_subject_keeps_its_own_error(
    raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every subject written, then the last line's print fails (a full disk under a redirect): that error
    is reported, not an IndexError of the stop message (no subject is left unwritten)."""
    import builtins

    import fastalign.cli.preprocess as cli_preprocess

    def closed_pipe(*args: object, **kwargs: object) -> None:
        if args and str(args[0]).startswith("sub-02:"):
            raise OSError(errno.ENOSPC, "stdout: no space left on device")
        builtins.print(*args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(cli_preprocess, "print", closed_pipe, raising=False)
    assert main([*_every_subject(raw, tmp_path / "pre"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "no space left" in err and "index out of range" not in err and "stopped at" not in err
