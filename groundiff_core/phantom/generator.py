"""Synthetic chest-radiograph phantoms with findings at known places, described by report phrases.

This is the project's offline test bed, not a medical image simulator. Each phantom is a 128x128
grayscale frontal "radiograph" (bright = dense, as on a film): a body outline, two lungs, the heart
and mediastinum, diaphragm domes, ribs and clavicles, with random size, position, rotation, exposure
and noise. Up to three findings of DIFFERENT categories are drawn per image, each in its own region
and with its own look, so a phrase naming one of them can only be grounded by reading the text.

Laterality follows the radiological convention: the patient's right is the IMAGE's left.

Every finding yields one phrase (report-like templates with synonyms, laterality, location and
severity words) and one box per affected side (bilateral findings give two boxes), computed from
the finding's own mask, in pixels ``(x, y, w, h)``.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from groundiff_core.models.text import split_words

__all__ = [
    "CATEGORIES", "Finding", "Phantom", "make_phantom", "write_phantom_set", "vocabulary",
    "SPLIT_SEEDS",
    "SPLIT_SPAN",
    "TRAIN_BLOCK",
    "train_seeds",
]

SIZE = 128

CATEGORIES = (
    "atelectasis", "cardiomegaly", "consolidation", "edema",
    "lung opacity", "pleural effusion", "pneumonia", "pneumothorax",
)

# Disjoint seed ranges per split: image i of split s uses seed SPLIT_SEEDS[s] + i. Validation and
# test own SPLIT_SPAN seeds each, [10M, 20M) and [20M, 30M); training owns everything else >= 0
# (see train_seeds).
SPLIT_SEEDS = {"train": 0, "val": 10_000_000, "test": 20_000_000}
SPLIT_SPAN = 10_000_000
TRAIN_BLOCK = 1_000_000  # seeds per training run (--seed of groundiff_core.phantom.train)


def train_seeds(seed: int, n: int) -> range:
    """The seeds of the ``n`` training phantoms of a training run with ``--seed seed``.

    Run ``seed`` takes block ``seed`` of ``TRAIN_BLOCK`` seeds, counted through the seed space with
    the validation and test ranges left out: blocks 0-9 are ``[0, 10M)`` (seed 0 draws seeds
    ``0 .. n-1``, the shipped model's data), block 10 starts at 30M. So no ``--seed`` ever trains on
    a validation or test phantom (``seed * 1_000_000`` used to: ``--seed 10`` gave the validation
    seeds and ``--seed 20`` the test seeds), and different seeds never share a phantom.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"the training seed must be an integer >= 0, got {seed!r}")
    if not 1 <= n <= TRAIN_BLOCK:
        raise ValueError(f"the number of training phantoms must be between 1 and {TRAIN_BLOCK:,}, got {n}")
    start = SPLIT_SEEDS["train"] + seed * TRAIN_BLOCK
    reserved_lo, reserved_hi = SPLIT_SEEDS["val"], SPLIT_SEEDS["test"] + SPLIT_SPAN  # [10M, 30M)
    if start >= reserved_lo:
        start += reserved_hi - reserved_lo
    return range(start, start + n)


@dataclass
class Finding:
    category: str
    phrase: str
    boxes: list[tuple[int, int, int, int]]
    side: str  # "right" | "left" | "bilateral" | "central" (patient's side)


@dataclass
class Phantom:
    image: np.ndarray  # float32 [SIZE, SIZE] in [0, 1]
    findings: list[Finding] = field(default_factory=list)

    @property
    def report(self) -> str:
        """All findings' phrases joined, in a random-looking but fixed order."""
        return " . ".join(f.phrase for f in self.findings)


# --------------------------------------------------------------------------- phrase templates
_SEVERITY = {0: ["small", "mild", "minimal"], 1: ["moderate"], 2: ["large", "severe", "extensive"]}
_ZONE_WORDS = {"upper": ["upper"], "mid": ["mid", "middle"], "lower": ["lower", "basal"]}

