"""ReAlnet and ReAlnet-fMRI (Lu, Wang & Golomb): align CORnet-S to one person's brain, on the fit loop.

The recipe: a :class:`~fastalign.models.ReAlnet` (CORnet-S plus an encoding head) learns to predict a
subject's response to each image while its class logits stay close to those of the frozen starting
CORnet-S (the teacher):

    L = CE(student logits, teacher target) + beta * (MSE(predicted, recorded) + C)

with C the correlation-contrastive loss over the batch (:func:`fastalign.contrastive.
correlation_contrastive_loss`). Differences from the published code (see docs/training.md):

- the teacher's outputs are computed once per image, before training (eval mode, no grad), and carried
  with the data, so a training step runs no teacher and one student backbone pass;
- C is differentiable (``contrast="published"`` detaches it, as ``torch.tensor(list)`` does there);
- the model is selected on a seeded validation split of the training images, never on the test set,
  and the z-scoring statistics (and the fMRI PCA) come from the remaining training images only;
- every subject starts from the same weights.

Data layout (what :func:`fastalign.data.make_synthetic_things` writes; arrange real data the same way)::

    DATA/image_set/          image_metadata.npy, training_images/, test_images/
    DATA/preprocessed_data/  sub-XX/preprocessed_eeg_{training,test}.npy  (modality "eeg")
    DATA/fmri/               sub-XX/fmri_{training,test}.{h5,npy}          (modality "fmri")
"""

from __future__ import annotations

import copy
import functools
import hashlib
import math
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from fastalign import _checks
from fastalign.contrastive import correlation_contrastive_loss
from fastalign.data import (
    OCCIPITAL_PARIETAL,
    BrainImageDataset,
    EEGResponses,
    FMRIResponses,
    ImageTransform,
    ResponsePCA,
    SyntheticThings,
    load_fmri,
    load_image_metadata,
    load_preprocessed_eeg,
)
from fastalign.data._io import digest_files
from fastalign.data.datasets import train_val_split
from fastalign.models import ReAlnet, realnet, save_realnet
from fastalign.models.cornet import CORnetS
from fastalign.rsa import compare_rdms, rdm, time_resolved_rsa
from fastalign.train import distributed
from fastalign.train.loop import FitResult, FitState, Hook, fit, require_selected
from fastalign.train.precision import resolve_amp
from fastalign.train.run import RunFolder, digest_tensors, holds_files

__all__ = ["AlignData", "AlignResult", "align", "derangement", "load_align_data", "realnet_loss"]

_FN = "align"
_FUSED_ADAM = ("cpu", "cuda")  # devices whose fused Adam kernels torch builds everywhere
IMAGE_DIR, EEG_DIR, FMRI_DIR = "image_set", "preprocessed_data", "fmri"
#: The published EEG target: the occipito-parietal channels (THINGS-EEG2's preprocessing regex) ...
PUBLISHED_CHANNELS = "occipito-parietal"
#: ... from 0 to 200 ms ([tmin, tmax) in seconds; 20 samples at 100 Hz).
PUBLISHED_TIME_WINDOW = (0.0, 0.2)
#: ReAlnet-fMRI's response size (principal components of the training responses).
PUBLISHED_PCA = 1024
_SUBJECT_DIR = re.compile(r"^sub-(\d+)$")
# Mixed into the seed of the control's derangements (a numpy SeedSequence key; the split uses 1).
_CONTROL_KEY = 2


# ------------------------------------------------------------------------------------------------ loss


