"""GroundingConfig (the paper's preset and the ablation vocabulary) and the DDIM inversion schedule."""

from __future__ import annotations

from dataclasses import FrozenInstanceError

import numpy as np
import pytest
import torch

from groundiff_core.engine.config import GroundingConfig, middle_layers, window_from_percent
from groundiff_core.engine.inversion import DDIMInversion, inversion_timesteps
from groundiff_core.models.ldm import NoiseSchedule


def test_paper_preset():
    cfg = GroundingConfig.paper()
    assert cfg.num_inference_steps == 300 and cfg.timestep_spacing == "trailing"
    assert cfg.window == (120, 180) and cfg.layers == (3, 4, 6, 7) and cfg.n_middle_layers is None
    assert cfg.tokens == "phrase" and cfg.normalize == "minmax" and cfg.resize == "bilinear"
    assert cfg.sigma_pixels(512) == pytest.approx(2.5) and cfg.sigma_pixels(128) == pytest.approx(0.625)
    assert cfg.otsu is True and cfg.guidance_scale == 0.0
    with pytest.raises(FrozenInstanceError):
        cfg.otsu = False  # type: ignore[misc]


def test_paper_schedule_and_window_timesteps():
    sched = DDIMInversion(NoiseSchedule(), GroundingConfig.paper())
    ts = sched.timesteps
    assert len(sched) == 334 and ts[0] == 0 and ts[-1] == 999 and set(np.diff(ts)) == {3}
    assert [sched.timestep(i) for i in (120, 179)] == [360, 537]


def test_timestep_spacings():
    assert list(inversion_timesteps(30)) == [9 + 33 * i for i in range(31)]
    assert list(inversion_timesteps(4, spacing="leading")) == [0, 250, 500, 750]
    assert list(inversion_timesteps(3, spacing="linspace")) == [0, 500, 999]
    with pytest.raises(ValueError, match="between 1 and the model's 1000"):
        inversion_timesteps(1001)


def test_middle_layers_on_the_paper_unet():
    assert middle_layers(1, 11) == (5,)
    assert middle_layers(2, 11) == (4, 5)
    assert middle_layers(3, 11) == (4, 5, 6)
    assert middle_layers(4, 11) == (3, 4, 5, 6)
    assert middle_layers(6, 11) == (2, 3, 4, 5, 6, 7)  # the six deepest-resolution layers
    assert middle_layers(11, 11) == tuple(range(11))
    cfg = GroundingConfig.paper().with_middle_layers(6)
    assert cfg.layers is None and cfg.resolve_layers(11) == (2, 3, 4, 5, 6, 7)
    assert cfg.with_layers([7, 3, 4, 6]).layers == (3, 4, 6, 7)
    with pytest.raises(ValueError, match="between 1 and 11"):
        middle_layers(12, 11)


def test_window_percent():
    assert window_from_percent(20, 300) == (120, 180)  # the paper's window
    assert window_from_percent(10, 300) == (135, 165)
    assert window_from_percent(5, 300) == (143, 158)
    assert window_from_percent(100, 300) == (0, 300)
    assert GroundingConfig.paper().with_window_percent(40).window == (90, 210)
    assert GroundingConfig.paper().with_steps(30).window == (12, 18) == window_from_percent(20, 30)
    with pytest.raises(ValueError, match=r"\(0, 100\]"):
        window_from_percent(0, 300)


def test_resolution_errors():
    cfg = GroundingConfig.paper()
    with pytest.raises(ValueError, match=r"layer indices \[7\] are out of range.*7 cross-attention layers"):
        cfg.resolve_layers(7)
    with pytest.raises(ValueError, match=r"\[120, 180\) are out of range.*100 steps"):
        cfg.resolve_window(100)
    assert cfg.resolve_window(334) == (120, 180)


