"""The Hugging Face Hub: explicit, opt-in downloads (the only place that may reach the network) and
offline lookups in the local Hub cache.

:func:`download_snapshot` runs only when the caller passed ``allow_download=True``; with
``HF_HUB_OFFLINE=1`` set it refuses before importing the hub client, so nothing can leave the
machine. :func:`cached_snapshot` finds a repository already in the cache
(``models--owner--name/snapshots/<hash>/``) with the hub library's local-files-only lookup, which
makes no connection.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

__all__ = ["hub_offline", "download_snapshot", "looks_like_repo_id", "hub_cache_dir", "cached_snapshot"]


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


def hub_cache_dir() -> Path:
    """The Hub cache folder, by the hub library's rules, read now (not at import): ``$HF_HUB_CACHE``,
    else ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub`` (default ``~/.cache/huggingface/hub``)."""
    env = os.environ
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(name):
            return Path(env[name]).expanduser()
    home = env.get("HF_HOME") or str(Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface")
    return Path(home).expanduser() / "hub"


def cached_snapshot(repo_id: str, revision: str | None = None) -> Path:
    """The local snapshot folder of ``repo_id`` in the Hub cache; never touches the network.

    Raises :class:`FileNotFoundError` naming the cache folder looked in, and how to fill it.
    """
    from huggingface_hub import snapshot_download

    cache = hub_cache_dir()
    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=str(cache), local_files_only=True))
    except Exception:  # noqa: BLE001 - LocalEntryNotFoundError and relatives: not in the cache
        folder = cache / f"models--{repo_id.replace('/', '--')}"
        raise FileNotFoundError(
            f"{repo_id} is not in the Hugging Face cache (looked in {folder}; the cache is {cache}, set by "
            "HF_HUB_CACHE or HF_HOME). Fill it once on a machine with network (`hf download "
            f"{repo_id} --include 'text_encoder/*' 'tokenizer/*'`), or pass the folder that holds text_encoder/ "
            "and tokenizer/") from None
