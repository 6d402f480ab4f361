"""What every grounding dataset yields: image-phrase pairs with ground-truth boxes.

A :class:`GroundingPair` is one phrase about one image with the union of its boxes as ground
truth. Boxes are ``[N, 4]`` float ``(x, y, w, h)`` in ORIGINAL image pixels (``x`` along columns,
origin at the top-left corner). The dataset loaders (:mod:`.mscxr`, :mod:`.vindr`, :mod:`.nih`)
only read annotations and resolve paths; images are read later, by the evaluation runner, so that a
missing or unreadable file becomes a listed skip instead of a crash.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

__all__ = [
    "GroundingPair",
    "require_columns",
    "clean_boxes",
    "fit_boxes_to_image",
    "group_by_image",
    "subset",
    "PairList",
    "IMAGE_SUFFIXES",
]

#: File suffixes tried when an annotated path is not found as written.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".dcm", ".dicom")


@dataclass(frozen=True, eq=False)
class GroundingPair:
    """One image-phrase pair.

    Attributes
    ----------
    pair_id : stable identifier, unique within a dataset (results files are keyed by it)
    image_path : where the image should be (it may be missing: the runner lists it as skipped)
    phrase : the text to ground
    category : the finding class (metrics are reported per category)
    boxes : ``[N, 4]`` float64 ``(x, y, w, h)`` in original pixels; the ground truth is their union
    image_size : ``(height, width)`` from the annotations, or None when the CSV does not say
    extra : anything else the source gives (e.g. ``dicom_id``, ``split``, ``rad_ids``)
    """

    pair_id: str
    image_path: Path
    phrase: str
    category: str
    boxes: np.ndarray
    image_size: tuple[int, int] | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        b = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        object.__setattr__(self, "boxes", b)
        object.__setattr__(self, "image_path", Path(self.image_path))
        if self.image_size is not None:
            object.__setattr__(self, "image_size", (int(self.image_size[0]), int(self.image_size[1])))

    def __repr__(self) -> str:
        return (f"GroundingPair({self.pair_id!r}, phrase={self.phrase!r}, category={self.category!r}, "
                f"boxes={len(self.boxes)}, image={str(self.image_path)!r})")


class PairList(list):
    """A loader's pairs (a plain ``list`` of :class:`GroundingPair`) plus what it had to drop.

    ``dropped`` holds one dict per annotated pair left with no usable box (``pair_id``,
    ``image_path``, ``phrase``, ``category``, ``rows``: where in the CSV, ``reason``), so that the
    evaluation runner can list them in its summary instead of only warning at load time.
    """

    def __init__(self, pairs: Iterable[GroundingPair] = (), dropped: Iterable[dict] = ()) -> None:
        super().__init__(pairs)
        self.dropped: list[dict] = list(dropped)


# ------------------------------------------------------------------------------------------ CSV
def require_columns(columns: Iterable[str], required: Sequence[str], source: str | os.PathLike,
                    layout: str) -> None:
    """Raise ValueError naming every missing column (and those present) of a CSV."""
    have = list(columns)
    missing = [c for c in required if c not in have]
    if missing:
        raise ValueError(
            f"{source}: missing column(s) {missing} for the {layout} layout; "
            f"expected {list(required)}, found {have}"
        )


def read_csv(path: str | os.PathLike):
    """Read an annotation CSV as strings (numbers are parsed by the loaders); clear errors."""
    import pandas as pd

    from groundiff_core.util.fileio import regular_file

    path = regular_file(path, "annotation CSV", max_bytes=2 ** 30)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise ValueError(f"{path}: not a readable CSV ({e})") from None
    df.columns = [str(c).strip() for c in df.columns]
    return df


def to_float(value: str) -> float:
    """A CSV cell as float (NaN when empty or not a number: such boxes are dropped with a warning)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


