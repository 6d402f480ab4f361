"""Faults of configuration and option parsing (``engine.config``: ``GroundingConfig``, ``parse_bool``,
layer strings; a recording's options; the book's boolean parameters): bad values are refused, not
truncated or misread."""

from __future__ import annotations

import numpy as np
import pytest

from _faults_support import assert_user_error, run_cli


@pytest.mark.parametrize("fields,needle", [
    ({"sigma_fraction": 1e6}, "sigma_fraction"),
    ({"sigma_fraction": float("inf")}, "sigma_fraction"),
    ({"sigma_fraction": -0.1}, "sigma_fraction"),
    ({"sigma_fraction": "0.01"}, "sigma_fraction"),
    ({"otsu": "no"}, "otsu must be True or False"),
    ({"otsu": 1}, "otsu must be True or False"),
    ({"layers": (3.5, 4)}, "must be integers"),
    ({"layers": "3;4"}, "comma-separated"),
    ({"guidance_scale": "1"}, "guidance_scale"),
    ({"guidance_scale": 1e30}, r"guidance_scale must be a finite number in \[0, 100\]"),
    ({"guidance_scale": -1.0}, "guidance_scale"),
])
def test_bad_settings_are_refused(fields, needle):
    from groundiff_core.engine.config import GroundingConfig

    with pytest.raises(ValueError, match=needle):
        GroundingConfig(**fields)


def test_a_sigma_as_wide_as_the_image_is_still_allowed():
    from groundiff_core.engine.config import GroundingConfig

    assert GroundingConfig(sigma_fraction=1.0).sigma_pixels(512) == 512.0
    assert GroundingConfig(sigma_fraction=None).sigma_pixels(512) == 0.0


def test_a_layer_string_is_a_comma_separated_list():
    from groundiff_core.engine.config import GroundingConfig

    cfg = GroundingConfig.paper()
    assert cfg.with_layers("3,4,6,7").layers == (3, 4, 6, 7)
    assert cfg.with_layers("34").layers == (34,)
    with pytest.raises(ValueError, match="out of range"):
        cfg.with_layers("34").resolve_layers(11)


@pytest.mark.parametrize("word,value", [("no", False), ("No", False), ("false", False), ("off", False),
                                        ("yes", True), ("TRUE", True), (True, True)])
def test_booleans_parse_strictly(word, value):
    from groundiff_core.engine.config import parse_bool

    assert parse_bool(word, "x") is value


@pytest.mark.parametrize("word", ["maybe", "", "2", None, 1])
def test_non_booleans_are_refused(word):
    from groundiff_core.engine.config import parse_bool

    with pytest.raises(ValueError, match="must be a boolean"):
        parse_bool(word, "x")


@pytest.mark.parametrize("call,match", [
    (lambda c: c.with_window(1.9, 3.2), "window's start must be a whole number"),
    (lambda c: c.with_steps(True), "num_inference_steps must be a whole number"),
    (lambda c: c.with_middle_layers(2.5), "middle layers must be a whole number"),
    (lambda c: c.with_window_percent("20"), "window percent must be a number"),
])
def test_config_values_are_checked_not_truncated(call, match):
    import groundiff_core as gd

    with pytest.raises(ValueError, match=match):
        call(gd.GroundingConfig.paper())
    assert gd.GroundingConfig.paper().with_window(120.0, 180).window == (120, 180)  # a whole float is fine


def test_recording_options_are_as_strict_as_the_config(tiny_v):
    import groundiff_core as gd

    rec = gd.Grounder(tiny_v, gd.GroundingConfig.paper().with_steps(10)).record(
        np.random.default_rng(0).random((32, 32), dtype=np.float32), ["effusion"])
    no = rec.aggregate(otsu="no").heatmaps
    assert np.array_equal(np.nan_to_num(no), np.nan_to_num(rec.aggregate(otsu=False).heatmaps))
    assert not np.array_equal(np.nan_to_num(no), np.nan_to_num(rec.aggregate().heatmaps))
    with pytest.raises(ValueError, match=r"smooth must be True, False or a number in \[0, 1\] .*got 'yes'"):
        rec.aggregate(smooth="yes")
    with pytest.raises(ValueError, match="otsu must be a boolean"):
        rec.aggregate(otsu="maybe")


def test_book_boolean_parameters_take_yes_or_no_only(tmp_path, capsys):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "01_probe.py").write_text(
        '# %% tags=["parameters"]\nshow_figures = True\n\n# %%\nprint(show_figures)\n')
    rc, err = run_cli(capsys, ["book", "--root", str(tmp_path), "-p", "show_figures", "maybe"])
    assert_user_error(rc, err, "book", "show_figures", "must be a boolean")
