"""Content fingerprints: SHA-256 of files, of JSON-able objects and of a model's weights.

A fingerprint names *what* something is, never *where* it lies, so that a result computed from it
can be recognised after the file, the folder or the code that produced it has moved. Every digest
of the project is made here, once: result folders (:mod:`groundiff_core.evaluation.identity`),
the book's provenance and the model doctor use the same functions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from typing import Any, Iterable

import numpy as np

__all__ = ["jsonable", "json_sha256", "file_sha256", "file_fingerprint", "weights_sha256"]


def jsonable(obj: Any) -> Any:
    """Nested plain-JSON copy: dataclasses -> dicts, tuples -> lists, numpy scalars and arrays ->
    numbers and lists, NaN/inf -> None; anything else that is not JSON becomes its ``str``."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


def json_sha256(obj: Any) -> str:
    """SHA-256 (hex) of an object's canonical JSON (:func:`jsonable`, sorted keys, no spaces)."""
    text = json.dumps(jsonable(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_sha256(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """SHA-256 (hex, or another ``hashlib`` algorithm: the model zoo publishes MD5s) of a whole
    file's bytes; ``OSError`` when it cannot be read."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, algorithm).hexdigest()


def file_fingerprint(path: str | os.PathLike, chunk: int = 1 << 20) -> dict:
    """``{"name", "size", "head_tail_sha256"}``: a (possibly multi-GB) file identified cheaply by its
    size and a hash of its first and last MiB; tells whether a converted cache is still the
    conversion of the checkpoint next to it (a whole file's digest is :func:`file_sha256`)."""
    path = os.fspath(path)
    size = os.stat(path).st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(chunk))
        if size > chunk:
            f.seek(max(chunk, size - chunk))
            h.update(f.read(chunk))
    return {"name": os.path.basename(path), "size": int(size), "head_tail_sha256": h.hexdigest()}


def weights_sha256(networks: Iterable[tuple[str, Any]]) -> str:
    """SHA-256 (hex) of every tensor of named ``torch.nn.Module`` s: name, dtype, size and bytes.

    ``networks`` is ``[(part, module), ...]`` (e.g. ``("unet", model.unet)``); a ``None`` module is
    left out. The digest depends on the weights only, not on where they were loaded from.
    """
    import torch

    h = hashlib.sha256()
    for part, net in networks:
        if net is None:
            continue
        for name, t in net.state_dict().items():
            t = t.detach().to("cpu").contiguous().reshape(-1)
            h.update(f"{part}.{name}|{t.dtype}|{t.numel()}\n".encode("utf-8"))
            h.update(t.view(torch.uint8).numpy())
    return h.hexdigest()
