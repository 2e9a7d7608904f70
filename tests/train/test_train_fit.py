"""The fit loop: what a run writes, model selection, early stopping, AMP, clipping, schedulers, seeding."""

from __future__ import annotations

import functools
import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fit_tiny import BATCH, N_TRAIN, data, model, run, state_of, step
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler

import fastalign.train.precision as precision
from fastalign.train import FitState, Hook, RunFolder, load_checkpoint
from fastalign.train.loop import require_selected

STEPS = N_TRAIN // BATCH


class Snapshots(Hook):
    """The model's weights at each epoch's end (epoch 0: before training)."""

    def __init__(self) -> None:
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def on_fit_start(self, state: FitState) -> None:
        self.weights[0] = state_of(state.model)

    def on_epoch_end(self, state: FitState) -> None:
        self.weights[state.epoch] = state_of(state.model)


def scripted_val(losses: Sequence[float], first_epoch: int = 1) -> Any:
    """A step function whose validation loss at epoch e is ``losses[e - first_epoch]`` (training as usual),
    so that selection and patience are tested on known numbers."""
    calls = {"n": 0}
    val_batches = 2  # fit_tiny's 16 validation samples in batches of 8

    def step_fn(m: nn.Module, batch: Any) -> Any:
        if m.training:
            return step(m, batch)
        index = calls["n"] // val_batches
        calls["n"] += 1
        return torch.tensor(losses[index], dtype=torch.float64)

    return step_fn


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_run_folder_contents(tmp_path: Path) -> None:
    snaps = Snapshots()
    result = run(tmp_path / "run", config={"lr": 1e-2, "path": tmp_path, "sizes": (1, 2)}, hooks=[snaps])
    folder = RunFolder(tmp_path / "run")
    config = json.loads(Path(folder.config_path).read_text())
    assert config["config"] == {"lr": 1e-2, "path": str(tmp_path), "sizes": [1, 2]}
    fit = config["fit"]
    assert fit["epochs"] == 3 and fit["batch_size"] == BATCH and fit["seed"] == 0 and fit["amp"] == "fp32"
    assert fit["optimizer"]["class"] == "torch.optim.adam.Adam"
    assert [g["lr"] for g in fit["optimizer"]["param_groups"]] == [1e-2]
    assert fit["train_data"] == {"type": "TensorDataset", "len": N_TRAIN}
    env = config["environment"]
    assert env["torch"] == torch.__version__ and env["numpy"] == np.__version__
    assert {"python", "fastalign", "git_commit", "precision", "device", "tensorboard"} <= set(env)

    train_lines = folder.read_metrics("train")
    epochs = folder.read_metrics("epoch")
    assert [r["step"] for r in train_lines] == list(range(2, 3 * STEPS + 1, 2))  # log_every=2
    assert [r["epoch"] for r in epochs] == [1, 2, 3] and [r["step"] for r in epochs] == [6, 12, 18]
    for r in train_lines:
        assert {"loss", "mae", "lr", "images_per_s", "time"} <= set(r)
    for r in epochs:
        assert {"train_loss", "train_mae", "val_loss", "val_mae", "lr", "images_per_s", "best"} <= set(r)

    ckpt = torch.load(folder.latest_checkpoint(), weights_only=True)
    assert ckpt["epoch"] == 3 and ckpt["step"] == 18
    rng = ckpt["rng"][0]
    assert rng["torch"].dtype == torch.uint8 and rng["numpy"]["keys"].shape == (624,)
    assert rng["python"]["words"].shape == (625,)
    assert _same(ckpt["model"], snaps.weights[3])

    summary = folder.read_summary()
    best = min(epochs, key=lambda r: r["val_loss"])
    assert summary["best_epoch"] == best["epoch"] == result.best_epoch
    assert summary["best_val_loss"] == best["val_loss"] == result.best_val_loss
    assert summary["epochs_run"] == 3 and summary["stopped_early"] is False
    assert _same(load_file(folder.model_path), state_of(result.model))


