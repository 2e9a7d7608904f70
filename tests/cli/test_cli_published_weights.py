"""``fastalign evaluate --models`` and ``fastalign decode --image-model`` given a published ReAlnet checkpoint
(the published code's ``encoder.pt``: a state dict of CORnet-S and its EEG encoding head, written here by
tests/published_formats.py) end to end, and the errors for a file that is no such checkpoint.

The checkpoint is the shared paired run's ReAlnet (tests/aligned_runs.py) saved as the published code saves
it; the commands must report it under the name and subject it was given and compute what the Python API
computes from the same file. One module-scoped evaluation serves the content tests: the file in its three
spellings, one CORnet-S pass at 32 px (the others read back from the feature cache, keyed by the weights).
Decoding runs one short epoch, its embeddings in the session's cache of the shared runs' (the file's are the
paired run's). Loading a ReAlnet costs about a second (200 MB of CORnet-S): the error cases stop at the file
or before any model runs.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from published_formats import encoder_state_dict, realnet_state_dict  # tests/published_formats.py

import fastalign.eval as fe
from fastalign.cli import main
from fastalign.models import cornet_s, realnet
from fastalign.train import decode

LAYERS = ("IT", "response")
# one short decoding epoch, as tests/cli/test_cli_decode.py runs it: the recipe is tested elsewhere
DECODE = dict(epochs=1, batch_size=16, lr=3e-3, amp="fp32")
ENCODER = dict(n_filters=16, dropout=0.25, proj_dropout=0.25)
DECODE_FLAGS = ["--epochs", "1", "--batch-size", "16", "--lr", "3e-3", "--amp", "fp32", "--no-progress",
                "--encoder-option", "n_filters=16", "dropout=0.25", "proj_dropout=0.25"]  # fmt: skip


@dataclass(frozen=True)
class Published:
    """The paired run's ReAlnet as published checkpoints, and files that are none.

    Attributes:
        file: weights/ReAlnet/sub-01/encoder.pt, the published layout (family ReAlnet, subject sub-01).
        lone: best_model_params.pt, a link to ``file`` in no sub-XX folder (a notebook's, saved beside it).
        wrong: files in a sub-01 folder (so that no subject is missing): ``garbage.pt`` (bytes that are no
            checkpoint), ``cornet_s.pth`` (the runs' starting CORnet-S: a state dict without the head),
            ``notes.txt``.
    """

    file: Path
    lone: Path
    wrong: Path


@pytest.fixture(scope="module")
def published(aligned_runs, tmp_path_factory: pytest.TempPathFactory) -> Published:
    folder = tmp_path_factory.mktemp("published")
    file = folder / "weights" / "ReAlnet" / "sub-01" / "encoder.pt"
    file.parent.mkdir(parents=True)
    torch.save(encoder_state_dict(realnet(weights=aligned_runs.paired)), file)
    lone = folder / "best_model_params.pt"
    lone.symlink_to(file)  # one 200 MB file serves both
    wrong = folder / "wrong" / "sub-01"
    wrong.mkdir(parents=True)
    (wrong / "garbage.pt").write_bytes(b"not a checkpoint at all")
    (wrong / "cornet_s.pth").symlink_to(aligned_runs.cornet_s)
    (wrong / "notes.txt").write_text("x")
    return Published(file, lone, wrong)


@dataclass(frozen=True)
class Run:
    """One command: its exit status, standard output and error."""

    status: int
    out: str
    err: str


def _run(argv: list) -> Run:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = main([str(a) for a in argv])
    return Run(status, stdout.getvalue(), stderr.getvalue())


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _error(run: Run, command: str) -> str:
    """The one line of a failed command, after its "fastalign COMMAND: error: " prefix."""
    lines = run.err.splitlines()
    assert run.status == 1 and len(lines) == 1, (run.status, run.err)
    prefix = f"fastalign {command}: error: "
    assert lines[0].startswith(prefix), lines[0]
    return lines[0][len(prefix) :]


# ------------------------------------------------------------------------------------------- evaluate


@pytest.fixture(scope="module")
def evaluated(aligned_runs, published: Published, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``fastalign evaluate`` of the file as FILE, NAME=FILE and NAME@sub-XX=FILE."""
    out = tmp_path_factory.mktemp("evaluate") / "report"
    models = [published.file, f"pub={published.file}", f"lone@sub-01={published.lone}"]
    run = _run(["evaluate", "--data", aligned_runs.root, "--models", *models, "--image-size", "32",
                "--layers", *LAYERS, "--permutations", "10", "--no-progress", "--out", out])  # fmt: skip
    assert run.status == 0, run.err
    assert run.out.splitlines()[-1] == f"report: {out / 'report.html'}"
    printed = {tuple(line.split()[:4]) for line in run.out.splitlines()}
    for model in ("ReAlnet", "pub", "lone"):
        assert {(model, "eeg", "within", layer) for layer in LAYERS} <= printed, (model, run.out)
    return out


def _similarities(rows: list[dict[str, str]], model: str, model_subject: str) -> dict[tuple, float]:
    return {
        (r["subject"], r["comparison"], r["layer"], r["time"]): float(r["similarity"])
        for r in rows
        if r["model"] == model and r["model_subject"] == model_subject
    }


def test_evaluate_reports_each_spelling_of_a_published_file_as_its_model(
    evaluated: Path, aligned_runs, published: Published
) -> None:
    rows = _csv(evaluated / "results.csv")
    times = fe.load_brain(aligned_runs.root).times
    # the file in weights/ReAlnet/sub-XX/: the family ReAlnet, its subject from the folder; NAME=FILE keeps
    # the folder's subject, NAME@sub-XX=FILE gives one to a file without
    want = {("ReAlnet", "sub-01"), ("pub", "sub-01"), ("lone", "sub-01")}
    assert {(r["model"], r["model_subject"]) for r in rows} == want
    for model, _ in want:
        got = _similarities(rows, model, "sub-01")
        assert {k[:3] for k in got} == {
            (s, c, layer) for s, c in (("sub-01", "within"), ("sub-02", "across-subject")) for layer in LAYERS
        }
        assert len(got) == 2 * len(LAYERS) * len(times)
        assert all(math.isfinite(v) and -1 <= v <= 1 for v in got.values())
    assert all(r["modality"] == "eeg" for r in rows)  # 340 response values: an EEG ReAlnet
    # one file, one model, whatever its spelling
    assert _similarities(rows, "pub", "sub-01") == _similarities(rows, "ReAlnet", "sub-01")
    assert _similarities(rows, "lone", "sub-01") == _similarities(rows, "ReAlnet", "sub-01")

    summary = json.loads((evaluated / "summary.json").read_text())
    assert set(summary["models"]) == {"ReAlnet", "pub", "lone"}
    assert summary["models"]["ReAlnet"]["eeg"]["within"]["response"]["n_subjects"] == 1
    # config.json records where each model came from
    config = json.loads((evaluated / "config.json").read_text())
    assert [(m["name"], m["subject"], m["modality"], m["source"], m["layers"]) for m in config["models"]] == [
        (name, "sub-01", "eeg", str(file), list(LAYERS))
        for name, file in (("ReAlnet", published.file), ("pub", published.file), ("lone", published.lone))
    ]


def test_evaluate_gives_the_python_apis_numbers_for_the_file(
    evaluated: Path, aligned_runs, published: Published
) -> None:
    """EvalModel.from_weights evaluated without a cache: the command's rows of the file, number for number."""
    model = fe.EvalModel.from_weights(published.file)
    assert (model.name, model.subject, model.modality, model.source) == (
        "ReAlnet", "sub-01", "eeg", str(published.file)
    )  # fmt: skip
    api = fe.evaluate(aligned_runs.root, [model], out=None, image_size=32, layers=list(LAYERS),
                      permutations=10, cache_dir=None)  # fmt: skip
    want = {
        (r["subject"], r["comparison"], r["layer"], repr(float(r["time"]))): float(r["similarity"])
        for r in api.rows
    }
    got = {
        (s, c, layer, repr(float(t))): v
        for (s, c, layer, t), v in _similarities(_csv(evaluated / "results.csv"), "ReAlnet", "sub-01").items()
    }
    assert got.keys() == want.keys()
    np.testing.assert_allclose([got[k] for k in want], list(want.values()), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------- backbone-only (realnet.pt)

BACKBONE_LAYERS = ("V4", "IT")


@pytest.fixture(scope="module")
def backbone(aligned_runs, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Run]:
    """The paired run's CORnet-S as the published backbone-only weights/ReAlnet/sub-01/realnet.pt, the same
    file as weights/ReAlnet-fMRI/sub-02/realnet.pt, and ``fastalign evaluate`` of both beside CORnet-S and
    the run folder, on EEG and fMRI: (the EEG file, the report folder, the command)."""
    folder = tmp_path_factory.mktemp("backbone")
    eeg = folder / "weights" / "ReAlnet" / "sub-01" / "realnet.pt"
    fmri = folder / "weights" / "ReAlnet-fMRI" / "sub-02" / "realnet.pt"
    for file in (eeg, fmri):
        file.parent.mkdir(parents=True)
    torch.save(realnet_state_dict(realnet(weights=aligned_runs.paired).backbone), eeg)
    fmri.symlink_to(eeg)
    out = folder / "report"
    models = ["cornet_s", aligned_runs.paired, eeg, fmri]
    run = _run(["evaluate", "--data", aligned_runs.root, "--models", *models, "--weights",
                aligned_runs.cornet_s, "--modality", "eeg", "fmri", "--layers", *BACKBONE_LAYERS,
                "--image-size", "32", "--permutations", "10", "--no-progress", "--out", out])  # fmt: skip
    return eeg, out, run


def test_evaluate_reports_a_backbone_file_as_its_subjects_realnet(backbone, aligned_runs) -> None:
    """A backbone-only file is the ReAlnet of the subject of its sub-XX folder, aligned to the modality its
    family folder names (ReAlnet: EEG, ReAlnet-fMRI: fMRI): compared within and across subjects and across
    modalities, under its family's name, with the numbers of the run it came from at the CORnet-S layers."""
    eeg, out, run = backbone
    assert run.status == 0, run.err
    printed = {tuple(line.split()[:4]) for line in run.out.splitlines()}
    for layer in BACKBONE_LAYERS:
        assert {("ReAlnet", "eeg", "within", layer), ("ReAlnet", "fmri", "across-modality", layer),
                ("ReAlnet-fMRI", "fmri", "within", layer), ("ReAlnet-fMRI", "eeg", "across-modality", layer),
                ("cornet_s", "eeg", "none", layer)} <= printed, run.out  # fmt: skip
    rows = _csv(out / "results.csv")
    kinds = {(r["model"], r["model_subject"], r["modality"], r["subject"], r["comparison"]) for r in rows}
    assert kinds >= {
        ("ReAlnet", "sub-01", "eeg", "sub-01", "within"),
        ("ReAlnet", "sub-01", "eeg", "sub-02", "across-subject"),
        ("ReAlnet", "sub-01", "fmri", "sub-01", "across-modality"),
        ("ReAlnet-fMRI", "sub-02", "fmri", "sub-02", "within"),
        ("ReAlnet-fMRI", "sub-02", "fmri", "sub-01", "across-subject"),
        ("ReAlnet-fMRI", "sub-02", "eeg", "sub-02", "across-modality"),
    }
    assert not {k for k in kinds if k[0] == "ReAlnet" and k[2] == "fmri" and k[4] != "across-modality"}

    def similarities(model: str) -> dict[tuple, float]:
        return {
            (r["modality"], r["subject"], r["comparison"], r["layer"], r["time"], r["roi"]): float(
                r["similarity"]
            )
            for r in rows
            if r["model"] == model
        }

    # the run's CORnet-S, whichever file holds it: the run folder's numbers at every CORnet-S layer
    mine, theirs = similarities("ReAlnet"), similarities("paired")
    assert mine.keys() == theirs.keys() and len(mine) > 0
    np.testing.assert_allclose([mine[k] for k in theirs], list(theirs.values()), rtol=0, atol=1e-6)
    summary = json.loads((out / "summary.json").read_text())
    assert {k: (v["aligned_to"], v["model_subjects"]) for k, v in summary["models"].items()} == {
        "cornet_s": (None, []), "paired": ("eeg", ["sub-01"]), "ReAlnet": ("eeg", ["sub-01"]),
        "ReAlnet-fMRI": ("fmri", ["sub-02"]),
    }  # fmt: skip
    config = json.loads((out / "config.json").read_text())
    entries = [(m["name"], m["subject"], m["modality"], m["source"]) for m in config["models"]]
    fmri = eeg.parents[2] / "ReAlnet-fMRI" / "sub-02" / "realnet.pt"
    assert entries[2:] == [
        ("ReAlnet", "sub-01", "eeg", str(eeg)),
        ("ReAlnet-fMRI", "sub-02", "fmri", str(fmri)),
    ]
    assert "ReAlnet-fMRI" in (out / "report.html").read_text()


def test_the_feature_cache_follows_a_backbone_files_content(backbone, aligned_runs, tmp_path: Path) -> None:
    """Features are cached by the weights' content, not the file's name: the two spellings of one file share
    an entry, and another CORnet-S written over the file gets its own numbers (here the starting CORnet-S's,
    read from the baseline's entry: the same weights)."""
    eeg, out, first = backbone
    assert first.status == 0, first.err
    assert len([p for p in (out / "cache").iterdir() if p.is_dir()]) == 3  # cornet_s, the run, the backbone
    file = tmp_path / "weights" / "ReAlnet" / "sub-01" / "realnet.pt"
    file.parent.mkdir(parents=True)
    os.link(eeg, file)  # the fixture's file, until another is written at this path
    cache = tmp_path / "cache"
    argv = ["evaluate", "--data", aligned_runs.root, "--models", "cornet_s", file, "--weights",
            aligned_runs.cornet_s, "--layers", *BACKBONE_LAYERS, "--image-size", "32", "--permutations", "10",
            "--no-progress", "--cache-dir", cache]  # fmt: skip

    def similarities(folder: Path, model: str) -> dict[tuple, str]:
        return {
            (r["subject"], r["layer"], r["time"]): r["similarity"]
            for r in _csv(folder / "results.csv")
            if r["model"] == model and r["modality"] == "eeg"
        }

    assert _run([*argv, "--out", tmp_path / "aligned"]).status == 0
    aligned = similarities(tmp_path / "aligned", "ReAlnet")
    assert aligned == similarities(out, "ReAlnet") and len(aligned) > 0
    file.unlink()
    torch.save(realnet_state_dict(cornet_s(aligned_runs.cornet_s)), file)
    assert _run([*argv, "--out", tmp_path / "start"]).status == 0
    start = similarities(tmp_path / "start", "ReAlnet")
    assert start == similarities(tmp_path / "start", "cornet_s") and start != aligned
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 2  # the starting CORnet-S is cornet_s's entry


# --------------------------------------------------------------------------------------------- decode


def test_decode_with_a_published_file_names_it_and_gives_the_python_apis_numbers(
    aligned_runs, published: Published, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    cache = tmp_path_factory.getbasetemp() / "decode-embeddings"  # tests/cli/test_cli_decode.py's too
    flags = ["--layer", "response", "--image-size", "32", "--cache-dir", cache, *DECODE_FLAGS]
    run = _run(["decode", "--data", aligned_runs.root, "--image-model", published.file,
                "--out", tmp_path / "cli", *flags])  # fmt: skip
    assert run.status == 0, run.err
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    config = json.loads((tmp_path / "cli" / "config.json").read_text())["config"]
    assert config["image_model"] == f"realnet weights {published.file} response"
    assert config["embed_dim"] == 340  # the response: 17 channels x 20 samples of predicted EEG
    lines = run.out.splitlines()
    assert lines[0] == f"decoding sub-01 against the image model realnet weights {published.file} response"
    assert summary["image_model"] == config["image_model"] and "image_model_aligned_to" not in summary
    assert lines[1].startswith(f"seed 0 {tmp_path / 'cli'}: top-1 {summary['top1']:.4f}  top-3 ")
    assert lines[-1] == "chance (30-image gallery): top-1 0.0333  top-3 0.1000  top-5 0.1667"
    for k in ("top1", "top3", "top5"):
        assert math.isfinite(summary[k]) and 0 <= summary[k] <= 1
    assert summary["n_gallery"] == 30 and math.isfinite(summary["best_val_loss"])

    # the Python API on the same file trains to the same numbers
    api = decode(aligned_runs.root, 1, out=tmp_path / "api", image_model=str(published.file),
                 layer="response", image_size=32, cache_dir=cache, encoder_options=ENCODER, progress=False,
                 **DECODE).summary  # fmt: skip
    api_config = json.loads((tmp_path / "api" / "config.json").read_text())["config"]
    assert api_config["image_model"] == config["image_model"]
    assert api_config["image_fingerprint"] == config["image_fingerprint"]  # the same embeddings
    for k in ("top1", "top3", "top5", "best_epoch", "best_val_loss"):
        assert summary[k] == api[k], k


# --------------------------------------------------------------------------------------------- errors

# What an argument that takes a ReAlnet weights file expects, and what realnet says of the files here:
# each error names the argument, the file as given ((?P<path>...)) and the ReAlnet weights expected.
EXPECTED = re.escape(
    "expected ReAlnet weights (CORnet-S and its encoding head: the published encoder.pt, a notebook's "
    "best_model_params.pt, a run's model.safetensors)"
)
NOT_READ = (
    r"could not read '(?P=path)' as a torch checkpoint: not a torch checkpoint \(zip or legacy "
    r"pickle\): 23 bytes starting b'not a ch'$"
)
HEADLESS = (
    r"holds a CORnet-S without ReAlnet's encoding head \(such as the published backbone-only "
    r"realnet\.pt or the ImageNet CORnet-S\); " + EXPECTED
)
HEADLESS_BUT = (
    r"holds a CORnet-S without ReAlnet's encoding head \(such as the published backbone-only "
    r"realnet\.pt or the ImageNet CORnet-S\), and "
)
SUFFIX = (
    r"must be a ReAlnet weights file \(\.pt, \.pth, \.safetensors\), got '[^']*/sub-01/notes\.txt' "
    r"\(str\)$"
)
SIZE = (
    r"was built for 32x32 images but image_size=224; every model sees the images at one size: pass "
    r"image_size=32 \(--image-size 32\)$"
)
AS_CORNET_S = (
    r"^cornet_s: weights are a whole ReAlnet checkpoint \(CORnet-S and an encoding head: the published "
    r"Encoder's realnet\.module\.\* and fc_\* keys\), not CORnet-S's: pass it as a model"
)
EVALUATE_ERRORS = {
    "garbage": rf"^evaluate: models\[0\] = '(?P<path>[^']*/sub-01/garbage\.pt)': {EXPECTED}; {NOT_READ}",
    # a CORnet-S in a sub-XX folder whose family folder names no modality: the ReAlnet of that subject once
    # its modality is named, or an unaligned CORnet-S
    "headless": (
        rf"^evaluate: models\[0\] = '(?P<path>[^']*/wrong/sub-01/cornet_s\.pth)' {HEADLESS_BUT}nothing says "
        r"whether it was aligned to EEG or fMRI \(its family folder 'wrong' names neither; the published "
        r"weights/ReAlnet/ are EEG, weights/ReAlnet-fMRI/ fMRI\): to evaluate it as the ReAlnet of a "
        r"subject, name it: NAME@eeg=FILE or NAME@fmri=FILE \(EvalModel\.from_weights\(path, "
        r"modality=\.\.\.\)\); to evaluate it as an unaligned CORnet-S, name it 'cornet_s' with "
        r"weights='(?P=path)' \(--models cornet_s --weights (?P=path)\)$"
    ),
    # read before its subject is asked for: a CORnet-S in no sub-XX folder is told that it is one
    "headless, no subject": (
        rf"^evaluate: models\[0\] = '(?P<path>[^']*/cornet_s\.pth)' {HEADLESS_BUT}no folder of its path is "
        r"named sub-XX .*: to evaluate it as the ReAlnet of a subject, name them: NAME@sub-XX,eeg=FILE or "
        r"NAME@sub-XX,fmri=FILE .*; to evaluate it as an unaligned CORnet-S, name it 'cornet_s'"
    ),
    "headless, subject given": (
        rf"^evaluate: models\[0\] = 'pub@sub-01=(?P<path>[^']*/cornet_s\.pth)' {HEADLESS_BUT}nothing says "
        r"whether .*: to evaluate it as the ReAlnet of a subject, name it: NAME@sub-01,eeg=FILE or "
        r"NAME@sub-01,fmri=FILE "
    ),
    "tag": (
        r"^evaluate: models\[0\] = 'pub@sub-01,MEG=[^']*': 'MEG' after '@' is neither a subject \(sub-XX\) "
        r"nor a modality \(eeg, fmri\); expected NAME@sub-XX=FILE, NAME@eeg=FILE or NAME@sub-XX,fmri=FILE$"
    ),
    "modality against the head": (
        r"^evaluate: models\[0\] = 'pub@fmri=[^']*/encoder\.pt' is given modality 'fmri', but its encoding "
        r"head predicts 340 values, the response of the published EEG ReAlnet \(the fMRI one predicts "
        r"1024\); give 'eeg' or none$"
    ),
    "tags on a run folder": (
        r"^evaluate: models\[0\] = 'pub@eeg=[^']*' gives a run folder a modality, but its config\.json names "
        r"it: NAME@sub-XX,eeg=FILE is for weights files; pass NAME=FOLDER$"
    ),
    "garbage, named": (
        rf"^evaluate: models\[0\] = 'pub@sub-01=(?P<path>[^']*/garbage\.pt)': {EXPECTED}; {NOT_READ}"
    ),
    "suffix": rf"^evaluate: models\[0\] {SUFFIX}",
    "missing": (
        r"^evaluate: models\[0\] = '[^']*/sub-01/encoder\.pt': no such file or folder; expected 'cornet_s', "
        r"a run folder of fastalign align, a weights file of a ReAlnet or of its CORnet-S \(\.pt, \.pth, "
        r"\.safetensors\), or NAME=FOLDER, NAME=FILE, NAME@sub-XX,eeg=FILE$"
    ),
    "missing, named": (
        r"^evaluate: models\[0\] = 'pub=(?P<path>[^']*/sub-01/encoder\.pt)': no file or folder at "
        r"'(?P=path)'; expected 'cornet_s', a run folder"
    ),
    "missing, subject given": (
        r"^evaluate: models\[0\] = 'pub@sub-01=(?P<path>[^']*/encoder\.pt)': no file or folder at "
        r"'(?P=path)'; expected 'cornet_s', a run folder"
    ),
    "no subject": (
        r"^evaluate: cannot tell whom the ReAlnet weights '[^']*/best_model_params\.pt' were aligned to: no "
        r"folder of its path is named sub-XX .*NAME@sub-XX=FILE"
    ),
    "subject not in data": (
        r"^evaluate: model 'pub' was aligned to sub-03, who is missing from the data's eeg \(subjects "
        r"\['sub-01', 'sub-02'\]\)$"
    ),
    "image size": rf"^evaluate: model 'ReAlnet' {SIZE}",
    "as cornet_s weights": AS_CORNET_S,
}


@pytest.mark.parametrize("case", list(EVALUATE_ERRORS))
def test_evaluate_refuses_what_is_no_published_checkpoint(
    case: str, aligned_runs, published: Published, tmp_path: Path
) -> None:
    models = {
        "garbage": [published.wrong / "garbage.pt"],
        "headless": [published.wrong / "cornet_s.pth"],
        "headless, no subject": [aligned_runs.cornet_s],
        "headless, subject given": [f"pub@sub-01={aligned_runs.cornet_s}"],
        "tag": [f"pub@sub-01,MEG={published.file}"],
        "modality against the head": [f"pub@fmri={published.file}"],
        "tags on a run folder": [f"pub@eeg={aligned_runs.paired}"],
        "garbage, named": [f"pub@sub-01={published.wrong / 'garbage.pt'}"],
        "suffix": [published.wrong / "notes.txt"],
        "missing": [tmp_path / "sub-01" / "encoder.pt"],
        "missing, named": [f"pub={tmp_path / 'sub-01' / 'encoder.pt'}"],
        "missing, subject given": [f"pub@sub-01={tmp_path / 'encoder.pt'}"],
        "no subject": [published.lone],
        "subject not in data": [f"pub@sub-03={published.lone}"],
        "image size": [published.file],
        "as cornet_s weights": ["cornet_s", "--weights", published.file],
    }[case]
    size = [] if case == "image size" else ["--image-size", "32"]
    out = tmp_path / "report"
    line = _error(_run(["evaluate", "--data", aligned_runs.root, "--models", *models, *size, "--out", out]),
                  "evaluate")  # fmt: skip
    assert re.search(EVALUATE_ERRORS[case], line), line
    assert not out.exists()


DECODE_ERRORS = {
    "garbage": rf"^decode: image_model='(?P<path>[^']*/sub-01/garbage\.pt)': {EXPECTED}; {NOT_READ}",
    "headless": (
        rf"^decode: image_model='(?P<path>[^']*/sub-01/cornet_s\.pth)' {HEADLESS}; to decode with that "
        r"CORnet-S, pass image_model='cornet_s', weights='(?P=path)' \(--image-model cornet_s --weights "
        r"(?P=path)\)$"
    ),
    "suffix": rf"^decode: image_model {SUFFIX}",
    "missing": (
        r"^decode: image_model='[^']*/sub-01/encoder\.pt': no such file or folder; expected 'cornet_s', "
        r"'features', 'npy:NAME', a ReAlnet run folder or weights file \(\.pt, \.pth, \.safetensors\), "
        r"or a module$"
    ),
    "image size": rf"^decode: model 'realnet' {SIZE}",
    "as cornet_s weights": AS_CORNET_S,
}


@pytest.mark.parametrize("case", list(DECODE_ERRORS))
def test_decode_refuses_what_is_no_published_checkpoint(
    case: str, aligned_runs, published: Published, tmp_path: Path
) -> None:
    image_model = {
        "garbage": [published.wrong / "garbage.pt"],
        "headless": [published.wrong / "cornet_s.pth"],
        "suffix": [published.wrong / "notes.txt"],
        "missing": [tmp_path / "sub-01" / "encoder.pt"],
        "image size": [published.file],
        "as cornet_s weights": ["cornet_s", "--weights", published.file],
    }[case]
    size = [] if case == "image size" else ["--image-size", "32"]
    out = tmp_path / "dec"
    argv = ["decode", "--data", aligned_runs.root, "--image-model", *image_model, *size, "--out", out]
    line = _error(_run([*argv, "--cache-dir", tmp_path / "cache", *DECODE_FLAGS]), "decode")
    assert re.search(DECODE_ERRORS[case], line), line
    assert not out.exists()
