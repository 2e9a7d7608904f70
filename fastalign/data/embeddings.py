"""Image embeddings by a torch model, computed once and cached on disk.

:func:`embed_images` runs a model over image files and keeps one row per file in
``cache_dir/<key>/embeddings.npy`` with ``index.json`` beside it. Which rows may be reused is decided by
two things only:

- the key, which covers the model's class, weights and buffers and the transform (:func:`model_key`);
  a key the caller names covers what :func:`model_key` cannot see (a plain function's code, a
  transform's settings), and for a ``torch.nn.Module`` the weights are folded in as well, so changed
  weights never reuse rows under an unchanged name;
- each file's absolute path and the SHA-256 of its bytes, so a row is reused only for the same file with
  the same content, whatever its size or modification time say (a file rewritten within the filesystem's
  timestamp resolution, or copied over with its old time, is recomputed).

The files hold no code: the rows are a plain float32 ``.npy`` read with ``allow_pickle=False``
(:func:`fastalign.data._io.load_npy`) and the index is JSON. A cache that is damaged in any way (missing
or extra fields, rows that do not match the index's hash, another key) is recomputed, not trusted, and
an update replaces the folder as a unit.

:func:`normalize_embeddings` is the normalisation the decoding papers apply to both sides before the
contrastive loss and retrieval (AlignVis: mean-centred over features, then unit L2 norm).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import inspect
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any, overload

import numpy as np
import torch

from fastalign._checks import check_floating, check_int, check_tensor, compute_dtype, message, pow2
from fastalign._modes import eval_mode
from fastalign.data._io import file_digest, load_npy, replacing_dir, require_file
from fastalign.data.images import ImageTransform, _check_transform, _path_list

_SHA256 = re.compile(r"[0-9a-f]{64}")


@overload
def normalize_embeddings(x: torch.Tensor, dim: int = -1) -> torch.Tensor: ...
@overload
def normalize_embeddings(x: np.ndarray, dim: int = -1) -> np.ndarray: ...
def normalize_embeddings(x: torch.Tensor | np.ndarray, dim: int = -1) -> torch.Tensor | np.ndarray:
    """Embeddings mean-centred over their features and scaled to unit L2 norm.

    ``y = (x - mean(x)) / ||x - mean(x)||_2`` along ``dim``: what AlignVis does to the image and the
    brain embeddings before the CLIP loss and retrieval (src/training/trainer.py, src/utils.py
    ``get_embeddings``: ``z - z.mean(-1, keepdim=True)`` then ``F.normalize(z, p=2, dim=-1)``). Unlike
    F.normalize's ``eps=1e-12``, every row that is not constant gets unit norm however small or large
    its deviations from its mean (the centred row is first scaled by an exact power of two, which
    changes no digit of the result); a constant row has nothing left after centring and gives zeros,
    as published. Differentiable (the
    brain side is normalised inside the training step); no value checks, so no device sync: NaN and
    inf propagate.

    Args:
        x: (..., D, ...) floating tensor or numpy array; half-precision tensors are computed in
            float32 and returned in their dtype.
        dim: The feature dimension.

    Returns:
        The normalised embeddings, of x's type, shape, dtype and device.

    Raises:
        TypeError: not a tensor or array, or not floating.
        ValueError: 0-d input, or ``dim`` out of range.
    """
    fn = "normalize_embeddings"
    t = check_tensor(fn, "x", x, arrays=True)
    check_floating(fn, "x", t)
    if t.dim() == 0:
        raise ValueError(f"{fn}: x must have at least one dimension (the features), got a 0-d input")
    check_int(fn, "dim", dim)
    if not -t.dim() <= dim < t.dim():
        raise ValueError(message(fn, "dim", f"an int in [{-t.dim()}, {t.dim() - 1}] for x of shape "
                                 f"{tuple(t.shape)}", dim))  # fmt: skip
    work = t.to(compute_dtype(t))
    centred = work - work.mean(dim=dim, keepdim=True)
    exponent = torch.frexp(centred.detach().abs().amax(dim=dim, keepdim=True)).exponent
    scaled = centred * pow2(-exponent.to(torch.int64), work.dtype)
    norm = torch.linalg.vector_norm(scaled, dim=dim, keepdim=True)
    out = (scaled / norm.clamp_min(torch.finfo(work.dtype).tiny)).to(t.dtype)
    return out.numpy() if isinstance(x, np.ndarray) else out


@functools.lru_cache(maxsize=256)
def _class_source(cls: type) -> str:
    """A class's source (its forward's code), or its qualified name where there is none to read."""
    try:
        return inspect.getsource(cls)
    except (OSError, TypeError):
        return f"{cls.__module__}.{cls.__qualname__}"


# model_key's digests within model_keys_cached(): (id, transform repr) -> (the module, its digest)
_MODEL_KEYS: contextvars.ContextVar[dict[tuple[int, str], tuple[torch.nn.Module, str]] | None] = (
    contextvars.ContextVar("fastalign_model_keys", default=None)
)


@contextlib.contextmanager
def model_keys_cached() -> Iterator[None]:
    """Within the block, :func:`model_key` hashes each module (with one transform) once: for callers that do
    not change the modules they hash meanwhile (evaluate hashed a module given from Python for its feature
    cache and again for its config.json: 0.15 s each for a CORnet-S on a 2-core Xeon)."""
    token = _MODEL_KEYS.set({})
    try:
        yield
    finally:
        _MODEL_KEYS.reset(token)


def model_key(model: torch.nn.Module, transform: Any = None) -> str:
    """A hex digest of what a model computes: its structure (``repr``: every submodule with its settings,
    e.g. ReLU or Tanh, a pooling size), the source of every submodule's class (a changed ``forward``), its
    parameters and all its buffers (persistent or not), and the transform's repr.

    Used as the default cache key: any change of weights, structure, code or preprocessing gives a new key.
    """
    known = _MODEL_KEYS.get()
    slot = (id(model), repr(transform))
    if known is not None and slot in known and known[slot][0] is model:
        return known[slot][1]
    digest = _model_digest(model, transform)
    if known is not None:
        known[slot] = (model, digest)  # the module held, so its id is not reused within the block
    return digest


def _model_digest(model: torch.nn.Module, transform: Any) -> str:
    h = hashlib.sha256()
    h.update(f"{type(model).__module__}.{type(model).__qualname__}|{transform!r}|{model!r}".encode())
    classes: dict[type, None] = dict.fromkeys(type(m) for m in model.modules())
    for cls in classes:
        h.update(_class_source(cls).encode())
    state = model.state_dict()
    extra = {f"buffer:{n}": b for n, b in model.named_buffers() if n not in state}  # non-persistent ones
    for name, t in {**state, **extra}.items():
        h.update(name.encode())
        h.update(str((tuple(t.shape), t.dtype)).encode())
        # the tensor's bytes read in place (hashlib takes the array's buffer; tobytes() copied them)
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy() if t.numel() else b"")
    return h.hexdigest()[:32]


def _cache_key(model: Any, key: str | None, transform: Any) -> str:
    if key is None:
        if not isinstance(model, torch.nn.Module):
            raise TypeError("embed_images: pass key= when model is not a torch.nn.Module")
        return model_key(model, transform)
    return f"{key}|weights={model_key(model)}" if isinstance(model, torch.nn.Module) else key


def embed_images(
    model: torch.nn.Module | Callable[[torch.Tensor], Any],
    paths: Sequence[str | os.PathLike[str]],
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    key: str | None = None,
    transform: Callable[[Any], torch.Tensor] | None = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Embeddings (n_images, d) of image files by a torch model, computed once and cached on disk.

    The cache lives in ``cache_dir/<hash of the key>/`` as ``embeddings.npy`` (one row per file) and
    ``index.json`` (the key, a hash of the rows, and each row's absolute path and SHA-256 of the file's
    bytes). A call reuses the rows of files whose content is unchanged and computes only the rest; other
    weights, another model or transform give another key, hence a fresh cache (see the module doc).
    The output is float32 in the order of ``paths``, as the model returned it (no normalisation).

    Args:
        model: Maps a (batch, 3, H, W) float tensor to (batch, ...) features (flattened to (batch, d)). A
            :class:`~fastalign.models.ReAlnet`, whose forward returns ``(logits, response)``, gives its
            IT block output (the last timestep, flattened), the layer :func:`fastalign.train.decode`
            embeds for ReAlnet run folders by default.
        paths: Image files.
        cache_dir: Cache folder; None computes without caching.
        key: Cache key (e.g. "cornet-s-v1"); needed when ``model`` is not a Module, and then it must
            change whenever the model or transform does. Default: :func:`model_key` of the model and
            transform. For a Module the weights are part of the key either way.
        transform: Image -> tensor; default ``ImageTransform(crop=False)`` (resized to 224 x 224, not
            cropped, as alignment, evaluation and decoding see images; ImageNet normalisation).
        batch_size: Images per forward pass.
        device: Where the model runs (a torch.device or its name, e.g. "cuda:0").

    Raises:
        TypeError, ValueError: an argument of the wrong type or value (the message names it).
        FileNotFoundError: an image file does not exist.
    """
    fn = "embed_images"
    if not callable(model):
        raise TypeError(f"{fn}: model must be a torch.nn.Module or callable, got {type(model).__name__}")
    items = _path_list(paths, fn)
    bad = [(i, p) for i, p in enumerate(items) if not isinstance(p, (str, os.PathLike))]
    if bad:
        i, p = bad[0]
        raise TypeError(f"{fn}: paths must hold file paths (str or os.PathLike), got paths[{i}] = {p!r}")
    if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
        raise TypeError(f"{fn}: cache_dir must be None or a folder path, got {type(cache_dir).__name__}")
    if key is not None and not isinstance(key, str):
        raise TypeError(f"{fn}: key must be None or a str, got {type(key).__name__}")
    _check_transform(transform, fn)
    check_int(fn, "batch_size", batch_size, minimum=1)
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"{fn}: device must be a str or torch.device, got {type(device).__name__}")
    try:
        device = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"{fn}: device={device!r} is not a device name ({err})") from err
    # a key the caller names covers its transform; the default's is added, since the default changed
    # (it used to crop): rows cached under a named key with the cropping default are not reused
    named_default = key is not None and transform is None
    transform = transform or ImageTransform(crop=False)
    if named_default:
        key = f"{key}|default transform={transform!r}"
    files = [os.path.abspath(require_file(p, "embed_images: image")) for p in items]
    unique = list(dict.fromkeys(files))
    if cache_dir is None:
        return _stack(_embed(model, unique, transform, int(batch_size), device), files, None)
    full_key = _cache_key(model, key, transform)
    folder = os.path.join(os.fspath(cache_dir), hashlib.sha256(full_key.encode()).hexdigest()[:32])
    cached = _read_cache(folder, full_key)
    digests = {f: file_digest(f) for f in unique}
    todo = [f for f in unique if f not in cached or cached[f][0] != digests[f]]
    new = _embed(model, todo, transform, int(batch_size), device)
    rows = {f: cached[f][1] for f in unique if f not in new} | new
    out = _stack(rows, files, folder)
    if new:
        _write_cache(folder, full_key, dict(cached) | {f: (digests[f], row) for f, row in new.items()})
    return out


