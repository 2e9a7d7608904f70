"""The models of an evaluation and their activations at named layers, cached on disk.

A model is named by ``"cornet_s"`` (ImageNet weights given as ``weights=``, else randomly initialised
from the evaluation's seed), by a run folder of ``fastalign align`` (``model.safetensors`` and
``config.json``, whose ``config.subject`` and ``config.modality`` say to whom and to what it was
aligned), by a weights file of a ReAlnet, whole or its CORnet-S alone (the published
``weights/ReAlnet/sub-XX/encoder.pt`` and ``realnet.pt``: the subject from its ``sub-XX`` folder, the
modality from the response size or the folder above, or as ``NAME@sub-XX,eeg=FILE`` says; see
:meth:`EvalModel.from_weights`), or by an :class:`EvalModel`: any torch module with layer names, or
precomputed features.

Layers are tapped with forward hooks on submodules named by their path in ``named_modules()``
(``"V4"``, ``"backbone.IT"``, ``"head"``); CORnet-S and ReAlnet also take the area names ``V1``, ``V2``,
``V4``, ``IT``, ``avgpool`` (Brain-Score's ``decoder.avgpool``) and, for ReAlnet, ``response`` (its
encoding head's output). A module called several times in one forward (a recurrent block's output)
gives its last call's output. The activations of all layers of a model are one row per image in the
cache of :func:`fastalign.data.embed_images`, keyed by the model's class and weights, the layers and the
image transform, and each file's content; a sidecar JSON holds each layer's width.
"""

from __future__ import annotations

import contextlib
import dataclasses
import filecmp
import hashlib
import itertools
import json
import os
import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fastalign import _checks
from fastalign._modes import eval_mode
from fastalign.data import ImageTransform, embed_images, model_key
from fastalign.data._io import atomic_write, digest_files, read_json_object
from fastalign.eval.progress import Stage
from fastalign.models import CORnetS, ReAlnet, cornet_s, realnet
from fastalign.models.realnet_model import EEG_N_OUT, FMRI_N_OUT, WEIGHTS_FILE, BackboneOnlyError

__all__ = [
    "CORNET_LAYERS",
    "DEFAULT_LAYERS",
    "EvalModel",
    "as_models",
    "check_image_set",
    "check_image_size",
    "layer_features",
    "on_device",
    "read_realnet_file",
    "subject_name",
]

_FN = "evaluate"
#: The area names CORnet-S answers to, and the submodule each taps.
CORNET_LAYERS: dict[str, str] = {"V1": "V1", "V2": "V2", "V4": "V4", "IT": "IT", "avgpool": "decoder.avgpool"}
#: The layers evaluated when none are named (the published V1-IT plus avgpool, as for fMRI).
DEFAULT_LAYERS: tuple[str, ...] = ("V1", "V2", "V4", "IT", "avgpool")
_SUBJECT = re.compile(r"^sub-(\d+)$")
#: The files :func:`~fastalign.models.realnet` reads as a whole ReAlnet (besides run folders).
WEIGHTS_SUFFIXES = (".pt", ".pth", ".safetensors")
# The modalities a model is aligned to, as named in errors; the published response size of each.
_MODALITY_NAMES = {"eeg": "EEG", "fmri": "fMRI"}
_N_OUT = {"eeg": EEG_N_OUT, "fmri": FMRI_N_OUT}
_HEAD_MODALITY = {n: m for m, n in _N_OUT.items()}
# what an argument that takes a ReAlnet weights file expects, in its errors
_REALNET_FILE = (
    "ReAlnet weights (CORnet-S and its encoding head: the published encoder.pt, a notebook's "
    "best_model_params.pt, a run's model.safetensors)"
)
_HEADLESS = (
    "holds a CORnet-S without ReAlnet's encoding head (such as the published backbone-only realnet.pt or the "
    "ImageNet CORnet-S)"
)
_CACHE_VERSION = "fastalign.eval.features/2"  # 2: layer outputs copied when the hook runs


def subject_name(subject: Any, where: str = "subject") -> str:
    """A subject as its folder name: 3, "3", "sub-3" and "sub-03" are all "sub-03"."""
    match = re.fullmatch(r"(?:sub-)?(\d+)", subject) if isinstance(subject, str) else None
    if not (_checks.is_int(subject) or match):
        raise TypeError(_checks.message(_FN, where, "a subject number or a name like 'sub-01'", subject))
    number = int(match.group(1)) if match else int(subject)
    if number < 1:
        raise ValueError(_checks.message(_FN, where, "a subject number >= 1", subject))
    return f"sub-{number:02d}"


def _layer_aliases(module: nn.Module) -> dict[str, str]:
    if isinstance(module, ReAlnet):
        return {**{k: f"backbone.{v}" for k, v in CORNET_LAYERS.items()}, "response": "head"}
    if isinstance(module, CORnetS):
        return dict(CORNET_LAYERS)
    return {}


