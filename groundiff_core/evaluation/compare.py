"""Comparisons of two result sets on the same pairs: the class-averaged mean of one, and the paired
difference of two (a method against a baseline, a setting against another, a run against its
image-shuffle control), with bootstrap intervals stratified by class.

Both take result rows (``results.jsonl`` rows, or a DataFrame with one row per pair and the columns
``pair_id``, ``category`` and the metric) and use the summary's bootstrap
(:func:`~groundiff_core.evaluation.summary.bootstrap_ci`): pairs are resampled within each class,
the statistic is the unweighted mean of the class means, the paper's figure.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from groundiff_core.evaluation.summary import _rng, bootstrap_ci
from groundiff_core.util.phrases import side_of_phrase

__all__ = ["class_averaged_ci", "paired_difference", "by_side", "verdict", "MIN_PAIRS", "MIN_PER_CLASS"]

#: Fewer pairs than this and a comparison gives no verdict ("too few pairs"), and the book prints
#: no interval.
MIN_PAIRS = 30
#: Fewer pairs of one class than this and a per-class figure gets no interval and no verdict.
MIN_PER_CLASS = 5


def _values(rows: Any, metric: str) -> dict[str, tuple[str, float]]:
    """``pair_id -> (category, value)`` for the ok rows with a finite ``metric``."""
    if hasattr(rows, "to_dict"):  # a DataFrame
        rows = rows.to_dict("records")
    out = {}
    for r in rows:
        if r.get("status", "ok") != "ok":
            continue
        v = r.get(metric)
        if v is None or not isinstance(v, (int, float)) or not math.isfinite(v):
            continue
        out[str(r["pair_id"])] = (str(r["category"]), float(v))
    return out


def _by_class(items: list[tuple[str, float]]) -> list[np.ndarray]:
    classes = sorted({c for c, _ in items})
    return [np.array([v for c, v in items if c == k]) for k in classes]


def class_averaged_ci(rows: Any, metric: str, *, n_boot: int = 1000, seed: int = 0,
                      confidence: float = 0.95) -> dict:
    """Class-averaged mean of ``metric`` with its stratified bootstrap interval:
    ``{"mean", "ci_low", "ci_high", "n_pairs"}`` (all None and 0 pairs when no row has a value)."""
    vals = list(_values(rows, metric).values())
    if not vals:
        return {"mean": None, "ci_low": None, "ci_high": None, "n_pairs": 0}
    mean, lo, hi = bootstrap_ci(_by_class(vals), n_boot, confidence, _rng(seed, "class_averaged", metric))
    return {"mean": mean, "ci_low": lo, "ci_high": hi, "n_pairs": len(vals)}


def paired_difference(a: Any, b: Any, metric: str, *, n_boot: int = 1000, seed: int = 0,
                      confidence: float = 0.95) -> dict:
    """Class-averaged ``metric`` of ``a`` minus that of ``b`` on the pairs both scored, with a
    paired bootstrap interval (the per-pair differences resampled within each class).

    Returns ``{"difference", "ci_low", "ci_high", "n_pairs", "separated"}``; ``separated`` is
    True when the interval excludes 0, the only case in which one may be called better.
    """
    va, vb = _values(a, metric), _values(b, metric)
    common = sorted(set(va) & set(vb))
    if not common:
        return {"difference": None, "ci_low": None, "ci_high": None, "n_pairs": 0, "separated": False}
    diffs = [(va[p][0], va[p][1] - vb[p][1]) for p in common]
    d, lo, hi = bootstrap_ci(_by_class(diffs), n_boot, confidence, _rng(seed, "paired", metric))
    return {"difference": d, "ci_low": lo, "ci_high": hi, "n_pairs": len(common),
            "separated": bool(lo > 0 or hi < 0)}


def by_side(rows: Any, metric: str = "pointing", *, n_boot: int = 1000, seed: int = 0,
            confidence: float = 0.95) -> dict:
    """``metric`` over the pairs whose phrase names the patient's right, and over those naming the
    left (:func:`~groundiff_core.util.phrases.side_of_phrase`), pair-averaged with bootstrap
    intervals, and their difference ``left - right``: a method that reads laterality, or the image,
    scores both sides alike. ``{"right": {...}, "left": {...}, "difference": float | None}``."""
    if hasattr(rows, "to_dict"):
        rows = rows.to_dict("records")
    out: dict = {}
    for side in ("right", "left"):
        vals = [v for _, v in _values([r for r in rows if side_of_phrase(str(r.get("phrase", ""))) == side],
                                      metric).values()]
        if not vals:
            out[side] = {"mean": None, "ci_low": None, "ci_high": None, "n_pairs": 0}
            continue
        mean, lo, hi = bootstrap_ci([np.array(vals)], n_boot, confidence, _rng(seed, "side", side, metric))
        out[side] = {"mean": mean, "ci_low": lo, "ci_high": hi, "n_pairs": len(vals)}
    l, r = out["left"]["mean"], out["right"]["mean"]
    out["difference"] = None if l is None or r is None else l - r
    return out


def verdict(d: dict, min_pairs: int = MIN_PAIRS) -> str:
    """The one rule every comparison of the book is read by: ``"above 0"`` / ``"below 0"`` when the
    interval of a :func:`paired_difference` excludes 0, ``"not separable from 0"`` when it does not,
    ``"too few pairs"`` below ``min_pairs`` pairs."""
    if d.get("difference") is None or d.get("n_pairs", 0) < min_pairs:
        return "too few pairs"
    if d["ci_low"] > 0:
        return "above 0"
    if d["ci_high"] < 0:
        return "below 0"
    return "not separable from 0"
