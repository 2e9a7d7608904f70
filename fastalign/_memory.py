"""Keeping freed memory in the process, so that a training step's large tensors cost no page faults.

glibc's malloc gives each allocation above its mmap threshold (at most 32 MiB) a fresh mapping and
returns it to the system when it is freed. A CPU training step allocates the same large tensors again
every step (CORnet-S's weight gradients: 151 MB for each of IT's two recurrent passes, and their sum),
and the kernel then maps and zeroes every 4 KiB page at its first write, which costs more than the
arithmetic that fills it: IT's weight-gradient product (2048 x 16 by 16 x 18432) took 151 ms into a new
tensor and 35 ms into a reused one on a 2-core CPU, one thread.

PyTorch's CPU performance guide recommends jemalloc or TCMalloc (preloaded) for this reason.
:func:`keep_freed_memory` gets block reuse from glibc itself, with no library to install:
``mallopt(M_MMAP_MAX, 0)`` (large blocks come from the heap) and ``mallopt(M_TRIM_THRESHOLD, -1)``
(freed heap memory stays for the next allocation). What it costs and where it does not act:

- the process never gives freed memory back to the system until it exits (``malloc_trim(0)`` does, on
  request), so its memory stays at its high-water mark or above it where the heap fragments; forked
  processes (DataLoader workers) inherit the setting;
- large blocks allocated by threads other than the main one still get fresh mappings (glibc's per-thread
  heaps are at most 64 MiB); CPU autograd runs the backward on the calling thread;
- ``calloc`` (numpy.zeros) clears reused heap memory at once instead of leaving untouched pages unmapped;
- jemalloc or TCMalloc are recognised only by their names in ``LD_PRELOAD``.

The ``fastalign`` program calls it (:func:`fastalign.cli.entry`); from Python, call
:func:`fastalign.train.keep_freed_memory`. The module imports only the standard library.
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

#: Set to "0" to leave malloc as it is in the ``fastalign`` command.
ENV_VAR = "FASTALIGN_KEEP_FREED_MEMORY"


def _user_chose_allocator() -> str | None:
    """What in the environment already tunes or replaces malloc, else None."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc." in tunables:
        return "GLIBC_TUNABLES sets glibc.malloc parameters"
    names = [k for k in os.environ if k.startswith("MALLOC_") and k.endswith("_")]
    if names:
        return f"{names[0]} is set"
    preload = os.environ.get("LD_PRELOAD", "")
    if any(name in preload for name in ("jemalloc", "tcmalloc", "mimalloc")):
        return "LD_PRELOAD loads another allocator"
    return None


def keep_freed_memory() -> bool:
    """Makes glibc's malloc keep freed memory for reuse, for the rest of the process (see the module).

    Nothing is changed where malloc is not glibc's (macOS, Windows, musl), where the environment already
    tunes or replaces it (``GLIBC_TUNABLES`` with ``glibc.malloc.*``, ``MALLOC_*_`` variables, jemalloc,
    TCMalloc or mimalloc in ``LD_PRELOAD``), or where ``FASTALIGN_KEEP_FREED_MEMORY=0``.

    Returns:
        Whether malloc now keeps freed memory.
    """
    if os.environ.get(ENV_VAR, "1").strip() == "0" or not sys.platform.startswith("linux"):
        return False
    if _user_chose_allocator() is not None:
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (only glibc has it)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # trimming off first: if mmap could not be turned off after it, freed mapped blocks still go back
    return bool(mallopt(_M_TRIM_THRESHOLD, -1)) and bool(mallopt(_M_MMAP_MAX, 0))
