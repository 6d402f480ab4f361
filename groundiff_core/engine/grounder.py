"""The grounding engine: image + phrases -> heatmaps on the original image grid (Algorithm 1).

:class:`Grounder` runs the paper's method with the work it does not need left out:

* one DDIM inversion per image serves all its phrases (with guidance 0 the trajectory follows the
  unconditional branch only), and images are inverted in batches;
* the conditional branch runs only inside the window, batched over the phrases (and the images of
  a batch), and only as far as the last recorded cross-attention layer: its prediction is never
  used, so the rest of the UNet is skipped (:meth:`AttentionRecorder.read`); the unconditional
  rows, which drive the inversion, run the whole UNet in a call of their own;
* the inversion stops after the last step that is read (its last call is conditional only);
* attention is read only at the selected layers and reduced on the fly to one running sum per
  layer (:class:`~groundiff_core.engine.aggregate.MapAccumulator`), so memory does not grow with the
  number of steps.

Sample evaluations per image with the paper's preset and K phrases: ``179 + 60 K``, of which the
``60 K`` conditional ones stop after layer 7 of 11 (the 32x32 and 64x64 up blocks of the paper's
UNet are skipped). With a non-zero ``guidance_scale`` each phrase needs its own trajectory and both branches run at
every step (``2 K stop - K``).

:meth:`Grounder.record` is the ablation mode: one inversion keeps, for every cross-attention layer
and every recorded step, the token-averaged map of each phrase at the layer's native resolution; a
:class:`Recording` then yields heatmaps for any layer set, window and post-processing, exactly as
:meth:`Grounder.ground` would have computed them.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from groundiff_core.engine.aggregate import MapAccumulator, postprocess, token_weights
from groundiff_core.engine.config import GroundingConfig, window_from_percent
from groundiff_core.io.images import ImageInput, load_image
from groundiff_core.engine.inversion import DDIMInversion
from groundiff_core.engine.layers import CrossAttentionLayer, cross_attention_layers
from groundiff_core.models.ldm import LDM
from groundiff_core.io.preprocess import CropGeometry, prepare_image
from groundiff_core.engine.recording import AttentionRecorder

__all__ = ["Grounder", "Heatmaps", "Recording"]


# ====================================================================== results
@dataclass
class Heatmaps:
    """Heatmaps of K phrases on one image: the result every grounding method returns.

    Attributes
    ----------
    heatmaps : float32 ``[K, H, W]`` on the original image grid, NaN outside the model's crop
    phrases : the K phrases, in order
    geometry : how the original image maps onto the model's ``S x S`` input
    raw : optional float32 ``[K, S, S]`` on the model grid: the mean attention map before
        post-processing (smoothing, normalisation, Otsu)
    model_maps : optional float32 ``[K, S, S]``: the final maps on the model grid
    info : method, model and settings that produced the maps (JSON-able)
    """

    heatmaps: np.ndarray
    phrases: list[str]
    geometry: CropGeometry
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
    steps : the recorded inversion steps ``[start, stop)``
    timesteps : int64 ``[n_steps]`` timesteps of the recorded steps
    config : settings at record time (schedule and token selection are fixed by the recording;
        layers, window and post-processing are defaults for :meth:`heatmaps`)
    input_size : the model's input size ``S``
    n_layers : number of cross-attention layers of the model
    info : model identity and the like
    """

    phrases: list[str]
    geometry: CropGeometry
    maps: dict[int, torch.Tensor]
    steps: tuple[int, int]
    timesteps: np.ndarray
    config: GroundingConfig
    input_size: int
    n_layers: int
    info: dict = field(default_factory=dict)

    def resolve(self, config: GroundingConfig | None = None, *, layers: Sequence[int] | None = None,
                middle_layers: int | None = None, steps: tuple[int, int] | None = None,
                window_percent: float | None = None, smooth: bool | float | None = None,
                otsu: bool | None = None) -> GroundingConfig:
        """The config :meth:`heatmaps` uses: ``config`` (default: the recording's) with overrides."""
        cfg = config or self.config
        if (cfg.num_inference_steps, cfg.timestep_spacing, cfg.tokens) != (
                self.config.num_inference_steps, self.config.timestep_spacing, self.config.tokens):
            raise ValueError("the config's schedule or token selection differs from the recording's "
                             f"({self.config.num_inference_steps} {self.config.timestep_spacing!r} steps, "
                             f"tokens {self.config.tokens!r}); record again with that config")
        if layers is not None and middle_layers is not None:
            raise ValueError("give layers or middle_layers, not both")
        if steps is not None and window_percent is not None:
            raise ValueError("give steps or window_percent, not both")
        if layers is not None:
            cfg = cfg.with_layers(layers)
        if middle_layers is not None:
            cfg = cfg.with_middle_layers(middle_layers)
        if steps is not None:
            cfg = cfg.with_window(*steps)
        if window_percent is not None:
            cfg = cfg.with_window(*window_from_percent(window_percent, cfg.num_inference_steps))
        if smooth is not None and smooth is not True:
            cfg = replace(cfg, sigma_fraction=None if smooth is False else float(smooth))
        if otsu is not None:
            cfg = replace(cfg, otsu=bool(otsu))
        return cfg

    def heatmaps(self, layers: Sequence[int] | None = None, steps: tuple[int, int] | None = None, *,
                 middle_layers: int | None = None, window_percent: float | None = None,
                 smooth: bool | float | None = None, otsu: bool | None = None,
                 config: GroundingConfig | None = None, return_raw: bool = False) -> Heatmaps:
        """Heatmaps for a layer set and window, computed from the recording (no model call).

        ``layers``: explicit indices, or ``middle_layers=L``; ``steps``: window ``[start, stop)``, or
        ``window_percent=T``; ``smooth``: True = the config's sigma, False = none, a float = sigma as
        a fraction of the input size; ``otsu``: on/off. Unset arguments come from ``config``
        (default: the config at record time). Equal to :meth:`Grounder.ground` with that config.
        """
        cfg = self.resolve(config, layers=layers, middle_layers=middle_layers, steps=steps,
                           window_percent=window_percent, smooth=smooth, otsu=otsu)
        chosen = cfg.resolve_layers(self.n_layers)
        start, stop = cfg.window
        r0, r1 = self.steps
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
        return _finish(acc, cfg, self.input_size, [self.geometry], [self.phrases], return_raw, info)[0]

    def layer_maps(self, layer: int, step: int) -> np.ndarray:
        """Float32 ``[K, h, w]``: token-averaged attention of ``layer`` at inversion step ``step``."""
        r0, r1 = self.steps
        if layer not in self.maps or not r0 <= step < r1:
            raise ValueError(f"layer {layer}, step {step} not recorded "
                             f"(layers {sorted(self.maps)}, steps [{r0}, {r1}))")
        return self.maps[layer][step - r0].float().cpu().numpy()

    def to(self, device: str | torch.device) -> "Recording":
        """A copy with the maps on ``device`` (e.g. ``"cpu"`` to keep many recordings)."""
        return replace(self, maps={k: v.to(device) for k, v in self.maps.items()})

    def save(self, path: str | Path) -> None:
        """Write the recording to one ``.npz`` file (maps as float32)."""
        import json

        arrays = {f"layer_{k}": v.float().cpu().numpy() for k, v in self.maps.items()}
        g = self.geometry
        meta = {"phrases": self.phrases, "geometry": [g.height, g.width, g.size, g.conventions],
                "steps": list(self.steps), "config": self.config.to_dict(), "input_size": self.input_size,
                "n_layers": self.n_layers, "info": self.info}
        np.savez_compressed(path, timesteps=self.timesteps, meta=np.array(json.dumps(meta)), **arrays)

    @classmethod
    def load(cls, path: str | Path) -> "Recording":
        """Read a recording written by :meth:`save` (maps on the CPU)."""
        import json

        with np.load(path) as f:
            meta = json.loads(str(f["meta"]))
            maps = {int(k.split("_", 1)[1]): torch.from_numpy(f[k]) for k in f.files if k.startswith("layer_")}
            timesteps = f["timesteps"]
        return cls(phrases=meta["phrases"], geometry=CropGeometry(*meta["geometry"]), maps=maps,
                   steps=tuple(meta["steps"]), timesteps=timesteps,
                   config=GroundingConfig.from_dict(meta["config"]), input_size=meta["input_size"],
                   n_layers=meta["n_layers"], info=meta["info"])


