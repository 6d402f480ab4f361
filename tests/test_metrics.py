"""The metrics under the "strict" conventions: hand-computed cases, scikit-learn agreement, and every
defined edge case (the values the project computed before the paper's conventions became the
default; the paper's conventions are tested against an independent reference in
test_metrics_paper.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import functools

from groundiff_core.evaluation import metrics as _metrics

_TAKES_CONVENTIONS = {"iou_at", "miou", "auc_roc", "cnr", "pointing_game", "all_metrics", "HeatmapScorer"}


class _Strict:
    """``groundiff_core.evaluation.metrics`` with ``conventions="strict"`` wherever a function takes it."""

    def __getattr__(self, name):
        f = getattr(_metrics, name)
        return functools.partial(f, conventions="strict") if name in _TAKES_CONVENTIONS else f


M = _Strict()


# ------------------------------------------------------------------------------ box masks
def test_box_mask_integer_boxes_are_slices():
    m = M.box_mask((6, 8), [(1, 2, 3, 2)])
    ref = np.zeros((6, 8), bool)
    ref[2:4, 1:4] = True
    np.testing.assert_array_equal(m, ref)


def test_box_mask_is_union_and_clips_at_border():
    m = M.box_mask((5, 5), [(0, 0, 2, 2), (1, 1, 2, 2), (4, 4, 10, 10), (-3, 3, 4, 1)])
    ref = np.zeros((5, 5), bool)
    ref[0:2, 0:2] = ref[1:3, 1:3] = True
    ref[4:, 4:] = True
    ref[3, 0:1] = True
    np.testing.assert_array_equal(m, ref)


def test_box_mask_rounds_float_edges_half_up_and_ignores_empty():
    m = M.box_mask((4, 4), [(0.5, 0.4, 1.0, 1.2), (2, 2, 0, 3), (10, 10, 2, 2)])
    ref = np.zeros((4, 4), bool)
    ref[0:2, 1:2] = True  # rows round(0.4)=0 .. round(1.6)=2, cols round(0.5)=1 .. round(1.5)=2
    np.testing.assert_array_equal(m, ref)


def test_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="2-D"):
        M.miou(np.zeros((2, 3, 4)), [(0, 0, 1, 1)])
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        M.auc_roc(np.zeros((4, 4)), [(0, 0, 1)])


# ------------------------------------------------------------------------------ mIoU
def test_miou_hand_computed():
    h = np.zeros((4, 4))
    h[0, 0:2] = 0.45   # above 0.1..0.4, not 0.5
    h[1, 0] = 0.15     # above 0.1 only
    box = [(0, 0, 2, 1)]  # GT: (0,0), (0,1)
    # t=0.1: pred 3 px, inter 2, union 3 -> 2/3 ; t=0.2,0.3,0.4: pred 2 = GT -> 1 ; t=0.5: pred 0 -> 0
    expected = (2 / 3 + 1 + 1 + 1 + 0) / 5
    assert M.miou(h, box) == pytest.approx(expected)
    assert M.iou_at(h, box, 0.1) == pytest.approx(2 / 3)
    assert M.miou(h, box, thresholds=(0.3,)) == pytest.approx(1.0)


def test_miou_threshold_is_strict():
    h = np.full((3, 3), 0.2)
    h[0, 0] = 0.5
    assert M.iou_at(h, [(0, 0, 1, 1)], 0.2) == pytest.approx(1.0)  # 0.2 > 0.2 is false
    assert M.iou_at(h, [(0, 0, 1, 1)], 0.5) == 0.0


def test_miou_ignores_nan_pixels_in_gt_and_prediction():
    h = np.array([[1.0, np.nan], [0.0, 0.0]])
    # GT covers (0,0) and the NaN pixel: the NaN pixel counts nowhere
    assert M.miou(h, [(0, 0, 2, 1)]) == pytest.approx(1.0)


# ------------------------------------------------------------------------------ AUC-ROC
def test_auc_exact_hand_computed_with_ties():
    h = np.array([[0.9, 0.5], [0.5, 0.1]])
    # GT = (0,0) 0.9 and (1,0) 0.5 ; negatives 0.5, 0.1 -> wins: 0.9>0.5,0.9>0.1,0.5>0.1, tie 0.5=0.5
    assert M.auc_roc(h, [(0, 0, 1, 2)]) == pytest.approx(3.5 / 4)


@pytest.mark.parametrize("seed", range(5))
def test_auc_exact_agrees_with_sklearn(seed):
    rng = np.random.default_rng(seed)
    h = rng.random((23, 31))
    h = np.round(h, 1)  # plenty of ties
    h[rng.random(h.shape) < 0.1] = np.nan
    boxes = [(3, 4, 9, 7), (20, 10, 15, 20)]
    gt = M.box_mask(h.shape, boxes)
    ok = ~np.isnan(h)
    ref = roc_auc_score(gt[ok], h[ok])
    assert M.auc_roc(h, boxes) == pytest.approx(ref, abs=1e-12)


def test_binned_auc_matches_torcheval_documented_example():
    # torcheval's binary_binned_auroc docs: input [0.1, 0.5, 0.7, 0.8], target [1, 0, 1, 1],
    # threshold=5 -> 0.5 (the exact AUC is 2/3)
    h = np.array([[0.1, 0.5, 0.7, 0.8]])
    boxes = [(0, 0, 1, 1), (2, 0, 2, 1)]
    assert M.auc_roc(h, boxes, binned=True) == pytest.approx(0.5)
    assert M.auc_roc(h, boxes) == pytest.approx(2 / 3)
    pts = M.roc_points(h, boxes)
    # thresholds 0, .25, .5, .75, 1 ; positive iff value >= t
    np.testing.assert_allclose(pts, [[1, 1], [1, 2 / 3], [1, 2 / 3], [0, 1 / 3], [0, 0]])


def test_binned_auc_hand_computed_perfect_and_step():
    h = np.zeros((2, 4))
    h[0] = 1.0
    assert M.auc_roc(h, [(0, 0, 4, 1)], binned=True) == pytest.approx(1.0)
    # values 0.3 inside, 0.6 outside: points (1,1) at t<=0.25, (1,0) at 0.5, (0,0) above -> 0
    h = np.array([[0.3, 0.6]])
    assert M.auc_roc(h, [(0, 0, 1, 1)], binned=True) == pytest.approx(0.0)


def test_binned_auc_on_threshold_values_is_exact_auc_without_the_origin_segment():
    # With values on the thresholds every ROC vertex is sampled, so the binned area equals the
    # exact AUC except the segment from (0, 0) to the t = 1 point, which (as in torchmetrics'
    # binned AUROC) is not added.
    rng = np.random.default_rng(3)
    h = rng.choice([0.0, 0.25, 0.5, 0.75, 1.0], size=(16, 16))
    boxes = [(2, 2, 8, 6)]
    fpr1, tpr1 = M.roc_points(h, boxes)[-1]
    assert fpr1 > 0
    assert M.auc_roc(h, boxes, binned=True) + fpr1 * tpr1 / 2 == pytest.approx(M.auc_roc(h, boxes), abs=1e-12)


# ------------------------------------------------------------------------------ CNR
def test_cnr_hand_computed_population_variance():
    h = np.array([[4.0, 2.0, 0.0, 1.0],
                  [1.0, 1.0, 1.0, 1.0]])
    box = [(0, 0, 2, 1)]  # in: 4, 2 (mean 3, var 1) ; out: 0,1,1,1,1,1 (mean 5/6, var 5/36)
    expected = (3 - 5 / 6) / math.sqrt(1 + 5 / 36)
    assert M.cnr(h, box) == pytest.approx(expected)
    assert M.cnr(h, box, absolute=False) == pytest.approx(expected)
    assert M.cnr(-h, box) == pytest.approx(expected)
    assert M.cnr(-h, box, absolute=False) == pytest.approx(-expected)


def test_cnr_is_per_box_then_averaged_with_abs_per_box():
    h = np.array([[2.0, 0.0, 1.0, 1.0]])
    b1, b2 = (0, 0, 1, 1), (1, 0, 1, 1)
    c1 = M.cnr(h, [b1], absolute=False)
    c2 = M.cnr(h, [b2], absolute=False)
    assert c1 > 0 > c2
    assert M.cnr(h, [b1, b2], absolute=False) == pytest.approx((c1 + c2) / 2)
    assert M.cnr(h, [b1, b2]) == pytest.approx((abs(c1) + abs(c2)) / 2)
    # "out" of box 1 includes box 2's pixels: in = [2], out = [0, 1, 1]
    out = np.array([0.0, 1.0, 1.0])
    assert c1 == pytest.approx((2 - out.mean()) / math.sqrt(out.var()))


def test_cnr_ignores_nan():
    h = np.array([[4.0, 2.0, np.nan, 0.0], [1.0, 1.0, 1.0, 1.0]])
    inside = np.array([4.0, 2.0])
    outside = np.array([0.0, 1, 1, 1, 1])
    expected = (inside.mean() - outside.mean()) / math.sqrt(inside.var() + outside.var())
    assert M.cnr(h, [(0, 0, 3, 1)]) == pytest.approx(expected)


# ------------------------------------------------------------------------------ pointing game
def test_pointing_game_hit_miss_and_ties():
    h = np.zeros((4, 4))
    h[1, 1] = 1.0
    assert M.pointing_game(h, [(0, 0, 2, 2)]) == 1.0
    assert M.pointing_game(h, [(2, 2, 2, 2)]) == 0.0
    h[3, 3] = 1.0  # two maxima, one inside
    assert M.pointing_game(h, [(0, 0, 2, 2)]) == pytest.approx(0.5)


def test_pointing_game_ignores_nan_maximum():
    h = np.array([[np.nan, 0.2], [0.9, 0.1]])
    assert M.pointing_game(h, [(0, 1, 1, 1)]) == 1.0


# ------------------------------------------------------------------------------ edge cases
def test_constant_heatmap():
    h = np.full((10, 10), 0.3)
    box = [(2, 2, 5, 5)]  # 25 of 100 px
    assert M.auc_roc(h, box) == 0.5
    assert M.auc_roc(h, box, binned=True) == 0.5
    assert M.cnr(h, box) == 0.0
    assert M.cnr(h, box, absolute=False) == 0.0
    assert M.pointing_game(h, box) == pytest.approx(0.25)
    # 0.3 > 0.1, 0.2 -> everything predicted (IoU 0.25); not > 0.3, 0.4, 0.5 -> IoU 0
    assert M.miou(h, box) == pytest.approx((0.25 + 0.25) / 5)


def test_all_nan_heatmap_gives_nan_everywhere():
    h = np.full((5, 5), np.nan)
    for v in M.all_metrics(h, [(1, 1, 2, 2)]).values():
        assert math.isnan(v)


def test_gt_in_nan_margin_gives_nan():
    h = np.full((6, 6), 0.5)
    h[:, :2] = np.nan
    vals = M.all_metrics(h, [(0, 0, 2, 6)])
    assert all(math.isnan(v) for v in vals.values())


def test_box_touching_and_crossing_the_border():
    rng = np.random.default_rng(0)
    h = rng.random((12, 12))
    inside = (8, 8, 4, 4)       # touches the bottom-right border exactly
    crossing = (8, 8, 40, 40)   # crosses it: clipped to the same pixels
    negative = (-5, -5, 8, 8)   # crosses the top-left: clipped to (0, 0, 3, 3)
    assert M.all_metrics(h, [inside]) == M.all_metrics(h, [crossing])
    assert M.all_metrics(h, [negative]) == M.all_metrics(h, [(0, 0, 3, 3)])


def test_box_covering_the_whole_image():
    rng = np.random.default_rng(1)
    h = rng.random((8, 8))
    whole = [(0, 0, 8, 8)]
    assert math.isnan(M.auc_roc(h, whole))          # no negatives: AUC undefined
    assert math.isnan(M.auc_roc(h, whole, binned=True))
    assert math.isnan(M.cnr(h, whole))              # nothing outside the box
    assert M.pointing_game(h, whole) == 1.0
    assert M.iou_at(h, whole, 0.5) == pytest.approx(np.mean(h > 0.5))
    # covering every VALID pixel is the same case
    h2 = h.copy()
    h2[:, 4:] = np.nan
    assert math.isnan(M.auc_roc(h2, [(0, 0, 4, 8)]))


def test_all_metrics_keys_and_perfect_map():
    h = np.zeros((16, 16))
    h[4:8, 2:10] = 1.0
    r = M.all_metrics(h, [(2, 4, 8, 4)])
    assert set(r) == {"miou", "auc", "auc_binned", "cnr_abs", "cnr_signed", "pointing"}
    assert r["miou"] == 1.0 and r["auc"] == 1.0 and r["auc_binned"] == 1.0 and r["pointing"] == 1.0
    assert r["cnr_abs"] == math.inf and r["cnr_signed"] == math.inf  # both regions constant


def test_scorer_reused_across_box_sets_matches_the_functions():
    rng = np.random.default_rng(7)
    h = np.round(rng.random((37, 29)), 2).astype(np.float32)
    h[:, :3] = np.nan
    scorer = M.HeatmapScorer(h)
    h64 = h.astype(np.float64)
    for boxes in ([(4, 5, 10, 8)], [(0, 0, 5, 5), (20, 30, 20, 20)], [(10, 10, 1, 1)]):
        got = scorer.all(boxes)
        ref = M.all_metrics(h64, boxes)
        assert got.keys() == ref.keys()
        for k in got:
            assert got[k] == pytest.approx(ref[k], abs=1e-12), k
        gt = M.box_mask(h.shape, boxes)
        ok = ~np.isnan(h)
        assert scorer.auc(boxes) == pytest.approx(roc_auc_score(gt[ok], h[ok]), abs=1e-12)