@pytest.mark.parametrize(
    ("losses", "best"),
    [([0.5, 0.5, 0.7], 1), ([0.9, 0.4, 0.4], 2), ([0.3, 0.5, 0.6], 1), ([math.nan, 0.5, 0.6], 2)],
    ids=["tie-keeps-earlier", "tie-later", "first-epoch", "nan-never-best"],
)
def test_selection(tmp_path: Path, losses: list[float], best: int) -> None:
    snaps = Snapshots()
    result = run(tmp_path / "run", step_fn=scripted_val(losses), hooks=[snaps])
    assert result.best_epoch == best
    assert result.best_val_loss == losses[best - 1]
    assert _same(load_file(result.run.model_path), snaps.weights[best])
    assert _same(state_of(result.model), snaps.weights[best])  # fit leaves the selected weights loaded
    assert [r["best"] for r in result.history][best - 1] is True


def test_initial_model_can_be_selected(tmp_path: Path) -> None:
    snaps = Snapshots()
    result = run(
        tmp_path / "run", step_fn=scripted_val([0.1, 0.5, 0.6, 0.7]), validate_initial=True, hooks=[snaps]
    )
    assert result.best_epoch == 0 and result.best_val_loss == pytest.approx(0.1)
    assert _same(load_file(result.run.model_path), snaps.weights[0])
    assert result.history[0]["epoch"] == 0 and "train_loss" not in result.history[0]


def test_without_validation_data_the_last_epoch_is_selected(tmp_path: Path) -> None:
    snaps = Snapshots()
    result = run(tmp_path / "run", val=None, hooks=[snaps])
    assert result.best_epoch == 3 and result.best_val_loss is None
    assert _same(load_file(result.run.model_path), snaps.weights[3])
    assert "val_loss" not in result.history[-1]


def test_no_finite_validation_loss_selects_nothing(tmp_path: Path) -> None:
    with pytest.warns(RuntimeWarning, match="no epoch had a finite val_loss"):
        result = run(tmp_path / "run", step_fn=scripted_val([math.nan] * 3))
    assert result.best_epoch is None and result.summary["best_val_loss"] is None
    assert not Path(result.run.model_path).exists()
    # fit warns; a recipe whose model later stages load (align, decode) fails with require_selected
    failed = (
        r"^align: no epoch had a finite val_loss \(the training diverged\), so .*model\.safetensors was not"
    )
    with pytest.raises(FloatingPointError, match=failed + r" written; the run's metrics are in "):
        require_selected("align", result)
    selected = run(tmp_path / "other")
    assert require_selected("decode", selected) is selected


def test_a_batch_larger_than_the_training_set_is_named(tmp_path: Path) -> None:
    # the message named neither the batch size nor how many samples there are
    short = (
        r"^fit: train_data gives no batch per epoch: its 48 samples are fewer than a batch \(batch_size=64, "
    )
    with pytest.raises(ValueError, match=short + r"--batch-size\) and drop_last drops a short one"):
        run(tmp_path / "run", batch_size=64, drop_last=True)
    assert run(tmp_path / "kept", batch_size=64).epochs_run == 3  # without drop_last: one short batch


def test_patience_counts_training_epochs(tmp_path: Path) -> None:
    """An initial model without the monitored metric (train_loss) is not a bad epoch for patience."""
    result = run(tmp_path / "run", epochs=3, patience=1, monitor="train_loss", validate_initial=True)
    assert result.epochs_run >= 1 and result.best_epoch != 0


def test_patience_stops_early(tmp_path: Path) -> None:
    result = run(tmp_path / "run", epochs=6, patience=2, step_fn=scripted_val([1.0, 0.5, 0.6, 0.7, 0.1, 0.1]))
    assert result.epochs_run == 4 and result.stopped_early and result.best_epoch == 2
    assert result.run.read_summary()["stopped_early"] is True
    assert load_checkpoint(result.run)["stopped"] is True


def test_monitor_a_hook_metric(tmp_path: Path) -> None:
    class Score(Hook):
        metric_names = ("score",)

        def on_epoch_end(self, state: FitState) -> dict[str, float]:
            return {"score": [0.0, 0.2, 0.9, 0.3][state.epoch]}

    result = run(tmp_path / "run", hooks=[Score()], monitor="score", mode="max")
    assert result.best_epoch == 2 and result.summary["best_value"] == 0.9
    assert [r["score"] for r in result.run.read_metrics("epoch")] == [0.2, 0.9, 0.3]


