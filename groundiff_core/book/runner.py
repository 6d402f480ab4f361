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

    python -m groundiff_core.book [--quick] [--jobs 2] [--only 02_main_table] [-p n_pairs 20 -p seed 7]

With ``--jobs N`` N notebooks run at once, each in its own kernel with ``cpu_count / N`` torch
threads (``OMP_NUM_THREADS``, unless it is set), the longest first (:data:`.parameters.RUN_FIRST`).
The phantom's small networks gain little from a second thread, so on 2 cores two notebooks at once
take about half the time of one after the other (benchmarks/results/book_build.md).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import shlex
import shutil
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from groundiff_core.book.parameters import (
    PROFILES,
    RUN_FIRST,
    declared_parameters,
    injected_parameters,
    parse_value,
    refuse_undeclared,
)
from groundiff_core.book.record import NotebookRun, listing, read_provenance, write_record
from groundiff_core.util.clock import now
from groundiff_core.book.sources import KERNEL_NAME, discover, read_source, select
from groundiff_core.util.fingerprint import file_sha256

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
    "stale_notebooks",
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
    jobs: int = 1,
) -> list[NotebookRun]:
    """Execute the selected notebooks of the project at ``root`` and write the record.

    ``only``: notebook names (``02_main_table``) or numbers (``2``/``02``); empty = all.
    ``overrides``: parameters applied on top of the profile to every notebook that declares them
    (an override that no selected notebook declares is an error).
    ``jobs``: notebooks executed at once (see the module's docstring).
    Raises :class:`NotebookError` at the first failing cell, after recording the failure; with
    ``jobs > 1`` the notebooks already running finish, and no other starts.
    """
    if int(jobs) < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
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
                source_sha256=file_sha256(src),
            )
        )
    refuse_undeclared(overrides, declared_any)

    kernel = ensure_kernel()
    started = time.perf_counter()
    jobs = max(1, min(int(jobs), len(runs)))

    def start(run: NotebookRun) -> tuple:
        files_dir = root / run.output_dir
        if files_dir.exists():
            shutil.rmtree(files_dir)  # never show figures of an earlier run
        files_dir.mkdir(parents=True)
        return (run.name, root / run.source, root / run.output, run.injected, root, kernel, log_output)

    def finish(run: NotebookRun, seconds: float | None, error: NotebookError | None) -> None:
        if error is None:
            run.runtime_s, run.status = round(seconds, 2), "ok"
        else:
            run.status, run.error = "failed", str(error)
        run.finished = now()
        run.files = listing(root / run.output_dir)
        run.provenance = read_provenance(root / run.output_dir)
        write_record(book_dir, runs, profile=profile, total_s=time.perf_counter() - started, command=command)
        if error is None:
            print(f"[book] {run.name}: done in {run.runtime_s:.1f} s", flush=True)

    if jobs == 1:
        for run in runs:
            try:
                seconds = _execute_job(*start(run))
            except NotebookError as e:
                finish(run, None, e)
                raise
            finish(run, seconds, None)
        return runs

    # several at once: each in a worker process with its own kernel; after a failure nothing new starts
    order = sorted(runs, key=lambda r: (RUN_FIRST.index(r.name) if r.name in RUN_FIRST else len(RUN_FIRST)))
    pending, running, failure = list(order), {}, None
    with _kernel_threads(jobs), ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        while running or (pending and failure is None):
            while pending and failure is None and len(running) < jobs:
                run = pending.pop(0)
                running[pool.submit(_execute_job, *start(run))] = run
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                run = running.pop(future)
                try:
                    finish(run, future.result(), None)
                except NotebookError as e:
                    finish(run, None, e)
                    failure = failure or e
    if failure is not None:
        raise failure
    return runs


def stale_notebooks(root: Path, profile: str | None = None) -> list[str]:
    """The notebooks of the project at ``root`` whose executed page is missing or out of date: no
    executed copy, no ``ok`` entry in the record, a source changed since (SHA-256), or (with
    ``profile``) executed with another profile. Empty: the book can be rendered as it is."""
    import json

    root = Path(root)
    path = root / "book" / "_generated" / "reproducibility.json"
    try:
        record = json.loads(path.read_text()).get("notebooks", {})
    except (OSError, ValueError, AttributeError):
        record = {}
    stale = []
    for src in discover(root / "notebooks"):
        entry = record.get(src.stem) or {}
        current = (entry.get("status") == "ok" and entry.get("source_sha256") == file_sha256(src)
                   and (root / "book" / "notebooks" / f"{src.stem}.ipynb").is_file()
                   and (profile is None or entry.get("profile") == profile))
        if not current:
            stale.append(src.stem)
    return stale


def _execute_job(name: str, source: Path, output: Path, parameters: Mapping[str, Any], cwd: Path,
                 kernel: str, log_output: bool) -> float:
    """One notebook of :func:`run_book` (in a worker process when notebooks run in parallel)."""
    print(f"[book] {name}: executing ({_fmt_params(parameters)})", flush=True)
    return execute_notebook(source, output, parameters, cwd=cwd, kernel=kernel, log_output=log_output)


@contextlib.contextmanager
def _kernel_threads(jobs: int) -> Iterator[None]:
    """Give each of ``jobs`` parallel kernels an equal share of the cores (``OMP_NUM_THREADS``, which
    the kernels inherit), unless the caller set it."""
    if os.environ.get("OMP_NUM_THREADS"):
        yield
        return
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    try:
        yield
    finally:
        os.environ.pop("OMP_NUM_THREADS", None)


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
    parser.add_argument("--text-encoder", metavar="DIR|REPO",
                        help="for MONAI models: the Stable Diffusion 2.1 base folder holding text_encoder/ and "
                        "tokenizer/, or a Hub id read from the local Hugging Face cache, if they are not inside the "
                        "model folder (same as -p text_encoder DIR)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="notebooks executed at once, each with cpu_count / N torch threads (default 1)")
    parser.add_argument("--root", type=Path, default=Path("."), help="project root (holds notebooks/ and book/)")
    parser.add_argument("--log-output", action="store_true", help="echo the notebooks' output while they run")


def require_book_packages() -> None:
    """A ``ValueError`` naming the extra to install when the packages that execute notebooks are
    missing (a plain ``pip install groundiff_core`` has none of them)."""
    import importlib.util

    missing = [m for m in ("papermill", "jupytext", "nbformat", "ipykernel") if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"executing the notebooks needs the book extra (missing: {', '.join(missing)}): "
                         "pip install 'groundiff_core[book]'")


def run_from_args(args: argparse.Namespace, command: str | None = None) -> int:
    """Run the book from parsed :func:`add_arguments` options; 1 if a notebook failed."""
    require_book_packages()
    overrides = {k: parse_value(v) for k, v in args.parameter}
    for key in ("model", "text_encoder"):  # --model / --text-encoder: -p with a path made absolute
        value = getattr(args, key, None)
        if value is None:
            continue
        if key in overrides:
            raise ValueError(f"give --{key.replace('_', '-')} or -p {key}, not both")
        path = Path(value).expanduser()  # a missing path stays as given: a source name or a Hub id
        overrides[key] = str(path.resolve()) if path.exists() else str(value)  # notebooks run in --root
    try:
        runs = run_book(
            args.root,
            profile="quick" if args.quick else "full",
            only=args.only,
            overrides=overrides,
            log_output=args.log_output,
            command=command,
            jobs=args.jobs,
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