# ------------------------------------------------------------------------------------------ boxes
def clean_boxes(boxes: np.ndarray, image_size: tuple[int, int] | None,
                where: Sequence[str]) -> tuple[np.ndarray, list[str], list[str]]:
    """Drop zero-area boxes and clip boxes to the image.

    Parameters
    ----------
    boxes : ``[N, 4]`` (x, y, w, h) in original pixels
    image_size : ``(height, width)`` to clip to, or None (no clipping)
    where : one label per box used in warnings (e.g. ``"row 12"``)

    Returns
    -------
    kept boxes ``[M, 4]``, labels of the boxes dropped for zero area (including boxes that lie
    wholly outside the image), labels of the boxes that were clipped.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    keep = np.ones(len(b), dtype=bool)
    dropped, clipped = [], []
    out = b.copy()
    for i, (x, y, w, h) in enumerate(b):
        if not np.isfinite([x, y, w, h]).all() or w <= 0 or h <= 0:
            keep[i] = False
            dropped.append(where[i])
            continue
        if image_size is not None:
            H, W = image_size
            x0, y0 = max(x, 0.0), max(y, 0.0)
            x1, y1 = min(x + w, float(W)), min(y + h, float(H))
            if (x0, y0, x1, y1) != (x, y, x + w, y + h):
                if x1 <= x0 or y1 <= y0:
                    keep[i] = False
                    dropped.append(f"{where[i]} (outside the {W}x{H} image)")
                    continue
                clipped.append(where[i])
                out[i] = (x0, y0, x1 - x0, y1 - y0)
    return out[keep], dropped, clipped


def warn_box_fixes(source: str, dropped: list[str], clipped: list[str]) -> None:
    """One warning per kind of fix, listing where (never a silent change)."""
    def _list(items: list[str]) -> str:
        return ", ".join(items[:10]) + (f" and {len(items) - 10} more" if len(items) > 10 else "")

    if dropped:
        warnings.warn(f"{source}: skipped {len(dropped)} zero-area box(es): {_list(dropped)}",
                      UserWarning, stacklevel=3)
    if clipped:
        warnings.warn(f"{source}: clipped {len(clipped)} box(es) reaching outside the image: "
                      f"{_list(clipped)}", UserWarning, stacklevel=3)


def fit_boxes_to_image(pair: GroundingPair, height: int, width: int) -> tuple[np.ndarray, list[str]]:
    """The pair's boxes on an image actually read as ``height x width``.

    If the annotation gives a different image size (e.g. the user downsampled MIMIC-CXR-JPG), boxes
    are rescaled proportionally; then they are clipped to the image, and zero-area ones dropped.
    Returns the boxes and human-readable notes on what was changed (empty when nothing was).
    """
    boxes = pair.boxes.copy()
    notes = []
    if pair.image_size is not None and tuple(pair.image_size) != (height, width):
        ah, aw = pair.image_size
        boxes[:, [0, 2]] *= width / aw
        boxes[:, [1, 3]] *= height / ah
        notes.append(f"boxes rescaled from the annotated {aw}x{ah} to the image's {width}x{height}")
    labels = [f"box {i}" for i in range(len(boxes))]
    boxes, dropped, clipped = clean_boxes(boxes, (height, width), labels)
    if clipped:
        notes.append(f"clipped to the image: {', '.join(clipped)}")
    if dropped:
        notes.append(f"dropped (no area inside the image): {', '.join(dropped)}")
    return boxes, notes


# ------------------------------------------------------------------------------------------ paths
def resolve_image(root: Path, rel: str, strip_prefixes: Sequence[str] = ()) -> Path:
    """Find ``rel`` under ``root``; tolerate a missing/extra leading folder and another suffix.

    Tried in order: ``root/rel``; ``rel`` without each of ``strip_prefixes``; ``root/prefix/rel``;
    then each of those with the other :data:`IMAGE_SUFFIXES`. The first candidate is returned when
    none exists (the runner then lists the pair as skipped with that path).
    """
    rel = str(rel).replace("\\", "/").lstrip("/")
    rels = [rel]
    for p in strip_prefixes:
        p = p.rstrip("/") + "/"
        rels.append(rel[len(p):] if rel.startswith(p) else p + rel)
    candidates = [root / r for r in rels]
    for c in list(candidates):
        candidates += [c.with_suffix(s) for s in IMAGE_SUFFIXES if s != c.suffix.lower()]
    for c in candidates:
        if c.is_file():
            return c
    return candidates[0]


# ------------------------------------------------------------------------------------------ pairs
def group_by_image(pairs: Sequence[GroundingPair]) -> "OrderedDict[Path, list[GroundingPair]]":
    """Pairs grouped by image path, images in order of first appearance."""
    groups: OrderedDict[Path, list[GroundingPair]] = OrderedDict()
    for p in pairs:
        groups.setdefault(p.image_path, []).append(p)
    return groups


def subset(pairs: Sequence[GroundingPair], n: int | None, seed: int = 0) -> list[GroundingPair]:
    """A seeded random subset of ``n`` pairs, kept in dataset order (all pairs if ``n`` is None).

    Nested: ``subset(p, 20)`` is contained in ``subset(p, 40)`` for the same seed, so growing
    ``n`` extends a finished evaluation instead of redoing it.
    """
    pairs = list(pairs)
    if n is None or n >= len(pairs):
        return pairs
    if n <= 0:
        raise ValueError(f"n_pairs must be positive, got {n}")
    order = np.random.default_rng(seed).permutation(len(pairs))
    chosen = np.sort(order[:n])
    return [pairs[i] for i in chosen]


def pairs_from_rows(rows: Sequence[dict], source: str) -> list[dict]:
    """Merge annotation rows that share a key into one entry with all their boxes.

    Each row is a dict with ``key`` (hashable), ``box`` (x, y, w, h), ``where`` (label for
    warnings) and any other fields (taken from the key's first row). Returns merged dicts with
    ``boxes`` ``[N, 4]`` and ``where`` lists, in order of first appearance.
    """
    merged: OrderedDict = OrderedDict()
    for r in rows:
        m = merged.get(r["key"])
        if m is None:
            m = merged[r["key"]] = {k: v for k, v in r.items() if k not in ("box", "where")}
            m["boxes"], m["where"] = [], []
        m["boxes"].append(r["box"])
        m["where"].append(r["where"])
    return list(merged.values())


def _box_problem(box: Sequence[float], image_size: tuple[int, int] | None) -> str:
    """Why a box was dropped, in words: not a number, no area, or outside the image."""
    x, y, w, h = box
    if not np.isfinite([x, y, w, h]).all():
        return "non-numeric coordinates"
    if w <= 0 or h <= 0:
        return "zero area"
    H, W = image_size if image_size is not None else (None, None)
    return f"outside the {W}x{H} image"


def build_pairs(merged: Sequence[dict], source: str, make) -> PairList:
    """Clean each merged entry's boxes (warning once per CSV) and turn it into a pair via ``make``.

    ``make(entry, boxes) -> GroundingPair``. Entries left with no box are skipped with a warning
    and listed, with the reason, in the result's ``dropped`` (see :class:`PairList`).
    """
    all_dropped, all_clipped, empty = [], [], []
    out, gone = [], []
    for m in merged:
        boxes, dropped, clipped = clean_boxes(np.asarray(m["boxes"], dtype=np.float64),
                                              m.get("image_size"), m["where"])
        all_dropped += dropped
        all_clipped += clipped
        if len(boxes) == 0:
            empty.append(m["where"][0])
            p = make(m, np.zeros((0, 4)))
            why = [f"{w}: {_box_problem(b, m.get('image_size'))}"
                   for w, b in zip(m["where"], np.asarray(m["boxes"], dtype=np.float64).reshape(-1, 4))]
            gone.append({"pair_id": p.pair_id, "image_path": str(p.image_path), "phrase": p.phrase,
                         "category": p.category, "rows": list(m["where"]),
                         "reason": "no usable box (" + "; ".join(why) + ")"})
            continue
        out.append(make(m, boxes))
    warn_box_fixes(source, all_dropped, all_clipped)
    if empty:
        warnings.warn(f"{source}: skipped {len(empty)} pair(s) left with no valid box "
                      f"(first rows: {', '.join(empty[:10])})", UserWarning, stacklevel=2)
    counts = Counter(p.pair_id for p in out)
    dup = sorted(i for i, c in counts.items() if c > 1)
    if dup:
        raise ValueError(f"{source}: duplicate pair ids {dup[:5]}")
    return PairList(out, gone)
