"""Localisation metrics of the paper, as pure functions of one heatmap and its ground-truth boxes.

Every function takes ``conventions``: ``"paper"`` (default) computes each metric exactly as the
authors' evaluation did; ``"strict"`` is the cleaner variant this project used first. The table in
:mod:`groundiff_core.conventions` lists every difference; the per-function docstrings say how each
metric is computed under both.

Shared conventions:

* ``heatmap`` is a 2-D array ``[H, W]`` of floats on the original image grid. ``NaN`` pixels are
  where the model never looked (the margins cut away by the centre crop): never predicted positive,
  never part of a CNR region.
* ``boxes`` is ``[N, 4]`` (or a list of 4-tuples) of ``(x, y, w, h)`` in the heatmap's pixels,
  ``x`` along columns, ``y`` along rows, origin at the top-left corner of the top-left pixel.
  A box covers the pixels whose index lies in ``[round(x), round(x + w))`` x
  ``[round(y), round(y + h))`` (half-up rounding, clipped to the grid): for integer boxes this is
  exactly ``heatmap[y:y+h, x:x+w]``, rows ``y .. y+h-1`` and columns ``x .. x+w-1``.
* The ground truth (GT) of a phrase is the union of its boxes (MS-CXR gives several boxes for one
  phrase when a finding is in several places).

Degenerate cases never raise. Under ``"paper"`` they score what the authors' code scored (a
degenerate AUC is 0.5, a NaN CNR is 0, an IoU with an empty union is 0), so they enter the class
means. Under ``"strict"`` they return ``NaN``, so that a summary can count them:

========================  ======================================================================
case (``"strict"``)       result
========================  ======================================================================
all-NaN heatmap           every metric NaN
GT empty on valid pixels  every metric NaN (e.g. the box lies wholly in the NaN margin)
GT covers every valid     ``auc_roc`` NaN (no negatives), ``cnr`` NaN (no "outside"); ``miou`` and
pixel                     ``pointing_game`` are defined (1.0 for a map whose values exceed the
                          thresholds)
constant heatmap          ``auc_roc`` 0.5 (all ties), ``cnr`` 0.0 (no contrast), ``miou`` IoU of
                          the all-or-nothing mask, ``pointing_game`` the GT's share of the valid
                          area (every pixel is a maximum)
========================  ======================================================================
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from groundiff_core.evaluation.boxes import box_mask
from groundiff_core.evaluation.scorer import (BINNED_AUC_THRESHOLDS, METRICS, MIOU_THRESHOLDS,
                                              HeatmapScorer, as_heatmap)

__all__ = [
    "MIOU_THRESHOLDS",
    "BINNED_AUC_THRESHOLDS",
    "METRICS",
    "box_mask",
    "gt_mask",
    "iou_at",
    "miou",
    "auc_roc",
    "roc_points",
    "cnr",
    "pointing_game",
    "all_metrics",
    "HeatmapScorer",
]


def gt_mask(heatmap, boxes) -> np.ndarray:
    """The ground truth (union of ``boxes``) on the heatmap's grid, as a boolean ``[H, W]``."""
    return box_mask(as_heatmap(heatmap).shape, boxes)


# ---------------------------------------------------------------------------------------- mIoU
def iou_at(heatmap, boxes, threshold: float, conventions: str = "paper") -> float:
    """IoU between ``heatmap > threshold`` and the GT (see :func:`miou` for the GT's extent)."""
    return HeatmapScorer(heatmap, conventions).miou(boxes, thresholds=(threshold,))


def miou(heatmap, boxes, thresholds: Sequence[float] = MIOU_THRESHOLDS,
         conventions: str = "paper") -> float:
    """Mean over ``thresholds`` of the IoU of ``heatmap > t`` with the GT (the paper's mIoU).

    The prediction ``heatmap > t`` is false on NaN pixels. "paper": the GT is the full boxes on the
    grid, margin pixels included, so a box reaching into the NaN margin lowers the IoU (the model
    never saw that part); an empty union scores 0. "strict": the GT is restricted to valid pixels;
    NaN when the GT has no valid pixel.

    Parameters
    ----------
    heatmap : float ``[H, W]`` on the image grid (NaN outside the crop)
    boxes : ``[N, 4]`` ``(x, y, w, h)`` in the heatmap's pixels; their union is the GT
    thresholds : the levels ``t`` the IoU of ``heatmap > t`` is averaged over (:data:`MIOU_THRESHOLDS`)
    conventions : "paper" or "strict"

    Returns
    -------
    mIoU in [0, 1] (NaN only under "strict")
    """
    return HeatmapScorer(heatmap, conventions).miou(boxes, thresholds)


# ---------------------------------------------------------------------------------------- AUC-ROC
def roc_points(heatmap, boxes, thresholds: Sequence[float] = BINNED_AUC_THRESHOLDS) -> np.ndarray:
    """ROC points ``[T, 2]`` of (FPR, TPR) for the rule "positive iff value >= t", one per threshold.

    Valid pixels only; rows follow ``thresholds`` in the order given. NaN rows if the GT has no
    positive or no negative.
    """
    return HeatmapScorer(heatmap, "strict").roc_points(boxes, thresholds)


