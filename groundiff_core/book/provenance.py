"""What each notebook page was computed from: the provenance dict (also written as
``provenance.json``) and the box that opens every page. Re-exported by :mod:`groundiff_core.book.pages`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from groundiff_core.book.data import BookData

__all__ = ["provenance", "provenance_box", "provenance_markdown"]


def provenance(data: "BookData", ldm: Any, *, preset: str = "paper", conventions: str = "paper",
               config: Any = None, output_dir: str | os.PathLike | None = None,
               extra: dict | None = None) -> dict:
    """What a notebook page was computed from, as a dict (and ``output_dir/provenance.json``).

    Keys: ``dataset`` (the data description: name, CSV, split, pairs), ``pairs_per_class`` of the
    selected pairs, ``model`` (name, source, input size, ``weights_sha256``: the evaluation
    runner's fingerprint of every tensor of the networks), ``preset``, ``conventions``, ``config``
    (the grounding configuration, if given), ``device``, ``dtype``, ``versions``
    (:func:`groundiff_core.util.environment.versions`), ``git`` (commit and whether the tree had
    uncommitted changes, when run inside a git checkout) and ``date`` (UTC).
    """
    from collections import Counter

    from groundiff_core.evaluation.identity import model_content
    from groundiff_core.util.clock import now
    from groundiff_core.util.environment import versions

    content = model_content(ldm) if hasattr(ldm, "unet") else {}
    info = getattr(ldm, "info", None) or {}
    per_class = dict(sorted(Counter(p.category for p in data.selected).items()))
    prov = {
        "dataset": dict(data.description),
        "pairs_per_class": per_class,
        "model": {"name": getattr(ldm, "name", type(ldm).__name__), "source": info.get("source"),
                  "input_size": getattr(ldm, "input_size", None),
                  "weights_sha256": content.get("weights_sha256")},
        "preset": preset,
        "conventions": conventions,
        "config": config.to_dict() if callable(getattr(config, "to_dict", None)) else config,
        "device": str(getattr(ldm, "device", "")),
        "dtype": str(getattr(ldm, "dtype", "")).replace("torch.", ""),
        "versions": versions(),
        "git": _git_state(),
        "date": now(),
    }
    if extra:
        prov.update(extra)
    if output_dir is not None:
        from groundiff_core.util.fileio import write_json

        write_json(Path(output_dir) / "provenance.json", prov)
    return prov


def _git_state() -> dict | None:
    """Commit of the working directory's git checkout and whether it has uncommitted changes."""
    from groundiff_core.util.environment import git_state

    state = git_state(Path.cwd())
    return state if state.get("commit") else None


def provenance_markdown(prov: dict) -> str:
    """The provenance of :func:`provenance` as a MyST ``admonition`` (a box at the top of a page)."""
    ds = prov.get("dataset", {})
    name = ds.get("name", "?")
    where = "the phantom test split (synthetic images)" if name == "phantom" else \
        f"{name} ({ds.get('csv', '?')}{', split ' + str(ds['split']) if ds.get('split') else ''})"
    per_class = ", ".join(f"{c} {n}" for c, n in prov.get("pairs_per_class", {}).items())
    model = prov.get("model", {})
    sha = model.get("weights_sha256") or ""
    v = prov.get("versions", {})
    packages = ", ".join(f"{k} {v[k]}" for k in ("groundiff_core", "torch", "diffusers", "numpy") if v.get(k))
    git = prov.get("git") or {}
    commit = f"`{git['commit'][:12]}`" + (" (with uncommitted changes)" if git.get("dirty") else "") \
        if git.get("commit") else "not in a git checkout"
    rows = [
        ("Data", f"{where}: {ds.get('selected', '?')} of {ds.get('pairs', '?')} pairs"
                 + (f" (seed {ds['selection_seed']})" if ds.get("selection_seed") is not None else "")),
        ("Pairs per class", per_class or "none"),
        ("Model", f"{model.get('name', '?')}" + (f", input {model['input_size']} px" if model.get("input_size") else "")
                  + (f", weights SHA-256 `{sha[:16]}`" if sha else "")),
        ("Preset and conventions", f"{prov.get('preset')} preset, {prov.get('conventions')} scoring conventions"),
        ("Device", f"{prov.get('device')}, {prov.get('dtype')}"),
        ("Software", f"Python {v.get('python', '?')}; {packages}"),
        ("Commit", commit),
        ("Run", f"{prov.get('date', '?')} (UTC)"),
    ]
    shipped = prov.get("shipped")
    if shipped and "folder" in shipped:  # groundiff_core.book.shipped: the page's model row read from a run made earlier
        rows.insert(1, ("Shipped run", f"cross-attention rows of {shipped.get('pairs')} pairs from `{shipped.get('folder')}`"
                        f": `{shipped.get('command')}`, {shipped.get('date')}, weights SHA-256 "
                        f"`{(shipped.get('weights_sha256') or '')[:16]}`; + live re-check of a seeded subset on this page"))
    elif shipped:  # several runs, one per method: {label: provenance}
        shas = {(r.get("weights_sha256") or "")[:16] for r in shipped.values()}
        rows.insert(1, ("Shipped runs", "; ".join(f"{k}: {r.get('pairs')} pairs from `{r.get('folder')}`"
                                                  for k, r in shipped.items())
                        + f"; weights SHA-256 {', '.join(f'`{h}`' for h in sorted(shas))}; the table reads them on "
                          "the pairs all of them scored; + live re-check of a seeded image of each on this page"))
    kind = "note" if name == "phantom" else "important"
    title = "Computed on the synthetic phantom" if name == "phantom" else f"Computed on {name}"
    body = "\n".join(f"| {k} | {str(val).replace('|', '/')} |" for k, val in rows)
    return (f"```{{admonition}} {title}\n:class: {kind} provenance\n\n| | |\n|---|---|\n{body}\n```\n")


def provenance_box(data: "BookData", ldm: Any, **kw):
    """Compute :func:`provenance` (written to ``output_dir/provenance.json`` when given) and return
    it as an IPython ``Markdown`` object: the box that opens each notebook page."""
    from IPython.display import Markdown

    return Markdown(provenance_markdown(provenance(data, ldm, **kw)))
