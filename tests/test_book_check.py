"""The book check's presentation rules: no stray path outputs, no over-long numbers in tables, no
interval or verdict on fewer pairs than the minimum, no figure too small to read."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import nbformat

from groundiff_core.book import check, figures


def _notebook(path: Path, cells: list[tuple[list[str], list[dict]]]) -> Path:
    nb = nbformat.v4.new_notebook()
    for tags, outputs in cells:
        cell = nbformat.v4.new_code_cell("x = 1", metadata={"tags": tags})
        cell.outputs = [nbformat.from_dict(o) for o in outputs]
        nb.cells.append(cell)
    nbformat.write(nb, str(path))
    return path


def _result(mime: str, text: str) -> dict:
    return {"output_type": "execute_result", "execution_count": 1, "metadata": {}, "data": {mime: text}}


def _stream(text: str, name: str = "stdout") -> dict:
    return {"output_type": "stream", "name": name, "text": text}


def test_stray_paths_and_reprs_are_refused_where_a_reader_sees_them(tmp_path):
    nb = _notebook(tmp_path / "01_x.ipynb", [
        ([], [_result("text/plain", "'book/notebooks/01_x_files/pair.png'")]),
        ([], [_result("text/plain", "PosixPath('out/summary.json')")]),
        ([], [_stream("<matplotlib.figure.Figure object at 0x7f3a2c1b>\n")]),
        (["remove-output"], [_result("text/plain", "'book/notebooks/01_x_files/hidden.png'")]),  # not shown
        ([], [_stream("book/x.png\n", name="stderr")]),  # stderr is removed from the pages
        ([], [_stream("The run took 3.2 s on 40 pairs.\n")]),
    ])
    problems = check.check_outputs(nb)
    assert len(problems) == 3, problems
    assert "cell 0 prints" in problems[0] and "pair.png" in problems[0]
    assert "PosixPath" in problems[1] and "object at 0x" in problems[2]


def test_numbers_with_more_than_three_decimals_are_refused_in_tables(tmp_path):
    nb = _notebook(tmp_path / "02_x.ipynb", [
        ([], [_result("text/html", "<table><tr><td>0.006209</td><td>0.612</td></tr></table>")]),
        ([], [_result("text/markdown", "| a | b |\n|---|---|\n| 0.123456 | 1 |\n")]),
        ([], [_result("text/html", "<table><tr><td>0.612</td><td>12.3</td><td>428</td></tr></table>")]),
    ])
    problems = check.check_outputs(nb)
    assert len(problems) == 2 and "0.006209" in problems[0] and "0.123456" in problems[1]


def test_show_table_prints_three_significant_digits_and_keeps_full_precision_in_the_csv(tmp_path, capsys):
    import pandas as pd

    table = pd.DataFrame({"mIoU": [0.0062091, 0.61234], "|CNR|": [1.23456, 123.456], "pairs": [4, 428]},
                         index=["a", "b"])
    figures.show_table(table, tmp_path / "03_x_files", "t")
    assert [figures.fmt_number(x) for x in (0.0062091, 0.61234, 1.23456, 123.456, 12345.6)] == \
        ["0.006", "0.612", "1.23", "123", "12,346"]
    saved = pd.read_csv(tmp_path / "03_x_files" / "t.csv", index_col=0)
    assert saved.loc["a", "mIoU"] == 0.0062091  # the download keeps every digit


def test_intervals_and_verdicts_below_the_minimum_are_refused(tmp_path):
    line = "* mIoU: fast minus paper +0.056 [+0.053, +0.060] on 4 pairs: the interval excludes 0."
    ok = "* mIoU: fast minus paper +0.056 [+0.053, +0.060] on 240 pairs: the interval excludes 0."
    table = ("<table><tr><th></th><th>pairs</th><th>mean</th></tr>"
             "<tr><td>atelectasis</td><td>3</td><td>0.5 [0.4, 0.6]</td></tr>"
             "<tr><td>edema</td><td>35</td><td>0.5 [0.4, 0.6]</td></tr></table>")
    nb = _notebook(tmp_path / "04_x.ipynb", [
        ([], [_result("text/markdown", line)]),
        ([], [_result("text/markdown", ok)]),
        ([], [_result("text/html", table)]),
        ([], [_result("text/markdown", "Every method ran on the same 2 pairs. Their 95% intervals overlap.")]),
    ])
    problems = check.check_outputs(nb)
    assert len(problems) == 3, problems
    assert "on 4 pairs (fewer than 30)" in problems[0]
    assert "table row 'atelectasis' gives an interval on 3 pairs" in problems[1]
    assert "on 2 pairs" in problems[2]
    # what the library prints below the minimum passes the check
    few = figures.fmt_diff({"difference": 0.056, "ci_low": 0.053, "ci_high": 0.06, "n_pairs": 4})
    assert few == "+0.056 (4 pairs: too few for an interval)"
    nb2 = _notebook(tmp_path / "05_x.ipynb", [([], [_result("text/markdown", f"* mIoU: {few} on 4 pairs.")])])
    assert check.check_outputs(nb2) == []


def _png(path: Path, width: int, height: int) -> None:
    raw = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data  # noqa: E731
                                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_a_figure_under_the_minimum_width_is_refused(tmp_path):
    html = tmp_path / "html"
    (html / "notebooks").mkdir(parents=True)
    (html / "_images").mkdir()
    _png(html / "_images" / "small.png", check.MIN_FIGURE_PX - 50, 200)
    _png(html / "_images" / "wide.png", check.MIN_FIGURE_PX + 200, 200)
    for name, img in (("01_method", "small.png"), ("02_main_table", "wide.png")):
        (html / "notebooks" / f"{name}.html").write_text(
            '<div class="admonition provenance"></div><span class="caption-number">Fig. 1</span>'
            f'<img src="../_images/{img}">', encoding="utf-8")
    problems = check.check_html(html, names=["01_method", "02_main_table"])
    assert problems == [f"01_method: figure '../_images/small.png' is {check.MIN_FIGURE_PX - 50} px wide, under "
                        f"{check.MIN_FIGURE_PX} px: too small to read"]
    assert json.dumps(problems)  # plain strings
