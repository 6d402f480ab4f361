"""The phrase prior: the heatmap a phrase predicts WITHOUT the image, the baseline a reviewer asks for.

A grounding method that only learned where each kind of phrase usually lies ("left pleural
effusion" -> the left costophrenic angle, "cardiomegaly" -> the heart) needs no image at all. The
phrase prior is exactly that, fitted on training pairs: for a query phrase, the mean box mask, in
coordinates normalised to the image, of the training pairs whose phrases are most like it. A method
that reads the image must beat it.

Similarity: TF-IDF over the phrase's words and word pairs (scikit-learn's ``TfidfVectorizer``,
lower-cased, L2-normalised), cosine. Neighbours: every training phrase at least as similar as the
``k``-th most similar one (ties are all taken, so the result never depends on the order of the
training set), and only those with a positive similarity; a phrase that shares no word with any
training phrase gets the mean mask of all of them. The mean mask is computed on a ``grid`` x
``grid`` raster of the normalised image, resized (bilinear) to the image's size and min-max
normalised to [0, 1].

The prior uses nothing of the image but its height and width. It is deterministic, and is written
and read as one small JSON file (:meth:`PhrasePrior.save`, :meth:`PhrasePrior.load`) whose content
fingerprint is part of :meth:`describe`, hence of an evaluation's identity.

:class:`CrossFittedPrior` scores a dataset with priors that never saw the image of the pair they
score (k folds grouped by image), for datasets without a separate training set (MS-CXR).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from groundiff_core.heatmaps import Heatmaps
from groundiff_core.util.arrays import minmax
from groundiff_core.util.fingerprint import json_sha256
from groundiff_core.util.phrases import as_phrase_list

__all__ = ["PhrasePrior", "CrossFittedPrior", "normalised_boxes", "PRIOR_FORMAT"]

PRIOR_FORMAT = "groundiff-phrase-prior"
_VERSION = 1
_TOKENS = r"[a-z0-9]+(?:-[a-z0-9]+)*"  # words, keeping "plate-like" whole


def normalised_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """``[N, 4]`` (x, y, w, h) in pixels of a ``height x width`` image -> the same in [0, 1] units."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return b / np.array([width, height, width, height], dtype=np.float64)


def _raster(boxes: np.ndarray, grid: int) -> np.ndarray:
    """Union mask ``[grid, grid]`` of normalised boxes: a cell is in a box when its centre is."""
    centres = (np.arange(grid) + 0.5) / grid
    m = np.zeros((grid, grid), dtype=bool)
    for x, y, w, h in boxes:
        rows = (centres >= y) & (centres < y + h)
        cols = (centres >= x) & (centres < x + w)
        m |= rows[:, None] & cols[None, :]
    return m


