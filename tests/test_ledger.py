"""The claim ledger: verdicts follow the numbers of the executed pages, by the stated rules."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from groundiff_core.book import ledger

ROOT = Path(__file__).resolve().parents[1]


def _stat(mean, half=0.02, n=None):
    s = {"mean": mean, "ci_low": mean - half, "ci_high": mean + half}
    return s if n is None else {**s, "n": n}


def _d(diff, half, n):
    return {"difference": diff, "ci_low": diff - half, "ci_high": diff + half, "n_pairs": n,
            "separated": abs(diff) > half}


def _book(tmp_path, *, dataset="phantom", n=60, prior_diff=0.05, shuffle_diff=0.04, otsu_gain=0.05,
          class_tokens=-0.03):
    book = tmp_path / "book"
    (book / "notebooks/02_main_table_files").mkdir(parents=True)
    (book / "notebooks/03_ablation_files").mkdir(parents=True)
    shutil.copy(ROOT / "book/published.csv", book / "published.csv")
    classes = ["cardiomegaly", "pneumothorax", "edema"]
    per_class = {c: {"n_pairs": n // 3, "miou": _stat(m)} for c, m in zip(classes, (0.4, 0.06, 0.2))}
    main = {"dataset": {"name": dataset},
            "summaries": {ledger.LDM_ROW: {"n_pairs": n, "class_averaged": {"miou": _stat(0.25, n=n),
                                                                             "auc": _stat(0.8, n=n)},
                                           "per_class": per_class},
                          "phrase prior": {"n_pairs": n, "class_averaged": {"miou": _stat(0.2, n=n),
                                                                            "auc": _stat(0.78, n=n)}}},
            "paired_differences": {
                "cross-attention minus phrase prior": {"miou": _d(prior_diff, 0.02, n), "auc": _d(0.03, 0.02, n)},
                "own image minus another image": {"miou": _d(shuffle_diff, 0.02, n)}}}
    (book / "notebooks/02_main_table_files/main_table.json").write_text(json.dumps(main))
    abl = {"paired_vs_paper_code": {"miou_difference": {"cell": [11, 100], **_d(0.01, 0.02, n)}},
           "table_iii": {"n_pairs": n, "phrases": n, "phrases_without_class_name": 7,
                         "difference": {"miou": _d(class_tokens, 0.02, n), "auc": _d(0.0, 0.02, n)}}}
    (book / "notebooks/03_ablation_files/ablation.json").write_text(json.dumps(abl))
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        base = rng.random()
        for setting, gain in ((ledger.PAPER_CODE, otsu_gain), ("no Otsu", 0.0)):
            rows.append({"pair_id": f"p{i}", "category": classes[i % 3], "setting": setting,
                         "miou": base + gain + 0.001 * rng.random(), "auc": base, "cnr_abs": base})
    pd.DataFrame(rows).to_csv(book / "notebooks/03_ablation_files/ablation_pairs.csv", index=False)
    return book


def _verdicts(book):
    return [r["verdict"] for r in ledger.claims(book)]


def test_published_csv_has_a_source_for_every_figure_and_the_cited_averages():
    rows = ledger.load_published(ROOT / "book/published.csv")
    assert rows and all(r["source"].strip() and r["protocol"].strip() for r in rows)
    avg = {(r["label"], r["method"], r["metric"]): r["value"] for r in rows if r["class"] == "average"}
    assert avg[("MIDL 2026 Table 1", "LDM (frozen)", "miou")] == pytest.approx(0.220)
    assert avg[("MIDL 2026 Table 1", "BioViL-T", "cnr_signed")] == pytest.approx(1.37)
    assert avg[("BioViL-T card", "BioViL-T", "miou")] == pytest.approx(0.240)


def test_verdicts_follow_the_numbers(tmp_path):
    v = _verdicts(_book(tmp_path / "a"))
    # 1 needs MS-CXR on the phantom, 2 reads the image, 3 no cell beats the paper code, 4 Otsu helps,
    # 5 needs MS-CXR, 6 class-name tokens lower on these pairs
    assert v == [ledger.NEEDS_MSCXR, ledger.REPRODUCED, ledger.REPRODUCED, ledger.REPRODUCED, ledger.NEEDS_MSCXR,
                 "class-name tokens lower here"]
    assert _verdicts(_book(tmp_path / "d", class_tokens=0.0))[5] == "not separable here"
    assert _verdicts(_book(tmp_path / "e", class_tokens=0.05))[5] == "class-name tokens higher here"
    # one number changed: the shuffle control no longer loses on another image
    assert _verdicts(_book(tmp_path / "b", shuffle_diff=0.0))[1] == ledger.NOT_REPRODUCED
    # Otsu no longer helps
    assert _verdicts(_book(tmp_path / "c", otsu_gain=-0.05))[3] == ledger.NOT_REPRODUCED


def test_no_verdict_below_the_minimum_of_pairs(tmp_path):
    book = _book(tmp_path, n=12)
    v = _verdicts(book)
    assert v[1] == v[2] == v[3] == v[5] == ledger.TOO_FEW
    text = ledger.ledger_markdown(book)
    assert "[" not in text.split("| claim |")[1].split("Published figures")[0].replace("[claim", "")  # no interval on 12


def test_on_mscxr_the_figure_is_read_against_the_published_one(tmp_path):
    book = _book(tmp_path / "a", dataset="mscxr")
    rows = ledger.claims(book)
    assert rows[0]["verdict"] == ledger.NOT_SEPARABLE  # 0.25 [0.23, 0.27] holds BioViL-T's 0.240
    main_path = book / "notebooks/02_main_table_files/main_table.json"
    main = json.loads(main_path.read_text())
    for mean, expected in ((0.30, ledger.REPRODUCED), (0.15, ledger.NOT_REPRODUCED)):
        main["summaries"][ledger.LDM_ROW]["class_averaged"]["miou"] = _stat(mean)
        main_path.write_text(json.dumps(main))
        assert ledger.claims(book)[0]["verdict"] == expected
    rows = ledger.claims(book)
    assert rows[4]["verdict"] == ledger.REPRODUCED  # best cardiomegaly, worst pneumothorax, 20 pairs a class
    assert "0.408" in rows[4]["published"] and "0.061" in rows[4]["published"]


def test_missing_pages_and_a_bad_published_file(tmp_path):
    book = tmp_path / "book"
    book.mkdir()
    shutil.copy(ROOT / "book/published.csv", book / "published.csv")
    assert set(_verdicts(book)[:5]) == {ledger.NOT_EXECUTED}
    md = ledger.write_ledger(book).read_text()
    assert md.startswith("| claim | published | this build |") and md.count("\n| ") == 6  # six claims
    (book / "published.csv").write_text("method,class,metric,value\nx,average,miou,0.2\n")
    with pytest.raises(ValueError, match="missing column"):
        ledger.claims(book)
    (book / "published.csv").write_text(
        "label,source,table,protocol,method,class,metric,value\nL,S,T,P,x,average,miou,high\n")
    with pytest.raises(ValueError, match="line 2: value 'high' is not a number"):
        ledger.claims(book)


def test_the_published_csv_stands_beside_a_run_one_column_per_method_and_source():
    from groundiff_core.book.pages import reference_table

    summary = {"per_class": {"cardiomegaly": {"miou": {"mean": 0.3}, "cnr_signed": {"mean": 1.0}}},
               "class_averaged": {"miou": {"mean": 0.2}, "cnr_abs": {"mean": 1.1}, "cnr_signed": {"mean": 1.05}}}
    table = reference_table(summary, ROOT / "book/published.csv")
    assert table.loc[("cardiomegaly", "miou"), "LDM (frozen) (MIDL 2026 Table 1)"] == pytest.approx(0.408)
    assert table.loc[("cardiomegaly", "miou"), "this run"] == pytest.approx(0.3)
    # one method from two sources stays two columns; the signed and the absolute CNR stay apart
    assert table.loc[("class average", "miou"), "BioViL-T (BioViL-T card)"] == pytest.approx(0.240)
    assert table.loc[("class average", "miou"), "BioViL-T (MIDL 2026 Table 1)"] == pytest.approx(0.214)
    assert table.loc[("class average", "cnr_signed"), "this run"] == pytest.approx(1.05)
    assert table.loc[("class average", "cnr_abs"), "BioViL (CXR-BERT card)"] == pytest.approx(1.027)
