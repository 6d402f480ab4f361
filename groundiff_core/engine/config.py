"""The grounding method's settings as one frozen dataclass, with the paper's preset.

Every choice of the paper's Algorithm 1 (see ``METHOD.md``) is a field of :class:`GroundingConfig`:
the inversion schedule, the window of inversion steps whose attention is read, the cross-attention
layers, the phrase tokens, per-map normalisation, resize, smoothing, Otsu and the guidance scale.

Conventions
-----------
* **Steps** are indices into the inversion trajectory, ``0`` being the first (least noisy) step.
  The paper's schedule (300 inference steps, "trailing", integer ratio ``1000 // 300 = 3``) has
  334 steps with timesteps ``0, 3, ..., 999``; its window is steps ``[120, 180)`` (t = 360..537).
* **Layers** are indices of the UNet's cross-attention layers in *execution* order (down blocks,
  middle block, up blocks); the paper reads layers 3, 4, 6, 7 of its 11.
* **Ablation vocabulary.** "The L middle layers" of a model with ``n`` cross-attention layers are
  the contiguous block ``start .. start + L - 1`` with ``start = (n - L) // 2``. For odd ``n - L``
  (an even L on the paper's 11-layer UNet) the block leans one layer towards the down (encoder)
  side: L = 6 gives layers 2..7 (the six deepest-resolution layers), L = 4 gives 3..6, L = 1 gives
  the middle layer 5. "A window of T % of the steps centred on the middle" uses the paper's own
  formula on the nominal number of inference steps ``n`` (300, not the 334 trajectory steps):
  width ``w = round(n * T / 100)`` (at least 1), ``start = n // 2 - w // 2``, steps
  ``[start, start + w)``; T = 20 gives the paper's ``[120, 180)``.
"""

from __future__ import annotations

import math
import numbers
import operator
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Sequence

from groundiff_core.conventions import check_conventions

__all__ = ["GroundingConfig", "middle_layers", "window_from_percent", "parse_layers", "parse_bool", "SPACINGS",
           "TOKEN_SELECTIONS", "PRESETS"]

SPACINGS = ("trailing", "leading", "linspace")
TOKEN_SELECTIONS = ("phrase",)
NORMALISATIONS = ("minmax", "none")
#: Nominal inference steps of :meth:`GroundingConfig.fast` (the paper's 300 / 3).
FAST_STEPS = 100
#: The largest classifier-free guidance a config accepts (the paper runs 0).
MAX_GUIDANCE = 100.0
#: Named presets, as the command line's ``--preset`` offers them.
PRESETS = ("paper", "fast")
RESIZE_MODES = ("bilinear",)


def middle_layers(count: int, n_layers: int) -> tuple[int, ...]:
    """Indices of the ``count`` middle cross-attention layers of a model with ``n_layers``.

    ``start = (n_layers - count) // 2``; see the module docstring for how an even count is centred.
    """
    if not 1 <= count <= n_layers:
        raise ValueError(f"the number of middle layers must be between 1 and {n_layers} "
                         f"(the model's cross-attention layers), got {count}")
    start = (n_layers - count) // 2
    return tuple(range(start, start + count))


def parse_layers(layers: str | int | Sequence[int]) -> tuple[int, ...]:
    """Layer indices from a sequence of integers, one integer, or a comma-separated string.

    A string is always a comma-separated list: ``"3,4,6,7"`` is four layers and ``"34"`` is layer 34
    (never layers 3 and 4, which iterating over the string's characters would give).
    """
    if isinstance(layers, str):
        parts = [p.strip() for p in layers.split(",")]
        if not all(p.lstrip("-").isdigit() for p in parts):
            raise ValueError(f"layers must be comma-separated integers, e.g. '3,4,6,7'; got {layers!r}")
        return tuple(int(p) for p in parts)
    if isinstance(layers, int) and not isinstance(layers, bool):
        return (layers,)
    try:
        items = list(layers)
    except TypeError:
        raise ValueError(f"layers must be integers (a list, one integer or '3,4,6,7'), got {layers!r}") from None
    out = []
    for v in items:
        try:
            if isinstance(v, bool):
                raise TypeError
            out.append(operator.index(v))  # ints and numpy integers; not 3.7, not "3"
        except TypeError:
            raise ValueError(f"layer indices must be integers, got {v!r} in {layers!r}") from None
    return tuple(out)