def _embed(
    model: Callable[[torch.Tensor], Any],
    files: list[str],
    transform: Callable[[Any], torch.Tensor],
    batch_size: int,
    device: torch.device,
) -> dict[str, np.ndarray]:
    """The model's output for each file, flattened to float32 rows, in eval mode and without autograd."""
    rows: dict[str, np.ndarray] = {}
    modes = eval_mode(model) if isinstance(model, torch.nn.Module) else contextlib.nullcontext()
    it = _realnet_it(model)
    taps: list[torch.Tensor] = []
    # the block's last call (its final timestep), as evaluate and decode tap a layer; nothing after the
    # block changes its output in place
    hook = it.register_forward_hook(lambda _m, _i, out: taps.append(out)) if it is not None else None
    with modes, contextlib.ExitStack() as stack:
        if hook is not None:
            stack.callback(hook.remove)
        with torch.inference_mode():
            for start in range(0, len(files), batch_size):
                chunk = files[start : start + batch_size]
                taps.clear()
                out = model(torch.stack([transform(f) for f in chunk]).to(device))
                if getattr(out, "_fields", None) == ("logits", "response") and taps:
                    out = taps[-1]  # a ReAlnet: its IT block, decode's default layer for ReAlnet runs
                if not isinstance(out, torch.Tensor):
                    raise TypeError(
                        f"embed_images: model must return a tensor, got {type(out).__name__}; wrap the model "
                        "so that it returns one"
                    )
                rows.update(
                    zip(chunk, out.detach().float().cpu().reshape(len(chunk), -1).numpy(), strict=True)
                )
    return rows


