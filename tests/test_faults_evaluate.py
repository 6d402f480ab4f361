"""Faults of the evaluation runner: stale rows, overwritten runs, moved folders, bad inputs.

Each test is one defect of issue 15 (and the path-bound run identity of issue 13): it failed on
the runner before the fix. CLI-level defects are checked through ``groundiff evaluate`` itself:
the exact exit code (2) and a message naming the input, or that no data was lost.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from groundiff_core import evaluation as ev
from groundiff_core.methods.baselines import CentrePrior, RandomHeatmap
from groundiff_core.cli import main as cli_main
from groundiff_core.io.datasets import load_mscxr
from groundiff_core.util.fileio import FolderBusyError, folder_lock

import mscxr_fixture as fx

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def data(tmp_path):
    csv, root = fx.make_dataset(tmp_path)
    return load_mscxr(csv, root), csv, root


def _cli(csv, root, out, *extra) -> list[str]:
    return ["evaluate", "--dataset", "mscxr", "--csv", str(csv), "--images", str(root),
            "--no-progress", "--bootstrap", "20", "--out", str(out), *extra]


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------ 1. stale results
def test_changed_annotations_and_images_recompute_exactly_those_pairs(data, tmp_path, capsys):
    pairs, csv, root = data
    out = tmp_path / "run"
    assert cli_main(_cli(csv, root, out, "--method", "centre")) == 0
    first = json.loads((out / "summary.json").read_text())

    # same pair ids, other boxes for the edema pair (alone on its image c3)
    rows = [r if r[0] != "c3" else (*r[:3], r[3] + 10, r[4] + 10, 6, 6, r[7]) for r in fx.ROWS]
    fx.write_csv(csv, rows=rows)
    capsys.readouterr()
    assert cli_main(_cli(csv, root, out, "--method", "centre")) == 0
    assert "recomputed 1 pair(s)" in capsys.readouterr().out
    second = json.loads((out / "summary.json").read_text())
    assert second["changed"] == {"n_pairs": 1, "pair_ids": ["c3|bilateral edema"]}
    assert second["per_class"]["Edema"] != first["per_class"]["Edema"]
    # what a fresh run on the new annotations gives, and the scored boxes are the new ones
    fresh = tmp_path / "fresh"
    assert cli_main(_cli(csv, root, fresh, "--method", "centre")) == 0
    assert second["overall"] == json.loads((fresh / "summary.json").read_text())["overall"]
    edema = [r for r in ev.load_results(out) if r["pair_id"] == "c3|bilateral edema"]
    assert edema[0]["boxes"] == [[16, 24, 6, 6], [38, 24, 6, 6]]

    # a different image file (same name) recomputes the pairs of that image only
    fx.write_images(root, dicoms=("b2",), seed=7)
    s = ev.evaluate(CentrePrior(), load_mscxr(csv, root), out, dataset={"name": "mscxr", "split": None},
                    progress=False, n_boot=20)
    assert sorted(s["changed"]["pair_ids"]) == ["b2|right upper lobe consolidation",
                                                "b2|small left pneumothorax"]
    again = ev.evaluate(CentrePrior(), load_mscxr(csv, root), out,
                        dataset={"name": "mscxr", "split": None}, progress=False, n_boot=20)
    assert again["changed"]["n_pairs"] == 0


# ------------------------------------------------------------------------------ 2. data loss
def test_merge_and_evaluate_never_overwrite_another_finished_run(data, tmp_path, capsys):
    pairs, csv, root = data
    full = tmp_path / "full"
    assert cli_main(_cli(csv, root, full, "--method", "random")) == 0
    shards = [tmp_path / f"s{i}" for i in range(2)]
    for i, d in enumerate(shards):
        assert cli_main(_cli(csv, root, d, "--method", "random", "--shard", f"{i}/2")) == 0
    before = {f: (full / f).read_bytes() for f in ("results.jsonl", "run.json", "summary.json")}
    capsys.readouterr()

    assert cli_main(["evaluate", "--merge", str(shards[0]), "--out", str(full), "--allow-partial"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("groundiff evaluate: error: ") and str(full) in err
    assert "holds an evaluation of method 'random'" in err and err.count("\n") == 1
    assert {f: (full / f).read_bytes() for f in before} == before  # nothing lost

    merged = tmp_path / "merged"
    assert cli_main(["evaluate", "--merge", *map(str, shards), "--out", str(merged)]) == 0
    # evaluating into a merge folder is refused; merging again into it is fine
    assert cli_main(_cli(csv, root, merged, "--method", "random")) == 2
    assert "holds a merge of 2 shard folder(s)" in capsys.readouterr().err
    assert cli_main(["evaluate", "--merge", *map(str, shards), "--out", str(merged)]) == 0
    run = json.loads((merged / "run.json").read_text())
    assert [s["kind"] for s in run["sessions"]] == ["merge", "merge"]
    assert all(s["status"] == "finished" for s in run["sessions"])
    assert len(ev.load_results(merged)) == 5
    # no temporary file is left behind by the atomic writes
    assert not [p.name for p in merged.iterdir() if p.name.endswith(".tmp")]


def test_a_second_writer_is_refused_by_the_lock(data, tmp_path, capsys):
    pairs, csv, root = data
    out = tmp_path / "run"
    out.mkdir()
    with folder_lock(out):
        with pytest.raises(FolderBusyError, match=f"{out} is in use by pid {os.getpid()}"):
            ev.evaluate(CentrePrior(), pairs, out, progress=False, n_boot=10)
        assert cli_main(_cli(csv, root, out, "--method", "centre")) == 2
        assert "is in use" in capsys.readouterr().err
        assert not (out / "results.jsonl").exists()
    ev.evaluate(CentrePrior(), pairs, out, progress=False, n_boot=10)  # free again


def test_a_killed_session_is_recorded_at_the_next_start(data, tmp_path):
    pairs, csv, root = data
    out = tmp_path / "run"
    script = f"""