def realnet_loss(
    logits: torch.Tensor,
    pred: torch.Tensor,
    brain: torch.Tensor,
    target: torch.Tensor,
    *,
    beta: float = 100.0,
    contrast: str = "differentiable",
    group: Any = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ReAlnet's loss ``CE(logits, target) + beta * (MSE(pred, brain) + C)`` and its terms.

    Args:
        logits: (B, K) student class logits.
        pred: (B, D) predicted responses.
        brain: (B, D) recorded responses.
        target: the teacher's target: (B,) class indices ("hard", the published notebooks) or (B, K)
            probabilities ("soft": the teacher's softmax, where the published script passes its raw
            logits).
        beta: weight of the brain terms (0: fine-tuning without the brain).
        contrast: "differentiable" (C carries gradients) or "published" (C's value without gradient, as
            the published ``torch.tensor(list)`` gives).
        group: None (C over this batch), or under data parallelism a torch.distributed process group:
            C over the batches of all its ranks (see :func:`fastalign.contrastive.
            correlation_contrastive_loss`); every rank must call it.

    Returns:
        ``(loss, {"ce", "mse", "contrast"})``, the terms detached. CE and MSE are computed in float32 (or
        float64 for float64 inputs). A batch of one sample has no pairs, so C is 0 for it.

    Raises:
        TypeError, ValueError: tensors of other shapes or kinds, a negative beta, an unknown contrast.
    """
    fn = "realnet_loss"
    for name, t in (("logits", logits), ("pred", pred), ("brain", brain)):
        _checks.check_tensor(fn, name, t, shape="(B, K)" if name == "logits" else "(B, D)")
        _checks.check_floating(fn, name, t)
        _checks.check_shape(fn, name, t, (None, None), doc="(B, K)" if name == "logits" else "(B, D)")
    _checks.check_shape(fn, "brain", brain, tuple(pred.shape), doc="pred's shape")
    b = logits.shape[0]
    _checks.check_shape(fn, "pred", pred, (b, None), doc="(B, D) with logits' B")
    _checks.check_tensor(fn, "target", target, shape="(B,) or (B, K)")
    if target.is_floating_point():
        _checks.check_shape(fn, "target", target, tuple(logits.shape), doc="(B, K) probabilities")
    elif target.dtype == torch.int64:
        _checks.check_shape(fn, "target", target, (b,), doc="(B,) class indices")
    else:
        raise TypeError(_checks.message(fn, "target", "int64 class indices or float probabilities", target))
    if _checks.check_real(fn, "beta", beta) < 0:
        raise ValueError(_checks.message(fn, "beta", "a finite number >= 0", beta))
    _checks.check_choice(fn, "contrast", contrast, ("differentiable", "published"))
    scores = logits if logits.dtype == torch.float64 else logits.float()
    ce = F.cross_entropy(scores, target.to(scores.dtype) if target.is_floating_point() else target)
    dtype = torch.promote_types(_checks.compute_dtype(pred), _checks.compute_dtype(brain))
    mse = F.mse_loss(pred.to(dtype), brain.to(dtype))
    if group is not None or pred.shape[0] >= 2:
        c = correlation_contrastive_loss(pred, brain, detach=contrast == "published", group=group)
    else:
        c = torch.zeros((), dtype=mse.dtype, device=mse.device)
    loss = ce + beta * (mse + c)
    return loss, {"ce": ce.detach(), "mse": mse.detach(), "contrast": c.detach()}


def _step(model: torch.nn.Module, batch: Any, *, beta: float, contrast: str) -> Any:
    images, brain, target = batch
    logits, pred = model(images)  # one backbone pass: logits and the predicted response together
    # fit passes its DDP wrapper in training, where every rank runs every step: C over the global batch.
    # Validation (the bare model) keeps each rank's share: its shards may differ by a batch across ranks.
    group = model.process_group if isinstance(model, DistributedDataParallel) else None
    try:
        return realnet_loss(logits, pred, brain, target, beta=beta, contrast=contrast, group=group)
    except ValueError:
        # looked at only when the loss refused its inputs (no extra pass per step): non-finite predictions are
        # not bad input but diverged weights
        if bool(torch.isfinite(pred).all()):
            raise
        # bf16 autocast on a CPU with 1-pixel images gave non-finite predictions after one step at lr 2e-5 in
        # some runs and not others (2 threads; never on 1 thread or in float32), through torch's own convs
        low = (
            f", or train in float32 (amp='fp32', --amp fp32): they were computed in {pred.dtype}"
            if pred.dtype in (torch.bfloat16, torch.float16)
            else ""
        )
        raise FloatingPointError(
            f"{_FN}: the predicted responses are not finite: the weights diverged; lower the learning rate "
            f"(--lr) or clip gradients (--clip-grad-norm){low}"
        ) from None


# ------------------------------------------------------------------------------------------------ data


def derangement(n: int, seed: int, stream: int = 0) -> np.ndarray:
    """A permutation of ``range(n)`` without fixed points, a fixed function of ``(n, seed, stream)``
    (``stream`` gives independent draws for one seed).

    Raises:
        ValueError: ``n < 2`` (one element cannot move).
    """
    n = _checks.check_int("derangement", "n", n, minimum=2)
    _checks.check_seed("derangement", seed, none=False)
    rng = np.random.default_rng(
        [seed, _CONTROL_KEY, _checks.check_int("derangement", "stream", stream, minimum=0)]
    )
    while True:  # a uniform permutation is a derangement with probability ~1/e: ~2.7 draws expected
        perm = rng.permutation(n)
        if not np.any(perm == np.arange(n)):
            return perm


@dataclass
class AlignData:
    """One subject's data for :func:`align`: training (without the validation images), validation and
    test sets of (image, response) pairs, normalised with statistics of the training set only.

    Attributes:
        subject: the subject number.
        modality: "eeg" or "fmri".
        train, val, test: the pairs (``val`` is None with ``val_fraction=0``). Responses are flattened
            to ``n_out`` values and z-scored with one mean and std of ``train``'s single trials.
        train_index, val_index: which of the subject's training images each set holds (sorted).
        pairing: for each training image, the training image whose response it is paired with: the
            identity, or with ``control="unpaired"`` a derangement within ``train`` and within ``val``.
        response_shape: (n_channels, n_times) for EEG, (n_components or n_voxels,) for fMRI.
        n_out: values per response.
        image_paths: the training and test image files, in the data's order (``{"train", "test"}``).
        settings: how the responses were selected (channel names, sample times, ROIs, PCA, statistics).
    """

    subject: int
    modality: str
    train: BrainImageDataset
    val: BrainImageDataset | None
    test: BrainImageDataset
    train_index: np.ndarray
    val_index: np.ndarray
    pairing: np.ndarray
    response_shape: tuple[int, ...]
    n_out: int
    image_paths: dict[str, list[str]]
    settings: dict[str, Any] = field(default_factory=dict)


def _root(data: Any) -> str:
    if isinstance(data, SyntheticThings):
        return data.root
    if not isinstance(data, str | os.PathLike):
        raise TypeError(_checks.message(_FN, "data", "a dataset folder (str or path)", data))
    root = os.path.abspath(os.fspath(data))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{_FN}: data={root!r} is not a folder; expected one holding {IMAGE_DIR}/")
    return root


def _modality_dir(root: str, modality: str) -> str:
    folder = os.path.join(root, EEG_DIR if modality == "eeg" else FMRI_DIR)
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"{_FN}: modality={modality!r} needs {folder!r} (sub-XX/ folders), which does not exist"
        )
    return folder


def _available_subjects(data: Any, modality: str = "eeg") -> list[int]:
    """The subject numbers of ``data`` (its ``sub-XX`` folders) for ``modality``."""
    modality = _checks.check_choice(_FN, "modality", modality, ("eeg", "fmri"))
    folder = _modality_dir(_root(data), modality)
    found = (_SUBJECT_DIR.match(n) for n in os.listdir(folder))
    return sorted(int(m.group(1)) for m in found if m and os.path.isdir(os.path.join(folder, m.group(0))))


def _check_subject(subject: Any, available: list[int], folder: str) -> int:
    subject = _checks.check_int(_FN, "subject", subject, minimum=1)
    if subject not in available:
        raise ValueError(f"{_FN}: subject {subject} is not in {folder!r}, which holds subjects {available}")
    return subject


def _pairing(n: int, train: np.ndarray, val: np.ndarray, control: str | None, seed: int) -> np.ndarray:
    """Each training image's response source: itself, or (unpaired control) another image of its set."""
    pairing = np.arange(n)
    if control == "unpaired":
        for key, part in enumerate((train, val)):
            if len(part) == 0:
                continue
            if len(part) < 2:
                raise ValueError(
                    f"{_FN}: control='unpaired' needs at least 2 images in each of the training and "
                    f"validation sets to pair them with other images' responses; the validation set has "
                    f"{len(part)} (raise val_fraction or set it to 0)"
                )
            pairing[part] = part[derangement(len(part), seed, stream=key)]
    return pairing


def _time_indices(times: np.ndarray, window: Any, source: str) -> np.ndarray:
    if isinstance(window, str | bytes) or not isinstance(window, Sequence | np.ndarray) or len(window) != 2:
        raise TypeError(_checks.message(_FN, "time_window", "(tmin, tmax) in seconds", window))
    tmin = _checks.check_real(_FN, "time_window[0]", window[0])
    tmax = _checks.check_real(_FN, "time_window[1]", window[1])
    if not tmin < tmax:
        raise ValueError(f"{_FN}: time_window must have tmin < tmax, got ({tmin}, {tmax})")
    if times.size == 0:
        raise ValueError(f"{_FN}: {source!r} has no sample times to select time_window from")
    tol = 1e-9 * max(1.0, float(np.abs(times).max()))
    idx = np.flatnonzero((times >= tmin - tol) & (times < tmax - tol))  # [tmin, tmax): 20 samples at 100 Hz
    if idx.size == 0:
        raise ValueError(
            f"{_FN}: time_window [{tmin}, {tmax}) s holds no sample of {source!r} (times "
            f"{times[0]:.3f} to {times[-1]:.3f} s)"
        )
    _checks.warn_if_window_clipped(_FN, "time_window", tmin, tmax, times, repr(source))
    return idx


def _channel_indices(names: list[str], channels: Any, source: str) -> np.ndarray:
    if isinstance(channels, str) and channels == "all":  # an array of names compares element-wise
        return np.arange(len(names))
    if isinstance(channels, str) and channels == PUBLISHED_CHANNELS:
        idx = [i for i, n in enumerate(names) if re.search(OCCIPITAL_PARIETAL, n)]
        if not idx:
            raise ValueError(f"{_FN}: {source!r} has no occipito-parietal channel (O*, P*) among {names}")
        return np.asarray(idx)
    if isinstance(channels, str | bytes) or not isinstance(channels, Sequence | np.ndarray):
        raise TypeError(
            _checks.message(
                _FN, "channels", f"{PUBLISHED_CHANNELS!r}, 'all' or a sequence of names or indices", channels
            )
        )
    out = []
    for c in channels:
        if isinstance(c, str):
            if c not in names:
                raise ValueError(f"{_FN}: channels names {c!r}, which {source!r} lacks; it has {names}")
            out.append(names.index(c))
        else:
            i = _checks.check_int(_FN, "channels[i]", c)
            if not -len(names) <= i < len(names):
                raise ValueError(f"{_FN}: channel index {i} is out of range for {len(names)} channels")
            out.append(i % len(names))
    if not out or len(set(out)) != len(out):
        raise ValueError(f"{_FN}: channels must name at least one channel, each once, got {list(channels)}")
    return np.asarray(out)


def _check_counts(what: str, n_responses: int, n_images: int, source: str) -> None:
    if n_responses != n_images:
        raise ValueError(
            f"{_FN}: {source!r} holds responses to {n_responses} {what} images, but image_metadata.npy "
            f"lists {n_images}; expected one response per image"
        )


def _fmri_file(folder: str, subject: int, split: str) -> str:
    base = os.path.join(folder, f"sub-{subject:02d}", f"fmri_{split}")
    for ext in (".h5", ".hdf5", ".npy"):
        if os.path.isfile(base + ext):
            return base + ext
    raise FileNotFoundError(f"{_FN}: no fMRI responses at {base}.h5 (or .hdf5, .npy)")


def _eeg_responses(
    folder: str, subject: int, channels: Any, time_window: Any, n_images: dict[str, int]
) -> tuple[dict[str, EEGResponses], dict[str, Any]]:
    loaded = {s: load_preprocessed_eeg(folder, subject, s) for s in ("training", "test")}
    train, test = loaded["training"], loaded["test"]
    for split, key in (("training", "train"), ("test", "test")):
        _check_counts(split, loaded[split].data.shape[0], n_images[key], loaded[split].source)
    if train.ch_names != test.ch_names or not np.array_equal(train.times, test.times):
        raise ValueError(f"{_FN}: {train.source!r} and {test.source!r} differ in channels or sample times")
    ch = _channel_indices(train.ch_names, channels, train.source)
    t = _time_indices(train.times, time_window, train.source)
    names, times = [train.ch_names[i] for i in ch], train.times[t]
    # one gather of the selected channels and samples (two gathers made a copy of the selected channels
    # first, another ~900 MB at the published training file's size)
    out = {
        key: EEGResponses(r.data[:, :, ch[:, None], t], names, times, source=r.source)
        for key, r in (("train", train), ("test", test))
    }
    # rounded for config.json: 0.19, not 0.19000000000000003
    return out, {"channels": names, "times": [round(float(x), 9) for x in times]}


def _fmri_responses(
    folder: str, subject: int, rois: Any, paths: dict[str, list[str]]
) -> tuple[dict[str, FMRIResponses], dict[str, Any]]:
    splits = {"train": "training", "test": "test"}
    out = {key: load_fmri(_fmri_file(folder, subject, split)) for key, split in splits.items()}
    for key, split in splits.items():
        _check_counts(split, out[key].data.shape[0], len(paths[key]), out[key].source)
        out[key] = out[key].in_image_order(paths[key])  # a file that names its images: in the set's order
    names = None if rois is None else [rois] if isinstance(rois, str) else list(rois)
    if names is not None:
        missing = [r for r in names if r not in out["train"].rois]
        if missing or not names:
            raise ValueError(
                f"{_FN}: rois={rois!r} names ROIs {missing or names} that {out['train'].source!r} does not "
                f"define; it has {list(out['train'].rois)}"
            )
    try:  # only the used voxels must be finite: files carry NaN outside the brain or the ROIs
        if names is None:
            for r in out.values():
                r.check_finite()
        else:
            out = {key: r.select(names) for key, r in out.items()}
    except ValueError as exc:
        raise ValueError(f"{_FN}: subject {subject}: {exc}") from exc
    if out["train"].data.shape[2] != out["test"].data.shape[2]:
        raise ValueError(
            f"{_FN}: {out['test'].source!r} has {out['test'].data.shape[2]} voxels but "
            f"{out['train'].source!r} has {out['train'].data.shape[2]}"
        )
    return out, {"rois": rois if rois is None or isinstance(rois, str) else list(rois)}


def _image_paths(root: str) -> dict[str, list[str]]:
    """The training and test image files of image_metadata.npy, in the responses' order."""
    meta = load_image_metadata(os.path.join(root, IMAGE_DIR))
    return {"train": meta.paths("training"), "test": meta.paths("test")}


@dataclass
class _Responses:
    """One subject's responses as read and checked, before the PCA, the z-scoring and the datasets."""

    responses: dict[str, Any]
    settings: dict[str, Any]
    train_index: np.ndarray
    val_index: np.ndarray
    pairing: np.ndarray
    pca: int | None


def _check_selection(seed: Any, control: Any, val_fraction: Any, pca: Any) -> dict[str, Any]:
    """The settings that select a subject's training, validation and test responses, checked."""
    _checks.check_seed(_FN, seed, none=False)
    control = _checks.check_choice(_FN, "control", control, (None, "unpaired"))
    val_fraction = _checks.check_real(_FN, "val_fraction", val_fraction)
    if not 0 <= val_fraction < 1:
        raise ValueError(_checks.message(_FN, "val_fraction", "a number in [0, 1)", val_fraction))
    pca = _checks.check_int(_FN, "pca", pca, minimum=1, none=True)
    return {"seed": seed, "control": control, "val_fraction": val_fraction, "pca": pca}


def _check_every_subject(root: str, folder: str, modality: str, subjects: list[int], **kwargs: Any) -> None:
    """Reads and checks every subject's responses as :func:`load_align_data` does, one subject's in memory
    at a time, before the first subject trains: a missing or malformed file of a later subject was found
    only when that subject's turn came, after the earlier ones had trained (hours, at the published size).
    Costs one more read of each subject's files; no PCA is fitted and no image read.

    Raises:
        FileNotFoundError (every problem a missing file or folder) or ValueError: one error listing each
            subject whose data failed a check, with what failed.
    """
    selection = _check_selection(**{k: kwargs.pop(k) for k in ("seed", "control", "val_fraction", "pca")})
    paths = _image_paths(root)
    problems: list[tuple[int, Exception]] = []
    for s in subjects:
        try:
            _subject_responses(folder, s, modality, paths, **selection, **kwargs)
        except (ValueError, OSError) as exc:  # the data's problems; a bad argument (TypeError) is the call's
            problems.append((s, exc))
    if not problems:
        return
    if len(problems) == len(subjects) > 1 and len({(type(e), str(e)) for _, e in problems}) == 1:
        # the same words for every subject (channels or a time window the data do not have): the call's
        # problem, said once, as a one-subject call says it
        raise problems[0][1]
    kind = FileNotFoundError if all(isinstance(e, FileNotFoundError) for _, e in problems) else ValueError
    listed = "".join(f"\n- sub-{s:02d}: {str(e).removeprefix(f'{_FN}: ')}" for s, e in problems)
    raise kind(
        f"{_FN}: the data of {len(problems)} of the {len(subjects)} subjects failed their checks, which run "
        f"before the first subject trains; none was trained:{listed}"
    )


def _subject_responses(
    folder: str,
    subject: int,
    modality: str,
    paths: dict[str, list[str]],
    *,
    seed: int,
    control: str | None,
    val_fraction: float,
    channels: Any,
    time_window: Any,
    rois: Any,
    pca: int | None,
) -> _Responses:
    """Reads one subject's responses and runs every check of :func:`load_align_data` on them (counts
    against the image set, channels, times, ROIs, NaN, the split, the pairing and the PCA's size)."""
    n_images = {k: len(v) for k, v in paths.items()}
    responses: dict[str, Any]
    if modality == "eeg":
        responses, settings = _eeg_responses(folder, subject, channels, time_window, n_images)
    else:
        responses, settings = _fmri_responses(folder, subject, rois, paths)
    train_idx, val_idx = train_val_split(n_images["train"], val_fraction, seed)
    pairing = _pairing(n_images["train"], train_idx, val_idx, control, seed)
    if modality == "fmri" and pca is not None:
        voxels = responses["train"].data.shape[2]
        largest = min(len(train_idx), voxels)
        if pca > largest:
            raise ValueError(
                f"{_FN}: pca={pca} components exceed what {len(train_idx)} training images x {voxels} "
                f"voxels allow ({largest}); pass a smaller pca, or None (--pca none)"
            )
    return _Responses(responses, settings, train_idx, val_idx, pairing, pca if modality == "fmri" else None)


def load_align_data(
    data: str | os.PathLike[str] | SyntheticThings,
    subject: int,
    *,
    modality: str = "eeg",
    image_size: int = 224,
    seed: int = 0,
    control: str | None = None,
    val_fraction: float = 0.1,
    channels: str | Sequence[str | int] = PUBLISHED_CHANNELS,
    time_window: tuple[float, float] = PUBLISHED_TIME_WINDOW,
    rois: str | Sequence[str] | None = None,
    pca: int | None = PUBLISHED_PCA,
) -> AlignData:
    """One subject's training, validation and test pairs as :func:`align` trains on them.

    EEG: the subject's preprocessed responses, ``channels`` over ``time_window``, averaged over
    repetitions and flattened channel-major (17 x 20 = 340 for the published target). fMRI: the
    ``rois``' voxels, reduced to ``pca`` principal components fitted on the training images' responses.
    Then for both: z-scored with one mean and std of the training images' single trials (the validation
    images excluded); validation and test use those statistics. Images are resized to ``image_size``
    x ``image_size`` (no centre crop: a non-square image squeezed, as the published
    ``Resize((224, 224))``) and ImageNet-normalised.

    Args: as :func:`align`.

    Raises:
        FileNotFoundError: a missing folder or file.
        ValueError: an unknown subject, channel or ROI; responses and images of different counts;
            responses with NaN or inf; a time window without samples; a PCA larger than the data allow;
            a split that leaves no training image.
    """
    modality = _checks.check_choice(_FN, "modality", modality, ("eeg", "fmri"))
    root = _root(data)
    folder = _modality_dir(root, modality)
    subject = _check_subject(subject, _available_subjects(root, modality), folder)
    image_size = _checks.check_int(_FN, "image_size", image_size, minimum=1)
    selection = _check_selection(seed, control, val_fraction, pca)
    control, val_fraction, pca = selection["control"], selection["val_fraction"], selection["pca"]
    paths = _image_paths(root)
    loaded = _subject_responses(
        folder, subject, modality, paths, channels=channels, time_window=time_window, rois=rois, **selection
    )
    responses, settings = loaded.responses, loaded.settings
    train_idx, val_idx, pairing = loaded.train_index, loaded.val_index, loaded.pairing

    def rows(r: Any, sources: np.ndarray) -> Any:
        if isinstance(r, EEGResponses):
            return EEGResponses(r.data[sources], r.ch_names, r.times, source=r.source)
        return FMRIResponses(r.data[sources], {}, r.source)

    parts = {"train": rows(responses["train"], pairing[train_idx]), "test": responses["test"]}
    if len(val_idx):
        parts["val"] = rows(responses["train"], pairing[val_idx])
    if modality == "fmri" and pca is not None:
        fitted = ResponsePCA(pca, seed=seed % 2**32).fit(parts["train"])
        parts = {k: fitted.transform(v) for k, v in parts.items()}
        settings["explained_variance"] = float(fitted.explained_variance_ratio.sum())
    settings["pca"] = loaded.pca
    transform = ImageTransform(image_size, crop=False)
    sets: dict[str, BrainImageDataset] = {}
    for key, index in (("train", train_idx), ("val", val_idx), ("test", None)):
        if key not in parts:
            continue
        images = paths["test"] if index is None else [paths["train"][i] for i in index]
        stats = sets["train"].norm_stats if sets else None
        sets[key] = BrainImageDataset(
            parts[key], images, normalize="zscore", norm_stats=stats, image_transform=transform
        )
    stats = sets["train"].norm_stats
    assert stats is not None
    settings.update(norm_mean=float(stats.mean), norm_std=float(stats.std))
    shape = tuple(int(s) for s in parts["train"].data.shape[2:])
    return AlignData(
        subject, modality, sets["train"], sets.get("val"), sets["test"], train_idx, val_idx, pairing,
        shape, math.prod(shape), paths, settings,
    )  # fmt: skip


class _Triples(Dataset):
    """(image, response, teacher target) per image of a BrainImageDataset; the targets are set once the
    teacher has run (:meth:`_Recipe.on_fit_start`)."""

    def __init__(self, pairs: BrainImageDataset) -> None:
        self.pairs = pairs
        self.targets: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        assert self.targets is not None, "the teacher's targets are set before any batch is drawn"
        image, response = self.pairs[index]
        return image, response, self.targets[index]


class _Images(Dataset):
    """The images of a list of files, transformed."""

    def __init__(self, paths: Sequence[str], transform: Callable[[Any], torch.Tensor]) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(self.paths[index])


# ------------------------------------------------------------------------------------------- the model


def _read_state(weights: str | os.PathLike[str]) -> tuple[str, Mapping[str, Any]]:
    """(file, state dict) of a CORnet-S or ReAlnet checkpoint file or run folder, read without running
    code from it."""
    if not isinstance(weights, str | os.PathLike):
        raise TypeError(_checks.message(_FN, "weights", "None or a checkpoint file or run folder", weights))
    path = os.path.abspath(os.fspath(weights))
    what = f"no such file or folder: {os.fspath(weights)!r}"
    if os.path.isdir(path):
        path = RunFolder(path).model_path
        what = f"the folder {os.fspath(weights)!r} is not a finished run (it has no {os.path.basename(path)})"
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{_FN}: weights: {what}; fastalign never downloads weights: download the original CORnet-S "
            "(cornet_s-1d3f7974.pth, linked from https://github.com/dicarlolab/CORnet) or a published "
            "ReAlnet (linked from https://github.com/ZitongLu1996/ReAlnet) and pass its path, or pass no "
            "weights for a randomly initialised CORnet-S"
        )
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return path, load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"{_FN}: weights: could not read {path!r} as a checkpoint: "
            + _checks.torch_load_failure(exc, None if path.endswith(".safetensors") else path)
        ) from exc
    if not isinstance(state, Mapping):
        raise ValueError(f"{_FN}: weights: {path!r} holds a {type(state).__name__}; expected a state dict")
    return path, state


