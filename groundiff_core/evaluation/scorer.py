"""The metrics' implementation: one heatmap sorted once, then scored against any number of boxes.

:class:`HeatmapScorer` computes every metric of :mod:`groundiff_core.evaluation.metrics` (whose
module docstring states the conventions: heatmap grid, NaN pixels, box coverage, degenerate cases);
the functions there are thin wrappers around it.
"""

from __future__ import annotations

import copy
from typing import Sequence

import numpy as np

from groundiff_core.conventions import check_conventions
from groundiff_core.evaluation.boxes import as_boxes, box_mask, round_half_up

__all__ = ["HeatmapScorer", "METRICS", "MIOU_THRESHOLDS", "BINNED_AUC_THRESHOLDS", "as_heatmap"]

#: Thresholds of the paper's mIoU (``heatmap > t``).
MIOU_THRESHOLDS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)
#: Thresholds of the paper's binned AUROC (``heatmap >= t``): 5 evenly spaced in [0, 1].
BINNED_AUC_THRESHOLDS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
#: Per-pair metrics, the keys of :meth:`HeatmapScorer.all` (recorded and summarised by the runner).
METRICS: tuple[str, ...] = ("miou", "auc", "auc_binned", "cnr_abs", "cnr_signed", "pointing")


def as_heatmap(heatmap) -> np.ndarray:
    """``heatmap`` as a float64 ``[H, W]`` array; ValueError when it is not 2-D."""
    h = np.asarray(heatmap, dtype=np.float64)
    if h.ndim != 2:
        raise ValueError(f"heatmap must be 2-D [H, W], got shape {h.shape}")
    return h


class HeatmapScorer:
    """One heatmap prepared once, then scored against any number of box sets.

    The evaluation runner scores each heatmap against its own boxes and against the other
    findings' boxes of the same image; on a 3000 x 2500 radiograph sorting the values dominates,
    so it is done once here: the valid values are grouped into distinct levels (sorted), and every
    metric except the paper's CNR is then computed from per-level counts of GT and background
    pixels in linear time. The functions of :mod:`groundiff_core.evaluation.metrics` are thin
    wrappers with the same results. ``conventions`` ("paper" or "strict") applies to every method.
    """

    def __init__(self, heatmap, conventions: str = "paper"):
        native = np.asarray(heatmap)
        self.conventions = check_conventions(conventions)
        self.paper = self.conventions == "paper"
        self.heatmap = as_heatmap(native)
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
        """See :func:`~groundiff_core.evaluation.metrics.miou`."""
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
        """See :func:`~groundiff_core.evaluation.metrics.roc_points`."""
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
        """See :func:`~groundiff_core.evaluation.metrics.auc_roc`."""
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

        "paper": on a running copy of the map (see :func:`~groundiff_core.evaluation.metrics.cnr`),
        a NaN result is 0;
        "strict": each box against every other valid pixel, NaN where a box has no valid pixel or
        nothing valid is outside it.
        """
        b = as_boxes(boxes)
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
            x0, x1 = np.clip(round_half_up([x, x + bw]), 0, w)
            y0, y1 = np.clip(round_half_up([y, y + bh]), 0, h)
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
        """See :func:`~groundiff_core.evaluation.metrics.cnr`."""
        per_box = self.cnr_per_box(boxes)
        per_box = per_box[~np.isnan(per_box)]
        if per_box.size == 0:
            return self._degenerate(0.0)
        return float(np.mean(np.abs(per_box) if absolute else per_box))

    def pointing(self, boxes) -> float:
        """See :func:`~groundiff_core.evaluation.metrics.pointing_game`."""
        gt = self.gt(boxes)
        if gt is None:
            return self._degenerate(0.0)
        _, pos, neg = self._counts(gt)
        return float(pos[-1] / (pos[-1] + neg[-1]))

    def all(self, boxes) -> dict[str, float]:
        """See :func:`~groundiff_core.evaluation.metrics.all_metrics`."""
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
