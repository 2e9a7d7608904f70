"""fastalign.train.alignment: ReAlnet's recipe on the synthetic brain, with a randomly initialised CORnet-S.

One small synthetic dataset (2 subjects, 12 training and 5 test images of 32 px) and one aligned run
(2 epochs of one step) serve most tests; a training step of the 54 M-parameter model costs seconds on a
busy CPU whatever the image size (it is bound by the weights' memory traffic, not by the images), so the
tests count steps and CORnet-S passes. The runs use one thread: a second thread on a busy 2-core machine
costs more than it gains. What alignment does is shown on the session's shared runs (``aligned_runs``).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from aligned_runs import AlignedRuns
from published_formats import write_bdata  # tests/published_formats.py
from safetensors.torch import load_file

from fastalign.cli import main
from fastalign.cli.align import RANDOM_START_NOTE
from fastalign.data import (
    FMRIResponses,
    ResponsePCA,
    SyntheticThings,
    fit_norm_stats,
    load_fmri,
    load_image_metadata,
    load_preprocessed_eeg,
    make_synthetic_things,
)
from fastalign.data._io import save_npy
from fastalign.data.things_eeg2 import preprocessed_path, save_preprocessed_dict
from fastalign.models import realnet, save_realnet
from fastalign.models.cornet import model as cornet_model
from fastalign.models.cornet.model import CORnetBase
from fastalign.train import AlignResult, FitState, Hook, RunFolder, align, load_align_data, realnet_loss
from fastalign.train.alignment import derangement

ALIGN = sys.modules["fastalign.train.alignment"]
SIZE = 32
# The shared run: 12 training images -> 3 for validation, 9 for training -> one step of 8 per epoch.
RUN = dict(epochs=2, batch_size=8, val_fraction=0.25, image_size=SIZE, amp="fp32", seed=0, lr=1e-4)
N_TRAIN, N_TEST = 12, 5


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SyntheticThings:
    return make_synthetic_things(
        tmp_path_factory.mktemp("align") / "synth",
        n_subjects=2,
        n_train_concepts=4,
        images_per_concept=3,
        n_test=N_TEST,
        n_sessions=2,
        test_repetitions=2,
        n_voxels=40,
        image_size=SIZE,
    )


class Counter(Hook):
    """The student's training-mode backbone passes per optimizer step, and the teacher's calls (the
    teacher is a CORnetS called as a classifier; the student's backbone is only asked for features)."""

    def __init__(self, teacher_calls: list[int]) -> None:
        self.teacher_calls = teacher_calls
        self.unfold_calls = 0
        self.passes = 0
        self.per_step: list[int] = []
        self.teacher_calls_at_start = -1

    def _count(self, module: torch.nn.Module, inputs: Any, output: Any) -> None:
        self.passes += module.training

    def on_fit_start(self, state: FitState) -> None:
        # after the recipe's own on_fit_start, which ran the teacher
        self.teacher_calls_at_start = len(self.teacher_calls)
        state.model.backbone.V1.register_forward_hook(self._count)
        backbone = state.model.backbone
        self.conv_algorithms = {b.conv_algorithm for b in (backbone.V2, backbone.V4, backbone.IT)}
        self.norm_backends = {b.norm_backend for b in (backbone.V1, backbone.V2, backbone.V4, backbone.IT)}

    def on_step_end(self, state: FitState) -> None:
        self.per_step.append(self.passes - sum(self.per_step))


@pytest.fixture(scope="module")
def run(
    synth: SyntheticThings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[AlignResult, Counter]]:
    """The shared run, without checkpoints (each is 650 MB: CORnet-S with Adam's state); the resume test
    makes the run folder with a checkpoint. Its folder goes when the module's tests are done."""
    ALIGN._MEMO.clear()  # this process may hold this start's teacher targets already: count a real pass
    teacher_calls: list[int] = []
    forward = CORnetBase.forward

    def counted(self: CORnetBase, x: torch.Tensor) -> torch.Tensor:
        teacher_calls.append(x.shape[0])
        return forward(self, x)

    counter = Counter(teacher_calls)
    unfold = cornet_model.unfold_conv3x3

    def counted_unfold(x: torch.Tensor, weight: torch.Tensor, stride: int) -> torch.Tensor:
        counter.unfold_calls += 1
        return unfold(x, weight, stride)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(CORnetBase, "forward", counted)
        mp.setattr(cornet_model, "unfold_conv3x3", counted_unfold)
        folder = tmp_path_factory.mktemp("runs")
        result = align(
            synth.root, 1, out=folder / "sub01", progress=False, hooks=[counter], keep_checkpoints=0, **RUN
        )
    counter.teacher_calls_at_end = len(teacher_calls)  # type: ignore[attr-defined]
    yield result, counter
    shutil.rmtree(folder, ignore_errors=True)


# ----------------------------------------------------------------------------------------- the run


def test_run_folder_holds_config_metrics_model_and_summary(run: tuple[AlignResult, Counter]) -> None:
    """(The checkpoints of a run that keeps them: the resume test.)"""
    result, _ = run
    folder = RunFolder(result.run.path)
    assert sorted(os.listdir(folder.path)) == [
        ".lock", "config.json", "metrics.jsonl", "model.safetensors", "summary.json"
    ]  # fmt: skip
    config = folder.read_config()["config"]
    for key, value in {
        "subject": 1, "modality": "eeg", "lr": 1e-4, "beta": 100.0, "image_size": SIZE, "target": "hard",
        "contrast": "differentiable", "control": None, "val_fraction": 0.25, "n_train": 9, "n_val": 3,
        "n_test": N_TEST, "n_out": 340, "response_shape": [17, 20], "start": "random",
        "image_resize": "squeeze",
    }.items():  # fmt: skip
        assert config[key] == value, key
    assert len(config["channels"]) == 17 and all(re.match("^O|^P", c) for c in config["channels"])
    adam = folder.read_config()["fit"]["optimizer"]
    assert adam["class"] == "torch.optim.adam.Adam" and adam["param_groups"][0]["fused"] is True  # one kernel
    assert config["times"] == pytest.approx([i / 100 for i in range(20)])
    assert [r["epoch"] for r in folder.read_metrics("epoch")] == [1, 2]
    assert {"train_ce", "train_mse", "train_contrast", "val_ce", "val_mse", "val_contrast"} <= set(
        folder.read_metrics("epoch")[0]
    )
    assert folder.checkpoints() == []  # keep_checkpoints=0 (the resume test has a run with them)
    summary = folder.read_summary()
    assert summary == result.summary
    assert summary["epochs_run"] == 2 and summary["best_epoch"] in (1, 2)
    assert summary["best_val_loss"] == folder.read_metrics("epoch")[summary["best_epoch"] - 1]["val_loss"]
    for prefix in ("test_", "unaligned_test_"):
        for term in ("loss", "ce", "mse", "contrast"):
            assert np.isfinite(summary[prefix + term]), prefix + term
        for rsa in ("rsa_it", "rsa_response"):
            assert -1 <= summary[prefix + rsa] <= 1, prefix + rsa
    loaded = realnet(folder.path)  # the run folder is a model
    assert loaded.n_out == 340 and loaded.image_size == (SIZE, SIZE)
    for key, value in result.model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value.cpu()), key


