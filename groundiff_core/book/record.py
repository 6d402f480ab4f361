"""The reproducibility record: how each notebook of the book was run, and on what.

:func:`write_record` writes ``book/_generated/reproducibility.json`` (versions, hardware, git
state, environment variables, and per notebook its parameters, status, runtime, output files and
the ``provenance.json`` it wrote) and beside it the Markdown the book includes
(``reproducibility.md``, ``data_sources.md``, see :mod:`groundiff_core.book.markdown`) and the
claim ledger (``claims.md``, :mod:`groundiff_core.book.ledger`).
The runner rewrites it after every notebook, so a failed run still leaves its record.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from groundiff_core.util.clock import now
from groundiff_core.util.fileio import write_json
from groundiff_core.book.markdown import data_sources_markdown, record_markdown
from groundiff_core.util.environment import git_state, hardware, package_versions

__all__ = ["PACKAGES", "NotebookRun", "listing", "now", "read_provenance", "write_record"]

# the packages the record lists: the library's stack and the book's tools
PACKAGES = (
    "groundiff_core", "torch", "diffusers", "transformers", "numpy", "scipy", "scikit-image",
    "scikit-learn", "pandas", "matplotlib", "captum", "monai", "papermill", "jupytext",
    "jupyter-book",
)
# environment variables that change what a notebook computes or how fast
_ENVIRONMENT = ("PYTHONHASHSEED", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")


@dataclass
class NotebookRun:
    """How one notebook was executed (one entry of the reproducibility record)."""

    name: str
    source: str
    output: str
    output_dir: str
    parameters: dict[str, Any]
    injected: dict[str, Any] = field(default_factory=dict)
    status: str = "not run"
    runtime_s: float | None = None
    finished: str | None = None
    error: str | None = None
    files: list[str] = field(default_factory=list)
    provenance: dict | None = None  # the page's provenance.json (dataset, model fingerprint, ...), if written
    source_sha256: str | None = None  # of the source executed: a later build knows whether the page is current


def read_provenance(folder: Path) -> dict | None:
    """The ``provenance.json`` a notebook wrote (``pages.provenance``), without its version list."""
    path = Path(folder) / "provenance.json"
    try:
        prov = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return {k: v for k, v in prov.items() if k != "versions"} if isinstance(prov, dict) else None


def listing(folder: Path) -> list[str]:
    """Top-level files of a notebook's output folder, and each sub-folder as ``name/ (N files)``."""
    out = []
    for p in sorted(Path(folder).iterdir()):
        if p.is_file():
            out.append(p.name)
        elif p.is_dir():
            out.append(f"{p.name}/ ({sum(1 for q in p.rglob('*') if q.is_file())} files)")
    return out


def write_record(
    book_dir: Path, runs: Sequence[NotebookRun], *, profile: str, total_s: float, command: str | None = None
) -> dict:
    """Write ``_generated/reproducibility.json`` and ``.md``; notebooks not run this time keep
    their entry from the previous record (``--only``)."""
    gen = Path(book_dir) / "_generated"
    gen.mkdir(parents=True, exist_ok=True)
    path = gen / "reproducibility.json"
    previous: dict[str, Any] = {}
    if path.exists():
        try:
            previous = json.loads(path.read_text()).get("notebooks", {})
        except (json.JSONDecodeError, AttributeError):
            previous = {}
    notebooks = dict(previous)
    for r in runs:
        entry = dict(r.__dict__)
        entry["profile"] = profile
        notebooks[r.name] = entry
    record = {
        "generated": now(),
        "profile": profile,
        "command": command,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hardware": hardware(),
        "packages": package_versions(PACKAGES),
        "environment": {k: os.environ.get(k) for k in _ENVIRONMENT},
        "git": git_state(Path(book_dir).parent),
        "runtime_s_this_run": round(total_s, 2),
        "notebooks": dict(sorted(notebooks.items())),
    }
    write_json(path, record)
    (gen / "reproducibility.md").write_text(record_markdown(record))
    (gen / "data_sources.md").write_text(data_sources_markdown(record))
    if (Path(book_dir) / "published.csv").is_file():  # the book's first page includes the claim ledger
        from groundiff_core.book.ledger import write_ledger

        write_ledger(book_dir)
    return record
