"""The text-blind reference methods: same input checks as every method, their maps and identity.

(Their behaviour inside an evaluation is tested in test_evaluate.py.)
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from groundiff_core.heatmaps import GroundingMethod
from groundiff_core.methods.baselines import CentrePrior, RandomHeatmap

METHODS = [RandomHeatmap(seed=2), CentrePrior(sigma_fraction=0.3)]


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_blank_and_bad_phrases_refused_like_the_engine(method, textured_image):
    """Baselines ignore the text, yet refuse what the engine refuses, with the same messages."""
    for bad, message in [([], "non-empty list"), ([""], "phrase 0 is empty"),
                         (["cardiomegaly", "   "], "phrase 1 is empty"), ([3], "phrase 0 is a int")]:
        with pytest.raises(ValueError, match=message):
            method.ground(textured_image, bad)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_single_string_is_one_phrase_on_the_original_grid(method, textured_image):
    out = method.ground(textured_image, "left pleural effusion")
    assert out.phrases == ["left pleural effusion"]
    assert out.heatmaps.shape == (1, *textured_image.shape) and out.heatmaps.dtype == np.float32
    assert out.geometry is None and np.isfinite(out.heatmaps).all()
    np.testing.assert_array_equal(out.heatmaps, method.ground(textured_image, ("left pleural effusion",)).heatmaps)


def test_describe_is_the_identity_used_in_results():
    from groundiff_core.evaluation import method_identity

    for method in METHODS:
        assert isinstance(method, GroundingMethod)
        d = method.describe()
        json.dumps(d)
        assert d["method"] == method.name
        ident = method_identity(method)
        assert {k: ident[k] for k in d} == d
    assert RandomHeatmap(seed=2).describe() == {"method": "random", "seed": 2}
    assert CentrePrior(sigma_fraction=0.3).describe() == {"method": "centre", "sigma_fraction": 0.3}


def test_centre_prior_normalised():
    g = CentrePrior(sigma_fraction=0.25).prior(7, 10)
    assert g.dtype == np.float32 and g.min() == 0.0 and g.max() == 1.0
    np.testing.assert_array_equal(g, g[::-1, ::-1])  # symmetric about the centre
    raw = np.exp(-0.5 * (((np.arange(7) + 0.5 - 3.5) / 1.75)[:, None] ** 2
                         + ((np.arange(10) + 0.5 - 5) / 2.5)[None, :] ** 2))
    np.testing.assert_allclose(g, (raw - raw.min()) / (raw.max() - raw.min()), rtol=1e-6)
    # a 1 x 1 image is the only constant prior: like every min-max here, a constant map is 0
    assert CentrePrior().prior(1, 1).tolist() == [[0.0]]
