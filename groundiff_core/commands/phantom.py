"""``groundiff phantom``: write a synthetic chest phantom set (PNGs + MS-CXR-layout CSV)."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("phantom", help="generate a synthetic chest phantom benchmark",
                       description="Write N phantoms (16-bit PNGs) and annotations.csv in the MS-CXR "
                                   "layout. Deterministic by seed; splits use disjoint seed ranges.")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=int, default=200, help="number of images (default 200)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"],
                   help="seed range to draw from (default test: never used in training)")
    p.add_argument("--seed", type=int, default=None,
                   help="first seed (overrides the split's range); image i uses seed+i")
    p.add_argument("--overwrite", action="store_true", help="replace the files of an earlier set in --out "
                   "(annotations.csv, images/phantom_*.png); without it such a folder is refused")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from groundiff_core.phantom.generator import write_phantom_set

    out = Path(args.out)
    there = [p for p in [out / "annotations.csv", *sorted((out / "images").glob("phantom_*.png"))[:1]] if p.exists()]
    if there and not args.overwrite:
        raise ValueError(f"--out {out} already holds a phantom set ({there[0]}); writing would replace it: "
                         "choose another folder or pass --overwrite")
    path = write_phantom_set(out, args.n, split=args.split, seed=args.seed, progress=not args.no_progress)
    print(f"wrote {args.n} phantoms and {path}")
    return 0
