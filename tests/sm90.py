"""Compile Triton kernels ahead of time for Hopper (sm_90) without a GPU, and report what came out.

Tests use it to check that the CUDA configurations of a backend would run on Hopper's fast paths:
wgmma tensor-core instructions, cp.async software pipelining, no register spills. Compilation runs in a
subprocess because TRITON_INTERPRET=1, set for the rest of the suite, patches triton.language.
Arguments named in ``divisible`` (and every pointer) are specialised as Triton's JIT does for
16-byte-aligned pointers and sizes divisible by 16.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

_COMPILE = r"""
import importlib, json, os, re, subprocess, sys, tempfile
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
out = {}
for spec in json.load(sys.stdin):
    kernel = getattr(importlib.import_module(spec["module"]), spec["kernel"])
    sig = spec["signature"]
    attrs = {(kernel.arg_names.index(k),): [["tt.divisibility", 16]]
             for k, v in sig.items() if v.startswith("*") or k in spec["divisible"]}
    k = triton.compile(
        ASTSource(fn=kernel, signature=sig, constexprs=spec["constexprs"], attrs=attrs),
        target=GPUTarget("cuda", 90, 32),
        options={"num_warps": spec["num_warps"], "num_stages": spec["num_stages"]},
    )
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(k.asm["cubin"])
        usage = subprocess.run([os.path.join(BIN, "cuobjdump"), "-res-usage", path],
                               capture_output=True, text=True, check=True).stdout
    regs, stack = (int(v) for v in re.search(r"REG:(\d+) STACK:(\d+)", usage).groups())
    ptx = k.asm["ptx"]
    out[spec["name"]] = {"regs": regs, "stack": stack, "shared": k.metadata.shared,
                         "wgmma": "wgmma.mma_async" in ptx, "cp_async": "cp.async" in ptx,
                         "ex2": "ex2.approx" in ptx,
                         "vector_loads": re.search(r"ld\.global(\.\w+)*\.v[248]\.", ptx) is not None}
json.dump(out, sys.stdout)
"""

H100_SHARED_BYTES = 227 * 1024


def compile_for_sm90(specs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Compiles each spec and returns, by spec name, registers, stack (spill) bytes per thread,
    shared memory bytes, and whether the PTX has wgmma, cp.async, ex2.approx and vector global loads.

    A spec: {"name", "module", "kernel", "signature" (arg -> Triton type or "constexpr"),
    "constexprs", "divisible" (int args divisible by 16), "num_warps", "num_stages"}.
    """
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", _COMPILE], input=json.dumps(specs), env=env, capture_output=True, text=True,
        timeout=900, cwd=os.path.dirname(os.path.abspath(__file__)),  # tests/: no fastalign/ to shadow it
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"sm_90 compilation failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout)
