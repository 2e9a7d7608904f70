"""The fit loop: one epoch loop that every recipe (ReAlnet alignment, decoding) trains with.

It knows nothing of brains or images. A recipe gives it a model, a step function that turns a batch into a
loss and named terms, training and validation data, an optimizer (and scheduler) factory and hooks; the
loop brings precision (AMP), gradient clipping, seeding, validation and model selection, early stopping,
progress, metrics, atomic checkpoints, resume and data parallelism. See docs/training.md.
"""

from __future__ import annotations

import difflib
import math
import os
import time
import warnings
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from fastalign import _checks
from fastalign.train import distributed
from fastalign.train.checkpoint import FORMAT, capture_rng, load_checkpoint, restore_rng, save_checkpoint
from fastalign.train.distributed import DistInfo
from fastalign.train.loaders import Loader, batch_len, check_data, rank_seed, seed_everything, to_device
from fastalign.train.precision import Precision, resolve_amp
from fastalign.train.progress import Events, Progress, summary_writer
from fastalign.train.run import FINISHED, RunFolder, describe, environment, jsonable, prepare_run

Terms = Mapping[str, float | torch.Tensor]
StepOutput = torch.Tensor | tuple[torch.Tensor, Terms]
StepFn = Callable[[nn.Module, Any], StepOutput]
# Names the loop writes into metric records; step terms and hook metrics may not take them.
RESERVED = frozenset(
    {"kind", "epoch", "step", "loss", "lr", "images_per_s", "time", "epoch_time", "best", "grad_norm"}
)


