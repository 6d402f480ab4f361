"""From recorded attention to heatmaps on the model grid: per-map normalisation, resize, mean,
Gaussian smoothing and Otsu (steps 5-7 of the paper's Algorithm 1, :func:`aggregate`); then
:func:`back_project`, the last step, onto each original image grid as
:class:`~groundiff_core.heatmaps.Heatmaps`.

The mean over layers and steps is computed as a running sum per layer at the layer's native
resolution: bilinear resizing is linear, so resizing each layer's sum once equals
summing the resized maps, while the memory stays ``[R, h, w]`` per layer whatever the number of
steps. Post-processing (:func:`postprocess`) is a pure function on numpy arrays ``[K, S, S]``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from groundiff_core.conventions import check_conventions
from groundiff_core.heatmaps import Heatmaps
from groundiff_core.util.arrays import minmax

if TYPE_CHECKING:
    from groundiff_core.engine.config import GroundingConfig
    from groundiff_core.io.preprocess import CropGeometry

__all__ = ["resize_maps", "MapAccumulator", "gaussian_smooth", "otsu_mask", "postprocess", "aggregate",
           "back_project"]


def resize_maps(maps: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    """Resize ``[R, h, w]`` maps to ``[R, size, size]`` (bilinear, ``align_corners=False``, no antialiasing)."""
    if maps.shape[-2:] == (size, size):
        return maps
    return F.interpolate(maps[:, None], size=(size, size), mode=mode, align_corners=False)[:, 0]


class MapAccumulator:
    """Mean over (layer, step) of per-map-normalised attention maps, kept as per-layer running sums.

    ``add(layer, maps [R, h, w])`` normalises each map (``normalize="minmax"``) and adds it to the
    layer's sum; :meth:`mean` resizes each layer's sum to the input size and divides by the number
    of maps added per row. Memory: one ``[R, h, w]`` float32 tensor per layer.
    """

    def __init__(self, normalize: str = "minmax"):
        if normalize not in ("minmax", "none"):
            raise ValueError(f"normalize must be 'minmax' or 'none', got {normalize!r}")
        self.normalize = normalize
        self.sums: dict[int, torch.Tensor] = {}
        self.count = 0

    def add(self, layer: int, maps: torch.Tensor) -> None:
        maps = maps.to(torch.promote_types(maps.dtype, torch.float32))
        if self.normalize == "minmax":
            maps = minmax(maps)
        if layer in self.sums:
            self.sums[layer] += maps
        else:
            self.sums[layer] = maps.clone()
        self.count += 1

    __call__ = add  # usable directly as a recording sink

    def mean(self, size: int, mode: str = "bilinear") -> torch.Tensor:
        """``[R, size, size]`` (float32 or float64): the mean of every added map, resized to ``size``."""
        if not self.sums:
            raise ValueError("no attention maps were recorded: check the window and the layers")
        total = None
        for layer in sorted(self.sums):
            r = resize_maps(self.sums[layer], size, mode)
            total = r if total is None else total + r
        return total / self.count


def gaussian_smooth(maps: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian filter of each ``[S, S]`` map of ``[K, S, S]`` (scipy, 'reflect' borders, truncate 4)."""
    from scipy.ndimage import gaussian_filter

    maps = np.asarray(maps, dtype=np.float64)
    if not sigma_px:
        return maps.copy()
    return np.stack([gaussian_filter(m, sigma=sigma_px) for m in maps])


def otsu_mask(m: np.ndarray, conventions: str = "paper") -> np.ndarray:
    """Boolean ``m > threshold`` of one map, Otsu's threshold on 256 bins; all False for a constant map.

    "paper": scikit-image's ``threshold_multiotsu(m, classes=2)``, as the authors' code;
    "strict": ``threshold_otsu(m)``. Both maximise the between-class variance of the same histogram
    but index its bins differently, so the threshold can differ by one bin.
    """
    from skimage.filters import threshold_multiotsu, threshold_otsu

    if not np.isfinite(m).all() or m.max() == m.min():
        return np.zeros(m.shape, dtype=bool)
    if check_conventions(conventions) == "paper":
        return m > threshold_multiotsu(m, classes=2)[0]
    return m > threshold_otsu(m)


def postprocess(raw: np.ndarray, sigma_px: float, otsu: bool = True,
                conventions: str = "paper") -> np.ndarray:
    """Paper's step 7 on ``[K, S, S]`` maps: Gaussian (sigma in pixels), min-max to [0, 1], then,
    with ``otsu``, the map times its Otsu mask (values above the threshold keep their strength;
    ``conventions`` picks the Otsu variant, see :func:`otsu_mask`).
    Returns float32 ``[K, S, S]`` in [0, 1]."""
    smooth = gaussian_smooth(raw, sigma_px)
    out = minmax(smooth)  # per map; a constant map becomes 0
    if otsu:
        out = np.stack([m * otsu_mask(m, conventions) for m in out])
    return out.astype(np.float32)


def aggregate(acc: MapAccumulator, cfg: "GroundingConfig", size: int,
              names: Sequence[str] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Accumulated maps of all R rows -> ``(raw, final)``, float32 ``[R, S, S]`` on the model grid:
    the mean attention map (resized to ``size``) and the post-processed heatmap (``cfg``'s sigma,
    Otsu and conventions). A constant or all-NaN result is warned about once (``names``: the rows'
    phrases, for the message)."""
    raw = acc.mean(size, cfg.resize).cpu().double().numpy()  # [R, S, S]
    final = postprocess(raw, cfg.sigma_pixels(size), cfg.otsu, cfg.conventions)
    flat = [k for k in range(len(final)) if not np.isfinite(final[k]).any() or np.nanmin(final[k]) == np.nanmax(final[k])]
    if flat:
        from groundiff_core.io.preprocess import warn_once

        name = repr(names[flat[0]]) if len(names) > flat[0] else f"row {flat[0]}"
        warn_once("constant map", f"the heatmap of {name} is constant or all NaN (no pixel stands out: "
                                  "nothing to localise); its metrics are those of an uninformative map")
    return raw.astype(np.float32), final


def back_project(final: np.ndarray, raw: np.ndarray | None, geometries: Sequence["CropGeometry"],
                 phrases_per_image: Sequence[Sequence[str]], conventions: str, info: dict) -> list[Heatmaps]:
    """Model-grid maps of all rows (image by image, phrase by phrase) -> one
    :class:`~groundiff_core.heatmaps.Heatmaps` per image on its original grid (NaN outside the
    model's crop, :meth:`CropGeometry.to_original`, under ``conventions``); ``raw`` kept when given."""
    out, r = [], 0
    for geom, phrases in zip(geometries, phrases_per_image):
        k = len(phrases)
        geom = replace(geom, conventions=conventions)  # a recording re-read under other conventions
        out.append(Heatmaps(heatmaps=geom.to_original(final[r:r + k]), phrases=list(phrases), geometry=geom,
                            raw=None if raw is None else raw[r:r + k].copy(), model_maps=final[r:r + k].copy(),
                            info=dict(info)))
        r += k
    return out
