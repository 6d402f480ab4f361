"""The design card's command, ``jupyter-book build book``, on its own: pages executed when missing or
stale (the same runner), rendered as they are when current, and a page that cannot be made stops
the build with one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from groundiff_core.book import runner
from groundiff_core.book.sphinx_ext import ensure_pages, toc_notebooks

from test_book import FIGURE_NOTEBOOK, write_source

CONFIG = ('title: tiny\nonly_build_toc_files: true\nexecute:\n  execute_notebooks: "off"\n'
          "sphinx:\n  extra_extensions:\n    - groundiff_core.book.sphinx_ext\n  config:\n    nb_output_stderr: remove\n")


def _project(root: Path) -> Path:
    write_source(root, "01_figure", FIGURE_NOTEBOOK)
    book = root / "book"
    book.mkdir(parents=True)
    (root / "_config.yml").write_text(CONFIG)
    (root / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n  - file: notebooks/01_figure\n")
    (book / "_config.yml").symlink_to("../_config.yml")
    (book / "_toc.yml").symlink_to("../_toc.yml")
    (book / "intro.md").write_text("# Tiny book\n\nOne page.\n")
    return book


def test_stale_pages_follow_the_record_the_source_and_the_profile(tmp_path):
    book = _project(tmp_path)
    assert toc_notebooks(book) == ["01_figure"]
    assert runner.stale_notebooks(tmp_path) == ["01_figure"]  # never executed
    runner.run_book(tmp_path, profile="quick")
    assert runner.stale_notebooks(tmp_path) == [] and runner.stale_notebooks(tmp_path, "quick") == []
    assert runner.stale_notebooks(tmp_path, "full") == ["01_figure"]  # asked for another profile
    src = tmp_path / "notebooks/01_figure.py"
    src.write_text(src.read_text() + "\n# %%\nprint('changed')\n")
    assert runner.stale_notebooks(tmp_path) == ["01_figure"]  # the source changed
    assert ensure_pages(book) == ["01_figure"] and runner.stale_notebooks(tmp_path) == []
    (book / "notebooks/01_figure.ipynb").unlink()
    assert runner.stale_notebooks(tmp_path) == ["01_figure"]  # the executed copy is gone


def test_a_page_without_source_or_executed_copy_is_refused_in_one_line(tmp_path):
    book = _project(tmp_path)
    (tmp_path / "notebooks/01_figure.py").unlink()
    with pytest.raises(RuntimeError, match=r"notebooks/01_figure has no source notebooks/01_figure.py") as e:
        ensure_pages(book)
    assert "\n" not in str(e.value) and "git checkout -- notebooks/01_figure.py" in str(e.value)


def _build(root: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build", "book", "-W", "--keep-going"]
    return subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_the_bare_command_executes_renders_and_then_only_renders(tmp_path):
    book = _project(tmp_path)
    first = _build(tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "[groundiff] executing 1 page(s)" in first.stdout
    html = (book / "_build/html/notebooks/01_figure.html").read_text()
    assert "Figure page" in html and "look at nothing in particular" in html
    again = _build(tmp_path)  # nothing changed: rendered as it is
    assert again.returncode == 0 and "[groundiff] executing" not in again.stdout
    (tmp_path / "notebooks/01_figure.py").unlink()
    (book / "notebooks/01_figure.ipynb").unlink()
    failed = _build(tmp_path)
    assert failed.returncode != 0
    assert "groundiff: the book's page notebooks/01_figure has no source" in failed.stdout + failed.stderr
