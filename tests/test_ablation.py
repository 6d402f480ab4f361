"""The ablation grid as a library function: every setting's maps from one recording per image, scored
with the runner's boxes, equal to a fresh grounding with that setting."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

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
