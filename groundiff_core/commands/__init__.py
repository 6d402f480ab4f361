"""Subcommands of the ``groundiff`` CLI: each module defines ``register(subparsers)`` that adds its
parser and sets ``func=run`` (a callable taking the parsed ``argparse.Namespace``, returning an exit
code). :mod:`groundiff_core.cli` lists them in ``COMMANDS``."""
