"""Deterministic DDIM: THE timestep schedule, THE update from one step to the next, THE loop.

Inversion walks the timesteps in ascending order ``t_0 < t_1 < ... < t_{N-1}``. At step ``i``
the UNet sees the current latent ``z_i`` (at the noise level of ``t_{i-1}``) and the target timestep
``t_i``; from its prediction and ``abar_prev = alpha_bar(t_{i-1})`` (``1`` before the first step)
the predicted ``x0`` and noise are formed, and the latent moves to ``t_i``:

    z_{i+1} = sqrt(abar(t_i)) * x0 + sqrt(1 - abar(t_i)) * eps

For v-prediction, ``x0 = sqrt(abar_prev) z - sqrt(1 - abar_prev) v`` and
``eps = sqrt(abar_prev) v + sqrt(1 - abar_prev) z``. This is the update of diffusers'
``DDIMInverseScheduler`` for schedules whose steps are evenly spaced by ``T // n``. Sampling is the
same move the other way: descending timesteps, from ``alpha_bar(t_i)`` to ``alpha_bar(t_{i+1})``
(``1`` after the last step).

One :class:`DDIMSchedule` holds a walk's timesteps and noise levels; :func:`ddim_walk` is the loop
over it that the grounder (:mod:`groundiff_core.engine.grounder`), the trajectory pictures
(:mod:`~groundiff_core.engine.trajectory`) and text-to-image sampling
(:mod:`~groundiff_core.engine.sampling`) share; each of them only says how the model's output at a
step is predicted.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch

from groundiff_core.engine.config import GroundingConfig
from groundiff_core.models.ldm import NoiseSchedule

__all__ = ["inversion_timesteps", "ddim_move", "DDIMSchedule", "DDIMInversion", "ddim_sampling", "ddim_walk",
           "ddim_run", "window_latents"]

Predict = Callable[[torch.Tensor, int, int], "torch.Tensor | None"]
"""``predict(z, i, t)``: the model output at step ``i`` (timestep ``t``), or None when nobody uses
the update of that step (the walk then keeps ``z``)."""


def ddim_move(z: torch.Tensor, model_output: torch.Tensor, abar_from: float, abar_to: float,
              prediction_type: str) -> torch.Tensor:
    """One deterministic DDIM move of ``z`` from noise level ``abar_from`` to ``abar_to``.

    The model's output at ``z`` (epsilon or v) gives the predicted ``x0`` and noise; the latent is
    re-noised to ``abar_to``. Towards noise (``abar_to < abar_from``) this is the inversion step, the
    other way the sampling step. Computed in ``z``'s dtype.
    """
    s_from, n_from = abar_from ** 0.5, (1.0 - abar_from) ** 0.5
    out = model_output.to(z.dtype)
    if prediction_type == "epsilon":
        eps = out
        x0 = (z - n_from * eps) / s_from
    elif prediction_type == "v_prediction":
        x0 = s_from * z - n_from * out
        eps = s_from * out + n_from * z
    else:  # pragma: no cover - NoiseSchedule validates this
        raise ValueError(f"unsupported prediction type {prediction_type!r}")
    return abar_to ** 0.5 * x0 + (1.0 - abar_to) ** 0.5 * eps


def inversion_timesteps(num_inference_steps: int, num_train_timesteps: int = 1000,
                        spacing: str = "trailing") -> np.ndarray:
    """Ascending integer timesteps of the inversion, ``int64 [N]`` (reversed, those of sampling).

    "trailing" with integer ratio ``r = T // n``: ``arange(T, 0, -r) - 1`` reversed, which gives
    ``ceil(T / r)`` steps (334 for n = 300: 0, 3, ..., 999). "leading": ``arange(n) * r``.
    "linspace": ``round(linspace(0, T - 1, n))``.
    """
    n, T = int(num_inference_steps), int(num_train_timesteps)
    if not 1 <= n <= T:
        raise ValueError(f"num_inference_steps must be between 1 and the model's {T} training steps, got {n}")
    ratio = T // n
    if spacing == "trailing":
        ts = np.arange(T, 0, -ratio, dtype=np.int64) - 1
        return ts[::-1].copy()
    if spacing == "leading":
        return np.arange(n, dtype=np.int64) * ratio
    if spacing == "linspace":
        return np.unique(np.round(np.linspace(0, T - 1, n)).astype(np.int64))
    raise ValueError(f"timestep spacing must be 'trailing', 'leading' or 'linspace', got {spacing!r}")


class DDIMSchedule:
    """A deterministic DDIM walk: the timestep the UNet sees at each step and the noise levels
    (``alpha_bar``) the latent moves between.

    Step ``i`` moves ``z`` from ``abar_from[i]`` to ``abar_to[i]`` (:func:`ddim_move`). The levels
    are Python floats taken from the float64 ``alphas_cumprod``, so the update is the same on every
    device and dtype; latents are updated in their own dtype.
    """

    def __init__(self, schedule: NoiseSchedule, timesteps: np.ndarray, direction: str):
        if direction not in ("inversion", "sampling"):
            raise ValueError(f"direction must be 'inversion' or 'sampling', got {direction!r}")
        self.prediction_type = schedule.prediction_type
        self.timesteps = np.asarray(timesteps, dtype=np.int64)
        abar = schedule.alphas_cumprod().numpy()
        levels = [float(abar[t]) for t in self.timesteps]
        if direction == "inversion":  # from the previous step's level (1 = clean) to this one's
            self._abar_from, self._abar_to = [1.0] + levels[:-1], levels
        else:  # from this step's level to the next one's (1 = clean after the last step)
            self._abar_from, self._abar_to = levels, levels[1:] + [1.0]

    def __len__(self) -> int:
        return len(self.timesteps)

    def timestep(self, i: int) -> int:
        """Timestep the UNet is given at step ``i``."""
        return int(self.timesteps[i])

    def step(self, z: torch.Tensor, model_output: torch.Tensor, i: int) -> torch.Tensor:
        """``z_{i+1}`` from ``z_i`` and the UNet's output at step ``i`` (computed in ``z``'s dtype)."""
        return ddim_move(z, model_output, self._abar_from[i], self._abar_to[i], self.prediction_type)


class DDIMInversion(DDIMSchedule):
    """The inversion schedule of one model and config (ascending timesteps, towards noise)."""

    def __init__(self, schedule: NoiseSchedule, config: GroundingConfig):
        super().__init__(schedule, inversion_timesteps(config.num_inference_steps, schedule.num_train_timesteps,
                                                       config.timestep_spacing), "inversion")


def ddim_sampling(schedule: NoiseSchedule, num_steps: int) -> DDIMSchedule:
    """The "trailing" sampling schedule of ``num_steps`` steps (descending timesteps, towards the image)."""
    return DDIMSchedule(schedule, inversion_timesteps(num_steps, schedule.num_train_timesteps)[::-1], "sampling")


def ddim_walk(schedule: DDIMSchedule, z: torch.Tensor, predict: Predict, stop: int | None = None,
              progress: str | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Run steps ``0 .. stop - 1`` (default: all) of ``schedule`` from ``z``; yield ``(i, z_{i+1})``.

    ``predict(z, i, t)`` returns the model's output for step ``i`` or None (no update needed; ``z``
    is kept). ``progress``: a tqdm bar with this description.
    """
    steps: Iterator[int] | range = range(len(schedule) if stop is None else stop)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=progress, unit="step", leave=False)
    for i in steps:
        out = predict(z, i, schedule.timestep(i))
        if out is not None:
            z = schedule.step(z, out, i)
        yield i, z


