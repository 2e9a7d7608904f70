"""NICE decoding: training steps of fastalign's fit loop against the published AlignVis loop rebuilt.

One training epoch of NICE at the published size (16,540 training images x 63 channels x 250 samples,
4 repetitions per image, batch 128, embedding size 768, AdamW lr 2e-4, weight decay 0.1, gradients
clipped to norm 1), on the same data and from the same initial weights:

- ``published``: NonaRjb/AlignVis rebuilt faithfully. The data are THINGS-EEG2's preprocessed training
  file, (images, repetitions, channels, times) float32, opened with ``np.load(..., mmap_mode='r')`` as
  src/dataset/things_eeg_2.py does, and one .npy per image embedding (``<file>_<img_encoder>.npy`` under
  image_embeddings/training_images/<concept>/). ``ThingsEEG2.__getitem__`` runs per item: copy the
  item's repetitions, ``(x - mean_t) / ||x||_2`` per repetition and channel in numpy, ``np.load`` the
  image's embedding file, average the repetitions; a ``DataLoader`` (shuffle, drop_last,
  ``random_split`` 0.9 / 0.1, as train_brain_clip.py's ``return_dataloaders`` with ``--separate_test``)
  collates 128 of them. The model is the published ``NICE`` (src/brain_architectures/nice.py:
  PatchEmbedding, FlattenHead, Proj_eeg with its in-place ResidualAdd) inside ``BrainEncoder``
  (src/models/brain_encoder.py: the ``projector.2`` output, flattened, then ``repr_layer``; the
  published torchvision ``create_feature_extractor`` graph runs these same operations). The step is
  ``BimodalTrainer.train``'s (src/training/trainer.py): zero_grad, autocast, both sides mean-centred and
  L2-normalised, ``CLIPLoss`` (two logit matmuls and two cross-entropies, src/training/training_utils.py),
  ``loss.item()``, GradScaler, ``clip_grad_norm_(1.0)``, AdamW over the encoder's parameters. The trainer
  hard-codes ``mixed_precision=True``: its autocast runs on every device, which on a CPU means bf16
  (``published`` row, "as written"); ``published-fp32`` is the same loop with autocast off, the same
  arithmetic as fastalign's fp32 step. The GradScaler is the CUDA one: torch disables it on a CPU.
- ``fastalign``: :func:`fastalign.train.fit` called as :func:`fastalign.train.decode` calls it (its
  ``Decoder``, step, AdamW groups, cosine schedule, clip 1.0, ``drop_last=True``, the training images of
  ``train_val_split(method="random_split")``: the published split, the same images), in fp32
  (``amp="fp32"``), the arithmetic of ``published-fp32``: the like-for-like row. decode's default
  ``amp="auto"`` is ``fastalign-auto``, a row of its own where it chooses another precision (bf16 where
  the device computes it natively). The data are one in-memory tensor per split, normalised
  (``channel_l2``) and averaged once by :class:`~fastalign.data.BrainImageDataset` (the "data
  preparation" row, once per run, not per epoch), the image embeddings one normalised matrix; the loss
  is the fused :func:`~fastalign.contrastive.infonce_loss`; the encoder is fastalign's ``NICE``.

Before timing, both compute the loss on the same batch (the same 128 images) from the same weights in
fp32 with the same dropout masks, which must agree to 1e-5 (``meta.equal_losses``; the published loop's
own autocast loss is shown beside it), and their gradients are compared (``meta.equal_gradients``).
Every timed variant is also checked in its own precision against the published step in float64
(:func:`check_precisions`, ``meta.checks``, harness.check_errors' rule), and each timed loop's training
loss must be finite after its warm-up step and after the rounds (``meta.loop_losses``). The checks are
looked at after the warm-up step, before the timed rounds: a failed one ends the script there with status
1 (a wrong result fails in seconds, not after the rounds); after the rounds they are looked at again with
the loops' last losses, and a failure then writes no result file either (:func:`failures`).

On a CPU an epoch (116 steps of either loop) takes far too long for repeated rounds, so each round times a
fixed number of steps per variant (``--steps``; ``--steps 0``: whole epochs, the default on CUDA): the
published DataLoader's iterator is created in the round (an epoch's start), fit trains one epoch over
that many batches. Rounds are interleaved (each round runs every variant once, in a rotating order, so
all see the same machine load); per-step times are round time / steps, "x published" is the median of
the per-round ratios, and an epoch's time is given only where whole epochs were timed (never scaled
from steps). fastalign's time is fit's own ``epoch_time`` (its training loop: the DataLoader over
the tensors and the steps), without the checkpoint that fit writes after each epoch; the published
time is its loop alone, without its per-epoch validation and state copy.

The published files (4.2 GB at the published size) go to a temporary folder deleted at the end, or to
``--data-dir``, where they are kept and reused.

    flock /tmp/fastalign-bench.lock python benchmarks/bench_decode.py    # writes results/decode-*.json
    python benchmarks/bench_decode.py --quick     # a smoke run: 1,024 images, 2 rounds of 1 step
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset, default_collate

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness

from fastalign.cli.common import nonnegative_int, positive_int
from fastalign.data import BrainImageDataset, normalize_embeddings, train_val_split
from fastalign.models.encoders import brain_encoder
from fastalign.train import fit

# decode's own model, step and optimiser groups, so that the timed loop is the recipe's, not a copy of it
from fastalign.train.decoding import PUBLISHED_TEMPERATURE, Decoder, _optimizer, _step
from fastalign.train.precision import Precision, resolve_amp

NAME = "decode"
N_IMAGES, N_REPS, N_CHANNELS, N_TIMES = 16540, 4, 63, 250
N_CONCEPTS = 1654
BATCH, EMBED_DIM, LR, WEIGHT_DECAY, EPOCHS = 128, 768, 2e-4, 0.1, 50
VAL_FRACTION = 0.1
IMG_ENCODER = "dreamsim_clip_vitb32_768"  # the published file-name tag of a 768-d image model
TOLERANCE = 1e-5
SEED = 42
COLUMNS = [
    ["impl", "implementation"],
    ["precision", "precision"],
    ["data", "data"],
    ["loss", "loss"],
    ["steps", "steps x rounds"],
    ["median_ms", "median ms/step"],
    ["p20_ms", "p20 ms/step"],
    ["p80_ms", "p80 ms/step"],
    ["best_ms", "best ms/step"],
    ["samples_per_s", "samples/s"],
    ["speedup", "x published"],
    ["speedup_fp32", "x published-fp32"],
    ["epoch_s", "epoch s"],
    ["epoch_how", "epoch"],
    ["peak_mem_mb", "peak MB"],
    ["data_mb", "data MB"],
    ["max_rel_err", "max rel err vs f64"],
    ["equal", "equal"],
    ["status", "status"],
]


# ------------------------------------------------------------------------------------ published model


class PatchEmbedding(nn.Module):
    """nice.py's PatchEmbedding: tsconv, then a 1x1 projection, flattened to (B, h * w, e)."""

    def __init__(self, emb_size: int = 40, n_channels: int = 63) -> None:
        super().__init__()
        self.tsconv = nn.Sequential(
            nn.Conv2d(1, 40, (1, 25), (1, 1)),
            nn.AvgPool2d((1, 51), (1, 5)),
            nn.BatchNorm2d(40),
            nn.ELU(),
            nn.Conv2d(40, 40, (n_channels, 1), (1, 1)),
            nn.BatchNorm2d(40),
            nn.ELU(),
            nn.Dropout(0.5),
        )
        self.projection = nn.Sequential(nn.Conv2d(40, emb_size, (1, 1), stride=(1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.projection(self.tsconv(x))
        b, e, h, w = x.shape
        return x.permute(0, 2, 3, 1).reshape(b, h * w, e)


class ResidualAdd(nn.Module):
    """nice.py's ResidualAdd, with its in-place addition."""

    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = x
        x = self.fn(x)
        x += res
        return x


class FlattenHead(nn.Sequential):
    """nice.py's FlattenHead."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return x.contiguous().view(x.size(0), -1)


class PublishedNICE(nn.Module):
    """nice.py's NICE: ``encoder`` = Enc_eeg(PatchEmbedding, FlattenHead), ``projector`` = Proj_eeg."""

    def __init__(self, embedding_dim: int = 1440, proj_dim: int = 768, n_channels: int = 63) -> None:
        super().__init__()
        self.encoder = nn.Sequential(PatchEmbedding(40, n_channels), FlattenHead())
        self.projector = nn.Sequential(
            nn.Linear(embedding_dim, proj_dim),
            ResidualAdd(nn.Sequential(nn.GELU(), nn.Linear(proj_dim, proj_dim), nn.Dropout(0.5))),
            nn.LayerNorm(proj_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(x))


class PublishedBrainEncoder(nn.Module):
    """brain_encoder.py's BrainEncoder for ``backbone='nice'``: NICE's ``projector.2`` output, then
    ``repr_layer``; takes the published (B, 1, C, T) batches."""

    def __init__(self, n_channels: int, n_times: int, embed_dim: int) -> None:
        super().__init__()
        n_features = 40 * ((n_times - 25 + 1 - 51) // 5 + 1)
        self.brain_backbone = PublishedNICE(n_features, embed_dim, n_channels)
        self.repr_layer = nn.Linear(embed_dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.brain_backbone(x)
        return self.repr_layer(out.view(out.size(0), -1)).squeeze(dim=1)


class CLIPLoss(nn.Module):
    """training_utils.py's CLIPLoss: ``logit_scale`` is a parameter that no optimiser is given."""

    def __init__(self, temperature: float = 0.04) -> None:
        super().__init__()
        self.logit_scale = nn.Parameter(torch.ones([]) * torch.log(torch.tensor(1 / temperature)))

    def forward(self, z_i: torch.Tensor, z_j: torch.Tensor) -> torch.Tensor:
        z_i_logits = (z_i @ z_j.T) * torch.exp(self.logit_scale)
        z_j_logits = z_i_logits.T
        labels = torch.arange(z_i.shape[0], dtype=torch.long, device=z_i.device)
        return (F.cross_entropy(z_i_logits, labels) + F.cross_entropy(z_j_logits, labels)) / 2


# fastalign's NICE parameter and buffer prefixes -> the published BrainEncoder's (the same order).
_PUBLISHED_NAMES = {
    "encoder.conv.tsconv.": "brain_backbone.encoder.0.tsconv.",
    "encoder.conv.projection.": "brain_backbone.encoder.0.projection.0.",
    "encoder.head.linear.": "brain_backbone.projector.0.",
    "encoder.head.residual.1.": "brain_backbone.projector.1.fn.1.",
    "encoder.head.norm.": "brain_backbone.projector.2.",
    "encoder.head.out.": "repr_layer.",
}


def _published_name(name: str) -> str | None:
    for ours, theirs in _PUBLISHED_NAMES.items():
        if name.startswith(ours):
            return theirs + name[len(ours) :]
    return None  # the temperature, which the published optimiser never sees


def published_from(decoder: Decoder) -> PublishedBrainEncoder:
    """A PublishedBrainEncoder holding a copy of ``decoder``'s encoder weights and BatchNorm statistics."""
    enc = decoder.encoder
    pub = PublishedBrainEncoder(enc.n_channels, enc.n_times, enc.embed_dim)
    state = {_published_name(k): v for k, v in decoder.state_dict().items()}
    state.pop(None, None)
    pub.load_state_dict(state, strict=True)
    like = next(decoder.parameters())
    return pub.to(like.device)


# ------------------------------------------------------------------------------------ published data


def _concept(c: int) -> str:
    return f"{c + 1:05d}_concept{c + 1}"


def _image_file(i: int) -> str:
    return f"concept{i // (N_IMAGES // N_CONCEPTS) + 1}_{i % (N_IMAGES // N_CONCEPTS):02d}.jpg"


def make_data(root: str, n_images: int, embed_dim: int, seed: int = 0) -> dict[str, Any]:
    """The published files of one subject's training set with random values (reused when present).

    things_eeg_2/Preprocessed_data_250Hz/sub-01/preprocessed_eeg_training.npy (n, 4, 63, 250) float32,
    things_eeg_2/image_embeddings/image_metadata.npy and one ``<file>_<IMG_ENCODER>.npy`` (1, d) per image,
    and, for fastalign, the same embeddings as one (n, d) matrix (its embedding cache holds one file per
    model and image set).
    """
    base = os.path.join(root, "things_eeg_2")
    eeg_dir = os.path.join(base, "Preprocessed_data_250Hz", "sub-01")
    emb_dir = os.path.join(base, "image_embeddings")
    manifest_path = os.path.join(root, "manifest.json")
    manifest = {"n_images": n_images, "embed_dim": embed_dim, "seed": seed, "shape": [N_REPS, N_CHANNELS,
                N_TIMES], "img_encoder": IMG_ENCODER}  # fmt: skip
    if os.path.isfile(manifest_path):
        with open(manifest_path) as f:
            if json.load(f) == manifest:
                return manifest
    os.makedirs(eeg_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    eeg = np.lib.format.open_memmap(
        os.path.join(eeg_dir, "preprocessed_eeg_training.npy"), mode="w+", dtype=np.float32,
        shape=(n_images, N_REPS, N_CHANNELS, N_TIMES),
    )  # fmt: skip
    for start in range(0, n_images, 512):
        stop = min(start + 512, n_images)
        eeg[start:stop] = rng.standard_normal((stop - start, N_REPS, N_CHANNELS, N_TIMES), dtype=np.float32)
    eeg.flush()
    del eeg
    per_concept = N_IMAGES // N_CONCEPTS
    concepts = [_concept(i // per_concept) for i in range(n_images)]
    files = [_image_file(i) for i in range(n_images)]
    os.makedirs(emb_dir, exist_ok=True)
    np.save(
        os.path.join(emb_dir, "image_metadata.npy"),
        {"train_img_concepts": concepts, "train_img_files": files},
    )
    emb = rng.standard_normal((n_images, embed_dim), dtype=np.float32)
    for i in range(n_images):
        folder = os.path.join(emb_dir, "training_images", concepts[i])
        os.makedirs(folder, exist_ok=True)
        np.save(os.path.join(folder, files[i].replace(".jpg", f"_{IMG_ENCODER}.npy")), emb[i : i + 1])
    np.save(os.path.join(root, f"embeddings_{IMG_ENCODER}.npy"), emb)
    with open(manifest_path, "w") as f:
        json.dump(manifest, f)
    return manifest


class PublishedThingsEEG2(Dataset):
    """things_eeg_2.py's ThingsEEG2 for ``split='train'``, ``load_img='embedding'`` and one subject, without
    its prints, interpolation, windows and label variants (all off in the published decoding runs)."""

    def __init__(self, data_path: str, img_encoder: str = IMG_ENCODER) -> None:
        self.data_path = os.path.join(data_path, "things_eeg_2")
        self.img_encoder = img_encoder
        self.img_parent_dir = os.path.join(self.data_path, "image_embeddings")
        meta = np.load(os.path.join(self.img_parent_dir, "image_metadata.npy"), allow_pickle=True).item()
        self.img_concepts = meta["train_img_concepts"]
        self.img_files = meta["train_img_files"]
        eeg_path = os.path.join(
            self.data_path, "Preprocessed_data_250Hz", "sub-01", "preprocessed_eeg_training.npy"
        )
        self.eeg_data = np.load(eeg_path, allow_pickle=True, mmap_mode="r")
        self.labels_list = [int(c.split("_")[0]) - 1 for c in self.img_concepts]

    def __len__(self) -> int:
        return len(self.eeg_data)

    def __getitem__(self, item: int) -> tuple[tuple[torch.Tensor, torch.Tensor], int]:
        eeg = self.eeg_data[item].copy()
        if eeg.shape[0] > 1:
            eeg = np.expand_dims(eeg, axis=0)
        eeg = (eeg - np.mean(eeg, axis=-1, keepdims=True)) / np.linalg.norm(eeg, axis=-1, keepdims=True)
        img_idx = item % len(self.img_concepts)
        img_file = os.path.join(
            self.img_parent_dir, "training_images", self.img_concepts[img_idx],
            self.img_files[img_idx].replace(".jpg", f"_{self.img_encoder}.npy"),
        )  # fmt: skip
        pair = np.load(img_file)
        sample = (
            torch.from_numpy(np.mean(eeg, axis=1)).to(torch.float),
            torch.from_numpy(pair.squeeze()).to(torch.float),
        )
        return sample, self.labels_list[item]


def fastalign_data(root: str, n_images: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 63, 250) EEG and (n, d) image embeddings as decode holds them: BrainImageDataset's
    ``channel_l2`` normalisation and repetition average (a block of images at a time: it computes in
    float64, which for all 16,540 images at once would need 8 GB), and the normalised embedding matrix."""
    path = os.path.join(
        root, "things_eeg_2", "Preprocessed_data_250Hz", "sub-01", "preprocessed_eeg_training.npy"
    )
    eeg = np.load(path, mmap_mode="r")
    brain = torch.empty(n_images, N_CHANNELS, N_TIMES)
    for start in range(0, n_images, 1024):
        block = BrainImageDataset(eeg[start : start + 1024], normalize="channel_l2", flatten=False)
        brain[start : start + len(block)] = block.responses()
    images = normalize_embeddings(
        torch.from_numpy(np.load(os.path.join(root, f"embeddings_{IMG_ENCODER}.npy")))
    )
    return brain, images


# ------------------------------------------------------------------------------------ the two loops


def _autocast(device: str, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """The trainer's ``torch.autocast(device_type=..., enabled=self.mixed_precision)``: the device's
    default autocast dtype (CPU bf16, CUDA fp16)."""
    return torch.autocast(device_type=device.split(":")[0], enabled=enabled)


def published_loss(
    enc: nn.Module, clip: CLIPLoss, data: tuple[torch.Tensor, torch.Tensor], device: str, autocast: bool
) -> torch.Tensor:
    """BimodalTrainer.train's forward and loss for one batch."""
    eeg, image = data
    eeg, image = eeg.to(device, non_blocking=True), image.to(device, non_blocking=True)
    with _autocast(device, autocast):
        z_i = enc(eeg)
        z_j = image
        z_i = F.normalize(z_i - torch.mean(z_i, dim=-1, keepdim=True), p=2, dim=-1)
        z_j = F.normalize(z_j - torch.mean(z_j, dim=-1, keepdim=True), p=2, dim=-1)
        return clip(z_i, z_j)


@contextlib.contextmanager
def _published_backend(device: str) -> Iterator[None]:
    """seed_everything's cuDNN settings (deterministic, no benchmark) while the published loop runs."""
    if not device.startswith("cuda"):
        yield
        return
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


class PublishedLoop:
    """The published training loop over a DataLoader, ``steps`` batches per call (0: the whole epoch)."""

    def __init__(self, enc: nn.Module, loader: DataLoader, device: str, autocast: bool) -> None:
        self.enc, self.loader, self.device, self.autocast = enc, loader, device, autocast
        self.clip = CLIPLoss(PUBLISHED_TEMPERATURE).to("cuda" if device.startswith("cuda") else "cpu")
        self.opt = torch.optim.AdamW(enc.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        with warnings.catch_warnings():  # torch says that it disables the CUDA scaler on a CPU
            warnings.simplefilter("ignore")
            self.scaler = torch.amp.GradScaler("cuda", enabled=device.startswith("cuda"))
        self.last_loss = math.nan  # the last step's training loss (what ``failures`` checks)

    def __call__(self, steps: int) -> int:
        self.enc.train()
        done = 0
        with _published_backend(self.device):
            for data, _ in self.loader:
                self.opt.zero_grad()
                loss = published_loss(self.enc, self.clip, data, self.device, self.autocast)
                self.last_loss = loss.item()  # loss_epoch.append(loss.item())
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.opt)
                torch.nn.utils.clip_grad_norm_(self.enc.parameters(), 1.0)
                self.scaler.step(self.opt)
                self.scaler.update()
                done += 1
                if done == steps:
                    break
        return done


class FastalignLoop:
    """fit() as decode calls it: one epoch per call over ``steps`` batches of (image index, response) pairs,
    the step gathering each batch's embeddings from the training matrix."""

    def __init__(
        self,
        model: Decoder,
        index: torch.Tensor,
        brain: torch.Tensor,
        images: torch.Tensor,
        device: str,
        out: str,
        amp: str,
    ) -> None:
        self.model, self.index, self.brain, self.device, self.out = model, index, brain, device, out
        self.step = functools.partial(_step, images=images.to(device))
        self.amp = amp
        self.calls = 0
        self.last_loss = math.nan  # the last epoch's mean training loss (what ``failures`` checks)

    def __call__(self, steps: int) -> tuple[int, float]:
        """(steps run, fit's epoch_time in seconds)."""
        n = len(self.index) if steps == 0 else steps * BATCH
        start = (self.calls * n) % max(1, len(self.index) - n + 1)
        self.calls += 1
        index = self.index[start : start + n]
        result = fit(
            self.model, self.step, TensorDataset(index, self.brain[index]), None, out=self.out, epochs=1,
            batch_size=BATCH, seed=SEED, amp=self.amp, clip_grad_norm=1.0, drop_last=True,
            optimizer=functools.partial(_optimizer, lr=LR, weight_decay=WEIGHT_DECAY),
            scheduler=functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=EPOCHS),
            scheduler_interval="epoch", overwrite=True, progress=False, tensorboard=False,
            device=self.device, config={"benchmark": NAME},
        )  # fmt: skip
        self.last_loss = float(result.history[-1]["train_loss"])
        return n // BATCH, float(result.history[-1]["epoch_time"])  # drop_last, as decode


# ------------------------------------------------------------------------------------ checks


def check_equal(
    model: Decoder, pub: PublishedBrainEncoder, pub_ds: Dataset, brain: torch.Tensor, images: torch.Tensor,
    index: np.ndarray, device: str,
) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """Both losses on the same 128 images from the same weights in fp32, with the same dropout masks
    (the same seed before two forwards that draw them in the same order), and their gradients."""
    fp32 = contextlib.ExitStack()
    if device.startswith("cuda"):  # TF32 convolutions and matmuls would differ at 1e-3
        saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        fp32.callback(lambda: _restore_tf32(saved))
    with fp32:
        (eeg, image), _ = default_collate([pub_ds[int(i)] for i in index])
        clip = CLIPLoss(PUBLISHED_TEMPERATURE).to(device)
        model.train()
        pub.train()
        torch.manual_seed(7)
        published = published_loss(pub, clip, (eeg, image), device, autocast=False)
        published.backward()
        torch.manual_seed(7)
        ours, _ = _step(model, (torch.as_tensor(index), brain[index].to(device)), images=images.to(device))
        ours.backward()
        torch.manual_seed(7)
        with torch.no_grad():
            as_written = published_loss(copy.deepcopy(pub), clip, (eeg, image), device, autocast=True)
    p, o = published.item(), ours.item()
    losses = {
        "published_fp32": p, "fastalign": o, "abs_diff": abs(p - o), "tolerance": TOLERANCE,
        "equal": abs(p - o) <= TOLERANCE, "published_autocast": as_written.item(),
        "autocast_dtype": str(torch.get_autocast_dtype(device.split(":")[0])).replace("torch.", ""),
        "batch_images": [int(i) for i in index[:8]] + ["..."],
    }  # fmt: skip
    return losses, _grad_agreement(pub, model)


def _grad_agreement(pub: nn.Module, model: Decoder) -> dict[str, Any]:
    """Distance of the two gradients: over all parameters, and per parameter relative to the whole
    gradient's norm (the convolution biases before a BatchNorm have gradients that are rounding noise,
    as BatchNorm removes them, so their own norms are no scale). Clears the gradients."""
    g_pub = {k: v.grad.double() for k, v in pub.named_parameters()}
    g_ours = {_published_name(k): v.grad.double() for k, v in model.named_parameters()}
    g_ours.pop(None)
    assert g_pub.keys() == g_ours.keys(), sorted(g_pub.keys() ^ g_ours.keys())
    total = math.sqrt(sum(float(g.norm()) ** 2 for g in g_pub.values()))
    dist = {k: float((g - g_ours[k]).norm()) for k, g in g_pub.items()}
    worst = max(dist, key=dist.__getitem__)
    model.zero_grad(set_to_none=True)
    pub.zero_grad(set_to_none=True)
    return {
        "global_rel_l2": math.sqrt(sum(d * d for d in dist.values())) / total,
        "max_param_l2_over_global_norm": dist[worst] / total,
        "max_param": worst,
        "params": len(dist),
    }


def _restore_tf32(saved: tuple[bool, bool]) -> None:
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@contextlib.contextmanager
def _float32_dropout_masks() -> Iterator[None]:
    """F.dropout (nn.Dropout's, in both models) with its mask drawn in float32 whatever the input's dtype:
    the same seed then gives every computation of :func:`check_precisions` the same masks on any device
    (CUDA draws a float64 mask from other random numbers). At NICE's p = 0.5 the mask's values, 0 and 2,
    multiply exactly in every dtype."""
    original = F.dropout

    def dropout(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Any:
        if not training or p == 0.0:
            return input
        return input * original(torch.ones_like(input, dtype=torch.float32), p, True).to(input.dtype)

    F.dropout = dropout  # type: ignore[assignment]
    try:
        yield
    finally:
        F.dropout = original


#: Conv biases followed (through the linear average pool) by a training-mode BatchNorm, which subtracts each
#: channel's batch mean: their exact gradient is 0 and any computed one rounding noise (float64: 1e-16 to
#: 6e-12; fp32 1e-7 times the largest gradient, bf16 more), so no scale to measure an error against.
_BEFORE_BATCHNORM = ("brain_backbone.encoder.0.tsconv.0.bias", "brain_backbone.encoder.0.tsconv.4.bias")


def _flat_grads(named: Iterator[tuple[str | None, nn.Parameter]]) -> torch.Tensor:
    """The gradients of the published encoder's parameters (keyed by published names) but the biases of
    _BEFORE_BATCHNORM, in name order, as one float64 vector."""
    grads = {k: p.grad for k, p in named if k is not None and k not in _BEFORE_BATCHNORM}
    missing = [k for k, g in grads.items() if g is None]
    if missing:
        raise RuntimeError(f"no gradient to check: {missing}")
    return torch.cat([grads[k].detach().flatten().double() for k in sorted(grads)])  # type: ignore[union-attr]


def check_dtype(precision: str, device: str) -> str:
    """The harness tolerance (harness.CHECK_BOUND key) of a variant computing in ``precision`` ("fp32",
    "bf16", "fp16"); fp32 on a GPU whose cuDNN convolutions may use TF32 (torch's default) is held to
    float16's, as TF32 keeps fp16's 10-bit mantissa."""
    if precision == "fp32" and device.startswith("cuda") and torch.backends.cudnn.allow_tf32:
        return "float16"
    return {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[precision]


def check_precisions(
    model: Decoder, pub_ds: Dataset, brain: torch.Tensor, images: torch.Tensor, index: np.ndarray,
    device: str, ours: dict[str, Precision],
) -> dict[str, Any]:  # fmt: skip
    """Every timed variant's loss and gradient in the precision it is timed in, on the same 128 images from
    the same weights, against the published step in float64 (the same dropout masks throughout:
    :func:`_float32_dropout_masks`).

    The published loop is the baseline: ``published-fp32`` within harness.CHECK_BOUND of float32,
    ``published`` (its autocast) within that of its dtype; fastalign in a dtype within twice the
    published loop's error in that dtype plus CHECK_FLOOR (CHECK_BOUND where the published loop runs
    none). Errors: the loss's relative to |float64 loss|, the gradient's (all encoder parameters but the
    biases of _BEFORE_BATCHNORM) max |difference| relative to the float64 gradient's largest magnitude, held
    in fp32 only, and its 2-norm's relative to the float64 norm (see :func:`_check`).

    Args:
        ours: the fastalign variants' names and precisions.
    """
    (eeg, image), _ = default_collate([pub_ds[int(i)] for i in index])
    batch = (torch.as_tensor(index), brain[index].to(device))
    device_images = images.to(device)

    def published(autocast: bool, double: bool = False) -> dict[str, torch.Tensor]:
        pub = published_from(model).train()
        clip = CLIPLoss(PUBLISHED_TEMPERATURE).to(device)
        data = (eeg, image)
        if double:
            pub, clip, data = pub.double(), clip.double(), (eeg.double(), image.double())
        torch.manual_seed(7)
        loss = published_loss(pub, clip, data, device, autocast=autocast)
        loss.backward()
        return _outputs(loss, _flat_grads(pub.named_parameters()))

    def fastalign(precision: Precision) -> dict[str, torch.Tensor]:
        ours_model = copy.deepcopy(model).train()
        torch.manual_seed(7)
        with precision.autocast():
            loss, _ = _step(ours_model, batch, images=device_images)
        loss.backward()
        named = ((_published_name(k), p) for k, p in ours_model.named_parameters())
        return _outputs(loss, _flat_grads(named))

    autocast_dtype = str(torch.get_autocast_dtype(device.split(":")[0])).replace("torch.", "")
    with _float32_dropout_masks():
        ref = published(autocast=False, double=True)
        got = {"published": published(autocast=True), "published-fp32": published(autocast=False)}
        got.update({name: fastalign(precision) for name, precision in ours.items()})
    dtypes = {"published": check_dtype(_PRECISION[autocast_dtype], device),
              "published-fp32": check_dtype("fp32", device),
              **{name: check_dtype(precision.mode, device) for name, precision in ours.items()}}  # fmt: skip
    checks: dict[str, Any] = {}
    for name in ("published", "published-fp32"):
        checks[name] = _check(got[name], ref, dtypes[name], None)
    for name in ours:
        base = next((checks[b] for b in ("published-fp32", "published") if dtypes[b] == dtypes[name]), None)
        checks[name] = _check(got[name], ref, dtypes[name], None if base is None else base["rel_err"])
    for check in checks.values():
        check["rel_err"].update(check.pop("unheld"))  # every error in one place; "limit" says which held
    return checks


_PRECISION = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def _outputs(loss: torch.Tensor, grad: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"loss": loss.detach(), "grad_norm": torch.linalg.vector_norm(grad), "grad": grad}


def _check(
    got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], dtype: str, baseline: dict[str, float] | None
) -> dict[str, Any]:
    """harness.check_errors on the loss, the gradient's norm and, in fp32, the gradient itself; a half
    precision's gradient error is recorded (``unheld``), not held to a limit: bf16 autocast puts even the
    published step's gradients 6-11% of their largest magnitude from float64's (2-core CPU, 128 images)."""
    diffs = harness.max_abs_diffs(got, ref)
    rel = {k: diffs[k] / max(float(ref[k].abs().max()), 1e-300) for k in ref}
    held = ("loss", "grad_norm", "grad") if dtype == "float32" else ("loss", "grad_norm")
    result = harness.check_errors({k: rel[k] for k in held}, dtype, baseline)
    return {"reference": "published step in float64", "tolerance": dtype, "max_abs_diff": diffs,
            **result, "unheld": {k: v for k, v in rel.items() if k not in held}}  # fmt: skip


def failures(meta: dict[str, Any]) -> list[str]:
    """Every failed check of ``meta``, one message each: the two fp32 losses' agreement
    (``equal_losses``), each variant against float64 (``checks``) and each timed loop's last training
    loss, which must be finite (``loop_losses``: after the warm-up step, and after the rounds)."""
    out = []
    if not meta["equal_losses"]["equal"]:
        out.append(f"LOSSES DIFFER by more than {TOLERANCE}: {meta['equal_losses']}")
    out += [
        f"RESULTS DIFFER from float64 beyond the limit: {name}: {check}"
        for name, check in meta["checks"].items()
        if not check["equal"]
    ]
    for when, losses in meta["loop_losses"].items():
        bad = {name: loss for name, loss in losses.items() if not math.isfinite(loss)}
        if bad:
            out.append(f"TRAINING LOSS NOT FINITE after the {when}: {bad}")
    return out


# ------------------------------------------------------------------------------------ timing


def _eeg_file(root: str) -> str:
    return os.path.join(
        root, "things_eeg_2", "Preprocessed_data_250Hz", "sub-01", "preprocessed_eeg_training.npy"
    )


def _ratios(base: list[float], times: list[float]) -> list[float]:
    return [b / t for b, t in zip(base, times, strict=True)]


def _row(
    name: str, precision: str, times: list[float], peak: list[float], base: list[list[float]], args: Any
) -> dict[str, Any]:
    """One timed variant's row: per-step times over rounds, ratios to both published loops, the epoch
    (where whole epochs were timed)."""
    published = name.startswith("published")
    lo, hi = harness.spread(times)
    med = statistics.median(times)
    steps = args.epoch_steps[name]
    return {
        "impl": name,
        "precision": precision,
        "data": (
            f"per-item Dataset (mmap .npy + one .npy per image) + DataLoader, {args.workers} workers"
            if published
            else "in-memory tensors (TensorDataset)"
        ),
        "loss": "two-matmul CLIP" if published else "fused infonce_loss",
        "steps": f"{args.steps or steps} x {args.rounds}",
        "median_ms": med,
        "p20_ms": lo,
        "p80_ms": hi,
        "best_ms": min(times),
        "times_ms": times,
        "samples_per_s": BATCH / (med * 1e-3),
        "speedup": statistics.median(_ratios(base[0], times)),
        "speedup_range": [min(_ratios(base[0], times)), max(_ratios(base[0], times))],
        "speedup_fp32": statistics.median(_ratios(base[1], times)),
        "speedup_fp32_range": [min(_ratios(base[1], times)), max(_ratios(base[1], times))],
        "epoch_steps": steps,
        # an epoch's time only where whole epochs were timed: never a step time scaled
        "epoch_s": med * 1e-3 * steps if args.steps == 0 else None,
        "epoch_how": f"measured: {steps} steps" if args.steps == 0 else "not timed (--steps 0 times epochs)",
        "peak_mem_mb": max(peak),
        "data_mb": args.data_mb["published" if published else "fastalign"],
        "status": "ok",
    }


def _rounds(
    variants: list[tuple[str, str, Callable[[int], Any]]], args: Any
) -> tuple[list[list[float]], ...]:
    """Per-variant ms/step and peak MB over interleaved rounds, each round in a rotated order."""
    step_ms: list[list[float]] = [[] for _ in variants]
    peaks: list[list[float]] = [[] for _ in variants]
    for r in range(args.rounds):
        for i in [(r + k) % len(variants) for k in range(len(variants))]:
            measured: dict[str, float] = {}

            def timed(fn: Callable[[int], Any] = variants[i][2], into: dict[str, float] = measured) -> None:
                start = time.perf_counter()
                out = fn(args.steps)
                steps, seconds = out if isinstance(out, tuple) else (out, time.perf_counter() - start)
                into.update(steps=steps, seconds=seconds)

            peaks[i].append(harness.peak_memory_bytes(timed, args.device) / 2**20)
            step_ms[i].append(1e3 * measured["seconds"] / measured["steps"])
        print(f"round {r + 1}/{args.rounds} ms/step:", [f"{t[-1]:.0f}" for t in step_ms], flush=True)
    return step_ms, peaks


def _last_losses(variants: list[tuple[str, str, Any]]) -> dict[str, float]:
    """Each timed loop's (PublishedLoop's, FastalignLoop's) last training loss."""
    return {name: float(loop.last_loss) for name, _, loop in variants}


def bench(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    device = args.device
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    make_data(args.data_dir, args.n_images, args.embed_dim)
    seconds["make_data"] = time.perf_counter() - t0

    pub_ds = PublishedThingsEEG2(args.data_dir)
    g = torch.Generator().manual_seed(SEED)
    pub_train, _ = torch.utils.data.random_split(pub_ds, [1 - VAL_FRACTION, VAL_FRACTION], generator=g)
    loader = DataLoader(
        pub_train, batch_size=BATCH, shuffle=True, drop_last=True, num_workers=args.workers,
        pin_memory=device.startswith("cuda"), generator=g,
    )  # fmt: skip

    t0 = time.perf_counter()
    brain, images = fastalign_data(args.data_dir, args.n_images)
    prep_s = seconds["fastalign_data_preparation"] = time.perf_counter() - t0

    torch.manual_seed(SEED)
    model = Decoder(brain_encoder("nice", N_CHANNELS, N_TIMES, args.embed_dim), PUBLISHED_TEMPERATURE, True)
    model.to(device)
    # the first 128 images of the published training split, for both (indices into the whole image set)
    index = np.asarray(pub_train.indices[:BATCH])
    losses, grads = check_equal(model, published_from(model), pub_ds, brain, images, index, device)
    print("equal losses:", losses, flush=True)
    print("gradients:", grads, flush=True)

    # decode's split (the published random_split, the same images as pub_train) and its drop_last
    tr = torch.as_tensor(train_val_split(args.n_images, VAL_FRACTION, SEED, method="random_split")[0])
    assert sorted(pub_train.indices) == tr.tolist(), "decode's split is not the published one"
    precision = resolve_amp("auto", torch.device(device))
    # the headline row computes as published-fp32 does; amp="auto" (decode's default) gets its own row
    # where it chooses another precision (bf16 on a CPU or GPU that computes it natively)
    ours = {"fastalign": resolve_amp("fp32", torch.device(device))}
    if precision.mode != "fp32":
        ours["fastalign-auto"] = precision
    checks = check_precisions(model, pub_ds, brain, images, index, device, ours)
    for name, check in checks.items():
        print(f"{name} vs float64:", check["rel_err"], "limit", check["limit"], flush=True)
    args.epoch_steps = {"published": len(loader), "published-fp32": len(loader)}
    args.epoch_steps.update(dict.fromkeys(ours, len(tr) // BATCH))
    args.data_mb = {
        "published": os.path.getsize(_eeg_file(args.data_dir)) / 2**20,
        "fastalign": (brain.numel() * brain.element_size() + images.numel() * images.element_size()) / 2**20,
    }
    autocast = str(torch.get_autocast_dtype(device.split(":")[0])).replace("torch.", "")
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp:
        variants: list[tuple[str, str, Callable[[int], Any]]] = [
            ("published", f"{autocast} autocast", PublishedLoop(published_from(model), loader, device, True)),
            ("published-fp32", "fp32", PublishedLoop(published_from(model), loader, device, False)),
        ]
        for name, prec in ours.items():
            amp = "auto" if name == "fastalign-auto" else prec.mode
            label = prec.mode if prec.mode == "fp32" else f"{prec.mode} autocast (amp='auto')"
            loop = FastalignLoop(
                copy.deepcopy(model), tr, brain, images, device, os.path.join(tmp, name), amp
            )
            variants.append((name, label, loop))
        for name, _, fn in variants:  # oneDNN primitives, allocator, AdamW state
            t0 = time.perf_counter()
            fn(1)
            print(f"warmed up {name} ({time.perf_counter() - t0:.1f} s)", flush=True)
        checked: dict[str, Any] = {"equal_losses": losses, "equal_gradients": grads, "checks": checks}
        checked["loop_losses"] = {"warm-up step": _last_losses(variants)}
        if failures(checked):  # a wrong result ends the run here, not after minutes (hours) of rounds
            return [], {**checked, "seconds": seconds, "timed": "no: a check failed before the rounds"}
        t0 = time.perf_counter()
        step_ms, peaks = _rounds(variants, args)
        seconds["rounds"] = time.perf_counter() - t0
        checked["loop_losses"]["rounds"] = _last_losses(variants)

    rows = [
        {**_row(name, prec, times, peak, step_ms, args), "rel_err": checks[name]["rel_err"],
         "max_rel_err": max(checks[name]["rel_err"][k] for k in checks[name]["limit"]),
         "equal": checks[name]["equal"]}
        for (name, prec, _), times, peak in zip(variants, step_ms, peaks, strict=True)
    ]  # fmt: skip
    for row in rows:
        print({k: row[k] for k in ("impl", "precision", "median_ms", "speedup", "speedup_fp32", "epoch_s")})
    rows.append(
        {
            "impl": "fastalign",
            "precision": "fp64 -> fp32",
            "data": "data preparation, once per run: channel_l2 + repetition average (BrainImageDataset), "
            "embeddings normalised",
            "loss": "-",
            "steps": "-",
            "epoch_s": prep_s,
            "epoch_how": "measured, once per run (not per epoch)",
            "data_mb": args.data_mb["fastalign"],
            "status": "ok",
        }
    )
    meta = {
        **checked,
        "check_tolerance": (
            "each variant's loss and gradient (all encoder parameters but the two conv biases before a "
            "BatchNorm, whose exact gradient is 0) in its timed precision, same 128 images, weights and "
            "dropout masks, against the published step in float64; the loss's error relative to |loss|, "
            "the gradient norm's relative to its norm, the gradient's max |difference| relative to its "
            "largest magnitude (held in fp32 only: bf16 autocast puts the published gradients 6-11% off); "
            "published loop within CHECK_BOUND of its dtype, fastalign within 2 x the published loop's "
            "error in the same dtype + CHECK_FLOOR (CHECK_BOUND where it has none); fp32 on a GPU with "
            f"cuDNN TF32 allowed: float16's; CHECK_BOUND {harness.CHECK_BOUND}, CHECK_FLOOR "
            f"{harness.CHECK_FLOOR}"
        ),
        "precision_fastalign": {name: prec.reason for name, prec in ours.items()},
        "seconds": seconds,
    }
    return rows, meta


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--quick", action="store_true", help="smoke run: 1,024 images, 2 rounds of 1 step, no file"
    )
    p.add_argument(
        "--n-images", type=positive_int, default=None, help=f"training images (default {N_IMAGES})"
    )
    p.add_argument("--embed-dim", type=positive_int, default=EMBED_DIM)
    p.add_argument("--steps", type=nonnegative_int, default=None, help="steps per variant per round; 0: "
                   "whole epochs (default: CPU 2, CUDA 0)")  # fmt: skip
    p.add_argument(
        "--rounds", type=positive_int, default=None, help="interleaved rounds (default 5, --quick 2)"
    )
    p.add_argument("--workers", type=nonnegative_int, default=None, help="published DataLoader workers "
                   "(default: CUDA 4, the published --n_workers; CPU 0)")  # fmt: skip
    p.add_argument("--data-dir", default=None, help="where the published files are written, kept and reused "
                   "when they match (--quick: DIR-quick); default: a temporary folder deleted at the end "
                   "(4.2 GB at the published size)")  # fmt: skip
    p.add_argument("--name", default=NAME, help="result file results/NAME-DEVICE.json")
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.n_images = args.n_images or (1024 if args.quick else N_IMAGES)
    keep_data = args.data_dir is not None
    if not keep_data:
        args.data_dir = tempfile.mkdtemp(prefix="fastalign-bench-decode-")
    elif args.quick:
        args.data_dir += "-quick"
    args.steps = (1 if args.quick else 0 if cuda else 2) if args.steps is None else args.steps
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.workers = (4 if cuda else 0) if args.workers is None else args.workers
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    try:
        rows, meta = bench(args)
    finally:
        if not keep_data:
            shutil.rmtree(args.data_dir, ignore_errors=True)
    meta = {
        "columns": COLUMNS,
        "what": (
            f"NICE training steps at {args.n_images} x {N_CHANNELS} x {N_TIMES} ({N_REPS} repetitions), "
            f"batch {BATCH}, d {args.embed_dim}, AdamW lr {LR:g} wd {WEIGHT_DECAY:g}, clip 1.0; published = "
            "AlignVis's per-item ThingsEEG2 Dataset + DataLoader, NICE in BrainEncoder, BimodalTrainer's "
            "step with its autocast (as written) or without (fp32), CLIPLoss; fastalign = fit as decode "
            "calls it"
        ),
        "timing": (
            f"{args.rounds} interleaved rounds (rotating order), {args.steps or 'an epoch of'} steps per "
            "variant per round; ms/step = round time / steps (fastalign: fit's epoch_time); x published = "
            "median of per-round ratios (range in speedup_range)"
        ),
        "memory": (
            "peak MB: growth of the main process's peak resident set over a timed round (CUDA: "
            "max_memory_allocated growth); data MB: the data each loop reads (published: the "
            "4-repetition file, memory-mapped; fastalign: the averaged tensors it holds)"
        ),
        "workers": args.workers,
        "data_dir": args.data_dir if keep_data else "a temporary folder, deleted at the end",
        "load_average_at_start": load_start,
        "load_average_at_end": os.getloadavg(),
        "wall_s": time.perf_counter() - t0,
        **meta,
    }
    print("load average start/end:", load_start, meta["load_average_at_end"], f"wall {meta['wall_s']:.0f} s")
    failed = failures(meta)  # bench looked before the rounds too, and stopped there on a failure
    for line in failed:
        print(line, file=sys.stderr)
    if failed:
        return 1
    if args.quick:
        return 0
    print(f"wrote {harness.save(args.name, args.device, rows, meta)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