@dataclass
class EvalModel:
    """A model to evaluate.

    Models with the same name are one family: the per-subject models of one alignment recipe (e.g. the
    run folders ``runs/realnet/sub-01``, ``runs/realnet/sub-02``), told apart by ``subject``.

    Attributes:
        name: Its name in the tables (``model`` column).
        module: A torch module whose layers are tapped (or None with ``features``).
        layers: Layer names (see the module doc); None: the evaluation's ``layers``, else
            :data:`DEFAULT_LAYERS` for CORnet-S and those and "response" for ReAlnet; required for other
            modules.
        features: Precomputed activations instead of a module: layer name -> (n_images, ...) array of
            the data's test images in their order.
        images: With ``features``: the image files they were computed from (checked against the data's).
        subject: The subject it was aligned to ("sub-01"; an int is accepted), "" if none.
        modality: What it was aligned to ("eeg" or "fmri"), "" if unaligned.
        source: Where it came from (recorded in config.json).
        data: The dataset folder it was aligned on (a run's ``config.data``; "" if unknown), whose test
            images must be the evaluated data's (:func:`check_image_set`).
        images_digest: A hash of the test images' bytes it was aligned with (a run's
            ``config.test_images_digest``, :func:`fastalign.data._io.digest_files`; "" if unknown),
            checked against the evaluated data's wherever either dataset lives.
    """

    name: str
    module: nn.Module | None = None
    layers: Sequence[str] | None = None
    features: Mapping[str, Any] | None = None
    images: Sequence[str] | None = None
    subject: str = ""
    modality: str = ""
    source: str = ""
    data: str = ""
    images_digest: str = ""

    def __post_init__(self) -> None:
        where = "EvalModel"
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(_checks.message(where, "name", "a non-empty str", self.name))
        if (self.module is None) == (self.features is None):
            raise ValueError(f"{where}: pass exactly one of module and features (model {self.name!r})")
        if self.module is not None and not isinstance(self.module, nn.Module):
            raise TypeError(_checks.message(where, "module", "a torch.nn.Module", self.module))
        if self.features is not None:
            if not isinstance(self.features, Mapping) or not self.features:
                raise TypeError(_checks.message(where, "features", "a non-empty mapping", self.features))
            if self.layers is None:
                self.layers = list(self.features)
        elif self.images is not None:
            raise ValueError(f"{where}: images goes with features (model {self.name!r})")
        if self.layers is not None:
            self.layers = _check_layers(where, self.layers)
        self.subject = "" if self.subject in ("", None) else subject_name(self.subject)
        if self.modality not in ("", "eeg", "fmri"):
            raise ValueError(_checks.message(where, "modality", "'', 'eeg' or 'fmri'", self.modality))
        if bool(self.subject) != bool(self.modality):
            raise ValueError(
                f"{where}: an aligned model has both a subject and a modality, an unaligned one neither; "
                f"model {self.name!r} has subject={self.subject!r}, modality={self.modality!r}"
            )

    @classmethod
    def from_run(cls, path: str | os.PathLike[str], name: str | None = None) -> EvalModel:
        """The ReAlnet of a ``fastalign align`` run folder.

        Args:
            path: The run folder (``model.safetensors``, ``config.json``).
            name: Its name; default the folder's name, or its parent's for a folder named ``sub-XX`` (the
                per-subject folders of one ``align`` call form one family).

        Raises:
            FileNotFoundError: no model.safetensors or config.json.
            ValueError: a config.json without the subject and modality it was aligned to, or one of
                another command's run (e.g. ``fastalign decode``'s).
        """
        folder = os.path.abspath(os.fspath(path))
        config_file = os.path.join(folder, "config.json")
        if not os.path.isfile(config_file):
            runs = sorted(
                n for n in (os.listdir(folder) if os.path.isdir(folder) else [])
                if _SUBJECT.match(n) and os.path.isfile(os.path.join(folder, n, "config.json"))
            )  # fmt: skip
            hint = (
                f"; it holds the run folders {', '.join(runs)} of one align call: pass them "
                f"({os.path.join(os.fspath(path), 'sub-*')})"
                if runs
                else ""
            )
            raise FileNotFoundError(
                f"{_FN}: run folder {folder!r} has no config.json (from fastalign align){hint}"
            )
        config = read_json_object(config_file, f"{_FN}: run folder config")
        # fastalign.train writes {"config": recipe settings, "fit": ..., "environment": ...}
        recipe = config.get("config", config)
        if isinstance(recipe, dict) and recipe.get("recipe", "realnet") != "realnet":  # align's recipe
            raise ValueError(
                f"{_FN}: {folder!r} is a run folder of fastalign {recipe['recipe']} (config.recipe "
                f"{recipe['recipe']!r}), not of fastalign align: its model is no ReAlnet"
            )
        if not isinstance(recipe, dict) or "subject" not in recipe or "modality" not in recipe:
            raise ValueError(
                f"{_FN}: {config_file!r} does not say which subject and modality the model was aligned to "
                "(config.subject, config.modality); is it a run folder of fastalign align?"
            )
        base = os.path.basename(folder)
        default = os.path.basename(os.path.dirname(folder)) if _SUBJECT.match(base) else base
        return cls(
            name or default,
            module=realnet(folder),
            subject=subject_name(recipe["subject"], f"{config_file} config.subject"),
            modality=str(recipe["modality"]),
            source=folder,
            data=str(recipe.get("data") or ""),
            images_digest=str(recipe.get("test_images_digest") or ""),
        )

    @classmethod
    def from_weights(
        cls,
        path: str | os.PathLike[str],
        name: str | None = None,
        subject: Any = None,
        modality: str | None = None,
    ) -> EvalModel:
        """The ReAlnet of one subject from a weights file alone: the whole model (the published
        ``encoder.pt`` in ``weights/ReAlnet/sub-XX/``, a notebook's ``best_model_params.pt``, a run's epoch
        checkpoint or a ``.safetensors`` file, as :func:`~fastalign.models.realnet` reads them) or its
        CORnet-S without the encoding head (the published backbone-only ``realnet.pt``, a backbone saved
        from a run: what :func:`~fastalign.models.cornet_s` reads). A backbone is evaluated at the CORnet-S
        layers only: it has no ``response``.

        Args:
            path: The file (.pt, .pth or .safetensors).
            name: Its name; default the folder above its ``sub-XX`` folder ("ReAlnet" for the published
                layout), else the file's stem.
            subject: To whom it was aligned (3, "sub-03"); default what a ``.safetensors`` file's metadata
                records (``fastalign align`` writes it into ``model.safetensors``), else the nearest folder
                of its path named ``sub-XX``.
            modality: What it was aligned to, "eeg" or "fmri"; default what a ``.safetensors`` file's
                metadata records, else what the encoding head's response size says (the published sizes:
                340 values EEG, 1024 fMRI), else what the name of the folder above ``sub-XX`` says (the
                published ``ReAlnet`` is EEG, ``ReAlnet-fMRI`` fMRI; a name with the word ``eeg`` or
                ``fmri``, such as ``ReAlnet_EEG``, says that one).

        A subject or modality given is taken over what the file records and what the path's folder names
        say, and what the file records over its folders (a file copied elsewhere keeps its subject); a
        modality given that contradicts a published response size is an error. Nothing records the images
        the model was aligned on, so they are not checked (:func:`check_image_set`).

        Raises:
            FileNotFoundError: no such file.
            ValueError: another suffix; weights that are neither a ReAlnet nor a CORnet-S; no subject or
                modality given nor told by the file or its path; a modality the head contradicts.
        """
        return cls._from_weights(path, name, subject, modality, "path", f"path={os.fspath(path)!r}")

    @classmethod
    def _from_weights(
        cls,
        path: str | os.PathLike[str],
        name: str | None,
        subject: Any,
        modality: str | None,
        argument: str,
        given: str,
    ) -> EvalModel:
        """:meth:`from_weights`, its errors naming the file as the caller's argument: ``argument`` its name
        ("path", "models[0]"), ``given`` the argument as given ("models[0] = 'pub=encoder.pt'")."""
        file = os.path.abspath(os.fspath(path))
        expected = f"a ReAlnet weights file ({', '.join(WEIGHTS_SUFFIXES)})"
        if not os.path.isfile(file):
            raise FileNotFoundError(f"{_FN}: {given}: no such file; expected {expected}")
        if not file.endswith(WEIGHTS_SUFFIXES):
            raise ValueError(_checks.message(_FN, argument, expected, os.fspath(path)))
        if subject is not None:
            subject = subject_name(subject, "subject")
        if modality is not None:
            modality = _check_modality(modality)
        asked = modality  # as given, before the file and its path are asked
        # the file is read first: one that is neither kind of model is told so, not asked its subject
        module, backbone = _read_model_file(file, _FN, given)
        recorded_subject, recorded_modality = _recorded(file, given, subject, modality)
        folders = os.path.dirname(file).split(os.sep)
        found = _subject_folder(folders)
        family = folders[found - 1] if found else None
        head = _HEAD_MODALITY.get(module.n_out) if module is not None else None
        if modality is not None and head is not None and modality != head:
            assert module is not None
            raise ValueError(
                f"{_FN}: {given} is given modality {modality!r}, but its encoding head predicts "
                f"{module.n_out} values, the response of the published {_MODALITY_NAMES[head]} ReAlnet "
                f"(the {_MODALITY_NAMES[modality]} one predicts {_N_OUT[modality]}); give {head!r} or none"
            )
        modality = modality or recorded_modality or head or _folder_modality(family)
        if (
            subject is None
            and recorded_subject is not None
            and found
            and subject_name(folders[found]) != recorded_subject
        ):
            warnings.warn(
                f"{_FN}: {given} records that it was aligned to {recorded_subject}, but sits in a folder "
                f"named {folders[found]!r}: evaluated as {recorded_subject}'s (give subject= or "
                "NAME@sub-XX=FILE to choose)",
                UserWarning,
                stacklevel=4,
            )
        subject = subject or recorded_subject
        no_subject = subject is None and found is None
        if no_subject or modality is None:
            raise ValueError(
                _untold(os.fspath(path), module, given, (subject, asked), no_subject, modality, family)
            )
        net: nn.Module | None = module
        if net is None:  # a CORnet-S without the head, loaded once its subject and modality are known
            try:
                net = cornet_s(weights=backbone)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{_FN}: {given}: expected {_REALNET_FILE} or a CORnet-S's; {exc}") from exc
        if subject is None:
            assert found is not None  # else no_subject
            subject = subject_name(folders[found])
        stem = os.path.splitext(os.path.basename(file))[0]
        default = (family or stem) if found else stem  # a sub-XX folder at the root: the stem
        return cls(
            name or default,
            module=net,
            subject=subject,
            modality=modality,
            source=file,
        )


