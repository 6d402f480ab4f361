"""The paper's model as its two publishers ship it: both real bundle configurations, read as they are.

``../shared/monai-bundles/`` (beside the project, not in it) holds the unmodified configuration of
the GenerativeModels bundle and of its model-zoo port (see its README); tests skip when it is
absent (``GROUNDIFF_MONAI_BUNDLES`` points elsewhere). The configs are read in place; for loading,
a copy in ``tmp_path`` gets the architecture at 1/8 width (only the widths of ``autoencoder_def``
and ``diffusion_def`` change: names, expressions and ``load_old`` stay as shipped) and random
MONAI weights under the file names the config declares, in the old GenerativeModels key layout
as both publishers ship them. Also here: the text encoder from a Hugging Face cache layout, offline,
and a bundle folder that stays untouched by a load.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_loading_support import (AE_KW, IMAGE, UNET_KW, diffusers_cross_attention, monai_autoencoder,
                                  monai_cross_attention, monai_unet, to_generative_layout, write_text_encoder)

from groundiff_core import cli
from groundiff_core.commands import doctor
from groundiff_core.models.loading import load_model
from groundiff_core.models.loading.bundle import read_bundle
from groundiff_core.models.loading.monai_unet import MonaiUNetConfig

from _testdata import needs_monai  # noqa: E402

BUNDLES = Path(os.environ.get("GROUNDIFF_MONAI_BUNDLES")
               or Path(__file__).resolve().parents[2] / "shared" / "monai-bundles")
NAMES = {"generative-models": ("models/autoencoder.pth", "models/diffusion_model.pth", None),
         "model-zoo": ("models/autoencoder.pt", "models/model.pt", True)}
TOL = 1e-4

needs_bundles = pytest.mark.skipif(not all((BUNDLES / b / "configs" / "inference.json").is_file() for b in NAMES),
                                   reason=f"the real MONAI bundle configurations are not at {BUNDLES}")
pytestmark = needs_bundles


def _snapshot(folder: Path) -> dict:
    """Every entry under ``folder``: its bytes' hash, size and mtime (a load must change none)."""
    import hashlib

    out = {}
    for p in sorted(folder.rglob("*")):
        st = p.stat()
        out[str(p.relative_to(folder))] = (p.is_dir(), st.st_mtime_ns, st.st_size,
                                           None if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest())
    out["."] = folder.stat().st_mtime_ns
    return out


def _scaled_copy(name: str, dest: Path) -> dict:
    """The real config of bundle ``name`` in ``dest/configs``, widths at 1/8; random weights under its names.

    Returns the MONAI networks whose weights were saved (for reference forwards).
    """
    config = json.loads((BUNDLES / name / "configs" / "inference.json").read_text())
    width = "num_channels" if "num_channels" in config["diffusion_def"] else "channels"
    config["diffusion_def"].update({width: list(UNET_KW["channels"]), "num_head_channels": list(UNET_KW["num_head_channels"]),
                                    "cross_attention_dim": UNET_KW["cross_attention_dim"]})
    config["autoencoder_def"].update({width: list(AE_KW["channels"])})
    (dest / "configs").mkdir(parents=True)
    (dest / "configs" / "inference.json").write_text(json.dumps(config, indent=4))
    shutil.copy(BUNDLES / name / "configs" / "metadata.json", dest / "configs" / "metadata.json")
    unet, ae = monai_unet(), monai_autoencoder()
    ae_name, unet_name, _ = NAMES[name]
    (dest / "models").mkdir()
    torch.save(to_generative_layout(ae.state_dict(), "autoencoder"), dest / ae_name)  # the old layout, as shipped
    torch.save(to_generative_layout(unet.state_dict(), "unet"), dest / unet_name)
    return {"unet": unet, "autoencoder": ae}


# ------------------------------------------------------------------------------ the configs as shipped
@pytest.mark.parametrize("name", sorted(NAMES))
def test_the_real_config_reads_as_the_papers_model_and_names_its_weights(name):
    before = _snapshot(BUNDLES / name)
    spec = read_bundle(BUNDLES / name)
    assert spec.unet_config.to_dict() == MonaiUNetConfig.paper().to_dict()
    assert list(spec.autoencoder_config.channels) == [64, 128, 128, 128] and spec.autoencoder_config.latent_channels == 3
    assert spec.schedule == dict(beta_schedule="scaled_linear", num_train_timesteps=1000, beta_start=0.0015,
                                 beta_end=0.0205, prediction_type="v_prediction")
    ae_name, unet_name, load_old = NAMES[name]
    assert spec.load_old is load_old
    named = {c.path.relative_to(spec.root).as_posix(): c for c in spec.considered}
    # the weights are not shipped with the configs: both declared names were looked for, none taken
    assert set(named) == {ae_name, unet_name}
    assert named[ae_name].part == "autoencoder" and "load_autoencoder_path" in named[ae_name].why
    assert named[unet_name].part == "diffusion_model" and "load_diffusion_path" in named[unet_name].why
    assert all("not there" in c.why and not c.taken for c in spec.considered)
    assert spec.checkpoints == {"autoencoder": None, "diffusion_model": None}
    assert _snapshot(BUNDLES / name) == before  # reading evaluates nothing and writes nothing