import os, signal, sys
sys.path.insert(0, {str(ROOT / 'tests')!r})
from groundiff_core import evaluation as ev
from groundiff_core.methods.baselines import CentrePrior
from groundiff_core.io.datasets import load_mscxr

class Dies:  # the centre prior (same identity) whose second image kills the process (kill -9)
    calls = 0
    def describe(self):
        return ev.method_identity(CentrePrior())
    def ground(self, image, phrases):
        Dies.calls += 1
        if Dies.calls == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return CentrePrior().ground(image, phrases)

ev.evaluate(Dies(), load_mscxr({str(csv)!r}, {str(root)!r}), {str(out)!r}, progress=False)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["sessions"][0]["status"] == "running"  # what the killed process left

    ev.evaluate(CentrePrior(), pairs, out, progress=False, n_boot=10)
    sessions = json.loads((out / "run.json").read_text())["sessions"]
    assert [s["status"] for s in sessions] == ["killed", "finished"]
    assert sessions[0]["pairs_done"] == 2 and sessions[1]["pairs_done"] == 3
    assert sorted(r["pair_id"] for r in _rows(out)) == sorted(p.pair_id for p in pairs)


# ------------------------------------------------------------------------------ 3. identity
def _save_sd_folder(model, root: Path) -> None:
    """A tiny model written as a Stable-Diffusion-layout diffusers folder."""
    from diffusers import DDIMScheduler

    s = model.schedule
    root.mkdir(parents=True)
    model.unet.save_pretrained(root / "unet")
    model.vae.save_pretrained(root / "vae")
    model.text_encoder.save_pretrained(root / "text_encoder")
    model.tokenizer.save_pretrained(root / "tokenizer")
    DDIMScheduler(num_train_timesteps=s.num_train_timesteps, beta_start=s.beta_start,
                  beta_end=s.beta_end, beta_schedule=s.beta_schedule,
                  prediction_type=s.prediction_type).save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "DDIMScheduler"]}))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from groundiff_core.models.architectures import tiny_ldm

    root = tmp_path_factory.mktemp("models") / "weights-v1"
    _save_sd_folder(tiny_ldm(), root)
    return root


