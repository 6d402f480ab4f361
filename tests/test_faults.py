"""Fault probes (issue 15): each bad input or fault ends in one clear line and exit code 2, never a
traceback; nothing is silently wrong. Each test here failed on the code before its fix."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from groundiff_core.cli import main


def run_cli(capsys, argv: list[str]) -> tuple[int, str]:
    """``groundiff argv`` in-process: (exit code, stderr)."""
    rc = main(argv)
    return rc, capsys.readouterr().err


def assert_user_error(rc: int, err: str, command: str, *needles: str) -> None:
    """Exit code 2 and exactly one line ``groundiff <command>: error: ...`` containing ``needles``."""
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"groundiff {command}: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, err)


@pytest.fixture()
def png(tmp_path):
    yy, xx = np.mgrid[0:40, 0:48]
    path = tmp_path / "cxr.png"
    Image.fromarray((127 + 100 * np.sin(xx / 5.0) * np.cos(yy / 6.0)).astype(np.uint8)).save(path)
    return path


# ------------------------------------------------------------------ one error path for the CLI
def test_os_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    rc, err = run_cli(capsys, ["phantom", "--out", str(blocker / "sub"), "--n", "1"])
    assert_user_error(rc, err, "phantom", str(blocker))


def test_multi_line_messages_become_one_line(capsys, monkeypatch):
    import groundiff_core.commands.phantom as cmd

    def boom(args):
        raise ValueError("first part\nsecond part")

    monkeypatch.setattr(cmd, "run", boom)
    rc, err = run_cli(capsys, ["phantom", "--out", "x"])
    assert_user_error(rc, err, "phantom", "first part; second part")


# ------------------------------------------------------------------ images
def _png_header_claiming(path, width: int, height: int):
    """A PNG whose header claims ``width x height`` pixels (with almost no pixel data)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


def test_decompression_bomb_is_a_clear_value_error(tmp_path):
    from groundiff_core.io.images import load_image

    bomb = _png_header_claiming(tmp_path / "bomb.png", 100_000, 100_000)
    with pytest.raises(ValueError, match=r"bomb\.png.*100000 x 100000 pixels"):
        load_image(bomb)


def test_decompression_bomb_on_the_command_line(tmp_path, capsys):
    bomb = _png_header_claiming(tmp_path / "bomb.png", 100_000, 100_000)
    rc, err = run_cli(capsys, ["ground", "--model", "tiny", "--image", str(bomb), "--phrase", "edema",
                               "--out", str(tmp_path / "m.npy"), "--device", "cpu"])
    assert_user_error(rc, err, "ground", "bomb.png", "100000 x 100000")


# ------------------------------------------------------------------ model folders
def _corrupt(kind: str, root):
    import json

    if kind == "truncated safetensors":
        f = root / "unet" / "diffusion_pytorch_model.safetensors"
        f.write_bytes(f.read_bytes()[:4000])
        return "unet", "corrupt or truncated"
    if kind == "size mismatch":
        f = root / "vae" / "config.json"
        cfg = json.loads(f.read_text())
        cfg["latent_channels"] = 8
        f.write_text(json.dumps(cfg))
        return "vae", "do not fit its config.json"
    if kind == "garbage pickle":
        (root / "unet" / "diffusion_pytorch_model.safetensors").unlink()
        (root / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x02garbage")
        return "unet", "diffusion_pytorch_model.bin"
    if kind == "text encoder mismatch":
        f = root / "text_encoder" / "config.json"
        cfg = json.loads(f.read_text())
        cfg["intermediate_size"] = 24
        f.write_text(json.dumps(cfg))
        return "text_encoder", "do not fit its config.json"
    if kind == "broken model_index.json":
        (root / "model_index.json").write_text("{not json")
        return "model_index.json", "not valid JSON"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["truncated safetensors", "size mismatch", "garbage pickle",
                                  "text encoder mismatch", "broken model_index.json"])
def test_corrupt_diffusers_folders_name_the_folder(tmp_path, capsys, png, kind):
    from test_loading_support import write_sd_dir

    root = tmp_path / "sd"
    write_sd_dir(root)
    part, needle = _corrupt(kind, root)
    capsys.readouterr()  # the fixture's own save messages
    rc, err = run_cli(capsys, ["ground", "--model", str(root), "--image", str(png), "--phrase", "edema",
                               "--out", str(tmp_path / "m.npy"), "--device", "cpu"])
    assert_user_error(rc, err, "ground", str(root / part), needle)


