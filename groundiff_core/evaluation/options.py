"""Checks of an evaluation's options, done before any work starts."""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["check_options", "parse_shard"]


def check_options(*, n_boot: int = 1000, batch_images: int = 1, n_pairs: int | None = None) -> None:
    """Refuse bad counts before any work starts (a bad bootstrap count would fail only at the end)."""
    for name, value, low in (("bootstrap resamples (n_boot)", n_boot, 1),
                             ("batch_images", batch_images, 1), ("n_pairs", n_pairs, 1)):
        if value is None and name == "n_pairs":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def parse_shard(text: str | Sequence[int] | None) -> tuple[int, int]:
    """``"i/n"`` (0-based ``i``) -> ``(i, n)``; None -> ``(0, 1)``."""
    if text is None:
        return 0, 1
    if isinstance(text, str):
        try:
            i, n = (int(s) for s in text.split("/"))
        except ValueError:
            raise ValueError(f"shard must look like 'i/n' with 0 <= i < n, got {text!r}") from None
    else:
        i, n = (int(s) for s in text)
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"shard must satisfy 0 <= i < n, got {i}/{n}")
    return i, n
