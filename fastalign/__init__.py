"""fastalign: fast, exact kernels and pipelines for brain-aligned vision models and brain decoding.

torch is imported first; the compiled extension fastalign._C is loaded lazily by the ops that need it,
so importing fastalign never fails because it or Triton is missing (see ``python -m fastalign.info``).
"""

from __future__ import annotations

import torch  # noqa: F401  (before anything that may load fastalign._C)

from fastalign.contrastive import InfoNCELoss, infonce_loss

__version__ = "0.1.0"

__all__ = [
    "InfoNCELoss",
    "__version__",
    "infonce_loss",
]
