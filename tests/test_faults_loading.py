"""Faults of model loading (``models.loading``, and ``groundiff doctor`` reading checkpoints as the
loader does): corrupt diffusers folders, legacy checkpoints, unavailable devices."""

from __future__ import annotations

import pytest

from _faults_support import assert_user_error, run_cli


def _corrupt(kind: str, root):
    import json

    if kind == "truncated safetensors":
        f = root / "unet" / "diffusion_pytorch_model.safetensors"
        f.write_bytes(f.read_bytes()[:4000])
        return "unet", "corrupt or truncated"
    if kind in ("size mismatch", "text encoder mismatch"):  # a config.json that its weights do not fit
        part, key, value = ("vae", "latent_channels", 8) if kind == "size mismatch" else (
            "text_encoder", "intermediate_size", 24)
        f = root / part / "config.json"
        f.write_text(json.dumps({**json.loads(f.read_text()), key: value}))
        return part, "do not fit its config.json"
    if kind == "garbage pickle":
        (root / "unet" / "diffusion_pytorch_model.safetensors").unlink()
        (root / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x02garbage")
        return "unet", "diffusion_pytorch_model.bin"
    if kind == "broken model_index.json":
        (root / "model_index.json").write_text("{not json")
        return "model_index.json", "not valid JSON"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["truncated safetensors", "size mismatch", "garbage pickle",
                                  "text encoder mismatch", "broken model_index.json"])
def test_corrupt_diffusers_folders_name_the_folder(tmp_path, capsys, png, kind):
    from test_loading_support import write_sd_dir

    root = tmp_path / "sd"
    write_sd_dir(root)
    part, needle = _corrupt(kind, root)
    capsys.readouterr()  # the fixture's own save messages
    rc, err = run_cli(capsys, ["ground", "--model", str(root), "--image", str(png), "--phrase", "edema",
                               "--out", str(tmp_path / "m.npy"), "--device", "cpu"])
    assert_user_error(rc, err, "ground", str(root / part), needle)


def test_doctor_reads_legacy_checkpoints_as_the_loader_does(tmp_path):
    import torch

    from groundiff_core.commands import doctor
    from groundiff_core.models.loading.checkpoints import read_state_dict

    state = {"conv.weight": torch.ones(4, 2), "conv.bias": torch.zeros(4)}
    for name in ("autoencoder.pth", "diffusion_model.pth"):
        torch.save(state, tmp_path / name, _use_new_zipfile_serialization=False)  # legacy, non-zip
    assert set(read_state_dict(tmp_path / "autoencoder.pth")) == set(state)  # the loader reads it
    files = doctor.report(str(tmp_path))["models"]["paper"]["files"]
    for name in ("autoencoder.pth", "diffusion_model.pth"):
        assert files[name]["readable"] is True, files[name]
        assert (files[name]["tensors"], files[name]["parameters"]) == (2, 12)


def test_doctor_still_reports_unreadable_checkpoints(tmp_path):
    from groundiff_core.commands import doctor

    (tmp_path / "autoencoder.pth").write_bytes(b"not a checkpoint")
    entry = doctor.report(str(tmp_path))["models"]["paper"]["files"]["autoencoder.pth"]
    assert entry["readable"] is False and "autoencoder.pth" in entry["problem"]


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "mps"])
def test_unavailable_device_is_refused_before_any_work(tmp_path, capsys, monkeypatch, png, device):
    import torch

    import groundiff_core.models.loading as loading

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    rc, err = run_cli(capsys, ["ground", "--model", "tiny", "--image", str(png), "--phrase", "edema",
                               "--out", str(tmp_path / "m.npy"), "--device", device])
    assert_user_error(rc, err, "ground", f"device '{device}' is not available")


def test_evaluate_refuses_an_unavailable_device_before_loading_the_model(tmp_path, capsys, monkeypatch):
    import torch

    import groundiff_core.models.loading as loading
    import mscxr_fixture as fx

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    fx.write_images(tmp_path)
    csv = fx.write_csv(tmp_path / "ms.csv")
    rc, err = run_cli(capsys, ["evaluate", "--model", "tiny", "--dataset", "mscxr", "--csv", str(csv),
                               "--images", str(tmp_path), "--out", str(tmp_path / "run"), "--device", "cuda"])
    assert_user_error(rc, err, "evaluate", "device 'cuda' is not available")
