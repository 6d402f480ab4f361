"""Loading fails loudly and helpfully: missing files, wrong architecture, leftover or missing tensors,
unsafe pickles, unknown options, and never a download unless asked."""

from __future__ import annotations

import argparse

import pytest
import torch
from test_loading_support import AE_KW, UNET_KW, load_scaled_paper, to_generative_layout, write_paper_dir

from groundiff_core.models.loading import (MissingWeightsError, StateDictMismatchError, UnsafeCheckpointError,
                                    UnsupportedArchitectureError, load_model)
from groundiff_core.models.loading.checkpoints import read_state_dict
from groundiff_core.models.loading.monai_unet import MonaiUNetConfig, convert_unet

from _testdata import needs_monai  # noqa: E402


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test if anything tries to download from the Hugging Face Hub."""
    import huggingface_hub

    def refuse(*a, **k):
        raise AssertionError("attempted a download")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)


@pytest.fixture(scope="module")
def unet_state():
    pytest.importorskip("monai")
    pytest.importorskip("einops")
    from test_loading_support import monai_unet

    return monai_unet().state_dict()


# ---------------------------------------------------------------------------- missing files
def test_missing_paper_files_say_what_where_and_how(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("GROUNDIFF_PAPER_DIR", str(tmp_path / "nothing-here"))
    with pytest.raises(MissingWeightsError) as err:
        load_model("paper")
    text = str(err.value)
    for needle in ("autoencoder.pth", "diffusion_model.pth", "text_encoder", "tokenizer",
                   "cxr_image_synthesis_latent_diffusion_model", "stabilityai/stable-diffusion-2-1-base",
                   "physionet.org", str(tmp_path / "nothing-here"), "GROUNDIFF_PAPER_DIR", "allow_download"):
        assert needle in text
    assert isinstance(err.value, FileNotFoundError)


@needs_monai
def test_partly_missing_paper_files_are_marked(tmp_path, no_network):
    write_paper_dir(tmp_path / "p")
    (tmp_path / "p" / "models" / "autoencoder.pth").unlink()
    with pytest.raises(MissingWeightsError, match=r"MISSING\] autoencoder.pth"):
        load_scaled_paper(tmp_path / "p")
    with pytest.raises(MissingWeightsError, match=r"found  \] diffusion_model.pth"):
        load_scaled_paper(tmp_path / "p")


def test_unknown_sources_and_folders(tmp_path, no_network):
    with pytest.raises(FileNotFoundError, match="sources"):
        load_model(str(tmp_path / "does-not-exist"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_model(tmp_path / "empty")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        load_model(tmp_path / "file.txt")
    with pytest.raises(ValueError, match="model source"):
        load_model("")


def test_sd_folder_missing_a_component(tmp_path, no_network):
    from test_loading_support import write_sd_dir

    write_sd_dir(tmp_path / "sd")
    import shutil

    shutil.rmtree(tmp_path / "sd" / "text_encoder")
    with pytest.raises(FileNotFoundError, match="text_encoder"):
        load_model(tmp_path / "sd")


# ---------------------------------------------------------------------------- no downloads
def test_hub_ids_are_never_downloaded_without_permission(no_network):
    with pytest.raises(FileNotFoundError, match="allow_download=True"):
        load_model("stabilityai/stable-diffusion-2-1-base")


def test_offline_mode_blocks_even_permitted_downloads(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):
        load_model("someone/some-ldm", allow_download=True)
    monkeypatch.setenv("GROUNDIFF_PAPER_DIR", str(tmp_path / "paper"))
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):
        load_model("paper", allow_download=True)


# ---------------------------------------------------------------------------- unsafe or odd files
def test_pickles_needing_arbitrary_objects_are_refused(tmp_path):
    torch.save({"weight": torch.zeros(2), "args": argparse.Namespace(lr=1)}, tmp_path / "bad.pth")
    with pytest.raises(UnsafeCheckpointError, match="weights_only=True"):
        read_state_dict(tmp_path / "bad.pth")
    (tmp_path / "corrupt.pth").write_bytes(b"not a checkpoint" * 10)
    with pytest.raises(ValueError, match="corrupt"):
        read_state_dict(tmp_path / "corrupt.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="state dict"):
        read_state_dict(tmp_path / "list.pth")


def test_random_bytes_are_a_named_error_never_a_traceback(tmp_path):
    """About one random file in ten tripped IndexError / KeyError inside torch's unpickler."""
    import numpy as np

    rng = np.random.default_rng(0)
    for i in range(200):
        path = tmp_path / f"r{i}.pth"
        path.write_bytes(rng.integers(0, 256, 512, dtype=np.uint8).tobytes())
        with pytest.raises(ValueError, match=rf"r{i}.pth is not a readable PyTorch checkpoint"):
            read_state_dict(path)
    (tmp_path / "w.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(ValueError, match="w.safetensors is not a readable safetensors file"):
        read_state_dict(tmp_path / "w.safetensors")


def test_wrapped_and_data_parallel_state_dicts_are_unwrapped(tmp_path):
    sd = {"a.weight": torch.ones(2), "b.bias": torch.zeros(1)}
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, tmp_path / "w.pth")
    assert sorted(read_state_dict(tmp_path / "w.pth")) == sorted(sd)