def _finish(acc: MapAccumulator, cfg: GroundingConfig, size: int, geometries: Sequence[CropGeometry],
            phrases_per_image: Sequence[Sequence[str]], return_raw: bool, info: dict) -> list[Heatmaps]:
    """Accumulated maps of all rows -> post-processed :class:`Heatmaps` per image."""
    raw = acc.mean(size, cfg.resize).cpu().double().numpy()  # [R, S, S]
    final = postprocess(raw, cfg.sigma_pixels(size), cfg.otsu, cfg.conventions)
    raw = raw.astype(np.float32)
    out, r = [], 0
    for geom, phrases in zip(geometries, phrases_per_image):
        k = len(phrases)
        geom = replace(geom, conventions=cfg.conventions)  # a recording re-read under other conventions
        out.append(Heatmaps(heatmaps=geom.to_original(final[r:r + k]), phrases=list(phrases), geometry=geom,
                            raw=raw[r:r + k].copy() if return_raw else None, model_maps=final[r:r + k].copy(),
                            info=dict(info)))
        r += k
    return out


# ====================================================================== the engine
@dataclass
class _Batch:
    """Prepared inputs of a batch of B images with R phrases in all (rows = image-phrase pairs)."""

    x: torch.Tensor  # [B, 1, S, S] in [0, 1]
    geometries: list[CropGeometry]
    phrases_per_image: list[list[str]]
    phrases: list[str]  # [R], image by image
    row_image: torch.Tensor  # [R] image index of each row
    weights: torch.Tensor  # [R, T] token weights


