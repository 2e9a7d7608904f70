"""keep_freed_memory: glibc's malloc keeps freed blocks, so allocating a large tensor again faults no pages.

Each case runs in a fresh Python process (mallopt changes the process for good), and counts the minor page
faults of allocating and writing a 64 MiB tensor a second time, after freeing the first: with malloc as it
comes, the block goes back to the system and every 4 KiB page faults again (16,384 of them); kept, almost
none do. Counting faults, not timing, makes the test independent of the machine's load.
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
import json, resource, sys
from fastalign.train import keep_freed_memory
import torch
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
def faults_of_a_new_tensor():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.empty(64 << 20, dtype=torch.uint8).fill_(1)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del t
    return faults
faults_of_a_new_tensor()
print(json.dumps({"kept": kept, "faults": faults_of_a_new_tensor()}))
"""


def _probe(mode: str, **env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES" and not k.startswith("MALLOC_")}
    environ.pop(memory.ENV_VAR, None)
    environ.update(env)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], env=environ, capture_output=True, text=True, check=True
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
    assert plain["faults"] > PAGES // 2  # the block went back to the system and is mapped again
    assert kept["kept"] is True and kept["faults"] < PAGES // 20


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


def test_the_program_keeps_freed_memory_and_main_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    from fastalign import cli

    calls: list[int] = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(1) or True)
    assert cli.main(["info"]) == 0
    assert calls == []  # main() from Python leaves the process's malloc alone
    monkeypatch.setattr(sys, "argv", ["fastalign", "info"])
    assert cli.entry() == 0
    assert calls == [1]
