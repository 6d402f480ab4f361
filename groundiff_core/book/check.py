"""Check what the book's notebooks wrote: every page ran, says what it ran on, and its metrics are in range.

After ``python -m groundiff_core.book`` each notebook ``NN_name`` leaves ``book/notebooks/NN_name.ipynb``
and a folder ``NN_name_files/`` with its metrics JSON and ``provenance.json``. :func:`check_book`
reads them and lists every problem:

* a notebook whose executed copy is missing or holds an error output;
* a missing ``provenance.json``, or one that names another dataset than expected;
* a metric outside its range: mIoU, AUC-ROC (exact and binned), the pointing game and the text
  sensitivity in [0, 1], |CNR| >= 0, every number finite, every confidence interval around its mean;
* a metrics file without a single metric (a notebook that silently evaluated nothing);
* a stray output: a bare file path or an object's repr printed above a figure (``PosixPath(...)``,
  ``'book/.../x.png'``, ``<Figure ...>``), and a table holding a number with more than 3 decimals
  (the book prints 3 significant digits) - in every output a reader sees (not in removed outputs).

:func:`check_html` does the same for the rendered pages: a provenance box, numbered figures whose
images exist, no error output, and, when the book was built for a public repository
(``GROUNDIFF_REPOSITORY_URL``, see :mod:`groundiff_core.book.hosting`), the repository link and the
Binder launch link.

``python -m groundiff_core.book.check book/notebooks [--dataset mscxr] [--html book/_build/html]``
exits 1 on any problem.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Sequence

from groundiff_core.book.hosting import Hosting, hosting_from_env, launch_url

__all__ = ["METRIC_FILES", "MIN_FIGURE_PX", "check_book", "check_html", "check_metrics", "check_outputs", "main"]

# the metrics file each notebook writes into its output folder
METRIC_FILES = {
    "01_method": "method_walkthrough.json",
    "02_main_table": "main_table.json",
    "03_ablation": "ablation.json",
    "04_failure_cases": "failure_cases.json",
    "05_captum": "captum.json",
}
UNIT = {"miou", "auc", "auc_binned", "pointing", "mIoU", "AUC-ROC", "text_sensitivity", "named_side_share",
        "AUC-ROC on original boxes", "mIoU on original boxes", "confusions"}
NON_NEGATIVE = {"cnr_abs", "|CNR|"}
ANY_REAL = {"cnr_signed", "CNR (signed)"}


MIN_FIGURE_PX = 480  # the narrowest figure image a page may show (pixels as saved, shown at 100 %)
_HIDDEN_OUTPUT = {"remove-output", "remove-cell", "remove_output", "remove_cell"}
_PATHLIKE = re.compile(r"""^(PosixPath\(.*\)|WindowsPath\(.*\)|<[\w.]+ (object )?at 0x[0-9a-f]+>|<Figure size .*>|"""
                       r"""\[?<matplotlib[^>]*>\]?|['"]?[\w./~-]*/[\w.~-]+\.(png|svg|pdf|json|jsonl|csv|npz|npy)['"]?)$""")
_LONG_DECIMAL_HTML = re.compile(r"<td[^>]*>\s*[-+]?\d+\.\d{4,}\s*</td>")
_LONG_DECIMAL_MD = re.compile(r"\|\s*[-+]?\d+\.\d{4,}\s*(?=\|)")
_INTERVAL = re.compile(r"\[\s*[-+]?\d*\.\d+,\s*[-+]?\d*\.\d+\s*\]")
_VERDICT = re.compile(r"intervals? (excludes|includes) 0|do not separate|scores (higher|lower)|intervals (do not )?overlap")
_PAIR_COUNT = re.compile(r"\b(?:on |n = )?(\d+) (?:scored )?pairs\b|\bn = (\d+)\b")


def _few_pairs_problems(ipynb: Path, i: int, text: str, html: str) -> list[str]:
    """Intervals or verdicts printed on fewer pairs than the minimum.

    A sentence (a line of Markdown or text) with an interval or a verdict and a pair count under
    :data:`~groundiff_core.evaluation.compare.MIN_PAIRS` is refused; a table row with an interval
    whose ``pairs`` column is under ``MIN_PER_CLASS`` (tables break results down by class) too.
    """
    from groundiff_core.evaluation.compare import MIN_PAIRS, MIN_PER_CLASS

    out = []
    for line in text.splitlines():
        if not (_INTERVAL.search(line) or _VERDICT.search(line)):
            continue
        counts = [int(a or b) for a, b in _PAIR_COUNT.findall(line)]
        if counts and min(counts) < MIN_PAIRS:
            out.append(f"{ipynb.name}: cell {i} gives an interval or verdict on {min(counts)} pairs (fewer than "
                       f"{MIN_PAIRS}): {line.strip()[:100]!r}; print 'too few pairs for a verdict' instead")
    for table in re.findall(r"<table.*?</table>", html, flags=re.S):
        rows = [[re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", r, flags=re.S)]
                for r in re.findall(r"<tr.*?</tr>", table, flags=re.S)]
        header = next((r for r in rows if "pairs" in r), None)
        if header is None:
            continue
        col = header.index("pairs")
        for r in rows:
            if len(r) == len(header) and r is not header and r[col].isdigit() and int(r[col]) < MIN_PER_CLASS \
                    and any(_INTERVAL.search(c) for c in r):
                out.append(f"{ipynb.name}: cell {i}: table row {r[0]!r} gives an interval on {r[col]} pairs "
                           f"(fewer than {MIN_PER_CLASS})")
    return out


def check_outputs(ipynb: Path) -> list[str]:
    """Stray outputs and over-long numbers in the outputs a reader of ``ipynb``'s page sees."""
    nb = json.loads(ipynb.read_text())
    problems = []
    for i, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "code" or _HIDDEN_OUTPUT & set(cell.get("metadata", {}).get("tags", [])):
            continue
        for o in cell.get("outputs", []) or []:
            data = o.get("data", {})
            plain = "".join(o.get("text", "")) if o.get("output_type") == "stream" else "".join(data.get("text/plain", ""))
            if o.get("output_type") == "stream" and o.get("name") == "stderr":
                continue  # warnings are shown as such; the runner's log keeps them
            if "image/png" not in data and "text/html" not in data and "text/markdown" not in data:
                lines = [ln.strip() for ln in plain.strip().splitlines() if ln.strip()]
                stray = [ln for ln in lines if _PATHLIKE.match(ln)]
                if stray:
                    problems.append(f"{ipynb.name}: cell {i} prints {stray[0][:80]!r} (a bare path or object repr; "
                                    "end the line with ';' or print a sentence)")
            html = "".join(data.get("text/html", ""))
            md = "".join(data.get("text/markdown", ""))
            problems += _few_pairs_problems(ipynb, i, md or ("" if html else plain), html)
            for text, pattern in ((html, _LONG_DECIMAL_HTML), (md, _LONG_DECIMAL_MD)):
                m = pattern.search(text)
                if m:
                    problems.append(f"{ipynb.name}: cell {i} shows a table number with more than 3 decimals "
                                    f"({re.sub('<[^>]+>', '', m.group(0)).strip(' |')}); round it (3 significant digits)")
    return problems


def _png_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a PNG's header, or None for anything else."""
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def _stat_problems(name: str, where: str, value: Any) -> list[str]:
    """Problems of one metric entry: a number, or a ``{mean, ci_low, ci_high}`` summary."""
    out = []
    signed = False  # a difference of two scores: any sign, a unit metric's within [-1, 1]
    if isinstance(value, dict):
        if "difference" in value and "mean" not in value:
            signed = True
            vals = [(k, value.get(k)) for k in ("difference", "ci_low", "ci_high")]
        elif "mean" in value:
            lo, m, hi = value.get("ci_low"), value.get("mean"), value.get("ci_high")
            if m is not None and lo is not None and hi is not None and not (lo - 1e-9 <= m <= hi + 1e-9):
                out.append(f"{where}: mean {m} outside its interval [{lo}, {hi}]")
            vals = [(k, value.get(k)) for k in ("mean", "ci_low", "ci_high")]
        elif "value" in value:  # text sensitivity
            vals = [(k, value.get(k)) for k in ("value", "ci_low", "ci_high")]
        else:
            vals = [(f"{k}", v) for k, v in value.items()  # a row-keyed table; counts are not the metric
                    if isinstance(v, (int, float)) and not isinstance(v, bool) and not str(k).startswith("n_")]
    else:
        vals = [("", value)]
    for k, v in vals:
        if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        label = f"{where}{'.' + k if k else ''}"
        if not math.isfinite(v):
            out.append(f"{label}: {v} is not finite")
        elif signed:
            if name in UNIT and not (-1 - 1e-9 <= v <= 1 + 1e-9):
                out.append(f"{label}: {v} outside [-1, 1] (a difference of two scores in [0, 1])")
        elif name in UNIT and not (-1e-9 <= v <= 1 + 1e-9):
            out.append(f"{label}: {v} outside [0, 1]")
        elif name in NON_NEGATIVE and v < -1e-9:
            out.append(f"{label}: {v} is negative")
    return out


def check_metrics(obj: Any) -> tuple[list[str], int]:
    """``(problems, n_metrics)`` of a metrics JSON object: every entry under a metric's name
    (see the module docstring) checked against that metric's range; ``n_metrics`` counts the
    entries that held a number."""
    problems: list[str] = []
    count = 0

    def walk(o: Any, path: str) -> None:
        nonlocal count
        if isinstance(o, dict):
            for k, v in o.items():
                where = f"{path}.{k}" if path else str(k)
                if k in UNIT | NON_NEGATIVE | ANY_REAL:
                    if isinstance(v, (int, float)) and not isinstance(v, bool) or \
                            isinstance(v, dict) and any(isinstance(x, (int, float)) for x in v.values()):
                        count += 1
                    problems.extend(_stat_problems(k, where, v))
                    if isinstance(v, dict) and not {"mean", "value"} & set(v):
                        walk(v, where)  # e.g. a table keyed by metric then by row
                else:
                    walk(v, where)
        elif isinstance(o, list):
            for i, v in enumerate(o):
                walk(v, f"{path}[{i}]")

    walk(obj, "")
    return problems, count


def _notebook_errors(ipynb: Path) -> list[str]:
    nb = json.loads(ipynb.read_text())
    out = []
    for i, cell in enumerate(nb.get("cells", [])):
        for o in cell.get("outputs", []) or []:
            if o.get("output_type") == "error":
                out.append(f"{ipynb.name}: cell {i} raised {o.get('ename')}: {o.get('evalue')}")
    return out


def check_book(notebooks_dir: str | Path, *, dataset: str | None = None,
               names: Sequence[str] | None = None) -> list[str]:
    """Every problem of the executed notebooks in ``notebooks_dir`` (empty list: all fine).

    ``dataset``: the dataset name every page's provenance must state (``"phantom"``, ``"mscxr"``);
    ``names``: the notebooks to check (default: those of :data:`METRIC_FILES`).
    """
    root = Path(notebooks_dir)
    problems: list[str] = []
    for name in names or list(METRIC_FILES):
        ipynb = root / f"{name}.ipynb"
        files = root / f"{name}_files"
        if not ipynb.is_file():
            problems.append(f"{name}: not executed ({ipynb} missing)")
            continue
        problems += _notebook_errors(ipynb)
        problems += check_outputs(ipynb)
        prov_path = files / "provenance.json"
        if not prov_path.is_file():
            problems.append(f"{name}: no provenance.json (the page does not say what it ran on)")
        else:
            prov = json.loads(prov_path.read_text())
            got = (prov.get("dataset") or {}).get("name")
            if dataset is not None and got != dataset:
                problems.append(f"{name}: ran on dataset {got!r}, expected {dataset!r}")
            if not (prov.get("model") or {}).get("weights_sha256"):
                problems.append(f"{name}: provenance has no weights fingerprint")
        metrics_file = files / METRIC_FILES.get(name, "")
        if name in METRIC_FILES:
            if not metrics_file.is_file():
                problems.append(f"{name}: no {metrics_file.name}")
                continue
            found, n = check_metrics(json.loads(metrics_file.read_text()))
            problems += [f"{name}/{metrics_file.name}: {p}" for p in found]
            if n == 0:
                problems.append(f"{name}/{metrics_file.name}: holds no metric")
    return problems


class _Page(HTMLParser):
    """The parts of a rendered notebook page that :func:`check_html` looks at."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.classes: list[str] = []
        self.figure_numbers = 0
        self._in_number = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        cls = a.get("class") or ""
        self.classes.append(cls)
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        if tag == "img":
            self.images.append(a.get("src") or "")
        if tag == "span" and "caption-number" in cls.split():
            self.figure_numbers += 1


def check_html(html_dir: str | Path, names: Sequence[str] | None = None, hosting: Hosting | None = None) -> list[str]:
    """Problems of the rendered notebook pages in ``html_dir`` (``book/_build/html``): each page
    must exist, open with its provenance box (an admonition of class ``provenance``), show at least
    one numbered figure (a ``caption-number``) whose images all exist and are at least
:data:`MIN_FIGURE_PX` pixels wide (a thumbnail strip squeezed into a small figure is unreadable),
and hold no error output.
    With ``hosting`` (the book was built for a public repository), each page must also link to the
    repository and carry its Binder launch link."""
    root = Path(html_dir)
    problems: list[str] = []
    for name in names or list(METRIC_FILES):
        page = root / "notebooks" / f"{name}.html"
        if not page.is_file():
            problems.append(f"{name}: no rendered page {page}")
            continue
        html = page.read_text(encoding="utf-8")
        parsed = _Page()
        parsed.feed(html)
        if not any("provenance" in c.split() for c in parsed.classes):
            problems.append(f"{name}: the page has no provenance box")
        if parsed.figure_numbers == 0:
            problems.append(f"{name}: the page has no numbered figure")
        for src in parsed.images:
            if src.startswith(("http:", "https:", "data:")) or "logo" in src:
                continue
            image = (page.parent / src.split("#")[0]).resolve()
            if not image.is_file():
                problems.append(f"{name}: image {src!r} does not exist")
                continue
            size = _png_size(image)
            if size is not None and size[0] < MIN_FIGURE_PX:
                problems.append(f"{name}: figure {src!r} is {size[0]} px wide, under {MIN_FIGURE_PX} px: too small to read")
        if any("output_error" in c or "traceback" in c.lower() for c in parsed.classes) or "Traceback (most recent" in html:
            problems.append(f"{name}: the page shows an error output")
        if hosting is not None:
            if launch_url(hosting, f"notebooks/{name}") not in parsed.links:
                problems.append(f"{name}: no Binder link {launch_url(hosting, f'notebooks/{name}')}")
            if hosting.repository_url not in parsed.links:
                problems.append(f"{name}: no link to the repository {hosting.repository_url}")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m groundiff_core.book.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks_dir", type=Path, nargs="?", help="the folder of executed notebooks (book/notebooks)")
    parser.add_argument("--html", type=Path, metavar="DIR", help="also check the rendered pages in DIR (book/_build/html)")
    parser.add_argument("--dataset", help="dataset name every page must state (phantom, mscxr, ...)")
    parser.add_argument("--only", action="append", default=None, metavar="NAME", help="check only this notebook")
    args = parser.parse_args(argv)
    if args.notebooks_dir is None and args.html is None:
        parser.error("give the notebooks folder, --html DIR, or both")
    problems = []
    if args.notebooks_dir is not None:
        problems += check_book(args.notebooks_dir, dataset=args.dataset, names=args.only)
    if args.html is not None:
        problems += check_html(args.html, names=args.only, hosting=hosting_from_env())
    for p in problems:
        print(f"[bookcheck] {p}", file=sys.stderr)
    if problems:
        print(f"[bookcheck] {len(problems)} problem(s)", file=sys.stderr)
        return 1
    done = []
    if args.notebooks_dir is not None:
        done.append(f"{args.notebooks_dir}: every notebook ran, states its data, metrics in range")
    if args.html is not None:
        done.append(f"{args.html}: every page has its provenance box, numbered figures that load, no error")
    print("[bookcheck] " + "; ".join(done))
    return 0


if __name__ == "__main__":
    sys.exit(main())
