"""Brain-to-image decoding (NICE / AlignVis): a brain encoder trained with the CLIP loss against frozen
image embeddings, evaluated by zero-shot retrieval among the unseen test images.

The recipe: image embeddings of every training and test image by a frozen image model (mean-centred and
L2-normalised, as AlignVis does), each subject's EEG normalised per channel and trial as AlignVis's loader
does (``normalize="channel_l2"``) with repetitions averaged (or, as an option, a fresh seeded sample of
them each epoch), and an encoder (NICE by default) trained with the symmetric InfoNCE loss between its
normalised output and its image's embedding. The model of the best validation epoch is scored by
:func:`fastalign.eval.retrieval.retrieval_topk` on the test set. MEG and fMRI come in as arrays through the
same :class:`~fastalign.data.BrainImageDataset`; one subject can be left out of training and tested on;
under torchrun the negatives of each step are the whole global batch.

As published (AlignVis src/training/trainer.py, train_brain_clip.py): the temperature fixed at 0.04 (its
``logit_scale`` parameter never reaches the optimiser; the authors sweep it as a setting), the last short
training batch dropped, early stopping after 30 epochs without a lower validation loss, the validation
images drawn by ``torch.utils.data.random_split`` with the seed (the same images). Differences:

- ``learn_temperature=True`` optimises the temperature (without weight decay, its scale clamped at 100 as
  CLIP's) on request;
- the cosine schedule is stepped once per epoch (the published code passes the validation loss as its
  epoch argument);
- the data are one in-memory tensor per split, not one .npy per image;
- the retrieval target is the sample's own test image (see :mod:`fastalign.eval.retrieval`);
- leave-one-subject-out holds out validation images, not (subject, image) pairs, so no validation image
  was seen in training through another subject.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import ConcatDataset, Dataset, Subset, TensorDataset

from fastalign import _checks
from fastalign.contrastive import infonce_loss
from fastalign.data import (
    BrainImageDataset,
    EEGResponses,
    ImageTransform,
    SyntheticThings,
    embed_images,
    load_image_metadata,
    load_preprocessed_eeg,
    normalize_embeddings,
    train_val_split,
)
from fastalign.data._io import atomic_write, check_array, load_npy, replacing_dir
from fastalign.data.datasets import Normalization
from fastalign.eval.features import WEIGHTS_SUFFIXES, EvalModel, layer_features, read_realnet_file
from fastalign.eval.retrieval import retrieval_topk
from fastalign.models import ReAlnet, cornet_s
from fastalign.models.encoders import ENCODERS, brain_encoder
from fastalign.train import distributed
from fastalign.train.loaders import derive_seed
from fastalign.train.loop import FitResult, FitState, Hook, fit, require_selected
from fastalign.train.precision import resolve_amp
from fastalign.train.run import RUN_KEYS, RunFolder, digest_tensors

__all__ = ["DecodeResult", "Decoder", "decode"]

_FN = "decode"
IMAGE_DIR, EEG_DIR = "image_set", "preprocessed_data"
#: AlignVis's tree of precomputed image embeddings beside image_set/ (its loader's image_embeddings/).
EMBEDDING_DIR = "image_embeddings"
#: The image-model names :func:`decode` takes besides run folders and modules.
IMAGE_MODELS = ("cornet_s", "features")
# what image_model takes, in its errors
_IMAGE_MODELS = (
    "'cornet_s', 'features', 'npy:NAME', a ReAlnet run folder or weights file "
    f"({', '.join(WEIGHTS_SUFFIXES)}), or a module"
)
#: ``image_model="npy:NAME"``: precomputed embeddings, one ``<image stem>_NAME.npy`` vector per image
#: beside it or in AlignVis's ``image_embeddings/`` tree (see :func:`_precomputed_embeddings`).
PRECOMPUTED_PREFIX = "npy:"
#: The published initial temperature (``logit_scale = log(1 / 0.04)``).
PUBLISHED_TEMPERATURE = 0.04
#: Early stopping's patience in AlignVis (``es_patience``).
PUBLISHED_PATIENCE = 30
#: The largest logit scale (1 / temperature) a learnt temperature reaches, as CLIP and InfoNCELoss clamp it.
MAX_LOGIT_SCALE = 100.0


class Decoder(nn.Module):
    """A brain encoder and the CLIP temperature, in one module so that fit, checkpoints and DDP see both.

    ``forward(x)`` returns ``(z, temperature)``: the encoder's output mean-centred and L2-normalised (as
    the image embeddings are), and ``exp(-log_scale)``. ``log_scale`` (``log(1 / temperature)``, CLIP's
    parametrisation) is a parameter when learnt, else a buffer; a learnt one is clamped at
    ``log(MAX_LOGIT_SCALE)`` before each forward pass in training, as CLIP clamps it after each step (a
    temperature below 0.01 sharpens the softmax until the loss follows a single negative).
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
        if isinstance(self.log_scale, nn.Parameter) and self.training:
            with torch.no_grad():
                self.log_scale.clamp_(max=math.log(MAX_LOGIT_SCALE))
        return normalize_embeddings(self.encoder(x).float()), torch.exp(-self.log_scale.float())


