"""Captum attribution through the same frozen LDM: the generic baselines to cross-attention grounding.

The question these methods answer: which pixels make the phrase help the model explain the image?
That is measured by one scalar per image-phrase pair, the text-conditioned denoising gain ``G``
(:mod:`.objective`), which every method attributes to the input pixels (:mod:`.base` says what is
attributed and how the attribution becomes a heatmap; :mod:`.methods` holds one class per Captum
method; :mod:`.references` the reference images; :mod:`.tokens` attributes ``G`` to the words)::

    method = make_method("integrated_gradients", model, n_steps=32)
    maps = method.ground(image, ["left pleural effusion"]).heatmaps   # [K, H, W], NaN outside crop

Runtime and memory of any method: :func:`groundiff_core.util.profiling.measure_cost`.
"""

from groundiff_core.methods.attribution.base import AttributionGrounder
from groundiff_core.methods.attribution.methods import (
    CAPTUM_METHODS,
    GradCamGrounder,
    GradientShapGrounder,
    IntegratedGradientsGrounder,
    OcclusionGrounder,
    SaliencyGrounder,
    SmoothGradGrounder,
    deepest_conv,
    make_method,
    make_methods,
)
from groundiff_core.methods.attribution.objective import DenoisingGain, ObjectiveConfig, denoising_gain
from groundiff_core.methods.attribution.references import gaussian_blur, make_baseline
from groundiff_core.methods.attribution.tokens import token_attribution

__all__ = [
    "ObjectiveConfig",
    "DenoisingGain",
    "denoising_gain",
    "make_baseline",
    "gaussian_blur",
    "deepest_conv",
    "AttributionGrounder",
    "SaliencyGrounder",
    "IntegratedGradientsGrounder",
    "GradientShapGrounder",
    "OcclusionGrounder",
    "GradCamGrounder",
    "SmoothGradGrounder",
    "CAPTUM_METHODS",
    "make_method",
    "make_methods",
    "token_attribution",
]
