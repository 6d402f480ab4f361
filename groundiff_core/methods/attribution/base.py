"""The common shape of every Captum grounding method: objective, one Captum call, post-processing.

**What is attributed.** By default the preprocessed grayscale image ``x`` (``[1, 1, S, S]`` in
``[0, 1]``, S = ``model.input_size``), through the autoencoder's encoder (posterior mean, as the
grounding engine encodes it). Why: the maps then live on the model's pixel grid, exactly where the
cross-attention heatmaps are compared, with no latent-to-pixel upsampling that would blur them by the
autoencoder's factor (8 for the paper's model); occlusion and the integrated-gradients baselines
are defined on images, where "black" or "blurred" mean something; and the grayscale image has one
channel whatever the autoencoder takes. The price is a backward pass through the encoder, small
next to the UNet's. ``wrt="latent"`` attributes w.r.t. ``z0`` instead (cheaper: no encoder in the
loop; the channel-reduced map is upsampled bilinearly to ``S``).

**Post-processing** (every method): reduce the attribution to one map on the model grid (absolute
value summed over channels, or the positive part for Grad-CAM), min-max normalise it to ``[0, 1]``
(:func:`groundiff_core.util.arrays.minmax`: a constant map becomes zeros) and put it back on the
original grid (nearest, NaN outside the centre crop), as the engine does.
"""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from groundiff_core.heatmaps import Heatmaps
from groundiff_core.methods.attribution.common import checked_phrases, prepare_input
from groundiff_core.methods.attribution.objective import WRT, DenoisingGain, ObjectiveConfig
from groundiff_core.methods.attribution.references import make_baseline
from groundiff_core.models.ldm import LDM
from groundiff_core.util.arrays import minmax

__all__ = ["AttributionGrounder", "SIGN"]

SIGN = ("abs", "positive")


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
        if wrt not in WRT:
            raise ValueError(f"wrt must be one of {WRT}, got {wrt!r}")
        sign = sign or self.default_sign
        if sign not in SIGN:
            raise ValueError(f"sign must be one of {SIGN}, got {sign!r}")
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

    def ground(self, image: Any, phrases: Sequence[str] | str, return_raw: bool = False) -> Heatmaps:
        """Heatmaps of ``phrases`` (a single string is one phrase) on ``image``: ``Heatmaps.heatmaps``
        is float32 ``[K, H, W]`` in [0, 1] on the original grid, NaN outside the centre crop.
        ``raw`` (on request) holds the reduced maps before min-max, ``[K, S, S]`` on the model
        grid; ``model_maps`` the final maps there; ``info`` is :meth:`describe` plus the model's name."""
        from tqdm.auto import tqdm

        phrases = checked_phrases(self.model, phrases)
        x01, geom = prepare_input(self.model, image)
        raw = np.stack([self.attribute_map(x01, p)
                        for p in tqdm(phrases, desc=self.name, disable=not self.show_progress, leave=False)])
        maps = minmax(raw)
        return Heatmaps(heatmaps=geom.to_original(maps), phrases=phrases, geometry=geom,
                        raw=raw if return_raw else None, model_maps=maps,
                        info={**self.describe(), "model": self.model.name})

    def describe(self) -> dict:
        """A JSON-able record of the method and every setting, for result files."""
        return {"method": self.name, "class": type(self).__name__, "wrt": self.wrt, "sign": self.sign,
                "seed": self.seed, "objective": self.objective.describe(), **self._params()}
