"""``groundiff evaluate`` under a launcher (torchrun and the like): one shard per rank, rank 0 merges.

The end-to-end test starts two processes as a launcher would (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT in their environment) on the tiny MS-CXR-layout dataset and checks that
the merged summary equals a single process's on the same pairs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from groundiff_core.evaluation import distributed as dist
from groundiff_core import evaluation as ev
from groundiff_core.cli import main as cli_main

import mscxr_fixture as fx

pytestmark = pytest.mark.slow  # two torchrun processes

COMMON = ["evaluate", "--model", "tiny", "--steps", "10", "--dataset", "mscxr", "--bootstrap", "200",
          "--device", "cpu", "--no-progress"]
METRICS = ("miou", "auc", "auc_binned", "cnr_abs", "cnr_signed", "pointing")


def _launcher_env(rank: int, world: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
               MASTER_PORT="29533", OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    return env


def test_two_ranks_give_the_single_process_summary(tmp_path):
    csv, root = fx.make_dataset(tmp_path)
    data = ["--csv", str(csv), "--images", str(root)]
    cli = [sys.executable, "-m", "groundiff_core.cli", *COMMON, *data]
    single = tmp_path / "single"  # one process, same thread count as the ranks (float32 rounding)
    env = {k: v for k, v in _launcher_env(0, 1).items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    done = subprocess.run([*cli, "--out", str(single)], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr

    out = tmp_path / "launched"
    cmd = [*cli, "--out", str(out), "--merge-timeout", "600"]
    procs = [subprocess.Popen(cmd, env=_launcher_env(r, 2), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for r in range(2)]
    outputs = [p.communicate(timeout=900) for p in procs]
    for p, (so, se) in zip(procs, outputs):
        assert p.returncode == 0, se
    assert "rank 1 of 2: shard done" in outputs[1][0]
    assert "rank 0: waiting" in outputs[0][0]

    # each rank evaluated its shard in its own folder, rank 0 merged them into --out
    shard_pairs = []
    for r in range(2):
        folder = out / f"shard-{r}-of-2"
        run = json.loads((folder / "run.json").read_text())
        assert run["identity"]["shard"] == [r, 2]
        assert json.loads((folder / dist.DONE_NAME).read_text())["rank"] == r
        shard_pairs.append({row["pair_id"] for row in ev.load_results(folder)})
    assert shard_pairs[0] and shard_pairs[1] and not shard_pairs[0] & shard_pairs[1]
    merged = json.loads((out / "summary.json").read_text())
    alone = json.loads((single / "summary.json").read_text())
    assert merged["shards"] == [[0, 2], [1, 2]]
    assert merged["n_pairs"] == alone["n_pairs"] == 5
    for m in METRICS:
        assert merged["class_averaged"][m] == alone["class_averaged"][m], m
        assert merged["overall"][m] == alone["overall"][m], m
    assert merged["per_class"] == alone["per_class"]


# ---------------------------------------------------------------------- the pieces
def test_launch_rank_from_the_environment():
    assert dist.launch_rank({}) is None
    assert dist.launch_rank({"RANK": "0", "WORLD_SIZE": "1"}) is None  # one process: an ordinary run
    got = dist.launch_rank({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "TORCHELASTIC_RUN_ID": "abc"})
    assert got == dist.LaunchRank(3, 4, 1, "abc") and got.shard == (3, 4)
    assert dist.launch_rank({"RANK": "1", "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "none"}).run_id is None
    with pytest.raises(ValueError, match="RANK=2 and WORLD_SIZE=2 must satisfy"):
        dist.launch_rank({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="set RANK but not WORLD_SIZE"):
        dist.launch_rank({"RANK": "0"})
    with pytest.raises(ValueError, match=r"WORLD_SIZE='two' is not a non-negative integer"):
        dist.launch_rank({"RANK": "0", "WORLD_SIZE": "two"})


def test_wait_for_shards_needs_this_launchs_markers(tmp_path):
    launch = dist.LaunchRank(0, 2, 0, "run-b")
    folders = [dist.shard_folder(tmp_path, r, 2) for r in range(2)]
    for f in folders:
        f.mkdir()
    dist.mark_shard_done(folders[0], launch, 3)
    # shard 1's marker is from an earlier launch: not accepted
    dist.mark_shard_done(folders[1], dist.LaunchRank(1, 2, 1, "run-a"), 2)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match=r"shard\(s\) \[1\] of 2 did not finish within 0.3 s.*"
                                           r"groundiff evaluate --merge .*shard-0-of-2 .*shard-1-of-2 --out"):
        dist.wait_for_shards(tmp_path, launch, timeout=0.3, poll=0.05)
    assert time.monotonic() - t0 < 5
    dist.mark_shard_done(folders[1], dist.LaunchRank(1, 2, 1, "run-b"), 2)
    assert dist.wait_for_shards(tmp_path, launch, timeout=0.3, poll=0.05) == folders
    dist.clear_shard_done(folders[1])
    assert not (folders[1] / dist.DONE_NAME).exists()


def test_shard_option_conflicts_with_a_launcher(tmp_path, monkeypatch, capsys):
    csv, root = fx.make_dataset(tmp_path)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    rc = cli_main([*COMMON, "--csv", str(csv), "--images", str(root), "--out", str(tmp_path / "o"),
                   "--shard", "0/2"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--shard 0/2 under a launcher (RANK=0, WORLD_SIZE=2)" in err and "Traceback" not in err
