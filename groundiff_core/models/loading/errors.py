"""Errors raised while finding, reading and converting model weights.

Each is a subclass of ``FileNotFoundError`` or ``ValueError`` so that the CLI prints it as one line
(see :mod:`groundiff_core.cli`) and notebooks show the message, not a deep torch traceback.
"""

from __future__ import annotations

__all__ = ["MissingWeightsError", "UnsafeCheckpointError", "StateDictMismatchError", "UnsupportedArchitectureError"]


class MissingWeightsError(FileNotFoundError):
    """Expected weight files are not on disk; the message lists them, where to get them and where to put them."""


class UnsafeCheckpointError(ValueError):
    """A checkpoint that cannot be read with ``torch.load(weights_only=True)`` (it pickles Python objects)."""


class StateDictMismatchError(ValueError):
    """A checkpoint's tensors do not fit the configured architecture (shape, missing or leftover keys)."""


class UnsupportedArchitectureError(ValueError):
    """A MONAI configuration that has no exact diffusers equivalent (the message says which part and why)."""
