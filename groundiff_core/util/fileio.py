"""Safe writes for result folders: atomic replacement and a one-writer-at-a-time folder lock.

:func:`atomic_write` writes a whole file through a temporary file in the same folder, flushed to
disk, then renamed over the target: a reader (or a crash) sees the old file or the new one, never a
half-written one. :func:`folder_lock` takes an advisory ``fcntl.flock`` on a lock file inside a
folder, so a second process that would write the same folder is refused at once with a clear
message instead of silently doing the same work twice or interleaving its writes.
"""

from __future__ import annotations

import os
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_write", "write_json", "folder_lock", "FolderBusyError", "LOCK_NAME", "regular_file", "MAX_READ_BYTES"]

#: The largest input file read (checkpoints of the paper's size are about 1.1 GB): a larger one is
#: refused by name before it is opened; ``GROUNDIFF_MAX_READ_GB`` raises the limit.
MAX_READ_BYTES = int(float(os.environ.get("GROUNDIFF_MAX_READ_GB", "20")) * 2 ** 30)


def regular_file(path: str | os.PathLike, what: str, max_bytes: int | None = None) -> Path:
    """``path`` if it is a regular file of at most ``max_bytes`` (default :data:`MAX_READ_BYTES`);
    else ``FileNotFoundError`` (missing) or ``ValueError`` (a folder, a pipe, socket or device, which
    would block or never end, or a file too large) naming ``what`` and the path, before anything
    opens it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder; give a file")
    if not path.is_file():
        raise ValueError(f"{what} {path} is not a regular file (a pipe, socket or device); give a file")
    limit = MAX_READ_BYTES if max_bytes is None else max_bytes
    size = path.stat().st_size
    if size > limit:
        raise ValueError(f"{what} {path} is {size / 2 ** 30:.1f} GiB, over the {limit / 2 ** 30:.1f} GiB groundiff "
                         "reads (GROUNDIFF_MAX_READ_GB raises it)")
    return path


#: Name of the lock file :func:`folder_lock` keeps in a folder.
LOCK_NAME = ".groundiff.lock"


class FolderBusyError(ValueError):
    """Another process holds the folder's lock (a ``ValueError``: the CLI prints it as one line)."""


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
    """Replace ``path`` with ``data`` (text is written as UTF-8) atomically.

    The data go to a uniquely named temporary file next to ``path`` (with the permissions a plain
    ``open`` would give: the existing file's, else those the umask allows), are flushed and fsynced, and
    the file is renamed over ``path`` (``os.replace``: atomic on POSIX and Windows). On any error
    the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _mode_for(path))  # mkstemp makes 0600; the file gets the mode a plain open gives
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, obj: object, *, indent: int | None = 2) -> Path:
    """Write ``obj`` to ``path`` as JSON, atomically: the project's one JSON writer.

    ``obj`` goes through :func:`~groundiff_core.util.fingerprint.jsonable` (dataclasses -> dicts,
    numpy scalars -> numbers, NaN -> null, paths -> strings); the parent folder is created.
    """
    import json

    from groundiff_core.util.fingerprint import jsonable

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(jsonable(obj), indent=indent, separators=None if indent else (",", ":"))
    atomic_write(path, text + "\n")
    return path


def _mode_for(path: Path) -> int:
    """The permission bits ``open(path, "w")`` would leave: the existing file's, else 0666 less the umask."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


@contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "write") -> Iterator[Path]:
    """Hold an exclusive advisory lock on ``folder`` for the duration of the block.

    Raises :class:`FolderBusyError` naming the folder (and the holder's host and pid, as it wrote
    them) when another process holds it. The lock is released when the block ends or the process
    dies (the kernel drops ``flock`` locks of a dead process), so a killed run never leaves a
    stale lock behind. Where ``fcntl`` does not exist (Windows) the block runs unlocked.
    """
    folder = Path(folder)
    lock_path = folder / LOCK_NAME
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield lock_path
        return
    fh = open(lock_path, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise FolderBusyError(
                f"{folder} is in use by {holder} (lock file {lock_path}); wait for it to finish "
                f"or {what} into another folder") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        fh.flush()
        try:
            yield lock_path
        finally:
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    finally:
        fh.close()
