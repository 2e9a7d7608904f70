"""The Triton RDM kernel compiled ahead of time for Hopper (sm_90), no GPU needed.

The interpreter checks what it computes; this checks how it would run on an H100 with the launch
configuration of fastalign.rsa.triton (BLOCK 64, BLOCK_K 64): half inputs on Hopper's wgmma tensor cores,
IEEE float32 as FMAs (no tensor-core instruction exists for it), loads pipelined through cp.async, no
registers spilled.
"""

from __future__ import annotations

import pytest

pytest.importorskip("triton")

from sm90 import H100_SHARED_BYTES, compile_for_sm90

pytestmark = pytest.mark.triton

_CASES = [("bf16", False), ("fp16", False), ("fp32", True)]


def _spec(dtype: str, ieee: bool, mode: int) -> dict:
    sig = {
        "z_ptr": f"*{dtype}",
        "sq_ptr": "*fp32",
        "out_ptr": "*fp32",
        "n": "i32",
        "p": "i32",
        "inv_p": "fp32",
        "stride_zb": "i64",
        "stride_zn": "i32",
        "stride_ob": "i64",
        "MODE": "constexpr",
        "IEEE": "constexpr",
        "BLOCK": "constexpr",
        "BLOCK_K": "constexpr",
    }
    return {
        "name": f"rdm-{dtype}-mode{mode}",
        "module": "fastalign.rsa.triton",
        "kernel": "_rdm_kernel",
        "signature": sig,
        "constexprs": {"MODE": mode, "IEEE": ieee, "BLOCK": 64, "BLOCK_K": 64},
        "divisible": ["p", "stride_zn", "stride_zb", "stride_ob"],
        "num_warps": 4,
        "num_stages": 3,
    }


@pytest.fixture(scope="module")
def sm90() -> dict[str, dict]:
    return compile_for_sm90([_spec(d, ieee, mode) for d, ieee in _CASES for mode in (0, 1)])


@pytest.mark.parametrize("mode", [0, 1])
@pytest.mark.parametrize(("dtype", "ieee"), _CASES)
def test_rdm_kernel_on_hopper_paths(sm90: dict[str, dict], dtype: str, ieee: bool, mode: int) -> None:
    k = sm90[f"rdm-{dtype}-mode{mode}"]
    assert k["wgmma"] == (not ieee), "half inputs are not on Hopper's wgmma tensor-core path"
    assert k["cp_async"], "global loads are not software-pipelined"
    assert k["stack"] == 0, f"{k['stack']} bytes per thread spilled ({k['regs']} registers)"
    assert k["shared"] <= H100_SHARED_BYTES