def test_monitor_a_declared_term(tmp_path: Path) -> None:
    # fit_tiny's step returns the term "mae"; with val_data it is logged as train_mae and val_mae
    result = run(tmp_path / "run", terms=["mae"], monitor="val_mae")
    records = result.run.read_metrics("epoch")
    best = min(records, key=lambda r: r["val_mae"])
    assert result.best_epoch == best["epoch"] and result.summary["best_value"] == best["val_mae"]
    assert run(tmp_path / "clip", terms=["mae"], monitor="train_grad_norm", clip_grad_norm=1.0).best_epoch


class _Steps(Hook):
    def __init__(self) -> None:
        self.steps = 0

    def on_step_end(self, state: FitState) -> None:
        self.steps += 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        # a typo of the default: it failed after the first epoch had trained, with config.json written
        ({"monitor": "val_los"}, r"^fit: monitor='val_los'; expected one of \('train_loss', 'val_loss'\) "
         r"\(did you mean 'val_loss'\?\)\. A step_fn term is monitored \(train_<term>, val_<term>\) once "
         r"terms=\[\.\.\.\] names it, a hook's metric once its metric_names lists it$"),
        # a term the step returns, but not declared; and a declared one misspelt
        ({"monitor": "val_mae"}, r"monitor='val_mae'; expected one of \('train_loss', 'val_loss'\)"),
        ({"monitor": "val_mea", "terms": ["mae"]},
         r"expected one of \('train_loss', 'train_mae', 'val_loss', 'val_mae'\) \(did you mean 'val_mae'"),
        # val_ names other than val_loss need validation data; grad_norm needs clipping
        ({"monitor": "val_mae", "terms": ["mae"], "val": None}, r"\('train_loss', 'train_mae', 'val_loss'\)"
         r" .*; val_<term> needs val_data$"),
        ({"monitor": "train_grad_norm"}, r"monitor='train_grad_norm'; expected one of"),
        # a hook's metric that its hook does not list
        ({"monitor": "score", "hooks": [Hook()]}, r"monitor='score'; expected one of"),
        ({"monitor": "epoch"}, r"monitor='epoch'; expected one of"),
        # the declarations themselves
        ({"terms": "mae"}, r"^fit: terms='mae'; expected a list of names \(str\)$"),
        ({"terms": ["loss"]}, r"^fit: terms uses the names \['loss'\]"),
        # ReduceLROnPlateau with nothing to step on: failed at the first epoch's end
        ({"val": None, "scheduler": functools.partial(torch.optim.lr_scheduler.ReduceLROnPlateau)},
         r"^fit: ReduceLROnPlateau steps on the monitored metric, and without val_data there is no val_loss"),
    ],
)  # fmt: skip
def test_a_monitor_no_epoch_would_hold_is_refused_before_anything_runs(
    tmp_path: Path, kwargs: dict[str, Any], match: str
) -> None:
    steps = _Steps()
    kwargs = {**kwargs, "hooks": [steps, *kwargs.get("hooks", [])]}
    with pytest.raises((ValueError, TypeError), match=match):
        run(tmp_path / "run", **kwargs)
    assert steps.steps == 0
    assert not (tmp_path / "run").exists()  # no run folder, no config.json naming the typo


def test_hook_metric_names_are_checked(tmp_path: Path) -> None:
    class Listed(Hook):
        def __init__(self, names: Any) -> None:
            self.metric_names = names

    with pytest.raises(TypeError, match=r"^fit: Listed.metric_names='score'; expected a list of names"):
        run(tmp_path / "run", hooks=[Listed("score")])
    with pytest.raises(ValueError, match=r"^fit: Listed.metric_names uses the names \['val_loss'\]"):
        run(tmp_path / "run", hooks=[Listed(["val_loss"])])
    assert not (tmp_path / "run").exists()
    # listed but not returned: named when the epoch ends
    with pytest.raises(
        ValueError, match=r"monitor='score' is not among the epoch's metrics .* not return it"
    ):
        run(tmp_path / "run", hooks=[Listed(["score"])], monitor="score")


