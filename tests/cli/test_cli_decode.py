"""``fastalign decode``: flags map onto fastalign.train.decode, per-seed and mean +- SEM output with chance,
a ReAlnet run folder as the image model, arrays from .npy files, usage errors and one-line failures.

Runs use the shared synthetic brain of the ``aligned_runs`` fixture (never written into: embeddings go
to a cache under tmp_path) with the synthetic ground truth as the image model unless a test needs a
ReAlnet, and one short epoch: the recipe's results are tests/train/test_decode.py's business.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fastalign.cli import main, parser
from fastalign.cli.common import CLI_ONLY
from fastalign.data import load_preprocessed_eeg
from fastalign.train import decode

SHORT = ["--epochs", "1", "--batch-size", "16", "--lr", "3e-3", "--no-progress", "--amp", "fp32"]
SMALL = ["--encoder-option", "n_filters=16", "dropout=0.25", "proj_dropout=0.25"]


def _exit_status(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code or 0)


def test_every_decode_argument_is_a_flag() -> None:
    args = parser().parse_args(["decode", "--data", "d", "--out", "o"])
    assert set(vars(args)) - set(CLI_ONLY) == set(inspect.signature(decode).parameters) - {"hooks"}
    defaults = {k: p.default for k, p in inspect.signature(decode).parameters.items()}
    for name in (
        "epochs",
        "batch_size",
        "lr",
        "weight_decay",
        "temperature",
        "learn_temperature",
        "patience",
    ):
        assert getattr(args, name) == defaults[name], name  # the published settings, as the function's


def test_seeds_mean_sem_and_chance(
    aligned_runs: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "dec"
    argv = ["decode", "--data", str(aligned_runs.root), "--subject", "1", "--image-model", "features"]
    argv += [
        "--out",
        str(out),
        "--seed",
        "3",
        "4",
        "--fixed-temperature",
        "--temperature",
        "0.1",
        *SHORT,
        *SMALL,
    ]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads((out / "summary.json").read_text())
    assert [p["seed"] for p in summary["per_seed"]] == [3, 4]
    # what the numbers are of: runs compared by their printed results could not tell
    assert lines.pop(0) == "decoding sub-01 against the image model features (synthetic ground truth)"
    assert summary["image_model"] == "features (synthetic ground truth)" and summary["subject"] == 1
    for line, seed in zip(lines[:2], (3, 4), strict=True):
        per = json.loads((out / f"seed-{seed}" / "summary.json").read_text())
        assert line.startswith(f"seed {seed} {out / f'seed-{seed}'}: top-1 {per['top1']:.4f}  top-3 ")
        assert f"top-5 {per['top5']:.4f} (best epoch {per['best_epoch']} of 1)" in line
    assert lines[2] == (
        f"mean +- SEM of 2 seeds: top-1 {summary['top1']:.4f} +- {summary['top1_sem']:.4f}  "
        f"top-3 {summary['top3']:.4f} +- {summary['top3_sem']:.4f}  "
        f"top-5 {summary['top5']:.4f} +- {summary['top5_sem']:.4f}"
    )
    assert lines[3] == "chance (30-image gallery): top-1 0.0333  top-3 0.1000  top-5 0.1667"
    assert len(lines) == 4
    config = json.loads((out / "seed-3" / "config.json").read_text())["config"]
    assert config["learn_temperature"] is False and config["temperature"] == 0.1
    assert config["encoder_options"] == {"n_filters": 16, "dropout": 0.25, "proj_dropout": 0.25}


def test_realnet_run_folder_and_array_files(
    aligned_runs: Any,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # the session's cache of the shared runs' embeddings (tests/train/test_decode.py's too)
    root, cache = str(aligned_runs.root), tmp_path_factory.getbasetemp() / "decode-embeddings"
    argv = ["decode", "--data", root, "--image-model", str(aligned_runs.paired), "--layer", "response"]
    argv += ["--image-size", "32", "--cache-dir", str(cache), "--out", str(tmp_path / "r"), *SHORT, *SMALL]
    assert main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == (
        f"decoding sub-01 against the image model realnet run {aligned_runs.paired} response, aligned to "
        "sub-01 (eeg)"
    )
    assert printed[1].startswith(f"seed 0 {tmp_path / 'r'}: top-1 ")
    config = json.loads((tmp_path / "r" / "config.json").read_text())["config"]
    assert config["image_model"] == f"realnet run {aligned_runs.paired} response"
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert (
        summary["image_model"] == config["image_model"]
        and summary["image_model_aligned_to"] == "sub-01 (eeg)"
    )
    assert config["embed_dim"] == 340  # the ReAlnet's predicted EEG: 17 channels x 20 samples
    assert os.listdir(cache) and not (aligned_runs.root / "embeddings").exists()

    files = []
    for split in ("training", "test"):
        files.append(str(tmp_path / f"{split}.npy"))
        np.save(files[-1], load_preprocessed_eeg(aligned_runs.root / "preprocessed_data", 2, split).data)
    argv = ["decode", "--data", root, "--image-model", "features", "--responses", *files]
    assert main([*argv, "--out", str(tmp_path / "a"), *SHORT, *SMALL]) == 0
    config = json.loads((tmp_path / "a" / "config.json").read_text())["config"]
    assert config["modality"] == "array" and config["response_shape"] == [17, 100]


@pytest.mark.parametrize(
    "flags",
    [
        ["--encoder-option", "n_filters"],
        ["--encoder-option", "1x=2"],
        ["--epochs", "0"],
        ["--encoder", "transformer"],
        ["--resume", "--overwrite"],
        ["--seed"],
        ["--random-repetitions", "0"],
        ["--responses", "train.npy"],
    ],
)
def test_usage_errors_exit_2(flags: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert _exit_status(["decode", "--data", "d", "--out", "o", *flags]) == 2
    assert "usage:" in capsys.readouterr().err


def test_missing_weights_is_one_line_and_exit_1(
    aligned_runs: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "cornet_s.pth"
    argv = [
        "decode",
        "--data",
        str(aligned_runs.root),
        "--out",
        str(tmp_path / "o"),
        "--weights",
        str(missing),
    ]
    assert main([*argv, *SHORT]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fastalign decode: error: ") and str(missing) in err and err.count("\n") == 1


def test_the_printed_result_says_what_it_is_of() -> None:
    """The subjects (those trained on, when others) and the image model of each seed's run."""
    from fastalign.cli.decode import decoded_with

    loso = {"subject": 1, "train_subjects": [2, 3], "image_model": "features (synthetic ground truth)"}
    assert decoded_with([loso], {}) == (
        "decoding sub-01 (trained on sub-02, sub-03) against the image model features (synthetic ground "
        "truth)"
    )
    seeded = [
        {"subject": 2, "train_subjects": [2], "image_model": f"cornet_s IT (random, seed {n})"}
        for n in (0, 1)
    ]
    assert decoded_with(seeded, {}) == (
        "decoding sub-02 against the image models cornet_s IT (random, seed 0), cornet_s IT (random, seed 1)"
    )