# ------------------------------------------------------------------ devices and outputs
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "mps"])
def test_unavailable_device_is_refused_before_any_work(tmp_path, capsys, monkeypatch, png, device):
    import torch

    import groundiff_core.models.loading as loading

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    rc, err = run_cli(capsys, ["ground", "--model", "tiny", "--image", str(png), "--phrase", "edema",
                               "--out", str(tmp_path / "m.npy"), "--device", device])
    assert_user_error(rc, err, "ground", f"device '{device}' is not available")


def test_evaluate_refuses_an_unavailable_device_before_loading_the_model(tmp_path, capsys, monkeypatch):
    import torch

    import groundiff_core.models.loading as loading
    import mscxr_fixture as fx

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    fx.write_images(tmp_path)
    csv = fx.write_csv(tmp_path / "ms.csv")
    rc, err = run_cli(capsys, ["evaluate", "--model", "tiny", "--dataset", "mscxr", "--csv", str(csv),
                               "--images", str(tmp_path), "--out", str(tmp_path / "run"), "--device", "cuda"])
    assert_user_error(rc, err, "evaluate", "device 'cuda' is not available")


def test_out_with_a_wrong_extension_is_refused_before_any_work(tmp_path, capsys, png):
    rc, err = run_cli(capsys, ["ground", "--model", "no-such-model", "--image", str(png), "--phrase", "edema",
                               "--out", str(tmp_path / "res.txt")])
    assert_user_error(rc, err, "ground", "res.txt", ".npy")
    assert not list(tmp_path.glob("res.txt*"))


def test_overlay_with_an_unknown_extension_is_refused_before_any_work(tmp_path, capsys, png):
    rc, err = run_cli(capsys, ["ground", "--model", "no-such-model", "--image", str(png), "--phrase", "edema",
                               "--out", str(tmp_path / "m.npy"), "--overlay", str(tmp_path / "o.txt")])
    assert_user_error(rc, err, "ground", "o.txt", ".png")


def test_ground_writes_and_prints_exactly_the_named_files(tmp_path, capsys, png):
    out = tmp_path / "maps.NPY"
    rc = main(["ground", "--model", "tiny", "--image", str(png), "--phrase", "edema", "--out", str(out),
               "--steps", "10", "--device", "cpu", "--no-progress"])
    printed = capsys.readouterr()
    assert rc == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cxr.png", "maps.NPY", "maps.json"]
    assert f"wrote {out} " in printed.out and str(tmp_path / "maps.json") in printed.out
    assert np.load(out).shape == (1, 40, 48)
    assert printed.err == ""


def test_phantom_ground_is_quiet_with_no_progress(tmp_path, capfd, png):
    rc = main(["ground", "--model", "phantom", "--image", str(png), "--phrase", "pleural effusion",
               "--out", str(tmp_path / "m.npy"), "--steps", "4", "--device", "cpu", "--no-progress"])
    captured = capfd.readouterr()
    assert rc == 0
    assert captured.err == "", captured.err  # no "accelerate not found", no loading or inversion bars


# ------------------------------------------------------------------ settings
@pytest.mark.parametrize("fields,needle", [
    ({"sigma_fraction": 1e6}, "sigma_fraction"),
    ({"sigma_fraction": float("inf")}, "sigma_fraction"),
    ({"sigma_fraction": -0.1}, "sigma_fraction"),
    ({"sigma_fraction": "0.01"}, "sigma_fraction"),
    ({"otsu": "no"}, "otsu must be True or False"),
    ({"otsu": 1}, "otsu must be True or False"),
    ({"layers": (3.5, 4)}, "must be integers"),
    ({"layers": "3;4"}, "comma-separated"),
    ({"guidance_scale": "1"}, "guidance_scale"),
    ({"guidance_scale": 1e30}, r"guidance_scale must be a finite number in \[0, 100\]"),
    ({"guidance_scale": -1.0}, "guidance_scale"),
])
def test_bad_settings_are_refused(fields, needle):
    from groundiff_core.engine.config import GroundingConfig

    with pytest.raises(ValueError, match=needle):
        GroundingConfig(**fields)


def test_a_sigma_as_wide_as_the_image_is_still_allowed():
    from groundiff_core.engine.config import GroundingConfig

    assert GroundingConfig(sigma_fraction=1.0).sigma_pixels(512) == 512.0
    assert GroundingConfig(sigma_fraction=None).sigma_pixels(512) == 0.0


def test_a_layer_string_is_a_comma_separated_list():
    from groundiff_core.engine.config import GroundingConfig

    cfg = GroundingConfig.paper()
    assert cfg.with_layers("3,4,6,7").layers == (3, 4, 6, 7)
    assert cfg.with_layers("34").layers == (34,)
    with pytest.raises(ValueError, match="out of range"):
        cfg.with_layers("34").resolve_layers(11)


