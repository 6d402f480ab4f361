"""The result types every grounding method shares, and the verb they all answer.

* :class:`Heatmaps` - what ``method.ground(image, phrases)`` returns, whatever the method;
* :class:`GroundingMethod` - the protocol of a grounding method (``ground`` and ``describe``), so
  notebooks and the evaluation runner treat the engine, the baselines and the Captum methods alike.

It imports nothing of the engine: the engine's own ablation record is
:class:`groundiff_core.engine.record.Recording`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from groundiff_core.io.preprocess import CropGeometry

__all__ = ["Heatmaps", "GroundingMethod"]


@dataclass
class Heatmaps:
    """Heatmaps of K phrases on one image: the result every grounding method returns.

    Attributes
    ----------
    heatmaps : float32 ``[K, H, W]`` on the original image grid, NaN outside the model's crop
    phrases : the K phrases, in order
    geometry : how the original image maps onto the model's ``S x S`` input; None for methods that
        work on the original grid directly (the baselines)
    raw : optional float32 ``[K, S, S]`` on the model grid: the mean attention map before
        post-processing (smoothing, normalisation, Otsu)
    model_maps : optional float32 ``[K, S, S]``: the final maps on the model grid
    info : method, model and settings that produced the maps (JSON-able)
    """

    heatmaps: np.ndarray
    phrases: list[str]
    geometry: CropGeometry | None
    raw: np.ndarray | None = None
    model_maps: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.phrases)

    def __getitem__(self, key: int | str) -> np.ndarray:
        """The ``[H, W]`` heatmap of phrase number ``key`` or of the phrase ``key``."""
        if isinstance(key, str):
            if key not in self.phrases:
                raise KeyError(f"no heatmap for phrase {key!r}; phrases: {self.phrases}")
            key = self.phrases.index(key)
        return self.heatmaps[key]


@runtime_checkable
class GroundingMethod(Protocol):
    """What every grounding method answers (the engine's ``Grounder``, the baselines, Captum).

    ``ground(image, phrases)`` takes anything :func:`~groundiff_core.io.images.load_image` reads
    and K phrases (a single string is one phrase) and returns :class:`Heatmaps` of K maps on the
    original image grid. ``describe()`` is the method's JSON-able identity: its name under
    ``"method"`` and every setting that changes the maps (the evaluation runner completes it with
    the model's identity and the class name, see ``groundiff_core.evaluation.method_identity``).

    Optional: ``ground_batch(images, phrases_per_image) -> list[Heatmaps]`` for methods that gain
    from batching several images; callers look it up with ``getattr`` and fall back to ``ground``.
    """

    def ground(self, image: Any, phrases: Sequence[str] | str) -> Heatmaps:
        ...

    def describe(self) -> dict:
        ...