@pytest.mark.parametrize("kwargs,match", [
    ({"window": (5, 5)}, "start < stop"),
    ({"window": (-1, 5)}, "start < stop"),
    ({"window": "abc"}, "pair of step indices"),
    ({"layers": ()}, "at least one"),
    ({"layers": (3, 3)}, "distinct"),
    ({"layers": (-1,)}, ">= 0"),
    ({"layers": None}, "exactly one"),
    ({"n_middle_layers": 4}, "exactly one"),
    ({"tokens": "all"}, "tokens must be one of"),
    ({"timestep_spacing": "karras"}, "timestep_spacing must be one of"),
    ({"num_inference_steps": 0}, "positive integer"),
    ({"sigma_fraction": -1.0}, "sigma_fraction"),
    ({"guidance_scale": float("nan")}, "finite"),
])
def test_invalid_fields(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GroundingConfig(**kwargs)


def test_dict_round_trip():
    cfg = GroundingConfig.paper().with_middle_layers(4).with_window(10, 20)
    assert GroundingConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown GroundingConfig fields"):
        GroundingConfig.from_dict({"sigma": 2})


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_inversion_step_matches_diffusers(prediction_type):
    """Our update equals diffusers' DDIMInverseScheduler.step (alpha_bar = 1 before the first step)."""
    from diffusers import DDIMInverseScheduler

    schedule = NoiseSchedule(prediction_type=prediction_type)
    ours = DDIMInversion(schedule, GroundingConfig.paper())
    ref = DDIMInverseScheduler(num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0205,
                               beta_schedule="scaled_linear", prediction_type=prediction_type,
                               clip_sample=False, set_alpha_to_one=True, steps_offset=0)
    ref.set_timesteps(300)
    gen = torch.Generator().manual_seed(0)
    for i in (0, 1, 120, 333):
        z = torch.randn(2, 3, 8, 8, generator=gen, dtype=torch.float64)
        out = torch.randn(2, 3, 8, 8, generator=gen, dtype=torch.float64)
        want = ref.step(out, ours.timestep(i), z).prev_sample
        torch.testing.assert_close(ours.step(z, out, i), want.to(torch.float64), rtol=1e-5, atol=1e-5)


def test_single_token_selection_reads_one_position_and_rejects_bad_positions():
    from groundiff_core.engine.recording import token_weights
    from groundiff_core.engine.config import GroundingConfig

    w = token_weights([5, 4], 8, "token:2")
    assert w[0].tolist() == [0, 0, 1, 0, 0, 0, 0, 0] and w[1, 2] == 1 and float(w.sum()) == 2
    with pytest.raises(ValueError, match="outside phrase 1"):
        token_weights([5, 4], 8, "token:3")
    GroundingConfig(tokens="token:1")
    with pytest.raises(ValueError):
        GroundingConfig(tokens="token:0")
    with pytest.raises(ValueError):
        GroundingConfig(tokens="token:x")


def test_per_token_maps_average_to_the_phrase_map_before_postprocessing():
    """Raw maps are linear in the token weights: the mean of the per-token raw maps equals the raw
    phrase map when per-map normalisation is off."""
    import dataclasses

    import numpy as np

    from groundiff_core.models.architectures import tiny_ldm
    from groundiff_core.engine.config import GroundingConfig
    from groundiff_core.engine.grounder import Grounder

    model = tiny_ldm()
    cfg = dataclasses.replace(GroundingConfig.paper().with_steps(20), normalize="none", otsu=False,
                              sigma_fraction=None)
    img = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    phrase = "left pleural effusion"
    whole = Grounder(model, cfg).ground(img, [phrase], return_raw=True).raw[0]
    per = [Grounder(model, dataclasses.replace(cfg, tokens=f"token:{i}")).ground(img, [phrase], return_raw=True).raw[0]
           for i in (1, 2, 3)]
    np.testing.assert_allclose(np.mean(per, axis=0), whole, atol=1e-6)


# ---------------------------------------------------------------------- the fast preset
def test_fast_preset_keeps_the_papers_proportions():
    paper, fast = GroundingConfig.paper(), GroundingConfig.fast()
    assert fast.num_inference_steps == 100 and fast.timestep_spacing == "trailing"
    assert fast.window == (40, 60) and fast.layers == paper.layers
    # the window's start and width as shares of the nominal steps are the paper's (0.4 and 0.2)
    for cfg in (paper, fast):
        n, (start, stop) = cfg.num_inference_steps, cfg.window
        assert (start / n, (stop - start) / n) == (0.4, 0.2)
    assert fast.window == window_from_percent(20, 100)  # the paper's n/2 -+ n/10 rule at n = 100
    # everything but the schedule and the window is the paper's
    differ = {k for k, v in fast.to_dict().items() if paper.to_dict()[k] != v}
    assert differ == {"num_inference_steps", "window"}
    sched = DDIMInversion(NoiseSchedule(), fast)
    assert len(sched) == 100 and set(np.diff(sched.timesteps)) == {10}
    assert [sched.timestep(i) for i in (40, 59)] == [409, 599]
    # sample evaluations per image with K phrases: 59 + 20 K, against the paper's 179 + 60 K
    assert fast.window[1] - 1 == 59 and fast.window[1] - fast.window[0] == 20


def test_presets_by_name():
    assert GroundingConfig.preset("paper") == GroundingConfig.paper()
    assert GroundingConfig.preset("fast") == GroundingConfig.fast()
    with pytest.raises(ValueError, match=r"preset must be one of \['paper', 'fast'\], got 'quick'"):
        GroundingConfig.preset("quick")


def test_ground_tokens_is_one_inversion_giving_each_tokens_own_map(tiny64_eps):
    """ground_tokens equals one ground per tokens="token:i" config, map for map, and runs one
    inversion: a single unconditional row per step, the tokens' rows only in the window."""
    import dataclasses

    import numpy as np

    from _testdata import unet_call_sizes

    from groundiff_core.engine.config import GroundingConfig
    from groundiff_core.engine.grounder import Grounder

    cfg = GroundingConfig.paper().with_steps(30)
    img = np.random.default_rng(0).random((40, 36)).astype(np.float32)
    phrase = "left pleural effusion"
    g = Grounder(tiny64_eps, cfg)
    g.layers  # found by a probe pass, before counting
    maps, sizes = unet_call_sizes(tiny64_eps, lambda: g.ground_tokens(img, phrase, return_raw=True))
    n = tiny64_eps.phrase_token_count(phrase) - 2
    assert maps.phrases == [f"{phrase} [token {i}]" for i in range(1, n + 1)]
    _, ref = unet_call_sizes(tiny64_eps, lambda: g.ground(img, [phrase]))  # the same sequence, one row each
    start, stop = cfg.resolve_window(len(g.schedule()))
    assert len(sizes) == len(ref) and sizes.count(n) == stop - start and sizes.count(1) == len(ref) - (stop - start)
    for i in range(1, n + 1):
        one = Grounder(tiny64_eps, dataclasses.replace(cfg, tokens=f"token:{i}")).ground(img, [phrase], return_raw=True)
        np.testing.assert_array_equal(maps.heatmaps[i - 1], one.heatmaps[0])
        np.testing.assert_array_equal(maps.raw[i - 1], one.raw[0])
    with pytest.raises(ValueError, match="phrase 0 is empty"):
        g.ground_tokens(img, "  ")
