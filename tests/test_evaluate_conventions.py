"""The runner under the paper's conventions (default) and the strict ones, on the same heatmaps.

A fixed-map method puts NaN where the paper's back-projection does (columns 0..3 and 44..47 of the
40 x 48 fixture images at a 32 px crop), so the box handling and the degenerate cases are known:
a box that vanishes after the resize + centre crop, a pair left without boxes, a box covering the
whole image (AUC undefined under "strict", 0.5 under "paper").
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import mscxr_fixture as fx
from groundiff_core import evaluation as ev
from groundiff_core.io.datasets import load_mscxr

EXTRA = [
    ("d4", "Atelectasis", "left basal atelectasis", 0, 10, 3, 10, "test"),  # vanishes after the crop
    ("d4", "Atelectasis", "right atelectasis", 10, 10, 5, 5, "test"),  # this box stays ...
    ("d4", "Atelectasis", "right atelectasis", 45, 10, 3, 5, "test"),  # ... this one vanishes
    ("e5", "Edema", "diffuse edema", 0, 0, 48, 40, "test"),  # the whole image
]


class FixedMaps:
    """A column ramp on the paper's valid region of a 40 x 48 image, NaN elsewhere."""

    name = "fixed"
    input_size = 32

    def describe(self) -> dict:
        return {"method": "fixed"}

    def ground(self, image, phrases):
        h, w = image.shape
        maps = np.full((len(phrases), h, w), np.nan, np.float32)
        ramp = np.linspace(0, 1, 40, dtype=np.float32)[None, :] * np.linspace(0.2, 1, h, dtype=np.float32)[:, None]
        maps[:, :, 4:44] = ramp
        return maps


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("mscxr")
    fx.write_images(root, dicoms=("a1", "b2", "c3", "d4", "e5"))
    return load_mscxr(fx.write_csv(root / "ms.csv", extra_rows=EXTRA), root)


@pytest.fixture(scope="module")
def runs(pairs, tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    out = {}
    for conv in ("paper", "strict"):
        summary = ev.evaluate(FixedMaps(), pairs, base / conv, progress=False, n_boot=50, conventions=conv)
        out[conv] = (summary, {r["pair_id"]: r for r in ev.load_results(base / conv)}, base / conv)
    return out


def test_paper_drops_boxes_that_vanish_after_the_crop_and_skips_empty_pairs(runs):
    summary, rows, _ = runs["paper"]
    gone = rows["d4|left basal atelectasis"]
    assert gone["status"] == "skipped" and gone["reason"] == "no box inside the model's centre crop"
    partial = rows["d4|right atelectasis"]
    assert partial["status"] == "ok" and partial["boxes"] == [[10.0, 10.0, 5.0, 5.0]]
    assert any("centre crop" in n for n in partial["box_notes"])
    assert summary["skipped"]["n_pairs"] == 1
    assert summary["conventions"] == "paper"
    # strict keeps them (the invisible part is ignored by the metrics)
    _, strict_rows, _ = runs["strict"]
    assert strict_rows["d4|left basal atelectasis"]["status"] == "ok"
    assert len(strict_rows["d4|right atelectasis"]["boxes"]) == 2


def test_degenerate_pairs_enter_the_paper_class_means(runs):
    paper, prow, _ = runs["paper"]
    strict, srow, _ = runs["strict"]
    assert prow["e5|diffuse edema"]["auc"] == 0.5 and prow["e5|diffuse edema"]["auc_binned"] == 0.5
    assert srow["e5|diffuse edema"]["auc"] is None  # NaN, written as null
    edema = [r for r in prow.values() if r["category"] == "Edema" and r["status"] == "ok"]
    assert paper["per_class"]["Edema"]["auc"]["mean"] == pytest.approx(np.mean([r["auc"] for r in edema]))
    assert paper["per_class"]["Edema"]["auc"]["n_undefined"] == 0
    assert strict["per_class"]["Edema"]["auc"]["n_undefined"] >= 1


def test_one_run_gives_both_tables(runs):
    """Each row carries the other conventions' metrics: re-summarising the paper run under
    "strict" equals the strict run, metric by metric, without grounding again."""
    paper_summary, _, paper_dir = runs["paper"]
    strict_summary, _, _ = runs["strict"]
    again = ev.summarize(ev.load_results(paper_dir), n_boot=50, conventions="strict")
    assert again["conventions"] == "strict"
    for m in ev.METRICS:
        for c in strict_summary["per_class"]:
            a, b = again["per_class"][c][m]["mean"], strict_summary["per_class"][c][m]["mean"]
            assert (a is None and b is None) or a == pytest.approx(b), (c, m)
    differs = [m for m in ev.METRICS
               if paper_summary["class_averaged"][m]["mean"] != pytest.approx(again["class_averaged"][m]["mean"])]
    assert "miou" in differs  # the conventions matter on these pairs


def test_conventions_are_part_of_the_run_identity(runs, pairs):
    _, _, paper_dir = runs["paper"]
    run = json.loads((paper_dir / "run.json").read_text())
    assert run["identity"]["scoring"]["conventions"] == "paper"
    with pytest.raises(ValueError, match="scoring.conventions"):
        ev.evaluate(FixedMaps(), pairs, paper_dir, progress=False, n_boot=10, conventions="strict")
    with pytest.raises(ValueError, match="conventions must be one of"):
        ev.evaluate(FixedMaps(), pairs, paper_dir, progress=False, conventions="authors")
