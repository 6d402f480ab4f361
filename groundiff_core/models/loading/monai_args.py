"""What the UNet and the autoencoder conversions share: reading MONAI constructor arguments, and the
two key layouts of MONAI checkpoints.

:class:`MonaiArgs` reads a bundle's network definition (e.g. ``diffusion_def``, ``autoencoder_def``)
into :class:`~.monai_unet.MonaiUNetConfig` or :class:`~.monai_autoencoder.MonaiAutoencoderConfig`,
renaming a few arguments, skipping those that carry no weights, refusing anything but 2-D, and
rejecting unknown arguments with the list of known ones. :class:`KeyLayout` tells the old MONAI
GenerativeModels tensor names from MONAI core's (>= 1.4) and renames the old ones to core's (what
MONAI core's ``load_old_state_dict`` does), keeping the way back for error messages.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Callable, ClassVar, Iterable, Mapping, TypeVar

from groundiff_core.models.loading.errors import StateDictMismatchError, UnsupportedArchitectureError

__all__ = ["MonaiArgs", "KeyLayout", "rename"]

_C = TypeVar("_C", bound="MonaiArgs")


class MonaiArgs:
    """Mixin for a frozen dataclass whose fields are a MONAI network's constructor arguments.

    A subclass sets ``_NETWORK`` (the MONAI class name, for errors), ``_NOT_2D`` (the message for
    ``spatial_dims != 2``) and ``_IGNORED`` (arguments without weights, such as ``_target_`` or
    ``use_flash_attention``); ``_ALIASES`` maps other spellings to field names (GenerativeModels'
    ``num_channels`` is MONAI core's ``channels``).
    """

    _NETWORK: ClassVar[str]
    _NOT_2D: ClassVar[str]
    _ALIASES: ClassVar[Mapping[str, str]] = {"num_channels": "channels"}
    _IGNORED: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_dict(cls: type[_C], d: Mapping) -> _C:
        """From MONAI/GenerativeModels constructor arguments (e.g. a bundle's network definition).

        Raises :class:`UnsupportedArchitectureError` for ``spatial_dims != 2`` or
        ``include_fc=False``, and ``ValueError`` for an argument the configuration does not know.
        """
        allowed = {f.name for f in fields(cls)}
        kwargs = {}
        for key, value in d.items():
            key = cls._ALIASES.get(key, key)
            if key == "spatial_dims" and int(value) != 2:
                raise UnsupportedArchitectureError(f"{cls._NOT_2D} (spatial_dims={value})")
            if key == "include_fc":
                if not value:
                    raise UnsupportedArchitectureError("include_fc=False (no attention output projection) is not supported")
                continue
            if key in cls._IGNORED:
                continue
            if key not in allowed:
                raise ValueError(f"unknown {cls._NETWORK} argument {key!r}; known: {sorted(allowed)}")
            kwargs[key] = value
        return cls(**kwargs)

    def to_dict(self) -> dict:
        """The fields as JSON-ready values (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class KeyLayout:
    """The old GenerativeModels and the MONAI core names of one network's checkpoint tensors.

    ``to_core`` and ``to_old`` are ``(pattern, replacement)`` rules applied in order; a key that
    one of ``to_core``'s patterns matches is an old name, a key holding one of ``core_marks`` a core one.
    """

    network: str  # for the error message, e.g. "UNet"
    to_core: tuple[tuple[str, str], ...]
    to_old: tuple[tuple[str, str], ...]
    core_marks: tuple[str, ...]

    def detect(self, keys: Iterable[str]) -> str:
        """``"generative"`` (old MONAI GenerativeModels names) or ``"monai"`` (MONAI core >= 1.4)."""
        keys = list(keys)
        old = any(re.search(p, k) for k in keys for p, _ in self.to_core)
        new = any(mark in k for k in keys for mark in self.core_marks)
        if old and new:
            raise StateDictMismatchError(
                f"the {self.network} checkpoint mixes the old GenerativeModels and the MONAI core key layouts")
        return "generative" if old else "monai"

    def normalise(self, state: Mapping, layout: str | None = None) -> tuple[dict, Callable[[str], str]]:
        """``(state in MONAI core names, function giving a core name's name in the checkpoint's layout)``;
        ``layout`` is :meth:`detect`'s answer when the caller has it already."""
        if (layout or self.detect(state)) == "monai":
            return dict(state), (lambda key: key)
        return ({rename(k, self.to_core): v for k, v in state.items()}, lambda key: rename(key, self.to_old))


def rename(key: str, rules: Iterable[tuple[str, str]]) -> str:
    """``key`` with each ``(pattern, replacement)`` rule applied once, in order."""
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key