def test_teacher_runs_once_per_image_before_training(run: tuple[AlignResult, Counter]) -> None:
    _, counter = run
    assert sum(counter.teacher_calls) == N_TRAIN + N_TEST  # one pass over every image, validation included
    assert counter.teacher_calls_at_start == len(counter.teacher_calls)  # none after it
    assert counter.teacher_calls_at_end == counter.teacher_calls_at_start  # type: ignore[attr-defined]


def test_one_backbone_pass_per_training_step(run: tuple[AlignResult, Counter]) -> None:
    _, counter = run
    assert counter.per_step == [1, 1]


def test_training_keeps_the_norm_modules_and_picks_convs_per_call(run: tuple[AlignResult, Counter]) -> None:
    """The student trains with the original BatchNorm modules and fuse_training's conv choice (on CPU the
    wide convs at a few pixels run as im2col products; on a GPU every conv stays cuDNN's); the model
    handed back runs F.conv2d, as the run folder's model loads."""
    result, counter = run
    assert counter.conv_algorithms == {"auto"}
    assert counter.norm_backends == {None}
    assert counter.unfold_calls > 0  # at 32 px every block's conv2 qualifies
    backbone = result.model.backbone
    assert {b.conv_algorithm for b in (backbone.V2, backbone.V4, backbone.IT)} == {None}


# -------------------------------------------------------------------------------------------- loss


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    za = (a - a.mean(1, keepdims=True)) / np.linalg.norm(a - a.mean(1, keepdims=True), axis=1, keepdims=True)
    zb = (b - b.mean(1, keepdims=True)) / np.linalg.norm(b - b.mean(1, keepdims=True), axis=1, keepdims=True)
    return za @ zb.T


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_loss_terms_match_a_float64_hand_computation(kind: str) -> None:
    g = torch.Generator().manual_seed(0)
    b, k, d, beta = 5, 7, 6, 3.0
    logits, pred, brain = (torch.randn(b, n, dtype=torch.float64, generator=g) for n in (k, d, d))
    if kind == "hard":
        target = torch.randint(k, (b,), generator=g)
    else:
        target = torch.randn(b, k, dtype=torch.float64, generator=g).softmax(1)
    loss, terms = realnet_loss(logits, pred, brain, target, beta=beta)
    x = logits.numpy()
    logp = x - np.log(np.exp(x - x.max(1, keepdims=True)).sum(1, keepdims=True)) - x.max(1, keepdims=True)
    ce = (
        -logp[np.arange(b), target.numpy()].mean()
        if kind == "hard"
        else -(target.numpy() * logp).sum(1).mean()
    )
    mse = ((pred.numpy() - brain.numpy()) ** 2).mean()
    r = _pearson(pred.numpy(), brain.numpy())
    c = 1 - np.trace(r) / b + (r.sum() - np.trace(r)) / (b * (b - 1))
    assert float(terms["ce"]) == pytest.approx(ce, rel=1e-12)
    assert float(terms["mse"]) == pytest.approx(mse, rel=1e-12)
    assert float(terms["contrast"]) == pytest.approx(c, rel=1e-12)
    assert float(loss) == pytest.approx(ce + beta * (mse + c), rel=1e-12)


def test_published_contrast_has_the_value_but_no_gradient() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 3, dtype=torch.float64, generator=g)
    brain = torch.randn(4, 6, dtype=torch.float64, generator=g)
    target = torch.tensor([0, 2, 1, 1])
    grads, values = {}, {}
    for contrast in ("differentiable", "published"):
        pred = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        pred.requires_grad_(True)
        loss, _ = realnet_loss(logits, pred, brain, target, beta=2.0, contrast=contrast)
        loss.backward()
        grads[contrast], values[contrast] = pred.grad, float(loss.detach())
    assert values["published"] == values["differentiable"]
    mse_grad = 2.0 * 2 * (pred.detach() - brain) / pred.numel()  # beta * d MSE / d pred
    torch.testing.assert_close(grads["published"], mse_grad)
    assert not torch.allclose(grads["differentiable"], mse_grad)


