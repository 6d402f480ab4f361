"""Inversions kept and reused: the maps equal a fresh ground to the bit; the cache never trusts a bad entry."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

import groundiff_core as gd
from groundiff_core.engine.kept import InversionCache
from groundiff_core.models.architectures import tiny_ldm

from _testdata import PHRASES, unet_call_sizes

SHORT = gd.GroundingConfig.paper().with_steps(30)  # 31 trailing steps, window [12, 18)


def _same(a, b):
    assert a.phrases == b.phrases
    np.testing.assert_array_equal(a.heatmaps, b.heatmaps)


@pytest.mark.parametrize("layers,window", [((3, 4, 6, 7), (12, 18)), ((0, 5, 10), (13, 16)), (tuple(range(11)), (10, 20))])
def test_a_kept_inversion_grounds_to_the_bit(tiny64_eps, textured_image, layers, window):
    cfg = SHORT.with_layers(layers).with_window(*window)
    g = gd.Grounder(tiny64_eps, cfg)
    kept = gd.Grounder(tiny64_eps, SHORT.with_window(10, 20)).invert(textured_image)  # a wider window
    assert kept.window == (10, 20) and kept.latents.shape[0] == 10
    _same(g.ground(kept, PHRASES), g.ground(textured_image, PHRASES))
    _same(g.ground_tokens(kept, PHRASES[0]), g.ground_tokens(textured_image, PHRASES[0]))
    a, b = g.record(kept, PHRASES[:2], window=window), g.record(textured_image, PHRASES[:2], window=window)
    assert a.maps.keys() == b.maps.keys()
    for k in a.maps:
        torch.testing.assert_close(a.maps[k], b.maps[k], rtol=0, atol=0)


def test_the_inversion_runs_once_and_later_phrases_cost_only_their_rows(tiny64_eps, textured_image):
    g = gd.Grounder(tiny64_eps, SHORT)
    inv, sizes = unet_call_sizes(tiny64_eps, lambda: g.invert(textured_image))
    assert sizes == [1] * 17  # the trajectory up to step 16; step 17 is only read
    res, sizes = unet_call_sizes(tiny64_eps, lambda: inv.ground(PHRASES[:3]))
    assert sizes == [3] * 6  # the window's 6 steps, the 3 phrases' rows, nothing else
    _same(res, g.ground(textured_image, PHRASES[:3]))


def test_a_window_outside_the_kept_steps_and_another_model_are_refused(tiny64_eps, textured_image):
    inv = gd.Grounder(tiny64_eps, SHORT).invert(textured_image)
    with pytest.raises(ValueError, match=r"keeps steps \[12, 18\)"):
        gd.Grounder(tiny64_eps, SHORT.with_window(11, 18)).ground(inv, PHRASES[0])
    with pytest.raises(ValueError, match="steps"):
        gd.Grounder(tiny64_eps, gd.GroundingConfig.paper().with_steps(40)).ground(inv, PHRASES[0])
    other = tiny_ldm(prediction_type="epsilon", seed=7).to(dtype=torch.float64)
    with pytest.raises(ValueError, match="weights_sha256"):
        gd.Grounder(other, SHORT).ground(inv, PHRASES[0])
    with pytest.raises(ValueError, match="guidance 0 only"):
        gd.Grounder(tiny64_eps, replace(SHORT, guidance_scale=2.0)).invert(textured_image)
    with pytest.raises(ValueError, match="early_exit"):
        gd.Grounder(tiny64_eps, SHORT, early_exit=False).invert(textured_image)


def test_the_disk_cache_reuses_across_grounders_and_recomputes_a_bad_entry(tiny64_eps, textured_image, tmp_path):
    cache = InversionCache(tmp_path / "inv")
    fresh = gd.Grounder(tiny64_eps, SHORT).ground(textured_image, PHRASES[:2])
    first = gd.Grounder(tiny64_eps, SHORT, inversion_cache=cache)
    _same(first.ground(textured_image, PHRASES[:2]), fresh)
    (entry,) = list((tmp_path / "inv").glob("*.pt"))
    second = gd.Grounder(tiny64_eps, SHORT, inversion_cache=InversionCache(tmp_path / "inv"))
    res, sizes = unet_call_sizes(tiny64_eps, lambda: second.ground(textured_image, PHRASES[1:4]))
    assert sizes == [3] * 6 and second.inversion_cache.hits == 1  # no inversion at all
    _same(res, gd.Grounder(tiny64_eps, SHORT).ground(textured_image, PHRASES[1:4]))
    # a narrower window is served by the wider entry; a wider one is recomputed
    narrow = gd.Grounder(tiny64_eps, SHORT.with_window(13, 15), inversion_cache=cache)
    _same(narrow.ground(textured_image, PHRASES[0]),
          gd.Grounder(tiny64_eps, SHORT.with_window(13, 15)).ground(textured_image, PHRASES[0]))
    for garbage in (b"", b"not a torch file", entry.read_bytes()[:100]):
        entry.write_bytes(garbage)
        third = gd.Grounder(tiny64_eps, SHORT, inversion_cache=InversionCache(tmp_path / "inv"))
        _, sizes = unet_call_sizes(tiny64_eps, lambda: third.ground(textured_image, PHRASES[:2]))
        assert sizes[:17] == [1] * 17 and third.inversion_cache.misses == 1  # recomputed, not trusted
        assert entry.stat().st_size > 1000  # and written again
    # another image is another entry
    gd.Grounder(tiny64_eps, SHORT, inversion_cache=cache).ground(textured_image[::-1].copy(), PHRASES[0])
    assert len(list((tmp_path / "inv").glob("*.pt"))) == 2


def test_the_cache_evicts_the_least_recently_used(tiny64_eps, textured_image, tmp_path):
    g = gd.Grounder(tiny64_eps, SHORT, inversion_cache=InversionCache(tmp_path / "inv"))
    g.ground(textured_image, PHRASES[0])
    size = next((tmp_path / "inv").glob("*.pt")).stat().st_size
    small = gd.Grounder(tiny64_eps, SHORT, inversion_cache=InversionCache(tmp_path / "inv", max_bytes=int(2.5 * size)))
    images = [textured_image, textured_image * 0.5, textured_image * 0.25]
    for im in images:
        small.ground(im, PHRASES[0])
    assert len(list((tmp_path / "inv").glob("*.pt"))) == 2
    small.inversion_cache.hits = 0
    small.ground(images[0], PHRASES[0])  # the oldest went first
    assert small.inversion_cache.hits == 0
    with pytest.raises(ValueError, match="max_bytes"):
        InversionCache(tmp_path / "x", max_bytes=0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        InversionCache(tmp_path / "file")