def test_nonfinite_training_loss_is_an_error(tmp_path: Path) -> None:
    def nan_step(m: nn.Module, batch: Any) -> torch.Tensor:
        return step(m, batch)[0] * math.nan

    with pytest.raises(FloatingPointError, match="training loss nan in epoch 1, steps 1-2"):
        run(tmp_path / "run", step_fn=nan_step)


@pytest.mark.parametrize("native", [True, False])
def test_amp_auto_takes_native_bf16(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    monkeypatch.setattr(precision, "native_bf16", lambda device: native)
    seen = []

    def step_fn(m: nn.Module, batch: Any) -> Any:
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"))
        return step(m, batch)

    result = run(tmp_path / "run", amp="auto", epochs=1, step_fn=step_fn)
    expected = "bf16" if native else "fp32"
    assert result.precision == expected
    assert set(seen) == ({torch.bfloat16} if native else {False})
    assert result.run.read_config()["environment"]["precision"] == expected
    assert result.run.read_summary()["precision"] == expected


def test_clip_grad_norm_bounds_each_update(tmp_path: Path) -> None:
    lr, clip = 1.0, 1e-3
    deltas = []

    class Moves(Hook):
        def on_fit_start(self, state: FitState) -> None:
            self.last = torch.cat([p.detach().flatten().clone() for p in state.model.parameters()])

        def on_step_end(self, state: FitState) -> None:
            now = torch.cat([p.detach().flatten().clone() for p in state.model.parameters()])
            deltas.append((now - self.last).norm().item())
            self.last = now

    result = run(
        tmp_path / "run",
        epochs=1,
        clip_grad_norm=clip,
        optimizer=functools.partial(torch.optim.SGD, lr=lr),
        net=model(dropout=0.0),
        hooks=[Moves()],
    )
    assert len(deltas) == STEPS and max(deltas) <= lr * clip * (1 + 1e-5)
    norms = [r["grad_norm"] for r in result.run.read_metrics("train")]
    assert min(norms) > clip  # unclipped gradients are far larger, so the bound above is the clipping


def test_schedulers(tmp_path: Path) -> None:
    per_epoch = run(
        tmp_path / "epoch",
        scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5),
    )
    assert [r["lr"] for r in per_epoch.history] == pytest.approx([1e-2, 5e-3, 2.5e-3])
    assert per_epoch.run.read_config()["fit"]["scheduler"]["class"].endswith("StepLR")
    per_step = run(
        tmp_path / "step",
        epochs=1,
        scheduler=functools.partial(torch.optim.lr_scheduler.LambdaLR, lr_lambda=lambda s: 0.5**s),
        scheduler_interval="step",
    )
    assert [r["lr"] for r in per_step.run.read_metrics("train")] == pytest.approx(
        [1e-2 * 0.5**s for s in (2, 4, 6)]
    )
    plateau = run(
        tmp_path / "plateau",
        step_fn=scripted_val([1.0, 2.0, 3.0]),
        scheduler=functools.partial(torch.optim.lr_scheduler.ReduceLROnPlateau, patience=0, factor=0.1),
    )
    assert [r["lr"] for r in plateau.history] == pytest.approx([1e-2, 1e-2, 1e-3])


class Indexed(Dataset):
    """Sample i is (i, a numpy draw): the order a run reads and what workers' numpy RNGs give."""

    def __len__(self) -> int:
        return 24

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor([float(i)]), torch.tensor([np.random.rand()])  # noqa: NPY002


class Interrupt(Hook):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, state: FitState) -> None:
        if state.step == self.step:
            raise KeyboardInterrupt


