"""From recorded attention to heatmaps: token selection, per-map normalisation, resize, mean,
Gaussian smoothing and Otsu (steps 5-7 of the paper's Algorithm 1), and :func:`to_heatmaps`, the
last step from accumulated maps to :class:`~groundiff_core.heatmaps.Heatmaps` on the original grid.

The mean over layers and steps is computed as a running sum per layer at the layer's native
resolution: bilinear (and nearest) resizing is linear, so resizing each layer's sum once equals
summing the resized maps, while the memory stays ``[R, h, w]`` per layer whatever the number of
steps. Post-processing (:func:`postprocess`) is a pure function on numpy arrays ``[K, S, S]``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from groundiff_core.conventions import check_conventions
from groundiff_core.heatmaps import Heatmaps
from groundiff_core.util.arrays import minmax

if TYPE_CHECKING:
    from groundiff_core.engine.config import GroundingConfig
    from groundiff_core.io.preprocess import CropGeometry

__all__ = ["token_weights", "word_positions", "position_weights", "resize_maps", "MapAccumulator", "gaussian_smooth", "otsu_mask",
           "postprocess", "to_heatmaps"]


def token_weights(token_counts: Sequence[int], max_tokens: int, selection: str = "phrase") -> torch.Tensor:
    """Averaging weights over token positions, ``[K, max_tokens]`` float32, each row summing to 1.

    ``token_counts[k]`` is the length of phrase ``k`` tokenised with its start and end tokens.
    "phrase" selects positions ``1 .. n-2`` (the phrase's own tokens, the paper's choice);
    "phrase+end" selects ``1 .. n-1``; "token:i" selects the single position ``i`` (1 = the first
    token after the start token), for per-token maps.
    """
    if selection.startswith("token:"):
        i = int(selection.split(":", 1)[1])
        w = torch.zeros(len(token_counts), max_tokens, dtype=torch.float32)
        for k, n in enumerate(token_counts):
            if not 1 <= i <= n - 2:
                raise ValueError(f"token position {i} is outside phrase {k}'s tokens 1..{n - 2}")
            w[k, i] = 1.0
        return w
    if selection not in ("phrase", "phrase+end"):
        raise ValueError(f"token selection must be 'phrase', 'phrase+end' or 'token:i', got {selection!r}")
    w = torch.zeros(len(token_counts), max_tokens, dtype=torch.float32)
    for k, n in enumerate(token_counts):
        stop = n - 1 if selection == "phrase" else n
        stop = min(stop, max_tokens)
        if stop <= 1:
            raise ValueError(f"phrase {k} has no tokens between its start and end tokens")
        w[k, 1:stop] = 1.0 / (stop - 1)
    return w


def word_positions(tokenizer, phrase: str, words: str) -> list[int]:
    """Token positions of ``phrase`` (1 = the first token after the start token) that spell one of
    the words of ``words`` (e.g. a class name, "pleural effusion"), matched as whole token runs.

    Each word is tokenised alone (CLIP's BPE tokenises words independently, so a word's tokens are
    the same inside a phrase) and found as a contiguous run of the phrase's tokens; the positions of
    every run found are returned, sorted; none found: ``[]`` (the JBHI code's NaN map).
    """
    ids = tokenizer(phrase.lower(), truncation=False, verbose=False)["input_ids"]
    found: set[int] = set()
    for word in words.lower().split():
        w = tokenizer(word, truncation=False, verbose=False)["input_ids"][1:-1]
        if not w:
            continue
        for i in range(1, len(ids) - len(w)):
            if ids[i:i + len(w)] == w:
                found.update(range(i, i + len(w)))
    return sorted(found)


def position_weights(positions: Sequence[Sequence[int]], phrase_weights: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """``(weights, empty)``: weights ``[K, max_tokens]`` averaging the given token positions of each
    row, and the rows without positions (they keep ``phrase_weights``' row, so that they compute like
    any other; the caller sets their maps to NaN). ``phrase_weights`` (:func:`token_weights`)
    says which positions are a phrase's own tokens: any other position is refused."""
    if len(positions) != len(phrase_weights):
        raise ValueError(f"got {len(phrase_weights)} phrases but {len(positions)} position lists")
    w = phrase_weights.clone()
    empty = []
    for k, pos in enumerate(positions):
        own = set(torch.nonzero(phrase_weights[k]).flatten().tolist())
        if not pos:
            empty.append(k)
        elif not set(int(i) for i in pos) <= own:
            raise ValueError(f"phrase {k}: token positions {list(pos)} outside its tokens {min(own)}..{max(own)}")
        else:
            w[k] = 0.0
            w[k, [int(i) for i in pos]] = 1.0 / len(pos)
    return w, empty


def resize_maps(maps: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    """Resize ``[R, h, w]`` maps to ``[R, size, size]`` (``align_corners=False``, no antialiasing)."""
    if maps.shape[-2:] == (size, size):
        return maps
    kw = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(maps[:, None], size=(size, size), mode=mode, **kw)[:, 0]


class MapAccumulator:
    """Mean over (layer, step) of per-map-normalised attention maps, kept as per-layer running sums.

    ``add(layer, maps [R, h, w])`` normalises each map (``normalize="minmax"``) and adds it to the
    layer's sum; :meth:`mean` resizes each layer's sum to the input size and divides by the number
    of maps added per row. Memory: one ``[R, h, w]`` float32 tensor per layer.
    """

    def __init__(self, normalize: str = "minmax"):
        if normalize not in ("minmax", "none"):
            raise ValueError(f"normalize must be 'minmax' or 'none', got {normalize!r}")
        self.normalize = normalize
        self.sums: dict[int, torch.Tensor] = {}
        self.count = 0

    def add(self, layer: int, maps: torch.Tensor) -> None:
        maps = maps.to(torch.promote_types(maps.dtype, torch.float32))
        if self.normalize == "minmax":
            maps = minmax(maps)
        if layer in self.sums:
            self.sums[layer] += maps
        else:
            self.sums[layer] = maps.clone()
        self.count += 1

    __call__ = add  # usable directly as a recording sink

    def mean(self, size: int, mode: str = "bilinear") -> torch.Tensor:
        """``[R, size, size]`` (float32 or float64): the mean of every added map, resized to ``size``."""
        if not self.sums:
            raise ValueError("no attention maps were recorded: check the window and the layers")
        total = None
        for layer in sorted(self.sums):
            r = resize_maps(self.sums[layer], size, mode)
            total = r if total is None else total + r
        return total / self.count


def gaussian_smooth(maps: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian filter of each ``[S, S]`` map of ``[K, S, S]`` (scipy, 'reflect' borders, truncate 4)."""
    from scipy.ndimage import gaussian_filter

    maps = np.asarray(maps, dtype=np.float64)
    if not sigma_px:
        return maps.copy()
    return np.stack([gaussian_filter(m, sigma=sigma_px) for m in maps])


def otsu_mask(m: np.ndarray, conventions: str = "paper") -> np.ndarray:
    """Boolean ``m > threshold`` of one map, Otsu's threshold on 256 bins; all False for a constant map.

    "paper": scikit-image's ``threshold_multiotsu(m, classes=2)``, as the authors' code;
    "strict": ``threshold_otsu(m)``. Both maximise the between-class variance of the same histogram
    but index its bins differently, so the threshold can differ by one bin.
    """
    from skimage.filters import threshold_multiotsu, threshold_otsu

    if not np.isfinite(m).all() or m.max() == m.min():
        return np.zeros(m.shape, dtype=bool)
    if check_conventions(conventions) == "paper":
        return m > threshold_multiotsu(m, classes=2)[0]
    return m > threshold_otsu(m)


def postprocess(raw: np.ndarray, sigma_px: float, otsu: bool = True,
                conventions: str = "paper") -> np.ndarray:
    """Paper's step 7 on ``[K, S, S]`` maps: Gaussian (sigma in pixels), min-max to [0, 1], then,
    with ``otsu``, the map times its Otsu mask (values above the threshold keep their strength;
    ``conventions`` picks the Otsu variant, see :func:`otsu_mask`).
    Returns float32 ``[K, S, S]`` in [0, 1]."""
    smooth = gaussian_smooth(raw, sigma_px)
    out = minmax(smooth)  # per map; a constant map becomes 0
    if otsu:
        out = np.stack([m * otsu_mask(m, conventions) for m in out])
    return out.astype(np.float32)


def to_heatmaps(acc: MapAccumulator, cfg: "GroundingConfig", size: int, geometries: Sequence["CropGeometry"],
                phrases_per_image: Sequence[Sequence[str]], return_raw: bool, info: dict) -> list[Heatmaps]:
    """Accumulated maps of all rows (image by image, phrase by phrase) -> post-processed
    :class:`~groundiff_core.heatmaps.Heatmaps` per image, on the original grid (``cfg`` gives the
    post-processing and the conventions of the back-projection)."""
    raw = acc.mean(size, cfg.resize).cpu().double().numpy()  # [R, S, S]
    final = postprocess(raw, cfg.sigma_pixels(size), cfg.otsu, cfg.conventions)
    flat = [k for k in range(len(final)) if not np.isfinite(final[k]).any() or np.nanmin(final[k]) == np.nanmax(final[k])]
    if flat:
        from groundiff_core.io.preprocess import warn_once

        names = [p for ps in phrases_per_image for p in ps]
        warn_once("constant map", f"the heatmap of {names[flat[0]]!r} is constant or all NaN (no pixel stands out: "
                                  "nothing to localise); its metrics are those of an uninformative map")
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
