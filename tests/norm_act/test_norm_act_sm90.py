"""The fused BatchNorm+add+ReLU Triton kernels compiled ahead of time for Hopper (sm_90), no GPU needed.

The interpreter checks what the kernels compute; this checks that they compile for an H100 as the
backend launches them (float32 and bfloat16 activations, every constexpr branch, NCHW and channels_last
with the unit stride that Triton's JIT specialises), spill nothing, and that the activation-sized
kernels read with vector loads in both layouts (contiguous spatial rows in NCHW, channels in NHWC).
"""

from __future__ import annotations

import itertools

import pytest

pytest.importorskip("triton")

from sm90 import H100_SHARED_BYTES, compile_for_sm90

from fastalign.norm_act import triton as bn

pytestmark = pytest.mark.triton

_INTS = {"M", "C", "HW", "SB", "U", "stride_n", "stride_c", "stride_s", "units_per_split", "n_splits"}
_FLOATS = {"eps"}
_ACTIVATIONS = {"X", "R", "Y", "DY", "DX", "DR"}  # activation-sized, in the input dtype
_POINTERS = {"PEXP": "*i32", "UVAR": "*fp64"}  # the other pointers are float32
_KERNELS: dict[str, list[dict]] = {
    "_stats_kernel": [{}],
    "_finalize_kernel": [{"TRAINING": True}, {"TRAINING": False}],
    "_apply_kernel": [{"HAS_RES": r, "RELU": a} for r in (False, True) for a in (False, True)],
    "_bwd_reduce_kernel": [{"RELU": False}, {"RELU": True}],
    "_bwd_finalize_kernel": [{"TRAINING": True}, {"TRAINING": False}],
    "_bwd_apply_kernel": [{"RELU": a, "HAS_RES": r} for r in (False, True) for a in (False, True)],
}


_LAYOUTS = {"nchw": "stride_s", "nhwc": "stride_c"}  # the stride that is 1 in each layout
_ACTIVATION_KERNELS = ("_stats_kernel", "_apply_kernel", "_bwd_reduce_kernel", "_bwd_apply_kernel")


def _specs() -> list[dict]:
    specs = []
    for name, variants in _KERNELS.items():
        kernel = getattr(bn, name)
        layouts = _LAYOUTS if name in _ACTIVATION_KERNELS else {"any": None}
        for (layout, unit), dtype, flags in itertools.product(layouts.items(), ("fp32", "bf16"), variants):
            sig = {}
            for arg in kernel.arg_names:
                if arg == unit or arg.startswith("BLOCK_") or arg in flags:
                    sig[arg] = "constexpr"
                elif arg in _INTS:
                    sig[arg] = "i32"
                elif arg in _FLOATS:
                    sig[arg] = "fp32"
                else:
                    sig[arg] = f"*{dtype}" if arg in _ACTIVATIONS else _POINTERS.get(arg, "*fp32")
            constexprs = dict(flags)
            blocks = (("BLOCK_M", bn._BLOCK_M), ("BLOCK_C", bn._BLOCK_C), ("BLOCK_S", bn._BLOCK_S))
            constexprs.update({k: v for k, v in blocks if k in kernel.arg_names})
            if unit is not None:
                constexprs[unit] = 1
            tag = "-".join(f"{k}={int(v)}" for k, v in flags.items())
            specs.append({
                    "name": f"{name}-{layout}-{dtype}-{tag}",
                    "module": "fastalign.norm_act.triton",
                    "kernel": name,
                    "signature": sig,
                    "constexprs": constexprs,
                    "divisible": ["C", "HW", "stride_n"] + [k for k in ("stride_c", "stride_s") if k != unit],
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
    if spec["kernel"] in _ACTIVATION_KERNELS:
        assert k["vector_loads"], "activations are read element by element (no ld.global.v*)"
