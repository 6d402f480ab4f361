"""``load_model`` sources: tiny, phantom, a Stable-Diffusion-layout folder, the paper's files; each
loads offline and grounds end to end."""

from __future__ import annotations


import os
from pathlib import Path

import numpy as np
import pytest
import torch
from test_loading_support import IMAGE, TEXT_WORDS, load_scaled_paper, write_paper_dir, write_sd_dir

import groundiff_core as gd
from groundiff_core.models.loading import load_model

from _testdata import needs_monai  # noqa: E402


def _image(size: int = 48) -> np.ndarray:
    """A non-square test image in [0, 1] with a bright blob (so cropping and NaN padding are exercised)."""
    yy, xx = np.mgrid[0:size, 0:size + 16]
    return np.clip(0.3 + 0.6 * np.exp(-((yy - 20) ** 2 + (xx - 30) ** 2) / 60.0), 0, 1).astype(np.float32)


def _check_heatmaps(maps, phrases, shape):
    assert maps.heatmaps.shape == (len(phrases), *shape) and maps.heatmaps.dtype == np.float32
    inside = maps.heatmaps[~np.isnan(maps.heatmaps)]
    assert inside.size > 0 and np.isfinite(inside).all()
    assert inside.min() >= 0 and inside.max() <= 1 + 1e-6 and inside.max() > 0
    assert np.isnan(maps.heatmaps).any()  # the crop's margins of a non-square image


def test_tiny_passes_its_options_through():
    model = load_model("tiny", prediction_type="epsilon", image_size=32)
    assert model.schedule.prediction_type == "epsilon" and model.input_size == 32
    with pytest.raises(ValueError, match="allowed"):
        load_model("tiny", not_an_option=1)


def test_top_level_load_model_is_this_one():
    assert gd.load_model is load_model


def test_device_and_dtype_are_applied():
    model = load_model("tiny", device="cpu", dtype="bfloat16")
    assert model.dtype == torch.bfloat16 and model.device.type == "cpu"
    assert load_model("tiny", device="auto").device.type in ("cpu", "cuda", "mps")


def test_phantom_loads_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = load_model("phantom")
    assert model.input_range == (0.0, 1.0) and model.schedule.prediction_type == "v_prediction"


@pytest.mark.slow
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_stable_diffusion_layout_loads_and_grounds(tmp_path, monkeypatch, prediction_type):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    parts = write_sd_dir(tmp_path / "sd", prediction_type=prediction_type)
    model = load_model(tmp_path / "sd")
    # facts read from the configs, not assumed
    assert model.schedule.prediction_type == prediction_type
    assert (model.schedule.beta_start, model.schedule.beta_end, model.schedule.beta_schedule) == \
        (0.00085, 0.012, "scaled_linear")
    assert model.scale_factor == pytest.approx(0.2)
    assert model.input_size == 16 * 2 and model.image_channels == 3 and model.input_range == (-1.0, 1.0)
    for name in ("unet", "vae", "text_encoder"):
        mine, theirs = getattr(model, name).state_dict(), parts[name].state_dict()
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    assert model.tokenizer.tokenize("left pleural effusion") == parts["tokenizer"].tokenize("left pleural effusion")
    phrases = ["left pleural effusion", "cardiomegaly"]
    maps = gd.Grounder(model, gd.GroundingConfig.paper()).ground(_image(), phrases)
    _check_heatmaps(maps, phrases, _image().shape)


def test_stable_diffusion_layout_overrides(tmp_path):
    write_sd_dir(tmp_path / "sd")
    model = load_model(tmp_path / "sd", input_size=64, scale_factor=0.5, name="mine")
    assert (model.input_size, model.scale_factor, model.name) == (64, 0.5, "mine")
    with pytest.raises(ValueError, match="allowed"):
        load_model(tmp_path / "sd", unet_config={})


def _state_facts(root, facts) -> None:
    """Write ``facts`` under ``"_groundiff"`` in the folder's model_index.json."""
    import json

    index = json.loads((root / "model_index.json").read_text())
    index["_groundiff"] = facts
    (root / "model_index.json").write_text(json.dumps(index))


