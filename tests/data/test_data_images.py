"""Image loading without torchvision, and the embedding cache (reuse, partial recompute, invalidation)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from fastalign.data import IMAGENET_MEAN, IMAGENET_STD, ImageTransform, embed_images, load_image, load_images


def _write(path: str, seed: int, size: tuple[int, int] = (40, 30)) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="PNG")
    return path


def test_transform_matches_resize_crop_normalise_by_hand(tmp_path: os.PathLike) -> None:
    path = _write(os.path.join(tmp_path, "a.png"), 0, (40, 30))  # landscape: height is the shorter side
    got = load_image(path, size=16, resize=20)
    with Image.open(path) as im:
        # torchvision's Resize(int) truncates the long side: int(20 * 40 / 30) = int(26.7) = 26
        small = im.convert("RGB").resize((26, 20), Image.Resampling.BILINEAR)
    crop = np.asarray(small, dtype=np.float32)[2:18, 5:21] / 255.0  # round((26 - 16) / 2) = 5
    want = (crop - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    np.testing.assert_allclose(got.permute(1, 2, 0).numpy(), want, rtol=1e-5, atol=1e-6)
    raw = load_image(path, size=16, resize=16, normalize=False)
    assert tuple(raw.shape) == (3, 16, 16) and 0.0 <= float(raw.min()) and float(raw.max()) <= 1.0
    assert tuple(load_images([path, path], ImageTransform(8)).shape) == (2, 3, 8, 8)
    with pytest.raises(FileNotFoundError, match=r"nope.png"):
        load_image(os.path.join(tmp_path, "nope.png"))
    with pytest.raises(ValueError, match="resize must be an int >= size"):
        ImageTransform(16, resize=8)


class _Counting(torch.nn.Module):
    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(scale))
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += x.shape[0]
        return x.mean(dim=(2, 3)) * self.w


@pytest.mark.parametrize(("dtype", "suffix"), [(np.uint16, ".png"), (np.int32, ".tif")])
def test_16_bit_images_are_rescaled_to_8_bits(tmp_path: os.PathLike, dtype: type, suffix: str) -> None:
    """PIL's convert("RGB") clips 16-bit values (modes I;16 and I) at 255: such images loaded white."""
    grey = np.arange(64, dtype=np.float64).reshape(8, 8) * 1000  # 0..63,000 of 65,535
    path = os.path.join(tmp_path, f"deep{suffix}")
    Image.fromarray(grey.astype(dtype)).save(path)
    assert Image.open(path).mode in ("I;16", "I")
    got = load_image(path, size=8, resize=8, normalize=False)
    want = torch.from_numpy(np.round(grey / 257) / 255).float()
    torch.testing.assert_close(got, want.expand(3, 8, 8), atol=1e-6, rtol=0)


def test_float_and_out_of_range_images_are_refused(tmp_path: os.PathLike) -> None:
    path = os.path.join(tmp_path, "float.tif")
    Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32)).save(path)
    with pytest.raises(
        ValueError, match=r"image: '.*float.tif' must be an 8- or 16-bit integer image, got PIL mode 'F'"
    ):
        load_image(path, size=8)
    path = os.path.join(tmp_path, "big.tif")
    Image.fromarray(np.full((8, 8), 70000, dtype=np.int32)).save(path)
    with pytest.raises(
        ValueError,
        match=r"must hold 16-bit values \(0..65535\) in PIL mode 'I', got values in \[70000, 70000\]",
    ):
        load_image(path, size=8)


def test_embedding_cache_reuses_and_invalidates(tmp_path: os.PathLike) -> None:
    folder = os.path.join(tmp_path, "imgs")
    os.makedirs(folder)
    paths = [_write(os.path.join(folder, f"{i}.png"), i) for i in range(5)]
    cache = os.path.join(tmp_path, "cache")
    tf = ImageTransform(8)
    model = _Counting()
    first = embed_images(model, paths[:3], cache, transform=tf, batch_size=2)
    assert model.seen == 3 and first.shape == (3, 3) and first.dtype == np.float32
    np.testing.assert_allclose(first, load_images(paths[:3], tf).mean(dim=(2, 3)).numpy(), rtol=1e-6)

    again = embed_images(model, paths[:3][::-1], cache, transform=tf)
    assert model.seen == 3  # all three from the cache, in the requested order
    np.testing.assert_array_equal(again, first[::-1])

    more = embed_images(model, paths, cache, transform=tf)
    assert model.seen == 5  # only the two new files computed
    np.testing.assert_array_equal(more[:3], first)

    _write(paths[0], 99)  # the file changes: its row is recomputed
    os.utime(paths[0], ns=(1, 1))
    changed = embed_images(model, paths, cache, transform=tf)
    assert model.seen == 6 and not np.array_equal(changed[0], first[0])

    other = _Counting(2.0)  # other weights: another key, nothing reused
    np.testing.assert_allclose(embed_images(other, paths, cache, transform=tf), 2 * changed, rtol=1e-6)
    assert other.seen == 5
    keyed = _Counting(3.0)
    embed_images(keyed, paths[:2], cache, key="my-model", transform=tf)
    embed_images(keyed, paths[:2], cache, key="my-model", transform=tf)
    assert keyed.seen == 2