@pytest.mark.parametrize("word,value", [("no", False), ("No", False), ("false", False), ("off", False),
                                        ("yes", True), ("TRUE", True), (True, True)])
def test_booleans_parse_strictly(word, value):
    from groundiff_core.engine.config import parse_bool

    assert parse_bool(word, "x") is value


@pytest.mark.parametrize("word", ["maybe", "", "2", None, 1])
def test_non_booleans_are_refused(word):
    from groundiff_core.engine.config import parse_bool

    with pytest.raises(ValueError, match="must be a boolean"):
        parse_bool(word, "x")


def test_book_boolean_parameters_take_yes_or_no_only(tmp_path, capsys):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "01_probe.py").write_text(
        '# %% tags=["parameters"]\nshow_figures = True\n\n# %%\nprint(show_figures)\n')
    rc, err = run_cli(capsys, ["book", "--root", str(tmp_path), "-p", "show_figures", "maybe"])
    assert_user_error(rc, err, "book", "show_figures", "must be a boolean")


# ------------------------------------------------------------------ phantom seeds (issue 13)
class _Enough(Exception):
    pass


@pytest.mark.parametrize("seed", [0, 9, 10, 20, 35])
def test_training_never_draws_validation_or_test_phantoms(tmp_path, monkeypatch, seed):
    import groundiff_core.phantom.train as train
    from groundiff_core.phantom.generator import SPLIT_SEEDS, SPLIT_SPAN, make_phantom

    drawn: list[int] = []

    def record(s: int):
        drawn.append(s)
        if len(drawn) == 3:
            raise _Enough
        return make_phantom(s)

    monkeypatch.setattr(train, "make_phantom", record)
    with pytest.raises(_Enough):
        train.main(["--out", str(tmp_path / "run"), "--seed", str(seed), "--n-train", "3"])
    held_out = [range(SPLIT_SEEDS[s], SPLIT_SEEDS[s] + SPLIT_SPAN) for s in ("val", "test")]
    assert not [s for s in drawn if any(s in r for r in held_out)], drawn
    if seed == 0:  # the shipped model's data is unchanged
        assert drawn == [0, 1, 2]


def test_training_seeds_of_different_runs_never_overlap():
    from groundiff_core.phantom.generator import TRAIN_BLOCK, train_seeds

    starts = [train_seeds(s, TRAIN_BLOCK).start for s in range(40)]
    assert all(b - a >= TRAIN_BLOCK for a, b in zip(starts, starts[1:]))
    with pytest.raises(ValueError, match=">= 0"):
        train_seeds(-1, 10)
    with pytest.raises(ValueError, match="between 1 and"):
        train_seeds(0, TRAIN_BLOCK + 1)


def test_phantom_command_honours_no_progress(tmp_path, capfd):
    assert main(["phantom", "--out", str(tmp_path / "p"), "--n", "2", "--no-progress"]) == 0
    assert capfd.readouterr().err == ""


# ------------------------------------------------------------------ text the tokenizer cannot represent
def test_unknown_characters_are_refused_not_silently_cut(tmp_path, capsys, png):
    rc, err = run_cli(capsys, ["ground", "--model", "phantom", "--image", str(png), "--phrase",
                               "é pleural effusion", "--out", str(tmp_path / "m.npy"), "--steps", "4",
                               "--device", "cpu"])
    assert_user_error(rc, err, "ground", "'é pleural effusion'", "unknown characters: 'é'")
    assert not (tmp_path / "m.npy").exists()


@pytest.mark.parametrize("phrase,needle", [("left, pleural effusion", "','"), ("<|endoftext|> edema", "'|'")])
def test_the_engine_refuses_phrases_cut_by_an_end_token(phrase, needle):
    import groundiff_core as gd

    grounder = gd.Grounder(gd.load_model("tiny"), gd.GroundingConfig.paper().with_steps(10))
    with pytest.raises(ValueError, match=needle):
        grounder.check_phrases([phrase])
    with pytest.raises(ValueError, match=needle):  # also on the direct path to the text encoder
        grounder.model.encode_text([phrase])


def test_words_outside_a_closed_vocabulary_are_named_in_a_warning():
    import groundiff_core as gd

    model = gd.load_model("tiny")
    with pytest.warns(UserWarning, match="'effusions'.*closed vocabulary"):
        model.phrase_token_count("pleural effusions")


