"""Execute the book's five notebooks on an MS-CXR-shaped fixture and a MONAI bundle, then check them.

The fixture (``tests/book_fixture.py``): capitalised MS-CXR category names, JPEGs at half the size
the CSV states, multi-box pairs, "Left ..."/"right ..." phrases with punctuation, a pair whose box
vanishes after the centre crop, and the paper's architecture scaled down as a MONAI bundle folder.
Everything is written to a temporary folder (never into ``book/``); the notebooks run with the
quick profile on every pair (``-p n_pairs 0``; notebook 5 on 4 of them), and :mod:`groundiff_core.book.check` then requires
every page to have run without error, to state the dataset it ran on, and its metrics in range.

    python scripts/book_fixture.py [--workdir DIR] [--keep]    # make book-fixture
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _render_and_check(project: Path, names: list[str]) -> list[str]:
    """Render the fixture's executed notebooks with the book's own pages and configuration
    (``jupyter-book build -W``) and check every notebook page's HTML."""
    import subprocess

    from groundiff_core.book import check as bookcheck

    book_dir = project / "book"
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(ROOT / name, project / name)
        (book_dir / name).unlink(missing_ok=True)
        (book_dir / name).symlink_to(f"../{name}")
    for page in (ROOT / "book").glob("*.md"):
        shutil.copy(page, book_dir / page.name)
    shutil.copy(ROOT / "book/references.bib", book_dir / "references.bib")
    from groundiff_core.book.cost import cost_markdown  # included by cost.md

    (book_dir / "_generated").mkdir(parents=True, exist_ok=True)
    (book_dir / "_generated/cost.md").write_text(cost_markdown(ROOT / "benchmarks/results"))
    card = ROOT / "groundiff_core/phantom/weights/MODEL_CARD.md"  # included by phantom.md
    (project / "groundiff_core/phantom/weights").mkdir(parents=True, exist_ok=True)
    shutil.copy(card, project / "groundiff_core/phantom/weights/MODEL_CARD.md")
    cmd = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build", "book", "-W", "--keep-going"]
    done = subprocess.run(cmd, cwd=project, capture_output=True, text=True,  # render what was executed above
                          env={**os.environ, "GROUNDIFF_BOOK_EXECUTE": "off"})
    if done.returncode != 0:
        return ["jupyter-book build failed:\n" + (done.stdout[-4000:] + done.stderr[-4000:])]
    problems = bookcheck.check_html(book_dir / "_build/html", names=names)
    intro = (book_dir / "_build/html/intro.html").read_text(encoding="utf-8")
    if "Every notebook page of this build was computed on the synthetic phantom" in intro:
        problems.append("intro: says every page ran on the phantom, but they ran on the fixture")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, help="folder to use (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the folder afterwards (its path is printed)")
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="run only this notebook")
    parser.add_argument("--html", action="store_true",
                        help="also render the executed notebooks with the book's pages and check the HTML")
    parser.add_argument("--jobs", type=int, default=2, metavar="N", help="notebooks executed at once (default 2)")
    args = parser.parse_args(argv)
    # one thread per kernel: the fixture's networks are tiny, and on a shared 2-core machine a second
    # torch thread contends with everything else (a UNet call measured 0.5 s with 2 threads, 0.06 s with 1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from book_fixture import write_book_fixture

    from groundiff_core.book import runner as book
    from groundiff_core.book import check as bookcheck

    work = args.workdir or Path(tempfile.mkdtemp(prefix="groundiff-book-fixture-"))
    t0 = time.perf_counter()
    try:
        fx = write_book_fixture(work / "data")
        project = work / "project"
        (project / "notebooks").mkdir(parents=True, exist_ok=True)
        (project / "book").mkdir(exist_ok=True)  # the published figures notebook 2 and the claim ledger read
        shutil.copy(ROOT / "book/published.csv", project / "book/published.csv")
        for src in book.discover(ROOT / "notebooks"):
            shutil.copy(src, project / "notebooks" / src.name)
        common = {"model": str(fx["model"]), "dataset_csv": str(fx["csv"]),
                  "images_root": str(fx["images_root"]), "device": "cpu"}
        names = [s.stem for s in book.select(book.discover(project / "notebooks"), args.only)]
        # every pair (all the fixture's cases) for notebooks 1-4; the Captum notebook, which runs six
        # attribution methods per pair, on a seeded third of them
        batches = [([n for n in names if n != "05_captum"], {"n_pairs": 0}),
                   ([n for n in names if n == "05_captum"], {"n_pairs": 4})]
        try:
            for only, extra in batches:
                if only:
                    book.run_book(project, profile="quick", only=only, overrides={**common, **extra},
                                  command="scripts/book_fixture.py", jobs=args.jobs)
        except book.NotebookError as e:
            print(f"[book-fixture] FAILED: {e}", file=sys.stderr)
            return 1
        problems = bookcheck.check_book(project / "book/notebooks", dataset="mscxr", names=names)
        if args.html and not problems:
            problems += _render_and_check(project, names)
        for p in problems:
            print(f"[book-fixture] {p}", file=sys.stderr)
        if problems:
            return 1
        print(f"[book-fixture] {len(names)} notebook(s) on the MS-CXR-shaped fixture and the MONAI bundle: "
              f"no error, data stated, metrics in range ({time.perf_counter() - t0:.0f} s)")
        return 0
    finally:
        if args.keep or args.workdir:
            print(f"[book-fixture] outputs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
