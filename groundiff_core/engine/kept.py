"""Inversions kept for later phrases: an image's latents at the steps a window reads, in memory
(:class:`Inversion`) or on disk (:class:`InversionCache`).

With guidance 0 the DDIM trajectory never depends on the phrase, so an image inverted once serves
every later phrase, setting and run that reads a window inside the kept steps: only the phrases'
own conditional rows are computed again, and the maps are those of a fresh
:meth:`~groundiff_core.engine.grounder.Grounder.ground` to the bit (tests/test_engine_reuse.py).

What an inversion depends on is its :func:`inversion_key`: the prepared image (its pixels after the
resize and crop), the model's weights, its device and dtype, the noise schedule, the number of
inference steps and their spacing, and on a CPU torch's thread count (it changes the order of
floating-point reductions, hence the last bits). The window is not part of it: an entry holds the steps
``[start, stop)`` it was computed for and serves any window inside them.

The cache is content-keyed and off by default: one file per key, written atomically (a reader never
sees half a file), least-recently-used files removed beyond ``max_bytes``; an entry that cannot be
read, or whose content does not match its key, is deleted and recomputed, never trusted.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from groundiff_core.io.preprocess import CropGeometry
from groundiff_core.util.fileio import atomic_write
from groundiff_core.util.fingerprint import json_sha256

__all__ = ["Inversion", "InversionCache", "inversion_key", "DEFAULT_CACHE_BYTES"]

DEFAULT_CACHE_BYTES = 4 * 1024 ** 3  # 4 GiB: about 1400 images at the paper preset's 60 window steps
_FORMAT = "groundiff-inversion"


def inversion_key(x: torch.Tensor, model_key: dict) -> str:
    """Content key of the inversion of one prepared image ``x`` ``[1, S, S]`` under ``model_key``
    (weights fingerprint, device type, dtype, schedule, steps and spacing)."""
    pixels = hashlib.sha256(x.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()).hexdigest()
    return json_sha256({"image": pixels, "shape": list(x.shape), **model_key})[:40]


@dataclass
class Inversion:
    """One image's guidance-free DDIM inversion, kept.

    Attributes
    ----------
    latents : ``[stop - start, C, l, l]``: the latent the UNet sees at each step of ``window``
    window : the inversion steps ``[start, stop)`` kept
    geometry : how the original image maps onto the model's input
    key : :func:`inversion_key` (the image and everything the trajectory depends on)
    model_key : the model and schedule it was computed with, to refuse another grounder by name
    grounder : the grounder that made it (:meth:`ground`, :meth:`record`, :meth:`ground_tokens`
        use it); None for an inversion read from a file
    """

    latents: torch.Tensor
    window: tuple[int, int]
    geometry: CropGeometry
    key: str
    model_key: dict
    grounder: object | None = None

    def covers(self, window: tuple[int, int]) -> bool:
        return self.window[0] <= window[0] and window[1] <= self.window[1]

    def steps(self, window: tuple[int, int]) -> torch.Tensor:
        """The kept latents of the steps ``[start, stop)`` of ``window`` (inside :attr:`window`)."""
        if not self.covers(window):
            raise ValueError(f"this inversion keeps steps [{self.window[0]}, {self.window[1]}); steps "
                             f"[{window[0]}, {window[1]}) were asked for: invert again with that window")
        return self.latents[window[0] - self.window[0]:window[1] - self.window[0]]

    def _bound(self):
        if self.grounder is None:
            raise ValueError("this inversion has no grounder: pass it to Grounder.ground / record / ground_tokens")
        return self.grounder

    def ground(self, phrases, return_raw: bool = False):
        """``Grounder.ground`` of the phrases on the inverted image, without inverting it again."""
        return self._bound().ground(self, phrases, return_raw=return_raw)

    def record(self, phrases, window=None, layers=None):
        """``Grounder.record`` of the phrases on the inverted image (``window`` inside the kept steps)."""
        return self._bound().record(self, phrases, window=window, layers=layers)

    def ground_tokens(self, phrase: str, return_raw: bool = False):
        """``Grounder.ground_tokens`` of the phrase on the inverted image."""
        return self._bound().ground_tokens(self, phrase, return_raw=return_raw)

    @property
    def nbytes(self) -> int:
        return self.latents.numel() * self.latents.element_size()


class InversionCache:
    """Inversions on disk, keyed by content (:func:`inversion_key`), at most ``max_bytes`` of them."""

    def __init__(self, folder: str | os.PathLike, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"max_bytes must be a positive integer, got {max_bytes!r}")
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(f"inversion cache {self.folder} is a file, not a folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_bytes)
        self.hits = self.misses = 0

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.pt"

    def get(self, key: str, window: tuple[int, int]) -> torch.Tensor | None:
        """The latents of ``window`` for ``key``, or None (absent, a narrower window, or unreadable:
        an unreadable or mismatched entry is deleted)."""
        path = self._path(key)
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            self.misses += 1
            return None
        except Exception:  # a truncated, foreign or corrupt file: recompute, never trust it
            path.unlink(missing_ok=True)
            self.misses += 1
            return None
        ok = (isinstance(entry, dict) and entry.get("format") == _FORMAT and entry.get("key") == key
              and isinstance(entry.get("latents"), torch.Tensor) and len(entry.get("window", ())) == 2
              and entry["latents"].shape[0] == entry["window"][1] - entry["window"][0])
        if not ok:
            path.unlink(missing_ok=True)
            self.misses += 1
            return None
        start, stop = (int(v) for v in entry["window"])
        if not (start <= window[0] and window[1] <= stop):
            self.misses += 1
            return None
        os.utime(path)  # least recently used goes first
        self.hits += 1
        return entry["latents"][window[0] - start:window[1] - start]

    def put(self, key: str, window: tuple[int, int], latents: torch.Tensor) -> None:
        """Store ``latents`` (the steps of ``window``) under ``key``, then evict beyond ``max_bytes``."""
        buf = io.BytesIO()
        torch.save({"format": _FORMAT, "key": key, "window": [int(window[0]), int(window[1])],
                    "latents": latents.detach().to("cpu").contiguous()}, buf)
        path = self._path(key)
        atomic_write(path, buf.getvalue())
        self._evict(keep=path)

    def _evict(self, keep: Path) -> None:
        entries = []
        for p in self.folder.glob("*.pt"):
            try:
                st = p.stat()
            except FileNotFoundError:  # removed by another process meanwhile
                continue
            entries.append((st.st_mtime, st.st_size, p))
        total = sum(size for _, size, _ in entries)
        for _, size, p in sorted(entries):
            if total <= self.max_bytes:
                break
            if p != keep:
                p.unlink(missing_ok=True)
                total -= size
