"""Summary statistics of an evaluation: means with bootstrap confidence intervals, per class and
class-averaged, the text-sensitivity figure and the skipped pairs; written as JSON and CSV.

Confidence intervals are percentile-bootstrap intervals from :func:`scipy.stats.bootstrap`, seeded
per figure from the summary's ``seed`` (so a figure does not depend on which others are computed).
The class average (the paper's figure) resamples pairs within each class (a stratified bootstrap):
one sample per class, the statistic the unweighted mean of the class means.
"""

from __future__ import annotations

import csv
import io
import math
import os
import zlib
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from scipy import stats

from groundiff_core.conventions import check_conventions
from groundiff_core.evaluation.results import SUMMARY_CSV, SUMMARY_JSON, latest
from groundiff_core.util.fileio import write_json
from groundiff_core.evaluation.scorer import METRICS
from groundiff_core.util.fileio import atomic_write
from groundiff_core.util.fingerprint import jsonable

__all__ = ["summarize", "summary_table", "write_summary", "bootstrap_ci"]

#: Resampled values held in memory at once by the bootstrap (its ``batch`` of resamples follows).
_BATCH_VALUES = 2_000_000


def _finite(values: Iterable[Any]) -> np.ndarray:
    """The finite values as float64 (None, NaN and inf left out)."""
    a = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    return a[np.isfinite(a)]