def _grounder(path: Path):
    from groundiff_core.engine.config import GroundingConfig
    from groundiff_core.engine.grounder import Grounder
    from groundiff_core.models.loading import load_model

    return Grounder(load_model(path), GroundingConfig.paper().with_steps(10))


def test_moved_run_and_moved_model_resume_and_merge(data, model_dir, tmp_path):
    pairs, _, _ = data
    work = tmp_path / "checkout"
    model_a = work / "models" / "weights-v1"
    shutil.copytree(model_dir, model_a)
    g = _grounder(model_a)
    s0 = ev.evaluate(g, pairs, work / "runs" / "s0", shard="0/2", progress=False, n_boot=10)
    run = json.loads((work / "runs" / "s0" / "run.json").read_text())
    assert str(tmp_path) not in json.dumps(run["identity"])  # fingerprints, never paths
    assert run["identity"]["method"]["model"]["weights_sha256"]

    # the checkout moves (run folder and model), the model folder is renamed too
    moved = tmp_path / "elsewhere"
    shutil.move(str(work), str(moved))
    model_b = moved / "models" / "renamed-copy"
    shutil.move(str(moved / "models" / "weights-v1"), str(model_b))
    g2 = _grounder(model_b)
    calls = []
    ground = g2.ground
    g2.ground = lambda image, phrases: calls.append(phrases) or ground(image, phrases)
    again = ev.evaluate(g2, pairs, moved / "runs" / "s0", shard="0/2", progress=False, n_boot=10)
    assert calls == [] and again["overall"] == s0["overall"]  # resumed: nothing recomputed
    # the other shard runs from a relative path to the moved model, then the shards merge
    cwd = os.getcwd()
    os.chdir(moved)
    try:
        g3 = _grounder(Path("models") / "renamed-copy")
    finally:
        os.chdir(cwd)
    ev.evaluate(g3, pairs, tmp_path / "s1", shard="1/2", progress=False, n_boot=10)
    merged = ev.merge([moved / "runs" / "s0", tmp_path / "s1"], tmp_path / "all", n_boot=10)
    assert merged["n_pairs"] == 5

    # other weights are another evaluation
    from groundiff_core.models.architectures import tiny_ldm
    from groundiff_core.engine.config import GroundingConfig
    from groundiff_core.engine.grounder import Grounder

    other = Grounder(tiny_ldm(seed=1), GroundingConfig.paper().with_steps(10))
    with pytest.raises(ValueError, match=r"weights_sha256"):
        ev.evaluate(other, pairs, moved / "runs" / "s0", shard="0/2", progress=False)


def test_identity_survives_moved_code(data, tmp_path, monkeypatch):
    """Moving a method's class to another module keeps the run's identity (the class name, not its
    module), so the run resumes; a class of another name is another method."""
    from groundiff_core.engine.config import GroundingConfig
    from groundiff_core.engine.grounder import Grounder
    from groundiff_core.models.architectures import tiny_ldm

    pairs, _, _ = data
    g = Grounder(tiny_ldm(), GroundingConfig.paper().with_steps(10))
    before = ev.run_identity(g, pairs, {"name": "mscxr"}, (0, 1))
    assert before["method"]["class"] == "Grounder"
    monkeypatch.setattr(Grounder, "__module__", "somewhere.else.entirely")
    monkeypatch.setattr(CentrePrior, "__module__", "somewhere.else.entirely")
    assert ev.run_identity(g, pairs, {"name": "mscxr"}, (0, 1)) == before
    assert "somewhere" not in json.dumps(ev.method_identity(CentrePrior()))

    out = tmp_path / "run"
    ev.evaluate(CentrePrior(), pairs, out, progress=False, n_boot=10)
    calls = []
    ground = CentrePrior.ground
    monkeypatch.setattr(CentrePrior, "ground", lambda self, im, ph: calls.append(ph) or ground(self, im, ph))
    ev.evaluate(CentrePrior(), pairs, out, progress=False, n_boot=10)
    assert calls == []  # resumed, nothing recomputed
    assert json.loads((out / "run.json").read_text())["identity"]["method"]["class"] == "CentrePrior"
    # the class still tells methods apart: a class of another name, same settings, is refused
    with pytest.raises(ValueError, match=r"method\.class"):
        ev.evaluate(type("Other", (CentrePrior,), {})(), pairs, out, progress=False, n_boot=10)