def _realnet_it(model: Any) -> torch.nn.Module | None:
    """The IT block of a ReAlnet (a module with ``backbone.IT`` whose forward returns a ``ReAlnetOutput``
    of logits and response), tapped when the model's output is that pair; None for other models."""
    if not isinstance(model, torch.nn.Module):
        return None
    try:
        return model.get_submodule("backbone.IT")
    except AttributeError:
        return None


def _stack(rows: dict[str, np.ndarray], files: list[str], folder: str | None) -> np.ndarray:
    """The rows of ``files`` in their order as one float32 array; an error if their lengths differ."""
    dims = {r.shape for r in rows.values()}
    if len(dims) > 1:
        raise ValueError(f"embed_images: cached and new embeddings differ in shape {dims}; clear {folder!r}")
    return np.stack([rows[f] for f in files]).astype(np.float32) if files else np.zeros((0, 0), np.float32)


def _read_cache(folder: str, key: str) -> dict[str, tuple[str, np.ndarray]]:
    """The cached (file digest, row) by file; empty when the cache is missing, for another key, or
    damaged in any way (a damaged cache is recomputed, not trusted)."""
    index, emb = os.path.join(folder, "index.json"), os.path.join(folder, "embeddings.npy")
    if not (os.path.isfile(index) and os.path.isfile(emb)):
        return {}
    try:
        with open(index) as f:
            meta = json.load(f)
        arr = load_npy(emb, "embed_images cache")
    except (OSError, ValueError):
        return {}
    files = meta.get("files") if isinstance(meta, dict) else None
    if not (
        isinstance(files, list)
        and meta.get("key") == key
        and meta.get("sha256") == hashlib.sha256(arr.tobytes()).hexdigest()
        and arr.ndim == 2
        and arr.dtype == np.float32
        and len(files) == len(arr)
        and all(_is_entry(e) for e in files)
    ):
        return {}
    return {e["path"]: (e["sha256"], arr[i]) for i, e in enumerate(files)}


def _is_entry(entry: Any) -> bool:
    """An index.json row: exactly {"path": str, "sha256": 64 lowercase hex digits}."""
    return (
        isinstance(entry, dict)
        and set(entry) == {"path", "sha256"}
        and isinstance(entry["path"], str)
        and isinstance(entry["sha256"], str)
        and _SHA256.fullmatch(entry["sha256"]) is not None
    )


def _write_cache(folder: str, key: str, entries: dict[str, tuple[str, np.ndarray]]) -> None:
    names = sorted(entries)
    arr = np.stack([entries[n][1] for n in names]).astype(np.float32)
    meta = {
        "key": key,
        "sha256": hashlib.sha256(arr.tobytes()).hexdigest(),
        "files": [{"path": n, "sha256": entries[n][0]} for n in names],
    }
    # The folder is replaced as a unit, so the rows and the index always come from one write; the hash
    # still catches a pair that was damaged or mixed by hand.
    with replacing_dir(folder) as staging:
        np.save(os.path.join(staging, "embeddings.npy"), arr, allow_pickle=False)
        with open(os.path.join(staging, "index.json"), "w") as f:
            json.dump(meta, f)
