"""Execute the book's notebooks with papermill, then record how they were run.

The sources are jupytext percent-format files ``notebooks/NN_name.py``. For each one the runner

1. converts it to a notebook with jupytext,
2. executes it with papermill into ``book/notebooks/NN_name.ipynb``, injecting the chosen profile's
   parameters, any ``-p key value`` overrides and ``output_dir = book/notebooks/NN_name_files``
   (where the notebook writes its metrics JSON/CSV and figures),
3. stops at the first cell that raises (the executed copy keeps the traceback for reading), and
4. writes ``book/_generated/reproducibility.json`` and ``.md`` (versions, seeds, hardware,
   parameters and runtime per notebook), which the book's reproducibility page includes.

``jupyter-book build book`` then renders the executed copies without running anything again
(``execute_notebooks: 'off'`` in ``_config.yml``)::

    python -m groundiff_core.book [--quick] [--only 02_main_table] [-p n_pairs 20 -p seed 7]
"""

from __future__ import annotations

import argparse
import ast
import datetime as _dt
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = [
    "PROFILES",
    "NotebookError",
    "NotebookRun",
    "declared_parameters",
    "discover",
    "ensure_kernel",
    "execute_notebook",
    "parse_value",
    "run_book",
    "main",
]

KERNEL_NAME = "groundiff"

# Parameters per profile: "*" applies to every notebook that declares the parameter, a notebook's
# own entry overrides it. The notebooks' defaults are the full book (``make book``); ``quick`` is
# the CI profile (``make book-quick``), sized to build the whole book in minutes on 2 CPU cores.
# Notebook 2 keeps the paper's preset in both profiles: only the number of pairs shrinks.
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "full": {},
    "quick": {
        "*": {"n_pairs": 8, "phantom_images": 60},
        "01_method": {"num_inference_steps": 100},
        "02_main_table": {"n_pairs": 8, "qualitative_classes": 3},  # always the paper's preset
        "03_ablation": {"n_pairs": 4, "num_inference_steps": 50},
        "04_failure_cases": {"n_pairs": 8, "prompt_pairs": 1},
        "05_captum": {"n_pairs": 2, "shown_pairs": 2, "token_pairs": 1, "ig_steps": 8, "n_samples": 4,
                      "objective_draws": 2, "occlusion_stride": 0.125},
    },
}


class NotebookError(RuntimeError):
    """A notebook cell raised: names the notebook, the cell and the error."""


@dataclass
class NotebookRun:
    """How one notebook was executed (one entry of the reproducibility record)."""

    name: str
    source: str
    output: str
    output_dir: str
    parameters: dict[str, Any]
    injected: dict[str, Any] = field(default_factory=dict)
    status: str = "not run"
    runtime_s: float | None = None
    finished: str | None = None
    error: str | None = None
    files: list[str] = field(default_factory=list)
    provenance: dict | None = None  # the page's provenance.json (dataset, model fingerprint, ...), if written


# --------------------------------------------------------------------------- sources
def discover(notebooks_dir: Path) -> list[Path]:
    """The book's sources: ``NN_name.py`` files in ``notebooks_dir``, in order."""
    notebooks_dir = Path(notebooks_dir)
    if not notebooks_dir.is_dir():
        raise FileNotFoundError(f"notebook folder {notebooks_dir} does not exist")
    found = sorted(p for p in notebooks_dir.glob("[0-9][0-9]_*.py") if p.is_file())
    if not found:
        raise FileNotFoundError(f"no notebook sources (NN_name.py) in {notebooks_dir}")
    return found


def _read_source(source: Path):
    import jupytext

    nb = jupytext.read(source, fmt="py:percent")
    nb.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": "Python (groundiff)", "language": "python"}
    nb.metadata.setdefault("language_info", {"name": "python"})
    return nb