def parse_bool(value: Any, what: str) -> bool:
    """A strict boolean: ``True``/``False`` or the words yes/no/true/false/on/off/1/0 (any case).

    Anything else is refused, so that a string such as ``"no"`` can never count as true.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("yes", "true", "on", "1"):
            return True
        if word in ("no", "false", "off", "0"):
            return False
    raise ValueError(f"{what} must be a boolean (yes/no, true/false), got {value!r}")


def whole(value: Any, what: str) -> int:
    """``value`` as an int if it is a whole number (an int, a numpy integer, or a float such as 3.0);
    anything else (2.5, True, "3") is refused naming ``what``: a float is never truncated silently."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{what} must be a whole number, got {value!r}")
    if isinstance(value, numbers.Integral):
        return int(value)
    if not math.isfinite(value) or not float(value).is_integer():
        raise ValueError(f"{what} must be a whole number, got {value!r}")
    return int(value)


def window_from_percent(percent: float, num_inference_steps: int) -> tuple[int, int]:
    """Steps ``[start, stop)`` of a window of ``percent`` % of ``num_inference_steps`` around the middle."""
    if isinstance(percent, bool) or not isinstance(percent, numbers.Real) or not math.isfinite(percent):
        raise ValueError(f"window percent must be a number in (0, 100], got {percent!r}")
    if not (0 < percent <= 100):
        raise ValueError(f"window percent must be in (0, 100], got {percent}")
    width = max(1, int(round(num_inference_steps * percent / 100.0)))
    start = num_inference_steps // 2 - width // 2
    return start, start + width


