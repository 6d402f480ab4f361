"""Table III's token mode: attention read from the class name's tokens only (the JBHI code's choice)."""

from __future__ import annotations

import numpy as np
import pytest

import groundiff_core as gd
from groundiff_core.engine.recording import word_positions
from groundiff_core.evaluation import metrics
from groundiff_core.methods.class_tokens import ClassNameTokens

CFG = gd.GroundingConfig.paper().with_steps(20)


@pytest.fixture(scope="module")
def grounder(tiny_v):
    return gd.Grounder(tiny_v, CFG)


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).random((40, 48), dtype=np.float32)


def test_word_positions_find_the_class_name_as_token_runs(tiny_v):
    tok = tiny_v.tokenizer
    n = len(tok("small left pleural effusion")["input_ids"])
    pos = word_positions(tok, "small left pleural effusion", "Pleural Effusion")
    assert pos and all(1 <= i <= n - 2 for i in pos)
    rest = word_positions(tok, "small left pleural effusion", "pleural")
    assert set(rest) < set(pos)  # one word of two: a strict part of the positions
    assert word_positions(tok, "enlarged heart", "cardiomegaly") == []  # the class name is absent


def test_all_positions_give_the_plain_maps_and_one_position_the_token_map(grounder, image):
    phrase = "left pleural effusion"
    n = grounder.check_phrases([phrase])[0]
    plain = grounder.ground(image, [phrase]).heatmaps
    every = grounder.ground_batch([image], [[phrase]], token_positions=[[list(range(1, n - 1))]])[0].heatmaps
    assert np.array_equal(np.isnan(plain), np.isnan(every))
    assert np.allclose(np.nan_to_num(plain), np.nan_to_num(every), atol=1e-6)
    one = grounder.ground_batch([image], [[phrase]], token_positions=[[[2]]])[0].heatmaps[0]
    token = grounder.ground_tokens(image, phrase).heatmaps[1]  # map 1 reads position 2
    assert np.allclose(np.nan_to_num(one), np.nan_to_num(token), atol=1e-6)
    assert not np.allclose(np.nan_to_num(one), np.nan_to_num(plain[0]), atol=1e-3)


def test_an_absent_class_name_gives_a_nan_map_that_scores_as_the_authors(grounder, image):
    method = ClassNameTokens(grounder, {"enlarged heart": "cardiomegaly", "left pleural effusion": "pleural effusion"})
    out = method.ground(image, ["enlarged heart", "left pleural effusion"])
    assert np.isnan(out.heatmaps[0]).all() and np.isfinite(out.heatmaps[1]).any()
    assert method.found["enlarged heart"] == [] and method.found["left pleural effusion"]
    scores = metrics.all_metrics(out.heatmaps[0], [(5, 5, 10, 10)])
    assert (scores["miou"], scores["auc"], scores["cnr_abs"]) == (0.0, 0.5, 0.0)
    assert out.info["method"] == "class-name tokens"


def test_bad_inputs_are_refused_by_name(grounder, image):
    with pytest.raises(ValueError, match="no class name for phrase 'mild edema'"):
        ClassNameTokens(grounder, {}).ground(image, ["mild edema"])
    with pytest.raises(ValueError, match="outside its tokens"):
        grounder.ground_batch([image], [["mild edema"]], token_positions=[[[40]]])
    with pytest.raises(ValueError, match=r"image 0: 2 phrases but 1 position lists"):  # misaligned, same total
        grounder.ground_batch([image, image], [["mild edema", "cardiomegaly"], ["mild edema"]],
                              token_positions=[[[1]], [[1], [1]]])
    with pytest.raises(ValueError, match="1 phrases but 2 position lists"):
        grounder.ground_batch([image], [["mild edema"]], token_positions=[[[1], [1]]])
    with pytest.raises(ValueError, match="1 images but 2 position lists"):
        grounder.ground_batch([image], [["mild edema"]], token_positions=[[[1]], [[1]]])


def test_a_batch_of_images_gives_the_maps_of_one_image_at_a_time(tiny_v):
    rng = np.random.default_rng(1)
    images = [rng.random((40, 48), dtype=np.float32), rng.random((44, 40), dtype=np.float32)]
    phrases = [["enlarged heart", "left pleural effusion"], ["mild edema"]]
    class_of = {"enlarged heart": "cardiomegaly", "left pleural effusion": "pleural effusion", "mild edema": "edema"}
    one = ClassNameTokens(gd.Grounder(tiny_v, CFG, batch_size=1), class_of)
    two = ClassNameTokens(gd.Grounder(tiny_v, CFG, batch_size=2), class_of)
    singles = [one.ground(im, ph).heatmaps for im, ph in zip(images, phrases)]
    batched = [h.heatmaps for h in two.ground_batch(images, phrases)]
    for a, b in zip(singles, batched):
        assert np.array_equal(np.isnan(a), np.isnan(b))
        assert np.allclose(np.nan_to_num(a), np.nan_to_num(b), atol=1e-6)
    assert np.isnan(batched[0][0]).all() and np.isfinite(batched[1]).any()


def test_the_run_identity_names_the_model_as_the_grounders_does(grounder):
    from groundiff_core.evaluation.identity import method_identity

    mine, plain = method_identity(ClassNameTokens(grounder, {})), method_identity(grounder)
    assert mine["model"] == plain["model"] and mine["config"] == plain["config"]
    assert mine["method"] == "class-name tokens" and mine != plain