def _group() -> tuple[Any, int]:
    """The default process group and its size while data-parallel, else (None, 1)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.group.WORLD, dist.get_world_size()
    return None, 1


def _step(model: nn.Module, batch: Any, *, images: torch.Tensor) -> Any:
    """The CLIP loss of a batch of (image index, response); ``images`` holds the training embeddings."""
    index, brain = batch
    z, temperature = model(brain)
    # Validation batches may differ in number across ranks, so only training steps (which all ranks take
    # together) gather the negatives of the global batch.
    group, world = _group() if torch.is_grad_enabled() else (None, 1)
    loss = infonce_loss(z, images[index].to(z.dtype), temperature, group=group)
    if world > 1:
        # Each rank's backward gives its shard's share of the global loss's gradient (the shares sum to
        # it) and DDP averages the ranks' gradients: scale by the world size, keeping the value.
        loss = loss + (world - 1) * (loss - loss.detach())
    return loss, {"temperature": temperature.detach()}


def _optimizer(params: Iterable[nn.Parameter], *, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW; the temperature (the only 0-d parameter) is not decayed, as CLIP does (decay would pull
    ``log_scale`` to 0, a temperature of 1)."""
    params = list(params)
    groups: list[dict[str, Any]] = [
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


def _free_memory(device: torch.device) -> int | None:
    """Bytes that a new allocation on ``device`` can get: the memory Linux reports as available
    (MemAvailable) for the CPU, the device's free memory for CUDA; None where it is not known."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


# float32 weights, their gradients and AdamW's two moments are 16 bytes per parameter; training takes more:
# autocast's bf16 copies of the weights, the optimizer step's temporaries and the activations. NICE at
# d = 25,088 (1.26 G parameters) reached 24.0 GB resident under bf16 autocast on a CPU (19 bytes per
# parameter) and was killed where 20 GiB were free, which 16 bytes per parameter had let through.
_TRAINING_BYTES_PER_PARAMETER = 24


def _check_encoder_fits(
    encoder: str,
    n_channels: int,
    n_times: int,
    d: int,
    options: dict[str, Any],
    device: torch.device,
    source: str,
) -> None:
    """Refuses, before anything is trained or written, an encoder whose training state alone exceeds the
    memory available (NICE's projection is d x d: a 25,088-wide CORnet-S IT at 224 px gives 1.3 G
    parameters, about 24 GB to train, where the process would be killed without a message)."""
    with torch.device("meta"):  # parameter shapes only: nothing allocated, no random draws
        n = sum(p.numel() for p in brain_encoder(encoder, n_channels, n_times, d, **options).parameters())
    need, free = _TRAINING_BYTES_PER_PARAMETER * n, _free_memory(device)
    if free is not None and need > free:
        raise ValueError(
            f"{_FN}: encoder={encoder!r} for {d:,}-dimensional image embeddings ({source}) has "
            f"{n / 1e6:,.0f} M parameters; training it needs about {need / 2**30:.1f} GiB (weights, "
            f"gradients, AdamW's moments and the step's copies), more than the {free / 2**30:.1f} GiB "
            f"available on {device}. "
            "Use a smaller embedding (layer='avgpool', or a smaller image_size) or encoder_options that "
            "shrink the encoder"
        )


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
    precomputed = isinstance(spec, str) and spec.startswith(PRECOMPUTED_PREFIX)
    module = isinstance(spec, nn.Module) and not isinstance(spec, ReAlnet)  # embedded by its output
    if layer is not None and (module or (named and spec == "features") or precomputed):
        raise ValueError(
            f"{_FN}: layer={layer!r} names a CORnet-S / ReAlnet layer, but image_model is {spec!r}"
        )
    layer = layer or "IT"
    if isinstance(spec, str) and spec == "features":
        gt = _ground_truth(root)
        raw = {"train": gt["train_features"], "test": gt["test_features"]}
        source = "features (synthetic ground truth)"
    elif precomputed:
        assert isinstance(spec, str)
        name = spec[len(PRECOMPUTED_PREFIX) :]
        if not name or any(c in name for c in "/\\") or name != name.strip():
            raise ValueError(
                _checks.message(_FN, "image_model", "'npy:NAME' with a file-name suffix NAME", spec)
            )
        raw = {s: _precomputed_embeddings(p, name, s, root) for s, p in paths.items()}
        source = f"precomputed embeddings {name!r} (<image>_{name}.npy)"
    elif module:
        assert isinstance(spec, nn.Module)
        transform = ImageTransform(image_size, crop=False)
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
                backbone = cornet_s(weights)
            else:  # the CORnet-S that fastalign align and evaluate start from with this seed
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    backbone = cornet_s()
            model = EvalModel("cornet_s", backbone, layers=[layer])
            origin = os.path.abspath(weights) if weights is not None else f"random, seed {seed}"
            source = f"cornet_s {layer} ({origin})"
        elif _run_folder(spec):
            weights_file = os.path.join(os.fspath(spec), "model.safetensors")
            if not os.path.isfile(weights_file):
                runs = sorted(
                    n for n in os.listdir(spec)
                    if re.fullmatch(r"sub-\d+", n)
                    and os.path.isfile(os.path.join(spec, n, "model.safetensors"))
                )  # fmt: skip
                hint = (
                    f"; it holds the run folders {', '.join(runs)} of one align call: pass one of them (e.g. "
                    f"{os.path.join(os.fspath(spec), runs[0])!r}), the model aligned to the subject decoded"
                    if runs
                    else "; expected a finished run folder of fastalign align"
                )
                raise FileNotFoundError(
                    f"{_FN}: image_model={os.fspath(spec)!r} is a folder without the aligned weights "
                    f"{weights_file!r}{hint}"
                )
            try:
                run_model = EvalModel.from_run(spec)
            except (ValueError, FileNotFoundError) as exc:  # evaluate's reader: this is decode's argument
                raise type(exc)(f"{_FN}: image_model: {str(exc).removeprefix('evaluate: ')}") from exc
            model = dataclasses.replace(run_model, layers=[layer])
            source = f"realnet run {os.path.abspath(spec)} {layer}"
        elif isinstance(spec, ReAlnet):  # its layer, as a run folder's (forward gives logits and response)
            model = EvalModel("realnet", spec, layers=[layer])
            source = f"realnet module {layer}"
        elif isinstance(spec, str | os.PathLike) and os.path.isfile(spec):
            if not os.fspath(spec).endswith(WEIGHTS_SUFFIXES):
                raise ValueError(
                    _checks.message(
                        _FN, "image_model", f"a ReAlnet weights file ({', '.join(WEIGHTS_SUFFIXES)})", spec
                    )
                )
            path = os.fspath(spec)
            file_model = read_realnet_file(
                path,
                _FN,
                f"image_model={path!r}",
                f"to decode with that CORnet-S, pass image_model='cornet_s', weights={path!r} (--image-model "
                f"cornet_s --weights {path})",
            )
            model = EvalModel("realnet", file_model, layers=[layer])
            source = f"realnet weights {os.path.abspath(spec)} {layer}"
        elif isinstance(spec, os.PathLike) or (
            isinstance(spec, str) and (os.sep in spec or "/" in spec or spec.endswith(WEIGHTS_SUFFIXES))
        ):  # a path (not a misspelt name), of nothing
            raise FileNotFoundError(
                f"{_FN}: image_model={os.fspath(spec)!r}: no such file or folder; expected {_IMAGE_MODELS}"
            )
        else:
            raise ValueError(_checks.message(_FN, "image_model", _IMAGE_MODELS, spec))
        raw = {}
        for s, p in paths.items():
            feats = layer_features(
                model, p, image_size=image_size, device=device, cache_dir=cache_dir, what=s, fn=_FN
            )
            raw[s] = feats[layer]
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


def _run_folder(spec: Any) -> bool:
    """Whether ``image_model`` names an align run folder: a folder path that is no model's name. A name
    ("features", "cornet_s", "npy:NAME") is the model whatever folders the working directory holds."""
    named = isinstance(spec, str) and (spec in IMAGE_MODELS or spec.startswith(PRECOMPUTED_PREFIX))
    return isinstance(spec, str | os.PathLike) and not named and os.path.isdir(spec)


def _about(image_model: Any, source: str, subject: int, train_subjects: list[int]) -> dict[str, Any]:
    """The summary's record of what was decoded with what: ``image_model`` (config.json's description:
    the model, its layer and its weights, run folder or seed), ``subject``, ``train_subjects`` and, for a
    ReAlnet run folder, ``image_model_aligned_to`` (the subject and modality in its config.json)."""
    about: dict[str, Any] = {"image_model": source, "subject": subject, "train_subjects": train_subjects}
    if _run_folder(image_model):
        aligned = RunFolder(os.fspath(image_model)).read_config().get("config", {})
        if "subject" in aligned:  # align's run folder (_image_embeddings has read it as one)
            about["image_model_aligned_to"] = f"sub-{int(aligned['subject']):02d} ({aligned.get('modality')})"
    return about


def _precomputed_embeddings(images: list[str], name: str, split: str, root: str) -> np.ndarray:
    """(n, d) embeddings, one ``<image stem>_<name>.npy`` per image: beside the image, else at the same
    place in AlignVis's tree ``<root>/image_embeddings/`` (for ``<root>/image_set/training_images/<concept>/
    <stem>.jpg``: ``<root>/image_embeddings/training_images/<concept>/<stem>_<name>.npy``). Each file is
    a plain .npy (no pickled objects, no zip: a data file runs no code) of one real vector, (d,) or
    (1, d) as AlignVis's generator writes it, finite, of one d for all."""
    rows, width = [], None
    for image in images:
        places = _embedding_places(image, name, root)
        f = next((p for p in places if os.path.isfile(p)), None)
        if f is None:
            missing = sum(
                not any(os.path.isfile(q) for q in _embedding_places(i, name, root)) for i in images
            )
            raise FileNotFoundError(
                f"{_FN}: image_model='npy:{name}' needs an embedding for every image; {missing} of the "
                f"{len(images)} {split} images have none, e.g. {image!r}: looked for "
                f"{' and '.join(repr(p) for p in places)}"
            )
        try:
            x = load_npy(f, f"image_model='npy:{name}' embedding")
        except ValueError as exc:
            raise ValueError(f"{_FN}: {f!r} is not a plain .npy array ({exc})") from None
        real = np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)
        if not (x.ndim == 1 or (x.ndim == 2 and x.shape[0] == 1)) or x.size == 0 or not real:
            raise ValueError(
                f"{_FN}: {f!r} holds a {x.dtype} array of shape {x.shape}; expected one embedding: a (d,) or "
                "(1, d) array of real (floating or integer) numbers"
            )
        x = x.reshape(-1)
        if width is None:
            width = x.size
        if x.size != width:
            raise ValueError(
                f"{_FN}: {f!r} holds {x.size} values, the first embedding {width}; expected one size for "
                "every image"
            )
        if not np.isfinite(x).all():
            raise ValueError(f"{_FN}: {f!r} holds NaN or inf; expected a finite embedding")
        rows.append(x.astype(np.float32))
    return np.stack(rows)


