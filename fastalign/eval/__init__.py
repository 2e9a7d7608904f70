"""Model-brain evaluation: RSA over time, ROIs, subjects and modalities, with statistics and variability.

- :func:`evaluate`: the whole evaluation as tables (results.csv, stats.json, summary.json,
  variability.csv; see docs/evaluation.md), the function behind ``fastalign evaluate``.
- :class:`EvalModel`: a model to evaluate (a torch module and layer names, precomputed features, or a run
  folder via :meth:`EvalModel.from_run`); :func:`layer_features`: activations at named layers, cached.
- :class:`BrainData`, :func:`load_brain`: the test-set responses (EEG, fMRI, behaviour) compared with.
- :func:`variability`: individual variability of per-subject models by layer.
- :func:`robustness`, :func:`fgsm`, :func:`pgd`: adversarial robustness (L-infinity, pixel space).
- :func:`retrieval_topk`: zero-shot retrieval accuracy (top-k among a gallery) with its chance level.
- :func:`saliency`, :func:`grad_cam`, :func:`integrated_gradients`: where in a trial a brain encoder
  finds its image, over channels, time and frequency bands (integrated gradients through captum).
- :func:`write_report`: report.html beside summary.json (figures from :mod:`fastalign.plotting`).
"""

from __future__ import annotations

from fastalign.eval.attacks import (
    ATTACKS,
    DEFAULT_EPS,
    ROBUSTNESS_COLUMNS,
    LabelledImages,
    fgsm,
    load_labelled_images,
    pgd,
    robustness,
)
from fastalign.eval.brain import MODALITIES, BrainData, load_brain
from fastalign.eval.features import CORNET_LAYERS, DEFAULT_LAYERS, EvalModel, layer_features
from fastalign.eval.individual import variability
from fastalign.eval.report import FIGURE_FORMATS, save_figure, write_report
from fastalign.eval.retrieval import retrieval_topk
from fastalign.eval.rsa import RESULT_COLUMNS, VARIABILITY_COLUMNS, EvalResult, evaluate, write_csv
from fastalign.eval.saliency import (
    EEG_BANDS,
    IGAttributions,
    Saliency,
    grad_cam,
    integrated_gradients,
    saliency,
)

__all__ = [
    "ATTACKS",
    "CORNET_LAYERS",
    "DEFAULT_EPS",
    "DEFAULT_LAYERS",
    "EEG_BANDS",
    "FIGURE_FORMATS",
    "MODALITIES",
    "RESULT_COLUMNS",
    "ROBUSTNESS_COLUMNS",
    "VARIABILITY_COLUMNS",
    "BrainData",
    "EvalModel",
    "EvalResult",
    "IGAttributions",
    "LabelledImages",
    "Saliency",
    "evaluate",
    "fgsm",
    "grad_cam",
    "integrated_gradients",
    "layer_features",
    "load_brain",
    "load_labelled_images",
    "pgd",
    "retrieval_topk",
    "robustness",
    "saliency",
    "save_figure",
    "variability",
    "write_csv",
    "write_report",
]