# ------------------------------------------------------------------ doctor reads what the loader reads
def test_doctor_reads_legacy_checkpoints_as_the_loader_does(tmp_path):
    import torch

    from groundiff_core.commands import doctor
    from groundiff_core.models.loading.checkpoints import read_state_dict

    state = {"conv.weight": torch.ones(4, 2), "conv.bias": torch.zeros(4)}
    for name in ("autoencoder.pth", "diffusion_model.pth"):
        torch.save(state, tmp_path / name, _use_new_zipfile_serialization=False)  # legacy, non-zip
    assert set(read_state_dict(tmp_path / "autoencoder.pth")) == set(state)  # the loader reads it
    files = doctor.report(str(tmp_path))["models"]["paper"]["files"]
    for name in ("autoencoder.pth", "diffusion_model.pth"):
        assert files[name]["readable"] is True, files[name]
        assert (files[name]["tensors"], files[name]["parameters"]) == (2, 12)


def test_doctor_still_reports_unreadable_checkpoints(tmp_path):
    from groundiff_core.commands import doctor

    (tmp_path / "autoencoder.pth").write_bytes(b"not a checkpoint")
    entry = doctor.report(str(tmp_path))["models"]["paper"]["files"]["autoencoder.pth"]
    assert entry["readable"] is False and "autoencoder.pth" in entry["problem"]


# ------------------------------------------------------------------------------ second pass
def test_results_files_get_the_users_umask_not_0600(tmp_path):
    import os
    import stat

    from groundiff_core.util.fileio import atomic_write

    old = os.umask(0o002)
    try:
        atomic_write(tmp_path / "a.json", "{}")
        assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o664
        os.umask(0o077)
        atomic_write(tmp_path / "a.json", "{}")  # an existing file keeps its mode
        assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o664
        atomic_write(tmp_path / "b.json", "{}")
        assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_ground_never_writes_over_its_input_image(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from groundiff_core.cli import main

    img = tmp_path / "x.png"
    Image.fromarray((np.random.default_rng(0).random((32, 32)) * 255).astype(np.uint8)).save(img)
    before = img.read_bytes()
    base = ["ground", "--model", "tiny", "--image", str(img), "--phrase", "edema", "--steps", "5"]
    assert main(base + ["--out", str(tmp_path / "m.npy"), "--overlay", str(img)]) == 2
    assert "--overlay" in capsys.readouterr().err and img.read_bytes() == before
    (tmp_path / "link.png").symlink_to(img)
    assert main(base + ["--out", str(tmp_path / "m.npy"), "--overlay", str(tmp_path / "link.png")]) == 2
    assert "is the input image" in capsys.readouterr().err and img.read_bytes() == before


def test_phantom_refuses_to_replace_a_set_without_overwrite(tmp_path, capsys):
    from groundiff_core.cli import main

    out = tmp_path / "set"
    assert main(["phantom", "--out", str(out), "--n", "2", "--no-progress"]) == 0
    (out / "annotations.csv").write_text("my own annotations\n")
    assert main(["phantom", "--out", str(out), "--n", "2", "--no-progress"]) == 2
    assert "already holds a phantom set" in capsys.readouterr().err
    assert (out / "annotations.csv").read_text() == "my own annotations\n"
    assert main(["phantom", "--out", str(out), "--n", "2", "--no-progress", "--overwrite"]) == 0
    assert (out / "annotations.csv").read_text().startswith("dicom_id")


def test_a_fifo_or_device_is_refused_as_an_image_instead_of_hanging(tmp_path):
    import os

    from groundiff_core.io.images import image_size, load_image

    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)
    for path in (fifo, "/dev/zero"):
        with pytest.raises(ValueError, match="not a regular file"):
            load_image(path)
        with pytest.raises(ValueError, match="not a regular file"):
            image_size(path)


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


@pytest.mark.parametrize("call,match", [
    (lambda c: c.with_window(1.9, 3.2), "window's start must be a whole number"),
    (lambda c: c.with_steps(True), "num_inference_steps must be a whole number"),
    (lambda c: c.with_middle_layers(2.5), "middle layers must be a whole number"),
    (lambda c: c.with_window_percent("20"), "window percent must be a number"),
])
def test_config_values_are_checked_not_truncated(call, match):
    import groundiff_core as gd

    with pytest.raises(ValueError, match=match):
        call(gd.GroundingConfig.paper())
    assert gd.GroundingConfig.paper().with_window(120.0, 180).window == (120, 180)  # a whole float is fine


