"""Image loading (PIL, no torchvision) and a cache of image embeddings.

:class:`ImageTransform` is :class:`fastalign.models.ImageNetTransform` (torchvision's ``Resize(resize)
-> CenterCrop(size) -> ToTensor -> Normalize(ImageNet)`` without torchvision) that also opens files.
:func:`embed_images` runs a torch image model over a list of image files once and keeps the
embeddings on disk, keyed by file, for the next call.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

from fastalign.data._io import load_npy, replacing_dir, require_file
from fastalign.data.responses import _check_int
from fastalign.models.transforms import IMAGENET_MEAN as IMAGENET_MEAN  # re-exported by fastalign.data
from fastalign.models.transforms import IMAGENET_STD as IMAGENET_STD
from fastalign.models.transforms import ImageNetTransform


class ImageTransform(ImageNetTransform):
    """:class:`fastalign.models.ImageNetTransform` that also opens image files.

    Callable: an image path, PIL image or uint8 tensor -> float32 tensor (3, size, size). Picklable, so
    it works in DataLoader workers. A missing or unreadable file raises an error naming it.

    Args:
        size: Side of the square centre crop.
        resize: Length the shorter side is resized to before cropping; default round(size * 256 / 224)
            (the usual ImageNet evaluation ratio); equal to ``size`` for no cropping margin.
        normalize: Subtract the ImageNet mean and divide by its std (else values in [0, 1]).
    """

    def __call__(self, image: Any) -> torch.Tensor:
        if not isinstance(image, (str, os.PathLike)):
            return super().__call__(image)
        from PIL import Image

        path = require_file(image, "image")
        try:
            with Image.open(path) as opened:
                im = opened.convert("RGB")
        except OSError as err:
            raise ValueError(f"image: {path!r} is not a readable image ({err})") from err
        return super().__call__(im)


def load_image(
    path: str | os.PathLike[str], size: int = 224, resize: int | None = None, normalize: bool = True
) -> torch.Tensor:
    """One image file as a (3, size, size) float32 tensor (see :class:`ImageTransform`)."""
    return ImageTransform(size, resize, normalize)(path)


def _path_list(paths: Any, fn: str) -> list[Any]:
    """``paths`` as a list; one path (a str) would otherwise be read as a sequence of characters."""
    if isinstance(paths, (str, bytes, os.PathLike)) or not isinstance(paths, Iterable):
        raise TypeError(
            f"{fn}: paths must be a sequence of image paths, got {type(paths).__name__}; wrap a single path "
            "in a list"
        )
    return list(paths)


def _check_transform(transform: Any, fn: str) -> None:
    if transform is not None and not callable(transform):
        raise TypeError(
            f"{fn}: transform must be None or callable (image -> tensor), got {type(transform).__name__}"
        )


def load_images(
    paths: Sequence[str | os.PathLike[str]], transform: Callable[[Any], torch.Tensor] | None = None
) -> torch.Tensor:
    """Image files as one (n, 3, H, W) tensor; ``transform`` defaults to ``ImageTransform()``.

    Raises:
        TypeError: ``paths`` is one path or not a sequence, or ``transform`` is not callable.
        ValueError: ``paths`` is empty (a batch of no images has no known size), or a file is not a
            readable image.
        FileNotFoundError: a file does not exist.
    """
    items = _path_list(paths, "load_images")
    _check_transform(transform, "load_images")
    if not items:
        raise ValueError("load_images: paths is empty; expected at least one image path")
    transform = transform or ImageTransform()
    return torch.stack([transform(p) for p in items])


def model_key(model: torch.nn.Module, transform: Any = None) -> str:
    """A hex digest of the model's class, its parameters and buffers, and the transform's repr.

    Used as the default cache key: any change of weights or preprocessing gives a new key.
    """
    h = hashlib.sha256()
    h.update(f"{type(model).__module__}.{type(model).__qualname__}|{transform!r}".encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(str((tuple(t.shape), t.dtype)).encode())
        h.update(
            t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            if t.numel()
            else b""
        )
    return h.hexdigest()[:32]


def _stat(path: str) -> list[int]:
    st = os.stat(path)
    return [int(st.st_size), int(st.st_mtime_ns)]


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

    The cache lives in ``cache_dir/<key>/`` as ``embeddings.npy`` (one row per file) and ``index.json``
    (the absolute path, size and mtime of each row's file). A call reuses the rows of files that are
    unchanged and computes only the rest (new files, or files whose size or mtime changed); a
    different model or transform gives a different key, hence a fresh cache. An update replaces the
    folder as a unit, and a cache that is damaged in any way is recomputed. The output is float32 in
    the order of ``paths``.

    Args:
        model: Maps a (batch, 3, H, W) float tensor to (batch, ...) features (flattened to (batch, d)).
        paths: Image files.
        cache_dir: Cache folder; None computes without caching.
        key: Cache key (e.g. "cornet-s-v1"); default :func:`model_key` of the model (needs a Module).
        transform: Image -> tensor; default ``ImageTransform()`` (224 px, ImageNet normalisation).
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
    _check_int(batch_size, "batch_size", fn, minimum=1)
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"{fn}: device must be a str or torch.device, got {type(device).__name__}")
    try:
        device = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"{fn}: device={device!r} is not a device name ({err})") from err
    transform = transform or ImageTransform()
    files = [os.path.abspath(require_file(p, "embed_images: image")) for p in items]
    cached: dict[str, tuple[list[int], np.ndarray]] = {}
    folder = None
    if cache_dir is not None:
        if key is None:
            if not isinstance(model, torch.nn.Module):
                raise TypeError("embed_images: pass key= when model is not a torch.nn.Module")
            key = model_key(model, transform)
        folder = os.path.join(os.fspath(cache_dir), hashlib.sha256(key.encode()).hexdigest()[:32])
        cached = _read_cache(folder, key)
    stats = {f: _stat(f) for f in files}
    todo = [f for f in dict.fromkeys(files) if f not in cached or not np.array_equal(cached[f][0], stats[f])]
    new: dict[str, np.ndarray] = {}
    was_training = getattr(model, "training", False)
    if isinstance(model, torch.nn.Module):
        model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(todo), batch_size):
                chunk = todo[start : start + batch_size]
                out = model(torch.stack([transform(f) for f in chunk]).to(device))
                if not isinstance(out, torch.Tensor):
                    raise TypeError(
                        f"embed_images: model must return a tensor, got {type(out).__name__}; wrap the model "
                        "so that it returns one"
                    )
                out = out.detach().float().cpu().reshape(len(chunk), -1).numpy()
                new.update(zip(chunk, out, strict=True))
    finally:
        if isinstance(model, torch.nn.Module):
            model.train(was_training)
    rows = {f: cached[f][1] for f in files if f not in new} | new
    dims = {r.shape for r in rows.values()}
    if len(dims) > 1:
        raise ValueError(f"embed_images: cached and new embeddings differ in shape {dims}; clear {folder!r}")
    if folder is not None and new:
        entries = {f: (st, row) for f, (st, row) in cached.items()}
        entries.update({f: (stats[f], row) for f, row in new.items()})
        _write_cache(folder, key or "", entries)
    return np.stack([rows[f] for f in files]).astype(np.float32) if files else np.zeros((0, 0), np.float32)


def _read_cache(folder: str, key: str) -> dict[str, tuple[list[int], np.ndarray]]:
    """The cached rows by file; empty when the cache is missing, for another key, or damaged in any way
    (a damaged cache is recomputed, not trusted)."""
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
        and len(files) == len(arr)
        and all(_is_entry(e) for e in files)
    ):
        return {}
    return {e["path"]: (e["stat"], arr[i]) for i, e in enumerate(files)}


def _is_entry(entry: Any) -> bool:
    """An index.json row: {"path": str, "stat": [size, mtime_ns]}."""
    stat = entry.get("stat") if isinstance(entry, dict) else None
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("path"), str)
        and isinstance(stat, list)
        and len(stat) == 2
        and all(type(v) is int for v in stat)
    )


def _write_cache(folder: str, key: str, entries: dict[str, tuple[list[int], np.ndarray]]) -> None:
    names = sorted(entries)
    arr = np.stack([entries[n][1] for n in names]).astype(np.float32)
    meta = {
        "key": key,
        "sha256": hashlib.sha256(arr.tobytes()).hexdigest(),
        "files": [{"path": n, "stat": entries[n][0]} for n in names],
    }
    # The folder is replaced as a unit, so the rows and the index always come from one write; the hash
    # still catches a pair that was damaged or mixed by hand.
    with replacing_dir(folder) as staging:
        np.save(os.path.join(staging, "embeddings.npy"), arr, allow_pickle=False)
        with open(os.path.join(staging, "index.json"), "w") as f:
            json.dump(meta, f)
