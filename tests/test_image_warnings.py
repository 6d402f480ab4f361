"""Inputs that ground but say little are named, once per process: an image the model's crop barely
sees, a tiny image, a heatmap with nothing in it."""

from __future__ import annotations

import numpy as np
import pytest

import groundiff_core as gd
from groundiff_core.io import preprocess

CFG = gd.GroundingConfig.paper().with_steps(10)


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.setattr(preprocess, "_WARNED", set())


def test_an_elongated_image_is_named_once(tiny_v):
    g = gd.Grounder(tiny_v, CFG)
    image = np.random.default_rng(0).random((2, 1000), dtype=np.float32)
    with pytest.warns(UserWarning, match=r"2 x 1000 pixels: the model's centre crop sees 0\.2% of it") as seen:
        h = g.ground(image, ["left pleural effusion"])
        g.ground(image, ["cardiomegaly"])
    assert sum("centre crop" in str(w.message) for w in seen) == 1  # once, not per image
    assert np.isnan(h.heatmaps).mean() > 0.99


def test_a_tiny_image_is_named(tiny_v):
    with pytest.warns(UserWarning, match=r"1 x 1 pixels, under 32 on a side"):
        gd.Grounder(tiny_v, CFG).ground(np.ones((1, 1), np.float32), ["cardiomegaly"])


def test_a_constant_heatmap_is_named():
    from groundiff_core.engine.aggregate import MapAccumulator, aggregate

    import torch

    acc = MapAccumulator()
    acc.add(0, torch.zeros(1, 4, 4))  # every pixel alike
    with pytest.warns(UserWarning, match=r"heatmap of 'mild edema' is constant or all NaN"):
        aggregate(acc, CFG, 16, ["mild edema"])


def test_an_ordinary_image_says_nothing(tiny_v, recwarn):
    gd.Grounder(tiny_v, CFG).ground(np.random.default_rng(1).random((64, 80), dtype=np.float32), ["cardiomegaly"])
    assert not [w for w in recwarn if "crop" in str(w.message) or "constant" in str(w.message)]
