"""Execute the book's notebooks with papermill, then record how they were run.

The sources are jupytext percent-format files ``notebooks/NN_name.py``. For each one the runner

1. converts it to a notebook with jupytext (:mod:`.sources`),
2. executes it with papermill into ``book/notebooks/NN_name.ipynb``, injecting the chosen profile's
   parameters, any ``-p key value`` overrides and ``output_dir = book/notebooks/NN_name_files``
   (where the notebook writes its metrics JSON/CSV and figures; see :mod:`.parameters`),
3. stops at the first cell that raises (the executed copy keeps the traceback for reading), and
4. writes ``book/_generated/reproducibility.json`` and ``.md`` (versions, seeds, hardware,
   parameters and runtime per notebook; :mod:`.record`), which the book's reproducibility page includes.

``jupyter-book build book`` then renders the executed copies without running anything again
(``execute_notebooks: 'off'`` in ``_config.yml``)::

    python -m groundiff_core.book [--quick] [--only 02_main_table] [-p n_pairs 20 -p seed 7]
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from groundiff_core.book.parameters import (
    PROFILES,
    declared_parameters,
    injected_parameters,
    parse_value,
    refuse_undeclared,
)
from groundiff_core.book.record import NotebookRun, listing, now, read_provenance, write_record
from groundiff_core.book.sources import KERNEL_NAME, discover, read_source, select

__all__ = [
    "PROFILES",
    "NotebookError",
    "NotebookRun",
    "add_arguments",
    "declared_parameters",
    "discover",
    "ensure_kernel",
    "execute_notebook",
    "parse_value",
    "read_source",
    "run_book",
    "run_from_args",
    "select",
    "main",
]


class NotebookError(RuntimeError):
    """A notebook cell raised: names the notebook, the cell and the error."""


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
    nb = read_source(source)
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
    selected = select(discover(root / "notebooks"), only)
    overrides = dict(overrides or {})
    book_dir = root / "book"
    nb_dir = book_dir / "notebooks"

    runs: list[NotebookRun] = []
    declared_any: set[str] = set()
    for src in selected:
        name = src.stem
        declared = declared_parameters(read_source(src))
        declared_any |= set(declared)
        files_dir = (nb_dir / f"{name}_files").relative_to(root).as_posix()
        inject = injected_parameters(name, declared, profile=profile, overrides=overrides, output_dir=files_dir)
        runs.append(
            NotebookRun(
                name=name,
                source=src.relative_to(root).as_posix(),
                output=(nb_dir / f"{name}.ipynb").relative_to(root).as_posix(),
                output_dir=files_dir,
                parameters={**{k: p.value for k, p in declared.items()}, **inject},
                injected=inject,
            )
        )
    refuse_undeclared(overrides, declared_any)

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
            run.finished = now()
            run.files = listing(files_dir)
            run.provenance = read_provenance(files_dir)
            write_record(book_dir, runs, profile=profile, total_s=time.perf_counter() - started, command=command)
        print(f"[book] {run.name}: done in {run.runtime_s:.1f} s", flush=True)
    return runs


def _fmt_params(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in params.items()) or "defaults"


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
