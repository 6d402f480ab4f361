"""The book runner (papermill + jupytext) and the rendered book.

Each test builds a tiny project in a temporary folder (``notebooks/NN_name.py`` sources, a
``book/`` with its config), so nothing here depends on the real notebooks or on model weights.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from html.parser import HTMLParser
from pathlib import Path

import pytest

from groundiff_core.book import parameters, runner

ROOT = Path(__file__).resolve().parents[1]

HEADER = """\
# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---
"""


def write_source(root: Path, name: str, body: str) -> Path:
    path = root / "notebooks" / f"{name}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + textwrap.dedent(body))
    return path


PARAM_NOTEBOOK = """
# %% [markdown]
# # A parameterised page

# %% tags=["parameters"]
n_pairs = 3
seed = 0
output_dir = "out"

# %%
import json, pathlib
result = {"n_pairs": n_pairs, "seed": seed, "value": n_pairs * 100 + seed}
pathlib.Path(output_dir, "metrics.json").write_text(json.dumps(result))
print("value", result["value"])
"""


# --------------------------------------------------------------------------- small pieces
def test_parse_value_types():
    assert runner.parse_value("20") == 20
    assert runner.parse_value("0.5") == 0.5
    assert runner.parse_value("true") is True and runner.parse_value("False") is False
    assert runner.parse_value("none") is None
    assert runner.parse_value("[3, 4, 6, 7]") == [3, 4, 6, 7]
    assert runner.parse_value("phantom") == "phantom"
    assert runner.parse_value("/data/ms-cxr.csv") == "/data/ms-cxr.csv"


def test_declared_parameters_reads_the_tagged_cell(tmp_path):
    src = write_source(tmp_path, "01_p", PARAM_NOTEBOOK)
    declared = runner.declared_parameters(runner.read_source(src))
    assert {k: p.value for k, p in declared.items()} == {"n_pairs": 3, "seed": 0, "output_dir": "out"}
    assert declared["output_dir"].default == '"out"' and declared["n_pairs"].type_name == "int"
    assert runner.declared_parameters(src) == declared  # the source path reads the same


def test_declared_parameters_keep_text_types_and_help(tmp_path):
    src = write_source(tmp_path, "01_typed", """
        # %% tags=["parameters"]
        flag: bool = False  # draw the extra figure
        steps = 50  # DDIM steps
        model = "phantom"
        classes = ["Edema",
                   "Pneumonia"]
        root = os.getcwd()
        dtype = None

        # %%
        x = 1
        """)
    declared = runner.declared_parameters(src)
    assert list(declared) == ["flag", "steps", "model", "classes", "root", "dtype"]
    assert declared["flag"] == parameters.Parameter("flag", "False", "bool", "draw the extra figure")
    assert declared["steps"].help == "DDIM steps" and declared["steps"].type_name == "int"
    assert declared["classes"].value == ["Edema", "Pneumonia"] and declared["classes"].type_name == "list"
    # not a literal: the source text, type unknown
    assert declared["root"].value == "os.getcwd()" and declared["root"].type_name is None
    assert declared["dtype"].value is None and declared["dtype"].type_name == "NoneType"
    # no parameters cell: nothing declared
    bare = write_source(tmp_path, "02_bare", "# %%\nx = 1\n")
    assert runner.declared_parameters(bare) == {}


def test_injected_parameters_follow_profile_overrides_and_declarations(tmp_path):
    src = write_source(tmp_path, "03_ablation", """
        # %% tags=["parameters"]
        n_pairs = 12
        num_inference_steps = 300
        flag = True
        output_dir = "out"
        """)
    declared = runner.declared_parameters(src)
    quick = parameters.PROFILES["quick"]
    inject = parameters.injected_parameters("03_ablation", declared, profile="quick",
                                            overrides={"flag": "no", "seed": 3}, output_dir="book/x")
    # the notebook's own profile entry wins over "*", undeclared keys (phantom_images, seed) are left out
    assert inject == {"n_pairs": quick["03_ablation"]["n_pairs"],
                      "num_inference_steps": quick["03_ablation"]["num_inference_steps"],
                      "flag": False, "output_dir": "book/x"}
    with pytest.raises(ValueError, match="notebook parameter 'flag' of 03_ablation must be a boolean"):
        parameters.injected_parameters("03_ablation", declared, overrides={"flag": "maybe"})
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        parameters.injected_parameters("03_ablation", declared, profile="fast")


def test_overrides_are_checked_against_the_declared_types_before_any_kernel(tmp_path, monkeypatch):
    src = write_source(tmp_path, "03_ablation", """
        # %% tags=["parameters"]
        n_pairs = 12
        sigma = 0.5
        model = "phantom"
        dtype = None
        layers = [3, 4]
        output_dir = "out"
        """)
    declared = runner.declared_parameters(src)
    bad = {"n_pairs": -3, "sigma": "wide", "model": 7, "layers": 3}
    for key, value in bad.items():
        with pytest.raises(ValueError, match=rf"-p {key} .*notebook 03_ablation declares {key} = "):
            parameters.injected_parameters("03_ablation", declared, overrides={key: value})
    with pytest.raises(ValueError, match="an integer; got float"):
        parameters.injected_parameters("03_ablation", declared, overrides={"n_pairs": 2.5})
    ok = parameters.injected_parameters("03_ablation", declared, overrides={"n_pairs": 0, "sigma": 1,
                                                                           "dtype": "float16", "layers": [1]})
    assert ok["n_pairs"] == 0 and ok["sigma"] == 1 and ok["dtype"] == "float16"
    # the runner refuses before it starts a kernel
    monkeypatch.setattr(runner, "ensure_kernel", lambda: pytest.fail("a kernel was started"))
    with pytest.raises(ValueError, match="-p n_pairs -3"):
        runner.run_book(tmp_path, overrides={"n_pairs": -3})


# --------------------------------------------------------------------------- execution
def test_error_cell_fails_loudly(tmp_path):
    write_source(
        tmp_path,
        "01_broken",
        """
        # %% [markdown]
        # # Broken

        # %% tags=["parameters"]
        seed = 0
        output_dir = "out"

        # %%
        x = 1

        # %%
        raise ZeroDivisionError("deliberate failure in cell 3")

        # %%
        pathlib_never_reached = open("never.txt", "w")
        """,
    )
    write_source(tmp_path, "02_after", PARAM_NOTEBOOK)

    with pytest.raises(runner.NotebookError, match="ZeroDivisionError: deliberate failure"):
        runner.run_book(tmp_path)
    # the run stopped there: the later cell and the next notebook never ran
    assert not (tmp_path / "never.txt").exists()
    assert not (tmp_path / "book/notebooks/02_after.ipynb").exists()
    # the failure is recorded, and the executed copy keeps the traceback for reading
    record = json.loads((tmp_path / "book/_generated/reproducibility.json").read_text())
    assert record["notebooks"]["01_broken"]["status"] == "failed"
    assert "ZeroDivisionError" in record["notebooks"]["01_broken"]["error"]
    assert "deliberate failure" in (tmp_path / "book/notebooks/01_broken.ipynb").read_text()
    # the command line exits non-zero
    assert runner.main(["--root", str(tmp_path)]) == 1


def test_parameters_are_injected_and_recorded(tmp_path):
    write_source(tmp_path, "01_p", PARAM_NOTEBOOK)

    runs = runner.run_book(tmp_path)
    files = tmp_path / "book/notebooks/01_p_files"
    assert json.loads((files / "metrics.json").read_text())["value"] == 300  # the defaults

    runs = runner.run_book(tmp_path, overrides={"n_pairs": 20, "seed": 7})
    assert json.loads((files / "metrics.json").read_text()) == {"n_pairs": 20, "seed": 7, "value": 2007}
    assert runs[0].status == "ok" and runs[0].files == ["metrics.json"]

    # the executed notebook shows the injected values, and the record holds them
    executed = json.loads((tmp_path / "book/notebooks/01_p.ipynb").read_text())
    injected = [c for c in executed["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert len(injected) == 1 and "n_pairs = 20" in "".join(injected[0]["source"])
    assert "value 2007" in json.dumps(executed["cells"][-1]["outputs"])
    record = json.loads((tmp_path / "book/_generated/reproducibility.json").read_text())
    entry = record["notebooks"]["01_p"]
    assert entry["parameters"]["n_pairs"] == 20 and entry["parameters"]["seed"] == 7
    assert entry["parameters"]["output_dir"] == "book/notebooks/01_p_files"
    assert entry["runtime_s"] > 0 and record["packages"]["papermill"]
    md = (tmp_path / "book/_generated/reproducibility.md").read_text()
    assert "| `n_pairs` | `20` |" in md

    # the command line parses -p like papermill, and the quick profile applies
    assert runner.main(["--root", str(tmp_path), "--quick", "-p", "seed", "5"]) == 0
    assert json.loads((files / "metrics.json").read_text()) == {
        "n_pairs": runner.PROFILES["quick"]["*"]["n_pairs"], "seed": 5,
        "value": runner.PROFILES["quick"]["*"]["n_pairs"] * 100 + 5,
    }


THREADS_NOTEBOOK = PARAM_NOTEBOOK + """
# %%
import os, time
pathlib.Path(output_dir, "run.json").write_text(json.dumps(
    {"threads": os.environ.get("OMP_NUM_THREADS"), "start": time.time(), "end": (time.sleep(3), time.time())[1]}))
