"""The files of an evaluation folder: ``results.jsonl`` rows and ``run.json`` (identity, sessions).

``results.jsonl`` holds one JSON row per pair, appended as each image is done; :func:`read_jsonl`
reads it (dropping, or with ``repair`` cutting, a torn last line) and :func:`latest` keeps one row
per pair. ``run.json`` holds the run's identity (:mod:`groundiff_core.evaluation.identity`) and its
sessions: :func:`open_run` accepts it only for the same evaluation, :func:`session` records each
start and end. Whole files are replaced atomically (:func:`groundiff_core.util.fileio.atomic_write`).
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from groundiff_core.evaluation.identity import diff_paths, same_run
from groundiff_core.util import environment
from groundiff_core.util.clock import now
from groundiff_core.util.fileio import atomic_write, write_json
from groundiff_core.util.fingerprint import jsonable

__all__ = ["RESULTS", "RUN", "SUMMARY_JSON", "SUMMARY_CSV", "FORMAT", "read_jsonl", "latest",
           "load_results", "out_folder", "read_run", "describe_run", "open_run",
           "session", "run_facts"]

RESULTS, RUN, SUMMARY_JSON, SUMMARY_CSV = "results.jsonl", "run.json", "summary.json", "summary.csv"
FORMAT = 2  # 2: content identity (weights and annotation fingerprints, no paths), keyed rows


# a run.json holds the identity and the sessions (kilobytes); results.jsonl about 2 KB a pair
RUN_MAX_BYTES = 64 * 2 ** 20
RESULTS_MAX_BYTES = 512 * 2 ** 20


def read_jsonl(path: Path, repair: bool = False) -> list[dict]:
    """Rows of a results file.

    A torn last line (a crash in the middle of a write) is dropped with a warning; with ``repair``
    it is also cut from the file (and a missing final newline added) so that appending is safe.
    A corrupt line anywhere else is an error: that is not an interrupted write. So is a line that
    is valid JSON but not a result row (an object with a string ``pair_id`` and ``status``).
    """
    if path.exists() and not path.is_file():
        raise ValueError(f"{path} is not a file; an evaluation folder keeps its results there")
    if not path.is_file():
        return []
    from groundiff_core.util.fileio import regular_file

    raw = regular_file(path, "results file", max_bytes=RESULTS_MAX_BYTES).read_bytes()
    *complete, tail = raw.split(b"\n")
    rows = []
    for i, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            rows.append(_as_row(json.loads(line), path, i))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValueError(f"{path}: line {i} is not valid JSON (and not an interrupted last "
                             "write); fix or remove it") from None
    if tail.strip():
        try:
            rows.append(_as_row(json.loads(tail), path, len(complete) + 1))
            fix = b"\n"
        except (json.JSONDecodeError, UnicodeDecodeError):
            warnings.warn(f"{path}: dropped a torn last line (an interrupted write)", UserWarning,
                          stacklevel=3)
            fix = None
        if repair:
            if fix is None:
                with open(path, "r+b") as fh:
                    fh.truncate(len(raw) - len(tail))
            else:
                with open(path, "ab") as fh:
                    fh.write(fix)
    return rows


def _as_row(obj: Any, path: Path, line: int) -> dict:
    if not (isinstance(obj, dict) and isinstance(obj.get("pair_id"), str)
            and isinstance(obj.get("status"), str)):
        raise ValueError(f"{path}: line {line} is not a result row (expected a JSON object with "
                         "'pair_id' and 'status'); fix or remove it")
    return obj


def latest(rows: Iterable[dict]) -> dict[str, dict]:
    """One row per pair id, among the rows of its latest content ``key`` (the key of its last
    row): the last ``ok`` one if any, else the last one. Rows of an older key are stale."""
    rows = list(rows)
    last_key = {r["pair_id"]: r.get("key") for r in rows}
    out: dict[str, dict] = {}
    for r in rows:
        pid = r["pair_id"]
        if r.get("key") != last_key[pid]:
            continue
        if r.get("status") == "ok" or out.get(pid, {}).get("status") != "ok":
            out[pid] = r
    return out


def load_results(out_dir: str | os.PathLike) -> list[dict]:
    """The per-pair rows of an evaluation folder, one per pair (see :func:`latest`), file order."""
    return list(latest(read_jsonl(Path(out_dir) / RESULTS)).values())


def out_folder(out_dir: str | os.PathLike) -> Path:
    """``out_dir`` created if needed; a clear error when it names an existing file."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output folder {out} is an existing file, not a folder; choose a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def read_run(path: Path) -> dict:
    """A ``run.json``, with an error naming the file when it is unreadable or not one."""
    from groundiff_core.util.fileio import regular_file

    try:
        run = json.loads(regular_file(path, "run file", max_bytes=RUN_MAX_BYTES).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a readable run file ({type(e).__name__}: {e}); restore "
                         "it or choose another output folder") from None
    if not isinstance(run, dict) or not isinstance(run.get("identity"), dict):
        raise ValueError(f"{path} is not a groundiff run file (no 'identity' object); restore it "
                         "or choose another output folder")
    if run.get("format") != FORMAT:
        raise ValueError(f"{path} was written by another groundiff version (run format "
                         f"{run.get('format')!r}; this one reads {FORMAT}); use another output folder")
    if not isinstance(run.get("sessions"), list):
        run["sessions"] = []
    return run


