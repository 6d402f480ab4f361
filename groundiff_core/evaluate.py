"""The evaluation runner: any grounding method x a dataset -> per-pair results and a summary.

Files in the output folder ``DIR``:

* ``run.json`` - what is being evaluated (method and model identity, config, dataset, shard): a
  rerun with the same ``DIR`` resumes only if this matches, otherwise it is refused;
* ``results.jsonl`` - one JSON line per pair, appended and flushed as soon as its image is done,
  so an interrupted run loses at most the image (or batch of images) in progress. ``status`` is
  ``"ok"`` or ``"skipped"`` (with ``reason``: missing/unreadable image, no box inside the image);
  skipped pairs are retried by a rerun. An ``ok`` row holds ``pair_id, image_path, phrase,
  category, image_hw, boxes`` (as scored: original pixels, fitted to the image read), the metrics
  of :data:`METRICS`, ``others`` (for every other pair of the same image: its ``pair_id``,
  ``category``, this heatmap's ``auc`` on its boxes and the ``gt_iou`` of the two ground truths:
  the text-sensitivity check), ``seconds`` (grounding time per phrase) and ``box_notes`` when
  boxes had to be rescaled or clipped. Non-finite numbers are written as ``null``;
* ``summary.json`` / ``summary.csv`` - overall, per-class and class-averaged metrics with bootstrap
  95% confidence intervals, the text-sensitivity figure, skipped images, versions and times.

Pairs are grouped by image: ``method.ground(image, phrases)`` is called once per image with all its
phrases (one DDIM inversion serves them all). The method may be anything with that verb
(:class:`groundiff_core.grounder.Grounder`, :mod:`groundiff_core.baselines`, Captum methods) and a
``describe()`` (or ``name``) for its identity.

Metrics (:mod:`groundiff_core.metrics`) are computed on the original image grid, against the
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
import sys
import time
import warnings
import zlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from . import metrics as M
from .datasets.common import GroundingPair, fit_boxes_to_image, group_by_image, subset

__all__ = [
    "METRICS",
    "evaluate",
    "summarize",
    "load_results",
    "write_summary",
    "merge",
    "method_identity",
    "parse_shard",
]

#: Per-pair metrics recorded and summarised (keys of :func:`groundiff_core.metrics.all_metrics`).
METRICS = ("miou", "auc", "auc_binned", "cnr_abs", "cnr_signed", "pointing")
RESULTS, RUN, SUMMARY_JSON, SUMMARY_CSV = "results.jsonl", "run.json", "summary.json", "summary.csv"
FORMAT = 1


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


def _pairs_digest(pairs: Sequence[GroundingPair]) -> str:
    h = hashlib.sha1()
    for p in pairs:
        h.update(p.pair_id.encode("utf-8") + b"\0")
    return h.hexdigest()[:16]


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
    A corrupt line anywhere else is an error: that is not an interrupted write.
    """
    if not path.is_file():
        return []
    raw = path.read_bytes()
    *complete, tail = raw.split(b"\n")
    rows = []
    for i, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise ValueError(f"{path}: line {i} is not valid JSON (and not an interrupted last "
                             "write); fix or remove it") from None
    if tail.strip():
        try:
            rows.append(json.loads(tail))
            fix = b"\n"
        except json.JSONDecodeError:
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


def _latest(rows: Iterable[dict]) -> dict[str, dict]:
    """One row per pair id: the last ``ok`` row if any, else the last row."""
    out: dict[str, dict] = {}
    for r in rows:
        pid = r["pair_id"]
        if r.get("status") == "ok" or out.get(pid, {}).get("status") != "ok":
            out[pid] = r
    return out


def load_results(out_dir: str | os.PathLike) -> list[dict]:
    """The per-pair rows of an evaluation folder, one per pair (see :func:`_latest`), file order."""
    return list(_latest(_read_jsonl(Path(out_dir) / RESULTS)).values())


