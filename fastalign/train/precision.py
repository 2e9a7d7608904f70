"""Mixed precision for the fit loop: which autocast dtype a device gets, and the fp16 gradient scaler.

``auto`` takes bf16 only where the hardware computes it natively (a CPU with AVX-512 BF16 or AMX, as
oneDNN reports; a GPU that ``torch.cuda.is_bf16_supported``), since emulated bf16 is slower than fp32.
fp16 needs a GradScaler (its range underflows small gradients) and runs on CUDA only.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

AMP_MODES = ("auto", "bf16", "fp16", "fp32")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively (the test for ``amp="auto"``)."""
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return False


@dataclass(frozen=True)
class Precision:
    """The resolved choice.

    Attributes:
        mode: "bf16", "fp16" or "fp32".
        reason: why (recorded in config.json).
        device_type: the autocast device type ("cpu", "cuda", ...).
    """

    mode: str
    reason: str
    device_type: str

    def autocast(self) -> AbstractContextManager[object]:
        """The autocast context for forward passes and losses (nothing for fp32)."""
        if self.mode == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=_DTYPES[self.mode])

    def scaler(self) -> torch.amp.GradScaler | None:
        """A GradScaler for fp16, else None."""
        return torch.amp.GradScaler(self.device_type) if self.mode == "fp16" else None


def resolve_amp(amp: str, device: torch.device, fn: str = "fit") -> Precision:
    """The precision ``amp`` asks for on ``device``.

    Args:
        amp: "auto" (bf16 where native, else fp32), "bf16", "fp16" (CUDA only) or "fp32".
        device: the training device.
        fn: the function the errors name (a recipe checks ``amp`` before it loads its data).

    Raises:
        ValueError: ``amp`` is not one of :data:`AMP_MODES`.
        NotImplementedError: fp16 on a device other than CUDA.
    """
    if not isinstance(amp, str) or amp not in AMP_MODES:
        raise ValueError(f"{fn}: amp={amp!r}; expected one of {AMP_MODES}")
    if amp == "fp16" and device.type != "cuda":
        raise NotImplementedError(
            f"{fn}: amp='fp16' needs a CUDA device (its GradScaler), got device {device}; "
            "use 'bf16' or 'fp32'"
        )
    native = native_bf16(device)
    if amp == "auto":
        if native:
            return Precision("bf16", f"auto: {device.type} computes bf16 natively", device.type)
        return Precision("fp32", f"auto: {device.type} has no native bf16", device.type)
    if amp == "bf16" and not native:
        return Precision("bf16", f"requested; {device.type} has no native bf16 (emulated, slow)", device.type)
    return Precision(amp, "requested", device.type)
