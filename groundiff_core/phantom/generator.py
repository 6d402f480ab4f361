"""Synthetic chest-radiograph phantoms with findings at known places, described by report phrases.

This is the project's offline test bed, not a medical image simulator. Each phantom is a 128x128
grayscale frontal "radiograph" (bright = dense, as on a film): a body outline, two lungs, the heart
and mediastinum, diaphragm domes, ribs and clavicles. Up to three findings of DIFFERENT categories
are drawn per image, each in its own region and with its own look, so a phrase naming one of them
can only be grounded by reading the text.

Version 4 of the phantom: the phrase does not give the box away. The patient's pose and size vary
(shift, scale, rotation, field of view), each lung's size varies on its own, and each finding's
place inside its side and zone varies; about a third of the one-sided findings are written without
their side (:mod:`.phrases`). An image-blind prior that knows each phrase's usual box
(:class:`groundiff_core.methods.prior.PhrasePrior`) therefore scores far below what reading the
image can reach (benchmarks/results/phantom_v4_design.md).

Laterality follows the radiological convention: the patient's right is the IMAGE's left.

Every finding yields one phrase and one box per affected side (bilateral findings give two boxes),
computed from the finding's own mask, in pixels ``(x, y, w, h)``.

The same seed gives the same PNG bytes on every x86 CPU: all drawing is float64 and the image is
rounded to float32 and then to 16 bits only at the end. numpy picks its sin, cos and power kernels
by CPU (AVX-512, AVX2, SSE); in float32 their last-bit differences moved about 4 pixels in 10,000
by one grey level (218 of the 220 test images), so a phantom split made on an AVX2 machine was not
the one a shipped run read on an AVX-512 machine. In float64 those differences are far below the
16-bit step (tests/test_phantom_generator.py regenerates 40 test images with numpy's SIMD kernels
switched off step by step).
Before 2026-12-04 version 4 drew in float32; the float64 images differ from those by at most one
grey level of 65535 on some pixels, with the same phrases and boxes.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from groundiff_core.phantom.phrases import phrase, vocabulary

__all__ = [
    "CATEGORIES", "Finding", "Phantom", "make_phantom", "write_phantom_set", "vocabulary",
    "SPLIT_SEEDS",
    "SPLIT_SPAN",
    "TRAIN_BLOCK",
    "train_seeds",
    "VERSION",
]

SIZE = 128
VERSION = 4  # of the generator: images and phrases of a seed change with it

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
    a validation or test phantom, and different seeds never share a phantom.
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
    side: str  # "right" | "left" | "bilateral" | "central" (patient's side; the phrase may omit it)


@dataclass
class Phantom:
    image: np.ndarray  # float32 [SIZE, SIZE] in [0, 1]
    findings: list[Finding] = field(default_factory=list)

    @property
    def report(self) -> str:
        """All findings' phrases joined, in a random-looking but fixed order."""
        return " . ".join(f.phrase for f in self.findings)


# --------------------------------------------------------------------------- geometry
_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)  # float64 throughout: see the module's docstring


@dataclass(frozen=True)
class _Pose:
    """Where the chest lies in the image: its centre, size and tilt.

    Anatomy and findings are drawn in chest coordinates ``(u, v)`` (pixels of a chest of scale 1,
    origin at its centre, v downwards); ``u`` and ``v`` below are those coordinates of every image
    pixel, so a shape drawn there moves, scales and tilts with the patient.
    """

    cx: float
    cy: float
    scale: float
    angle: float

    @property
    def uv(self) -> tuple[np.ndarray, np.ndarray]:
        c, s = np.cos(self.angle), np.sin(self.angle)
        dx, dy = _XX - self.cx, _YY - self.cy
        return (dx * c + dy * s) / self.scale, (-dx * s + dy * c) / self.scale


def _ellipse(uv, cu, cv, ru, rv, angle=0.0, soft=1.5, scale=1.0):
    """Soft-edged ellipse mask in [0, 1], in chest coordinates; ``soft`` is in image pixels."""
    u, v = uv
    c, s = np.cos(angle), np.sin(angle)
    du, dv = u - cu, v - cv
    a = (du * c + dv * s) / ru
    b = (-du * s + dv * c) / rv
    r = np.sqrt(a * a + b * b)
    edge = soft / max(min(ru, rv) * scale, 1.0)
    return np.clip((1.0 - r) / edge + 0.5, 0.0, 1.0)


