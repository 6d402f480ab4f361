""""What this page shows": each notebook's closing bullets, computed from the metrics file it wrote.

One function per page takes the dict the page saved (``main_table.json``, ``ablation.json``, ...)
and returns Markdown. Every comparison is read by the one rule,
:func:`~groundiff_core.evaluation.compare.verdict` (a paired bootstrap interval that excludes 0, on at
least :data:`~groundiff_core.evaluation.compare.MIN_PAIRS` pairs); below that the bullet says "too few
pairs for a verdict" and gives no interval. Nothing here is typed from a run: change a number in
the file and the sentence follows.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

from groundiff_core.book.figures import fmt_ci, fmt_diff
from groundiff_core.evaluation.compare import MIN_PAIRS, MIN_PER_CLASS, verdict

__all__ = ["TITLE", "method_page", "main_table_page", "ablation_page", "failure_page", "captum_page"]

TITLE = "What this page shows"
NAMES = {"miou": "mIoU", "auc": "AUC-ROC", "cnr_abs": "|CNR|", "pointing": "pointing game"}
_READ = {"above 0": "higher", "below 0": "lower", "not separable from 0": "not separable from"}


def _compare(d: Mapping[str, Any] | None, a: str, b: str, metric: str) -> str:
    """One sentence: ``a`` against ``b`` on ``metric`` by the verdict rule."""
    if not d or d.get("difference") is None:
        return f"{NAMES.get(metric, metric)}: {a} against {b} was not measured."
    v = verdict(dict(d))
    if v == "too few pairs":
        return (f"{NAMES.get(metric, metric)}: {a} minus {b} = {fmt_diff(d)}; too few pairs for a verdict "
                f"(fewer than {MIN_PAIRS}).")
    rel = "is not separable from" if v == "not separable from 0" else f"scores {_READ[v]} than"
    return f"{NAMES.get(metric, metric)}: {a} {rel} {b} ({fmt_diff(d)} on {d['n_pairs']} pairs)."


def _load(m: Mapping[str, Any] | str | os.PathLike) -> Mapping[str, Any]:
    """The page's metrics: the dict itself, or the JSON file the page wrote (``pages.save_json``)."""
    if isinstance(m, (str, os.PathLike)):
        with open(m, encoding="utf-8") as fh:
            return json.load(fh)
    return m


def _bullets(lines: list[str]) -> str:
    return "\n".join(f"* {line}" for line in lines) if lines else "No pair was scored on this page."


def method_page(m: Mapping[str, Any] | str | os.PathLike) -> str:
    """Notebook 1: one pair; whether its own phrase's map scores highest against its own boxes."""
    m = _load(m)
    rows = m.get("metrics") or {}
    phrase = (m.get("pair") or {}).get("phrase")
    if phrase not in rows or len(rows) < 2:
        return _bullets([f"One pair, {phrase!r}: no other finding on its image to compare with."] if phrase else [])
    lines = []
    for metric in ("miou", "auc"):
        best = max(rows, key=lambda k: rows[k].get(metric, float("-inf")))
        own = rows[phrase][metric]
        lines.append(f"{NAMES[metric]}: the phrase's own map scores {own:.3f} against its boxes; "
                     + ("the highest of the image's findings." if best == phrase else
                        f"{best!r} scores higher ({rows[best][metric]:.3f}), so on this pair the map does not "
                        "follow the text best."))
    lines.append("One pair shows how the method works, not how well: the next pages measure that.")
    return _bullets(lines)


def main_table_page(m: Mapping[str, Any] | str | os.PathLike) -> str:
    """Notebook 2: the method against the phrase prior and against its own image-shuffle control."""
    m = _load(m)
    paired = m.get("paired_differences") or {}
    lines = []
    method = "cross-attention"
    for key, a, b in (("cross-attention minus phrase prior", method, "the image-blind phrase prior"),
                      ("own image minus another image", "the method on each phrase's own image",
                       "on another image (the image-shuffle control)")):
        for metric in ("miou", "auc", "cnr_abs"):
            if key in paired:
                lines.append(_compare(paired[key].get(metric), a, b, metric))
    ours = (m.get("summaries") or {}).get("cross-attention (paper preset)")
    if ours:
        ca = ours.get("class_averaged", {})
        lines.append(f"The method on {ours.get('n_pairs')} pairs: class-averaged mIoU {fmt_ci(ca.get('miou'))}, "
                     f"AUC-ROC {fmt_ci(ca.get('auc'))}, |CNR| {fmt_ci(ca.get('cnr_abs'))}.")
    return _bullets(lines)


