"""The paper's image preprocessing and its exact inverse.

Forward (image -> model grid): resize the shorter side to the model's input size ``S`` (bilinear),
then take the ``S x S`` centre crop. Inverse (model-grid map -> original grid): nearest-neighbour
resize of the ``S x S`` map to the resized-then-cropped region of the original image, NaN outside it
(the cropped margins), so metrics on the original grid ignore what the model never saw.

Coordinates: boxes are ``(x, y, w, h)`` in pixels of the grid they belong to, ``x`` along columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["CropGeometry", "prepare_image"]


@dataclass(frozen=True)
class CropGeometry:
    """How an ``height x width`` image maps onto the model's ``size x size`` input.

    The shorter side becomes ``size``; along the longer side the centre ``size`` pixels of the
    resized image are kept. In original pixels the kept region is ``[top, top + crop_h)`` x
    ``[left, left + crop_w)`` where ``crop_h``/``crop_w`` equal the shorter side.
    """

    height: int
    width: int
    size: int

    @property
    def short(self) -> int:
        return min(self.height, self.width)

    @property
    def resized_hw(self) -> tuple[int, int]:
        """Shape after resizing the shorter side to ``size`` (the longer side rounded)."""
        s = self.size / self.short
        if self.height <= self.width:
            return self.size, int(round(self.width * s))
        return int(round(self.height * s)), self.size

    @property
    def crop_offset_resized(self) -> tuple[int, int]:
        """(top, left) of the centre crop in the resized image."""
        rh, rw = self.resized_hw
        return (rh - self.size) // 2, (rw - self.size) // 2

    @property
    def region(self) -> tuple[int, int, int, int]:
        """(top, left, crop_h, crop_w): the part of the ORIGINAL image the model sees."""
        top_r, left_r = self.crop_offset_resized
        scale = self.short / self.size
        top = int(round(top_r * scale))
        left = int(round(left_r * scale))
        return top, left, self.short, self.short

    def to_model(self, image: torch.Tensor) -> torch.Tensor:
        """Resize + centre crop of ``[B, C, H, W]`` float images to ``[B, C, size, size]``."""
        rh, rw = self.resized_hw
        x = image
        if (rh, rw) != (self.height, self.width):
            x = F.interpolate(x, size=(rh, rw), mode="bilinear", align_corners=False, antialias=False)
        top, left = self.crop_offset_resized
        return x[..., top:top + self.size, left:left + self.size]

    def to_original(self, maps: np.ndarray) -> np.ndarray:
        """Put ``[..., size, size]`` maps back on the original grid: ``[..., height, width]``.

        Nearest-neighbour resize to the shorter side, NaN in the cropped margins.
        """
        maps = np.asarray(maps, dtype=np.float32)
        lead = maps.shape[:-2]
        t = torch.from_numpy(maps.reshape(-1, 1, self.size, self.size))
        top, left, ch, cw = self.region
        r = F.interpolate(t, size=(ch, cw), mode="nearest").numpy().reshape(*lead, ch, cw)
        out = np.full((*lead, self.height, self.width), np.nan, dtype=np.float32)
        out[..., top:top + ch, left:left + cw] = r
        return out

    def boxes_to_model(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes ``[N, 4]`` (x, y, w, h) from original pixels to model-grid pixels (clipped)."""
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
        top, left, ch, _ = self.region
        s = self.size / ch
        x0 = np.clip((b[:, 0] - left) * s, 0, self.size)
        y0 = np.clip((b[:, 1] - top) * s, 0, self.size)
        x1 = np.clip((b[:, 0] + b[:, 2] - left) * s, 0, self.size)
        y1 = np.clip((b[:, 1] + b[:, 3] - top) * s, 0, self.size)
        return np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)


def prepare_image(image01: np.ndarray | torch.Tensor, size: int) -> tuple[torch.Tensor, CropGeometry]:
    """A ``[H, W]`` float image in ``[0, 1]`` -> model input ``[1, 1, size, size]`` and its geometry."""
    t = torch.as_tensor(np.asarray(image01, dtype=np.float32))
    if t.ndim != 2:
        raise ValueError(f"prepare_image expects a 2-D grayscale image, got shape {tuple(t.shape)}")
    geom = CropGeometry(int(t.shape[0]), int(t.shape[1]), int(size))
    return geom.to_model(t[None, None]).clamp(0, 1), geom