def test_no_progress_silences_model_loading_bars(data, model_dir, tmp_path, capsys):
    pairs, csv, root = data
    assert cli_main(_cli(csv, root, tmp_path / "run", "--model", str(model_dir), "--steps", "4",
                         "--n-pairs", "1", "--device", "cpu")) == 0
    err = capsys.readouterr().err
    assert "%|" not in err and "it/s" not in err, err


# ------------------------------------------------------------------------------ 4. bad inputs
def test_bad_options_are_refused_before_any_work(data, tmp_path, capsys):
    pairs, csv, root = data
    for flag in ("0", "-3"):
        args = _cli(csv, root, tmp_path / "run", "--method", "centre")
        args[args.index("--bootstrap") + 1] = flag
        assert cli_main(args) == 2
        assert f"--bootstrap must be at least 1, got {flag}" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing was started
    with pytest.raises(ValueError, match="n_boot"):
        ev.evaluate(CentrePrior(), pairs, tmp_path / "api", n_boot=0, progress=False)
    assert not (tmp_path / "api").exists()

    afile = tmp_path / "afile"
    afile.write_text("keep me")
    assert cli_main(_cli(csv, root, afile, "--method", "centre")) == 2
    assert f"--out {afile} is an existing file" in capsys.readouterr().err
    assert cli_main(["evaluate", "--merge", str(tmp_path / "nope"), "--out", str(tmp_path / "m")]) == 2
    assert f"shard folder not found: {tmp_path / 'nope'}" in capsys.readouterr().err
    assert afile.read_text() == "keep me"
    # options of an evaluation beside --merge are refused, not silently ignored
    assert cli_main(["evaluate", "--merge", str(tmp_path / "nope"), "--out", str(tmp_path / "m"),
                     "--model", "tiny", "--steps", "20", "--dataset", "mscxr"]) == 2
    err = capsys.readouterr().err
    assert "--model, --dataset, --steps would be ignored" in err and "\n" not in err.strip()
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("line", ["[]", '{"x": 1}', '"ok"'])
def test_a_results_line_that_is_not_a_result_is_a_clear_error(data, tmp_path, capsys, line):
    pairs, csv, root = data
    out = tmp_path / "run"
    assert cli_main(_cli(csv, root, out, "--method", "centre")) == 0
    with open(out / "results.jsonl", "a") as fh:
        fh.write(line + "\n")
    capsys.readouterr()
    assert cli_main(_cli(csv, root, out, "--method", "centre")) == 2
    err = capsys.readouterr().err
    assert f"{out / 'results.jsonl'}: line 6 is not a result row" in err and err.count("\n") == 1
    with pytest.raises(ValueError, match="line 6 is not a result row"):
        ev.load_results(out)


def test_a_corrupt_run_file_is_an_error_naming_it(data, tmp_path, capsys):
    pairs, csv, root = data
    out = tmp_path / "run"
    assert cli_main(_cli(csv, root, out, "--method", "centre")) == 0
    for text in ('{"identity": ', "[1, 2]"):
        (out / "run.json").write_text(text)
        capsys.readouterr()
        assert cli_main(_cli(csv, root, out, "--method", "centre")) == 2
        assert f"{out / 'run.json'} is not a" in capsys.readouterr().err
        assert cli_main(["evaluate", "--merge", str(out), "--out", str(tmp_path / "m")]) == 2
        assert f"{out / 'run.json'} is not a" in capsys.readouterr().err


