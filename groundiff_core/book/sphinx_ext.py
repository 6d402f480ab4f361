"""``jupyter-book build book`` on its own gives the whole book: a Sphinx extension that executes the
notebooks whose pages are missing or out of date before the build reads its sources.

The book's pages are the notebooks executed by the runner (:mod:`groundiff_core.book.runner`:
papermill, the profile's parameters, the reproducibility record), never a second way of executing
them. At ``config-inited`` this extension asks the runner which pages are stale
(:func:`~groundiff_core.book.runner.stale_notebooks`: no executed copy, a changed source, a failed
run); if any, it runs them (two at a time), checks them as ``make book`` does
(:func:`groundiff_core.book.check.check_book`) and writes the generated fragments the pages include
(``_generated/cost.md``). With nothing stale it does nothing, so a second build takes seconds.

``GROUNDIFF_BOOK_PROFILE`` (``full`` by default, ``quick`` for the CI profile) is the profile of the
pages it executes; set, it also makes pages executed with another profile stale.
``GROUNDIFF_BOOK_EXECUTE=off`` renders what is there. A page that cannot be produced stops the build
with one line that says what to run; the build never ends with a chapter missing.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["setup", "ensure_pages", "toc_notebooks"]


def toc_notebooks(book: Path) -> list[str]:
    """The ``notebooks/NN_name`` pages the table of contents names."""
    import re

    text = (Path(book) / "_toc.yml").read_text(encoding="utf-8")
    return re.findall(r"file:\s*notebooks/([0-9][0-9]_[A-Za-z0-9_]+)", text)


def ensure_pages(book: Path, profile: str | None = None) -> list[str]:
    """Execute the stale pages of the book in ``book`` (the runner, then its checks); the names run.
    Raises ``RuntimeError`` with one line naming what to do when a page cannot be produced."""
    from groundiff_core.book import check as bookcheck
    from groundiff_core.book import runner

    book = Path(book).resolve()
    root = book.parent
    sources = {p.stem for p in (root / "notebooks").glob("[0-9][0-9]_*.py")}
    missing = [n for n in toc_notebooks(book) if n not in sources and not (book / "notebooks" / f"{n}.ipynb").is_file()]
    if missing:
        raise RuntimeError(f"the book's page notebooks/{missing[0]} has no source notebooks/{missing[0]}.py and was "
                           f"never executed: restore it (git checkout -- notebooks/{missing[0]}.py) and build again")
    if not sources:  # executed pages without sources (a copy of the rendered book): render them as they are
        return []
    stale = runner.stale_notebooks(root, profile)
    if not stale:
        return []
    run_profile = profile or "full"
    print(f"[groundiff] executing {len(stale)} page(s) of the book ({run_profile} profile): {', '.join(stale)}",
          flush=True)
    try:
        runner.run_book(root, profile=run_profile, only=stale, jobs=min(2, len(stale)),
                        command="jupyter-book build book")
    except runner.NotebookError as e:
        raise RuntimeError(f"{e}; fix it and build again, or run `make book` for the full log") from None
    checked = [n for n in stale if n in bookcheck.METRIC_FILES]  # the book's own pages, as `make book` checks them
    problems = bookcheck.check_book(book / "notebooks", names=checked) if checked else []
    if problems:
        raise RuntimeError(f"{problems[0]} ({len(problems)} problem(s) in the executed pages; "
                           "`python -m groundiff_core.book.check book/notebooks` lists them)")
    _write_cost(book)
    return stale


def _write_cost(book: Path) -> None:
    """The cost page's fragment (``_generated/cost.md``) from the benchmark files, where the project has them."""
    results = Path(book).resolve().parent / "benchmarks" / "results"
    if results.is_dir():
        from groundiff_core.book.cost import cost_markdown

        (Path(book) / "_generated").mkdir(exist_ok=True)
        (Path(book) / "_generated" / "cost.md").write_text(cost_markdown(results))


def _on_config(app, config) -> None:
    if os.environ.get("GROUNDIFF_BOOK_EXECUTE", "").lower() == "off":
        return
    from sphinx.errors import ExtensionError

    try:
        ran = ensure_pages(Path(app.srcdir), os.environ.get("GROUNDIFF_BOOK_PROFILE") or None)
    except RuntimeError as e:
        raise ExtensionError(f"groundiff: {e}") from None
    if not ran and not (Path(app.srcdir) / "_generated" / "cost.md").is_file():  # e.g. after `make clean`
        _write_cost(Path(app.srcdir))
    if not (Path(app.srcdir) / "_generated" / "claims.md").is_file() and (Path(app.srcdir) / "published.csv").is_file():
        from groundiff_core.book.ledger import write_ledger

        write_ledger(Path(app.srcdir))


def setup(app):
    app.connect("config-inited", _on_config)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
