"""Deterministic DDIM inversion: the timestep schedule and the update from one step to the next.

The inversion walks the timesteps in ascending order ``t_0 < t_1 < ... < t_{N-1}``. At step ``i``
the UNet sees the current latent ``z_i`` (at the noise level of ``t_{i-1}``) and the target timestep
``t_i``; from its prediction and ``abar_prev = alpha_bar(t_{i-1})`` (``1`` before the first step)
the predicted ``x0`` and noise are formed, and the latent moves to ``t_i``:

    z_{i+1} = sqrt(abar(t_i)) * x0 + sqrt(1 - abar(t_i)) * eps

For v-prediction, ``x0 = sqrt(abar_prev) z - sqrt(1 - abar_prev) v`` and
``eps = sqrt(abar_prev) v + sqrt(1 - abar_prev) z``. This is the update of diffusers'
``DDIMInverseScheduler`` for schedules whose steps are evenly spaced by ``T // n``. This module
only does the arithmetic; :mod:`groundiff_core.engine.grounder` owns the loop and the UNet calls.
"""

from __future__ import annotations

import numpy as np
import torch

from groundiff_core.engine.config import GroundingConfig
from groundiff_core.models.ldm import NoiseSchedule

__all__ = ["inversion_timesteps", "ddim_move", "DDIMInversion"]


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
    """Ascending integer timesteps of the inversion, ``int64 [N]``.

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


class DDIMInversion:
    """The inversion schedule of one model and config: timesteps and the per-step update.

    ``alphas`` are kept in float64 and applied as Python floats, so the update is the same on every
    device and dtype; latents are updated in their own dtype (float32, or float64 for a float64
    model).
    """

    def __init__(self, schedule: NoiseSchedule, config: GroundingConfig):
        self.prediction_type = schedule.prediction_type
        self.timesteps = inversion_timesteps(config.num_inference_steps, schedule.num_train_timesteps,
                                             config.timestep_spacing)
        abar = schedule.alphas_cumprod().numpy()
        self._abar_t = [float(abar[t]) for t in self.timesteps]
        self._abar_prev = [1.0] + self._abar_t[:-1]

    def __len__(self) -> int:
        return len(self.timesteps)

    def timestep(self, i: int) -> int:
        """Timestep the UNet is given at step ``i``."""
        return int(self.timesteps[i])

    def step(self, z: torch.Tensor, model_output: torch.Tensor, i: int) -> torch.Tensor:
        """``z_{i+1}`` from ``z_i`` and the UNet's output at step ``i`` (computed in ``z``'s dtype)."""
        return ddim_move(z, model_output, self._abar_prev[i], self._abar_t[i], self.prediction_type)
