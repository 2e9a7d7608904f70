"""Figures drawn from the tables fastalign writes, with matplotlib's Agg backend (no pyplot state).

- :mod:`fastalign.plotting.evaluation`: model-brain evaluation (RSA time courses, ROI bars, RDMs,
  across-subject matrices, variability, robustness).
- :mod:`fastalign.plotting.decoding`: decoding (saliency topomaps, saliency over time and frequency,
  retrieval grid, top-k bars).

Save any figure with :func:`save_figure` (PNG and SVG, each written atomically).
"""

from fastalign.plotting.decoding import (
    plot_retrieval_grid,
    plot_saliency_time_frequency,
    plot_saliency_topomaps,
    plot_topk_bars,
    plot_topomaps,
)
from fastalign.plotting.evaluation import (
    PALETTE,
    evaluation_figures,
    model_styles,
    plot_across_subject,
    plot_rdms,
    plot_robustness,
    plot_roi_bars,
    plot_rsa_time_courses,
    plot_variability,
    save_figure,
)

__all__ = [
    "PALETTE",
    "evaluation_figures",
    "model_styles",
    "plot_across_subject",
    "plot_rdms",
    "plot_retrieval_grid",
    "plot_robustness",
    "plot_roi_bars",
    "plot_rsa_time_courses",
    "plot_saliency_time_frequency",
    "plot_saliency_topomaps",
    "plot_topk_bars",
    "plot_topomaps",
    "plot_variability",
    "save_figure",
]
