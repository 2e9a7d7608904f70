"""The source distribution holds every part of the build (the CUDA sources among them, wherever it is
made), a CUDA build without its sources stops instead of reporting a backend it lacks, and the metadata a
wheel carries (what PyPI and pip show) describes the project."""

from __future__ import annotations

import email
import os
import re
import shutil
import subprocess
import sys
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tracked_copy(dest: str) -> None:
    """The repository's tracked files, copied to dest (what a clean checkout holds)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout (an unpacked sdist): nothing to compare the sdist with")
    for rel in filter(None, listed.split("\0")):
        if not os.path.exists(os.path.join(ROOT, rel)):
            continue  # deleted in the working tree, not yet committed
        os.makedirs(os.path.join(dest, os.path.dirname(rel)), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, rel), os.path.join(dest, rel))


def test_the_sdist_holds_the_cuda_sources_pins_license_and_type_marker(tmp_path) -> None:
    src = tmp_path / "src"
    _tracked_copy(str(src))
    subprocess.run(
        [sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist")],
        cwd=src, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (archive,) = (tmp_path / "dist").iterdir()
    with tarfile.open(archive) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for path in (
        "csrc/rsa.cpp", "csrc/module.cpp", "csrc/cuda/rsa_cuda.cpp", "kernels/rsa.cu", "kernels/rsa.cuh",
        "constraints/cpu.txt", "LICENSE", "fastalign/py.typed", "setup.py", "pyproject.toml",
        "tests/conftest.py", "docs/rsa.md", "noxfile.py", ".ci/run",
    ):  # fmt: skip
        assert path in names, path
    assert not any(n.endswith((".so", ".pyc")) or "__pycache__" in n for n in names)


def test_the_wheel_metadata_describes_the_project(tmp_path) -> None:
    # the METADATA pip writes into the wheel, made as pip does before building one (no compiling), from a
    # copy of what the metadata is made of: a checkout or an unpacked sdist alike
    src, out = tmp_path / "src", tmp_path / "out"
    skip = shutil.ignore_patterns("__pycache__", "*.so")
    shutil.copytree(os.path.join(ROOT, "fastalign"), src / "fastalign", ignore=skip)
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        shutil.copy2(os.path.join(ROOT, name), src / name)
    out.mkdir()
    script = (
        "import sys\n"
        "from setuptools import build_meta\n"
        "print(build_meta.prepare_metadata_for_build_wheel(sys.argv[1]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(out)], cwd=src, capture_output=True, text=True, timeout=300,
        env={**os.environ, "FASTALIGN_BUILD_EXT": "0"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    meta = email.message_from_bytes((out / done.stdout.split()[-1] / "METADATA").read_bytes())

    assert meta["Name"] == "fastalign"
    assert "brain" in meta["Summary"]
    assert meta["Description-Content-Type"] == "text/markdown"
    assert meta.get_payload().lstrip().startswith("# fastalign")  # the README, PyPI's project page
    assert meta["License-Expression"] == "MIT"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert meta["Author"]  # LICENSE's copyright holder
    assert {"pytorch", "eeg", "fmri", "rsa"} <= set(meta["Keywords"].split(","))
    classifiers = meta.get_all("Classifier")
    for wanted in (
        "Intended Audience :: Science/Research",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Topic :: Scientific/Engineering :: Bio-Informatics",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
        "Operating System :: POSIX :: Linux",
        "Typing :: Typed",
    ):
        assert wanted in classifiers, wanted
    # the license is said once, by the SPDX expression (setuptools>=77 refuses a License :: classifier too)
    assert not [c for c in classifiers if c.startswith("License ::")]
    # the Python versions named start at requires-python's and run without a gap
    (oldest,) = re.fullmatch(r">=3\.(\d+)", meta["Requires-Python"]).groups()
    minors = sorted(int(c.rsplit(".", 1)[1]) for c in classifiers if re.fullmatch(r".*:: 3\.\d+", c))
    assert minors == list(range(int(oldest), int(oldest) + len(minors))), minors
    assert len(minors) >= 2


def test_a_cuda_build_without_the_cuda_sources_stops_naming_them(tmp_path) -> None:
    # as if torch had CUDA and nvcc were found, in a tree without csrc/cuda and kernels/
    shutil.copy2(os.path.join(ROOT, "setup.py"), tmp_path / "setup.py")
    (tmp_path / "csrc").mkdir()
    (tmp_path / "csrc" / "rsa.cpp").write_text("")
    script = (
        "import runpy, sys, torch\n"
        "from torch.utils import cpp_extension\n"
        "torch.version.cuda = '13.0'\n"
        "cpp_extension.CUDA_HOME = '/usr/local/cuda'\n"
        "sys.argv = ['setup.py', '--name']\n"
        "runpy.run_path('setup.py', run_name='__main__')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "FASTALIGN_BUILD_CUDA": ""},
    )  # fmt: skip
    assert done.returncode != 0
    assert "lacks the CUDA sources (csrc/cuda/*.cpp: 0 files, kernels/*.cu: 0)" in done.stderr
    assert "FASTALIGN_BUILD_CUDA=0" in done.stderr


def _setup_helpers() -> dict:
    """setup.py's functions, without running setup() (it runs only as a script)."""
    import runpy

    return runpy.run_path(os.path.join(ROOT, "setup.py"), run_name="fastalign_setup")


