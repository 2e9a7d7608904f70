"""All-or-nothing writes: a kill at every step of save_npy, save_many_npy and replacing_dir leaves the old or
the new output complete, the next write cleans up what the kill left, and outputs get the umask's modes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import numpy as np
import pytest

import fastalign.data._io as io
from fastalign.data import ImageTransform, embed_images, load_image_metadata, make_synthetic_things
from fastalign.data._io import load_npy, replacing_dir, save_many_npy, save_npy

pytestmark = pytest.mark.skipif(
    os.name != "posix", reason="POSIX only: kills run in forked processes; umask and process checks"
)

# Runs in a fresh interpreter that loads only numpy and _io.py (importing fastalign takes seconds). For
# k = 1, 2, ...: copies the template folder to <out>/<k>, and a forked child runs the operation with every
# call that changes the file system (rename, replace, rmdir, remove, unlink, rmtree, exchange) counted and
# os._exit(9) at call k, so no cleanup runs, as after a kill. The first k the operation completes without
# reaching ends the loop; its folder holds the uninterrupted result.
_HARNESS = r"""
import importlib.util, os, shutil, sys, traceback
import numpy as np
spec = importlib.util.spec_from_file_location("fastalign_io", sys.argv[1])
io = importlib.util.module_from_spec(spec)
spec.loader.exec_module(io)
template, out, operation = sys.argv[2:5]
for k in range(1, 200):
    target = os.path.join(out, str(k))
    shutil.copytree(template, target)
    pid = os.fork()
    if pid == 0:
        calls = [0]
        def counted(fn):
            def call(*args, **kwargs):
                calls[0] += 1
                if calls[0] == k:
                    os._exit(9)
                return fn(*args, **kwargs)
            return call
        for owner, name in ((os, "rename"), (os, "replace"), (os, "rmdir"), (os, "remove"), (os, "unlink"),
                            (shutil, "rmtree"), (io, "_exchange")):
            setattr(owner, name, counted(getattr(owner, name)))
        try:
            exec(operation, {"io": io, "np": np, "os": os, "target": target})
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if code != 9:
        sys.exit(code)
