"""Quiet model loading: the one place where groundiff silences its libraries' chatter.

Loading a model through diffusers and transformers prints messages that are not the user's business
(diffusers: "Cannot initialize model with low cpu memory usage because `accelerate` was not found",
once per component; transformers: a "Loading weights" progress bar per text encoder). groundiff
controls how weights are read, so these say nothing the user can act on; even their error-level
records ("An error occurred while trying to fetch ...") describe fallbacks whose final failure
reaches the caller as an exception (see :func:`groundiff_core.models.loading.diffusers_dir.component_errors`).
:func:`quiet_libraries` lowers both libraries' logging to critical-only and turns off their progress
bars for the duration of a ``with`` block, then restores what was set before, so a caller's own
logging setup is untouched.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

__all__ = ["quiet_libraries"]


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """Within the block: diffusers and transformers log nothing below CRITICAL and show no progress bars."""
    import logging

    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    saved = (dlog.get_verbosity(), tlog.get_verbosity(), dlog.is_progress_bar_enabled(),
             tlog.is_progress_bar_enabled())
    dlog.set_verbosity(logging.CRITICAL)
    tlog.set_verbosity(logging.CRITICAL)
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    import warnings

    try:
        with warnings.catch_warnings():
            # a corrupt weights file reads as an odd pickle protocol first; the loader's own error says what it is
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            yield
    finally:
        dlog.set_verbosity(saved[0])
        tlog.set_verbosity(saved[1])
        for enabled, module in ((saved[2], dlog), (saved[3], tlog)):
            if enabled:
                module.enable_progress_bar()
