"""The claim ledger: each claim of the paper, the published figure with its source, this build's
figure with its pairs and interval, the strongest baseline on the same pairs, and a verdict given by
one stated rule. Computed from the executed pages' results and ``book/published.csv``, never typed.

Rules (each row also prints its own):

* comparisons on the same pairs are read by :func:`~groundiff_core.evaluation.compare.verdict`
  (a paired bootstrap interval of the class-averaged difference; no verdict below
  :data:`~groundiff_core.evaluation.compare.MIN_PAIRS` pairs);
* a figure compared with a published one: "reproduced" when this build's 95 % interval lies at or
  above it, "not reproduced" when it lies below, otherwise "not separable from the published figure";
* a per-class pattern needs at least :data:`MIN_PER_CLASS` pairs in every class;
* a claim about MS-CXR on another dataset is "needs MS-CXR"; one the library cannot test yet is
  "not testable here".

:func:`write_ledger` writes ``book/_generated/claims.md``, which the book's first page includes; the
runner rewrites it after every page it executes.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from groundiff_core.evaluation.compare import MIN_PAIRS, MIN_PER_CLASS, paired_difference, verdict

__all__ = ["MIN_PER_CLASS", "REPRODUCED", "NOT_REPRODUCED", "NOT_SEPARABLE", "NEEDS_MSCXR", "NOT_TESTABLE", "TOO_FEW",
           "NOT_EXECUTED", "claims", "ledger_markdown", "load_published", "write_ledger"]

#: Fewer pairs than this in a class and a per-class pattern gets no verdict.
REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced on this test bed"
NOT_SEPARABLE = "not separable from the published figure"
NEEDS_MSCXR = "needs MS-CXR"
NOT_TESTABLE = "not testable here"
TOO_FEW = "too few pairs for a verdict"
NOT_EXECUTED = "page not executed in this build"

LDM_ROW = "cross-attention (paper preset)"
PAPER_CODE = "paper code (layers 3, 4, 6, 7)"
_PUBLISHED_COLUMNS = ("label", "source", "table", "protocol", "method", "class", "metric", "value")


def fmt(x: float | None) -> str:
    """A figure to 3 significant digits ("-" when there is none)."""
    if x is None or not isinstance(x, (int, float)) or not math.isfinite(x):
        return "-"
    return f"{x:#.3g}".rstrip(".") if abs(x) >= 1e-3 or x == 0 else f"{x:.1e}"


def _few(stat: dict) -> bool:
    """Fewer pairs than :data:`MIN_PAIRS` behind a figure: no interval is printed for it."""
    n = stat.get("n_pairs", stat.get("n"))
    return n is not None and n < MIN_PAIRS


def _ci(stat: dict | None) -> str:
    if not stat or stat.get("mean") is None:
        return "-"
    s = fmt(stat["mean"])
    if stat.get("ci_low") is not None and stat.get("ci_high") is not None and not _few(stat):
        s += f" [{fmt(stat['ci_low'])}, {fmt(stat['ci_high'])}]"
    return s


def _diff(d: dict) -> str:
    if d.get("difference") is None:
        return "-"
    if _few(d):
        return f"{d['difference']:+#.3g}".rstrip(".")
    return f"{d['difference']:+#.3g} [{d['ci_low']:+#.3g}, {d['ci_high']:+#.3g}]".replace(". ", " ").replace(".,", ",").replace(".]", "]")


def load_published(path: str | Path) -> list[dict]:
    """The rows of the published-figures CSV (``book/published.csv``); a missing column or a
    non-numeric value is a ``ValueError`` naming the file and the row."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in _PUBLISHED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; expected {','.join(_PUBLISHED_COLUMNS)}")
        rows = []
        for i, row in enumerate(reader, start=2):
            try:
                row["value"] = float(row["value"])
                for k in ("ci_low", "ci_high"):
                    row[k] = float(row[k]) if row.get(k) not in (None, "") else None
            except ValueError:
                raise ValueError(f"{path}, line {i}: value {row['value']!r} is not a number") from None
            if not row["source"].strip():
                raise ValueError(f"{path}, line {i}: a published figure needs its source")
            rows.append(row)
    return rows


