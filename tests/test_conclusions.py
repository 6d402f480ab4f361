"""'What this page shows' follows the numbers: change one and the sentence changes; too few pairs, no verdict."""

from __future__ import annotations

import copy
import json

from groundiff_core.book import conclusions


def _diff(d, lo, hi, n):
    return {"difference": d, "ci_low": lo, "ci_high": hi, "n_pairs": n, "separated": lo > 0 or hi < 0}


MAIN = {"paired_differences": {
    "cross-attention minus phrase prior": {"miou": _diff(-0.06, -0.07, -0.05, 428), "auc": _diff(0.01, -0.01, 0.03, 428)},
    "own image minus another image": {"miou": _diff(0.02, 0.01, 0.03, 428)}},
    "summaries": {"cross-attention (paper preset)": {"n_pairs": 428, "class_averaged": {
        "miou": {"mean": 0.088, "ci_low": 0.084, "ci_high": 0.093, "n": 428}}}}}


def test_the_main_table_verdicts_follow_the_intervals(tmp_path):
    text = conclusions.main_table_page(MAIN)
    assert "mIoU: cross-attention scores lower than the image-blind phrase prior (-0.060 [-0.070, -0.050] on 428 pairs)" in text
    assert "AUC-ROC: cross-attention is not separable from the image-blind phrase prior" in text
    assert "scores higher than on another image (the image-shuffle control)" in text
    flipped = copy.deepcopy(MAIN)
    flipped["paired_differences"]["cross-attention minus phrase prior"]["miou"] = _diff(0.06, 0.05, 0.07, 428)
    assert "mIoU: cross-attention scores higher than the image-blind phrase prior" in conclusions.main_table_page(flipped)
    path = tmp_path / "main_table.json"  # the file a page wrote reads the same
    path.write_text(json.dumps(MAIN))
    assert conclusions.main_table_page(path) == text


def test_too_few_pairs_give_no_verdict_and_no_interval():
    few = copy.deepcopy(MAIN)
    few["paired_differences"]["cross-attention minus phrase prior"]["miou"] = _diff(-0.06, -0.07, -0.05, 12)
    line = next(l for l in conclusions.main_table_page(few).splitlines() if l.startswith("* mIoU: cross-attention"))
    assert "too few pairs for a verdict (fewer than 30)" in line and "[" not in line and "scores" not in line


def test_the_ablation_bullets_read_otsu_and_table_iii_from_the_numbers():
    m = {"postprocessing": {"mIoU": {"Gaussian + Otsu (paper)": 0.10, "Gaussian only": 0.08}},
         "table_iii": {"difference": {"miou": _diff(-0.015, -0.023, -0.008, 240)}},
         "paired_vs_paper_code": {"auc_difference": {"cell": [11, 100], **_diff(0.01, 0.004, 0.02, 200)}}}
    text = conclusions.ablation_page(m)
    assert "Otsu's threshold raises the class-averaged mIoU (0.080 without, 0.100 with" in text
    assert "Table III, mIoU: attention on the class name's tokens scores lower than attention on all phrase tokens" in text
    assert "AUC-ROC: the grid's highest-mean cell (L = 11, T = 100 %) scores higher than the paper code's" in text
    m["postprocessing"]["mIoU"]["Gaussian only"] = 0.12
    assert "Otsu's threshold lowers the class-averaged mIoU" in conclusions.ablation_page(m)


def test_the_walkthrough_says_whether_the_own_phrase_wins():
    m = {"pair": {"phrase": "a"}, "metrics": {"a": {"miou": 0.3, "auc": 0.7}, "b": {"miou": 0.1, "auc": 0.8}}}
    text = conclusions.method_page(m)
    assert "mIoU: the phrase's own map scores 0.300 against its boxes; the highest" in text
    assert "AUC-ROC: the phrase's own map scores 0.700 against its boxes; 'b' scores higher (0.800)" in text


def test_every_page_reads_its_metrics_file(tmp_path):
    """The notebooks pass the path ``pages.save_json`` returned; a page with nothing scored says so."""
    path = tmp_path / "page.json"
    path.write_text("{}")
    for page in (conclusions.method_page, conclusions.main_table_page, conclusions.ablation_page,
                 conclusions.failure_page, conclusions.captum_page):
        assert page(path) == "No pair was scored on this page.", page.__name__


def test_the_captum_bullets_follow_the_paired_differences():
    m = {"highest_mean_captum": "occlusion", "difference_to_cross_attention": {
        "occlusion": {"auc": _diff(0.05, 0.02, 0.08, 200), "miou": _diff(-0.01, -0.03, 0.01, 200)},
        "saliency": {"auc": _diff(-0.2, -0.3, -0.1, 200), "miou": _diff(-0.05, -0.07, -0.03, 200)}}}
    text = conclusions.captum_page(m)
    assert "highest mean class-averaged AUC-ROC is occlusion" in text
    assert "AUC-ROC: occlusion scores higher than cross-attention (+0.050 [+0.020, +0.080] on 200 pairs)" in text
    assert "mIoU: occlusion is not separable from cross-attention" in text
    m["difference_to_cross_attention"]["occlusion"]["auc"] = _diff(-0.05, -0.08, -0.02, 200)
    assert "AUC-ROC: occlusion scores lower than cross-attention" in conclusions.captum_page(m)
    m["difference_to_cross_attention"]["occlusion"]["auc"] = _diff(-0.05, -0.08, -0.02, 2)
    few = conclusions.captum_page(m)
    assert "too few pairs for a verdict (fewer than 30)" in few and "-0.080" not in few