# ------------------------------------------------------------------------------ 5. nothing done
def test_evaluating_nothing_exits_2_and_names_the_images(data, tmp_path, capsys):
    pairs, csv, _ = data
    wrong = tmp_path / "not-the-images"
    wrong.mkdir()
    assert cli_main(_cli(csv, wrong, tmp_path / "run", "--method", "centre")) == 2
    err = capsys.readouterr().err
    assert "groundiff evaluate: error: evaluated no pair: 5 skipped" in err
    assert "missing image file" in err and str(wrong) in err and "--images" in err


def test_pairs_dropped_at_load_time_are_listed_and_counted(data, tmp_path, capsys):
    pairs, csv, root = data
    extra = [("a1", "Atelectasis", "left basal atelectasis", 10, 10, 0, 5, "test"),
             ("b2", "Edema", "mild edema", "n/a", 3, 4, 4, "test"),
             ("b2", "Lung Opacity", "right opacity", 100, 100, 5, 5, "test"),
             ("b2", "Edema", "   ", 3, 3, 4, 4, "test")]
    fx.write_csv(csv, extra_rows=extra)
    with pytest.warns(UserWarning, match="no valid box"):
        assert cli_main(_cli(csv, root, tmp_path / "run", "--method", "centre")) == 0
    out = capsys.readouterr()
    assert "5 pairs on 3 images (4 dropped at load time)" in out.out
    assert "DROPPED 4 pair(s)" in out.err
    dropped = json.loads((tmp_path / "run" / "summary.json").read_text())["dropped"]
    assert dropped["n_pairs"] == 4
    reasons = {d["pair_id"]: d["reason"] for d in dropped["pairs"]}
    assert reasons == {"a1|left basal atelectasis": "no usable box (row 9: zero area)",
                       "b2|mild edema": "no usable box (row 10: non-numeric coordinates)",
                       "b2|right opacity": "no usable box (row 11: outside the 48x40 image)",
                       "b2|(row 12)": "empty label_text (no phrase to ground)"}


