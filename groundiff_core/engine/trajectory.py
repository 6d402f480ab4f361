"""The DDIM inversion trajectory as pictures: decoded latents at chosen steps.

For the method walk-through (book notebook 1) only. With guidance 0 (the paper's setting) the
trajectory that :class:`~groundiff_core.engine.grounder.Grounder` follows is driven by the unconditional
prediction alone, so it is the same for every phrase of an image; this function walks it with the
same schedule, update and loop (:func:`~groundiff_core.engine.inversion.ddim_walk`) and decodes the latents
that were asked for. The grounder itself never decodes anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from groundiff_core.engine.config import GroundingConfig
from groundiff_core.io.images import ImageInput, load_image
from groundiff_core.engine.inversion import DDIMInversion, ddim_walk
from groundiff_core.models.ldm import LDM
from groundiff_core.io.preprocess import prepare_image

__all__ = ["Trajectory", "inversion_trajectory"]


@dataclass
class Trajectory:
    """Decoded latents of one image's inversion.

    ``step_indices[j]`` is an inversion step (``-1`` = the clean latent ``z0`` before the first step);
    ``timesteps[j]`` the noise level the latent is at after that step (``-1`` for ``z0``);
    ``images`` float32 ``[J, S, S]`` in [0, 1], the decoded latents on the model grid.
    """

    step_indices: list[int]
    timesteps: list[int]
    images: np.ndarray
    num_steps: int


@torch.no_grad()
def inversion_trajectory(model: LDM, image: ImageInput, step_indices: Sequence[int],
                         config: GroundingConfig | None = None) -> Trajectory:
    """Walk the unconditional DDIM inversion of ``image`` and decode the latent after each of
    ``step_indices`` (indices into the trajectory; ``-1`` = ``z0``). ``config`` gives the schedule
    (default: the paper's 334 trailing steps)."""
    config = config or GroundingConfig.paper()
    if config.guidance_scale != 0:
        raise ValueError("the shared trajectory exists only with guidance_scale 0 (the paper's setting)")
    sched = DDIMInversion(model.schedule, config)
    n = len(sched)
    wanted = sorted({int(s) for s in step_indices})
    bad = [s for s in wanted if not -1 <= s < n]
    if bad:
        raise ValueError(f"step indices {bad} are outside the trajectory: -1 (z0) .. {n - 1}")
    x, _ = prepare_image(load_image(image), model.input_size)
    z = model.encode_image(x).float()
    uncond = model.encode_text([""])
    kept: dict[int, torch.Tensor] = {}
    if -1 in wanted:
        kept[-1] = z.clone()

    def predict(z: torch.Tensor, i: int, t: int) -> torch.Tensor:
        return model.unet(z.to(model.dtype), t, encoder_hidden_states=uncond, return_dict=False)[0]

    for i, z_next in ddim_walk(sched, z, predict, stop=max(wanted) + 1):
        if i in wanted:
            kept[i] = z_next.clone()
    images = torch.cat([model.decode_latent(kept[s].to(model.dtype)) for s in wanted])[:, 0]
    ts = [-1 if s == -1 else sched.timestep(s) for s in wanted]
    return Trajectory(step_indices=wanted, timesteps=ts, images=images.float().cpu().numpy(), num_steps=n)