_TEMPLATES: dict[str, list[str]] = {
    "pleural effusion": ["{sev} {side} pleural effusion", "{side} pleural effusion",
                         "{sev} {side} effusion", "{side} basal effusion", "{side} effusion"],
    "pneumothorax": ["{side} pneumothorax", "{sev} {side} pneumothorax",
                     "{side} apical pneumothorax", "{sev} {side} apical pneumothorax"],
    "cardiomegaly": ["cardiomegaly", "{sev} cardiomegaly", "enlarged cardiac silhouette",
                     "the heart is enlarged", "{sev} enlargement of the cardiac silhouette"],
    "edema": ["pulmonary edema", "{sev} pulmonary edema", "bilateral perihilar edema",
              "{sev} interstitial edema", "perihilar haziness consistent with edema"],
    "consolidation": ["{side} {zone} consolidation", "consolidation in the {side} {zone} lung",
                      "dense {side} {zone} consolidation", "{side} {zone} lobe consolidation"],
    "lung opacity": ["{side} {zone} opacity", "patchy opacity in the {side} {zone} lung",
                     "hazy {side} {zone} opacity", "{sev} {side} {zone} opacity"],
    "pneumonia": ["{side} {zone} pneumonia", "{side} {zone} lobe pneumonia",
                  "patchy {side} {zone} infiltrate suggesting pneumonia", "{side} pneumonia"],
    "atelectasis": ["{side} basilar atelectasis", "plate-like atelectasis at the {side} base",
                    "{side} lower atelectasis", "{sev} {side} basal atelectasis"],
}
_BILATERAL = {
    "pleural effusion": ["bilateral pleural effusions", "{sev} bilateral pleural effusions",
                         "bilateral effusions"],
    "atelectasis": ["bibasilar atelectasis", "bilateral basilar atelectasis"],
}


def vocabulary() -> list[str]:
    """Every word the phrase templates can produce (the phantom model's closed vocabulary)."""
    words = {"right", "left", "bilateral", "."}
    for v in _SEVERITY.values():
        words.update(v)
    for v in _ZONE_WORDS.values():
        words.update(v)
    for tpls in list(_TEMPLATES.values()) + list(_BILATERAL.values()):
        for t in tpls:
            for w in t.replace("{", " ").replace("}", " ").split():
                if w not in ("sev", "side", "zone"):
                    words.update(split_words(w))
    return sorted(words)


def _phrase(rng: np.random.Generator, category: str, side: str, zone: str, severity: int) -> str:
    pool = _BILATERAL[category] if (side == "bilateral" and category in _BILATERAL) else _TEMPLATES[category]
    tpl = pool[rng.integers(len(pool))]
    zone_word = _ZONE_WORDS[zone][rng.integers(len(_ZONE_WORDS[zone]))]
    sev = _SEVERITY[severity][rng.integers(len(_SEVERITY[severity]))]
    return " ".join(tpl.format(sev=sev, side=side, zone=zone_word).split())


# --------------------------------------------------------------------------- geometry helpers
_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)


def _ellipse(cx, cy, rx, ry, angle=0.0, soft=1.5):
    """Soft-edged ellipse mask in [0, 1]."""
    c, s = np.cos(angle), np.sin(angle)
    dx, dy = _XX - cx, _YY - cy
    u = (dx * c + dy * s) / rx
    v = (-dx * s + dy * c) / ry
    r = np.sqrt(u * u + v * v)
    edge = soft / max(min(rx, ry), 1.0)
    return np.clip((1.0 - r) / edge + 0.5, 0.0, 1.0)


def _bbox(mask: np.ndarray, thr: float = 0.25) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask > thr)
    if len(xs) == 0:
        return (0, 0, 0, 0)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    return int(x0), int(y0), int(x1 - x0), int(y1 - y0)


@dataclass
class _Anatomy:
    cx: float
    cy: float
    scale: float
    angle: float
    lungs: dict  # "right"/"left" -> (cx, cy, rx, ry) ; right = image left
    lung_masks: dict
    heart: tuple


