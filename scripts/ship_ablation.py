"""The book's L/T ablation on the phantom test split, as a shipped run: every grid cell and
post-processing row of notebook 3 on whole images of the split, at least ``--n-pairs`` pairs.

    # two single-threaded shards side by side (as the book's live re-check grounds), then ship:
    python scripts/ship_ablation.py run --testset /work/runs/card/testset --shard 0/2 --out /work/runs/abl-0of2 &
    python scripts/ship_ablation.py run --testset /work/runs/card/testset --shard 1/2 --out /work/runs/abl-1of2 &
    wait
    python scripts/ship_ablation.py ship --testset /work/runs/card/testset /work/runs/abl-0of2 /work/runs/abl-1of2 \
        --dest book/results/phantom-ablation

``--testset`` is ``groundiff phantom --out DIR --n 220 --split test`` (the split of
``book/results/phantom-paper``). Resumable: run the same command again and each shard continues
where it stopped (``groundiff_core.evaluation.ablation.run_ablation``). The settings are the page's
defaults (``L_values``, ``T_values``, 300 steps); ``ship`` writes ``run.json`` (the identity both
shards share), ``ablation.jsonl`` (rows with image paths relative to the phantom folder) and
``ship.json`` (the phantom command, the pairs, when).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

L_VALUES = [1, 2, 4, 6, 8, 11]  # notebook 3's defaults
T_VALUES = [5, 10, 20, 40, 60, 100]
STEPS = 300


def _setup(testset: Path, n_pairs: int, seed: int):
    import torch

    import groundiff_core as gd
    from groundiff_core.book.shipped import recheck_selection
    from groundiff_core.evaluation.ablation import ablation_settings
    from groundiff_core.io.datasets import load_dataset

    torch.set_num_threads(1)
    pairs = load_dataset("phantom", testset / "annotations.csv")
    chosen = recheck_selection(pairs, n_pairs, seed)  # whole images of the seeded subset
    ldm = gd.load_model("phantom")
    config = gd.GroundingConfig.paper().with_steps(STEPS)
    grounder = gd.Grounder(ldm, config, batch_size=2)
    settings, window = ablation_settings(config, L_VALUES, T_VALUES, len(grounder.layers))
    return grounder, chosen, settings, window


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--testset", type=Path, required=True)
    r.add_argument("--n-pairs", type=int, default=200)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--shard", default=None)
    r.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("ship")
    s.add_argument("folders", nargs="+", type=Path)
    s.add_argument("--testset", type=Path, required=True)
    s.add_argument("--dest", type=Path, required=True)
    args = ap.parse_args()

    from groundiff_core.evaluation.ablation import ROWS, RUN, load_ablation, run_ablation
    from groundiff_core.util.clock import now
    from groundiff_core.util.fileio import atomic_write, write_json

    if args.cmd == "run":
        grounder, chosen, settings, window = _setup(args.testset, args.n_pairs, args.seed)
        res = run_ablation(grounder, chosen, settings, window=window, out_dir=args.out, shard=args.shard)
        print(f"{len({r['pair_id'] for r in res.rows})} pairs in {args.out}")
        return
    ident, rows = load_ablation(*args.folders)
    root = str(args.testset.resolve()) + "/"
    for row in rows:
        row.pop("image_path", None)
    pairs = sorted({r["pair_id"] for r in rows})
    args.dest.mkdir(parents=True, exist_ok=True)
    write_json(args.dest / RUN, {"identity": ident, "merged_from": [f.name for f in args.folders], "created": now()})
    atomic_write(args.dest / ROWS, "".join(json.dumps(r) + "\n" for r in rows))
    n_images = len(list((args.testset / "images").glob("*.png"))) if (args.testset / "images").is_dir() else None
    write_json(args.dest / "ship.json", {"phantom_command": f"groundiff phantom --out DIR --n {n_images} --split test",
                                         "pairs": len(pairs), "rows": len(rows), "shipped": now(),
                                         "testset": root.rstrip("/").rsplit("/", 1)[-1]})
    print(f"shipped {len(rows)} rows of {len(pairs)} pairs to {args.dest}")


if __name__ == "__main__":
    main()
