"""The InfoNCE Triton kernels compiled ahead of time for Hopper (sm_90), no GPU needed.

The interpreter checks what the kernels compute; this checks how they would run on an H100 with the
CUDA configurations the backend uses: Hopper's asynchronous tensor-core instructions (wgmma), loads
software-pipelined through cp.async, and no registers spilled to local memory. Arguments are
specialised as Triton's JIT does for 16-byte-aligned pointers and sizes divisible by 16. Compilation
runs in a subprocess because TRITON_INTERPRET=1, set for the rest of the suite, patches triton.language.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

pytestmark = pytest.mark.triton

_COMPILE = r"""
import json, os, re, subprocess, sys, tempfile
import torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fastalign.contrastive import triton as tr

SIZES = ("n_a", "n_b", "D", "stride_a", "stride_b", "stride_ds", "n_rows")
BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
out = {}
for kname in ("_lse_fwd_kernel", "_ds_kernel"):
    kernel = getattr(tr, kname)
    for dname, t, precision in (("bfloat16", "bf16", "tf32"), ("float16", "fp16", "tf32"),
                                ("float32", "fp32", "ieee"), ("float32", "fp32", "tf32")):
        dtype = getattr(torch, dname)
        bm, bn, bk, warps, stages = tr._config("cuda", dtype, precision)
        sig = {}
        for name in kernel.arg_names:
            if name in SIZES:
                sig[name] = "i32"
            elif name in ("A", "B") or (name == "DS" and t != "fp32"):
                sig[name] = "*" + t
            elif name in ("SCALE", "DS") or name.startswith(("ROW_", "COL_", "G_")):
                sig[name] = "*fp32"
            elif name.isupper():
                sig[name] = "constexpr"
            else:
                sig[name] = "i32"
        attrs = {(kernel.arg_names.index(k),): [["tt.divisibility", 16]]
                 for k, v in sig.items() if v.startswith("*") or k in SIZES}
        consts = {"WITH_COLS": True, "PRECISION": precision, "UPCAST": False,
                  "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}
        k = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=consts, attrs=attrs),
                           target=GPUTarget("cuda", 90, 32),
                           options={"num_warps": warps, "num_stages": stages})
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "k.cubin")
            open(path, "wb").write(k.asm["cubin"])
            usage = subprocess.run([os.path.join(BIN, "cuobjdump"), "-res-usage", path],
                                   capture_output=True, text=True, check=True).stdout
        regs, stack = (int(v) for v in re.search(r"REG:(\d+) STACK:(\d+)", usage).groups())
        ptx = k.asm["ptx"]
        out[f"{kname}-{dname}-{precision}"] = {"regs": regs, "stack": stack, "shared": k.metadata.shared,
                                   **{op: op in ptx for op in ("wgmma.mma_async", "cp.async", "ex2.approx")}}
json.dump(out, sys.stdout)
"""


@pytest.fixture(scope="module")
def sm90() -> dict[str, dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", _COMPILE], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.mark.parametrize(
    ("dtype", "precision"),
    [("bfloat16", "tf32"), ("float16", "tf32"), ("float32", "tf32"), ("float32", "ieee")],
)
@pytest.mark.parametrize("kernel", ["_lse_fwd_kernel", "_ds_kernel"])
def test_kernels_use_hopper_tensor_cores_pipelined_without_spills(sm90, kernel, dtype, precision) -> None:
    """precision is what float32 dots use (torch's "highest" -> ieee; "high"/"medium" -> tensor cores)."""
    k = sm90[f"{kernel}-{dtype}-{precision}"]
    # IEEE float32 has no tensor-core instruction: those dots are FMAs by definition
    assert k["wgmma.mma_async"] == (precision != "ieee"), "not on Hopper's wgmma tensor-core path"
    assert k["cp.async"], "global loads are not software-pipelined"
    assert k["ex2.approx"]
    assert k["stack"] == 0, f"{k['stack']} bytes per thread spilled ({k['regs']} registers)"
    assert k["shared"] <= 227 * 1024, "more shared memory than an H100 SM has"
