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

import copy
from typing import Sequence

import numpy as np

from groundiff_core.conventions import check_conventions

__all__ = [
    "MIOU_THRESHOLDS",
    "BINNED_AUC_THRESHOLDS",
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

#: Thresholds of the paper's mIoU (``heatmap > t``).
MIOU_THRESHOLDS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)
#: Thresholds of the paper's binned AUROC (``heatmap >= t``): 5 evenly spaced in [0, 1].
BINNED_AUC_THRESHOLDS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)


# ---------------------------------------------------------------------------------------- helpers
def _as_heatmap(heatmap) -> np.ndarray:
    h = np.asarray(heatmap, dtype=np.float64)
    if h.ndim != 2:
        raise ValueError(f"heatmap must be 2-D [H, W], got shape {h.shape}")
    return h


def _as_boxes(boxes) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64)
    if b.size == 0:
        return b.reshape(0, 4)
    if b.ndim == 1 and b.shape[0] == 4:
        b = b[None]
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must be [N, 4] (x, y, w, h), got shape {b.shape}")
    if not np.isfinite(b).all():
        raise ValueError("boxes contain NaN or infinite coordinates")
    return b


def _round_half_up(v: np.ndarray | float) -> np.ndarray:
    return np.floor(np.asarray(v, dtype=np.float64) + 0.5).astype(np.int64)


def box_mask(shape: tuple[int, int], boxes) -> np.ndarray:
    """Boolean mask ``[H, W]``, True inside the union of ``boxes`` ``(x, y, w, h)``.

    Pixel coverage follows the module's convention (half-up rounded edges, clipped to the grid);
    boxes with no area after clipping add nothing.
    """
    h, w = int(shape[0]), int(shape[1])
    mask = np.zeros((h, w), dtype=bool)
    for x, y, bw, bh in _as_boxes(boxes):
        x0, x1 = np.clip(_round_half_up([x, x + bw]), 0, w)
        y0, y1 = np.clip(_round_half_up([y, y + bh]), 0, h)
        if x1 > x0 and y1 > y0:
            mask[y0:y1, x0:x1] = True
    return mask


def gt_mask(heatmap, boxes) -> np.ndarray:
    """The ground truth (union of ``boxes``) on the heatmap's grid, as a boolean ``[H, W]``."""
    return box_mask(_as_heatmap(heatmap).shape, boxes)


