"""Merging the folders of a sharded evaluation into one folder with one summary."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Sequence

from groundiff_core.evaluation.identity import comparable, diff_paths, same_run
from groundiff_core.evaluation.options import check_options
from groundiff_core.evaluation.results import (FORMAT, RESULTS, RUN, SUMMARY_JSON, describe_run, latest,
                                               out_folder, read_jsonl, read_run, run_facts, session)
from groundiff_core.util.clock import now
from groundiff_core.evaluation.summary import summarize, write_summary
from groundiff_core.util.fileio import atomic_write, folder_lock

__all__ = ["merge"]


def _unfinished(folder: Path, run: dict) -> str | None:
    """Why a shard folder is not a finished evaluation (None when it is): its last evaluation
    session did not finish (interrupted, killed, failed) or it has no summary."""
    sessions = [x for x in run.get("sessions", []) if isinstance(x, dict) and x.get("kind") == "evaluate"]
    if not sessions:
        return "it records no evaluation session"
    last = sessions[-1]
    if last.get("status") != "finished":
        return f"its last session is {last.get('status', 'unknown')} ({last.get('pairs_done', '?')} pairs done)"
    if not (folder / SUMMARY_JSON).is_file():
        return f"it has no {SUMMARY_JSON} (the run did not end)"
    return None


def merge(dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *, n_boot: int = 1000,
          seed: int = 0, allow_partial: bool = False) -> dict:
    """Combine the folders of a sharded evaluation into ``out_dir``; return the merged summary.

    The folders must share one identity apart from the shard (content fingerprints: shards run
    on other machines, from other paths, merge). A merge that would be incomplete is refused,
    naming the shard and what is missing: a shard that has not finished, shards made for different
    shard counts, a shard not given. ``allow_partial=True`` merges anyway and marks the summary
    ``partial`` (with the reasons), as the summary line and ``summary.csv`` then say too. ``out_dir`` gets a merged ``results.jsonl``, ``run.json``
    (``merged_from``) and the summary files, each replaced atomically. ``out_dir`` must be new,
    empty of results, or an earlier merge of the same evaluation: any other run there is refused,
    never overwritten.
    """
    check_options(n_boot=n_boot)
    dirs = [Path(d) for d in dirs]
    if not dirs:
        raise ValueError("merge needs at least one evaluation folder")
    for d in dirs:
        if not d.is_dir():
            raise FileNotFoundError(f"shard folder not found: {d}")
        if not (d / RUN).is_file():
            raise FileNotFoundError(f"{d} is not an evaluation folder (no {RUN})")
    out = Path(out_dir)
    if any(d.resolve() == out.resolve() for d in dirs):
        raise ValueError(f"the merge output folder {out} must not be one of the folders merged")
    runs = [read_run(d / RUN) for d in dirs]
    for d, r in zip(dirs, runs):
        if r.get("merged_from") is not None:
            raise ValueError(f"{d} holds {describe_run(r)}, not one shard; merge the shard folders")
    base = comparable(runs[0]["identity"], ignore=("shard",))
    for d, r in zip(dirs[1:], runs[1:]):
        if not same_run(base, r["identity"], ignore=("shard",)):
            diff = diff_paths(base, r["identity"], ignore=("shard",))
            raise ValueError(f"{d} is an evaluation of a different configuration than {dirs[0]} "
                             f"(differs in {', '.join(diff[:8])})")
    shards = sorted({tuple(r["identity"].get("shard") or (0, 1)) for r in runs})
    ns = {n for _, n in shards}
    problems = []
    if len(ns) > 1:
        problems.append("the folders are shards of different shard counts ("
                        + ", ".join(f"{d}: {'/'.join(map(str, r['identity'].get('shard') or (0, 1)))}"
                                    for d, r in zip(dirs, runs)) + ")")
    else:
        n = ns.pop()
        missing = sorted(set(range(n)) - {i for i, _ in shards})
        if missing:
            problems.append(f"shard(s) {', '.join(f'{i}/{n}' for i in missing)} of {n} not given")
    problems += [f"{d} is unfinished: {why}" for d, r in zip(dirs, runs) if (why := _unfinished(d, r))]
    if problems and not allow_partial:
        raise ValueError("refusing an incomplete merge: " + "; ".join(problems)
                         + ". Finish every shard and merge them all, or pass --allow-partial")
    if problems:
        warnings.warn("partial merge: " + "; ".join(problems), UserWarning, stacklevel=2)
    rows: list[dict] = []
    for d in dirs:
        rows += read_jsonl(d / RESULTS)
    merged = list(latest(rows).values())
    dropped = list({(e.get("pair_id"), e.get("reason")): e for r in runs
                    for e in r.get("dropped", []) if isinstance(e, dict)}.values())
    identity = {**base, "shard": None}
    out = out_folder(out)
    with folder_lock(out, "merge"):
        run = _merge_run(out, base)
        run.update(identity=identity, method_info=runs[0].get("method_info", {}),
                   info=runs[0].get("info", {}), merged_from=[str(d) for d in dirs],
                   shards=[list(s) for s in shards], dropped=dropped,
                   shard_sessions=[{**s, "shard": r["identity"].get("shard")} for r in runs
                                   for s in r.get("sessions", []) if isinstance(s, dict)])
        with session(out, run, [], "merge", merged_from=run["merged_from"]):
            atomic_write(out / RESULTS, "".join(json.dumps(r) + "\n" for r in merged))
            summary = summarize(merged, n_boot=n_boot, seed=seed)
            summary.update(run_facts(run, identity, None, None, len(merged)))
            summary["merged_from"] = run["merged_from"]
            summary["shards"] = run["shards"]
            summary["changed"] = {"n_pairs": 0, "pair_ids": []}
            summary["dropped"] = {"n_pairs": len(dropped), "pairs": dropped}
            summary["partial"] = {"reasons": problems} if problems else None
            write_summary(summary, out)
    return summary


def _merge_run(out: Path, base: dict) -> dict:
    """The merge folder's ``run.json`` to update: a new one, or its earlier merge of ``base``."""
    if (out / RUN).is_file():
        old = read_run(out / RUN)
        if old.get("merged_from") is None or not same_run(old["identity"], base, ignore=("shard",)):
            raise ValueError(f"{out} holds {describe_run(old)}; merging into it would overwrite "
                             "it: choose another output folder")
        return old
    if (out / RESULTS).exists():
        raise ValueError(f"{out} has a {RESULTS} but no {RUN}; refusing to overwrite it: choose "
                         "another output folder")
    return {"format": FORMAT, "created": now(), "sessions": []}
