"""The evaluation runner: any grounding method x a dataset -> per-pair results and a summary.

Files in the output folder ``DIR``:

* ``run.json`` - what is being evaluated, as content fingerprints, never paths (method, config,
  the model's weights, the annotations, shard): a rerun with the same ``DIR`` resumes only if the
  method, config, weights, dataset name and shard match, otherwise it is refused; it also lists
  every session (start, end, status: finished, interrupted, failed, or killed when a later start
  finds it never ended), with the paths used, as information;
* ``results.jsonl`` - one JSON line per pair, appended and flushed as soon as its image is done,
  so an interrupted run loses at most the image (or batch of images) in progress. Each row carries
  the pair's content ``key`` (phrase, category, boxes, annotated size, the image file's SHA-256 and
  the other findings of the same image): a rerun recomputes exactly the pairs whose key changed,
  so edited annotations or images never leave stale rows. ``status`` is
  ``"ok"`` or ``"skipped"`` (with ``reason``: missing/unreadable image, no box inside the image);
  skipped pairs are retried by a rerun. An ``ok`` row holds ``pair_id, image_path, phrase,
  category, image_hw, boxes`` (as scored: original pixels, fitted to the image read), the metrics
  of :data:`METRICS`, ``others`` (for every other pair of the same image: its ``pair_id``,
  ``category``, this heatmap's ``auc`` on its boxes and the ``gt_iou`` of the two ground truths:
  the text-sensitivity check), ``seconds`` (grounding time per phrase) and ``box_notes`` when
  boxes had to be rescaled or clipped. Non-finite numbers are written as ``null``;
* ``summary.json`` / ``summary.csv`` - overall, per-class and class-averaged metrics with bootstrap
  95% confidence intervals, the text-sensitivity figure, skipped images, versions and times.

Writes go through :mod:`groundiff_core.util.fileio`: whole files are replaced atomically and a lock
on ``DIR`` refuses a second concurrent writer.

Pairs are grouped by image: ``method.ground(image, phrases)`` is called once per image with all its
phrases (one DDIM inversion serves them all). The method may be anything with that verb
(:class:`groundiff_core.engine.grounder.Grounder`, :mod:`groundiff_core.methods.baselines`, Captum methods) and a
``describe()`` (or ``name``) for its identity.

Metrics (:mod:`groundiff_core.evaluation.metrics`) are computed on the original image grid, against the
pair's boxes (rescaled if the image's size differs from the annotated one, clipped to the image).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import platform
import socket
import sys
import time
import warnings
import zlib
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from groundiff_core.evaluation import metrics as M
from groundiff_core.conventions import CONVENTIONS, check_conventions
from groundiff_core.io.preprocess import CropGeometry
from groundiff_core.io.datasets.common import GroundingPair, fit_boxes_to_image, group_by_image, subset
from groundiff_core.util.fileio import atomic_write, folder_lock

__all__ = [
    "METRICS",
    "evaluate",
    "summarize",
    "load_results",
    "write_summary",
    "merge",
    "method_identity",
    "run_identity",
    "check_options",
    "parse_shard",
]

#: Per-pair metrics recorded and summarised (keys of :func:`groundiff_core.evaluation.metrics.all_metrics`).
METRICS = ("miou", "auc", "auc_binned", "cnr_abs", "cnr_signed", "pointing")
#: The paper model's input size: the centre crop assumed for methods that have no model.
PAPER_INPUT_SIZE = 512
RESULTS, RUN, SUMMARY_JSON, SUMMARY_CSV = "results.jsonl", "run.json", "summary.json", "summary.csv"
FORMAT = 2  # 2: content identity (weights and annotation fingerprints, no paths), keyed rows


# ============================================================================ identity & JSON
def _jsonable(obj: Any) -> Any:
    """Nested plain-JSON copy: tuples -> lists, numpy/torch scalars -> numbers, NaN/inf -> None."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
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


def method_identity(method: Any) -> dict:
    """What identifies a grounding method in results files.

    ``method.describe()`` where it has one, completed by what it leaves out: ``method`` (its
    ``name`` or class name), ``config`` (its ``config`` dataclass) and ``model`` (its
    ``model.identity()``) where present, and the class path.
    """
    cls = f"{type(method).__module__}.{type(method).__qualname__}"
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
    ident.setdefault("class", cls)
    return _jsonable(ident)