def bootstrap_ci(samples: Sequence[np.ndarray], n_boot: int, confidence: float,
                 rng: np.random.Generator) -> tuple[float, float, float]:
    """The unweighted mean of the samples' means and its percentile-bootstrap interval.

    Each sample is resampled (with replacement) within itself, ``n_boot`` times
    (:func:`scipy.stats.bootstrap`, ``paired=False``): with one sample this is the ordinary
    bootstrap of a mean, with one sample per class the stratified bootstrap of the class average.
    Returns ``(mean, ci_low, ci_high)``. Degenerate samples are handled here, not by scipy (which
    refuses samples of one value): a sample of one value, or of equal values, has the same mean in
    every resample, so it enters the statistic as a constant; when every sample is so, the
    interval is the mean itself. ``samples`` must be non-empty and hold finite values only.
    """
    samples = [np.asarray(v, dtype=np.float64) for v in samples]
    if not samples or any(v.ndim != 1 or len(v) == 0 for v in samples):
        raise ValueError("bootstrap_ci needs one or more non-empty 1-D samples")
    if not all(np.isfinite(v).all() for v in samples):
        raise ValueError("bootstrap_ci needs finite values; drop NaN and inf first")
    mean = float(np.mean([v.mean() for v in samples]))
    varying = [v for v in samples if v.min() != v.max()]
    if not varying:
        return mean, mean, mean
    fixed = float(sum(v.mean() for v in samples if v.min() == v.max()))
    k = len(samples)

    def class_average(*resampled: np.ndarray, axis: int = -1) -> np.ndarray:
        return (sum(x.mean(axis=axis) for x in resampled) + fixed) / k

    batch = max(1, min(n_boot, _BATCH_VALUES // sum(len(v) for v in varying)))
    res = stats.bootstrap(varying, class_average, n_resamples=n_boot, batch=batch,
                          vectorized=True, paired=False, confidence_level=confidence,
                          method="percentile", rng=rng)
    lo, hi = res.confidence_interval
    return mean, float(lo), float(hi)


def _rng(seed: int, *keys: str) -> np.random.Generator:
    """The generator of one figure: from the summary's seed and the figure's name."""
    return np.random.default_rng([seed, *(zlib.crc32(k.encode("utf-8")) for k in keys)])


def _stat(values: np.ndarray, n_total: int, n_boot: int, conf: float,
          rng: np.random.Generator) -> dict:
    """Mean of the finite ``values`` with its bootstrap CI; ``n_undefined`` counts the others."""
    n = len(values)
    if n == 0:
        return {"mean": None, "ci_low": None, "ci_high": None, "n": 0, "n_undefined": n_total}
    mean, lo, hi = bootstrap_ci([values], n_boot, conf, rng)
    return {"mean": mean, "ci_low": lo, "ci_high": hi, "n": n, "n_undefined": n_total - n}


def _class_avg_stat(by_class: dict[str, np.ndarray], n_boot: int, conf: float,
                    rng: np.random.Generator) -> dict:
    """Unweighted mean over classes of the class means; CI from a bootstrap stratified by class."""
    classes = [c for c, v in by_class.items() if len(v)]
    if not classes:
        return {"mean": None, "ci_low": None, "ci_high": None, "n": 0, "n_classes": 0, "classes": []}
    mean, lo, hi = bootstrap_ci([by_class[c] for c in classes], n_boot, conf, rng)
    return {"mean": mean, "ci_low": lo, "ci_high": hi, "n": int(sum(len(by_class[c]) for c in classes)),
            "n_classes": len(classes), "classes": classes}


def _text_sensitivity(ok: Sequence[dict], max_overlap: float, n_boot: int, conf: float,
                      seed: int) -> dict:
    """Share of pairs whose heatmap scores its own boxes above another finding's boxes.

    For each pair with at least one "other" pair on the same image (a different category whose
    ground truth overlaps the pair's by IoU <= ``max_overlap``), the pair's score is the share of
    those others whose AUC-ROC (same heatmap, their boxes) is below the pair's own AUC-ROC (ties
    count one half). ``value`` is the mean score over pairs; ``strict`` the share of pairs that beat
    every other.
    """
    scores, strict, n_cmp = [], [], 0
    for r in ok:
        own = r.get("auc")
        if own is None or not math.isfinite(own):
            continue
        cmp = [o["auc"] for o in r.get("others", [])
               if o.get("category") != r["category"] and o.get("gt_iou", 0.0) <= max_overlap
               and o.get("auc") is not None and math.isfinite(o["auc"])]
        if not cmp:
            continue
        wins = [1.0 if own > a else 0.5 if own == a else 0.0 for a in cmp]
        scores.append(float(np.mean(wins)))
        strict.append(float(all(w == 1.0 for w in wins)))
        n_cmp += len(cmp)
    s = _stat(np.array(scores), len(scores), n_boot, conf, _rng(seed, "text_sensitivity"))
    return {"value": s["mean"], "ci_low": s["ci_low"], "ci_high": s["ci_high"],
            "strict": float(np.mean(strict)) if strict else None, "n_pairs": len(scores),
            "n_comparisons": n_cmp, "max_gt_iou": max_overlap}


def _as_scored_under(rows: Sequence[dict], conventions: str | None) -> tuple[list[dict], str | None]:
    """Rows with their metrics under ``conventions`` (each row holds its run's metrics and, in
    ``alternative``, the other conventions' ones); rows scored under neither are left out.
    Returns the rows and the conventions they are scored under (None if mixed or unknown)."""
    if conventions is None:
        seen = {r.get("conventions", "strict") for r in rows if r.get("status") == "ok"}
        return list(rows), seen.pop() if len(seen) == 1 else None
    check_conventions(conventions)
    out = []
    for r in rows:
        if r.get("status") != "ok" or r.get("conventions", "strict") == conventions:
            out.append(r)
        elif (r.get("alternative") or {}).get("conventions") == conventions:
            alt = {k: v for k, v in r["alternative"].items() if k in METRICS}
            out.append({**r, **alt, "conventions": conventions})
    return out, conventions


def summarize(results: Sequence[dict], *, n_boot: int = 1000, seed: int = 0,
              confidence: float = 0.95, text_max_overlap: float = 0.5,
              conventions: str | None = None) -> dict:
    """Summary statistics of per-pair result rows (as in ``results.jsonl``).

    Returns a JSON-able dict with:

    * ``overall[metric]`` and ``per_class[category][metric]``: ``mean``, percentile-bootstrap
      ``ci_low``/``ci_high`` (``confidence``, ``n_boot`` resamples of the pairs, seeded by
      ``seed``), ``n`` pairs with a finite value and ``n_undefined`` pairs without one (e.g. a box
      covering the whole valid image makes AUC-ROC undefined);
    * ``class_averaged[metric]``: the paper's figure, the unweighted mean over categories of the
      per-category means, with a bootstrap CI that resamples pairs within each category;
    * ``text_sensitivity``: see :func:`_text_sensitivity`;
    * ``skipped``: counts and the list of images whose pairs were skipped, with reasons;
    * ``n_pairs`` (evaluated), ``n_images``, ``seconds_per_pair``, ``compute_seconds``.

    Metrics: ``miou``, ``auc`` (exact), ``auc_binned`` (paper's 5 thresholds), ``cnr_abs``
    (|CNR|), ``cnr_signed``, ``pointing``. Rows are deduplicated by ``pair_id`` and sorted by it
    first, so the result does not depend on row order (shards merged in any order agree).

    ``conventions``: None summarises the metrics as the run computed them; "paper" or "strict"
    summarises the same heatmaps scored under those conventions (every row also holds the other
    conventions' metrics), so one run gives both tables. The summary's ``conventions`` says which.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    # sorted by pair id: the figures do not depend on the order in which pairs were finished
    rows = sorted(latest(results).values(), key=lambda r: r["pair_id"])
    rows, scored_under = _as_scored_under(rows, conventions)
    ok = [r for r in rows if r.get("status") == "ok"]
    skipped = [r for r in rows if r.get("status") != "ok"]
    categories = sorted({r["category"] for r in ok})

    overall = {m: _stat(_finite(r.get(m) for r in ok), len(ok), n_boot, confidence,
                        _rng(seed, "overall", m)) for m in METRICS}
    per_class: dict[str, dict] = {}
    by_class_vals: dict[str, dict[str, np.ndarray]] = {m: {} for m in METRICS}
    for c in categories:
        cr = [r for r in ok if r["category"] == c]
        per_class[c] = {"n_pairs": len(cr)}
        for m in METRICS:
            vals = _finite(r.get(m) for r in cr)
            by_class_vals[m][c] = vals
            per_class[c][m] = _stat(vals, len(cr), n_boot, confidence, _rng(seed, "class", c, m))
    class_averaged = {m: _class_avg_stat(by_class_vals[m], n_boot, confidence,
                                         _rng(seed, "class_averaged", m)) for m in METRICS}

    images: dict[str, dict] = {}
    for r in skipped:
        e = images.setdefault(r.get("image_path", ""), {"image_path": r.get("image_path", ""),
                                                         "reason": r.get("reason", ""),
                                                         "pair_ids": []})
        e["pair_ids"].append(r["pair_id"])
    for e in images.values():
        e["n_pairs"] = len(e["pair_ids"])
    secs = _finite(r.get("seconds") for r in ok)
    return jsonable({
        "n_pairs": len(ok),
        "n_images": len({r.get("image_path") for r in ok}),
        "categories": categories,
        "metrics": list(METRICS),
        "conventions": scored_under,
        "overall": overall,
        "per_class": per_class,
        "class_averaged": class_averaged,
        "text_sensitivity": _text_sensitivity(ok, text_max_overlap, n_boot, confidence, seed),
        "skipped": {"n_pairs": len(skipped), "n_images": len(images),
                    "images": list(images.values())},
        "seconds_per_pair": float(secs.mean()) if len(secs) else None,
        "compute_seconds": float(secs.sum()),
        "bootstrap": {"method": "percentile", "n_boot": n_boot, "seed": seed,
                      "confidence": confidence},
    })


def summary_table(summary: dict) -> list[dict]:
    """Wide rows for tables: overall, one per category, class-averaged; ``metric``,
    ``metric_ci_low``, ``metric_ci_high`` per metric."""
    def row(group: str, n: Any, figures: dict) -> dict:
        r = {"group": group, "n_pairs": n}
        for m in summary["metrics"]:
            s = figures.get(m) or {}
            r[m], r[f"{m}_ci_low"], r[f"{m}_ci_high"] = s.get("mean"), s.get("ci_low"), s.get("ci_high")
        return r

    rows = [row("overall", summary["n_pairs"], summary["overall"])]
    rows += [row(c, s["n_pairs"], s) for c, s in summary["per_class"].items()]
    rows.append(row("class_averaged", summary["n_pairs"], summary["class_averaged"]))
    return rows


def write_summary(summary: dict, out_dir: str | os.PathLike) -> None:
    """Write ``summary.json`` and ``summary.csv`` (see :func:`summary_table`) into ``out_dir``."""
    out = Path(out_dir)
    write_json(out / SUMMARY_JSON, summary)
    rows = summary_table(summary)
    if summary.get("partial"):  # a partial merge says so on every row of the table
        rows = [{**r, "partial": "yes"} for r in rows]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else round(v, 6) if isinstance(v, float) else v)
                    for k, v in r.items()})
    atomic_write(out / SUMMARY_CSV, buf.getvalue())