@dataclass(frozen=True)
class GroundingConfig:
    """Settings of the cross-attention grounding method (defaults: the paper's preset).

    Attributes
    ----------
    num_inference_steps : nominal number of DDIM inference steps ``n`` (300)
    timestep_spacing : "trailing" (paper: ``arange(T, 0, -T // n) - 1``, 334 steps for n = 300),
        "leading" (``arange(n) * (T // n)``) or "linspace" (``round(linspace(0, T - 1, n))``)
    window : inversion steps ``[start, stop)`` whose attention is read (paper: (120, 180))
    layers : cross-attention layer indices in execution order (paper: (3, 4, 6, 7)); ``None`` when
        ``n_middle_layers`` is used instead
    n_middle_layers : read the L middle layers (resolved against the model at ground time)
    tokens : "phrase" = tokens 1..len-2 of the tokenised phrase (between start and end tokens,
        paper); "token:i" reads the single token at
        position i (1 = the first token after the start token), for per-token maps
    normalize : "minmax" = each step's map of each layer scaled to [0, 1] over space (paper); "none"
    resize : interpolation from a layer's native resolution to the model's input size ("bilinear")
    sigma_fraction : Gaussian sigma as a fraction of the input size (paper: 2.5 / 512); ``None`` or
        0 disables smoothing
    otsu : multiply the (smoothed, min-max normalised) map by its Otsu mask (paper: True)
    guidance_scale : classifier-free guidance of the inversion (paper: 0, the trajectory follows the
        unconditional branch only and one trajectory serves every phrase of an image)
    conventions : "paper" (default) or "strict": the resize rounding, the back-projection to the
        original grid and the Otsu variant (see :mod:`groundiff_core.conventions`)
    """

    num_inference_steps: int = 300
    timestep_spacing: str = "trailing"
    window: tuple[int, int] = (120, 180)
    layers: tuple[int, ...] | None = (3, 4, 6, 7)
    n_middle_layers: int | None = None
    tokens: str = "phrase"
    normalize: str = "minmax"
    resize: str = "bilinear"
    sigma_fraction: float | None = 2.5 / 512
    otsu: bool = True
    guidance_scale: float = 0.0
    conventions: str = "paper"

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        n = self.num_inference_steps
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"num_inference_steps must be a positive integer, got {n!r}")
        _one_of("timestep_spacing", self.timestep_spacing, SPACINGS)
        if not (isinstance(self.tokens, str) and self.tokens.startswith("token:")
                and self.tokens[6:].isdigit() and int(self.tokens[6:]) >= 1):
            _one_of("tokens", self.tokens, TOKEN_SELECTIONS)
        _one_of("normalize", self.normalize, NORMALISATIONS)
        _one_of("resize", self.resize, RESIZE_MODES)
        try:
            start, stop = (int(v) for v in self.window)
        except (TypeError, ValueError):
            raise ValueError(f"window must be a pair of step indices (start, stop), got {self.window!r}") from None
        if not 0 <= start < stop:
            raise ValueError(f"window must satisfy 0 <= start < stop (steps [start, stop)), got {self.window!r}")
        object.__setattr__(self, "window", (start, stop))
        if (self.layers is None) == (self.n_middle_layers is None):
            raise ValueError("give exactly one of layers (explicit indices) and n_middle_layers (the L middle layers)")
        if self.layers is not None:
            layers = parse_layers(self.layers)
            if not layers:
                raise ValueError("layers must name at least one cross-attention layer")
            if min(layers) < 0:
                raise ValueError(f"layer indices must be >= 0 (execution order), got {layers}")
            if len(set(layers)) != len(layers):
                raise ValueError(f"layer indices must be distinct, got {layers}")
            object.__setattr__(self, "layers", tuple(sorted(layers)))
        elif isinstance(self.n_middle_layers, bool) or not isinstance(self.n_middle_layers, int) \
                or self.n_middle_layers < 1:
            raise ValueError(f"n_middle_layers must be an integer >= 1, got {self.n_middle_layers!r}")
        s = self.sigma_fraction
        if s is not None and (isinstance(s, bool) or not isinstance(s, numbers.Real)
                              or not (math.isfinite(s) and 0 <= s <= 1)):
            # sigma = sigma_fraction * input size: a sigma wider than the image is no smoothing any
            # more, and a huge one makes scipy build a kernel that exhausts memory
            raise ValueError(f"sigma_fraction must be a number in [0, 1] (the Gaussian's sigma as a share of the "
                             f"input size; the paper's is 2.5 / 512) or None, got {s!r}")
        if not isinstance(self.otsu, bool):
            raise ValueError(f"otsu must be True or False, got {self.otsu!r}")
        g = self.guidance_scale
        if isinstance(g, bool) or not isinstance(g, numbers.Real) or not (math.isfinite(g) and 0 <= g <= MAX_GUIDANCE):
            # beyond a few tens the guided trajectory leaves the model's range and every map is zero
            raise ValueError(f"guidance_scale must be a finite number in [0, {MAX_GUIDANCE:g}] (the paper's is 0), got {g!r}")
        check_conventions(self.conventions)

    # ------------------------------------------------------------------ presets and helpers
    @classmethod
    def paper(cls) -> "GroundingConfig":
        """The paper's settings (METHOD.md): 334 trailing steps, window [120, 180), layers 3, 4, 6, 7."""
        return cls()

    @classmethod
    def fast(cls) -> "GroundingConfig":
        """The paper's preset on a 3x shorter inversion: 100 nominal trailing steps (100 steps,
        t = 9, 19, ..., 999), the window at the paper's place and width as a share of the steps,
        ``[40, 60)`` (the paper's ``n/2 - n/10 .. n/2 + n/10`` with n = 100, t = 409..599), the same
        layers 3, 4, 6, 7 and post-processing. Per image and K phrases it costs ``59 + 20 K`` sample
        evaluations against the paper's ``179 + 60 K``. Its accuracy was measured on the phantom
        only (the book's ablation page); compare the two presets on your own pairs before relying on it."""
        return cls.paper().with_steps(FAST_STEPS)

    def with_layers(self, layers: Sequence[int] | int | str) -> "GroundingConfig":
        """The same settings reading the given layer indices (execution order); a string is a
        comma-separated list (see :func:`parse_layers`)."""
        return replace(self, layers=parse_layers(layers), n_middle_layers=None)

    def with_middle_layers(self, count: int) -> "GroundingConfig":
        """The same settings reading the ``count`` middle cross-attention layers of the model."""
        return replace(self, layers=None, n_middle_layers=whole(count, "the number of middle layers"))

    def with_window(self, start: int, stop: int) -> "GroundingConfig":
        """The same settings reading inversion steps ``[start, stop)``."""
        return replace(self, window=(whole(start, "the window's start"), whole(stop, "the window's stop")))

    def with_window_percent(self, percent: float) -> "GroundingConfig":
        """The same settings reading a window of ``percent`` % of the steps centred on the middle."""
        return replace(self, window=window_from_percent(percent, self.num_inference_steps))

    def with_steps(self, num_inference_steps: int) -> "GroundingConfig":
        """Another number of inference steps; the window keeps its position and width as a share
        of the steps (the paper's [120, 180) of 300 becomes [12, 18) of 30)."""
        n_old, n = self.num_inference_steps, whole(num_inference_steps, "num_inference_steps")
        if n < 1:
            raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps}")
        start, stop = self.window
        new_start = int(round(start * n / n_old))
        width = max(1, int(round((stop - start) * n / n_old)))
        return replace(self, num_inference_steps=n, window=(new_start, new_start + width))

    def override(self, *, steps: int | None = None, layers: Sequence[int] | str | None = None,
                 middle_layers: int | None = None, window: tuple[int, int] | None = None,
                 window_percent: float | None = None, smooth: bool | float | None = None,
                 otsu: bool | None = None, conventions: str | None = None) -> "GroundingConfig":
        """These settings with the given ones changed (``None``: unchanged), in this order: steps,
        layers (explicit, or the ``middle_layers`` middle ones), window (steps ``[start, stop)``,
        or ``window_percent`` % centred), ``smooth`` (True: as now, False: none, a number: sigma
        as a share of the input size), ``otsu``, ``conventions``. The one place variants of a
        config are made: :meth:`Recording.aggregate <groundiff_core.engine.record.Recording.aggregate>`
        and the command line's options both call it."""
        if layers is not None and middle_layers is not None:
            raise ValueError("give layers or middle_layers, not both")
        if window is not None and window_percent is not None:
            raise ValueError("give window or window_percent, not both")
        cfg = self
        if steps is not None:
            cfg = cfg.with_steps(steps)
        if layers is not None:
            cfg = cfg.with_layers(layers)
        if middle_layers is not None:
            cfg = cfg.with_middle_layers(middle_layers)
        if window is not None:
            cfg = cfg.with_window(*window)
        if window_percent is not None:
            cfg = cfg.with_window_percent(window_percent)
        if smooth is not None and smooth is not True:
            if smooth is not False and (isinstance(smooth, bool) or not isinstance(smooth, (int, float))
                                        or not 0 <= smooth <= 1):
                raise ValueError(f"smooth must be True, False or a number in [0, 1] (sigma as a share of the "
                                 f"input size), got {smooth!r}")
            cfg = replace(cfg, sigma_fraction=None if smooth is False else float(smooth))
        if otsu is not None:
            cfg = replace(cfg, otsu=parse_bool(otsu, "otsu"))
        if conventions is not None:
            cfg = replace(cfg, conventions=conventions)
        return cfg

    # ------------------------------------------------------------------ resolution against a model
    @classmethod
    def preset(cls, name: str) -> "GroundingConfig":
        """A named preset: ``"paper"`` or ``"fast"`` (:data:`PRESETS`)."""
        _one_of("preset", name, PRESETS)
        return cls.paper() if name == "paper" else cls.fast()

    def resolve_layers(self, n_layers: int) -> tuple[int, ...]:
        """Layer indices for a model with ``n_layers`` cross-attention layers (checked)."""
        if self.layers is None:
            return middle_layers(int(self.n_middle_layers), n_layers)
        bad = [i for i in self.layers if i >= n_layers]
        if bad:
            raise ValueError(f"layer indices {bad} are out of range: the model has {n_layers} cross-attention "
                             f"layers, numbered 0..{n_layers - 1} in execution order")
        return self.layers

    def resolve_window(self, n_steps: int) -> tuple[int, int]:
        """The window ``[start, stop)`` for a trajectory of ``n_steps`` steps (checked)."""
        start, stop = self.window
        if stop > n_steps:
            raise ValueError(f"window steps [{start}, {stop}) are out of range: the inversion has {n_steps} steps "
                             f"(0..{n_steps - 1}) with {self.num_inference_steps} inference steps, "
                             f"{self.timestep_spacing!r} spacing")
        return start, stop

    def sigma_pixels(self, size: int) -> float:
        """Gaussian sigma in pixels at input size ``size`` (2.5 at 512 for the paper); 0 = no smoothing."""
        return float(self.sigma_fraction or 0.0) * size

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields (tuples as lists)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GroundingConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown GroundingConfig fields {unknown}; allowed: {sorted(names)}")
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()}
        return cls(**kw)


def _one_of(name: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