def _has_head(state: Mapping[str, Any]) -> bool:
    """Whether a state dict is a whole ReAlnet (ours, an epoch checkpoint of ours, or the published
    Encoder's), not a CORnet-S."""
    sd = next((state[k] for k in ("state_dict", "model") if isinstance(state.get(k), Mapping)), state)
    heads = ("head.", "fc_v1.", "fc_v2.", "fc_v4.", "fc_it.", "fc.")
    return any(str(k).removeprefix("module.").startswith(heads) for k in sd)


def _fingerprint(model: torch.nn.Module) -> str:
    """A short hash of a model's state (which weights a run started from)."""
    return digest_tensors(model.state_dict())


def _start_model(
    weights: Mapping[str, Any] | None,
    n_out: int,
    *,
    areas: Sequence[str] | None,
    width: int | None,
    image_size: int,
    seed: int,
) -> ReAlnet:
    """The starting ReAlnet: ``weights`` a whole ReAlnet, else CORnet-S (given or random) + a new head."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the new head's (and a random backbone's) initialisation
        if weights is not None and _has_head(weights):
            model = realnet(weights, areas=areas, width=width, image_size=image_size)
            if model.n_out != n_out:
                raise ValueError(
                    f"{_FN}: weights are a ReAlnet that predicts {model.n_out} values per image, but the "
                    f"subject's responses have {n_out} (channels x samples, or components); start from a "
                    "CORnet-S checkpoint or a ReAlnet trained for this target"
                )
        else:
            model = realnet(
                n_out=n_out, areas=areas, width=width, image_size=image_size, cornet_weights=weights
            )
    # The original BatchNorm modules; on CPU, the wide 3x3 convs at a few pixels run as im2col matrix
    # products (a ReAlnet step at 32 px 2x faster, bench_realnet; GPUs keep cuDNN): CORnetS.fuse_training.
    # The model align returns is set back to F.conv2d.
    return model.fuse_training(backend=None, convs="auto")


def _loader(data: Dataset, batch_size: int, num_workers: int) -> DataLoader:
    """In order; with its own generator, since a DataLoader draws its workers' base seed from the global
    RNG otherwise, which would change what the training that follows draws (and break bitwise resume)."""
    return DataLoader(
        data, batch_size=batch_size, shuffle=False, num_workers=num_workers, generator=torch.Generator()
    )


def _teacher_targets(
    teacher: CORnetS,
    images: Dataset,
    kind: str,
    *,
    batch_size: int,
    device: torch.device,
    num_workers: int = 0,
) -> torch.Tensor:
    """The frozen teacher's targets for every image, from one eval-mode pass without gradients.

    Returns:
        (n,) int64 class indices (``kind="hard"``: the argmax of the logits) or (n, K) float32
        probabilities (``"soft"``: the softmax of the logits), on the CPU.
    """
    teacher.eval()
    out = []
    with torch.no_grad():
        for x in _loader(images, batch_size, num_workers):
            logits = teacher(x.to(device)).float()
            out.append((logits.argmax(1) if kind == "hard" else logits.softmax(1)).cpu())
    return torch.cat(out)


# ------------------------------------------------------------------------------------------ evaluation

# What depends only on the starting weights and the images, kept for the life of the process: the teacher's
# targets and the starting model's outputs on the test images. The unpaired control after the paired run,
# a resumed run, or another subject from the same start then runs no CORnet-S pass over the images again.
# A key holds the starting weights' fingerprint, a digest of every image file's path, size and modification
# time (a file rewritten in place gets a new key), and the settings that the pass depends on.
_MEMO: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
_MEMO_ENTRIES = 4


def _memoized(key: tuple[Any, ...], compute: Callable[[], Any]) -> Any:
    """``compute()``, or what it returned for ``key`` before (the ``_MEMO_ENTRIES`` latest keys are kept)."""
    if key in _MEMO:
        _MEMO.move_to_end(key)
        return _MEMO[key]
    value = compute()
    _MEMO[key] = value
    while len(_MEMO) > _MEMO_ENTRIES:
        _MEMO.popitem(last=False)
    return value


def _files_digest(paths: Sequence[str]) -> str:
    """A digest of each file's absolute path, size and modification time, in order."""
    h = hashlib.sha256()
    for path in paths:
        st = os.stat(path)
        h.update(f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


# Each test batch's (logits, predicted responses, flattened IT output).
_Outputs = list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def _test_outputs(
    model: ReAlnet, images: Dataset, *, batch_size: int, device: torch.device, num_workers: int
) -> _Outputs:
    """Each test batch's (logits, predicted responses, flattened IT output), on the CPU, from one eval-mode
    pass without gradients (the IT output from the same pass: no second backbone pass for the RDM)."""
    model.eval()
    it: list[torch.Tensor] = []
    out = []
    hook = model.backbone.IT.register_forward_hook(lambda m, i, o: it.append(o.detach().flatten(1).cpu()))
    try:
        with torch.no_grad():
            for x in _loader(images, batch_size, num_workers):
                logits, pred = model(x.to(device))
                out.append((logits.cpu(), pred.cpu(), it[-1]))
    finally:
        hook.remove()
    return out


def _test_numbers(
    outputs: _Outputs,
    test: _Triples,
    data: AlignData,
    *,
    beta: float,
    contrast: str,
    batch_size: int,
    device: torch.device,
) -> dict[str, Any]:
    """Test loss terms (batch-wise, as validation) and RSA of the IT RDM and the predicted responses'
    RDM with the subject's test responses, from a model's :func:`_test_outputs`."""
    assert test.targets is not None
    brain = data.test.responses()
    sums: dict[str, float] = {}
    for i, (logits, pred, _) in enumerate(outputs):
        rows = slice(i * batch_size, (i + 1) * batch_size)
        loss, terms = realnet_loss(
            logits.to(device), pred.to(device), brain[rows].to(device), test.targets[rows].to(device),
            beta=beta, contrast=contrast,
        )  # fmt: skip
        for name, value in {"loss": loss, **terms}.items():
            sums[name] = sums.get(name, 0.0) + float(value) * len(logits)
    out: dict[str, Any] = {f"test_{k}": v / len(test) for k, v in sums.items()}
    features = {
        "it": torch.cat([o[2] for o in outputs]).double(),
        "response": torch.cat([o[1] for o in outputs]).double(),
    }
    for name, model_features in features.items():
        try:
            model_rdm = rdm(model_features)
            if data.modality == "eeg":
                per_time = time_resolved_rsa(
                    brain.double().reshape(-1, *data.response_shape), model_rdm, "spearman"
                )
                out[f"test_rsa_{name}"] = float(per_time.mean())
            else:
                out[f"test_rsa_{name}"] = float(compare_rdms(rdm(brain.double()), model_rdm, "spearman"))
        except ValueError as exc:  # e.g. an image whose IT features are all zero: no correlation RDM
            out[f"test_rsa_{name}"] = None
            out[f"test_rsa_{name}_error"] = str(exc)
    return out


RSA_METHOD = {
    "eeg": "Spearman correlation of the model RDM (1 - Pearson over test images) with the subject's test "
    "EEG RDM (1 - Pearson over the selected channels) at each time point of the window, averaged over time",
    "fmri": "Spearman correlation of the model RDM (1 - Pearson over test images) with the subject's test "
    "fMRI RDM (1 - Pearson over the response components)",
}


class _Teacher:
    """The frozen starting CORnet-S (the starting model's own backbone, which is never trained) and its
    targets for every training and test image (the images are the same for every subject)."""

    def __init__(
        self, backbone: CORnetS, fingerprint: str, paths: dict[str, list[str]], kind: str, image_size: int
    ) -> None:
        self.backbone, self.fingerprint, self.paths = backbone, fingerprint, paths
        self.kind, self.image_size = kind, image_size

    def targets(self, device: torch.device, batch_size: int, num_workers: int) -> dict[str, torch.Tensor]:
        key = (
            "teacher", self.fingerprint, _files_digest([p for paths in self.paths.values() for p in paths]),
            self.kind, self.image_size, batch_size, str(device),
        )  # fmt: skip
        return _memoized(key, functools.partial(self._run, device, batch_size, num_workers))

    def _run(self, device: torch.device, batch_size: int, num_workers: int) -> dict[str, torch.Tensor]:
        transform = ImageTransform(self.image_size, crop=False)
        self.backbone.to(device)
        try:
            return {
                split: _teacher_targets(
                    self.backbone,
                    _Images(paths, transform),
                    self.kind,
                    batch_size=batch_size,
                    device=device,
                    num_workers=num_workers,
                )
                for split, paths in self.paths.items()
            }
        finally:
            self.backbone.to("cpu")


class _Recipe(Hook):
    """ReAlnet's part of the fit loop: the teacher's targets before the first step (after fit has checked
    the run folder, so a refused run costs no teacher pass), and on rank 0 after the last epoch the test
    numbers of the selected model and of the starting model, and the model saved with its configuration.
    """

    def __init__(
        self,
        data: AlignData,
        sets: dict[str, _Triples],
        teacher: _Teacher,
        start: ReAlnet,
        fingerprint: str,
        evaluate: dict[str, Any],
    ) -> None:
        self.data, self.sets, self.teacher, self.start = data, sets, teacher, start
        self.fingerprint, self.evaluate = fingerprint, evaluate

    def on_fit_start(self, state: FitState) -> None:
        loading = {k: self.evaluate[k] for k in ("batch_size", "num_workers")}
        targets = self.teacher.targets(state.device, **loading)
        self.sets["train"].targets = targets["train"][self.data.train_index]
        if "val" in self.sets:
            self.sets["val"].targets = targets["train"][self.data.val_index]
        self.sets["test"].targets = targets["test"]

    def _outputs(self, model: ReAlnet, device: torch.device) -> _Outputs:
        images = _Images(self.data.test.images, self.data.test.image_transform)
        loading = {k: self.evaluate[k] for k in ("batch_size", "num_workers")}
        return _test_outputs(model, images, device=device, **loading)

    def _start_outputs(self, device: torch.device) -> _Outputs:
        try:
            return self._outputs(self.start.to(device), device)
        finally:
            self.start.to("cpu")

    def _numbers(self, outputs: _Outputs, device: torch.device) -> dict[str, Any]:
        e = self.evaluate
        return _test_numbers(
            outputs, self.sets["test"], self.data, beta=e["beta"], contrast=e["contrast"],
            batch_size=e["batch_size"], device=device,
        )  # fmt: skip

    def on_fit_end(self, state: FitState) -> Mapping[str, Any] | None:
        if not state.is_main:
            return None
        out: dict[str, Any] = {"subject": self.data.subject, "modality": self.data.modality}
        model = state.model
        assert isinstance(model, ReAlnet)
        selected = [r["epoch"] for r in state.history if r.get("best")]
        if selected:  # fit loaded the selected epoch's weights into the model
            out.update(self._numbers(self._outputs(model, state.device), state.device))
            # what the model was aligned to travels with the file (evaluate reads it from a copy elsewhere)
            recorded = {"subject": f"sub-{self.data.subject:02d}", "modality": self.data.modality}
            save_realnet(model, state.run.path, metadata={"epoch": str(selected[-1]), **recorded})
        key = (
            "start outputs", self.fingerprint, _files_digest(self.data.test.images), self.teacher.image_size,
            self.evaluate["batch_size"], str(state.device),
        )  # fmt: skip
        start = _memoized(key, functools.partial(self._start_outputs, state.device))
        out.update({f"unaligned_{k}": v for k, v in self._numbers(start, state.device).items()})
        out["rsa_method"] = RSA_METHOD[self.data.modality]
        return out


# ----------------------------------------------------------------------------------------------- align


@dataclass(frozen=True)
class AlignResult:
    """One subject's aligned model.

    Attributes:
        subject: the subject number.
        run: its run folder.
        model: the ReAlnet with the selected epoch's weights (with the original modules and F.conv2d, as
            :func:`fastalign.models.realnet` loads it from the run folder; training ran the CPU convs of
            ``fuse_training(None, convs="auto")``).
        summary: summary.json (fit's entries, the test numbers and the unaligned model's).
        fit: what :func:`fastalign.train.fit` returned.
    """

    subject: int
    run: RunFolder
    model: ReAlnet
    summary: dict[str, Any]
    fit: FitResult


def _subjects(subject: Any, available: list[int], folder: str) -> tuple[list[int], bool]:
    """(subjects, whether one int was given)."""
    if subject == "all":
        if not available:
            raise ValueError(f"{_FN}: subject='all' but {folder!r} holds no sub-XX folder")
        return available, False
    if _checks.is_int(subject):
        return [_check_subject(subject, available, folder)], True
    if isinstance(subject, str | bytes) or not isinstance(subject, Sequence) or not subject:
        raise TypeError(_checks.message(_FN, "subject", "an int, a non-empty list of ints or 'all'", subject))
    chosen = [_check_subject(s, available, folder) for s in subject]
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"{_FN}: subject lists a subject twice: {list(subject)}")
    return chosen, False


