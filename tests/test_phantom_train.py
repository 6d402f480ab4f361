"""The phantom training script: runs, resumes from its checkpoint, exports a loadable model."""

from __future__ import annotations

import json

import pytest

from groundiff_core.phantom.model import load_phantom
from groundiff_core.phantom.train import main as train


def test_train_resume_and_export(tmp_path):
    out = tmp_path / "run"
    args = ["--out", str(out), "--n-train", "6", "--vae-steps", "2", "--vae-batch", "2",
            "--unet-batch", "2", "--save-every", "1", "--export-every", "100"]
    assert train(args + ["--unet-steps", "2"]) == 0
    # a rerun with more steps continues from the checkpoint instead of starting over
    assert train(args + ["--unet-steps", "3"]) == 0
    log = [json.loads(line) for line in open(out / "train_log.jsonl")]
    assert sum(1 for r in log if r.get("stage") == "encode") == 1  # latents computed once
    meta = json.loads((out / "model" / "phantom.json").read_text())
    assert meta["unet_steps"] == 3 and meta["zero_padding"] is True
    model = load_phantom(out / "model")
    assert model.input_size == 128 and model.scale_factor == pytest.approx(meta["scale_factor"])


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