def _bbox(mask: np.ndarray, thr: float = 0.25) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask > thr)
    if len(xs) == 0:
        return (0, 0, 0, 0)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    return int(x0), int(y0), int(x1 - x0), int(y1 - y0)


@dataclass
class _Anatomy:
    pose: _Pose
    uv: tuple
    lungs: dict  # "right"/"left" -> (cu, cv, ru, rv) in chest coordinates; right = image left
    lung_masks: dict


POSE = {"shift_x": 30.0, "shift_y": 22.0, "scale": (0.7, 1.1), "tilt": 0.3}


def _pose(rng: np.random.Generator) -> _Pose:
    """Patient position and field of view (:data:`POSE`: pixels off centre, scale, tilt in radians)."""
    return _Pose(cx=SIZE / 2 + rng.uniform(-1, 1) * POSE["shift_x"], cy=SIZE / 2 + rng.uniform(-1, 1) * POSE["shift_y"],
                 scale=rng.uniform(*POSE["scale"]), angle=rng.uniform(-1, 1) * POSE["tilt"])


def _anatomy(rng: np.random.Generator, cardiomegaly: bool, severity: int):
    """Draw the normal chest; returns (image, anatomy, heart mask)."""
    pose = _pose(rng)
    uv, k = pose.uv, pose.scale
    img = np.zeros((SIZE, SIZE), np.float64) + 0.04
    img += 0.30 * _ellipse(uv, 0, 6, 60, 66, soft=6, scale=k)  # body, soft tissue
    lungs, masks = {}, {}
    for side, sgn in (("right", -1.0), ("left", 1.0)):  # the patient's right lung is on the image's left
        ru = 17 * rng.uniform(0.86, 1.14)
        rv = 38 * rng.uniform(0.86, 1.14)
        cu = sgn * (24 + rng.uniform(-2.5, 2.5))
        cv = -2 + rng.uniform(-3, 3)
        m = _ellipse(uv, cu, cv, ru, rv, sgn * 0.08, soft=2.5, scale=k)
        lungs[side], masks[side] = (cu, cv, ru, rv), m
        img -= 0.24 * m
    img += 0.12 * _ellipse(uv, 0, -20, 8, 24, soft=3, scale=k)  # mediastinum
    base = rng.uniform(13.5, 16.5)
    hr = base + (7.0 + 3.5 * severity) * cardiomegaly  # the heart sits to the patient's left (image right)
    heart = _ellipse(uv, 7 + 0.4 * (hr - 15) + rng.uniform(-2, 2), 17 + rng.uniform(-2, 2),
                     hr * 1.15, hr * 0.85, -0.2, soft=2.0, scale=k)
    img += 0.30 * heart
    for side, (cu, cv, ru, rv) in lungs.items():  # diaphragm domes below each lung base
        img += 0.14 * _ellipse(uv, cu, cv + rv + 10, ru * 1.25, 14, soft=3, scale=k) * (1 - masks[side])
    lung_any = np.clip(masks["right"] + masks["left"], 0, 1)
    rib = 0.5 + 0.5 * np.sin((uv[1] + 0.18 * np.abs(uv[0])) / 4.6 + rng.uniform(0, 2 * np.pi))
    img += 0.05 * (rib ** 4) * lung_any  # ribs: faint bright arcs over the lungs
    for sgn in (-1.0, 1.0):  # clavicles
        img += 0.15 * _ellipse(uv, sgn * 22, -40, 20, 2.2, sgn * 0.25, soft=1.2, scale=k)
    return img, _Anatomy(pose, uv, lungs, masks), heart


_ZONE_V = {"upper": -0.5, "mid": 0.0, "lower": 0.45}  # zone centre, in lung half-heights from its centre