def _recorded(
    file: str, given: str, subject: str | None, modality: str | None
) -> tuple[str | None, str | None]:
    """The subject ("sub-XX") and modality a ``.safetensors`` file's metadata records (``fastalign align``
    writes both into ``model.safetensors``), each read only where the caller was not given it (``subject``,
    ``modality``); None for what the file does not record, and for other files."""
    if not file.endswith(".safetensors") or (subject is not None and modality is not None):
        return None, None
    from safetensors import safe_open

    with safe_open(file, "pt") as f:  # the header only; realnet() has read the file already
        metadata = f.metadata() or {}
    out: list[str | None] = []
    for key, asked, parse in (("subject", subject, subject_name), ("modality", modality, _check_modality)):
        value = metadata.get(key)
        try:
            out.append(None if value is None or asked is not None else parse(value))
        except (ValueError, TypeError) as exc:
            raise ValueError(
                f"{_FN}: {given}: its metadata records {key} {value!r}, which is not one ({exc}); pass "
                f"{key}= (NAME@sub-XX,eeg=FILE)"
            ) from exc
    return out[0], out[1]


def read_realnet_file(file: str | os.PathLike[str], fn: str, given: str, cornet_instead: str) -> ReAlnet:
    """``realnet(weights=file)`` for an argument of ``fn`` that takes a ReAlnet weights file, its errors
    naming that argument as given (``given``: ``"models[0] = 'encoder.pt'"``, ``"image_model='x.pt'"``) and
    what it expects (realnet's own name its ``weights``, which the caller's user never wrote). Weights of a
    CORnet-S without the encoding head are pointed to ``cornet_instead``: how ``fn`` takes a CORnet-S."""
    module, _ = _read_model_file(file, fn, given)
    if module is None:
        raise ValueError(f"{fn}: {given} {_HEADLESS}; expected {_REALNET_FILE}; {cornet_instead}")
    return module