def test_the_download_facts_are_those_both_bundles_name_today():
    """checksums.json's links and MD5s are the ones in both large_files.yml (not the first revision's)."""
    import yaml

    from groundiff_core.models.loading import catalog

    files = catalog.checksums()["paper"]["monai_bundle"]["files"]
    for name, (ae_name, unet_name, _) in NAMES.items():
        listed = {e["path"]: e for e in yaml.safe_load((BUNDLES / name / "large_files.yml").read_text())["large_files"]}
        assert set(listed) == {ae_name, unet_name}
        for part, path in (("autoencoder.pth", ae_name), ("diffusion_model.pth", unet_name)):
            assert listed[path]["url"] == files[part]["url"]
            if listed[path]["hash_val"]:
                assert (listed[path]["hash_type"], listed[path]["hash_val"]) == ("md5", files[part]["md5"])
        assert catalog.checksums()["paper"]["monai_bundle"]["bundles"][name]["files"] == {
            "autoencoder": ae_name, "diffusion_model": unet_name}


# ------------------------------------------------------------------------------ loading as shipped
@needs_monai
@pytest.mark.parametrize("name", sorted(NAMES))
def test_both_bundles_ground_from_the_command_line_and_match_monai(name, tmp_path, capsys):
    from PIL import Image

    bundle = tmp_path / name
    nets = _scaled_copy(name, bundle)
    write_text_encoder(tmp_path / "sd21")
    Image.fromarray((np.random.default_rng(0).random((72, 64)) * 255).astype(np.uint8)).save(tmp_path / "cxr.png")
    before = _snapshot(bundle)
    out = tmp_path / "maps.npy"
    # only --text-encoder: the weights' names, the layout and the architecture come from the bundle
    rc = cli.main(["ground", "--model", str(bundle), "--text-encoder", str(tmp_path / "sd21"), "--image",
                   str(tmp_path / "cxr.png"), "--phrase", "left pleural effusion", "--out", str(out), "--steps", "10",
                   "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    maps = np.load(out)
    assert maps.shape == (1, 72, 64) and np.nanmax(maps) > 0
    assert _snapshot(bundle) == before

    model = load_model(bundle, text_encoder=tmp_path / "sd21", input_size=IMAGE)
    assert model.info["source"] == "monai-bundle"
    assert Path(model.info["diffusion_model"]) == bundle / NAMES[name][1]
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 3, IMAGE // 8, IMAGE // 8, generator=g), torch.tensor([360, 999])
    ctx = torch.randn(2, 77, UNET_KW["cross_attention_dim"], generator=g)
    out_m, probs_m = monai_cross_attention(nets["unet"], x, t, ctx)
    out_d, probs_d, _ = diffusers_cross_attention(model.unet, x, t, ctx)
    assert len(probs_m) == len(probs_d) == 11
    assert (out_m - out_d).abs().max().item() < TOL
    assert max((pm - pd).abs().max().item() for pm, pd in zip(probs_m, probs_d)) < TOL
    x01 = torch.rand(2, 1, IMAGE, IMAGE, generator=g)
    with torch.no_grad():
        z = nets["autoencoder"].encode(x01)[0] * 0.3  # neither bundle states a scale factor: the paper's 0.3
    assert (model.encode_image(x01) - z).abs().max().item() < TOL
    assert _snapshot(bundle) == before


@needs_monai
def test_doctor_on_the_model_zoo_bundle_is_ready_and_names_the_pt_files(tmp_path, capsys):
    bundle = tmp_path / "model-zoo"
    _scaled_copy("model-zoo", bundle)
    write_text_encoder(tmp_path / "sd21")
    b = doctor.report(str(tmp_path / "no-paper"), hash_files=True, model=str(bundle),
                      text_encoder=str(tmp_path / "sd21"))["models"]["bundle"]
    assert b["ready"] is True, b["problems"]
    assert len(b["checkpoints"]["diffusion_model"]["md5"]) == 32
    assert b["checkpoints"]["diffusion_model"]["md5_matches"] is False  # random weights, not the published file
    assert b["checkpoints"]["autoencoder"]["path"] == str(bundle / "models" / "autoencoder.pt")
    assert b["checkpoints"]["diffusion_model"]["path"] == str(bundle / "models" / "model.pt")
    assert b["checkpoints"]["diffusion_model"]["layout"] == "old GenerativeModels layout (as load_old says)"
    assert cli.main(["doctor", "--paper-dir", str(tmp_path / "no-paper"), "--model", str(bundle), "--text-encoder",
                     str(tmp_path / "sd21")]) == 0
    out = capsys.readouterr().out
    assert "bundle: READY" in out
    assert f"taken  {bundle / 'models' / 'model.pt'}: taken: named by configs/inference.json: load_diffusion_path" in out
    assert f"taken  {bundle / 'models' / 'autoencoder.pt'}" in out


@needs_monai
def test_unnamed_weights_are_told_apart_by_their_tensors(tmp_path):
    """A config whose weight entries say nothing (odd names, no loader entry): the tensors decide."""
    bundle = tmp_path / "b"
    nets = _scaled_copy("model-zoo", bundle)
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    for key in ("load_autoencoder_path", "load_diffusion_path", "load_autoencoder", "load_diffusion",
                "load_autoencoder_func", "load_diffusion_func"):
        config.pop(key)
    config["scheduler"]["_requires_"] = []
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    (bundle / "models" / "autoencoder.pt").rename(bundle / "models" / "first.pt")
    (bundle / "models" / "model.pt").rename(bundle / "models" / "second.pt")
    spec = read_bundle(bundle)
    assert spec.checkpoints == {"autoencoder": bundle / "models" / "first.pt",
                                "diffusion_model": bundle / "models" / "second.pt"}
    assert all("its tensors say" in c.why for c in spec.considered)
    del nets


# ------------------------------------------------------------------------------ nothing written to the store
@needs_monai
def test_a_read_only_bundle_loads_and_is_never_written(tmp_path, monkeypatch):
    bundle = tmp_path / "store" / "model-zoo"
    _scaled_copy("model-zoo", bundle)
    write_text_encoder(tmp_path / "sd21")
    writes: list[str] = []
    root = str(bundle)

    def audit(event, args):  # every attempt to write under the bundle, also where root would be allowed to
        if not watching or not args:
            return
        path = str(args[0]) if isinstance(args[0], (str, os.PathLike)) else ""
        if not path.startswith(root):
            return
        if event == "open" and len(args) > 1 and (any(c in str(args[1] or "") for c in "wax+")
                                                  or (isinstance(args[2], int) and args[2] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))):
            writes.append(f"{event} {path}")
        elif event in ("os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir", "os.truncate", "os.chmod",
                       "shutil.rmtree"):
            writes.append(f"{event} {path}")

    watching = False
    sys.addaudithook(audit)
    for p in [bundle, *bundle.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    watching = True
    try:
        before = _snapshot(bundle)
        first = load_model(bundle, text_encoder=tmp_path / "sd21", input_size=IMAGE)
        again = load_model(bundle, text_encoder=tmp_path / "sd21", input_size=IMAGE)
        assert first.info["conversion"]["from_cache"] is False and again.info["conversion"]["from_cache"] is True
        assert Path(first.info["conversion"]["cache"]).is_relative_to(os.environ["GROUNDIFF_CACHE_DIR"])
        none = load_model(bundle, text_encoder=tmp_path / "sd21", input_size=IMAGE, cache_dir=False)
        assert none.info["conversion"] == {"cache": None, "from_cache": False}
        assert _snapshot(bundle) == before and writes == []
        try:  # the guard itself sees a write (as root the chmod alone would not stop one)
            open(bundle / "probe.txt", "w").close()
        except PermissionError:
            pass
        assert writes == [f"open {bundle / 'probe.txt'}"]
        (bundle / "probe.txt").unlink(missing_ok=True)
    finally:
        watching = False
        for p in [bundle, *bundle.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)


@needs_monai
def test_the_cache_is_said_once_and_no_cache_writes_nothing(tmp_path, capsys, monkeypatch):
    bundle = tmp_path / "b"
    _scaled_copy("generative-models", bundle)
    write_text_encoder(tmp_path / "sd21")
    cache = tmp_path / "mycache"
    load_model(bundle, text_encoder=tmp_path / "sd21", input_size=IMAGE, cache_dir=cache)
    err = capsys.readouterr().err
    assert err.count(f"cached in {cache}/") == 1 and " MB)" in err
    load_model(bundle, text_encoder=tmp_path / "sd21", input_size=IMAGE, cache_dir=cache)
    assert "cached in" not in capsys.readouterr().err  # a cache hit says nothing
    empty = tmp_path / "untouched"
    monkeypatch.setenv("GROUNDIFF_CACHE_DIR", str(empty))
    from PIL import Image

    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "x.png")
    assert cli.main(["ground", "--model", str(bundle), "--text-encoder", str(tmp_path / "sd21"), "--no-cache",
                     "--image", str(tmp_path / "x.png"), "--phrase", "cardiomegaly", "--out", str(tmp_path / "m.npy"),
                     "--steps", "4", "--device", "cpu"]) == 0
    assert not empty.exists() and "cached in" not in capsys.readouterr().err


# ------------------------------------------------------------------------------ text encoder from the HF cache
def _hub_cache(cache: Path, repo: str = "stabilityai/stable-diffusion-2-1-base") -> Path:
    """The Hub cache layout: refs/main -> snapshots/<hash>/{text_encoder,tokenizer} (what `hf download` leaves)."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    commit = "5ede9e4bf3e3fd1cb0ef2f7a3fff13ee514fdf06"
    write_text_encoder(folder / "snapshots" / commit)
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    return folder / "snapshots" / commit


@pytest.fixture
def no_network(monkeypatch):
    """A socket guard: any connection attempt fails the test."""
    attempts: list = []

    def refuse(self, address, *a, **k):
        attempts.append(address)
        raise OSError(f"network access attempted: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda address, *a, **k: refuse(None, address))
    yield attempts
    assert attempts == []


@needs_monai
def test_text_encoder_from_the_hugging_face_cache_offline(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    snapshot = _hub_cache(tmp_path / "hub")
    bundle = tmp_path / "b"
    _scaled_copy("model-zoo", bundle)
    model = load_model(bundle, text_encoder="stabilityai/stable-diffusion-2-1-base", input_size=IMAGE)
    assert model.info["text_encoder"] == str(snapshot / "text_encoder")


def test_a_hub_id_missing_from_the_cache_names_the_cache(tmp_path, monkeypatch, no_network, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    (tmp_path / "hub").mkdir()
    bundle = tmp_path / "b"
    shutil.copytree(BUNDLES / "model-zoo" / "configs", bundle / "configs")
    from PIL import Image

    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "x.png")
    (bundle / "models").mkdir()
    for f in ("autoencoder.pt", "model.pt"):
        torch.save({"w": torch.zeros(1)}, bundle / "models" / f)
    rc = cli.main(["ground", "--model", str(bundle), "--text-encoder", "stabilityai/stable-diffusion-2-1-base",
                   "--image", str(tmp_path / "x.png"), "--phrase", "effusion", "--out", str(tmp_path / "m.npy")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "not in the Hugging Face cache" in err
    assert str(tmp_path / "hub" / "models--stabilityai--stable-diffusion-2-1-base") in err


@needs_monai
def test_a_full_stable_diffusion_folder_works_as_the_text_encoder(tmp_path):
    sd = tmp_path / "stable-diffusion-2-1-base"
    write_text_encoder(sd)
    (sd / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    (sd / "unet").mkdir()
    bundle = tmp_path / "b"
    _scaled_copy("generative-models", bundle)
    model = load_model(bundle, text_encoder=sd, input_size=IMAGE)
    assert model.info["text_encoder"] == str(sd / "text_encoder")


@needs_monai
def test_no_progress_silences_the_conversion_bar_too(tmp_path, capsys, monkeypatch):
    from PIL import Image

    bundle = tmp_path / "b"
    _scaled_copy("model-zoo", bundle)
    write_text_encoder(tmp_path / "sd21")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "x.png")
    monkeypatch.setenv("TQDM_DISABLE", "0")  # restored after the test (the command sets it for its process)
    capsys.readouterr()  # the fixture's own saving bars
    assert cli.main(["ground", "--model", str(bundle), "--text-encoder", str(tmp_path / "sd21"), "--no-progress",
                     "--image", str(tmp_path / "x.png"), "--phrase", "cardiomegaly", "--out", str(tmp_path / "m.npy"),
                     "--steps", "4", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "converting the MONAI checkpoints" not in err and "it/s" not in err and "%|" not in err