def _draw_finding(rng, img, ana: _Anatomy, category: str, side: str, zone: str, severity: int,
                  heart_mask: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """Add one finding to ``img`` (in place) and return (img, boxes). Where the finding sits inside
    its side and zone is drawn at random: only the image shows it."""
    uv, k = ana.uv, ana.pose.scale
    if category == "cardiomegaly":
        return img, [_bbox(heart_mask, 0.5)]
    boxes = []
    if category == "edema":
        # bilateral perihilar haze ("bat wing"): a soft cloud next to each hilum
        amp = 0.10 + 0.03 * severity
        for s in ("right", "left"):
            cu, cv, ru, rv = ana.lungs[s]
            hu = cu + (ru * 0.35 if s == "right" else -ru * 0.35)
            m = _ellipse(uv, hu, cv - 2 + rng.uniform(-5, 5), ru * 0.65 * rng.uniform(0.85, 1.15),
                         rv * 0.42 * rng.uniform(0.85, 1.15), soft=6, scale=k) * ana.lung_masks[s]
            tex = ndimage.gaussian_filter(rng.normal(size=img.shape), 1.2)
            img += amp * m * (1.0 + 0.8 * tex)
            boxes.append(_bbox(m, 0.3))
        return img, boxes
    u, v = uv
    for s in (["right", "left"] if side == "bilateral" else [side]):
        cu, cv, ru, rv = ana.lungs[s]
        lung = ana.lung_masks[s]
        lateral = -1.0 if s == "right" else 1.0  # away from the midline, in chest u
        if category == "pleural effusion":
            # dense basal fluid with a meniscus rising laterally; its level varies
            level = cv + rv * (rng.uniform(0.38, 0.72) - 0.14 * severity)
            meniscus = level - 0.25 * (u - cu) * lateral * (0.5 + 0.2 * severity)
            m = np.clip((v - meniscus) / (2.0 / k), 0, 1) * np.clip(lung * 1.6, 0, 1)
            img += 0.30 * m
        elif category == "pneumothorax":
            # apical-lateral lucency without lung markings, bounded by a thin bright pleural line
            pu = cu + lateral * ru * rng.uniform(0.1, 0.45)
            pv = cv - rv * rng.uniform(0.38, 0.65)
            a = ru * (0.5 + 0.12 * severity) * rng.uniform(0.85, 1.15)
            b = rv * (0.42 + 0.1 * severity) * rng.uniform(0.85, 1.15)
            shape = _ellipse(uv, pu, pv, a, b, lateral * 0.3, soft=1.0, scale=k)
            m = shape * np.clip(lung * 1.5, 0, 1)
            img[:] = img * (1 - 0.6 * m) - 0.10 * m
            line = np.clip(1 - np.abs(shape - 0.5) * 4, 0, 1)
            img += 0.22 * line * np.clip(lung * 1.5, 0, 1)
        elif category in ("consolidation", "lung opacity", "pneumonia"):
            zv = cv + (_ZONE_V[zone] + rng.uniform(-0.12, 0.12)) * rv
            zu = cu + rng.uniform(-0.4, 0.4) * ru
            size = (0.62 + 0.12 * severity) * ru * rng.uniform(0.85, 1.15)
            if category == "consolidation":  # dense, homogeneous, sharp-edged lobar opacity
                m = _ellipse(uv, zu, zv, size * 1.1, size * 0.8, rng.uniform(-0.4, 0.4), soft=1.2, scale=k) * lung
                img += 0.30 * m
            elif category == "lung opacity":  # faint, smooth, ill-defined haze
                m = _ellipse(uv, zu, zv, size * 1.2, size * 0.9, 0.0, soft=size * k * 0.7, scale=k) * lung
                img += 0.16 * m
            else:  # pneumonia: blotchy, clustered nodular pattern
                base = _ellipse(uv, zu, zv, size * 1.1, size * 0.9, 0.0, soft=3, scale=k) * lung
                blobs = ndimage.gaussian_filter(rng.random(img.shape), 1.5)
                blobs = np.clip((blobs - blobs.mean()) / (blobs.std() + 1e-6), 0, None)
                img += 0.32 * base * np.clip(0.35 + 0.55 * blobs, 0, 1)
                m = base
        elif category == "atelectasis":
            # plate-like band in the lower lung; its height, width and place vary
            bv = cv + rv * rng.uniform(0.22, 0.55)
            m = _ellipse(uv, cu + lateral * rng.uniform(-0.3, 0.3) * ru, bv,
                         ru * (0.6 + 0.1 * severity) * rng.uniform(0.8, 1.2),
                         3.5 + 0.8 * severity + rng.uniform(0, 1.5), rng.uniform(-0.2, 0.2),
                         soft=1.0, scale=k) * np.clip(lung * 1.6, 0, 1)
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


_BILATERAL_OK = ("pleural effusion", "atelectasis")


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
        if cat in _BILATERAL_OK and rng.random() < 0.25:
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
        if not boxes:  # drawn wholly outside the image (a chest at the edge of the field of view)
            continue
        findings.append(Finding(cat, phrase(rng, cat, side, zone, sev), boxes, side))
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