def _fake_program(folder, name: str, status: int) -> None:
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(f"#!/bin/sh\necho {name} 1.0\nexit {status}\n")
    (folder / name).chmod(0o755)


@pytest.mark.skipif(os.name == "nt", reason="POSIX compilers and shell scripts")
def test_a_missing_compiler_stops_the_build_with_one_line_saying_what_to_do(tmp_path) -> None:
    compiler = _setup_helpers()["_compiler"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    with pytest.raises(SystemExit) as stop:
        compiler({"PATH": str(bin_dir)})
    message = str(stop.value.code)
    assert message.startswith("fastalign: no C++ compiler found (CXX is unset; no c++ or g++ on the PATH)")
    assert "apt install g++" in message and "OpenMP" in message and "FASTALIGN_BUILD_EXT=0" in message
    assert "\n" not in message
    with pytest.raises(SystemExit, match=r"CXX=clang-99, the C\+\+ compiler, was not found: install"):
        compiler({"PATH": str(bin_dir), "CXX": "clang-99"})
    _fake_program(bin_dir, "broken", 1)  # as CXX=/bin/false, which torch's build met with a traceback
    with pytest.raises(
        SystemExit, match=r"CXX=broken does not run as a C\+\+ compiler .*FASTALIGN_BUILD_EXT=0"
    ):
        compiler({"PATH": str(bin_dir), "CXX": "broken"})
    _fake_program(bin_dir, "g++", 0)  # torch's default is c++; with only g++ the build names it in CXX
    assert compiler({"PATH": str(bin_dir)}) == "g++"
    _fake_program(bin_dir, "c++", 0)
    assert compiler({"PATH": str(bin_dir)}) == "c++"
    assert compiler({"PATH": str(bin_dir), "CXX": str(bin_dir / "g++")}) == str(bin_dir / "g++")
    # a launcher in CXX is not a missing compiler: torch's build runs $CXX as one executable
    with pytest.raises(SystemExit, match=r"CXX=ccache g\+\+ must name one executable"):
        compiler({"PATH": str(bin_dir), "CXX": "ccache g++"})


@pytest.mark.skipif(os.name == "nt", reason="POSIX compilers")
def test_build_ext_without_a_compiler_is_one_line_and_without_the_extension_nothing_is_built(
    tmp_path, monkeypatch
) -> None:
    shutil.copy2(os.path.join(ROOT, "setup.py"), tmp_path / "setup.py")
    shutil.copytree(os.path.join(ROOT, "csrc"), tmp_path / "csrc")
    env = {k: v for k, v in os.environ.items() if k not in ("CXX", "FASTALIGN_BUILD_EXT")}
    env["PATH"] = str(tmp_path / "empty")  # no compiler (sys.executable is an absolute path)
    done = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("fastalign: no C++ compiler found")
    assert "Traceback" not in done.stderr
    monkeypatch.setenv("FASTALIGN_BUILD_EXT", "0")
    assert _setup_helpers()["_ext_modules"]() == []
    monkeypatch.setenv("FASTALIGN_BUILD_EXT", "no")
    with pytest.raises(SystemExit, match="FASTALIGN_BUILD_EXT must be 0 or 1"):
        _setup_helpers()["_ext_modules"]()


def _oldest_python() -> str:
    """The lowest Python version pyproject.toml's requires-python admits ("3.10" for ">=3.10")."""
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        found = re.search(r'^requires-python\s*=\s*">=\s*(3\.\d+)"', f.read(), re.MULTILINE)
    assert found, 'pyproject.toml has no requires-python = ">=3.X"'
    return found.group(1)


@pytest.mark.parametrize("version", ["running", "oldest"])
def test_the_package_passes_its_type_check(version: str, tmp_path) -> None:
    """The package is typed (py.typed: type checkers read its annotations), so mypy over it, with the
    repository's [tool.mypy] settings, finds nothing: the suite is what CI runs, so this keeps `nox -s
    typecheck` clean. Also as the oldest Python that requires-python admits, which CI does not run:
    mypy knows which standard-library names and syntax each version has (e.g. typing.Self, datetime.UTC
    and except* are 3.11's). A fresh cache, so that a stale one cannot hide an error."""
    pytest.importorskip("mypy", reason="mypy is not installed (the test and dev extras have it)")
    flags = [] if version == "running" else ["--python-version", _oldest_python()]
    done = subprocess.run(
        [sys.executable, "-m", "mypy", *flags, "--cache-dir", str(tmp_path / "cache"), "fastalign"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