#: config entries that say where an input is, not what it holds, so that a resume takes the data folder or
#: the weights at a new path: the weights are identified by ``start_fingerprint``; the data by
#: ``test_images_digest`` (the test images' bytes), the set sizes, the selected channels and times (ROIs,
#: PCA and its explained variance) and the training responses' ``norm_mean`` and ``norm_std``, all computed
#: from the data on every call anyway (hashing the training images and responses would read gigabytes)
_LOCATIONS = ("data", "weights")


def _check_settings(a: dict[str, Any]) -> None:
    _checks.check_int(_FN, "epochs", a["epochs"], minimum=1)
    _checks.check_real(_FN, "lr", a["lr"], positive=True)
    _checks.check_int(_FN, "batch_size", a["batch_size"], minimum=1)
    beta = _checks.check_real(_FN, "beta", a["beta"])
    if beta < 0:
        raise ValueError(_checks.message(_FN, "beta", "a finite number >= 0", a["beta"]))
    _checks.check_choice(_FN, "target", a["target"], ("hard", "soft"))
    _checks.check_choice(_FN, "contrast", a["contrast"], ("differentiable", "published"))
    _checks.check_int(_FN, "width", a["width"], minimum=1, none=True)
    _checks.check_int(_FN, "num_workers", a["num_workers"], minimum=0)
    _checks.check_int(_FN, "keep_checkpoints", a["keep_checkpoints"], minimum=0, none=True)
    _checks.check_real(_FN, "clip_grad_norm", a["clip_grad_norm"], positive=True, none=True)
    for name in ("resume", "overwrite", "progress"):
        _checks.check_bool(_FN, name, a[name])
    if a["beta"] > 0 and a["batch_size"] < 2:
        raise ValueError(
            f"{_FN}: batch_size must be at least 2 with beta > 0 (the contrast C correlates each image's "
            f"predicted response with the other images' in its batch), got {a['batch_size']}"
        )


