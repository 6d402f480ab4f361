"""The evaluation runner: end to end on a tiny random LDM, resumption, skips, shards, summary maths."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from groundiff_core import evaluation as ev
from groundiff_core.evaluation import metrics as M
from groundiff_core.methods.baselines import CentrePrior, RandomHeatmap
from groundiff_core.cli import main as cli_main
from groundiff_core.io.datasets import load_mscxr

import mscxr_fixture as fx


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def tiny_grounder():
    from groundiff_core.models.architectures import tiny_ldm
    from groundiff_core.engine.config import GroundingConfig
    from groundiff_core.engine.grounder import Grounder

    # the paper's preset with 10 inference steps (window [4, 6)) so that a run takes a second
    return Grounder(tiny_ldm(), GroundingConfig.paper().with_steps(10))


@pytest.fixture
def data(tmp_path):
    csv, root = fx.make_dataset(tmp_path)
    return load_mscxr(csv, root), csv, root


class Counting:
    """Wraps a method: counts ``ground`` calls; optionally raises after ``fail_after`` images."""

    def __init__(self, inner, fail_after: int | None = None):
        self.inner, self.fail_after, self.calls = inner, fail_after, []

    def describe(self):
        return ev.method_identity(self.inner)  # the same identity as the wrapped method

    def ground(self, image, phrases):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls.append(list(phrases))
        return self.inner.ground(image, phrases)


def _raw_rows(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _metric_table(rows):
    return {r["pair_id"]: {m: r[m] for m in ev.METRICS} | {"others": r["others"]}
            for r in rows if r["status"] == "ok"}


# ------------------------------------------------------------------------------ end to end
def test_end_to_end_on_tiny_ldm(tiny_grounder, data, tmp_path):
    pairs, _, _ = data
    method = Counting(tiny_grounder)
    out = tmp_path / "run"
    summary = ev.evaluate(method, pairs, out, dataset={"name": "mscxr"}, progress=False, n_boot=200)

    # one call per image, with all of that image's phrases
    assert method.calls == [["left pleural effusion", "cardiomegaly"],
                            ["right upper lobe consolidation", "small left pneumothorax"],
                            ["bilateral edema"]]
    rows = _raw_rows(out)
    assert [r["pair_id"] for r in rows] == [p.pair_id for p in pairs]
    assert all(r["status"] == "ok" for r in rows)
    for r in rows:
        for m in ("miou", "auc", "auc_binned", "cnr_abs", "pointing"):
            assert r[m] is not None and 0 <= r[m] <= (math.inf if m == "cnr_abs" else 1)
    eff = rows[0]
    assert eff["boxes"] == [[28, 26, 14, 10], [30, 20, 10, 6]] and eff["image_hw"] == [fx.H, fx.W]
    assert [o["pair_id"] for o in eff["others"]] == ["a1|cardiomegaly"]

    # the row's metrics are the metric functions applied to the grounder's own heatmap
    from groundiff_core.io.images import load_image
    hm = tiny_grounder.ground(load_image(pairs[0].image_path), ["left pleural effusion", "cardiomegaly"])
    expect = M.all_metrics(hm.heatmaps[0], pairs[0].boxes)
    for m in ev.METRICS:
        assert eff[m] == pytest.approx(expect[m])
    assert eff["others"][0]["auc"] == pytest.approx(M.auc_roc(hm.heatmaps[0], pairs[1].boxes))

    # summary
    assert summary["n_pairs"] == 5 and summary["n_images"] == 3
    assert set(summary["per_class"]) == {"Pleural Effusion", "Cardiomegaly", "Consolidation",
                                         "Pneumothorax", "Edema"}
    for m in ev.METRICS:
        s = summary["overall"][m]
        assert s["ci_low"] <= s["mean"] <= s["ci_high"] and s["n"] == 5
        vals = [r[m] for r in rows]
        assert s["mean"] == pytest.approx(np.mean(vals))
        assert summary["class_averaged"][m]["mean"] == pytest.approx(np.mean(vals))  # 1 pair/class
    assert summary["text_sensitivity"]["n_pairs"] == 4
    assert summary["skipped"] == {"n_pairs": 0, "n_images": 0, "images": []}
    assert summary["model"]["name"] == "tiny-v_prediction"
    assert summary["config"]["num_inference_steps"] == 10
    assert "torch" in summary["versions"] and 0 < summary["wall_time_s"] < 600
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["overall"] == summary["overall"]
    table = (out / "summary.csv").read_text().splitlines()
    assert table[0].startswith("group,n_pairs,miou,miou_ci_low,miou_ci_high,auc,")
    assert [line.split(",")[0] for line in table[1:]] == [
        "overall", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion", "Pneumothorax",
        "class_averaged"]

    # batches of images through Grounder.ground_batch give the same numbers
    batched = ev.evaluate(tiny_grounder, pairs, tmp_path / "batched", batch_images=2, progress=False,
                          n_boot=200)
    for m in ev.METRICS:
        assert batched["overall"][m]["mean"] == pytest.approx(summary["overall"][m]["mean"], abs=1e-4)

    # a finished run rerun: nothing to do, same summary
    again = ev.evaluate(method, pairs, out, dataset={"name": "mscxr"}, progress=False, n_boot=200)
    assert len(method.calls) == 3 and again["overall"] == summary["overall"]


def test_resume_after_interruption_gives_each_pair_once_with_same_numbers(tiny_grounder, data, tmp_path):
    pairs, _, _ = data
    full = tmp_path / "full"
    ev.evaluate(tiny_grounder, pairs, full, progress=False, n_boot=100)

    out = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        ev.evaluate(Counting(tiny_grounder, fail_after=1), pairs, out, progress=False, n_boot=100)
    assert [r["pair_id"] for r in _raw_rows(out)] == [p.pair_id for p in pairs[:2]]  # image a1 kept

    # simulate a crash in the middle of writing a line: the torn line is dropped and redone
    with open(out / "results.jsonl", "a") as fh:
        fh.write('{"pair_id": "b2|right upper lo')
    second = Counting(tiny_grounder)
    with pytest.warns(UserWarning, match="torn last line"):
        summary = ev.evaluate(second, pairs, out, progress=False, n_boot=100)
    assert [c[0] for c in second.calls] == ["right upper lobe consolidation", "bilateral edema"]
    rows = _raw_rows(out)
    assert sorted(r["pair_id"] for r in rows) == sorted(p.pair_id for p in pairs)  # each exactly once
    assert _metric_table(rows) == _metric_table(_raw_rows(full))
    ref = json.loads((full / "summary.json").read_text())
    assert summary["overall"] == ref["overall"] and summary["class_averaged"] == ref["class_averaged"]
    assert summary["sessions"] == 2


def test_resume_refuses_another_configuration(tiny_grounder, data, tmp_path):
    from dataclasses import replace

    from groundiff_core.engine.grounder import Grounder

    pairs, _, _ = data
    out = tmp_path / "run"
    ev.evaluate(RandomHeatmap(seed=0), pairs, out, progress=False, n_boot=10)
    with pytest.raises(ValueError, match=r"different configuration.*method\.method"):
        ev.evaluate(CentrePrior(), pairs, out, progress=False)
    with pytest.raises(ValueError, match=r"method\.seed"):
        ev.evaluate(RandomHeatmap(seed=1), pairs, out, progress=False)
    with pytest.raises(ValueError, match=r"dataset\.name"):
        ev.evaluate(RandomHeatmap(seed=0), pairs, out, dataset={"name": "vindr"}, progress=False)
    # other annotations are not another configuration: the pairs whose content changed are
    # recomputed (here b2's consolidation, whose image lost its other finding), the rest kept
    fewer = ev.evaluate(RandomHeatmap(seed=0), pairs[:3], out, progress=False, n_boot=10)
    assert fewer["n_pairs"] == 3 and fewer["changed"]["pair_ids"] == [pairs[2].pair_id]

    out2 = tmp_path / "ldm"
    ev.evaluate(tiny_grounder, pairs[:1], out2, progress=False, n_boot=10)
    other = Grounder(tiny_grounder.model, replace(tiny_grounder.config, window=(3, 6)))
    with pytest.raises(ValueError, match=r"method\.config\.window"):
        ev.evaluate(other, pairs[:1], out2, progress=False)
    # a folder that is not an evaluation folder is not overwritten
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "results.jsonl").write_text("{}\n")
    with pytest.raises(ValueError, match="not a groundiff evaluation folder"):
        ev.evaluate(RandomHeatmap(), pairs, tmp_path / "foreign", progress=False)


# ------------------------------------------------------------------------------ bad input
def test_missing_and_unreadable_images_are_listed_as_skipped_then_retried(data, tmp_path):
    pairs, _, root = data
    b2 = root / fx.rel_path("b2")
    c3 = root / fx.rel_path("c3")
    saved = b2.read_bytes()
    b2.unlink()
    c3_bytes = c3.read_bytes()
    c3.write_bytes(b"not a jpeg at all")
    out = tmp_path / "run"
    summary = ev.evaluate(CentrePrior(), pairs, out, progress=False, n_boot=50)
    sk = summary["skipped"]
    assert sk["n_pairs"] == 3 and sk["n_images"] == 2 and summary["n_pairs"] == 2
    by_path = {e["image_path"]: e for e in sk["images"]}
    assert by_path[str(b2)]["reason"] == "missing image file"
    assert by_path[str(b2)]["pair_ids"] == ["b2|right upper lobe consolidation", "b2|small left pneumothorax"]
    assert by_path[str(c3)]["reason"].startswith("unreadable image") and by_path[str(c3)]["n_pairs"] == 1

    # the user restores the files and reruns: the skipped pairs are done now
    b2.write_bytes(saved)
    c3.write_bytes(c3_bytes)
    summary = ev.evaluate(CentrePrior(), pairs, out, progress=False, n_boot=50)
    assert summary["skipped"]["n_pairs"] == 0 and summary["n_pairs"] == 5
    assert len(ev.load_results(out)) == 5


def test_boxes_outside_the_read_image_are_rescaled_or_clipped(data, tmp_path):
    from groundiff_core.io.datasets import GroundingPair

    pairs, _, root = data
    p = pairs[1]  # cardiomegaly box (14, 18, 20, 14) annotated on 48x40
    half = GroundingPair(p.pair_id, p.image_path, p.phrase, p.category, [[14, 18, 20, 14], [40, 30, 30, 30]],
                         image_size=(fx.H // 2, fx.W // 2), extra={})
    with pytest.warns(UserWarning, match="rescaled or clipped"):
        ev.evaluate(CentrePrior(), [half], tmp_path / "run", progress=False, n_boot=10)
    row = ev.load_results(tmp_path / "run")[0]
    # annotated size 24x20, image 48x40: boxes doubled; (28, 36, 40, 28) is clipped to the
    # 48x40 image, (80, 60, 60, 60) lies wholly outside it and is dropped
    assert row["boxes"] == [[28.0, 36.0, 20.0, 4.0]]
    assert any("rescaled" in n for n in row["box_notes"])


def test_wrong_heatmap_shape_is_a_clear_error(data, tmp_path):
    pairs, _, _ = data

    class Bad:
        name = "bad"

        def ground(self, image, phrases):
            return np.zeros((len(phrases), 8, 8), np.float32)

    with pytest.raises(ValueError, match="original grid"):
        ev.evaluate(Bad(), pairs, tmp_path / "run", progress=False)
    with pytest.raises(TypeError, match="no .ground"):
        ev.evaluate(object(), pairs, tmp_path / "run2", progress=False)


# ------------------------------------------------------------------------------ shards
def test_shards_merge_to_the_unsharded_result(data, tmp_path):
    pairs, _, _ = data
    whole = ev.evaluate(RandomHeatmap(seed=3), pairs, tmp_path / "whole", progress=False, n_boot=100)
    parts = [tmp_path / f"s{i}" for i in range(2)]
    done = []
    for i, d in enumerate(parts):
        s = ev.evaluate(RandomHeatmap(seed=3), pairs, d, shard=f"{i}/2", progress=False, n_boot=100)
        done.append(s["n_pairs"])
    assert done == [3, 2]  # images a1, c3 | b2
    with pytest.raises(ValueError, match=r"shard\(s\) 1/2 of 2 not given"):
        ev.merge(parts[:1], tmp_path / "partial", n_boot=100)
    with pytest.warns(UserWarning, match="partial merge"):
        part = ev.merge(parts[:1], tmp_path / "partial", n_boot=100, allow_partial=True)
    assert part["n_pairs"] == 3 and "1/2 of 2 not given" in part["partial"]["reasons"][0]
    assert "partial" in (tmp_path / "partial" / "summary.csv").read_text().splitlines()[0]
    merged = ev.merge(parts[::-1], tmp_path / "merged", n_boot=100)
    assert merged["overall"] == whole["overall"]
    assert merged["class_averaged"] == whole["class_averaged"]
    assert merged["text_sensitivity"] == whole["text_sensitivity"]
    assert len(ev.load_results(tmp_path / "merged")) == 5
    with pytest.raises(ValueError, match="different configuration"):
        ev.evaluate(RandomHeatmap(seed=3), pairs, parts[0], shard="1/2", progress=False)
    ev.evaluate(CentrePrior(), pairs, tmp_path / "centre", progress=False, n_boot=10)
    with pytest.raises(ValueError, match="different configuration"):
        ev.merge([parts[0], tmp_path / "centre"], tmp_path / "bad")
    with pytest.raises(ValueError, match="0 <= i < n"):
        ev.parse_shard("2/2")


def test_n_pairs_subset(data, tmp_path):
    pairs, _, _ = data
    s = ev.evaluate(RandomHeatmap(), pairs, tmp_path / "run", n_pairs=2, progress=False, n_boot=10)
    assert s["n_pairs"] == 2 and s["selection"]["n_pairs"] == 2
    s = ev.evaluate(RandomHeatmap(), pairs, tmp_path / "run", n_pairs=4, progress=False, n_boot=10)
    assert s["n_pairs"] == 4 and len(ev.load_results(tmp_path / "run")) == 4


# ------------------------------------------------------------------------------ summary maths
def _row(pid, cat, **metrics):
    r = {"pair_id": pid, "category": cat, "status": "ok", "image_path": pid.split("|")[0]}
    r.update({m: metrics.get(m, 0.5) for m in ev.METRICS})
    r["others"] = metrics.get("others", [])
    return r


def test_summary_class_average_is_unweighted_and_undefined_values_are_counted():
    rows = [_row("a|1", "A", auc=1.0), _row("b|1", "A", auc=0.8), _row("c|1", "A", auc=0.6),
            _row("d|1", "B", auc=0.2), _row("e|1", "B", auc=None)]
    s = ev.summarize(rows, n_boot=500, seed=1)
    assert s["per_class"]["A"]["auc"]["mean"] == pytest.approx(0.8)
    assert s["per_class"]["B"]["auc"] == {"mean": 0.2, "ci_low": 0.2, "ci_high": 0.2, "n": 1,
                                          "n_undefined": 1}
    assert s["overall"]["auc"]["mean"] == pytest.approx((1 + 0.8 + 0.6 + 0.2) / 4)
    assert s["overall"]["auc"]["n_undefined"] == 1
    assert s["class_averaged"]["auc"]["mean"] == pytest.approx((0.8 + 0.2) / 2)
    ca = s["class_averaged"]["auc"]
    assert ca["ci_low"] <= ca["mean"] <= ca["ci_high"] and ca["n_classes"] == 2
    # seeded: identical on recomputation, independent of row order
    assert ev.summarize(rows[::-1], n_boot=500, seed=1) == s
    assert ev.summarize(rows, n_boot=500, seed=2)["overall"]["auc"]["ci_low"] != s["overall"]["auc"]["ci_low"]


def test_bootstrap_ci_covers_and_narrows():
    rng = np.random.default_rng(0)
    small = [_row(f"{i}|x", "A", miou=v) for i, v in enumerate(rng.random(20))]
    large = [_row(f"{i}|x", "A", miou=v) for i, v in enumerate(rng.random(400))]
    s, l = ev.summarize(small, n_boot=1000)["overall"]["miou"], ev.summarize(large, n_boot=1000)["overall"]["miou"]
    assert s["ci_low"] < s["mean"] < s["ci_high"]
    assert (l["ci_high"] - l["ci_low"]) < (s["ci_high"] - s["ci_low"])
    # the standard error of a uniform mean is sqrt(1/12/n): the 95% CI is about +-1.96 of it
    assert (l["ci_high"] - l["ci_low"]) == pytest.approx(2 * 1.96 * math.sqrt(1 / 12 / 400), rel=0.2)


def test_text_sensitivity_definition():
    o = lambda pid, cat, auc, iou=0.0: {"pair_id": pid, "category": cat, "auc": auc, "gt_iou": iou}
    rows = [
        _row("i1|a", "A", auc=0.9, others=[o("i1|b", "B", 0.4)]),                          # win
        _row("i1|b", "B", auc=0.4, others=[o("i1|a", "A", 0.9)]),                          # loss
        _row("i2|a", "A", auc=0.7, others=[o("i2|b", "B", 0.6), o("i2|c", "C", 0.8)]),     # 1/2
        _row("i3|a", "A", auc=0.7, others=[o("i3|b", "B", 0.7)]),                          # tie 1/2
        _row("i4|a", "A", auc=0.9, others=[o("i4|a2", "A", 0.1)]),                         # same class
        _row("i5|a", "A", auc=0.9, others=[o("i5|b", "B", 0.1, iou=0.8)]),                 # overlaps
        _row("i6|a", "A", auc=0.9),                                                        # alone
    ]
    ts = ev.summarize(rows, n_boot=100)["text_sensitivity"]
    assert ts["n_pairs"] == 4 and ts["n_comparisons"] == 5
    assert ts["value"] == pytest.approx((1 + 0 + 0.5 + 0.5) / 4)
    assert ts["strict"] == pytest.approx(1 / 4)
    ts = ev.summarize(rows, n_boot=100, text_max_overlap=0.9)["text_sensitivity"]
    assert ts["n_pairs"] == 5


# ------------------------------------------------------------------------------ baselines
def test_baselines(data):
    pairs, _, _ = data
    from groundiff_core.io.images import load_image

    img = load_image(pairs[0].image_path)
    r = RandomHeatmap(seed=0)
    a = r.ground(img, ["x", "y"]).heatmaps
    assert a.shape == (2, fx.H, fx.W) and a.dtype == np.float32 and 0 <= a.min() and a.max() < 1
    np.testing.assert_array_equal(a, r.ground(pairs[0].image_path, ["x", "y"]).heatmaps)
    np.testing.assert_array_equal(a[1], r.ground(img, ["y"]).heatmaps[0])  # order-independent
    assert not np.array_equal(a[0], a[1])
    assert not np.array_equal(a[0], RandomHeatmap(seed=1).ground(img, ["x"]).heatmaps[0])

    c = CentrePrior(sigma_fraction=0.2).ground(img, ["x", "y"])
    g = c.heatmaps
    assert g.shape == (2, fx.H, fx.W) and np.array_equal(g[0], g[1])
    cy, cx = np.unravel_index(np.argmax(g[0]), g[0].shape)  # peaks at the centre, falls off towards the corners
    assert abs(cy - (fx.H - 1) / 2) <= 1 and abs(cx - (fx.W - 1) / 2) <= 1 and g[0, 0, 0] < 0.5 * g[0, cy, cx]
    assert np.unravel_index(np.argmax(g[0]), g[0].shape) in {(19, 23), (19, 24), (20, 23), (20, 24)}
    assert M.auc_roc(g[0], [(18, 14, 12, 12)]) > 0.99  # a central box is found (almost) perfectly
    assert c.geometry is None
    with pytest.raises(ValueError, match="sigma_fraction"):
        CentrePrior(sigma_fraction=0)
    with pytest.raises(ValueError, match="non-empty"):
        RandomHeatmap().ground(img, [])


def test_random_baseline_is_at_chance(data, tmp_path):
    pairs, _, _ = data
    s = ev.evaluate(RandomHeatmap(), pairs, tmp_path / "run", progress=False, n_boot=100)
    assert s["overall"]["auc"]["mean"] == pytest.approx(0.5, abs=0.08)


# ------------------------------------------------------------------------------ CLI
def test_cli_evaluate_merge_and_errors(data, tmp_path, capsys):
    _, csv, root = data
    base = ["evaluate", "--dataset", "mscxr", "--csv", str(csv), "--images", str(root),
            "--no-progress", "--bootstrap", "50"]
    assert cli_main(base + ["--method", "centre", "--split", "test", "--out", str(tmp_path / "c")]) == 0
    s = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert s["n_pairs"] == 4 and s["identity"]["dataset"]["split"] == "test"
    assert "class-averaged" in capsys.readouterr().out
    for i in range(2):
        assert cli_main(base + ["--method", "random", "--shard", f"{i}/2", "--out", str(tmp_path / f"r{i}")]) == 0
    assert cli_main(["evaluate", "--merge", str(tmp_path / "r0"), str(tmp_path / "r1"),
                     "--out", str(tmp_path / "rm"), "--bootstrap", "50"]) == 0
    assert json.loads((tmp_path / "rm" / "summary.json").read_text())["n_pairs"] == 5

    # user errors: one line, exit status 2
    assert cli_main(["evaluate", "--out", str(tmp_path / "x")]) == 2
    assert "needs --dataset and --csv" in capsys.readouterr().err
    assert cli_main(base + ["--out", str(tmp_path / "x")]) == 2  # ldm without --model
    assert "--model" in capsys.readouterr().err
    assert cli_main(base + ["--method", "centre", "--shard", "3", "--out", str(tmp_path / "x")]) == 2
    assert cli_main(base + ["--method", "random", "--out", str(tmp_path / "c")]) == 2  # not resumable
    assert "different configuration" in capsys.readouterr().err
    bad = fx.write_csv(tmp_path / "bad.csv", columns=fx.COLUMNS[:3])
    assert cli_main(["evaluate", "--dataset", "mscxr", "--csv", str(bad), "--images", str(root),
                     "--method", "centre", "--out", str(tmp_path / "y")]) == 2
    assert "missing column(s)" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "c")


def test_cli_evaluates_the_ldm_method(data, tmp_path):
    from groundiff_core.models import loading

    if not hasattr(loading, "load_model"):
        pytest.skip("groundiff_core.models.loading.load_model is not there yet")
    _, csv, root = data
    out = tmp_path / "ldm"
    assert cli_main(["evaluate", "--model", "tiny", "--dataset", "mscxr", "--csv", str(csv),
                     "--images", str(root), "--steps", "10", "--device", "cpu", "--no-progress",
                     "--bootstrap", "20", "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["n_pairs"] == 5 and s["config"]["num_inference_steps"] == 10
    assert s["model"]["input_size"] == 32
