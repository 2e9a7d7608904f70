"""ReAlnet (Lu, Wang & Golomb): CORnet-S plus an encoding head that predicts a person's brain response.

The head follows the published ``Encoder`` of ZitongLu1996/ReAlnet: the V1, V2, V4 and IT block outputs
(last timestep) are each flattened without pooling, mapped by a Linear to ``width`` (128) features and a
ReLU, concatenated, and mapped by a Linear to the ``n_out`` values of the response (340 = 17 EEG channels x
20 samples for ReAlnet, 1024 for ReAlnet-fMRI). Differences from the published code: one forward runs the
backbone once and returns both outputs (the published ``Encoder`` runs it a second time, block by block,
for the head: the same outputs and gradients, but BatchNorm's running statistics are updated twice per
training step there, once here, so eval-mode outputs after training differ); the tapped areas, the width
and the image size are parameters; and weights are read without running code (safetensors, or
``torch.load(weights_only=True)``).

Published weights load in their own format (see :func:`realnet`); nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import stat
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from fastalign import _checks
from fastalign.models.cornet import CORnetS, clean_state_dict, cornet_s
from fastalign.models.cornet.model import area_shapes

#: The areas the head can tap, in network order (the order their features are concatenated in).
AREAS: tuple[str, ...] = ("V1", "V2", "V4", "IT")
EEG_N_OUT = 340  # 17 occipito-parietal channels x 20 samples (0-200 ms at 100 Hz), the published ReAlnet
FMRI_N_OUT = 1024  # the published ReAlnet-fMRI's response size
#: The file a run folder holds its model in.
WEIGHTS_FILE = "model.safetensors"
PUBLISHED_WEIGHTS_URL = "https://drive.google.com/drive/folders/1KEsN83nPwUanBgO6a37CUkuK9EBSWpCw"
CORNET_S_URL = "https://s3.amazonaws.com/cornet-models/cornet_s-1d3f7974.pth"

# The safetensors metadata entry that holds the model's configuration (JSON); other entries are the user's.
_CONFIG_KEY = "fastalign.realnet"
# The published Encoder's head layers -> the area each reads (its last Linear is ``fc``).
_PUBLISHED_HEAD = {"fc_v1": "V1", "fc_v2": "V2", "fc_v4": "V4", "fc_it": "IT"}
_WHERE_PUBLISHED = (
    f"the published ReAlnet and ReAlnet-fMRI weights (one encoder.pt per subject) are at "
    f"{PUBLISHED_WEIGHTS_URL} (linked from https://github.com/ZitongLu1996/ReAlnet); fastalign never "
    "downloads weights: download one and pass its path"
)

Weights = str | os.PathLike | Mapping[str, Any]


class BackboneOnlyError(ValueError):
    """Weights given as a whole ReAlnet that hold a CORnet-S without the encoding head (the published
    backbone-only ``realnet.pt``, an ImageNet CORnet-S): what to do instead depends on the caller (start a
    ReAlnet from them, evaluate or decode with them as a CORnet-S), so callers can tell this case apart.
    ``state_dict`` holds the weights as read (``module.`` prefixes removed), so that a caller taking them as
    a CORnet-S need not read the file again."""

    def __init__(self, message: str, state_dict: Mapping[str, torch.Tensor] | None = None) -> None:
        super().__init__(message)
        self.state_dict = state_dict


class ReAlnetOutput(NamedTuple):
    """What :meth:`ReAlnet.forward` returns; unpacks as ``logits, response = model(x)``.

    Attributes:
        logits: (B, num_classes) CORnet-S class logits (1000 ImageNet classes).
        response: (B, n_out) the predicted brain response.
    """

    logits: torch.Tensor
    response: torch.Tensor


def _check_positive_int(fn: str, name: str, value: Any) -> int:
    return _checks.check_int(fn, name, value, minimum=1, expected="a positive int")


def _check_areas(where: str, areas: Any) -> tuple[str, ...]:
    """``areas`` as a tuple: a non-empty selection of :data:`AREAS` in network order."""
    if isinstance(areas, str):
        areas = (areas,)
    if not isinstance(areas, Sequence) or not all(isinstance(a, str) for a in areas):
        raise TypeError(_checks.message(where, "areas", "a str or a sequence of str", areas))
    unknown = [a for a in areas if a not in AREAS]
    if unknown:
        raise ValueError(f"{where}: areas must be some of {list(AREAS)}, got unknown area(s) {unknown}")
    if len(areas) == 0:
        raise ValueError(f"{where}: areas must name at least one of {list(AREAS)}, got an empty sequence")
    ordered = tuple(a for a in AREAS if a in areas)
    if tuple(areas) != ordered:
        # Their order is the order of the features in the last Linear's input: no silent reordering.
        raise ValueError(
            f"{where}: areas must be distinct and in network order, got {tuple(areas)}; expected {ordered}"
        )
    return ordered


def _check_image_size(where: str, image_size: Any) -> tuple[int, int]:
    """``image_size`` (an int for square images, or (H, W)) as (H, W)."""
    if isinstance(image_size, (tuple, list)) and len(image_size) == 2:
        return (
            _check_positive_int(where, "image_size[0]", image_size[0]),
            _check_positive_int(where, "image_size[1]", image_size[1]),
        )
    if isinstance(image_size, bool) or not isinstance(image_size, int):
        raise TypeError(_checks.message(where, "image_size", "an int or (H, W)", image_size))
    size = _check_positive_int(where, "image_size", image_size)
    return size, size


def _tap_shapes(areas: tuple[str, ...], image_size: tuple[int, int]) -> dict[str, tuple[int, int, int]]:
    """The (C, h, w) of each area's block output for (H, W) images."""
    shapes = area_shapes(image_size)
    return {a: shapes[a] for a in areas}


