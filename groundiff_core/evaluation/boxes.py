"""Box geometry on the pixel grid: which pixels a box ``(x, y, w, h)`` covers.

A box covers the pixels whose index lies in ``[round(x), round(x + w))`` x ``[round(y), round(y + h))``
(half-up rounding, clipped to the grid), ``x`` along columns, ``y`` along rows, origin at the
top-left corner of the top-left pixel: for integer boxes exactly ``image[y:y+h, x:x+w]``.
Every metric (:mod:`groundiff_core.evaluation.metrics`) and the runner's overlap of two findings
use this one rule.
"""

from __future__ import annotations

import numpy as np

__all__ = ["as_boxes", "round_half_up", "box_mask"]


def as_boxes(boxes) -> np.ndarray:
    """``boxes`` as a float ``[N, 4]`` array (one box may be given as 4 numbers); ValueError when
    the shape is wrong or a coordinate is not finite."""
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


def round_half_up(v: np.ndarray | float) -> np.ndarray:
    """Round to the nearest integer, halves up (``np.round`` rounds halves to even)."""
    return np.floor(np.asarray(v, dtype=np.float64) + 0.5).astype(np.int64)


def box_mask(shape: tuple[int, int], boxes) -> np.ndarray:
    """Boolean mask ``[H, W]``, True inside the union of ``boxes`` ``(x, y, w, h)``.

    Pixel coverage follows the module's convention (half-up rounded edges, clipped to the grid);
    boxes with no area after clipping add nothing.
    """
    h, w = int(shape[0]), int(shape[1])
    mask = np.zeros((h, w), dtype=bool)
    for x, y, bw, bh in as_boxes(boxes):
        x0, x1 = np.clip(round_half_up([x, x + bw]), 0, w)
        y0, y1 = np.clip(round_half_up([y, y + bh]), 0, h)
        if x1 > x0 and y1 > y0:
            mask[y0:y1, x0:x1] = True
    return mask
