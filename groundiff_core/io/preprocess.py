"""The paper's image preprocessing and its back-projection to the original image grid.

Forward (image -> model grid): resize the shorter side to the model's input size ``S`` (bilinear,
no antialiasing), then take the ``S x S`` centre crop, starting at ``(L - S) // 2`` of the resized
longer side ``L``. Back (model-grid map -> original grid): nearest-neighbour resize of the
``S x S`` map to the shorter side, placed on the original grid with NaN in the margins the crop cut
away, so metrics on the original grid ignore what the model never saw.

Two conventions (:mod:`groundiff_core.conventions`) decide the rounding: ``"paper"`` (default, as
the authors' evaluation computed it) truncates ``L`` and splits the NaN margin ``m`` as
``floor(m/2)`` before and ``ceil(m/2)`` after; ``"strict"`` rounds ``L`` and places the map at the
crop's exact offset mapped back to original pixels. On a 3056 x 2544 image the two put the first
valid row at 256 and 253.

Coordinates: boxes are ``(x, y, w, h)`` in pixels of the grid they belong to, ``x`` along columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from groundiff_core.conventions import check_conventions

__all__ = ["CropGeometry", "prepare_image"]


@dataclass(frozen=True)
class CropGeometry:
    """How an ``height x width`` image maps onto the model's ``size x size`` input.

    The shorter side becomes ``size``; along the longer side the centre ``size`` pixels of the
    resized image are kept. In original pixels the heatmap is placed on ``[top, top + crop_h)`` x
    ``[left, left + crop_w)`` where ``crop_h``/``crop_w`` equal the shorter side; ``conventions``
    decides the rounding of the resized longer side and of that placement (module docstring).
    """

    height: int
    width: int
    size: int
    conventions: str = "paper"

    def __post_init__(self) -> None:
        check_conventions(self.conventions)

    @property
    def short(self) -> int:
        return min(self.height, self.width)

    @property
    def resized_hw(self) -> tuple[int, int]:
        """Shape after resizing the shorter side to ``size``: the longer side is
        ``int(size * long / short)`` (truncated, "paper") or rounded ("strict")."""
        long = max(self.height, self.width)
        exact = self.size * long / self.short
        new_long = int(exact) if self.conventions == "paper" else int(round(exact))
        if self.height <= self.width:
            return self.size, new_long
        return new_long, self.size

    @property
    def crop_offset_resized(self) -> tuple[int, int]:
        """(top, left) of the centre crop in the resized image."""
        rh, rw = self.resized_hw
        return (rh - self.size) // 2, (rw - self.size) // 2

    @property
    def region(self) -> tuple[int, int, int, int]:
        """(top, left, crop_h, crop_w): where the back-projected map lies on the ORIGINAL grid.

        "paper": the margin ``m = long - short`` is split ``floor(m/2)`` before, ``ceil(m/2)`` after;
        "strict": the crop's offset in the resized image mapped back (rounded) to original pixels.
        """
        if self.conventions == "paper":
            m = max(self.height, self.width) - self.short
            top, left = (m // 2, 0) if self.height > self.width else (0, m // 2)
            return top, left, self.short, self.short
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

        Nearest-neighbour resize to the shorter side, placed at :attr:`region`, NaN elsewhere.
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


    def boxes_in_crop(self, boxes: np.ndarray) -> np.ndarray:
        """Which boxes ``[N, 4]`` (x, y, w, h, original pixels) keep an area inside the crop, ``[N]`` bool.

        A box survives when its extent, mapped to the resized image, overlaps the ``size`` pixels the
        centre crop keeps (positive overlap along both axes): the paper's rule for dropping boxes
        that vanish after the resize + centre crop.
        """
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        rh, rw = self.resized_hw
        top, left = self.crop_offset_resized
        sy, sx = rh / self.height, rw / self.width
        y0 = np.maximum(b[:, 1] * sy, top)
        y1 = np.minimum((b[:, 1] + b[:, 3]) * sy, top + self.size)
        x0 = np.maximum(b[:, 0] * sx, left)
        x1 = np.minimum((b[:, 0] + b[:, 2]) * sx, left + self.size)
        return (y1 > y0) & (x1 > x0)


MIN_SEEN_SHARE = 0.25  # below this share of the image inside the model's square crop, a warning
MIN_SIDE = 32  # a shorter side under this many pixels, a warning
_WARNED: set[str] = set()


def warn_once(kind: str, message: str) -> None:
    """A ``UserWarning`` the first time ``kind`` happens in this process (a run over many images
    would otherwise print it for each)."""
    import warnings

    if kind not in _WARNED:
        _WARNED.add(kind)
        warnings.warn(message + " (said once)", UserWarning, stacklevel=3)


def prepare_image(image01: np.ndarray | torch.Tensor, size: int,
                  conventions: str = "paper") -> tuple[torch.Tensor, CropGeometry]:
    """A ``[H, W]`` float image in ``[0, 1]`` -> model input ``[1, 1, size, size]`` and its geometry."""
    t = torch.as_tensor(np.asarray(image01, dtype=np.float32))
    if t.ndim != 2:
        raise ValueError(f"prepare_image expects a 2-D grayscale image, got shape {tuple(t.shape)}")
    geom = CropGeometry(int(t.shape[0]), int(t.shape[1]), int(size), conventions)
    seen = min(geom.height, geom.width) / max(geom.height, geom.width)
    if seen < MIN_SEEN_SHARE:
        warn_once("crop", f"an image of {geom.height} x {geom.width} pixels: the model's centre crop sees "
                          f"{seen:.1%} of it (under {MIN_SEEN_SHARE:.0%}); the heatmap is NaN outside that crop")
    if min(geom.height, geom.width) < MIN_SIDE:
        warn_once("tiny", f"an image of {geom.height} x {geom.width} pixels, under {MIN_SIDE} on a side: it is "
                          f"upsampled to {size} x {size}, and a heatmap on so few pixels says little")
    return geom.to_model(t[None, None]).clamp(0, 1), geom
