"""Training: one generic fit loop that every recipe uses, and the run folders it writes.

- :func:`fit`: epochs with validation, model selection, early stopping, AMP, gradient clipping, seeding,
  progress, metrics, TensorBoard events, atomic checkpoints, resume, and data parallelism under torchrun.
- :class:`Hook`, :class:`FitState`, :class:`FitResult`: the loop's callbacks, what they see, its result.
- :class:`RunFolder`: a run folder's files (config.json, metrics.jsonl, checkpoints/, model.safetensors,
  summary.json, events/) and readers.
- :func:`load_checkpoint`: a checkpoint read with ``weights_only=True`` and loaded into a model/optimizer.

See docs/training.md.
"""

from __future__ import annotations

from fastalign.train.checkpoint import load_checkpoint
from fastalign.train.loop import FitResult, FitState, Hook, fit
from fastalign.train.run import RunFolder

__all__ = ["FitResult", "FitState", "Hook", "RunFolder", "fit", "load_checkpoint"]