class PhrasePrior:
    """Image-blind grounding: each phrase's map is the mean box mask of its nearest training phrases.

    Parameters
    ----------
    examples : ``(phrase, boxes)`` training pairs, boxes ``[N, 4]`` normalised (x, y, w, h) in
        [0, 1] units of their image (:func:`normalised_boxes`)
    k : neighbours per query (all ties at the ``k``-th similarity are taken too)
    grid : side of the raster the mean mask is computed on
    """

    name = "phrase-prior"

    def __init__(self, examples: Iterable[tuple[str, np.ndarray]], k: int = 100, grid: int = 256) -> None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if isinstance(grid, bool) or not isinstance(grid, (int, np.integer)) or not 8 <= grid <= 4096:
            raise ValueError(f"grid must be an integer between 8 and 4096, got {grid!r}")
        phrases, boxes = [], []
        for phrase, b in examples:
            b = np.round(np.asarray(b, dtype=np.float64).reshape(-1, 4), 6)
            if not str(phrase).strip() or len(b) == 0:
                continue
            if not np.isfinite(b).all() or (b[:, 2:] <= 0).any():
                raise ValueError(f"training pair {phrase!r}: boxes must be finite with positive size, got {b.tolist()}")
            phrases.append(str(phrase))
            boxes.append(b)
        if not phrases:
            raise ValueError("a phrase prior needs at least one training pair with a phrase and a box")
        self.phrases, self.boxes, self.k, self.grid = phrases, boxes, int(k), int(grid)
        self._vectorizer = self._matrix = self._masks = None

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, pairs: Sequence, k: int = 100, grid: int = 256) -> "PhrasePrior":
        """Fit on :class:`~groundiff_core.io.datasets.GroundingPair` s; boxes are normalised by the
        annotated image size, or by the image file's size where the annotations give none."""
        from groundiff_core.io.images import image_size

        examples = []
        for p in pairs:
            h, w = p.image_size if p.image_size is not None else image_size(p.image_path)
            examples.append((p.phrase, normalised_boxes(p.boxes, h, w)))
        return cls(examples, k=k, grid=grid)

    # ------------------------------------------------------------------ the verb
    def describe(self) -> dict:
        return {"method": self.name, "k": self.k, "grid": self.grid, "n_examples": len(self.phrases),
                "fingerprint": self.fingerprint}

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the prior's content (what :meth:`save` writes)."""
        return json_sha256(self._content())

    def ground(self, image, phrases: Sequence[str] | str) -> Heatmaps:
        """``[K, H, W]`` float32 maps on the image's grid; only the image's size is used."""
        from groundiff_core.io.images import load_image

        phrases = as_phrase_list(phrases)
        h, w = load_image(image).shape[:2]
        maps = np.stack([self.prior(p, h, w) for p in phrases])
        return Heatmaps(heatmaps=maps, phrases=phrases, geometry=None, info=self.describe())

    def prior(self, phrase: str, height: int, width: int) -> np.ndarray:
        """The ``[height, width]`` float32 map of one phrase, in [0, 1]."""
        import torch

        mean = self._mask_stack()[self.neighbours(phrase)].mean(axis=0, dtype=np.float64)
        t = torch.from_numpy(mean.astype(np.float32))[None, None]
        up = torch.nn.functional.interpolate(t, size=(int(height), int(width)), mode="bilinear",
                                             align_corners=False, antialias=False)[0, 0].numpy()
        return minmax(up).astype(np.float32)

    def neighbours(self, phrase: str) -> np.ndarray:
        """Indices of the training pairs whose mean mask is ``phrase`` 's map (sorted)."""
        vec, matrix = self._tfidf()
        q = vec.transform([str(phrase)])
        sims = np.asarray((matrix @ q.T).todense()).ravel()
        if not (sims > 0).any():
            return np.arange(len(self.phrases))
        kth = np.sort(sims)[::-1][min(self.k, len(sims)) - 1]
        return np.flatnonzero((sims >= kth - 1e-12) & (sims > 0))

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """Write the prior as one JSON file (atomically); returns the path."""
        from groundiff_core.util.fileio import atomic_write

        path = Path(path)
        atomic_write(path, json.dumps(self._content(), separators=(",", ":")) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PhrasePrior":
        """Read a prior written by :meth:`save`; anything else is refused by name."""
        from groundiff_core.util.fileio import regular_file

        path = Path(path)
        try:
            data = json.loads(regular_file(path, "phrase prior", max_bytes=2 ** 30).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"phrase prior not found: {path}") from None
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise ValueError(f"{path} is not a phrase prior file ({type(e).__name__}: {e})") from None
        if not isinstance(data, dict) or data.get("format") != PRIOR_FORMAT:
            raise ValueError(f"{path} is not a phrase prior file (no \"format\": \"{PRIOR_FORMAT}\")")
        if data.get("version") != _VERSION:
            raise ValueError(f"{path}: phrase prior version {data.get('version')!r}, this groundiff reads {_VERSION}")
        try:
            examples = [(p, np.asarray(b, dtype=np.float64)) for p, b in data["examples"]]
            return cls(examples, k=data["k"], grid=data["grid"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: malformed phrase prior ({type(e).__name__}: {e})") from None

    # ------------------------------------------------------------------ internals
    def _content(self) -> dict:
        return {"format": PRIOR_FORMAT, "version": _VERSION, "k": self.k, "grid": self.grid,
                "examples": [[p, b.tolist()] for p, b in zip(self.phrases, self.boxes)]}

    def _tfidf(self):
        if self._vectorizer is None:
            from sklearn.feature_extraction.text import TfidfVectorizer

            self._vectorizer = TfidfVectorizer(lowercase=True, token_pattern=_TOKENS, ngram_range=(1, 2))
            self._matrix = self._vectorizer.fit_transform(self.phrases)
        return self._vectorizer, self._matrix

    def _mask_stack(self) -> np.ndarray:
        if self._masks is None:
            self._masks = np.stack([_raster(b, self.grid) for b in self.boxes])
        return self._masks


def image_key(image) -> str:
    """Content key of an image as the engine reads it (its pixels and shape), to recognise it later."""
    from groundiff_core.io.images import load_image

    arr = np.ascontiguousarray(load_image(image))
    return json_sha256({"shape": list(arr.shape), "pixels": hashlib.sha256(arr.tobytes()).hexdigest()})


class CrossFittedPrior:
    """Phrase priors fitted in ``folds`` folds grouped by image: each pair is scored by the prior
    fitted on the other folds, so no prior ever scores an image it was fitted on.

    Images are recognised by their pixels (:func:`image_key`), so pairs of two paths holding the
    same image fall in the same fold; an image that was not among the fitted pairs is refused.
    """

    name = "phrase-prior"

    def __init__(self, priors: Sequence[PhrasePrior], fold_of: dict[str, int], folds: int, seed: int) -> None:
        self.priors, self.fold_of, self.folds, self.seed = list(priors), dict(fold_of), int(folds), int(seed)

    @classmethod
    def fit(cls, pairs: Sequence, folds: int = 5, seed: int = 0, k: int = 100, grid: int = 256,
            progress: bool = False) -> "CrossFittedPrior":
        """Read every image once (its key and size), assign images to folds (seeded), fit each fold's prior.

        Pairs whose image cannot be read are left out of the fitting (the evaluation skips them).
        """
        from groundiff_core.io.datasets.common import group_by_image
        from groundiff_core.io.images import load_image

        if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
            raise ValueError(f"folds must be an integer >= 2, got {folds!r}")
        groups = group_by_image(pairs)
        items = groups.items()
        if progress:
            from tqdm.auto import tqdm
            items = tqdm(items, desc="phrase prior: reading images", unit="img")
        by_key: dict[str, list] = {}
        for path, grp in items:
            try:
                img = load_image(path)
            except (OSError, ValueError):
                continue
            by_key.setdefault(image_key(img), []).extend((p, img.shape[:2]) for p in grp)
        keys = sorted(by_key)
        if len(keys) < folds:
            raise ValueError(f"cross-fitting in {folds} folds needs at least {folds} readable images, got {len(keys)}")
        order = np.random.default_rng(seed).permutation(len(keys))
        fold_of = {keys[i]: int(r % folds) for r, i in enumerate(order)}
        priors = []
        for f in range(folds):
            examples = [(p.phrase, normalised_boxes(p.boxes, *(p.image_size or hw)))
                        for key in keys if fold_of[key] != f for p, hw in by_key[key]]
            priors.append(PhrasePrior(examples, k=k, grid=grid))
        return cls(priors, fold_of, folds, seed)

    def describe(self) -> dict:
        p = self.priors[0]
        return {"method": self.name, "k": p.k, "grid": p.grid, "cross_fit": {"folds": self.folds, "seed": self.seed},
                "fingerprint": json_sha256({"priors": [q.fingerprint for q in self.priors],
                                            "folds": sorted(self.fold_of.items())})}

    def prior_for(self, image) -> PhrasePrior:
        """The prior that scores ``image``: the one fitted without its fold."""
        key = image_key(image)
        if key not in self.fold_of:
            raise ValueError("this image was not among the images the cross-fitted phrase prior was fitted on; "
                             "ground other images with a PhrasePrior fitted on a training set")
        return self.priors[self.fold_of[key]]

    def ground(self, image, phrases: Sequence[str] | str) -> Heatmaps:
        from groundiff_core.io.images import load_image

        img = load_image(image)
        result = self.prior_for(img).ground(img, phrases)
        result.info = {**self.describe(), "fold": self.fold_of[image_key(img)]}
        return result
