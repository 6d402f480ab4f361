"""Faults of phrases and tokenisation (``models.text``): characters the tokenizer cannot represent,
end tokens that would cut a phrase, words outside a closed vocabulary."""

from __future__ import annotations

import pytest

from _faults_support import assert_user_error, run_cli


def test_unknown_characters_are_refused_not_silently_cut(tmp_path, capsys, png):
    rc, err = run_cli(capsys, ["ground", "--model", "phantom", "--image", str(png), "--phrase",
                               "é pleural effusion", "--out", str(tmp_path / "m.npy"), "--steps", "4",
                               "--device", "cpu"])
    assert_user_error(rc, err, "ground", "'é pleural effusion'", "unknown characters: 'é'")
    assert not (tmp_path / "m.npy").exists()


@pytest.mark.parametrize("phrase,needle", [("left, pleural effusion", "','"), ("<|endoftext|> edema", "'|'")])
def test_the_engine_refuses_phrases_cut_by_an_end_token(phrase, needle):
    import groundiff_core as gd

    grounder = gd.Grounder(gd.load_model("tiny"), gd.GroundingConfig.paper().with_steps(10))
    with pytest.raises(ValueError, match=needle):
        grounder.check_phrases([phrase])
    with pytest.raises(ValueError, match=needle):  # also on the direct path to the text encoder
        grounder.model.encode_text([phrase])


def test_words_outside_a_closed_vocabulary_are_named_in_a_warning():
    import groundiff_core as gd

    model = gd.load_model("tiny")
    with pytest.warns(UserWarning, match="'effusions'.*closed vocabulary"):
        model.phrase_token_count("pleural effusions")
