"""Data files never run code: every loader that reads .npy files refuses a malicious pickle (naming the file
and the refused global) without running it, and the writers write the published formats only."""

from __future__ import annotations

import io
import os
import pickle
import shlex
import subprocess
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from numpy.lib import format as npy_format

from fastalign.data import (
    ImageTransform,
    embed_images,
    load_fmri,
    load_image_metadata,
    load_preprocessed_eeg,
    load_raw_eeg,
)
from fastalign.data._io import load_npy, save_many_npy, save_npy


class _Payload:
    """Pickles as the call ``func(*args)``: what an attacker puts in a data file."""

    def __init__(self, func: Callable[..., Any], *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return self.func, self.args


def _object_header(f: Any) -> None:
    npy_format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": ()})


def _write_attack(path: str, kind: str, marker: str) -> str:
    """Writes a file that creates ``marker`` when unpickled; returns the global the error must name."""
    with open(path, "wb") as f:
        if kind == "os.system pickle":  # no .npy header: np.load(allow_pickle=True) unpickles it directly
            pickle.dump(_Payload(os.system, f"touch {shlex.quote(marker)}"), f)
            return ""
        if kind == "builtins.eval in .npy":
            _object_header(f)
            pickle.dump(_Payload(eval, f"open({marker!r}, 'w').close()"), f)
            return "builtins.eval"
        if kind == "subprocess.Popen in .npy":
            _object_header(f)
            pickle.dump(_Payload(subprocess.Popen, ["touch", marker]), f)
            return "subprocess.Popen"
        # A real np.save'd dict whose object array holds the payload among ordinary values.
        evil = {"responses": np.zeros((3, 4)), "rois": {"V1": [0, _Payload(os.system, f"touch {marker}")]}}
        np.save(f, evil, allow_pickle=True)
        return f"{os.system.__module__}.system"


_ATTACKS = ["os.system pickle", "builtins.eval in .npy", "subprocess.Popen in .npy", "object array"]
_LOADERS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "load_preprocessed_eeg": ("preprocessed_eeg_training.npy", load_preprocessed_eeg),
    "load_raw_eeg": ("raw_eeg_training.npy", load_raw_eeg),
    "load_image_metadata": ("image_metadata.npy", lambda p: load_image_metadata(os.path.dirname(p))),
    "load_fmri": ("fmri_training.npy", load_fmri),
    "load_npy": ("any.npy", lambda p: load_npy(p, "test", objects=True)),
}


def _assert_not_run(marker: str, kind: str) -> None:
    if "Popen" in kind:  # a started process would create the marker a moment later
        time.sleep(0.2)
    assert not os.path.exists(marker), f"the payload ran: {marker} exists"


@pytest.mark.parametrize("kind", _ATTACKS)
@pytest.mark.parametrize("loader", list(_LOADERS))
def test_loaders_refuse_malicious_pickles(tmp_path: os.PathLike, loader: str, kind: str) -> None:
    name, load = _LOADERS[loader]
    path, marker = os.path.join(tmp_path, name), os.path.join(tmp_path, "PWNED")
    refused = _write_attack(path, kind, marker)
    with pytest.raises(ValueError) as err:
        load(path)
    _assert_not_run(marker, kind)
    message = str(err.value)
    expected = f"pickles a reference to {refused}, which is refused" if refused else "is a bare pickle"
    assert repr(path) in message and expected in message, message


