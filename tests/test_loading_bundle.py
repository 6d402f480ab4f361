"""MONAI model-zoo bundle folders: the architecture comes from the bundle, the weights match MONAI's forward.

Bundles are written by :mod:`bundle_fixture` (the paper's layout at 1/8 width, 64 px images), with
GenerativeModels or MONAI core ``_target_`` names, old or core state-dict layouts, JSON or YAML; none
of these loads as the paper's full-size model, so each test that loads one shows that the
architecture was read from the bundle and not assumed.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("monai")
pytest.importorskip("einops")

from bundle_fixture import BUNDLE_SCALE_FACTOR, IMAGE, bundle_config, write_bundle, write_config  # noqa: E402
from test_loading_support import (UNET_KW, diffusers_cross_attention, monai_cross_attention,  # noqa: E402
                                  write_text_encoder)

from groundiff_core import cli  # noqa: E402
from groundiff_core.commands import doctor  # noqa: E402
from groundiff_core.models.loading import MissingWeightsError, StateDictMismatchError, load_model  # noqa: E402
from groundiff_core.models.loading.bundle import BundleError, read_bundle  # noqa: E402

pytestmark = pytest.mark.slow  # writes and loads scaled paper-architecture bundles

TOL = 1e-4
LATENT = IMAGE // 8


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """One written bundle; error tests copy it and change what they test (weights are written once)."""
    return write_bundle(tmp_path_factory.mktemp("template") / "b", text_encoder=False).root


def _copy(template, dest, config: dict | None = None, text_encoder: bool = True):
    shutil.copytree(template, dest)
    if config is not None:
        write_config(dest, config)
    if text_encoder:
        write_text_encoder(dest)
    return dest


@pytest.fixture(scope="module")
def unet_inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, LATENT, LATENT, generator=g)
    t = torch.tensor([360, 999])
    ctx = torch.randn(2, 77, UNET_KW["cross_attention_dim"], generator=g)
    return x, t, ctx


def _assert_matches_monai(model, written, unet_inputs):
    out_m, probs_m = monai_cross_attention(written.unet, *unet_inputs)
    out_d, probs_d, _ = diffusers_cross_attention(model.unet, *unet_inputs)
    assert out_m.abs().max().item() > 0.1
    assert (out_m - out_d).abs().max().item() < TOL
    assert len(probs_m) == len(probs_d) == 11
    for pm, pd in zip(probs_m, probs_d):
        assert (pm - pd).abs().max().item() < TOL
    x01 = torch.rand(2, 1, IMAGE, IMAGE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        z_monai = written.autoencoder.encode(x01)[0] * written.scale_factor
    assert (model.encode_image(x01) - z_monai).abs().max().item() < TOL


@pytest.mark.parametrize("targets,layout,fmt", [
    ("generative", "generative", "json"),
    ("monai", "monai", "yaml"),
    ("monai", "generative", "json"),
    ("generative", "monai", "yaml"),
], ids=["gm-names_old-layout_json", "core-names_core-layout_yaml", "core-names_old-layout_json",
        "gm-names_core-layout_yaml"])
def test_bundle_loads_with_its_own_architecture_and_matches_monai(targets, layout, fmt, tmp_path, unet_inputs):
    written = write_bundle(tmp_path / "b", targets=targets, layout=layout, fmt=fmt)
    model = load_model(written.root)
    assert model.input_size == IMAGE and model.latent_size == LATENT  # from latent_shape, not the paper's 512
    assert model.scale_factor == BUNDLE_SCALE_FACTOR  # from the inferer's "@scale_factor"
    assert model.schedule.prediction_type == "v_prediction" and model.schedule.beta_schedule == "scaled_linear"
    assert (model.schedule.beta_start, model.schedule.beta_end) == (0.0015, 0.0205)
    assert model.image_channels == 1 and model.name == "scaled_cxr_ldm_bundle"
    assert model.info["bundle_config"] == f"configs/inference.{fmt}"
    assert f"{targets}.networks.nets.DiffusionModelUNet" in model.info["bundle_definitions"]
    _assert_matches_monai(model, written, unet_inputs)


def test_files_at_the_top_and_an_outside_text_encoder(tmp_path, unet_inputs):
    written = write_bundle(tmp_path / "b", config_in_configs=False, weights_in_models=False, text_encoder=False)
    write_text_encoder(tmp_path / "sd21")
    model = load_model(written.root, text_encoder=tmp_path / "sd21")
    assert model.info["text_encoder"] == str(tmp_path / "sd21" / "text_encoder")
    assert model.info["bundle_config"] == "inference.json"
    _assert_matches_monai(model, written, unet_inputs)


def test_middle_attention_is_read_from_the_checkpoint(tmp_path, unet_inputs):
    """The definition says no middle attention (as one version of the model zoo's bundle does), the weights
    have it: the checkpoint decides, and the loaded autoencoder is MONAI's."""
    written = write_bundle(tmp_path / "b", autoencoder_overrides=dict(with_encoder_nonlocal_attn=True,
                                                                      with_decoder_nonlocal_attn=True))
    assert json.loads(written.config.read_text())["autoencoder_def"]["with_encoder_nonlocal_attn"] is False
    model = load_model(written.root)
    assert model.info["autoencoder_middle_attention"] is True
    _assert_matches_monai(model, written, unet_inputs)


def test_what_the_bundle_does_not_state_is_the_papers(tmp_path, template):
    root = _copy(template, tmp_path / "b", bundle_config(scheduler=False, inferer=False, latent_shape=False))
    spec = read_bundle(root)
    assert spec.scheduler is None and spec.inferer is None
    assert spec.scale_factor == 0.3 and spec.input_size == 512
    assert spec.schedule["prediction_type"] == "v_prediction" and spec.schedule["beta_end"] == 0.0205
    assert all("paper's default" in spec.sources[k] for k in ("schedule", "scale_factor", "input_size"))
    model = load_model(root, input_size=IMAGE, scale_factor=0.5)  # the caller's values win
    assert model.input_size == IMAGE and model.scale_factor == 0.5


def test_monai_scheduler_defaults_apply_to_what_a_scheduler_leaves_out(tmp_path, template):
    config = bundle_config("monai")
    config["noise_scheduler"] = {"_target_": "monai.networks.schedulers.DDPMScheduler", "num_train_timesteps": 500}
    spec = read_bundle(_copy(template, tmp_path / "b", config))
    assert spec.schedule == dict(beta_schedule="linear", num_train_timesteps=500, beta_start=1e-4, beta_end=2e-2,
                                 prediction_type="epsilon")


def test_ground_command_on_a_bundle(tmp_path, capsys):
    from PIL import Image

    written = write_bundle(tmp_path / "b", text_encoder=False)
    write_text_encoder(tmp_path / "sd21")
    img = (np.random.default_rng(0).random((80, 64)) * 255).astype(np.uint8)  # non-square: NaN margins
    Image.fromarray(img).save(tmp_path / "cxr.png")
    out = tmp_path / "maps.npy"
    rc = cli.main(["ground", "--model", str(written.root), "--text-encoder", str(tmp_path / "sd21"),
                   "--image", str(tmp_path / "cxr.png"), "--phrase", "left pleural effusion", "--out", str(out),
                   "--steps", "20", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    maps = np.load(out)
    assert maps.shape == (1, 80, 64)
    valid = maps[0][np.isfinite(maps[0])]
    assert valid.size and valid.max() > 0 and np.isnan(maps[0]).any()
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["model"]["source"] == "monai-bundle" and meta["model"]["input_size"] == IMAGE


# ------------------------------------------------------------------------------------ errors
def _cli_error(capsys, *argv) -> str:
    assert cli.main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err  # one line, no traceback
    return err


def _image(path):
    from PIL import Image

    Image.fromarray(np.zeros((64, 64), np.uint8)).save(path)
    return str(path)


def test_missing_config(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no MONAI bundle config .*configs/inference\.json"):
        read_bundle(tmp_path / "empty")
    err = _cli_error(capsys, "ground", "--model", str(tmp_path / "empty"), "--image", _image(tmp_path / "x.png"),
                     "--phrase", "cardiomegaly", "--out", str(tmp_path / "o.npy"), "--device", "cpu")
    assert "a MONAI bundle (no configs/inference.json or .yaml)" in err


def test_unreadable_value_names_file_and_key(tmp_path, template):
    config = bundle_config("monai")
    config["diffusion_def"]["channels"] = "$[32, 64, 96]"
    root = _copy(template, tmp_path / "expr", config)
    with pytest.raises(BundleError, match=r"configs/inference\.json: diffusion_def#channels: cannot resolve"):
        load_model(root)
    config = bundle_config("monai")
    config["autoencoder_def"]["latent_channels"] = "@no_such_key"
    root = _copy(template, tmp_path / "ref", config)
    with pytest.raises(BundleError, match=r"autoencoder_def#latent_channels: the reference '@no_such_key'"):
        load_model(root)
    config = bundle_config("monai")
    config["diffusion_def"]["attention_heads"] = 4
    root = _copy(template, tmp_path / "arg", config)
    with pytest.raises(BundleError, match=r"diffusion_def \(monai\.networks\.nets\.DiffusionModelUNet\): unknown "
                                          r"DiffusionModelUNet argument 'attention_heads'"):
        load_model(root)
    config = bundle_config("monai")
    config["noise_scheduler"]["schedule"] = "cosine"
    root = _copy(template, tmp_path / "sched", config)
    with pytest.raises(BundleError, match=r"noise_scheduler .*schedule 'cosine' is not supported"):
        load_model(root)
    root = _copy(template, tmp_path / "bad")
    (root / "configs" / "inference.json").write_text('{"autoencoder_def": {')
    with pytest.raises(BundleError, match=r"inference\.json: not valid JSON"):
        load_model(root)


def test_unknown_target(tmp_path, template):
    config = bundle_config("monai")
    config["autoencoder_def"]["_target_"] = "monai.networks.nets.VQVAE"
    root = _copy(template, tmp_path / "b", config)
    with pytest.raises(BundleError, match=r"no autoencoder definition .*found: autoencoder_def: "
                                          r"monai\.networks\.nets\.VQVAE"):
        load_model(root)
    config = bundle_config("monai")
    config["second_unet"] = dict(config["diffusion_def"])
    root = _copy(template, tmp_path / "two", config)
    with pytest.raises(BundleError, match=r"more than one diffusion UNet definition: diffusion_def .*second_unet"):
        read_bundle(root)


def test_missing_checkpoint(tmp_path, template):
    root = _copy(template, tmp_path / "b")
    (root / "models" / "diffusion_model.pth").unlink()
    with pytest.raises(MissingWeightsError, match=r"no diffusion_model checkpoint for diffusion_def") as err:
        load_model(root)
    text = str(err.value)
    # what the config named, that it is not there, and where today's published weights are
    assert "models/diffusion_model.pth: named by configs/inference.json: load_diffusion_path" in text
    assert "not there" in text and "1CjcmiPu5_QWr-f7wDJsXrCCcVeczneGT" in text
    assert "c3fd4c8e38cd1d7250a8903cca935823" in text and "1PUqHb_0dKB7GAXA3P8l_3pIyorLudgrB" not in text


def test_checkpoint_that_the_definition_does_not_describe(tmp_path, template):
    config = bundle_config("monai")
    config["diffusion_def"]["channels"] = [32, 64, 128]
    config["diffusion_def"]["num_head_channels"] = [0, 64, 128]
    root = _copy(template, tmp_path / "b", config)
    with pytest.raises(StateDictMismatchError, match=r"inference\.json: diffusion_def .* does not describe "
                                                     r".*diffusion_model\.pth: .*shape"):
        load_model(root)


def test_missing_text_encoder(tmp_path, capsys, template):
    root = _copy(template, tmp_path / "b", text_encoder=False)
    with pytest.raises(MissingWeightsError, match="pass --text-encoder DIR"):
        load_model(root)
    err = _cli_error(capsys, "ground", "--model", str(root), "--image", _image(tmp_path / "cxr.png"),
                     "--phrase", "cardiomegaly", "--out", str(tmp_path / "o.npy"), "--device", "cpu")
    assert "--text-encoder" in err and str(root) in err
    (tmp_path / "nothing").mkdir()
    with pytest.raises(MissingWeightsError, match=r"--text-encoder .*nothing: no text encoder there"):
        load_model(root, text_encoder=tmp_path / "nothing")


# ------------------------------------------------------------------------------------ doctor, book
def test_doctor_shows_what_it_found(tmp_path, capsys):
    written = write_bundle(tmp_path / "b", targets="generative")
    rep = doctor.report(str(tmp_path / "no-paper"), model=str(written.root))
    b = rep["models"]["bundle"]
    assert b["ready"] is True, b["problems"]
    assert b["definitions"]["unet"] == {"key": "diffusion_def", "target": "generative.networks.nets.DiffusionModelUNet"}
    assert b["definitions"]["scheduler"]["key"] == "noise_scheduler"
    assert b["architecture"]["unet_channels"] == [32, 64, 96] and b["architecture"]["cross_attention_dim"] == 128
    assert b["checkpoints"]["diffusion_model"]["fits"] is True and b["checkpoints"]["autoencoder"]["fits"] is True
    assert b["text_encoder"]["hidden_size"] == 128

    # a checkpoint of another width and no text encoder: both reported, nothing raised
    from test_loading_support import monai_unet

    torch.save(monai_unet(channels=(32, 64, 128), num_head_channels=(0, 64, 128)).state_dict(),
               written.root / "models" / "diffusion_model.pth")
    shutil.rmtree(written.root / "text_encoder")
    assert cli.main(["doctor", "--paper-dir", str(written.root)]) == 0  # a bundle as the paper's folder
    out = capsys.readouterr().out
    assert "diffusion_def = generative.networks.nets.DiffusionModelUNet" in out
    assert "does NOT fit diffusion_def" in out and "bundle: NOT READY" in out and "--text-encoder" in out
    assert "fits autoencoder_def" in out


def test_book_runner_takes_model_and_text_encoder(tmp_path, monkeypatch):
    from groundiff_core.book import runner as book

    seen = {}
    monkeypatch.setattr(book, "run_book", lambda root, **kw: seen.update(kw) or [])
    parser = __import__("argparse").ArgumentParser()
    book.add_arguments(parser)
    (tmp_path / "sd").mkdir()
    args = parser.parse_args(["--model", "phantom", "--text-encoder", str(tmp_path / "sd")])
    assert book.run_from_args(args) == 0
    assert seen["overrides"] == {"model": "phantom", "text_encoder": str((tmp_path / "sd").resolve())}
    with pytest.raises(ValueError, match="give --model or -p model, not both"):
        book.run_from_args(parser.parse_args(["--model", "tiny", "-p", "model", "phantom"]))