"""


def _kill_at_every_step(tmp_path: os.PathLike, template: str, operation: str) -> list[str]:
    """Folders holding what ``operation`` on a copy of ``template`` left when killed at step 1, 2, ...; the
    last one holds its uninterrupted result."""
    out = os.path.join(tmp_path, "runs")
    os.mkdir(out)
    proc = subprocess.run(
        [sys.executable, "-c", _HARNESS, io.__file__, template, out, operation],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    runs = [os.path.join(out, k) for k in sorted(os.listdir(out), key=int)]
    assert len(runs) >= 2, runs  # killed at one step at least
    return runs


_FILES = ("preprocessed_eeg_training.npy", "preprocessed_eeg_test.npy")


def _save_set(folder: str, gen: str) -> None:
    save_many_npy({os.path.join(folder, n): {"gen": gen, "data": np.arange(3.0)} for n in _FILES})


def _generations(folder: str) -> set[str | None]:
    """Which write each file of the set comes from, as the loaders read it (None: no such file)."""
    gens: set[str | None] = set()
    for name in _FILES:
        try:
            gens.add(load_npy(os.path.join(folder, name), "test", objects=True)["gen"])
        except FileNotFoundError:
            gens.add(None)
    return gens


@pytest.mark.parametrize("old_set", [True, False], ids=["replace", "create"])
def test_save_many_npy_survives_a_kill_at_every_step(tmp_path: os.PathLike, old_set: bool) -> None:
    template = os.path.join(tmp_path, "template")
    os.mkdir(template)
    with open(os.path.join(template, "notes.txt"), "w") as f:
        f.write("a file of someone else")
    if old_set:
        _save_set(template, "old")
    operation = (
        "io.save_many_npy({os.path.join(target, n): {'gen': 'new', 'data': np.arange(3.0)} "
        f"for n in {_FILES!r}}})"
    )
    seen = []
    for run in _kill_at_every_step(tmp_path, template, operation):
        gens = _generations(run)
        assert len(gens) == 1, (run, sorted(os.listdir(run)), gens)  # never a new file beside an old one
        seen.append(gens.pop())
        _save_set(run, "next")  # finishes or removes what the kill left, then writes
        assert sorted(os.listdir(run)) == sorted(["notes.txt", *_FILES]), run
        assert _generations(run) == {"next"}
    # Kills before the commit leave the old set, kills while the files move into place the new one.
    assert seen[0] == ("old" if old_set else None) and "new" in seen[:-1] and seen[-1] == "new", seen


def _contents(folder: str) -> dict[str, str] | None:
    if not os.path.isdir(folder):
        return None
    out = {}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name)) as f:
            out[name] = f.read()
    return out


def _write_tree(folder: str, gen: str) -> None:
    for name in ("a.txt", "b.txt"):
        with open(os.path.join(folder, name), "w") as f:
            f.write(gen)


_OLD, _NEW = {"a.txt": "old", "b.txt": "old"}, {"a.txt": "new", "b.txt": "new"}


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two-renames"])
def test_replacing_dir_survives_a_kill_at_every_step(tmp_path: os.PathLike, exchange: bool) -> None:
    probe = [os.path.join(tmp_path, p) for p in ("p", "q")]
    for p in probe:
        os.mkdir(p)
    if exchange and not io._exchange(*probe):
        pytest.skip("this file system cannot swap two folders atomically")
    template = os.path.join(tmp_path, "template")
    os.makedirs(os.path.join(template, "ds"))
    _write_tree(os.path.join(template, "ds"), "old")
    operation = (
        ("" if exchange else "io._exchange = lambda a, b: False\n")
        + "with io.replacing_dir(os.path.join(target, 'ds')) as staging:\n"
        + "    for n in ('a.txt', 'b.txt'):\n"
        + "        open(os.path.join(staging, n), 'w').write('new')\n"
    )
    seen = []
    for run in _kill_at_every_step(tmp_path, template, operation):
        ds = os.path.join(run, "ds")
        seen.append(_contents(ds))
        assert seen[-1] in (_OLD, _NEW) or (not exchange and seen[-1] is None), (run, os.listdir(run))
        io._recover(ds)  # what the next write of ds does first
        assert _contents(ds) in (_OLD, _NEW) and os.listdir(run) == ["ds"], os.listdir(run)
        with replacing_dir(ds) as staging:
            _write_tree(staging, "next")
        assert os.listdir(run) == ["ds"] and _contents(ds) == {"a.txt": "next", "b.txt": "next"}
    assert seen[0] == _OLD and _NEW in seen[:-1] and seen[-1] == _NEW, seen
    # Only between the two renames of the fallback is the folder missing (the next write restores it).
    assert seen.count(None) == (0 if exchange else 1), seen


def test_save_npy_survives_a_kill_at_every_step(tmp_path: os.PathLike) -> None:
    template = os.path.join(tmp_path, "template")
    os.mkdir(template)
    save_npy(os.path.join(template, "x.npy"), np.full(4, 1.0))
    operation = "io.save_npy(os.path.join(target, 'x.npy'), np.full(4, 2.0))"
    runs = _kill_at_every_step(tmp_path, template, operation)
    assert len(os.listdir(runs[0])) == 2  # the kill before the rename left the temp file
    for run in runs:
        assert float(load_npy(os.path.join(run, "x.npy"), "test")[0]) == (1.0 if run != runs[-1] else 2.0)
        save_npy(os.path.join(run, "x.npy"), np.full(4, 3.0))
        assert os.listdir(run) == ["x.npy"]


def test_next_write_removes_only_what_dead_writers_left(tmp_path: os.PathLike) -> None:
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    target = os.path.join(tmp_path, "x.npy")
    dead, live = (os.path.join(tmp_path, f".x.npy.{pid}-0123abcd.tmp") for pid in (gone.pid, os.getpid()))
    for path in (dead, live):
        open(path, "w").close()
    save_npy(target, np.zeros(2))
    assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(live), "x.npy"])


_TINY = dict(n_train_concepts=2, images_per_concept=2, n_test=3, n_sessions=1, test_repetitions=2,
             raw_sfreq=250.0, n_voxels=10, image_size=16, targets_per_session=1,
             image_source="procedural")  # fmt: skip


def _can_exchange(folder: str) -> bool:
    probe = [os.path.join(folder, p) for p in (".probe-a", ".probe-b")]
    for p in probe:
        os.mkdir(p)
    try:
        return io._exchange(*probe)
    finally:
        for p in probe:
            os.rmdir(p)


@pytest.mark.parametrize("when", ["before", "after"])
def test_kill_at_the_swap_of_make_synthetic_things(tmp_path: os.PathLike, when: str) -> None:
    if not _can_exchange(str(tmp_path)):
        pytest.skip("this file system cannot swap two folders atomically")
    root = os.path.join(tmp_path, "ds")
    first = make_synthetic_things(root, seed=1, preprocess=False, **_TINY)
    pid = os.fork()  # this process has everything imported; a fresh interpreter would take seconds
    if pid == 0:
        try:
            swap = io._exchange
            io._exchange = lambda a, b: os._exit(9) if when == "before" else (swap(a, b), os._exit(9))
            make_synthetic_things(root, seed=2, overwrite=True, preprocess=False, **_TINY)
        finally:
            os._exit(1)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 9
    assert len(os.listdir(tmp_path)) == 2  # the dataset, and the other one in a temp folder beside it
    killed = np.load(os.path.join(root, "ground_truth.npz"))["train_features"]
    second = make_synthetic_things(root, seed=2, overwrite=True, preprocess=False, **_TINY)
    assert os.listdir(tmp_path) == ["ds"]
    np.testing.assert_array_equal(
        killed, (first if when == "before" else second).ground_truth["train_features"]
    )
    on_disk = np.load(os.path.join(root, "ground_truth.npz"))["train_features"]
    np.testing.assert_array_equal(on_disk, second.ground_truth["train_features"])


def test_outputs_get_the_mode_the_umask_gives(tmp_path: os.PathLike) -> None:
    umask = os.umask(0o027)
    try:
        save_npy(os.path.join(tmp_path, "one.npy"), np.zeros(2))
        _save_set(os.path.join(tmp_path, "set"), "gen")
        with replacing_dir(os.path.join(tmp_path, "folder")) as staging:
            _write_tree(staging, "x")
        ds = make_synthetic_things(os.path.join(tmp_path, "ds"), seed=1, **_TINY)
        images = load_image_metadata(ds.image_dir).paths("test")
        cache = os.path.join(tmp_path, "cache")
        embed_images(lambda x: x.mean(dim=(2, 3)), images, cache, key="k", transform=ImageTransform(8))
    finally:
        os.umask(umask)
    wrong = {}
    for folder, dirs, files in os.walk(tmp_path):
        for name, want in [(d, 0o750) for d in dirs] + [(f, 0o640) for f in files]:
            mode = stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode)
            if mode != want:
                wrong[os.path.relpath(os.path.join(folder, name), tmp_path)] = oct(mode)
    assert not wrong, wrong
    assert os.path.isfile(os.path.join(ds.preprocessed_dir, "sub-01", "preprocessed_eeg_test.npy"))


def test_a_folder_put_in_place_by_another_writer_meanwhile_is_replaced(tmp_path, monkeypatch) -> None:
    # two writers of one cache entry: both saw no folder, the other renamed its folder in first; this
    # one's rename then failed (ENOTEMPTY) and the evaluation aborted. It replaces that folder instead.
    from fastalign.data import _io

    path = tmp_path / "entry"
    path.mkdir()
    (path / "theirs").write_text("x")
    monkeypatch.setattr(
        _io.os.path, "lexists", lambda p: False if os.fspath(p) == str(path) else os.path.exists(p)
    )
    with _io.replacing_dir(path) as staging:
        open(os.path.join(staging, "mine"), "w").close()
    monkeypatch.undo()
    assert sorted(os.listdir(path)) == ["mine"] and sorted(os.listdir(tmp_path)) == ["entry"]


def test_a_full_disk_is_named_with_the_file_and_the_old_file_kept(tmp_path) -> None:
    # torch.save and safetensors say "unexpected pos" / "No space left on device" and name no file
    import errno

    from fastalign.data._io import atomic_write

    target = tmp_path / "model.safetensors"
    target.write_text("old")
    for failure in (
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 56513408 vs 56513296"),
        RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"),
        OSError(errno.ENOSPC, "No space left on device"),
    ):

        def write(tmp: str, failure: BaseException = failure) -> None:
            raise failure

        with pytest.raises(
            OSError, match=r"could not write .*model\.safetensors': the disk .* is full"
        ) as got:
            atomic_write(target, write)
        assert got.value.errno == errno.ENOSPC and got.value.__cause__ is failure
        assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == [
            "model.safetensors"
        ]

    def other(tmp: str) -> None:
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):  # anything else as it was
        atomic_write(target, other)