def _bomb_png() -> bytes:
    """A PNG whose header claims 100000 x 100000 pixels (PIL's DecompressionBombError)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + chunk(b"IEND", b""))


def test_an_image_that_fails_to_decode_is_a_skipped_pair(data, tmp_path):
    pairs, _, root = data
    (root / fx.rel_path("b2")).write_bytes(_bomb_png())
    s = ev.evaluate(CentrePrior(), pairs, tmp_path / "run", progress=False, n_boot=10)
    assert s["n_pairs"] == 3 and s["skipped"]["n_pairs"] == 2
    (entry,) = s["skipped"]["images"]
    assert entry["image_path"] == str(root / fx.rel_path("b2"))
    assert entry["reason"].startswith("unreadable image") and "pixels" in entry["reason"]


def test_an_annotated_image_that_is_a_device_or_fifo_is_skipped_not_hung_on(tmp_path):
    import os

    from groundiff_core import evaluation as ev
    from groundiff_core.io.datasets.common import GroundingPair
    from groundiff_core.methods.baselines import CentrePrior

    os.mkfifo(tmp_path / "pipe.png")
    pairs = [GroundingPair("a", "/dev/zero", "edema", "edema", [[0, 0, 4, 4]], image_size=(8, 8)),
             GroundingPair("b", tmp_path / "pipe.png", "edema", "edema", [[0, 0, 4, 4]], image_size=(8, 8))]
    summary = ev.evaluate(CentrePrior(), pairs, tmp_path / "run", progress=False, n_boot=10)
    assert summary["n_pairs"] == 0 and summary["skipped"]["n_pairs"] == 2
    assert all("not a regular file" in im["reason"] for im in summary["skipped"]["images"])


# ------------------------------------------------------------------------------ incomplete merges
class _StopAfter:
    """Random maps, but the user presses Ctrl-C after ``n`` images."""

    name = "random"

    def __init__(self, n: int):
        self.n, self.inner = n, RandomHeatmap(seed=0)

    def describe(self):
        return self.inner.describe()

    def ground(self, image, phrases):
        if self.n == 0:
            raise KeyboardInterrupt
        self.n -= 1
        return self.inner.ground(image, phrases)


def test_a_merge_refuses_an_interrupted_shard_mixed_counts_and_a_missing_shard(data, tmp_path, capsys):
    pairs, csv, root = data
    s0, s1 = tmp_path / "s0", tmp_path / "s1"
    ev.evaluate(_StopAfter(100), pairs, s1, shard="1/2", progress=False, n_boot=10)
    with pytest.raises(KeyboardInterrupt):  # shard 0 (two images) interrupted after one image
        ev.evaluate(_StopAfter(1), pairs, s0, shard="0/2", progress=False, n_boot=10)
    capsys.readouterr()
    assert cli_main(["evaluate", "--merge", str(s0), str(s1), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert f"{s0} is unfinished: its last session is interrupted" in err and err.count("\n") == 1
    assert not (tmp_path / "m" / "results.jsonl").exists()  # nothing written
    # another shard count: 0/2 with 1/3
    s13 = tmp_path / "s13"
    ev.evaluate(_StopAfter(100), pairs, s13, shard="1/3", progress=False, n_boot=10)
    capsys.readouterr()
    assert cli_main(["evaluate", "--merge", str(s1), str(s13), "--out", str(tmp_path / "m")]) == 2
    assert "different shard counts" in capsys.readouterr().err
    # --allow-partial merges what there is and says so in the summary, its line and its CSV
    assert cli_main(["evaluate", "--merge", str(s0), str(s1), "--out", str(tmp_path / "p"), "--allow-partial"]) == 0
    said = capsys.readouterr()
    assert said.err.count("is unfinished") == 1 and "PARTIAL merge" in said.err  # the reason once, no warning
    assert said.out.startswith("PARTIAL: ")  # the summary line alone cannot pass for a full result
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert any("unfinished" in r for r in summary["partial"]["reasons"])
    header = (tmp_path / "p" / "summary.csv").read_text().splitlines()[0].split(",")
    assert header[-1] == "partial"
    # resumed to the end, shard 0 merges
    ev.evaluate(_StopAfter(100), pairs, s0, shard="0/2", progress=False, n_boot=10)
    assert cli_main(["evaluate", "--merge", str(s0), str(s1), "--out", str(tmp_path / "m")]) == 0
    assert json.loads((tmp_path / "m" / "summary.json").read_text())["partial"] is None


def test_a_phrase_the_model_cannot_spell_is_skipped_and_the_run_goes_on(data, tmp_path):
    import dataclasses

    import groundiff_core as gd
    from groundiff_core.models.architectures import tiny_ldm

    pairs, _, _ = data
    bad = dataclasses.replace(pairs[1], phrase="épanchement pleural")  # a character the tiny vocabulary lacks
    pairs = [pairs[0], bad, *pairs[2:]]
    g = gd.Grounder(tiny_ldm(), gd.GroundingConfig.paper().with_steps(10))
    summary = ev.evaluate(g, pairs, tmp_path / "run", progress=False, n_boot=10)
    assert summary["n_pairs"] == len(pairs) - 1  # every other pair, also the bad one's image-mates
    (skipped,) = summary["skipped"]["images"]
    assert skipped["pair_ids"] == [bad.pair_id] and "phrase cannot be grounded" in skipped["reason"]
    assert "é" in skipped["reason"]
    # a resume retries it, skips it again, and finishes
    again = ev.evaluate(g, pairs, tmp_path / "run", progress=False, n_boot=10)
    assert again["n_pairs"] == summary["n_pairs"] and again["skipped"]["n_pairs"] == 1


class _RefusesOneImage:
    """Refuses (ValueError) any call that includes the image of a given size, as a method may refuse an input."""

    name = "refuses"

    def __init__(self, hw):
        self.hw, self.inner = hw, RandomHeatmap(seed=0)

    def describe(self):
        return {"method": self.name}

    def ground(self, image, phrases):
        if image.shape == self.hw:
            raise ValueError("this image is not for me")
        return self.inner.ground(image, phrases)

    def ground_batch(self, images, phrases_per_image):
        return [self.ground(i, p) for i, p in zip(images, phrases_per_image)]


def test_an_input_the_method_refuses_skips_that_image_only(data, tmp_path):
    from groundiff_core.io.images import load_image

    pairs, _, _ = data
    hw = load_image(pairs[0].image_path).shape
    summary = ev.evaluate(_RefusesOneImage(hw), pairs, tmp_path / "run", progress=False, n_boot=10, batch_images=3)
    refused = [p for p in pairs if load_image(p.image_path).shape == hw]
    assert summary["skipped"]["n_pairs"] == len(refused) and summary["n_pairs"] == len(pairs) - len(refused)
    assert "grounding failed: this image is not for me" in summary["skipped"]["images"][0]["reason"]


def test_strict_fails_a_run_that_skipped_a_pair_after_writing_it(data, tmp_path, capsys):
    pairs, csv, root = data
    (root / fx.rel_path("b2")).write_bytes(_bomb_png())
    out = tmp_path / "run"
    assert cli_main(_cli(csv, root, out, "--method", "centre")) == 0  # by default: some pairs evaluated
    capsys.readouterr()
    assert cli_main(_cli(csv, root, tmp_path / "strict", "--method", "centre", "--strict")) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.splitlines()[0].startswith("SKIPPED 2 pair(s)")  # the run's own report
    last = err.splitlines()[-1]
    assert "--strict: 2 pair(s) skipped" in last and "unreadable image" in last
    assert (tmp_path / "strict" / "summary.json").is_file()  # the results are kept
    assert cli_main(_cli(csv, root, tmp_path / "clean", "--method", "random", "--strict")) == 2  # still b2
    (root / fx.rel_path("b2")).unlink()
    shutil.copy(root / fx.rel_path("a1"), root / fx.rel_path("b2"))
    assert cli_main(_cli(csv, root, tmp_path / "strict", "--method", "centre", "--strict")) == 0  # resumed, retried


def test_skipped_pairs_are_reported_with_their_real_cause(data, tmp_path, capsys):
    pairs, csv, root = data
    (root / fx.rel_path("b2")).write_bytes(_bomb_png())
    assert cli_main(_cli(csv, root, tmp_path / "run", "--method", "centre")) == 0
    err = capsys.readouterr().err
    assert "SKIPPED 2 pair(s) on 1 image(s) (unreadable image): listed with their reasons" in err


def test_class_name_tokens_from_the_command_line(tmp_path, capsys):
    from groundiff_core.evaluation.results import read_run

    assert cli_main(["phantom", "--out", str(tmp_path / "ph"), "--n", "2", "--no-progress"]) == 0
    args = ["evaluate", "--dataset", "phantom", "--csv", str(tmp_path / "ph" / "annotations.csv"), "--no-progress",
            "--bootstrap", "10"]
    assert cli_main([*args, "--model", "tiny", "--steps", "10", "--tokens", "class-name", "--out",
                     str(tmp_path / "run")]) == 0
    ident = read_run(tmp_path / "run" / "run.json")["identity"]["method"]
    assert ident["method"] == "class-name tokens" and ident["model"]["weights_sha256"]
    capsys.readouterr()
    assert cli_main([*args, "--method", "centre", "--tokens", "class-name", "--out", str(tmp_path / "c")]) == 2
    assert "--tokens applies to --method ldm" in capsys.readouterr().err
