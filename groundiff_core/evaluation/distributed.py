"""One evaluation over several processes started by a launcher (``torchrun --nproc_per_node N``).

A launcher such as ``torchrun`` starts N copies of the same command and tells each its place in the
environment: ``RANK`` (0..N-1), ``WORLD_SIZE`` (N) and ``LOCAL_RANK`` (its accelerator on the node).
``groundiff evaluate --out DIR`` run that way splits the work by itself:

* rank ``r`` evaluates shard ``r/N`` (images ``j`` with ``j % N == r``) into ``DIR/shard-r-of-N``,
  an ordinary, resumable evaluation folder, and when it has finished writes the completion marker
  ``DIR/shard-r-of-N/shard-done.json`` (it removes its own marker when it starts);
* rank 0, after its own shard, waits for every other shard's marker (polling the file system, up to a
  timeout) and merges the shard folders into ``DIR`` (:func:`groundiff_core.evaluation.merge`).

The barrier is a file one on purpose: it needs no process group, no open port and no network
between ranks beyond the shared ``DIR`` (the ranks of several nodes need a shared file system),
and a rank that fails simply never writes its marker, so rank 0 stops at the timeout with a message
that says how to merge by hand. A marker carries the launch's ``TORCHELASTIC_RUN_ID`` where the
launcher sets one, so a marker left by an earlier launch is not mistaken for this one's.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from groundiff_core.util.fileio import atomic_write

__all__ = ["LaunchRank", "launch_rank", "shard_folder", "mark_shard_done", "clear_shard_done",
           "wait_for_shards", "DONE_NAME"]

#: Completion marker a rank writes into its shard folder when its shard is finished.
DONE_NAME = "shard-done.json"


@dataclass(frozen=True)
class LaunchRank:
    """This process's place in a launch: ``rank`` of ``world_size``; ``local_rank`` picks its device."""

    rank: int
    world_size: int
    local_rank: int
    run_id: str | None = None

    @property
    def shard(self) -> tuple[int, int]:
        return self.rank, self.world_size


def _int_var(env: Mapping[str, str], name: str) -> int:
    value = env[name].strip()
    if not value.isdigit():
        raise ValueError(f"environment variable {name}={env[name]!r} is not a non-negative integer "
                         "(set by the launcher, e.g. torchrun)")
    return int(value)


def launch_rank(env: Mapping[str, str] | None = None) -> LaunchRank | None:
    """This process's rank from ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; None without a launcher.

    A launch of one process (``WORLD_SIZE=1``) counts as none: it is an ordinary run.
    """
    env = os.environ if env is None else env
    if "RANK" not in env and "WORLD_SIZE" not in env:
        return None
    for name in ("RANK", "WORLD_SIZE"):
        if name not in env:
            raise ValueError(f"the launcher set {'WORLD_SIZE' if name == 'RANK' else 'RANK'} but not {name}; "
                             "both are needed to split an evaluation over processes")
    rank, world = _int_var(env, "RANK"), _int_var(env, "WORLD_SIZE")
    if world < 1 or rank >= world:
        raise ValueError(f"RANK={rank} and WORLD_SIZE={world} must satisfy 0 <= RANK < WORLD_SIZE")
    if world == 1:
        return None
    local = _int_var(env, "LOCAL_RANK") if "LOCAL_RANK" in env else rank
    run_id = env.get("TORCHELASTIC_RUN_ID")
    return LaunchRank(rank, world, local, None if run_id in (None, "", "none") else run_id)


def shard_folder(out: str | os.PathLike, rank: int, world_size: int) -> Path:
    """The folder of shard ``rank/world_size`` inside the launch's output folder ``out``."""
    return Path(out) / f"shard-{rank}-of-{world_size}"


def clear_shard_done(folder: str | os.PathLike) -> None:
    """Remove a shard folder's completion marker (a rank does this when it starts)."""
    (Path(folder) / DONE_NAME).unlink(missing_ok=True)


def mark_shard_done(folder: str | os.PathLike, launch: LaunchRank, n_pairs: int) -> None:
    """Write the completion marker of ``launch``'s shard into ``folder`` (atomically)."""
    marker = {"rank": launch.rank, "world_size": launch.world_size, "run_id": launch.run_id,
              "n_pairs": int(n_pairs), "finished": time.time(), "pid": os.getpid()}
    atomic_write(Path(folder) / DONE_NAME, json.dumps(marker) + "\n")


def _marker_ok(path: Path, rank: int, launch: LaunchRank) -> bool:
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # not there yet (atomic writes: never half-written)
    return (marker.get("rank"), marker.get("world_size"), marker.get("run_id")) == \
        (rank, launch.world_size, launch.run_id)


def wait_for_shards(out: str | os.PathLike, launch: LaunchRank, timeout: float,
                    poll: float = 2.0) -> list[Path]:
    """Rank 0: wait until every shard of the launch has its marker; return the shard folders.

    Raises ``TimeoutError`` naming the shards still missing after ``timeout`` seconds, and how to
    merge them by hand once they finish.
    """
    folders = [shard_folder(out, r, launch.world_size) for r in range(launch.world_size)]
    deadline = time.monotonic() + float(timeout)
    while True:
        missing = [r for r, f in enumerate(folders) if not _marker_ok(f / DONE_NAME, r, launch)]
        if not missing:
            return folders
        if time.monotonic() >= deadline:
            names = " ".join(str(f) for f in folders)
            raise TimeoutError(f"shard(s) {missing} of {launch.world_size} did not finish within {timeout:g} s "
                               f"(no {DONE_NAME} in {folders[missing[0]]}); when they have, merge with: "
                               f"groundiff evaluate --merge {names} --out {out}")
        time.sleep(max(0.05, min(poll, deadline - time.monotonic())))
