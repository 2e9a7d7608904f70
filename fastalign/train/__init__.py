"""Training: one generic fit loop that every recipe uses, and the run folders it writes.

- :func:`fit`: epochs with validation, model selection, early stopping, AMP, gradient clipping, seeding,
  progress, metrics, TensorBoard events, atomic checkpoints, resume, and data parallelism under torchrun.
- :class:`Hook`, :class:`FitState`, :class:`FitResult`: the loop's callbacks, what they see, its result.
- :class:`RunFolder`: a run folder's files (config.json, metrics.jsonl, checkpoints/, model.safetensors,
  summary.json, events/) and readers.
- :func:`load_checkpoint`: a checkpoint read with ``weights_only=True`` and loaded into a model/optimizer.
- :func:`align` (ReAlnet / ReAlnet-fMRI: CORnet-S aligned to one person's brain), :class:`AlignResult`,
  :func:`load_align_data` and :class:`AlignData` (a subject's training/validation/test pairs), and
  :func:`realnet_loss` (its loss).
- :func:`keep_freed_memory`: glibc's malloc keeps freed memory for reuse, so that a CPU training step's
  large tensors cost no page faults (the ``fastalign`` command calls it).
- :func:`decode` (brain-to-image decoding: a brain encoder trained with InfoNCE against image
  embeddings), :class:`DecodeResult`, :class:`Decoder`.

See docs/training.md.
"""

from __future__ import annotations

from fastalign._memory import keep_freed_memory
from fastalign.train.alignment import AlignData, AlignResult, align, load_align_data, realnet_loss
from fastalign.train.checkpoint import load_checkpoint
from fastalign.train.decoding import Decoder, DecodeResult, decode
from fastalign.train.loop import FitResult, FitState, Hook, fit
from fastalign.train.run import RunFolder

__all__ = [
    "AlignData",
    "AlignResult",
    "DecodeResult",
    "Decoder",
    "FitResult",
    "FitState",
    "Hook",
    "RunFolder",
    "align",
    "decode",
    "fit",
    "keep_freed_memory",
    "load_align_data",
    "load_checkpoint",
    "realnet_loss",
]
