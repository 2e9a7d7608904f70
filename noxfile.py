"""Developer and CI sessions: tests, lint, typecheck, cuda_compile, benchmarks, demo.

On CPU-only machines torch is pinned by constraints/cpu.txt (FASTALIGN_CONSTRAINTS names another file,
e.g. for a CUDA machine) and the package is built with --no-build-isolation against that torch.
"""

from __future__ import annotations

import ast
import glob
import os
import shutil
import tempfile
from pathlib import Path

import nox
import nox.command

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True

CONSTRAINTS = os.environ.get("FASTALIGN_CONSTRAINTS", "constraints/cpu.txt")


def _install(session: nox.Session, extras: str) -> None:
    # --no-compile: pip would byte-compile all ~12,700 installed .py files (torch alone 2,300), most never
    # imported; Python compiles the imported ones on first import instead (fresh venv, 2-core machine:
    # install 138 -> 63 s, the first `import fastalign, torch, scipy.stats, mne` 3.5 -> 7.9 s once). Not
    # where PYTHONDONTWRITEBYTECODE is set: nothing would ever be cached, and every process, each of the
    # suite's subprocesses too, would compile what it imports again (`import torch` 2.4 -> 5.4 s).
    flags = [] if os.environ.get("PYTHONDONTWRITEBYTECODE") else ["--no-compile"]
    session.install(*flags, "-c", CONSTRAINTS, "setuptools>=77", "wheel", "ninja", "torch")
    session.install(*flags, "-c", CONSTRAINTS, "--no-build-isolation", "-e", f".[{extras}]")


@nox.session
def tests(session: nox.Session) -> None:
    """Builds fastalign._C and runs the test suite (Triton kernels interpreted on CPU-only machines)."""
    _install(session, "test")
    session.run("python", "-m", "fastalign.info")
    env = {
        "HYPOTHESIS_PROFILE": os.environ.get("HYPOTHESIS_PROFILE", "ci"),
        # Two workers, each with torch's OpenMP threads, share the cores: a thread that waits at a barrier
        # sleeps instead of spinning on a core the other worker needs (2-core machine, the same venv: the
        # suite 229-239 -> 214 s quiet, 499 -> 434 s beside two busy processes).
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
    }
    basetemp = None if session.posargs else _memory_basetemp()  # the user's own arguments are left alone
    args = session.posargs or ["-n", "2", "--dist", "worksteal", "--durations=15"]
    try:
        session.run("pytest", *args, *(["--basetemp", basetemp] if basetemp else []), env=env)
    except BaseException:
        if basetemp:
            session.log(f"the failed tests' files are kept in memory at {basetemp} (rm -r it when done)")
        raise
    if basetemp:
        shutil.rmtree(basetemp, ignore_errors=True)


# The suite writes 3.4 GiB at its peak (CORnet-S weights, optimiser checkpoints, run folders); on a
# disk, page-cache writeback made the tests that save models 15-50% slower (the suite on a 2-core machine:
# 270 -> 249 s with its temporary files in /dev/shm).
_MEMORY_TMP, _MEMORY_TMP_MIN_FREE = "/dev/shm", 8 << 30


def _memory_basetemp() -> str | None:
    """A fresh folder for pytest's temporary files on a RAM-backed file system with room to spare, else None
    (pytest's default, the system's temporary folder)."""
    try:
        st = os.statvfs(_MEMORY_TMP)
        if st.f_bavail * st.f_frsize < _MEMORY_TMP_MIN_FREE or not os.access(_MEMORY_TMP, os.W_OK):
            return None
        return tempfile.mkdtemp(prefix="fastalign-tests-", dir=_MEMORY_TMP)
    except OSError:
        return None


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy over the package."""
    _install(session, "dev")
    session.run("mypy", "fastalign")


@nox.session(venv_backend="none")
def cuda_compile(session: nox.Session) -> None:
    """nvcc -c every kernels/*.cu on its own (they include no torch headers); each file's two architectures
    compile in parallel (--threads=0: one per CPU; rsa.cu on 2 cores 11.2-12.6 -> 7.0-8.3 s)."""
    sources = sorted(glob.glob("kernels/*.cu"))
    if not sources:
        session.log("kernels/ has no .cu files: nothing to compile")
        return
    nvcc = shutil.which("nvcc") or (
        os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc") if os.environ.get("CUDA_HOME") else None
    )
    if nvcc is None or not os.path.exists(nvcc):
        session.error("nvcc not found on PATH or in $CUDA_HOME/bin: CUDA kernels were NOT compiled")
    out = session.create_tmp()
    for src in sources:
        obj = os.path.join(out, os.path.basename(src) + ".o")
        session.run(
            nvcc, "-c", src, "-o", obj, "-std=c++17", "-O3", "-Ikernels", "--threads=0",
            "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90",
            external=True,
        )  # fmt: skip
    session.log(f"compiled {len(sources)} CUDA file(s) with {nvcc}")


def script_flags(path: str) -> set[str]:
    """The options a benchmark script's parser defines, read from its source: importing it would import
    torch and the rest, seconds a script (tests/cli/test_cli_bench.py checks every --quick with it)."""
    return {
        node.args[0].value
        for node in ast.walk(ast.parse(Path(path).read_text()))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "add_argument"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    }


def script_args(args: list[str], flags: set[str]) -> list[str]:
    """``args`` without ``--device`` (``--device X`` or ``--device=X``) for a script that has no such
    option: it runs where it runs (on the CPU) rather than stopping at a usage error."""
    if "--device" in flags:
        return list(args)
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--device":
            skip = True
        elif not arg.startswith("--device="):
            out.append(arg)
    return out


@nox.session
def benchmarks(session: nox.Session) -> None:
    """Runs every benchmarks/bench_*.py with the session's arguments (``--device`` only to the scripts that
    take it); JSON goes to benchmarks/results/ and docs/benchmarks.md is rendered from it. A failing script
    does not stop the others: each is run, the failures are listed at the end and the session fails. The
    render runs anyway, since a script that fails writes no result file (its committed table stays).
    ``nox -s benchmarks -- --quick``: every script's smoke run at tiny sizes, which writes no result file,
    so nothing is rendered. The photos extra is installed: with it the demo draws photographs, as
    for the committed demo results (procedural shapes without it give other numbers); the bench extra
    brings torchmetrics, the correlation benchmark's published baseline."""
    _install(session, "dev,bench,photos")
    failed = []
    for script in sorted(glob.glob("benchmarks/bench_*.py")):
        args = script_args(session.posargs, script_flags(script))
        if args != session.posargs:
            session.log(f"{script} has no --device: it runs without it")
        try:
            session.run("python", script, *args)
        except nox.command.CommandFailed:
            failed.append(script)
    if "--quick" not in session.posargs:
        session.run("python", "benchmarks/render.py")
    if failed:
        session.error(
            f"{len(failed)} benchmark script(s) failed (no result file written): {', '.join(failed)}"
        )


@nox.session
def demo(session: nox.Session) -> None:
    """The quick demo end to end in a fresh venv (``nox -s demo -- --out demo`` runs the full one)."""
    _install(session, "photos")
    args = session.posargs or ["--out", os.path.join(session.create_tmp(), "demo"), "--quick", "--overwrite"]
    session.run("fastalign", "demo", *args)