def declared_parameters(nb) -> dict[str, Any]:
    """Defaults of the cell tagged ``parameters``: ``{name: value}`` (literal values; otherwise
    the expression's source text). Empty if the notebook has no such cell."""
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            out: dict[str, Any] = {}
            tree = ast.parse(cell.source)
            for node in tree.body:
                if isinstance(node, ast.Assign):
                    targets, value = node.targets, node.value
                elif isinstance(node, ast.AnnAssign) and node.value is not None:
                    targets, value = [node.target], node.value
                else:
                    continue
                for t in targets:
                    if isinstance(t, ast.Name):
                        try:
                            out[t.id] = ast.literal_eval(value)
                        except ValueError:
                            out[t.id] = ast.get_source_segment(cell.source, value)
            return out
    return {}


def parse_value(text: str) -> Any:
    """A ``-p key value`` value: a Python literal (int, float, list, ``None``, ``True``), the
    words true/false/none in any case, or else the string itself."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


# --------------------------------------------------------------------------- kernel
def ensure_kernel(name: str = KERNEL_NAME) -> str:
    """Make sure a Jupyter kernel ``name`` runs *this* interpreter (installing its spec under
    ``sys.prefix`` if needed), so the notebooks see the same environment as the runner."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(name)
        if spec.argv and Path(spec.argv[0]).resolve() == Path(sys.executable).resolve():
            return name
    except NoSuchKernel:
        pass
    from ipykernel.kernelspec import install

    try:
        install(kernel_name=name, display_name="Python (groundiff)", prefix=sys.prefix)
    except PermissionError:
        install(kernel_name=name, display_name="Python (groundiff)", user=True)
    return name


# --------------------------------------------------------------------------- execution
def execute_notebook(
    source: Path,
    output: Path,
    parameters: Mapping[str, Any] | None = None,
    *,
    cwd: Path | None = None,
    kernel: str | None = None,
    log_output: bool = False,
) -> float:
    """Convert ``source`` (jupytext percent ``.py`` or ``.ipynb``) and execute it into ``output``.

    Returns the wall time in seconds. Raises :class:`NotebookError` at the first cell that
    raises; ``output`` then holds the notebook up to that cell, traceback included.
    """
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    source, output = Path(source), Path(output)
    if not source.is_file():
        raise FileNotFoundError(f"notebook source {source} does not exist")
    nb = _read_source(source)
    output.parent.mkdir(parents=True, exist_ok=True)
    kernel = kernel or ensure_kernel()
    env_before = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"  # progress bars go to stderr, which the book does not show
    t0 = time.perf_counter()
    try:
        pm.execute_notebook(
            nb,
            str(output),
            parameters=dict(parameters or {}),
            kernel_name=kernel,
            cwd=str(cwd) if cwd is not None else None,
            progress_bar=False,
            log_output=log_output,
            # the kernel's own log (transport notices, the interrupt at shutdown) is not the
            # notebook's output; errors in cells still surface through papermill
            extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
        )
    except PapermillExecutionError as e:
        raise NotebookError(
            f"{source.name}: cell {e.exec_count} raised {e.ename}: {e.evalue} "
            f"(executed copy with the traceback: {output})"
        ) from e
    finally:
        if env_before is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = env_before
    return time.perf_counter() - t0


def _profile_parameters(profile: str, name: str) -> dict[str, Any]:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    table = PROFILES[profile]
    return {**table.get("*", {}), **table.get(name, {})}