def test_whitespace_in_label_text_never_splits_a_pair(tmp_path):
    from groundiff_core.io.datasets import load_mscxr

    header = "dicom_id,category_name,label_text,path,x,y,w,h,image_width,image_height\n"
    (tmp_path / "a.csv").write_text(header + "d1,Pleural Effusion,Bilateral effusions,files/a.jpg,1,1,4,4,32,32\n"
                                    "d1,Pleural Effusion,Bilateral  effusions ,files/a.jpg,20,1,4,4,32,32\n")
    (pair,) = load_mscxr(tmp_path / "a.csv", tmp_path)
    assert pair.phrase == "Bilateral effusions" and len(pair.boxes) == 2


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated", b"not a zip at all"])
def test_a_bad_recording_file_is_named_not_a_traceback(tmp_path, content):
    import groundiff_core as gd

    path = tmp_path / "rec.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="rec.npz is not a recording"):
        gd.Recording.load(path)
    np.savez(tmp_path / "foreign.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="foreign.npz is not a recording"):
        gd.Recording.load(tmp_path / "foreign.npz")


def test_only_regular_files_of_a_sane_size_are_read(tmp_path, monkeypatch):
    """A pipe or a device as an image, a CSV or a checkpoint is refused by name before it is opened
    (opening one would block or never end); so is a file over the size limit."""
    import os
    from pathlib import Path

    from groundiff_core.io.datasets.common import read_csv
    from groundiff_core.io.images import load_image
    from groundiff_core.models.loading.checkpoints import read_state_dict
    from groundiff_core.util import fileio

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for read, what in ((load_image, "image file"), (read_csv, "annotation CSV"), (read_state_dict, "checkpoint")):
        for bad in (fifo, Path("/dev/zero")):
            with pytest.raises(ValueError, match=f"{what} {bad} is not a regular file"):
                read(bad)
        with pytest.raises(ValueError, match=f"{what} {tmp_path} is a folder"):
            read(tmp_path)
    big = tmp_path / "big.csv"
    big.write_text("a,b\n1,2\n")
    monkeypatch.setattr(fileio, "MAX_READ_BYTES", 4)
    with pytest.raises(ValueError, match=r"checkpoint .*big.csv is 0.0 GiB, over the 0.0 GiB"):
        read_state_dict(big)


def test_a_recording_path_that_is_a_pipe_is_refused_not_waited_on(tmp_path):
    import os

    import groundiff_core as gd

    os.mkfifo(tmp_path / "rec.npz")
    with pytest.raises(ValueError, match="recording .*rec.npz is not a regular file"):
        gd.Recording.load(tmp_path / "rec.npz")


def test_the_maps_json_record_may_not_replace_the_input_image(tmp_path, capsys):
    Image.fromarray(np.full((64, 64), 90, np.uint8)).save(tmp_path / "scan.json", format="PNG")
    before = (tmp_path / "scan.json").read_bytes()
    assert main(["ground", "--model", "tiny", "--image", str(tmp_path / "scan.json"), "--phrase", "effusion",
                 "--out", str(tmp_path / "scan.npy")]) == 2
    assert "the maps' JSON record beside --out" in capsys.readouterr().err
    assert (tmp_path / "scan.json").read_bytes() == before


def test_prior_files_and_run_files_are_guarded_like_every_input(tmp_path, monkeypatch):
    import os

    from groundiff_core.evaluation import results
    from groundiff_core.methods.prior import PhrasePrior

    os.mkfifo(tmp_path / "p.fifo")
    with pytest.raises(ValueError, match="phrase prior .*p.fifo is not a regular file"):
        PhrasePrior.load(tmp_path / "p.fifo")
    (tmp_path / "run.json").write_text('{"identity": {}}' + " " * 100)
    monkeypatch.setattr(results, "RUN_MAX_BYTES", 50)
    with pytest.raises(ValueError, match="run file .*run.json is 0.0 GiB, over"):
        results.read_run(tmp_path / "run.json")


def test_recording_options_are_as_strict_as_the_config(tiny_v):
    import groundiff_core as gd

    rec = gd.Grounder(tiny_v, gd.GroundingConfig.paper().with_steps(10)).record(
        np.random.default_rng(0).random((32, 32), dtype=np.float32), ["effusion"])
    no = rec.aggregate(otsu="no").heatmaps
    assert np.array_equal(np.nan_to_num(no), np.nan_to_num(rec.aggregate(otsu=False).heatmaps))
    assert not np.array_equal(np.nan_to_num(no), np.nan_to_num(rec.aggregate().heatmaps))
    with pytest.raises(ValueError, match=r"smooth must be True, False or a number in \[0, 1\] .*got 'yes'"):
        rec.aggregate(smooth="yes")
    with pytest.raises(ValueError, match="otsu must be a boolean"):
        rec.aggregate(otsu="maybe")
