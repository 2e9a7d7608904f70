"""keep_freed_memory: glibc's malloc keeps freed blocks, so allocating a large block again faults no pages.

Each case runs in a fresh Python process (mallopt changes the process for good) and counts the minor page
faults of malloc'ing, writing and freeing a 64 MiB block (above glibc's largest dynamic mmap threshold,
32 MiB) four times after a first: with malloc as it comes, each block is a fresh mapping and all of its
16,384 4 KiB pages fault; kept, the block is reused and almost none do. Transparent huge pages are turned
off in the probe (prctl), so that a host whose THP setting is "always" also faults per 4 KiB page. The
probe calls libc's malloc itself: torch's 64-byte-aligned allocations reuse a freed block only when its
alignment slack fits, so their fault counts depend on the heap's layout (the training step's time, which
docs/training.md reports, is what they change). Counting faults, not timing, makes the test independent
of the machine's load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fastalign import _memory as memory

PAGES = (64 << 20) // 4096

PROBE = """
import ctypes, importlib.util, json, resource, sys
# the module alone (standard library only): importing the package would import torch, seconds per probe
spec = importlib.util.spec_from_file_location("fastalign_memory", sys.argv[2])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
keep_freed_memory = module.keep_freed_memory
libc = ctypes.CDLL(None)
libc.prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE: 4 KiB pages whatever the host's THP setting
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
def faults_of_a_new_block(n=64 << 20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    libc.free(p)
    return faults
faults_of_a_new_block()
print(json.dumps({"kept": kept, "faults": [faults_of_a_new_block() for _ in range(4)]}))
"""


def _probe(mode: str, **env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES" and not k.startswith("MALLOC_")}
    environ.pop(memory.ENV_VAR, None)
    environ.update(env)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode, memory.__file__],
        env=environ,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def _glibc() -> bool:
    try:
        return sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError):  # a C library that does not know the name (musl)
        return False


glibc = pytest.mark.skipif(not _glibc(), reason="keep_freed_memory acts on glibc's malloc only")


@glibc
def test_a_freed_block_is_reused_without_page_faults() -> None:
    plain, kept = _probe("plain"), _probe("keep")
    assert min(plain["faults"]) > PAGES // 2, plain  # each block went back to the system, mapped again
    assert kept["kept"] is True and max(kept["faults"]) < PAGES // 20, kept


@glibc
@pytest.mark.parametrize(
    "env",
    [
        {memory.ENV_VAR: "0"},
        {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1048576"},
        {"MALLOC_MMAP_THRESHOLD_": "1048576"},
        {"LD_PRELOAD": "/nonexistent/libjemalloc.so.2"},
    ],
    ids=["opted-out", "glibc-tunables", "malloc-env", "another-allocator"],
)
def test_the_users_own_choice_is_left_alone(env: dict[str, str]) -> None:
    probe = _probe("keep", **env)
    assert probe["kept"] is False


def test_the_public_name_is_the_one_the_program_calls() -> None:
    from fastalign import cli, train

    assert train.keep_freed_memory is memory.keep_freed_memory is cli.keep_freed_memory


def test_the_program_keeps_freed_memory_and_main_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    from fastalign import cli

    calls: list[int] = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(1) or True)
    assert cli.main(["info"]) == 0
    assert calls == []  # main() from Python leaves the process's malloc alone
    monkeypatch.setattr(sys, "argv", ["fastalign", "info"])
    assert cli.entry() == 0
    assert calls == [1]
