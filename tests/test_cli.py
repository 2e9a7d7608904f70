"""The ``fastalign`` command: subcommands, --help with examples, exit statuses and one-line errors.

Most checks call :func:`fastalign.cli.main` in this process; one runs ``python -m fastalign`` to check
the entry point and its exit status end to end (a new interpreter imports torch: seconds).
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from fastalign.cli import COMMANDS, main, parser


def _exit_status(argv: list[str]) -> int:
    """main's status, or the status of the SystemExit argparse raises (help, usage errors)."""
    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code or 0)


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert _exit_status(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("synth", "align", "evaluate", "decode", "info"):
        assert name in out


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    import fastalign

    assert _exit_status(["--version"]) == 0  # it was a usage error (status 2): COMMAND required
    assert capsys.readouterr().out == f"fastalign {fastalign.__version__}\n"


@pytest.mark.parametrize("command", [c.name for c in COMMANDS])
def test_each_command_help_shows_an_example(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _exit_status([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "example" in out and f"fastalign {command}" in out


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["nope"],
        ["align"],  # --data and --out are required
        ["align", "--data", "d", "--out", "o", "--epochs", "0"],
        ["align", "--data", "d", "--out", "o", "--subject", "x"],
        ["align", "--data", "d", "--out", "o", "--subject", "all", "2"],
        ["align", "--data", "d", "--out", "o", "--modality", "meg"],
        ["align", "--data", "d", "--out", "o", "--resume", "--overwrite"],
        ["synth"],
        ["synth", "d", "--sessions", "3"],  # 1 or even: each training image is shown in half of them
        ["synth", "d", "--test-images", "2"],  # an RDM needs 3 conditions
        ["decode", "--data", "d", "--out", "o", "--learn-temperature", "--fixed-temperature"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert _exit_status(argv) == 2
    err = capsys.readouterr().err
    assert "usage:" in err
    if "x" in argv:  # --subject x: the message offers 'all' too
        assert "expected a positive integer (2 or sub-02) or 'all', got 'x'" in err


def test_subjects_are_given_as_numbers_or_as_the_outputs_name_them() -> None:
    """--subject 2 and --subject sub-02 (how every output names the subject) are subject 2."""
    from fastalign.cli import parser

    for given, want in ((["2"], 2), (["sub-02"], 2), (["sub-1", "3"], [1, 3]), (["all"], "all")):
        args = parser().parse_args(["evaluate", "--data", "d", "--models", "cornet_s", "--out", "o",
                                    "--subject", *given])  # fmt: skip
        assert args.subjects == want, given
    for bad in ("sub-00", "sub-x", "sub-", "0"):
        assert _exit_status(["align", "--data", "d", "--out", "o", "--subject", bad]) == 2


@pytest.mark.parametrize(
    ("command", "value", "words"),
    [
        ("align", "gpu", "expected a torch device such as cpu, cuda or cuda:1, got 'gpu'"),
        ("decode", "cuda:99", "'cuda:99': "),
        ("evaluate", "xpu:0", "'xpu:0': no xpu device here"),
    ],
)
def test_the_device_is_checked_before_anything_runs(
    command: str, value: str, words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # torch's own errors came after the data and model stages, naming no flag
    required = {"align": ["--data", "d", "--out", "o"], "decode": ["--data", "d", "--out", "o"],
                "evaluate": ["--data", "d", "--models", "cornet_s", "--out", "o"]}  # fmt: skip
    assert _exit_status([command, *required[command], "--device", value]) == 2
    err = capsys.readouterr().err
    assert "--device" in err and words in err
    if not torch.cuda.is_available():
        assert _exit_status([command, *required[command], "--device", "cuda"]) == 2
        assert "'cuda': no CUDA device here" in capsys.readouterr().err
    assert parser().parse_args([command, *required[command], "--device", "cpu"]).device == "cpu"


_REQUIRED = {
    "align": ["--data", "d", "--out", "o"],
    "decode": ["--data", "d", "--out", "o"],
    "evaluate": ["--data", "d", "--models", "cornet_s", "--out", "o"],
    "rsa": ["--brain", "b.npy", "--out", "o"],
    "preprocess": ["--data", "d"],
}


@pytest.mark.parametrize(
    ("command", "flag", "bad", "expected", "good"),
    [
        ("align", "--lr", ["-1", "0", "nan"], "a finite number > 0", "1e-4"),
        ("align", "--beta", ["-0.5", "inf"], "a finite number >= 0", "0"),
        ("align", "--val-fraction", ["1.5", "1", "-0.1"], "a number in [0, 1)", "0"),
        ("align", "--clip-grad-norm", ["0", "-2"], "a finite number > 0", "5"),
        ("decode", "--lr", ["-1e-3", "x"], "a finite number > 0", "2e-4"),
        ("decode", "--weight-decay", ["-0.1"], "a finite number >= 0", "0"),
        ("decode", "--temperature", ["0", "-inf"], "a finite number > 0", "0.04"),
        ("decode", "--val-fraction", ["1"], "a number in [0, 1)", "0.5"),
        ("evaluate", "--alpha", ["3", "0", "1"], "a probability in (0, 1)", "0.01"),
        ("evaluate", "--threshold-p", ["-0.05"], "a probability in (0, 1)", "0.001"),
        ("rsa", "--sfreq", ["0", "-250"], "a finite number > 0", "250"),
        ("preprocess", "--sfreq", ["0", "-5", "nan"], "a finite number > 0", "100"),
        ("rsa", "--tmin", ["nan", "inf"], "a finite number", "-0.2"),
        ("evaluate", "--seed", ["-1", "1.5", str(2**63)], "an integer in [0, 2**63 - 1]", "7"),
        ("preprocess", "--tmin", ["-inf"], "a finite number", "-0.1"),
        ("preprocess", "--tmax", ["nan"], "a finite number", "0.9"),
        ("align", "--num-workers", ["-1", "x"], "an integer >= 0", "2"),
    ],
)
def test_number_flags_out_of_range_are_usage_errors(
    command: str, flag: str, bad: list[str], expected: str, good: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # the same rule the called function applies, at parse time: exit 2 naming the flag, before any data is
    # read (the function's own check exited 1 after the command had started)
    for value in bad:
        assert _exit_status([command, *_REQUIRED[command], f"{flag}={value}"]) == 2  # = : "-1e-3" is a value
        err = capsys.readouterr().err
        assert f"argument {flag}: expected {expected}, got {value!r}" in err
    args = parser().parse_args([command, *_REQUIRED[command], flag, good])
    assert getattr(args, flag[2:].replace("-", "_")) == float(good)


def test_a_negative_seed_among_several_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert _exit_status(["decode", *_REQUIRED["decode"], "--seed", "1", "-3"]) == 2
    assert "argument --seed: expected an integer in [0, 2**63 - 1], got '-3'" in capsys.readouterr().err
    assert parser().parse_args(["decode", *_REQUIRED["decode"], "--seed", "7", "42"]).seed == [7, 42]


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["align", "--data", "d", "--out", ""], "--out"),
        (["decode", "--data", "d", "--out", ""], "--out"),
        (["demo", "--out", ""], "--out"),
        (["evaluate", "--data", "d", "--models", "cornet_s", "--out", ""], "--out"),
        (["preprocess", "--data", "d", "--out", ""], "--out"),
        (["rsa", "--brain", "b.npy", "--out", ""], "--out"),
        (["synth", ""], "DATA"),
    ],
)
def test_an_empty_output_path_is_a_usage_error(
    argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # '' is the current folder to os.path: an unset variable (--out "$OUT") with --overwrite named it
    assert _exit_status(argv) == 2
    assert f"argument {flag}: expected a folder path, got '' (an empty path)" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["align", "evaluate"])
def test_a_time_window_must_run_forward(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    # a reversed or empty window exited 1 from the function's check, after the flags were taken
    for tmin, tmax in (("0.2", "0"), ("0.5", "0.5"), ("nan", "1")):
        assert _exit_status([command, *_REQUIRED[command], "--time-window", tmin, tmax]) == 2
        err = capsys.readouterr().err
        assert (
            f"argument --time-window: expected TMIN < TMAX in seconds, got {float(tmin):g} {float(tmax):g}"
            in err
        )
    args = parser().parse_args([command, *_REQUIRED[command], "--time-window", "-0.1", "0.3"])
    assert args.time_window == (-0.1, 0.3)


def test_decode_names_a_missing_responses_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "train.npy")
    argv = ["decode", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--responses", missing, missing]
    assert main(argv) == 1
    err = capsys.readouterr().err  # was numpy's bare "[Errno 2] No such file or directory"
    assert f"decode: --responses train file: expected a file at {missing!r}" in err


def test_a_failure_is_one_line_on_stderr_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["align", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run")]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastalign align: error: align: data=")
    assert "missing" in lines[0] and "Traceback" not in captured.err


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing"):
        main(["--debug", "align", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run")])
    with pytest.raises(FileNotFoundError, match="missing"):  # after the subcommand too
        main(["align", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run"), "--debug"])


def test_a_warning_is_one_line_naming_the_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import fastalign.info

    def report() -> str:
        warnings.warn(
            "evaluate: time_window [0, 5] s reaches beyond the EEG samples", UserWarning, stacklevel=1
        )
        return "the report"

    monkeypatch.setattr(fastalign.info, "report", report)
    assert main(["info"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "the report\n"
    assert (
        captured.err
        == "fastalign info: warning: evaluate: time_window [0, 5] s reaches beyond the EEG samples\n"
    )
    assert warnings.showwarning is not None and "fastalign" not in repr(warnings.showwarning)  # restored
    with pytest.warns(UserWarning, match="reaches beyond"):  # --debug: Python's own warnings
        assert main(["info", "--debug"]) == 0


def test_info_prints_the_report(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("fastalign ") and "backends" in out


def test_synth_writes_a_dataset_and_refuses_to_overwrite_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "synth"
    sizes = ["--train-concepts", "3", "--images-per-concept", "1", "--test-images", "3", "--sessions", "1"]
    argv = ["synth", str(root), "--subjects", "2", "--seed", "3", "--image-size", "16", *sizes]
    assert main(argv) == 0
    assert "subjects [1, 2]" in capsys.readouterr().out
    assert sorted(os.listdir(root / "preprocessed_data")) == ["sub-01", "sub-02"]
    assert main(argv) == 1  # a folder that holds files needs --overwrite
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "pass overwrite=True" in err[0]
    assert main([*argv, "--overwrite", "--seed", "4"]) == 0  # a dataset synth wrote is replaced
    # ... but not with what a user added to it (its manifest lists what synth wrote): refused and kept
    (root / "NOTES.txt").write_text("my notes")
    (root / "image_set" / "extra.png").write_bytes(b"png")
    assert main([*argv, "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert "holds what make_synthetic_things did not write (NOTES.txt, image_set/extra.png)" in err
    assert (root / "NOTES.txt").read_text() == "my notes" and (root / "image_set" / "extra.png").exists()
    # decode's image-embedding cache (DATA/embeddings), made again on demand, is replaced with the data
    (root / "NOTES.txt").unlink()
    (root / "image_set" / "extra.png").unlink()
    (root / "embeddings").mkdir()
    (root / "embeddings" / "x.npy").write_bytes(b"cache")
    assert main([*argv, "--overwrite"]) == 0 and not (root / "embeddings").exists()
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"x")
    assert main(["synth", str(other), "--overwrite", *sizes]) == 1  # other files never are
    err = capsys.readouterr().err
    assert "holds no ground_truth.npz, so make_synthetic_things did not write it" in err
    assert os.listdir(other) == ["cat.jpg"]


def test_python_dash_m_fastalign_exits_with_the_status(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing")
    done = subprocess.run(
        [sys.executable, "-m", "fastalign", "align", "--data", missing, "--out", str(tmp_path / "o")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith(f"fastalign align: error: align: data={missing!r} is not a folder")


@pytest.mark.parametrize("module", ["fastalign", "fastalign.info"])
def test_a_reader_that_stops_early_ends_the_program_quietly(module: str, tmp_path: Path) -> None:
    # `fastalign info | head -3` printed "error: [Errno 32] Broken pipe" with status 1, and
    # `python -m fastalign.info | head -2` a traceback; the read end is closed before the program writes
    argv = [sys.executable, "-m", module, *(["info"] if module == "fastalign" else [])]
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 141, err
    assert err == ""


def test_a_broken_pipe_that_is_not_the_output_is_a_failure(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a closed standard output ends a command quietly (141): a BrokenPipeError from another pipe (a
    data loader's worker, a subprocess) while the output is fine is a failure, one line and status 1."""
    import fastalign.cli.info as cli_info

    def other_pipe(*args: object, **kwargs: object) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli_info, "print", other_pipe, raising=False)
    assert main(["info"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err == "fastalign info: error: [Errno 32] Broken pipe\n"


@pytest.mark.parametrize("given, subject", [(["3"], 3), (["1", "2"], [1, 2]), (["all"], "all"), ([], 1)])
def test_subject_flag_is_aligns_subject_argument(given: list[str], subject: object) -> None:
    flag = ["--subject", *given] if given else []
    assert parser().parse_args(["align", "--data", "d", "--out", "o", *flag]).subject == subject


def test_sigterm_stops_the_program_as_ctrl_c_does(tmp_path: Path) -> None:
    # batch schedulers send SIGTERM: the process died at once, leaving its temporary files; the program
    # now unwinds as on Ctrl-C (context managers remove them) and exits 143
    import signal
    import subprocess
    import sys

    script = (
        "import sys, time\n"
        "from fastalign import cli\n"
        "build = cli.parser\n"
        "def slow(args):\n"
        "    try:\n"
        "        print('started', flush=True)\n"  # inside: the signal may come right after it
        "        time.sleep(60)\n"
        "    finally:\n"
        "        print('cleaned up', flush=True)\n"
        "def parser():\n"
        "    p = build()\n"
        "    p._subparsers._group_actions[0].choices['info'].set_defaults(func=slow)\n"
        "    return p\n"
        "cli.parser = parser\n"
        "sys.argv = ['fastalign', 'info']\n"
        "sys.exit(cli.entry())\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "started\n"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM  # cleaned up, then ended by the signal, as supervisors expect
    assert out == "cleaned up\n" and err == "fastalign info: terminated (SIGTERM)\n"
