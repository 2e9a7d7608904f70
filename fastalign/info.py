"""`python -m fastalign.info`: versions, devices, and which backends work here and why not."""

from __future__ import annotations

import platform
import sys

import torch

import fastalign
from fastalign import _backend, _ext


def _cpu() -> str:
    """The CPU's vector capability as torch dispatches on it, and whether it computes bf16 natively,
    which decides align's and decode's amp="auto" (bf16 autocast there, else float32)."""
    from fastalign.train.precision import native_bf16

    bf16 = native_bf16(torch.device("cpu"))
    return f"{torch.backends.cpu.get_cpu_capability()}, bf16 " + (
        "native: amp='auto' trains in bf16 on the CPU"
        if bf16
        else "not native: amp='auto' trains in float32 on the CPU"
    )


def report() -> str:
    """The report printed by ``python -m fastalign.info``."""
    lines = [
        f"fastalign {fastalign.__version__}",
        f"python    {sys.version.split()[0]} ({platform.machine()}, {platform.system()})",
        f"torch     {torch.__version__} (CUDA {torch.version.cuda or 'none'})",
    ]
    try:
        import triton

        lines.append(f"triton    {triton.__version__}")
    except ImportError:
        lines.append("triton    not installed")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            lines.append(
                f"device    cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}"
            )
    else:
        lines.append(f"device    cpu ({torch.get_num_threads()} threads), no CUDA device")
    lines.append(f"cpu       {_cpu()}")
    info = _ext.build_info()
    lines.append(
        "_C        "
        + (
            f"built against torch {info.get('torch_version', '?')} (cuda={info.get('cuda')}, "
            f"openmp={info.get('openmp')})"
            if info
            else "missing"
        )
    )
    lines.append("")
    lines.append("backends (in this process):")
    status = _backend.global_status()
    for name, (ok, reason) in status.items():
        lines.append(f"  {name:<10} {'yes' if ok else 'no ':<4} {reason}")
    lines.append("")
    lines.append("ops and their backends (auto's order of preference):")
    for op, disp in sorted(_backend.REGISTRY.items()):
        lines.append(f"  {op:<28} {', '.join(disp.specs)}")
        for name, spec in disp.specs.items():
            missing = _ext.why_ops_missing(spec.ops) if spec.ops and status[name][0] else None
            if missing:  # an extension built from older sources: the backend is there, this op's kernels not
                lines.append(f"  {'':<28} {name} cannot run it: {missing}")
    return "\n".join(lines)


def main() -> int:
    """``python -m fastalign.info``: ``fastalign info`` (its exit status, and its quiet end when the output
    is piped into a reader that stops early, ``python -m fastalign.info | head -2``)."""
    from fastalign.cli import main as cli_main

    return cli_main(["info"])


if __name__ == "__main__":
    sys.exit(main())
