"""The authors' evaluation conventions, written a second time from METHOD.md's prose, for tests only.

Independent of the code under test: nothing here imports ``groundiff_core``. Each function follows
one sentence of METHOD.md ("Metrics, exactly as the authors' evaluation computed them") as
literally as numpy allows, with no attempt at speed: full-grid masks, explicit copies, one pass per
threshold. The library's fast implementations must agree with these to 1e-6.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

MIOU_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5)


# ------------------------------------------------------------------ preprocessing and back-projection
def preprocess(image01: np.ndarray, size: int) -> torch.Tensor:
    """Shorter side -> ``size`` (bilinear, no antialiasing, align_corners false), the longer side
    ``int(size * long / short)`` (truncated); crop start ``(L - size) // 2``. ``[1, 1, size, size]``."""
    h, w = image01.shape
    short, long = min(h, w), max(h, w)
    new_long = int(size * long / short)
    new_hw = (size, new_long) if h <= w else (new_long, size)
    t = torch.from_numpy(np.ascontiguousarray(image01, dtype=np.float32))[None, None]
    if new_hw != (h, w):
        t = F.interpolate(t, size=new_hw, mode="bilinear", align_corners=False, antialias=False)
    start = (new_long - size) // 2
    if h <= w:
        return t[..., :, start:start + size]
    return t[..., start:start + size, :]


def back_project(map_s: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest resize of the ``[S, S]`` map to the shorter side, then NaN padding of floor(m/2)
    before and ceil(m/2) after along the longer side (m = longer side - shorter side)."""
    short = min(height, width)
    t = torch.from_numpy(np.asarray(map_s, dtype=np.float32))[None, None]
    r = F.interpolate(t, size=(short, short), mode="nearest")[0, 0].numpy()
    m = max(height, width) - short
    before, after = m // 2, m - m // 2
    pad = ((before, after), (0, 0)) if height > width else ((0, 0), (before, after))
    return np.pad(r, pad, constant_values=np.nan)


# ------------------------------------------------------------------ metrics
def gt_mask(shape: tuple[int, int], boxes) -> np.ndarray:
    """Union of integer boxes (x, y, w, h): rows y..y+h-1, columns x..x+w-1, margins included."""
    gt = np.zeros(shape, dtype=bool)
    for x, y, w, h in boxes:
        gt[int(y):int(y) + int(h), int(x):int(x) + int(w)] = True
    return gt


def miou(heatmap: np.ndarray, boxes) -> float:
    """Mean over t in 0.1..0.5 of |pred AND gt| / |pred OR gt|, pred = map > t (false on NaN)."""
    gt = gt_mask(heatmap.shape, boxes)
    ious = []
    for t in MIOU_THRESHOLDS:
        with np.errstate(invalid="ignore"):
            pred = heatmap > t  # NaN > t is False
        inter = np.logical_and(pred, gt).sum()
        union = np.logical_or(pred, gt).sum()
        ious.append(inter / union if union else 0.0)
    return float(np.mean(ious))


def binned_auroc(heatmap: np.ndarray, boxes) -> float:
    """torcheval's binary binned AUROC with thresholds linspace(0, 1, 5), on the flattened map against
    the flattened GT mask (0.5 when a class is missing)."""
    from torcheval.metrics.functional import binary_binned_auroc

    gt = gt_mask(heatmap.shape, boxes).ravel()
    auc, _ = binary_binned_auroc(torch.from_numpy(heatmap.ravel().astype(np.float64)),
                                 torch.from_numpy(gt.astype(np.float64)), threshold=5)
    return float(auc)


def exact_auroc(heatmap: np.ndarray, boxes) -> float:
    """Exact AUC of the valid pixels against the GT mask; 0.5 when a class is missing."""
    gt = gt_mask(heatmap.shape, boxes)
    ok = ~np.isnan(heatmap)
    y, s = gt[ok], heatmap[ok]
    if y.all() or not y.any():
        return 0.5
    return float(roc_auc_score(y, s))


def cnr_per_box(heatmap: np.ndarray, boxes) -> list[float]:
    """Per box in order, on a running copy: in = the box's pixels of the copy, mean and population
    variance with NaN ignored; then the box is set to NaN in the copy; out = every non-NaN pixel
    left; signed CNR = (mean_in - mean_out) / sqrt(var_in + var_out); a NaN result counts 0."""
    copy = np.array(heatmap, dtype=np.float64)
    out = []
    for x, y, w, h in boxes:
        sl = (slice(int(y), int(y) + int(h)), slice(int(x), int(x) + int(w)))
        inside = copy[sl]
        with np.errstate(invalid="ignore", divide="ignore"), np.testing.suppress_warnings() as sup:
            sup.filter(RuntimeWarning)
            mean_in = np.nanmean(inside)
            var_in = np.nanmean((inside - mean_in) ** 2)
            copy[sl] = np.nan
            rest = copy[~np.isnan(copy)]
            mean_out = np.nanmean(rest)
            var_out = np.nanmean((rest - mean_out) ** 2)
            c = (mean_in - mean_out) / np.sqrt(var_in + var_out)
        out.append(0.0 if np.isnan(c) else float(c))
    return out


def cnr_abs(heatmap: np.ndarray, boxes) -> float:
    """The pair's |CNR|: the mean over its boxes of each box's |CNR|."""
    return float(np.mean(np.abs(cnr_per_box(heatmap, boxes))))