# ---------------------------------------------------------------------------- wrong architecture
def test_wrong_architecture_names_the_first_mismatching_tensor(unet_state):
    """A checkpoint of another width: the error names the first tensor (checkpoint order) that differs."""
    from test_loading_support import monai_unet

    wider = monai_unet(channels=(32, 64, 128), num_head_channels=(0, 64, 128)).state_dict()
    first = next(k for k, v in wider.items() if v.shape != unet_state[k].shape)
    with pytest.raises(StateDictMismatchError) as err:
        convert_unet(wider, MonaiUNetConfig.from_dict(UNET_KW), sample_size=8)
    text = str(err.value)
    assert repr(first) in text and str(tuple(wider[first].shape)) in text and "unet_config" in text
    assert isinstance(err.value, ValueError)


def test_paper_defaults_do_not_fit_a_scaled_checkpoint(unet_state):
    with pytest.raises(StateDictMismatchError, match=r"'conv_in\.conv\.weight' has shape \(32, 3, 3, 3\)"):
        convert_unet(unet_state)  # the default configuration is the full-size paper UNet


def test_leftover_tensors_are_an_error(unet_state):
    state = dict(unet_state)
    state["extra.weight"] = torch.zeros(3)
    with pytest.raises(StateDictMismatchError, match="no place.*'extra.weight'"):
        convert_unet(state, MonaiUNetConfig.from_dict(UNET_KW), sample_size=8)


def test_missing_tensors_are_an_error_in_the_checkpoints_own_names(unet_state):
    old = to_generative_layout(unet_state, "unet")
    victim = next(k for k in old if k.endswith("attn2.to_out.0.weight"))
    del old[victim]
    with pytest.raises(StateDictMismatchError, match="missing") as err:
        convert_unet(old, MonaiUNetConfig.from_dict(UNET_KW), sample_size=8)
    assert repr(victim) in str(err.value)  # old GenerativeModels name, as in the user's file


@needs_monai
def test_autoencoder_mismatch_through_load_model(tmp_path):
    write_paper_dir(tmp_path / "p")
    ae = {k: v for k, v in AE_KW.items() if not k.startswith("with_")}
    with pytest.raises(StateDictMismatchError, match="autoencoder.*autoencoder_config"):
        load_model(tmp_path / "p", unet_config=UNET_KW, autoencoder_config={**ae, "latent_channels": 4},
                   input_size=64)


@needs_monai
def test_text_encoder_of_the_wrong_width(tmp_path):
    from test_loading_support import write_text_encoder

    write_paper_dir(tmp_path / "p")
    import shutil

    shutil.rmtree(tmp_path / "p" / "text_encoder")
    write_text_encoder(tmp_path / "p", hidden=64)
    with pytest.raises(ValueError, match="hidden size 64"):
        load_scaled_paper(tmp_path / "p")


