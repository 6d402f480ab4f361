"""The Captum methods, one class each with the grounding verb, and :func:`make_method` to pick one.

Every method is a class with the same call as the cross-attention
:class:`~groundiff_core.engine.grounder.Grounder`, so notebooks loop over them alike::

    method = make_method("integrated_gradients", model, n_steps=32)
    maps = method.ground(image, ["left pleural effusion"]).heatmaps   # [K, H, W], NaN outside crop

Cost: the cross-attention engine's conditional early exit (its conditional rows stop after the last
recorded layer) does not apply here. ``G`` is built from the final prediction of both branches, so
every method, including Grad-CAM at the deepest convolution (its gradient flows back from that
prediction), needs the whole UNet, forward and backward, for the conditional rows too.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from groundiff_core.methods.attribution.base import AttributionGrounder
from groundiff_core.methods.attribution.common import captum_attr
from groundiff_core.methods.attribution.objective import ObjectiveConfig
from groundiff_core.methods.attribution.references import BASELINES
from groundiff_core.models.ldm import LDM

__all__ = [
    "SaliencyGrounder",
    "IntegratedGradientsGrounder",
    "GradientShapGrounder",
    "OcclusionGrounder",
    "GradCamGrounder",
    "SmoothGradGrounder",
    "CAPTUM_METHODS",
    "make_method",
    "deepest_conv",
]


def deepest_conv(unet: torch.nn.Module) -> tuple[str, torch.nn.Module]:
    """``(module path, Conv2d)``: the last convolution of the UNet's middle (deepest) block.

    For a diffusers ``UNet2DConditionModel`` that is ``mid_block.resnets.<last>.conv2``, the
    bottleneck at the lowest resolution (16x16 for the paper's model, where layers 3, 4, 6, 7 read).
    """
    mid = getattr(unet, "mid_block", None)
    resnets = getattr(mid, "resnets", None)
    if not resnets or not isinstance(getattr(resnets[-1], "conv2", None), torch.nn.Conv2d):
        raise ValueError("the UNet has no mid_block.resnets[-1].conv2 (not a diffusers "
                         "UNet2DConditionModel?): pass layer=<a torch.nn.Conv2d of the UNet>")
    return f"mid_block.resnets.{len(resnets) - 1}.conv2", resnets[-1].conv2


def _module_path(root: torch.nn.Module, module: torch.nn.Module) -> str:
    """The dotted path of ``module`` inside ``root`` (for result files)."""
    for name, m in root.named_modules():
        if m is module:
            return name
    raise ValueError("layer is not a submodule of model.unet")


class SaliencyGrounder(AttributionGrounder):
    """Plain gradient of the gain w.r.t. the input (Simonyan et al.); one forward + backward."""

    name = "saliency"

    def _attribute(self, f, inputs, x01):
        return captum_attr().Saliency(f).attribute(inputs, abs=False)


class IntegratedGradientsGrounder(AttributionGrounder):
    """Integrated gradients from a baseline image (``"blur"`` by default, see :func:`make_baseline`).

    The blurred image is the default baseline because it is a plausible radiograph without the
    local detail that a finding adds, so the path integral credits that detail; ``"black"`` is the
    textbook choice and is offered for comparison.
    """

    name = "integrated_gradients"

    def __init__(self, model: LDM, n_steps: int = 32, baseline: str = "blur", blur_frac: float = 1 / 16,
                 batch_size: int | None = 8, **kw) -> None:
        super().__init__(model, **kw)
        if baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
        if int(n_steps) < 1:
            raise ValueError(f"n_steps must be >= 1, got {n_steps}")
        self.n_steps, self.baseline, self.blur_frac, self.batch_size = int(n_steps), baseline, blur_frac, batch_size

    def _attribute(self, f, inputs, x01):
        ref = self._reference(x01, self.baseline, self.blur_frac)
        return captum_attr().IntegratedGradients(f).attribute(
            inputs, baselines=ref, n_steps=self.n_steps, method="gausslegendre",
            internal_batch_size=self.batch_size)

    def _params(self):
        return {"n_steps": self.n_steps, "baseline": self.baseline, "blur_frac": self.blur_frac}


class GradientShapGrounder(AttributionGrounder):
    """GradientSHAP: expected gradients over random points between the input and baselines drawn
    from ``baselines`` (default: the black and the blurred image), plus Gaussian input noise of
    ``stdev_frac`` times the input's value range."""

    name = "gradient_shap"

    def __init__(self, model: LDM, n_samples: int = 16, baselines: Sequence[str] = ("black", "blur"),
                 stdev_frac: float = 0.05, blur_frac: float = 1 / 16, batch_size: int | None = 8,
                 **kw) -> None:
        super().__init__(model, **kw)
        bad = [b for b in baselines if b not in BASELINES]
        if bad or not baselines:
            raise ValueError(f"baselines must be a non-empty list from {BASELINES}, got {list(baselines)}")
        if int(n_samples) < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        self.n_samples, self.baselines = int(n_samples), tuple(baselines)
        self.stdev_frac, self.blur_frac = float(stdev_frac), blur_frac
        self.batch_size = None if batch_size is None else max(1, int(batch_size))

    def _attribute(self, f, inputs, x01):
        refs = torch.cat([self._reference(x01, b, self.blur_frac) for b in self.baselines])
        stdev = self.stdev_frac * float(inputs.detach().max() - inputs.detach().min())
        gs = captum_attr().GradientShap(f)
        # GradientShap evaluates all samples in one batch; chunks of batch_size samples bound the
        # memory, and their sample-weighted mean is the same expectation.
        chunk = self.n_samples if self.batch_size is None else self.batch_size
        total, done = None, 0
        while done < self.n_samples:
            k = min(chunk, self.n_samples - done)
            a = gs.attribute(inputs, baselines=refs, n_samples=k, stdevs=stdev) * k
            total = a if total is None else total + a
            done += k
        return total / self.n_samples

    def _params(self):
        return {"n_samples": self.n_samples, "baselines": list(self.baselines), "batch_size": self.batch_size,
                "stdev_frac": self.stdev_frac, "blur_frac": self.blur_frac}


class OcclusionGrounder(AttributionGrounder):
    """Occlusion: drop in the gain when a square window is replaced by the baseline (default the
    blurred image). Window and stride are fractions of the attributed grid's side: 1/8 and 1/16
    give 64 px windows every 32 px at 512 (225 positions, ``2 * n_draws`` UNet passes each), 4/2 px
    at 32."""

    name = "occlusion"

    def __init__(self, model: LDM, window_frac: float = 1 / 8, stride_frac: float = 1 / 16,
                 baseline: str = "blur", blur_frac: float = 1 / 16, batch_size: int = 4, **kw) -> None:
        super().__init__(model, **kw)
        if baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
        if not (0 < window_frac <= 1 and 0 < stride_frac <= 1):
            raise ValueError(f"window_frac and stride_frac must be in (0, 1], got {window_frac}, {stride_frac}")
        self.window_frac, self.stride_frac = float(window_frac), float(stride_frac)
        self.baseline, self.blur_frac, self.batch_size = baseline, blur_frac, int(batch_size)

    def window(self, side: int) -> tuple[int, int]:
        """(window, stride) in pixels of a grid of ``side`` pixels."""
        w = max(1, int(round(self.window_frac * side)))
        return w, max(1, min(w, int(round(self.stride_frac * side))))

    def _attribute(self, f, inputs, x01):
        ref = self._reference(x01, self.baseline, self.blur_frac)
        C, side = inputs.shape[1], inputs.shape[-1]
        w, s = self.window(side)
        return captum_attr().Occlusion(f).attribute(
            inputs, sliding_window_shapes=(C, w, w), strides=(C, s, s), baselines=ref,
            perturbations_per_eval=self.batch_size)

    def _params(self):
        w, s = self.window(self.model.input_size if self.wrt == "image" else self.model.latent_size)
        return {"window_frac": self.window_frac, "stride_frac": self.stride_frac, "window_px": w,
                "stride_px": s, "baseline": self.baseline, "blur_frac": self.blur_frac}


class GradCamGrounder(AttributionGrounder):
    """Grad-CAM on a UNet convolution (default :func:`deepest_conv`, the bottleneck).

    The layer runs once per UNet call on all ``2 * n_draws`` (branch, draw) samples; the signed CAM
    ``sum_k mean(dG/dA_k) A_k`` of each sample is summed over them (the first-order contribution of
    the layer to ``G`` across the draws), then the positive part is kept (Grad-CAM's ReLU) and
    upsampled bilinearly to the model grid.
    """

    name = "grad_cam"
    default_sign = "positive"

    def __init__(self, model: LDM, layer: torch.nn.Module | None = None, **kw) -> None:
        super().__init__(model, **kw)
        if layer is None:
            self.layer_name, self.layer = deepest_conv(model.unet)
        else:
            self.layer_name, self.layer = _module_path(model.unet, layer), layer

    def _attribute(self, f, inputs, x01):
        cam = captum_attr().LayerGradCam(f, self.layer).attribute(inputs, relu_attributions=False)
        return cam.sum(dim=0, keepdim=True)  # [1, 1, h, w]

    def _params(self):
        return {"layer": self.layer_name}


class SmoothGradGrounder(AttributionGrounder):
    """NoiseTunnel-smoothed saliency (SmoothGrad): the gradient averaged over ``n_samples`` noisy
    copies of the input, noise std ``stdev_frac`` times the input's value range."""

    name = "smoothgrad"

    def __init__(self, model: LDM, n_samples: int = 16, stdev_frac: float = 0.1,
                 batch_size: int | None = 8, **kw) -> None:
        super().__init__(model, **kw)
        if int(n_samples) < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        self.n_samples, self.stdev_frac, self.batch_size = int(n_samples), float(stdev_frac), batch_size

    def _attribute(self, f, inputs, x01):
        attr = captum_attr()
        stdev = self.stdev_frac * float(inputs.detach().max() - inputs.detach().min())
        return attr.NoiseTunnel(attr.Saliency(f)).attribute(
            inputs, nt_type="smoothgrad", nt_samples=self.n_samples, stdevs=stdev,
            nt_samples_batch_size=self.batch_size, abs=False)

    def _params(self):
        return {"n_samples": self.n_samples, "stdev_frac": self.stdev_frac}


CAPTUM_METHODS: dict[str, Callable[..., AttributionGrounder]] = {
    cls.name: cls for cls in (SaliencyGrounder, IntegratedGradientsGrounder, GradientShapGrounder,
                              OcclusionGrounder, GradCamGrounder, SmoothGradGrounder)
}


def make_method(name: str, model: LDM, **kw) -> AttributionGrounder:
    """The Captum method registered as ``name`` (see :data:`CAPTUM_METHODS`) on ``model``."""
    if name not in CAPTUM_METHODS:
        raise ValueError(f"unknown Captum method {name!r}; choose one of {sorted(CAPTUM_METHODS)}")
    return CAPTUM_METHODS[name](model, **kw)


def make_methods(names: Sequence[str], model: LDM, *, objective: ObjectiveConfig, seed: int = 0,
                 ig_steps: int = 16, n_samples: int = 8, occlusion_window: float = 0.125,
                 occlusion_stride: float = 0.125) -> dict[str, AttributionGrounder]:
    """The Captum methods ``names`` on ``model`` with one set of settings, ``{name: method}``: the
    Captum page's contenders, built the same way by the page and by the script that ships their run
    (``scripts/ship_captum.py``). ``ig_steps``: Integrated Gradients' integration steps;
    ``n_samples``: GradientShap's and SmoothGrad's samples; ``occlusion_window`` and
    ``occlusion_stride``: Occlusion's window side and stride as shares of the input size."""
    settings = {"integrated_gradients": {"n_steps": ig_steps}, "gradient_shap": {"n_samples": n_samples},
                "smoothgrad": {"n_samples": n_samples},
                "occlusion": {"window_frac": occlusion_window, "stride_frac": occlusion_stride}}
    return {name: make_method(name, model, objective=objective, seed=seed, **settings.get(name, {}))
            for name in names}
