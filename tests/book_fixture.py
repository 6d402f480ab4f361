"""An MS-CXR-shaped dataset and a MONAI bundle for running the book's notebooks off the phantom (no tests here).

``write_book_fixture(root)`` writes, under ``root``:

* ``ms_cxr.csv``: MS-CXR v1.1.0 columns, **capitalised** category names as in MS-CXR ("Pleural
  Effusion", "Lung Opacity"), all eight findings, phrases that start with "Left"/"Right" or carry
  punctuation ("Right apical pneumothorax.", "right basilar opacity, small"), pairs with several
  boxes, a pair whose only box lies in the margin that the model's centre crop cuts away (the
  runner skips it), and a pair that loses one of its two boxes that way;
* ``mimic-cxr-jpg/files/...``: JPEG images at **half** the size the CSV's ``image_width`` /
  ``image_height`` give, as in a downsampled MIMIC-CXR-JPG copy (landscape and portrait);
* ``model/``: the paper's architecture scaled down, as a MONAI model-zoo bundle folder
  (:func:`bundle_fixture.write_bundle`), with a tiny CLIP text encoder whose closed vocabulary
  spells every phrase the notebooks ground (including their own example phrases).

Used by ``scripts/book_fixture.py`` (``make book-fixture``, run by ``.ci/run``) and
``tests/test_book_fixture.py``. Needs MONAI (the ``[monai]`` extra).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

__all__ = ["ROWS", "IMAGES", "CATEGORIES", "write_book_fixture", "write_images", "write_csv", "VANISHING"]

CATEGORIES = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Lung Opacity", "Pleural Effusion",
              "Pneumonia", "Pneumothorax")
SCALE = 2  # the CSV's sizes are SCALE x the JPEG's (a downsampled copy)
# dicom id -> (width, height) of the JPEG on disk; the CSV says SCALE x that
IMAGES = {"f1": (80, 64), "f2": (80, 64), "f3": (80, 64), "f4": (80, 64), "f5": (80, 64), "f6": (64, 80)}
# dicom, category, phrase, x, y, w, h (in the CSV's pixels, i.e. SCALE x the JPEG's)
ROWS = [
    ("f1", "Pleural Effusion", "Left pleural effusion", 100, 70, 40, 40),
    ("f1", "Cardiomegaly", "Cardiomegaly", 50, 40, 60, 50),
    ("f1", "Lung Opacity", "right basilar opacity, small", 30, 70, 40, 40),
    ("f2", "Pneumothorax", "Right apical pneumothorax.", 30, 10, 40, 30),
    ("f2", "Edema", "bilateral edema", 25, 30, 45, 60),
    ("f2", "Edema", "bilateral edema", 90, 30, 45, 60),
    ("f3", "Atelectasis", "left basilar atelectasis", 95, 80, 40, 30),
    ("f3", "Consolidation", "Right lower lobe consolidation", 30, 70, 40, 40),
    ("f4", "Pneumonia", "pneumonia in the left lung", 90, 40, 40, 50),
    ("f4", "Lung Opacity", "opacity at the edge", 0, 40, 12, 30),  # only box in the cropped margin
    ("f5", "Pleural Effusion", "bilateral pleural effusions", 20, 80, 45, 40),
    ("f5", "Pleural Effusion", "bilateral pleural effusions", 95, 80, 45, 40),
    ("f5", "Pneumonia", "right lung pneumonia", 30, 40, 40, 40),
    ("f5", "Pneumonia", "right lung pneumonia", 2, 40, 10, 20),  # this box vanishes after the crop
    ("f6", "Atelectasis", "Bibasilar atelectasis", 15, 110, 40, 30),
    ("f6", "Atelectasis", "Bibasilar atelectasis", 75, 110, 40, 30),
    ("f6", "Consolidation", "left upper lobe consolidation", 75, 30, 40, 40),
]
VANISHING = "opacity at the edge"  # the pair the runner skips (no box inside the model's crop)
# words the notebooks ground besides the phrases: their generation examples, the prompt variants
EXTRA_WORDS = ("right pleural effusion left apical pneumothorax cardiomegaly consolidation in the "
               "left upper lung no , .").split()
COLUMNS = ["dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h",
           "image_width", "image_height", "split"]


def rel_path(dicom: str) -> str:
    return f"files/p10/p100000{dicom[-1]}/s500000{dicom[-1]}/{dicom}.jpg"


def write_images(root: Path, seed: int = 0) -> None:
    """Smooth random JPEGs with the boxes a little brighter, at the on-disk sizes of ``IMAGES``."""
    from PIL import Image
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    for dicom, (w, h) in IMAGES.items():
        img = gaussian_filter(rng.random((h, w)), 2.0)
        img = (img - img.min()) / (np.ptp(img) + 1e-9) * 0.6 + 0.1
        for d, _, _, x, y, bw, bh in ROWS:
            if d == dicom:
                x0, y0 = x // SCALE, y // SCALE
                img[y0:y0 + bh // SCALE, x0:x0 + bw // SCALE] += 0.25
        p = root / rel_path(dicom)
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(p, quality=90)


def write_csv(path: Path, rows=ROWS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(COLUMNS)
        for dicom, cat, phrase, x, y, bw, bh in rows:
            w, h = IMAGES[dicom]
            out.writerow([dicom, cat, phrase, rel_path(dicom), x, y, bw, bh, w * SCALE, h * SCALE, "test"])
    return path


def vocabulary() -> list[str]:
    words = {w for _, cat, phrase, *_ in ROWS for w in (phrase + " " + cat).split()}
    return sorted(words | set(EXTRA_WORDS))


def write_text_encoder(root: Path, hidden: int = 128) -> None:
    """A tiny CLIP text encoder whose closed vocabulary holds every word of :func:`vocabulary`."""
    from groundiff_core.models.text import small_text_encoder, word_tokenizer

    tok = word_tokenizer(vocabulary())
    text = small_text_encoder(len(tok), hidden_size=hidden, layers=1, heads=2, seed=3)
    text.save_pretrained(root / "text_encoder")
    tok.save_pretrained(root / "tokenizer")


def write_book_fixture(root: str | Path) -> dict[str, Path]:
    """Write the dataset and the bundle under ``root``; returns ``{"csv", "images_root", "model"}``."""
    from bundle_fixture import write_bundle

    root = Path(root)
    images = root / "mimic-cxr-jpg"
    write_images(images)
    csv_path = write_csv(root / "ms_cxr.csv")
    model = root / "model"
    write_bundle(model, text_encoder=False)
    write_text_encoder(model)
    return {"csv": csv_path, "images_root": images, "model": model}
