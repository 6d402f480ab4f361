"""The notebooks' helpers (data plumbing, trajectory pictures, figures) and one real notebook run
end to end on the tiny random model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from groundiff_core.book import pages as bookdata
from groundiff_core.util.phrases import side_of_phrase
from groundiff_core.book import figures
from groundiff_core.book import runner

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny():
    from groundiff_core.models.architectures import tiny_ldm

    return tiny_ldm()


def test_phantom_data_is_generated_and_subset_is_nested(tmp_path):
    big = bookdata.load_book_data(None, None, tmp_path / "a", n_pairs=6, seed=3, phantom_images=8)
    small = bookdata.load_book_data("phantom", None, tmp_path / "b", n_pairs=3, seed=3, phantom_images=8)
    assert big.is_phantom and big.description["images"] == 8
    assert (tmp_path / "a/phantom_test/annotations.csv").is_file()
    assert len(big.selected) == 6 and len(small.selected) == 3
    assert {p.pair_id for p in small.selected} <= {p.pair_id for p in big.selected}
    every = bookdata.load_book_data(None, None, tmp_path / "a", n_pairs=0, seed=3, phantom_images=8)
    assert len(every.selected) == len(every.pairs) == big.description["pairs"]


def test_bad_dataset_parameters_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset_csv .* does not exist"):
        bookdata.load_book_data(tmp_path / "nope.csv", tmp_path, tmp_path, n_pairs=2)
    csv = tmp_path / "x.csv"
    csv.write_text("a\n")
    with pytest.raises(ValueError, match="needs images_root"):
        bookdata.load_book_data(csv, None, tmp_path, n_pairs=2)
    with pytest.raises(ValueError, match="n_pairs must be >= 0"):
        bookdata.load_book_data(None, None, tmp_path, n_pairs=-1, phantom_images=2)


def test_side_of_phrase():
    assert side_of_phrase("small left pleural effusion") == "left"
    assert side_of_phrase("Right apical pneumothorax") == "right"
    assert side_of_phrase("bibasilar atelectasis") == "bilateral"
    assert side_of_phrase("left and right effusions") == "bilateral"
    assert side_of_phrase("cardiomegaly") == "none"


def test_keepmaps_returns_and_keeps(tmp_path):
    from groundiff_core.methods.baselines import CentrePrior, RandomHeatmap
    from groundiff_core.evaluation import method_identity

    image = np.random.default_rng(0).random((20, 30)).astype(np.float32)
    kept = bookdata.KeepMaps(RandomHeatmap(seed=1))
    maps = kept.ground(image, ["a", "b"]).heatmaps
    assert np.array_equal(kept.get(image, "b"), maps[1])
    with pytest.raises(KeyError):
        kept.get(image * 0.5, "b")
    assert method_identity(kept)["method"] == "random" and kept.seed == 1
    assert method_identity(bookdata.KeepMaps(CentrePrior())) == method_identity(CentrePrior())


def test_keepmaps_batches_through_the_method_and_keeps_every_image(tiny64_eps):
    """The runner's ground_batch reaches the Grounder's (one inversion for the batch), the maps are
    the single-image ones and are kept per image; a method without ground_batch is called per image."""
    import groundiff_core as gd
    from groundiff_core.methods.baselines import RandomHeatmap

    rng = np.random.default_rng(0)
    images = [rng.random((30, 30)).astype(np.float32), rng.random((40, 32)).astype(np.float32)]
    phrases = [["left pleural effusion"], ["cardiomegaly", "mild edema"]]
    config = gd.GroundingConfig.paper().with_steps(20)
    inner = gd.Grounder(tiny64_eps, config, batch_size=2)
    calls = []
    inner_batch = inner.ground_batch
    inner.ground_batch = lambda ims, phs: calls.append(len(ims)) or inner_batch(ims, phs)
    kept = bookdata.KeepMaps(inner)
    results = kept.ground_batch(images, phrases)
    assert calls == [2]
    for image, ph, result in zip(images, phrases, results):
        single = gd.Grounder(tiny64_eps, config).ground(image, ph)
        np.testing.assert_array_equal(result.heatmaps, single.heatmaps)
        for k, phrase in enumerate(ph):
            np.testing.assert_array_equal(kept.get(image, phrase), single.heatmaps[k])
    plain = bookdata.KeepMaps(RandomHeatmap(seed=1))
    maps = plain.ground_batch(images, phrases)
    assert [m.phrases for m in maps] == phrases
    np.testing.assert_array_equal(plain.get(images[1], "mild edema"), maps[1].heatmaps[1])


def test_save_json_cleans_numbers(tmp_path):
    path = bookdata.save_json({"a": np.float32(0.5), "b": float("nan"), "c": (1, 2), "d": Path("x")}, tmp_path, "m")
    assert json.loads(path.read_text()) == {"a": 0.5, "b": None, "c": [1, 2], "d": "x"}


def test_trajectory_shapes_and_ends(tiny):
    from groundiff_core.engine.config import GroundingConfig
    from groundiff_core.engine.trajectory import inversion_trajectory

    image = np.random.default_rng(0).random((40, 48)).astype(np.float32)
    cfg = GroundingConfig.paper().with_steps(20)
    traj = inversion_trajectory(tiny, image, [5, -1, 0, 5], cfg)
    assert traj.step_indices == [-1, 0, 5] and traj.timesteps[0] == -1
    assert traj.images.shape == (3, tiny.input_size, tiny.input_size)
    assert np.isfinite(traj.images).all() and traj.images.min() >= 0 and traj.images.max() <= 1
    again = inversion_trajectory(tiny, image, [5, -1, 0], cfg)
    assert np.array_equal(again.images, traj.images)  # deterministic on CPU
    with pytest.raises(ValueError, match="outside the trajectory"):
        inversion_trajectory(tiny, image, [traj.num_steps], cfg)


def test_figures_helpers_draw(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    fig, axes = figures.grid(3, ncols=2)
    assert len(axes) == 3
    hm = np.full((10, 12), 0.5)
    hm[:, :2] = np.nan
    figures.overlay(axes[0], np.zeros((10, 12)), hm, [(1, 2, 3, 4)], title="t")
    figures.side_labels(axes[0])
    assert len(axes[0].patches) == 1
    assert Path(figures.savefig(fig, tmp_path, "f")).is_file()
    assert figures.fmt_ci({"mean": 0.5, "ci_low": 0.25, "ci_high": 0.75}, 2) == "0.50 [0.25, 0.75]"
    assert figures.fmt_ci(None) == "n/a"


def test_a_figure_the_page_would_shrink_or_with_unreadable_panels_is_refused(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wide, _ = plt.subplots(1, 3, figsize=(13, 3.8))
    with pytest.raises(ValueError, match=r"figure 'wide' would not be legible on the page: 13.0 in wide, more than 8 in"):
        figures.publish(wide, tmp_path, "wide")
    crowded, axes = plt.subplots(1, 7, figsize=(8, 1.5), constrained_layout=True)
    for ax in axes:
        ax.imshow(np.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"an image panel is 0.\d\d in wide, less than 1.28 in \(128 px"):
        figures.publish(crowded, tmp_path, "crowded")
    fig, axes = figures.grid(12, ncols=6, size=1.8)  # wraps onto 5 columns and fits the page
    for ax in axes:
        ax.imshow(np.zeros((4, 4)))
    figures.savefig(fig, tmp_path, "grid")
    assert fig.get_size_inches()[0] <= figures.MAX_FIGURE_IN and len({round(ax.get_position().x0, 3) for ax in axes}) == 5
    assert figures.legibility_problems(fig) == []


def test_a_qualitative_grid_of_many_methods_turns_so_that_its_panels_stay_readable(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    image, boxes = np.zeros((8, 8)), [(1, 1, 2, 2)]
    methods = {f"m{k}": np.full((8, 8), 0.5) for k in range(7)}
    fig = figures.qualitative_grid([("a", image, boxes, methods), ("b", image, boxes, methods)])
    figures.savefig(fig, tmp_path, "q")
    grid = fig.axes
    assert len(grid) == 16 and figures.legibility_problems(fig) == []
    assert grid[0].get_title() == "a" and grid[1].get_title() == "b"  # one column per example
    assert [ax.get_ylabel() for ax in grid[2::2]] == list(methods)  # the methods label the rows
    few = figures.qualitative_grid([("a", image, boxes, {"m0": methods["m0"]})])
    assert [ax.get_title() for ax in few.axes] == ["a", "m0"]  # few methods: one row per example, as the paper
    with pytest.raises(ValueError, match="do not fit 5 columns either way"):
        figures.qualitative_grid([(str(k), image, boxes, methods) for k in range(6)])


@pytest.mark.slow
def test_main_table_notebook_runs_on_the_tiny_model(tmp_path):
    """The real notebook 2, executed by the runner with papermill on the tiny random model."""
    (tmp_path / "notebooks").mkdir()
    src = ROOT / "notebooks/02_main_table.py"
    (tmp_path / "notebooks" / src.name).write_text(src.read_text())
    (tmp_path / "book").mkdir()
    (tmp_path / "book/published.csv").write_text((ROOT / "book/published.csv").read_text())
    runs = runner.run_book(tmp_path, overrides={"model": "tiny", "n_pairs": 2,
                                                "phantom_images": 4, "n_boot": 50, "seed": 1})
    files = tmp_path / "book/notebooks/02_main_table_files"
    assert runs[0].status == "ok"
    table = (files / "class_averaged.csv").read_text()
    assert "cross-attention (paper preset)" in table and "centre prior" in table
    result = json.loads((files / "main_table.json").read_text())
    assert result["summaries"]["cross-attention (paper preset)"]["n_pairs"] == 2
    assert (files / "per_class_bars.png").is_file()
    assert "LDM (frozen) (MIDL 2026 Table 1)" in (files / "reference_comparison.csv").read_text()
    assert "| verdict |" in (tmp_path / "book/_generated/claims.md").read_text()


# --------------------------------------------------------------------------- shipped runs
def _row(pid, category="a", **metrics):
    base = {"miou": 0.25, "auc": 0.75, "auc_binned": 0.7, "cnr_abs": 1.5, "cnr_signed": 1.5, "pointing": 1.0}
    return {"pair_id": pid, "category": category, "status": "ok", "key": f"k-{pid}", **base, **metrics}


def test_recheck_comparison_passes_within_and_fails_beyond_tolerance():
    from groundiff_core.book import shipped

    ship = [_row("p1"), _row("p2", auc=None)]
    live = [_row("p1", miou=0.25 + 5e-7), _row("p2", auc=None)]
    report = shipped.compare_rows(ship, live, tolerance=1e-6)
    assert report["pairs"] == 2 and report["max_abs_diff"]["miou"] == pytest.approx(5e-7)
    assert report["max_abs_diff"]["auc"] == 0.0
    with pytest.raises(shipped.RecheckMismatch, match=r"pair 'p1', metric miou: shipped 0.25, re-run 0.25\d+, tolerance 1e-06"):
        shipped.compare_rows(ship, [_row("p1", miou=0.25 + 2e-6)], tolerance=1e-6)
    with pytest.raises(shipped.RecheckMismatch, match="metric auc: shipped None"):
        shipped.compare_rows(ship, [_row("p2", auc=0.5)])
    with pytest.raises(shipped.RecheckMismatch, match="key shipped"):
        shipped.compare_rows(ship, [{**_row("p1"), "key": "other"}])
    with pytest.raises(shipped.RecheckMismatch, match="no shipped row"):
        shipped.compare_rows(ship, [_row("p3")])


def test_recheck_selection_takes_whole_images_nested(tmp_path):
    from groundiff_core.book import shipped

    data = bookdata.load_book_data(None, None, tmp_path, n_pairs=0, phantom_images=10)
    small = shipped.recheck_selection(data.pairs, 2, seed=0)
    big = shipped.recheck_selection(data.pairs, 6, seed=0)
    assert len(small) >= 2 and len(big) >= 6
    assert {p.pair_id for p in small} <= {p.pair_id for p in big}
    for sel in (small, big):  # every phrase of a chosen image is in
        images = {p.image_path for p in sel}
        assert {p.pair_id for p in data.pairs if p.image_path in images} == {p.pair_id for p in sel}
    with pytest.raises(ValueError, match="at least 1 pair"):
        shipped.recheck_selection(data.pairs, 0)


def test_shipped_run_loads_checks_and_summarizes(tmp_path):
    from groundiff_core.book import shipped
    from groundiff_core.engine.config import GroundingConfig

    folder = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="results.jsonl is missing"):
        shipped.load_shipped(folder)
    folder.mkdir()
    rows = [_row("p1", "a"), _row("p2", "b", miou=0.5), {**_row("p1", "a"), "miou": 0.75}]  # p1 rerun: latest wins
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = GroundingConfig.paper()
    (folder / "run.json").write_text(json.dumps({
        "created": "2026-01-01T00:00:00+00:00", "info": {"command": "groundiff evaluate ..."},
        "identity": {"method": {"config": cfg.to_dict(), "model": {"weights_sha256": "abc"}},
                     "scoring": {"conventions": "paper"}}}))
    run = shipped.load_shipped(folder)
    assert len(run.ok_rows) == 2 and run.pairs_per_class() == {"a": 1, "b": 1}
    s = run.summarize(n_boot=20)
    assert s["n_pairs"] == 2 and s["class_averaged"]["miou"]["mean"] == pytest.approx((0.75 + 0.5) / 2)
    run.require_pairs(2)
    with pytest.raises(ValueError, match="2 scored pairs, fewer than the 3"):
        run.require_pairs(3)
    run.check_config(cfg, "paper")
    with pytest.raises(ValueError, match=r"differs in num_inference_steps \(shipped 300, here 100\)"):
        run.check_config(cfg.with_steps(100), "paper")
    with pytest.raises(ValueError, match="'paper' conventions, this page asks for 'strict'"):
        run.check_config(cfg, "strict")
    assert shipped.uses_shipped("phantom", None, "book/results/x")
    assert not shipped.uses_shipped("tiny", None, "book/results/x")
    assert not shipped.uses_shipped("phantom", "a.csv", "book/results/x")


def test_cost_page_copies_the_benchmark_numbers():
    from groundiff_core.book import cost

    results = ROOT / "benchmarks/results"
    text = cost.cost_markdown(results)
    data = json.loads((results / "engine_cpu.json").read_text())
    assert "engine_cpu.json`" in text
    assert f"{data['cpu_count']} cores" in text and f"torch {data['torch']}" in text
    for res in data["results"]:
        e, n = res["engine"], res["naive"]
        row = next(line for line in text.splitlines() if line.startswith(f"| {res['k']} | engine, paper preset |"))
        assert f"| {e['cpu_s_per_image']:.2f} |" in row and f"| {e['wall_s_per_image']:.2f} |" in row
        assert f"| {n['cpu_s_per_image'] / e['cpu_s_per_image']:.2f} |" in row
        naive = next(line for line in text.splitlines() if line.startswith(f"| {res['k']} | naive"))
        assert f"| {n['recording_bytes'] / 1024 ** 2:.1f} MiB |" in naive
    unet = data["paper_unet_512"]
    assert f"**{unet['full_pass_cpu_s']:.2f} CPU s**" in text and f"**{unet['truncated_pass_cpu_s']:.2f} CPU s**" in text
    when = cost.file_date(results / "engine_cpu.json")  # its commit date in a checkout, else its mtime
    assert when in text and (when.startswith("committed 20") if (ROOT / ".git").exists() else True), when
    gpu = json.loads((results / "engine_gpu_dryrun.json").read_text())
    assert gpu["dry_run"] and "**dry run**" in text
    assert f"| {gpu['runs'][0]['authors']['s_per_pair']:.3f} |" in text


def test_shipped_run_data_check_regenerates_the_phantom_and_compares_keys(tmp_path):
    from groundiff_core.book import shipped
    from groundiff_core.evaluation.identity import pair_keys
    from groundiff_core.io.datasets import group_by_image, load_dataset
    from groundiff_core.phantom.generator import write_phantom_set

    pairs = load_dataset("phantom", write_phantom_set(tmp_path / "made", 3, split="test", progress=False))
    keys = pair_keys(pairs, group_by_image(pairs))
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "results.jsonl").write_text("".join(json.dumps({**_row(p.pair_id, p.category), "key": keys[p.pair_id],
                                                              "phrase": p.phrase, "boxes": p.boxes.tolist()}) + "\n"
                                                  for p in pairs))
    (folder / "run.json").write_text(json.dumps({"identity": {"data": {"pairs": len(pairs)}}}))
    (folder / "ship.json").write_text(json.dumps({"phantom_images": 3, "phantom_split": "test"}))
    run = shipped.load_shipped(folder)
    again = run.phantom_pairs(tmp_path / "again")  # regenerated: same annotations and image bytes
    assert [p.pair_id for p in again] == [p.pair_id for p in pairs]
    first = again[0]
    Path(first.image_path).write_bytes(Path(first.image_path).read_bytes() + b"\0")  # one image changed
    with pytest.raises(ValueError, match=f"pair '{re.escape(first.pair_id)}' is not reproduced") as err:
        run.check_data(again)
    # same annotation, other bytes: the message says so and names the CPU the run was made on
    assert ("its image file (or its image's other findings) differ; the run was made on 'an unrecorded CPU', "
            "this machine is") in str(err.value)
    assert 'shipped_run ""' in str(err.value)
    with pytest.raises(ValueError, match=f"the run read {len(pairs)} pairs, the regenerated split has 1"):
        run.check_data(again[:1])


def test_ship_results_rewrites_image_paths_and_records_the_phantom_command(tmp_path):
    import importlib.util

    from groundiff_core.book import shipped
    from groundiff_core.phantom.generator import write_phantom_set

    spec = importlib.util.spec_from_file_location("ship_results", ROOT / "scripts/ship_results.py")
    ship = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ship)
    phantom = tmp_path / "phantom"
    write_phantom_set(phantom, 2, split="test", progress=False)
    image = (phantom / "images/phantom_20000000.png").resolve()
    run = tmp_path / "run"
    run.mkdir()
    rows = [{**_row("a"), "image_path": str(image), "seconds": 3.0}, {**_row("a"), "image_path": str(image), "miou": 0.5}]
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "run.json").write_text(json.dumps({"identity": {"data": {"pairs": 3}}}))
    facts = ship.ship(run, phantom, tmp_path / "dest")
    assert facts["phantom_command"] == "groundiff phantom --out DIR --n 2 --split test"
    assert facts["rows"] == 1 and facts["pairs_in_split"] == 3 and not facts["finished"]
    loaded = shipped.load_shipped(tmp_path / "dest")
    assert loaded.phantom_images == 2
    assert [(r["image_path"], r["miou"]) for r in loaded.rows] == [("images/phantom_20000000.png", 0.5)]
    text = (phantom / "annotations.csv").read_text()
    (phantom / "annotations.csv").write_text(text + text.splitlines()[-1] + "\n")  # one box twice
    with pytest.raises(ValueError, match="is not what `groundiff phantom --n 2 --split test` writes"):
        ship.ship(run, phantom, tmp_path / "dest2")


def test_shipped_run_refuses_another_models_weights(tmp_path, tiny):
    from groundiff_core.book import shipped
    from groundiff_core.evaluation.identity import model_content

    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "results.jsonl").write_text(json.dumps(_row("p1")) + "\n")
    own = model_content(tiny)["weights_sha256"]
    for sha, ok in ((own, True), ("0" * 64, False), (None, False)):
        (folder / "run.json").write_text(json.dumps({"identity": {"method": {"model": {"weights_sha256": sha}}}}))
        run = shipped.load_shipped(folder)
        if ok:
            run.check_model(tiny)
            continue
        with pytest.raises(ValueError, match=f"weights_sha256 is 0{{64}}, the loaded model .* has {own}"
                           if sha else "no model weights fingerprint"):
            run.check_model(tiny)


def test_get_or_ground_grounds_only_what_was_not_kept():
    from groundiff_core.methods.baselines import CentrePrior

    calls = []

    class Counting(CentrePrior):
        def ground(self, image, phrases):
            calls.append(list(phrases))
            return super().ground(image, phrases)

    image = np.random.default_rng(0).random((20, 24)).astype(np.float32)
    kept = bookdata.KeepMaps(Counting())
    kept.ground(image, ["a", "b"])
    assert np.array_equal(kept.get_or_ground(image, "b"), kept.get(image, "b")) and calls == [["a", "b"]]
    fresh = kept.get_or_ground(image, "c")  # never grounded: grounded now, alone
    assert calls == [["a", "b"], ["c"]] and fresh.shape == (20, 24)


def test_runs_read_side_by_side_are_checked_against_their_methods_and_share_their_pairs(tmp_path, tiny):
    """The Captum page's shipped runs: each refused unless its method (settings and model) is the
    page's, and all read on the pairs every one of them scored; the live re-check reproduces them."""
    from groundiff_core.book import shipped
    from groundiff_core.evaluation import evaluate
    from groundiff_core.io.datasets import load_dataset
    from groundiff_core.methods.attribution import ObjectiveConfig, make_methods
    from groundiff_core.phantom.generator import write_phantom_set
    import torch

    pairs = load_dataset("phantom", write_phantom_set(tmp_path / "phantom", 4, split="test", progress=False))
    objective = ObjectiveConfig(n_draws=1)
    methods = make_methods(["saliency", "integrated_gradients"], tiny, objective=objective, ig_steps=2)
    runs, threads = {}, torch.get_num_threads()
    torch.set_num_threads(1)  # as scripts/ship_captum.py makes them and the re-check re-grounds
    try:
        for name, n in (("saliency", 6), ("integrated_gradients", 4)):
            evaluate(methods[name], pairs, tmp_path / name, n_pairs=n, progress=False, n_boot=10)
            runs[name] = shipped.load_shipped(tmp_path / name)
    finally:
        torch.set_num_threads(threads)
    both = shipped.checked_runs(runs, methods, pairs, min_pairs=4)
    ids = {name: {r["pair_id"] for r in run.ok_rows} for name, run in both.items()}
    assert ids["saliency"] == ids["integrated_gradients"] == {r["pair_id"] for r in runs["integrated_gradients"].ok_rows}
    assert len(runs["saliency"].ok_rows) == 6 and len(ids["saliency"]) == 4  # nested subsets: the 4 inside the 6
    with pytest.raises(ValueError, match="4 scored pairs, fewer than the 5 this page promises"):
        shipped.checked_runs(runs, methods, pairs, min_pairs=5)  # the smaller run alone is short
    other = make_methods(["integrated_gradients"], tiny, objective=objective, ig_steps=3)
    with pytest.raises(ValueError, match=r"method differs in n_steps \(shipped 2, here 3\)"):
        runs["integrated_gradients"].check_method(other["integrated_gradients"])
    with pytest.raises(ValueError, match="do not match"):
        shipped.checked_runs(runs, {"saliency": methods["saliency"]}, pairs, min_pairs=1)
    report = shipped.recheck(both["saliency"], methods["saliency"], pairs, tmp_path / "again", n=1)
    assert report["pairs"] >= 1 and max(report["max_abs_diff"].values()) <= shipped.TOLERANCE
    assert "(1 image, seeded)" in shipped.recheck_markdown({**report, "images": 1})

