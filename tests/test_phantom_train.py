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
