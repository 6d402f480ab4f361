"""The result types every grounding method shares, and the verb they all answer.

* :class:`Heatmaps` - what ``method.ground(image, phrases)`` returns, whatever the method;
* :class:`Recording` - the cross-attention engine's ablation record (one inversion, every layer
  and step), from which :meth:`Recording.aggregate` computes heatmaps for any layer set, window
  and post-processing without running the model again;
* :class:`GroundingMethod` - the protocol of a grounding method (``ground`` and ``describe``), so
  notebooks and the evaluation runner treat the engine, the baselines and the Captum methods alike.

The engine's aggregation is imported inside :meth:`Recording.aggregate` (not at module level), so
that :mod:`groundiff_core.engine.aggregate` can build :class:`Heatmaps` without an import cycle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from groundiff_core.engine.config import GroundingConfig, window_from_percent
from groundiff_core.io.preprocess import CropGeometry

__all__ = ["Heatmaps", "Recording", "GroundingMethod"]


@dataclass
class Heatmaps:
    """Heatmaps of K phrases on one image: the result every grounding method returns.

    Attributes
    ----------
    heatmaps : float32 ``[K, H, W]`` on the original image grid, NaN outside the model's crop
    phrases : the K phrases, in order
    geometry : how the original image maps onto the model's ``S x S`` input; None for methods that
        work on the original grid directly (the baselines)
    raw : optional float32 ``[K, S, S]`` on the model grid: the mean attention map before
        post-processing (smoothing, normalisation, Otsu)
    model_maps : optional float32 ``[K, S, S]``: the final maps on the model grid
    info : method, model and settings that produced the maps (JSON-able)
    """

    heatmaps: np.ndarray
    phrases: list[str]
    geometry: CropGeometry | None
    raw: np.ndarray | None = None
    model_maps: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.phrases)

    def __getitem__(self, key: int | str) -> np.ndarray:
        """The ``[H, W]`` heatmap of phrase number ``key`` or of the phrase ``key``."""
        if isinstance(key, str):
            if key not in self.phrases:
                raise KeyError(f"no heatmap for phrase {key!r}; phrases: {self.phrases}")
            key = self.phrases.index(key)
        return self.heatmaps[key]


@runtime_checkable
class GroundingMethod(Protocol):
    """What every grounding method answers (the engine's ``Grounder``, the baselines, Captum).

    ``ground(image, phrases)`` takes anything :func:`~groundiff_core.io.images.load_image` reads
    and K phrases (a single string is one phrase) and returns :class:`Heatmaps` of K maps on the
    original image grid. ``describe()`` is the method's JSON-able identity: its name under
    ``"method"`` and every setting that changes the maps (the evaluation runner completes it with
    the model's identity and the class name, see ``groundiff_core.evaluation.method_identity``).

    Optional: ``ground_batch(images, phrases_per_image) -> list[Heatmaps]`` for methods that gain
    from batching several images; callers look it up with ``getattr`` and fall back to ``ground``.
    """

    def ground(self, image: Any, phrases: Sequence[str] | str) -> Heatmaps:
        ...

    def describe(self) -> dict:
        ...


@dataclass
class Recording:
    """Everything needed to compute heatmaps for any layers/window after ONE inversion.

    Attributes
    ----------
    phrases : the K phrases
    geometry : crop geometry of the image
    maps : layer index -> float32 ``[n_steps, K, h, w]``: per recorded step, the attention of each
        phrase averaged over its tokens and over heads, at the layer's native resolution, not
        normalised (on the device it was recorded on; :meth:`to` moves it)
    window : the recorded inversion steps ``[start, stop)``
    timesteps : int64 ``[n_steps]`` timesteps of the recorded steps
    config : settings at record time (schedule and token selection are fixed by the recording;
        layers, window and post-processing are defaults for :meth:`aggregate`)
    input_size : the model's input size ``S``
    n_layers : number of cross-attention layers of the model
    info : model identity and the like
    """

    phrases: list[str]
    geometry: CropGeometry
    maps: dict[int, torch.Tensor]
    window: tuple[int, int]
    timesteps: np.ndarray
    config: GroundingConfig
    input_size: int
    n_layers: int
    info: dict = field(default_factory=dict)

    def resolve(self, config: GroundingConfig | None = None, *, layers: Sequence[int] | None = None,
                middle_layers: int | None = None, window: tuple[int, int] | None = None,
                window_percent: float | None = None, smooth: bool | float | None = None,
                otsu: bool | None = None) -> GroundingConfig:
        """The config :meth:`aggregate` uses: ``config`` (default: the recording's) with overrides."""
        cfg = config or self.config
        if (cfg.num_inference_steps, cfg.timestep_spacing, cfg.tokens) != (
                self.config.num_inference_steps, self.config.timestep_spacing, self.config.tokens):
            raise ValueError("the config's schedule or token selection differs from the recording's "
                             f"({self.config.num_inference_steps} {self.config.timestep_spacing!r} steps, "
                             f"tokens {self.config.tokens!r}); record again with that config")
        if layers is not None and middle_layers is not None:
            raise ValueError("give layers or middle_layers, not both")
        if window is not None and window_percent is not None:
            raise ValueError("give window or window_percent, not both")
        if layers is not None:
            cfg = cfg.with_layers(layers)
        if middle_layers is not None:
            cfg = cfg.with_middle_layers(middle_layers)
        if window is not None:
            cfg = cfg.with_window(*window)
        if window_percent is not None:
            cfg = cfg.with_window(*window_from_percent(window_percent, cfg.num_inference_steps))
        if smooth is not None and smooth is not True:
            if smooth is not False and (isinstance(smooth, bool) or not isinstance(smooth, (int, float))
                                        or not 0 <= smooth <= 1):
                raise ValueError(f"smooth must be True, False or a number in [0, 1] (sigma as a share of the "
                                 f"input size), got {smooth!r}")
            cfg = replace(cfg, sigma_fraction=None if smooth is False else float(smooth))
        if otsu is not None:
            from groundiff_core.engine.config import parse_bool

            cfg = replace(cfg, otsu=parse_bool(otsu, "otsu"))
        return cfg

    def aggregate(self, layers: Sequence[int] | None = None, window: tuple[int, int] | None = None, *,
                  middle_layers: int | None = None, window_percent: float | None = None,
                  smooth: bool | float | None = None, otsu: bool | None = None,
                  config: GroundingConfig | None = None, return_raw: bool = False) -> Heatmaps:
        """Heatmaps for a layer set and window, computed from the recording (no model call).

        ``layers``: explicit indices, or ``middle_layers=L``; ``window``: steps ``[start, stop)``,
        or ``window_percent=T``; ``smooth``: True = the config's sigma, False = none, a float =
        sigma as a fraction of the input size; ``otsu``: on/off. Unset arguments come from
        ``config`` (default: the config at record time). Equal to ``Grounder.ground`` with that config.
        """
        from groundiff_core.engine.aggregate import MapAccumulator, to_heatmaps

        cfg = self.resolve(config, layers=layers, middle_layers=middle_layers, window=window,
                           window_percent=window_percent, smooth=smooth, otsu=otsu)
        chosen = cfg.resolve_layers(self.n_layers)
        start, stop = cfg.window
        r0, r1 = self.window
        if start < r0 or stop > r1:
            raise ValueError(f"window steps [{start}, {stop}) were not recorded; "
                             f"the recording holds steps [{r0}, {r1})")
        missing = [i for i in chosen if i not in self.maps]
        if missing:
            raise ValueError(f"layers {missing} were not recorded; recorded layers: {sorted(self.maps)}")
        acc = MapAccumulator(cfg.normalize)
        for step in range(start - r0, stop - r0):
            for layer in chosen:
                acc.add(layer, self.maps[layer][step])
        info = {**self.info, "config": cfg.to_dict(), "layers": list(chosen), "window": [start, stop]}
        return to_heatmaps(acc, cfg, self.input_size, [self.geometry], [self.phrases], return_raw, info)[0]

    def layer_maps(self, layer: int, step: int) -> np.ndarray:
        """Float32 ``[K, h, w]``: token-averaged attention of ``layer`` at inversion step ``step``."""
        r0, r1 = self.window
        if layer not in self.maps or not r0 <= step < r1:
            raise ValueError(f"layer {layer}, step {step} not recorded "
                             f"(layers {sorted(self.maps)}, steps [{r0}, {r1}))")
        return self.maps[layer][step - r0].float().cpu().numpy()

    def to(self, device: str | torch.device) -> "Recording":
        """A copy with the maps on ``device`` (e.g. ``"cpu"`` to keep many recordings)."""
        return replace(self, maps={k: v.to(device) for k, v in self.maps.items()})

    def save(self, path: str | Path) -> Path:
        """Write the recording to one NumPy ``.npz`` archive (maps as float32) at exactly ``path``
        (no suffix is added), atomically: an interrupted save leaves any earlier file whole."""
        import io

        from groundiff_core.util.fileio import atomic_write

        arrays = {f"layer_{k}": v.float().cpu().numpy() for k, v in self.maps.items()}
        g = self.geometry
        meta = {"phrases": self.phrases, "geometry": [g.height, g.width, g.size, g.conventions],
                "window": list(self.window), "config": self.config.to_dict(), "input_size": self.input_size,
                "n_layers": self.n_layers, "info": self.info}
        buf = io.BytesIO()
        np.savez_compressed(buf, timesteps=self.timesteps, meta=np.array(json.dumps(meta)), **arrays)
        atomic_write(path, buf.getvalue())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "Recording":
        """Read a recording written by :meth:`save` (maps on the CPU); files of older versions,
        which stored the window under ``"steps"``, read the same."""
        import zipfile

        from groundiff_core.util.fileio import regular_file

        if Path(path).exists():  # a pipe or a device would block np.load
            regular_file(path, "recording")
        try:
            with np.load(path) as f:
                meta = json.loads(str(f["meta"]))
                maps = {int(k.split("_", 1)[1]): torch.from_numpy(f[k]) for k in f.files if k.startswith("layer_")}
                timesteps = f["timesteps"]
            window = meta["window"] if "window" in meta else meta["steps"]
            return cls(phrases=meta["phrases"], geometry=CropGeometry(*meta["geometry"]), maps=maps,
                       window=(int(window[0]), int(window[1])), timesteps=timesteps,
                       config=GroundingConfig.from_dict(meta["config"]), input_size=meta["input_size"],
                       n_layers=meta["n_layers"], info=meta["info"])
        except FileNotFoundError:
            raise FileNotFoundError(f"recording not found: {path}") from None
        except (zipfile.BadZipFile, EOFError, KeyError, ValueError, TypeError, OSError, AttributeError) as e:
            raise ValueError(f"{path} is not a recording written by Recording.save (or it is truncated): "
                             f"{type(e).__name__}: {e}") from None
