"""The notebooks' helpers (data plumbing, trajectory pictures, figures) and one real notebook run
end to end on the tiny random model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from groundiff_core.book import pages as bookdata
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
    assert bookdata.side_of_phrase("small left pleural effusion") == "left"
    assert bookdata.side_of_phrase("Right apical pneumothorax") == "right"
    assert bookdata.side_of_phrase("bibasilar atelectasis") == "bilateral"
    assert bookdata.side_of_phrase("left and right effusions") == "bilateral"
    assert bookdata.side_of_phrase("cardiomegaly") == "none"


def test_keepmaps_returns_and_keeps(tmp_path):
    from groundiff_core.methods.baselines import CentrePrior, RandomHeatmap
    from groundiff_core.evaluation.runner import method_identity

    image = np.random.default_rng(0).random((20, 30)).astype(np.float32)
    kept = bookdata.KeepMaps(RandomHeatmap(seed=1))
    maps = kept.ground(image, ["a", "b"]).heatmaps
    assert np.array_equal(kept.get(image, "b"), maps[1])
    with pytest.raises(KeyError):
        kept.get(image * 0.5, "b")
    assert method_identity(kept)["method"] == "random" and kept.seed == 1
    assert method_identity(bookdata.KeepMaps(CentrePrior())) == method_identity(CentrePrior())


def test_save_json_cleans_numbers(tmp_path):
    path = bookdata.save_json({"a": np.float32(0.5), "b": float("nan"), "c": (1, 2), "d": Path("x")}, tmp_path, "m")
    assert json.loads(path.read_text()) == {"a": 0.5, "b": None, "c": [1, 2], "d": "x"}


def test_trajectory_shapes_and_ends(tiny):
    from groundiff_core.engine.config import GroundingConfig
    from groundiff_core.engine.trajectory import inversion_trajectory

    image = np.random.default_rng(0).random((40, 48)).astype(np.float32)
    cfg = GroundingConfig.paper().with_steps(20)
    traj = inversion_trajectory(tiny, image, [5, -1, 0, 5], cfg)
    assert traj.steps == [-1, 0, 5] and traj.timesteps[0] == -1
    assert traj.images.shape == (3, tiny.input_size, tiny.input_size)
    assert np.isfinite(traj.images).all() and traj.images.min() >= 0 and traj.images.max() <= 1
    again = inversion_trajectory(tiny, image, [5, -1, 0], cfg)
    assert np.array_equal(again.images, traj.images)  # deterministic on CPU
    with pytest.raises(ValueError, match="outside the trajectory"):
        inversion_trajectory(tiny, image, [traj.n_steps], cfg)


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


@pytest.mark.slow
def test_main_table_notebook_runs_on_the_tiny_model(tmp_path):
    """The real notebook 2, executed by the runner with papermill on the tiny random model."""
    (tmp_path / "notebooks").mkdir()
    src = ROOT / "notebooks/02_main_table.py"
    (tmp_path / "notebooks" / src.name).write_text(src.read_text())
    runs = runner.run_book(tmp_path, overrides={"model": "tiny", "n_pairs": 2, "captum_pairs": 1,
                                                "phantom_images": 4, "n_boot": 50, "seed": 1})
    files = tmp_path / "book/notebooks/02_main_table_files"
    assert runs[0].status == "ok"
    table = (files / "class_averaged.csv").read_text()
    assert "cross-attention (paper preset)" in table and "centre prior" in table
    result = json.loads((files / "main_table.json").read_text())
    assert result["summaries"]["cross-attention (paper preset)"]["n_pairs"] == 2
    assert (files / "per_class_bars.png").is_file()
