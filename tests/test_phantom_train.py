"""The phantom training script: runs, resumes from its checkpoint, is deterministic, exports the shipped layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import groundiff_core as gd
from groundiff_core.phantom.generator import SPLIT_SEEDS, SPLIT_SPAN, TRAIN_BLOCK, train_seeds
from groundiff_core.phantom.model import WEIGHTS_DIR, load_phantom
from groundiff_core.phantom.train import main as train

pytestmark = pytest.mark.slow  # trains small models


ARGS = ["--n-train", "6", "--vae-steps", "2", "--vae-batch", "2", "--unet-batch", "2", "--save-every", "1",
        "--export-every", "100"]


def _tensors(folder):
    from safetensors.torch import load_file

    return {f"{part}.{k}": v for part in ("unet", "vae", "text_encoder")
            for k, v in load_file(str(next((folder / part).glob("*.safetensors")))).items()}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run trained for 2 steps, then rerun with 3 (shared by the tests below: each run costs a while)."""
    out = tmp_path_factory.mktemp("train") / "run"
    args = ["--out", str(out)] + ARGS
    assert train(args + ["--unet-steps", "2"]) == 0
    assert train(args + ["--unet-steps", "3"]) == 0
    return out


def test_train_resume_and_export(run):
    out = run
    # the rerun with more steps continued from the checkpoint instead of starting over
    log = [json.loads(line) for line in open(out / "train_log.jsonl")]
    assert sum(1 for r in log if r.get("stage") == "encode") == 1  # latents computed once
    meta = json.loads((out / "model" / "phantom.json").read_text())
    assert meta["unet_steps"] == 3 and meta["zero_padding"] is True
    # ... and really trains the third step: the exported (EMA) weights moved on from step 2's
    before, after = _tensors(out / "model-00002"), _tensors(out / "model")
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("unet."))
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("vae."))
    model = load_phantom(out / "model")
    assert model.input_size == 128 and model.scale_factor == meta["scale_factor"]
    assert model.info["train_steps"] == 3


def test_training_is_deterministic_for_a_seed(run, tmp_path):
    """The same command run again exports the same tensors (EMA, noise, learning rate: all seeded)."""
    assert train(["--out", str(tmp_path / "again"), "--unet-steps", "2"] + ARGS) == 0
    a, b = _tensors(run / "model-00002"), _tensors(tmp_path / "again" / "model")
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_export_is_the_shipped_layout(run):
    """The exported folder has every file the shipped one has, and loads like it on both routes."""
    out = run
    shipped = {p.relative_to(WEIGHTS_DIR) for p in WEIGHTS_DIR.rglob("*") if p.is_file()}
    exported = {p.relative_to(out / "model") for p in (out / "model").rglob("*") if p.is_file()}
    assert shipped - {Path("MODEL_CARD.md"), Path("evaluation.json")} == exported
    index = json.loads((out / "model" / "model_index.json").read_text())
    assert index == {**json.loads((WEIGHTS_DIR / "model_index.json").read_text()),
                     "_diffusers_version": index["_diffusers_version"]}
    scheduler = json.loads((out / "model" / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler == {**json.loads((WEIGHTS_DIR / "scheduler" / "scheduler_config.json").read_text()),
                         "_diffusers_version": scheduler["_diffusers_version"]}
    generic, own = gd.load_model(str(out / "model")), load_phantom(out / "model")
    for key in ("name", "input_size", "input_range", "image_channels", "scale_factor", "zero_padding", "schedule"):
        assert getattr(generic, key) == getattr(own, key), key
    assert own.scale_factor == json.loads((out / "model" / "phantom.json").read_text())["scale_factor"]
    theirs = generic.unet.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in own.unet.state_dict().items())


@pytest.mark.parametrize("seed", [0, 1, 9, 10, 11, 19, 20, 21, 29, 30, 31, 999, 123_456])
def test_training_seeds_never_reach_the_validation_or_test_phantoms(seed):
    """Whatever ``--seed``, a full block of training phantoms misses the val and test seed ranges."""
    reserved = [range(SPLIT_SEEDS[s], SPLIT_SEEDS[s] + SPLIT_SPAN) for s in ("val", "test")]
    seeds = train_seeds(seed, TRAIN_BLOCK)
    assert len(seeds) == TRAIN_BLOCK and seeds.start >= 0
    for r in reserved:
        assert seeds.stop <= r.start or seeds.start >= r.stop, (seed, seeds, r)
    # neighbouring seeds take neighbouring, disjoint blocks
    nxt = train_seeds(seed + 1, TRAIN_BLOCK)
    assert seeds.stop <= nxt.start


def test_training_seeds_of_the_shipped_model_and_bad_seeds():
    assert train_seeds(0, 6000) == range(0, 6000)  # the shipped model's data
    with pytest.raises(ValueError, match=">= 0"):
        train_seeds(-1, 10)
    with pytest.raises(ValueError, match="between 1 and"):
        train_seeds(0, TRAIN_BLOCK + 1)


def test_a_negative_seed_is_refused_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        train(["--out", str(tmp_path / "run"), "--seed", "-1"])
    assert exc.value.code == 2 and "--seed -1" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_missing_weights_say_how_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="phantom model not found.*phantom.train"):
        load_phantom(tmp_path)


@pytest.mark.parametrize("flags, message", [
    (["--unet-channels", "16,32"], "need 3 values"),
    (["--unet-channels", "16,30,64"], "multiples of 16"),
    (["--unet-heads", "1,3,4"], "divide into its heads"),
    (["--vae-channels", "12,32"], "multiples of 8"),
])
def test_bad_architecture_is_refused_with_a_clear_message(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exc:
        train(["--out", str(tmp_path / "run")] + flags)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before any work


def test_cuda_without_a_gpu_is_refused(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        train(["--out", str(tmp_path / "run"), "--device", "cuda"])
    assert "no CUDA device" in capsys.readouterr().err
