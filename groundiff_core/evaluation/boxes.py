"""Box geometry on the pixel grid: which pixels a box ``(x, y, w, h)`` covers.

A box covers the pixels whose index lies in ``[round(x), round(x + w))`` x ``[round(y), round(y + h))``
(half-up rounding, clipped to the grid), ``x`` along columns, ``y`` along rows, origin at the
top-left corner of the top-left pixel: for integer boxes exactly ``image[y:y+h, x:x+w]``.
Every metric (:mod:`groundiff_core.evaluation.metrics`) and the runner's overlap of two findings
use this one rule.

:func:`scored_boxes` is the one rule from a pair's annotation to the boxes it is scored with, used by
the evaluation runner and by every book page that scores or draws a pair itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from groundiff_core.io.preprocess import CropGeometry

if TYPE_CHECKING:
    from groundiff_core.io.datasets.common import GroundingPair

__all__ = ["as_boxes", "round_half_up", "box_mask", "scored_boxes", "boxes_seen_by_model"]


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


def boxes_seen_by_model(boxes: np.ndarray, hw: tuple[int, int], crop_size: int,
                        conventions: str = "paper") -> tuple[np.ndarray, list[str]]:
    """``(kept boxes [M, 4], notes)``: under the paper's conventions, the boxes none of whose pixels
    survives the model's resize + centre crop to ``crop_size`` are dropped, with a note; under
    "strict" every box is kept (the pixels outside the crop count as missed)."""
    if conventions != "paper" or len(boxes) == 0:
        return boxes, []
    keep = CropGeometry(int(hw[0]), int(hw[1]), int(crop_size)).boxes_in_crop(boxes)
    if keep.all():
        return boxes, []
    return boxes[keep], ["dropped (no pixel inside the model's centre crop): "
                         + ", ".join(f"box {i}" for i in np.flatnonzero(~keep))]


def scored_boxes(pair: "GroundingPair", hw: tuple[int, int], crop_size: int,
                 conventions: str = "paper") -> tuple[np.ndarray, list[str]]:
    """The boxes ``pair`` is scored with on its image read as ``hw = (H, W)``, and notes on any change.

    Parameters
    ----------
    pair : the annotation (boxes in the CSV's pixel frame, ``x, y, w, h``)
    hw : the height and width of the image actually read (a downsampled copy is smaller than the
        CSV's ``image_width``/``image_height``)
    crop_size : the model's input side ``S`` (its resize + centre crop)
    conventions : "paper" also drops the boxes the crop does not see (:func:`boxes_seen_by_model`)

    Returns
    -------
    ``(boxes [N, 4] float, notes)``: rescaled to the image read and clipped
    (:func:`~groundiff_core.io.datasets.common.fit_boxes_to_image`), then the crop rule; an empty
    array means the pair cannot be scored (the runner skips it).
    """
    from groundiff_core.io.datasets.common import fit_boxes_to_image

    hw = (int(hw[0]), int(hw[1]))
    fitted, notes = fit_boxes_to_image(pair, *hw)
    boxes, crop_notes = boxes_seen_by_model(fitted, hw, crop_size, conventions)
    return boxes, notes + crop_notes
