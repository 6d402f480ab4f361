"""Text-to-image sampling (deterministic DDIM with classifier-free guidance).

Not part of the grounding method: it shows what a model has learned to draw for a phrase (the book's
check that the phantom LDM is a real text-conditioned generative model). The schedule is the usual
"trailing" DDIM schedule, walked towards the image with the inversion's update and loop
(:func:`~groundiff_core.engine.inversion.ddim_sampling`, :func:`~groundiff_core.engine.inversion.ddim_run`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from groundiff_core.engine.inversion import ddim_run, ddim_sampling
from groundiff_core.models.ldm import LDM

__all__ = ["generate"]


@torch.no_grad()
def generate(model: LDM, phrases: Sequence[str], num_steps: int = 50, guidance_scale: float = 3.0,
             seed: int = 0, progress: bool = False) -> np.ndarray:
    """Sample one image per phrase; returns float32 ``[K, S, S]`` in ``[0, 1]``.

    ``guidance_scale`` 1 is plain conditional sampling, 0 unconditional, > 1 classifier-free guidance.
    The initial noise comes from a CPU generator seeded with ``seed``, so results do not depend on
    the device's random number generator.
    """
    phrases = list(phrases)
    if not phrases:
        raise ValueError("generate needs at least one phrase")
    if num_steps < 1 or num_steps > model.schedule.num_train_timesteps:
        raise ValueError(f"num_steps must be in [1, {model.schedule.num_train_timesteps}], got {num_steps}")
    K = len(phrases)
    sched = ddim_sampling(model.schedule, num_steps)
    cond = model.encode_text(phrases)
    uncond = model.encode_text([""]).expand(K, -1, -1)
    ctx = torch.cat([uncond, cond])
    side = model.latent_size
    ch = model.unet.config.in_channels
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn((K, ch, side, side), generator=gen).to(device=model.device, dtype=model.dtype)

    def predict(z: torch.Tensor, i: int, t: int) -> torch.Tensor:
        out_u, out_c = model.unet(torch.cat([z, z]), t, encoder_hidden_states=ctx).sample.chunk(2)
        return out_u + guidance_scale * (out_c - out_u)

    z = ddim_run(sched, z, predict, progress="sampling" if progress else None)
    return model.decode_latent(z)[:, 0].float().cpu().numpy()