def run_book(
    root: Path = Path("."),
    *,
    profile: str = "full",
    only: Sequence[str] = (),
    overrides: Mapping[str, Any] | None = None,
    log_output: bool = False,
    command: str | None = None,
) -> list[NotebookRun]:
    """Execute the selected notebooks of the project at ``root`` and write the record.

    ``only``: notebook names (``02_main_table``) or numbers (``2``/``02``); empty = all.
    ``overrides``: parameters applied on top of the profile to every notebook that declares them
    (an override that no selected notebook declares is an error).
    Raises :class:`NotebookError` at the first failing cell, after recording the failure.
    """
    root = Path(root).resolve()
    selected = _select(discover(root / "notebooks"), only)
    overrides = dict(overrides or {})
    book_dir = root / "book"
    nb_dir = book_dir / "notebooks"

    runs: list[NotebookRun] = []
    declared_any: set[str] = set()
    for src in selected:
        name = src.stem
        declared = declared_parameters(_read_source(src))
        declared_any |= set(declared)
        files_dir = nb_dir / f"{name}_files"
        inject = {k: v for k, v in _profile_parameters(profile, name).items() if k in declared}
        inject.update({k: v for k, v in overrides.items() if k in declared})
        for k in inject:  # a notebook's boolean parameter takes a strict yes/no/true/false, never "no" = true
            if isinstance(declared[k], bool):
                from groundiff_core.engine.config import parse_bool

                inject[k] = parse_bool(inject[k], f"notebook parameter {k!r} of {name}")
        if "output_dir" in declared:
            inject["output_dir"] = files_dir.relative_to(root).as_posix()
        runs.append(
            NotebookRun(
                name=name,
                source=src.relative_to(root).as_posix(),
                output=(nb_dir / f"{name}.ipynb").relative_to(root).as_posix(),
                output_dir=files_dir.relative_to(root).as_posix(),
                parameters={**declared, **inject},
                injected=inject,
            )
        )
    unknown = sorted(set(overrides) - declared_any)
    if unknown:
        raise ValueError(
            f"parameter(s) {unknown} are declared by none of the selected notebooks; "
            f"declared: {sorted(declared_any)}"
        )

    kernel = ensure_kernel()
    started = time.perf_counter()
    for run in runs:
        files_dir = root / run.output_dir
        if files_dir.exists():
            shutil.rmtree(files_dir)  # never show figures of an earlier run
        files_dir.mkdir(parents=True)
        print(f"[book] {run.name}: executing ({_fmt_params(run.injected)})", flush=True)
        try:
            seconds = execute_notebook(
                root / run.source, root / run.output, run.injected,
                cwd=root, kernel=kernel, log_output=log_output,
            )
            run.runtime_s, run.status = round(seconds, 2), "ok"
        except NotebookError as e:
            run.status, run.error = "failed", str(e)
            raise
        finally:
            run.finished = _now()
            run.files = _listing(files_dir)
            run.provenance = _read_provenance(files_dir)
            write_record(book_dir, runs, profile=profile, total_s=time.perf_counter() - started, command=command)
        print(f"[book] {run.name}: done in {run.runtime_s:.1f} s", flush=True)
    return runs


def _read_provenance(folder: Path) -> dict | None:
    """The ``provenance.json`` a notebook wrote (``bookdata.provenance``), without its version list."""
    path = folder / "provenance.json"
    try:
        prov = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return {k: v for k, v in prov.items() if k != "versions"} if isinstance(prov, dict) else None


def _listing(folder: Path) -> list[str]:
    """Top-level files of a notebook's output folder, and each sub-folder as ``name/ (N files)``."""
    out = []
    for p in sorted(folder.iterdir()):
        if p.is_file():
            out.append(p.name)
        elif p.is_dir():
            out.append(f"{p.name}/ ({sum(1 for q in p.rglob('*') if q.is_file())} files)")
    return out


def _select(sources: list[Path], only: Sequence[str]) -> list[Path]:
    if not only:
        return sources
    chosen = []
    for want in only:
        hits = [s for s in sources if s.stem == want or (want.isdigit() and s.stem[:2] == f"{int(want):02d}")]
        if not hits:
            raise ValueError(f"no notebook named {want!r}; available: {[s.stem for s in sources]}")
        chosen += [h for h in hits if h not in chosen]
    return sorted(chosen)


def _fmt_params(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in params.items()) or "defaults"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- record
_PACKAGES = (
    "groundiff_core", "torch", "diffusers", "transformers", "numpy", "scipy", "scikit-image",
    "scikit-learn", "pandas", "matplotlib", "captum", "monai", "papermill", "jupytext",
    "jupyter-book",
)


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for p in _PACKAGES:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out


def _hardware() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    hw: dict[str, Any] = {"cpu": cpu, "cpu_count": os.cpu_count(), "gpu": None}
    try:
        import torch

        if torch.cuda.is_available():
            hw["gpu"] = torch.cuda.get_device_name(0)
            hw["cuda"] = torch.version.cuda
    except ImportError:
        pass
    return hw


