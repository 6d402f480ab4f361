"""MS-CXR (Boecking et al., PhysioNet): phrase grounding boxes on MIMIC-CXR images.

The annotation CSV (``MS_CXR_Local_Alignment_v1.0.0.csv`` / ``..._v1.1.0.csv``) has one row per
box with columns ``dicom_id, category_name, label_text, path, x, y, w, h, image_width,
image_height``; v1.1.0 adds ``split`` (train/val/test). Boxes are ``(x, y, w, h)`` in original
image pixels. Rows with the same ``path`` and ``label_text`` are the boxes of one phrase and are
merged into one :class:`GroundingPair` (the paper's ground truth is their union).

``path`` (e.g. ``files/p15/p15552465/s51434331/<dicom_id>.jpg``) is relative to the MIMIC-CXR-JPG
root; a root that already ends in ``files/`` works too, and a ``.dcm`` path falls back to the
``.jpg`` of the same name. The project's phantom generator writes this same layout.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from groundiff_core.io.datasets.common import (GroundingPair, build_pairs, pairs_from_rows, read_csv, require_columns,
                     resolve_image, to_float)

__all__ = ["MSCXR_COLUMNS", "load_mscxr"]

#: Columns of the v1.0.0 layout (v1.1.0 adds ``split``).
MSCXR_COLUMNS = ("dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h",
                 "image_width", "image_height")


def _size(width: str, height: str) -> tuple[int, int] | None:
    w, h = to_float(width), to_float(height)
    if w > 0 and h > 0:
        return int(round(h)), int(round(w))
    return None


def load_mscxr(csv: str | os.PathLike, image_root: str | os.PathLike,
               split: str | None = None) -> list[GroundingPair]:
    """Image-phrase pairs of an MS-CXR-layout CSV.

    Parameters
    ----------
    csv : the annotation CSV (v1.0.0 or v1.1.0 layout)
    image_root : MIMIC-CXR-JPG root (the folder holding ``files/``), or the folder the CSV's
        ``path`` column is relative to (phantom sets: the folder of the CSV)
    split : keep only rows of this split (needs the v1.1.0 ``split`` column); None keeps all

    Returns
    -------
    One pair per (path, label_text), in CSV order; ``pair_id`` is ``"<dicom_id>|<label_text>"``.
    Zero-area boxes and rows without text are skipped and boxes reaching outside
    ``image_width x image_height`` are clipped, each with a warning.
    """
    df = read_csv(csv)
    require_columns(df.columns, MSCXR_COLUMNS, csv, "MS-CXR")
    if split is not None:
        if "split" not in df.columns:
            raise ValueError(f"{csv}: split={split!r} requested but the CSV has no 'split' column "
                             "(the MS-CXR v1.0.0 layout has none; use v1.1.0 or split=None)")
        have = sorted(set(df["split"]))
        if split not in have:
            raise ValueError(f"{csv}: no rows with split={split!r}; splits present: {have}")
        df = df[df["split"] == split]
    root = Path(image_root)
    rows, no_text = [], []
    for idx, r in zip(df.index, df.to_dict("records")):
        r["label_text"] = " ".join(r["label_text"].split())  # "a  b " and "a b" are one phrase
        if not r["label_text"]:
            no_text.append({"pair_id": f"{r['dicom_id']}|(row {idx + 2})", "image_path": str(r["path"]),
                            "phrase": "", "category": r["category_name"], "rows": [f"row {idx + 2}"],
                            "reason": "empty label_text (no phrase to ground)"})
            continue
        rows.append({
            "key": (r["path"], r["label_text"]),
            "box": [to_float(r[c]) for c in ("x", "y", "w", "h")],
            "where": f"row {idx + 2}",  # 1-based line number in the file (header is line 1)
            "dicom_id": r["dicom_id"], "category": r["category_name"], "phrase": r["label_text"],
            "path": r["path"], "image_size": _size(r["image_width"], r["image_height"]),
            "split": r.get("split"),
        })
    if no_text:
        warnings.warn(f"{csv}: skipped {len(no_text)} row(s) with an empty label_text: "
                      f"{', '.join(d['rows'][0] for d in no_text[:10])}", UserWarning, stacklevel=2)
    merged = pairs_from_rows(rows, str(csv))
    _check_consistent(rows, str(csv))

    def make(m: dict, boxes) -> GroundingPair:
        dicom = m["dicom_id"] or Path(m["path"]).stem
        extra = {"dicom_id": dicom, "path": m["path"]}
        if m.get("split") is not None:
            extra["split"] = m["split"]
        return GroundingPair(
            pair_id=f"{dicom}|{m['phrase']}",
            image_path=resolve_image(root, m["path"], strip_prefixes=("files",)),
            phrase=m["phrase"], category=m["category"], boxes=boxes,
            image_size=m["image_size"], extra=extra,
        )

    pairs = build_pairs(merged, str(csv), make)
    pairs.dropped += no_text  # listed in the run's summary.json beside the pairs left without a box
    return pairs


def _check_consistent(rows: list[dict], source: str) -> None:
    """Warn when rows merged into one pair disagree on category or image size (first row wins)."""
    first: dict = {}
    bad = []
    for r in rows:
        f = first.setdefault(r["key"], r)
        if (f["category"], f["image_size"]) != (r["category"], r["image_size"]):
            bad.append(r["where"])
    if bad:
        warnings.warn(f"{source}: rows of the same path and phrase disagree on category or image "
                      f"size ({', '.join(bad[:10])}); the first row's values are used",
                      UserWarning, stacklevel=3)
