"""The phrase prior: image-blind, deterministic, a small file with a fingerprint, cross-fitted by image."""

from __future__ import annotations

import json

import numpy as np
import pytest

from groundiff_core.io.datasets import load_dataset
from groundiff_core.io.datasets.common import GroundingPair
from groundiff_core.methods.prior import CrossFittedPrior, PhrasePrior, image_key, normalised_boxes
from groundiff_core.phantom.generator import write_phantom_set

EXAMPLES = [
    ("left pleural effusion", [[0.6, 0.7, 0.3, 0.2]]),
    ("small left pleural effusion", [[0.55, 0.65, 0.35, 0.25]]),
    ("right pleural effusion", [[0.1, 0.7, 0.3, 0.2]]),
    ("cardiomegaly", [[0.4, 0.5, 0.3, 0.3]]),
    ("bibasilar atelectasis", [[0.1, 0.75, 0.3, 0.1], [0.6, 0.75, 0.3, 0.1]]),
]


def _prior(k: int = 1, examples=EXAMPLES) -> PhrasePrior:
    return PhrasePrior([(p, np.array(b)) for p, b in examples], k=k, grid=100)


def test_maps_never_depend_on_the_pixels_only_on_the_size():
    prior = _prior(k=2)
    rng = np.random.default_rng(0)
    a, b = rng.random((50, 40)).astype(np.float32), np.zeros((50, 40), np.float32)
    ma = prior.ground(a, ["left pleural effusion", "cardiomegaly"]).heatmaps
    mb = prior.ground(b, ["left pleural effusion", "cardiomegaly"]).heatmaps
    assert ma.shape == (2, 50, 40)
    np.testing.assert_array_equal(ma, mb)
    assert prior.ground(np.zeros((30, 60), np.float32), "cardiomegaly").heatmaps.shape == (1, 30, 60)


def test_a_phrase_seen_once_gets_its_own_box_and_a_new_phrase_its_nearest():
    prior = _prior(k=1)
    m = prior.prior("cardiomegaly", 100, 100)
    expected = np.zeros((100, 100), np.float32)
    expected[50:80, 40:70] = 1  # (x, y, w, h) = (0.4, 0.5, 0.3, 0.3) of a 100 x 100 image
    np.testing.assert_array_equal(m, expected)
    # "moderate right pleural effusion" shares most words with "right pleural effusion"
    assert [prior.phrases[i] for i in prior.neighbours("moderate right pleural effusion")] == ["right pleural effusion"]
    right = prior.prior("moderate right pleural effusion", 100, 100)
    assert right[80, 20] == 1 and right[80, 80] == 0
    # a phrase sharing no word with any training phrase gets the mean of all of them
    assert len(prior.neighbours("pneumothorax")) == len(EXAMPLES)


def test_ties_are_all_taken_so_the_training_order_never_matters():
    dup = EXAMPLES + [("cardiomegaly", [[0.0, 0.0, 0.2, 0.2]])]
    a = _prior(k=1, examples=dup).prior("cardiomegaly", 64, 64)
    b = _prior(k=1, examples=dup[::-1]).prior("cardiomegaly", 64, 64)
    np.testing.assert_array_equal(a, b)
    # k = 1, yet both "cardiomegaly" pairs are neighbours (a tie), averaged with equal weight
    assert a[5, 5] == 1 and a[40, 35] == 1 and a[20, 60] == 0


def test_save_load_round_trip_and_the_fingerprint_follows_the_content(tmp_path):
    prior = _prior(k=3)
    path = prior.save(tmp_path / "prior.json")
    again = PhrasePrior.load(path)
    assert again.fingerprint == prior.fingerprint and again.describe() == prior.describe()
    np.testing.assert_array_equal(again.prior("left effusion", 40, 40), prior.prior("left effusion", 40, 40))
    assert path.stat().st_size < 5_000
    moved = _prior(k=3, examples=EXAMPLES[:-1] + [("bibasilar atelectasis", [[0.1, 0.8, 0.3, 0.1]])])
    assert moved.fingerprint != prior.fingerprint
    assert _prior(k=4).fingerprint != prior.fingerprint