def _reads(out: Path, seed: int, num_workers: int = 0, **kwargs: Any) -> dict[int, list[tuple[int, float]]]:
    """What each epoch's training batches held (index, numpy draw), in order."""
    reads: dict[int, list[tuple[int, float]]] = {}

    class Epoch(Hook):
        def on_fit_start(self, state: FitState) -> None:
            self.now = state.epoch + 1

        def on_epoch_end(self, state: FitState) -> None:
            self.now = state.epoch + 1

    epoch = Epoch()

    def step_fn(m: nn.Module, batch: Any) -> torch.Tensor:
        i, draw = batch
        pairs = zip(i.flatten().int().tolist(), draw.flatten().tolist(), strict=True)
        reads.setdefault(epoch.now, []).extend(pairs)
        return m(i).mean() * 0

    hooks = [epoch, *kwargs.pop("hooks", [])]
    run(out, net=nn.Linear(1, 1), step_fn=step_fn, train=Indexed(), val=None, batch_size=4, seed=seed,
        num_workers=num_workers, epochs=2, hooks=hooks, **kwargs)  # fmt: skip
    return reads


def test_epoch_order_derives_from_seed_and_epoch(tmp_path: Path) -> None:
    a, b, c = (_reads(tmp_path / name, seed) for name, seed in (("a", 3), ("b", 3), ("c", 4)))
    assert a == b and a != c
    for epoch in (1, 2):
        sampler = DistributedSampler(range(24), num_replicas=1, rank=0, shuffle=True, seed=3)
        sampler.set_epoch(epoch)
        assert [i for i, _ in a[epoch]] == list(sampler)
    assert [i for i, _ in a[1]] != [i for i, _ in a[2]]


def test_workers_are_seeded_from_seed_and_epoch(tmp_path: Path) -> None:
    """A DataLoader worker's numpy draws in epoch 2 are the same whether or not the run was interrupted
    after epoch 1 (a generator carried over from epoch 1 would seed them differently after a resume)."""
    whole = _reads(tmp_path / "whole", 3, num_workers=1)
    with pytest.raises(KeyboardInterrupt):
        _reads(tmp_path / "cut", 3, num_workers=1, hooks=[Interrupt(7)])  # the first step of epoch 2
    resumed = _reads(tmp_path / "cut", 3, num_workers=1, resume=True)
    assert list(resumed) == [2] and resumed[2] == whole[2]
    assert sorted(d for _, d in whole[1]) != sorted(d for _, d in whole[2])  # fresh draws each epoch


def test_a_resume_may_change_num_workers_and_says_what_it_changes(tmp_path: Path) -> None:
    """num_workers was part of the config, so a run could not go on on a machine with other cores. The
    batches do not depend on it; what a Dataset draws in the workers does, which the warning says (and
    this Dataset, which draws numbers, shows)."""
    whole = _reads(tmp_path / "whole", 3, num_workers=1)
    with pytest.raises(KeyboardInterrupt):
        _reads(tmp_path / "cut", 3, num_workers=1, hooks=[Interrupt(7)])  # the first step of epoch 2
    with pytest.raises(ValueError, match=r"already holds a run with this config \(checkpointed at epoch 1\)"):
        _reads(tmp_path / "cut", 3, num_workers=2)  # still needs resume
    with pytest.warns(
        RuntimeWarning,
        match=r"resuming '.*cut' after epoch 1 with num_workers=2, where config.json records 1: the batches "
        r"are the same, but .* \(random augmentation\) gives other samples than it would have, and the run "
        r"is not bitwise an uninterrupted one; config.json records num_workers=2 from now on$",
    ):
        resumed = _reads(tmp_path / "cut", 3, num_workers=2, resume=True)
    assert RunFolder(tmp_path / "cut").read_config()["fit"]["num_workers"] == 2
    assert [i for i, _ in resumed[2]] == [i for i, _ in whole[2]]  # the same batches
    assert [d for _, d in resumed[2]] != [d for _, d in whole[2]]  # other draws in the workers
    # finished: nothing trains, so nothing warns, and the workers it ran with stay recorded
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _reads(tmp_path / "cut", 3, num_workers=0, resume=True)
    assert RunFolder(tmp_path / "cut").read_config()["fit"]["num_workers"] == 2


