"""Helpers the fault tests import (``from _faults_support import ...``): ``groundiff`` run in-process,
and the check that a user error is one line with exit code 2 (the ``png`` fixture is in ``conftest.py``)."""

from __future__ import annotations

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
