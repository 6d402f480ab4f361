"""Bootstrap intervals for the book's comparisons of settings on the same pairs: the class-averaged
mean with a stratified interval, and the paired difference of two settings. Re-exported by
:mod:`groundiff_core.book.pages`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

__all__ = ["class_averaged_ci", "paired_difference"]


def _class_boot(values: "np.ndarray", cats: "np.ndarray", n_boot: int, seed: int) -> tuple[float, "np.ndarray"]:
    """Class-averaged mean of ``values`` and ``n_boot`` stratified bootstrap replicates of it
    (pairs resampled with replacement within each class)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(cats == c) for c in np.unique(cats)]
    point = float(np.mean([values[g].mean() for g in groups]))
    reps = np.zeros(n_boot)
    for g in groups:
        draws = rng.integers(0, len(g), size=(n_boot, len(g)))
        reps += values[g][draws].mean(axis=1)
    return point, reps / len(groups)


def class_averaged_ci(df: Any, metric: str, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """The class-averaged mean of ``metric`` over the rows of ``df`` (columns ``category`` and
    ``metric``, one row per pair) with a 95% bootstrap interval stratified by class:
    ``{"mean", "ci_low", "ci_high", "n_pairs"}``. Rows with a missing value are left out."""
    import numpy as np

    d = df[["category", metric]].dropna()
    if len(d) == 0:
        return {"mean": None, "ci_low": None, "ci_high": None, "n_pairs": 0}
    point, reps = _class_boot(d[metric].to_numpy(float), d["category"].to_numpy(), n_boot, seed)
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return {"mean": point, "ci_low": float(lo), "ci_high": float(hi), "n_pairs": int(len(d))}


def paired_difference(a: Any, b: Any, metric: str, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Class-averaged ``metric`` of setting ``a`` minus that of setting ``b`` on the pairs both
    scored (DataFrames with ``pair_id``, ``category`` and ``metric``), with a 95% paired bootstrap
    interval: the same resampled pairs (within each class) for both settings.

    Returns ``{"difference", "ci_low", "ci_high", "n_pairs", "separated"}``; ``separated`` is
    True when the interval excludes 0, the only case in which one setting may be called better.
    """
    import numpy as np

    m = a[["pair_id", "category", metric]].merge(b[["pair_id", metric]], on="pair_id", suffixes=("_a", "_b"))
    m = m.dropna()
    if len(m) == 0:
        return {"difference": None, "ci_low": None, "ci_high": None, "n_pairs": 0, "separated": False}
    diff = m[f"{metric}_a"].to_numpy(float) - m[f"{metric}_b"].to_numpy(float)
    point, reps = _class_boot(diff, m["category"].to_numpy(), n_boot, seed)
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return {"difference": point, "ci_low": float(lo), "ci_high": float(hi), "n_pairs": int(len(m)),
            "separated": bool(lo > 0 or hi < 0)}