def test_data_that_draw_nothing_resume_with_other_workers_without_a_warning(tmp_path: Path) -> None:
    """The warning is about Datasets that draw random numbers; align's draw none (every sample a fixed
    function of its index), and its resumes with another num_workers warned all the same."""
    with pytest.raises(KeyboardInterrupt):
        _reads(tmp_path / "cut", 3, num_workers=1, hooks=[Interrupt(7)], data_draws_random=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _reads(tmp_path / "cut", 3, num_workers=2, resume=True, data_draws_random=False)
    assert RunFolder(tmp_path / "cut").read_config()["fit"]["num_workers"] == 2
    with pytest.raises(TypeError, match="data_draws_random"):
        _reads(tmp_path / "other", 3, data_draws_random=None)


def test_seeds_are_recorded_and_applied(tmp_path: Path) -> None:
    first = run(tmp_path / "a", seed=11)
    second = run(tmp_path / "b", seed=11)
    other = run(tmp_path / "c", seed=12)
    assert _same(state_of(first.model), state_of(second.model))
    assert not _same(state_of(first.model), state_of(other.model))  # dropout masks follow the seed
    assert first.run.read_config()["environment"]["seed_per_rank"] == [11]


def _train() -> Any:
    return data()[0]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"epochs": 0}, ValueError, r"epochs=0; expected an int >= 1"),
        ({"epochs": 2.0}, TypeError, r"epochs=2.0"),
        ({"amp": "fp8"}, ValueError, r"amp='fp8'; expected one of"),
        ({"amp": "fp16"}, NotImplementedError, r"amp='fp16' needs a CUDA device"),
        ({"batch_size": None}, ValueError, r"batch_size is required"),
        ({"batch_size": 0}, ValueError, r"batch_size=0"),
        ({"seed": -1}, ValueError, r"seed=-1"),
        ({"clip_grad_norm": 0.0}, ValueError, r"clip_grad_norm=0.0"),
        ({"clip_grad_norm": "1"}, TypeError, r"clip_grad_norm='1'"),
        ({"patience": 0}, ValueError, r"patience=0"),
        ({"mode": "up"}, ValueError, r"mode='up'"),
        ({"scheduler_interval": "batch"}, ValueError, r"scheduler_interval='batch'"),
        ({"resume": True, "overwrite": True}, ValueError, r"contradict"),
        ({"config": [1]}, TypeError, r"config is a list"),
        ({"config": {"x": object()}}, TypeError, r"config\['x'\] is a builtins.object"),
        ({"hooks": [lambda s: None]}, TypeError, r"expected fastalign.train.Hook"),
        ({"optimizer": lambda p: None}, TypeError, r"optimizer\(params\) returned a NoneType"),
        ({"log_every": 0}, ValueError, r"log_every=0"),
        ({"val": None, "patience": 2}, ValueError, r"patience needs a monitored metric"),
        ({"monitor": "val_nothing"}, ValueError, r"monitor='val_nothing'; expected one of"),
        ({"train": [], "epochs": 1}, ValueError, r"train_data is empty"),
        ({"step_fn": lambda m, b: (1.0, {})}, TypeError, r"step_fn returned a tuple; expected a scalar loss"),
        ({"step_fn": lambda m, b: m(b[0])}, ValueError, r"loss of shape \(8, 1\)"),
        ({"step_fn": lambda m, b: (step(m, b)[0], {"loss": 1.0})}, ValueError, r"names \['loss'\]"),
        ({"step_fn": lambda m, b: (step(m, b)[0], {"x": "a"})}, TypeError, r"term 'x' is 'a'"),
        ({"step_fn": lambda m, b: step(m, b)[0].detach()}, ValueError, r"does not require grad"),
        ({"device": "tpu"}, ValueError, r"fit: device: expected a torch device"),
        ({"device": "meta"}, ValueError, r"fit: device: "),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        run(tmp_path / "run", **kwargs)


def test_out_must_be_a_path() -> None:
    for out in (None, 3, ""):
        with pytest.raises(TypeError, match=r"fit: out=.*; expected the run folder's path"):
            run(out)


def test_bad_model_and_step_fn(tmp_path: Path) -> None:
    from fastalign.train import fit

    with pytest.raises(TypeError, match="model is a str"):
        fit("model", step, _train(), out=tmp_path / "a", epochs=1, batch_size=8)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="step_fn is a int"):
        fit(model(), 3, _train(), out=tmp_path / "b", epochs=1, batch_size=8)  # type: ignore[arg-type]
