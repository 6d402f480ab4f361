"""NIH ChestX-ray14 (Wang et al.): the 984 boxes of ``BBox_List_2017.csv``.

The CSV has columns ``Image Index, Finding Label, Bbox [x, y, w, h]``; because the header is
written ``Bbox [x,y,w,h]`` with commas, CSV readers see four columns named ``Bbox [x``, ``y``,
``w``, ``h]`` (plus empty trailing ones). Both that form and plain ``x, y, w, h`` are accepted.
Boxes are ``(x, y, w, h)`` in pixels of the 1024x1024 images. The phrase is the finding label in
lower case (e.g. ``Effusion`` -> ``effusion``).

Images are looked up as ``<root>/<Image Index>``, ``<root>/images/<Image Index>`` and, failing
those, anywhere under ``<root>/images_*/images/`` (the layout of the official archives).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from groundiff_core.io.datasets.common import (GroundingPair, build_pairs, pairs_from_rows, read_csv, require_columns,
                     to_float)

__all__ = ["NIH_COLUMNS", "load_nih"]

NIH_COLUMNS = ("Image Index", "Finding Label", "x", "y", "w", "h")
_RENAME = {"Bbox [x": "x", "h]": "h", "Bbox [x, y, w, h]": None}


def _nih_phrase(label: str) -> str:
    return label.strip().lower()


def load_nih(csv: str | os.PathLike, image_root: str | os.PathLike, *,
             phrase: Callable[[str], str] = _nih_phrase) -> list[GroundingPair]:
    """Image-phrase pairs of ``BBox_List_2017.csv`` (one per image and finding label).

    ``pair_id`` is ``"<Image Index>|<Finding Label>"``; ``category`` is the label as written;
    ``image_size`` is None (boxes are clipped when the image is read).
    """
    df = read_csv(csv)
    df = df.rename(columns={k: v for k, v in _RENAME.items() if v})
    df = df[[c for c in df.columns if not c.startswith("Unnamed")]]
    require_columns(df.columns, NIH_COLUMNS, csv, "NIH ChestX-ray14 BBox_List_2017")
    rows = []
    for idx, r in zip(df.index, df.to_dict("records")):
        label = r["Finding Label"].strip()
        rows.append({"key": (r["Image Index"], label),
                     "box": [to_float(r[c]) for c in ("x", "y", "w", "h")],
                     "where": f"row {idx + 2}", "image": r["Image Index"].strip(), "category": label})
    merged = pairs_from_rows(rows, str(csv))
    finder = _ImageFinder(Path(image_root))

    def make(m: dict, boxes) -> GroundingPair:
        return GroundingPair(
            pair_id=f"{m['image']}|{m['category']}", image_path=finder(m["image"]),
            phrase=phrase(m["category"]), category=m["category"], boxes=boxes,
            extra={"image_index": m["image"]},
        )

    return build_pairs(merged, str(csv), make)


class _ImageFinder:
    """Resolve an image name under the NIH folder layouts (one directory scan, only if needed)."""

    def __init__(self, root: Path):
        self.root = root
        self._index: dict[str, Path] | None = None

    def __call__(self, name: str) -> Path:
        for c in (self.root / name, self.root / "images" / name):
            if c.is_file():
                return c
        if self._index is None:
            self._index = {p.name: p for p in self.root.glob("images_*/images/*")}
        return self._index.get(name, self.root / name)