def test_stable_diffusion_layout_reads_the_folders_own_facts(tmp_path):
    """What diffusers' configs cannot say (input range, zero padding, compute dtype) the folder states itself."""
    write_sd_dir(tmp_path / "sd")
    _state_facts(tmp_path / "sd", {"input_range": [0, 1], "zero_padding": True, "name": "stated", "input_size": 48,
                                   "dtype": "bfloat16"})
    model = load_model(tmp_path / "sd")
    assert (model.input_range, model.zero_padding, model.name, model.input_size) == ((0.0, 1.0), True, "stated", 48)
    assert model.dtype == torch.bfloat16 and model.text_encoder.dtype == torch.bfloat16
    # what the caller says wins over what the folder says
    model = load_model(tmp_path / "sd", input_range=(-1.0, 1.0), zero_padding=False, name="mine", dtype="float32")
    assert (model.input_range, model.zero_padding, model.name, model.dtype) == ((-1.0, 1.0), False, "mine",
                                                                                 torch.float32)


@pytest.mark.parametrize("facts, message", [
    ({"input_range": [1, 0]}, "input_range must be"),
    ({"zero_padding": "yes"}, "zero_padding must be"),
    ({"dtype": "float64"}, "dtype must be"),
    ({"scale": 0.5}, r"unknown fact\(s\) \['scale'\]"),
    ([1, 2], "must be a JSON object"),
])
def test_stable_diffusion_layout_refuses_bad_facts(tmp_path, facts, message):
    write_sd_dir(tmp_path / "sd")
    _state_facts(tmp_path / "sd", facts)
    with pytest.raises(ValueError, match=message):
        load_model(tmp_path / "sd")


@needs_monai
def test_paper_files_load_from_top_level_or_models_folder(tmp_path):
    write_paper_dir(tmp_path / "flat", bundle_layout=False)
    model = load_scaled_paper(tmp_path / "flat")
    assert model.info["source"] == "monai" and model.name == "monai-cxr-ldm"
    assert Path(model.info["conversion"]["cache"]).is_relative_to(os.environ["GROUNDIFF_CACHE_DIR"])
    assert sorted(p.name for p in (tmp_path / "flat").iterdir() if p.is_dir()) == ["text_encoder", "tokenizer"]


@needs_monai
@pytest.mark.slow
def test_paper_source_uses_the_environment_folder_and_grounds(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_paper_dir(tmp_path / "paper")
    monkeypatch.setenv("GROUNDIFF_PAPER_DIR", str(tmp_path / "paper"))
    from test_loading_support import AE_KW, UNET_KW

    ae = {k: v for k, v in AE_KW.items() if not k.startswith("with_")}
    model = load_model("paper", unet_config=UNET_KW, autoencoder_config=ae, input_size=IMAGE)
    assert model.info["root"] == str(tmp_path / "paper")
    phrases = [" ".join(TEXT_WORDS[:3]), "cardiomegaly"]
    maps = gd.Grounder(model, gd.GroundingConfig.paper()).ground(_image(), phrases)
    _check_heatmaps(maps, phrases, _image().shape)


@needs_monai
def test_paper_text_encoder_given_separately(tmp_path):
    write_paper_dir(tmp_path / "paper")
    (tmp_path / "sd21").mkdir()
    (tmp_path / "paper" / "text_encoder").rename(tmp_path / "sd21" / "text_encoder")
    (tmp_path / "paper" / "tokenizer").rename(tmp_path / "sd21" / "tokenizer")
    model = load_scaled_paper(tmp_path / "paper", text_encoder=tmp_path / "sd21")
    assert model.info["text_encoder"] == str(tmp_path / "sd21" / "text_encoder")
    model = load_scaled_paper(tmp_path / "paper", text_encoder=tmp_path / "sd21" / "text_encoder")
    assert model.text_encoder.config.hidden_size == 128