def test_a_resume_takes_the_data_at_a_new_path(
    run: tuple[AlignResult, Counter],
    synth: SyntheticThings,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A user who moved the data folder could not resume (config.data differed). The data is known by
    what config.json records of its content (the test images' digest, the responses' statistics, the
    sizes), so the same files elsewhere are the same run, and other data is still another."""
    result, _ = run
    links = functools.partial(shutil.copytree, copy_function=os.link, ignore=shutil.ignore_patterns(".lock"))
    moved = tmp_path / "moved" / "synth"
    links(synth.root, moved)  # the same files at another path
    out = tmp_path / "run"
    links(result.run.path, out)  # the finished shared run (config.json is replaced, not written through)
    argv = ["align", "--data", str(moved), "--subject", "1", "--out", str(out), "--epochs", "2",
            "--batch-size", "8", "--val-fraction", "0.25", "--image-size", str(SIZE), "--amp", "fp32",
            "--seed", "0", "--lr", "1e-4", "--keep-checkpoints", "0", "--no-progress"]  # fmt: skip
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0
    assert capsys.readouterr().out.startswith(f"sub-01 {out}: best epoch {result.summary['best_epoch']} ")
    recorded = RunFolder(out).read_config()["config"]
    assert recorded["data"] == str(moved)  # the new path recorded
    assert {k: v for k, v in recorded.items() if k != "data"} == {
        k: v for k, v in result.run.read_config()["config"].items() if k != "data"
    }
    assert RunFolder(out).read_summary() == result.summary  # finished: nothing trained again
    # other data at the new path: another run, named by what differs
    other = make_synthetic_things(
        tmp_path / "other", n_subjects=1, n_train_concepts=4, images_per_concept=3, n_test=N_TEST,
        n_sessions=2, test_repetitions=2, image_size=SIZE, seed=1,
    )  # fmt: skip
    with pytest.raises(
        ValueError,
        match=r"holds a run with a different config \(config.data: '.*moved/synth' -> '.*other'; "
        r"config.norm_mean: .*; config.norm_std: .*; config.test_images_digest: '[0-9a-f]+' -> '[0-9a-f]+'",
    ):
        align(other.root, 1, out=out, progress=False, keep_checkpoints=0, resume=True, **RUN)
    with pytest.raises(ValueError, match=r"different config \(config.beta: 100.0 -> 50.0\)"):
        align(moved, 1, out=out, progress=False, keep_checkpoints=0, resume=True, **{**RUN, "beta": 50.0})
    assert RunFolder(out).read_config()["config"] == recorded


@pytest.mark.parametrize(
    "change, error",
    [
        ({"logits": torch.randn(4)}, "logits must have shape"),
        ({"brain": torch.randn(4, 5)}, "brain must have shape pred's shape"),
        ({"pred": torch.randn(3, 6), "brain": torch.randn(3, 6)}, "pred must have shape"),
        ({"target": torch.tensor([0, 1, 2])}, "target must have shape"),
        ({"target": torch.zeros(4, 2)}, "target must have shape"),
        ({"target": torch.zeros(4, dtype=torch.int32)}, "target must be int64"),
        ({"beta": -1.0}, "beta must be a finite number >= 0"),
        ({"contrast": "spearman"}, "contrast must be one of"),
    ],
)
def test_loss_refuses_bad_input(change: dict[str, Any], error: str) -> None:
    args = dict(logits=torch.randn(4, 3), pred=torch.randn(4, 6), brain=torch.randn(4, 6))
    args["target"] = torch.tensor([0, 1, 2, 0])
    kw = dict(beta=1.0, contrast="differentiable")
    for key, value in change.items():
        (kw if key in kw else args)[key] = value
    with pytest.raises((TypeError, ValueError), match=f"realnet_loss: {error}"):
        realnet_loss(args["logits"], args["pred"], args["brain"], args["target"], **kw)


def test_a_batch_of_one_has_no_contrast() -> None:
    loss, terms = realnet_loss(torch.randn(1, 3), torch.randn(1, 4), torch.randn(1, 4), torch.tensor([1]))
    assert float(terms["contrast"]) == 0.0
    assert float(loss) == pytest.approx(float(terms["ce"]) + 100 * float(terms["mse"]), rel=1e-6)


# -------------------------------------------------------------------------------------------- data


def test_validation_split_is_disjoint_and_seeded(synth: SyntheticThings) -> None:
    a, b, c = (load_align_data(synth.root, 1, image_size=SIZE, val_fraction=0.25, seed=s) for s in (0, 0, 1))
    assert len(a.val_index) == 3 and len(a.train_index) == N_TRAIN - 3
    assert not set(a.train_index) & set(a.val_index)
    assert sorted([*a.train_index, *a.val_index]) == list(range(N_TRAIN))
    assert np.array_equal(a.val_index, b.val_index) and not np.array_equal(a.val_index, c.val_index)
    assert a.val is not None and a.val.images == [a.image_paths["train"][i] for i in a.val_index]
    assert a.train.images == [a.image_paths["train"][i] for i in a.train_index]
    assert a.test.images == a.image_paths["test"]
    none = load_align_data(synth.root, 1, image_size=SIZE, val_fraction=0)
    assert none.val is None and list(none.train_index) == list(range(N_TRAIN))


def _selected(synth: SyntheticThings, split: str) -> np.ndarray:
    """The subject's single trials on the published channels (all 17 here) and 0-200 ms."""
    eeg = load_preprocessed_eeg(synth.preprocessed_dir, 1, split)
    assert len(eeg.ch_names) == 17
    return eeg.data[..., (eeg.times >= -1e-9) & (eeg.times < 0.2 - 1e-9)]


def test_zscore_statistics_come_from_the_training_images_only(synth: SyntheticThings) -> None:
    d = load_align_data(synth.root, 1, image_size=SIZE, val_fraction=0.25, seed=0)
    train, test = _selected(synth, "training"), _selected(synth, "test")
    stats = fit_norm_stats(train[d.train_index], "zscore")
    assert (d.settings["norm_mean"], d.settings["norm_std"]) == (float(stats.mean), float(stats.std))
    everything = fit_norm_stats(train, "zscore")
    assert float(everything.std) != float(stats.std)  # the validation images would change them

    def expected(trials: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((trials.mean(1) - stats.mean) / stats.std).reshape(len(trials), -1)).float()

    assert d.val is not None
    torch.testing.assert_close(d.train.responses(), expected(train[d.train_index]))
    torch.testing.assert_close(d.val.responses(), expected(train[d.val_index]))
    torch.testing.assert_close(d.test.responses(), expected(test))
    assert d.response_shape == (17, 20) and d.n_out == 340
    # channels by name as a numpy array (as a list), in the order given: one gather of channels and times
    names = load_preprocessed_eeg(synth.preprocessed_dir, 1, "test").ch_names
    picked = np.array([names[3], names[0]])
    two = load_align_data(synth.root, 1, image_size=SIZE, val_fraction=0.25, seed=0, channels=picked)
    assert two.response_shape == (2, 20) and two.settings["channels"] == list(picked)


def test_unpaired_control_is_a_fixed_derangement(synth: SyntheticThings) -> None:
    kw = dict(image_size=SIZE, val_fraction=0.25, seed=0)
    paired = load_align_data(synth.root, 1, **kw)
    un, again = (load_align_data(synth.root, 1, control="unpaired", **kw) for _ in range(2))
    other = load_align_data(synth.root, 1, control="unpaired", image_size=SIZE, val_fraction=0.25, seed=5)
    assert np.array_equal(paired.pairing, np.arange(N_TRAIN))
    assert np.array_equal(un.pairing, again.pairing) and not np.array_equal(un.pairing, other.pairing)
    for part in (un.train_index, un.val_index):  # a derangement within each set: same responses, new pairs
        assert sorted(un.pairing[part]) == sorted(part)
        assert np.all(un.pairing[part] != part)
    assert un.settings["norm_std"] == paired.settings["norm_std"]
    position = {int(image): i for i, image in enumerate(paired.train_index)}
    source = [position[int(image)] for image in un.pairing[un.train_index]]
    torch.testing.assert_close(un.train.responses(), paired.train.responses()[source])
    assert un.train.images == paired.train.images
    torch.testing.assert_close(un.test.responses(), paired.test.responses())  # the test set stays paired
    for seed in range(20):
        perm = derangement(7, seed)
        assert sorted(perm) == list(range(7)) and np.all(perm != np.arange(7))
        assert np.array_equal(perm, derangement(7, seed))


def test_fmri_rois_and_pca_are_fitted_on_training_images(synth: SyntheticThings) -> None:
    d = load_align_data(synth.root, 2, modality="fmri", rois=["V1", "V2"], pca=4, image_size=SIZE)
    responses = load_fmri(os.path.join(synth.fmri_dir, "sub-02", "fmri_training.h5")).select(["V1", "V2"])
    pca = ResponsePCA(4, seed=0).fit(FMRIResponses(responses.data[d.train_index]))
    assert d.settings["explained_variance"] == pytest.approx(float(pca.explained_variance_ratio.sum()))
    assert d.n_out == 4 and d.response_shape == (4,)
    fitted = pca.transform(FMRIResponses(responses.data[d.train_index])).data
    stats = fit_norm_stats(fitted, "zscore")
    torch.testing.assert_close(
        d.train.responses(), torch.from_numpy((fitted.mean(1) - stats.mean) / stats.std).float()
    )
    with pytest.raises(ValueError, match="pca=40 components exceed"):
        load_align_data(synth.root, 2, modality="fmri", rois=["V1", "V2"], pca=40, image_size=SIZE)
    with pytest.raises(ValueError, match="ROIs \\['XX'\\]"):
        load_align_data(synth.root, 2, modality="fmri", rois=["V1", "XX"], image_size=SIZE)


def test_fmri_nan_outside_the_selected_rois_is_never_read(synth: SyntheticThings, tmp_path: Path) -> None:
    """ReAlnet-fMRI on beta files with NaN outside the brain (voxels of no ROI) and in an ROI it does not
    select (PPA, and HVC, which holds it) trains on exactly the responses of the same file without them;
    using every voxel, or PPA, is refused naming the subject, the file, the ROIs, the voxels and rows."""
    root = tmp_path / "masked"
    shutil.copytree(os.path.join(synth.root, "image_set"), root / "image_set")
    for split in ("training", "test"):
        src = load_fmri(os.path.join(synth.fmri_dir, "sub-02", f"fmri_{split}.h5"))
        n, r, v = src.data.shape
        data = np.concatenate([src.data, np.full((n, r, 3), np.nan, np.float32)], axis=2)
        data[1, 0, src.rois["PPA"][0]] = np.nan
        os.makedirs(root / "fmri" / "sub-02", exist_ok=True)
        with h5py.File(root / "fmri" / "sub-02" / f"fmri_{split}.h5", "w") as f:
            f["responses"] = data
            for name, idx in src.rois.items():
                f[f"rois/{name}"] = np.isin(np.arange(v + 3), idx).astype(np.uint8)
    kw = dict(modality="fmri", rois=["V1", "V2"], pca=4, image_size=SIZE)
    got, want = load_align_data(root, 2, **kw), load_align_data(synth.root, 2, **kw)
    for split in ("train", "val", "test"):
        torch.testing.assert_close(getattr(got, split).responses(), getattr(want, split).responses())
    file = re.escape(str(root / "fmri" / "sub-02" / "fmri_training.h5"))
    ppa = load_fmri(os.path.join(synth.fmri_dir, "sub-02", "fmri_training.h5")).rois["PPA"]
    with pytest.raises(ValueError, match=(
        rf"^align: subject 2: {file}: NaN or inf in 4 of {v + 3} voxels \(ROI 'PPA': 1 of its {len(ppa)} "
        rf"voxels \(indices {ppa[0]}\); ROI 'HVC': 1 of its .*; 3 outside every ROI\), in 12 of 12 stimulus "
        r"rows .*all voxels are used here"
    )):  # fmt: skip
        load_align_data(root, 2, **{**kw, "rois": None})
    with pytest.raises(ValueError, match=rf"^align: subject 2: {file}: NaN or inf in ROI 'PPA': 1 of its"):
        load_align_data(root, 2, **{**kw, "rois": ["V1", "PPA"]})


def test_fmri_bdata_files_train_on_the_image_sets_order(synth: SyntheticThings, tmp_path: Path) -> None:
    """ReAlnet-fMRI on BData files (the Kamitani lab's published format: trials run by run in a shuffled
    order, images numbered otherwise than the image set, names in stimulus_name's value map) trains on
    exactly the responses of the same data stored in the image set's order."""
    images = load_image_metadata(os.path.join(synth.root, "image_set"))
    rng = np.random.default_rng(0)
    for folder in ("bdata", "plain"):
        shutil.copytree(os.path.join(synth.root, "image_set"), tmp_path / folder / "image_set")
        os.makedirs(tmp_path / folder / "fmri" / "sub-02")
    for split in ("training", "test"):
        src = load_fmri(os.path.join(synth.fmri_dir, "sub-02", f"fmri_{split}.h5"))
        n, r, v = src.data.shape
        label_of = rng.permutation(n) + 1.0
        runs = [rng.permutation(n) for _ in range(r)]
        names = {
            label_of[i]: os.path.splitext(os.path.basename(p))[0] for i, p in enumerate(images.paths(split))
        }
        masks = {k: np.isin(np.arange(v), idx) for k, idx in src.rois.items()}
        write_bdata(
            tmp_path / "bdata" / "fmri" / "sub-02" / f"fmri_{split}.h5",
            np.concatenate([src.data[run, k] for k, run in enumerate(runs)]),
            np.concatenate([label_of[run] for run in runs]),
            {f"ROI_{k}": m for k, m in masks.items()},
            names=names,
        )
        with h5py.File(tmp_path / "plain" / "fmri" / "sub-02" / f"fmri_{split}.h5", "w") as f:
            f["responses"] = src.data.astype(np.float64)  # BData holds float64
            for name, mask in masks.items():
                f[f"rois/{name}"] = mask
    kw = dict(modality="fmri", rois=["V1", "V2"], pca=4, image_size=SIZE)
    got, want = load_align_data(tmp_path / "bdata", 2, **kw), load_align_data(tmp_path / "plain", 2, **kw)
    for split in ("train", "val", "test"):
        torch.testing.assert_close(
            getattr(got, split).responses(), getattr(want, split).responses(), rtol=0, atol=0
        )


# ----------------------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def broken(synth: SyntheticThings, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A copy of the dataset whose sub-01 has one training response too few and sub-02 a NaN."""
    root = tmp_path_factory.mktemp("broken") / "synth"
    shutil.copytree(synth.root, root)
    for subject in (1, 2):
        eeg = load_preprocessed_eeg(root / "preprocessed_data", subject, "training")
        data = eeg.data[:-1] if subject == 1 else eeg.data.copy()
        if subject == 2:
            data[3, 0, 5, 25] = np.nan
        path = preprocessed_path(root / "preprocessed_data", subject, "training")
        save_npy(path, save_preprocessed_dict(data, eeg.ch_names, eeg.times))
    return str(root)


def test_image_and_response_counts_that_differ_are_refused(broken: str, tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"responses to 11 training images, but image_metadata\.npy lists 12"
    ):
        align(broken, 1, out=tmp_path / "run", **RUN)
    assert not (tmp_path / "run").exists()


def test_nan_in_responses_is_refused(broken: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="1 NaN/inf value"):
        align(broken, 2, out=tmp_path / "run", **RUN)


def test_every_subjects_data_is_checked_before_the_first_trains(
    synth: SyntheticThings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--subject all found a later subject's missing or malformed file only when its turn came, after the
    earlier subjects had trained (hours in); now one error lists every subject whose data fail a check,
    before anything trains."""
    root = tmp_path / "synth"
    shutil.copytree(synth.root, root)
    eeg = load_preprocessed_eeg(root / "preprocessed_data", 2, "training")
    data = eeg.data.copy()
    data[3, 0, 5, 25] = np.nan
    save_npy(
        preprocessed_path(root / "preprocessed_data", 2, "training"),
        save_preprocessed_dict(data, eeg.ch_names, eeg.times),
    )
    (root / "preprocessed_data" / "sub-03").mkdir()  # a subject whose files are missing
    shutil.copy(
        preprocessed_path(root / "preprocessed_data", 1, "test"), root / "preprocessed_data" / "sub-03"
    )

    def trained(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a subject trained before every subject's data was checked")

    monkeypatch.setattr(ALIGN, "fit", trained)
    with pytest.raises(ValueError) as refused:
        align(root, "all", out=tmp_path / "runs", progress=False, **RUN)
    message = str(refused.value)
    assert message.startswith("align: the data of 2 of the 3 subjects failed their checks, which run before ")
    listed = message.splitlines()[1:]
    assert len(listed) == 2
    assert listed[0].startswith("- sub-02: ") and "holds 1 NaN/inf value" in listed[0]
    assert listed[1].startswith("- sub-03: ") and "preprocessed_eeg_training.npy" in listed[1]
    assert not (tmp_path / "runs").exists()
    argv = ["align", "--data", str(root), "--subject", "1", "2", "--out", str(tmp_path / "runs"),
            "--image-size", str(SIZE), "--batch-size", "8", "--no-progress"]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 1
    (line,) = capsys.readouterr().err.splitlines()  # one line, the one subject named
    assert line.startswith("fastalign align: error: align: the data of 1 of the 2 subjects failed ")
    assert line.count("- sub-") == 1 and "- sub-02: " in line
    # fMRI: the response files, the ROIs and the PCA's size
    os.remove(root / "fmri" / "sub-02" / "fmri_test.h5")
    with pytest.raises(
        FileNotFoundError, match=r"subjects failed their checks.*\n- sub-02: no fMRI responses at"
    ):
        align(root, [1, 2], modality="fmri", pca=6, out=tmp_path / "runs", progress=False, **RUN)
    with pytest.raises(ValueError) as refused:
        align(root, [1, 2], modality="fmri", pca=40, out=tmp_path / "runs", progress=False, **RUN)
    listed = str(refused.value).splitlines()[1:]
    assert listed[0].startswith("- sub-01: pca=40 components exceed") and listed[1].startswith("- sub-02: no")
    # an argument no subject's data can take fails every subject alike: said once, as for one subject
    with pytest.raises(ValueError) as refused:
        align(synth.root, [1, 2], channels=[999], out=tmp_path / "runs", progress=False, **RUN)
    assert str(refused.value) == "align: channel index 999 is out of range for 17 channels"


def test_weights_with_another_n_out_are_refused(synth: SyntheticThings, tmp_path: Path) -> None:
    weights = save_realnet(realnet(n_out=7, image_size=SIZE), tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="predicts 7 values per image, but the subject's responses have 340"):
        align(synth.root, 1, out=tmp_path / "run", weights=weights, **RUN)


def test_a_run_folder_holding_the_data_or_weights_is_refused(synth: SyntheticThings, tmp_path: Path) -> None:
    # --overwrite replaces the run folder as a unit: out holding --data or --weights deleted them
    before = sorted(p.name for p in Path(synth.root).iterdir())
    for out in (synth.root, os.path.dirname(synth.root)):
        with pytest.raises(ValueError, match=r"align: out .* holds the input .*, which writing the output"):
            align(synth.root, 1, out=out, overwrite=True, **RUN)
    weights = save_realnet(realnet(n_out=340, image_size=SIZE), tmp_path / "mine" / "start.safetensors")
    with pytest.raises(ValueError, match=r"holds the input .*start.safetensors"):
        align(synth.root, 1, out=tmp_path / "mine", weights=weights, overwrite=True, **RUN)
    assert sorted(p.name for p in Path(synth.root).iterdir()) == before and os.path.isfile(weights)
    # with several subjects only out/sub-XX are replaced: an out holding the data beside them is fine (the
    # call goes on to the next check: a subject's folder already holding something)
    parent = Path(synth.root).parent
    (parent / "sub-01").mkdir()
    try:
        (parent / "sub-01" / "x.txt").write_text("x")
        with pytest.raises(ValueError, match=r"already holds sub-01; pass resume=True"):
            align(synth.root, [1, 2], out=parent, **RUN)
    finally:
        shutil.rmtree(parent / "sub-01")


def test_unknown_subject_is_refused(synth: SyntheticThings, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"subject 9 is not in .* which holds subjects \[1, 2\]"):
        align(synth.root, 9, out=tmp_path / "run", **RUN)
    with pytest.raises(ValueError, match="subject 9"):
        align(synth.root, [1, 9], out=tmp_path / "run", **RUN)


def test_missing_weights_file_says_where_the_checkpoints_are(synth: SyntheticThings, tmp_path: Path) -> None:
    with pytest.raises(
        FileNotFoundError, match=r"cornet_s-1d3f7974\.pth, linked from https://github\.com/dicarlolab"
    ) as missing:
        align(synth.root, 1, out=tmp_path / "run", weights=tmp_path / "cornet_s.pth", **RUN)
    assert f"weights: no such file or folder: '{tmp_path / 'cornet_s.pth'}'" in str(missing.value)
    (tmp_path / "killed").mkdir()
    with pytest.raises(FileNotFoundError, match=r"is not a finished run \(it has no model\.safetensors\)"):
        align(synth.root, 1, out=tmp_path / "run", weights=tmp_path / "killed", **RUN)


def test_run_folder_of_another_config_is_refused(
    run: tuple[AlignResult, Counter], synth: SyntheticThings
) -> None:
    result, _ = run
    before = (Path(result.run.path) / "config.json").read_text()
    with pytest.raises(ValueError, match=r"holds a run with a different config \(config.beta: 100.0 -> 50.0"):
        align(synth.root, 1, out=result.run.path, **{**RUN, "beta": 50.0})
    assert (Path(result.run.path) / "config.json").read_text() == before


@pytest.mark.parametrize(
    "change, error",
    [
        ({"batch_size": 1}, "batch_size must be at least 2 with beta > 0"),
        ({"clip_grad_norm": 0.0}, "clip_grad_norm must be"),
        ({"val_fraction": 1.0}, "val_fraction must be a number in \\[0, 1\\)"),
        ({"target": "argmax"}, "target must be one of"),
        ({"contrast": "none"}, "contrast must be one of"),
        ({"control": "shuffled"}, "control must be one of"),
        ({"time_window": (0.9, 1.5)}, "holds no sample"),
        ({"channels": ["Cz"]}, "lacks"),
        ({"modality": "meg"}, "modality must be one of"),
    ],
)
def test_bad_settings_are_refused(
    synth: SyntheticThings, tmp_path: Path, change: dict[str, Any], error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        align(synth.root, 1, out=tmp_path / "run", **{**RUN, **change})


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (
            {"amp": "fp8"},
            ValueError,
            r"^align: amp='fp8'; expected one of \('auto', 'bf16', 'fp16', 'fp32'\)$",
        ),
        ({"amp": "fp16", "device": "cpu"}, NotImplementedError, r"^align: amp='fp16' needs a CUDA device"),
        ({"device": "tpu"}, ValueError, r"^align: device: expected a torch device"),
    ],
)
def test_amp_and_device_are_checked_before_the_data_is_read(
    synth: SyntheticThings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    change: dict[str, Any],
    error: type[Exception],
    match: str,
) -> None:
    """They were fit's to check, after align had read the data and built CORnet-S, and
    a device torch does not know was torch's RuntimeError."""

    def unread(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the data was read")

    monkeypatch.setattr(ALIGN, "load_align_data", unread)
    with pytest.raises(error, match=match):
        align(synth.root, 1, out=tmp_path / "run", **{**RUN, **change})
    assert not (tmp_path / "run").exists()


def test_a_diverging_run_fails_saying_so(synth: SyntheticThings, tmp_path: Path) -> None:
    # the weights overflow in the first steps: the loss's input check called that bad input
    with pytest.raises(
        FloatingPointError, match=r"^align: the predicted responses are not finite: the weights "
    ):
        align(synth.root, 1, out=tmp_path / "run", progress=False, **{**RUN, "lr": 1e12, "batch_size": 4})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_finite_predictions_under_autocast_suggest_float32(dtype: torch.dtype) -> None:
    """Predictions that are not finite name the learning rate and clipping; computed in bf16 or fp16
    (autocast), also float32 training: bf16 on a CPU diverged at 1-pixel images in some runs only."""
    from fastalign.train.alignment import _step

    class Broken(torch.nn.Module):
        def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            pred = torch.full((images.shape[0], 3), float("nan"), dtype=dtype)
            return torch.zeros(images.shape[0], 5), pred

    batch = (torch.zeros(4, 3, 2, 2), torch.zeros(4, 3), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(FloatingPointError, match=r"not finite: the weights diverged") as err:
        _step(Broken(), batch, beta=1.0, contrast="differentiable")
    assert ("--amp fp32" in str(err.value)) == (dtype == torch.bfloat16), str(err.value)


# ---------------------------------------------------------------------------- resume, subjects, RSA


class Kill(Exception):
    pass


class KillAt(Hook):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, state: FitState) -> None:
        if state.step == self.step:
            raise Kill


def _count_passes(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts the recipe's passes of a CORnet-S over the images: the teacher's, and the test outputs' (of
    the selected model, and of the starting model unless this process computed them before)."""
    passes = {"teacher": 0, "test": 0}

    def counted(f: Any, key: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            passes[key] += 1
            return f(*args, **kwargs)

        return call

    for name, key in (("_teacher_targets", "teacher"), ("_test_outputs", "test")):
        monkeypatch.setattr(ALIGN, name, counted(getattr(ALIGN, name), key))
    return passes


@pytest.mark.slow
def test_resume_after_a_kill_ends_with_the_uninterrupted_weights(
    run: tuple[AlignResult, Counter],
    synth: SyntheticThings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """... and the resumed run takes the teacher's targets that the killed run computed (one process keeps
    what the starting weights and the images determine). It resumes with another num_workers (a machine
    with other cores), which fit warned made the run not bitwise an uninterrupted one: align's samples
    draw no random numbers, so it is that run, and nothing is said."""
    passes = _count_passes(monkeypatch)
    out = tmp_path / "run"
    with pytest.raises(Kill):
        align(synth.root, 1, out=out, progress=False, hooks=[KillAt(2)], **RUN)  # in epoch 2
    assert [os.path.basename(p) for p in RunFolder(out).checkpoints()] == ["epoch-0001.pt"]
    teacher_passes = passes["teacher"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = align(synth.root, 1, out=out, progress=False, resume=True, num_workers=1, **RUN)
    assert not [str(w.message) for w in caught if "num_workers" in str(w.message)]
    assert RunFolder(out).read_config()["fit"]["num_workers"] == 1  # recorded all the same
    assert passes["teacher"] == teacher_passes
    assert resumed.summary["resumed_at"] == [1] and resumed.summary["epochs_run"] == 2
    assert [os.path.basename(p) for p in resumed.run.checkpoints()] == ["epoch-0002.pt"]  # the newest kept
    mine, theirs = load_file(out / "model.safetensors"), load_file(run[0].run.model_path)
    assert mine.keys() == theirs.keys()
    for key in mine:
        assert torch.equal(mine[key], theirs[key]), key
    for key, value in run[0].summary.items():
        if key.startswith(("test_", "unaligned_test_")):
            assert resumed.summary[key] == value, key
    # The command line's flags are align's arguments: resuming the finished run through it is accepted
    # (another config would be refused) and trains nothing more.
    argv = ["align", "--data", synth.root, "--subject", "1", "--out", str(out), "--epochs", "2",
            "--batch-size", "8", "--val-fraction", "0.25", "--image-size", str(SIZE), "--amp", "fp32",
            "--seed", "0", "--lr", "1e-4", "--no-progress"]  # fmt: skip
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"sub-01 {out}: best epoch ") and len(printed) == 2
    assert printed[1] == RANDOM_START_NOTE  # no --weights: the unaligned numbers are a random network's
    summary = RunFolder(out).read_summary()
    assert summary["epochs_run"] == 2 and summary["resumed_at"] == [1, 2]
    assert summary["test_rsa_it"] == run[0].summary["test_rsa_it"]
    # a control run is the comparison the note points to: no note
    control = [*argv[: argv.index("--out") + 1], str(tmp_path / "control"), *argv[argv.index("--out") + 2 :]]
    assert main([*control, "--control", "unpaired", "--epochs", "1"]) == 0
    assert RANDOM_START_NOTE not in capsys.readouterr().out


@pytest.mark.slow
def test_every_subject_starts_from_the_same_weights(
    synth: SyntheticThings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fMRI, both subjects: one run folder each, from the same start (the published script trains one
    model object through all subjects), with one teacher pass and one pass of the starting model over the
    test images for both; keep_checkpoints=0 writes no checkpoint; clip_grad_norm reaches the fit loop."""
    ALIGN._MEMO.clear()
    passes = _count_passes(monkeypatch)
    kw = dict(RUN, epochs=1, val_fraction=0.0, batch_size=8, keep_checkpoints=0, clip_grad_norm=1.0)
    results = align(synth.root, "all", modality="fmri", pca=6, out=tmp_path, progress=False, **kw)
    assert [r.subject for r in results] == [1, 2]
    configs = [RunFolder(tmp_path / f"sub-0{s}").read_config()["config"] for s in (1, 2)]
    assert configs[0]["start_fingerprint"] == configs[1]["start_fingerprint"]
    assert [c["subject"] for c in configs] == [1, 2] and configs[0]["n_out"] == 6
    assert results[0].summary["unaligned_test_ce"] == results[1].summary["unaligned_test_ce"]
    assert results[0].summary["unaligned_test_mse"] != results[1].summary["unaligned_test_mse"]  # own brains
    for r in results:
        assert -1 <= r.summary["test_rsa_it"] <= 1 and -1 <= r.summary["test_rsa_response"] <= 1
        assert r.run.checkpoints() == [] and os.path.isfile(r.run.model_path)
        assert r.run.read_config()["fit"]["clip_grad_norm"] == 1.0
        assert any("grad_norm" in key for record in r.run.read_metrics() for key in record)
    assert passes == {"teacher": 2, "test": 3}  # the teacher: training and test images; test: 2 + start
    # again without resume: refused for both before either trains
    with pytest.raises(ValueError, match=r"already holds sub-01, sub-02; pass resume=True"):
        align(synth.root, "all", modality="fmri", pca=6, out=tmp_path, progress=False, **kw)
    # resumed: finished without checkpoints, so nothing trains again and the models are kept (a resumed
    # --subject all retrained every finished subject, deleting its model first)
    models = {s: (tmp_path / f"sub-0{s}" / "model.safetensors").read_bytes() for s in (1, 2)}
    again = align(synth.root, "all", modality="fmri", pca=6, out=tmp_path, progress=False, resume=True, **kw)
    assert [r.summary for r in again] == [r.summary for r in results]
    assert {s: (tmp_path / f"sub-0{s}" / "model.safetensors").read_bytes() for s in (1, 2)} == models


def test_a_whole_realnet_is_recognised_in_every_checkpoint_layout() -> None:
    """A state dict with a head is a ReAlnet as our safetensors, the published ``{"state_dict": ...}`` and
    our epoch checkpoints (``{"model": ...}``, with Adam's state) hold it; a CORnet-S is not."""
    head = {"head.weight": torch.zeros(1), "backbone.V1.conv1.weight": torch.zeros(1)}
    cornet = {"module.V1.conv1.weight": torch.zeros(1)}
    for layout in (head, {"state_dict": head}, {"model": head, "optimizer": {}, "epoch": 1}):
        assert ALIGN._has_head(layout), layout.keys()
    for layout in (cornet, {"state_dict": cornet}, {"model": cornet, "epoch": 1}):
        assert not ALIGN._has_head(layout), layout.keys()


def test_what_the_start_determines_is_recomputed_when_an_image_changes(tmp_path: Path) -> None:
    paths = [str(tmp_path / name) for name in ("a.png", "b.png")]
    for path in paths:
        Path(path).write_bytes(b"one")
    before = ALIGN._files_digest(paths)
    assert ALIGN._files_digest(paths) == before and ALIGN._files_digest(paths[::-1]) != before
    os.utime(paths[1], ns=(0, os.stat(paths[1]).st_mtime_ns + 1))  # rewritten in place, same size
    assert ALIGN._files_digest(paths) != before
    calls = []
    for key in ("x", "x", "y", "x"):
        ALIGN._memoized(("test", key), lambda k=key: calls.append(k))
    assert calls == ["x", "y"]


@pytest.mark.slow
def test_alignment_raises_the_rsa_more_than_the_unpaired_control(aligned_runs: AlignedRuns) -> None:
    """What must be shown, at the smallest size where it holds (see docs/training.md for the numbers), on
    the session's shared runs: subject 1's aligned run and its unpaired control. The predicted responses
    rise above the unaligned model's, by a clear margin more than the control's; the IT RDM ends closer
    to the brain than the control's. Whether IT's RDM itself ends above the start at this size depends on
    rounding (a random CORnet-S's IT moves little and noisily in 18 steps, see docs/training.md): its
    significant rise is shown across subjects by benchmarks/study_evaluate.py (docs/evaluation.md)."""
    paired, control = aligned_runs.summaries["paired"], aligned_runs.summaries["control"]
    gains = {}
    for key in ("rsa_it", "rsa_response"):
        start, aligned, unpaired = (
            paired[f"unaligned_test_{key}"],
            paired[f"test_{key}"],
            control[f"test_{key}"],
        )
        print(f"{key}: unaligned {start:.4f}, aligned {aligned:.4f}, unpaired control {unpaired:.4f}")
        assert control[f"unaligned_test_{key}"] == start  # the same starting model
        gains[key] = aligned - start, unpaired - start
    gain, control_gain = gains["rsa_response"]
    assert gain > 0.05 and gain - control_gain > 0.05
    gain, control_gain = gains["rsa_it"]
    # above, not by a margin: 0.0455 on an AVX2 EPYC, 0.0098 on an AVX-512 Xeon, whose matrix kernels
    # round differently (docs/training.md)
    assert gain - control_gain > 0