def _read_model_file(
    file: str | os.PathLike[str], fn: str, given: str
) -> tuple[ReAlnet | None, Mapping[str, torch.Tensor] | None]:
    """(``realnet(weights=file)``, None), or (None, the weights as read) for the weights of a CORnet-S
    without the encoding head (for :func:`~fastalign.models.cornet_s`, without reading the file again);
    other errors name the argument as given (see :func:`read_realnet_file`)."""
    try:
        return realnet(weights=file), None
    except BackboneOnlyError as exc:
        return None, exc.state_dict
    except (ValueError, TypeError) as exc:
        why = re.sub(r"^realnet: (weights: )?", "", str(exc))
        kind = TypeError if isinstance(exc, TypeError) else ValueError  # not a subclass's own signature
        raise kind(f"{fn}: {given}: expected {_REALNET_FILE}; {why}") from exc


def _check_modality(modality: Any) -> str:
    """A model's modality, "eeg" or "fmri" in any case ("fMRI")."""
    if not isinstance(modality, str) or modality.lower() not in _MODALITY_NAMES:
        raise ValueError(_checks.message(_FN, "modality", "'eeg' or 'fmri'", modality))
    return modality.lower()


def _folder_modality(family: str | None) -> str | None:
    """The modality a family folder's name says: the published download's ``ReAlnet`` (EEG), or a name
    with exactly one of the words eeg and fmri (``ReAlnet-fMRI``; the published training's ``ReAlnet_EEG``).
    """
    if family is None:
        return None
    if family == "ReAlnet":
        return "eeg"
    said = [m for m in _MODALITY_NAMES if m in re.split(r"[^a-z0-9]+", family.lower())]
    return said[0] if len(said) == 1 else None


def _untold(
    path: str,
    module: ReAlnet | None,
    given: str,
    tags: tuple[str | None, str | None],
    no_subject: bool,
    modality: str | None,
    family: str | None,
) -> str:
    """The error for a weights file (``path`` as given) whose subject or modality neither the argument, the
    file nor its path tells; ``tags`` are the (subject, modality) the argument gave, kept in the spelling it
    suggests."""
    missing = []
    if no_subject:
        layout = "realnet.pt" if module is None else "encoder.pt"
        missing.append(
            f"no folder of its path is named sub-XX (the published layout is weights/ReAlnet/sub-01/{layout})"
        )
    if modality is None:
        where = (
            f"its family folder {family!r} names neither"
            if family is not None
            else "no sub-XX folder in its path has a family folder above it to name one"
        )
        published = "the published weights/ReAlnet/ are EEG, weights/ReAlnet-fMRI/ fMRI"
        missing.append(
            f"nothing says whether it was aligned to EEG or fMRI ({where}; {published})"
            if module is None
            else f"its encoding head predicts {module.n_out} values (the published EEG ReAlnet 340, "
            f"ReAlnet-fMRI 1024) and {where} ({published})"
        )
    them = "them" if len(missing) > 1 else "it"
    subject = ["sub-XX"] if no_subject else [t for t in tags[:1] if t]
    modalities = [[m] for m in _MODALITY_NAMES] if modality is None else [[t for t in tags[1:] if t]]
    keywords = ["subject=..."] * no_subject + ["modality=..."] * (modality is None)
    told = " or ".join(f"NAME@{','.join(subject + m)}=FILE" for m in modalities)
    told += f" (EvalModel.from_weights(path, {', '.join(keywords)}))"
    if module is not None:
        what = " and ".join(["whom"] * no_subject + ["what"] * (modality is None))
        return (
            f"{_FN}: cannot tell {what} the ReAlnet weights {os.path.abspath(path)!r} were aligned to: "
            f"{'; '.join(missing)}; name {them}: {told}"
        )
    return (
        f"{_FN}: {given} {_HEADLESS}, and {'; '.join(missing)}: to evaluate it as the ReAlnet of a subject, "
        f"name {them}: {told}; to evaluate it as an unaligned CORnet-S, name it 'cornet_s' with "
        f"weights={path!r} (--models cornet_s --weights {path})"
    )


