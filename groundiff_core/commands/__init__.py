"""Subcommands of the ``groundiff`` CLI: each module defines ``register(subparsers)`` that adds its
parser and sets ``func=run`` (a callable taking the parsed ``argparse.Namespace``, returning an exit
code). :mod:`groundiff_core.cli` lists them in ``COMMANDS``."""

from __future__ import annotations

import argparse
import os

__all__ = ["add_model_options", "model_options", "silence_progress_bars"]


def add_model_options(p: argparse.ArgumentParser) -> None:
    """``--text-encoder`` and the conversion cache options of the MONAI loaders, the same on every command."""
    p.add_argument("--text-encoder", metavar="DIR|REPO", help="for MONAI models: the Stable Diffusion 2.1 base "
                   "folder holding text_encoder/ and tokenizer/ (or its text_encoder folder), or a Hugging Face id "
                   "such as stabilityai/stable-diffusion-2-1-base, read from the local Hub cache (never downloaded)")
    cache = p.add_mutually_exclusive_group()
    cache.add_argument("--cache-dir", metavar="DIR", help="for MONAI checkpoints: where their diffusers conversion "
                       "is cached (default ~/.cache/groundiff/converted, or $GROUNDIFF_CACHE_DIR)")
    cache.add_argument("--no-cache", action="store_true", help="for MONAI checkpoints: convert in memory, write "
                       "nothing")


def model_options(args: argparse.Namespace) -> dict:
    """``load_model`` keywords from :func:`add_model_options`' options (only those given)."""
    out: dict = {"text_encoder": getattr(args, "text_encoder", None)}
    if getattr(args, "no_cache", False):
        out["cache_dir"] = False
    elif getattr(args, "cache_dir", None):
        out["cache_dir"] = args.cache_dir
    return out


def silence_progress_bars() -> None:
    """``--no-progress``: no bar at all in this process, the model libraries' included (the MONAI
    conversion, diffusers' saving and loading, transformers)."""
    os.environ["TQDM_DISABLE"] = "1"  # tqdm read after this point and child processes
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