def describe_run(run: dict) -> str:
    """``run.json`` in words, for refusals: what the folder already holds."""
    ident = run["identity"]
    method = ident.get("method", {})
    what = f"method {method.get('method', '?')!r}"
    model = (run.get("method_info") or {}).get("model") or {}
    if model.get("name"):
        what += f" with model {model['name']!r}"
    data = ident.get("dataset", {})
    if data.get("name"):
        what += f" on {data['name']!r}" + (f" ({data['split']})" if data.get("split") else "")
    if run.get("merged_from") is not None:
        return f"a merge of {len(run['merged_from'])} shard folder(s) of {what}"
    shard = ident.get("shard")
    tail = f", shard {shard[0]}/{shard[1]}" if shard and shard[1] > 1 else ""
    return f"an evaluation of {what}{tail}, created {run.get('created', '?')}"


def open_run(out: Path, identity: dict, method_info: dict, info: dict) -> dict:
    """The folder's ``run.json`` if it describes this evaluation, a new one if there is none.

    Refused: a merged folder, or one of another method, config, model weights, dataset or shard.
    Changed annotations are accepted (their fingerprint is updated; changed pairs are recomputed).
    """
    path = out / RUN
    if path.is_file():
        run = read_run(path)
        old = run["identity"]
        if run.get("merged_from") is not None:
            raise ValueError(f"{out} holds {describe_run(run)}; evaluating into it would mix "
                             "with the merged results: choose another output folder")
        if not same_run(old, identity, ignore=("data",)):
            diff = diff_paths(old, identity, ignore=("data",))
            raise ValueError(
                f"{out} holds {describe_run(run)}: a different configuration; it differs in "
                f"{', '.join(diff[:8])}{' ...' if len(diff) > 8 else ''}. Resume only with the "
                "same model weights, method, config, dataset and shard, or choose another output folder."
            )
        run.update(identity=identity, method_info=method_info, info=jsonable(info))
        return run
    if (out / RESULTS).exists():
        raise ValueError(f"{out} has a {RESULTS} but no {RUN}: not a groundiff evaluation "
                         "folder (or a damaged one); refusing to write into it: choose another "
                         "output folder")
    return {"format": FORMAT, "identity": identity, "method_info": method_info,
            "info": jsonable(info), "created": now(), "sessions": []}


@contextmanager
def session(out: Path, run: dict, rows: Sequence[dict], kind: str, **facts: Any) -> Iterator[dict]:
    """Record one session in ``run.json``: written at the start (status "running") and the end.

    A session still "running" at the next start (the folder lock is held, so its process is gone)
    was killed: it is marked so, with the rows it wrote counted from the results file.
    """
    sessions = run["sessions"]
    for s in sessions:
        if isinstance(s, dict) and s.get("status") == "running":
            s["status"] = "killed"
            s["pairs_done"] = sum(1 for r in rows if r.get("session") == s.get("n"))
    n = 1 + max((s.get("n", 0) for s in sessions if isinstance(s, dict)), default=0)
    entry = {"n": n, "kind": kind, "started": now(), "status": "running",
               "host": socket.gethostname(), "pid": os.getpid(), **jsonable(facts)}
    sessions.append(entry)
    write_json(out / RUN, run)
    started = time.time()
    try:
        yield entry
        entry["status"] = "finished"
    except KeyboardInterrupt:
        entry["status"] = "interrupted"
        raise
    except BaseException as e:
        entry["status"] = f"failed ({type(e).__name__})"
        raise
    finally:
        entry["ended"] = now()
        entry["wall_s"] = round(time.time() - started, 3)
        write_json(out / RUN, run)


def run_facts(run: dict, identity: dict, shard: tuple[int, int] | None, n_pairs: int | None,
              n_selected: int) -> dict:
    """What a summary records about its run: identity, config, model, selection, software and
    hardware (:mod:`groundiff_core.util.environment`), sessions and times."""
    sessions = [s for s in run.get("sessions", []) + run.get("shard_sessions", [])
                if isinstance(s, dict)]
    return {
        "identity": identity,
        "config": identity["method"].get("config"),
        "model": (run.get("method_info") or {}).get("model", identity["method"].get("model")),
        "info": run.get("info", {}),
        "selection": {"n_pairs": n_pairs, "shard": list(shard) if shard else None,
                      "n_selected": n_selected},
        "versions": environment.versions(),
        "hardware": environment.hardware(import_torch=False),
        "wall_time_s": round(sum(s.get("wall_s", 0.0) for s in sessions), 3),
        "sessions": len(sessions),
        "created": run.get("created"),
        "finished": now(),
    }
