"""The book's helpers on MS-CXR-shaped data, and the checks that make a notebook bug fail the fixture run.

``make book-fixture`` (run by ``.ci/run``) executes the five notebooks on ``tests/book_fixture.py``'s
dataset and bundle and then :func:`groundiff_core.book.check.check_book`; the tests here show that
the helpers the notebooks use get the MS-CXR cases right, that the old notebook code got them wrong
on this fixture, and that the check fails on what a broken notebook leaves behind.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from groundiff_core.book import runner
from groundiff_core.book.markdown import data_sources_markdown
from groundiff_core.book import check as bookcheck
from groundiff_core.book import pages as bookdata
from groundiff_core.evaluation.boxes import scored_boxes
from groundiff_core.evaluation.runner import PAPER_INPUT_SIZE
from groundiff_core.book import provenance
from groundiff_core.evaluation.compare import class_averaged_ci, paired_difference
from groundiff_core.util.phrases import side_of_phrase
from groundiff_core.evaluation import metrics

import book_fixture as fx


@pytest.fixture(scope="module")
def fixture_pairs(tmp_path_factory):
    from groundiff_core.io.datasets import load_dataset

    root = tmp_path_factory.mktemp("mscxr")
    fx.write_images(root / "images")
    csv = fx.write_csv(root / "ms_cxr.csv")
    return load_dataset("mscxr", csv, root / "images")


# --------------------------------------------------------------------------- class names and sides
def test_unrelated_finding_is_never_the_pairs_own_class_with_mscxr_names(fixture_pairs):
    cats = {p.category for p in fixture_pairs}
    assert "Pleural Effusion" in cats and "Cardiomegaly" in cats  # capitalised, as in MS-CXR
    for cat in cats:
        other = bookdata.unrelated_finding(cat)
        assert other != cat.lower(), cat
    # what notebook 4 used to do: a lower-case list compared with the capitalised class name
    old = {cat: next(c for c in ["cardiomegaly", "pneumothorax", "pleural effusion"] if c != cat) for cat in cats}
    assert old["Cardiomegaly"] == "cardiomegaly"  # the pair's own class: the bug this fixture exposes
    assert bookdata.unrelated_finding("cardiomegaly") == "pneumothorax"
    assert bookdata.unrelated_finding("PLEURAL_EFFUSION", ["pleural effusion", "edema"]) == "edema"
    with pytest.raises(ValueError, match="no candidate other than"):
        bookdata.unrelated_finding("Edema", ["edema", "EDEMA"])


def test_swap_sides_keeps_case_and_punctuation(fixture_pairs):
    assert bookdata.swap_sides("Left basilar opacity") == "Right basilar opacity"
    assert bookdata.swap_sides("right basilar opacity, small") == "left basilar opacity, small"
    assert bookdata.swap_sides("Right apical pneumothorax.") == "Left apical pneumothorax."
    assert bookdata.swap_sides("LEFT, right") == "RIGHT, left"
    assert bookdata.swap_sides("leftover rightward") == "leftover rightward"  # whole words only
    assert bookdata.swap_sides("bilateral edema") == "bilateral edema"
    # every fixture phrase that names one side gets a different variant (the old split/dict swap
    # returned "Left pleural effusion" and "Right apical pneumothorax." unchanged)
    sided = [p.phrase for p in fixture_pairs if side_of_phrase(p.phrase) in ("left", "right")]
    old = {"left": "right", "right": "left"}
    assert any(" ".join(old.get(w, w) for w in ph.split()) == ph for ph in sided)
    for ph in sided:
        swapped = bookdata.swap_sides(ph)
        assert swapped != ph
        assert side_of_phrase(swapped) == {"left": "right", "right": "left"}[side_of_phrase(ph)]


# --------------------------------------------------------------------------- boxes as the runner scores them
def test_scored_boxes_rescale_to_the_image_read_and_drop_what_the_crop_cuts(fixture_pairs):
    from groundiff_core.io.images import load_image

    by_phrase = {p.phrase: p for p in fixture_pairs}
    p = by_phrase["Left pleural effusion"]
    image = load_image(p.image_path)
    assert image.shape == (64, 80) and p.image_size == (128, 160)  # JPEG at half the CSV's size
    boxes, notes = scored_boxes(p, image.shape, 64)
    np.testing.assert_allclose(boxes, p.boxes / fx.SCALE)
    assert any("rescaled" in n for n in notes)
    # the raw CSV boxes (what notebooks 1 and 4 used to score) give other numbers on the same map
    hm = np.zeros(image.shape, np.float32)
    x, y, w, h = boxes[0].astype(int)
    hm[y:y + h, x:x + w] = 1.0
    assert metrics.miou(hm, boxes) > 0.9
    assert metrics.miou(hm, p.boxes) < 0.5

    two = by_phrase["right lung pneumonia"]  # its second box lies in the margin the centre crop cuts
    kept, notes = scored_boxes(two, image.shape, 64)
    assert len(two.boxes) == 2 and len(kept) == 1 and any("centre crop" in n for n in notes)
    strict, _ = scored_boxes(two, image.shape, 64, "strict")
    assert len(strict) == 2
    gone = by_phrase[fx.VANISHING]
    assert len(scored_boxes(gone, image.shape, 64)[0]) == 0
    scorable = bookdata.scorable_pairs(fixture_pairs, crop_size=64)
    assert gone not in scorable and len(scorable) == len(fixture_pairs) - 1


def test_scored_boxes_match_the_runner(fixture_pairs, tmp_path):
    from groundiff_core.methods.baselines import CentrePrior
    from groundiff_core.evaluation import evaluate, load_results
    from groundiff_core.io.images import load_image

    evaluate(CentrePrior(), fixture_pairs, tmp_path / "run", n_boot=10, progress=False)
    rows = {r["pair_id"]: r for r in load_results(tmp_path / "run")}
    for p in fixture_pairs:
        boxes, _ = scored_boxes(p, load_image(p.image_path).shape, PAPER_INPUT_SIZE)  # CentrePrior: the paper's 512 crop
        if len(boxes) == 0:
            assert rows[p.pair_id]["status"] == "skipped"
        else:
            np.testing.assert_allclose(np.asarray(rows[p.pair_id]["boxes"]), boxes.round(3))


# --------------------------------------------------------------------------- pair counts, images, references
def test_nested_count_never_means_every_pair_for_the_costly_method():
    assert bookdata.nested_count(20, 0) == 20  # -p n_pairs 0 used to run Captum on every pair
    assert bookdata.nested_count(20, 8) == 8
    assert bookdata.nested_count(0, 8) == 8
    assert bookdata.nested_count(0, 0) is None and bookdata.nested_count(None, None) is None
    with pytest.raises(ValueError, match=">= 0"):
        bookdata.nested_count(-1, 5)


def test_show_images_defaults_to_the_phantom_only():
    phantom = bookdata.BookData([], [], {"name": "phantom"})
    mscxr = bookdata.BookData([], [], {"name": "mscxr"})
    assert bookdata.resolve_show_images(None, phantom) is True
    assert bookdata.resolve_show_images(None, mscxr) is False
    assert bookdata.resolve_show_images("yes", mscxr) is True
    assert bookdata.resolve_show_images(False, phantom) is False
    with pytest.raises(ValueError, match="show_images"):
        bookdata.resolve_show_images("maybe", mscxr)
    from groundiff_core.book import figures

    image = np.random.default_rng(0).random((6, 7))
    assert figures.screen(image, True) is not None and np.array_equal(figures.screen(image, True), image)
    blank = figures.screen(image, False)
    assert blank.shape == image.shape and np.ptp(blank) == 0


def test_reference_table_puts_published_figures_beside_ours(tmp_path):
    summary = {"per_class": {"Pleural Effusion": {"miou": {"mean": 0.31}, "auc": {"mean": 0.8}},
                             "Edema": {"miou": {"mean": 0.2}}},
               "class_averaged": {"miou": {"mean": 0.25}, "auc": {"mean": 0.7}, "cnr_abs": {"mean": 1.1}}}
    csv = tmp_path / "ref.csv"
    csv.write_text("method,class,metric,value\npaper,pleural effusion,mIoU,0.4\npaper,average,AUC-ROC,0.75\n"
                   "BioViL,average,cnr,1.2\npaper,Pneumonia,miou,0.3\n")
    table = bookdata.reference_table(summary, csv)
    assert table.loc[("Pleural Effusion", "miou"), "this run"] == pytest.approx(0.31)
    assert table.loc[("Pleural Effusion", "miou"), "paper"] == pytest.approx(0.4)
    assert table.loc[("class average", "auc"), "this run"] == pytest.approx(0.7)
    assert table.loc[("class average", "cnr_abs"), "BioViL"] == pytest.approx(1.2)
    assert table.loc[("Pneumonia", "miou"), "this run"] is None or np.isnan(table.loc[("Pneumonia", "miou"), "this run"])
    bad = tmp_path / "bad.csv"
    bad.write_text("method,class,metric,value\npaper,average,dice,0.5\n")
    with pytest.raises(ValueError, match="unknown metric"):
        bookdata.reference_table(summary, bad)
    bad.write_text("method,class,value\n")
    with pytest.raises(ValueError, match="missing column"):
        bookdata.reference_table(summary, bad)


# --------------------------------------------------------------------------- provenance and the record
class _Model:
    name, input_size, device, dtype, info = "toy", 64, "cpu", "torch.float32", {"source": "toy"}


def test_provenance_box_says_what_the_page_ran_on(tmp_path):
    from types import SimpleNamespace

    data = bookdata.BookData(pairs=[], selected=[SimpleNamespace(category="Edema")] * 2
                             + [SimpleNamespace(category="Cardiomegaly")],
                             description={"name": "mscxr", "csv": "ms.csv", "pairs": 9, "selected": 3,
                                          "selection_seed": 0})
    prov = provenance.provenance(data, _Model(), conventions="paper", output_dir=tmp_path,
                               extra={"model": {"name": "toy", "weights_sha256": "ab" * 32, "input_size": 64}})
    assert prov["pairs_per_class"] == {"Cardiomegaly": 1, "Edema": 2}
    assert json.loads((tmp_path / "provenance.json").read_text())["dataset"]["name"] == "mscxr"
    assert prov["versions"]["python"] and prov["date"]
    md = provenance.provenance_markdown(prov)
    assert md.startswith("```{admonition} Computed on mscxr") and "Edema 2" in md and "abababab" in md
    assert "3 of 9 pairs" in md and "paper scoring conventions" in md
    assert "synthetic phantom" in provenance.provenance_markdown({**prov, "dataset": {"name": "phantom"}})


def test_data_sources_say_when_pages_ran_on_other_data():
    def nb(name):
        return {"profile": "quick", "status": "ok",
                "provenance": {"dataset": {"name": name, "csv": "ms.csv", "pairs": 5, "selected": 5},
                               "model": {"name": "m", "weights_sha256": "cd" * 32}}}

    only = data_sources_markdown({"notebooks": {"01_method": nb("phantom"), "02_main_table": nb("phantom")}})
    assert "Every notebook page of this build was computed on the synthetic phantom" in only
    mixed = data_sources_markdown({"notebooks": {"01_method": nb("phantom"), "02_main_table": nb("mscxr")}})
    assert "Every notebook page" not in mixed and "different data" in mixed and "mscxr" in mixed
    assert "| 02_main_table | mscxr (`ms.csv`), 5 of 5 pairs | m | `cdcdcdcdcdcdcdcd` |" in mixed


# --------------------------------------------------------------------------- the check fails on broken output
def _fake_book(root: Path, *, metric: float = 0.6, dataset: str = "mscxr", provenance: bool = True,
               error: bool = False) -> Path:
    nbdir = root / "book/notebooks"
    for name, fname in bookcheck.METRIC_FILES.items():
        files = nbdir / f"{name}_files"
        files.mkdir(parents=True)
        outputs = [{"output_type": "error", "ename": "KeyError", "evalue": "'x'"}] if error else []
        (nbdir / f"{name}.ipynb").write_text(json.dumps({"cells": [{"cell_type": "code", "outputs": outputs}]}))
        (files / fname).write_text(json.dumps({"class_averaged": {
            "miou": {"mean": metric, "ci_low": metric - 0.1, "ci_high": metric + 0.1},
            "cnr_abs": {"mean": 1.0, "ci_low": 0.5, "ci_high": 1.5}}}))
        if provenance:
            (files / "provenance.json").write_text(json.dumps({"dataset": {"name": dataset},
                                                               "model": {"weights_sha256": "ef" * 32}}))
    return nbdir


def test_bookcheck_passes_good_output_and_fails_each_kind_of_breakage(tmp_path):
    assert bookcheck.check_book(_fake_book(tmp_path / "ok"), dataset="mscxr") == []
    assert bookcheck.main([str(tmp_path / "ok/book/notebooks"), "--dataset", "mscxr"]) == 0
    out = bookcheck.check_book(_fake_book(tmp_path / "range", metric=1.4), dataset="mscxr")
    assert out and all("outside [0, 1]" in p for p in out)
    out = bookcheck.check_book(_fake_book(tmp_path / "phantom", dataset="phantom"), dataset="mscxr")
    assert len(out) == 5 and "expected 'mscxr'" in out[0]
    out = bookcheck.check_book(_fake_book(tmp_path / "prov", provenance=False))
    assert len(out) == 5 and "no provenance.json" in out[0]
    out = bookcheck.check_book(_fake_book(tmp_path / "err", error=True))
    assert "raised KeyError" in out[0]
    assert bookcheck.main([str(tmp_path / "err/book/notebooks")]) == 1
    problems, n = bookcheck.check_metrics({"a": {"auc": {"mean": 0.7, "ci_low": 0.8, "ci_high": 0.9}},
                                           "b": [{"cnr_abs": -0.2}], "c": {"mIoU": {"row": float("nan")}}})
    assert n == 3 and len(problems) == 3
    assert bookcheck.check_metrics({"nothing": 1}) == ([], 0)
    # a paired difference may be negative (a method below its baseline), never beyond a unit metric's span
    diffs = {"miou": {"difference": -0.06, "ci_low": -0.07, "ci_high": -0.05, "n_pairs": 40},
             "cnr_abs": {"difference": -0.7, "ci_low": -0.8, "ci_high": -0.6}}
    assert bookcheck.check_metrics({"paired": diffs}) == ([], 2)
    problems, _ = bookcheck.check_metrics({"auc": {"difference": -1.5, "ci_low": -1.6, "ci_high": -1.4}})
    assert len(problems) == 3 and "outside [-1, 1]" in problems[0]
    assert any("not executed" in p for p in bookcheck.check_book(tmp_path / "missing"))


def test_one_pair_per_class_and_the_qualitative_grid(fixture_pairs, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from groundiff_core.book import figures

    picked = bookdata.one_pair_per_class(fixture_pairs, crop_size=64)
    assert [p.category for p in picked] == sorted(fx.CATEGORIES)  # "Lung Opacity" via its scorable pair
    assert all(p.phrase != fx.VANISHING for p in picked)
    assert len(bookdata.one_pair_per_class(fixture_pairs, crop_size=64, classes=3)) == 3
    hm = np.random.default_rng(0).random((8, 10))
    rows = [(p.category, np.zeros((8, 10)), [(1, 1, 3, 3)], {"a": hm, "b": hm}) for p in picked[:2]]
    fig = figures.qualitative_grid(rows)
    assert len(fig.axes) == 6 and fig.axes[1].get_title() == "a" and len(fig.axes[4].patches) == 1
    with pytest.raises(ValueError, match="expected"):
        figures.qualitative_grid(rows + [("x", np.zeros((8, 10)), [], {"b": hm, "a": hm})])
    assert figures.publish(figures.placeholder("nothing"), tmp_path, "empty") is None  # nothing printed on the page
    assert (tmp_path / "empty.png").is_file()


def test_check_html_wants_the_box_numbered_figures_and_no_errors(tmp_path):
    pages = tmp_path / "notebooks"
    pages.mkdir()
    (pages / "fig.png").write_bytes(b"png")
    good = ('<div class="admonition note provenance"><p>Data</p></div><figure><img src="fig.png"/>'
            '<figcaption><span class="caption-number">Fig. 1 </span></figcaption></figure>')
    for name in bookcheck.METRIC_FILES:
        (pages / f"{name}.html").write_text(good)
    assert bookcheck.check_html(tmp_path) == []
    (pages / "02_main_table.html").write_text(good.replace("provenance", "note"))
    (pages / "03_ablation.html").write_text(good.replace("caption-number", "caption-text"))
    (pages / "04_failure_cases.html").write_text(good.replace("fig.png", "gone.png"))
    (pages / "05_captum.html").write_text(good + '<div class="output_error">Traceback (most recent call last)</div>')
    out = bookcheck.check_html(tmp_path)
    assert len(out) == 4
    assert "02_main_table: the page has no provenance box" in out
    assert "03_ablation: the page has no numbered figure" in out
    assert any("gone.png" in p for p in out) and any("05_captum" in p and "error" in p for p in out)
    assert bookcheck.main(["--html", str(tmp_path)]) == 1


def test_paired_difference_separates_only_what_the_pairs_support():
    import pandas as pd

    rng = np.random.default_rng(0)
    cats = np.repeat(["A", "B", "C"], 20)
    base = rng.random(60)
    a = pd.DataFrame({"pair_id": range(60), "category": cats, "auc": base})
    shifted = a.assign(auc=base + 0.05)  # the same pairs, every one 0.05 higher: a paired test sees it
    noisy = a.assign(auc=base + rng.normal(0, 0.3, 60))  # no systematic change
    d = paired_difference(shifted, a, "auc", n_boot=500)
    assert d["difference"] == pytest.approx(0.05) and d["separated"] and d["n_pairs"] == 60
    assert not paired_difference(noisy, a, "auc", n_boot=500)["separated"]
    ci = class_averaged_ci(a, "auc", n_boot=500)
    assert ci["ci_low"] < ci["mean"] < ci["ci_high"] and ci["n_pairs"] == 60
    # unpaired intervals of the shifted setting overlap the original's, yet the paired one separates them
    ci2 = class_averaged_ci(shifted, "auc", n_boot=500)
    assert ci2["ci_low"] < ci["ci_high"]
    assert class_averaged_ci(a.assign(auc=np.nan), "auc")["mean"] is None


def test_runner_records_each_pages_provenance_for_the_introduction(tmp_path):
    """A page that ran on other data changes what the introduction's generated include says."""
    src = tmp_path / "notebooks/01_page.py"
    src.parent.mkdir(parents=True)
    src.write_text('# %% tags=["parameters"]\nseed = 0\ndataset = "phantom"\noutput_dir = "out"\n\n# %%\n'
                   "import json, pathlib\n"
                   'pathlib.Path(output_dir, "provenance.json").write_text(json.dumps({"dataset": {"name": dataset, '
                   '"csv": "x.csv", "pairs": 3, "selected": 3}, "model": {"name": "m", "weights_sha256": "ab" * 32}, '
                   '"versions": {"torch": "1"}}))\n')
    runner.run_book(tmp_path)
    record = json.loads((tmp_path / "book/_generated/reproducibility.json").read_text())
    assert record["notebooks"]["01_page"]["provenance"]["dataset"]["name"] == "phantom"
    assert "versions" not in record["notebooks"]["01_page"]["provenance"]
    sources = tmp_path / "book/_generated/data_sources.md"
    assert "Every notebook page of this build was computed on the synthetic phantom" in sources.read_text()
    runner.run_book(tmp_path, overrides={"dataset": "mscxr"})
    text = sources.read_text()
    assert "Every notebook page" not in text and "different data" in text and "mscxr (`x.csv`), 3 of 3 pairs" in text


def test_keepmaps_keeps_only_the_phrases_asked_for():
    from groundiff_core.methods.baselines import RandomHeatmap

    image = np.random.default_rng(0).random((20, 30)).astype(np.float32)
    kept = bookdata.KeepMaps(RandomHeatmap(seed=1), phrases=["b"])
    maps = kept.ground(image, ["a", "b"]).heatmaps
    assert np.array_equal(kept.get(image, "b"), maps[1]) and len(kept.maps) == 1
    with pytest.raises(KeyError):
        kept.get(image, "a")
