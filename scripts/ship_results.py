"""Copy a finished (or running) phantom evaluation folder into the book as a shipped run.

    python scripts/ship_results.py RUN_DIR PHANTOM_DIR DEST
    # e.g. the book's main table and the fast-preset comparison:
    python scripts/ship_results.py /work/runs/main-paper /work/runs/phantom-test book/results/phantom-paper
    python scripts/ship_results.py /work/runs/main-fast  /work/runs/phantom-test book/results/phantom-fast

``RUN_DIR`` is a ``groundiff evaluate`` output folder (``results.jsonl``, ``run.json`` and, once it
finished, ``summary.json``); ``PHANTOM_DIR`` the phantom split it read (``groundiff phantom --out
PHANTOM_DIR --n N --split SPLIT``). DEST gets

* ``results.jsonl``: the latest row of each pair, every field kept, with ``image_path`` rewritten
  from this machine's absolute path to the path relative to the phantom folder
  (``images/phantom_20000000.png``); nothing else is changed;
* ``run.json`` and ``summary.json`` (if present) as they are;
* ``ship.json``: the phantom command that regenerates the images (checked here: the split is
  regenerated into a temporary folder and its annotation CSV must equal PHANTOM_DIR's), the number
  of rows and of pairs in the split, whether the run had finished (a ``--n-pairs`` run finishes
  with fewer rows), and when it was shipped.

Rerun it on the final folders to replace a partial copy.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import shutil
import sys
import tempfile
from pathlib import Path


def phantom_command(phantom_dir: Path) -> tuple[str, int, str]:
    """``(command, n_images, split)`` of the phantom split in ``phantom_dir``, checked by
    regenerating it: its annotation CSV must be byte-identical."""
    from groundiff_core.phantom.generator import SPLIT_SEEDS, write_phantom_set

    csv_path = phantom_dir / "annotations.csv"
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    images = sorted({r["path"] for r in rows})
    splits = {r["split"] for r in rows}
    if len(splits) != 1:
        raise ValueError(f"{csv_path}: expected one split, found {sorted(splits)}")
    split = splits.pop()
    first = min(int(Path(p).stem.split("_")[-1]) for p in images)
    if first != SPLIT_SEEDS[split]:
        raise ValueError(f"{csv_path}: first image seed {first} is not the {split!r} split's {SPLIT_SEEDS[split]}")
    with tempfile.TemporaryDirectory() as tmp:
        again = write_phantom_set(tmp, len(images), split=split, progress=False)
        if Path(again).read_bytes() != csv_path.read_bytes():
            raise ValueError(f"{csv_path} is not what `groundiff phantom --n {len(images)} --split {split}` writes")
    return f"groundiff phantom --out DIR --n {len(images)} --split {split}", len(images), split


def ship(run_dir: Path, phantom_dir: Path, dest: Path) -> dict:
    from groundiff_core.evaluation import load_results

    for name in ("results.jsonl", "run.json"):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir / name} is missing")
    command, n_images, split = phantom_command(phantom_dir)
    root = phantom_dir.resolve()
    rows = load_results(run_dir)
    for r in rows:
        path = Path(r["image_path"])
        if path.is_absolute():
            try:
                r["image_path"] = path.resolve().relative_to(root).as_posix()
            except ValueError:
                raise ValueError(f"{r['pair_id']}: image {path} is not under {phantom_dir}") from None
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    shutil.copyfile(run_dir / "run.json", dest / "run.json")
    finished = (run_dir / "summary.json").is_file()
    if finished:
        shutil.copyfile(run_dir / "summary.json", dest / "summary.json")
    else:
        (dest / "summary.json").unlink(missing_ok=True)
    run = json.loads((run_dir / "run.json").read_text())
    facts = {"source": str(run_dir), "phantom_command": command, "phantom_images": n_images,
             "phantom_split": split, "rows": len(rows),
             "pairs_in_split": ((run.get("identity") or {}).get("data") or {}).get("pairs"), "finished": finished,
             "shipped": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    (dest / "ship.json").write_text(json.dumps(facts, indent=2) + "\n")
    return facts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("phantom_dir", type=Path)
    p.add_argument("dest", type=Path)
    args = p.parse_args(argv)
    facts = ship(args.run_dir, args.phantom_dir, args.dest)
    print(f"shipped {facts['rows']} rows of the split's {facts['pairs_in_split']} pairs "
          f"({'finished' if facts['finished'] else 'UNFINISHED'} run) to {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
