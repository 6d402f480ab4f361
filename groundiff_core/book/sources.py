"""The book's notebook sources: find ``notebooks/NN_name.py``, pick some, convert one to a notebook.

The sources are jupytext percent-format files; every other part of the runner works on the
notebook that :func:`read_source` makes of one, with the ``groundiff`` kernel named in it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

__all__ = ["KERNEL_NAME", "discover", "read_source", "select"]

KERNEL_NAME = "groundiff"


def discover(notebooks_dir: Path) -> list[Path]:
    """The book's sources: ``NN_name.py`` files in ``notebooks_dir``, in order."""
    notebooks_dir = Path(notebooks_dir)
    if not notebooks_dir.is_dir():
        raise FileNotFoundError(f"notebook folder {notebooks_dir} does not exist")
    found = sorted(p for p in notebooks_dir.glob("[0-9][0-9]_*.py") if p.is_file())
    if not found:
        raise FileNotFoundError(f"no notebook sources (NN_name.py) in {notebooks_dir}")
    return found


def select(sources: Sequence[Path], only: Sequence[str]) -> list[Path]:
    """The sources named in ``only`` (``02_main_table``, or its number ``2``/``02``), in book order;
    all of them when ``only`` is empty. An unknown name is a ValueError listing the available ones."""
    sources = list(sources)
    if not only:
        return sources
    chosen: list[Path] = []
    for want in only:
        hits = [s for s in sources if s.stem == want or (want.isdigit() and s.stem[:2] == f"{int(want):02d}")]
        if not hits:
            raise ValueError(f"no notebook named {want!r}; available: {[s.stem for s in sources]}")
        chosen += [h for h in hits if h not in chosen]
    return sorted(chosen)


def read_source(source: Path):
    """The notebook (``nbformat.NotebookNode``) of a jupytext percent ``.py`` source, set to run on
    the ``groundiff`` kernel (see :func:`groundiff_core.book.runner.ensure_kernel`)."""
    import jupytext

    nb = jupytext.read(source, fmt="py:percent")
    nb.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": "Python (groundiff)", "language": "python"}
    nb.metadata.setdefault("language_info", {"name": "python"})
    return nb
