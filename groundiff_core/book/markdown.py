"""The runner's record as Markdown, for the book's pages to include.

:func:`record_markdown` renders ``reproducibility.json`` (environment, versions, notebooks and
their parameters) for the reproducibility page; :func:`data_sources_markdown` says what data and
model each page was computed on, for the introduction and the reproducibility page. Both are pure
functions of the record's dict (see :func:`groundiff_core.book.record.write_record`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

__all__ = ["data_sources_markdown", "record_markdown"]


def _source_of(nb: Mapping[str, Any]) -> tuple[str, str, str]:
    """(dataset, model, weights fingerprint) of one notebook entry of the record."""
    prov = nb.get("provenance") or {}
    ds, model = prov.get("dataset") or {}, prov.get("model") or {}
    params = nb.get("parameters") or {}
    if ds:
        name = ds.get("name", "?")
        data = "the synthetic phantom test split" if name == "phantom" else \
            f"{name} (`{ds.get('csv', '?')}`{', split ' + str(ds['split']) if ds.get('split') else ''})"
        data += f", {ds.get('selected', '?')} of {ds.get('pairs', '?')} pairs"
    else:
        csv = params.get("dataset_csv")
        data = "the synthetic phantom test split" if csv in (None, "", "phantom") else f"`{Path(str(csv)).name}`"
    sha = (model.get("weights_sha256") or "")[:16]
    return data, str(model.get("name") or params.get("model", "?")), f"`{sha}`" if sha else "not recorded"


def data_sources_markdown(record: Mapping[str, Any]) -> str:
    """What each page of the book was computed on, from the runner's record: an admonition that says
    whether every page ran on the phantom, then one row per notebook (dataset, model, weights
    fingerprint, profile, status). The introduction and the reproducibility page include it."""
    notebooks = record.get("notebooks", {})
    rows, phantom_only = [], True
    for name, nb in notebooks.items():
        data, model, sha = _source_of(nb)
        phantom_only &= data.startswith("the synthetic phantom")
        rows.append(f"| {name} | {_md_cell(data)} | {_md_cell(model)} | {sha} | {nb.get('profile', '')} "
                    f"| {nb.get('status')} |")
    if not notebooks:
        head = "```{warning}\nNo notebook of this book has been executed yet.\n```\n"
    elif phantom_only:
        head = ("```{important}\n**Every notebook page of this build was computed on the synthetic phantom test "
                "bed, not on real chest X-rays.** Its figures say nothing about radiology and are not comparable "
                "with the paper's numbers.\n```\n")
    else:
        others = sorted({_source_of(nb)[0].split(",")[0] for nb in notebooks.values()})
        head = ("```{important}\n**The pages of this build were computed on different data:** "
                + "; ".join(others) + ". Each page's box at its top says which; the table below lists all.\n```\n")
    table = ["| notebook | data | model | weights SHA-256 | profile | status |", "|---|---|---|---|---|---|"]
    return head + "\n" + "\n".join(table + rows) + "\n"


def _md_cell(v: Any) -> str:
    s = json.dumps(v, default=str) if not isinstance(v, str) else v
    return s.replace("|", "\\|").replace("\n", " ")


def record_markdown(rec: Mapping[str, Any]) -> str:
    """The reproducibility page's tables: environment, package versions, one row per notebook
    (profile, status, runtime, seed) and each notebook's parameters."""
    hw = rec["hardware"]
    lines = [
        "## Environment",
        "",
        "| | |",
        "|---|---|",
        f"| Generated (UTC) | {rec['generated']} |",
        f"| Profile of the last run | `{rec['profile']}` |",
    ]
    if rec.get("command"):
        lines.append(f"| Command | `{rec['command']}` |")
    git = rec.get("git") or {}
    if git.get("commit"):
        lines.append(f"| Git commit | `{git['commit'][:12]}`{' (uncommitted changes)' if git.get('dirty') else ''} |")
    lines += [
        f"| Python | {rec['python']} |",
        f"| Platform | {_md_cell(rec['platform'])} |",
        f"| CPU | {_md_cell(hw.get('cpu'))} ({hw.get('cpu_count')} cores) |",
        f"| GPU | {_md_cell(hw.get('gpu') or 'none')} |",
    ]
    for k, v in rec["environment"].items():
        if v is not None:
            lines.append(f"| `{k}` | `{v}` |")
    lines += ["", "## Package versions", "", "| package | version |", "|---|---|"]
    lines += [f"| {k} | {v or 'not installed'} |" for k, v in rec["packages"].items()]
    lines += [
        "",
        "## Notebooks",
        "",
        "| notebook | profile | status | runtime (s) | seed | finished (UTC) |",
        "|---|---|---|---|---|---|",
    ]
    for name, nb in rec["notebooks"].items():
        rt = "" if nb.get("runtime_s") is None else f"{nb['runtime_s']:.1f}"
        seed = nb.get("parameters", {}).get("seed", "")
        lines.append(
            f"| {name} | {nb.get('profile', '')} | {nb.get('status')} | {rt} | {seed} | {nb.get('finished') or ''} |"
        )
    lines += ["", "## Parameters per notebook", ""]
    for name, nb in rec["notebooks"].items():
        lines += [f"### {name}", "", "| parameter | value |", "|---|---|"]
        lines += [f"| `{k}` | `{_md_cell(v)}` |" for k, v in nb.get("parameters", {}).items()]
        lines.append("")
    return "\n".join(lines) + "\n"