"""


def test_parallel_jobs_run_notebooks_at_once_with_a_share_of_the_cores(tmp_path, monkeypatch):
    """--jobs 2: two kernels at once (their run times overlap), each told cpu_count / 2 threads; the
    results and the record are those of a sequential run."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for name in ("01_a", "02_b", "03_c"):
        write_source(tmp_path, name, THREADS_NOTEBOOK)
    runs = runner.run_book(tmp_path, overrides={"seed": 4}, jobs=2)
    assert [r.name for r in runs] == ["01_a", "02_b", "03_c"] and all(r.status == "ok" for r in runs)
    files = {n: tmp_path / f"book/notebooks/{n}_files" for n in ("01_a", "02_b", "03_c")}
    times = {n: json.loads((f / "run.json").read_text()) for n, f in files.items()}
    assert {t["threads"] for t in times.values()} == {str(max(1, (os.cpu_count() or 1) // 2))}
    spans = sorted((t["start"], t["end"]) for t in times.values())
    assert spans[1][0] < spans[0][1], "the first two notebooks did not run at the same time"
    assert all(json.loads((f / "metrics.json").read_text())["value"] == 304 for f in files.values())
    record = json.loads((tmp_path / "book/_generated/reproducibility.json").read_text())
    assert [record["notebooks"][n]["status"] for n in ("01_a", "02_b", "03_c")] == ["ok"] * 3
    assert "OMP_NUM_THREADS" not in os.environ  # restored
    with pytest.raises(ValueError, match="jobs must be at least 1"):
        runner.run_book(tmp_path, jobs=0)


def test_parallel_failure_is_recorded_and_nothing_new_starts(tmp_path):
    write_source(tmp_path, "01_broken", "# %% tags=[\"parameters\"]\noutput_dir = 'out'\n\n# %%\nraise ZeroDivisionError('deliberate')\n")
    write_source(tmp_path, "02_slow", THREADS_NOTEBOOK)
    for name in ("03_later", "04_later"):
        write_source(tmp_path, name, PARAM_NOTEBOOK)
    with pytest.raises(runner.NotebookError, match="ZeroDivisionError: deliberate"):
        runner.run_book(tmp_path, jobs=2)
    record = json.loads((tmp_path / "book/_generated/reproducibility.json").read_text())["notebooks"]
    assert record["01_broken"]["status"] == "failed"
    assert record["02_slow"]["status"] == "ok"  # it was running: it finished and was recorded
    # two at a time: 01 and 02 started; once 01 failed no other notebook started
    assert record["03_later"]["status"] == record["04_later"]["status"] == "not run"
    assert not (tmp_path / "book/notebooks/03_later.ipynb").exists()
    assert runner.main(["--root", str(tmp_path), "--jobs", "2"]) == 1


def test_bad_requests_are_clear_errors(tmp_path):
    write_source(tmp_path, "01_p", PARAM_NOTEBOOK)
    with pytest.raises(ValueError, match=r"\['not_a_parameter'\].*declared: \['n_pairs', 'output_dir', 'seed'\]"):
        runner.run_book(tmp_path, overrides={"not_a_parameter": 1})
    with pytest.raises(ValueError, match="no notebook named '07'"):
        runner.run_book(tmp_path, only=["07"])
    (tmp_path / "empty/notebooks").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no notebook sources"):
        runner.run_book(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="notebook folder .* does not exist"):
        runner.run_book(tmp_path / "nowhere")
    assert runner.main(["--root", str(tmp_path), "-p", "nope", "1"]) == 2


def test_missing_book_packages_name_the_extra(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "papermill" else real(name, *a))
    write_source(tmp_path, "01_p", PARAM_NOTEBOOK)
    assert runner.main(["--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("[book] error: executing the notebooks needs the book extra (missing: papermill): "
                           "pip install 'groundiff_core[book]'")
    assert not (tmp_path / "book").exists()  # nothing was started


# --------------------------------------------------------------------------- the rendered book
FIGURE_NOTEBOOK = """
# %% [markdown]
# # Figure page
#
# A page with one figure, as the real notebooks have.

# %% tags=["parameters"]
seed = 0
output_dir = "out"

# %%
import matplotlib
import matplotlib.pyplot as plt
import numpy as np

rng = np.random.default_rng(seed)
fig, ax = plt.subplots(figsize=(3, 2))
ax.imshow(rng.random((8, 8)))
fig.savefig(f"{output_dir}/figure.png")
plt.show()

# %% [markdown]
# **Figure 1.** Random pixels: look at nothing in particular.
"""


def _jupyter_book(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs).get("src", ""))


def test_built_book_has_page_figure_and_no_errors(tmp_path):
    write_source(tmp_path, "01_figure", FIGURE_NOTEBOOK)
    book = tmp_path / "book"
    book.mkdir()
    (tmp_path / "_config.yml").write_text(
        'title: tiny\nonly_build_toc_files: true\nexecute:\n  execute_notebooks: "off"\n'
        "sphinx:\n  config:\n    nb_output_stderr: remove\n"
    )
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n  - file: notebooks/01_figure\n")
    (book / "_config.yml").symlink_to("../_config.yml")
    (book / "_toc.yml").symlink_to("../_toc.yml")
    (book / "intro.md").write_text("# Tiny book\n\nOne page.\n")

    runner.run_book(tmp_path)
    done = _jupyter_book("build", "book", "-W", "--keep-going", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    page = book / "_build/html/notebooks/01_figure.html"
    assert page.is_file()
    html = page.read_text()
    assert "Figure page" in html and "look at nothing in particular" in html
    parser = _Images()
    parser.feed(html)
    figures = [s for s in parser.srcs if not s.startswith(("http", "data:")) and "logo" not in s]
    assert figures, "no <img> on the notebook page"
    for src in figures:
        assert (page.parent / src).resolve().is_file(), f"<img src={src!r}> points to a missing file"
    assert not re.search(r"Traceback|output_error|ansi-red-fg|Error\w*:", html)
    # the parameters papermill injected are visible on the page
    assert "tag_injected-parameters" in html  # myst-nb's class for the cell papermill injected
    assert (book / "notebooks/01_figure_files/figure.png").is_file()


# --------------------------------------------------------------------------- the real book's wiring
def test_repository_book_config_is_wired():
    for name in ("_config.yml", "_toc.yml"):
        link = ROOT / "book" / name
        assert link.is_symlink() and link.resolve() == (ROOT / name).resolve(), f"book/{name} must link to ../{name}"
    import yaml

    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "off"
    assert config["bibtex_bibfiles"] == ["references.bib"] and (ROOT / "book/references.bib").is_file()
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    in_toc = sorted(f.split("/", 1)[1] for f in files if f.startswith("notebooks/"))
    sources = sorted(p.stem for p in runner.discover(ROOT / "notebooks"))
    assert in_toc == sources, "every notebook source must be in the toc and vice versa"
    for f in files:
        if not f.startswith("notebooks/"):
            assert (ROOT / "book" / f"{f}.md").is_file(), f
    for src in runner.discover(ROOT / "notebooks"):
        params = runner.declared_parameters(runner.read_source(src))
        for required in ("model", "n_pairs", "seed", "device", "output_dir"):
            assert required in params, f"{src.name} lacks parameter {required!r}"