def auc_roc(heatmap, boxes, binned: bool = False,
            thresholds: Sequence[float] = BINNED_AUC_THRESHOLDS, conventions: str = "paper") -> float:
    """Area under the ROC curve of the heatmap's values against the GT mask (valid pixels only).

    ``binned=False``: the exact AUC, i.e. the probability that a random GT pixel scores higher than
    a random background pixel, ties counting one half (the Mann-Whitney statistic; equal to
    ``sklearn.metrics.roc_auc_score(gt, values)``).

    ``binned=True``: the paper's 5-threshold AUROC. For each ``t`` in ``thresholds`` (default 0,
    0.25, 0.5, 0.75, 1.0) a pixel is predicted positive iff ``value >= t`` (never for NaN).

    * "paper": as torcheval's ``binary_binned_auroc(threshold=5)``: the true- and false-positive
      counts from the highest threshold down, after a (0, 0) point, integrated with trapezoids and
      divided by the product of the counts at the lowest threshold.
    * "strict": as torchmetrics' ``BinaryAUROC(thresholds=5)``: one (FPR, TPR) point per threshold
      (rates over the valid positives and negatives), sorted by FPR, trapezoids with NO (0, 0)
      anchor. The two agree unless a background pixel reaches the top threshold.

    Degenerate GT (no valid positive or no valid negative): 0.5 under "paper" (as torcheval),
    NaN under "strict".

    Parameters
    ----------
    heatmap : float ``[H, W]`` on the image grid (NaN outside the crop)
    boxes : ``[N, 4]`` ``(x, y, w, h)`` in the heatmap's pixels; their union is the GT
    binned : the paper's 5-threshold AUROC instead of the exact one
    thresholds : the levels of the binned AUROC (:data:`BINNED_AUC_THRESHOLDS`)
    conventions : "paper" or "strict"

    Returns
    -------
    AUC-ROC in [0, 1]; 0.5 for a degenerate GT under "paper", NaN under "strict"
    """
    return HeatmapScorer(heatmap, conventions).auc(boxes, binned, thresholds)


# ---------------------------------------------------------------------------------------- CNR
def cnr(heatmap, boxes, absolute: bool = True, conventions: str = "paper") -> float:
    """Contrast-to-noise ratio, per box then averaged over boxes (the paper's CNR).

    For each box: ``(mean_in - mean_out) / sqrt(var_in + var_out)``, NaN pixels ignored, population
    variances. ``absolute=True`` takes ``|.|`` of each box's CNR before the mean (the paper's
    |CNR|); ``absolute=False`` keeps the sign (positive = brighter inside).

    * "paper": the boxes are scored in order on a running copy of the map: "in" is the box's pixels
      of the copy, then the box is set to NaN in the copy, and "out" is every valid pixel left. So a
      later box's "out" excludes all earlier boxes and its "in" excludes its overlap with them. A
      NaN result (0 / 0, an empty region) counts 0.
    * "strict": each box independently against every other valid pixel of the image (other boxes of
      the same phrase included). Boxes with no valid pixel inside, or nothing valid outside, are
      left out of the mean; NaN if no box is left; a constant heatmap gives 0.0.

    If both regions are constant with different means the box's CNR is +-inf (perfect separation).

    Parameters
    ----------
    heatmap : float ``[H, W]`` on the image grid (NaN outside the crop)
    boxes : ``[N, 4]`` ``(x, y, w, h)`` in the heatmap's pixels; their union is the GT
    absolute : mean of each box's ``|CNR|`` (the paper's) or of the signed CNR
    conventions : "paper" or "strict"

    Returns
    -------
    CNR, unbounded (in units of the pooled standard deviation); 0 for 0 / 0 under "paper"
    """
    return HeatmapScorer(heatmap, conventions).cnr(boxes, absolute)


# ---------------------------------------------------------------------------------------- pointing
def pointing_game(heatmap, boxes, conventions: str = "paper") -> float:
    """Pointing game: does the heatmap's maximum fall inside the GT? 1.0 hit, 0.0 miss.

    When several valid pixels share the maximum, the score is the share of them inside the GT (the
    expected hit rate of picking one at random), so a flat map is not rewarded for ties.
    For an all-NaN heatmap or a GT with no valid pixel: 0.0 ("paper"), NaN ("strict").

    Parameters
    ----------
    heatmap : float ``[H, W]`` on the image grid (NaN outside the crop)
    boxes : ``[N, 4]`` ``(x, y, w, h)`` in the heatmap's pixels; their union is the GT
    conventions : "paper" or "strict"

    Returns
    -------
    the hit rate in [0, 1]: 1 or 0, a share for tied maxima
    """
    return HeatmapScorer(heatmap, conventions).pointing(boxes)


# ---------------------------------------------------------------------------------------- bundle
def all_metrics(heatmap, boxes, conventions: str = "paper") -> dict[str, float]:
    """Every metric of one pair, as the evaluation runner records them.

    Keys: ``miou``, ``auc`` (exact), ``auc_binned`` (paper's 5 thresholds), ``cnr_abs`` (|CNR|),
    ``cnr_signed`` and ``pointing``.

    Parameters
    ----------
    heatmap, boxes, conventions : as for :func:`miou`

    Returns
    -------
    ``{metric: float}`` for the six keys above, each as its own function computes it
    """
    return HeatmapScorer(heatmap, conventions).all(boxes)