def _embedding_places(image: str, name: str, root: str) -> list[str]:
    """Where ``<image stem>_<name>.npy`` may be: beside the image, then in AlignVis's tree."""
    stem = os.path.splitext(image)[0] + f"_{name}.npy"
    image_set = os.path.abspath(os.path.join(root, IMAGE_DIR))
    if not os.path.abspath(stem).startswith(image_set + os.sep):
        return [stem]
    return [stem, os.path.join(root, EMBEDDING_DIR, os.path.relpath(os.path.abspath(stem), image_set))]


def _feature_shape(trials: np.ndarray) -> tuple[int, ...]:
    """One averaged response's shape: (channels, times) of 4-d trials, (voxels,) of 2-d and 3-d ones."""
    return tuple(trials.shape[2:]) if trials.ndim >= 3 else tuple(trials.shape[1:])


def _array_responses(responses: Any) -> dict[str, np.ndarray]:
    """``responses`` checked: {"train": array, "test": array} of finite real values, 2-4 dimensions."""
    expected = "None or a mapping {'train': array, 'test': array}"
    if not isinstance(responses, Mapping):
        raise TypeError(_checks.message(_FN, "responses", expected, responses))
    if set(responses) != {"train", "test"}:
        raise ValueError(_checks.message(_FN, "responses", expected, f"keys {sorted(map(str, responses))}"))
    return {
        split: check_array(responses[split], f"responses[{split!r}]", _FN, ndim=(2, 3, 4))
        for split in ("train", "test")
    }


