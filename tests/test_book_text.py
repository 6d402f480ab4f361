"""What the reader reads states measured facts only, in the reader's words: no sentence the book
used to state without a measurement behind it, and no wording from the project's own workflow."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from groundiff_core.book.cost import cost_markdown

ROOT = Path(__file__).resolve().parents[1]

# sentences the book or the model card once stated without a measurement, and internal wording
UNMEASURED = [
    r"as the paper reports",              # L = 6, T = 20 %: the paper's summary says so, the authors' code reads 4 layers
    r"the deepest, 16\s*x\s*16",          # layers 2 and 5 are 16x16 too
    r"the others 32\s*x\s*32",
    r"deepest-resolution layers",         # the preset reads four of the six
]
INTERNAL = [r"\bissues?\b", r"\blent\b", r"\bsessions?\b", r"targets of the project", r"GPU lent"]


def _reader_texts() -> dict[str, str]:
    texts = {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in sorted((ROOT / "book").glob("*.md"))}
    for p in sorted((ROOT / "notebooks").glob("*.py")):
        texts[str(p.relative_to(ROOT))] = p.read_text(encoding="utf-8")
    card = ROOT / "groundiff_core/phantom/weights/MODEL_CARD.md"
    texts[str(card.relative_to(ROOT))] = card.read_text(encoding="utf-8")
    texts["cost page (generated)"] = cost_markdown(ROOT / "benchmarks/results")
    return texts


@pytest.mark.parametrize("pattern", UNMEASURED + INTERNAL)
def test_reader_text_has_no_unmeasured_or_internal_sentence(pattern):
    hits = [f"{name}: ...{m.string[max(0, m.start() - 60):m.end() + 60]!r}..."
            for name, text in _reader_texts().items() for m in re.finditer(pattern, text, flags=re.IGNORECASE)]
    assert hits == [], "\n".join(hits)


def test_the_check_reads_every_page_of_the_book():
    texts = _reader_texts()
    assert len([n for n in texts if n.startswith("notebooks/")]) == 5
    assert {"book/intro.md", "book/phantom.md", "book/reproduce.md", "book/metrics.md"} <= set(texts)
    # and it would catch the old sentence
    assert re.search(UNMEASURED[0], "L = 6, T = 20 % of the steps, as the paper reports", flags=re.IGNORECASE)
