"""Array helpers every stage shares, written once with one behaviour."""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

__all__ = ["minmax"]

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def minmax(maps: ArrayT, dims: tuple[int, ...] = (-2, -1)) -> ArrayT:
    """Scale each map to [0, 1] over ``dims`` (default: the last two, one map per leading index).

    A constant map (or one whose span is not finite) carries no location and becomes all zeros,
    never NaN. Works on NumPy arrays and torch tensors alike and keeps the input's type and dtype
    (integer arrays give float64).
    """
    if isinstance(maps, torch.Tensor):
        lo = maps.amin(dim=dims, keepdim=True)
        span = maps.amax(dim=dims, keepdim=True) - lo
        ok = torch.isfinite(span) & (span > 0)
        return torch.where(ok, (maps - lo) / torch.where(ok, span, torch.ones_like(span)), torch.zeros_like(maps))
    arr = np.asarray(maps)
    if arr.dtype.kind not in "fc":
        arr = arr.astype(np.float64)
    axes = tuple(d % arr.ndim for d in dims) if arr.ndim else ()
    lo = arr.min(axis=axes, keepdims=True)
    span = arr.max(axis=axes, keepdims=True) - lo
    ok = np.isfinite(span) & (span > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(ok, (arr - lo) / np.where(ok, span, 1), 0)
    return out.astype(arr.dtype, copy=False)