@pytest.mark.parametrize("content,match", [
    (b"\x00\x01garbage", "is not a phrase prior file"),
    (json.dumps({"format": "something else"}).encode(), "is not a phrase prior file"),
    (json.dumps({"format": "groundiff-phrase-prior", "version": 99}).encode(), "version 99"),
    (json.dumps({"format": "groundiff-phrase-prior", "version": 1, "k": 3}).encode(), "malformed"),
])
def test_a_file_that_is_not_a_prior_is_refused_by_name(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as e:
        PhrasePrior.load(path)
    assert "bad.json" in str(e.value)
    with pytest.raises(FileNotFoundError, match="phrase prior not found"):
        PhrasePrior.load(tmp_path / "missing.json")


@pytest.mark.parametrize("kwargs,match", [({"k": 0}, "k must be"), ({"k": 2.5}, "k must be"),
                                          ({"grid": 3}, "grid must be"), ({"k": True}, "k must be")])
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PhrasePrior([(p, np.array(b)) for p, b in EXAMPLES], **kwargs)


def test_bad_training_pairs_are_refused():
    with pytest.raises(ValueError, match="at least one training pair"):
        PhrasePrior([("", np.array([[0, 0, 1, 1]]))])
    with pytest.raises(ValueError, match="positive size"):
        PhrasePrior([("edema", np.array([[0.1, 0.1, 0.0, 0.2]]))])


def test_fit_normalises_by_the_annotated_size():
    pairs = [GroundingPair("a", "x.png", "edema", "edema", [[10, 20, 30, 40]], image_size=(200, 100))]
    prior = PhrasePrior.fit(pairs, k=1)
    np.testing.assert_allclose(prior.boxes[0], [[0.1, 0.1, 0.3, 0.2]])
    np.testing.assert_allclose(normalised_boxes([[10, 20, 30, 40]], 200, 100), [[0.1, 0.1, 0.3, 0.2]])


@pytest.fixture(scope="module")
def phantom_pairs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phantoms")
    return load_dataset("phantom", write_phantom_set(folder, 12, split="val", progress=False))


def test_cross_fitting_never_scores_a_pair_with_a_prior_fitted_on_its_image(phantom_pairs):
    from groundiff_core.io.datasets.common import group_by_image
    from groundiff_core.io.images import load_image

    cf = CrossFittedPrior.fit(phantom_pairs, folds=3, seed=0, k=5)
    assert sorted(set(cf.fold_of.values())) == [0, 1, 2]
    for path, grp in group_by_image(phantom_pairs).items():
        img = load_image(path)
        prior = cf.prior_for(img)
        fitted = {(p, json.dumps(b.tolist())) for p, b in zip(prior.phrases, prior.boxes)}
        for p in grp:
            own = (p.phrase, json.dumps(np.round(normalised_boxes(p.boxes, *p.image_size), 6).tolist()))
            assert own not in fitted, (path, p.phrase)
        # ... while every other fold's pairs are in it
        assert len(prior.phrases) == sum(1 for q in phantom_pairs
                                         if cf.fold_of[image_key(load_image(q.image_path))] != cf.fold_of[image_key(img)])
    maps = cf.ground(load_image(phantom_pairs[0].image_path), phantom_pairs[0].phrase)
    assert maps.info["cross_fit"] == {"folds": 3, "seed": 0}
    with pytest.raises(ValueError, match="was not among the images"):
        cf.ground(np.zeros((128, 128), np.float32), "edema")
    with pytest.raises(ValueError, match="folds must be"):
        CrossFittedPrior.fit(phantom_pairs, folds=1)


def test_the_prior_is_part_of_the_run_identity(phantom_pairs, tmp_path):
    from groundiff_core.evaluation import evaluate

    a = PhrasePrior.fit(phantom_pairs[:10], k=5)
    evaluate(a, phantom_pairs, tmp_path / "run", progress=False, n_boot=50)
    with pytest.raises(ValueError):
        evaluate(PhrasePrior.fit(phantom_pairs[:11], k=5), phantom_pairs, tmp_path / "run", progress=False, n_boot=50)