# ============================================================================ the runner
def _check_run(out_dir: Path, identity: dict, info: dict) -> dict:
    """Create ``run.json`` or check that an existing one describes the same evaluation."""
    run_path = out_dir / RUN
    if run_path.is_file():
        run = json.loads(run_path.read_text(encoding="utf-8"))
        old = run.get("identity")
        if old != identity:
            diff = _diff_paths(old, identity)
            raise ValueError(
                f"{out_dir} holds an evaluation of a different configuration; it differs in "
                f"{', '.join(diff[:8])}{' ...' if len(diff) > 8 else ''}. Resume only with the "
                "same model, method, config, dataset and shard, or choose another output folder."
            )
        return run
    if (out_dir / RESULTS).is_file():
        raise ValueError(f"{out_dir} has a {RESULTS} but no {RUN}: not a groundiff evaluation "
                         "folder (or a damaged one); choose another output folder")
    run = {"format": FORMAT, "identity": identity, "info": _jsonable(info),
           "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "sessions": []}
    _write_json(run_path, run)
    return run


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_jsonable(obj), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _shard_images(pairs: Sequence[GroundingPair], shard: tuple[int, int]) -> list[GroundingPair]:
    """Pairs of the images of this shard: image ``j`` (first-appearance order) goes to ``j % n``."""
    i, n = shard
    if n == 1:
        return list(pairs)
    keep = {path for j, path in enumerate(group_by_image(pairs)) if j % n == i}
    return [p for p in pairs if p.image_path in keep]


def _load(path: Path) -> np.ndarray:
    from .image_io import load_image

    return load_image(path)


def _pair_row(pair: GroundingPair, heatmap: np.ndarray, hw: tuple[int, int],
              image_pairs: Sequence[GroundingPair]) -> dict:
    """Metrics of one pair, plus the same heatmap's AUC on each other pair of the image."""
    boxes, notes = fit_boxes_to_image(pair, *hw)
    row: dict[str, Any] = {"pair_id": pair.pair_id, "image_path": str(pair.image_path),
                           "phrase": pair.phrase, "category": pair.category,
                           "image_hw": list(hw), "boxes": boxes.round(3).tolist()}
    if notes:
        row["box_notes"] = notes
    if len(boxes) == 0:
        row.update(status="skipped", reason="no box inside the image")
        return row
    row["status"] = "ok"
    scorer = M.HeatmapScorer(heatmap)  # sorted once, then scored against every box set below
    row.update(scorer.all(boxes))
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
             batch_images: int = 1, progress: bool = True, info: dict | None = None) -> dict:
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
        :func:`groundiff_core.datasets.subset`); None: all
    shard : ``"i/n"`` or ``(i, n)``: this process does the images ``j`` with ``j % n == i``
    seed : seeds the subset and the bootstrap
    n_boot : bootstrap resamples for the confidence intervals
    batch_images : images per ``method.ground_batch`` call where the method has one (accelerator
        throughput); results are written after each batch. 1 (default): ``ground`` per image
    info : extra facts recorded in ``run.json`` and the summary (not part of the identity)

    The summary covers exactly the pairs selected by this call (``n_pairs`` and ``shard``).
    """
    if not callable(getattr(method, "ground", None)):
        raise TypeError(f"{type(method).__name__} has no .ground(image, phrases) method")
    if int(batch_images) < 1:
        raise ValueError(f"batch_images must be >= 1, got {batch_images}")
    pairs = list(pairs)
    ids = [p.pair_id for p in pairs]
    if len(set(ids)) != len(ids):
        raise ValueError("pair ids must be unique within a dataset")
    shard = parse_shard(shard)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    identity = {"method": method_identity(method),
                "dataset": _jsonable({**(dataset or {}), "pairs": len(pairs),
                                      "pairs_sha1": _pairs_digest(pairs)}),
                "shard": list(shard)}
    run = _check_run(out, identity, info or {})

    selected = _shard_images(subset(pairs, n_pairs, seed=seed), shard)
    by_image_all = group_by_image(pairs)
    done = {pid for pid, r in _latest(_read_jsonl(out / RESULTS, repair=True)).items()
            if r.get("status") == "ok"}
    todo = [(path, grp) for path, grp in group_by_image(selected).items()
            if any(p.pair_id not in done for p in grp)]
    n_todo = sum(p.pair_id not in done for _, grp in todo for p in grp)

    started = time.time()
    session = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "pairs_done": 0, "wall_s": 0.0}
    run["sessions"].append(session)
    use_batch = batch_images > 1 and callable(getattr(method, "ground_batch", None))
    step = batch_images if use_batch else 1
    bar = None
    if progress and n_todo:
        from tqdm.auto import tqdm
        bar = tqdm(total=n_todo, unit="pair", desc=f"evaluate {identity['method'].get('method', '')}",
                   dynamic_ncols=True)
    try:
        with open(out / RESULTS, "a", encoding="utf-8") as fh:
            for c0 in range(0, len(todo), step):
                chunk = [(path, grp, [p for p in grp if p.pair_id not in done])
                         for path, grp in todo[c0:c0 + step]]
                for rows in _evaluate_images(method, chunk, by_image_all, use_batch):
                    for row in rows:
                        fh.write(json.dumps(_jsonable(row)) + "\n")
                        fh.flush()
                        os.fsync(fh.fileno())
                        session["pairs_done"] += 1
                    if bar is not None:
                        bar.update(len(rows))
    finally:
        if bar is not None:
            bar.close()
        session["wall_s"] = round(time.time() - started, 3)
        _write_json(out / RUN, run)

    wanted = {p.pair_id for p in selected}
    rows = [r for r in load_results(out) if r["pair_id"] in wanted]
    if len(rows) != len(selected):  # cannot happen unless the file was edited while running
        raise RuntimeError(f"{len(selected) - len(rows)} selected pairs have no row in {out / RESULTS}")
    summary = summarize(rows, n_boot=n_boot, seed=seed)
    summary.update(_run_facts(run, identity, shard, n_pairs, len(selected)))
    write_summary(summary, out)
    _warn_box_notes(rows)
    return summary


def _skip_rows(path: Path, pending: Sequence[GroundingPair], reason: str) -> list[dict]:
    return [{"pair_id": p.pair_id, "status": "skipped", "reason": reason, "image_path": str(path),
             "phrase": p.phrase, "category": p.category} for p in pending]


def _evaluate_images(method: Any, chunk: Sequence[tuple[Path, list, list]],
                     by_image_all: dict, use_batch: bool) -> Iterable[list[dict]]:
    """Rows of the pending pairs of each image of ``chunk`` (one list per image, in order).

    Images that cannot be read give "skipped" rows. Every phrase of an image's selected pairs is
    grounded (not only the pending ones), so a resumed image sees exactly the call of an
    uninterrupted run. With ``use_batch`` the readable images go to ``method.ground_batch`` at once.
    """
    readable = []
    for path, grp, pending in chunk:
        try:
            image = _load(path)
        except (OSError, ValueError, ImportError, RuntimeError) as e:
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
            row = _pair_row(p, maps[index[p.phrase]], hw, by_image_all[path])
            row["seconds"] = round(seconds / len(phrases), 4)
            row["image_seconds"] = round(seconds, 4)
            rows.append(row)
        yield rows


def _warn_box_notes(rows: Sequence[dict]) -> None:
    noted = [r["pair_id"] for r in rows if r.get("box_notes")]
    if noted:
        warnings.warn(f"{len(noted)} pair(s) had boxes rescaled or clipped to the image read "
                      f"(see 'box_notes' in {RESULTS}), e.g. {noted[:3]}", UserWarning, stacklevel=3)


def _run_facts(run: dict, identity: dict, shard: tuple[int, int] | None, n_pairs: int | None,
               n_selected: int) -> dict:
    sessions = run.get("sessions", [])
    return {
        "identity": identity,
        "config": identity["method"].get("config"),
        "model": identity["method"].get("model"),
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


def summarize(results: Sequence[dict], *, n_boot: int = 1000, seed: int = 0,
              confidence: float = 0.95, text_max_overlap: float = 0.5) -> dict:
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
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    # sorted by pair id: the figures do not depend on the order in which pairs were finished
    rows = sorted(_latest(results).values(), key=lambda r: r["pair_id"])
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
    (out / SUMMARY_CSV).write_text(buf.getvalue(), encoding="utf-8")


# ============================================================================ shards
def merge(dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *, n_boot: int = 1000,
          seed: int = 0) -> dict:
    """Combine the folders of a sharded evaluation into ``out_dir``; return the merged summary.

    The folders must share one identity apart from the shard. Missing shards are warned about
    (the summary then covers only the shards given). ``out_dir`` gets a merged ``results.jsonl``,
    ``run.json`` (``merged_from``) and the summary files.
    """
    dirs = [Path(d) for d in dirs]
    out = Path(out_dir)
    if not dirs:
        raise ValueError("merge needs at least one evaluation folder")
    if any(d.resolve() == out.resolve() for d in dirs):
        raise ValueError("the merge output folder must not be one of the folders merged")
    runs = []
    for d in dirs:
        if not (d / RUN).is_file():
            raise FileNotFoundError(f"{d} is not an evaluation folder (no {RUN})")
        runs.append(json.loads((d / RUN).read_text(encoding="utf-8")))
    base = {k: v for k, v in runs[0]["identity"].items() if k != "shard"}
    for d, r in zip(dirs[1:], runs[1:]):
        other = {k: v for k, v in r["identity"].items() if k != "shard"}
        if other != base:
            raise ValueError(f"{d} is an evaluation of a different configuration than {dirs[0]} "
                             f"(differs in {', '.join(_diff_paths(base, other)[:8])})")
    shards = sorted({tuple(r["identity"].get("shard", (0, 1))) for r in runs})
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
    out.mkdir(parents=True, exist_ok=True)
    with open(out / RESULTS, "w", encoding="utf-8") as fh:
        for r in latest:
            fh.write(json.dumps(r) + "\n")
    identity = {**base, "shard": None}
    run = {"format": FORMAT, "identity": identity, "info": runs[0].get("info", {}),
           "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "merged_from": [str(d) for d in dirs], "shards": [list(s) for s in shards],
           "sessions": [s for r in runs for s in r.get("sessions", [])]}
    _write_json(out / RUN, run)
    summary = summarize(latest, n_boot=n_boot, seed=seed)
    summary.update(_run_facts(run, identity, None, None, len(latest)))
    summary["merged_from"] = run["merged_from"]
    summary["shards"] = run["shards"]
    write_summary(summary, out)
    return summary
