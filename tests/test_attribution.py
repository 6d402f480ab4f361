"""Captum comparison methods: objective, every method's heatmaps, localisation on a constructed model.

All on tiny models (32x32 input, 2 draws, a handful of steps/samples) so the file runs in seconds.
The localisation test uses a pixel-space LDM whose UNet is replaced by :class:`PhraseInSquare`, a
hand-built module in which the text embedding changes the prediction only inside a known square.
"""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("captum")

from groundiff_core.methods import attribution as A  # noqa: E402
from groundiff_core.heatmaps import GroundingMethod  # noqa: E402
from groundiff_core.models.architectures import tiny_ldm  # noqa: E402
from groundiff_core.util.profiling import measure_cost  # noqa: E402

FAST = A.ObjectiveConfig(n_draws=2, seed=0)
# Small settings per method: enough to exercise each code path, cheap on CPU.
SMALL = {
    "saliency": {},
    "integrated_gradients": {"n_steps": 4},
    "gradient_shap": {"n_samples": 4, "batch_size": 3},  # two chunks: 3 + 1 samples
    "occlusion": {"window_frac": 1 / 4, "stride_frac": 1 / 4},
    "grad_cam": {},
    "smoothgrad": {"n_samples": 4},
}
PHRASE = "left pleural effusion"


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w)).astype(np.float32)


# ------------------------------------------------------------------------------ objective
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_gain_matches_diffusers_noising_and_target(prediction_type):
    """One draw of G equals the gain computed with diffusers' own add_noise / get_velocity."""
    from diffusers import DDPMScheduler

    model = tiny_ldm(prediction_type)
    obj = A.ObjectiveConfig(n_draws=1, seed=3)
    f = A.DenoisingGain(model, PHRASE, obj)
    x = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = float(f(x)[0])
        z0 = model.encode_image(x)
        t, eps, _ = f.draws(z0.shape[1:])
        s = model.schedule
        sched = DDPMScheduler(num_train_timesteps=s.num_train_timesteps, beta_start=s.beta_start,
                              beta_end=s.beta_end, beta_schedule=s.beta_schedule, prediction_type=prediction_type)
        zt = sched.add_noise(z0, eps, t)
        target = eps if prediction_type == "epsilon" else sched.get_velocity(z0, eps, t)
        ctx = model.encode_text(["", PHRASE])
        pu = model.unet(zt, t, encoder_hidden_states=ctx[:1]).sample
        pc = model.unet(zt, t, encoder_hidden_states=ctx[1:]).sample
        want = float(((pu - target) ** 2).mean() - ((pc - target) ** 2).mean())
    assert 300 <= int(t[0]) <= 600  # inside the default window (0.3, 0.6) of 1000 steps
    # G is a difference of two mean squared errors of order 1, each computed in float32 (batched
    # here, one prompt at a time in the reference): the tolerance is float32 rounding of those terms
    assert got == pytest.approx(want, rel=1e-4, abs=1e-6)


def test_objective_deterministic_and_seeded(tiny_v):
    img = _image(32, 32)
    g1 = A.denoising_gain(tiny_v, img, PHRASE, FAST)
    g2 = A.denoising_gain(tiny_v, img, PHRASE, FAST)
    g3 = A.denoising_gain(tiny_v, img, PHRASE, dataclasses.replace(FAST, seed=1))
    assert g1 == g2
    assert np.isfinite(g1) and g1 != g3
    # the global RNG does not matter: draws come from the objective's own generator
    torch.manual_seed(123)
    assert A.denoising_gain(tiny_v, img, PHRASE, FAST) == g1