def _sha(obj: Any) -> str:
    """SHA-256 (hex) of an object's canonical JSON."""
    text = json.dumps(_jsonable(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _weights_sha256(model: Any) -> str:
    """SHA-256 of every tensor (name, dtype, shape and bytes) of the model's networks."""
    import torch

    h = hashlib.sha256()
    for part in ("unet", "vae", "text_encoder"):
        net = getattr(model, part, None)
        if net is None:
            continue
        for name, t in net.state_dict().items():
            t = t.detach().to("cpu").contiguous().reshape(-1)
            h.update(f"{part}.{name}|{t.dtype}|{t.numel()}\n".encode("utf-8"))
            h.update(t.view(torch.uint8).numpy())
    return h.hexdigest()


def _model_content(model: Any) -> dict:
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
    out["weights_sha256"] = _weights_sha256(model)
    vocab = getattr(getattr(model, "tokenizer", None), "get_vocab", None)
    if callable(vocab):
        out["vocabulary_sha256"] = _sha(sorted(vocab().items()))
    return _jsonable(out)


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
        ident["model"] = _model_content(model)
    ident = _without_paths(ident)
    return {"method": ident, "dataset": _without_paths(_jsonable(dataset or {})),
            "data": {"pairs": len(pairs), "sha256": _sha([_annotation(p) for p in pairs])},
            "shard": list(shard) if shard is not None else None}


def _file_sha256(path: Path) -> str | None:
    """SHA-256 of a file's bytes, or None when it cannot be read (the runner then skips it)."""
    try:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError:
        return None


def _pair_keys(selected: Sequence[GroundingPair], by_image_all: dict) -> dict[str, str]:
    """Content key of each selected pair: everything its result row is computed from.

    Its annotation, the image file's SHA-256 and the annotations of the other pairs of the same
    image (the text-sensitivity check scores the heatmap on their boxes).
    """
    keys: dict[str, str] = {}
    for path, grp in group_by_image(selected).items():
        image = _file_sha256(path)
        siblings = [_annotation(q) for q in by_image_all[path]]
        for p in grp:
            keys[p.pair_id] = _sha({"pair": _annotation(p), "image_sha256": image,
                                    "others": [a for a in siblings if a["pair_id"] != p.pair_id]})[:24]
    return keys


def _diff_paths(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff_paths(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
        return out
    return [] if a == b else [prefix or "<root>"]


def versions() -> dict:
    """Versions of the software and the hardware that produced a result."""
    from importlib import metadata

    v = {"python": sys.version.split()[0], "platform": platform.platform(),
         "processor": platform.processor() or platform.machine()}
    for pkg in ("groundiff_core", "numpy", "torch", "diffusers", "transformers", "scipy",
                "scikit-learn", "captum"):
        try:
            v[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        if torch.cuda.is_available():
            v["cuda_device"] = torch.cuda.get_device_name(0)
    return v


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


# ============================================================================ results file
def _read_jsonl(path: Path, repair: bool = False) -> list[dict]:
    """Rows of a results file.

    A torn last line (a crash in the middle of a write) is dropped with a warning; with ``repair``
    it is also cut from the file (and a missing final newline added) so that appending is safe.
    A corrupt line anywhere else is an error: that is not an interrupted write. So is a line that
    is valid JSON but not a result row (an object with a string ``pair_id`` and ``status``).
    """
    if path.exists() and not path.is_file():
        raise ValueError(f"{path} is not a file; an evaluation folder keeps its results there")
    if not path.is_file():
        return []
    raw = path.read_bytes()
    *complete, tail = raw.split(b"\n")
    rows = []
    for i, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            rows.append(_as_row(json.loads(line), path, i))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValueError(f"{path}: line {i} is not valid JSON (and not an interrupted last "
                             "write); fix or remove it") from None
    if tail.strip():
        try:
            rows.append(_as_row(json.loads(tail), path, len(complete) + 1))
            fix = b"\n"
        except (json.JSONDecodeError, UnicodeDecodeError):
            warnings.warn(f"{path}: dropped a torn last line (an interrupted write)", UserWarning,
                          stacklevel=3)
            fix = None
        if repair:
            if fix is None:
                with open(path, "r+b") as fh:
                    fh.truncate(len(raw) - len(tail))
            else:
                with open(path, "ab") as fh:
                    fh.write(fix)
    return rows


def _as_row(obj: Any, path: Path, line: int) -> dict:
    if not (isinstance(obj, dict) and isinstance(obj.get("pair_id"), str)
            and isinstance(obj.get("status"), str)):
        raise ValueError(f"{path}: line {line} is not a result row (expected a JSON object with "
                         "'pair_id' and 'status'); fix or remove it")
    return obj


def _latest(rows: Iterable[dict]) -> dict[str, dict]:
    """One row per pair id, among the rows of its latest content ``key`` (the key of its last
    row): the last ``ok`` one if any, else the last one. Rows of an older key are stale."""
    rows = list(rows)
    last_key = {r["pair_id"]: r.get("key") for r in rows}
    out: dict[str, dict] = {}
    for r in rows:
        pid = r["pair_id"]
        if r.get("key") != last_key[pid]:
            continue
        if r.get("status") == "ok" or out.get(pid, {}).get("status") != "ok":
            out[pid] = r
    return out


def load_results(out_dir: str | os.PathLike) -> list[dict]:
    """The per-pair rows of an evaluation folder, one per pair (see :func:`_latest`), file order."""
    return list(_latest(_read_jsonl(Path(out_dir) / RESULTS)).values())


# ============================================================================ the runner
def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _out_folder(out_dir: str | os.PathLike) -> Path:
    """``out_dir`` created if needed; a clear error when it names an existing file."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output folder {out} is an existing file, not a folder; choose a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _read_run(path: Path) -> dict:
    """A ``run.json``, with an error naming the file when it is unreadable or not one."""
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a readable run file ({type(e).__name__}: {e}); restore "
                         "it or choose another output folder") from None
    if not isinstance(run, dict) or not isinstance(run.get("identity"), dict):
        raise ValueError(f"{path} is not a groundiff run file (no 'identity' object); restore it "
                         "or choose another output folder")
    if run.get("format") != FORMAT:
        raise ValueError(f"{path} was written by another groundiff version (run format "
                         f"{run.get('format')!r}; this one reads {FORMAT}); use another output folder")
    if not isinstance(run.get("sessions"), list):
        run["sessions"] = []
    return run


def _describe_run(run: dict) -> str:
    """``run.json`` in words, for refusals: what the folder already holds."""
    ident = run["identity"]
    method = ident.get("method", {})
    what = f"method {method.get('method', '?')!r}"
    model = (run.get("method_info") or {}).get("model") or {}
    if model.get("name"):
        what += f" with model {model['name']!r}"
    data = ident.get("dataset", {})
    if data.get("name"):
        what += f" on {data['name']!r}" + (f" ({data['split']})" if data.get("split") else "")
    if run.get("merged_from") is not None:
        return f"a merge of {len(run['merged_from'])} shard folder(s) of {what}"
    shard = ident.get("shard")
    tail = f", shard {shard[0]}/{shard[1]}" if shard and shard[1] > 1 else ""
    return f"an evaluation of {what}{tail}, created {run.get('created', '?')}"


def _open_run(out: Path, identity: dict, method_info: dict, info: dict) -> dict:
    """The folder's ``run.json`` if it describes this evaluation, a new one if there is none.

    Refused: a merged folder, or one of another method, config, model weights, dataset or shard.
    Changed annotations are accepted (their fingerprint is updated; changed pairs are recomputed).
    """
    path = out / RUN
    if path.is_file():
        run = _read_run(path)
        old = run["identity"]
        if run.get("merged_from") is not None:
            raise ValueError(f"{out} holds {_describe_run(run)}; evaluating into it would mix "
                             "with the merged results: choose another output folder")
        a = {k: v for k, v in old.items() if k != "data"}
        b = {k: v for k, v in identity.items() if k != "data"}
        if a != b:
            diff = _diff_paths(a, b)
            raise ValueError(
                f"{out} holds {_describe_run(run)}: a different configuration; it differs in "
                f"{', '.join(diff[:8])}{' ...' if len(diff) > 8 else ''}. Resume only with the "
                "same model weights, method, config, dataset and shard, or choose another output folder."
            )
        run.update(identity=identity, method_info=method_info, info=_jsonable(info))
        return run
    if (out / RESULTS).exists():
        raise ValueError(f"{out} has a {RESULTS} but no {RUN}: not a groundiff evaluation "
                         "folder (or a damaged one); refusing to write into it: choose another "
                         "output folder")
    return {"format": FORMAT, "identity": identity, "method_info": method_info,
            "info": _jsonable(info), "created": _now(), "sessions": []}


def _write_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(_jsonable(obj), indent=2) + "\n")


@contextmanager
def _session(out: Path, run: dict, rows: Sequence[dict], kind: str, **facts: Any) -> Iterator[dict]:
    """Record one session in ``run.json``: written at the start (status "running") and the end.

    A session still "running" at the next start (the folder lock is held, so its process is gone)
    was killed: it is marked so, with the rows it wrote counted from the results file.
    """
    sessions = run["sessions"]
    for s in sessions:
        if isinstance(s, dict) and s.get("status") == "running":
            s["status"] = "killed"
            s["pairs_done"] = sum(1 for r in rows if r.get("session") == s.get("n"))
    n = 1 + max((s.get("n", 0) for s in sessions if isinstance(s, dict)), default=0)
    session = {"n": n, "kind": kind, "started": _now(), "status": "running",
               "host": socket.gethostname(), "pid": os.getpid(), **_jsonable(facts)}
    sessions.append(session)
    _write_json(out / RUN, run)
    started = time.time()
    try:
        yield session
        session["status"] = "finished"
    except KeyboardInterrupt:
        session["status"] = "interrupted"
        raise
    except BaseException as e:
        session["status"] = f"failed ({type(e).__name__})"
        raise
    finally:
        session["ended"] = _now()
        session["wall_s"] = round(time.time() - started, 3)
        _write_json(out / RUN, run)


def _shard_images(pairs: Sequence[GroundingPair], shard: tuple[int, int]) -> list[GroundingPair]:
    """Pairs of the images of this shard: image ``j`` (first-appearance order) goes to ``j % n``."""
    i, n = shard
    if n == 1:
        return list(pairs)
    keep = {path for j, path in enumerate(group_by_image(pairs)) if j % n == i}
    return [p for p in pairs if p.image_path in keep]


def _load(path: Path) -> np.ndarray:
    from groundiff_core.io.images import load_image

    return load_image(path)


def _boxes_for(conventions: str, boxes: np.ndarray, hw: tuple[int, int],
               crop_size: int) -> tuple[np.ndarray, list[str]]:
    """The boxes a pair is scored with: under the paper's conventions a box none of whose pixels
    survives the model's resize + centre crop (``crop_size``) is dropped, with a note."""
    if conventions != "paper" or len(boxes) == 0:
        return boxes, []
    keep = CropGeometry(hw[0], hw[1], crop_size).boxes_in_crop(boxes)
    if keep.all():
        return boxes, []
    return boxes[keep], ["dropped (no pixel inside the model's centre crop): "
                         + ", ".join(f"box {i}" for i in np.flatnonzero(~keep))]


def _pair_row(pair: GroundingPair, heatmap: np.ndarray, hw: tuple[int, int],
              image_pairs: Sequence[GroundingPair], conventions: str = "paper",
              crop_size: int = PAPER_INPUT_SIZE) -> dict:
    """Metrics of one pair, plus the same heatmap's AUC on each other pair of the image.

    The metrics follow ``conventions``; ``alternative`` holds the same heatmap scored under the
    other conventions (so a table can show both without grounding twice). A pair left without
    boxes is skipped: none inside the image, or (paper) none inside the model's centre crop.
    """
    fitted, notes = fit_boxes_to_image(pair, *hw)
    boxes, crop_notes = _boxes_for(conventions, fitted, hw, crop_size)
    row: dict[str, Any] = {"pair_id": pair.pair_id, "image_path": str(pair.image_path),
                           "phrase": pair.phrase, "category": pair.category,
                           "image_hw": list(hw), "boxes": boxes.round(3).tolist(),
                           "conventions": conventions}
    if notes or crop_notes:
        row["box_notes"] = notes + crop_notes
    if len(fitted) == 0:
        row.update(status="skipped", reason="no box inside the image")
        return row
    if len(boxes) == 0:
        row.update(status="skipped", reason="no box inside the model's centre crop")
        return row
    row["status"] = "ok"
    scorer = M.HeatmapScorer(heatmap, conventions)  # sorted once, then scored against every box set
    row.update(scorer.all(boxes))
    other = next(c for c in CONVENTIONS if c != conventions)
    other_boxes, _ = _boxes_for(other, fitted, hw, crop_size)
    if len(other_boxes):
        row["alternative"] = {"conventions": other,
                              **scorer.under(other).all(other_boxes)}
    own = M.box_mask(hw, boxes)
    others = []
    for q in image_pairs:
        if q.pair_id == pair.pair_id:
            continue
        qb, _ = fit_boxes_to_image(q, *hw)
        if len(qb) == 0:
            continue
        qm = M.box_mask(hw, qb)
        union = np.count_nonzero(own | qm)
        others.append({"pair_id": q.pair_id, "category": q.category,
                       "auc": scorer.auc(qb),
                       "gt_iou": float(np.count_nonzero(own & qm) / union) if union else 0.0})
    row["others"] = others
    return row


def evaluate(method: Any, pairs: Sequence[GroundingPair], out_dir: str | os.PathLike, *,
             dataset: dict | None = None, n_pairs: int | None = None,
             shard: str | tuple[int, int] | None = None, seed: int = 0, n_boot: int = 1000,
             batch_images: int = 1, progress: bool = True, info: dict | None = None,
             conventions: str = "paper", dropped: Sequence[dict] | None = None) -> dict:
    """Evaluate ``method`` on ``pairs``, resumably, in ``out_dir``; return the summary.

    Parameters
    ----------
    method : anything with ``.ground(image, phrases) -> Heatmaps`` (``.heatmaps`` ``[K, H, W]`` on
        the original grid, NaN = ignore) and ``describe()``/``name`` for its identity
    pairs : the dataset (all of it: other pairs of the same image give the text-sensitivity check
        its "other finding" boxes even when outside the evaluated subset)
    out_dir : results folder; rerunning with the same folder resumes (same identity required)
    dataset : a small description recorded in the identity (e.g. ``{"name": "mscxr",
        "split": "test"}``); a digest of the pair ids is always added
    n_pairs : evaluate a seeded random subset of this many pairs (nested in ``n``, see
        :func:`groundiff_core.io.datasets.subset`); None: all
    shard : ``"i/n"`` or ``(i, n)``: this process does the images ``j`` with ``j % n == i``
    seed : seeds the subset and the bootstrap
    n_boot : bootstrap resamples for the confidence intervals
    batch_images : images per ``method.ground_batch`` call where the method has one (accelerator
        throughput); results are written after each batch. 1 (default): ``ground`` per image
    info : extra facts recorded in ``run.json`` and the summary (not part of the identity)
    conventions : "paper" (default: the metrics and box handling exactly as the authors'
        evaluation computed them) or "strict"; see :mod:`groundiff_core.conventions`. Part of the
        run's identity and recorded in the summary. (The grounder's own back-projection follows its
        config's ``conventions``.)
    dropped : pairs the loader dropped (no usable box), listed in the summary with their reason;
        default: ``pairs.dropped`` of a loader's :class:`~groundiff_core.io.datasets.common.PairList`

    The summary covers exactly the pairs selected by this call (``n_pairs`` and ``shard``); its
    ``changed`` lists the pairs recomputed because their content key changed since their last row.
    Another process writing ``out_dir`` at the same time is refused (:mod:`groundiff_core.util.fileio`).
    """
    if not callable(getattr(method, "ground", None)):
        raise TypeError(f"{type(method).__name__} has no .ground(image, phrases) method")
    conventions = check_conventions(conventions)
    crop_size = _crop_size(method)
    check_options(n_boot=n_boot, batch_images=batch_images, n_pairs=n_pairs)
    dropped = list(getattr(pairs, "dropped", ()) if dropped is None else dropped)
    pairs = list(pairs)
    ids = [p.pair_id for p in pairs]
    if len(set(ids)) != len(ids):
        raise ValueError("pair ids must be unique within a dataset")
    shard = parse_shard(shard)
    out = _out_folder(out_dir)
    identity = run_identity(method, pairs, dataset, shard)
    identity["scoring"] = {"conventions": conventions, "crop_size": crop_size}
    with folder_lock(out, "evaluate"):
        run = _open_run(out, identity, method_identity(method), info or {})
        run["dropped"] = _jsonable(dropped)
        old_rows = _read_jsonl(out / RESULTS, repair=True)
        selected = _shard_images(subset(pairs, n_pairs, seed=seed), shard)
        by_image_all = group_by_image(pairs)
        keys = _pair_keys(selected, by_image_all)
        latest = _latest(old_rows)
        done = {pid for pid, r in latest.items()
                if r.get("status") == "ok" and r.get("key") == keys.get(pid)}
        changed = [p.pair_id for p in selected if p.pair_id not in done
                   and latest.get(p.pair_id, {}).get("status") == "ok"]
        todo = [(path, grp) for path, grp in group_by_image(selected).items()
                if any(p.pair_id not in done for p in grp)]
        n_todo = sum(p.pair_id not in done for _, grp in todo for p in grp)
        with _session(out, run, old_rows, "evaluate", pairs_todo=n_todo, changed=len(changed),
                      pairs_done=0, info=info or {}) as session:
            _run_pairs(method, todo, done, keys, by_image_all, out, session, batch_images,
                       progress and n_todo > 0, identity["method"].get("method", ""),
                       (conventions, crop_size))

        rows = [r for pid, r in _latest(_read_jsonl(out / RESULTS)).items() if pid in keys]
        stale = len(selected) - sum(r.get("key") == keys[r["pair_id"]] for r in rows)
        if stale:  # cannot happen unless the file was edited while running
            raise RuntimeError(f"{stale} selected pairs have no current row in {out / RESULTS}")
        summary = summarize(rows, n_boot=n_boot, seed=seed)
        summary.update(_run_facts(run, identity, shard, n_pairs, len(selected)))
        summary["changed"] = {"n_pairs": len(changed), "pair_ids": changed}
        summary["dropped"] = {"n_pairs": len(dropped), "pairs": dropped}
        write_summary(summary, out)
    _warn_box_notes(rows)
    return summary


def _run_pairs(method: Any, todo: Sequence[tuple[Path, list]], done: set, keys: dict,
               by_image_all: dict, out: Path, session: dict, batch_images: int, progress: bool,
               label: str, scoring: tuple) -> None:
    """Ground the pending pairs of ``todo`` and append their rows (with key and session number)."""
    use_batch = batch_images > 1 and callable(getattr(method, "ground_batch", None))
    step = batch_images if use_batch else 1
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=session["pairs_todo"], unit="pair", desc=f"evaluate {label}",
                   dynamic_ncols=True)
    try:
        with open(out / RESULTS, "a", encoding="utf-8") as fh:
            for c0 in range(0, len(todo), step):
                chunk = [(path, grp, [p for p in grp if p.pair_id not in done])
                         for path, grp in todo[c0:c0 + step]]
                for rows in _evaluate_images(method, chunk, by_image_all, use_batch, *scoring):
                    for row in rows:
                        row.update(key=keys[row["pair_id"]], session=session["n"])
                        fh.write(json.dumps(_jsonable(row)) + "\n")
                        fh.flush()
                        os.fsync(fh.fileno())
                        session["pairs_done"] += 1
                    if bar is not None:
                        bar.update(len(rows))
    finally:
        if bar is not None:
            bar.close()


def _skip_rows(path: Path, pending: Sequence[GroundingPair], reason: str) -> list[dict]:
    return [{"pair_id": p.pair_id, "status": "skipped", "reason": reason, "image_path": str(path),
             "phrase": p.phrase, "category": p.category} for p in pending]


def _crop_size(method: Any) -> int:
    """The input size of the method's model (the centre crop that decides which boxes it can see);
    the paper's 512 for methods without a model (the baselines score the same pairs as the LDM)."""
    model = getattr(method, "model", None)
    size = getattr(model, "input_size", None) or getattr(method, "input_size", None)
    return int(size) if size else PAPER_INPUT_SIZE


def _evaluate_images(method: Any, chunk: Sequence[tuple[Path, list, list]],
                     by_image_all: dict, use_batch: bool, conventions: str = "paper",
                     crop_size: int = PAPER_INPUT_SIZE) -> Iterable[list[dict]]:
    """Rows of the pending pairs of each image of ``chunk`` (one list per image, in order).

    Images that cannot be read give "skipped" rows. Every phrase of an image's selected pairs is
    grounded (not only the pending ones), so a resumed image sees exactly the call of an
    uninterrupted run. With ``use_batch`` the readable images go to ``method.ground_batch`` at once.
    """
    from PIL import Image

    # the project's loaders raise ValueError/OSError; PIL adds DecompressionBombError (a header
    # claiming a huge image) and the odd SyntaxError from a corrupt file
    errors = (OSError, ValueError, ImportError, RuntimeError, MemoryError, SyntaxError,
              Image.DecompressionBombError)
    readable = []
    for path, grp, pending in chunk:
        try:
            image = _load(path)
        except errors as e:
            reason = "missing image file" if isinstance(e, FileNotFoundError) else \
                f"unreadable image ({type(e).__name__}: {e})"
            yield _skip_rows(path, pending, reason)
            continue
        readable.append((path, grp, pending, image, list(dict.fromkeys(p.phrase for p in grp))))
    if not readable:
        return
    t0 = time.perf_counter()
    if use_batch:
        results = method.ground_batch([r[3] for r in readable], [r[4] for r in readable])
    else:
        results = [method.ground(r[3], r[4]) for r in readable]
    seconds = (time.perf_counter() - t0) / len(readable)
    for (path, grp, pending, image, phrases), result in zip(readable, results):
        maps = np.asarray(getattr(result, "heatmaps", result), dtype=np.float32)
        hw = tuple(int(s) for s in image.shape[:2])
        if maps.shape != (len(phrases), *hw):
            raise ValueError(f"{type(method).__name__}.ground returned heatmaps of shape {maps.shape} "
                             f"for {len(phrases)} phrase(s) on a {hw[0]}x{hw[1]} image; expected "
                             f"{(len(phrases), *hw)} on the original grid")
        index = {ph: k for k, ph in enumerate(phrases)}
        rows = []
        for p in pending:
            row = _pair_row(p, maps[index[p.phrase]], hw, by_image_all[path], conventions, crop_size)
            row["seconds"] = round(seconds / len(phrases), 4)
            row["image_seconds"] = round(seconds, 4)
            rows.append(row)
        yield rows


def _warn_box_notes(rows: Sequence[dict]) -> None:
    noted = [r["pair_id"] for r in rows if r.get("box_notes")]
    if noted:
        warnings.warn(f"{len(noted)} pair(s) had boxes rescaled or clipped to the image read, "
                      f"or dropped outside the model's centre crop "
                      f"(see 'box_notes' in {RESULTS}), e.g. {noted[:3]}", UserWarning, stacklevel=3)


def _run_facts(run: dict, identity: dict, shard: tuple[int, int] | None, n_pairs: int | None,
               n_selected: int) -> dict:
    sessions = [s for s in run.get("sessions", []) + run.get("shard_sessions", [])
                if isinstance(s, dict)]
    return {
        "identity": identity,
        "config": identity["method"].get("config"),
        "model": (run.get("method_info") or {}).get("model", identity["method"].get("model")),
        "info": run.get("info", {}),
        "selection": {"n_pairs": n_pairs, "shard": list(shard) if shard else None,
                      "n_selected": n_selected},
        "versions": versions(),
        "wall_time_s": round(sum(s.get("wall_s", 0.0) for s in sessions), 3),
        "sessions": len(sessions),
        "created": run.get("created"),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


# ============================================================================ summary
def _finite(values: Iterable[Any]) -> np.ndarray:
    a = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    return a[np.isfinite(a)]


def _boot_means(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``n_boot`` means of resamples (with replacement) of ``values``, in memory-bounded chunks."""
    n = len(values)
    out = np.empty(n_boot)
    chunk = max(1, min(n_boot, 2_000_000 // max(n, 1)))
    for s in range(0, n_boot, chunk):
        k = min(chunk, n_boot - s)
        out[s:s + k] = values[rng.integers(0, n, size=(k, n))].mean(axis=1)
    return out


def _rng(seed: int, *keys: str) -> np.random.Generator:
    return np.random.default_rng([seed, *(zlib.crc32(k.encode("utf-8")) for k in keys)])


def _stat(values: np.ndarray, n_total: int, n_boot: int, conf: float,
          rng: np.random.Generator) -> dict:
    n = len(values)
    if n == 0:
        return {"mean": None, "ci_low": None, "ci_high": None, "n": 0, "n_undefined": n_total}
    boots = _boot_means(values, n_boot, rng)
    lo, hi = np.quantile(boots, [(1 - conf) / 2, (1 + conf) / 2])
    return {"mean": float(values.mean()), "ci_low": float(lo), "ci_high": float(hi), "n": n,
            "n_undefined": n_total - n}


def _class_avg_stat(by_class: dict[str, np.ndarray], n_boot: int, conf: float,
                    rng: np.random.Generator) -> dict:
    """Unweighted mean over classes of the class means; CI from a bootstrap stratified by class."""
    classes = [c for c, v in by_class.items() if len(v)]
    if not classes:
        return {"mean": None, "ci_low": None, "ci_high": None, "n_classes": 0, "classes": []}
    mean = float(np.mean([by_class[c].mean() for c in classes]))
    boots = np.mean([_boot_means(by_class[c], n_boot, rng) for c in classes], axis=0)
    lo, hi = np.quantile(boots, [(1 - conf) / 2, (1 + conf) / 2])
    return {"mean": mean, "ci_low": float(lo), "ci_high": float(hi), "n_classes": len(classes),
            "classes": classes}


def _text_sensitivity(ok: Sequence[dict], max_overlap: float, n_boot: int, conf: float,
                      seed: int) -> dict:
    """Share of pairs whose heatmap scores its own boxes above another finding's boxes.

    For each pair with at least one "other" pair on the same image (a different category whose
    ground truth overlaps the pair's by IoU <= ``max_overlap``), the pair's score is the share of
    those others whose AUC-ROC (same heatmap, their boxes) is below the pair's own AUC-ROC (ties
    count one half). ``value`` is the mean score over pairs; ``strict`` the share of pairs that beat
    every other.
    """
    scores, strict, n_cmp = [], [], 0
    for r in ok:
        own = r.get("auc")
        if own is None or not math.isfinite(own):
            continue
        cmp = [o["auc"] for o in r.get("others", [])
               if o.get("category") != r["category"] and o.get("gt_iou", 0.0) <= max_overlap
               and o.get("auc") is not None and math.isfinite(o["auc"])]
        if not cmp:
            continue
        wins = [1.0 if own > a else 0.5 if own == a else 0.0 for a in cmp]
        scores.append(float(np.mean(wins)))
        strict.append(float(all(w == 1.0 for w in wins)))
        n_cmp += len(cmp)
    s = _stat(np.array(scores), len(scores), n_boot, conf, _rng(seed, "text_sensitivity"))
    return {"value": s["mean"], "ci_low": s["ci_low"], "ci_high": s["ci_high"],
            "strict": float(np.mean(strict)) if strict else None, "n_pairs": len(scores),
            "n_comparisons": n_cmp, "max_gt_iou": max_overlap}


def _as_scored_under(rows: Sequence[dict], conventions: str | None) -> tuple[list[dict], str | None]:
    """Rows with their metrics under ``conventions`` (each row holds its run's metrics and, in
    ``alternative``, the other conventions' ones); rows scored under neither are left out.
    Returns the rows and the conventions they are scored under (None if mixed or unknown)."""
    if conventions is None:
        seen = {r.get("conventions", "strict") for r in rows if r.get("status") == "ok"}
        return list(rows), seen.pop() if len(seen) == 1 else None
    check_conventions(conventions)
    out = []
    for r in rows:
        if r.get("status") != "ok" or r.get("conventions", "strict") == conventions:
            out.append(r)
        elif (r.get("alternative") or {}).get("conventions") == conventions:
            alt = {k: v for k, v in r["alternative"].items() if k in METRICS}
            out.append({**r, **alt, "conventions": conventions})
    return out, conventions


def summarize(results: Sequence[dict], *, n_boot: int = 1000, seed: int = 0,
              confidence: float = 0.95, text_max_overlap: float = 0.5,
              conventions: str | None = None) -> dict:
    """Summary statistics of per-pair result rows (as in ``results.jsonl``).

    Returns a JSON-able dict with:

    * ``overall[metric]`` and ``per_class[category][metric]``: ``mean``, percentile-bootstrap
      ``ci_low``/``ci_high`` (``confidence``, ``n_boot`` resamples of the pairs, seeded by
      ``seed``), ``n`` pairs with a finite value and ``n_undefined`` pairs without one (e.g. a box
      covering the whole valid image makes AUC-ROC undefined);
    * ``class_averaged[metric]``: the paper's figure, the unweighted mean over categories of the
      per-category means, with a bootstrap CI that resamples pairs within each category;
    * ``text_sensitivity``: see :func:`_text_sensitivity`;
    * ``skipped``: counts and the list of images whose pairs were skipped, with reasons;
    * ``n_pairs`` (evaluated), ``n_images``, ``seconds_per_pair``, ``compute_seconds``.

    Metrics: ``miou``, ``auc`` (exact), ``auc_binned`` (paper's 5 thresholds), ``cnr_abs``
    (|CNR|), ``cnr_signed``, ``pointing``. Rows are deduplicated by ``pair_id`` and sorted by it
    first, so the result does not depend on row order (shards merged in any order agree).

    ``conventions``: None summarises the metrics as the run computed them; "paper" or "strict"
    summarises the same heatmaps scored under those conventions (every row also holds the other
    conventions' metrics), so one run gives both tables. The summary's ``conventions`` says which.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    # sorted by pair id: the figures do not depend on the order in which pairs were finished
    rows = sorted(_latest(results).values(), key=lambda r: r["pair_id"])
    rows, scored_under = _as_scored_under(rows, conventions)
    ok = [r for r in rows if r.get("status") == "ok"]
    skipped = [r for r in rows if r.get("status") != "ok"]
    categories = sorted({r["category"] for r in ok})

    overall = {m: _stat(_finite(r.get(m) for r in ok), len(ok), n_boot, confidence,
                        _rng(seed, "overall", m)) for m in METRICS}
    per_class: dict[str, dict] = {}
    by_class_vals: dict[str, dict[str, np.ndarray]] = {m: {} for m in METRICS}
    for c in categories:
        cr = [r for r in ok if r["category"] == c]
        per_class[c] = {"n_pairs": len(cr)}
        for m in METRICS:
            vals = _finite(r.get(m) for r in cr)
            by_class_vals[m][c] = vals
            per_class[c][m] = _stat(vals, len(cr), n_boot, confidence, _rng(seed, "class", c, m))
    class_averaged = {m: _class_avg_stat(by_class_vals[m], n_boot, confidence,
                                         _rng(seed, "class_averaged", m)) for m in METRICS}

    images: dict[str, dict] = {}
    for r in skipped:
        e = images.setdefault(r.get("image_path", ""), {"image_path": r.get("image_path", ""),
                                                         "reason": r.get("reason", ""),
                                                         "pair_ids": []})
        e["pair_ids"].append(r["pair_id"])
    for e in images.values():
        e["n_pairs"] = len(e["pair_ids"])
    secs = _finite(r.get("seconds") for r in ok)
    return _jsonable({
        "n_pairs": len(ok),
        "n_images": len({r.get("image_path") for r in ok}),
        "categories": categories,
        "metrics": list(METRICS),
        "conventions": scored_under,
        "overall": overall,
        "per_class": per_class,
        "class_averaged": class_averaged,
        "text_sensitivity": _text_sensitivity(ok, text_max_overlap, n_boot, confidence, seed),
        "skipped": {"n_pairs": len(skipped), "n_images": len(images),
                    "images": list(images.values())},
        "seconds_per_pair": float(secs.mean()) if len(secs) else None,
        "compute_seconds": float(secs.sum()),
        "bootstrap": {"method": "percentile", "n_boot": n_boot, "seed": seed,
                      "confidence": confidence},
    })


def summary_table(summary: dict) -> list[dict]:
    """Wide rows for tables: overall, one per category, class-averaged; ``metric``,
    ``metric_ci_low``, ``metric_ci_high`` per metric."""
    def row(group: str, n: Any, stats: dict) -> dict:
        r = {"group": group, "n_pairs": n}
        for m in summary["metrics"]:
            s = stats.get(m) or {}
            r[m], r[f"{m}_ci_low"], r[f"{m}_ci_high"] = s.get("mean"), s.get("ci_low"), s.get("ci_high")
        return r

    rows = [row("overall", summary["n_pairs"], summary["overall"])]
    rows += [row(c, s["n_pairs"], s) for c, s in summary["per_class"].items()]
    rows.append(row("class_averaged", summary["n_pairs"], summary["class_averaged"]))
    return rows


def write_summary(summary: dict, out_dir: str | os.PathLike) -> None:
    """Write ``summary.json`` and ``summary.csv`` (see :func:`summary_table`) into ``out_dir``."""
    out = Path(out_dir)
    _write_json(out / SUMMARY_JSON, summary)
    rows = summary_table(summary)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else round(v, 6) if isinstance(v, float) else v)
                    for k, v in r.items()})
    atomic_write(out / SUMMARY_CSV, buf.getvalue())


# ============================================================================ shards
def merge(dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *, n_boot: int = 1000,
          seed: int = 0) -> dict:
    """Combine the folders of a sharded evaluation into ``out_dir``; return the merged summary.

    The folders must share one identity apart from the shard (content fingerprints: shards run
    on other machines, from other paths, merge). Missing shards are warned about (the summary then
    covers only the shards given). ``out_dir`` gets a merged ``results.jsonl``, ``run.json``
    (``merged_from``) and the summary files, each replaced atomically. ``out_dir`` must be new,
    empty of results, or an earlier merge of the same evaluation: any other run there is refused,
    never overwritten.
    """
    check_options(n_boot=n_boot)
    dirs = [Path(d) for d in dirs]
    if not dirs:
        raise ValueError("merge needs at least one evaluation folder")
    for d in dirs:
        if not d.is_dir():
            raise FileNotFoundError(f"shard folder not found: {d}")
        if not (d / RUN).is_file():
            raise FileNotFoundError(f"{d} is not an evaluation folder (no {RUN})")
    out = Path(out_dir)
    if any(d.resolve() == out.resolve() for d in dirs):
        raise ValueError(f"the merge output folder {out} must not be one of the folders merged")
    runs = [_read_run(d / RUN) for d in dirs]
    for d, r in zip(dirs, runs):
        if r.get("merged_from") is not None:
            raise ValueError(f"{d} holds {_describe_run(r)}, not one shard; merge the shard folders")
    base = {k: v for k, v in runs[0]["identity"].items() if k != "shard"}
    for d, r in zip(dirs[1:], runs[1:]):
        other = {k: v for k, v in r["identity"].items() if k != "shard"}
        if other != base:
            raise ValueError(f"{d} is an evaluation of a different configuration than {dirs[0]} "
                             f"(differs in {', '.join(_diff_paths(base, other)[:8])})")
    shards = sorted({tuple(r["identity"].get("shard") or (0, 1)) for r in runs})
    ns = {n for _, n in shards}
    if len(ns) == 1:
        n = ns.pop()
        missing = sorted(set(range(n)) - {i for i, _ in shards})
        if missing:
            warnings.warn(f"merging {len(shards)} of {n} shards; missing shard(s) {missing}",
                          UserWarning, stacklevel=2)
    rows: list[dict] = []
    for d in dirs:
        rows += _read_jsonl(d / RESULTS)
    latest = list(_latest(rows).values())
    dropped = list({(e.get("pair_id"), e.get("reason")): e for r in runs
                    for e in r.get("dropped", []) if isinstance(e, dict)}.values())
    identity = {**base, "shard": None}
    out = _out_folder(out)
    with folder_lock(out, "merge"):
        run = _merge_run(out, base)
        run.update(identity=identity, method_info=runs[0].get("method_info", {}),
                   info=runs[0].get("info", {}), merged_from=[str(d) for d in dirs],
                   shards=[list(s) for s in shards], dropped=dropped,
                   shard_sessions=[{**s, "shard": r["identity"].get("shard")} for r in runs
                                   for s in r.get("sessions", []) if isinstance(s, dict)])
        with _session(out, run, [], "merge", merged_from=run["merged_from"]):
            atomic_write(out / RESULTS, "".join(json.dumps(r) + "\n" for r in latest))
            summary = summarize(latest, n_boot=n_boot, seed=seed)
            summary.update(_run_facts(run, identity, None, None, len(latest)))
            summary["merged_from"] = run["merged_from"]
            summary["shards"] = run["shards"]
            summary["changed"] = {"n_pairs": 0, "pair_ids": []}
            summary["dropped"] = {"n_pairs": len(dropped), "pairs": dropped}
            write_summary(summary, out)
    return summary


def _merge_run(out: Path, base: dict) -> dict:
    """The merge folder's ``run.json`` to update: a new one, or its earlier merge of ``base``."""
    if (out / RUN).is_file():
        old = _read_run(out / RUN)
        same = {k: v for k, v in old["identity"].items() if k != "shard"} == base
        if old.get("merged_from") is None or not same:
            raise ValueError(f"{out} holds {_describe_run(old)}; merging into it would overwrite "
                             "it: choose another output folder")
        return old
    if (out / RESULTS).exists():
        raise ValueError(f"{out} has a {RESULTS} but no {RUN}; refusing to overwrite it: choose "
                         "another output folder")
    return {"format": FORMAT, "created": _now(), "sessions": []}