@pytest.mark.parametrize("kind", _ATTACKS)
def test_embedding_cache_with_a_malicious_file_is_recomputed(tmp_path: os.PathLike, kind: str) -> None:
    from PIL import Image

    paths = []
    for i in range(2):
        paths.append(os.path.join(tmp_path, f"{i}.png"))
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(paths[-1])
    cache, marker = os.path.join(tmp_path, "cache"), os.path.join(tmp_path, "PWNED")
    calls = []

    def model(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return x.mean(dim=(2, 3))

    want = embed_images(model, paths, cache, key="k", transform=ImageTransform(8))
    (sub,) = os.listdir(cache)
    _write_attack(os.path.join(cache, sub, "embeddings.npy"), kind, marker)
    got = embed_images(model, paths, cache, key="k", transform=ImageTransform(8))
    _assert_not_run(marker, kind)
    np.testing.assert_array_equal(got, want)
    assert sum(calls) == 4  # the malicious cache was not used


def test_alignvis_own_preprocessed_files_are_refused_saying_how_to_remake_them(tmp_path: os.PathLike) -> None:
    """AlignVis's Preprocessed_data_250Hz files are a bare pickle.dump under a .npy name, whose times keep
    the 300 of the uncropped epoch beside 250 samples: both refused naming fastalign's recipe."""
    rng = np.random.default_rng(0)
    published = {
        "preprocessed_eeg_data": rng.standard_normal((2, 4, 3, 250)),
        "ch_names": ["O1", "Oz", "O2"],
        "times": np.linspace(-0.2, 0.996, 300),
    }
    bare = os.path.join(tmp_path, "preprocessed_eeg_training.npy")
    with open(bare, "wb") as f:
        pickle.dump(published, f, protocol=4)  # as AlignVis's preprocessing_utils.py saves them
    with pytest.raises(ValueError, match=r"is a bare pickle \(pickle\.dump under a \.npy name\).*does not "
                       r"unpickle files.*fastalign preprocess --recipe alignvis"):  # fmt: skip
        load_preprocessed_eeg(bare)
    saved = os.path.join(tmp_path, "saved.npy")
    np.save(saved, np.array(published, dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"times has 300 entries but preprocessed_eeg_data 250 samples, 50 "
                       r"fewer .*fastalign preprocess --recipe alignvis"):  # fmt: skip
        load_preprocessed_eeg(saved)


def test_plain_array_files_are_never_unpickled(tmp_path: os.PathLike) -> None:
    path, marker = os.path.join(tmp_path, "x.npy"), os.path.join(tmp_path, "PWNED")
    _write_attack(path, "object array", marker)
    with pytest.raises(ValueError, match=r"x.npy' holds a pickled object array; expected a plain numeric"):
        load_npy(path, "test")
    _assert_not_run(marker, "object array")


def test_writers_write_the_published_formats(tmp_path: os.PathLike) -> None:
    arr, d = os.path.join(tmp_path, "arr.npy"), os.path.join(tmp_path, "dict.npy")
    published = {"raw_eeg_data": np.ones((2, 3)), "ch_names": ["O1", "stim"], "sfreq": 1000.0,
                 "times": np.float64(0.5), "names": np.array(["a", "b"]), "rois": {"V1": (0, 1)}}  # fmt: skip
    save_npy(arr, np.arange(6.0).reshape(2, 3))
    save_many_npy({d: published, os.path.join(tmp_path, "arr2.npy"): np.zeros(2)})
    for path, pickled in ((arr, False), (d, True), (os.path.join(tmp_path, "arr2.npy"), False)):
        with open(path, "rb") as f:
            npy_format.read_magic(f)
            shape, _, dtype = npy_format.read_array_header_1_0(f)
        assert dtype.hasobject == pickled and (shape == () or not pickled)
    np.testing.assert_array_equal(np.load(arr, allow_pickle=False), np.arange(6.0).reshape(2, 3))
    # What the published code reads (np.load(..., allow_pickle=True).item()) and load_npy agree.
    stored, read = np.load(d, allow_pickle=True).item(), load_npy(d, "test", objects=True)
    assert stored.keys() == read.keys() == published.keys()
    assert read["ch_names"] == ["O1", "stim"] and read["rois"] == {"V1": (0, 1)} and read["sfreq"] == 1000.0
    np.testing.assert_array_equal(read["names"], published["names"])

    marker = os.path.join(tmp_path, "PWNED")
    with pytest.raises(TypeError, match=r"dict.npy' would hold a .*_Payload at \['rois'\]\['V1'\]\[1\]"):
        save_npy(d, {"rois": {"V1": [0, _Payload(os.system, f"touch {marker}")]}})
    with pytest.raises(TypeError, match=r"arr.npy' would hold an object array"):
        save_npy(arr, np.array([1, "a"], dtype=object))
    with pytest.raises(TypeError, match=r"would hold a collections\.OrderedDict"):
        save_many_npy({d: __import__("collections").OrderedDict(a=1)})
    assert load_npy(d, "test", objects=True).keys() == published.keys()  # refused writes left the file
    assert not os.path.exists(marker)


def test_files_written_by_numpy_1_load(tmp_path: os.PathLike) -> None:
    # numpy 1.x np.save pickled with protocol 3 (GLOBAL opcodes, no frames) and named numpy.core.
    path = os.path.join(tmp_path, "old.npy")
    buf = io.BytesIO()
    _object_header(buf)
    pickle.dump(np.asarray({"x": np.arange(3), "s": np.float32(2.5)}), buf, protocol=3)
    raw = buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert b"numpy._core" not in raw and b"cnumpy.core.multiarray\n_reconstruct" in raw
    with open(path, "wb") as f:
        f.write(raw)
    got = load_npy(path, "test", objects=True)
    np.testing.assert_array_equal(got["x"], np.arange(3))
    assert got["s"] == np.float32(2.5) and got["s"].dtype == np.float32