@dataclass
class FitState:
    """What hooks see.

    Attributes:
        model: the model being trained (unwrapped from DistributedDataParallel).
        optimizer: the optimizer.
        scheduler: the scheduler, or None.
        run: the run folder (rank 0 writes it; hooks may add files, e.g. figures, on rank 0).
        device: the training device.
        precision: "bf16", "fp16" or "fp32".
        rank: this process's rank; world_size: the number of processes.
        epochs: the epochs asked for.
        epoch: the current epoch (1-based; 0 while validating the initial model).
        step: optimizer steps done so far.
        record: the current epoch's metrics so far (train_*, val_*, lr, ...).
        history: the finished epochs' records.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    run: RunFolder
    device: torch.device
    precision: str
    rank: int
    world_size: int
    epochs: int
    epoch: int = 0
    step: int = 0
    record: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def is_main(self) -> bool:
        """Rank 0 (the process that writes)."""
        return self.rank == 0


class Hook:
    """Callbacks of the fit loop; override the ones you need. Every method runs on every rank (so a hook
    may use collectives); what rank 0's methods return is what counts.

    Attributes:
        metric_names: the names of the metrics ``on_epoch_end`` returns, said before training so that
            ``fit(monitor=...)`` may name one (fit checks ``monitor`` before it starts); a metric not
            listed is logged all the same.
    """

    metric_names: Collection[str] = ()

    def on_fit_start(self, state: FitState) -> None:
        """Before the first epoch of this call (after a resume's checkpoint is loaded)."""

    def on_step_end(self, state: FitState) -> None:
        """After each optimizer step (``state.step`` is the steps done)."""

    def on_epoch_end(self, state: FitState) -> Mapping[str, float] | None:
        """After validation, before model selection: return metrics (name -> number) to add to the epoch's
        record; ``monitor`` may name one listed in :attr:`metric_names`. Also called for epoch 0 with
        ``validate_initial=True``."""
        return None

    def on_fit_end(self, state: FitState) -> Mapping[str, Any] | None:
        """After the last epoch, with the selected weights loaded: return entries to add to summary.json."""
        return None


@dataclass(frozen=True)
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        model: the trained model, holding the selected epoch's weights.
        run: the run folder.
        best_epoch: the selected epoch (0: the initial model), None when no epoch had a finite monitor.
        best_val_loss: the validation loss of that epoch (None without validation data).
        epochs_run: epochs trained in total (across resumes).
        stopped_early: whether patience ended the run.
        history: every epoch's record (as in metrics.jsonl).
        summary: summary.json's content.
        precision: "bf16", "fp16" or "fp32".
    """

    model: nn.Module
    run: RunFolder
    best_epoch: int | None
    best_val_loss: float | None
    epochs_run: int
    stopped_early: bool
    history: list[dict[str, Any]]
    summary: dict[str, Any]
    precision: str


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_int(name: str, value: Any, low: int, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not _is_int(value) or value < low:
        expected = f"an int >= {low}" + (" or None" if optional else "")
        raise (ValueError if _is_int(value) else TypeError)(f"fit: {name}={value!r}; expected {expected}")


def _check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"fit: {name}={value!r}; expected one of {tuple(choices)}")


def _check_bool(name: str, value: Any, optional: bool = False) -> None:
    if not (isinstance(value, bool) or (optional and value is None)):
        raise TypeError(f"fit: {name}={value!r}; expected a bool" + (" or None" if optional else ""))


def _check_args(args: dict[str, Any]) -> None:
    if not isinstance(args["out"], str | os.PathLike) or os.fspath(args["out"]) == "":
        raise TypeError(f"fit: out={args['out']!r}; expected the run folder's path (a str or os.PathLike)")
    if not isinstance(args["model"], nn.Module):
        raise TypeError(f"fit: model is a {type(args['model']).__name__}; expected a torch.nn.Module")
    for name in ("step_fn", "optimizer", "scheduler", "collate_fn"):
        if args[name] is not None and not callable(args[name]):
            raise TypeError(f"fit: {name} is a {type(args[name]).__name__}; expected a callable")
    if args["step_fn"] is None:
        raise TypeError("fit: step_fn is None; expected a callable (model, batch) -> loss or (loss, terms)")
    _check_int("epochs", args["epochs"], 1)
    _check_int("batch_size", args["batch_size"], 1, optional=True)
    _check_int("seed", args["seed"], 0)
    if args["seed"] >= 2**63:
        raise ValueError(f"fit: seed={args['seed']}; expected 0 <= seed < 2**63")
    _check_int("patience", args["patience"], 1, optional=True)
    _check_int("num_workers", args["num_workers"], 0)
    _check_int("log_every", args["log_every"], 1)
    _check_int("keep_checkpoints", args["keep_checkpoints"], 0, optional=True)
    clip = args["clip_grad_norm"]
    if clip is not None:
        if isinstance(clip, bool) or not isinstance(clip, int | float):
            raise TypeError(f"fit: clip_grad_norm={clip!r}; expected a positive number or None")
        if not (math.isfinite(clip) and clip > 0):
            raise ValueError(f"fit: clip_grad_norm={clip!r}; expected a finite number > 0 or None")
    _check_choice("mode", args["mode"], ("min", "max"))
    _check_choice("scheduler_interval", args["scheduler_interval"], ("epoch", "step"))
    if not isinstance(args["monitor"], str):
        raise TypeError(f"fit: monitor={args['monitor']!r}; expected a metric name (str)")
    for name in ("resume", "overwrite", "validate_initial", "drop_last", "data_draws_random", "progress"):
        _check_bool(name, args[name])
    _check_bool("tensorboard", args["tensorboard"], optional=True)
    if args["resume"] and args["overwrite"]:
        raise ValueError(
            "fit: resume=True (--resume) and overwrite=True (--overwrite) contradict each other; "
            "pass one of them"
        )
    if args["config"] is not None and not isinstance(args["config"], Mapping):
        raise TypeError(f"fit: config is a {type(args['config']).__name__}; expected a mapping (or None)")
    hooks = args["hooks"]
    if isinstance(hooks, Hook) or not isinstance(hooks, Iterable):
        raise TypeError(f"fit: hooks={hooks!r}; expected a sequence of Hook objects")
    args["hooks"] = hooks = tuple(hooks)  # a generator would be used up by the check below
    bad = [h for h in hooks if not isinstance(h, Hook)]
    if bad:
        raise TypeError(
            f"fit: hooks holds {type(bad[0]).__name__} objects; expected fastalign.train.Hook instances"
        )
    if args["val_data"] is None and args["patience"] is not None and args["monitor"] == "val_loss":
        raise ValueError(
            "fit: patience needs a monitored metric: pass val_data, or another monitor (train_loss, a "
            "term's, a hook's)"
        )
    _check_monitor(args)
    _check_locations(args)


def _names(name: str, value: Any) -> tuple[str, ...]:
    """``value`` as a tuple of strings: a collection of them (a str alone is a name, not a collection)."""
    listed = isinstance(value, Collection) and not isinstance(value, str)
    if not listed or any(not isinstance(v, str) for v in value):
        raise TypeError(f"fit: {name}={value!r}; expected a list of names (str)")
    return tuple(value)


def _monitor_choices(
    terms: Sequence[str], hooks: Sequence[Hook], has_val: bool, clip_grad_norm: float | None
) -> list[str]:
    """The epoch metrics ``monitor`` may name, as known before training: the losses, the ``train_`` and
    (with validation data) ``val_`` names of step_fn's declared ``terms``, ``train_grad_norm`` when
    gradients are clipped, and the hooks' :attr:`Hook.metric_names`. "val_loss" is always one: without
    validation data it selects the last epoch."""
    train = ["loss", *terms, *(["grad_norm"] if clip_grad_norm is not None else [])]
    names = [*(f"train_{t}" for t in train), "val_loss", *(f"val_{t}" for t in terms if has_val)]
    for hook in hooks:
        names += [n for n in hook.metric_names if n not in names]
    return names


def _check_monitor(args: dict[str, Any]) -> None:
    """monitor (and the declarations it is checked against) before anything runs: a name no epoch would
    hold failed after the first epoch had trained, with the name already in config.json."""
    args["terms"] = terms = _names("terms", args["terms"])
    _check_metric_names(terms, "terms")
    loop = {f"{p}_{t}" for p in ("train", "val") for t in ("loss", *terms, "grad_norm")}
    for hook in args["hooks"]:
        declared = _names(f"{type(hook).__name__}.metric_names", hook.metric_names)
        _check_metric_names(declared, f"{type(hook).__name__}.metric_names", loop)
    monitor = args["monitor"]
    choices = _monitor_choices(terms, args["hooks"], args["val_data"] is not None, args["clip_grad_norm"])
    if monitor in choices:
        return
    close = difflib.get_close_matches(monitor, choices, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    no_val = "; val_<term> needs val_data" if args["val_data"] is None else ""
    raise ValueError(
        f"fit: monitor={monitor!r}; expected one of {tuple(choices)}{hint}. A step_fn term is monitored "
        f"(train_<term>, val_<term>) once terms=[...] names it, a hook's metric once its metric_names lists "
        f"it{no_val}"
    )


def _check_locations(args: dict[str, Any]) -> None:
    args["locations"] = locations = _names("locations", args["locations"])
    config = args["config"] or {}
    missing = [k for k in locations if k not in config]
    if missing:
        raise ValueError(
            f"fit: locations={list(locations)} names {missing}, which config does not hold; expected keys of "
            f"config ({list(config)})"
        )


def _check_metric_names(names: Iterable[Any], what: str, taken: Iterable[str] = ()) -> None:
    clash = [n for n in names if not isinstance(n, str) or n in RESERVED or n in taken]
    if clash:
        raise ValueError(
            f"fit: {what} uses the names {clash}; names must be strings, unique, and not the loop's own "
            f"({sorted(RESERVED)}): rename them"
        )


def _unpack(out: Any, train: bool) -> tuple[torch.Tensor, dict[str, float | torch.Tensor]]:
    if isinstance(out, torch.Tensor):
        loss, terms = out, {}
    elif (
        isinstance(out, tuple)
        and len(out) == 2
        and isinstance(out[0], torch.Tensor)
        and isinstance(out[1], Mapping)
    ):
        loss, terms = out[0], dict(out[1])
    else:
        raise TypeError(
            f"fit: step_fn returned a {type(out).__name__}; expected a scalar loss tensor or "
            "(loss, {name: number or one-element tensor})"
        )
    if loss.numel() != 1:
        raise ValueError(f"fit: step_fn returned a loss of shape {tuple(loss.shape)}; expected a scalar")
    if train and not loss.requires_grad:
        raise ValueError(
            "fit: step_fn returned a loss that does not require grad in training (computed under no_grad, "
            "or from detached tensors?)"
        )
    _check_metric_names(terms, "step_fn's terms")
    for name, v in terms.items():
        ok = (isinstance(v, torch.Tensor) and v.numel() == 1) or (
            isinstance(v, int | float) and not isinstance(v, bool)
        )
        if not ok:
            raise TypeError(
                f"fit: step_fn's term {name!r} is {v!r}; expected a number or a one-element tensor"
            )
    return loss, terms


class _Sums:
    """Sample-weighted sums of the loss and terms over steps, kept on the device (no sync per step)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.names: tuple[str, ...] | None = None
        self._sums: torch.Tensor | None = None
        self._count = 0

    def add(self, loss: torch.Tensor, terms: Mapping[str, float | torch.Tensor], n: int) -> None:
        names = ("loss", *sorted(terms))
        if self.names is None:
            self.names = names
        elif names != self.names:
            raise ValueError(
                f"fit: step_fn returned the terms {list(names[1:])} after {list(self.names[1:])}; return "
                "the same terms every step"
            )
        values = [loss, *(terms[k] for k in names[1:])]
        row = torch.stack(
            [torch.as_tensor(v, device=self.device).detach().reshape(()).double() for v in values]
        )
        self._sums = row * n if self._sums is None else self._sums + row * n
        self._count += n

    def reduce(self, info: DistInfo) -> tuple[dict[str, float], int]:
        """The sums over all ranks (name -> sum) and the sample count; resets."""
        if self.names is None or self._sums is None:
            raise RuntimeError("fit: no batch was seen")  # the loaders refuse empty data before this
        both = torch.cat(
            [self._sums, torch.tensor([float(self._count)], device=self.device, dtype=torch.float64)]
        )
        values = distributed.all_reduce_sum(both, info).tolist()
        self._sums, self._count = None, 0
        return dict(zip(self.names, values[:-1], strict=True)), int(values[-1])


def _means(sums: Mapping[str, float], count: int, prefix: str = "") -> dict[str, float]:
    return {f"{prefix}{k}": v / count for k, v in sums.items()}


def _lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def _describe_data(data: Any) -> dict[str, Any]:
    if isinstance(data, DataLoader):
        dataset = data.dataset
        return {
            "type": "DataLoader",
            "dataset": type(dataset).__qualname__,
            "len": len(dataset) if hasattr(dataset, "__len__") else None,
            "batch_size": data.batch_size,
            "sampler": type(data.sampler).__qualname__,
        }
    return {"type": type(data).__qualname__, "len": len(data)}


def _plain_metrics(metrics: Any, hook: Hook, taken: Iterable[str]) -> dict[str, float]:
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise TypeError(
            f"fit: {type(hook).__name__}.on_epoch_end returned a {type(metrics).__name__}; expected a mapping"
        )
    out: dict[str, float] = {}
    for name, v in metrics.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise TypeError(
                f"fit: {type(hook).__name__}.on_epoch_end metric {name!r} is {v!r}; expected a number"
            )
        out[name] = float(v)
    _check_metric_names(out, f"{type(hook).__name__}.on_epoch_end", taken)
    return out


class _Fit:
    """One call of :func:`fit`: the state and steps of the loop."""

    def __init__(
        self, args: dict[str, Any], info: DistInfo, device: torch.device, precision: Precision
    ) -> None:
        self.a = args
        self.info = info
        self.device = device
        self.precision = precision
        self.model: nn.Module = args["model"].to(device)
        factory = args["optimizer"] or torch.optim.Adam
        self.optimizer = factory(self.model.parameters())
        if not isinstance(self.optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"fit: optimizer(params) returned a {type(self.optimizer).__name__}; expected an Optimizer"
            )
        self.scheduler = args["scheduler"](self.optimizer) if args["scheduler"] is not None else None
        self.plateau = isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        if self.plateau and args["scheduler_interval"] == "step":
            raise ValueError(
                "fit: ReduceLROnPlateau steps on the monitored metric: use scheduler_interval='epoch'"
            )
        self.scaler = precision.scaler()
        self.select_last = args["val_data"] is None and args["monitor"] == "val_loss"
        if self.plateau and self.select_last:  # failed after the first epoch, with config.json written
            raise ValueError(
                "fit: ReduceLROnPlateau steps on the monitored metric, and without val_data there is no "
                "val_loss (monitor='val_loss' then selects the last epoch): pass val_data or another monitor"
            )
        pin = device.type == "cuda"
        self.pin = pin
        loader_args = dict(num_workers=args["num_workers"], collate_fn=args["collate_fn"], pin_memory=pin)
        self.train = Loader(
            args["train_data"],
            args["batch_size"],
            info,
            args["seed"],
            train=True,
            drop_last=args["drop_last"],
            **loader_args,
        )
        if len(self.train) == 0:
            data = args["train_data"]
            data = data.dataset if isinstance(data, DataLoader) else data
            held = f"its {len(data)} samples are" if hasattr(data, "__len__") else "it holds"
            raise ValueError(
                f"fit: train_data gives no batch per epoch: {held} fewer than a batch (batch_size="
                f"{args['batch_size']}, --batch-size) and drop_last drops a short one; lower batch_size"
            )
        self.val = (
            Loader(args["val_data"], args["batch_size"], info, args["seed"], train=False, **loader_args)
            if args["val_data"] is not None
            else None
        )
        self.step = 0
        self.start_epoch = 0
        self.best: dict[str, Any] = {"epoch": None, "value": None, "val_loss": None}
        self.bad_epochs = 0
        self.stopped = False
        self.history: list[dict[str, Any]] = []
        self.resumed_at: list[int] = []
        self.elapsed_before = 0.0
        self.held: RunFolder | None = None  # rank 0's prepared folder, whose lock it holds

    # Setup

    def settings(self) -> dict[str, Any]:
        a = self.a
        fit = {
            "epochs": a["epochs"],
            "batch_size": a["batch_size"],
            "seed": a["seed"],
            "amp": a["amp"],
            "precision": self.precision.mode,  # what "auto" chose: a resume elsewhere must not change it
            "clip_grad_norm": a["clip_grad_norm"],
            "patience": a["patience"],
            "monitor": a["monitor"],
            "mode": a["mode"],
            "validate_initial": a["validate_initial"],
            "optimizer": describe(self.optimizer),
            "scheduler": describe(self.scheduler) if self.scheduler is not None else None,
            "scheduler_interval": a["scheduler_interval"],
            "num_workers": a["num_workers"],
            "drop_last": a["drop_last"],
            "world_size": self.info.world_size,
            "train_data": _describe_data(a["train_data"]),
            "val_data": _describe_data(a["val_data"]) if a["val_data"] is not None else None,
        }
        return {"config": jsonable(dict(a["config"] or {}), "config"), "fit": jsonable(fit, "fit settings")}

    def environment(self, events_note: str) -> dict[str, Any]:
        return {
            **environment(),
            "device": str(self.device),
            "precision": self.precision.mode,
            "precision_reason": self.precision.reason,
            "seed_per_rank": [rank_seed(self.a["seed"], r) for r in range(self.info.world_size)],
            "log_every": self.a["log_every"],
            "keep_checkpoints": self.a["keep_checkpoints"],
            "tensorboard": events_note,
        }

    def prepare(self, events_note: str) -> None:
        """Rank 0 readies the folder; every rank raises its error or loads its checkpoint."""
        a = self.a
        outcome: tuple[str | None, BaseException | None] = (None, None)
        if self.info.is_main:
            try:
                self.held, checkpoint = prepare_run(
                    a["out"],
                    self.settings(),
                    self.environment(events_note),
                    resume=a["resume"],
                    overwrite=a["overwrite"],
                    locations=a["locations"],
                    data_draws_random=a["data_draws_random"],
                )
                outcome = (checkpoint, None)
            except (ValueError, TypeError, OSError) as e:
                outcome = (None, e)
        checkpoint, error = distributed.broadcast(outcome, self.info)
        if error is not None:
            raise error
        self.run = RunFolder(a["out"])
        self.finished = checkpoint == FINISHED
        if checkpoint is None or self.finished:
            seed_everything(rank_seed(a["seed"], self.info.rank))
        else:
            self._load(checkpoint)

    def _load(self, path: str) -> None:
        ckpt = load_checkpoint(
            path,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.scaler,
            map_location="cpu",  # load_state_dict moves each state to its parameter's device
        )
        if len(ckpt["rng"]) != self.info.world_size:
            raise ValueError(
                f"resume: {path!r} holds RNG states of {len(ckpt['rng'])} processes; this run has "
                f"{self.info.world_size}"
            )
        restore_rng(ckpt["rng"][self.info.rank], self.device)
        self.step, self.start_epoch = ckpt["step"], ckpt["epoch"]
        self.best, self.bad_epochs, self.stopped = dict(ckpt["best"]), ckpt["bad_epochs"], ckpt["stopped"]
        self.history = list(ckpt["history"])
        self.resumed_at = [*ckpt["resumed_at"], ckpt["epoch"]]
        self.elapsed_before = ckpt["elapsed"]
        if self.info.is_main:
            self.run.truncate_metrics(ckpt["metrics_bytes"])
            held = self.run.model_epoch()
            if self.best["epoch"] == ckpt["epoch"] and held != ckpt["epoch"]:
                # stopped after this checkpoint, before the selected epoch's model was written (it is
                # written after the checkpoint): the checkpoint's model is that epoch's
                self._save_model()
            elif held is not None and held != self.best["epoch"]:
                # e.g. a later checkpoint removed by hand: the model file is from an epoch this checkpoint
                # does not know as the best; it is replaced only if a later epoch is selected again
                warnings.warn(
                    f"fit: resuming {self.run.path!r} from epoch {ckpt['epoch']}, whose best epoch is "
                    f"{self.best['epoch']}, but {os.path.basename(self.run.model_path)} holds epoch {held}'s "
                    "weights (a later checkpoint removed?); unless a later epoch is selected, the run ends "
                    "with those weights under the summary's best epoch",
                    RuntimeWarning,
                    stacklevel=2,
                )
        distributed.barrier(self.info)

    # Epochs

    def _step(self, net: nn.Module, batch: Any, sums: _Sums) -> None:
        with self.precision.autocast():
            loss, terms = _unpack(self.a["step_fn"](net, batch), train=True)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        if self.a["clip_grad_norm"] is not None:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.a["clip_grad_norm"])
            terms = {**terms, "grad_norm": norm}
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.scheduler is not None and self.a["scheduler_interval"] == "step":
            self.scheduler.step()
        self.step += 1
        sums.add(loss, terms, batch_len(batch))

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        net = self.net
        net.train()
        lr = _lr(self.optimizer)
        loader = self.train.epoch(epoch)
        steps = len(loader)
        self.progress.start_epoch(epoch, steps)
        sums = _Sums(self.device)
        totals: dict[str, float] = {}
        count = 0
        t_epoch = t_log = time.perf_counter()
        first = self.step + 1
        for index, batch in enumerate(loader, start=1):
            self._step(net, to_device(batch, self.device, self.pin), sums)
            self.progress.advance()
            self.state.step = self.step
            for hook in self.a["hooks"]:
                hook.on_step_end(self.state)
            if index % self.a["log_every"] and index != steps:
                continue
            part, n = sums.reduce(self.info)
            now = time.perf_counter()
            values = {**_means(part, n), "lr": _lr(self.optimizer), "images_per_s": n / (now - t_log)}
            if not math.isfinite(values["loss"]):
                raise FloatingPointError(
                    f"fit: training loss {values['loss']} in epoch {epoch}, steps {first}-{self.step}: "
                    "lower the learning rate, clip gradients (clip_grad_norm) or check the data"
                )
            self._write({"kind": "train", "epoch": epoch, "step": self.step, **values, "time": self._time()})
            self.events.scalars("train", values, self.step)
            self.progress.log(epoch, index, steps, self.step, values)
            totals = {k: totals.get(k, 0.0) + v for k, v in part.items()}
            count += n
            t_log, first = now, self.step + 1
        seconds = time.perf_counter() - t_epoch
        return {
            **_means(totals, count, "train_"),
            "lr": lr,
            "images_per_s": count / seconds,
            "epoch_time": seconds,
        }

    def validate(self, epoch: int) -> dict[str, float]:
        if self.val is None:
            return {}
        self.model.eval()
        sums = _Sums(self.device)
        with torch.no_grad():
            for batch in self.val.epoch(epoch):
                batch = to_device(batch, self.device, self.pin)
                with self.precision.autocast():
                    loss, terms = _unpack(self.a["step_fn"](self.model, batch), train=False)
                sums.add(loss, terms, batch_len(batch))
        total, n = sums.reduce(self.info)
        return _means(total, n, "val_")

    def _hook_metrics(self, record: dict[str, Any]) -> dict[str, float]:
        merged: dict[str, float] = {}
        for hook in self.a["hooks"]:
            merged.update(_plain_metrics(hook.on_epoch_end(self.state), hook, [*record, *merged]))
        return distributed.broadcast(merged, self.info)  # rank 0's numbers decide, on every rank

    def _select(self, epoch: int, record: dict[str, Any]) -> bool:
        """Whether ``epoch`` is the new best (strictly better: ties keep the earlier epoch; without
        validation data and another monitor, the latest epoch)."""
        value: float | None = None
        if not self.select_last:
            if self.a["monitor"] not in record:
                if epoch == 0:  # e.g. train_loss: the initial model has none, so it cannot be selected
                    return False
                raise ValueError(
                    f"fit: monitor={self.a['monitor']!r} is not among the epoch's metrics {sorted(record)}, "
                    "although terms or a hook's metric_names lists it: step_fn or the hook did not return it"
                )
            value = record[self.a["monitor"]]
            best = self.best["value"]
            better = best is None or (value < best if self.a["mode"] == "min" else value > best)
            if not (math.isfinite(value) and better):
                return False
        self.best = {"epoch": epoch, "value": value, "val_loss": record.get("val_loss")}
        return True

    def _save_model(self) -> None:
        """model.safetensors: the selected epoch's weights, ``self.model`` as it is now."""
        best = self.best
        self.run.save_model(
            self.model,
            {"epoch": str(best["epoch"]), "monitor": self.a["monitor"], "value": repr(best["value"])},
        )

    def end_epoch(self, epoch: int, record: dict[str, Any]) -> None:
        """Validation, hooks, scheduler, selection, patience, the metrics line and the checkpoint."""
        self.state.epoch = epoch
        record.update(self.validate(epoch))
        self.state.record = record
        record.update(self._hook_metrics(record))
        if self.scheduler is not None and self.a["scheduler_interval"] == "epoch" and epoch > 0:
            if self.plateau:
                if self.a["monitor"] not in record:
                    raise ValueError(
                        f"fit: ReduceLROnPlateau steps on monitor={self.a['monitor']!r}, which no epoch has"
                    )
                self.scheduler.step(record[self.a["monitor"]])
            else:
                self.scheduler.step()
        record["best"] = self._select(epoch, record)
        # patience counts training epochs: an initial model that cannot be selected costs none
        self.bad_epochs = 0 if record["best"] else self.bad_epochs + (epoch > 0)
        patience = self.a["patience"]
        self.stopped = patience is not None and self.bad_epochs >= patience
        record["time"] = self._time()
        self._write(record)
        self.events.scalars(
            "epoch", {k: v for k, v in record.items() if k not in ("kind", "epoch", "step")}, self.step
        )
        self.history.append(record)
        self.state.history = self.history
        if epoch > 0:
            self._checkpoint(epoch)
        # after the checkpoint: stopped between the two, the checkpoint has selected this epoch and holds
        # its model, which resume writes; written before it, a resume from the previous checkpoint kept
        # this epoch's weights under an earlier epoch's summary
        if record["best"] and self.info.is_main:
            self._save_model()
        shown = {
            k: v for k, v in record.items() if k.startswith(("train_loss", "val_")) or k == "images_per_s"
        }
        self.progress.end_epoch(epoch, {**shown, "best epoch": self.best["epoch"]})

    def _checkpoint(self, epoch: int) -> None:
        if self.a["keep_checkpoints"] == 0:  # a run that will not be resumed: no model + optimizer write
            if self.info.is_main:
                self.run.prune_checkpoints(0)  # a resumed run's last one would now be stale
            return
        rng = distributed.gather_to_main(capture_rng(self.device), self.info)
        if self.info.is_main:
            checkpoint = {
                "format": FORMAT,
                "epoch": epoch,
                "step": self.step,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "rng": rng,
                "best": self.best,
                "bad_epochs": self.bad_epochs,
                "stopped": self.stopped,
                "history": self.history,
                "metrics_bytes": self.run.metrics_size(),
                "resumed_at": self.resumed_at,
                "elapsed": self._time(),
            }
            save_checkpoint(self.run.checkpoint_path(epoch), checkpoint)
            self.run.prune_checkpoints(self.a["keep_checkpoints"])
        distributed.barrier(self.info)

    def _write(self, record: Mapping[str, Any]) -> None:
        if self.info.is_main:
            self.run.append_metrics(record)

    def _time(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t0

    # The run

    def run_all(self) -> FitResult:
        self.held = None
        try:
            return self._run_all()
        finally:
            if self.held is not None:
                self.held.unlock()

    def _run_all(self) -> FitResult:
        a = self.a
        self.t0 = time.perf_counter()
        main = self.info.is_main
        writer_class, note = summary_writer(a["tensorboard"] if main else False)
        self.prepare(note)
        if self.finished:
            return self._finished()
        self.progress = Progress(a["progress"] and main, a["epochs"])
        self.events = Events(writer_class, self.run.events_dir, purge_step=self.step)
        self.net: nn.Module = self.model
        if self.info.active:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        self.state = FitState(
            self.model, self.optimizer, self.scheduler, self.run, self.device, self.precision.mode,
            self.info.rank, self.info.world_size, a["epochs"], self.start_epoch, self.step,
            history=self.history,
        )  # fmt: skip
        try:
            for hook in a["hooks"]:
                hook.on_fit_start(self.state)
            if self.start_epoch == 0 and a["validate_initial"]:
                self.end_epoch(0, {"kind": "epoch", "epoch": 0, "step": 0})
            for epoch in range(self.start_epoch + 1, a["epochs"] + 1):
                if self.stopped:
                    break
                self.state.epoch = epoch
                train = self.train_epoch(epoch)
                self.end_epoch(epoch, {"kind": "epoch", "epoch": epoch, "step": self.step, **train})
            return self.finish()
        finally:
            self.progress.close()
            self.events.close()

    def _finished(self) -> FitResult:
        """The result of a finished run that kept no checkpoint, from its files: nothing is trained."""
        summary = self.run.read_summary()
        best = summary.get("best_epoch")
        if best is not None:
            if not os.path.isfile(self.run.model_path):
                raise FileNotFoundError(
                    f"fit: out={self.run.path!r} holds a finished run (summary.json: best epoch {best}) "
                    f"whose {os.path.basename(self.run.model_path)} is missing and which kept no checkpoint "
                    "to rebuild it from; restore the file, or train it again with overwrite=True"
                )
            distributed.barrier(self.info)
            self.run.load_model(self.model, self.device)
        history = self.run.read_metrics("epoch")
        return FitResult(
            self.model, self.run, best, summary.get("best_val_loss"), summary.get("epochs_run", 0),
            bool(summary.get("stopped_early", False)), history, summary,
            summary.get("precision", self.precision.mode),
        )  # fmt: skip

    def finish(self) -> FitResult:
        epochs_run = max((r["epoch"] for r in self.history), default=0)
        if self.best["epoch"] is not None:
            distributed.barrier(self.info)
            self.run.load_model(self.model, self.device)
        self.state.epoch = epochs_run
        extra: dict[str, Any] = {}
        for hook in self.a["hooks"]:
            extra.update(dict(hook.on_fit_end(self.state) or {}))
        summary = {
            "best_epoch": self.best["epoch"],
            "best_val_loss": self.best["val_loss"],
            "epochs_run": epochs_run,
            "stopped_early": self.stopped,
            "monitor": self.a["monitor"],
            "best_value": self.best["value"],
            "precision": self.precision.mode,
            "world_size": self.info.world_size,
            "resumed_at": self.resumed_at,
            "time": self._time(),
        }
        clash = sorted(set(extra) & set(summary))
        if clash:
            raise ValueError(f"fit: on_fit_end returned {clash}, which summary.json already holds")
        summary.update(jsonable(extra, "on_fit_end's summary"))
        if self.info.is_main:
            self.run.write_summary(summary)
            if self.best["epoch"] is None:
                warnings.warn(
                    f"fit: no epoch had a finite {self.a['monitor']}, so none was selected and "
                    f"{self.run.model_path} was not written",
                    RuntimeWarning,
                    stacklevel=3,
                )
        distributed.barrier(self.info)
        return FitResult(
            self.model, self.run, self.best["epoch"], self.best["val_loss"], epochs_run, self.stopped,
            self.history, summary, self.precision.mode,
        )  # fmt: skip


def require_selected(fn: str, result: FitResult) -> FitResult:
    """``result``, or a FloatingPointError when no epoch was selected: a recipe whose model later stages
    load (align, decode) has failed when it wrote none, which fit alone only warns about."""
    if result.best_epoch is None:
        raise FloatingPointError(
            f"{fn}: no epoch had a finite {result.summary['monitor']} (the training diverged), so "
            f"{result.run.model_path} was not written; the run's metrics are in {result.run.metrics_path}: "
            "lower the learning rate (--lr) or clip gradients (--clip-grad-norm)"
        )
    return result


def fit(
    model: nn.Module,
    step_fn: StepFn,
    train_data: Any,
    val_data: Any = None,
    *,
    out: str | Any,
    epochs: int,
    config: Mapping[str, Any] | None = None,
    locations: Sequence[str] = (),
    batch_size: int | None = None,
    optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None,
    scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
    scheduler_interval: str = "epoch",
    seed: int = 0,
    amp: str = "auto",
    clip_grad_norm: float | None = None,
    patience: int | None = None,
    monitor: str = "val_loss",
    mode: str = "min",
    terms: Sequence[str] = (),
    validate_initial: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    num_workers: int = 0,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    drop_last: bool = False,
    data_draws_random: bool = True,
    hooks: Sequence[Hook] = (),
    progress: bool = True,
    log_every: int = 50,
    keep_checkpoints: int | None = 1,
    tensorboard: bool | None = None,
    device: str | torch.device | None = None,
) -> FitResult:
    """Trains ``model`` for ``epochs`` epochs into the run folder ``out`` (see docs/training.md).

    Each step calls ``step_fn(model, batch)`` under autocast (``model`` is the DistributedDataParallel
    wrapper under torchrun: call it, rather than its submodules, so gradients synchronise) and minimises
    the returned loss; each epoch ends with validation (``step_fn`` on the unwrapped model in eval mode
    under ``torch.no_grad``), the hooks, the scheduler, model selection on ``monitor`` (the best epoch's
    weights go to ``model.safetensors``; ties keep the earlier epoch), early stopping and a checkpoint.

    Args:
        model: the model; moved to ``device``.
        step_fn: ``(model, batch) -> loss`` or ``-> (loss, {name: number or one-element tensor})``; terms
            are averaged per sample (a batch's size is the leading size of its first tensor) and logged.
        train_data: a map-style Dataset (fit shuffles it per epoch from (seed, epoch) and shards it over
            processes) or a DataLoader (used as is; under torchrun it needs a DistributedSampler).
        val_data: the same kinds, or None (no validation: the last epoch is selected).
        out: the run folder (see :mod:`fastalign.train.run` for its layout and overwrite rules).
        epochs: epochs to train (>= 1).
        config: the recipe's settings, written to config.json and compared when a run is resumed.
        locations: keys of ``config`` whose values say where an input is (a path), not what it holds:
            a resume accepts another path for them (the input moved) and records it. List a key only
            when other ``config`` entries identify the input's content (a digest, statistics), since
            those are then all that tells the same input from another.
        batch_size: the global batch size for Datasets (split evenly over processes); None for DataLoaders.
        optimizer: a factory called with ``model.parameters()`` (e.g. ``functools.partial(torch.optim.Adam,
            lr=2e-5)``); default ``torch.optim.Adam`` with torch's defaults.
        scheduler: a factory called with the optimizer, or None; ReduceLROnPlateau gets the monitored value.
        scheduler_interval: "epoch" (step after each epoch) or "step" (after each optimizer step).
        seed: seeds torch, numpy and ``random`` (rank 0 uses it as is, other ranks a value derived from it),
            the per-epoch order and DataLoader workers; 0 <= seed < 2**63.
        amp: "auto" (bf16 where the device computes it natively, else fp32), "bf16", "fp16" (CUDA, with a
            GradScaler) or "fp32".
        clip_grad_norm: clip the gradients' total 2-norm to this (and log ``grad_norm``), or None.
        patience: stop after this many epochs without a better ``monitor``, or None.
        monitor: the epoch metric that selects the model: "val_loss", "train_loss", "val_<term>" or
            "train_<term>" of a term named in ``terms``, "train_grad_norm" (with ``clip_grad_norm``), or
            a metric a hook lists in :attr:`Hook.metric_names`; checked before anything runs.
        mode: "min" or "max": which way ``monitor`` improves.
        terms: the names of the terms ``step_fn`` returns, said before training so that ``monitor`` may
            name one (terms not listed are logged all the same).
        validate_initial: also validate the untrained model as epoch 0 (it can be selected).
        resume: continue the run in ``out`` from its last checkpoint (a new run when it holds none). The
            settings must be the run's, except more ``epochs``, the paths of ``locations`` and
            ``num_workers`` (with a warning unless ``data_draws_random=False``: a Dataset that draws random
            numbers then draws others).
        overwrite: replace the run in ``out``, whatever its config.
        num_workers, collate_fn, drop_last: DataLoader settings for Dataset inputs (``drop_last`` drops
            each process's last incomplete training batch).
        data_draws_random: whether the Datasets (or ``collate_fn``) may draw random numbers as they give
            samples (random augmentation). DataLoader workers draw from per-worker seeds, so such a run
            resumed with another ``num_workers`` is not bitwise an uninterrupted one, which the resume
            warns about. False says that every sample is a fixed function of its index (align's data):
            the batches are then the same whatever the workers, and the resume says nothing.
        hooks: :class:`Hook` objects.
        progress: show progress on standard error (a tqdm bar on a terminal, plain lines otherwise).
        log_every: write a "train" metrics line every this many steps (and at each epoch's end).
        keep_checkpoints: how many epoch checkpoints to keep (None: all; 0: none, and the run cannot be
            resumed: ``resume=True`` then starts it again).
        tensorboard: write TensorBoard events: None when tensorboard is installed, True always, False never.
        device: the training device; default ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU.

    Returns:
        A :class:`FitResult`; ``model`` then holds the selected epoch's weights.

    Raises:
        TypeError, ValueError: bad arguments or data, or ``out`` holding another run (see above).
        NotImplementedError: ``amp="fp16"`` on a device other than CUDA.
        FloatingPointError: the training loss is not finite.
        ImportError: ``tensorboard=True`` without tensorboard.
    """
    args = dict(locals())
    _check_args(args)
    info = distributed.planned()
    loaders_given = [d for d in (train_data, val_data) if d is not None]
    if batch_size is not None and all(isinstance(d, DataLoader) for d in loaders_given):
        raise ValueError(
            f"fit: batch_size={batch_size} applies to Datasets, and train_data and val_data are DataLoaders "
            "with their own batch sizes: pass batch_size=None"
        )
    check_data(train_data, "train_data", batch_size, info, train=True)
    if val_data is not None:
        check_data(val_data, "val_data", batch_size, info, train=False)
        if not isinstance(val_data, DataLoader) and len(val_data) < info.world_size:
            raise ValueError(
                f"fit: val_data has {len(val_data)} samples, fewer than the {info.world_size} processes"
            )
    if device is not None:
        target = _checks.check_device("fit", "device", device)
    else:
        target = distributed.default_device(info)
    precision = resolve_amp(amp, target)
    info = distributed.setup(info, target)
    try:
        return _Fit(args, info, target, precision).run_all()
    finally:
        distributed.teardown(info)
