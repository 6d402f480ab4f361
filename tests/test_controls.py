"""The image-shuffle control and the paired comparison that reads it."""

from __future__ import annotations

import numpy as np
import pytest

from groundiff_core.evaluation import evaluate, load_results
from groundiff_core.evaluation.compare import class_averaged_ci, paired_difference
from groundiff_core.evaluation.controls import CONTROL, derangement, shuffled_pairs
from groundiff_core.heatmaps import Heatmaps
from groundiff_core.io.datasets import load_dataset
from groundiff_core.io.datasets.common import GroundingPair
from groundiff_core.io.images import load_image
from groundiff_core.phantom.generator import write_phantom_set


@pytest.mark.parametrize("n", [2, 3, 10, 101])
def test_derangement_moves_every_image_and_is_seeded(n):
    for seed in range(5):
        p = derangement(n, seed)
        assert sorted(p) == list(range(n)) and not (p == np.arange(n)).any()
        np.testing.assert_array_equal(p, derangement(n, seed))
    if n > 3:
        assert any(not np.array_equal(derangement(n, 0), derangement(n, s)) for s in range(1, 5))
    with pytest.raises(ValueError, match="at least 2 images"):
        derangement(1)


def test_shuffled_pairs_keep_ids_and_map_boxes_to_the_other_image():
    pairs = [GroundingPair("a", "one.png", "left effusion", "pleural effusion", [[10, 20, 30, 40]], image_size=(100, 200)),
             GroundingPair("b", "one.png", "edema", "edema", [[0, 0, 10, 10]], image_size=(100, 200)),
             GroundingPair("c", "two.png", "cardiomegaly", "cardiomegaly", [[50, 50, 20, 20]], image_size=(400, 100))]
    moved = {p.pair_id: p for p in shuffled_pairs(pairs, seed=0)}
    assert str(moved["a"].image_path) == "two.png" and str(moved["c"].image_path) == "one.png"
    assert moved["a"].image_size == (400, 100) and moved["a"].extra["shuffled_from"] == "one.png"
    np.testing.assert_allclose(moved["a"].boxes, [[5, 80, 15, 160]])  # x, w halve; y, h quadruple
    np.testing.assert_allclose(moved["c"].boxes, [[100, 12.5, 40, 5]])
    assert moved["b"].phrase == "edema" and moved["b"].category == "edema"


class _Brightness:
    """Reads only the image (the heatmap is the image): what such a method finds, the shuffle takes away."""

    name = "brightness"

    def describe(self):
        return {"method": self.name}

    def ground(self, image, phrases):
        phrases = [phrases] if isinstance(phrases, str) else list(phrases)
        img = load_image(image)
        return Heatmaps(np.repeat(img[None], len(phrases), axis=0), phrases, None)


@pytest.fixture(scope="module")
def phantom_pairs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phantoms")
    return load_dataset("phantom", write_phantom_set(folder, 24, split="val", progress=False))


def test_an_image_blind_method_loses_nothing_and_an_image_reader_loses(phantom_pairs, tmp_path):
    from groundiff_core.methods.prior import PhrasePrior

    moved = shuffled_pairs(phantom_pairs, seed=3)
    assert [p.pair_id for p in moved] == [p.pair_id for p in phantom_pairs]
    assert all(m.image_path != p.image_path for m, p in zip(moved, phantom_pairs))
    prior = PhrasePrior.fit(phantom_pairs, k=10)
    for name, method in (("prior", prior), ("bright", _Brightness())):
        evaluate(method, phantom_pairs, tmp_path / name, progress=False, n_boot=100)
        evaluate(method, moved, tmp_path / f"{name}-shuffled", dataset={"control": CONTROL}, progress=False, n_boot=100)
    own, shuf = load_results(tmp_path / "prior"), load_results(tmp_path / "prior-shuffled")
    d = paired_difference(own, shuf, "auc", n_boot=200)
    assert d["difference"] == pytest.approx(0.0, abs=1e-12) and not d["separated"]
    own, shuf = load_results(tmp_path / "bright"), load_results(tmp_path / "bright-shuffled")
    d = paired_difference(own, shuf, "auc", n_boot=200)
    assert d["difference"] > 0.05 and d["separated"] and d["n_pairs"] == len(phantom_pairs)
    # the same seed moves the same way; the summary interval is where the figure is
    again = shuffled_pairs(phantom_pairs, seed=3)
    assert [str(p.image_path) for p in again] == [str(p.image_path) for p in moved]
    ci = class_averaged_ci(own, "auc", n_boot=200)
    assert ci["ci_low"] <= ci["mean"] <= ci["ci_high"] and ci["n_pairs"] == len(phantom_pairs)


def test_cli_phrase_prior_and_image_shuffle(tmp_path, capsys):
    from groundiff_core.cli import main

    csv = write_phantom_set(tmp_path / "data", 6, split="val", progress=False)
    prior_file = tmp_path / "prior.json"
    from groundiff_core.methods.prior import PhrasePrior

    PhrasePrior.fit(load_dataset("phantom", csv), k=3).save(prior_file)
    base = ["evaluate", "--method", "phrase-prior", "--dataset", "phantom", "--csv", str(csv), "--no-progress",
            "--bootstrap", "50", "--prior", str(prior_file)]
    assert main(base + ["--out", str(tmp_path / "own")]) == 0
    assert main(base + ["--out", str(tmp_path / "shuf"), "--control", "image-shuffle"]) == 0
    own, shuf = load_results(tmp_path / "own"), load_results(tmp_path / "shuf")
    assert {r["pair_id"] for r in own} == {r["pair_id"] for r in shuf}
    assert all(a["image_path"] != b["image_path"] for a, b in
               zip(sorted(own, key=lambda r: r["pair_id"]), sorted(shuf, key=lambda r: r["pair_id"])))
    import json

    run = json.loads((tmp_path / "shuf" / "run.json").read_text())
    assert run["identity"]["dataset"]["control"] == {"name": "image-shuffle", "seed": 0}
    # cross-fitted when neither a file nor a training CSV is given (any layout but the phantom's own)
    assert main(["evaluate", "--method", "phrase-prior", "--dataset", "mscxr", "--csv", str(csv), "--images",
                 str(tmp_path / "data"), "--no-progress", "--bootstrap", "50", "--prior-folds", "3",
                 "--out", str(tmp_path / "cf")]) == 0
    assert json.loads((tmp_path / "cf" / "run.json").read_text())["identity"]["method"]["cross_fit"]["folds"] == 3
    capsys.readouterr()
    assert main(["evaluate", "--method", "centre", "--dataset", "phantom", "--csv", str(csv), "--prior", str(prior_file),
                 "--out", str(tmp_path / "x")]) == 2
    assert "apply to --method phrase-prior" in capsys.readouterr().err