def _subjects_of(root: str) -> list[int]:
    """The subject numbers with a ``preprocessed_data/sub-XX`` folder."""
    folder = os.path.join(root, EEG_DIR)
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    return [int(n[4:]) for n in names if n.startswith("sub-") and n[4:].isdigit()]


@dataclass
class _Brain:
    """The responses a run uses: per training subject its averaged training responses (and, only with
    ``random_repetitions``, its single trials as given), the test subject's averaged test responses."""

    train: dict[int, torch.Tensor]
    trials: dict[int, Any]
    test: torch.Tensor
    normalize: Normalization | None
    source: str
    #: a hash of every response array as read (the test subject's test trials, each training subject's
    #: training trials), bytes as in the files: config.json's ``responses_digest``, by which a resume knows
    #: the data at a new path (hashed while each array is in memory anyway; the same on every machine)
    digest: str


def _data(trials: Any) -> np.ndarray:
    return trials.data if isinstance(trials, EEGResponses) else trials


def _digest(arrays: Mapping[str, str]) -> str:
    """One short hash of named per-array digests (:func:`digest_tensors` of each), in name order."""
    h = hashlib.sha256()
    for name, value in sorted(arrays.items()):
        h.update(f"{name}={value};".encode())
    return h.hexdigest()[:16]


def _array_digest(trials: Any) -> str:
    return digest_tensors({"x": torch.from_numpy(np.ascontiguousarray(_data(trials)))})


def _averaged(trials: Any, normalize: Normalization | None) -> torch.Tensor:
    """(n_images, *response_shape) float32: each trial normalised, then the repetitions averaged."""
    # NaN or inf in the data is refused by the loader and check_array, a flat channel by channel_l2.
    return BrainImageDataset(trials, normalize=normalize, flatten=False).responses()


def _check_rows(name: str, trials: np.ndarray, n_images: int, split: str) -> None:
    if len(trials) != n_images:
        listed = f"{n_images} {'training' if split == 'train' else 'test'} images"
        raise ValueError(
            f"{_FN}: {name} holds responses to {len(trials)} images, but image_metadata.npy lists {listed}; "
            "expected one response per image, in its order"
        )


