"""The fused BatchNorm+add+ReLU Triton kernels compiled ahead of time for Hopper (sm_90), no GPU needed.

The interpreter checks what the kernels compute; this checks that they compile for an H100 as the
backend launches them (float32 and bfloat16 activations, every constexpr branch) and spill nothing.
"""

from __future__ import annotations

import pytest

pytest.importorskip("triton")

from sm90 import H100_SHARED_BYTES, compile_for_sm90

from fastalign.models.norm_act import triton as bn

pytestmark = pytest.mark.triton

_INTS = {"M", "C", "HW", "stride_n", "stride_c", "stride_s", "rows_per_split", "n_splits"}
_FLOATS = {"eps"}
_ACTIVATIONS = {"X", "R", "Y", "DY", "DX", "DR"}  # activation-sized, in the input dtype
_KERNELS: dict[str, list[dict]] = {
    "_stats_kernel": [{}],
    "_finalize_kernel": [{"TRAINING": True}, {"TRAINING": False}],
    "_apply_kernel": [{"HAS_RES": r, "RELU": a} for r in (False, True) for a in (False, True)],
    "_bwd_reduce_kernel": [{"RELU": False}, {"RELU": True}],
    "_bwd_finalize_kernel": [{"TRAINING": True}, {"TRAINING": False}],
    "_bwd_apply_kernel": [{"RELU": a, "HAS_RES": r} for r in (False, True) for a in (False, True)],
}


def _specs() -> list[dict]:
    specs = []
    for name, variants in _KERNELS.items():
        kernel = getattr(bn, name)
        for dtype in ("fp32", "bf16"):
            for flags in variants:
                sig = {}
                for arg in kernel.arg_names:
                    if arg in _INTS:
                        sig[arg] = "i32"
                    elif arg in _FLOATS:
                        sig[arg] = "fp32"
                    elif arg.startswith("BLOCK_") or arg in flags:
                        sig[arg] = "constexpr"
                    else:
                        sig[arg] = f"*{dtype}" if arg in _ACTIVATIONS else "*fp32"
                constexprs = dict(flags)
                constexprs.update({k: v for k, v in (("BLOCK_M", bn._BLOCK_M), ("BLOCK_C", bn._BLOCK_C))
                                   if k in kernel.arg_names})  # fmt: skip
                tag = "-".join(f"{k}={int(v)}" for k, v in flags.items())
                specs.append({
                    "name": f"{name}-{dtype}-{tag}",
                    "module": "fastalign.models.norm_act.triton",
                    "kernel": name,
                    "signature": sig,
                    "constexprs": constexprs,
                    "divisible": ["C", "stride_n"],
                    "num_warps": 4,
                    "num_stages": 3,
                })  # fmt: skip
    return specs


@pytest.fixture(scope="module")
def sm90() -> dict[str, dict]:
    return compile_for_sm90(_specs())


@pytest.mark.parametrize("spec", _specs(), ids=lambda s: s["name"])
def test_kernels_compile_for_hopper_without_spills(sm90: dict[str, dict], spec: dict) -> None:
    k = sm90[spec["name"]]
    assert k["stack"] == 0, f"{k['stack']} bytes per thread spilled ({k['regs']} registers)"
    assert k["shared"] <= H100_SHARED_BYTES
