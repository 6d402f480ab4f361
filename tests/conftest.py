"""Shared fixtures: the tiny random models every engine test grounds with, and test images (the
phrases, the MONAI skip and the UNet call counter tests import are in ``_testdata.py``).

Module-scoped: each test module gets its own instances (``LDM.to`` moves networks in place, so a
session-wide model could leak a dtype change from one module into another).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from groundiff_core.models.architectures import tiny_ldm


@pytest.fixture(autouse=True)
def _own_conversion_cache(tmp_path_factory, monkeypatch):
    """Each test converts MONAI checkpoints into its own cache, never the user's ~/.cache/groundiff."""
    monkeypatch.setenv("GROUNDIFF_CACHE_DIR", str(tmp_path_factory.mktemp("groundiff-cache")))


@pytest.fixture(autouse=True)
def _warnings_said_afresh():
    """Warnings the library says once per process are said again in each test that provokes them."""
    from groundiff_core.io import preprocess
    from groundiff_core.models import text

    text._WARNED.clear()
    preprocess._WARNED.clear()


@pytest.fixture(scope="module")
def tiny_v():
    """A tiny random v-prediction LDM in float32 (seed 0)."""
    return tiny_ldm(prediction_type="v_prediction")


@pytest.fixture(scope="module")
def tiny64_eps():
    """A tiny random epsilon-prediction LDM (seed 1) in float64, for exactness tests."""
    return tiny_ldm(prediction_type="epsilon", seed=1).to(dtype=torch.float64)


@pytest.fixture(scope="module")
def tiny64_v():
    """A tiny random v-prediction LDM (seed 0) in float64, for exactness tests."""
    return tiny_ldm(prediction_type="v_prediction").to(dtype=torch.float64)


@pytest.fixture(scope="module")
def textured_image() -> np.ndarray:
    """A 40 x 32 (non-square, so back-projection pads a NaN margin) textured float32 image in [0, 1]."""
    yy, xx = np.mgrid[0:40, 0:32]
    rng = np.random.default_rng(3)
    return (0.5 + 0.3 * np.sin(xx / 5.0) * np.cos(yy / 7.0) + 0.1 * rng.random((40, 32))).astype(np.float32)


@pytest.fixture()
def png(tmp_path):
    """A 48 x 40 textured 8-bit grayscale PNG, ``cxr.png`` in the test's folder."""
    yy, xx = np.mgrid[0:40, 0:48]
    path = tmp_path / "cxr.png"
    Image.fromarray((127 + 100 * np.sin(xx / 5.0) * np.cos(yy / 6.0)).astype(np.uint8)).save(path)
    return path
