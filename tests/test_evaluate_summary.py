"""The summary's confidence intervals: scipy's percentile bootstrap, stratified by class for the
class average, checked against independent resampling written here, and its degenerate cases."""

from __future__ import annotations

import numpy as np
import pytest

from groundiff_core import evaluation as ev
from groundiff_core.evaluation.summary import bootstrap_ci


def _row(pid: str, cat: str, **metrics) -> dict:
    r = {"pair_id": pid, "category": cat, "status": "ok", "image_path": pid}
    r.update({m: metrics.get(m, 0.5) for m in ev.METRICS})
    r["others"] = []
    return r


def _percentile_ci(boots: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    lo, hi = np.quantile(boots, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(lo), float(hi)


def test_ci_of_a_mean_agrees_with_a_plain_percentile_bootstrap():
    values = np.random.default_rng(3).gamma(2.0, 0.1, size=60)
    mean, lo, hi = bootstrap_ci([values], 20_000, 0.95, np.random.default_rng(0))
    assert mean == pytest.approx(values.mean())
    # an independent bootstrap: resample the pairs, take the mean, read off the percentiles
    rng = np.random.default_rng(1)
    boots = values[rng.integers(0, len(values), size=(20_000, len(values)))].mean(axis=1)
    ref_lo, ref_hi = _percentile_ci(boots)
    width = ref_hi - ref_lo
    assert lo == pytest.approx(ref_lo, abs=0.03 * width) and hi == pytest.approx(ref_hi, abs=0.03 * width)
    assert lo < mean < hi


def test_class_average_ci_resamples_within_each_class():
    rng = np.random.default_rng(5)
    a, b = rng.random(4), 0.5 + 0.1 * rng.standard_normal(80)  # a small noisy class, a large one
    mean, lo, hi = bootstrap_ci([a, b], 20_000, 0.9, np.random.default_rng(0))
    assert mean == pytest.approx((a.mean() + b.mean()) / 2)
    # stratified by hand: each class resampled within itself, then the unweighted mean of the means
    r = np.random.default_rng(2)
    boots = (a[r.integers(0, 4, (20_000, 4))].mean(1) + b[r.integers(0, 80, (20_000, 80))].mean(1)) / 2
    ref_lo, ref_hi = _percentile_ci(boots, 0.9)
    width = ref_hi - ref_lo
    assert lo == pytest.approx(ref_lo, abs=0.03 * width) and hi == pytest.approx(ref_hi, abs=0.03 * width)
    # the small class dominates the width: about that of its own mean's interval, halved
    a_boots = a[r.integers(0, 4, (20_000, 4))].mean(1)
    assert hi - lo == pytest.approx(np.subtract(*_percentile_ci(a_boots, 0.9)[::-1]) / 2, rel=0.15)


def test_constant_classes_enter_as_constants_and_use_no_randomness():
    b = np.random.default_rng(7).random(30)
    _, lo1, hi1 = bootstrap_ci([b], 500, 0.95, np.random.default_rng(11))
    # a one-pair class and an all-equal class change every resample's statistic by the same shift
    mean, lo3, hi3 = bootstrap_ci([np.array([0.2]), b, np.full(5, 0.8)], 500, 0.95,
                                  np.random.default_rng(11))
    assert mean == pytest.approx((0.2 + b.mean() + 0.8) / 3)
    assert lo3 == pytest.approx((0.2 + lo1 + 0.8) / 3) and hi3 == pytest.approx((0.2 + hi1 + 0.8) / 3)
    # nothing varies: the interval is the mean itself (scipy refuses one-value samples)
    assert bootstrap_ci([np.array([0.3])], 100, 0.95, np.random.default_rng(0)) == (0.3, 0.3, 0.3)
    assert bootstrap_ci([np.full(4, 0.1), np.array([0.7])], 100, 0.95,
                        np.random.default_rng(0)) == pytest.approx((0.4, 0.4, 0.4))


@pytest.mark.parametrize("samples, match", [([], "non-empty"), ([np.array([])], "non-empty"),
                                            ([np.array([0.1, np.nan])], "finite")])
def test_bad_samples_are_refused(samples, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_ci(samples, 100, 0.95, np.random.default_rng(0))


def test_summary_degenerate_groups():
    rows = [_row("a", "A", miou=0.4), _row("b", "B", miou=0.6), _row("c", "B", miou=0.6),
            _row("d", "C", miou=None), _row("e", "C", miou=float("nan"))]
    s = ev.summarize(rows, n_boot=200, seed=0)
    assert s["per_class"]["A"]["miou"] == {"mean": 0.4, "ci_low": 0.4, "ci_high": 0.4, "n": 1,
                                           "n_undefined": 0}
    assert s["per_class"]["B"]["miou"]["ci_low"] == s["per_class"]["B"]["miou"]["ci_high"] == 0.6
    assert s["per_class"]["C"]["miou"] == {"mean": None, "ci_low": None, "ci_high": None, "n": 0,
                                           "n_undefined": 2}
    ca = s["class_averaged"]["miou"]  # C has no finite value: the average is over A and B
    assert ca["classes"] == ["A", "B"] and ca["mean"] == ca["ci_low"] == ca["ci_high"] == pytest.approx(0.5)
    # a varying overall figure: seeded, reproducible, and the interval holds the mean
    o = s["overall"]["miou"]
    assert o["ci_low"] < o["mean"] < o["ci_high"] and o["n_undefined"] == 2
    assert ev.summarize(rows, n_boot=200, seed=0) == s
    assert s["bootstrap"] == {"method": "percentile", "n_boot": 200, "seed": 0, "confidence": 0.95}
