"""Captum attribution through the same frozen LDM: the generic baselines to cross-attention grounding.

The question these methods answer: which pixels make the phrase help the model explain the image?
That is measured by one scalar per image-phrase pair, the **text-conditioned denoising gain**

    G(x) = mean_i [ mse(pred_uncond(z_i, t_i) - target_i) - mse(pred_cond(z_i, t_i) - target_i) ]

with ``z0 = encode(x)``, ``z_i = sqrt(a_i) z0 + sqrt(1 - a_i) eps_i``, ``a_i = alpha_bar(t_i)`` and
``target_i`` the model's training target (``eps_i`` for epsilon models, ``v_i = sqrt(a_i) eps_i -
sqrt(1 - a_i) z0`` for v-prediction), "" as the unconditional prompt and ``mse`` the mean over
elements (``||.||^2 / numel``). The draws ``(t_i, eps_i)`` come from a fixed-seed CPU generator
(:class:`ObjectiveConfig`), so ``G`` is a deterministic, differentiable function of the input.
The same ``eps_i`` is used in both branches, which removes most of the noise from the difference.

**What is attributed.** By default the preprocessed grayscale image ``x`` (``[1, 1, S, S]`` in
``[0, 1]``, S = ``model.input_size``), through the autoencoder's encoder (posterior mean, as the
grounding engine encodes it). Why: the maps then live on the model's pixel grid, exactly where the
cross-attention heatmaps are compared, with no latent-to-pixel upsampling that would blur them by the
autoencoder's factor (8 for the paper's model); occlusion and the integrated-gradients baselines
are defined on images, where "black" or "blurred" mean something; and the grayscale image has one
channel whatever the autoencoder takes. The price is a backward pass through the encoder, small
next to the UNet's. ``wrt="latent"`` attributes w.r.t. ``z0`` instead (cheaper: no encoder in the
loop; the channel-reduced map is upsampled bilinearly to ``S``).

Every method is a class with the grounding verb, so notebooks loop over them and the cross-attention
:class:`~groundiff_core.engine.grounder.Grounder` alike::

    method = make_method("integrated_gradients", model, n_steps=32)
    maps = method.ground(image, ["left pleural effusion"]).heatmaps   # [K, H, W], NaN outside crop

Cost: the cross-attention engine's conditional early exit (its conditional rows stop after the last
recorded layer) does not apply here. ``G`` is built from the final prediction of both branches, so
every method, including Grad-CAM at the deepest convolution (its gradient flows back from that
prediction), needs the whole UNet, forward and backward, for the conditional rows too.

Post-processing (every method): reduce the attribution to one map on the model grid (absolute value
summed over channels, or the positive part for Grad-CAM), min-max normalise it to ``[0, 1]`` and put
it back on the original grid (nearest, NaN outside the centre crop), as the engine does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from groundiff_core.models.ldm import LDM
from groundiff_core.io.preprocess import CropGeometry, prepare_image

__all__ = [
    "ObjectiveConfig",
    "DenoisingGain",
    "denoising_gain",
    "make_baseline",
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
    "token_attribution",
    "Cost",
    "measure_cost",
]

_WRT = ("image", "latent")
_SIGN = ("abs", "positive")
_BASELINES = ("black", "blur", "mean")


def _captum_attr():
    """``captum.attr``, with an install hint: Captum is the optional ``[captum]`` extra."""
    try:
        import captum.attr as attr
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "the Captum comparison methods need captum: pip install 'groundiff_core[captum]'"
        ) from e
    return attr


# ---------------------------------------------------------------------------------- objective
@dataclass(frozen=True)
class ObjectiveConfig:
    """The denoising-gain objective's draws.

    ``n_draws`` (t, noise) pairs; ``t`` is drawn uniformly in each of ``n_draws`` equal strata of
    ``t_window`` (fractions of ``num_train_timesteps``; the default 0.3..0.6 brackets the paper's
    cross-attention window, t = 360..537); the noise is standard normal with the latent's shape.
    Both come from a CPU generator seeded with ``seed``: identical on every device and call.
    """

    n_draws: int = 4
    t_window: tuple[float, float] = (0.3, 0.6)
    seed: int = 0

    def __post_init__(self) -> None:
        if int(self.n_draws) < 1:
            raise ValueError(f"n_draws must be >= 1, got {self.n_draws}")
        lo, hi = self.t_window
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"t_window must satisfy 0 <= lo < hi <= 1 (fractions of the training "
                             f"timesteps), got {self.t_window}")

    def describe(self) -> dict:
        return {"n_draws": int(self.n_draws), "t_window": list(self.t_window), "seed": int(self.seed)}


def _encode_differentiable(model: LDM, x01: torch.Tensor) -> torch.Tensor:
    """``model.encode_image`` with gradients: ``[B, 1, S, S]`` in [0, 1] -> latent ``z0``."""
    x = model._to_model_range(x01.to(model.dtype))
    if model.vae is None:
        return x
    vae_dtype = next(model.vae.parameters()).dtype
    dist = model.vae.encode(x.to(vae_dtype)).latent_dist
    return (dist.mean * model.scale_factor).to(model.dtype)


class DenoisingGain:
    """The scalar objective ``G`` of one phrase (see the module docstring), as a Captum forward.

    ``__call__(inputs)`` takes a batch ``[B, 1, S, S]`` of images in [0, 1] (``wrt="image"``) or of
    latents ``[B, C, s, s]`` (``wrt="latent"``) and returns ``[B]`` gains, differentiable w.r.t.
    the inputs. :meth:`gain` takes latents and a conditioning batch and is what token attribution
    differentiates w.r.t. the text embeddings. One UNet call per evaluation, batch ``2 * B * n_draws``.
    """

    def __init__(self, model: LDM, phrase: str, objective: ObjectiveConfig | None = None,
                 wrt: str = "image") -> None:
        if wrt not in _WRT:
            raise ValueError(f"wrt must be one of {_WRT}, got {wrt!r}")
        self.model = model
        self.phrase = phrase
        self.objective = objective or ObjectiveConfig()
        self.wrt = wrt
        self.cond = model.encode_text([phrase])  # [1, L, D]
        self.uncond = model.encode_text([""])  # [1, L, D]
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def draws(self, latent_shape: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(t [n] long, eps [n, *latent_shape], alpha_bar [n])`` on the model's device/dtype."""
        key = tuple(int(s) for s in latent_shape)
        if key not in self._cache:
            cfg, sched = self.objective, self.model.schedule
            n, T = int(cfg.n_draws), sched.num_train_timesteps
            g = torch.Generator().manual_seed(int(cfg.seed))
            u = torch.rand(n, generator=g, dtype=torch.float64)
            lo, hi = cfg.t_window
            frac = lo + (hi - lo) * (torch.arange(n, dtype=torch.float64) + u) / n
            t = (frac * (T - 1)).round().long().clamp(0, T - 1)
            eps = torch.randn((n, *key), generator=g, dtype=torch.float32)
            a = sched.alphas_cumprod()[t]
            dev, dt = self.model.device, self.model.dtype
            self._cache[key] = (t.to(dev), eps.to(dev, dt), a.to(dev, torch.float32))
        return self._cache[key]

    def latent(self, inputs: torch.Tensor) -> torch.Tensor:
        """``z0`` for the inputs (encoded when attributing w.r.t. the image)."""
        return _encode_differentiable(self.model, inputs) if self.wrt == "image" else inputs

    def gain(self, z0: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Gains ``[B]`` for latents ``z0 [B, C, s, s]`` and conditioning ``[1 or B, L, D]``."""
        cond = self.cond if cond is None else cond
        B = z0.shape[0]
        t, eps, a = self.draws(z0.shape[1:])
        n = t.shape[0]
        sa = a.sqrt().view(1, n, 1, 1, 1)
        sb = (1.0 - a).sqrt().view(1, n, 1, 1, 1)
        z0f = z0.float()[:, None]
        zt = (sa * z0f + sb * eps.float()[None]).flatten(0, 1)  # [B*n, C, s, s], draw-minor
        if self.model.schedule.prediction_type == "epsilon":
            target = eps.float()[None].expand(B, *eps.shape).flatten(0, 1)
        else:
            target = (sa * eps.float()[None] - sb * z0f).flatten(0, 1)
        cond_b = cond.expand(B, *cond.shape[1:]) if cond.shape[0] == 1 else cond
        if cond_b.shape[0] != B:
            raise ValueError(f"conditioning batch {cond.shape[0]} does not match latent batch {B}")
        ctx = torch.cat([self.uncond.expand(B * n, *self.uncond.shape[1:]),
                         cond_b.repeat_interleave(n, dim=0)]).to(self.model.dtype)
        zin = torch.cat([zt, zt]).to(self.model.dtype)
        tin = torch.cat([t.repeat(B), t.repeat(B)])
        pred = self.model.unet(zin, tin, encoder_hidden_states=ctx).sample.float()
        pu, pc = pred.chunk(2)
        per = ((pu - target) ** 2 - (pc - target) ** 2).flatten(1).mean(1)  # [B*n]
        return per.view(B, n).mean(1)

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.gain(self.latent(inputs))


def _phrases_checked(model: LDM, phrases: Sequence[str] | str) -> list[str]:
    """The engine's phrase validation (a single string means one phrase), so every method rejects
    the same inputs with the same messages."""
    from groundiff_core.engine.grounder import Grounder

    phrases = [phrases] if isinstance(phrases, str) else phrases
    Grounder(model).check_phrases(phrases)
    return list(phrases)


def _prepare(model: LDM, image: Any) -> tuple[torch.Tensor, CropGeometry]:
    """Any supported image -> ``[1, 1, S, S]`` float32 on the model's device, and its geometry."""
    from groundiff_core.io.images import load_image

    x, geom = prepare_image(load_image(image), model.input_size)
    return x.to(model.device, torch.float32), geom


def denoising_gain(model: LDM, image: Any, phrase: str, objective: ObjectiveConfig | None = None) -> float:
    """``G`` for one image (anything :func:`~groundiff_core.io.images.load_image` reads) and phrase."""
    _phrases_checked(model, [phrase])
    x, _ = _prepare(model, image)
    with torch.no_grad():
        return float(DenoisingGain(model, phrase, objective)(x)[0])


# ---------------------------------------------------------------------------------- baselines
def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[B, C, H, W]`` with reflect padding (radius 3 sigma)."""
    r = int(min(max(1, round(3 * sigma)), min(x.shape[-2:]) - 1))
    k = torch.arange(-r, r + 1, device=x.device, dtype=torch.float32)
    k = torch.exp(-0.5 * (k / sigma) ** 2)
    k = (k / k.sum()).to(x.dtype)
    C = x.shape[1]
    y = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).repeat(C, 1, 1, 1), groups=C)
    return F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).repeat(C, 1, 1, 1), groups=C)


def make_baseline(x01: torch.Tensor, kind: str = "blur", blur_frac: float = 1 / 16) -> torch.Tensor:
    """A reference image for ``x01 [B, 1, S, S]`` in [0, 1], same shape.

    ``"black"``: zeros (the darkest image; out of distribution for a radiograph, but the textbook IG
    baseline). ``"blur"``: the image blurred with sigma = ``blur_frac * S`` (32 px at 512): keeps
    the overall intensity and anatomy layout, removes the local detail a finding adds - the default.
    ``"mean"``: the image's mean intensity everywhere.
    """
    if kind == "black":
        return torch.zeros_like(x01)
    if kind == "mean":
        return x01.mean(dim=(-2, -1), keepdim=True).expand_as(x01).clone()
    if kind == "blur":
        return _gaussian_blur(x01, max(float(blur_frac) * x01.shape[-1], 0.5))
    raise ValueError(f"baseline must be one of {_BASELINES}, got {kind!r}")


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
    for name, m in root.named_modules():
        if m is module:
            return name
    raise ValueError("layer is not a submodule of model.unet")


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device):
    """Seed torch and numpy (Captum draws from both) for the block; restore their state after."""
    devices = [device] if device.type == "cuda" else []
    np_state = np.random.get_state()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            np.random.set_state(np_state)


def _minmax(m: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1]; a constant map becomes zeros (not NaN)."""
    lo, hi = float(np.min(m)), float(np.max(m))
    if not np.isfinite(lo) or not np.isfinite(hi) or hi - lo <= 1e-12 * max(1.0, abs(hi)):
        return np.zeros_like(m, dtype=np.float32)
    return ((m - lo) / (hi - lo)).astype(np.float32)


# ---------------------------------------------------------------------------------- methods
class AttributionGrounder:
    """Base class: objective + one Captum method + post-processing, with ``.ground``.

    Parameters
    ----------
    model : the LDM (frozen; gradients flow only to the inputs)
    objective : the denoising-gain draws (:class:`ObjectiveConfig`)
    wrt : ``"image"`` (default) or ``"latent"``; see the module docstring
    sign : ``"abs"`` (|attribution| summed over channels) or ``"positive"`` (the positive part of
        the channel sum); each method has its own default
    seed : seeds Captum's own randomness (GradientShap, NoiseTunnel), so ``ground`` is repeatable
    show_progress : a tqdm bar over the phrases

    Methods that evaluate many inputs take ``batch_size``: inputs per forward pass, each costing
    ``2 * n_draws`` UNet samples (with gradients, except for occlusion); it bounds the memory.
    """

    name: ClassVar[str] = "attribution"
    default_sign: ClassVar[str] = "abs"

    def __init__(self, model: LDM, objective: ObjectiveConfig | None = None, wrt: str = "image",
                 sign: str | None = None, seed: int = 0, show_progress: bool = False) -> None:
        if wrt not in _WRT:
            raise ValueError(f"wrt must be one of {_WRT}, got {wrt!r}")
        sign = sign or self.default_sign
        if sign not in _SIGN:
            raise ValueError(f"sign must be one of {_SIGN}, got {sign!r}")
        self.model = model
        self.objective = objective or ObjectiveConfig()
        self.wrt = wrt
        self.sign = sign
        self.seed = int(seed)
        self.show_progress = show_progress

    # -- to override
    def _attribute(self, f: DenoisingGain, inputs: torch.Tensor, x01: torch.Tensor) -> torch.Tensor:
        """Attribution ``[1, C, h, w]`` (any spatial size; resized to the model grid)."""
        raise NotImplementedError

    def _params(self) -> dict:
        return {}

    # -- shared
    def _inputs(self, x01: torch.Tensor) -> torch.Tensor:
        if self.wrt == "image":
            return x01
        return self.model.encode_image(x01).float()

    def _reference(self, x01: torch.Tensor, kind: str, blur_frac: float) -> torch.Tensor:
        """A baseline in the attributed space (latent baselines are encoded baseline images)."""
        ref = make_baseline(x01, kind, blur_frac)
        return ref if self.wrt == "image" else self.model.encode_image(ref).float()

    def _to_map(self, attr: torch.Tensor) -> np.ndarray:
        """``[1, C, h, w]`` -> signed-reduced ``[S, S]`` float32 numpy on the model grid."""
        a = attr.detach().float()
        m = a.abs().sum(dim=1, keepdim=True) if self.sign == "abs" else a.sum(dim=1, keepdim=True).clamp_min(0)
        S = self.model.input_size
        if m.shape[-2:] != (S, S):
            m = F.interpolate(m, size=(S, S), mode="bilinear", align_corners=False)
        return m[0, 0].cpu().numpy().astype(np.float32)

    def attribute_map(self, x01: torch.Tensor, phrase: str) -> np.ndarray:
        """The reduced, un-normalised map ``[S, S]`` of one preprocessed image ``[1, 1, S, S]``."""
        f = DenoisingGain(self.model, phrase, self.objective, self.wrt)
        inputs = self._inputs(x01).detach().requires_grad_(True)
        with _seeded(self.seed, self.model.device):
            attr = self._attribute(f, inputs, x01)
        return self._to_map(attr)

    def ground(self, image: Any, phrases: Sequence[str] | str, return_raw: bool = False):
        """Heatmaps of ``phrases`` (a single string is one phrase) on ``image``: ``Heatmaps.heatmaps`` is float32 ``[K, H, W]`` in
        [0, 1] on the original grid, NaN outside the centre crop. ``raw`` (on request) holds the
        reduced maps before min-max, ``[K, S, S]`` on the model grid; ``model_maps`` the final
        maps there; ``info`` is :meth:`describe` plus the model's name."""
        from tqdm.auto import tqdm

        from groundiff_core.engine.grounder import Heatmaps

        phrases = _phrases_checked(self.model, phrases)
        x01, geom = _prepare(self.model, image)
        raw = [self.attribute_map(x01, p)
               for p in tqdm(phrases, desc=self.name, disable=not self.show_progress, leave=False)]
        maps = np.stack([_minmax(m) for m in raw])
        return Heatmaps(heatmaps=geom.to_original(maps), phrases=phrases, geometry=geom,
                        raw=np.stack(raw) if return_raw else None, model_maps=maps,
                        info={**self.describe(), "model": self.model.name})

    def describe(self) -> dict:
        """A JSON-able record of the method and every setting, for result files."""
        return {"method": self.name, "class": type(self).__name__, "wrt": self.wrt, "sign": self.sign,
                "seed": self.seed, "objective": self.objective.describe(), **self._params()}


class SaliencyGrounder(AttributionGrounder):
    """Plain gradient of the gain w.r.t. the input (Simonyan et al.); one forward + backward."""

    name = "saliency"

    def _attribute(self, f, inputs, x01):
        return _captum_attr().Saliency(f).attribute(inputs, abs=False)


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
        if baseline not in _BASELINES:
            raise ValueError(f"baseline must be one of {_BASELINES}, got {baseline!r}")
        if int(n_steps) < 1:
            raise ValueError(f"n_steps must be >= 1, got {n_steps}")
        self.n_steps, self.baseline, self.blur_frac, self.batch_size = int(n_steps), baseline, blur_frac, batch_size

    def _attribute(self, f, inputs, x01):
        ref = self._reference(x01, self.baseline, self.blur_frac)
        return _captum_attr().IntegratedGradients(f).attribute(
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
        bad = [b for b in baselines if b not in _BASELINES]
        if bad or not baselines:
            raise ValueError(f"baselines must be a non-empty list from {_BASELINES}, got {list(baselines)}")
        if int(n_samples) < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        self.n_samples, self.baselines = int(n_samples), tuple(baselines)
        self.stdev_frac, self.blur_frac = float(stdev_frac), blur_frac
        self.batch_size = None if batch_size is None else max(1, int(batch_size))

    def _attribute(self, f, inputs, x01):
        refs = torch.cat([self._reference(x01, b, self.blur_frac) for b in self.baselines])
        stdev = self.stdev_frac * float(inputs.detach().max() - inputs.detach().min())
        gs = _captum_attr().GradientShap(f)
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
        if baseline not in _BASELINES:
            raise ValueError(f"baseline must be one of {_BASELINES}, got {baseline!r}")
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
        return _captum_attr().Occlusion(f).attribute(
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
        cam = _captum_attr().LayerGradCam(f, self.layer).attribute(inputs, relu_attributions=False)
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
        attr = _captum_attr()
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


# ---------------------------------------------------------------------------------- tokens
def token_attribution(model: LDM, image: Any, phrase: str, objective: ObjectiveConfig | None = None,
                      n_steps: int = 16, batch_size: int | None = 4) -> list[tuple[str, float]]:
    """Which words of ``phrase`` drive the gain on ``image``: ``[(token, score), ...]``.

    Layer integrated gradients on the text encoder's token-embedding layer, from a baseline prompt
    in which each of the phrase's tokens is replaced by the padding token (start, end and positions
    kept), summed over the embedding dimension. One entry per token between the start and end
    tokens, in order; scores are signed (positive: the word increases the gain) and sum, up to the
    integration error, to ``G(phrase) - G(baseline prompt)``.
    """
    _phrases_checked(model, [phrase])
    x01, _ = _prepare(model, image)
    f = DenoisingGain(model, phrase, objective, wrt="latent")
    z0 = model.encode_image(x01)
    ids = model.tokenize([phrase])["input_ids"].to(model.text_encoder.device)
    n_tok = model.phrase_token_count(phrase)
    pad = model.tokenizer.pad_token_id
    pad = model.tokenizer.eos_token_id if pad is None else pad
    ref = ids.clone()
    ref[:, 1:n_tok - 1] = pad

    def forward(input_ids: torch.Tensor) -> torch.Tensor:
        out = model.text_encoder(input_ids=input_ids)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return f.gain(z0.expand(input_ids.shape[0], *z0.shape[1:]), hidden.to(model.device, model.dtype))

    layer = model.text_encoder.get_input_embeddings()
    lig = _captum_attr().LayerIntegratedGradients(forward, layer)
    attr = lig.attribute(ids, baselines=ref, n_steps=int(n_steps), internal_batch_size=batch_size)
    scores = attr.detach().float().sum(dim=-1)[0, 1:n_tok - 1].cpu().tolist()
    tokens = model.tokenizer.convert_ids_to_tokens(ids[0, 1:n_tok - 1].tolist())
    return [(tok.replace("</w>", ""), float(s)) for tok, s in zip(tokens, scores)]


# ---------------------------------------------------------------------------------- cost
@dataclass(frozen=True)
class Cost:
    """Runtime and peak memory of one ``ground`` call on ``n_pairs`` image-phrase pairs.

    ``peak_bytes`` is measured as ``memory`` says, above what was allocated before the call:
    ``"cuda_max_allocated"`` (torch's peak CUDA allocation), ``"torch_cpu_profiler"`` (peak of
    torch's CPU tensor allocations, replayed from the profiler's allocation events in a second,
    untimed call: neither ``tracemalloc``, which sees only the Python heap, nor the resident set
    size, which the allocator's reuse of freed memory hides, measures tensors), ``"cpu_rss_peak"``
    (fallback when the profiler's events are unavailable: resident-set peak sampled every 5 ms, a
    lower bound) or ``"not_measured"``.
    """

    method: str
    n_pairs: int
    seconds: float
    seconds_per_pair: float
    peak_bytes: int
    memory: str
    device: str

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _cpu_peak_profiled(call: Callable[[], Any]) -> tuple[int, str]:
    """Peak of live CPU tensor bytes during ``call()``, from torch profiler allocation events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        call()
    try:
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        events.sort(key=lambda e: e.start_ns())
        live = peak = 0
        for e in events:
            if e.device_type() == torch.autograd.DeviceType.CPU:
                live += int(e.nbytes())
                peak = max(peak, live)
        return peak, "torch_cpu_profiler"
    except (AttributeError, TypeError):  # private profiler API changed: sample the RSS instead
        return _cpu_peak_rss(call)


def _cpu_peak_rss(call: Callable[[], Any]) -> tuple[int, str]:
    start = _rss_bytes()
    if start is None:
        call()
        return 0, "not_measured"
    peak, stop = [start], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes() or 0)
            stop.wait(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        call()
    finally:
        stop.set()
        thread.join()
    return max(peak[0], _rss_bytes() or 0) - start, "cpu_rss_peak"


def measure_cost(method: Any, image: Any, phrases: Sequence[str], device: str | torch.device | None = None,
                 memory: bool = True) -> Cost:
    """Time ``method.ground(image, phrases)`` for any grounding method (the cross-attention
    ``Grounder`` included) and measure its peak memory; ``device`` defaults to ``method.model``'s.

    On CUDA one call gives both. On CPU the wall time comes from a clean call and, with
    ``memory=True``, the peak from a second call under the torch profiler (so ``ground`` runs twice).
    """
    phrases = list(phrases)
    if device is None:
        model = getattr(method, "model", None)
        device = model.device if model is not None else torch.device("cpu")
    device = torch.device(device)
    name = getattr(method, "name", type(method).__name__)

    def call() -> None:
        method.ground(image, phrases)

    gc.collect()
    peak, kind = 0, "not_measured"
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    t0 = time.perf_counter()
    call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    if device.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(device) - before, "cuda_max_allocated"
    elif memory:
        gc.collect()
        peak, kind = _cpu_peak_profiled(call)
    n = len(phrases)
    return Cost(method=name, n_pairs=n, seconds=seconds, seconds_per_pair=seconds / max(n, 1),
                peak_bytes=int(max(peak, 0)), memory=kind, device=str(device))
