"""The image-shuffle control: does a method's score come from the image or only from the text?

Each image's pairs are moved to another image of the same dataset (a seeded derangement: no image
keeps its own pairs) and scored on their own boxes, mapped to that image's frame (coordinates
scaled by the two images' sizes). A method that reads only the phrase loses nothing; a method that
reads the image loses what it found there. Evaluate the moved pairs like any dataset, then compare
with the run on the original pairs (:func:`~groundiff_core.evaluation.compare.paired_difference`:
the pairs keep their ids)::

    moved = shuffled_pairs(pairs, seed=0)
    evaluate(method, moved, "runs/shuffle", dataset={"name": "phantom", "control": CONTROL})
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from groundiff_core.io.datasets.common import GroundingPair, PairList, group_by_image

__all__ = ["shuffled_pairs", "derangement", "CONTROL"]

CONTROL = "image-shuffle"


def derangement(n: int, seed: int = 0) -> np.ndarray:
    """A seeded random permutation of ``range(n)`` with no fixed point (Sattolo's algorithm: one
    cycle through all ``n``), ``n >= 2``."""
    if n < 2:
        raise ValueError(f"the image-shuffle control needs at least 2 images, got {n}")
    rng = np.random.default_rng(seed)
    perm = np.arange(n)
    for i in range(n - 1, 0, -1):
        j = int(rng.integers(0, i))
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def shuffled_pairs(pairs: Sequence[GroundingPair], seed: int = 0) -> PairList:
    """The control's pairs: each pair on the image its own image is mapped to, with its boxes in
    that image's frame; ids, phrases and categories unchanged, ``extra["shuffled_from"]`` the
    original image. Sizes come from the annotations, or the image files' headers where they give
    none; a pair whose size cannot be read for either image is listed in ``dropped``."""
    from groundiff_core.io.images import image_size

    groups = group_by_image(pairs)
    paths = list(groups)
    sizes: dict = {}
    for path, grp in groups.items():
        annotated = next((p.image_size for p in grp if p.image_size is not None), None)
        if annotated is None:
            try:
                annotated = image_size(path)
            except (OSError, ValueError):
                annotated = None
        sizes[path] = annotated
    target = dict(zip(paths, (paths[i] for i in derangement(len(paths), seed))))
    out, dropped = [], list(getattr(pairs, "dropped", ()))
    for p in pairs:
        dest = target[p.image_path]
        src_hw, dst_hw = sizes[p.image_path], sizes[dest]
        if src_hw is None or dst_hw is None:
            dropped.append({"pair_id": p.pair_id, "image_path": str(p.image_path), "phrase": p.phrase,
                            "category": p.category, "reason": "image-shuffle control: image size unknown"})
            continue
        (sh, sw), (dh, dw) = src_hw, dst_hw
        boxes = p.boxes * np.array([dw / sw, dh / sh, dw / sw, dh / sh])
        out.append(GroundingPair(p.pair_id, dest, p.phrase, p.category, boxes, image_size=dst_hw,
                                 extra={**p.extra, "shuffled_from": str(p.image_path)}))
    return PairList(out, dropped)
