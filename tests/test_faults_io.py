"""Faults of file inputs and outputs (``io.images``, ``io.datasets``, ``util.fileio``, recordings, the
files ``ground`` and ``phantom`` write): bombs, pipes and devices, size guards, umask, atomic writes,
and outputs that would replace an input."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from groundiff_core.cli import main
from groundiff_core.util.fileio import atomic_write

from _faults_support import assert_user_error, run_cli


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


def test_a_recording_path_that_is_a_pipe_is_refused_not_waited_on(tmp_path):
    import os

    import groundiff_core as gd

    os.mkfifo(tmp_path / "rec.npz")
    with pytest.raises(ValueError, match="recording .*rec.npz is not a regular file"):
        gd.Recording.load(tmp_path / "rec.npz")


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


def test_a_results_file_over_its_size_limit_is_refused_before_it_is_read(tmp_path, monkeypatch):
    from groundiff_core.evaluation import results

    (tmp_path / "results.jsonl").write_text('{"pair_id": "a", "status": "ok"}\n' * 10)
    monkeypatch.setattr(results, "RESULTS_MAX_BYTES", 64)
    with pytest.raises(ValueError, match="results file .*results.jsonl is 0.0 GiB, over"):
        results.read_jsonl(tmp_path / "results.jsonl")


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


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    target = tmp_path / "run.json"
    target.write_text("old")

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, "new")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


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


def test_the_maps_json_record_may_not_replace_the_input_image(tmp_path, capsys):
    Image.fromarray(np.full((64, 64), 90, np.uint8)).save(tmp_path / "scan.json", format="PNG")
    before = (tmp_path / "scan.json").read_bytes()
    assert main(["ground", "--model", "tiny", "--image", str(tmp_path / "scan.json"), "--phrase", "effusion",
                 "--out", str(tmp_path / "scan.npy")]) == 2
    assert "the maps' JSON record beside --out" in capsys.readouterr().err
    assert (tmp_path / "scan.json").read_bytes() == before


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
