"""``groundiff book``: execute the book's notebooks with papermill (see :mod:`groundiff_core.book.runner`).

Render afterwards with ``jupyter-book build book`` (``make book`` does both)."""

from __future__ import annotations

import argparse
import shlex
import sys


def register(subparsers) -> None:
    from groundiff_core.book.runner import add_arguments

    p = subparsers.add_parser(
        "book",
        help="execute the book's notebooks (papermill) into book/notebooks",
        description="Execute notebooks/NN_name.py with papermill into book/notebooks/ and write "
        "book/_generated/reproducibility.json; then run `jupyter-book build book`.",
    )
    add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from groundiff_core.book.runner import run_from_args

    return run_from_args(args, command=shlex.join(["groundiff", *sys.argv[1:]]))