def ddim_run(schedule: DDIMSchedule, z: torch.Tensor, predict: Predict, stop: int | None = None,
             progress: str | None = None) -> torch.Tensor:
    """:func:`ddim_walk` to its end: the latent after step ``stop - 1`` (default: the last step)."""
    for _, z in ddim_walk(schedule, z, predict, stop, progress):
        pass
    return z


@torch.no_grad()
def window_latents(model, unet, schedule: DDIMSchedule, x: torch.Tensor, window: tuple[int, int],
                   count: Callable[[int], None] | None = None, progress: str | None = None) -> torch.Tensor:
    """The grounder's steps 2-3: encode prepared images ``x`` ``[B, 1, S, S]`` and invert them without
    guidance up to the window's last step; the latent the UNet sees at each step of ``window``,
    ``[stop - start, B, C, l, l]`` (float32 at least). Only the unconditional prompt runs (the
    phrases never steer the trajectory); ``unet`` is ``model.unet`` or a compiled copy of it, and
    ``count(samples)`` is told of each call."""
    dtype, work = model.dtype, torch.promote_types(model.dtype, torch.float32)
    start, stop = window
    z = model.encode_image(x).to(work)  # [B, C, l, l]
    uncond = model.encode_text([""]).expand(z.shape[0], -1, -1)
    kept = []

    def predict(z: torch.Tensor, i: int, t: int) -> torch.Tensor | None:
        if i >= start:
            kept.append(z)
        if i == stop - 1:  # the last step is only read, never moved on from
            return None
        out = unet(z.to(dtype), t, encoder_hidden_states=uncond, return_dict=False)[0]
        if count is not None:
            count(z.shape[0])
        return out.to(work)

    ddim_run(schedule, z, predict, stop, progress)
    return torch.stack(kept)