def _anatomy(rng: np.random.Generator, cardiomegaly: bool, severity: int) -> tuple[np.ndarray, _Anatomy, np.ndarray]:
    """Draw the normal chest; returns (image, anatomy, heart mask)."""
    scale = rng.uniform(0.9, 1.08)
    cx = SIZE / 2 + rng.uniform(-4, 4)
    cy = SIZE / 2 + rng.uniform(-3, 5)
    angle = rng.uniform(-0.06, 0.06)
    img = np.zeros((SIZE, SIZE), np.float32) + 0.04
    # body / soft tissue
    img += 0.30 * _ellipse(cx, cy + 6 * scale, 60 * scale, 66 * scale, angle, soft=6)
    # lungs: patient's right lung is on the image's left
    lungs, masks = {}, {}
    for side, sgn in (("right", -1.0), ("left", 1.0)):
        lcx = cx + sgn * 24 * scale + rng.uniform(-1.5, 1.5)
        lcy = cy - 2 * scale + rng.uniform(-2, 2)
        rx, ry = 17 * scale * rng.uniform(0.95, 1.05), 38 * scale * rng.uniform(0.95, 1.05)
        m = _ellipse(lcx, lcy, rx, ry, angle + sgn * 0.08, soft=2.5)
        lungs[side] = (lcx, lcy, rx, ry)
        masks[side] = m
        img -= 0.24 * m
    # mediastinum and heart (heart sits to the patient's left = image right)
    img += 0.12 * _ellipse(cx, cy - 20 * scale, 8 * scale, 24 * scale, angle, soft=3)
    hr = (15.0 + (7.0 + 3.5 * severity) * cardiomegaly) * scale
    hcx = cx + (7 + 0.4 * (hr / scale - 15)) * scale
    hcy = cy + 17 * scale
    heart = _ellipse(hcx, hcy, hr * 1.15, hr * 0.85, angle - 0.2, soft=2.0)
    img += 0.30 * heart
    # diaphragm domes: dense below each lung base
    for side, (lcx, lcy, rx, ry) in lungs.items():
        dome = _ellipse(lcx, lcy + ry + 10 * scale, rx * 1.25, 14 * scale, angle, soft=3)
        img += 0.14 * dome * (1 - masks[side])
    # ribs: faint bright arcs over the lungs
    lung_any = np.clip(masks["right"] + masks["left"], 0, 1)
    phase = rng.uniform(0, 2 * np.pi)
    rib = 0.5 + 0.5 * np.sin((_YY - cy + 0.18 * np.abs(_XX - cx)) / (4.6 * scale) + phase)
    img += 0.05 * (rib ** 4) * lung_any
    # clavicles
    for sgn in (-1.0, 1.0):
        clav = _ellipse(cx + sgn * 22 * scale, cy - 40 * scale, 20 * scale, 2.2 * scale, sgn * 0.25, soft=1.2)
        img += 0.15 * clav
    return img, _Anatomy(cx, cy, scale, angle, lungs, masks, (hcx, hcy, hr)), heart


_ZONE_Y = {"upper": -0.55, "mid": 0.0, "lower": 0.5}