def _subject_folder(folders: Sequence[str]) -> int | None:
    """The index of the last of ``folders`` (a path's parts: the nearest the file) named ``sub-XX``."""
    return next((i for i in range(len(folders) - 1, -1, -1) if _SUBJECT.match(folders[i])), None)


def _tags(given: str, spec: str, i: int) -> tuple[str, str | None, str | None]:
    """(name, subject, modality) of the NAME@TAGS part of ``models[i] = spec``: the tags after the last
    "@", comma-separated, are a subject (sub-XX) and a modality (eeg, fmri), each at most once."""
    name, _, tags = given.rpartition("@")
    subjects, modalities = [], []
    for tag in tags.split(","):
        if _SUBJECT.match(tag):
            subjects.append(subject_name(tag))
        elif tag.lower() in _MODALITY_NAMES:
            modalities.append(tag.lower())
        else:
            raise ValueError(
                f"{_FN}: models[{i}] = {spec!r}: {tag!r} after '@' is neither a subject (sub-XX) nor a "
                "modality (eeg, fmri); expected NAME@sub-XX=FILE, NAME@eeg=FILE or NAME@sub-XX,fmri=FILE"
            )
    for kind, found in (("subjects", subjects), ("modalities", modalities)):
        if len(found) > 1:
            raise ValueError(f"{_FN}: models[{i}] = {spec!r} gives a model {len(found)} {kind}: {found}")
    return name, subjects[0] if subjects else None, modalities[0] if modalities else None


def _check_layers(where: str, layers: Any) -> list[str]:
    if isinstance(layers, str):
        layers = [layers]
    if not isinstance(layers, Sequence) or not all(isinstance(n, str) for n in layers):
        raise TypeError(_checks.message(where, "layers", "a sequence of layer names", layers))
    if "" in layers:
        raise ValueError(f"{where}: layers must be layer names, got an empty name in {list(layers)}")
    if not layers or len(set(layers)) != len(layers):
        raise ValueError(f"{where}: layers must name at least one layer, each once, got {list(layers)}")
    return list(layers)


