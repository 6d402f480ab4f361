"""The only place that may reach the network: explicit, opt-in downloads from the Hugging Face Hub.

Nothing here runs unless the caller passed ``allow_download=True``; with ``HF_HUB_OFFLINE=1`` set it
refuses before importing the hub client, so nothing can leave the machine.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

__all__ = ["hub_offline", "download_snapshot", "looks_like_repo_id"]


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set to a true value."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def looks_like_repo_id(source: str) -> bool:
    """``"owner/name"``: one slash, no path-like parts."""
    parts = source.split("/")
    return (len(parts) == 2 and all(parts) and not source.startswith((".", "~"))
            and not any(p in (".", "..") for p in parts))


def download_snapshot(repo_id: str, local_dir: str | Path, allow_patterns: Sequence[str] | None = None) -> Path:
    """Download ``repo_id`` (only ``allow_patterns``) into ``local_dir``; returns the folder."""
    if hub_offline():
        raise FileNotFoundError(
            f"cannot download {repo_id}: HF_HUB_OFFLINE is set, so nothing is fetched from the network. "
            f"Copy the files into {local_dir} by hand, or unset HF_HUB_OFFLINE.")
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(repo_id, local_dir=str(local_dir), allow_patterns=list(allow_patterns or []) or None)
    except Exception as e:  # network, authentication, missing repository: one clear line
        raise FileNotFoundError(f"could not download {repo_id} into {local_dir}: {type(e).__name__}: {e}") from None
    return Path(path)