def align(
    data: str | os.PathLike[str] | SyntheticThings,
    subject: int | Sequence[int] | Literal["all"] = 1,
    *,
    modality: str = "eeg",
    out: str | os.PathLike[str],
    weights: str | os.PathLike[str] | None = None,
    epochs: int = 25,
    lr: float = 2e-5,
    batch_size: int = 16,
    beta: float = 100.0,
    image_size: int = 224,
    seed: int = 0,
    control: str | None = None,
    val_fraction: float = 0.1,
    target: str = "hard",
    contrast: str = "differentiable",
    channels: str | Sequence[str | int] = PUBLISHED_CHANNELS,
    time_window: tuple[float, float] = PUBLISHED_TIME_WINDOW,
    rois: str | Sequence[str] | None = None,
    pca: int | None = PUBLISHED_PCA,
    areas: Sequence[str] | None = None,
    width: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    keep_checkpoints: int | None = 1,
    clip_grad_norm: float | None = None,
    amp: str = "fp32",
    num_workers: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    hooks: Sequence[Hook] = (),
) -> AlignResult | list[AlignResult]:
    """Trains a ReAlnet (or ReAlnet-fMRI) per subject: CORnet-S aligned to that person's brain.

    See the module docstring for the loss and the data layout, and docs/training.md for a walk-through.

    Args:
        data: the dataset folder (or the :class:`~fastalign.data.SyntheticThings` that wrote it).
        subject: a subject number (``out`` is its run folder), a list of them or "all" (one run folder
            per subject, ``out/sub-XX``, each model trained from the same starting weights; every
            subject's data are read and checked before the first trains).
        modality: "eeg" (ReAlnet) or "fmri" (ReAlnet-fMRI).
        out: the run folder (see :mod:`fastalign.train.run`).
        weights: None (a randomly initialised CORnet-S, seeded by ``seed``), a CORnet-S checkpoint in the
            original format (``cornet_s-1d3f7974.pth``), or a whole ReAlnet (a run folder, our
            safetensors, or a published ``encoder.pt``) whose head must fit the data. The frozen teacher
            is the starting model's CORnet-S. Nothing is downloaded.
        epochs, lr, batch_size: Adam's training (published: 25-30 epochs, lr 2e-6 to 2e-5, batch 16;
            torch's fused Adam on CPU and CUDA devices).
            Each epoch drops the training images that do not fill a last batch, so every step's C
            covers ``batch_size`` images.
        beta: weight of the brain terms (published 100; 0: fine-tuning on the same images without the brain).
        image_size: images are resized to this square size (published 224).
        seed: seeds the initialisation, the validation split, the control's pairing and the fit loop.
        control: None, or "unpaired": each training (and validation) image is paired with another
            image's response by a fixed seeded derangement; the test set stays paired.
        val_fraction: the share of training images held out to select the epoch (0: the last epoch).
        target: "hard" (the teacher's argmax, published notebooks) or "soft" (its softmax; the
            published script passes raw logits as probabilities, an unbounded loss).
        contrast: "differentiable" or "published" (C without gradient).
        channels: EEG channels: "occipito-parietal" (names matching THINGS-EEG2's ``^O *|^P *``: the
            published 17), "all", or names / indices.
        time_window: EEG samples in [tmin, tmax) seconds (published 0-0.2 s: 20 samples at 100 Hz).
        rois: fMRI ROI name(s) to keep (None: every voxel).
        pca: fMRI principal components fitted on the training responses (published 1024), or None.
        areas, width: the encoding head's tapped areas and width (as :class:`~fastalign.models.ReAlnet`);
            None: the weights' head, else the published one (V1, V2, V4, IT; 128).
        resume, overwrite: continue a killed run, or replace the run in ``out``.
        keep_checkpoints: as :func:`fastalign.train.fit`: the newest epoch checkpoints to keep (None: all;
            0: none, for a run that will not be resumed: each CORnet-S checkpoint with its Adam state is
            about 650 MB).
        clip_grad_norm: clip the gradients' total 2-norm to this before each step (and log ``grad_norm``),
            or None (published: no clipping). With beta = 100 the brain terms' gradients can be large
            while the head is new; clipping keeps a higher ``lr`` stable.
        amp: as :func:`fastalign.train.fit`; "fp32" by default, as published ("auto" trains in bf16 autocast
            where the device computes bf16 natively: faster, with gradients further from float64's).
        num_workers, device, progress: as :func:`fastalign.train.fit`.
        hooks: extra :class:`~fastalign.train.Hook` objects for the fit loop.

    Returns:
        An :class:`AlignResult` for an int ``subject``, else a list of them in subject order.

    Raises:
        FileNotFoundError: missing data or weights (with several subjects: one error naming each subject
            whose files are missing).
        ValueError: bad settings or data (see :func:`load_align_data`; with several subjects, one error
            naming each subject whose data fail a check, before any trains), weights whose head does not fit
            the data, or ``out`` holding a run with another config (without ``overwrite``).
        TypeError: arguments of the wrong kind.
    """
    _check_settings(dict(locals()))
    modality = _checks.check_choice(_FN, "modality", modality, ("eeg", "fmri"))
    info = distributed.planned()
    # the device and precision before the data is read and the model built (fit checked them after)
    if device is not None:
        target_device = _checks.check_device(_FN, "device", device)
    else:
        target_device = distributed.default_device(info)
    resolve_amp(amp, target_device, _FN)
    root = _root(data)
    folder = _modality_dir(root, modality)
    subjects, single = _subjects(subject, _available_subjects(root, modality), folder)
    if not isinstance(out, str | os.PathLike):
        raise TypeError(_checks.message(_FN, "out", "a folder path", out))
    weights_file, state = _read_state(weights) if weights is not None else (None, None)
    # each run folder is replaced as a unit by --overwrite: never one holding what the run reads (with
    # several subjects those are out/sub-XX; out itself only holds them)
    inputs = [root, *([weights_file] if weights_file else [])]
    for s in [None] if single else subjects:
        run_out = out if s is None else os.path.join(os.fspath(out), f"sub-{s:02d}")
        _checks.check_inputs_outside(_FN, "out", run_out, inputs)
    if not single and not resume and not overwrite:
        # every subject's folder before the first trains: a later one holding a run failed only after
        # the earlier subjects had trained, and rerunning them needs --resume
        subject_dirs = {f"sub-{s:02d}": os.path.join(os.fspath(out), f"sub-{s:02d}") for s in subjects}
        taken = [name for name, d in subject_dirs.items() if os.path.isdir(d) and holds_files(d)]
        if taken:
            raise ValueError(
                f"{_FN}: out {os.fspath(out)!r} already holds {', '.join(taken)}; pass resume=True "
                "(--resume) to continue those runs or overwrite=True (--overwrite) to replace them"
            )
    if not single:
        _check_every_subject(
            root, folder, modality, subjects, seed=seed, control=control, val_fraction=val_fraction,
            channels=channels, time_window=time_window, rois=rois, pca=pca,
        )  # fmt: skip
    load = functools.partial(
        load_align_data, root, modality=modality, image_size=image_size, seed=seed, control=control,
        val_fraction=val_fraction, channels=channels, time_window=time_window, rois=rois, pca=pca,
    )  # fmt: skip
    build = functools.partial(_start_model, state, areas=areas, width=width, image_size=image_size, seed=seed)
    evaluate = dict(beta=beta, contrast=contrast, batch_size=batch_size, num_workers=num_workers)
    # torch's fused Adam: one kernel over all 54 M parameters instead of a loop over ~300 tensors (on a CPU
    # a step's update falls from about 0.8 s to 0.07 s)
    adam = functools.partial(torch.optim.Adam, lr=lr, fused=target_device.type in _FUSED_ADAM)
    results = []
    teacher: _Teacher | None = None
    images_digest = functools.cache(digest_files)  # every subject's test images: read once
    for s in subjects:
        d = load(s)
        model = build(d.n_out)
        start = copy.deepcopy(model)  # the teacher's backbone; rank 0 also evaluates it at the end
        fingerprint = _fingerprint(model)
        if teacher is None:  # every subject starts from the same weights: one teacher for all
            teacher = _Teacher(start.backbone, fingerprint, d.image_paths, target, image_size)
        sets = {"train": _Triples(d.train), "test": _Triples(d.test)}
        if d.val is not None:
            sets["val"] = _Triples(d.val)
        config = {
            "recipe": "realnet",
            "data": root,
            "subject": s,
            "modality": modality,
            "weights": weights_file,
            "start": "random" if state is None else "realnet" if _has_head(state) else "cornet_s",
            "start_fingerprint": fingerprint,
            "lr": lr,
            "beta": beta,
            "image_size": image_size,
            # how images reach image_size: a run made when they were centre-cropped is not resumed as one
            "image_resize": "squeeze",
            "target": target,
            "contrast": contrast,
            "contrast_scope": "the global batch in training, each process's share in validation",
            "control": control,
            "val_fraction": val_fraction,
            "n_train": len(d.train),
            "n_val": 0 if d.val is None else len(d.val),
            "n_test": len(d.test),
            "test_images_digest": images_digest(tuple(d.test.images)),
            "n_out": d.n_out,
            "response_shape": list(d.response_shape),
            "areas": list(model.areas),
            "width": model.width,
            **d.settings,
        }
        run_dir = os.fspath(out) if single else os.path.join(os.fspath(out), f"sub-{s:02d}")
        recipe = _Recipe(d, sets, teacher, start, fingerprint, evaluate)
        result = fit(
            model, functools.partial(_step, beta=beta, contrast=contrast), sets["train"], sets.get("val"),
            out=run_dir, epochs=epochs, config=config, locations=_LOCATIONS, batch_size=batch_size,
            optimizer=adam, seed=seed, amp=amp, resume=resume,
            overwrite=overwrite, keep_checkpoints=keep_checkpoints, clip_grad_norm=clip_grad_norm,
            num_workers=num_workers, drop_last=True,
            # every sample is a fixed function of its index (the images are resized, never augmented), so
            # a resume with other workers is the same run: fit's warning about random draws is not for it
            data_draws_random=False,
            hooks=[recipe, *hooks], progress=progress, device=target_device,
        )  # fmt: skip
        require_selected(_FN, result)
        assert isinstance(result.model, ReAlnet)
        result.model.fuse_training(None, convs=None)  # handed back as realnet(run folder) loads it
        results.append(AlignResult(s, result.run, result.model, result.summary, result))
    return results[0] if single else results
