"""The hosted book's repository link and Binder launch buttons (groundiff_core/book/hosting.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from groundiff_core.book import check as bookcheck
from groundiff_core.book.hosting import Hosting, book_config, hosting_from_env, launch_url, main, write_config

ROOT = Path(__file__).resolve().parents[1]
REPO = "https://github.com/some-org/groundiff"


def _toc_notebook_pages() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    return [ch["file"] for part in toc["parts"] for ch in part["chapters"] if ch["file"].startswith("notebooks/")]


def test_repository_url_is_normalised_and_bad_ones_are_refused_by_name():
    assert Hosting(REPO + ".git/").repository_url == REPO
    for bad in ("http://github.com/some-org/groundiff", "github.com/some-org/groundiff",
                "https://github.com/some-org", "https://github.com/a/b/tree/main", ""):
        with pytest.raises(ValueError, match="expected https://<host>/<owner>/<name>"):
            Hosting(bad)
    with pytest.raises(ValueError, match="branch"):
        Hosting(REPO, branch="my branch")


def test_environment_names_the_repository_or_nothing():
    assert hosting_from_env({}) is None
    assert hosting_from_env({"GROUNDIFF_REPOSITORY_URL": "  "}) is None
    assert hosting_from_env({"GROUNDIFF_REPOSITORY_URL": REPO}) == Hosting(REPO, "main")
    assert hosting_from_env({"GROUNDIFF_REPOSITORY_URL": REPO, "GROUNDIFF_REPOSITORY_BRANCH": "gh-pages"}).branch == "gh-pages"


def test_config_gets_buttons_only_with_a_repository_and_keeps_the_rest():
    base = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert book_config(base, None) == base
    hosted = book_config(base, Hosting(REPO, "dev"))
    assert hosted["repository"] == {"url": REPO, "branch": "dev", "path_to_book": ""}
    assert hosted["html"]["use_repository_button"] is True
    assert hosted["launch_buttons"]["binderhub_url"] == "https://mybinder.org"
    assert base["html"]["use_repository_button"] is False  # the input is not modified
    assert {k: v for k, v in hosted.items() if k not in ("repository", "html", "launch_buttons")} == \
        {k: v for k, v in base.items() if k not in ("repository", "html", "launch_buttons")}


def test_launch_urls_per_provider():
    assert launch_url(Hosting(REPO, "main"), "notebooks/01_method") == \
        "https://mybinder.org/v2/gh/some-org/groundiff/main?urlpath=lab/tree/notebooks/01_method.ipynb"
    assert launch_url(Hosting("https://gitlab.com/o/g"), "notebooks/x").startswith("https://mybinder.org/v2/gl/o%2Fg/main?")
    assert launch_url(Hosting("https://git.example.org/o/g"), "notebooks/x").startswith(
        "https://mybinder.org/v2/git/https%3A//git.example.org/o/g/main?")


def test_command_writes_the_config_and_refuses_a_bad_url(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("GROUNDIFF_REPOSITORY_URL", raising=False)
    assert main([str(tmp_path / "plain.yml")]) == 0
    assert "no repository URL" in capsys.readouterr().out
    assert "launch_buttons" not in yaml.safe_load((tmp_path / "plain.yml").read_text())
    monkeypatch.setenv("GROUNDIFF_REPOSITORY_URL", REPO)
    assert main([str(tmp_path / "hosted.yml"), "--branch", "dev"]) == 0
    assert yaml.safe_load((tmp_path / "hosted.yml").read_text())["repository"]["branch"] == "dev"
    with pytest.raises(SystemExit):
        main([str(tmp_path / "bad.yml"), "--repository-url", "http://example.org/x"])
    assert "expected https://" in capsys.readouterr().err
    assert not (tmp_path / "bad.yml").exists()


def test_postbuild_makes_the_notebook_every_launch_link_opens(tmp_path):
    """Binder runs postBuild; each notebook page's launch link names notebooks/<page>.ipynb, which
    must then exist and hold the page's code."""
    shutil.copy(ROOT / "postBuild", tmp_path / "postBuild")
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks", ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    subprocess.run(["bash", str(tmp_path / "postBuild")], check=True, env=env, capture_output=True)
    pages = _toc_notebook_pages()
    assert len(pages) == 5
    for page in pages:
        nb = json.loads((tmp_path / f"{page}.ipynb").read_text())
        code = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
        assert "parameters" in json.dumps([c.get("metadata") for c in nb["cells"]]), page
        assert "from groundiff_core.book import pages" in code, page


def test_rendered_page_carries_the_repository_and_binder_links(tmp_path):
    """jupyter-book renders a notebook page with the generated configuration: the HTML check finds
    both links; built without a repository, the check asks for none and the page has no Binder link."""
    book = tmp_path / "book"
    (book / "notebooks").mkdir(parents=True)
    nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
          "cells": [{"cell_type": "markdown", "id": "a", "metadata": {}, "source": ["# Method\n", "text"]}]}
    (book / "notebooks/01_method.ipynb").write_text(json.dumps(nb))
    (book / "intro.md").write_text("# Intro\n")
    (book / "references.bib").write_text((ROOT / "book/references.bib").read_text())
    (book / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n  - file: notebooks/01_method\n")
    hosting = Hosting(REPO, "main")
    for name, host in (("hosted", hosting), ("plain", None)):
        config = write_config(tmp_path / f"{name}.yml", host)
        out = tmp_path / f"out-{name}"
        done = subprocess.run([sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build", str(book),
                               "--config", str(config), "--path-output", str(out)], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        html_dir = out / "_build/html"
        html = (html_dir / "notebooks/01_method.html").read_text()
        problems = [p for p in bookcheck.check_html(html_dir, names=["01_method"], hosting=host)
                    if "Binder" in p or "repository" in p]
        assert problems == [], problems
        assert (launch_url(hosting, "notebooks/01_method") in html) == (host is not None)
    # and the check notices a page without them
    problems = bookcheck.check_html(tmp_path / "out-plain/_build/html", names=["01_method"], hosting=hosting)
    assert any("no Binder link" in p for p in problems) and any("no link to the repository" in p for p in problems)