def test_configurations_without_an_exact_equivalent_are_refused():
    with pytest.raises(UnsupportedArchitectureError, match="resblock_updown"):
        MonaiUNetConfig.from_dict({**UNET_KW, "resblock_updown": True}).to_diffusers()
    with pytest.raises(UnsupportedArchitectureError, match="num_head_channels"):
        MonaiUNetConfig.from_dict({**UNET_KW, "num_head_channels": (0, 48, 96)}).to_diffusers()
    with pytest.raises(UnsupportedArchitectureError, match="with_conditioning"):
        MonaiUNetConfig.from_dict({**UNET_KW, "with_conditioning": False}).to_diffusers()
    with pytest.raises(ValueError, match="unknown DiffusionModelUNet argument"):
        MonaiUNetConfig.from_dict({"chanels": (1, 2)})
    from groundiff_core.models.loading.monai_autoencoder import MonaiAutoencoderConfig

    with pytest.raises(UnsupportedArchitectureError, match="use_convtranspose"):
        MonaiAutoencoderConfig(use_convtranspose=True).validate()


# ---------------------------------------------------------------------------- options
def test_unknown_options_devices_and_dtypes(tmp_path):
    with pytest.raises(ValueError, match="allowed"):
        load_model("paper", input_sizee=512)
    with pytest.raises(ValueError, match="unknown dtype"):
        load_model("tiny", dtype="float8")
    with pytest.raises(ValueError, match="unknown device"):
        load_model("tiny", device="gpu-please")
    with pytest.raises(ValueError, match="text_encoder="):
        load_model("tiny", text_encoder=tmp_path)


def test_unknown_and_unrepresentable_words_are_named():
    from groundiff_core.models.text import unknown_words, unrepresentable, word_tokenizer

    tok = word_tokenizer(["left", "pleural", "effusion"])
    assert unrepresentable(tok, "left pleural effusion") is None
    why = unrepresentable(tok, "épanchement pleural")
    assert why is not None and "cannot represent" in why and "'épanchement'" in why
    assert unknown_words(tok, "left effusion") == []


def test_a_long_phrase_gives_only_our_error_and_vocabulary_warnings_come_once(tmp_path, capfd, recwarn):
    import numpy as np
    from PIL import Image

    from groundiff_core import cli
    from groundiff_core.models import text

    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "x.png")
    assert cli.main(["ground", "--model", "tiny", "--image", str(tmp_path / "x.png"), "--phrase",
                     " ".join(["effusion"] * 90), "--out", str(tmp_path / "m.npy")]) == 2
    err = capfd.readouterr().err.strip()
    assert err.splitlines() == [err.splitlines()[-1]] and "phrase 0 is too long: 92 tokens" in err  # one line

    text._WARNED.clear()
    assert cli.main(["ground", "--model", "tiny", "--image", str(tmp_path / "x.png"), "--phrase",
                     "basilar atelectasis", "--out", str(tmp_path / "m.npy"), "--steps", "4"]) == 0
    said = [w for w in recwarn if "'basilar' not in the model's closed vocabulary" in str(w.message)]
    assert len(said) == 1  # checked when counted and when encoded: said once


def test_a_corrupt_component_gives_our_error_without_torchs_pickle_warning(tmp_path, recwarn):
    import pickle

    import pytest

    from groundiff_core.models.loading import load_model
    from test_loading_support import write_sd_dir

    write_sd_dir(tmp_path / "sd")
    for f in (tmp_path / "sd" / "text_encoder").glob("*.safetensors"):
        f.unlink()
    with open(tmp_path / "sd" / "text_encoder" / "pytorch_model.bin", "wb") as fh:
        pickle.dump({"w": 1}, fh)
    recwarn.clear()
    with pytest.raises((ValueError, OSError)):
        load_model(tmp_path / "sd")
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]
