"""The grounding engine: image + phrases -> heatmaps on the original image grid (Algorithm 1).

:meth:`Grounder.ground_batch` is Algorithm 1 as numbered steps: 1 prepare (phrases to token
weights), 2-4 encode, invert and record (:meth:`Grounder._invert_and_record`), 5 aggregate,
6 back-project. The work it does not need is left out:

* one guidance-free DDIM inversion per image serves all its phrases, images in batches, and it
  stops at the window's last step; it can be kept (:meth:`Grounder.invert`, an
  :class:`~groundiff_core.engine.kept.InversionCache` on disk) with maps equal to the bit;
* the phrases' conditional rows run only inside the window, batched, and only up to the block of
  the last recorded layer (:mod:`~groundiff_core.engine.truncated`): their prediction is never used;
* attention is read only at the chosen layers and reduced on the fly to one running sum per layer.

Sample evaluations per image with the paper's preset and K phrases: ``179 + 60 K``, of which the
``60 K`` conditional ones end after the paper UNet's first up block (layer 7 of 11). With a
non-zero ``guidance_scale`` each phrase has its own trajectory and both branches run at every step
(:mod:`~groundiff_core.engine.joint`). :meth:`Grounder.record` is the ablation mode: a
:class:`~groundiff_core.engine.record.Recording` of every layer and step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch

from groundiff_core.engine.aggregate import MapAccumulator, aggregate, back_project
from groundiff_core.engine.config import GroundingConfig
from groundiff_core.engine.inversion import DDIMInversion, window_latents
from groundiff_core.engine.joint import invert_joint
from groundiff_core.engine.kept import Inversion, InversionCache, inversion_key
from groundiff_core.engine.layers import CrossAttentionLayer, cross_attention_layers
from groundiff_core.engine.recording import AttentionRecorder, StepStore, position_weights, token_weights
from groundiff_core.engine.truncated import forward_until
from groundiff_core.engine.record import Recording
from groundiff_core.heatmaps import Heatmaps
from groundiff_core.io.images import ImageInput, load_image
from groundiff_core.io.preprocess import CropGeometry, prepare_image
from groundiff_core.models.ldm import LDM
from groundiff_core.util.fingerprint import weights_sha256
from groundiff_core.util.phrases import as_phrase_list

__all__ = ["Grounder"]


@dataclass
class _Batch:
    """A batch of B images (or kept inversions) with R phrases in all (rows = image-phrase pairs)."""

    images: list  # [B] what the caller gave: images or Inversions
    phrases_per_image: list[list[str]]
    phrases: list[str]  # [R], image by image
    row_image: torch.Tensor  # [R] image index of each row
    weights: torch.Tensor  # [R, T] token weights


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
    inversion_cache : an :class:`~groundiff_core.engine.kept.InversionCache`: images already
        inverted (by content, with this model and schedule) are not inverted again (guidance 0)
    compile : run the UNet passes through ``torch.compile`` (the inversion's whole passes and the
        truncated walk of the conditional rows); the maps equal eager ones to float rounding

    Every verb also takes an :class:`~groundiff_core.engine.kept.Inversion` from :meth:`invert` in
    place of an image: only the phrases' conditional rows then run.

    ``stats`` counts UNet calls and sample-evaluations (``unet_samples_truncated`` of them stopped
    early) since the grounder was made.
    """

    def __init__(self, model: LDM, config: GroundingConfig | None = None, *, batch_size: int = 4,
                 progress: bool = False, early_exit: bool = True, inversion_cache: InversionCache | None = None,
                 compile: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.config = config or GroundingConfig.paper()
        self.batch_size = int(batch_size)
        self.progress = progress
        self.early_exit = bool(early_exit)
        self.inversion_cache = inversion_cache
        self.stats = {"unet_calls": 0, "unet_samples": 0, "unet_samples_truncated": 0}
        self._model_key: dict | None = None
        self._unet = torch.compile(model.unet) if compile else model.unet  # the inversion's whole passes
        self._forward_until = torch.compile(forward_until) if compile else forward_until  # the conditional rows

    @property
    def layers(self) -> tuple[CrossAttentionLayer, ...]:
        """The model's cross-attention layers in execution order."""
        return cross_attention_layers(self.model.unet)

    def schedule(self) -> DDIMInversion:
        """The inversion's timesteps and update for this model and config."""
        return DDIMInversion(self.model.schedule, self.config)

    def describe(self) -> dict:
        """The method's identity in result files (:class:`~groundiff_core.heatmaps.GroundingMethod`): its
        name ("Grounder", as evaluation folders record it) and config (not ``batch_size``, ``early_exit``)."""
        return {"method": "Grounder", "config": self.config.to_dict()}

    # ------------------------------------------------------------------ public verbs
    def invert(self, image: ImageInput, window: tuple[int, int] | None = None) -> Inversion:
        """Invert ``image`` (anything :func:`load_image` reads) once, guidance 0, and keep its latents
        ``[stop - start, C, l, l]`` at the inversion steps ``window`` (0 = least noisy; default the
        config's) in an :class:`Inversion`, with its crop geometry (and, with an ``inversion_cache``,
        its key): later phrases (``inv.ground``, ``inv.record``, ``inv.ground_tokens``) then cost
        only their own conditional rows."""
        return self.invert_batch([image], window)[0]

    def invert_batch(self, images: Sequence[ImageInput], window: tuple[int, int] | None = None) -> list[Inversion]:
        """:meth:`invert` for many images, ``batch_size`` images per inversion."""
        self._require_reuse()
        n_steps = len(self.schedule())
        window = self.config.with_window(*window).resolve_window(n_steps) if window else \
            self.config.resolve_window(n_steps)
        out = []
        for b0 in range(0, len(images), self.batch_size):
            chunk = list(images[b0:b0 + self.batch_size])
            latents, geoms, keys = self._latents(chunk, window)
            out += [Inversion(latents[:, b], window, geoms[b], keys[b], self.model_key(), self)
                    for b in range(len(chunk))]
        return out

    def ground(self, image: ImageInput, phrases: Sequence[str] | str, return_raw: bool = False) -> Heatmaps:
        """Heatmaps of ``phrases`` on ``image``: :meth:`ground_batch` for one image.

        Parameters
        ----------
        image : anything :func:`load_image` reads, or an :class:`Inversion` from :meth:`invert`
        phrases : K phrases (a string is one phrase)
        return_raw : also keep the mean attention maps before post-processing

        Returns
        -------
        :class:`Heatmaps`: float32 ``[K, H, W]`` in [0, 1] on the image's own grid, NaN outside the crop
        """
        return self.ground_batch([image], [phrases], return_raw=return_raw)[0]

    def ground_batch(self, images: Sequence[ImageInput], phrases_per_image: Sequence[Sequence[str] | str],
                     return_raw: bool = False, *,
                     token_positions: Sequence[Sequence[Sequence[int]]] | None = None) -> list[Heatmaps]:
        """Algorithm 1 for many images, ``batch_size`` images per inversion.

        Parameters
        ----------
        images : B images (anything :func:`load_image` reads) or :class:`Inversion` s from :meth:`invert`
        phrases_per_image : B lists of phrases (a string is one phrase)
        return_raw : also keep each mean attention map before post-processing (``Heatmaps.raw``)
        token_positions : per image, per phrase, the token positions to read (1 = the first token
            after the start token; e.g. a class name's, :func:`~.recording.word_positions`) instead
            of the config's token selection; a phrase without positions gets an all-NaN map, as the
            JBHI code gives where the class word is absent (its metrics score it 0, AUC-ROC 0.5)

        Returns
        -------
        B :class:`Heatmaps`, float32 ``[K, H, W]`` on each image's own grid, NaN outside the crop.
        """
        self._check_batch(images, phrases_per_image)
        if token_positions is not None:
            if len(token_positions) != len(images):
                raise ValueError(f"got {len(images)} images but {len(token_positions)} position lists")
            for b, (ps, pos) in enumerate(zip(phrases_per_image, token_positions)):
                if len(pos) != len(as_phrase_list(ps)):
                    raise ValueError(f"image {b}: {len(as_phrase_list(ps))} phrases but {len(pos)} position lists")
        cfg, S = self.config, self.model.input_size
        window = cfg.resolve_window(len(self.schedule()))
        chosen = cfg.resolve_layers(len(self.layers))
        info = {"method": "cross-attention", "model": self.model.name, "config": cfg.to_dict(),
                "layers": list(chosen), "window": list(window)}
        if token_positions is not None:
            info["tokens"] = "given positions"
        out: list[Heatmaps] = []
        for b0 in range(0, len(images), self.batch_size):
            # 1. prepare: the phrases' rows and the token weights each row's maps average
            batch = self._prepare(images[b0:b0 + self.batch_size], phrases_per_image[b0:b0 + self.batch_size])
            empty: list[int] = []
            if token_positions is not None:
                flat = [list(p) for ps in token_positions[b0:b0 + self.batch_size] for p in ps]
                batch.weights, empty = position_weights(flat, batch.weights)
            # 2-4. encode, invert, record: the window's attention at the chosen layers, reduced per layer
            acc = MapAccumulator(cfg.normalize)
            geometries = self._invert_and_record(batch, window, [self.layers[i] for i in chosen], acc)
            # 5. aggregate: mean over layers and steps, resize, smooth, normalise, Otsu (model grid)
            raw, final = aggregate(acc, cfg, S, batch.phrases)
            final[empty] = np.nan
            raw[empty] = np.nan
            # 6. back-project onto each original image grid (NaN outside the model's crop)
            out += back_project(final, raw if return_raw else None, geometries, batch.phrases_per_image,
                                cfg.conventions, info)
        return out

    def ground_tokens(self, image: ImageInput, phrase: str, return_raw: bool = False) -> Heatmaps:
        """One heatmap per token of ``phrase`` (``n - 2`` tokens between start and end): float32
        ``[n - 2, H, W]`` on the image's grid, map ``i - 1`` named ``"<phrase> [token i]"`` and equal
        to ``ground``'s with ``tokens="token:i"``, all from one inversion (the phrase's conditional
        row repeated per token, each with its own weights) instead of n."""
        (n,) = self.check_phrases([phrase])
        h = self.ground_batch([image], [[phrase] * (n - 2)], return_raw,
                              token_positions=[[[i] for i in range(1, n - 1)]])[0]
        h.phrases = [f"{phrase} [token {i}]" for i in range(1, n - 1)]
        h.info["tokens"] = "token:i per map"
        return h

    def record(self, image: ImageInput, phrases: Sequence[str] | str, window: tuple[int, int] | None = None,
               layers: Sequence[int] | None = None) -> Recording:
        """Ablation mode: one inversion, every layer (or ``layers``, indices in execution order) and
        every inversion step (or those of ``window`` ``[start, stop)``, 0 = least noisy); any layer
        set and window inside it is then aggregated without the model (:meth:`Recording.aggregate`).

        Returns a :class:`Recording`: per layer, float32 maps ``[n_steps, K, h, w]`` on its latent
        grid, averaged over the selected tokens and the heads, before post-processing. Recording a
        step needs its conditional rows, so restrict ``window`` to what is read; memory is
        ``n_steps x K x sum_layers(h * w)`` floats."""
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
            store = StepStore()
            geometries = self._invert_and_record(batch, window, [all_layers[i] for i in chosen], store)
            stacked = {k: torch.stack(v) for k, v in store.maps.items()}  # [n_steps, R, h, w]
            r = 0
            for geom, phrases in zip(geometries, batch.phrases_per_image):
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
        lists, flat, rows, counts = [], [], [], []
        for b, phrases in enumerate(phrases_per_image):
            phrases = as_phrase_list(phrases)
            counts += self.check_phrases(phrases)
            lists.append(list(phrases))
            flat += list(phrases)
            rows += [b] * len(phrases)
        return _Batch(images=list(images), phrases_per_image=lists, phrases=flat,
                      row_image=torch.tensor(rows, dtype=torch.long),
                      weights=token_weights(counts, self.model.max_tokens, self.config.tokens))

    # ------------------------------------------------------------------ Algorithm 1, in two halves
    def model_key(self) -> dict:
        """What an inversion depends on besides the image: the weights' fingerprint (computed once
        per grounder), device type, dtype, noise schedule, latent scale, steps and spacing."""
        if self._model_key is None:
            m, cfg = self.model, self.config
            self._model_key = {"weights_sha256": weights_sha256((p, getattr(m, p, None)) for p in ("unet", "vae", "text_encoder")),
                               "device": m.device.type, "dtype": str(m.dtype).replace("torch.", ""),
                               "schedule": asdict(m.schedule), "scale_factor": float(m.scale_factor),
                               "steps": cfg.num_inference_steps, "spacing": cfg.timestep_spacing}
        return self._model_key

    def _reuses(self) -> bool:
        """Whether the trajectory can be computed apart from the phrases (and so kept)."""
        return self.early_exit and float(self.config.guidance_scale) == 0.0

    def _require_reuse(self) -> None:
        if float(self.config.guidance_scale) != 0.0:
            raise ValueError(f"guidance_scale {self.config.guidance_scale}: each phrase has its own trajectory, "
                             "so there is no inversion to keep (guidance 0 only)")
        if not self.early_exit:
            raise ValueError("early_exit=False runs the phrases in the inversion's own UNet calls; "
                             "keeping inversions needs early_exit=True")

    def _invert_and_record(self, batch: _Batch, window: tuple[int, int], layers: Sequence[CrossAttentionLayer],
                           sink) -> list[CropGeometry]:
        """Steps 2-4: feed the window's attention of the batch's phrases to ``sink``; the images' geometries.

        Guidance 0 (the paper): 2-3, each image encoded and inverted once, without the phrases
        (:meth:`_latents`: from a kept Inversion, the cache, or :meth:`_trajectory`); 4, the phrases'
        rows read on those latents (:meth:`_read`). With guidance each phrase steers its own
        trajectory, so both branches run at every step (:func:`~.joint.invert_joint`)."""
        if not self._reuses():
            if any(isinstance(i, Inversion) for i in batch.images):
                self._require_reuse()
            return invert_joint(self, batch, window, layers, sink)
        latents, geometries, _ = self._latents(batch.images, window)
        self._read(latents, batch, window, layers, sink)
        return geometries

    def _latents(self, images: Sequence, window: tuple[int, int]) -> tuple[torch.Tensor, list[CropGeometry], list[str | None]]:
        """``[stop - start, B, C, l, l]``: each image's latent at the steps of ``window``, from its
        Inversion, the cache, or a fresh guidance-free inversion (the images not found, batched)."""
        S, conv, cache = self.model.input_size, self.config.conventions, self.inversion_cache
        found: list[torch.Tensor | None] = [None] * len(images)
        geoms: list[CropGeometry | None] = [None] * len(images)
        keys: list[str | None] = [None] * len(images)
        todo = []
        for b, image in enumerate(images):
            if isinstance(image, Inversion):
                self._check_inversion(image)
                found[b], geoms[b], keys[b] = image.steps(window), image.geometry, image.key
                continue
            x, geoms[b] = prepare_image(load_image(image), S, conv)
            if cache is not None:  # CPU threads change the reduction order, hence the last bits
                keys[b] = inversion_key(x, {**self.model_key(), "threads": torch.get_num_threads()
                                            if self.model.device.type == "cpu" else None})
                got = cache.get(keys[b], window)
                if got is not None:
                    found[b] = got
                    continue
            todo.append((b, x))
        if todo:
            fresh = self._trajectory(torch.cat([x for _, x in todo]), window)
            for j, (b, _) in enumerate(todo):
                found[b] = fresh[:, j]
                if cache is not None:
                    cache.put(keys[b], window, found[b])
        work = torch.promote_types(self.model.dtype, torch.float32)
        latents = torch.stack([f.to(self.model.device, work) for f in found], dim=1)
        return latents, geoms, keys

    def _check_inversion(self, inv: Inversion) -> None:
        """Refuse an inversion made with another model, schedule or device, naming what differs."""
        mine = self.model_key()
        differ = sorted(k for k in set(mine) | set(inv.model_key) if mine.get(k) != inv.model_key.get(k))
        if differ:
            raise ValueError("this inversion was made with another " + ", ".join(differ) + " than this grounder's ("
                             + "; ".join(f"{k}: {inv.model_key.get(k)!r} vs {mine.get(k)!r}" for k in differ) + ")")

    def _trajectory(self, x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
        """Steps 2-3 for prepared images ``x`` ``[B, 1, S, S]``: :func:`~.inversion.window_latents`."""
        return window_latents(self.model, self._unet, self.schedule(), x, window, self._count,
                              "DDIM inversion" if self.progress else None)

    @torch.no_grad()
    def _read(self, latents: torch.Tensor, batch: _Batch, window: tuple[int, int],
              layers: Sequence[CrossAttentionLayer], sink) -> None:
        """The phrases' conditional rows at each step of the window, each on its image's latent, run
        only up to the last recorded layer (their prediction is never used); maps go to ``sink``."""
        model, sched = self.model, self.schedule()
        cond = model.encode_text(batch.phrases)  # [R, T, D]
        weights = batch.weights.to(model.device)
        rows = batch.row_image.to(model.device)
        with AttentionRecorder(layers, sink) as recorder:
            for j, i in enumerate(range(*window)):
                walked = recorder.read(model.unet, latents[j][rows].to(model.dtype), sched.timestep(i), cond, weights,
                                       forward=self._forward_until)
                self._count(len(batch.phrases), truncated=walked)

    def _count(self, samples: int, truncated: bool = False) -> None:
        """Cost bookkeeping of one UNet call (``stats``)."""
        self.stats["unet_calls"] += 1
        self.stats["unet_samples"] += samples
        if truncated:
            self.stats["unet_samples_truncated"] += samples
