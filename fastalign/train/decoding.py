"""Brain-to-image decoding (NICE / AlignVis): a brain encoder trained with the CLIP loss against frozen
image embeddings, evaluated by zero-shot retrieval among the unseen test images.

The recipe: image embeddings of every training and test image by a frozen image model (mean-centred and
L2-normalised, as AlignVis does), each subject's EEG normalised per channel and trial as AlignVis's loader
does (``normalize="channel_l2"``) with repetitions averaged, and an encoder (NICE by default) trained with
the symmetric InfoNCE loss between its normalised output and its image's embedding. The model of the best
validation epoch is scored by :func:`fastalign.eval.retrieval.retrieval_topk` on the test set.

Differences from the published code (AlignVis src/training/trainer.py, train_brain_clip.py):

- the temperature (init 0.04) is learnt: it is given to the optimiser (without weight decay), where the
  published ``logit_scale`` parameter never is; ``learn_temperature=False`` keeps it fixed;
- the cosine schedule is stepped once per epoch (the published code passes the validation loss as its
  epoch argument);
- the data are one in-memory tensor per split, not one .npy per image;
- the retrieval target is the sample's own test image (see :mod:`fastalign.eval.retrieval`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from fastalign import _checks
from fastalign.contrastive import infonce_loss
from fastalign.data import (
    ImageTransform,
    SyntheticThings,
    embed_images,
    load_image_metadata,
    normalize_embeddings,
    things_eeg2_datasets,
    train_val_split,
)
from fastalign.data._io import atomic_write
from fastalign.eval.features import EvalModel, layer_features
from fastalign.eval.retrieval import retrieval_topk
from fastalign.models import cornet_s
from fastalign.models.encoders import ENCODERS, brain_encoder
from fastalign.train import distributed
from fastalign.train.loop import FitResult, FitState, Hook, fit

__all__ = ["DecodeResult", "Decoder", "decode"]

_FN = "decode"
IMAGE_DIR, EEG_DIR = "image_set", "preprocessed_data"
#: The image-model names :func:`decode` takes besides run folders and modules.
IMAGE_MODELS = ("cornet_s", "features")
#: The published initial temperature (``logit_scale = log(1 / 0.04)``).
PUBLISHED_TEMPERATURE = 0.04


class Decoder(nn.Module):
    """A brain encoder and the CLIP temperature, in one module so that fit, checkpoints and DDP see both.

    ``forward(x)`` returns ``(z, temperature)``: the encoder's output mean-centred and L2-normalised (as
    the image embeddings are), and ``exp(-log_scale)``. ``log_scale`` (``log(1 / temperature)``, CLIP's
    parametrisation) is a parameter when learnt, else a buffer.
    """

    def __init__(self, encoder: nn.Module, temperature: float, learn_temperature: bool) -> None:
        super().__init__()
        self.encoder = encoder
        scale = torch.tensor(math.log(1.0 / temperature))
        if learn_temperature:
            self.log_scale = nn.Parameter(scale)
        else:
            self.register_buffer("log_scale", scale)

    @property
    def temperature(self) -> float:
        """The current temperature."""
        return float(torch.exp(-self.log_scale.detach()))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return normalize_embeddings(self.encoder(x).float()), torch.exp(-self.log_scale.float())


def _step(model: nn.Module, batch: Any) -> Any:
    brain, images = batch
    z, temperature = model(brain)
    return infonce_loss(z, images.to(z.dtype), temperature), {"temperature": temperature.detach()}


def _optimizer(params: Iterable[nn.Parameter], *, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW; the temperature (the only 0-d parameter) is not decayed, as CLIP does (decay would pull
    ``log_scale`` to 0, a temperature of 1)."""
    params = list(params)
    groups = [
        {"params": [p for p in params if p.dim() > 0]},
        {"params": [p for p in params if p.dim() == 0], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, weight_decay=weight_decay)


# ------------------------------------------------------------------------------------------------ data


def _root(data: Any) -> str:
    if isinstance(data, SyntheticThings):
        return data.root
    if not isinstance(data, str | os.PathLike):
        raise TypeError(_checks.message(_FN, "data", "a dataset folder (str or path)", data))
    root = os.path.abspath(os.fspath(data))
    if not os.path.isdir(os.path.join(root, IMAGE_DIR)):
        raise FileNotFoundError(
            f"{_FN}: data={root!r} is not a dataset folder; expected one holding {IMAGE_DIR}/"
        )
    return root


def _ground_truth(root: str) -> dict[str, np.ndarray]:
    path = os.path.join(root, "ground_truth.npz")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{_FN}: image_model='features' uses the synthetic brain's true features, but {path!r} does not "
            "exist (only make_synthetic_things writes it)"
        )
    with np.load(path) as gt:
        return {k: gt[k] for k in ("train_features", "test_features")}