def as_models(
    models: Any, *, weights: str | os.PathLike[str] | None, seed: int, layers: Sequence[str] | None
) -> list[EvalModel]:
    """The evaluation's models from their names, run folders and :class:`EvalModel` objects.

    "cornet_s" is loaded from ``weights`` or, without, randomly initialised after
    ``torch.manual_seed(seed)`` (the global RNG is left as it was): the CORnet-S that ``fastalign align``
    starts from with the same seed. A run folder is named by :meth:`EvalModel.from_run` (its folder, or
    its parent's for a ``sub-XX`` folder), or as given in ``"NAME=FOLDER"`` (where no file or folder of
    that whole spelling exists): runs of one name form one family, so runs named after different folders
    of one name (two align calls' ``sub-XX`` folders under parents of one name, or a lone run folder of
    that name) are pooled, with a warning, unless named apart. A weights file, of a whole ReAlnet or of its
    CORnet-S (``FILE``, ``NAME=FILE``, or with its subject and modality ``NAME@sub-XX,eeg=FILE``: tags after
    "@", comma-separated, in any order, each optional) is read by :meth:`EvalModel.from_weights`; a run
    folder's ``model.safetensors`` is its run folder. ``layers`` fills in models that name none.
    """
    if isinstance(models, (str, os.PathLike, EvalModel)) or not isinstance(models, Sequence) or not models:
        raise TypeError(_checks.message(_FN, "models", "a non-empty list of models", models))
    if weights is not None and not any(m == "cornet_s" for m in models if isinstance(m, str)):
        raise ValueError(f"{_FN}: weights are CORnet-S's weights, but no model is named 'cornet_s'")
    out = []
    parents: dict[str, set[str]] = {}  # name -> the folders its unnamed runs take that name from
    for i, spec in enumerate(models):
        if isinstance(spec, EvalModel):
            model = spec
        elif spec == "cornet_s":
            if weights is not None:
                module = cornet_s(weights)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    module = cornet_s()
            source = f"random (seed {seed})" if weights is None else os.path.abspath(weights)
            model = EvalModel("cornet_s", module, source=source)
        elif isinstance(spec, (str, os.PathLike)):
            given, folder, subject, modality = None, os.fspath(spec), None, None
            if not os.path.exists(folder) and isinstance(spec, str) and "=" in spec:
                given, folder = spec.split("=", 1)
                if "@" in given:
                    given, subject, modality = _tags(given, spec, i)
                if not given or given == "cornet_s":
                    raise ValueError(
                        f"{_FN}: models[{i}] = {spec!r} names a model NAME=FOLDER or NAME=FILE with the "
                        f"name {given!r}; expected a name other than '' and 'cornet_s'"
                    )
            if os.path.basename(folder) == WEIGHTS_FILE and os.path.isfile(
                os.path.join(os.path.dirname(folder), "config.json")
            ):  # a run folder's own weights: its config.json says to whom they were aligned
                folder = os.path.dirname(folder) or "."
            if os.path.isfile(folder):
                as_given = f"models[{i}] = {spec!r}"
                model = EvalModel._from_weights(folder, given, subject, modality, f"models[{i}]", as_given)
                parts = os.path.dirname(os.path.realpath(folder)).split(os.sep)
                found = _subject_folder(parts)
                home = os.sep.join(parts if found is None else parts[:found])
            elif not os.path.isdir(folder):
                nowhere = f"no file or folder at {folder!r}" if given else "no such file or folder"
                raise FileNotFoundError(
                    f"{_FN}: models[{i}] = {os.fspath(spec)!r}: {nowhere}; expected 'cornet_s', a run folder "
                    "of fastalign align, a weights file of a ReAlnet or of its CORnet-S "
                    f"({', '.join(WEIGHTS_SUFFIXES)}), or NAME=FOLDER, NAME=FILE, NAME@sub-XX,eeg=FILE"
                )
            elif subject is not None or modality is not None:
                what = " and a ".join(
                    ["subject"] * (subject is not None) + ["modality"] * (modality is not None)
                )
                them = "them" if subject is not None and modality is not None else "it"
                raise ValueError(
                    f"{_FN}: models[{i}] = {spec!r} gives a run folder a {what}, but its config.json names "
                    f"{them}: NAME@sub-XX,eeg=FILE is for weights files; pass NAME=FOLDER"
                )
            else:
                model = EvalModel.from_run(folder, name=given)
                real = os.path.realpath(folder)
                home = os.path.dirname(real) if _SUBJECT.match(os.path.basename(real)) else real
            if given is None:  # named after the parent of its sub-XX folder (one align call), or itself
                parents.setdefault(model.name, set()).add(home)
        else:
            raise TypeError(
                _checks.message(
                    _FN,
                    f"models[{i}]",
                    "'cornet_s', a run folder, a ReAlnet weights file or an EvalModel",
                    spec,
                )
            )
        if model.layers is None:  # a copy: the caller's EvalModel may be evaluated again with other layers
            net = model.module
            assert net is not None  # models of features name their layers
            if layers is not None:
                model = dataclasses.replace(model, layers=_check_layers(_FN, layers))
            elif _layer_aliases(net):
                # a ReAlnet's encoding head is what alignment fits: evaluated beside the areas by default
                head: list[str] = ["response"] if isinstance(net, ReAlnet) else []
                model = dataclasses.replace(model, layers=[*DEFAULT_LAYERS, *head])
            else:
                raise ValueError(
                    f"{_FN}: model {model.name!r} is a {type(net).__name__}: name its layers "
                    "(EvalModel(layers=...) or layers=)"
                )
        if model.module is not None:  # before the next model loads, and long before any runs
            _layer_paths(model)
        out.append(model)
    for name, folders in sorted(parents.items()):
        if len(folders) > 1:
            warnings.warn(
                f"{_FN}: the runs named {name!r} come from {len(folders)} folders "
                f"({', '.join(sorted(folders))}) and are pooled as one family; name them apart (NAME=FOLDER) "
                "to compare them",
                UserWarning,
                stacklevel=3,
            )
    seen: dict[tuple[str, str], int] = {}
    for i, m in enumerate(out):
        if (m.name, m.subject) in seen and m.name == "cornet_s" and not m.subject:
            # the baseline's name is reserved (NAME= cannot rename it): one CORnet-S is all there is to give
            raise ValueError(
                f"{_FN}: models[{seen[m.name, m.subject]}] and models[{i}] both give cornet_s; give it once"
            )
        if (m.name, m.subject) in seen:
            raise ValueError(
                f"{_FN}: models[{seen[m.name, m.subject]}] and models[{i}] are both model {m.name!r}"
                + (f" of {m.subject}" if m.subject else "")
                + "; give them different names (NAME=FOLDER or NAME=FILE; in Python "
                "EvalModel.from_run(folder, name=...) or EvalModel.from_weights(file, name=...))"
            )
        seen[m.name, m.subject] = i
    for name in {m.name for m in out}:
        family = [m for m in out if m.name == name]
        kinds = {(bool(m.subject), m.modality) for m in family}
        if len(family) > 1 and (len(kinds) > 1 or not family[0].subject):
            raise ValueError(
                f"{_FN}: the models named {name!r} must all be aligned to one modality, one subject each "
                f"(one family); got subjects {[m.subject for m in family]} and modalities "
                f"{[m.modality for m in family]}"
            )
    return out


def check_image_set(
    model: EvalModel,
    images: Sequence[str],
    what: str = "test",
    digest: Callable[[tuple[str, ...]], str] | None = None,
) -> None:
    """Refuses a run aligned on another image set than the evaluated ``images``.

    Within-subject comparisons only mean something when "sub-01" is the same person, shown the same
    images: the run's test images must be the evaluated ones, file for file (the same bytes in the same
    order). Runs that record their images' digest (``model.images_digest``) are checked by it, wherever
    their dataset is now; older ones through their dataset folder (``model.data``), and when that is gone
    too a warning says that nothing could be checked.

    ``digest`` (default :func:`~fastalign.data._io.digest_files`) hashes the evaluated images: evaluate
    passes one that remembers its answer, so that several runs read the images once.

    Raises:
        ValueError: the run's test images are others.
    """
    mine = [os.fspath(p) for p in images]
    where = repr(model.data) if model.data else "a dataset"
    refuse = (
        f"{_FN}: model {model.name!r} was aligned on {where}, whose {{n}}test images "
        f"are not the evaluated data's {len(mine)} {what} images; models with different image sets cannot "
        "be compared"
    )
    if model.images_digest:
        evaluated = (digest or digest_files)(tuple(mine))
        if evaluated != model.images_digest:
            raise ValueError(
                refuse.format(n="")
                + f" (digest of their bytes {model.images_digest}, of the evaluated {evaluated})"
            )
        return
    if not model.data:  # built in Python without a dataset (EvalModel(..., data="")): nothing to check
        return
    if not os.path.isdir(os.path.join(model.data, "image_set")):
        warnings.warn(
            f"{_FN}: cannot check that model {model.name!r} was aligned on the evaluated images: its "
            f"dataset {model.data!r} is gone and its config.json has no test_images_digest (a run of an "
            "older fastalign)",
            UserWarning,
            stacklevel=2,
        )
        return
    from fastalign.data import load_image_metadata

    theirs = load_image_metadata(os.path.join(model.data, "image_set")).paths("test")
    same = len(theirs) == len(mine) and all(
        os.path.isfile(a) and (os.path.samefile(a, b) or filecmp.cmp(a, b, shallow=False))
        for a, b in zip(theirs, mine, strict=True)
    )
    if not same:
        raise ValueError(refuse.format(n=f"{len(theirs)} "))


