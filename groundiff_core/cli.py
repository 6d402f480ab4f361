"""``groundiff`` command line: one subcommand per module in :mod:`groundiff_core.commands`.

One error path: every user-caused failure (a bad file, image, checkpoint, folder, device or option)
is raised as :class:`UserError`, ``ValueError`` or an ``OSError`` (``FileNotFoundError``,
``PermissionError``, ...) with a message naming the input; :func:`main` prints it as one line,
``groundiff <command>: error: <message>``, and exits with 2 (argparse's code for bad options). Any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ("ground", "evaluate", "phantom", "doctor", "book")

__all__ = ["UserError", "main", "build_parser", "error_line"]


class UserError(Exception):
    """An error caused by the user's input: printed as one clear line, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="groundiff", description=__doc__.split("\n\n", 1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"groundiff_core.commands.{name}")
        except ModuleNotFoundError as e:  # a command whose module is not there yet
            if e.name != f"groundiff_core.commands.{name}":
                raise
            continue
        mod.register(sub)
    return parser


def error_line(exc: BaseException) -> str:
    """The user-facing text of ``exc`` on one line.

    ``OSError`` from the standard library prints as ``[Errno 13] Permission denied: 'x'``; this gives
    ``Permission denied: x`` instead. Multi-line messages are joined with ``; `` so a shell or a log
    sees one record per failure.
    """
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        text = f"{exc.strerror}: {exc.filename}"
    else:
        text = str(exc) or type(exc).__name__
    parts = [p.strip() for p in text.splitlines() if p.strip()]
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, ValueError, OSError) as e:
        print(f"groundiff {args.command}: error: {error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"groundiff {args.command}: interrupted; finished work is kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
