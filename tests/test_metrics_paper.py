"""The paper's conventions (the default) against an independent reference written from METHOD.md.

``groundiff_core/testing/reference.py`` re-implements each metric, the preprocessing and the back-projection from
METHOD.md's prose, naively and without importing groundiff_core; its binned AUROC is torcheval's
own function. Random heatmaps with NaN margins (portrait and landscape) and 1 to 3 boxes that
overlap, reach into the margin or lie wholly in it, plus constant and all-zero maps: every metric
must equal the reference to 1e-6 in every case.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from groundiff_core.testing import reference as ref
from groundiff_core.evaluation import metrics as M
from groundiff_core.engine.aggregate import otsu_mask, postprocess
from groundiff_core.io.preprocess import CropGeometry, prepare_image

TOL = 1e-6


def _random_case(rng: np.random.Generator, kind: str):
    """A back-projected-looking map (NaN margins along the longer side) and 1-3 integer boxes."""
    short = int(rng.integers(24, 48))
    long = short + int(rng.integers(1, 30))
    portrait = bool(rng.integers(0, 2))
    h, w = (long, short) if portrait else (short, long)
    m = long - short
    before = m // 2
    core = rng.random((short, short))
    if kind == "otsu":  # like a post-processed map: many exact zeros, a few ties at 1
        core = np.where(core > 0.6, core, 0.0)
        core[rng.integers(0, short), rng.integers(0, short)] = 1.0
    elif kind == "quantised":  # heavy ties, including values equal to the thresholds
        core = np.round(core * 4) / 4
    elif kind == "constant":
        core = np.full((short, short), 0.7)
    elif kind == "zeros":
        core = np.zeros((short, short))
    heat = np.full((h, w), np.nan)
    if portrait:
        heat[before:before + short, :] = core
    else:
        heat[:, before:before + short] = core
    boxes = []
    for _ in range(int(rng.integers(1, 4))):
        bw, bh = int(rng.integers(1, w // 2 + 2)), int(rng.integers(1, h // 2 + 2))
        x, y = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
        boxes.append((x, y, bw, bh))
    # sometimes a box wholly in the first margin, or one reaching into the last margin
    r = rng.random()
    if m >= 4 and r < 0.2:
        boxes.append((0, 0, min(before, w) or 1, 2) if portrait else (0, 0, 2, min(before, h) or 1))
    elif m >= 4 and r < 0.4:
        if portrait:
            boxes.append((1, h - m // 2 - 3, w // 3, m // 2 + 3))
        else:
            boxes.append((w - m // 2 - 3, 1, m // 2 + 3, h // 3))
    return heat.astype(np.float32), boxes


CASES = [(seed, kind) for seed in range(40) for kind in ("uniform", "otsu", "quantised")] + \
        [(seed, kind) for seed in range(6) for kind in ("constant", "zeros")]


@pytest.mark.parametrize("seed,kind", CASES)
def test_every_metric_equals_the_reference(seed, kind):
    heat, boxes = _random_case(np.random.default_rng(seed), kind)
    h64 = heat.astype(np.float64)
    got = M.all_metrics(heat, boxes)  # paper conventions are the default
    assert got["miou"] == pytest.approx(ref.miou(h64, boxes), abs=TOL)
    assert got["auc_binned"] == pytest.approx(ref.binned_auroc(h64, boxes), abs=TOL)
    assert got["auc"] == pytest.approx(ref.exact_auroc(h64, boxes), abs=TOL)
    assert got["cnr_abs"] == pytest.approx(ref.cnr_abs(h64, boxes), abs=TOL)
    per_box = M.HeatmapScorer(heat).cnr_per_box(boxes)
    np.testing.assert_allclose(per_box, ref.cnr_per_box(h64, boxes), atol=TOL)
    assert got["cnr_signed"] == pytest.approx(np.mean(ref.cnr_per_box(h64, boxes)), abs=TOL)


def test_the_conventions_really_differ_on_margin_and_overlap_cases():
    """Not a tautology: on the same cases "strict" disagrees with the reference where METHOD.md
    says the conventions differ (mIoU with boxes in the margin, CNR with overlapping boxes)."""
    miou_diff = cnr_diff = 0
    for seed in range(40):
        heat, boxes = _random_case(np.random.default_rng(seed), "uniform")
        h64 = heat.astype(np.float64)
        strict = M.all_metrics(heat, boxes, conventions="strict")
        miou_diff += not np.isclose(strict["miou"], ref.miou(h64, boxes), atol=TOL)
        cnr_diff += len(boxes) > 1 and not np.isclose(strict["cnr_abs"], ref.cnr_abs(h64, boxes), atol=TOL)
    assert miou_diff >= 5 and cnr_diff >= 5


def test_hand_computed_running_copy_cnr():
    # two boxes overlapping in one pixel; the second's "in" loses that pixel, its "out" loses box 1
    heat = np.array([[1.0, 1.0, 0.0],
                     [1.0, 0.5, 0.0],
                     [0.0, 0.0, 0.0]])
    boxes = [(0, 0, 2, 2), (1, 1, 2, 1)]
    # box 1: in {1, 1, 1, .5} mean .875 var .046875; out five zeros -> CNR .875 / sqrt(.046875)
    # box 2: in {0} (the .5 is blanked), out {0, 0, 0, 0} -> 0 / 0 = NaN -> counts 0
    per_box = M.HeatmapScorer(heat).cnr_per_box(boxes)
    np.testing.assert_allclose(per_box, [0.875 / np.sqrt(0.046875), 0.0])
    assert M.cnr(heat, boxes) == pytest.approx(0.875 / np.sqrt(0.046875) / 2)


def test_box_in_margin_lowers_paper_miou_but_not_strict():
    heat = np.full((6, 4), np.nan)
    heat[1:5] = 0.0
    heat[1:3, 0:2] = 0.9
    boxes = [(0, 0, 2, 3)]  # rows 0..2: row 0 is margin
    assert M.miou(heat, boxes, conventions="strict") == pytest.approx(1.0)
    assert M.miou(heat, boxes) == pytest.approx(4 / 6)


def test_degenerate_pairs_score_what_the_authors_scored():
    heat = np.full((4, 6), np.nan)
    heat[:, 1:5] = np.linspace(0, 1, 16).reshape(4, 4)
    in_margin = [(0, 0, 1, 4)]  # wholly in the NaN margin
    assert M.auc_roc(heat, in_margin) == 0.5
    assert M.auc_roc(heat, in_margin, binned=True) == 0.5
    assert M.cnr(heat, in_margin) == 0.0
    assert M.miou(heat, in_margin) == 0.0
    assert np.isnan(M.auc_roc(heat, in_margin, conventions="strict"))
    everything = [(0, 0, 6, 4)]
    assert M.auc_roc(heat, everything, binned=True) == 0.5
    assert np.isnan(M.auc_roc(heat, everything, binned=True, conventions="strict"))


def test_unknown_conventions_are_refused():
    with pytest.raises(ValueError, match="conventions must be one of 'paper', 'strict'"):
        M.miou(np.zeros((2, 2)), [(0, 0, 1, 1)], conventions="authors")


# ------------------------------------------------------------------ preprocessing and back-projection
SIZES = [(3056, 2544), (2544, 3056), (1001, 1000), (1000, 1001), (700, 512), (512, 700), (64, 64),
         (45, 32), (32, 45), (513, 300)]


@pytest.mark.parametrize("hw", SIZES)
def test_preprocessing_equals_the_reference(hw):
    h, w = hw
    size = 512 if max(hw) > 1000 else 32
    img = np.random.default_rng(h * 7 + w).random((h, w)).astype(np.float32)
    x, geom = prepare_image(img, size)
    torch.testing.assert_close(x, ref.preprocess(img, size).clamp(0, 1), rtol=0, atol=0)
    m = np.random.default_rng(1).random((size, size)).astype(np.float32)
    np.testing.assert_array_equal(geom.to_original(m[None])[0], ref.back_project(m, h, w))


def test_truncation_and_rounding_differ_where_the_issue_says():
    # 1001 x 1000 at 512: 512.512 -> 512 truncated, 513 rounded
    assert CropGeometry(1001, 1000, 512).resized_hw == (512, 512)
    assert CropGeometry(1001, 1000, 512, "strict").resized_hw == (513, 512)
    # 3056 x 2544: the first valid row is 256 under the paper's rule, 253 under the exact inverse
    assert CropGeometry(3056, 2544, 512).region[0] == 256
    assert CropGeometry(3056, 2544, 512, "strict").region[0] == 253
    heat = CropGeometry(3056, 2544, 512).to_original(np.ones((1, 512, 512), np.float32))[0]
    assert np.isnan(heat[:256]).all() and np.isnan(heat[-256:]).all() and not np.isnan(heat[256:-256]).any()


def test_boxes_in_crop_follow_the_resize_and_centre_crop():
    g = CropGeometry(3056, 2544, 512)  # resized 615 x 512, crop rows [51, 563) of the resized image
    boxes = np.array([[10, 0, 50, 250],    # rows 0..249 -> resized 0..50.3: overlaps row 51? no
                      [10, 0, 50, 260],    # resized 0..52.3: overlaps
                      [10, 2800, 50, 256],  # resized 563.4..: after the crop
                      [10, 1000, 50, 50]])
    np.testing.assert_array_equal(g.boxes_in_crop(boxes), [False, True, False, True])


def test_otsu_is_multiotsu_with_two_classes():
    from skimage.filters import threshold_multiotsu

    rng = np.random.default_rng(0)
    for _ in range(20):
        m = rng.random((64, 64)) ** 3
        np.testing.assert_array_equal(otsu_mask(m), m > threshold_multiotsu(m, classes=2)[0])
    out = postprocess(rng.random((2, 32, 32)), 1.0)
    assert out.shape == (2, 32, 32) and (out >= 0).all() and (out <= 1).all()
