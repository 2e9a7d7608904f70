"""make_synthetic_things writes the same dataset for the same arguments as the code it was split from.

``synthetic_reference.json`` holds fingerprints of datasets written by the single-function generator
(commit 0d787b9) before it was split into image, EEG and fMRI writers. Everything that is not a float
(file tree, metadata, event codes, channel names, ROI indices, decoded JPEG pixels, concept indices) is
compared exactly, through a SHA-256 per file; float arrays are compared through their shape, L1 norm and
two fixed random projections, to 1e-9 of the L1 norm: a different random draw, order or formula moves
them by far more than that, while the last-bit differences between CPUs (numpy's SIMD paths, BLAS
kernels) stay far below it, so the test holds on any x86 machine. On the machine that recorded the
reference the outputs were also compared byte for byte. After an intended change of the generator,
re-record with ``python tests/data/test_data_synthetic_reference.py`` and say why in the commit.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import numpy as np
import pytest

from fastalign._checks import OUTPUT_MANIFEST
from fastalign.data import make_synthetic_things
from fastalign.data._io import load_npy

REFERENCE = os.path.join(os.path.dirname(__file__), "synthetic_reference.json")
_TINY = dict(n_train_concepts=2, images_per_concept=2, n_test=3, n_subjects=2, n_sessions=2,
             test_repetitions=2, raw_sfreq=250.0, n_voxels=10, image_size=16,
             targets_per_session=1)  # fmt: skip
CONFIGS: dict[str, dict[str, Any]] = {
    "procedural": dict(_TINY, image_source="procedural", n_extra_channels=3, mvnn_dim="epochs", seed=7),
    "photos": dict(_TINY, image_source="photos", seed=4),
}
_RTOL = 1e-9


def _leaves(obj: Any, name: str) -> list[tuple[str, Any]]:
    """(name, value) of every array, string or number inside nested dicts, lists and tuples."""
    if isinstance(obj, dict):
        return [leaf for k in sorted(obj, key=str) for leaf in _leaves(obj[k], f"{name}/{k}")]
    if isinstance(obj, (list, tuple)) and any(isinstance(v, (dict, list, tuple, np.ndarray)) for v in obj):
        return [leaf for i, v in enumerate(obj) for leaf in _leaves(v, f"{name}[{i}]")]
    return [(name, obj)]


def _read(path: str) -> Any:
    if path.endswith(".jpg"):
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im)
    if path.endswith(".npy"):
        return load_npy(path, "synthetic file", objects=True)
    if path.endswith(".npz"):
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    if path.endswith(".h5"):
        import h5py

        def tree(group: Any) -> dict[str, Any]:
            return {k: tree(v) if isinstance(v, h5py.Group) else v[()] for k, v in group.items()}

        with h5py.File(path, "r") as f:
            return tree(f)
    raise AssertionError(f"unexpected file {path}")


def fingerprint(root: str) -> dict[str, Any]:
    """{relative path: {"exact": sha256 of its non-float content, "floats": {leaf: [shape, l1, p1, p2]}}}."""
    out: dict[str, Any] = {}
    files = sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)
    # the list of the files written (replacing_dir's manifest) is no data: it names the others
    files = [rel for rel in files if rel != OUTPUT_MANIFEST]
    for rel in files:
        exact, floats = hashlib.sha256(), {}
        for leaf, value in _leaves(_read(os.path.join(root, rel)), ""):
            arr = np.asarray(value)
            if arr.dtype.kind == "f":
                x = arr.astype(np.float64).ravel()
                w = np.random.default_rng(0).standard_normal((2, x.size))
                floats[leaf] = [list(arr.shape), float(np.abs(x).sum()), *map(float, w @ x)]
            else:
                exact.update(f"{leaf}|{arr.dtype.kind}|{arr.shape}|".encode())
                exact.update(arr.tobytes() if arr.dtype.kind in "biu" else repr(arr.tolist()).encode())
        out[rel.replace(os.sep, "/")] = {"exact": exact.hexdigest(), "floats": floats}
    return out


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_same_dataset_as_before_the_split(tmp_path: os.PathLike, config: str) -> None:
    if CONFIGS[config]["image_source"] == "photos":
        pytest.importorskip("skimage")
    with open(REFERENCE) as f:
        want = json.load(f)[config]
    got = fingerprint(make_synthetic_things(os.path.join(tmp_path, "ds"), **CONFIGS[config]).root)
    assert sorted(got) == sorted(want)
    for rel, ref in want.items():
        assert got[rel]["exact"] == ref["exact"], f"{rel}: non-float content differs"
        assert sorted(got[rel]["floats"]) == sorted(ref["floats"]), rel
        for leaf, (shape, l1, *proj) in ref["floats"].items():
            g_shape, g_l1, *g_proj = got[rel]["floats"][leaf]
            assert g_shape == shape, f"{rel}{leaf}"
            np.testing.assert_allclose(
                [g_l1, *g_proj], [l1, *proj], rtol=0, atol=_RTOL * l1, err_msg=rel + leaf
            )


def test_fingerprint_sees_a_one_ulp_change_only_in_floats(tmp_path: os.PathLike) -> None:
    """The comparison above can fail: a changed float beyond the tolerance and any changed pixel show."""
    ds = make_synthetic_things(os.path.join(tmp_path, "ds"), **dict(CONFIGS["procedural"], preprocess=False))
    before = fingerprint(ds.root)
    gt = dict(np.load(os.path.join(ds.root, "ground_truth.npz")))
    gt["train_features"][0, 0] = np.nextafter(gt["train_features"][0, 0], np.inf)
    gt["test_features"][0, 0] += 1e-6
    np.savez(os.path.join(ds.root, "ground_truth.npz"), **gt)
    after = fingerprint(ds.root)["ground_truth.npz"]["floats"]
    ref = before["ground_truth.npz"]["floats"]
    l1 = ref["/test_features"][1]
    assert np.allclose(after["/train_features"][1:], ref["/train_features"][1:], rtol=0, atol=_RTOL * l1)
    assert not np.allclose(after["/test_features"][1:], ref["/test_features"][1:], rtol=0, atol=_RTOL * l1)


if __name__ == "__main__":  # re-records the reference (see the module doc)
    import tempfile

    record = {}
    for name, cfg in CONFIGS.items():
        with tempfile.TemporaryDirectory() as tmp:
            record[name] = fingerprint(make_synthetic_things(os.path.join(tmp, "ds"), **cfg).root)
    with open(REFERENCE, "w") as f:  # one line per file, so that a diff shows which files changed
        f.write("{\n")
        for i, (name, files) in enumerate(sorted(record.items())):
            rows = [f"  {json.dumps(rel)}: {json.dumps(files[rel], sort_keys=True)}" for rel in sorted(files)]
            f.write(f" {json.dumps(name)}: {{\n" + ",\n".join(rows) + "\n }" + ",\n" * (i + 1 < len(record)))
        f.write("\n}\n")
