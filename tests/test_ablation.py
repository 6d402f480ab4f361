"""The ablation grid as a library function: every setting's maps from one recording per image, scored
with the runner's boxes, equal to a fresh grounding with that setting."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import groundiff_core as gd
from groundiff_core.evaluation import metrics
from groundiff_core.evaluation.ablation import ablation, grid_cells
from groundiff_core.evaluation.boxes import scored_boxes
from groundiff_core.io.datasets import load_dataset
from groundiff_core.io.images import load_image
from groundiff_core.phantom.generator import write_phantom_set

SHORT = gd.GroundingConfig.paper().with_steps(30)  # window [12, 18)


@pytest.fixture(scope="module")
def phantom_pairs(tmp_path_factory):
    csv = write_phantom_set(tmp_path_factory.mktemp("phantom"), 2, split="test", progress=False)
    return load_dataset("phantom", csv)


def test_every_setting_equals_a_fresh_grounding_and_scores_with_the_runners_boxes(tiny_v, phantom_pairs):
    grounder = gd.Grounder(tiny_v, SHORT, batch_size=2)
    settings = {(11, 20): dict(middle_layers=11, window_percent=20), (2, 10): dict(middle_layers=2, window_percent=10),
                "no Otsu": dict(config=SHORT, otsu=False)}
    run = ablation(grounder, phantom_pairs, settings, window=(0, 31), batch_images=2)
    df = pd.DataFrame(run.rows)
    assert len(df) == 3 * len(phantom_pairs) and set(df.setting) == {"grid", "no Otsu"}
    p = phantom_pairs[-1]
    image = load_image(p.image_path)
    for key, cfg in [((2, 10), SHORT.override(middle_layers=2, window_percent=10)),
                     ("no Otsu", SHORT.override(otsu=False))]:
        fresh = gd.Grounder(tiny_v, cfg).ground(image, [p.phrase]).heatmaps[0]
        want = metrics.all_metrics(fresh, scored_boxes(p, image.shape, tiny_v.input_size)[0])
        row = df[(df.pair_id == p.pair_id) & (df.setting == ("grid" if isinstance(key, tuple) else key))]
        if isinstance(key, tuple):
            row = row[(row.L == key[0]) & (row["T"] == key[1])]
        got = row.iloc[0]
        for m in ("miou", "auc", "cnr_abs"):
            assert got[m] == pytest.approx(want[m], abs=1e-4), (key, m)  # float32 maps: sums in another order
    assert run.example is not None and run.example[1].pair_id == phantom_pairs[0].pair_id


def test_grid_cells_average_by_class_first():
    rows = [{"setting": "grid", "L": 1, "T": 10, "category": "a", "miou": v} for v in (0.0, 0.0, 0.0)]
    rows += [{"setting": "grid", "L": 1, "T": 10, "category": "b", "miou": 1.0},
             {"setting": "other", "L": None, "T": None, "category": "b", "miou": 9.0}]
    cells = grid_cells(rows, "miou")
    assert cells.loc[1, 10] == 0.5  # (0 + 1) / 2 over classes, not 1/4 over pairs; the other row left out
    assert np.isclose(pd.DataFrame(rows).query("setting == 'grid'").miou.mean(), 0.25)


def test_a_run_in_a_folder_resumes_and_refuses_other_settings(tiny_v, phantom_pairs, tmp_path, monkeypatch):
    from groundiff_core.evaluation import ablation as ab

    grounder = gd.Grounder(tiny_v, SHORT)
    settings, window = ab.ablation_settings(SHORT, [2, 11], [10], len(grounder.layers))
    assert set(settings) == {(2, 10), (11, 10), *ab.POSTPROCESSING} and window[1] >= SHORT.window[1]
    full = ab.run_ablation(grounder, phantom_pairs, settings, window=window, out_dir=tmp_path / "a")
    # an interrupted run: the first image's rows only, and a last line cut in half
    rows = (tmp_path / "a" / ab.ROWS).read_text().splitlines()
    first_image = {p.pair_id for p in phantom_pairs if p.image_path == phantom_pairs[0].image_path}
    kept = [r for r in rows if json.loads(r)["pair_id"] in first_image]
    (tmp_path / "a" / ab.ROWS).write_text("\n".join(kept) + "\n" + rows[-1][:20])
    recorded = []
    real = gd.Grounder.record_batch
    monkeypatch.setattr(gd.Grounder, "record_batch", lambda self, images, *a, **k: recorded.append(len(images)) or real(self, images, *a, **k))
    again = ab.run_ablation(grounder, phantom_pairs, settings, window=window, out_dir=tmp_path / "a")
    assert recorded == [1]  # only the second image was recorded again
    key = lambda r: (r["pair_id"], r["setting"], r["L"], r["T"])  # noqa: E731
    assert sorted(map(key, again.rows)) == sorted(map(key, full.rows))
    _, back = ab.load_ablation(tmp_path / "a")
    assert len(back) == len(full.rows)
    with pytest.raises(ValueError, match="other settings, pairs or weights.*settings"):
        ab.run_ablation(grounder, phantom_pairs, {(2, 10): settings[(2, 10)]}, window=window, out_dir=tmp_path / "a")


def test_shards_split_the_images_and_load_back_together(tiny_v, phantom_pairs, tmp_path):
    from groundiff_core.evaluation import ablation as ab

    grounder = gd.Grounder(tiny_v, SHORT)
    settings = {(11, 20): dict(middle_layers=11, window_percent=20)}
    parts = [ab.run_ablation(grounder, phantom_pairs, settings, window=(0, 31), out_dir=tmp_path / f"s{i}",
                             shard=f"{i}/2") for i in range(2)]
    assert all(p.rows for p in parts)
    ids = [{r["pair_id"] for r in p.rows} for p in parts]
    assert not ids[0] & ids[1] and ids[0] | ids[1] == {p.pair_id for p in phantom_pairs}
    ident, rows = ab.load_ablation(tmp_path / "s0", tmp_path / "s1")
    assert len(rows) == len(phantom_pairs) and ident["window"] == [0, 31]


def test_the_shipped_grid_is_refused_when_it_is_not_what_the_page_computes(tiny_v, phantom_pairs, tmp_path):
    from groundiff_core.book import shipped_ablation
    from groundiff_core.book.shipped import RecheckMismatch
    from groundiff_core.evaluation import ablation as ab

    grounder = gd.Grounder(tiny_v, SHORT)
    settings, window = ab.ablation_settings(SHORT, [11], [20], len(grounder.layers))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as scripts/ship_ablation.py makes it (the re-check computes single-threaded)
    try:
        ab.run_ablation(grounder, phantom_pairs, settings, window=window, out_dir=tmp_path / "run")
    finally:
        torch.set_num_threads(threads)
    run = shipped_ablation.load(tmp_path / "run")
    pairs = run.pairs(phantom_pairs)
    run.check(grounder, pairs, settings, window)
    report = run.recheck(grounder, pairs, settings, window, n=1)
    assert report["rows"] == len(settings) * report["pairs"] and max(report["max_abs_diff"].values()) <= 1e-6
    with pytest.raises(ValueError, match="other settings, pairs or weights.*settings"):
        run.check(grounder, pairs, {k: v for k, v in settings.items() if k != "neither"}, window)
    with pytest.raises(ValueError, match="method.config"):
        run.check(gd.Grounder(tiny_v, SHORT.with_steps(20)), pairs, settings, window)
    from groundiff_core.book.shipped import recheck_selection

    checked = recheck_selection(pairs, 1)[0].pair_id
    first = next(r for r in run.rows if r["pair_id"] == checked and r["setting"] == "grid")
    first["miou"] += 0.01  # one shipped number changed: the live re-check names it
    with pytest.raises(RecheckMismatch, match=r"metric miou"):
        run.recheck(grounder, pairs, settings, window, n=1)
    run.rows = [r for r in run.rows if r["pair_id"] != pairs[-1].pair_id]  # a run shipped before it finished
    with pytest.raises(ValueError, match=rf"incomplete: {len(pairs) - 1} of its {len(pairs)} pairs"):
        run.pairs(phantom_pairs)
