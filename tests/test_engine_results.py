"""The shared result types and verb (groundiff_core.heatmaps) and the one DDIM loop (engine.inversion)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import groundiff_core as gd
from groundiff_core.engine.aggregate import postprocess
from groundiff_core.engine.inversion import DDIMInversion, ddim_run, ddim_sampling, ddim_walk
from groundiff_core.heatmaps import GroundingMethod
from groundiff_core.methods.baselines import CentrePrior, RandomHeatmap
from groundiff_core.models.architectures import tiny_ldm
from groundiff_core.models.ldm import NoiseSchedule

SHORT = gd.GroundingConfig.paper().with_steps(30)  # 31 trailing steps, window [12, 18)


@pytest.fixture(scope="module")
def model():
    return tiny_ldm()


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).random((36, 44)).astype(np.float32)


# ---------------------------------------------------------------------- one verb for every method
def test_every_method_is_a_grounding_method(model):
    from groundiff_core.methods.attribution import SaliencyGrounder

    for method in (gd.Grounder(model, SHORT), RandomHeatmap(), CentrePrior(), SaliencyGrounder(model)):
        assert isinstance(method, GroundingMethod), type(method).__name__
        json.dumps(method.describe())  # JSON-able
    assert not isinstance(object(), GroundingMethod)


def test_grounder_identity_keeps_the_name_result_folders_were_written_with(model):
    from groundiff_core.evaluation import method_identity

    g = gd.Grounder(model, SHORT, batch_size=2, early_exit=False)
    assert g.describe() == {"method": "Grounder", "config": SHORT.to_dict()}
    ident = method_identity(g)
    assert ident["method"] == "Grounder" and ident["config"] == SHORT.to_dict() and "model" in ident
    # batching and early exit never change the maps, so they do not change the identity
    assert method_identity(gd.Grounder(model, SHORT)) == ident


def test_baseline_heatmaps_have_no_geometry(image):
    h = CentrePrior().ground(image, "cardiomegaly")
    assert isinstance(h, gd.Heatmaps) and h.geometry is None and h.heatmaps.shape == (1, 36, 44)


# ---------------------------------------------------------------------- recordings
def test_a_saved_recording_reads_back_to_the_same_maps(model, image, tmp_path):
    rec = gd.Grounder(model, SHORT).record(image, ["left pleural effusion"], window=(12, 18), layers=(3, 4, 6, 7))
    back = gd.Recording.load(rec.save(tmp_path / "rec.npz"))
    assert back.window == (12, 18) and back.phrases == rec.phrases and back.config == rec.config
    np.testing.assert_array_equal(back.aggregate().heatmaps, rec.aggregate().heatmaps)


def test_recording_window_arguments(model, image):
    rec = gd.Grounder(model, SHORT).record(image, ["cardiomegaly"], window=(10, 20), layers=(3, 4, 6, 7))
    assert rec.resolve(window=(11, 15)).window == (11, 15)
    with pytest.raises(ValueError, match="window or window_percent"):
        rec.aggregate(window=(11, 15), window_percent=20)
    want = gd.Grounder(model, SHORT.with_window(11, 15)).ground(image, ["cardiomegaly"], return_raw=True)
    got = rec.aggregate(window=(11, 15), return_raw=True)
    assert np.abs(got.raw - want.raw).max() <= 1e-5 and got.info["window"] == [11, 15]


# ---------------------------------------------------------------------- post-processing
def test_constant_map_becomes_zero_and_others_span_zero_to_one():
    ramp = np.tile(np.linspace(0.0, 2.0, 16), (16, 1))
    out = postprocess(np.stack([np.full((16, 16), 3.0), ramp]), sigma_px=0.0, otsu=False)
    assert out.dtype == np.float32 and not out[0].any()
    assert out[1].min() == 0.0 and out[1].max() == 1.0
    np.testing.assert_allclose(out[1], ramp / 2.0, atol=1e-7)


# ---------------------------------------------------------------------- the one DDIM loop
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_sampling_step_matches_diffusers(prediction_type):
    """The sampling direction of our DDIM update equals diffusers' DDIMScheduler ("trailing",
    alpha_bar = 1 after the last step)."""
    from diffusers import DDIMScheduler

    schedule = NoiseSchedule(prediction_type=prediction_type)
    ours = ddim_sampling(schedule, 50)
    ref = DDIMScheduler(num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0205, beta_schedule="scaled_linear",
                        prediction_type=prediction_type, clip_sample=False, set_alpha_to_one=True,
                        steps_offset=0, timestep_spacing="trailing")
    ref.set_timesteps(50)
    assert ours.timesteps.tolist() == ref.timesteps.tolist()
    gen = torch.Generator().manual_seed(0)
    for i in (0, 1, 25, 49):
        z = torch.randn(2, 3, 8, 8, generator=gen, dtype=torch.float64)
        out = torch.randn(2, 3, 8, 8, generator=gen, dtype=torch.float64)
        want = ref.step(out, ours.timestep(i), z, eta=0.0).prev_sample
        torch.testing.assert_close(ours.step(z, out, i), want.to(torch.float64), rtol=1e-5, atol=1e-5)


def test_walk_skips_updates_nobody_uses_and_stops_where_asked():
    sched = DDIMInversion(NoiseSchedule(), SHORT)
    z0 = torch.ones(1, 2, 2, 2, dtype=torch.float64)
    seen = []

    def predict(z, i, t):
        seen.append((i, t))
        return None if i == 3 else torch.zeros_like(z)

    walked = list(ddim_walk(sched, z0, predict, stop=5))
    assert seen == [(i, sched.timestep(i)) for i in range(5)] and [i for i, _ in walked] == list(range(5))
    assert torch.equal(walked[3][1], walked[2][1])  # step 3's update was not needed: z kept
    assert torch.equal(walked[4][1], sched.step(walked[3][1], torch.zeros_like(z0), 4))
    assert torch.equal(ddim_run(sched, z0, predict, stop=5), walked[-1][1])
