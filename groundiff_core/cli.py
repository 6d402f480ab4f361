"""``groundiff`` command line: one subcommand per module in :mod:`groundiff_core.commands`."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ("ground", "evaluate", "phantom", "doctor", "book")


class UserError(Exception):
    """An error caused by the user's input: printed as one clear line, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="groundiff", description=__doc__)
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, ValueError, FileNotFoundError) as e:
        print(f"groundiff {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"groundiff {args.command}: interrupted; finished work is kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
