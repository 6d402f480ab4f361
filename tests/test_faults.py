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
