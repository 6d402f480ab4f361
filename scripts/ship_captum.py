"""The Captum page's shipped run: every attribution method of notebook 5, with the page's settings,
on a seeded 200 of the 428 pairs of the main table's phantom split (``book/results/phantom-paper``).

    python scripts/ship_captum.py work --runs R --shard 0/2 &   # one worker per core,
    python scripts/ship_captum.py work --runs R --shard 1/2 &   # single-threaded each
    wait; python scripts/ship_captum.py ship --runs R            # merge and ship

``work`` evaluates the methods one after the other, the cheapest first (so an interrupted run has
whole methods done), each on the same seeded 200 pairs (:func:`groundiff_core.io.datasets.subset`);
rerun it and it resumes (``evaluate`` keeps the rows it has).
The settings are the declared defaults of ``notebooks/05_captum.py``'s parameters cell (read with
papermill's inspector), so the page and its shipped run cannot drift apart; the page refuses the run
unless its identity is what the page builds. ``ship`` merges each method's shards and copies the
result to ``book/results/phantom-captum/<method>/`` with ``scripts/ship_results.py``.
Cost on 2 free cores: about 60 s per pair per worker for the six methods (single-threaded).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "05_captum.py"
PHANTOM_IMAGES = 220  # the main table's split (book/results/phantom-paper/ship.json)
N_PAIRS = 200
# seconds per pair measured on one phantom pair (2 threads): Grad-CAM 0.4, Saliency 0.7, SmoothGrad 5.3,
# GradientShap 5.6, Integrated Gradients 10.8, Occlusion 12.6
CHEAPEST_FIRST = ("grad_cam", "saliency", "smoothgrad", "gradient_shap", "integrated_gradients", "occlusion")
DEST = ROOT / "book" / "results" / "phantom-captum"


def page_settings() -> dict:
    """The Captum page's declared parameter defaults."""
    from groundiff_core.book.parameters import declared_parameters

    return {k: p.value for k, p in declared_parameters(NOTEBOOK).items()}


def testset(runs: Path) -> Path:
    folder = runs / "testset"
    if not (folder / "annotations.csv").is_file():
        from groundiff_core.phantom.generator import write_phantom_set

        write_phantom_set(folder, PHANTOM_IMAGES, split="test", progress=False)
    return folder


def work(runs: Path, shard: str) -> None:
    import torch

    from groundiff_core.evaluation import evaluate
    from groundiff_core.io.datasets import load_dataset
    from groundiff_core.methods.attribution import ObjectiveConfig, make_methods
    from groundiff_core.models.loading import load_model

    torch.set_num_threads(1)  # as the page's live re-check grounds: the same reduction order
    s = page_settings()
    folder = testset(runs)
    pairs = load_dataset("phantom", folder / "annotations.csv")
    ldm = load_model("phantom", device="cpu")
    objective = ObjectiveConfig(n_draws=s["objective_draws"], seed=s["seed"])
    methods = make_methods(s["methods"], ldm, objective=objective, seed=s["seed"], ig_steps=s["ig_steps"],
                           n_samples=s["n_samples"], occlusion_window=s["occlusion_window"],
                           occlusion_stride=s["occlusion_stride"])
    i, n = shard.split("/")
    for name in sorted(methods, key=lambda k: CHEAPEST_FIRST.index(k) if k in CHEAPEST_FIRST else len(CHEAPEST_FIRST)):
        summary = evaluate(methods[name], pairs, runs / f"captum-{name}-{i}of{n}", dataset={"name": "phantom", "split": "test"},
                           n_pairs=N_PAIRS, shard=shard, seed=s["seed"], progress=False)
        print(f"{name} shard {shard}: {summary['n_pairs']} rows, {summary['seconds_per_pair']:.1f} s per pair", flush=True)


def ship(runs: Path, n_shards: int, dest: Path = DEST, names: list[str] | None = None) -> None:
    for name in names or page_settings()["methods"]:
        shards = [str(runs / f"captum-{name}-{i}of{n_shards}") for i in range(n_shards)]
        merged = runs / f"captum-{name}"
        subprocess.run([str(ROOT / ".venv/bin/groundiff"), "evaluate", "--merge", *shards, "--out", str(merged)],
                       check=True)
        subprocess.run([sys.executable, str(ROOT / "scripts/ship_results.py"), str(merged), str(testset(runs)),
                        str(dest / name)], check=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="verb", required=True)
    w = sub.add_parser("work")
    w.add_argument("--runs", type=Path, required=True)
    w.add_argument("--shard", default="0/1")
    sh = sub.add_parser("ship")
    sh.add_argument("--runs", type=Path, required=True)
    sh.add_argument("--shards", type=int, default=2)
    sh.add_argument("--dest", type=Path, default=DEST, help="default: book/results/phantom-captum")
    sh.add_argument("--only", nargs="*", help="these methods only (default: all of the page's)")
    args = p.parse_args(argv)
    if args.verb == "work":
        work(args.runs, args.shard)
    else:
        ship(args.runs, args.shards, args.dest, args.only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