def _brain(
    root: str,
    subject: int,
    responses: Any,
    leave_one_subject_out: bool,
    random_repetitions: int | None,
    n_images: dict[str, int],
) -> _Brain:
    """The EEG files of the training subjects and ``subject`` (or the ``responses`` arrays), checked and
    averaged; one training subject's raw data in memory at a time unless its trials are sampled."""
    loaders: dict[int, Callable[[], Any]]
    test: Any
    if responses is not None:
        if leave_one_subject_out:
            raise ValueError(
                f"{_FN}: leave_one_subject_out reads every subject's EEG from {EEG_DIR}/; responses= holds "
                "one subject's arrays"
            )
        arrays = _array_responses(responses)
        loaders, test, source = {subject: lambda: arrays["train"]}, arrays["test"], "array"
        names = {"train": "responses['train']", "test": "responses['test']"}
    else:
        available = _subjects_of(root)
        if subject not in available:
            missing = os.path.join(root, EEG_DIR, f"sub-{subject:02d}")
            raise ValueError(f"{_FN}: subject {subject} has no EEG folder {missing!r}")
        others = [s for s in available if s != subject] if leave_one_subject_out else [subject]
        if not others:
            raise ValueError(
                f"{_FN}: leave_one_subject_out trains on the other subjects' EEG, but {EEG_DIR}/ holds only "
                f"subject {subject}"
            )
        folder = os.path.join(root, EEG_DIR)
        loaders = {s: functools.partial(load_preprocessed_eeg, folder, s, "training") for s in others}
        test, source = load_preprocessed_eeg(folder, subject, "test"), "eeg"
        names = {"train": "subject {s}'s training EEG", "test": f"subject {subject}'s test EEG"}
    _check_rows(names["test"], _data(test), n_images["test"], "test")
    shape = _feature_shape(_data(test))
    normalize: Normalization | None = None if len(shape) == 1 else "channel_l2"  # fMRI voxels as given
    train, trials = {}, {}
    digests = {"test": _array_digest(test)}
    for s, load in loaders.items():
        x, name = load(), names["train"].format(s=s)
        digests[f"train-{s:02d}"] = _array_digest(x)
        _check_rows(name, _data(x), n_images["train"], "train")
        if _feature_shape(_data(x)) != shape:
            raise ValueError(
                f"{_FN}: {name} has shape {_data(x).shape} but {names['test']} has {_data(test).shape}; "
                "expected the same channels and times (or voxels) in every set"
            )
        n_rep = _data(x).shape[1] if _data(x).ndim >= 3 else 1
        if random_repetitions is not None:
            if random_repetitions > n_rep:
                raise ValueError(
                    f"{_FN}: random_repetitions={random_repetitions}, but {name} has {n_rep} repetitions"
                )
            trials[s] = x
        train[s] = _averaged(x, normalize)
    return _Brain(train, trials, _averaged(test, normalize), normalize, source, _digest(digests))


def _training_set(
    brain: _Brain, train_idx: np.ndarray, random_repetitions: int | None, seed: int
) -> tuple[Dataset, list[BrainImageDataset]]:
    """(image index, response) pairs of every training subject, and the datasets that sample repetitions."""
    index = torch.as_tensor(train_idx)
    parts: list[Dataset] = []
    sampled = []
    for subject, averaged in brain.train.items():
        if random_repetitions is None:
            parts.append(TensorDataset(index, averaged[index]))
            continue
        ds = BrainImageDataset(
            brain.trials[subject], normalize=brain.normalize, flatten=False,
            random_repetitions=random_repetitions, seed=derive_seed(seed, subject),
        )  # fmt: skip
        sampled.append(ds)
        parts.append(Subset(ds, train_idx.tolist()))
    return (parts[0] if len(parts) == 1 else ConcatDataset(parts)), sampled


# ------------------------------------------------------------------------------------------------ recipe


class _Retrieval(Hook):
    """After the last epoch (rank 0): the selected model's test retrieval and its temperature, with
    ``about`` (the image model and the subjects: a summary read alone says what it is the result of)."""

    def __init__(
        self,
        test_brain: torch.Tensor,
        test_images: torch.Tensor,
        concepts: np.ndarray,
        about: Mapping[str, Any],
    ) -> None:
        self.brain, self.images, self.concepts, self.about = test_brain, test_images, concepts, about

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
        _warn_if_collapsed(z, self.images, state.step)
        out = retrieval_topk(z, self.images, concepts=self.concepts)
        out["temperature"] = model.temperature
        return {**out, **self.about}


def _warn_if_collapsed(z: torch.Tensor, images: torch.Tensor, steps: int) -> None:
    """Warns when every test trial ranks the gallery in the same order: retrieval then sits exactly at
    chance whatever the data, which after few training steps is NICE's (or EEGNet's) BatchNorm running
    statistics, still near their initial variance of 1 against inputs normalised to a far smaller one."""
    if z.shape[0] < 2:
        return
    order = (z.double() @ images.double().T).argsort(dim=1, descending=True)
    if bool((order == order[0]).all()):
        warnings.warn(
            f"{_FN}: all {z.shape[0]} test trials rank the gallery in the same order, so retrieval is at "
            f"chance: after {steps} training steps the encoder's BatchNorm running statistics may not have "
            "converged; train for more steps (epochs) or use an encoder without BatchNorm ('mlp')",
            RuntimeWarning,
            stacklevel=2,
        )