def _image_embeddings(
    spec: Any,
    root: str,
    paths: dict[str, list[str]],
    *,
    layer: str | None,
    weights: Any,
    image_size: int,
    seed: int,
    cache_dir: Any,
    device: torch.device,
) -> tuple[dict[str, torch.Tensor], str]:
    """Normalised (n, d) float32 embeddings of the training and test images, and the model's description."""
    if weights is not None and not (isinstance(spec, str) and spec == "cornet_s"):
        raise ValueError(
            f"{_FN}: weights are CORnet-S's weights, but image_model is {spec!r}, not 'cornet_s'"
        )
    named = isinstance(spec, str) and spec in IMAGE_MODELS
    if layer is not None and (isinstance(spec, nn.Module) or (named and spec == "features")):
        raise ValueError(
            f"{_FN}: layer={layer!r} names a CORnet-S / ReAlnet layer, but image_model is {spec!r}"
        )
    layer = layer or "IT"
    if isinstance(spec, str) and spec == "features":
        gt = _ground_truth(root)
        raw = {"train": gt["train_features"], "test": gt["test_features"]}
        source = "features (synthetic ground truth)"
    elif isinstance(spec, nn.Module):
        transform = ImageTransform(image_size, resize=image_size)
        was_training = spec.training
        spec.eval()
        try:
            raw = {
                s: embed_images(spec.to(device), p, cache_dir, transform=transform, device=device)
                for s, p in paths.items()
            }
        finally:
            spec.train(was_training)
        source = f"module {type(spec).__qualname__}"
    else:
        if isinstance(spec, str) and spec == "cornet_s":
            if weights is not None:
                module = cornet_s(weights)
            else:  # the CORnet-S that fastalign align and evaluate start from with this seed
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    module = cornet_s()
            model = EvalModel("cornet_s", module, layers=[layer])
            origin = os.path.abspath(weights) if weights is not None else f"random, seed {seed}"
            source = f"cornet_s {layer} ({origin})"
        elif isinstance(spec, str | os.PathLike) and os.path.isdir(spec):
            model = dataclasses.replace(EvalModel.from_run(spec), layers=[layer])
            source = f"realnet run {os.path.abspath(spec)} {layer}"
        else:
            raise ValueError(
                _checks.message(
                    _FN, "image_model", "'cornet_s', 'features', a ReAlnet run folder or a module", spec
                )
            )
        raw = {
            s: layer_features(model, p, image_size=image_size, device=device, cache_dir=cache_dir, what=s)[
                layer
            ]
            for s, p in paths.items()
        }
    out = {}
    for split, x in raw.items():
        x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
        if len(x) != len(paths[split]):
            raise ValueError(
                f"{_FN}: image_model gives {len(x)} {split} embeddings but the data has {len(paths[split])} "
                f"{split} images; expected embeddings of the same image set"
            )
        if not np.isfinite(x).all():
            raise ValueError(f"{_FN}: image_model's {split} embeddings hold NaN or inf")
        out[split] = torch.from_numpy(normalize_embeddings(x))
    return out, source


def _brain(root: str, subject: int, n_images: dict[str, int]) -> dict[str, torch.Tensor]:
    """(n, channels, times) EEG per split: each trial's channels centred and L2-scaled, then averaged."""
    train, test = things_eeg2_datasets(
        os.path.join(root, EEG_DIR), subject, None, normalize="channel_l2", flatten=False
    )
    out = {}
    for split, ds in (("train", train), ("test", test)):
        if len(ds) != n_images[split]:
            raise ValueError(
                f"{_FN}: subject {subject} has responses to {len(ds)} {split} images, but image_metadata.npy "
                f"lists {n_images[split]}; expected one response per image"
            )
        # NaN or inf in the files is refused by the loader, a flat channel by channel_l2.
        out[split] = torch.stack([ds.response(i) for i in range(len(ds))])
    return out


# ------------------------------------------------------------------------------------------------ recipe


class _Retrieval(Hook):
    """After the last epoch (rank 0): the selected model's test retrieval and its temperature."""

    def __init__(self, test_brain: torch.Tensor, test_images: torch.Tensor, concepts: np.ndarray) -> None:
        self.brain, self.images, self.concepts = test_brain, test_images, concepts

    def on_fit_end(self, state: FitState) -> Mapping[str, Any] | None:
        if not state.is_main:
            return None
        model = state.model
        assert isinstance(model, Decoder)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            z = torch.cat([model(b.to(state.device))[0].cpu() for b in self.brain.split(256)])
        model.train(was_training)
        out = retrieval_topk(z, self.images, concepts=self.concepts)
        out["temperature"] = model.temperature
        return out


