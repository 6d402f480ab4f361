"""MONAI / GenerativeModels constructor arguments to and from a configuration dataclass.

Shared by :class:`~.monai_unet.MonaiUNetConfig` and
:class:`~.monai_autoencoder.MonaiAutoencoderConfig`: both read a bundle's network definition (e.g.
``diffusion_def``, ``autoencoder_def``), renaming a few arguments, skipping those that carry no
weights, refusing anything but 2-D, and rejecting unknown arguments with the list of known ones.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import ClassVar, Mapping, TypeVar

from groundiff_core.models.loading.errors import UnsupportedArchitectureError

__all__ = ["MonaiArgs"]

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