def test_cache_reuses_rows_only_for_the_same_content(tmp_path: os.PathLike) -> None:
    """A file rewritten with other pixels but the same size and modification time (a rewrite within the
    filesystem's timestamp resolution, or a copy that keeps the old time) is recomputed."""
    path = os.path.join(tmp_path, "a.bmp")  # BMP: the file size depends only on the image size
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    before = os.stat(path)
    cache, tf, model = os.path.join(tmp_path, "cache"), ImageTransform(8), _Counting()
    first = embed_images(model, [path], cache, transform=tf)
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(path).st_size == before.st_size
    second = embed_images(model, [path], cache, transform=tf)
    assert model.seen == 2 and not np.array_equal(first, second)
    np.testing.assert_allclose(second, load_images([path], tf).mean(dim=(2, 3)).numpy(), rtol=1e-6)
    os.utime(path, ns=(1, 1))  # a new time alone (a copy, a touch) keeps the rows of unchanged content
    np.testing.assert_array_equal(embed_images(model, [path], cache, transform=tf), second)
    assert model.seen == 2


def test_named_key_still_covers_the_weights(tmp_path: os.PathLike) -> None:
    """key= names a Module's cache, but other weights under the same name are recomputed, not reused."""
    path = _write(os.path.join(tmp_path, "a.png"), 0)
    cache, tf = os.path.join(tmp_path, "cache"), ImageTransform(8)
    model = _Counting(1.0)
    first = embed_images(model, [path], cache, key="cornet-s", transform=tf)
    with torch.no_grad():
        model.w.fill_(2.0)
    second = embed_images(model, [path], cache, key="cornet-s", transform=tf)
    assert model.seen == 2
    np.testing.assert_allclose(second, 2 * first, rtol=1e-6)


def test_damaged_cache_is_recomputed(tmp_path: os.PathLike) -> None:
    paths = [_write(os.path.join(tmp_path, f"{i}.png"), i) for i in range(2)]
    cache = os.path.join(tmp_path, "cache")
    model = _Counting()
    want = embed_images(model, paths, cache, transform=ImageTransform(8))
    (sub,) = os.listdir(cache)
    np.save(os.path.join(cache, sub, "embeddings.npy"), np.zeros((2, 3), np.float32))
    np.testing.assert_array_equal(embed_images(model, paths, cache, transform=ImageTransform(8)), want)
    assert model.seen == 4


@pytest.mark.parametrize(
    "damage",
    [
        "not json",
        "a list",
        "no files",
        "entry without path",
        "stat not two ints",
        "digest not sha256",
        "one row too few",
        "empty",
    ],
)
def test_damaged_index_is_recomputed_and_rewritten(tmp_path: os.PathLike, damage: str) -> None:
    paths = [_write(os.path.join(tmp_path, f"{i}.png"), i) for i in range(2)]
    cache = os.path.join(tmp_path, "cache")
    model = _Counting()
    want = embed_images(model, paths, cache, transform=ImageTransform(8))
    (sub,) = os.listdir(cache)
    index = os.path.join(cache, sub, "index.json")
    with open(index) as f:
        meta = json.load(f)
    text = {
        "not json": '{"key": ',
        "a list": json.dumps([meta]),
        "no files": json.dumps({k: v for k, v in meta.items() if k != "files"}),
        "entry without path": json.dumps(
            {**meta, "files": [{k: v for k, v in e.items() if k != "path"} for e in meta["files"]]}
        ),
        "stat not two ints": json.dumps({**meta, "files": [{**e, "stat": [1.5]} for e in meta["files"]]}),
        "digest not sha256": json.dumps(
            {**meta, "files": [{**e, "sha256": "0" * 63} for e in meta["files"]]}
        ),
        "one row too few": json.dumps({**meta, "files": meta["files"][:1]}),
        "empty": "",
    }[damage]
    with open(index, "w") as f:
        f.write(text)
    np.testing.assert_array_equal(embed_images(model, paths, cache, transform=ImageTransform(8)), want)
    assert model.seen == 4  # recomputed
    with open(index) as f:
        assert json.load(f) == meta  # and rewritten
    embed_images(model, paths, cache, transform=ImageTransform(8))
    assert model.seen == 4 and os.listdir(cache) == [sub]


