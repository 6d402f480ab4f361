"""VinDr-CXR (Nguyen et al., PhysioNet): radiologists' boxes for 22 local findings.

The annotation CSVs (``annotations_train.csv``, ``annotations_test.csv``) have one row per box with
columns ``image_id, rad_id, class_name, x_min, y_min, x_max, y_max`` (corners in original pixels;
``rad_id`` is optional here: the test set's consensus boxes need none). Rows of class
``No finding`` carry no box and are left out. The phrase is the finding name (see
:func:`finding_phrase`); boxes of the same image and finding are merged, over radiologists too
unless ``per_radiologist=True``.

Images are looked up as ``<root>/<image_id>.dicom`` and under ``train/`` or ``test/``, with
``.dcm``/``.png``/``.jpg`` tried as well (many users convert the DICOMs to PNG).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from groundiff_core.io.datasets.common import (GroundingPair, build_pairs, pairs_from_rows, read_csv, require_columns,
                     resolve_image, to_float)

__all__ = ["VINDR_COLUMNS", "load_vindr", "finding_phrase"]

VINDR_COLUMNS = ("image_id", "class_name", "x_min", "y_min", "x_max", "y_max")
NO_FINDING = "no finding"

_PHRASES = {
    "ild": "interstitial lung disease",
    "nodule/mass": "nodule or mass",
}


def finding_phrase(name: str) -> str:
    """The default phrase for a finding name: lower case, abbreviations spelled out."""
    key = name.strip().lower()
    return _PHRASES.get(key, key)


def load_vindr(csv: str | os.PathLike, image_root: str | os.PathLike, *,
               per_radiologist: bool = False,
               phrase: Callable[[str], str] = finding_phrase) -> list[GroundingPair]:
    """Image-phrase pairs of a VinDr-CXR annotation CSV.

    Parameters
    ----------
    csv : ``annotations_train.csv`` / ``annotations_test.csv`` (or the same columns)
    image_root : folder of the images (``<image_id>.dicom|.png|...``, optionally under train/, test/)
    per_radiologist : one pair per (image, finding, radiologist) instead of the union of all
        radiologists' boxes
    phrase : maps a finding name to the phrase to ground

    ``pair_id`` is ``"<image_id>|<class_name>"`` (``"|<rad_id>"`` appended per radiologist);
    ``category`` is the finding name as written in the CSV; ``image_size`` is None (the CSV gives
    none: boxes are clipped when the image is read).
    """
    df = read_csv(csv)
    require_columns(df.columns, VINDR_COLUMNS, csv, "VinDr-CXR")
    has_rad = "rad_id" in df.columns
    if per_radiologist and not has_rad:
        raise ValueError(f"{csv}: per_radiologist=True needs a 'rad_id' column")
    rows = []
    for idx, r in zip(df.index, df.to_dict("records")):
        name = r["class_name"].strip()
        if name.lower() == NO_FINDING:
            continue
        x0, y0, x1, y1 = (to_float(r[c]) for c in ("x_min", "y_min", "x_max", "y_max"))
        rad = r["rad_id"] if has_rad else None
        key = (r["image_id"], name, rad) if per_radiologist else (r["image_id"], name)
        rows.append({"key": key, "box": [x0, y0, x1 - x0, y1 - y0], "where": f"row {idx + 2}",
                     "image_id": r["image_id"], "category": name, "rad": rad})
    merged = pairs_from_rows(rows, str(csv))
    for m, rads in zip(merged, _rads_per_key(rows)):
        m["rads"] = rads
    root = Path(image_root)

    def make(m: dict, boxes) -> GroundingPair:
        pid = f"{m['image_id']}|{m['category']}" + (f"|{m['rad']}" if per_radiologist else "")
        extra = {"image_id": m["image_id"]}
        if has_rad:
            extra["rad_ids"] = m["rads"]
        return GroundingPair(
            pair_id=pid,
            image_path=resolve_image(root, f"{m['image_id']}.dicom", strip_prefixes=("train", "test")),
            phrase=phrase(m["category"]), category=m["category"], boxes=boxes, extra=extra,
        )

    return build_pairs(merged, str(csv), make)


def _rads_per_key(rows: list[dict]) -> list[list[str]]:
    """Radiologists contributing to each merged key, keys in order of first appearance."""
    seen: dict = {}
    for r in rows:
        lst = seen.setdefault(r["key"], [])
        if r["rad"] is not None and r["rad"] not in lst:
            lst.append(r["rad"])
    return list(seen.values())
