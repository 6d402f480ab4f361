"""Reference baselines: heatmaps that ignore the text, so every table has a floor to compare with.

Both answer the same verb as the cross-attention grounder, ``.ground(image, phrases) -> Heatmaps``,
and produce their maps directly on the ORIGINAL image grid ``[K, H, W]`` (no crop, no NaN margin;
so ``Heatmaps.geometry`` is None). Phrases are checked as every method checks them
(:func:`~groundiff_core.util.phrases.as_phrase_list`: blank phrases are refused), although the maps
ignore them.

* :class:`RandomHeatmap` - i.i.d. uniform values in [0, 1); deterministic per (seed, image,
  phrase), independent of call order (so resumed evaluations reproduce the same numbers);
* :class:`CentrePrior` - a Gaussian centred on the image (the "findings are near the middle"
  prior), the same map for every phrase, normalised to [0, 1].
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from groundiff_core.heatmaps import Heatmaps
from groundiff_core.util.arrays import minmax
from groundiff_core.util.phrases import as_phrase_list

__all__ = ["RandomHeatmap", "CentrePrior"]


def _image01(image) -> np.ndarray:
    """Any image the grounder accepts -> float32 ``[H, W]`` in [0, 1]."""
    from groundiff_core.io.images import load_image

    return load_image(image)


@dataclass(frozen=True)
class RandomHeatmap:
    """Uniform random heatmaps: the chance floor (AUC-ROC about 0.5).

    The generator for a phrase is seeded by ``(seed, CRC32 of the image bytes, CRC32 of the
    phrase)``, so the same image and phrase always get the same map.
    """

    seed: int = 0
    name: str = "random"

    def describe(self) -> dict:
        return {"method": self.name, "seed": self.seed}

    def ground(self, image, phrases: Sequence[str] | str) -> Heatmaps:
        """``[K, H, W]`` float32 maps, uniform in [0, 1), one per phrase."""
        phrases = as_phrase_list(phrases)
        img = _image01(image)
        key = zlib.crc32(np.ascontiguousarray(img).tobytes())
        maps = np.stack([
            np.random.default_rng([self.seed, key, zlib.crc32(p.encode("utf-8"))])
            .random(img.shape, dtype=np.float32)
            for p in phrases
        ])
        return Heatmaps(heatmaps=maps, phrases=phrases, geometry=None, info=self.describe())


@dataclass(frozen=True)
class CentrePrior:
    """A Gaussian bump centred on the image, ignoring the image content and the text.

    ``sigma_fraction`` is the standard deviation as a share of each side (rows: of the height,
    columns: of the width). The map is ``exp(-(dy^2/2sy^2 + dx^2/2sx^2))`` at pixel centres,
    min-max normalised to [0, 1] (:func:`~groundiff_core.util.arrays.minmax`; a 1 x 1 image, the
    only constant case, gives 0).
    """

    sigma_fraction: float = 0.25
    name: str = "centre"

    def __post_init__(self) -> None:
        if not self.sigma_fraction > 0:
            raise ValueError(f"sigma_fraction must be positive, got {self.sigma_fraction}")

    def describe(self) -> dict:
        return {"method": self.name, "sigma_fraction": self.sigma_fraction}

    def prior(self, height: int, width: int) -> np.ndarray:
        """The ``[H, W]`` float32 map."""
        y = (np.arange(height) + 0.5 - height / 2) / (self.sigma_fraction * height)
        x = (np.arange(width) + 0.5 - width / 2) / (self.sigma_fraction * width)
        return minmax(np.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2))).astype(np.float32)

    def ground(self, image, phrases: Sequence[str] | str) -> Heatmaps:
        """``[K, H, W]`` float32: the same centre prior for each phrase."""
        phrases = as_phrase_list(phrases)
        h, w = _image01(image).shape
        g = self.prior(h, w)
        return Heatmaps(heatmaps=np.repeat(g[None], len(phrases), axis=0), phrases=phrases,
                        geometry=None, info=self.describe())