class _StepStore:
    """Recording sink of record mode: every map, per layer, in call (= step) order."""

    def __init__(self) -> None:
        self.maps: dict[int, list[torch.Tensor]] = {}

    def __call__(self, layer: int, maps: torch.Tensor) -> None:
        self.maps.setdefault(layer, []).append(maps)


class Grounder:
    """Zero-shot phrase grounding by cross-attention of a frozen LDM (Vilouras et al., Algorithm 1).

    ``Grounder(model, GroundingConfig.paper()).ground(image, ["left pleural effusion"]).heatmaps``

    Parameters
    ----------
    model : the model bundle; it runs on its own device and dtype (``model.to("cuda", torch.float16)``
        for half precision: the recorded softmax is always float32)
    config : the method's settings (default: the paper's preset)
    batch_size : images per inversion in :meth:`ground_batch`: their unconditional rows, and their
        phrases' conditional rows, share each UNet call
    progress : show a progress bar over the inversion steps
    early_exit : with guidance 0, run the conditional rows apart and only up to the last recorded
        layer in execution order (the rest of the UNet is never read); the maps are the same.
        False: one UNet call per step, conditional rows through the whole network (for comparison)

    ``stats`` counts UNet calls and sample-evaluations (``unet_samples_truncated`` of them stopped
    early) since the grounder was made.
    """

    def __init__(self, model: LDM, config: GroundingConfig | None = None, *, batch_size: int = 4,
                 progress: bool = False, early_exit: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.config = config or GroundingConfig.paper()
        self.batch_size = int(batch_size)
        self.progress = progress
        self.early_exit = bool(early_exit)
        self.stats = {"unet_calls": 0, "unet_samples": 0, "unet_samples_truncated": 0}

    @property
    def layers(self) -> tuple[CrossAttentionLayer, ...]:
        """The model's cross-attention layers in execution order."""
        return cross_attention_layers(self.model.unet)

    def schedule(self) -> DDIMInversion:
        return DDIMInversion(self.model.schedule, self.config)

    # ------------------------------------------------------------------ public verbs
    def ground(self, image: ImageInput, phrases: Sequence[str] | str, return_raw: bool = False) -> Heatmaps:
        """Heatmaps ``[K, H, W]`` of ``phrases`` on ``image`` (any input :func:`load_image` reads)."""
        return self.ground_batch([image], [phrases], return_raw=return_raw)[0]

    def ground_batch(self, images: Sequence[ImageInput], phrases_per_image: Sequence[Sequence[str] | str],
                     return_raw: bool = False) -> list[Heatmaps]:
        """:meth:`ground` for many images, ``batch_size`` images per inversion."""
        self._check_batch(images, phrases_per_image)
        cfg = self.config
        n_steps = len(self.schedule())
        window = cfg.resolve_window(n_steps)
        chosen = cfg.resolve_layers(len(self.layers))
        info = {"method": "cross-attention", "model": self.model.name, "config": cfg.to_dict(),
                "layers": list(chosen), "window": list(window)}
        out: list[Heatmaps] = []
        for b0 in range(0, len(images), self.batch_size):
            batch = self._prepare(images[b0:b0 + self.batch_size], phrases_per_image[b0:b0 + self.batch_size])
            acc = MapAccumulator(cfg.normalize)
            self._invert(batch, window, [self.layers[i] for i in chosen], acc)
            out += _finish(acc, cfg, self.model.input_size, batch.geometries, batch.phrases_per_image,
                           return_raw, info)
        return out

    def record(self, image: ImageInput, phrases: Sequence[str] | str, steps: tuple[int, int] | None = None,
               layers: Sequence[int] | None = None) -> Recording:
        """Ablation mode: one inversion, every layer (or ``layers``), every step (or ``steps``).

        Recording a step needs the conditional branch at that step, so restrict ``steps`` to what
        the ablation reads (e.g. the widest window) to save time; memory is
        ``n_steps x K x sum_layers(h * w)`` floats.
        """
        return self.record_batch([image], [phrases], steps=steps, layers=layers)[0]

    def record_batch(self, images: Sequence[ImageInput], phrases_per_image: Sequence[Sequence[str] | str],
                     steps: tuple[int, int] | None = None, layers: Sequence[int] | None = None) -> list[Recording]:
        """:meth:`record` for many images, ``batch_size`` images per inversion."""
        self._check_batch(images, phrases_per_image)
        n_steps = len(self.schedule())
        window = self.config.with_window(*(steps or (0, n_steps))).resolve_window(n_steps)
        all_layers = self.layers
        chosen = tuple(range(len(all_layers))) if layers is None else \
            self.config.with_layers(layers).resolve_layers(len(all_layers))
        timesteps = self.schedule().timesteps[window[0]:window[1]]
        out: list[Recording] = []
        for b0 in range(0, len(images), self.batch_size):
            batch = self._prepare(images[b0:b0 + self.batch_size], phrases_per_image[b0:b0 + self.batch_size])
            store = _StepStore()
            self._invert(batch, window, [all_layers[i] for i in chosen], store)
            stacked = {k: torch.stack(v) for k, v in store.maps.items()}  # [n_steps, R, h, w]
            r = 0
            for geom, phrases in zip(batch.geometries, batch.phrases_per_image):
                k = len(phrases)
                out.append(Recording(
                    phrases=list(phrases), geometry=geom,
                    maps={layer: m[:, r:r + k].clone() for layer, m in stacked.items()},
                    steps=window, timesteps=timesteps.copy(), config=self.config,
                    input_size=self.model.input_size, n_layers=len(all_layers),
                    info={"model": self.model.name}))
                r += k
        return out

    # ------------------------------------------------------------------ internals
    def check_phrases(self, phrases: Sequence[str] | str) -> list[int]:
        """Validate phrases; return each one's token count (start and end tokens included)."""
        if isinstance(phrases, str):
            phrases = [phrases]
        if not isinstance(phrases, (list, tuple)) or not phrases:
            raise ValueError("phrases must be a non-empty list of strings")
        limit = self.model.max_tokens
        counts = []
        for k, p in enumerate(phrases):
            if not isinstance(p, str):
                raise ValueError(f"phrase {k} is a {type(p).__name__}, not a string")
            if not p.strip():
                raise ValueError(f"phrase {k} is empty; give the finding to ground, e.g. 'left pleural effusion'")
            n = self.model.phrase_token_count(p)
            if n > limit:
                raise ValueError(f"phrase {k} is too long: {n} tokens with its start and end tokens, but the "
                                 f"model's tokenizer takes at most {limit} ({limit - 2} phrase tokens); shorten it")
            if n < 3:
                raise ValueError(f"phrase {k} ({p!r}) has no tokens between the start and end tokens")
            counts.append(n)
        return counts

    def _check_batch(self, images: Sequence[ImageInput], phrases_per_image: Sequence[Sequence[str] | str]) -> None:
        """Fail before any computation: lengths agree and every phrase is valid."""
        if len(images) != len(phrases_per_image):
            raise ValueError(f"got {len(images)} images but {len(phrases_per_image)} phrase lists")
        for phrases in phrases_per_image:
            self.check_phrases(phrases)

    def _prepare(self, images: Sequence[ImageInput], phrases_per_image: Sequence[Sequence[str] | str]) -> _Batch:
        xs, geoms, lists, flat, rows, counts = [], [], [], [], [], []
        for b, (image, phrases) in enumerate(zip(images, phrases_per_image)):
            if isinstance(phrases, str):
                phrases = [phrases]
            counts += self.check_phrases(phrases)
            x, geom = prepare_image(load_image(image), self.model.input_size, self.config.conventions)
            xs.append(x)
            geoms.append(geom)
            lists.append(list(phrases))
            flat += list(phrases)
            rows += [b] * len(phrases)
        return _Batch(x=torch.cat(xs), geometries=geoms, phrases_per_image=lists, phrases=flat,
                      row_image=torch.tensor(rows, dtype=torch.long),
                      weights=token_weights(counts, self.model.max_tokens, self.config.tokens))

    @torch.no_grad()
    def _invert(self, batch: _Batch, window: tuple[int, int], layers: Sequence[CrossAttentionLayer], sink) -> None:
        """Run the inversion up to the window's last step, feeding the window's attention to ``sink``."""
        model, unet = self.model, self.model.unet
        device, dtype = model.device, model.dtype
        work = torch.promote_types(dtype, torch.float32)  # latents: float32 even for a half model
        sched = self.schedule()
        start, stop = window
        g = float(self.config.guidance_scale)
        z = model.encode_image(batch.x).to(work)  # [B, C, l, l]
        cond = model.encode_text(batch.phrases)  # [R, T, D]
        weights = batch.weights.to(device)
        n_rows = cond.shape[0]
        row_image = batch.row_image.to(device)
        if g == 0.0:  # one trajectory per image, shared by its phrases
            cond_source = row_image
        else:  # the trajectory depends on the phrase: one per row
            z = z[row_image]
            cond_source = torch.arange(n_rows, device=device)
        uncond = model.encode_text([""]).expand(z.shape[0], -1, -1)
        last = stop - 1
        steps = range(stop)
        if self.progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc="DDIM inversion", unit="step", leave=False)
        # guidance 0: the conditional rows' prediction is never used, so they run apart from the
        # unconditional rows and stop after the last recorded layer (AttentionRecorder.read)
        truncate = self.early_exit and g == 0.0
        with AttentionRecorder(layers, sink) as recorder:
            for i in steps:
                need_uncond = i < last  # the last step's update is never used
                need_cond = i >= start or g != 0.0
                t = sched.timestep(i)
                if truncate and need_cond:
                    recorder.read(unet, z[cond_source].to(dtype), t, cond, weights)
                    self._count(n_rows, truncated=True)
                    need_cond = False
                if not (need_uncond or need_cond):
                    continue
                xs, ctx = [], []
                if need_uncond:
                    xs.append(z)
                    ctx.append(uncond)
                if need_cond:
                    xs.append(z[cond_source])
                    ctx.append(cond)
                n_u = z.shape[0] if need_uncond else 0
                sample = torch.cat(xs).to(dtype)
                capture = recorder.capture(slice(n_u, n_u + n_rows), weights) if need_cond and i >= start \
                    else nullcontext()
                with capture:
                    out = unet(sample, t, encoder_hidden_states=torch.cat(ctx), return_dict=False)[0]
                self._count(sample.shape[0])
                if need_uncond:
                    pred = out[:n_u].to(work)
                    if g != 0.0:
                        pred = pred + g * (out[n_u:].to(work) - pred)
                    z = sched.step(z, pred, i)

    def _count(self, samples: int, truncated: bool = False) -> None:
        """Cost bookkeeping of one UNet call (``stats``)."""
        self.stats["unet_calls"] += 1
        self.stats["unet_samples"] += samples
        if truncated:
            self.stats["unet_samples_truncated"] += samples