def test_load_images_checks_its_arguments(tmp_path: os.PathLike) -> None:
    path = _write(os.path.join(tmp_path, "a.png"), 0)
    with pytest.raises(ValueError, match="load_images: paths is empty"):
        load_images([])
    with pytest.raises(TypeError, match="load_images: paths must be a sequence of image paths, got str"):
        load_images(path)
    with pytest.raises(TypeError, match="load_images: transform must be None or callable"):
        load_images([path], transform=8)  # type: ignore[arg-type]
    assert tuple(load_images(iter([path]), ImageTransform(8)).shape) == (1, 3, 8, 8)


@pytest.mark.parametrize(
    "options, exc, match",
    [
        ({"batch_size": 2.5}, TypeError, "batch_size must be an int >= 1, got 2.5"),
        ({"batch_size": None}, TypeError, "batch_size must be an int >= 1, got None"),
        ({"batch_size": "4"}, TypeError, "batch_size must be an int >= 1, got '4'"),
        ({"batch_size": True}, TypeError, "batch_size must be an int >= 1, got True"),
        ({"batch_size": 0}, ValueError, "batch_size must be an int >= 1, got 0"),
        ({"paths": "a.png"}, TypeError, "paths must be a sequence of image paths, got str"),
        ({"paths": [3]}, TypeError, r"paths must hold file paths .*, got paths\[0\] = 3"),
        ({"model": "resnet"}, TypeError, "model must be a torch.nn.Module or callable, got str"),
        ({"cache_dir": 3}, TypeError, "cache_dir must be None or a folder path, got int"),
        ({"key": 3}, TypeError, "key must be None or a str, got int"),
        ({"transform": 224}, TypeError, "transform must be None or callable"),
        ({"device": "gpu"}, ValueError, "device='gpu' is not a device name"),
        ({"device": 0.5}, TypeError, "device must be a str or torch.device, got float"),
    ],
)
def test_embed_images_names_bad_arguments(
    tmp_path: os.PathLike, options: dict, exc: type, match: str
) -> None:
    path = _write(os.path.join(tmp_path, "a.png"), 0)
    kwargs = {
        "model": torch.nn.Flatten(),
        "paths": [path],
        "cache_dir": tmp_path,
        "transform": ImageTransform(4),
    }
    kwargs.update(options)
    with pytest.raises(exc, match="embed_images: " + match):
        embed_images(**kwargs)
    assert os.listdir(tmp_path) == ["a.png"]  # refused before anything is computed or cached


def test_embed_images_takes_numpy_ints(tmp_path: os.PathLike) -> None:
    paths = [_write(os.path.join(tmp_path, f"{i}.png"), i) for i in range(3)]
    model, t = torch.nn.Flatten(), ImageTransform(4)
    want = embed_images(model, paths, transform=t)
    np.testing.assert_array_equal(embed_images(model, paths, transform=t, batch_size=np.int64(2)), want)


def test_the_dataset_and_embedding_defaults_resize_without_cropping(tmp_path: os.PathLike) -> None:
    """BrainImageDataset and embed_images see images as the published ReAlnet and align, evaluate and
    decode do: Resize((224, 224)), no crop (they used Resize(256) + CenterCrop(224)). Rows cached under a
    named key with the old cropping default are not reused for the new one."""
    from fastalign.data import BrainImageDataset

    paths = [_write(os.path.join(tmp_path, f"{i}.png"), i, (40, 30)) for i in range(2)]
    want = load_images(paths, ImageTransform(crop=False))
    ds = BrainImageDataset(np.zeros((2, 1, 3)), paths)
    torch.testing.assert_close(torch.stack([ds[i][0] for i in range(2)]), want, rtol=0, atol=0)
    pixels = torch.nn.Flatten()
    np.testing.assert_array_equal(embed_images(pixels, paths), want.flatten(1).numpy())
    cache = os.path.join(tmp_path, "cache")
    cropped = embed_images(lambda x: x.flatten(1), paths, cache, key="pixels", transform=ImageTransform())
    assert cropped.shape == want.flatten(1).shape and not np.array_equal(cropped, want.flatten(1).numpy())
    np.testing.assert_array_equal(
        embed_images(lambda x: x.flatten(1), paths, cache, key="pixels"), want.flatten(1).numpy()
    )