def test_objective_batch_is_per_example_and_differentiable(tiny_v):
    f = A.DenoisingGain(tiny_v, PHRASE, FAST)
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0), requires_grad=True)
    g = f(x)
    assert g.shape == (2,)
    with torch.no_grad():
        # per example: the same value alone as in the batch, up to the float32 rounding of the two
        # mean squared errors whose difference G is (a batch of 2 and of 1 round differently)
        assert torch.allclose(g[1], f(x[1:])[0], rtol=1e-4, atol=1e-7)
    (grad,) = torch.autograd.grad(g.sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_objective_config_validation():
    with pytest.raises(ValueError, match="n_draws"):
        A.ObjectiveConfig(n_draws=0)
    with pytest.raises(ValueError, match="t_window"):
        A.ObjectiveConfig(t_window=(0.6, 0.3))


# ------------------------------------------------------------------------------ references
@pytest.mark.parametrize("sigma", [0.5, 1.3, 2.0, 4.0])
def test_blur_is_scipy_gaussian_filter(sigma):
    """The blurred reference follows SciPy's rule (radius int(4 sigma + 0.5), as the engine's
    smoothing): equal to gaussian_filter with mirror borders everywhere, and to the engine's
    default 'reflect' borders farther than the radius from the border."""
    from scipy.ndimage import gaussian_filter

    img = np.random.default_rng(1).random((37, 29))
    got = A.gaussian_blur(torch.as_tensor(img, dtype=torch.float32)[None, None], sigma)[0, 0].numpy()
    np.testing.assert_allclose(got, gaussian_filter(img, sigma, mode="mirror"), atol=1e-5)
    r = int(4 * sigma + 0.5)
    inner = (slice(r, -r), slice(r, -r))
    np.testing.assert_allclose(got[inner], gaussian_filter(img, sigma)[inner], atol=1e-5)
    assert not np.allclose(got, gaussian_filter(img, sigma, truncate=3.0), atol=1e-5)  # not the old 3 sigma


def test_blur_radius_larger_than_the_image_and_bad_input():
    """Reflection folds as often as needed (SciPy's 'mirror'), so a wide blur of a small image works."""
    from scipy.ndimage import gaussian_filter

    img = np.random.default_rng(2).random((5, 6))
    got = A.gaussian_blur(torch.as_tensor(img, dtype=torch.float32)[None, None], 3.0)[0, 0].numpy()
    np.testing.assert_allclose(got, gaussian_filter(img, 3.0, mode="mirror"), atol=1e-5)
    with pytest.raises(ValueError, match="sigma"):
        A.gaussian_blur(torch.zeros(1, 1, 4, 4), 0.0)
    with pytest.raises(ValueError, match="B, C, H, W"):
        A.gaussian_blur(torch.zeros(4, 4), 1.0)


def test_make_baseline_kinds():
    x = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    assert A.make_baseline(x, "black").abs().max() == 0
    assert torch.allclose(A.make_baseline(x, "mean"), x.mean().expand_as(x))
    blur = A.make_baseline(x, "blur", blur_frac=1 / 16)  # sigma 2 px at 32
    assert torch.allclose(blur, A.gaussian_blur(x, 2.0)) and blur.std() < x.std() / 2
    with pytest.raises(ValueError, match="baseline must be one of"):
        A.make_baseline(x, "white")


# ------------------------------------------------------------------------------ every method
@pytest.mark.parametrize("name", sorted(A.CAPTUM_METHODS))
def test_method_heatmaps_on_original_grid(tiny_v, name):
    """Non-square 40x32 input: [K, 40, 32], finite in [0, 1] inside the crop, NaN outside."""
    method = A.make_method(name, tiny_v, objective=FAST, **SMALL[name])
    out = method.ground(_image(40, 32), [PHRASE, "cardiomegaly"], return_raw=True)
    maps = out.heatmaps
    assert maps.shape == (2, 40, 32) and maps.dtype == np.float32
    top, left, ch, cw = out.geometry.region
    assert (top, ch) == (4, 32)
    inside = maps[:, top:top + ch, left:left + cw]
    assert np.isfinite(inside).all()
    assert inside.min() >= 0 and inside.max() <= 1
    np.testing.assert_array_equal(maps, out.geometry.to_original(out.model_maps))  # back-projected, nothing else
    assert np.isnan(maps[:, :top]).all() and np.isnan(maps[:, top + ch:]).all()
    assert out.raw.shape == (2, 32, 32) and np.isfinite(out.raw).all()
    assert out.phrases == [PHRASE, "cardiomegaly"]
    np.testing.assert_array_equal(out.model_maps.max(axis=(1, 2)), 1.0)
    assert out.info["method"] == name and out.info["model"] == tiny_v.name
    d = method.describe()
    assert d["method"] == name == method.name
    json.dumps(d)
    assert isinstance(method, GroundingMethod)


@pytest.mark.parametrize("name", ["gradient_shap", "smoothgrad"])
def test_random_methods_repeatable(tiny_v, name):
    method = A.make_method(name, tiny_v, objective=FAST, **SMALL[name])
    img = _image(32, 32, seed=4)
    a = method.ground(img, [PHRASE]).heatmaps
    torch.manual_seed(99)
    np.random.seed(99)
    b = method.ground(img, [PHRASE]).heatmaps
    np.testing.assert_array_equal(a, b)


def test_latent_mode(tiny_v):
    method = A.make_method("integrated_gradients", tiny_v, objective=FAST, wrt="latent", n_steps=4)
    maps = method.ground(_image(32, 32), [PHRASE]).heatmaps
    assert maps.shape == (1, 32, 32) and np.isfinite(maps).all()
    assert method.describe()["wrt"] == "latent"


def test_bad_input(tiny_v):
    with pytest.raises(ValueError, match="unknown Captum method"):
        A.make_method("lime", tiny_v)
    with pytest.raises(ValueError, match="wrt"):
        A.make_method("saliency", tiny_v, wrt="pixels")
    with pytest.raises(ValueError, match="baseline"):
        A.make_method("integrated_gradients", tiny_v, baseline="white")
    method = A.make_method("saliency", tiny_v, objective=FAST)
    with pytest.raises(ValueError, match="non-empty list"):
        method.ground(_image(32, 32), [])
    with pytest.raises(ValueError, match="phrase 0 is empty"):
        method.ground(_image(32, 32), ["  "])
    with pytest.raises(ValueError, match="too long"):
        method.ground(_image(32, 32), [" ".join(["lung"] * 80)])
    with pytest.raises(ValueError, match="2-D|dimension|shape"):
        method.ground(np.zeros((2, 3, 32, 32), np.float32), [PHRASE])
    # like the cross-attention Grounder, a single string is one phrase
    assert method.ground(_image(32, 32), PHRASE).heatmaps.shape == (1, 32, 32)


# ------------------------------------------------------------------------------ localisation
SQUARE = (8, 14, 10, 12)  # top, left, height, width on the 32x32 grid


class PhraseInSquare(torch.nn.Module):
    """A UNet stand-in (same call signature) in which the text acts only inside ``SQUARE``.

    ``out = 0.5 x + mask * gate(text) * head(tanh(feat(x)))`` with 1x1 convolutions, so the
    conditional and unconditional predictions differ only on the square, and there only through
    the pixels of the square.
    """

    def __init__(self, dim: int, size: int = 32) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.feat = torch.nn.Conv2d(1, 8, 1)
        self.head = torch.nn.Conv2d(8, 1, 1)
        self.proj = torch.nn.Linear(dim, 1)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g)
        mask = torch.zeros(1, 1, size, size)
        top, left, h, w = SQUARE
        mask[..., top:top + h, left:left + w] = 1
        self.register_buffer("mask", mask)

    def forward(self, sample, timestep, encoder_hidden_states, return_dict=True, **kw):
        gate = torch.tanh(self.proj(encoder_hidden_states.mean(dim=1)))[:, :, None, None]
        out = 0.5 * sample + self.mask * gate * self.head(torch.tanh(self.feat(sample)))
        return SimpleNamespace(sample=out) if return_dict else (out,)


