"""groundiff_core: zero-shot phrase grounding with latent diffusion models.

Reference implementation of Vilouras et al., "Zero-Shot Medical Phrase Grounding with
Off-the-shelf Diffusion Models" (IEEE JBHI, arXiv:2404.12920)::

    import groundiff_core as gd
    model = gd.load_model("phantom")
    maps = gd.Grounder(model, gd.GroundingConfig.paper()).ground(image, ["left pleural effusion"]).heatmaps

Public names are imported lazily so that ``import groundiff_core`` stays fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "LDM": "model",
    "NoiseSchedule": "model",
    "GroundingConfig": "config",
    "Grounder": "grounder",
    "Heatmaps": "grounder",
    "Recording": "grounder",
    "load_image": "image_io",
    "load_model": "loading",
    "metrics": None,
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        mod = _LAZY[name]
        if mod is None:
            return importlib.import_module(f".{name}", __name__)
        return getattr(importlib.import_module(f".{mod}", __name__), name)
    raise AttributeError(f"module 'groundiff_core' has no attribute {name!r}")
