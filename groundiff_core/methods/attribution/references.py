"""Reference ("baseline") images that integrated gradients, GradientSHAP and occlusion start from.

The blurred reference uses :func:`gaussian_blur`, which follows the engine's smoothing rule
(:func:`groundiff_core.engine.aggregate.gaussian_smooth`, SciPy's ``gaussian_filter``): kernel
radius ``int(4 * sigma + 0.5)``, weights ``exp(-x^2 / 2 sigma^2)`` normalised to sum 1. It runs in
torch on the image's device. Its border mode is whole-sample reflection (``d c b | a b c d``),
SciPy's ``mode="mirror"``; the engine uses SciPy's default ``"reflect"`` (``c b a | a b c d``), so
the two agree exactly away from the border (more than the radius from it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["BASELINES", "gaussian_blur", "make_baseline"]

BASELINES = ("black", "blur", "mean")


def _mirror_index(n: int, r: int, device: torch.device) -> torch.Tensor:
    """Indices ``-r .. n-1+r`` folded into ``0 .. n-1`` by whole-sample reflection (any ``r``)."""
    i = torch.arange(-r, n + r, device=device)
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    i = i.remainder(period)
    return torch.where(i >= n, period - i, i)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[B, C, H, W]`` over the last two axes, same shape and dtype.

    ``sigma`` in pixels (> 0); radius ``int(4 * sigma + 0.5)`` as SciPy's default truncation;
    mirror borders (see the module docstring). Equals ``scipy.ndimage.gaussian_filter(image,
    sigma, mode="mirror")`` on each ``[H, W]`` image up to float32 rounding.
    """
    if x.ndim != 4:
        raise ValueError(f"gaussian_blur takes [B, C, H, W], got shape {tuple(x.shape)}")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    r = int(4.0 * float(sigma) + 0.5)
    if r == 0:
        return x.clone()
    k = torch.arange(-r, r + 1, device=x.device, dtype=torch.float64)
    k = torch.exp(-0.5 * (k / float(sigma)) ** 2)
    k = (k / k.sum()).to(x.dtype)
    C, H, W = x.shape[1], x.shape[-2], x.shape[-1]
    y = x.index_select(-1, _mirror_index(W, r, x.device))
    y = F.conv2d(y, k.view(1, 1, 1, -1).repeat(C, 1, 1, 1), groups=C)
    y = y.index_select(-2, _mirror_index(H, r, x.device))
    return F.conv2d(y, k.view(1, 1, -1, 1).repeat(C, 1, 1, 1), groups=C)


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
        return gaussian_blur(x01, max(float(blur_frac) * x01.shape[-1], 0.5))
    raise ValueError(f"baseline must be one of {BASELINES}, got {kind!r}")