def ablation_page(m: Mapping[str, Any] | str | os.PathLike) -> str:
    """Notebook 3: the best grid cells against the paper code's setting, Otsu, Table III, the fast preset."""
    m = _load(m)
    lines = []
    for metric in ("miou", "auc", "cnr_abs"):
        d = (m.get("paired_vs_paper_code") or {}).get(f"{metric}_difference")
        if d:
            L, T = d.get("cell", [None, None])
            lines.append(_compare(d, f"the grid's highest-mean cell (L = {L}, T = {T} %)",
                                  "the paper code's layers 3, 4, 6, 7", metric))
    pp = m.get("postprocessing") or {}
    for col in ("mIoU", "AUC-ROC", "|CNR|"):
        vals = pp.get(col) or {}
        paper, no_otsu = vals.get("Gaussian + Otsu (paper)"), vals.get("Gaussian only")
        if paper is not None and no_otsu is not None:
            lines.append(f"Otsu's threshold {'raises' if paper > no_otsu else 'lowers' if paper < no_otsu else 'leaves'} "
                         f"the class-averaged {col} ({no_otsu:.3f} without, {paper:.3f} with; means only).")
    t3 = m.get("table_iii") or {}
    for metric in ("miou", "auc"):
        d = (t3.get("difference") or {}).get(metric)
        if d:
            lines.append("Table III, " + _compare(d, "attention on the class name's tokens",
                                                  "attention on all phrase tokens", metric))
    fast = (m.get("fast_vs_paper") or {}).get("metrics") or {}
    for metric in ("miou", "auc"):
        d = (fast.get(metric) or {}).get("difference")
        if isinstance(d, Mapping):
            lines.append("Presets, " + _compare(d, "the fast preset", "the paper preset", metric))
    return _bullets(lines)


def failure_page(m: Mapping[str, Any] | str | os.PathLike) -> str:
    """Notebook 4: laterality and the per-class comparison with the phrase prior."""
    m = _load(m)
    lines = []
    for metric, st in (m.get("laterality") or {}).items():
        r, l = st.get("right", {}), st.get("left", {})
        n = min(r.get("n_pairs", 0), l.get("n_pairs", 0))
        if n == 0:
            continue
        if n < MIN_PAIRS:
            lines.append(f"{NAMES.get(metric, metric)} by side: 'right ...' {fmt_ci(r)}, 'left ...' {fmt_ci(l)}; "
                         f"too few pairs of one side for a verdict (fewer than {MIN_PAIRS}).")
        else:
            apart = r["ci_low"] > l["ci_high"] or l["ci_low"] > r["ci_high"]
            lines.append(f"{NAMES.get(metric, metric)} by side: 'right ...' {fmt_ci(r)} ({r['n_pairs']} pairs), "
                         f"'left ...' {fmt_ci(l)} ({l['n_pairs']} pairs): "
                         + ("the intervals do not overlap, so one side is localised better."
                            if apart else "the intervals overlap: no side is localised better on these pairs."))
    rows = m.get("against_phrase_prior") or []
    counted = [r for r in rows if r.get("verdict") not in (None, "too few pairs")]
    if rows and not counted:
        lines.append(f"Against the phrase prior, class by class: too few pairs in every class for a verdict "
                     f"(fewer than {MIN_PER_CLASS} a class).")
    elif rows:
        below = sorted({r["class"] for r in counted if r["verdict"] == "below 0"})
        above = sorted({r["class"] for r in counted if r["verdict"] == "above 0"})
        lines.append(f"Against the phrase prior, class by class: {len(counted)} of {len(rows)} class-metric rows "
                     f"have enough pairs for a verdict; the method scores lower in {', '.join(below) or 'none'} "
                     f"and higher in {', '.join(above) or 'none'}.")
    return _bullets(lines)


def captum_page(m: Mapping[str, Any] | str | os.PathLike) -> str:
    """Notebook 5: the attribution method with the highest mean AUC-ROC against cross-attention, by
    the paired differences on the pairs both scored."""
    m = _load(m)
    top = m.get("highest_mean_captum")
    d = (m.get("difference_to_cross_attention") or {}).get(top)
    if not top or not d:
        return _bullets([])
    lines = [f"The attribution method with the highest mean class-averaged AUC-ROC is {top}."]
    lines += [_compare(d.get(metric), top, "cross-attention", metric) for metric in ("auc", "miou")]
    lines.append("The ranking among the attribution methods is a ranking of means only: no test here "
                 "separates them.")
    return _bullets(lines)