def _published(rows: list[dict], label: str, method: str, cls: str, metric: str) -> dict | None:
    for r in rows:
        if (r["label"], r["method"], r["class"].lower(), r["metric"]) == (label, method, cls.lower(), metric):
            return r
    return None


def _cite(r: dict | None, scale: float = 1.0, unit: str = "") -> str:
    if r is None:
        return "-"
    return f"{fmt(r['value'] * scale)}{unit} ({r['label']}, {r['method']})"


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _against_published(stat: dict | None, value: float) -> str:
    """This build's interval against a published point value (the second rule of the module)."""
    if not stat or stat.get("ci_low") is None:
        return TOO_FEW
    if stat.get("n_pairs", stat.get("n", MIN_PAIRS)) < MIN_PAIRS:
        return TOO_FEW
    if stat["ci_low"] >= value:
        return REPRODUCED
    if stat["ci_high"] < value:
        return NOT_REPRODUCED
    return NOT_SEPARABLE


def _claim(claim: str, published: str, ours: str, baseline: str, verdict_: str, rule: str) -> dict:
    return {"claim": claim, "published": published, "ours": ours, "baseline": baseline, "verdict": verdict_,
            "rule": rule}


def claims(book_dir: str | Path, published_csv: str | Path | None = None) -> list[dict]:
    """One dict per claim of the paper (keys ``claim``, ``published``, ``ours``, ``baseline``,
    ``verdict``, ``rule``), from the pages executed in ``book_dir`` (``book/``)."""
    book = Path(book_dir)
    pub = load_published(published_csv or book / "published.csv")
    nb = book / "notebooks"
    main = _read_json(nb / "02_main_table_files" / "main_table.json")
    abl = _read_json(nb / "03_ablation_files" / "ablation.json")
    out: list[dict] = []

    # 1. zero-shot grounding above the contrastive models on average mIoU and AUC-ROC, not CNR
    midl_ldm = _published(pub, "MIDL 2026 Table 1", "LDM (frozen)", "average", "miou")
    midl_t = _published(pub, "MIDL 2026 Table 1", "BioViL-T", "average", "miou")
    card_t = _published(pub, "BioViL-T card", "BioViL-T", "average", "miou")
    claim1 = ("Zero-shot cross-attention grounding is competitive with the contrastive models and better "
              "on average in mIoU and AUC-ROC, not in CNR (JBHI abstract)")
    published1 = (f"mIoU {_cite(midl_ldm)} against {_cite(midl_t)}; {_cite(card_t)} on full MS-CXR")
    rule1 = "this build's 95 % interval of class-averaged mIoU against BioViL-T's published average"
    if main is None:
        out.append(_claim(claim1, published1, "-", "-", NOT_EXECUTED, rule1))
    else:
        s = main["summaries"].get(LDM_ROW, {})
        ca = s.get("class_averaged", {})
        prior = main["summaries"].get("phrase prior", {}).get("class_averaged", {})
        ours = f"mIoU {_ci(ca.get('miou'))}, AUC-ROC {_ci(ca.get('auc'))} on {s.get('n_pairs', 0)} pairs"
        base = f"phrase prior: mIoU {_ci(prior.get('miou'))}, AUC-ROC {_ci(prior.get('auc'))}" if prior else "-"
        if main.get("dataset", {}).get("name") != "mscxr":
            v = NEEDS_MSCXR
        else:
            mi = dict(ca.get("miou") or {}, n_pairs=s.get("n_pairs", 0))
            v = _against_published(mi, max(r["value"] for r in (midl_t, card_t) if r))
        out.append(_claim(claim1, published1, ours, base, v, rule1))

    # 2. the maps come from the image: above the image-blind phrase prior, and lost on another image
    claim2 = ("The heatmap comes from the image, not from the phrase alone (what zero-shot grounding "
              "presumes; the paper has no image-blind baseline)")
    rule2 = (f"paired bootstrap on the same pairs, {MIN_PAIRS} pairs at least: method minus phrase prior "
             "above 0 on mIoU and AUC-ROC, and own image minus another image above 0 on mIoU")
    paired = (main or {}).get("paired_differences")
    if main is None or not paired:
        out.append(_claim(claim2, "-", "-", "-", NOT_EXECUTED, rule2))
    else:
        vp = paired.get("cross-attention minus phrase prior", {})
        vs = paired.get("own image minus another image", {})
        tests = [vp.get("miou", {}), vp.get("auc", {}), vs.get("miou", {})]
        got = [verdict(d) for d in tests]
        if "too few pairs" in got:
            v = TOO_FEW
        else:
            v = REPRODUCED if all(g == "above 0" for g in got) else NOT_REPRODUCED
        ours = (f"minus phrase prior: mIoU {_diff(tests[0])}, AUC-ROC {_diff(tests[1])}; "
                f"own minus another image: mIoU {_diff(tests[2])} ({tests[0].get('n_pairs', 0)} pairs)")
        prior = main["summaries"].get("phrase prior", {}).get("class_averaged", {})
        out.append(_claim(claim2, "-", ours, f"phrase prior: mIoU {_ci(prior.get('miou'))}", v, rule2))

    # 3. middle layers and middle steps are best
    claim3 = ("Middle layers and middle timesteps are best (L = 6, T = 20 % in the paper's summary; layers "
              "3, 4, 6, 7 in its code)")
    rule3 = "no cell of the L/T grid beats the paper code's setting on any metric by a paired interval excluding 0"
    if abl is None or not abl.get("paired_vs_paper_code"):
        out.append(_claim(claim3, "L = 6, T = 20 % (JBHI)", "-", "-", NOT_EXECUTED, rule3))
    else:
        ds = abl["paired_vs_paper_code"]
        got = {m: verdict(d) for m, d in ds.items()}
        ours = "; ".join(f"highest {m.replace('_difference', '')}: L = {d['cell'][0]}, T = {d['cell'][1]} %, "
                         f"minus paper code {_diff(d)}" for m, d in ds.items())
        if "too few pairs" in got.values():
            v = TOO_FEW
        else:
            v = NOT_REPRODUCED if "above 0" in got.values() else REPRODUCED
        n = max((d.get("n_pairs", 0) for d in ds.values()), default=0)
        out.append(_claim(claim3, "L = 6, T = 20 % (JBHI)", f"{ours} ({n} pairs)", "-", v, rule3))

    # 4. Otsu improves localisation
    claim4 = "Otsu thresholding of the smoothed map improves localisation (JBHI)"
    rule4 = "paired bootstrap of mIoU, with Otsu minus without, above 0"
    pairs_csv = nb / "03_ablation_files" / "ablation_pairs.csv"
    if abl is None or not pairs_csv.is_file():
        out.append(_claim(claim4, "-", "-", "-", NOT_EXECUTED, rule4))
    else:
        import pandas as pd

        df = pd.read_csv(pairs_csv)
        with_otsu, without = df[df.setting == PAPER_CODE], df[df.setting == "no Otsu"]
        ds = {m: paired_difference(with_otsu, without, m) for m in ("miou", "auc", "cnr_abs")}
        g = verdict(ds["miou"])
        v = TOO_FEW if g == "too few pairs" else (REPRODUCED if g == "above 0" else NOT_REPRODUCED)
        ours = (f"with minus without Otsu: mIoU {_diff(ds['miou'])}, AUC-ROC {_diff(ds['auc'])}, "
                f"|CNR| {_diff(ds['cnr_abs'])} ({ds['miou']['n_pairs']} pairs)")
        out.append(_claim(claim4, "-", ours, "-", v, rule4))

    # 5. the per-class pattern of the published table
    best = _published(pub, "MIDL 2026 Table 1", "LDM (frozen)", "cardiomegaly", "miou")
    worst = _published(pub, "MIDL 2026 Table 1", "LDM (frozen)", "pneumothorax", "miou")
    claim5 = "Per class: best on cardiomegaly, worst on pneumothorax (mIoU)"
    published5 = f"cardiomegaly {_cite(best)}, pneumothorax {_cite(worst)}"
    rule5 = f"the highest and lowest class means of mIoU, {MIN_PER_CLASS} pairs per class at least"
    if main is None:
        out.append(_claim(claim5, published5, "-", "-", NOT_EXECUTED, rule5))
    else:
        pc = main["summaries"].get(LDM_ROW, {}).get("per_class", {})
        means = {c: (st.get("miou") or {}).get("mean") for c, st in pc.items()}
        means = {c: m for c, m in means.items() if m is not None}
        if not means:
            out.append(_claim(claim5, published5, "-", "-", TOO_FEW, rule5))
        else:
            hi, lo = max(means, key=means.get), min(means, key=means.get)
            ours = f"best {hi} {fmt(means[hi])}, worst {lo} {fmt(means[lo])}"
            if main.get("dataset", {}).get("name") != "mscxr":
                v = NEEDS_MSCXR
            elif min(st.get("n_pairs", 0) for st in pc.values()) < MIN_PER_CLASS:
                v = TOO_FEW
            else:
                v = REPRODUCED if (hi.lower(), lo.lower()) == ("cardiomegaly", "pneumothorax") else NOT_REPRODUCED
            out.append(_claim(claim5, published5, ours, "-", v, rule5))

    # 6. Table III: class-name tokens against all phrase tokens
    claim6 = "Attention on the class name's tokens only against all phrase tokens (JBHI Table III)"
    rule6 = (f"paired bootstrap of class-name minus all-token mIoU on the same pairs, {MIN_PAIRS} pairs at least; "
             "the JBHI figures are not available here, so the verdict is this test bed's direction")
    t3 = (abl or {}).get("table_iii")
    if not t3:
        out.append(_claim(claim6, "JBHI Table III (figures not available here)", "-", "-", NOT_EXECUTED, rule6))
    else:
        ds = t3["difference"]
        ours = (f"class-name minus all tokens: mIoU {_diff(ds['miou'])}, AUC-ROC {_diff(ds['auc'])} "
                f"({t3['n_pairs']} pairs; {t3['phrases_without_class_name']} of {t3['phrases']} phrases lack their "
                "class name)")
        g = verdict(ds["miou"])
        v = {"too few pairs": TOO_FEW, "above 0": "class-name tokens higher here",
             "below 0": "class-name tokens lower here", "not separable from 0": "not separable here"}[g]
        out.append(_claim(claim6, "JBHI Table III (figures not available here)", ours, "-", v, rule6))
    return out


def ledger_markdown(book_dir: str | Path, published_csv: str | Path | None = None) -> str:
    """The ledger as the Markdown table the book's first page includes."""
    rows = claims(book_dir, published_csv)
    head = ("| claim | published | this build | strongest baseline, same pairs | verdict | rule |\n"
            "|---|---|---|---|---|---|\n")
    cell = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    body = "".join("| " + " | ".join(cell(r[k]) for k in ("claim", "published", "ours", "baseline", "verdict", "rule"))
                   + " |\n" for r in rows)
    return head + body + ("\nPublished figures: `book/published.csv` (source, table and protocol of each); this "
                          "build's: the pages' results (`book/notebooks/*_files/`).\n")


def write_ledger(book_dir: str | Path) -> Path:
    """Write ``_generated/claims.md`` under ``book_dir``; returns its path."""
    gen = Path(book_dir) / "_generated"
    gen.mkdir(parents=True, exist_ok=True)
    path = gen / "claims.md"
    path.write_text(ledger_markdown(book_dir), encoding="utf-8")
    return path
