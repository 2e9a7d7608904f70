"""`python -m fastalign.info`: versions, devices, and which backends work here and why not."""

from __future__ import annotations

import platform
import sys

import torch

import fastalign
from fastalign import _backend, _ext


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
    info = _ext.build_info()
    lines.append(
        "_C        "
        + (f"built (cuda={info.get('cuda')}, openmp={info.get('openmp')})" if info else "missing")
    )
    lines.append("")
    lines.append("backends (in this process):")
    for name, (ok, why) in _backend.global_status().items():
        lines.append(f"  {name:<10} {'yes' if ok else 'no ':<4} {why}")
    lines.append("")
    lines.append("ops and their backends (auto's order of preference):")
    for op, disp in sorted(_backend.REGISTRY.items()):
        lines.append(f"  {op:<28} {', '.join(disp.specs)}")
    return "\n".join(lines)


def main() -> None:
    print(report())


if __name__ == "__main__":
    main()