def check_image_size(model: EvalModel, image_size: int, fn: str = _FN) -> None:
    """Refuses a ReAlnet built for another image size (its encoding head's input is sized for one):
    checked for every model before any runs."""
    module = model.module
    if isinstance(module, ReAlnet) and module.image_size != (image_size, image_size):
        h, w = module.image_size
        raise ValueError(
            f"{fn}: model {model.name!r} was built for {h}x{w} images but image_size={image_size}; every "
            f"model sees the images at one size: pass image_size={h} (--image-size {h})"
        )


class _Taps:
    """Callable: images -> (B, sum of layer widths), the named submodules' outputs flattened and joined."""

    def __init__(
        self,
        module: nn.Module,
        paths: Mapping[str, str],
        model: str,
        stage: Stage | None = None,
        fn: str = _FN,
    ) -> None:
        self.module, self.paths, self.model, self.stage, self.fn = module, dict(paths), model, stage, fn
        self.sizes: dict[str, int] | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        got: dict[str, Any] = {}

        def keep(name: str) -> Any:
            def hook(_mod: nn.Module, _inp: Any, out: Any) -> None:
                # the last call wins (a recurrent block's final step); a copy, since what runs after it
                # may change the tensor in place (an inplace ReLU after a BatchNorm, a residual +=)
                got[name] = out.detach().clone() if isinstance(out, torch.Tensor) else out

            return hook

        handles = [self.module.get_submodule(p).register_forward_hook(keep(n)) for n, p in self.paths.items()]
        weight = next((t for t in self.module.parameters() if t.is_floating_point()), None)
        if weight is not None and x.dtype != weight.dtype:  # a float64 or bfloat16 module's own dtype
            x = x.to(weight.dtype)
        try:
            self.module(x)
        finally:
            for h in handles:
                h.remove()
        flat = []
        for name in self.paths:
            out = got.get(name)
            if out is None:
                raise ValueError(
                    f"{self.fn}: layer {name!r} of model {self.model!r} did not run in its forward"
                )
            if not isinstance(out, torch.Tensor):
                raise TypeError(
                    f"{self.fn}: layer {name!r} of model {self.model!r} returns a {type(out).__name__}, "
                    "not a tensor; name a submodule that returns one"
                )
            flat.append(out.reshape(len(x), -1))
        self.sizes = {n: f.shape[1] for n, f in zip(self.paths, flat, strict=True)}
        if self.stage is not None:
            self.stage.update(len(x))
        return torch.cat(flat, dim=1)


def _layer_paths(model: EvalModel, fn: str = _FN) -> dict[str, str]:
    """Each layer's submodule path; a clear error for a layer the module does not have."""
    assert model.module is not None and model.layers is not None
    aliases = _layer_aliases(model.module)
    modules = dict(model.module.named_modules())
    paths = {}
    for layer in model.layers:
        path = aliases.get(layer, layer)
        if path not in modules or path == "":
            named = list(dict.fromkeys([*aliases, *(n for n in modules if n)]))  # an alias may be a path
            # layers= (--layers) applies to every model; a ReAlnet's head is added only by the default
            head = (
                "; layers (--layers) apply to every model, and 'response', a ReAlnet's encoding head, is "
                "added to the aligned models only when no layers are given"
                if layer == "response"
                else ""
            )
            raise ValueError(
                f"{fn}: model {model.name!r} has no layer {layer!r}; layers are "
                f"{', '.join(named[:25])}{' ...' if len(named) > 25 else ''}{head}"
            )
        paths[layer] = path
    return paths


