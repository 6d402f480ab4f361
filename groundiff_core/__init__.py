"""groundiff_core: zero-shot phrase grounding with latent diffusion models.

Reference implementation of Vilouras et al., "Zero-Shot Medical Phrase Grounding with
Off-the-shelf Diffusion Models" (IEEE JBHI, arXiv:2404.12920)::

    import groundiff_core as gd
    model = gd.load_model("phantom")
    maps = gd.Grounder(model, gd.GroundingConfig.paper()).ground(image, ["left pleural effusion"]).heatmaps

Public names are imported lazily so that ``import groundiff_core`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from groundiff_core.util.lazy import lazy_getattr

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time the names load lazily
    from groundiff_core.engine.config import GroundingConfig
    from groundiff_core.engine.grounder import Grounder
    from groundiff_core.engine.kept import Inversion, InversionCache
    from groundiff_core.evaluation import metrics
    from groundiff_core.engine.record import Recording
    from groundiff_core.heatmaps import GroundingMethod, Heatmaps
    from groundiff_core.io.images import load_image
    from groundiff_core.models.ldm import LDM, NoiseSchedule
    from groundiff_core.models.loading import load_model

__version__ = "0.1.0"

_LAZY = {
    "LDM": "models.ldm",
    "NoiseSchedule": "models.ldm",
    "GroundingConfig": "engine.config",
    "Grounder": "engine.grounder",
    "Inversion": "engine.kept",
    "InversionCache": "engine.kept",
    "GroundingMethod": "heatmaps",
    "Heatmaps": "heatmaps",
    "Recording": "engine.record",
    "load_image": "io.images",
    "load_model": "models.loading",
    "metrics": "evaluation.metrics",
}

__all__ = sorted(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
