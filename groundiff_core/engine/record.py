"""The engine's ablation record: one inversion, every layer and step, heatmaps for any setting after.

:meth:`Grounder.record <groundiff_core.engine.grounder.Grounder.record>` makes a :class:`Recording`;
:meth:`Recording.aggregate` computes heatmaps for any layer set, window and post-processing from
it without running the model again, exactly as :meth:`Grounder.ground` would have computed them
with that config. :meth:`Recording.save` and :meth:`Recording.load` keep it in one ``.npz``.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from groundiff_core.engine.aggregate import MapAccumulator, aggregate, back_project
from groundiff_core.engine.config import GroundingConfig
from groundiff_core.heatmaps import Heatmaps
from groundiff_core.io.preprocess import CropGeometry
from groundiff_core.util.fileio import atomic_write, regular_file

__all__ = ["Recording"]


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

    def resolve(self, config: GroundingConfig | None = None, **overrides: Any) -> GroundingConfig:
        """The config :meth:`aggregate` uses: ``config`` (default: the recording's) with
        :meth:`GroundingConfig.override` applied (``layers``, ``middle_layers``, ``window``,
        ``window_percent``, ``smooth``, ``otsu``); its schedule and tokens must be the recording's."""
        cfg = config or self.config
        if (cfg.num_inference_steps, cfg.timestep_spacing, cfg.tokens) != (
                self.config.num_inference_steps, self.config.timestep_spacing, self.config.tokens):
            raise ValueError("the config's schedule or token selection differs from the recording's "
                             f"({self.config.num_inference_steps} {self.config.timestep_spacing!r} steps, "
                             f"tokens {self.config.tokens!r}); record again with that config")
        return cfg.override(**overrides)

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
        raw, final = aggregate(acc, cfg, self.input_size, self.phrases)
        return back_project(final, raw if return_raw else None, [self.geometry], [self.phrases], cfg.conventions, info)[0]

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
        """Read a recording written by :meth:`save` (maps on the CPU)."""
        if Path(path).exists():  # a pipe or a device would block np.load
            regular_file(path, "recording")
        try:
            with np.load(path) as f:
                meta = json.loads(str(f["meta"]))
                maps = {int(k.split("_", 1)[1]): torch.from_numpy(f[k]) for k in f.files if k.startswith("layer_")}
                timesteps = f["timesteps"]
            window = meta["window"]
            return cls(phrases=meta["phrases"], geometry=CropGeometry(*meta["geometry"]), maps=maps,
                       window=(int(window[0]), int(window[1])), timesteps=timesteps,
                       config=GroundingConfig.from_dict(meta["config"]), input_size=meta["input_size"],
                       n_layers=meta["n_layers"], info=meta["info"])
        except FileNotFoundError:
            raise FileNotFoundError(f"recording not found: {path}") from None
        except (zipfile.BadZipFile, EOFError, KeyError, ValueError, TypeError, OSError, AttributeError) as e:
            raise ValueError(f"{path} is not a recording written by Recording.save (or it is truncated): "
                             f"{type(e).__name__}: {e}") from None