def layer_features(
    model: EvalModel,
    images: Sequence[str],
    *,
    image_size: int,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike[str] | None = None,
    what: str = "test",
    progress: bool = False,
    fn: str = _FN,
) -> dict[str, np.ndarray]:
    """(n_images, width) activations of each of the model's layers for ``images``.

    Args:
        model: The model (its ``layers`` set).
        images: Image files, in condition order.
        image_size: Images are resized to image_size x image_size (not cropped: a non-square image is
            squeezed, as ReAlnet is trained), then ImageNet-normalised.
        batch_size, device: How the module runs (in eval mode, without autograd).
        cache_dir: Where rows are cached (see the module doc); None: no cache.
        what: The image set's name in error messages.
        progress: Show the images done on standard error (a tqdm bar on a terminal, else one line).
        fn: The calling function's name, which starts every error message ("evaluate", "decode").

    Returns:
        float32 rows for a module (float64 kept for precomputed float64 features), per layer in order.

    Raises:
        ValueError: a layer the module lacks, precomputed features of other images, a ReAlnet built for
            another image size.
    """
    _checks.check_device(fn, "device", device)
    if model.layers is None:
        raise ValueError(
            f"{fn}: model {model.name!r} names no layers (EvalModel.layers is None): give them, e.g. "
            f"dataclasses.replace(model, layers={list(DEFAULT_LAYERS)!r}) (evaluate fills them in)"
        )
    if cache_dir is not None and os.fspath(cache_dir) == "":
        raise ValueError(f"{fn}: cache_dir must name a folder or be None, got '' (an empty path)")
    if model.features is not None:
        return given_features(model, images, what, fn)
    module = model.module
    assert module is not None  # EvalModel holds exactly one of module and features
    check_image_size(model, image_size, fn)
    paths = _layer_paths(model, fn)
    transform = ImageTransform(image_size, crop=False)
    stage = Stage(progress, f"features {model.name}{f' {model.subject}' if model.subject else ''}",
                  len(images), "img")  # fmt: skip
    taps = _Taps(module, paths, model.name, stage, fn)
    key = None  # the cache's key: hashing a CORnet-S's weights takes 0.3-0.4 s, for nothing without a cache
    sidecar = None
    sizes = None
    if cache_dir is not None:
        key = "|".join(
            [
                _CACHE_VERSION,
                f"{type(module).__module__}.{type(module).__qualname__}",
                json.dumps(paths),
                repr(transform),
                f"weights={model_key(module)}",
            ]
        )
        sidecar = os.path.join(
            os.fspath(cache_dir), f"layers-{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"
        )
        sizes = _read_sizes(sidecar, key)
    with eval_mode(module):
        with on_device(module, device):
            with stage:
                rows = embed_images(
                    taps, list(images), cache_dir, key=key, transform=transform, batch_size=batch_size,
                    device=device,
                )  # fmt: skip
                stage.update(len(images) - stage.done)  # the rows read from the cache
            taps.stage = None
            if taps.sizes is None and sizes is None:  # every row came from a cache whose sidecar was lost
                with torch.inference_mode():
                    taps(transform(images[0])[None].to(device))
    sizes = taps.sizes or sizes
    assert sizes is not None
    if sum(sizes.values()) != rows.shape[1]:
        raise ValueError(
            f"{fn}: cached features of model {model.name!r} have {rows.shape[1]} values per image but its "
            f"layers have {sum(sizes.values())}; delete the cache folder {str(cache_dir)!r}"
        )
    if sidecar is not None and taps.sizes is not None:
        atomic_write(sidecar, lambda tmp: _write_json(tmp, {"key": key, "sizes": taps.sizes}))
    out, start = {}, 0
    for layer, width in sizes.items():
        out[layer] = rows[:, start : start + width]
        start += width
    return out


def _write_json(path: str, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f)


def _read_sizes(path: str, key: str) -> dict[str, int] | None:
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    ok = isinstance(meta, dict) and meta.get("key") == key and isinstance(meta.get("sizes"), dict)
    return {str(k): int(v) for k, v in meta["sizes"].items()} if ok else None


@contextlib.contextmanager
def on_device(module: nn.Module, device: str | torch.device) -> Iterator[nn.Module]:
    """``module`` moved to ``device`` for the block, and back to where it was afterwards."""
    home = next((t.device for t in itertools.chain(module.parameters(), module.buffers())), None)
    module.to(device)
    try:
        yield module
    finally:
        if home is not None:
            module.to(home)


def given_features(
    model: EvalModel, images: Sequence[str], what: str, fn: str = _FN
) -> dict[str, np.ndarray]:
    """A precomputed-features model's (n_images, n_features) rows per layer, checked against ``images``
    (its layers present, one row per image, the same image files where it names them)."""
    assert model.features is not None and model.layers is not None
    if model.images is not None:
        mine = [os.path.abspath(os.fspath(p)) for p in model.images]
        theirs = [os.path.abspath(os.fspath(p)) for p in images]
        if mine != theirs:
            diff = next(
                (i for i, (a, b) in enumerate(zip(mine, theirs, strict=False)) if a != b),
                min(len(mine), len(theirs)),
            )
            raise ValueError(
                f"{fn}: model {model.name!r} has features of another image set than the data's {what} "
                f"images ({len(mine)} vs {len(theirs)} images, first difference at index {diff}); features "
                "must be of the data's images in their order"
            )
    out = {}
    for layer in model.layers:
        if layer not in model.features:
            raise ValueError(
                f"{fn}: model {model.name!r} has no layer {layer!r}; its features are of "
                f"{list(model.features)}"
            )
        arr = np.asarray(model.features[layer])
        if arr.ndim < 2 or arr.shape[0] != len(images) or not np.issubdtype(arr.dtype, np.number):
            raise ValueError(
                f"{fn}: model {model.name!r} layer {layer!r}: features must be (n_images, ...) numbers for "
                f"the data's {len(images)} {what} images, got shape {arr.shape} ({arr.dtype}); models with "
                "different image sets cannot be compared"
            )
        out[layer] = arr.reshape(len(images), -1)
    return out
