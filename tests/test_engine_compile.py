"""``torch.compile`` of the engine's UNet passes on the CPU: the same maps as eager.

The early exit is a plain walk of the UNet's blocks (:mod:`groundiff_core.engine.truncated`), not an
exception out of ``unet.forward``, so dynamo traces it; ``Grounder(compile=True)`` compiles it and
the inversion's whole passes. Inductor fuses and reorders float32 sums, so the maps agree to float
rounding, not bit for bit: raw attention maps within 1e-5, heatmaps within 1e-4 (stated in the
README's "What is here" too). Slow: the first call compiles (one to three minutes on 2 CPU cores).
"""

from __future__ import annotations

import numpy as np
import pytest

import groundiff_core as gd
from groundiff_core.models.architectures import tiny_ldm

pytestmark = pytest.mark.slow


def test_compiled_passes_give_the_eager_maps(textured_image):
    pytest.importorskip("torch._inductor")
    model = tiny_ldm(prediction_type="v_prediction")
    cfg = gd.GroundingConfig.paper().with_steps(30)
    phrases = ["left pleural effusion", "cardiomegaly"]
    eager = gd.Grounder(model, cfg).ground(textured_image, phrases, return_raw=True)
    g = gd.Grounder(model, cfg, compile=True)
    compiled = g.ground(textured_image, phrases, return_raw=True)
    assert g.stats["unet_samples_truncated"] == 6 * len(phrases)  # the walk ran, compiled, and stopped early
    np.testing.assert_allclose(compiled.raw, eager.raw, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(np.isnan(compiled.heatmaps), np.isnan(eager.heatmaps))
    np.testing.assert_allclose(np.nan_to_num(compiled.heatmaps), np.nan_to_num(eager.heatmaps), rtol=0, atol=1e-4)
    assert not np.allclose(compiled.raw[0], compiled.raw[1], atol=1e-3)  # two phrases, two different maps