class EncodingHead(nn.Module):
    """The published encoding head: per area Linear(C*h*w, width) + ReLU, concatenated, Linear to n_out.

    State-dict keys: ``proj.<area>.weight|bias`` (published ``fc_v1``/``fc_v2``/``fc_v4``/``fc_it``) and
    ``out.weight|bias`` (published ``fc``).
    """

    def __init__(
        self,
        in_features: Mapping[str, int],
        width: int,
        n_out: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.proj = nn.ModuleDict({a: nn.Linear(n, width, **kw) for a, n in in_features.items()})
        self.out = nn.Linear(len(in_features) * width, n_out, **kw)

    def forward(self, taps: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(B, n_out) response from each area's (B, C, h, w) block output."""
        # flatten(1) reads (C, h, w) in logical order whatever the memory format, as the published view(N, -1)
        hidden = [F.relu(proj(taps[area].flatten(1))) for area, proj in self.proj.items()]
        return self.out(torch.cat(hidden, dim=1))


class ReAlnet(nn.Module):
    """CORnet-S with an encoding head; one forward gives class logits and the predicted brain response.

    Args:
        n_out: Size of the response: 340 (EEG, the default) or 1024 (fMRI) in the published models.
        areas: Block outputs the head reads, a selection of ("V1", "V2", "V4", "IT") in that order.
        width: Features per area after its Linear + ReLU (128 published).
        image_size: Input size (an int for square images, or (H, W)); it fixes each area's flattened size,
            e.g. 200,704 / 100,352 / 50,176 / 25,088 at 224 px. Any input whose block outputs have the same
            shapes is accepted.
        backbone: A :class:`~fastalign.models.cornet.CORnetS` to use (e.g. ``cornet_s(weights=...)``);
            None builds a randomly initialised one.

    Attributes:
        backbone: The CORnet-S (state-dict keys ``backbone.<CORnet-S key>``).
        head: The :class:`EncodingHead` (keys ``head.proj.<area>.*``, ``head.out.*``).
        tap_shapes: Each tapped area's (C, h, w) at ``image_size``.
    """

    def __init__(
        self,
        n_out: int = EEG_N_OUT,
        *,
        areas: Sequence[str] = AREAS,
        width: int = 128,
        image_size: int | tuple[int, int] = 224,
        backbone: CORnetS | None = None,
    ) -> None:
        # every argument is checked before the 53 M-parameter backbone is built
        checked = (
            _check_positive_int("ReAlnet", "n_out", n_out),
            _check_areas("ReAlnet", areas),
            _check_positive_int("ReAlnet", "width", width),
            _check_image_size("ReAlnet", image_size),
        )
        if backbone is not None and not isinstance(backbone, CORnetS):
            raise TypeError(_checks.message("ReAlnet", "backbone", "a CORnetS or None", backbone))
        super().__init__()
        self.n_out, self.areas, self.width, self.image_size = checked
        self.backbone = CORnetS() if backbone is None else backbone
        self.tap_shapes = _tap_shapes(self.areas, self.image_size)
        like = next(self.backbone.parameters())
        self.head = EncodingHead(
            {a: math.prod(s) for a, s in self.tap_shapes.items()},
            self.width,
            self.n_out,
            device=like.device,
            dtype=like.dtype,
        )

    def config(self) -> dict[str, Any]:
        """The constructor's arguments as JSON-able values (saved beside the weights)."""
        return {
            "n_out": self.n_out,
            "areas": list(self.areas),
            "width": self.width,
            "image_size": list(self.image_size),
        }

    def forward(self, x: torch.Tensor) -> ReAlnetOutput:
        """Logits and response from one pass of the backbone.

        Args:
            x: (B, 3, H, W) normalised images (see
                :func:`fastalign.data.transforms.imagenet_transform`) whose block outputs have the shapes of
                ``image_size``.

        Returns:
            :class:`ReAlnetOutput` ``(logits (B, num_classes), response (B, n_out))``.
        """
        feats = self.backbone.features(x, layers=(*self.areas, "decoder"))
        logits = feats.pop("decoder")
        for area, tap in feats.items():
            if tuple(tap.shape[1:]) != self.tap_shapes[area]:
                h, w = self.image_size
                raise ValueError(
                    f"ReAlnet: x of size {x.shape[2]}x{x.shape[3]} gives {area} outputs of shape "
                    f"{tuple(tap.shape[1:])}, but the head was built for image_size {h}x{w} ({area} "
                    f"{self.tap_shapes[area]}); resize the images to {h}x{w}"
                )
        return ReAlnetOutput(logits, self.head(feats))

    def fuse_training(self, backend: str | None = "auto", convs: str | None = "auto") -> ReAlnet:
        """The backbone's fast training path: fused BatchNorm + add + ReLU tails and, on CPU, GEMM convs
        (see :meth:`CORnetS.fuse_training`); returns ``self``."""
        self.backbone.fuse_training(backend, convs)
        return self


# ---------------------------------------------------------------------------------------------- weights


def _read_weights(weights: Weights) -> tuple[Mapping[str, Any], dict[str, str], bool]:
    """(state dict as stored, safetensors metadata, whether its tensors are this call's own) from a
    mapping, a run folder or a file. They are not for a mapping (the caller holds them) nor for a
    safetensors file (they map it: a model built on them would keep it mapped, and die of SIGBUS if
    someone truncated it)."""
    if isinstance(weights, Mapping):
        return weights, {}, False
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(
            _checks.message("realnet", "weights", "None, a path or a state_dict mapping", weights)
        )
    path = Path(weights)
    name = os.fspath(path)
    if path.is_dir():
        folder, path = name, path / WEIGHTS_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"realnet: weights: the folder {folder!r} holds no {WEIGHTS_FILE} (a run folder of "
                f"`fastalign align` has one); {_WHERE_PUBLISHED}"
            )
        if (Path(folder) / "config.json").is_file() and not (Path(folder) / "summary.json").is_file():
            warnings.warn(
                f"realnet: weights: the run folder {folder!r} has no summary.json: its run has not "
                f"finished (stopped, or still training), so {WEIGHTS_FILE} is the best epoch so far, not "
                "the run's selected model; resume the run (--resume) to finish it",
                RuntimeWarning,
                stacklevel=3,
            )
    elif not path.is_file():
        raise FileNotFoundError(f"realnet: weights: no file or run folder at {name!r}; {_WHERE_PUBLISHED}")
    name = os.fspath(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(name, framework="pt", device="cpu") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {}), False
        except Exception as exc:
            raise ValueError(f"realnet: weights: could not read {name!r} as safetensors: {exc}") from exc
    try:
        # weights_only: a checkpoint is data; never run code from it.
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"realnet: weights: could not read {name!r} as a torch checkpoint: "
            f"{_checks.torch_load_failure(exc, name)}"
        ) from exc
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"realnet: weights: {name!r} holds a {type(ckpt).__name__}, expected a dict")
    return ckpt, {}, True


