"""The helpers a run's identity and its summary are made of: content fingerprints
(util.fingerprint) and the environment report (util.environment)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from groundiff_core.evaluation.identity import diff_paths, same_run
from groundiff_core.util import environment
from groundiff_core.util.fingerprint import file_sha256, json_sha256, jsonable, weights_sha256

ROOT = Path(__file__).resolve().parents[1]


def test_fingerprints_depend_on_content_only(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "sub" / "b.bin"
    b.parent.mkdir()
    a.write_bytes(b"\x00weights\xff" * 1000)
    b.write_bytes(a.read_bytes())
    assert file_sha256(a) == file_sha256(b) == hashlib.sha256(a.read_bytes()).hexdigest()
    with pytest.raises(OSError):
        file_sha256(tmp_path / "missing")
    # canonical JSON: key order and tuple/list or numpy/python spelling do not matter
    assert json_sha256({"x": (1, 2), "y": np.float32(0.5)}) == json_sha256({"y": 0.5, "x": [1, 2]})
    assert jsonable({"n": np.int64(3), "v": float("nan"), "a": np.arange(2)}) == {"n": 3, "v": None, "a": [0, 1]}


def test_weights_fingerprint_sees_every_tensor():
    import torch

    net = torch.nn.Linear(3, 2)
    same = torch.nn.Linear(3, 2)
    same.load_state_dict(net.state_dict())
    assert weights_sha256([("unet", net), ("vae", None)]) == weights_sha256([("unet", same)])
    with torch.no_grad():
        same.bias[0] += 1e-6
    assert weights_sha256([("unet", net)]) != weights_sha256([("unet", same)])
    assert weights_sha256([("unet", net)]) != weights_sha256([("vae", net)])  # the part is named


def test_identities_compare_and_name_their_differences():
    old = {"method": {"method": "Grounder", "class": "Grounder"}, "data": {"pairs": 3}, "shard": [0, 1]}
    new = {"method": {"method": "Grounder", "class": "Grounder"}, "data": {"pairs": 4}, "shard": [0, 1]}
    assert same_run(old, new, ignore=("data",)) and not same_run(old, new)
    assert diff_paths(old, new) == ["data.pairs"]
    moved = {**new, "method": {"method": "Grounder", "class": "groundiff_core.grounder.Grounder"}}
    assert diff_paths(new, moved) == ["method.class"]  # a class is named without its module, never compared by suffix
    other = {**new, "method": {"method": "Grounder", "class": "Other"}, "shard": [1, 2]}
    assert diff_paths(new, other, ignore=("shard",)) == ["method.class"]
    assert diff_paths(new, other) == ["method.class", "shard"]


def test_environment_report():
    v = environment.versions(("numpy", "surely-not-an-installed-package"))
    assert v["python"] and v["numpy"] == np.__version__ and v["surely-not-an-installed-package"] is None
    hw = environment.hardware()
    assert hw["cpu"] and hw["cpu_count"] >= 1 and hw["cpu_threads"] >= 1
    assert isinstance(hw["cuda_devices"], list) and (hw["gpu"] is None) == (not hw["cuda_devices"])
    json.dumps(hw)
    state = environment.git_state(ROOT)
    if state["commit"] is not None:  # a git checkout (not an unpacked sdist)
        assert len(state["commit"]) == 40 and isinstance(state["dirty"], bool)


def test_git_state_outside_a_checkout(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert environment.git_state(tmp_path) == {"commit": None, "dirty": None}
