"""Batching across images: one inversion for several images, exact to grounding them one by one.

``Grounder.ground_batch`` packs the unconditional rows of all the images of a batch into one UNet
call per step, and in the window the conditional rows of all their phrases into another (or, without
the early exit, everything into one). ``groundiff evaluate --batch-images B`` hands B images at a
time to ``ground_batch`` with a grounder whose ``batch_size`` is B. Compared on the float64 tiny
model, bit for bit on the float32 results.
"""

from __future__ import annotations

from argparse import Namespace

import numpy as np
import pytest
import torch

import groundiff_core as gd
from groundiff_core import evaluation as ev
from groundiff_core.models.architectures import tiny_ldm
from groundiff_core.io.datasets import load_mscxr
from groundiff_core.engine.layers import cross_attention_layers

import mscxr_fixture as fx

SHORT = gd.GroundingConfig.paper().with_steps(30)  # 31 trailing steps, window [12, 18)
from _testdata import PHRASES, unet_call_sizes  # noqa: E402


def _images():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:36, 0:44]
    return [(0.5 + 0.4 * np.sin(xx / 6.0) * np.cos(yy / 4.0)).astype(np.float32),
            rng.random((30, 30)).astype(np.float32),
            rng.random((40, 32)).astype(np.float32)]


@pytest.mark.parametrize("early_exit", [True, False])
def test_ground_batch_packs_images_and_is_exact(tiny64_eps, early_exit):
    images, phrases = _images(), [PHRASES[:2], PHRASES[2:3], PHRASES[1:4]]  # 3 images, 6 rows
    g = gd.Grounder(tiny64_eps, SHORT, batch_size=3, early_exit=early_exit)
    cross_attention_layers(tiny64_eps.unet)
    batch, sizes = unet_call_sizes(tiny64_eps, lambda: g.ground_batch(images, phrases, return_raw=True))
    # one inversion: 3 unconditional rows per step before the last; in the window the 6 conditional
    # rows of the three images' phrases in one call (apart, after the trajectory, or stacked with
    # the unconditional rows)
    if early_exit:
        assert sizes == [3] * 17 + [6] * 6
    else:
        assert sizes == [3] * 12 + [9] * 5 + [6]
    singles = [gd.Grounder(tiny64_eps, SHORT, early_exit=early_exit).ground(im, ph, return_raw=True)
               for im, ph in zip(images, phrases)]
    for b, s in zip(batch, singles):
        assert b.phrases == s.phrases
        np.testing.assert_array_equal(b.heatmaps, s.heatmaps)
        np.testing.assert_array_equal(b.raw, s.raw)
        assert np.nanmax(b.heatmaps) == 1.0


def test_batch_size_splits_the_inversions(tiny64_eps):
    images, phrases = _images(), [PHRASES[:1], PHRASES[1:2], PHRASES[2:3]]
    g = gd.Grounder(tiny64_eps, SHORT.with_window(29, 31), batch_size=2)
    _, sizes = unet_call_sizes(tiny64_eps, lambda: g.ground_batch(images, phrases))
    assert sizes == [2] * 29 + [2, 2, 2] + [1] * 29 + [1, 1, 1]  # images 0-1 together, then image 2


def test_evaluate_batch_images_is_exact(tiny64_eps, tmp_path):
    csv, root = fx.make_dataset(tmp_path)
    pairs = load_mscxr(csv, root)
    one = ev.evaluate(gd.Grounder(tiny64_eps, SHORT), pairs, tmp_path / "one", progress=False, n_boot=50)
    three = ev.evaluate(gd.Grounder(tiny64_eps, SHORT, batch_size=3), pairs, tmp_path / "three", batch_images=3,
                        progress=False, n_boot=50)
    rows = [{r["pair_id"]: {m: r[m] for m in ev.METRICS} for r in ev.load_results(d) if r["status"] == "ok"}
            for d in (tmp_path / "one", tmp_path / "three")]
    assert len(rows[0]) == 5 and rows[0] == rows[1]
    assert one["class_averaged"] == three["class_averaged"]


def test_evaluate_command_gives_the_grounder_its_batch_size():
    from groundiff_core.commands.evaluate import build_method

    args = Namespace(method="ldm", model="tiny", steps=10, text_encoder=None, device="cpu", preset="fast",
                     conventions="paper", seed=0, batch_images=5)
    g = build_method(args)
    assert g.batch_size == 5 and g.config == gd.GroundingConfig.fast().with_steps(10)