# ---------------------------------------------------------------------------------------- scorer
class HeatmapScorer:
    """One heatmap prepared once, then scored against any number of box sets.

    The evaluation runner scores each heatmap against its own boxes and against the other
    findings' boxes of the same image; on a 3000 x 2500 radiograph sorting the values dominates,
    so it is done once here: the valid values are grouped into distinct levels (sorted), and every
    metric except the paper's CNR is then computed from per-level counts of GT and background
    pixels in linear time. The module-level functions (:func:`miou`, :func:`auc_roc`, ...) are thin
    wrappers with the same results. ``conventions`` ("paper" or "strict") applies to every method.
    """

    def __init__(self, heatmap, conventions: str = "paper"):
        native = np.asarray(heatmap)
        self.conventions = check_conventions(conventions)
        self.paper = self.conventions == "paper"
        self.heatmap = _as_heatmap(native)
        self.shape = self.heatmap.shape
        self.ok = ~np.isnan(self.heatmap)
        self.values = self.heatmap[self.ok]
        # levels are found on the input's own float type (float32 sorts twice as fast; the
        # float32 -> float64 cast is exact, so the grouping is the same)
        self._native = native[self.ok] if native.dtype in (np.float32, np.float16) else self.values
        self._levels: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def under(self, conventions: str) -> "HeatmapScorer":
        """The same prepared heatmap scored under other ``conventions`` (the sort is not redone)."""
        other = copy.copy(self)
        other.conventions = check_conventions(conventions)
        other.paper = other.conventions == "paper"
        return other

    # ---------------------------------------------------------------- shared pieces
    def levels(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Distinct valid values ``u`` (ascending), each valid pixel's level, pixels per level."""
        if self._levels is None:
            u = np.unique(self._native)  # a plain sort: much faster than return_inverse=True
            inv = np.searchsorted(u, self._native)
            self._levels = (u.astype(np.float64), inv, np.bincount(inv, minlength=len(u)))
        return self._levels

    def gt(self, boxes) -> np.ndarray | None:
        """GT labels of the valid pixels (1-D bool), or None if nothing is valid or the GT is empty."""
        if self.values.size == 0:
            return None
        gt = box_mask(self.shape, boxes)[self.ok]
        return gt if gt.any() else None

    def _counts(self, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Levels ``u`` and GT / background pixel counts per level."""
        u, inv, total = self.levels()
        pos = np.bincount(inv[gt], minlength=len(u))
        return u, pos, total - pos

    def _degenerate(self, paper_value: float) -> float:
        return paper_value if self.paper else float("nan")

    # ---------------------------------------------------------------- metrics
    def miou(self, boxes, thresholds: Sequence[float] = MIOU_THRESHOLDS) -> float:
        """See :func:`miou`."""
        if len(thresholds) == 0:
            raise ValueError("miou needs at least one threshold")
        # "paper": the GT is the full boxes on the grid, margin pixels included; NaN pixels are
        # never predicted, so only the size of the GT changes
        n_full = int(box_mask(self.shape, boxes).sum()) if self.paper else None
        gt = self.gt(boxes)
        if gt is None:
            if not self.paper:
                return float("nan")
            # nothing of the GT is valid: the prediction never meets it, IoU 0 (0 / 0 also 0)
            return 0.0
        u, pos, neg = self._counts(gt)
        n_gt = n_full if self.paper else int(pos.sum())
        # pixels above each threshold: suffix sums over the levels strictly greater than t
        pos_above = np.concatenate([np.cumsum(pos[::-1])[::-1], [0]])
        all_above = np.concatenate([np.cumsum((pos + neg)[::-1])[::-1], [0]])
        ious = []
        for t in thresholds:
            i = np.searchsorted(u, t, side="right")
            inter, pred = int(pos_above[i]), int(all_above[i])
            union = pred + n_gt - inter
            ious.append(inter / union if union else 0.0)
        return float(np.mean(ious))

    def roc_points(self, boxes, thresholds: Sequence[float] = BINNED_AUC_THRESHOLDS) -> np.ndarray:
        """See :func:`roc_points`."""
        out = np.full((len(thresholds), 2), np.nan)
        gt = self.gt(boxes)
        if gt is None:
            return out
        u, pos, neg = self._counts(gt)
        n_pos, n_neg = int(pos.sum()), int(neg.sum())
        if n_neg == 0:
            return out
        pos_from = np.concatenate([np.cumsum(pos[::-1])[::-1], [0]])  # levels >= u[i]
        neg_from = np.concatenate([np.cumsum(neg[::-1])[::-1], [0]])
        for k, t in enumerate(thresholds):
            i = np.searchsorted(u, t, side="left")
            out[k] = neg_from[i] / n_neg, pos_from[i] / n_pos
        return out

    def _binned_auc_paper(self, boxes, thresholds: Sequence[float]) -> float:
        """torcheval's ``binary_binned_auroc``: TP/FP counts of ``value >= t`` per threshold, from
        the highest threshold down, after a (0, 0) point; trapezoids normalised by the counts at the
        lowest threshold; 0.5 when either count is 0. NaN pixels are never ``>= t``."""
        gt = self.gt(boxes)
        if gt is None:
            return 0.5
        u, pos, neg = self._counts(gt)
        pos_from = np.concatenate([np.cumsum(pos[::-1])[::-1], [0]])
        neg_from = np.concatenate([np.cumsum(neg[::-1])[::-1], [0]])
        idx = [np.searchsorted(u, t, side="left") for t in sorted(thresholds, reverse=True)]
        tp = np.concatenate([[0.0], pos_from[idx].astype(np.float64)])
        fp = np.concatenate([[0.0], neg_from[idx].astype(np.float64)])
        factor = tp[-1] * fp[-1]
        if factor == 0:
            return 0.5
        return float(np.sum(np.diff(fp) * (tp[1:] + tp[:-1]) / 2.0) / factor)

    def auc(self, boxes, binned: bool = False,
            thresholds: Sequence[float] = BINNED_AUC_THRESHOLDS) -> float:
        """See :func:`auc_roc`."""
        if binned and self.paper:
            return self._binned_auc_paper(boxes, thresholds)
        if binned:
            pts = self.roc_points(boxes, thresholds)
            if np.isnan(pts).any():
                return float("nan")
            order = np.lexsort((pts[:, 1], pts[:, 0]))
            fpr, tpr = pts[order, 0], pts[order, 1]
            return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))
        gt = self.gt(boxes)
        if gt is None:
            return self._degenerate(0.5)
        _, pos, neg = self._counts(gt)
        n_pos, n_neg = float(pos.sum()), float(neg.sum())
        if n_neg == 0:
            return self._degenerate(0.5)
        # Mann-Whitney: each GT pixel beats the background pixels on lower levels, ties count 1/2
        neg_below = np.cumsum(neg) - neg
        wins = np.dot(pos.astype(np.float64), neg_below + 0.5 * neg)
        return float(wins / (n_pos * n_neg))

    def cnr_per_box(self, boxes) -> np.ndarray:
        """Signed CNR of each box ``[N]``, in the boxes' order.

        "paper": on a running copy of the map (see :func:`cnr`), a NaN result is 0;
        "strict": each box against every other valid pixel, NaN where a box has no valid pixel or
        nothing valid is outside it.
        """
        b = _as_boxes(boxes)
        if self.paper:
            return self._cnr_running_copy(b)
        out = np.full(len(b), np.nan)
        if self.values.size == 0:
            return out
        constant = self.values.min() == self.values.max()
        for i, box in enumerate(b):
            inside = box_mask(self.shape, box[None])[self.ok]
            n_in = np.count_nonzero(inside)
            if n_in == 0 or n_in == inside.size:
                continue
            if constant:
                out[i] = 0.0
                continue
            a, c = self.values[inside], self.values[~inside]
            diff = a.mean() - c.mean()
            denom = np.sqrt(a.var() + c.var())  # population variances (ddof=0)
            if denom == 0.0:
                # both regions constant: no contrast if the means agree, otherwise infinitely clear
                out[i] = 0.0 if diff == 0.0 else np.sign(diff) * np.inf
            else:
                out[i] = diff / denom
        return out

    def _cnr_running_copy(self, b: np.ndarray) -> np.ndarray:
        """The authors' CNR: per box, "in" is the box's valid pixels of a running copy, "out" every
        valid pixel left in it AFTER the box is blanked; then the box stays blanked (NaN) for the
        boxes that follow. Population variances, NaN ignored; a NaN result (0 / 0, an empty region)
        counts 0."""
        out = np.zeros(len(b))
        alive = self.ok.copy()  # valid pixels of the running copy
        h, w = self.shape
        for i, (x, y, bw, bh) in enumerate(b):
            x0, x1 = np.clip(_round_half_up([x, x + bw]), 0, w)
            y0, y1 = np.clip(_round_half_up([y, y + bh]), 0, h)
            region = np.zeros(self.shape, dtype=bool)
            region[y0:y1, x0:x1] = True
            inside = self.heatmap[region & alive]
            alive &= ~region
            outside = self.heatmap[alive]
            if inside.size == 0 or outside.size == 0:
                continue  # nanmean of nothing is NaN, and a NaN CNR counts 0
            m_in, m_out = inside.mean(), outside.mean()
            v_in, v_out = np.mean((inside - m_in) ** 2), np.mean((outside - m_out) ** 2)
            with np.errstate(divide="ignore", invalid="ignore"):
                c = (m_in - m_out) / np.sqrt(v_in + v_out)
            out[i] = 0.0 if np.isnan(c) else c
        return out

    def cnr(self, boxes, absolute: bool = True) -> float:
        """See :func:`cnr`."""
        per_box = self.cnr_per_box(boxes)
        per_box = per_box[~np.isnan(per_box)]
        if per_box.size == 0:
            return self._degenerate(0.0)
        return float(np.mean(np.abs(per_box) if absolute else per_box))

    def pointing(self, boxes) -> float:
        """See :func:`pointing_game`."""
        gt = self.gt(boxes)
        if gt is None:
            return self._degenerate(0.0)
        _, pos, neg = self._counts(gt)
        return float(pos[-1] / (pos[-1] + neg[-1]))

    def all(self, boxes) -> dict[str, float]:
        """See :func:`all_metrics`."""
        per_box = self.cnr_per_box(boxes)
        per_box = per_box[~np.isnan(per_box)]
        empty = self._degenerate(0.0)
        return {
            "miou": self.miou(boxes),
            "auc": self.auc(boxes),
            "auc_binned": self.auc(boxes, binned=True),
            "cnr_abs": float(np.mean(np.abs(per_box))) if per_box.size else empty,
            "cnr_signed": float(np.mean(per_box)) if per_box.size else empty,
            "pointing": self.pointing(boxes),
        }


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
    """
    return HeatmapScorer(heatmap, conventions).cnr(boxes, absolute)


# ---------------------------------------------------------------------------------------- pointing
def pointing_game(heatmap, boxes, conventions: str = "paper") -> float:
    """Pointing game: does the heatmap's maximum fall inside the GT? 1.0 hit, 0.0 miss.

    When several valid pixels share the maximum, the score is the share of them inside the GT (the
    expected hit rate of picking one at random), so a flat map is not rewarded for ties.
    For an all-NaN heatmap or a GT with no valid pixel: 0.0 ("paper"), NaN ("strict").
    """
    return HeatmapScorer(heatmap, conventions).pointing(boxes)


# ---------------------------------------------------------------------------------------- bundle
def all_metrics(heatmap, boxes, conventions: str = "paper") -> dict[str, float]:
    """Every metric of one pair, as the evaluation runner records them.

    Keys: ``miou``, ``auc`` (exact), ``auc_binned`` (paper's 5 thresholds), ``cnr_abs`` (|CNR|),
    ``cnr_signed`` and ``pointing``.
    """
    return HeatmapScorer(heatmap, conventions).all(boxes)