def _git(root: Path) -> dict[str, Any]:
    def q(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = q("rev-parse", "HEAD")
    dirty = q("status", "--porcelain")
    return {"commit": commit, "dirty": bool(dirty) if dirty is not None else None}


def write_record(
    book_dir: Path, runs: Sequence[NotebookRun], *, profile: str, total_s: float, command: str | None = None
) -> dict:
    """Write ``_generated/reproducibility.json`` and ``.md``; notebooks not run this time keep
    their entry from the previous record (``--only``)."""
    gen = Path(book_dir) / "_generated"
    gen.mkdir(parents=True, exist_ok=True)
    path = gen / "reproducibility.json"
    previous: dict[str, Any] = {}
    if path.exists():
        try:
            previous = json.loads(path.read_text()).get("notebooks", {})
        except (json.JSONDecodeError, AttributeError):
            previous = {}
    notebooks = dict(previous)
    for r in runs:
        entry = dict(r.__dict__)
        entry["profile"] = profile
        notebooks[r.name] = entry
    record = {
        "generated": _now(),
        "profile": profile,
        "command": command,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hardware": _hardware(),
        "packages": _versions(),
        "environment": {k: os.environ.get(k) for k in ("PYTHONHASHSEED", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")},
        "git": _git(Path(book_dir).parent),
        "runtime_s_this_run": round(total_s, 2),
        "notebooks": dict(sorted(notebooks.items())),
    }
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    (gen / "reproducibility.md").write_text(_record_markdown(record))
    (gen / "data_sources.md").write_text(data_sources_markdown(record))
    return record


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


def _record_markdown(rec: dict) -> str:
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


# --------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``python -m groundiff_core.book`` and ``groundiff book``."""
    parser.add_argument("--quick", action="store_true", help="the CI profile: fewer pairs, same notebooks")
    parser.add_argument(
        "--only", action="append", default=[], metavar="NAME",
        help="run only this notebook (name like 02_main_table, or its number); repeatable",
    )
    parser.add_argument(
        "-p", "--parameter", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
        help="papermill parameter for every notebook that declares it, e.g. -p n_pairs 20 -p seed 7",
    )
    parser.add_argument("--model", metavar="SOURCE",
                        help="model for every notebook (same as -p model SOURCE): phantom, tiny, paper, or a model "
                        "folder (diffusers layout, MONAI bundle, MONAI checkpoints)")
    parser.add_argument("--text-encoder", metavar="DIR",
                        help="for MONAI models: the Stable Diffusion 2.1 base folder holding text_encoder/ and "
                        "tokenizer/, if they are not inside the model folder (same as -p text_encoder DIR)")
    parser.add_argument("--root", type=Path, default=Path("."), help="project root (holds notebooks/ and book/)")
    parser.add_argument("--log-output", action="store_true", help="echo the notebooks' output while they run")


def run_from_args(args: argparse.Namespace, command: str | None = None) -> int:
    """Run the book from parsed :func:`add_arguments` options; 1 if a notebook failed."""
    overrides = {k: parse_value(v) for k, v in args.parameter}
    for key in ("model", "text_encoder"):  # --model / --text-encoder: -p with a path made absolute
        value = getattr(args, key, None)
        if value is None:
            continue
        if key in overrides:
            raise ValueError(f"give --{key.replace('_', '-')} or -p {key}, not both")
        path = Path(value).expanduser()
        overrides[key] = str(path.resolve()) if path.exists() else str(value)  # notebooks run in --root
    try:
        runs = run_book(
            args.root,
            profile="quick" if args.quick else "full",
            only=args.only,
            overrides=overrides,
            log_output=args.log_output,
            command=command,
        )
    except NotebookError as e:
        print(f"[book] FAILED: {e}", file=sys.stderr)
        return 1
    total = sum(r.runtime_s or 0 for r in runs)
    print(f"[book] {len(runs)} notebook(s) executed in {total:.0f} s; record: book/_generated/reproducibility.json")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m groundiff_core.book", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_from_args(args, command=shlex.join(["python", "-m", "groundiff_core.book", *argv]))
    except (ValueError, FileNotFoundError) as e:
        print(f"[book] error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