def _draw_finding(rng, img, ana: _Anatomy, category: str, side: str, zone: str, severity: int,
                  heart_mask: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """Add one finding to ``img`` (in place) and return (img, boxes)."""
    sides = ["right", "left"] if side == "bilateral" else [side]
    boxes = []
    if category == "cardiomegaly":
        return img, [_bbox(heart_mask, 0.5)]
    if category == "edema":
        # bilateral perihilar haze ("bat wing"): a soft cloud next to each hilum
        amp = 0.09 + 0.03 * severity
        for s in ("right", "left"):
            lcx, lcy, rx, ry = ana.lungs[s]
            hx = lcx + (rx * 0.35 if s == "right" else -rx * 0.35)
            m = _ellipse(hx, lcy - 2, rx * 0.65, ry * 0.42, 0.0, soft=6) * ana.lung_masks[s]
            tex = ndimage.gaussian_filter(rng.normal(size=img.shape).astype(np.float32), 1.2)
            img += amp * m * (1.0 + 0.8 * tex)
            boxes.append(_bbox(m, 0.3))
        return img, boxes
    for s in sides:
        lcx, lcy, rx, ry = ana.lungs[s]
        lung = ana.lung_masks[s]
        lateral = -1.0 if s == "right" else 1.0  # direction away from the midline, in image x
        if category == "pleural effusion":
            # dense basal fluid with a meniscus rising laterally
            level = lcy + ry * (0.62 - 0.16 * severity)
            meniscus = level - 0.25 * (_XX - lcx) * lateral * (0.5 + 0.2 * severity)
            m = np.clip((_YY - meniscus) / 2.0, 0, 1) * np.clip(lung * 1.6, 0, 1)
            img += 0.30 * m
        elif category == "pneumothorax":
            # apical-lateral lucency without lung markings, bounded by a thin bright pleural line
            pcx = lcx + lateral * rx * 0.35
            pcy = lcy - ry * 0.55
            rr = (0.5 + 0.12 * severity)
            m = _ellipse(pcx, pcy, rx * rr, ry * (0.45 + 0.1 * severity), lateral * 0.3, soft=1.0) * \
                np.clip(lung * 1.5, 0, 1)
            img[:] = img * (1 - 0.6 * m) - 0.10 * m
            line = np.clip(1 - np.abs(_ellipse(pcx, pcy, rx * rr, ry * (0.45 + 0.1 * severity),
                                               lateral * 0.3, soft=1.0) - 0.5) * 4, 0, 1)
            img += 0.22 * line * np.clip(lung * 1.5, 0, 1)
        elif category in ("consolidation", "lung opacity", "pneumonia"):
            zy = lcy + _ZONE_Y[zone] * ry
            zx = lcx + lateral * rng.uniform(-0.15, 0.25) * rx
            size = (0.75 + 0.15 * severity) * rx
            if category == "consolidation":  # dense, homogeneous, sharp-edged lobar opacity
                m = _ellipse(zx, zy, size * 1.1, size * 0.8, rng.uniform(-0.4, 0.4), soft=1.2) * lung
                img += 0.30 * m
            elif category == "lung opacity":  # faint, smooth, ill-defined haze
                m = _ellipse(zx, zy, size * 1.2, size * 0.9, 0.0, soft=size * 0.7) * lung
                img += 0.14 * m
            else:  # pneumonia: blotchy, clustered nodular pattern
                base = _ellipse(zx, zy, size * 1.1, size * 0.9, 0.0, soft=3) * lung
                blobs = ndimage.gaussian_filter(rng.random(img.shape).astype(np.float32), 1.5)
                blobs = np.clip((blobs - blobs.mean()) / (blobs.std() + 1e-6), 0, None)
                m = base * np.clip(0.35 + 0.55 * blobs, 0, 1)
                img += 0.32 * m
                m = base
        elif category == "atelectasis":
            # plate-like horizontal band at the lung base
            by = lcy + ry * rng.uniform(0.35, 0.5)
            m = _ellipse(lcx + lateral * 2, by, rx * (0.75 + 0.1 * severity), 3.0 + 0.8 * severity,
                         rng.uniform(-0.15, 0.15), soft=1.0) * np.clip(lung * 1.6, 0, 1)
            img += 0.28 * m
        else:  # pragma: no cover - CATEGORIES is closed
            raise ValueError(category)
        boxes.append(_bbox(m, 0.3))
    return img, boxes


# Which regions each category occupies, to keep findings of one image apart.
def _regions(category: str, side: str, zone: str) -> set[str]:
    sides = ["right", "left"] if side in ("bilateral",) else [side]
    if category == "cardiomegaly":
        return {"heart"}
    if category == "edema":
        return {"right-mid", "left-mid", "right-upper", "left-upper"}
    if category in ("pleural effusion", "atelectasis"):
        return {f"{s}-lower" for s in sides}
    if category == "pneumothorax":
        return {f"{s}-upper" for s in sides}
    return {f"{s}-{zone}" for s in sides}


def make_phantom(seed: int, n_findings: tuple[int, int] = (1, 3)) -> Phantom:
    """One phantom, fully determined by ``seed``."""
    rng = np.random.default_rng(seed)
    k = int(rng.integers(n_findings[0], n_findings[1] + 1))
    cats = [str(c) for c in rng.permutation(CATEGORIES)]
    chosen, used = [], set()
    for cat in cats:
        if len(chosen) == k:
            break
        side = "central" if cat in ("cardiomegaly", "edema") else str(rng.choice(["right", "left"]))
        if cat in _BILATERAL and rng.random() < 0.25:
            side = "bilateral"
        if cat == "edema":
            side = "bilateral"
        zone = {"pleural effusion": "lower", "atelectasis": "lower", "pneumothorax": "upper"}.get(
            cat, str(rng.choice(["upper", "mid", "lower"])))
        regions = _regions(cat, side, zone)
        if regions & used:
            continue
        used |= regions
        chosen.append((cat, side, zone, int(rng.integers(0, 3))))
    cardio = [c for c in chosen if c[0] == "cardiomegaly"]
    img, ana, heart = _anatomy(rng, bool(cardio), cardio[0][3] if cardio else 0)
    findings = []
    for cat, side, zone, sev in chosen:
        img, boxes = _draw_finding(rng, img, ana, cat, side, zone, sev, heart)
        boxes = [b for b in boxes if b[2] > 0 and b[3] > 0]
        phrase = _phrase(rng, cat, side, zone, sev)
        findings.append(Finding(cat, phrase, boxes, side))
    # exposure, blur and quantum noise
    img = ndimage.gaussian_filter(img, 0.6)
    gamma = rng.uniform(0.85, 1.2)
    gain = rng.uniform(0.9, 1.15)
    img = np.clip(img, 0, None) ** gamma * gain * 1.5
    img = img + rng.normal(0, rng.uniform(0.008, 0.02), img.shape)
    img = np.clip(img, 0, 1).astype(np.float32)
    return Phantom(img, findings)


MSCXR_COLUMNS = ["dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h",
                 "image_width", "image_height", "split"]


def write_phantom_set(out_dir: str | os.PathLike, n: int, split: str = "test", seed: int | None = None,
                      progress: bool = True) -> Path:
    """Write ``n`` phantoms as PNGs plus ``annotations.csv`` in the MS-CXR layout; return the CSV path.

    Image ``i`` uses seed ``SPLIT_SEEDS[split] + i`` unless ``seed`` (the first seed) is given.
    Rows with the same ``path`` and ``label_text`` are the boxes of one (multi-box) phrase.
    """
    from PIL import Image

    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if seed is None and n > SPLIT_SPAN:
        raise ValueError(f"n = {n} would run past the {split!r} split's {SPLIT_SPAN:,} seeds into another split")
    if seed is None:
        if split not in SPLIT_SEEDS:
            raise ValueError(f"split must be one of {sorted(SPLIT_SEEDS)}, got {split!r}")
        seed = SPLIT_SEEDS[split]
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    it = range(n)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc=f"phantoms ({split})", unit="img")
    for i in it:
        ph = make_phantom(seed + i)
        name = f"phantom_{seed + i:08d}"
        rel = f"images/{name}.png"
        Image.fromarray(np.round(ph.image * 65535).astype(np.uint16)).save(out / rel)
        for f in ph.findings:
            for (x, y, w, h) in f.boxes:
                rows.append([name, f.category, f.phrase, rel, x, y, w, h, SIZE, SIZE, split])
    csv_path = out / "annotations.csv"
    with open(csv_path, "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(MSCXR_COLUMNS)
        wr.writerows(rows)
    return csv_path
