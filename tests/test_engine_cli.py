"""``groundiff ground`` end to end on the tiny random model, and its argument errors."""

from __future__ import annotations

import json
from argparse import Namespace

import numpy as np
import pytest
from PIL import Image

from groundiff_core.cli import main
from groundiff_core.commands.ground import config_from_args


@pytest.fixture()
def png(tmp_path):
    yy, xx = np.mgrid[0:40, 0:48]
    img = (127 + 100 * np.sin(xx / 5.0) * np.cos(yy / 6.0)).astype(np.uint8)
    path = tmp_path / "cxr.png"
    Image.fromarray(img).save(path)
    return path


def test_ground_command_writes_maps_and_overlay(png, tmp_path, capsys):
    out, overlay = tmp_path / "out" / "maps.npy", tmp_path / "overlay.png"
    rc = main(["ground", "--model", "tiny", "--image", str(png), "--phrase", "left pleural effusion",
               "--phrase", "cardiomegaly", "--out", str(out), "--overlay", str(overlay), "--steps", "30",
               "--device", "cpu"])
    assert rc == 0
    maps = np.load(out)
    assert maps.shape == (2, 40, 48) and maps.dtype == np.float32
    assert np.isnan(maps).any() and np.nanmax(maps) == 1.0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["phrases"] == ["left pleural effusion", "cardiomegaly"]
    assert meta["window"] == [12, 18] and meta["layers"] == [3, 4, 6, 7] and meta["dtype"] == "float32"
    assert Image.open(overlay).size[0] > 100
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--layers", "3,40"], "out of range"),
    (["--window", "12"], "start:stop"),
    (["--window", "5:400"], "out of range"),
    (["--layers", "a,b"], "comma-separated integers"),
    (["--phrase", ""], "empty"),
])
def test_ground_command_user_errors(png, tmp_path, capsys, argv, message):
    rc = main(["ground", "--model", "tiny", "--image", str(png), "--phrase", "edema", "--out",
               str(tmp_path / "m.npy"), "--steps", "30", "--device", "cpu", *argv])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("groundiff ground: error:") and message in err and "Traceback" not in err


def test_ground_command_bad_image(tmp_path, capsys):
    bad = tmp_path / "x.png"
    bad.write_bytes(b"junk")
    rc = main(["ground", "--model", "tiny", "--image", str(bad), "--phrase", "edema", "--out", str(tmp_path / "m.npy")])
    assert rc == 2 and "cannot read image file" in capsys.readouterr().err


def test_config_from_args():
    base = dict(steps=None, layers=None, middle_layers=None, window=None, window_percent=None,
                no_smooth=False, no_otsu=False)
    cfg = config_from_args(Namespace(**{**base, "middle_layers": 6, "window_percent": 10, "no_otsu": True}))
    assert cfg.n_middle_layers == 6 and cfg.window == (135, 165) and cfg.otsu is False
    cfg = config_from_args(Namespace(**{**base, "layers": "3,4", "window": "100:200", "no_smooth": True}))
    assert cfg.layers == (3, 4) and cfg.window == (100, 200) and cfg.sigma_fraction is None
    with pytest.raises(ValueError, match="not both"):
        config_from_args(Namespace(**{**base, "layers": "3", "middle_layers": 2}))


def test_preset_option_of_ground_and_evaluate():
    import argparse

    from groundiff_core.commands import evaluate as evaluate_command
    from groundiff_core.commands import ground as ground_command
    from groundiff_core.engine.config import GroundingConfig

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    ground_command.register(sub)
    evaluate_command.register(sub)
    args = parser.parse_args(["ground", "--model", "tiny", "--image", "x.png", "--phrase", "edema",
                              "--out", "m.npy", "--preset", "fast"])
    assert config_from_args(args) == GroundingConfig.fast()
    args = parser.parse_args(["ground", "--model", "tiny", "--image", "x.png", "--phrase", "edema",
                              "--out", "m.npy", "--preset", "fast", "--steps", "50"])
    assert config_from_args(args).window == (20, 30)  # the fast preset's proportions at 50 steps
    args = parser.parse_args(["evaluate", "--out", "o", "--preset", "fast"])
    assert args.preset == "fast"
    with pytest.raises(SystemExit):
        parser.parse_args(["evaluate", "--out", "o", "--preset", "quick"])
