"""A tiny MS-CXR-layout dataset written by the tests: small JPEG images under a MIMIC-like tree.

Three images (40 x 48 pixels, H x W), five phrases, eight box rows:

* ``a1``: "left pleural effusion" (two rows -> one pair with 2 boxes) and "cardiomegaly";
* ``b2``: "right upper lobe consolidation" and "small left pneumothorax";
* ``c3``: "bilateral edema" (two rows -> 2 boxes), split "val" (the others are "test").
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

H, W = 40, 48
COLUMNS = ["dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h",
           "image_width", "image_height", "split"]

ROWS = [
    # dicom, category, phrase, x, y, w, h, split
    ("a1", "Pleural Effusion", "left pleural effusion", 28, 26, 14, 10, "test"),
    ("a1", "Pleural Effusion", "left pleural effusion", 30, 20, 10, 6, "test"),
    ("a1", "Cardiomegaly", "cardiomegaly", 14, 18, 20, 14, "test"),
    ("b2", "Consolidation", "right upper lobe consolidation", 6, 6, 12, 10, "test"),
    ("b2", "Pneumothorax", "small left pneumothorax", 32, 4, 10, 8, "test"),
    ("c3", "Edema", "bilateral edema", 6, 14, 14, 12, "val"),
    ("c3", "Edema", "bilateral edema", 28, 14, 14, 12, "val"),
]


def rel_path(dicom: str) -> str:
    return f"files/p10/p1000000{dicom[-1]}/s5000000{dicom[-1]}/{dicom}.jpg"


def write_images(root: Path, dicoms=("a1", "b2", "c3"), seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for d in dicoms:
        p = root / rel_path(d)
        p.parent.mkdir(parents=True, exist_ok=True)
        img = (rng.random((H, W)) * 255).astype(np.uint8)
        Image.fromarray(img).save(p)


def write_csv(path: Path, rows=ROWS, columns=COLUMNS, extra_rows=()) -> Path:
    """Write the fixture CSV (``columns`` may drop some, e.g. ``split`` for the v1.0.0 layout)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        for dicom, cat, phrase, x, y, bw, bh, split in list(rows) + list(extra_rows):
            full = {"dicom_id": dicom, "category_name": cat, "label_text": phrase,
                    "path": rel_path(dicom), "x": x, "y": y, "w": bw, "h": bh,
                    "image_width": W, "image_height": H, "split": split}
            w.writerow([full[c] for c in columns])
    return path


def make_dataset(tmp: Path, **kw) -> tuple[Path, Path]:
    """CSV + MIMIC-CXR-JPG-like image root under ``tmp``; returns (csv, image_root)."""
    root = tmp / "mimic-cxr-jpg"
    write_images(root)
    return write_csv(tmp / "ms_cxr.csv", **kw), root
