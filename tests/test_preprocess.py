"""The paper's preprocessing (shorter side to S, centre crop) and its inverse (nearest, NaN margins)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from groundiff_core.io.preprocess import CropGeometry, prepare_image


@pytest.mark.parametrize("h,w", [(64, 64), (64, 96), (96, 64), (50, 75), (33, 32)])
def test_geometry_shapes_and_region(h, w):
    g = CropGeometry(h, w, 32)
    top, left, ch, cw = g.region
    assert ch == cw == min(h, w)
    assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w
    # centred: the margins on both sides differ by at most one pixel (two after rounding)
    assert abs((h - ch - top) - top) <= 2 and abs((w - cw - left) - left) <= 2
    x, geom = prepare_image(np.random.default_rng(0).random((h, w)).astype(np.float32), 32)
    assert x.shape == (1, 1, 32, 32) and geom == g and float(x.min()) >= 0 and float(x.max()) <= 1


def test_to_model_keeps_the_centre():
    img = np.zeros((64, 128), np.float32)
    img[:, 32:96] = 1.0  # the centre square
    x, _ = prepare_image(img, 32)
    assert torch.all(x == 1.0)


def test_to_original_nan_outside_and_nearest_inside():
    g = CropGeometry(40, 60, 20)
    maps = np.arange(2 * 20 * 20, dtype=np.float32).reshape(2, 20, 20)
    back = g.to_original(maps)
    top, left, ch, cw = g.region
    assert back.shape == (2, 40, 60) and back.dtype == np.float32
    assert np.isnan(back[:, :, :left]).all() and np.isnan(back[:, :, left + cw:]).all()
    inside = back[:, top:top + ch, left:left + cw]
    assert np.isfinite(inside).all()
    assert set(np.unique(inside)) <= set(np.unique(maps))  # nearest: no new values
    np.testing.assert_array_equal(inside[:, ::2, ::2], maps)  # exact 2x upsampling


def test_round_trip_of_a_model_grid_map():
    g = CropGeometry(48, 48, 16)
    m = np.random.default_rng(1).random((16, 16)).astype(np.float32)
    back = g.to_original(m[None])[0]
    np.testing.assert_array_equal(back[::3, ::3], m)


def test_boxes_to_model():
    g = CropGeometry(100, 200, 50)  # kept region: columns 50..150, scale 0.5
    b = g.boxes_to_model(np.array([[60, 10, 20, 40], [0, 0, 40, 10], [140, 90, 40, 40]]))
    np.testing.assert_allclose(b[0], [5, 5, 10, 20])
    np.testing.assert_allclose(b[1], [0, 0, 0, 5])  # entirely in the cropped margin: zero width
    np.testing.assert_allclose(b[2], [45, 45, 5, 5])  # clipped at the crop's corner


def test_prepare_image_rejects_non_2d():
    with pytest.raises(ValueError, match="2-D grayscale"):
        prepare_image(np.zeros((3, 8, 8), np.float32), 8)
