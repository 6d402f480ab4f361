"""Faults of the command line (``groundiff_core.cli`` and its commands): each error is one line
with exit code 2, never a traceback, and ``--no-progress`` is quiet."""

from __future__ import annotations

from groundiff_core.cli import main

from _faults_support import assert_user_error, run_cli


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


def test_phantom_ground_is_quiet_with_no_progress(tmp_path, capfd, png):
    rc = main(["ground", "--model", "phantom", "--image", str(png), "--phrase", "pleural effusion",
               "--out", str(tmp_path / "m.npy"), "--steps", "4", "--device", "cpu", "--no-progress"])
    captured = capfd.readouterr()
    assert rc == 0
    assert captured.err == "", captured.err  # no "accelerate not found", no loading or inversion bars


def test_phantom_command_honours_no_progress(tmp_path, capfd):
    assert main(["phantom", "--out", str(tmp_path / "p"), "--n", "2", "--no-progress"]) == 0
    assert capfd.readouterr().err == ""
