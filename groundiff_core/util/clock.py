"""The project's one clock: UTC time stamps in result files, run records and provenance."""

from __future__ import annotations

from datetime import datetime, timezone

__all__ = ["now"]


def now() -> str:
    """The current UTC time, ISO 8601 to the second (``2026-12-02T14:59:04+00:00``)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