@pytest.fixture(scope="module")
def square_model():
    base = tiny_ldm("v_prediction", with_vae=False)
    dim = base.text_encoder.config.hidden_size
    return dataclasses.replace(base, unet=PhraseInSquare(dim), name="phrase-in-square")


def test_constructed_model_phrase_acts_only_in_square(square_model):
    x = torch.rand(1, 1, 32, 32)
    ctx = square_model.encode_text(["", PHRASE])
    t = torch.tensor([400])
    with torch.no_grad():
        d = (square_model.unet(x, t, encoder_hidden_states=ctx[1:]).sample
             - square_model.unet(x, t, encoder_hidden_states=ctx[:1]).sample)[0, 0].abs()
    top, left, h, w = SQUARE
    inside = torch.zeros_like(d, dtype=torch.bool)
    inside[top:top + h, left:left + w] = True
    assert d[~inside].max() == 0 and d[inside].min() > 0


@pytest.mark.parametrize("name,min_share", [
    ("saliency", 0.99), ("integrated_gradients", 0.99), ("gradient_shap", 0.99),
    ("smoothgrad", 0.99), ("occlusion", 0.6),
])
def test_attribution_concentrates_where_the_phrase_acts(square_model, name, min_share):
    """Most attribution mass lies in the square (12% of the image); occlusion's windows overlap its
    border, so part of its mass spills onto the ring around it. Grad-CAM is left out: its map is
    channel-weighted activations, which are non-zero wherever the image is, by design."""
    kw = {} if name == "occlusion" else SMALL[name]  # occlusion: default 4 px windows, 2 px stride
    method = A.make_method(name, square_model, objective=FAST, **kw)
    m = method.ground(_image(32, 32, seed=7), [PHRASE]).heatmaps[0]
    top, left, h, w = SQUARE
    share = m[top:top + h, left:left + w].sum() / m.sum()
    assert share >= min_share, f"{name}: only {share:.2f} of the mass inside the square"
    assert np.nanargmax(m) in np.ravel_multi_index(np.mgrid[top:top + h, left:left + w].reshape(2, -1), m.shape)


