"""What an evaluation folder holds, as content: method, config, weights and data fingerprints.

A run's identity never contains a path nor a module path: moving the results folder, the model's
folder or the code that defines a method (a refactor that renames a module) keeps the identity, so
a legitimate resume or merge is accepted; other weights, another config, method, dataset or shard
give another identity and are refused (:mod:`groundiff_core.evaluation.results`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from groundiff_core.io.datasets.common import GroundingPair, group_by_image
from groundiff_core.util.fingerprint import file_sha256, json_sha256, jsonable, weights_sha256

__all__ = ["method_identity", "run_identity", "model_content", "pair_keys", "same_run",
           "comparable", "diff_paths"]


def method_identity(method: Any) -> dict:
    """What identifies a grounding method in results files.

    ``method.describe()`` where it has one, completed by what it leaves out: ``method`` (its
    ``name`` or class name), ``config`` (its ``config`` dataclass) and ``model`` (its
    ``model.identity()``) where present, and ``class``: the class's name, without its module (so
    that moving the code does not change the identity).
    """
    if callable(getattr(method, "describe", None)):
        ident = dict(method.describe())
    else:
        ident = {}
    ident.setdefault("method", getattr(method, "name", type(method).__name__))
    cfg = getattr(method, "config", None)
    if cfg is not None and "config" not in ident:
        ident["config"] = cfg.to_dict() if callable(getattr(cfg, "to_dict", None)) else cfg
    model = getattr(method, "model", None)
    if model is not None and "model" not in ident and callable(getattr(model, "identity", None)):
        ident["model"] = model.identity()
    ident.setdefault("class", type(method).__name__)
    return jsonable(ident)


def model_content(model: Any) -> dict:
    """The model as content: architecture facts, schedule, weights and vocabulary fingerprints.

    What ``model.identity()`` takes from ``model.info`` (source, paths, cache) and the display
    name (a diffusers folder's name) are left out: moving or renaming the weights changes neither.
    """
    ident = dict(model.identity()) if callable(getattr(model, "identity", None)) else {}
    info = getattr(model, "info", None) or {}
    out = {k: v for k, v in ident.items() if k not in info and k != "name"}
    schedule = getattr(model, "schedule", None)
    if schedule is not None:
        out["schedule"] = schedule
    out["weights_sha256"] = weights_sha256(
        (part, getattr(model, part, None)) for part in ("unet", "vae", "text_encoder"))
    vocab = getattr(getattr(model, "tokenizer", None), "get_vocab", None)
    if callable(vocab):
        out["vocabulary_sha256"] = json_sha256(sorted(vocab().items()))
    return jsonable(out)


def _without_paths(obj: Any) -> Any:
    """A copy without the entries whose value is a filesystem path (a string with a separator)."""
    if isinstance(obj, dict):
        return {k: _without_paths(v) for k, v in obj.items()
                if not (isinstance(v, str) and ("/" in v or "\\" in v))}
    if isinstance(obj, list):
        return [_without_paths(v) for v in obj]
    return obj


def _annotation(p: GroundingPair) -> dict:
    return {"pair_id": p.pair_id, "phrase": p.phrase, "category": p.category,
            "boxes": p.boxes.tolist(), "image_size": p.image_size}


def run_identity(method: Any, pairs: Sequence[GroundingPair], dataset: dict | None,
                 shard: tuple[int, int] | None) -> dict:
    """What an evaluation folder holds, as content: never a path, so a run can move.

    ``method``: :func:`method_identity` with its ``model`` replaced by fingerprints of the weights
    (when the method exposes its model) or stripped of paths; ``dataset``: the caller's
    description; ``data``: the number of pairs and a SHA-256 of their annotations; ``shard``.
    """
    ident = method_identity(method)
    model = getattr(method, "model", None)
    if model is not None and hasattr(model, "unet"):
        ident["model"] = model_content(model)
    ident = _without_paths(ident)
    return {"method": ident, "dataset": _without_paths(jsonable(dataset or {})),
            "data": {"pairs": len(pairs), "sha256": json_sha256([_annotation(p) for p in pairs])},
            "shard": list(shard) if shard is not None else None}


def same_run(a: dict, b: dict, ignore: Sequence[str] = ()) -> bool:
    """Whether two run identities describe the same evaluation, apart from the keys ``ignore``."""
    return comparable(a, ignore) == comparable(b, ignore)


def comparable(identity: dict, ignore: Sequence[str] = ()) -> dict:
    """A run identity as runs are compared: without the keys ``ignore``."""
    return {k: v for k, v in identity.items() if k not in ignore}


def diff_paths(a: dict, b: dict, ignore: Sequence[str] = ()) -> list[str]:
    """Dotted paths of the entries where two run identities differ, compared as :func:`same_run`."""
    return _diff(comparable(a, ignore), comparable(b, ignore), "")


def _diff(a: Any, b: Any, prefix: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
        return out
    return [] if a == b else [prefix or "<root>"]


def _image_sha256(path: Path) -> str | None:
    """The image file's SHA-256, or None when it cannot be read (the runner then skips it). Only a
    regular file is read: a FIFO or a device (/dev/zero) would block or never end."""
    if not Path(path).is_file():
        return None
    try:
        return file_sha256(path)
    except OSError:
        return None


def pair_keys(selected: Sequence[GroundingPair], by_image_all: dict) -> dict[str, str]:
    """Content key of each selected pair: everything its result row is computed from.

    Its annotation, the image file's SHA-256 and the annotations of the other pairs of the same
    image (the text-sensitivity check scores the heatmap on their boxes).
    """
    keys: dict[str, str] = {}
    for path, grp in group_by_image(selected).items():
        image = _image_sha256(path)
        siblings = [_annotation(q) for q in by_image_all[path]]
        for p in grp:
            keys[p.pair_id] = json_sha256({"pair": _annotation(p), "image_sha256": image,
                                           "others": [a for a in siblings
                                                      if a["pair_id"] != p.pair_id]})[:24]
    return keys