class _FreshRepetitions(Hook):
    """Sets the datasets that sample repetitions to the coming epoch, so that each epoch trains on a fresh
    draw (a function of the seed and the epoch, so a resumed run draws what it would have drawn)."""

    def __init__(self, datasets: Sequence[BrainImageDataset]) -> None:
        self.datasets = list(datasets)

    def _set(self, epoch: int) -> None:
        for ds in self.datasets:
            ds.set_epoch(epoch)

    def on_fit_start(self, state: FitState) -> None:
        self._set(state.epoch + 1)

    def on_epoch_end(self, state: FitState) -> None:
        self._set(state.epoch + 1)


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
    if a["learn_temperature"] is True and float(a["temperature"]) < 1 / MAX_LOGIT_SCALE:
        raise ValueError(
            f"{_FN}: temperature={a['temperature']} with learn_temperature=True: a learnt temperature "
            f"stays at or above {1 / MAX_LOGIT_SCALE:g} (its scale is clamped at {MAX_LOGIT_SCALE:g}, as "
            "CLIP's); start it there or above, or keep it fixed (learn_temperature=False)"
        )
    if _checks.check_real(_FN, "weight_decay", a["weight_decay"]) < 0:
        raise ValueError(_checks.message(_FN, "weight_decay", "a finite number >= 0", a["weight_decay"]))
    _checks.check_int(_FN, "random_repetitions", a["random_repetitions"], minimum=1, none=True)
    try:
        no_validation = float(a["val_fraction"]) == 0  # also numpy's zeros; a bad value is train_val_split's
    except (TypeError, ValueError):
        no_validation = False
    if no_validation and a["patience"] is not None:
        raise ValueError(
            f"{_FN}: patience={a['patience']} (early stopping, published 30) needs validation images, but "
            "val_fraction=0 holds out none; pass patience=None (--patience none) or val_fraction > 0"
        )
    for name in ("learn_temperature", "leave_one_subject_out", "resume", "overwrite", "progress"):
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


_SEED_DIR = re.compile(r"seed-(-?\d+)$")


def _prepare_seed_set(out: str, seeds: list[int], *, overwrite: bool, resume: bool = False) -> None:
    """Makes ``out`` ready for one run per seed (``out/seed-N``) and their summary.json.

    A missing or empty folder, or one that holds the runs of exactly these seeds, is used as it is (each
    seed's folder then follows fit's rules: resume, overwrite or refuse); with ``resume`` also one that
    holds the runs of some of them (a set stopped before its last seed started). Anything else (a single
    run, the runs of other seeds, other files) is refused unless ``overwrite``, which replaces the folder
    as a unit where it holds runs only (a single run, or seed folders that are runs, and the set's
    summary.json), never the current folder or one above it: the summary of other seeds must not be
    overwritten by this set's, nor stale seed folders be left beside it.
    """
    path = os.path.abspath(out)
    if os.path.lexists(path) and not os.path.isdir(path):
        raise ValueError(f"{_FN}: out={path!r} is a file; expected a folder for the runs of seeds {seeds}")
    entries = [e for e in os.listdir(path) if not e.startswith(".")] if os.path.isdir(path) else []
    if not entries:
        return
    found = sorted(
        int(m.group(1)) for e in entries if (m := _SEED_DIR.match(e)) and os.path.isdir(os.path.join(path, e))
    )
    others = sorted(e for e in entries if not _SEED_DIR.match(e) and e != "summary.json")
    if not others and (found == sorted(seeds) or (resume and set(found) <= set(seeds))):
        return
    single = _checks.holds_keys(os.path.join(path, "config.json"), RUN_KEYS)
    seed_runs = not others and all(
        _checks.holds_keys(os.path.join(path, f"seed-{n}", "config.json"), RUN_KEYS) for n in found
    )
    if overwrite and (single or (found and seed_runs)):
        _checks.check_replaceable(_FN, "out", path)
        with replacing_dir(path):
            pass
        return
    held = (
        "a single run (config.json)" if single
        else f"the runs of seeds {found}" + (f" and {others[:5]}" if others else "") if found
        else f"other files ({others[:5]})"
    )  # fmt: skip
    fix = "pass overwrite=True (--overwrite) to replace it, or " if single or (found and seed_runs) else ""
    if not others and found and set(found) <= set(seeds):
        fix = "pass resume=True (--resume) to continue them, " + fix
    raise ValueError(
        f"{_FN}: out={path!r} holds {held}, not the runs of seeds {seeds}; {fix}choose another out "
        "(its summary.json would be replaced by this set's)"
    )