def test_grad_cam_accepts_explicit_layer(square_model):
    method = A.GradCamGrounder(square_model, layer=square_model.unet.feat, objective=FAST)
    assert method.describe()["layer"] == "feat"
    m = method.ground(_image(32, 32), [PHRASE]).heatmaps
    assert m.shape == (1, 32, 32) and np.isfinite(m).all()
    with pytest.raises(ValueError, match="layer="):
        A.GradCamGrounder(square_model, objective=FAST)


# ------------------------------------------------------------------------------ tokens and cost
def test_token_attribution_words_and_completeness(tiny_v):
    img = _image(32, 32, seed=2)
    scores = A.token_attribution(tiny_v, img, PHRASE, FAST, n_steps=16)
    assert [tok for tok, _ in scores] == ["left", "pleural", "effusion"]
    assert all(np.isfinite(s) for _, s in scores)
    # Completeness of integrated gradients: the scores add up to G(phrase) - G(baseline prompt).
    f = A.DenoisingGain(tiny_v, PHRASE, FAST)
    pad = tiny_v.tokenizer.pad_token_id
    ids = tiny_v.tokenize([PHRASE])["input_ids"]
    ids[0, 1:4] = pad
    with torch.no_grad():
        z0 = tiny_v.encode_image(torch.as_tensor(img)[None, None])
        ref_ctx = tiny_v.text_encoder(input_ids=ids).last_hidden_state
        delta = float(f.gain(z0) - f.gain(z0, ref_ctx))
    total = sum(s for _, s in scores)
    assert total == pytest.approx(delta, rel=0.05, abs=1e-3 * abs(delta) + 1e-9)


def test_measure_cost(tiny_v):
    method = A.make_method("saliency", tiny_v, objective=FAST)
    cost = measure_cost(method, _image(32, 32), [PHRASE, "cardiomegaly"])
    assert cost.method == "saliency" and cost.n_pairs == 2
    assert cost.seconds > 0 and cost.seconds_per_pair == pytest.approx(cost.seconds / 2)
    assert cost.memory == "torch_cpu_profiler" and cost.peak_bytes > 0
    json.dumps(cost.as_dict())


class _Fixed(A.AttributionGrounder):
    """A stand-in method whose attribution is a given map, to test the shared post-processing."""

    name = "fixed"

    def __init__(self, model, attr: torch.Tensor) -> None:
        super().__init__(model, objective=FAST)
        self.attr = attr

    def _attribute(self, f, inputs, x01):
        return self.attr


def test_post_processing_minmax(tiny_v):
    """A constant attribution carries no location and gives zeros (not NaN); a tiny but real span
    is scaled to [0, 1] like any other (the shared util minmax has no near-constant tolerance)."""
    flat = _Fixed(tiny_v, torch.full((1, 1, 32, 32), 3.0)).ground(_image(32, 32), [PHRASE])
    assert np.array_equal(flat.model_maps, np.zeros((1, 32, 32), np.float32))
    tiny = torch.full((1, 1, 32, 32), 1e-20)
    tiny[..., 5, 7] = 2e-20
    m = _Fixed(tiny_v, tiny).ground(_image(32, 32), [PHRASE]).model_maps[0]
    assert m[5, 7] == 1.0 and m.sum() == 1.0
