"""Text-to-image sampling (used by the book's generation figure)."""

from __future__ import annotations

import numpy as np
import pytest

from groundiff_core.models.architectures import tiny_ldm
from groundiff_core.engine.sampling import generate


@pytest.fixture(scope="module")
def model():
    return tiny_ldm()


@pytest.mark.slow
def test_one_image_per_phrase_in_range_and_deterministic(model):
    a = generate(model, ["left pleural effusion", "cardiomegaly"], num_steps=5, seed=3)
    b = generate(model, ["left pleural effusion", "cardiomegaly"], num_steps=5, seed=3)
    c = generate(model, ["left pleural effusion", "cardiomegaly"], num_steps=5, seed=4)
    assert a.shape == (2, model.input_size, model.input_size) and a.dtype == np.float32
    assert 0.0 <= a.min() and a.max() <= 1.0
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.slow
def test_guidance_uses_the_text(model):
    def one(phrase, guidance):  # same seed, so the same starting noise
        return generate(model, [phrase], num_steps=5, guidance_scale=guidance, seed=0)[0]

    # guidance 0 is unconditional sampling: the phrase plays no part
    np.testing.assert_array_equal(one("left pleural effusion", 0.0), one("cardiomegaly", 0.0))
    assert not np.allclose(one("left pleural effusion", 3.0), one("cardiomegaly", 3.0))


def test_bad_arguments(model):
    with pytest.raises(ValueError, match="at least one phrase"):
        generate(model, [])
    with pytest.raises(ValueError, match="num_steps"):
        generate(model, ["edema"], num_steps=0)