def _aggregate(summaries: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Mean and standard error of the mean over seeds, and every seed's numbers."""
    first = summaries[0]
    out: dict[str, Any] = {"seeds": seeds, "n_gallery": first["n_gallery"], "chance": first["chance"]}
    # the same for every seed (one data set): the concept level's chance and counts, which
    # plot_topk_bars(concept=True) reads, as a single run's summary holds them
    out.update({k: first[k] for k in ("concept_chance", "n_concepts", "n_queries") if k in first})
    # what was decoded with what: one image model for every seed but a random CORnet-S, drawn from each
    out.update({k: first[k] for k in ("subject", "train_subjects", "image_model_aligned_to") if k in first})
    models = [s.get("image_model") for s in summaries]
    if all(models):  # runs finished before the summaries held it have it in config.json only
        out["image_model"] = models[0] if len(set(models)) == 1 else models
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


#: config entries that say where an input is, not what it holds, so that a resume takes the data folder
#: at a new path: the data is identified by ``responses_digest`` (the training and test trials as read,
#: hashed while decode holds them in memory anyway), ``image_fingerprint`` (the image embeddings), the
#: set sizes and the response shape; other data at the same or another path is refused as another config
_LOCATIONS = ("data",)


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
    learn_temperature: bool = False,
    seed: int | Sequence[int] = 0,
    image_size: int = 224,
    weights: str | os.PathLike[str] | None = None,
    val_fraction: float = 0.1,
    patience: int | None = PUBLISHED_PATIENCE,
    amp: str = "auto",
    responses: Mapping[str, Any] | None = None,
    leave_one_subject_out: bool = False,
    random_repetitions: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    hooks: Sequence[Hook] = (),
) -> DecodeResult:
    """Trains a brain encoder to retrieve images from one subject's brain responses, and scores its test
    retrieval.

    Under torchrun (or in any initialised process group) the model is trained data-parallel and each
    training step's InfoNCE takes its negatives from the whole global batch, gathered across ranks with
    gradients; validation uses each rank's share of a batch.

    Args:
        data: the dataset folder in THINGS-EEG2's layout (``image_set/``, ``preprocessed_data/sub-XX/``),
            or the :class:`~fastalign.data.SyntheticThings` that wrote it.
        subject: the subject number: whose test responses are decoded (and, unless
            ``leave_one_subject_out``, whose training responses train the encoder).
        out: the run folder; with several seeds, one folder ``out/seed-N`` per seed and the aggregate in
            ``out/summary.json``.
        image_model: "cornet_s" (``weights``, else randomly initialised from the seed), a ReAlnet run
            folder of :func:`fastalign.train.align` (a human-aligned image model), a ReAlnet weights file
            (.pt, .pth, .safetensors as :func:`fastalign.models.realnet` reads them: the published
            ``encoder.pt``) or a :class:`~fastalign.models.ReAlnet` module (embedded at ``layer``, as a run
            folder), "features" (the synthetic brain's true features: the ceiling), another torch module
            (its output, flattened), or
            "npy:NAME": precomputed embeddings, one (d,) or (1, d) real vector per image in
            ``<image stem>_NAME.npy``, beside the image in ``image_set/`` or else at the same place under
            ``image_embeddings/`` (AlignVis's tree: ``image_embeddings/{training,test}_images/<concept>/
            <stem>_NAME.npy``), e.g. "npy:dreamsim_clip_vitb32".
        layer: the CORnet-S / ReAlnet layer embedded (default "IT", flattened: 512x7x7 at 224 px; or
            "avgpool", or a ReAlnet's "response", its encoding head's output); an error with the other
            image models.
        encoder, encoder_options: :func:`fastalign.models.encoders.brain_encoder`'s name and options.
        epochs, batch_size, lr, weight_decay: AdamW with a cosine schedule over ``epochs`` stepped once
            per epoch, gradients clipped to norm 1 (published: 50, 128 (the global batch), 2e-4, 0.1).
        temperature, learn_temperature: the CLIP temperature (published: fixed at 0.04) and whether it
            is optimised from there (True; its scale clamped at 100) or fixed (False, published).
        seed: an int, or several: one run each, summarised by mean and standard error.
        image_size: images are resized to this square size for the image model.
        weights: CORnet-S's checkpoint, for ``image_model="cornet_s"``. Nothing is downloaded.
        val_fraction: the share of training images held out to select the epoch, drawn as AlignVis does
            (``train_val_split(..., method="random_split")``: the published validation images for a seed).
        patience: early stopping after this many epochs without a lower validation loss (published 30;
            None: never).
        amp, resume, overwrite, device, progress, hooks: as :func:`fastalign.train.fit`.
        responses: instead of the EEG files, one subject's responses as arrays ``{"train": ..., "test":
            ...}``, one row per image of image_metadata.npy's training and test lists: MEG or EEG as
            (images, repetitions, channels, times) trials (normalised as the EEG files are: each trial's
            channels centred and divided by their L2 norm), fMRI as (images, repetitions, voxels) or
            (images, voxels), used as given (as AlignVis uses NSD voxels) and needing ``encoder="mlp"``.
        leave_one_subject_out: train on every other subject's training EEG (the validation images held
            out of each) and test on ``subject``'s test EEG.
        random_repetitions: None averages all repetitions of each training image once (published); k
            trains each epoch on the average of k repetitions drawn afresh for each image (seeded by the
            seed, the subject and the epoch). Validation and test responses are always averaged. The
            training subjects' single trials then stay in memory (else one subject's at a time).
        cache_dir: where image embeddings are cached (default ``data/embeddings``; one file per model,
            weights and image set).

    Returns:
        A :class:`DecodeResult`.

    Raises:
        FileNotFoundError: missing data, run folder, weights or ground truth.
        ValueError, TypeError: bad settings, embeddings and responses of different image sets, responses
            of different shapes, NaN in the data, a test gallery smaller than 5.
    """
    seeds = _check_settings(dict(locals()))
    # the device and precision before the images are embedded (fit checked them after)
    if device is not None:
        target_device = _checks.check_device(_FN, "device", device)
    else:
        target_device = distributed.default_device(distributed.planned())
    resolve_amp(amp, target_device, _FN)
    root = _root(data)
    # the run folder is replaced as a unit by --overwrite: never one holding what the run reads
    given = [
        root,
        *(p for p in (image_model, weights) if isinstance(p, str | os.PathLike) and os.path.exists(p)),
    ]
    _checks.check_inputs_outside(_FN, "out", out, given)
    if len(seeds) > 1 and distributed.planned().is_main:  # one process readies the folder, as fit's rank 0
        _prepare_seed_set(os.fspath(out), seeds, overwrite=overwrite, resume=resume)
    meta = load_image_metadata(os.path.join(root, IMAGE_DIR))
    paths = {"train": meta.paths("training"), "test": meta.paths("test")}
    cache = os.fspath(cache_dir) if cache_dir is not None else os.path.join(root, "embeddings")
    if len(paths["test"]) < 5:
        raise ValueError(f"{_FN}: the test gallery holds {len(paths['test'])} images; top-5 needs at least 5")
    n_images = {k: len(v) for k, v in paths.items()}
    brain = _brain(root, subject, responses, leave_one_subject_out, random_repetitions, n_images)
    shape = tuple(brain.test.shape[1:])
    if len(shape) == 1 and encoder != "mlp":
        raise ValueError(
            f"{_FN}: encoder={encoder!r} takes (channels, times) trials, but the responses are voxels "
            f"({shape[0]} per image); fMRI needs encoder='mlp'"
        )
    n_channels, n_times = (shape[0], 1) if len(shape) == 1 else shape
    concepts = np.unique(np.asarray(meta.test_img_concepts), return_inverse=True)[1]
    # Only a CORnet-S without weights depends on the seed (its random initialisation): embed others once.
    seeded = isinstance(image_model, str) and image_model == "cornet_s" and weights is None
    embedded: dict[int | None, tuple[dict[str, torch.Tensor], str]] = {}
    digests: dict[int | None, str] = {}
    results: list[FitResult] = []
    summaries: list[dict[str, Any]] = []
    for s in seeds:
        key = s if seeded else None
        if key not in embedded:
            embedded[key] = _image_embeddings(
                image_model, root, paths, layer=layer, weights=weights, image_size=image_size, seed=s,
                cache_dir=cache, device=target_device,
            )  # fmt: skip
        images, source = embedded[key]
        about = _about(image_model, source, subject, sorted(brain.train))
        if key not in digests:
            digests[key] = digest_tensors(images)
        d = images["train"].shape[1]
        tr, va = train_val_split(len(paths["train"]), val_fraction, s, method="random_split")
        train_set, sampled = _training_set(brain, tr, random_repetitions, s)
        val_set = (
            TensorDataset(
                torch.as_tensor(va).repeat(len(brain.train)),
                torch.cat([a[torch.as_tensor(va)] for a in brain.train.values()]),
            )
            if len(va)
            else None
        )
        if not results:
            _check_encoder_fits(
                encoder, n_channels, n_times, d, dict(encoder_options or {}), target_device, source
            )
        torch.manual_seed(s)
        enc = brain_encoder(encoder, n_channels, n_times, d, **dict(encoder_options or {}))
        model = Decoder(enc, temperature, learn_temperature)
        config = {
            "recipe": "decode",
            "data": root,
            "subject": subject,
            "train_subjects": sorted(brain.train),
            "modality": brain.source,
            "response_shape": list(shape),
            "image_model": source,
            # what the encoder is trained against: a resumed run whose image model changed (a run folder
            # aligned again, other weights) would otherwise mix two models' embeddings unnoticed
            "image_fingerprint": digests[key],
            # the responses as read: with the image fingerprint and the sizes, what identifies the data
            # when its folder moved ("data" is a location, see _LOCATIONS)
            "responses_digest": brain.digest,
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
            "leave_one_subject_out": leave_one_subject_out,
            "random_repetitions": random_repetitions,
            "n_train": len(tr),
            "n_val": len(va),
            "n_test": len(paths["test"]),
            "normalize": brain.normalize,
        }
        run_dir = os.fspath(out) if len(seeds) == 1 else os.path.join(os.fspath(out), f"seed-{s}")
        extra = [_FreshRepetitions(sampled)] if sampled else []
        result = fit(
            model, functools.partial(_step, images=images["train"].to(target_device)), train_set, val_set,
            out=run_dir, epochs=epochs, config=config, locations=_LOCATIONS, batch_size=batch_size, seed=s,
            amp=amp, clip_grad_norm=1.0, patience=patience, drop_last=True,
            optimizer=functools.partial(_optimizer, lr=lr, weight_decay=weight_decay),
            scheduler=functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=epochs),
            scheduler_interval="epoch", resume=resume, overwrite=overwrite,
            hooks=[*extra, _Retrieval(brain.test, images["test"], concepts, about), *hooks],
            progress=progress, device=target_device,
        )  # fmt: skip
        results.append(require_selected(_FN, result))
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