def _split_state_dict(ckpt: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(backbone, head) state dicts in our key names, from ours or the published Encoder's.

    Ours: ``backbone.*``, ``head.proj.<area>.*``, ``head.out.*``. Published (``torch.save(encoder.
    state_dict())``: best_model_params.pt, epoch<N>_model_params.pt, the released encoder.pt):
    ``realnet.module.<CORnet-S key>`` (CORnet-S inside DataParallel), ``fc_v1``/``fc_v2``/``fc_v4``/
    ``fc_it``/``fc``. Either may sit under ``"state_dict"``, or under ``"model"`` as in the fit loop's
    epoch checkpoints (a run folder's ``checkpoints/epoch-NNNN.pt``), and carry a whole-model ``module.``
    prefix.
    """
    sd = next((ckpt[k] for k in ("state_dict", "model") if isinstance(ckpt.get(k), Mapping)), ckpt)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"realnet: weights: entries that are not tensors: {bad}")
    bad = _checks.nonfinite_keys(sd)
    if bad:
        raise ValueError(
            f"realnet: weights hold NaN or inf in {len(bad)} tensor(s): {_checks.some_keys(bad)}"
        )
    backbone: dict[str, torch.Tensor] = {}
    head: dict[str, torch.Tensor] = {}
    styles: set[str] = set()
    unexpected = []
    for key, value in sd.items():
        first, _, rest = key.partition(".")
        if first in ("backbone", "head"):
            styles.add("fastalign")
            (backbone if first == "backbone" else head)[rest] = value
        elif first == "realnet":  # clean_state_dict strips the DataParallel "module." inside
            styles.add("published")
            backbone[rest] = value
        elif first in _PUBLISHED_HEAD or first == "fc":
            styles.add("published")
            head[f"proj.{_PUBLISHED_HEAD[first]}.{rest}" if first != "fc" else f"out.{rest}"] = value
        else:
            unexpected.append(key)
    if not styles and any(k.split(".")[0] in AREAS for k in sd):
        raise BackboneOnlyError(
            "realnet: weights hold a CORnet-S without the encoding head (e.g. the published realnet.pt); "
            "pass them as cornet_weights= to start from that backbone",
            sd,
        )
    if unexpected or len(styles) != 1:
        raise ValueError(
            "realnet: weights are neither a ReAlnet state_dict of fastalign (backbone.*, head.*) nor the "
            f"published Encoder's (realnet.module.*, fc_v1, fc_v2, fc_v4, fc_it, fc); key styles found: "
            f"{sorted(styles)}, unexpected keys: {_checks.some_keys(unexpected)}"
        )
    return backbone, head


def _infer_image_size(areas: tuple[str, ...], in_features: Mapping[str, int]) -> tuple[int, int] | None:
    """The largest square image size whose block outputs flatten to ``in_features``; None if none does.

    Each area downsamples by a fixed factor, so size s*factor is the largest giving an s x s output; the
    candidate is checked against the network itself.
    """
    reference = 224  # a multiple of every area's downsampling factor (32 for IT)
    ref = _tap_shapes(areas, (reference, reference))
    sides = {}
    for area in areas:
        channels = ref[area][0]
        sides[area] = math.isqrt(in_features[area] // channels)
        if channels * sides[area] ** 2 != in_features[area]:
            return None
    size = min(sides[a] * (reference // ref[a][1]) for a in areas)
    if size < 1:
        return None
    got = _tap_shapes(areas, (size, size))
    return (size, size) if all(math.prod(got[a]) == in_features[a] for a in areas) else None


def _head_config(
    head: Mapping[str, torch.Tensor], metadata: Mapping[str, str]
) -> tuple[dict[str, Any], dict[str, int]]:
    """(n_out, areas, width and, when known, image_size) of a head state dict, and each area's in_features."""
    out = head.get("out.weight")
    areas = tuple(a for a in AREAS if f"proj.{a}.weight" in head)
    if out is None or out.dim() != 2 or not areas or head[f"proj.{areas[0]}.weight"].dim() != 2:
        raise ValueError(
            "realnet: weights have no encoding head (2-D proj.<area>.weight and out.weight, published "
            f"fc_v1 ... fc); head keys found: {sorted(head)}"
        )
    in_features = {a: int(head[f"proj.{a}.weight"].shape[-1]) for a in areas}
    config: dict[str, Any] = {
        "n_out": int(out.shape[0]),
        "areas": areas,
        "width": int(head[f"proj.{areas[0]}.weight"].shape[0]),
    }
    if _CONFIG_KEY in metadata:
        try:
            config["image_size"] = tuple(json.loads(metadata[_CONFIG_KEY])["image_size"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"realnet: weights: unreadable {_CONFIG_KEY!r} metadata: {exc}") from exc
    else:
        inferred = _infer_image_size(areas, in_features)
        if inferred is not None:
            config["image_size"] = inferred
    return config, in_features


def _load(
    weights: Weights,
    n_out: int | None,
    areas: Sequence[str] | None,
    width: int | None,
    image_size: int | tuple[int, int] | None,
) -> ReAlnet:
    ckpt, metadata, own = _read_weights(weights)
    backbone_sd, head_sd = _split_state_dict(ckpt)
    found, in_features = _head_config(head_sd, metadata)
    given = {
        "n_out": None if n_out is None else _check_positive_int("realnet", "n_out", n_out),
        "areas": None if areas is None else _check_areas("realnet", areas),
        "width": None if width is None else _check_positive_int("realnet", "width", width),
    }
    for key, value in given.items():
        if value is not None and value != found[key]:
            raise ValueError(
                f"realnet: {key}={value!r} does not match the weights, which have {found[key]!r}"
            )
    if image_size is not None:
        size = _check_image_size("realnet", image_size)
    elif "image_size" in found:
        size = _check_image_size("realnet", found["image_size"])
    else:
        raise ValueError(
            f"realnet: cannot infer the image size from the head's in_features {in_features}; pass image_size"
        )
    expected = {a: math.prod(s) for a, s in _tap_shapes(found["areas"], size).items()}
    if expected != in_features:
        made_for = found.get("image_size")
        raise ValueError(
            f"realnet: image_size {size[0]}x{size[1]} gives head in_features {expected}, but the weights "
            f"have {in_features}"
            + (f" (they are for image_size {made_for[0]}x{made_for[1]})" if made_for else "")
        )
    # on the meta device: no random initialisation (101 M values at 224 px) that the weights overwrite
    with torch.device("meta"):
        model = ReAlnet(found["n_out"], areas=found["areas"], width=found["width"], image_size=size)
    state = {f"backbone.{k}": v for k, v in clean_state_dict(backbone_sd).items()}
    state.update((f"head.{k}", v) for k, v in head_sd.items())
    _assign(model, state, copy=not own)
    return model


def _assign(model: ReAlnet, state: dict[str, torch.Tensor], *, copy: bool) -> None:
    """Makes ``state``'s tensors ``model``'s parameters and buffers (``model`` is on the meta device).

    Each tensor is cast to the CPU and the dtype of the entry it fills, as copying into a CPU model would;
    ``copy`` clones them too, for tensors that are not this load's own (see :func:`_read_weights`).
    BatchNorm counters that old checkpoints lack start at 0, as in a new model.
    """
    own = model.state_dict()
    for key, like in own.items():
        if key not in state and key.endswith("num_batches_tracked"):
            state[key] = torch.zeros((), dtype=like.dtype)
    state = {k: v.detach().to("cpu", own[k].dtype, copy=copy) if k in own else v for k, v in state.items()}
    try:
        model.load_state_dict(state, assign=True)
    except RuntimeError as exc:
        why = " ".join(str(exc).split())  # torch's message spans lines
        raise ValueError(f"realnet: the weights do not fit a ReAlnet of {model.config()}: {why}") from exc


def realnet(
    weights: Weights | None = None,
    *,
    n_out: int | None = None,
    areas: Sequence[str] | None = None,
    width: int | None = None,
    image_size: int | tuple[int, int] | None = None,
    cornet_weights: Weights | None = None,
) -> ReAlnet:
    """A ReAlnet: new (random head, random or ImageNet CORnet-S) or loaded.

    Args:
        weights: None, or the whole model: a run folder holding ``model.safetensors``, a ``.safetensors``
            file (see :func:`save_realnet`), a run's epoch checkpoint (``checkpoints/epoch-NNNN.pt``; the
            image size is inferred as for published files), a published checkpoint (``encoder.pt``,
            ``best_model_params.pt``: ``torch.save(encoder.state_dict())`` of the published ``Encoder``,
            keys ``realnet.module.*`` and ``fc_v1``/``fc_v2``/``fc_v4``/``fc_it``/``fc``), or such a state
            dict in memory. Published weights are at the URL in :data:`PUBLISHED_WEIGHTS_URL`; nothing is
            downloaded. Files are read as safetensors or with ``torch.load(weights_only=True)``. The model
            is built on the meta device and takes the weights' tensors (cast to the CPU and float32; a
            state dict in memory is copied): nothing is initialised at random, the RNG is untouched.
        n_out: Response size (default 340, or the weights'); an error if it differs from the weights'.
        areas: Tapped areas (default all four, or the weights'); an error if they differ.
        width: Per-area width (default 128, or the weights'); an error if it differs.
        image_size: Input size (default 224, or the one saved with the weights, or the largest square size
            that fits the head's shapes); an error if the head's shapes do not fit it.
        cornet_weights: With ``weights=None``, the backbone's CORnet-S checkpoint in the original format
            (``cornet_s-1d3f7974.pth`` from :data:`CORNET_S_URL`, or the published backbone-only
            ``realnet.pt``), as :func:`~fastalign.models.cornet_s` takes it.

    Returns:
        The model, in eval mode when any weights were loaded, else in train mode.
    """
    if weights is not None:
        if cornet_weights is not None:
            raise ValueError(
                "realnet: pass weights (the whole model) or cornet_weights (the backbone only), not both"
            )
        return _load(weights, n_out, areas, width, image_size).eval()
    model = ReAlnet(
        EEG_N_OUT if n_out is None else n_out,
        areas=AREAS if areas is None else areas,
        width=128 if width is None else width,
        image_size=224 if image_size is None else image_size,
        backbone=None if cornet_weights is None else _cornet(cornet_weights),
    )
    return model if cornet_weights is None else model.eval()


def _cornet(cornet_weights: Weights) -> CORnetS:
    if isinstance(cornet_weights, (str, os.PathLike)) and not os.path.isfile(cornet_weights):
        raise FileNotFoundError(
            f"realnet: cornet_weights: no file at {os.fspath(cornet_weights)!r}; the original CORnet-S "
            f"checkpoint is {CORNET_S_URL} (fastalign never downloads weights: download it and pass its path)"
        )
    return cornet_s(weights=cornet_weights)


def save_realnet(
    model: ReAlnet, path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None
) -> Path:
    """Writes ``model``'s state dict as safetensors, atomically (a temporary file, then ``os.replace``).

    Args:
        model: The ReAlnet (unwrap DistributedDataParallel or torch.compile first: ``.module``,
            ``._orig_mod``).
        path: A run folder (created if needed; the file is ``<path>/model.safetensors``) or a file path
            ending in ``.safetensors``.
        metadata: Extra string entries for the file's header (e.g. epoch, commit); the model's
            configuration is stored beside them under ``"fastalign.realnet"``.

    Returns:
        The path of the written file; :func:`realnet` loads it (or its folder) back.
    """
    if not isinstance(model, ReAlnet):
        raise TypeError(
            _checks.message("save_realnet", "model", "a ReAlnet (unwrap DDP or torch.compile)", model)
        )
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, Mapping):
        raise TypeError(_checks.message("save_realnet", "metadata", "a mapping of str to str", metadata))
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str):
            # safetensors' header holds strings only: name the entry (json.dumps a structured value)
            raise TypeError(
                f"save_realnet: metadata must map str to str (safetensors stores strings), got {k!r}: "
                f"{v!r} ({type(k).__name__}: {type(v).__name__})"
            )
    if _CONFIG_KEY in metadata:
        raise ValueError(
            f"save_realnet: metadata key {_CONFIG_KEY!r} is reserved for the model's configuration"
        )
    from safetensors.torch import save_file

    target = Path(path)
    if target.suffix != ".safetensors":
        target = target / WEIGHTS_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp = str(target.parent / f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    mode = stat.S_IMODE(os.stat(tmp).st_mode)  # 0o666 less the umask, as every other output gets
    try:
        save_file(tensors, tmp, metadata={**metadata, _CONFIG_KEY: json.dumps(model.config())})
        os.chmod(tmp, mode)  # safetensors writes a file of its own, readable by its owner only
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())  # the bytes reach the disk before the name points at them
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return target
