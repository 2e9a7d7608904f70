"""A torch Dataset pairing each image with its brain response (EEG or fMRI), with the options the
alignment and decoding methods use: repetition averaging, time/channel selection, flattening and
normalisation (statistics from training data only); and the seeded train/validation split of the
recipes (:func:`train_val_split`)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeGuard

import numpy as np
import torch
from torch.utils.data import Dataset

from fastalign import _mne
from fastalign._checks import (
    check_bool,
    check_choice,
    check_int,
    check_real,
    check_seed,
    magnitude_shift,
    message,
    warn_if_window_clipped,
)
from fastalign.data._io import SAFE_HIGH, SAFE_LOW, check_array
from fastalign.data.embeddings import normalize_embeddings
from fastalign.data.fmri import FMRIResponses, ResponsePCA, load_fmri
from fastalign.data.images import ImageTransform
from fastalign.data.responses import (
    EEGResponses,
    _check_times,
    epochs_to_responses,
)
from fastalign.data.things_eeg2 import load_image_metadata, load_preprocessed_eeg

Normalization = Literal["zscore", "channel", "trial", "channel_l2"]
_NORMS = (None, "zscore", "channel", "trial", "channel_l2")
_DS = "BrainImageDataset"
# Values per block of images that channel_l2 normalises at once: float64 temporaries of at most 16 MiB.
_BLOCK_VALUES = 1 << 21
# Mixed into the seed of seeded repetition draws (as train_val_split's key), so that they are not the same
# stream as anything else seeded with the run's seed.
_REPETITION_KEY = 2


@dataclass
class NormStats:
    """Normalisation statistics fitted on training responses; pass them to the test dataset.

    ``mean`` and ``std`` (float64 from :func:`fit_norm_stats`) broadcast against one response of shape
    (*feature_shape): scalars for "zscore", (n_channels, 1) for EEG or (n_voxels,) for fMRI with
    "channel".
    """

    mode: str
    mean: np.ndarray
    std: np.ndarray


def fit_norm_stats(trials: Any, mode: str) -> NormStats:
    """Statistics of single trials (n_images, n_repetitions, *feature_shape) for ``mode``.

    "zscore": one mean and std over everything (per subject); "channel": per channel (EEG, over
    images, repetitions and time) or per voxel (fMRI). Computed in float64 (two passes: mean, then
    deviations) on data rescaled by an exact power of two, so any finite magnitude gives its true
    statistics. ``trials`` may be an array or a tensor (detached; bfloat16 read as float32).

    Raises:
        TypeError: ``trials`` is not real numeric.
        ValueError: wrong dimensions, NaN/inf, no values, an unknown ``mode``, or a zero standard
            deviation (a flat channel / voxel, or all data equal).
    """
    fn = "fit_norm_stats"
    if mode not in ("zscore", "channel"):
        raise ValueError(f"{fn}: mode must be 'zscore' or 'channel', got {mode!r}")
    trials = check_array(trials, "trials", fn, ndim=(3, 4))
    if trials.size == 0:
        raise ValueError(
            f"{fn}: trials is empty (shape {trials.shape}); expected at least one image, repetition and "
            "feature"
        )
    axes = None if mode == "zscore" else ((0, 1, 3) if trials.ndim == 4 else (0, 1))
    # C order whatever the layout given: sums in one order, so the same trials give the same statistics
    x = np.ascontiguousarray(trials, dtype=np.float64)
    shift = magnitude_shift(np.abs(x).max(axis=axes, keepdims=True), low=SAFE_LOW, high=SAFE_HIGH)
    if shift.any():
        x = np.ldexp(x, shift)
    mean = np.ldexp(x.mean(axis=axes, keepdims=True), -shift)
    std = np.ldexp(x.std(axis=axes, keepdims=True), -shift)
    # "channel" keeps (1, 1, n_channels, 1) / (1, 1, n_voxels): drop the image and repetition axes
    shape = () if mode == "zscore" else mean.shape[2:]
    mean, std = mean.reshape(shape), std.reshape(shape)
    if not np.all(std > 0):
        raise ValueError(
            f"{fn}: a standard deviation of trials is zero (mode {mode!r}); a channel/voxel is flat"
        )
    return NormStats(mode, mean, std)


# The numpy dtype that holds a torch dtype's values exactly (float64 for those numpy lacks, as bfloat16).
_NUMPY_DTYPES = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}


def _channel_l2(
    trials: np.ndarray, *, average: bool = False, dtype: Any = np.float64, own: bool = False
) -> np.ndarray:
    """``(x - mean_t(x)) / ||x||_2`` over the time axis of (images, repetitions, channels, times) trials,
    computed in float64 a block of images at a time.

    Args:
        trials: the trials (not changed unless ``own``).
        average: return the normalised trials' mean over repetitions, (images, channels, times) float64,
            each block averaged as it is normalised: no normalised copy of every trial is held (at
            THINGS-EEG2's published size that copy is 8.3 GB in float64).
        dtype: the normalised trials' numpy dtype when not ``average``.
        own: ``trials`` is a float64 copy the caller gives up: it is normalised in place.
    """
    if average:
        out = np.empty((trials.shape[0], *trials.shape[2:]), dtype=np.float64)
    elif own and trials.dtype == np.float64 and dtype == np.float64:
        out = trials
    else:
        out = np.empty(trials.shape, dtype=dtype)
    block = max(1, _BLOCK_VALUES // max(1, int(np.prod(trials.shape[1:]))))
    for start in range(0, len(trials), block):
        x = np.asarray(trials[start : start + block], dtype=np.float64)
        # An exact power of two per channel keeps the squares of the norm in range; the ratio is unchanged.
        shift = magnitude_shift(np.abs(x).max(axis=-1, keepdims=True), low=SAFE_LOW, high=SAFE_HIGH)
        if shift.any():
            x = np.ldexp(x, shift)
        norm = np.linalg.norm(x, axis=-1, keepdims=True)
        if not np.all(norm > 0):
            img, rep, ch = np.argwhere(norm[..., 0] == 0)[0]
            raise ValueError(
                f"{_DS}: normalize='channel_l2' divides each channel of each trial by its L2 norm, but "
                f"channel {ch} of repetition {rep} of image {start + img} is all zeros"
            )
        z = (x - x.mean(axis=-1, keepdims=True)) / norm
        out[start : start + block] = z.mean(axis=1) if average else z
    return out


def _as_trials(responses: Any) -> tuple[np.ndarray, list[str], np.ndarray, str]:
    """(n_images, n_repetitions, *features) array, ch_names, times and a source name."""
    if _mne.is_epochs(responses):
        responses = epochs_to_responses(responses)
    if isinstance(responses, EEGResponses):
        return responses.data, responses.ch_names, responses.times, responses.source
    if isinstance(responses, FMRIResponses):
        responses.check_finite()  # every voxel is used; NaN outside the wanted ROIs: select them first
        return responses.data, [], np.zeros(0), responses.source
    if not isinstance(responses, (np.ndarray, list, tuple)) and not hasattr(responses, "__array__"):
        hint = (
            "; load files first (load_preprocessed_eeg, load_fmri)"
            if isinstance(responses, (str, os.PathLike))
            else ""
        )
        raise TypeError(
            f"{_DS}: responses must be an array or tensor of 2-4 dimensions, an EEGResponses, FMRIResponses "
            f"or mne.Epochs, got {type(responses).__name__}{hint}"
        )
    arr = check_array(responses, "responses", _DS, ndim=(2, 3, 4))
    return (arr[:, None] if arr.ndim == 2 else arr), [], np.zeros(0), "argument responses"


class BrainImageDataset(Dataset):
    """(image, response) pairs, one per image condition.

    Args:
        responses: (n_images, n_repetitions, n_channels, n_times) EEG, (n_images, n_repetitions,
            n_voxels) or (n_images, n_voxels) fMRI, an EEGResponses / FMRIResponses, or mne.Epochs with
            one event code per image.
        images: None (items carry the image index), a sequence of n_images image paths (loaded with
            ``image_transform``), or an array/tensor with one row per image (pixels or embeddings). Paths
            are matched to the names of FMRIResponses that name their images
            (:meth:`FMRIResponses.in_image_order`); other responses must be in the images' order.
        repetitions: "all", an int k (the first k), or a sequence of repetition indices to use.
        random_repetitions: If set, each draw averages this many repetitions picked at random (torch's
            global RNG, so DataLoader workers differ and ``torch.manual_seed`` reproduces) from those
            selected by ``repetitions``; else the selected repetitions are averaged once.
        seed: With ``random_repetitions``: pick the repetitions from a generator seeded with (seed,
            epoch) instead of torch's global RNG, one draw per image and epoch (:meth:`set_epoch`, epoch
            0 until called), so each epoch is a fresh sample that any process, DataLoader worker or
            resumed run draws alike.
        channels: EEG channel names (needs ch_names) or indices to keep, in that order.
        time_window: (tmin, tmax) in seconds, inclusive (needs times), or a slice of sample indices.
        flatten: Return responses as 1-d vectors (e.g. 17 channels x 20 times = 340).
        normalize: None; "zscore" (one mean/std per subject), "channel" (per channel / voxel): both from
            training data, see ``norm_stats``; "trial" (each averaged response centred and scaled to
            unit L2 norm, :func:`~fastalign.data.embeddings.normalize_embeddings`); or "channel_l2"
            (EEG; the published AlignVis loader, things_eeg_2.py: each channel of each single trial,
            after channel and time selection and before repetitions are averaged, becomes
            ``(x - mean_t(x)) / ||x||_2`` with the L2 norm over time of the *uncentred* x, as
            published; a channel that is all zeros in a trial is an error). "trial" and "channel_l2"
            need no statistics.
        norm_stats: Statistics from the training dataset (``train_ds.norm_stats``); when None and
            ``normalize`` needs them they are fitted on this dataset's selected single trials, which
            is right only for a training set.
        image_transform: Path -> tensor for path images (default ``ImageTransform(crop=False)``: resized
            to 224 x 224, not cropped, as the published ReAlnet and fastalign's align, evaluate and
            decode see them).
        ch_names, times: For plain arrays: names of the channels and times of the samples.
        dtype: dtype of the response tensors.
    """

    def __init__(
        self,
        responses: Any,
        images: Sequence[str | os.PathLike[str]] | np.ndarray | torch.Tensor | None = None,
        *,
        repetitions: Literal["all"] | int | Sequence[int] = "all",
        random_repetitions: int | None = None,
        seed: int | None = None,
        channels: Sequence[str] | Sequence[int] | None = None,
        time_window: tuple[float, float] | slice | None = None,
        flatten: bool = True,
        normalize: Normalization | None = None,
        norm_stats: NormStats | None = None,
        image_transform: Callable[[Any], torch.Tensor] | None = None,
        ch_names: Sequence[str] | None = None,
        times: Sequence[float] | np.ndarray | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        responses = _by_name(responses, images)
        trials, names, tvec, self.source = _as_trials(responses)
        if trials.size == 0:
            raise ValueError(
                f"{_DS}: responses are empty (shape {trials.shape}, from {self.source}); expected at least "
                "one image, repetition and channel/voxel"
            )
        n_img, n_rep = trials.shape[:2]
        eeg = trials.ndim == 4
        check_bool(_DS, "flatten", flatten)
        check_choice(_DS, "normalize", normalize, _NORMS)
        if norm_stats is not None and not isinstance(norm_stats, NormStats):
            raise TypeError(
                f"{_DS}: norm_stats must be None or a NormStats (train_ds.norm_stats), got "
                f"{type(norm_stats).__name__}"
            )
        if norm_stats is not None and normalize not in ("zscore", "channel"):
            raise ValueError(
                f"{_DS}: norm_stats ({norm_stats.mode!r}) given but normalize={normalize!r} uses none; "
                "normalise every split the same way"
            )
        if image_transform is not None and not callable(image_transform):
            raise TypeError(
                f"{_DS}: image_transform must be callable (path -> tensor), got "
                f"{type(image_transform).__name__}"
            )
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(
                f"{_DS}: dtype must be a floating torch.dtype (e.g. torch.float32), got {dtype!r}"
            )
        if (ch_names is not None or times is not None) and not eeg:
            raise ValueError(f"{_DS}: ch_names and times need EEG responses (4-d), got shape {trials.shape}")
        if ch_names is not None:
            names = self._ch_names(ch_names, trials.shape[2])
        if times is not None:
            tvec = _check_times(times, trials.shape[3], "times", _DS)
        checked_images = self._images(images, n_img, self.source)

        rep_idx = self._repetitions(repetitions, n_rep)
        check_int(_DS, "random_repetitions", random_repetitions, minimum=1, none=True)
        if random_repetitions is not None and random_repetitions > len(rep_idx):
            raise ValueError(
                f"{_DS}: random_repetitions must be in 1..{len(rep_idx)} (the selected repetitions), got "
                f"{random_repetitions}"
            )
        check_seed(_DS, seed)
        if seed is not None and random_repetitions is None:
            raise ValueError(
                f"{_DS}: seed={seed} seeds random_repetitions, which is None; set both or neither"
            )
        if (channels is not None or time_window is not None) and not eeg:
            raise ValueError(f"{_DS}: channels and time_window need EEG responses (4-d)")
        if normalize == "channel_l2" and not eeg:
            raise ValueError(
                f"{_DS}: normalize='channel_l2' normalises each EEG channel over time and needs EEG "
                f"responses (images, repetitions, channels, times), got shape {trials.shape}"
            )
        gathered = True  # trials is this object's own copy
        if eeg:
            ch_idx = self._channels(channels, names, trials.shape[2])
            t_idx = self._times(time_window, tvec, trials.shape[3])
            selected = (np.asarray(rep_idx), np.asarray(ch_idx), np.asarray(t_idx))
            # (C order too: sums over the data then run in the order a gathered copy's would)
            everything = trials.flags.c_contiguous and all(
                len(i) == size and np.array_equal(i, np.arange(size))
                for i, size in zip(selected, trials.shape[1:], strict=True)
            )
            # One gather of just the selected values (published training data is 4.2 GB in float32); none
            # when everything is selected and what follows makes a new array anyway (normalising or
            # averaging): the raw trials are not copied, and never changed.
            new_array = random_repetitions is None or normalize in ("channel_l2", "zscore", "channel")
            gathered = not everything or not new_array
            if gathered:
                trials = trials[np.ix_(np.arange(n_img), *selected)]
            self.ch_names = [names[i] for i in ch_idx] if names else []
            self.times = tvec[t_idx] if tvec.size else tvec
        else:
            trials = trials[:, rep_idx]
            self.ch_names, self.times = [], np.zeros(0)

        self.normalize, self.flatten, self.random_repetitions = normalize, bool(flatten), random_repetitions
        self.seed = seed
        self._picks: torch.Tensor | None = None
        self.norm_stats = norm_stats
        averaged: np.ndarray | None = None  # the channel_l2 mean over repetitions, made block by block
        if normalize == "channel_l2":
            if random_repetitions is None:
                averaged = _channel_l2(trials, average=True)
            else:
                trials = _channel_l2(trials, dtype=_NUMPY_DTYPES.get(dtype, np.float64), own=gathered)
        if normalize in ("zscore", "channel"):
            if norm_stats is None:
                self.norm_stats = fit_norm_stats(trials, normalize)
            else:
                self._check_norm_stats(norm_stats, normalize, trials.shape[2:])
            assert self.norm_stats is not None
            # Affine, so normalising trials equals normalising their average.
            trials = (trials - self.norm_stats.mean) / self.norm_stats.std
        if random_repetitions is not None:
            self._trials: torch.Tensor | None = torch.as_tensor(np.ascontiguousarray(trials), dtype=dtype)
            self._mean: torch.Tensor | None = None
            self.response_shape = tuple(self._finish(self._trials[:1].mean(dim=1)).shape[1:])
        else:  # average in float64 before casting, so float32 outputs carry no summation error
            if averaged is None:
                averaged = trials.mean(axis=1, dtype=np.float64)
            mean = torch.from_numpy(np.ascontiguousarray(averaged))
            self._trials, self._mean = None, self._finish(mean).to(dtype)
            self.response_shape = tuple(self._mean.shape[1:])

        self.images, self.image_transform = checked_images, image_transform or ImageTransform(crop=False)
        self.n_images = n_img
        if seed is not None:
            self.set_epoch(0)

    @staticmethod
    def _images(images: Any, n_img: int, source: str) -> Any:
        """``images`` checked: None, n_img paths, or an array/tensor with n_img rows (as a tensor)."""
        if images is None:
            return None
        if isinstance(images, (np.ndarray, torch.Tensor)):
            numeric = (
                images.dtype.kind in "biuf" if isinstance(images, np.ndarray) else not images.is_complex()
            )
            if not numeric:
                raise TypeError(
                    f"{_DS}: an images array must be numeric (pixels or embeddings), got dtype "
                    f"{images.dtype}; pass image paths as a list"
                )
            if images.ndim == 0:
                raise ValueError(f"{_DS}: images must have one row per image, got a 0-d array")
            images = torch.as_tensor(images)
        # Items of a sequence are not checked: image_transform may take PIL images or tensors, not just paths.
        elif isinstance(images, (str, bytes, os.PathLike)) or not isinstance(images, Sequence):
            raise TypeError(
                f"{_DS}: images must be None, a sequence of image paths or an array/tensor with one row per "
                f"image, got {type(images).__name__}"
            )
        if len(images) != n_img:
            raise ValueError(
                f"{_DS}: got {len(images)} images for {n_img} responses from {source}; expected one image "
                "per response"
            )
        return images

    @staticmethod
    def _ch_names(ch_names: Any, n_ch: int) -> list[str]:
        if isinstance(ch_names, (str, bytes)) or not isinstance(ch_names, (Sequence, np.ndarray)):
            raise TypeError(f"{_DS}: ch_names must be a sequence of channel names, got {ch_names!r}")
        names = list(ch_names)
        bad = [n for n in names if not isinstance(n, str)]
        if bad:
            raise TypeError(f"{_DS}: ch_names must be strings, got {bad[0]!r} ({type(bad[0]).__name__})")
        if len(names) != n_ch or len(set(names)) != n_ch:
            raise ValueError(
                f"{_DS}: ch_names must be {n_ch} distinct names, one per channel of the data, got "
                f"{len(names)} ({len(set(names))} distinct)"
            )
        return names

    @staticmethod
    def _repetitions(repetitions: Any, n_rep: int) -> list[int]:
        if isinstance(repetitions, str):
            if repetitions != "all":
                raise ValueError(f"{_DS}: repetitions must be 'all', an int or indices, got {repetitions!r}")
            return list(range(n_rep))
        if isinstance(repetitions, (int, np.integer, np.bool_)):
            k = check_int(_DS, "repetitions", repetitions, minimum=1)
            if k > n_rep:
                raise ValueError(f"{_DS}: repetitions={repetitions} but the data has {n_rep}")
            return list(range(k))
        if isinstance(repetitions, torch.Tensor):
            repetitions = repetitions.tolist()
        if not isinstance(repetitions, (Sequence, np.ndarray)) or isinstance(repetitions, bytes):
            raise TypeError(
                f"{_DS}: repetitions must be 'all', an int or a sequence of int indices, got {repetitions!r} "
                f"({type(repetitions).__name__})"
            )
        idx = [check_int(_DS, f"repetitions[{j}]", i) for j, i in enumerate(repetitions)]
        if not idx or min(idx) < -n_rep or max(idx) >= n_rep:
            raise ValueError(f"{_DS}: repetition indices {idx} out of range for {n_rep} repetitions")
        if len({i % n_rep for i in idx}) != len(idx):
            raise ValueError(
                f"{_DS}: repetition indices {idx} repeat a repetition; expected distinct indices"
            )
        return idx

    @staticmethod
    def _channels(channels: Any, names: list[str], n_ch: int) -> list[int]:
        if channels is None:
            return list(range(n_ch))
        if isinstance(channels, (str, bytes)) or not isinstance(channels, (Sequence, np.ndarray)):
            raise TypeError(
                f"{_DS}: channels must be a sequence of channel names or indices (e.g. ['Oz']), got "
                f"{channels!r} ({type(channels).__name__})"
            )
        out = []
        for j, c in enumerate(channels):
            if isinstance(c, str):
                if c not in names:
                    raise ValueError(f"{_DS}: no channel {c!r}; channels are {names or '(names unknown)'}")
                out.append(names.index(c))
                continue
            i = check_int(_DS, f"channels[{j}]", c)
            if not -n_ch <= i < n_ch:
                raise ValueError(f"{_DS}: channel index {c} out of range for {n_ch} channels")
            out.append(i % n_ch)
        if not out or len(set(out)) != len(out):
            raise ValueError(
                f"{_DS}: channels must name at least one channel, each once, got {list(channels)}"
            )
        return out

    @staticmethod
    def _times(window: Any, tvec: np.ndarray, n_t: int) -> np.ndarray:
        if window is None:
            return np.arange(n_t)
        if isinstance(window, slice):
            for part in ("start", "stop", "step"):
                check_int(_DS, f"time_window.{part}", getattr(window, part), none=True)
            if window.step == 0:
                raise ValueError(f"{_DS}: time_window slice step must not be 0, got {window}")
            idx = np.arange(n_t)[window]
        else:
            if (
                isinstance(window, (str, bytes))
                or not isinstance(window, (Sequence, np.ndarray))
                or len(window) != 2
            ):
                raise TypeError(
                    f"{_DS}: time_window must be None, (tmin, tmax) in seconds or a slice of sample indices, "
                    f"got {window!r}"
                )
            tmin = check_real(_DS, "time_window[0] (tmin)", window[0])
            tmax = check_real(_DS, "time_window[1] (tmax)", window[1])
            if tmin > tmax:
                raise ValueError(f"{_DS}: time_window must have tmin <= tmax, got {tuple(window)}")
            if not tvec.size:
                raise ValueError(f"{_DS}: time_window in seconds needs the epoch times (times=...)")
            tol = 1e-9 * max(1.0, float(np.abs(tvec).max()))
            idx = np.flatnonzero((tvec >= tmin - tol) & (tvec <= tmax + tol))
            if idx.size:  # as align warns: fewer samples than the window asked for
                warn_if_window_clipped(_DS, "time_window", tmin, tmax, tvec, "epoch's")
        if not idx.size:
            raise ValueError(f"{_DS}: time_window {window} selects no samples")
        return idx

    @staticmethod
    def _check_norm_stats(stats: NormStats, normalize: str, feature_shape: tuple[int, ...]) -> None:
        if stats.mode != normalize:
            raise ValueError(f"{_DS}: norm_stats are for {stats.mode!r}, not {normalize!r}")
        for name in ("mean", "std"):
            value = np.asarray(getattr(stats, name))
            try:
                fits = np.broadcast_shapes(value.shape, feature_shape) == feature_shape
            except ValueError:
                fits = False
            if not fits:
                raise ValueError(
                    f"{_DS}: norm_stats.{name} has shape {value.shape}, which does not fit this dataset's "
                    f"responses {feature_shape} (fitted on other channels, times or voxels?)"
                )

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        """Trial normalisation and flattening of averaged responses (batch first)."""
        if self.flatten or self.normalize == "trial":
            flat = x.reshape(x.shape[0], -1)
            if self.normalize == "trial":
                flat = normalize_embeddings(flat)
            x = flat if self.flatten else flat.reshape(x.shape)
        return x

    def __len__(self) -> int:
        return self.n_images

    def set_epoch(self, epoch: int) -> None:
        """Draws epoch ``epoch``'s repetitions of every image (needs ``seed``): the first
        ``random_repetitions`` of a permutation from ``numpy.random.default_rng([seed, epoch, 2])``."""
        if self.seed is None or self._trials is None or self.random_repetitions is None:
            raise ValueError(f"{_DS}: set_epoch needs random_repetitions and seed, got seed={self.seed}")
        check_int(_DS, "epoch", epoch, minimum=0)
        n_img, n_rep = self._trials.shape[:2]
        order = np.random.default_rng([self.seed, epoch, _REPETITION_KEY]).random((n_img, n_rep)).argsort(1)
        self._picks = torch.from_numpy(order[:, : self.random_repetitions])

    def response(self, index: int) -> torch.Tensor:
        """The response of image ``index`` (a fresh random average when ``random_repetitions`` is set)."""
        if self._mean is not None:
            return self._mean[index]
        assert self._trials is not None and self.random_repetitions is not None
        if self._picks is not None:
            pick = self._picks[index]
        else:
            pick = torch.randperm(self._trials.shape[1])[: self.random_repetitions]
        return self._finish(self._trials[index, pick].mean(dim=0, keepdim=True))[0]

    def responses(self) -> torch.Tensor:
        """All (deterministic) responses stacked: (n_images, *response_shape)."""
        if self._mean is None:
            raise ValueError("BrainImageDataset: responses() is undefined with random_repetitions")
        return self._mean

    def image(self, index: int) -> Any:
        """Image ``index``: the loaded tensor, the stored row, or the index when there are no images."""
        if self.images is None:
            return index
        if isinstance(self.images, torch.Tensor):
            return self.images[index]
        return self.image_transform(self.images[index])

    def __getitem__(self, index: int) -> tuple[Any, torch.Tensor]:
        if not -self.n_images <= index < self.n_images:
            raise IndexError(f"index {index} out of range for {self.n_images} images")
        index %= self.n_images
        return self.image(index), self.response(index)


def things_eeg2_datasets(
    preprocessed_dir: str | os.PathLike[str],
    subject: int,
    image_dir: str | os.PathLike[str] | None = None,
    *,
    train_options: dict[str, Any] | None = None,
    test_options: dict[str, Any] | None = None,
    **options: Any,
) -> tuple[BrainImageDataset, BrainImageDataset]:
    """(training, test) datasets of one THINGS-EEG2 subject, test normalised with training statistics.

    Args:
        preprocessed_dir: Folder with ``sub-XX/preprocessed_eeg_{training,test}.npy``.
        subject: Subject number.
        image_dir: Folder with image_metadata.npy and the images; None gives image indices.
        train_options, test_options: Options for one split only (e.g. ``random_repetitions`` for
            training).
        **options: BrainImageDataset options for both splits (channels, time_window, normalize, ...).
    """
    for name, value in (("train_options", train_options), ("test_options", test_options)):
        if value is not None and not isinstance(value, dict):
            raise TypeError(
                f"things_eeg2_datasets: {name} must be None or a dict of BrainImageDataset options, got "
                f"{type(value).__name__}"
            )
    if test_options and "norm_stats" in test_options:
        raise ValueError(
            "things_eeg2_datasets: test_options must not set norm_stats; the test set is normalised with the "
            "training set's statistics (pass norm_stats in options to use fixed ones for both)"
        )
    train_eeg = load_preprocessed_eeg(preprocessed_dir, subject, "training")
    test_eeg = load_preprocessed_eeg(preprocessed_dir, subject, "test")
    train_imgs = test_imgs = None
    if image_dir is not None:
        meta = load_image_metadata(image_dir)
        train_imgs, test_imgs = meta.paths("training"), meta.paths("test")
        for split, eeg, imgs in (("training", train_eeg, train_imgs), ("test", test_eeg, test_imgs)):
            if len(imgs) != eeg.data.shape[0]:
                raise ValueError(
                    f"{eeg.source!r} has {eeg.data.shape[0]} conditions but image_metadata.npy lists "
                    f"{len(imgs)} {split} images; expected one image per condition"
                )
    train = BrainImageDataset(train_eeg, train_imgs, **{**options, **(train_options or {})})
    test = BrainImageDataset(
        test_eeg, test_imgs, **{**options, **(test_options or {}), "norm_stats": train.norm_stats}
    )
    return train, test


def _image_paths(images: Any) -> TypeGuard[Sequence[str | os.PathLike[str]]]:
    """Whether ``images`` is a sequence of image paths (str / PathLike), not pixels or embeddings."""
    return (
        isinstance(images, Sequence)
        and not isinstance(images, (str, bytes))
        and all(isinstance(p, (str, os.PathLike)) for p in images)
    )


def _by_name(responses: Any, images: Any) -> Any:
    """FMRIResponses that name their images, in the order of the image paths given with them
    (:meth:`FMRIResponses.in_image_order`); anything else as given (other image kinds, and a count that
    differs, are BrainImageDataset's to check)."""
    if isinstance(responses, FMRIResponses) and _image_paths(images) and len(images) == len(responses.data):
        return responses.in_image_order(images)
    return responses


def fmri_datasets(
    train: FMRIResponses | str | os.PathLike[str],
    test: FMRIResponses | str | os.PathLike[str],
    train_images: Sequence[str | os.PathLike[str]] | np.ndarray | torch.Tensor | None = None,
    test_images: Sequence[str | os.PathLike[str]] | np.ndarray | torch.Tensor | None = None,
    *,
    rois: str | Sequence[str] | None = None,
    pca_components: int | None = None,
    **options: Any,
) -> tuple[BrainImageDataset, BrainImageDataset]:
    """(training, test) fMRI datasets: ROI selection, PCA and normalisation fitted on training only.

    Args:
        train, test: FMRIResponses or paths of .npy/.h5 response files.
        train_images, test_images: As ``images`` of BrainImageDataset. Image paths are matched to the
            names of responses that name their images (:meth:`FMRIResponses.in_image_order`).
        rois: ROI name(s) to keep (union).
        pca_components: Reduce voxels to this many principal components of the averaged training data.
        **options: BrainImageDataset options (repetitions, random_repetitions, normalize, ...).
    """
    for name, value in (("train", train), ("test", test)):
        if not isinstance(value, (FMRIResponses, str, os.PathLike)):
            raise TypeError(
                f"fmri_datasets: {name} must be an FMRIResponses or the path of a response file, got "
                f"{type(value).__name__}"
            )
    check_int("fmri_datasets", "pca_components", pca_components, minimum=1, none=True)
    tr = train if isinstance(train, FMRIResponses) else load_fmri(train)
    te = test if isinstance(test, FMRIResponses) else load_fmri(test)
    tr, te = _by_name(tr, train_images), _by_name(te, test_images)  # before the PCA is fitted on them
    if rois is not None:
        tr, te = tr.select(rois), te.select(rois)
    if tr.data.shape[2] != te.data.shape[2]:
        raise ValueError(f"{te.source}: {te.data.shape[2]} voxels but {tr.source} has {tr.data.shape[2]}")
    if pca_components is not None:
        pca = ResponsePCA(pca_components).fit(tr)
        tr, te = pca.transform(tr), pca.transform(te)
    train_ds = BrainImageDataset(tr, train_images, **options)
    test_ds = BrainImageDataset(te, test_images, **{**options, "norm_stats": train_ds.norm_stats})
    return train_ds, test_ds


SplitMethod = Literal["numpy", "random_split"]
# Mixed into the seed (a numpy SeedSequence key), so that the split is not the same draw as anything
# else seeded with the run's seed.
_SPLIT_KEY = 1


def train_val_split(
    n: int, val_fraction: float = 0.1, seed: int = 0, *, method: SplitMethod = "numpy"
) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices of ``n`` items: a seeded random share ``val_fraction`` held out.

    Args:
        n: Number of items (e.g. training images).
        val_fraction: Share held out for validation, in [0, 1); 0 gives no validation items.
        seed: Seed of the draw; the same arguments give the same split on any machine.
        method: "numpy": ``round(val_fraction * n)`` items (halves up, at least 1 when
            ``val_fraction > 0``) from ``numpy.random.default_rng([seed, 1]).permutation(n)``, the split
            of fastalign's recipes. "random_split": the published AlignVis split (train_brain_clip.py
            ``return_dataloaders``): ``torch.utils.data.random_split(range(n), [1 - val_fraction,
            val_fraction], generator=torch.Generator().manual_seed(seed))``, the same items (its rule:
            ``floor`` of each share, the remainder spread from the first).

    Returns:
        Two sorted int64 arrays, disjoint, together ``0..n-1``.

    Raises:
        TypeError, ValueError: ``n`` not an int >= 1, ``val_fraction`` outside [0, 1), a bad seed or
            method, or a split that leaves no training item, or (``val_fraction > 0``) no validation item.
    """
    fn = "train_val_split"
    n = check_int(fn, "n", n, minimum=1)
    frac = check_real(fn, "val_fraction", val_fraction)
    if not 0 <= frac < 1:
        raise ValueError(message(fn, "val_fraction", "a number in [0, 1)", val_fraction))
    check_seed(fn, seed, none=False)
    check_choice(fn, "method", method, ("numpy", "random_split"))
    if frac == 0:
        return np.arange(n), np.zeros(0, dtype=np.int64)
    if method == "numpy":
        n_val = max(1, int(np.floor(frac * n + 0.5)))
        order = np.random.default_rng([seed, _SPLIT_KEY]).permutation(n)
        train, val = order[n_val:], order[:n_val]
    else:
        with warnings.catch_warnings():  # an empty share is refused below, with the arguments named
            warnings.simplefilter("ignore", UserWarning)
            parts: list[Any] = torch.utils.data.random_split(
                range(n),  # type: ignore[arg-type]  # only its length matters, as for the published Dataset
                [1 - frac, frac],
                generator=torch.Generator().manual_seed(seed),
            )
        train, val = (np.asarray(p.indices, dtype=np.int64) for p in parts)
    if len(train) == 0 or len(val) == 0:
        raise ValueError(
            f"{fn}: val_fraction={val_fraction} of n={n} items leaves {len(train)} for training and "
            f"{len(val)} for validation (method {method!r}); expected at least one of each"
        )
    return np.sort(train).astype(np.int64), np.sort(val).astype(np.int64)
