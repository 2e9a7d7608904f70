"""Edge cases of fastalign.data: normalisation statistics, response containers, MVNN, fMRI, datasets,
epoching, file loaders (damaged files), paths and images, against numpy oracles and the published
reference implementation (fastalign.data.reference)."""

from __future__ import annotations

import hashlib
import math
import os

import numpy as np
import pytest
import torch
from edge_cases import EDGE_SETTINGS, assert_close, attempt
from hypothesis import given
from hypothesis import strategies as st

from fastalign import data as D
from fastalign.data import reference as published

# a missing file is a FileNotFoundError by design (documented), not a ValueError
MISSING = FileNotFoundError


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _array(kind: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = _rng(seed)
    if kind == "bool":
        return rng.random(shape) > 0.5
    if kind.startswith("int"):
        return rng.integers(-50, 50, shape).astype(kind)
    if kind.startswith("complex"):
        return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(kind)
    return rng.normal(size=shape).astype(kind)


# ----------------------------------------------------------------------------------------- fit_norm_stats


@pytest.mark.parametrize("mode", ["zscore", "channel"])
@pytest.mark.parametrize("kind", ["float64", "float32", "float16", "int32", "bool", "complex128"])
@pytest.mark.parametrize("ndim", [3, 4])
def test_fit_norm_stats_matches_numpy(mode: str, kind: str, ndim: int) -> None:
    """Means and stds are numpy's (over images, repetitions and time); flat or non-real data is refused."""
    shape = (4, 3, 5) if ndim == 3 else (4, 3, 2, 5)
    x = _array(kind, shape)
    out = attempt(lambda: D.fit_norm_stats(x, mode), "fit_norm_stats", ["trials"])
    if kind in ("bool", "complex128"):
        assert not out.ok, f"fit_norm_stats accepted {kind} trials"
        return
    assert out.ok, out.error
    x64 = x.astype(np.float64)
    axes = None if mode == "zscore" else ((0, 1, 3) if ndim == 4 else (0, 1))
    mean, std = x64.mean(axis=axes), x64.std(axis=axes)
    if mode == "channel" and ndim == 4:
        mean, std = mean[:, None], std[:, None]
    tol = {"float32": torch.float32, "float16": torch.float16}.get(kind, torch.float64)
    assert_close(out.value.mean, mean, tol, "mean", scale=float(np.abs(x64).max()))
    assert_close(out.value.std, std, tol, "std")


@pytest.mark.parametrize("scale", [1e200, 1e-170], ids=str)
@pytest.mark.parametrize("mode", ["zscore", "channel"])
def test_fit_norm_stats_extreme_magnitudes(scale: float, mode: str) -> None:
    """A std of 1e200 or 1e-170 is representable: it is returned (not inf, not 'zero'), or the trials
    are refused with a ValueError naming them."""
    x = _array("float64", (4, 3, 5))
    out = attempt(lambda: D.fit_norm_stats(x * scale, mode), "fit_norm_stats", ["trials"])
    if out.ok:
        axes = None if mode == "zscore" else (0, 1)
        assert_close(out.value.std, x.std(axis=axes) * scale, torch.float64, "std")


@pytest.mark.parametrize("case", ["nan", "inf", "empty", "2d", "list", "torch"])
def test_fit_norm_stats_bad_trials(case: str) -> None:
    x: object = _array("float64", (3, 2, 4))
    if case == "nan":
        x[0, 0, 0] = np.nan  # type: ignore[index]
    elif case == "inf":
        x[0, 0, 0] = np.inf  # type: ignore[index]
    elif case == "empty":
        x = np.zeros((0, 2, 4))
    elif case == "2d":
        x = np.zeros((3, 4))
    elif case == "list":
        x = x.tolist()  # type: ignore[union-attr]
    else:
        x = torch.from_numpy(x).requires_grad_()  # type: ignore[arg-type]
    out = attempt(lambda: D.fit_norm_stats(x, "zscore"), "fit_norm_stats", ["trials"])  # type: ignore[arg-type]
    assert out.ok == (case in ("list", "torch")) or not out.ok


# ----------------------------------------------------------------------------------------- responses


@pytest.mark.parametrize(
    "case",
    [
        "float16",
        "int32",
        "bool",
        "complex",
        "nan",
        "empty",
        "list",
        "torch",
        "torch_grad",
        "torch_bf16",
        "3d",
        "none",
    ],
)
def test_as_responses(case: str) -> None:
    """Anything array-like of 4 real dims becomes EEGResponses with the same values; the rest is a
    ValueError/TypeError naming the argument."""
    base = _array("float64", (2, 2, 3, 4))
    x: object = {
        "float16": base.astype(np.float16),
        "int32": _array("int32", (2, 2, 3, 4)),
        "bool": base > 0,
        "complex": base.astype(np.complex128),
        "nan": np.where(base > 1, np.nan, base),
        "empty": np.zeros((0, 2, 3, 4)),
        "list": base.tolist(),
        "torch": torch.from_numpy(base),
        "torch_grad": torch.from_numpy(base).requires_grad_(),
        "torch_bf16": torch.from_numpy(base).bfloat16(),
        "3d": base[0],
        "none": None,
    }[case]
    out = attempt(lambda: D.as_responses(x), "as_responses", ["data"])
    if case in ("bool", "complex", "nan", "3d", "none"):
        assert not out.ok, f"as_responses accepted {case}"
        return
    assert out.ok, f"as_responses refused {case}: {out.error}"
    want = x.detach().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    np.testing.assert_array_equal(np.asarray(out.value.data, dtype=np.float64), want)


# ----------------------------------------------------------------------------------------- MVNN


def _published(x: np.ndarray, dim: str) -> np.ndarray:
    white, _ = published.published_mvnn([np.asarray(x, dtype=np.float64)], dim)
    return white[0]


@pytest.mark.parametrize("dim", ["time", "epochs"])
@pytest.mark.parametrize("kind", ["float64", "float16", "int32"])
@EDGE_SETTINGS
@given(
    cond=st.integers(1, 2),
    rep=st.integers(2, 3),
    ch=st.integers(1, 3),
    times=st.integers(2, 4),
    how=st.sampled_from(["contiguous", "fortran", "stepped"]),
    seed=st.integers(0, 2**31),
)
def test_mvnn_matches_published(
    dim: str, kind: str, cond: int, rep: int, ch: int, times: int, how: str, seed: int
) -> None:
    """mvnn equals the published per-condition sklearn loop for every dtype and memory layout."""
    x = _array(kind, (cond, rep, ch, times), seed)
    if how == "fortran":
        x = np.asfortranarray(x)
    elif how == "stepped":
        wide = np.zeros((*x.shape[:-1], 2 * times), dtype=x.dtype)
        wide[..., ::2] = x
        x = wide[..., ::2]
    try:
        want = _published(x, dim)
    except (ValueError, np.linalg.LinAlgError):
        want = None  # the published pipeline fails too (a singular covariance)
    if want is not None and np.iscomplexobj(want):
        # fractional_matrix_power of a covariance that is singular up to rounding goes complex
        want = want.real if np.abs(want.imag).max() <= 1e-8 * np.abs(want.real).max() else None
    out = attempt(lambda: D.mvnn(x, dim), "mvnn", ["data", "noise covariance"])
    if not out.ok:
        assert want is None or not np.isfinite(want).all(), f"mvnn refused valid data: {out.error}"
        return
    assert want is not None and np.isfinite(want).all(), "mvnn whitened data whose covariance is singular"
    tol = torch.float64 if kind in ("float64", "int32") else torch.float32
    assert_close(out.value, want, tol if kind != "float16" else torch.float16, f"mvnn[{dim}, {kind}, {how}]")


@pytest.mark.parametrize("dim", ["time", "epochs"])
@pytest.mark.parametrize("scale", [1e200, 1e-170], ids=str)
def test_mvnn_extreme_magnitudes(dim: str, scale: float) -> None:
    """Whitening is scale-free: data of 1e200 or 1e-170 whiten to the unscaled result, or are refused
    with a ValueError naming the data."""
    x = _array("float64", (3, 4, 2, 5))
    out = attempt(lambda: D.mvnn(x * scale, dim), "mvnn", ["data"])
    if out.ok:
        assert_close(out.value, D.mvnn(x, dim), torch.float64, f"mvnn x {scale:g}")


@pytest.mark.parametrize("dim", ["time", "epochs"])
@pytest.mark.parametrize("case", ["empty_conditions", "empty_channels", "one_repetition", "one_time"])
def test_mvnn_degenerate_shapes(dim: str, case: str) -> None:
    """Empty dims and too few samples are a ValueError naming data, never ZeroDivisionError."""
    shape = {
        "empty_conditions": (0, 3, 2, 4),
        "empty_channels": (2, 3, 0, 4),
        "one_repetition": (2, 1, 2, 4),
        "one_time": (2, 3, 2, 1),
    }[case]
    x = _array("float64", shape)
    out = attempt(lambda: D.mvnn(x, dim), "mvnn", ["data", "repetitions", "time points"])
    if out.ok:
        assert_close(out.value, _published(x, dim), torch.float64, case)


@pytest.mark.parametrize("dim", ["time", "epochs"])
def test_mvnn_noiseless_repetitions(dim: str) -> None:
    """Identical repetitions (a stride-0 repetition axis) have zero noise: the covariance is singular
    for dim="time", so whitening must be refused, not amplify rounding noise by 1e16."""
    x = np.broadcast_to(_array("float64", (3, 1, 2, 5)), (3, 4, 2, 5))
    out = attempt(lambda: D.mvnn(x, dim), "mvnn", ["data", "noise covariance"])
    if dim == "time":
        assert not out.ok, f"mvnn whitened noiseless data to values up to {np.abs(out.value).max():.3g}"
    else:
        assert out.ok and np.isfinite(out.value).all()
        assert_close(out.value, _published(np.ascontiguousarray(x), dim), torch.float64, "epochs")


# ----------------------------------------------------------------------------------------- fMRI


@pytest.mark.parametrize(
    "case",
    [
        "ok",
        "int",
        "bool",
        "complex",
        "nan",
        "nan_outside",
        "empty_images",
        "mask_size",
        "index_range",
        "float_index",
    ],
)
def test_fmri_responses(case: str) -> None:
    """Responses and ROIs are checked when made, NaN and inf where ROIs are selected (only the voxels used
    must be finite: files carry NaN outside the brain)."""
    data = _array("float64", (4, 2, 6))
    rois: dict = {"V1": np.array([0, 1, 2])}
    if case == "int":
        data = _array("int32", (4, 2, 6))
    elif case == "bool":
        data = data > 0
    elif case == "complex":
        data = data.astype(np.complex128)
    elif case == "nan":
        data[0, 0, 0] = np.nan
    elif case == "nan_outside":
        data[0, 0, 4] = np.nan
    elif case == "empty_images":
        data = data[:0]
    elif case == "mask_size":
        rois = {"V1": np.ones(5, dtype=bool)}
    elif case == "index_range":
        rois = {"V1": np.array([0, 6])}
    elif case == "float_index":
        rois = {"V1": np.array([0.0, 1.0])}
    out = attempt(
        lambda: D.FMRIResponses(data, rois).select("V1"), "FMRIResponses", ["responses", "ROI", "V1"]
    )
    assert out.ok == (case in ("ok", "int", "nan_outside", "empty_images")), f"{case}: {out.error}"
    if out.ok:
        np.testing.assert_array_equal(out.value.data, np.asarray(data, dtype=float)[:, :, :3])


@pytest.mark.parametrize("n_components", [0, -1, True, 2.0, "2", 5, 2])
def test_response_pca_components(n_components: object) -> None:
    """n_components is a positive int no larger than min(images, voxels)."""
    x = _array("float64", (4, 6))
    out = attempt(lambda: D.ResponsePCA(n_components).fit(x), "ResponsePCA", ["n_components"])  # type: ignore[arg-type]
    assert out.ok == (n_components == 2 and type(n_components) is int), f"{n_components!r}: {out.error}"


def _damaged(tmp_path: os.PathLike, ext: str, how: str) -> str:
    path = os.path.join(tmp_path, f"damaged{ext}")
    good = os.path.join(tmp_path, f"good{ext}")
    arr = _array("float64", (4, 6))
    if ext == ".npy":
        np.save(good, {"responses": arr}, allow_pickle=True) if how == "truncated_dict" else np.save(
            good, arr
        )
    else:
        import h5py

        with h5py.File(good, "w") as f:
            f["responses"] = arr
    raw = open(good, "rb").read()
    body = {
        "truncated": raw[: len(raw) // 2],
        "truncated_dict": raw[: len(raw) - 20],
        "garbage": b"\x93NUMPY garbage" + bytes(range(256)),
        "empty": b"",
        "text": b"responses,1,2,3\n",
    }[how]
    with open(path, "wb") as f:
        f.write(body)
    return path


@pytest.mark.parametrize("ext", [".npy", ".h5"])
@pytest.mark.parametrize("how", ["truncated", "truncated_dict", "garbage", "empty", "text"])
def test_load_fmri_damaged_file(tmp_path: os.PathLike, ext: str, how: str) -> None:
    """A damaged file is a ValueError naming the file, whatever its bytes."""
    if ext == ".h5" and how == "truncated_dict":
        return
    path = _damaged(tmp_path, ext, how)
    out = attempt(lambda: D.load_fmri(path), "load_fmri", [path, os.path.basename(path)])
    assert not out.ok


@pytest.mark.parametrize("loader", ["load_preprocessed_eeg", "load_raw_eeg", "load_image_metadata"])
@pytest.mark.parametrize("how", ["truncated_dict", "garbage", "empty", "text"])
def test_things_loaders_damaged_file(tmp_path: os.PathLike, loader: str, how: str) -> None:
    """The THINGS-EEG2 loaders name the damaged file in a ValueError."""
    path = _damaged(tmp_path, ".npy", how)
    if loader == "load_image_metadata":
        os.replace(path, os.path.join(tmp_path, "image_metadata.npy"))
        path = os.path.join(tmp_path, "image_metadata.npy")
        out = attempt(lambda: D.load_image_metadata(tmp_path), loader, [path])
    else:
        out = attempt(lambda: getattr(D, loader)(path), loader, [path])
    assert not out.ok


# ----------------------------------------------------------------------------------------- epoching


def _raw(sfreq: float = 100.0, n_events: int = 6) -> D.RawEEG:
    rng = _rng(1)
    n = 400
    data = rng.normal(size=(3, n))
    data[2] = 0
    data[2, 50 : 50 + 50 * n_events : 50] = np.tile([1, 2], n_events)[:n_events]
    return D.RawEEG(data, ["O1", "P3", "stim"], ["eeg", "eeg", "stim"], sfreq, "synthetic")


@pytest.mark.parametrize(
    "kwargs",
    [dict(sfreq=0), dict(sfreq=-1.0), dict(sfreq=math.nan), dict(sfreq=math.inf), dict(sfreq="100"),
     dict(tmin=0.5, tmax=0.1), dict(tmin=math.nan), dict(n_repetitions=0), dict(n_repetitions=-1),
     dict(n_repetitions=99), dict(channels="^X"), dict(channels="("), dict(seed=2**70), dict(seed=-1),
     dict(stim_channel="nope")],
    ids=str,
)  # fmt: skip
def test_epoch_session_bad_arguments(kwargs: dict) -> None:
    """Each bad argument is a ValueError/TypeError naming it (or the data it selects nothing from)."""
    opts = dict(n_repetitions=2, sfreq=None, tmin=-0.1, tmax=0.2, baseline=None)
    opts.update(kwargs)
    names = [*kwargs, "channel", "repetition", "condition"]
    out = attempt(lambda: D.epoch_session(_raw(), **opts), "epoch_session", names)
    assert not out.ok, f"epoch_session accepted {kwargs}"


def test_epoch_session_valid_resampling() -> None:
    """Resampling to half the rate halves the samples per epoch; conditions are the event codes."""
    out = D.epoch_session(_raw(), n_repetitions=2, sfreq=50.0, tmin=-0.1, tmax=0.2, baseline=None)
    assert out.data.shape[:3] == (2, 2, 2) and out.conditions.tolist() == [0, 1]  # event code - 1
    assert np.isfinite(out.data).all()


@pytest.mark.parametrize("case", ["empty_test", "empty_training", "not_responses", "seed_huge"])
def test_merge_sessions_bad_arguments(case: str) -> None:
    s = D.EEGResponses(_array("float64", (2, 2, 1, 3)), ["O1"], np.arange(3.0), np.array([1, 2]))
    test, train, seed = [s, s], [s, s], 0
    if case == "empty_test":
        test = []
    elif case == "empty_training":
        train = []
    elif case == "not_responses":
        train = [s.data]  # type: ignore[list-item]
    else:
        seed = 2**70
    out = attempt(lambda: D.merge_sessions(test, train, seed), "merge_sessions", ["test", "training", "seed"])
    assert not out.ok


# ----------------------------------------------------------------------------------------- datasets


@pytest.mark.parametrize(
    "kwargs",
    [dict(times=np.arange(3.0)), dict(times=np.arange(5.0)[None]), dict(ch_names=["a"]),
     dict(ch_names=[1, 2]), dict(flatten="yes"), dict(dtype=torch.int64), dict(dtype="float32"),
     dict(repetitions=[]), dict(repetitions=[5]), dict(repetitions=0), dict(repetitions=True),
     dict(repetitions=2.5), dict(random_repetitions=0), dict(random_repetitions=True),
     dict(random_repetitions=9), dict(channels=[9]), dict(channels=["X"]), dict(channels=[0.5]),
     dict(time_window=(0.3, 0.1)), dict(time_window=slice(0, 0)), dict(time_window=slice(None, None, 0)),
     dict(time_window=(math.nan, 1.0)), dict(normalize="l2"), dict(images=["a.jpg"]),
     dict(images=np.zeros((3, 2))), dict(images="dir")],
    ids=str,
)  # fmt: skip
def test_brain_image_dataset_bad_options(kwargs: dict) -> None:
    """Every bad option is a ValueError/TypeError naming the option."""
    x = _array("float64", (2, 3, 2, 5))
    opts = dict(ch_names=["O1", "O2"], times=np.linspace(0, 0.4, 5))
    opts.update(kwargs)
    name = next(iter(kwargs))
    out = attempt(lambda: D.BrainImageDataset(x, **opts), "BrainImageDataset", [name, "image"])
    assert not out.ok, f"BrainImageDataset accepted {kwargs}"


@pytest.mark.parametrize(
    "kind",
    ["float64", "float32", "float16", "int32", "bool", "complex", "nan", "torch", "torch_grad", "torch_bf16"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_brain_image_dataset_responses(kind: str, dtype: torch.dtype) -> None:
    """Responses are the float64 mean over repetitions, cast to dtype; non-real data is refused."""
    base = _array("float64", (3, 4, 2, 5))
    x: object = {
        "float64": base,
        "float32": base.astype(np.float32),
        "float16": base.astype(np.float16),
        "int32": _array("int32", (3, 4, 2, 5)),
        "bool": base > 0,
        "complex": base.astype(np.complex64),
        "nan": np.where(base > 1.5, np.nan, base),
        "torch": torch.from_numpy(base),
        "torch_grad": torch.from_numpy(base).requires_grad_(),
        "torch_bf16": torch.from_numpy(base).bfloat16(),
    }[kind]
    out = attempt(lambda: D.BrainImageDataset(x, dtype=dtype), "BrainImageDataset", ["responses"])
    if kind in ("bool", "complex", "nan"):
        assert not out.ok, f"BrainImageDataset accepted {kind} responses"
        return
    assert out.ok, f"refused {kind}: {out.error}"
    xs = x.detach().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    want = xs.mean(axis=1).reshape(3, -1)
    got = out.value.responses()
    assert got.dtype == dtype
    coarse = {"float16": torch.float16, "float32": torch.float32, "torch_bf16": torch.bfloat16}.get(
        kind, dtype
    )
    assert_close(got, want, coarse if dtype == torch.float64 else dtype, kind, scale=1.0)


@pytest.mark.parametrize("n_images", [0, 1])
def test_brain_image_dataset_tiny(n_images: int) -> None:
    """No images (or one): len() and responses() follow; an out-of-range index is an IndexError."""
    x = _array("float64", (n_images, 2, 3))
    out = attempt(lambda: D.BrainImageDataset(x), "BrainImageDataset", ["responses"])
    if out.ok:
        ds = out.value
        assert len(ds) == n_images and ds.responses().shape == (n_images, 3)
        with pytest.raises(IndexError):
            ds[n_images]


@pytest.mark.parametrize("pca_components", [0, True, 2.5, 99])
def test_fmri_datasets_bad_pca(pca_components: object) -> None:
    tr, te = D.FMRIResponses(_array("float64", (4, 2, 6))), D.FMRIResponses(_array("float64", (3, 2, 6), 1))
    out = attempt(
        lambda: D.fmri_datasets(tr, te, pca_components=pca_components),
        "fmri_datasets",
        ["n_components", "pca_components"],
    )  # type: ignore[arg-type]
    assert not out.ok


# ----------------------------------------------------------------------------------------- paths, images


@pytest.mark.parametrize("subject", [0, -1, True, "1", 1.0, None])
@pytest.mark.parametrize("fn", ["raw_path", "preprocessed_path"])
def test_paths_reject_bad_subjects(fn: str, subject: object) -> None:
    args = ("root", subject, 1, "training") if fn == "raw_path" else ("root", subject, "training")
    out = attempt(lambda: getattr(D, fn)(*args), fn, ["subject"])
    assert not out.ok


@pytest.mark.parametrize("split", ["train", "", None, "Test"])
def test_paths_reject_bad_split(split: object) -> None:
    out = attempt(lambda: D.preprocessed_path("root", 1, split), "preprocessed_path", ["split"])  # type: ignore[arg-type]
    assert not out.ok


def test_path_with_numpy_subject() -> None:
    assert D.raw_path("r", np.int64(2), np.int64(3), "test").endswith(
        os.path.join("sub-02", "ses-03", "raw_eeg_test.npy")
    )


@pytest.mark.parametrize("how", ["truncated", "garbage", "empty", "text"])
def test_load_image_damaged_file(tmp_path: os.PathLike, how: str) -> None:
    """A damaged image file is a ValueError naming it."""
    from PIL import Image

    good = os.path.join(tmp_path, "good.png")
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(good)
    raw = open(good, "rb").read()
    body = {"truncated": raw[: len(raw) // 2], "garbage": bytes(range(256)), "empty": b"", "text": b"png"}[
        how
    ]
    path = os.path.join(tmp_path, "bad.png")
    with open(path, "wb") as f:
        f.write(body)
    out = attempt(lambda: D.load_image(path, size=4), "load_image", [path])
    assert not out.ok


def test_load_images_of_no_paths() -> None:
    """No paths: an empty batch (0, 3, size, size) or a ValueError naming paths, not torch.stack's error."""
    out = attempt(lambda: D.load_images([]), "load_images", ["paths"])
    if out.ok:
        assert out.value.shape[0] == 0


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, None, "4"])
def test_embed_images_batch_size(tmp_path: os.PathLike, batch_size: object) -> None:
    from PIL import Image

    path = os.path.join(tmp_path, "a.png")
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(path)
    model = torch.nn.Flatten()
    out = attempt(
        lambda: D.embed_images(model, [path], transform=D.ImageTransform(4), batch_size=batch_size),  # type: ignore[arg-type]
        "embed_images",
        ["batch_size"],
    )
    assert not out.ok


def test_embed_images_matches_model(tmp_path: os.PathLike) -> None:
    """Embeddings are the model's outputs on the transformed images, float32, in path order; a repeated
    path gets the same row."""
    from PIL import Image

    paths = []
    for i in range(3):
        paths.append(os.path.join(tmp_path, f"{i}.png"))
        Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(paths[-1])
    t = D.ImageTransform(4)
    model = torch.nn.Flatten()
    out = D.embed_images(model, [paths[2], paths[0], paths[2]], cache_dir=tmp_path, key="k", transform=t)
    want = torch.stack([t(paths[2]), t(paths[0]), t(paths[2])]).flatten(1).numpy()
    assert out.dtype == np.float32
    assert_close(out, want, torch.float32, "embeddings")


@pytest.mark.parametrize("dim", ["time", "epochs"])
@pytest.mark.parametrize("kind", ["float64", "float32", "int32"])
def test_noise_covariance_matches_published(dim: str, kind: str) -> None:
    x = _array(kind, (2, 3, 2, 4))
    want = published.published_noise_covariance([np.asarray(x, dtype=np.float64)], dim)
    assert_close(D.noise_covariance(x, dim), want, torch.float64, f"noise_covariance[{dim}, {kind}]")


def _epochs(codes: list[int], n_ch: int = 2) -> object:
    import mne

    info = mne.create_info([f"O{i}" for i in range(n_ch)], 100.0, "eeg")
    data = _array("float64", (len(codes), n_ch, 5))
    events = np.array([[10 * i, 0, c] for i, c in enumerate(codes)])
    return mne.EpochsArray(data, info, events=events, verbose="error")


@pytest.mark.parametrize("case", ["ok", "unequal", "empty", "array"])
def test_epochs_to_responses(case: str) -> None:
    """Epochs sort into (conditions, repetitions, channels, times) by event code; an empty or unequal
    set of epochs, or a non-Epochs, is a ValueError/TypeError naming the epochs."""
    epochs = {
        "ok": lambda: _epochs([2, 1, 2, 1]),
        "unequal": lambda: _epochs([2, 1, 2]),
        "empty": lambda: _epochs([2, 1])[:0],
        "array": lambda: np.zeros((2, 2, 2)),
    }[case]()
    out = attempt(lambda: D.epochs_to_responses(epochs), "epochs_to_responses", ["epochs"])
    assert out.ok == (case == "ok"), out.error
    if out.ok:
        data = epochs.get_data()  # type: ignore[attr-defined]
        np.testing.assert_array_equal(out.value.data, data[[1, 3, 0, 2]].reshape(2, 2, 2, 5))


@pytest.mark.parametrize(
    "kwargs",
    [dict(n_subjects=0), dict(n_test=2), dict(image_size=0), dict(snr=math.nan), dict(seed=-1),
     dict(n_sessions=1.5), dict(image_source="x")],
    ids=str,
)  # fmt: skip
def test_make_synthetic_things_bad_arguments(tmp_path: os.PathLike, kwargs: dict) -> None:
    """Bad arguments are refused before anything is written, naming the argument."""
    out = attempt(
        lambda: D.make_synthetic_things(tmp_path, preprocess=False, **kwargs),
        "make_synthetic_things",
        [*kwargs, "images"],
    )
    assert not out.ok and not os.listdir(tmp_path)


@pytest.mark.parametrize("fn", ["things_eeg2_datasets", "preprocess_things_eeg2"])
@pytest.mark.parametrize("subject", [0, True, "1"])
def test_subject_is_validated_before_reading(tmp_path: os.PathLike, fn: str, subject: object) -> None:
    out = attempt(lambda: getattr(D, fn)(tmp_path, subject), fn, ["subject"])
    assert not out.ok


@pytest.mark.parametrize(
    "module",
    [torch.nn.Identity(), torch.nn.Linear(2, 2).to(torch.bfloat16), torch.nn.Linear(2, 2).to(torch.complex64),
     torch.nn.BatchNorm1d(2)],
    ids=["empty", "bfloat16", "complex64", "buffers"],
)  # fmt: skip
def test_model_key_is_stable_and_weight_sensitive(module: torch.nn.Module) -> None:
    """The key is deterministic for any parameter dtype and changes with any weight."""
    key = D.model_key(module)
    assert key == D.model_key(module) and len(key) == 32
    params = list(module.parameters())
    if params:
        with torch.no_grad():
            params[0].view(-1)[0] += 1
        assert D.model_key(module) != key


def test_model_key_is_the_sha256_of_the_documented_bytes() -> None:
    """The key embedding caches are written under: SHA-256 of the class, the transform's repr and the
    module's repr, the source of each class in it, then each state entry's name, (shape, dtype) and raw
    bytes (an empty tensor adds none), then the non-persistent buffers likewise."""
    import inspect

    module = torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        module.weight.copy_(torch.tensor([0.5, -1.0, 2.0]))
    module.register_buffer("shift", torch.tensor([1.5]), persistent=False)
    h = hashlib.sha256(f"torch.nn.modules.batchnorm.BatchNorm1d|'t'|{module!r}".encode())
    h.update(inspect.getsource(torch.nn.BatchNorm1d).encode())
    for name, t in [*module.state_dict().items(), ("buffer:shift", module.shift)]:
        h.update(name.encode() + str((tuple(t.shape), t.dtype)).encode() + t.numpy().tobytes())
    assert D.model_key(module, transform="t") == h.hexdigest()[:32]
