"""``groundiff doctor`` and the catalog of published checkpoints (``data/checksums.json``)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from groundiff_core import cli
from groundiff_core.commands import doctor
from groundiff_core.models.loading import catalog

from _testdata import needs_monai  # noqa: E402


@needs_monai
def test_recorded_tensor_and_parameter_counts_are_the_published_architectures():
    """checksums.json's counts are computed facts: MONAI's own networks with the bundle's configuration."""
    from monai.networks.nets import AutoencoderKL, DiffusionModelUNet

    files = catalog.checksums()["paper"]["monai_bundle"]["files"]
    with torch.device("meta"):
        unet = DiffusionModelUNet(spatial_dims=2, in_channels=3, out_channels=3, channels=(256, 512, 768),
                                  num_res_blocks=2, attention_levels=(False, True, True), norm_num_groups=32,
                                  norm_eps=1e-6, resblock_updown=False, num_head_channels=(0, 512, 768),
                                  with_conditioning=True, transformer_num_layers=1, cross_attention_dim=1024)
    assert files["diffusion_model.pth"]["tensors"] == len(unet.state_dict())
    assert files["diffusion_model.pth"]["parameters"] == sum(p.numel() for p in unet.parameters())
    for variant, middle in (("without_middle_attention", False), ("with_middle_attention", True)):
        with torch.device("meta"):
            ae = AutoencoderKL(spatial_dims=2, in_channels=1, out_channels=1, latent_channels=3,
                               channels=(64, 128, 128, 128), num_res_blocks=2, norm_num_groups=32, norm_eps=1e-6,
                               attention_levels=(False,) * 4, with_encoder_nonlocal_attn=middle,
                               with_decoder_nonlocal_attn=middle)
        want = files["autoencoder.pth"]["variants"][variant]
        assert want == {"tensors": len(ae.state_dict()), "parameters": sum(p.numel() for p in ae.parameters())}


def test_no_hash_is_invented():
    """Hashes and sizes stay null unless a primary source gives them (none does for these files)."""
    paper = catalog.checksums()["paper"]
    for entry in paper["monai_bundle"]["files"].values():
        assert entry["sha256"] is None and entry["size"] is None
    for entry in paper["text_encoder"]["folders"].values():
        assert entry["sha256"] is None


def test_doctor_on_an_empty_folder(tmp_path, capsys):
    assert cli.main(["doctor", "--paper-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "NOT READY" in out and "autoencoder.pth not found" in out and "diffusers" in out
    assert cli.main(["doctor", "--paper-dir", str(tmp_path), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["paper_reproduction"]["can_run"] is False
    assert rep["models"]["tiny"]["found"] is True
    assert rep["versions"]["torch"] and rep["models"]["paper"]["dir"] == str(tmp_path)


def test_doctor_uses_the_environment_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("GROUNDIFF_PAPER_DIR", str(tmp_path))
    paper = doctor.report()["models"]["paper"]
    assert paper["dir"] == str(tmp_path) and paper["dir_from"] == "$GROUNDIFF_PAPER_DIR"


@needs_monai
def test_doctor_recognises_files_of_the_expected_architecture(tmp_path, monkeypatch, capsys):
    from test_loading_support import load_scaled_paper, write_paper_dir

    write_paper_dir(tmp_path / "p")
    rep = doctor.report(str(tmp_path / "p"), hash_files=True)
    files = rep["models"]["paper"]["files"]
    assert all(files[name]["path"] for name in ("autoencoder.pth", "diffusion_model.pth", "text_encoder", "tokenizer"))
    assert files["diffusion_model.pth"]["tensors"] == 496  # same layout as the paper's, narrower
    assert files["diffusion_model.pth"]["matches_published"] is None  # ...so not the published weights
    assert len(files["autoencoder.pth"]["sha256"]) == 64 and len(files["autoencoder.pth"]["md5"]) == 32
    assert files["autoencoder.pth"]["md5_matches"] is False  # random weights are not the published file
    assert rep["paper_reproduction"]["can_run"] is False
    assert rep["models"]["paper"]["converted_cache"] is None

    # with the catalog describing these (scaled) files, the same folder is ready to run
    counts = {name: {k: files[name][k] for k in ("tensors", "parameters")}
              for name in ("autoencoder.pth", "diffusion_model.pth")}
    facts = copy.deepcopy(catalog.checksums())
    facts["paper"]["monai_bundle"]["files"]["diffusion_model.pth"].update(counts["diffusion_model.pth"])
    facts["paper"]["monai_bundle"]["files"]["autoencoder.pth"]["variants"] = {"scaled": counts["autoencoder.pth"]}
    facts["paper"]["text_encoder"]["folders"]["text_encoder"]["hidden_size"] = 128
    monkeypatch.setattr(catalog, "checksums", lambda: facts)
    load_scaled_paper(tmp_path / "p")  # writes the converted cache
    rep = doctor.report(str(tmp_path / "p"))
    assert rep["paper_reproduction"]["can_run"] is True, rep["paper_reproduction"]["reasons"]
    assert rep["models"]["paper"]["converted_cache"]["current"] is True
    doctor.run(type("Args", (), {"paper_dir": str(tmp_path / "p"), "hash": False, "json": False})())
    assert "paper reproduction: READY" in capsys.readouterr().out
