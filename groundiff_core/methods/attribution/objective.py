"""The scalar every attribution method explains: the text-conditioned denoising gain ``G``.

    G(x) = mean_i [ mse(pred_uncond(z_i, t_i) - target_i) - mse(pred_cond(z_i, t_i) - target_i) ]

with ``z0 = encode(x)``, ``z_i = sqrt(a_i) z0 + sqrt(1 - a_i) eps_i``, ``a_i = alpha_bar(t_i)`` and
``target_i`` the model's training target (``eps_i`` for epsilon models, ``v_i = sqrt(a_i) eps_i -
sqrt(1 - a_i) z0`` for v-prediction), "" as the unconditional prompt and ``mse`` the mean over
elements (``||.||^2 / numel``). The draws ``(t_i, eps_i)`` come from a fixed-seed CPU generator
(:class:`ObjectiveConfig`), so ``G`` is a deterministic, differentiable function of the input.
The same ``eps_i`` is used in both branches, which removes most of the noise from the difference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from groundiff_core.methods.attribution.common import checked_phrases, prepare_input
from groundiff_core.models.ldm import LDM

__all__ = ["WRT", "ObjectiveConfig", "DenoisingGain", "denoising_gain", "encode_differentiable"]

WRT = ("image", "latent")


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


def encode_differentiable(model: LDM, x01: torch.Tensor) -> torch.Tensor:
    """``model.encode_image`` with gradients: ``[B, 1, S, S]`` in [0, 1] -> latent ``z0``
    (the posterior mean, as the grounding engine encodes)."""
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
        if wrt not in WRT:
            raise ValueError(f"wrt must be one of {WRT}, got {wrt!r}")
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
        return encode_differentiable(self.model, inputs) if self.wrt == "image" else inputs

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


def denoising_gain(model: LDM, image: Any, phrase: str, objective: ObjectiveConfig | None = None) -> float:
    """``G`` for one image (anything :func:`~groundiff_core.io.images.load_image` reads) and phrase."""
    checked_phrases(model, [phrase])
    x, _ = prepare_input(model, image)
    with torch.no_grad():
        return float(DenoisingGain(model, phrase, objective)(x)[0])