@dataclass(frozen=True)
class DecodeResult:
    """One decoding run (or, for several seeds, their aggregate).

    Attributes:
        run: the run folder (for several seeds, ``out/seed-N`` each; ``runs`` lists them).
        model: the selected :class:`Decoder` (the first seed's when several).
        summary: summary.json: fit's entries, ``top1``, ``top3``, ``top5``, ``n_gallery``, ``chance``,
            ``temperature``; for several seeds the mean, ``{k}_sem`` and ``per_seed``.
        fits: what :func:`fastalign.train.fit` returned, per seed.
    """

    run: str
    model: Decoder
    summary: dict[str, Any]
    fits: list[FitResult]


def _check_settings(a: dict[str, Any]) -> list[int]:
    _checks.check_int(_FN, "subject", a["subject"], minimum=1)
    _checks.check_int(_FN, "epochs", a["epochs"], minimum=1)
    _checks.check_int(_FN, "batch_size", a["batch_size"], minimum=2)
    _checks.check_int(_FN, "image_size", a["image_size"], minimum=1)
    _checks.check_int(_FN, "patience", a["patience"], minimum=1, none=True)
    _checks.check_real(_FN, "lr", a["lr"], positive=True)
    _checks.check_real(_FN, "temperature", a["temperature"], positive=True)
    if _checks.check_real(_FN, "weight_decay", a["weight_decay"]) < 0:
        raise ValueError(_checks.message(_FN, "weight_decay", "a finite number >= 0", a["weight_decay"]))
    for name in ("learn_temperature", "resume", "overwrite", "progress"):
        _checks.check_bool(_FN, name, a[name])
    _checks.check_choice(_FN, "encoder", a["encoder"], ENCODERS)
    if not isinstance(a["out"], str | os.PathLike):
        raise TypeError(_checks.message(_FN, "out", "a folder path", a["out"]))
    seed = a["seed"]
    seeds = list(seed) if isinstance(seed, Sequence) and not isinstance(seed, str | bytes) else [seed]
    if not seeds:
        raise ValueError(f"{_FN}: seed must be an int or a non-empty list of ints, got {seed!r}")
    for s in seeds:
        _checks.check_seed(_FN, s, none=False)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{_FN}: seed lists a seed twice: {seeds}")
    return seeds


