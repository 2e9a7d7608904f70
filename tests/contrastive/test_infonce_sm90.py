"""The InfoNCE Triton kernels compiled ahead of time for Hopper (sm_90), no GPU needed.

The interpreter checks what the kernels compute; this checks how they would run on an H100 with the
CUDA configurations the backend uses (tests/sm90.py): Hopper's asynchronous tensor-core instructions
(wgmma), loads software-pipelined through cp.async, and no registers spilled to local memory.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from sm90 import H100_SHARED_BYTES, compile_for_sm90

from fastalign.contrastive import triton as tr

pytestmark = pytest.mark.triton

_SIZES = ["n_a", "n_b", "D", "stride_a", "stride_b", "stride_ds", "n_rows"]
_CASES = [("bfloat16", "tf32"), ("float16", "tf32"), ("float32", "tf32"), ("float32", "ieee")]
_KERNELS = {"_lse_fwd_kernel": tr._lse_fwd_kernel, "_ds_kernel": tr._ds_kernel}


def _spec(name: str, dtype_name: str, precision: str) -> dict:
    dtype = getattr(torch, dtype_name)
    t = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}[dtype_name]
    bm, bn, bk, warps, stages = tr._config("cuda", dtype, precision)
    sig = {}
    for arg in _KERNELS[name].arg_names:
        if arg in _SIZES or arg.islower():
            sig[arg] = "i32"
        elif arg in ("A", "B", "DS"):
            sig[arg] = f"*{t}" if arg != "DS" or t != "fp32" else "*fp32"
        elif arg in ("SCALE",) or arg.startswith(("ROW_", "COL_", "G_")):
            sig[arg] = "*fp32"
        else:
            sig[arg] = "constexpr"
    return {
        "name": f"{name}-{dtype_name}-{precision}",
        "module": "fastalign.contrastive.triton",
        "kernel": name,
        "signature": sig,
        "constexprs": {
            "WITH_COLS": True,
            "PRECISION": precision,
            "UPCAST": False,
            "BLOCK_M": bm,
            "BLOCK_N": bn,
            "BLOCK_K": bk,
        },
        "divisible": _SIZES,
        "num_warps": warps,
        "num_stages": stages,
    }


@pytest.fixture(scope="module")
def sm90() -> dict[str, dict]:
    return compile_for_sm90([_spec(k, d, p) for k in _KERNELS for d, p in _CASES])


@pytest.mark.parametrize(("dtype", "precision"), _CASES)
@pytest.mark.parametrize("kernel", list(_KERNELS))
def test_kernels_use_hopper_tensor_cores_pipelined_without_spills(sm90, kernel, dtype, precision) -> None:
    """precision is what float32 dots use (torch's "highest" -> ieee; "high"/"medium" -> tensor cores)."""
    k = sm90[f"{kernel}-{dtype}-{precision}"]
    # IEEE float32 has no tensor-core instruction: those dots are FMAs by definition
    assert k["wgmma"] == (precision != "ieee"), "not on Hopper's wgmma tensor-core path"
    assert k["cp_async"], "global loads are not software-pipelined"
    assert k["ex2"]
    assert k["stack"] == 0, f"{k['stack']} bytes per thread spilled ({k['regs']} registers)"
    assert k["shared"] <= H100_SHARED_BYTES, "more shared memory than an H100 SM has"
