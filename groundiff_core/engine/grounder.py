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
:class:`~groundiff_core.heatmaps.Recording` then yields heatmaps for any layer set, window and
post-processing (:meth:`~groundiff_core.heatmaps.Recording.aggregate`), exactly as
:meth:`Grounder.ground` would have computed them.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Sequence

import torch

from groundiff_core.engine.aggregate import MapAccumulator, to_heatmaps, token_weights
from groundiff_core.engine.config import GroundingConfig
from groundiff_core.engine.inversion import DDIMInversion, ddim_run
from groundiff_core.engine.layers import CrossAttentionLayer, cross_attention_layers
from groundiff_core.engine.recording import AttentionRecorder
from groundiff_core.heatmaps import Heatmaps, Recording
from groundiff_core.io.images import ImageInput, load_image
from groundiff_core.io.preprocess import CropGeometry, prepare_image
from groundiff_core.models.ldm import LDM
from groundiff_core.util.phrases import as_phrase_list

__all__ = ["Grounder"]


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
        """The inversion's timesteps and update for this model and config."""
        return DDIMInversion(self.model.schedule, self.config)

    def describe(self) -> dict:
        """The method's identity in result files (:class:`~groundiff_core.heatmaps.GroundingMethod`):
        its name and config. ``batch_size`` and ``early_exit`` are left out: they never change the
        maps. The name stays "Grounder", the identity evaluation folders were written with."""
        return {"method": "Grounder", "config": self.config.to_dict()}

    # ------------------------------------------------------------------ public verbs
    def ground(self, image: ImageInput, phrases: Sequence[str] | str, return_raw: bool = False) -> Heatmaps:
        """Heatmaps ``[K, H, W]`` of ``phrases`` on ``image`` (any input :func:`load_image` reads)."""
        return self.ground_batch([image], [phrases], return_raw=return_raw)[0]

    def ground_batch(self, images: Sequence[ImageInput], phrases_per_image: Sequence[Sequence[str] | str],
                     return_raw: bool = False) -> list[Heatmaps]:
        """:meth:`ground` for many images, ``batch_size`` images per inversion."""
        self._check_batch(images, phrases_per_image)
        out: list[Heatmaps] = []
        for b0 in range(0, len(images), self.batch_size):
            batch = self._prepare(images[b0:b0 + self.batch_size], phrases_per_image[b0:b0 + self.batch_size])
            out += self._heatmaps(batch, batch.phrases_per_image, return_raw)
        return out

    def ground_tokens(self, image: ImageInput, phrase: str, return_raw: bool = False) -> Heatmaps:
        """One heatmap per token of ``phrase``: map ``i - 1`` reads token position ``i`` alone, the map
        ``ground`` gives with ``tokens="token:i"``, but all of them come from one inversion (the
        phrase's conditional row repeated once per token, each with its own token weights), so n
        tokens cost one inversion instead of n. The maps are named ``"<phrase> [token i]"``."""
        (n,) = self.check_phrases([phrase])
        batch = self._prepare([image], [[phrase] * (n - 2)])
        batch.weights = torch.cat([token_weights([n], self.model.max_tokens, f"token:{i}") for i in range(1, n - 1)])
        names = [f"{phrase} [token {i}]" for i in range(1, n - 1)]
        return self._heatmaps(batch, [names], return_raw, tokens="token:i per map")[0]

    def record(self, image: ImageInput, phrases: Sequence[str] | str, window: tuple[int, int] | None = None,
               layers: Sequence[int] | None = None) -> Recording:
        """Ablation mode: one inversion, every layer (or ``layers``), every step (or the steps
        ``[start, stop)`` of ``window``).

        Recording a step needs the conditional branch at that step, so restrict ``window`` to what
        the ablation reads (e.g. the widest window) to save time; memory is
        ``n_steps x K x sum_layers(h * w)`` floats.
        """
        return self.record_batch([image], [phrases], window=window, layers=layers)[0]

    def record_batch(self, images: Sequence[ImageInput], phrases_per_image: Sequence[Sequence[str] | str],
                     window: tuple[int, int] | None = None, layers: Sequence[int] | None = None) -> list[Recording]:
        """:meth:`record` for many images, ``batch_size`` images per inversion."""
        self._check_batch(images, phrases_per_image)
        n_steps = len(self.schedule())
        window = self.config.with_window(*(window or (0, n_steps))).resolve_window(n_steps)
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
                    window=window, timesteps=timesteps.copy(), config=self.config,
                    input_size=self.model.input_size, n_layers=len(all_layers),
                    info={"model": self.model.name}))
                r += k
        return out

    # ------------------------------------------------------------------ internals
    def _heatmaps(self, batch: _Batch, names: list[list[str]], return_raw: bool, **info_extra) -> list[Heatmaps]:
        """Invert one prepared batch over the config's window and layers; its heatmaps, named ``names``."""
        cfg = self.config
        window = cfg.resolve_window(len(self.schedule()))
        chosen = cfg.resolve_layers(len(self.layers))
        info = {"method": "cross-attention", "model": self.model.name, "config": cfg.to_dict(),
                "layers": list(chosen), "window": list(window), **info_extra}
        acc = MapAccumulator(cfg.normalize)
        self._invert(batch, window, [self.layers[i] for i in chosen], acc)
        return to_heatmaps(acc, cfg, self.model.input_size, batch.geometries, names, return_raw, info)

    def check_phrases(self, phrases: Sequence[str] | str) -> list[int]:
        """Validate phrases (:func:`~groundiff_core.util.phrases.as_phrase_list`, then the model's
        token limit); return each one's token count (start and end tokens included)."""
        limit = self.model.max_tokens
        counts = []
        for k, p in enumerate(as_phrase_list(phrases)):
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
            phrases = as_phrase_list(phrases)
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
        # guidance 0: the conditional rows' prediction is never used, so they run apart from the
        # unconditional rows and stop after the last recorded layer (AttentionRecorder.read)
        truncate = self.early_exit and g == 0.0

        def predict(z: torch.Tensor, i: int, t: int) -> torch.Tensor | None:
            """Record step ``i``'s attention where the window asks; the guided prediction, or None
            when the step's update is never used (the last step)."""
            need_uncond = i < last
            need_cond = i >= start or g != 0.0
            if truncate and need_cond:
                recorder.read(unet, z[cond_source].to(dtype), t, cond, weights)
                self._count(n_rows, truncated=True)
                need_cond = False
            if not (need_uncond or need_cond):
                return None
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
            if not need_uncond:
                return None
            pred = out[:n_u].to(work)
            return pred + g * (out[n_u:].to(work) - pred) if g != 0.0 else pred

        with AttentionRecorder(layers, sink) as recorder:
            ddim_run(sched, z, predict, stop, "DDIM inversion" if self.progress else None)

    def _count(self, samples: int, truncated: bool = False) -> None:
        """Cost bookkeeping of one UNet call (``stats``)."""
        self.stats["unet_calls"] += 1
        self.stats["unet_samples"] += samples
        if truncated:
            self.stats["unet_samples_truncated"] += samples