def _aggregate(summaries: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Mean and standard error of the mean over seeds, and every seed's numbers."""
    first = summaries[0]
    out: dict[str, Any] = {"seeds": seeds, "n_gallery": first["n_gallery"], "chance": first["chance"]}
    keys = [k for k, v in first.items() if k.startswith(("top", "concept_top")) or k == "temperature"]
    for k in keys:
        values = np.array([s[k] for s in summaries], dtype=np.float64)
        out[k] = float(values.mean())
        out[f"{k}_sem"] = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0
    out["per_seed"] = [
        {"seed": seed, **{k: s[k] for k in [*keys, "best_epoch"]}}
        for seed, s in zip(seeds, summaries, strict=True)
    ]
    return out


def decode(
    data: str | os.PathLike[str] | SyntheticThings,
    subject: int = 1,
    *,
    out: str | os.PathLike[str],
    image_model: str | os.PathLike[str] | nn.Module = "cornet_s",
    layer: str | None = None,
    encoder: str = "nice",
    encoder_options: Mapping[str, Any] | None = None,
    epochs: int = 50,
    batch_size: int = 128,
    lr: float = 2e-4,
    weight_decay: float = 0.1,
    temperature: float = PUBLISHED_TEMPERATURE,
    learn_temperature: bool = True,
    seed: int | Sequence[int] = 0,
    image_size: int = 224,
    weights: str | os.PathLike[str] | None = None,
    val_fraction: float = 0.1,
    patience: int | None = None,
    amp: str = "auto",
    resume: bool = False,
    overwrite: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    hooks: Sequence[Hook] = (),
) -> DecodeResult:
    """Trains a brain encoder to retrieve images from one subject's EEG, and scores its test retrieval.

    Args:
        data: the dataset folder in THINGS-EEG2's layout (``image_set/``, ``preprocessed_data/sub-XX/``),
            or the :class:`~fastalign.data.SyntheticThings` that wrote it.
        subject: the subject number.
        out: the run folder; with several seeds, one folder ``out/seed-N`` per seed and the aggregate in
            ``out/summary.json``.
        image_model: "cornet_s" (``weights``, else randomly initialised from the seed), a ReAlnet run
            folder of :func:`fastalign.train.align` (a human-aligned image model), "features" (the
            synthetic brain's true features: the ceiling) or a torch module (its output, flattened).
        layer: the CORnet-S / ReAlnet layer embedded (default "IT", flattened: 512x7x7 at 224 px; or
            "avgpool"); an error with the other image models.
        encoder, encoder_options: :func:`fastalign.models.encoders.brain_encoder`'s name and options.
        epochs, batch_size, lr, weight_decay: AdamW with a cosine schedule over ``epochs`` stepped once
            per epoch, gradients clipped to norm 1 (published: 50, 128, 2e-4, 0.1).
        temperature, learn_temperature: the CLIP temperature's initial value (published 0.04) and
            whether it is optimised (True) or fixed.
        seed: an int, or several: one run each, summarised by mean and standard error.
        image_size: images are resized to this square size for the image model.
        weights: CORnet-S's checkpoint, for ``image_model="cornet_s"``. Nothing is downloaded.
        val_fraction: the share of training images held out (seeded) to select the epoch.
        patience: early stopping after this many epochs without a lower validation loss (None: never).
        amp, resume, overwrite, device, progress, hooks: as :func:`fastalign.train.fit`.
        cache_dir: where image embeddings are cached (default ``data/embeddings``; one file per model,
            weights and image set).

    Returns:
        A :class:`DecodeResult`.

    Raises:
        FileNotFoundError: missing data, run folder, weights or ground truth.
        ValueError, TypeError: bad settings, embeddings and responses of different image sets, NaN in the
            data, a test gallery smaller than 5.
    """
    seeds = _check_settings(dict(locals()))
    root = _root(data)
    meta = load_image_metadata(os.path.join(root, IMAGE_DIR))
    paths = {"train": meta.paths("training"), "test": meta.paths("test")}
    target_device = torch.device(device) if device is not None else None
    cache = os.fspath(cache_dir) if cache_dir is not None else os.path.join(root, "embeddings")
    subject_dir = os.path.join(root, EEG_DIR, f"sub-{subject:02d}")
    if not os.path.isdir(subject_dir):
        raise ValueError(f"{_FN}: subject {subject} has no EEG folder {subject_dir!r}")
    brain = _brain(root, subject, {k: len(v) for k, v in paths.items()})
    if len(paths["test"]) < 5:
        raise ValueError(f"{_FN}: the test gallery holds {len(paths['test'])} images; top-5 needs at least 5")
    concepts = np.unique(np.asarray(meta.test_img_concepts), return_inverse=True)[1]
    results, summaries = [], []
    for s in seeds:
        images, source = _image_embeddings(
            image_model, root, paths, layer=layer, weights=weights, image_size=image_size, seed=s,
            cache_dir=cache, device=target_device or torch.device("cpu"),
        )  # fmt: skip
        d = images["train"].shape[1]
        tr, va = train_val_split(len(paths["train"]), val_fraction, s)
        sets = {
            "train": TensorDataset(brain["train"][tr], images["train"][tr]),
            "val": TensorDataset(brain["train"][va], images["train"][va]) if len(va) else None,
        }
        torch.manual_seed(s)
        _, n_channels, n_times = brain["train"].shape
        enc = brain_encoder(encoder, n_channels, n_times, d, **dict(encoder_options or {}))
        model = Decoder(enc, temperature, learn_temperature)
        config = {
            "recipe": "decode",
            "data": root,
            "subject": subject,
            "modality": "eeg",
            "image_model": source,
            "layer": layer,
            "encoder": encoder,
            "encoder_options": dict(encoder_options or {}),
            "embed_dim": d,
            "lr": lr,
            "weight_decay": weight_decay,
            "temperature": temperature,
            "learn_temperature": learn_temperature,
            "image_size": image_size,
            "val_fraction": val_fraction,
            "n_train": len(tr),
            "n_val": len(va),
            "n_test": len(paths["test"]),
            "normalize": "channel_l2",
        }
        run_dir = os.fspath(out) if len(seeds) == 1 else os.path.join(os.fspath(out), f"seed-{s}")
        result = fit(
            model, _step, sets["train"], sets["val"], out=run_dir, epochs=epochs, config=config,
            batch_size=batch_size, seed=s, amp=amp, clip_grad_norm=1.0, patience=patience,
            optimizer=functools.partial(_optimizer, lr=lr, weight_decay=weight_decay),
            scheduler=functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=epochs),
            scheduler_interval="epoch", resume=resume, overwrite=overwrite,
            hooks=[_Retrieval(brain["test"], images["test"], concepts), *hooks], progress=progress,
            device=target_device,
        )  # fmt: skip
        results.append(result)
        summaries.append(result.summary)
    first = results[0].model
    assert isinstance(first, Decoder)
    if len(seeds) == 1 or not distributed.planned().is_main:  # other ranks have no test numbers
        return DecodeResult(os.fspath(out), first, results[0].summary, results)
    summary = _aggregate(summaries, seeds)
    os.makedirs(os.fspath(out), exist_ok=True)
    path = os.path.join(os.fspath(out), "summary.json")
    atomic_write(path, lambda tmp: _write_json(tmp, summary))
    return DecodeResult(os.fspath(out), first, summary, results)


def _write_json(path: str, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
